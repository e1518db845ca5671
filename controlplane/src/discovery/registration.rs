//! Endpoint registration: a proxy's own Endpoint, written when its stream
//! opens (retried while there is no leader) and kept in step with the
//! readiness it reports. One task per stream, so registration and health
//! updates never race.

use std::convert::Infallible;
use std::time::Duration;

use raftmesh_api::{Health, Resource, ResourceKey, Spec};
use raftmesh_storage::Command;
use tokio::sync::watch;

use super::Ctx;
use crate::cluster::{Change, UpdateError};

/// Registers the proxy's Endpoint (retrying while there is no leader),
/// then keeps its health in step with what the proxy reports. One task per
/// stream, so registration and health updates never race.
pub(super) async fn keep_endpoint(
    ctx: &Ctx,
    mut endpoint: Resource,
    mut ready: watch::Receiver<bool>,
) {
    for attempt in 0u32.. {
        if let Spec::Endpoint(e) = &mut endpoint.spec {
            e.health = if *ready.borrow_and_update() {
                Health::Healthy
            } else {
                Health::Unhealthy
            };
        }
        match ctx
            .ops
            .write(Command::Put {
                resource: endpoint.clone(),
                expected_revision: None,
            })
            .await
        {
            Ok(_) => break,
            Err(e) => {
                if attempt % 10 == 0 {
                    tracing::warn!(endpoint = %endpoint.key(), error = %e, "cannot register the endpoint yet; retrying");
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
    let key = endpoint.key();
    while ready.changed().await.is_ok() {
        let want = *ready.borrow_and_update();
        set_health(ctx, &key, want).await;
    }
}

/// Sets the Endpoint's health, and this node as its lease holder, by
/// compare-and-set on what the leader has (this node may not have applied
/// the registration, or another node's update, yet).
async fn set_health(ctx: &Ctx, key: &ResourceKey, ready: bool) {
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
