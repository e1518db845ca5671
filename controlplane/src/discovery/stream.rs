//! One proxy's stream after admission: the initial delta (what changed
//! since the proxy's revision, or a full state), then at most one
//! unacknowledged delta at a time, with what arrives meanwhile coalesced
//! into the next (latest value per key); certificates and trust bundles;
//! heartbeats and the idle timeout.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use raftmesh_api::v1 as pb;
use raftmesh_api::v1::proxy_message::Msg as In;
use raftmesh_api::v1::server_message::Msg as Out;
use raftmesh_api::{Resource, ResourceKey};
use raftmesh_storage::{Command, WindowError};
use tokio::sync::{mpsc, watch};
use tonic::{Status, Streaming};

use super::admission::{identity_status, Admitted};
use super::hub::{Register, Rescope, Unregister};
use super::registration::{deregister, keep_endpoint};
use super::scope::{denied_message, may_subscribe, parse_subscription, MAX_SUBSCRIPTIONS};
use super::session::{Next, Session};
use super::{full_state, Ctx};
use crate::ca;
use crate::procinfo::unix_ms;

fn delta(
    revision: u64,
    full: bool,
    upserts: Vec<Arc<Resource>>,
    removals: Vec<ResourceKey>,
) -> pb::Delta {
    pb::Delta {
        revision,
        upserts: upserts
            .into_iter()
            .map(|r| super::scope::for_proxy(&r).into())
            .collect(),
        removals: removals.into_iter().map(Into::into).collect(),
        full,
        nonce: format!("{revision}"),
    }
}

pub(super) type Tx = mpsc::Sender<Result<pb::ServerMessage, Status>>;

async fn send(tx: &Tx, msg: Out) -> bool {
    tx.send(Ok(pb::ServerMessage { msg: Some(msg) }))
        .await
        .is_ok()
}

struct Stream<'a> {
    ctx: &'a Ctx,
    session: Arc<Session>,
    tx: Tx,
    /// Revision of the last delta sent.
    sent: u64,
    /// Nonce of the delta in flight.
    in_flight: Option<(String, u64)>,
    /// When the last delta was sent.
    sent_at: std::time::Instant,
}

