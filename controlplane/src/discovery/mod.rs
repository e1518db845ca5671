//! Discovery: one bidirectional gRPC stream per proxy, carrying deltas of
//! the mesh state in the proxy's scope.
//!
//! The [`hub::DiscoveryHub`] actor routes applied change events to the
//! sessions that care (an index by service). Each stream is an owned tokio
//! task rather than an actor: a node holds thousands of streams, and actix
//! actors of one arbiter share a thread, while tasks spread over the worker
//! pool and cost a few hundred bytes each (docs/adr/0002-discovery.md).
//!
//! Per stream: a first `Hello` (validated, its bootstrap token checked), an
//! initial delta (what changed since the proxy's last revision, or a full
//! state), then at most one unacknowledged delta at a time; changes that
//! arrive meanwhile coalesce into the next one (latest value per key), so a
//! slow proxy costs memory bounded by its scope, never by the rate of change.

pub mod hub;
pub mod identity;
pub mod leases;
pub mod scope;
pub mod session;

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix::Addr;
use raftmesh_api::v1 as pb;
use raftmesh_api::v1::discovery_server::Discovery;
use raftmesh_api::v1::proxy_message::Msg as In;
use raftmesh_api::v1::server_message::Msg as Out;
use raftmesh_api::{
    EndpointSpec, Health, Kind, Metadata, Resource, ResourceKey, Spec, DEFAULT_NAMESPACE,
};
use raftmesh_storage::{Command, OpResult, StateReader, WindowError};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::auth;
use crate::cluster::{ClusterOps, LeaderRequest, LeaderResponse};
use crate::procinfo::unix_ms;
use hub::{DiscoveryHub, Register, Rescope, Unregister};
use scope::{parse_subscription, Scope, MAX_SUBSCRIPTIONS};
use session::{Next, ProxyInfo, Session};

/// Discovery settings of a node.
#[derive(Debug, Clone)]
pub struct DiscoveryConfig {
    /// How long to wait for the first message.
    pub hello_timeout: Duration,
    /// How long a node that is behind the proxy's revision waits to catch up.
    pub catch_up_timeout: Duration,
    /// Server heartbeat interval.
    pub heartbeat: Duration,
    /// A stream silent for this long is closed.
    pub idle_timeout: Duration,
    /// Largest message accepted from a proxy.
    pub max_message_bytes: usize,
    /// The cluster's name (default trust domain `<name>.mesh`).
    pub cluster_name: String,
}

impl Default for DiscoveryConfig {
    fn default() -> Self {
        Self {
            hello_timeout: Duration::from_secs(10),
            catch_up_timeout: Duration::from_secs(5),
            heartbeat: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(35),
            max_message_bytes: 256 * 1024,
            cluster_name: "raftmesh".into(),
        }
    }
}

/// The Discovery gRPC service of one node.
#[derive(Clone)]
pub struct DiscoveryService {
    ctx: Arc<Ctx>,
}

struct Ctx {
    ops: Arc<ClusterOps>,
    reader: StateReader,
    hub: Addr<DiscoveryHub>,
    cfg: DiscoveryConfig,
    next_id: AtomicU64,
}

impl Ctx {
    fn cluster_name(&self) -> &str {
        &self.cfg.cluster_name
    }
}

impl DiscoveryService {
    /// The service over a node's state and hub.
    pub fn new(
        ops: Arc<ClusterOps>,
        reader: StateReader,
        hub: Addr<DiscoveryHub>,
        cfg: DiscoveryConfig,
    ) -> Self {
        Self {
            ctx: Arc::new(Ctx {
                ops,
                reader,
                hub,
                cfg,
                next_id: AtomicU64::new(1),
            }),
        }
    }

    /// Largest message this service accepts.
    pub fn max_message_bytes(&self) -> usize {
        self.ctx.cfg.max_message_bytes
    }
}

/// A validated Hello.
struct Admitted {
    info: ProxyInfo,
    scope: Scope,
    endpoint: Option<Resource>,
    last_revision: u64,
    ready: bool,
    csr_pem: String,
}

