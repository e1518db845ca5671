//! Endpoint registration: a proxy's own Endpoint, written when its stream
//! opens (retried while there is no leader) and kept in step with the
//! readiness it reports. One task per stream, so registration and health
//! updates never race.

use std::convert::Infallible;
use std::time::Duration;

use raftmesh_api::{Health, Resource, ResourceKey, Spec};
use tokio::sync::watch;

use super::Ctx;
use crate::cluster::{Change, UpdateError};

/// Whether `current` may be replaced by a proxy of identity `who`: one
/// this identity's proxies registered (an admin's Endpoint has no lease
/// node), never another service's or another identity's.
pub(super) fn owned_by(current: &Resource, who: &str) -> bool {
    matches!(&current.spec, Spec::Endpoint(e) if e.identity == who && e.lease_node.is_some())
}

/// Why a proxy may not register over `current`.
pub(super) fn not_owned(current: &Resource) -> String {
    let whose = match &current.spec {
        Spec::Endpoint(e) if e.lease_node.is_none() => "an admin".to_string(),
        Spec::Endpoint(e) if !e.identity.is_empty() => e.identity.clone(),
        Spec::Endpoint(e) => format!("service {}", e.service),
        _ => "something else".to_string(),
    };
    format!(
        "endpoint {} was registered by {whose}; a proxy may replace only its own identity's: give this one another --instance",
        current.key()
    )
}

/// Registers the proxy's Endpoint (retrying while there is no leader),
/// then keeps its health in step with what the proxy reports. One task per
/// stream, so registration and health updates never race.
pub(super) async fn keep_endpoint(
    ctx: &Ctx,
    mut endpoint: Resource,
    mut ready: watch::Receiver<bool>,
) {
    let who = match &endpoint.spec {
        Spec::Endpoint(e) => e.identity.clone(),
        _ => return,
    };
    for attempt in 0u32.. {
        if let Spec::Endpoint(e) = &mut endpoint.spec {
            e.health = if *ready.borrow_and_update() {
                Health::Healthy
            } else {
                Health::Unhealthy
            };
        }
        // Compare-and-set on what the leader has: never over another
        // identity's or an admin's Endpoint.
        let r = ctx
            .ops
            .update(&endpoint.key(), 1, |cur| match cur {
                Some(cur) if !owned_by(cur, &who) => Change::Refuse(NotOwned(not_owned(cur))),
                _ => Change::Put(endpoint.clone()),
            })
            .await;
        match r {
            Ok(_) => break,
            Err(UpdateError::Refused(NotOwned(why))) => {
                tracing::warn!(endpoint = %endpoint.key(), %why, "not registering the proxy's endpoint");
                return;
            }
            Err(UpdateError::Conflict { .. }) => continue,
            Err(e) => {
                if attempt % 10 == 0 {
                    tracing::warn!(endpoint = %endpoint.key(), error = %e, "cannot register the endpoint yet; retrying");
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
    let key = endpoint.key();
    // Kept in step with what the proxy reports, and put right when the
    // state says otherwise while the stream lives (a lease marked it
    // unhealthy after reports were missed, say while a huge apply kept the
    // node busy): a live, ready proxy's endpoint never stays unhealthy.
    let mut reconcile = tokio::time::interval(RECONCILE_EVERY);
    reconcile.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            changed = ready.changed() => {
                if changed.is_err() {
                    return;
                }
                let want = *ready.borrow_and_update();
                set_health(ctx, &key, &who, want).await;
            }
            _ = reconcile.tick() => {
                let want = *ready.borrow();
                let stale = match ctx.reader.get(&key).1 {
                    Some(cur) => owned_by(&cur, &who)
                        && matches!(&cur.spec, Spec::Endpoint(e) if (e.health == Health::Healthy) != want),
                    None => false,
                };
                if stale {
                    tracing::info!(endpoint = %key, ready = want, "the endpoint's health disagrees with its live proxy; putting it right");
                    set_health(ctx, &key, &who, want).await;
                }
            }
        }
    }
}

/// How often a stream's node checks its proxy's endpoint against what the
/// proxy reports.
pub const RECONCILE_EVERY: Duration = Duration::from_secs(2);

/// A registration refused: the Endpoint is someone else's.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct NotOwned(String);

/// Sets the Endpoint's health, and this node as its lease holder, by
/// compare-and-set on what the leader has (this node may not have applied
/// the registration, or another node's update, yet).
async fn set_health(ctx: &Ctx, key: &ResourceKey, own: &str, ready: bool) {
    let want = if ready {
        Health::Healthy
    } else {
        Health::Unhealthy
    };
    let node = ctx.ops.id();
    for _ in 0..5 {
        let r = ctx
            .ops
            .update(key, 1, |cur| {
                let Some(cur) = cur else {
                    return Change::<Infallible>::Keep;
                };
                let mut updated = (**cur).clone();
                let Spec::Endpoint(e) = &mut updated.spec else {
                    return Change::Keep;
                };
                // Replaced meanwhile by an admin or another identity: not ours.
                if e.lease_node.is_none() || e.identity != own {
                    return Change::Keep;
                }
                if e.health == want && e.lease_node == Some(node) {
                    return Change::Keep;
                }
                e.health = want;
                e.lease_node = Some(node);
                Change::Put(updated)
            })
            .await;
        match r {
            Ok(_) => return,
            Err(UpdateError::Conflict { .. }) => continue,
            Err(e) => {
                tracing::warn!(endpoint = %key, error = %e, "cannot update endpoint health");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

/// Deletes a leaving proxy's Endpoint, if it is still its own (compare-
/// and-set on what the leader has; never an admin's or another identity's).
pub(super) async fn deregister(ctx: &Ctx, endpoint: &Resource) {
    let Spec::Endpoint(mine) = &endpoint.spec else {
        return;
    };
    let who = mine.identity.clone();
    for _ in 0..5 {
        let r = ctx
            .ops
            .update(&endpoint.key(), 1, |cur| match cur {
                Some(cur) if owned_by(cur, &who) => Change::<Infallible>::Delete,
                _ => Change::Keep,
            })
            .await;
        match r {
            Ok(_) => return,
            Err(UpdateError::Conflict { .. }) => continue,
            Err(e) => {
                tracing::warn!(endpoint = %endpoint.key(), error = %e, "cannot deregister the endpoint; its lease will expire instead");
                return;
            }
        }
    }
}