impl Stream<'_> {
    /// Makes sure the next delta's revision is above the last one sent: a
    /// full state caused by a new subscription reflects no new write, so
    /// one (empty) is made.
    async fn fresh_revision(&self) -> Result<(), Status> {
        if self.ctx.reader.applied_revision() > self.sent {
            return Ok(());
        }
        self.ctx
            .ops
            .write(Command::Group(Vec::new()))
            .await
            .map_err(|e| Status::unavailable(format!("cannot advance the revision: {e}")))?;
        self.ctx
            .ops
            .wait_applied(self.sent + 1, self.ctx.cfg.catch_up_timeout)
            .await
            .map_err(|e| Status::unavailable(e.to_string()))
    }

    async fn send_delta(&mut self, d: pb::Delta) -> Result<(), Status> {
        let rev = d.revision;
        self.in_flight = Some((d.nonce.clone(), rev));
        self.sent = rev;
        self.session.mark_sent(rev);
        self.ctx
            .ops
            .metrics()
            .delta_sent(d.full, prost::Message::encoded_len(&d));
        self.sent_at = std::time::Instant::now();
        if !send(&self.tx, Out::Delta(d)).await {
            return Err(Status::cancelled("the proxy went away"));
        }
        Ok(())
    }

    async fn send_full(&mut self) -> Result<(), Status> {
        self.fresh_revision().await?;
        let (rev, items) = full_state(&self.ctx.reader, &self.session.scope());
        self.session.rebase(rev);
        self.send_delta(delta(rev, true, items, Vec::new())).await
    }

    /// Sends what waits, if nothing is in flight.
    async fn flush(&mut self) -> Result<(), Status> {
        if self.session.take_bundle_changed() {
            if let Some(b) = ca::bundle_only(&self.ctx.reader) {
                if !send(&self.tx, Out::Certificate(b)).await {
                    return Err(Status::cancelled("the proxy went away"));
                }
            }
        }
        if self.in_flight.is_some() {
            return Ok(());
        }
        match self.session.take() {
            Next::Nothing => Ok(()),
            Next::Resync => self.send_full().await,
            Next::Changes { revision, changes } => {
                let (mut up, mut rm) = (Vec::new(), Vec::new());
                for (k, v) in changes {
                    match v {
                        Some(r) => up.push(r),
                        None => rm.push(k),
                    }
                }
                if revision <= self.sent {
                    // Cannot happen (events arrive in revision order, a whole
                    // revision at a time); if it did, a full state is the
                    // safe answer, since deltas only go forward.
                    tracing::error!(
                        revision,
                        sent = self.sent,
                        "delta would not move forward; sending a full state"
                    );
                    return self.send_full().await;
                }
                self.send_delta(delta(revision, false, up, rm)).await
            }
        }
    }

    /// The first delta: exactly what changed since the proxy's revision,
    /// or a full state when the window no longer reaches back.
    async fn initial(&mut self, last: u64) -> Result<(), Status> {
        self.sent = last;
        if last == 0 {
            return self.send_full().await;
        }
        let scope = self.session.scope();
        match self.ctx.reader.changes_since(last) {
            Ok((applied, events)) => {
                self.session.rebase(applied);
                if applied <= last {
                    return Ok(());
                }
                let mut changes: BTreeMap<ResourceKey, Option<Arc<Resource>>> = BTreeMap::new();
                for ev in events {
                    let now_in = ev.value.as_ref().is_some_and(|r| scope.wants(r));
                    let was_in = ev.previous.as_ref().is_some_and(|r| scope.wants(r));
                    if now_in {
                        changes.insert(ev.key, ev.value);
                    } else if was_in {
                        changes.insert(ev.key, None);
                    }
                }
                let (mut up, mut rm) = (Vec::new(), Vec::new());
                for (k, v) in changes {
                    match v {
                        Some(r) => up.push(r),
                        None => rm.push(k),
                    }
                }
                self.send_delta(delta(applied, false, up, rm)).await
            }
            Err(WindowError::TooOld { .. }) => self.send_full().await,
            Err(WindowError::Ahead { applied, .. }) => Err(Status::unavailable(format!(
                "node is at revision {applied}, behind the proxy's {last}"
            ))),
        }
    }

    async fn on_message(
        &mut self,
        msg: pb::ProxyMessage,
        ready: &watch::Sender<bool>,
    ) -> Result<(), Status> {
        match msg.msg {
            Some(In::Ack(a)) => {
                if let Some((nonce, rev)) = &self.in_flight {
                    if *nonce == a.nonce {
                        self.session.mark_acked(*rev);
                        self.ctx.ops.metrics().acked(self.sent_at.elapsed());
                        self.ctx.hub.do_send(super::hub::Acked(self.session.id));
                        self.in_flight = None;
                        self.flush().await?;
                    }
                }
            }
            Some(In::Nack(n)) => {
                if let Some((nonce, rev)) = &self.in_flight {
                    if *nonce == n.nonce {
                        tracing::warn!(instance = %self.session.info.instance, revision = rev, error = %n.error, "proxy refused a delta");
                        self.session
                            .mark_nacked(n.error.chars().take(500).collect());
                        self.in_flight = None;
                        self.flush().await?;
                    }
                }
            }
            Some(In::Health(h)) => {
                ready.send_replace(h.ready);
            }
            Some(In::Heartbeat(_)) => {}
            Some(In::TapRecord(r)) => self.ctx.ops.taps().deliver(&self.session.info, r),
            Some(In::Stats(st)) => match crate::livestats::validate(&self.session.info, &st)
                .and_then(|()| {
                    let info = &self.session.info;
                    let calls = self.session.scope().calls;
                    self.session
                        .reports
                        .push(unix_ms(), info.connected_since_ms, &calls, st)
                }) {
                Ok(0) => {}
                Ok(dropped) => {
                    tracing::debug!(instance = %self.session.info.instance, dropped, "dropped edges of a traffic report (to services the proxy does not call, or past the bound)");
                }
                Err(message) => {
                    // Dropped; the stream goes on.
                    tracing::warn!(instance = %self.session.info.instance, error = %message, "refused a traffic report");
                    let e = pb::StreamError {
                        code: "bad-stats".into(),
                        message,
                    };
                    if !send(&self.tx, Out::Error(e)).await {
                        return Err(Status::cancelled("the proxy went away"));
                    }
                }
            },
            Some(In::Subscribe(s)) => {
                let mut scope = self.session.scope();
                let info = &self.session.info;
                let td = crate::meshconfig::trust_domain(&self.ctx.reader, self.ctx.cluster_name());
                let who = raftmesh_api::spiffe_id(&td, &info.namespace, &info.service);
                for name in &s.services {
                    // One bad name is refused on its own; the stream goes on.
                    let refused = match parse_subscription(name, &scope.own.0) {
                        Err(e) => Some(("bad-subscription", e.to_string())),
                        Ok(id) if scope.calls.contains(&id) => None,
                        Ok(id) if !may_subscribe(&self.ctx.reader, &scope.own, &who, &id) => {
                            Some(("subscription-denied", denied_message(&who, &id)))
                        }
                        Ok(_) if scope.calls.len() >= MAX_SUBSCRIPTIONS => Some((
                            "subscription-limit",
                            format!(
                                "subscription \"{}\" refused: a proxy may subscribe to at most {MAX_SUBSCRIPTIONS} services",
                                name.chars().take(256).collect::<String>()
                            ),
                        )),
                        Ok(id) => {
                            scope.calls.insert(id);
                            None
                        }
                    };
                    if let Some((code, message)) = refused {
                        let e = pb::StreamError {
                            code: code.into(),
                            message,
                        };
                        if !send(&self.tx, Out::Error(e)).await {
                            return Err(Status::cancelled("the proxy went away"));
                        }
                    }
                }
                self.rescope(scope).await?;
            }
            Some(In::Unsubscribe(s)) => {
                let mut scope = self.session.scope();
                for name in &s.services {
                    if let Ok(id) = parse_subscription(name, &scope.own.0) {
                        scope.calls.remove(&id);
                    }
                }
                self.rescope(scope).await?;
            }
            Some(In::Hello(_)) => {
                return Err(Status::invalid_argument(
                    "Hello may only be the first message",
                ))
            }
            // Handled by the session loop.
            Some(In::Deregister(_)) => {}
            Some(In::CertificateRequest(c)) => {
                self.not_revoked()?;
                let info = &self.session.info;
                let cert = ca::certificate(
                    &self.ctx.reader,
                    self.ctx.ops.kek(),
                    self.ctx.cluster_name(),
                    &info.service,
                    &info.namespace,
                    &c.csr_pem,
                    unix_ms(),
                )
                .map_err(identity_status)?;
                self.ctx.ops.metrics().certificate(true);
                tracing::debug!(instance = %info.instance, "issued a rotated workload certificate");
                if !send(&self.tx, Out::Certificate(cert)).await {
                    return Err(Status::cancelled("the proxy went away"));
                }
            }
            None => return Err(Status::invalid_argument("empty message")),
        }
        Ok(())
    }
}