fn invalid(field: &str, why: impl std::fmt::Display) -> Status {
    Status::invalid_argument(format!("hello.{field}: {why}"))
}

fn check_hello(h: &pb::Hello, node_id: u64) -> Result<Admitted, Status> {
    let namespace = if h.namespace.is_empty() {
        DEFAULT_NAMESPACE.to_string()
    } else {
        h.namespace.clone()
    };
    raftmesh_api::validate::dns_label(&h.service).map_err(|e| invalid("service", e))?;
    raftmesh_api::validate::dns_label(&namespace).map_err(|e| invalid("namespace", e))?;
    raftmesh_api::validate::dns_label(&h.instance).map_err(|e| invalid("instance", e))?;
    if h.subscriptions.len() > MAX_SUBSCRIPTIONS {
        return Err(invalid(
            "subscriptions",
            format!(
                "{} listed, at most {MAX_SUBSCRIPTIONS}",
                h.subscriptions.len()
            ),
        ));
    }
    let calls = h
        .subscriptions
        .iter()
        .map(|s| parse_subscription(s, &namespace))
        .collect::<Result<BTreeSet<_>, _>>()
        .map_err(|e| invalid("subscriptions", e))?;
    let endpoint = if h.port == 0 {
        None
    } else {
        let r = Resource {
            metadata: Metadata {
                name: h.instance.clone(),
                namespace: namespace.clone(),
                revision: None,
            },
            spec: Spec::Endpoint(EndpointSpec {
                service: h.service.clone(),
                address: if h.address.is_empty() {
                    "127.0.0.1".into()
                } else {
                    h.address.clone()
                },
                port: h.port,
                labels: h.labels.clone(),
                cluster: h.cluster.clone(),
                locality: h.locality.clone(),
                health: if h.ready {
                    Health::Healthy
                } else {
                    Health::Unhealthy
                },
                identity: h.identity.clone(),
                lease_node: Some(node_id),
            }),
        };
        r.validate()
            .map_err(|e| Status::invalid_argument(format!("hello: {e}")))?;
        if let Spec::Endpoint(e) = &r.spec {
            if e.address.parse::<IpAddr>().is_err()
                && raftmesh_api::validate::dns_subdomain(&e.address).is_err()
            {
                return Err(invalid("address", "not an IP address or DNS name"));
            }
        }
        Some(r)
    };
    Ok(Admitted {
        info: ProxyInfo {
            instance: h.instance.clone(),
            service: h.service.clone(),
            namespace: namespace.clone(),
            node_id,
            connected_since_ms: unix_ms(),
        },
        scope: Scope {
            own: (namespace, h.service.clone()),
            calls,
        },
        endpoint,
        last_revision: h.last_revision,
        ready: h.ready,
        csr_pem: h.csr_pem.clone(),
    })
}

impl Ctx {
    async fn write(&self, cmd: Command) -> Result<raftmesh_storage::Response, String> {
        match self.ops.submit(LeaderRequest::Write(cmd)).await {
            Ok(LeaderResponse::Written(r)) => Ok(r),
            Ok(other) => Err(format!("unexpected answer {other:?}")),
            Err(e) => Err(e.to_string()),
        }
    }

    /// Counts a use of a limited token, through Raft (compare-and-set), so
    /// a single-use token works once even against two nodes at once.
    async fn consume(&self, b: &auth::Bootstrap) -> Result<(), Status> {
        let Spec::Token(t) = &b.token.spec else {
            return Ok(());
        };
        if t.max_uses.is_none() {
            return Ok(());
        }
        let mut updated = (*b.token).clone();
        if let Spec::Token(t) = &mut updated.spec {
            t.uses += 1;
        }
        let r = self
            .write(Command::Put {
                resource: updated,
                expected_revision: b.token.metadata.revision,
            })
            .await
            .map_err(Status::unavailable)?;
        match r.results.first() {
            Some(OpResult::Ok { .. }) => Ok(()),
            _ => Err(Status::permission_denied(format!(
                "bootstrap token {} was used concurrently and is now used up",
                b.token.metadata.name
            ))),
        }
    }

    async fn admit(&self, h: &pb::Hello) -> Result<Admitted, Status> {
        let mut a = check_hello(h, self.ops.id())?;
        let td = identity::trust_domain(&self.reader, self.cluster_name());
        if let Some(Resource {
            spec: Spec::Endpoint(e),
            ..
        }) = &mut a.endpoint
        {
            e.identity = raftmesh_api::spiffe_id(&td, &a.info.namespace, &a.info.service);
        }
        if !h.certificate_pem.is_empty() {
            // A proxy that holds a certificate proves who it is with it.
            identity::check_certificate(
                &self.reader,
                self.cluster_name(),
                h,
                &a.info.service,
                &a.info.namespace,
                unix_ms(),
            )?;
            return self.caught_up(a).await;
        }
        let check = || {
            auth::check_bootstrap(
                &self.reader,
                &h.token,
                &a.info.service,
                &a.info.namespace,
                unix_ms(),
            )
        };
        let b = match check() {
            // A token created a moment ago may not have reached this node:
            // catch up with the leader before calling it unknown.
            Err(auth::BootstrapError::Unknown) if self.ops.read_barrier().await.is_ok() => check(),
            other => other,
        };
        let b = b.map_err(|e| match e {
            auth::BootstrapError::Missing | auth::BootstrapError::Unknown => {
                Status::unauthenticated(e.to_string())
            }
            _ => Status::permission_denied(e.to_string()),
        })?;
        self.consume(&b).await?;
        self.caught_up(a).await
    }

    /// Never hand a proxy an older view than it holds.
    async fn caught_up(&self, a: Admitted) -> Result<Admitted, Status> {
        if a.last_revision > self.reader.applied_revision() {
            self.ops
                .wait_applied(a.last_revision, self.cfg.catch_up_timeout)
                .await
                .map_err(|_| {
                    Status::unavailable(format!(
                        "node {} has applied revision {}, behind the proxy's {}; try another node",
                        self.ops.id(),
                        self.reader.applied_revision(),
                        a.last_revision
                    ))
                })?;
        }
        Ok(a)
    }

    /// Every resource in `scope`, at one revision.
    fn full_state(&self, scope: &Scope) -> (u64, Vec<Arc<Resource>>) {
        full_state(&self.reader, scope)
    }
}

/// Every resource in `scope`, and the revision it reflects.
pub fn full_state(reader: &StateReader, scope: &Scope) -> (u64, Vec<Arc<Resource>>) {
    reader.view(|v| {
        let mut out = Vec::new();
        for (ns, svc) in &scope.calls {
            if let Some(s) = v.get(&ResourceKey::new(Kind::Service, ns.clone(), svc.clone())) {
                out.push(s);
            }
            out.extend(v.for_service(Kind::Endpoint, ns, svc));
            out.extend(v.for_service(Kind::Route, ns, svc));
        }
        out.extend(v.for_service(Kind::Policy, &scope.own.0, &scope.own.1));
        out.extend(v.of_kind(Kind::MeshConfig));
        (v.revision(), out)
    })
}

fn delta(
    revision: u64,
    full: bool,
    upserts: Vec<Arc<Resource>>,
    removals: Vec<ResourceKey>,
) -> pb::Delta {
    pb::Delta {
        revision,
        upserts: upserts.into_iter().map(|r| (*r).clone().into()).collect(),
        removals: removals.into_iter().map(Into::into).collect(),
        full,
        nonce: format!("{revision}"),
    }
}

type Tx = mpsc::Sender<Result<pb::ServerMessage, Status>>;

async fn send(tx: &Tx, msg: Out) -> bool {
    tx.send(Ok(pb::ServerMessage { msg: Some(msg) }))
        .await
        .is_ok()
}

#[tonic::async_trait]
impl Discovery for DiscoveryService {
    type StreamStream = ReceiverStream<Result<pb::ServerMessage, Status>>;