impl Stream<'_> {
    /// Ends the stream of a proxy whose identity or instance is revoked.
    fn not_revoked(&self) -> Result<(), Status> {
        let info = &self.session.info;
        let td = crate::meshconfig::trust_domain(&self.ctx.reader, self.ctx.cluster_name());
        let who = raftmesh_api::spiffe_id(&td, &info.namespace, &info.service);
        match crate::revocation::revoked(&self.ctx.reader, &who, &info.namespace, &info.instance) {
            Some(why) => Err(Status::permission_denied(why)),
            None => Ok(()),
        }
    }

    /// Puts a changed scope in force: the hub's index, then a resync of
    /// what the proxy now receives.
    async fn rescope(&mut self, scope: super::scope::Scope) -> Result<(), Status> {
        if scope == self.session.scope() {
            return Ok(());
        }
        self.session.set_scope(scope);
        self.ctx
            .hub
            .send(Rescope(self.session.id))
            .await
            .map_err(|_| Status::unavailable("the node is shutting down"))?;
        self.session.request_resync();
        self.flush().await
    }
}

pub(super) async fn run_session(
    ctx: Arc<Ctx>,
    a: Admitted,
    mut inbound: Streaming<pb::ProxyMessage>,
    tx: Tx,
) -> Result<(), Status> {
    let id = ctx.next_id.fetch_add(1, Ordering::Relaxed);
    let _open = ctx.ops.metrics().stream_opened();
    let session = Session::new(id, a.info.clone(), a.scope.clone());
    let (ready, ready_rx) = watch::channel(a.ready);
    let registration = a.endpoint.clone().map(|e| {
        let ctx = ctx.clone();
        tokio::spawn(async move { keep_endpoint(&ctx, e, ready_rx).await })
    });
    ctx.hub
        .send(Register(session.clone()))
        .await
        .map_err(|_| Status::unavailable("the node is shutting down"))?;
    tracing::debug!(instance = %a.info.instance, service = %a.info.service, last = a.last_revision, "discovery stream open");
    let mut s = Stream {
        ctx: &ctx,
        session: session.clone(),
        tx: tx.clone(),
        sent: 0,
        in_flight: None,
        sent_at: std::time::Instant::now(),
    };
    let result = async {
        if !a.csr_pem.is_empty() {
            let cert = ca::certificate(
                &ctx.reader,
                ctx.ops.kek(),
                ctx.cluster_name(),
                &a.info.service,
                &a.info.namespace,
                &a.csr_pem,
                unix_ms(),
            )
            .map_err(identity_status)?;
            ctx.ops.metrics().certificate(false);
            if !send(&tx, Out::Certificate(cert)).await {
                return Ok(());
            }
        } else if let Some(b) = ca::bundle_only(&ctx.reader) {
            // A reconnecting proxy gets the current trust bundle (the CA may
            // have rotated while it was away).
            if !send(&tx, Out::Certificate(b)).await {
                return Ok(());
            }
        }
        for e in &a.refused {
            if !send(&tx, Out::Error(e.clone())).await {
                return Ok(());
            }
        }
        s.initial(a.last_revision).await?;
        let mut heartbeat = tokio::time::interval(ctx.cfg.heartbeat);
        heartbeat.tick().await;
        let mut last_heard = tokio::time::Instant::now();
        loop {
            tokio::select! {
                msg = inbound.message() => {
                    match msg {
                        Ok(Some(pb::ProxyMessage { msg: Some(In::Deregister(_)) })) => {
                            // A drained proxy leaving: its Endpoint goes now,
                            // not a lease grace later; the stream's end
                            // tells the proxy it is done.
                            if let Some(h) = &registration {
                                h.abort();
                            }
                            if let Some(e) = &a.endpoint {
                                deregister(&ctx, e).await;
                            }
                            tracing::info!(instance = %a.info.instance, "proxy deregistered");
                            return Ok(());
                        }
                        Ok(Some(m)) => {
                            last_heard = tokio::time::Instant::now();
                            s.on_message(m, &ready).await?;
                        }
                        Ok(None) => return Ok(()),
                        Err(e) => return Err(e),
                    }
                }
                _ = session.notify.notified() => {
                    // A revocation reaches every stream: the revoked one ends.
                    s.not_revoked()?;
                    for t in session.take_taps() {
                        if !send(&tx, Out::Tap(t)).await {
                            return Ok(());
                        }
                    }
                    if s.in_flight.is_none() {
                        s.flush().await?;
                    } else if session.take_bundle_changed() {
                        // A new trust bundle goes out at once, delta in flight or not.
                        if let Some(b) = ca::bundle_only(&ctx.reader) {
                            if !send(&tx, Out::Certificate(b)).await {
                                return Ok(());
                            }
                        }
                    }
                }
                _ = heartbeat.tick() => {
                    if last_heard.elapsed() > ctx.cfg.idle_timeout {
                        return Err(Status::deadline_exceeded("no message from the proxy for too long"));
                    }
                    if !send(&tx, Out::Heartbeat(pb::Heartbeat { unix_ms: unix_ms() })).await {
                        return Ok(());
                    }
                }
            }
        }
    }
    .await;
    if let Some(h) = registration {
        h.abort();
    }
    ctx.hub.do_send(Unregister(id));
    tracing::debug!(instance = %a.info.instance, "discovery stream closed");
    result
}