    async fn stream(
        &self,
        req: Request<Streaming<pb::ProxyMessage>>,
    ) -> Result<Response<Self::StreamStream>, Status> {
        let mut inbound = req.into_inner();
        let first = tokio::time::timeout(self.ctx.cfg.hello_timeout, inbound.message())
            .await
            .map_err(|_| Status::deadline_exceeded("no Hello within the time limit"))??;
        let hello = match first.and_then(|m| m.msg) {
            Some(In::Hello(h)) => h,
            Some(_) => {
                return Err(Status::invalid_argument(
                    "the first message of a stream must be Hello",
                ))
            }
            None => return Err(Status::invalid_argument("the stream ended before Hello")),
        };
        let admitted = self.ctx.admit(&hello).await?;
        // Outbound is bounded: the session sends one delta, then waits for
        // the ack; heartbeats and errors are all else.
        let (tx, rx) = mpsc::channel(4);
        let ctx = self.ctx.clone();
        tokio::spawn(async move {
            let instance = admitted.info.instance.clone();
            if let Err(e) = run_session(ctx, admitted, inbound, tx.clone()).await {
                tracing::info!(%instance, error = %e.message(), "discovery stream closed with an error");
                let _ = tx.send(Err(e)).await;
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// Registers the proxy's Endpoint (retrying while there is no leader),
/// then keeps its health in step with what the proxy reports. One task per
/// stream, so registration and health updates never race.
async fn keep_endpoint(ctx: &Ctx, mut endpoint: Resource, mut ready: watch::Receiver<bool>) {
    for attempt in 0u32.. {
        if let Spec::Endpoint(e) = &mut endpoint.spec {
            e.health = if *ready.borrow_and_update() {
                Health::Healthy
            } else {
                Health::Unhealthy
            };
        }
        match ctx
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

/// Sets the Endpoint's health (compare-and-set on what is stored).
async fn set_health(ctx: &Ctx, key: &ResourceKey, ready: bool) {
    let want = if ready {
        Health::Healthy
    } else {
        Health::Unhealthy
    };
    for _ in 0..5 {
        // Read what the leader has: this node may not have applied the
        // registration (or another node's update) yet.
        if let Err(e) = ctx.ops.read_barrier().await {
            tracing::warn!(endpoint = %key, error = %e, "cannot read the endpoint to update its health");
            tokio::time::sleep(Duration::from_millis(500)).await;
            continue;
        }
        let Some(cur) = ctx.reader.get(key).1 else {
            return;
        };
        let mut updated = (*cur).clone();
        let Spec::Endpoint(e) = &mut updated.spec else {
            return;
        };
        if e.health == want && e.lease_node == Some(ctx.ops.id()) {
            return;
        }
        e.health = want;
        e.lease_node = Some(ctx.ops.id());
        match ctx
            .write(Command::Put {
                resource: updated,
                expected_revision: cur.metadata.revision,
            })
            .await
        {
            Ok(r) if r.results.first().is_some_and(OpResult::is_ok) => return,
            Ok(_) => continue,
            Err(e) => {
                tracing::warn!(endpoint = %key, error = %e, "cannot update endpoint health");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

struct Stream<'a> {
    ctx: &'a Ctx,
    session: Arc<Session>,
    tx: Tx,
    /// Revision of the last delta sent.
    sent: u64,
    /// Nonce of the delta in flight.
    in_flight: Option<(String, u64)>,
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
        if !send(&self.tx, Out::Delta(d)).await {
            return Err(Status::cancelled("the proxy went away"));
        }
        Ok(())
    }

    async fn send_full(&mut self) -> Result<(), Status> {
        self.fresh_revision().await?;
        let (rev, items) = self.ctx.full_state(&self.session.scope());
        self.session.rebase(rev);
        self.send_delta(delta(rev, true, items, Vec::new())).await
    }

    /// Sends what waits, if nothing is in flight.
    async fn flush(&mut self) -> Result<(), Status> {
        if self.session.take_bundle_changed() {
            if let Some(b) = identity::bundle_only(&self.ctx.reader) {
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
            Some(In::Subscribe(s)) => {
                let mut scope = self.session.scope();
                for name in &s.services {
                    scope.calls.insert(
                        parse_subscription(name, &scope.own.0).map_err(Status::invalid_argument)?,
                    );
                }
                if scope.calls.len() > MAX_SUBSCRIPTIONS {
                    return Err(Status::invalid_argument(format!(
                        "more than {MAX_SUBSCRIPTIONS} subscriptions"
                    )));
                }
                if scope != self.session.scope() {
                    self.session.set_scope(scope);
                    self.ctx
                        .hub
                        .send(Rescope(self.session.id))
                        .await
                        .map_err(|_| Status::unavailable("the node is shutting down"))?;
                    self.session.request_resync();
                    self.flush().await?;
                }
            }
            Some(In::Hello(_)) => {
                return Err(Status::invalid_argument(
                    "Hello may only be the first message",
                ))
            }
            Some(In::CertificateRequest(c)) => {
                let info = &self.session.info;
                let cert = identity::certificate(
                    &self.ctx.reader,
                    self.ctx.cluster_name(),
                    &info.service,
                    &info.namespace,
                    &c.csr_pem,
                    unix_ms(),
                )?;
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

async fn run_session(
    ctx: Arc<Ctx>,
    a: Admitted,
    mut inbound: Streaming<pb::ProxyMessage>,
    tx: Tx,
) -> Result<(), Status> {
    let id = ctx.next_id.fetch_add(1, Ordering::Relaxed);
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
    };
    let result = async {
        if !a.csr_pem.is_empty() {
            let cert = identity::certificate(
                &ctx.reader,
                ctx.cluster_name(),
                &a.info.service,
                &a.info.namespace,
                &a.csr_pem,
                unix_ms(),
            )?;
            if !send(&tx, Out::Certificate(cert)).await {
                return Ok(());
            }
        } else if let Some(b) = identity::bundle_only(&ctx.reader) {
            // A reconnecting proxy gets the current trust bundle (the CA may
            // have rotated while it was away).
            if !send(&tx, Out::Certificate(b)).await {
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
                        Ok(Some(m)) => {
                            last_heard = tokio::time::Instant::now();
                            s.on_message(m, &ready).await?;
                        }
                        Ok(None) => return Ok(()),
                        Err(e) => return Err(e),
                    }
                }
                _ = session.notify.notified() => {
                    if s.in_flight.is_none() {
                        s.flush().await?;
                    } else if session.take_bundle_changed() {
                        // A new trust bundle goes out at once, delta in flight or not.
                        if let Some(b) = identity::bundle_only(&ctx.reader) {
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

/// Every proxy connected to any node of the cluster, sorted by instance,
/// and the nodes that could not be asked.
pub async fn cluster_sessions(
    ops: &ClusterOps,
    hub: &Addr<DiscoveryHub>,
) -> (Vec<session::SessionStatus>, Vec<u64>) {
    let mut out: Vec<session::SessionStatus> = match hub.send(hub::ListSessions).await {
        Ok(s) => s.iter().map(|s| s.status()).collect(),
        Err(_) => Vec::new(),
    };
    let mut missing = Vec::new();
    let view = ops.membership_view();
    for id in view.voters.iter().chain(view.learners.iter()).copied() {
        if id == ops.id() {
            continue;
        }
        let asked = async {
            let addr = ops.addr_of(id).ok_or(())?;
            let mut client = ops.pool().get(&addr).map_err(|_| ())?;
            let mut req = Request::new(pb::RaftPayload {
                json: b"null".to_vec(),
            });
            req.set_timeout(Duration::from_secs(2));
            let reply = client.sessions(req).await.map_err(|_| ())?;
            serde_json::from_slice::<Vec<session::SessionStatus>>(&reply.get_ref().json)
                .map_err(|_| ())
        };
        match asked.await {
            Ok(s) => out.extend(s),
            Err(()) => missing.push(id),
        }
    }
    out.sort_by(|a, b| {
        (&a.info.namespace, &a.info.instance).cmp(&(&b.info.namespace, &b.info.instance))
    });
    (out, missing)
}

/// The scope a status describes.
pub fn scope_of(s: &session::SessionStatus) -> Scope {
    Scope {
        own: (s.info.namespace.clone(), s.info.service.clone()),
        calls: s
            .subscriptions
            .iter()
            .filter_map(|x| parse_subscription(x, &s.info.namespace).ok())
            .collect(),
    }
}
