//! The discovery hub: an actor that turns applied change events into
//! per-proxy pending changes, through an index of who calls which service.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use actix::prelude::{Actor, AsyncContext, Context, Handler, Message, StreamHandler};
use raftmesh_storage::{ChangeEvent, StateReader, WindowError};
use tokio_stream::wrappers::WatchStream;

use super::scope::{interest, Interest, Scope, ServiceId};
use super::session::Session;

/// Adds a session; answers the hub's revision (events after it will reach
/// the session).
#[derive(Message)]
#[rtype(result = "u64")]
pub struct Register(pub Arc<Session>);

/// Removes a session.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Unregister(pub u64);

/// Re-indexes a session after its scope changed.
#[derive(Message)]
#[rtype(result = "u64")]
pub struct Rescope(pub u64);

/// A session acknowledged a delta: the revisions waiting for it may have
/// converged.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Acked(pub u64);

/// Every session on this node.
#[derive(Message)]
#[rtype(result = "Vec<Arc<Session>>")]
pub struct ListSessions;

/// The proxies whose stream on this node ended less than a lease ago (each
/// until it reconnects here or its lease ends): not converged, for
/// `apply --wait`.
#[derive(Message)]
#[rtype(result = "Vec<super::session::SessionStatus>")]
pub struct ListDeparted;

/// The hub of one node.
pub struct DiscoveryHub {
    reader: StateReader,
    cursor: u64,
    sessions: HashMap<u64, (Arc<Session>, Scope)>,
    /// Sessions that ended, by `namespace/instance`, kept for `departed_ttl`.
    departed: HashMap<String, (super::session::SessionStatus, std::time::Instant)>,
    departed_ttl: std::time::Duration,
    callers: HashMap<ServiceId, HashSet<u64>>,
    members: HashMap<ServiceId, HashSet<u64>>,
    /// Revisions some sessions still have to acknowledge: when this node
    /// applied them, and each such session with the revision its delta
    /// must reach (for `discovery_converged_seconds`).
    waiting: std::collections::BTreeMap<u64, (std::time::Instant, HashMap<u64, u64>)>,
    metrics: Arc<crate::metrics::NodeMetrics>,
}

/// Revisions followed to their convergence at once (the oldest is dropped
/// beyond: a proxy that never acknowledges must not grow the hub).
const MAX_WAITING: usize = 256;

impl DiscoveryHub {
    /// A hub reading from `reader`, starting at its current revision; a
    /// proxy whose stream ended is remembered for `departed_ttl` (its
    /// endpoint lease).
    pub fn new(
        reader: StateReader,
        departed_ttl: std::time::Duration,
        metrics: Arc<crate::metrics::NodeMetrics>,
    ) -> Self {
        Self {
            waiting: Default::default(),
            metrics,
            cursor: reader.applied_revision(),
            reader,
            sessions: HashMap::new(),
            departed: HashMap::new(),
            departed_ttl,
            callers: HashMap::new(),
            members: HashMap::new(),
        }
    }

    fn index(&mut self, id: u64, scope: &Scope) {
        for s in &scope.calls {
            self.callers.entry(s.clone()).or_default().insert(id);
        }
        self.members
            .entry(scope.own.clone())
            .or_default()
            .insert(id);
    }

    fn unindex(&mut self, id: u64, scope: &Scope) {
        for s in &scope.calls {
            if let Some(set) = self.callers.get_mut(s) {
                set.remove(&id);
                if set.is_empty() {
                    self.callers.remove(s);
                }
            }
        }
        if let Some(set) = self.members.get_mut(&scope.own) {
            set.remove(&id);
            if set.is_empty() {
                self.members.remove(&scope.own);
            }
        }
    }

    /// Session `id` acknowledged (or left: `acked` `None`): the revisions
    /// every session they concerned has now acknowledged are observed.
    fn converge(&mut self, id: u64, acked: Option<u64>) {
        let metrics = &self.metrics;
        self.waiting.retain(|_, (at, waiting)| {
            if let Some(needs) = waiting.get(&id) {
                if acked.is_none_or(|a| a >= *needs) {
                    waiting.remove(&id);
                    if waiting.is_empty() {
                        metrics.converged(at.elapsed());
                        return false;
                    }
                }
            }
            true
        });
    }

    /// Hands each session the events it may care about, all in one call.
    fn route(&mut self, events: &[ChangeEvent]) {
        if events
            .iter()
            .any(|e| e.key.kind == raftmesh_api::Kind::Authority)
        {
            self.sessions.values().for_each(|(s, _)| s.bundle_changed());
        }
        let mut per_session: HashMap<u64, Vec<&ChangeEvent>> = HashMap::new();
        for ev in events {
            let mut targets: HashSet<u64> = HashSet::new();
            for r in ev.value.iter().chain(ev.previous.iter()) {
                match interest(r) {
                    Interest::Callers(s) => {
                        targets.extend(self.callers.get(&s).into_iter().flatten())
                    }
                    Interest::Members(s) => {
                        targets.extend(self.members.get(&s).into_iter().flatten())
                    }
                    Interest::Namespace(ns) => targets.extend(
                        self.members
                            .iter()
                            .filter(|((n, _), _)| *n == ns)
                            .flat_map(|(_, set)| set.iter().copied()),
                    ),
                    Interest::CallersAndMembers(s) => {
                        targets.extend(self.callers.get(&s).into_iter().flatten());
                        targets.extend(self.members.get(&s).into_iter().flatten());
                    }
                    Interest::Everyone => targets.extend(self.sessions.keys()),
                    Interest::Nobody => {}
                }
            }
            for id in targets {
                per_session.entry(id).or_default().push(ev);
            }
        }
        let newest = events.iter().map(|e| e.revision).max();
        let mut concerned = HashMap::new();
        for (id, evs) in per_session {
            if let Some((s, _)) = self.sessions.get(&id) {
                if let Some(rev) = s.offer(&evs) {
                    concerned.insert(id, rev);
                }
            }
        }
        if let (Some(rev), false) = (newest, concerned.is_empty()) {
            self.waiting
                .insert(rev, (std::time::Instant::now(), concerned));
            while self.waiting.len() > MAX_WAITING {
                // Held back too long (a stuck or refusing proxy): given up.
                self.waiting.pop_first();
                self.metrics.unconverged();
            }
        }
    }

    fn catch_up(&mut self) {
        match self.reader.changes_since(self.cursor) {
            Ok((applied, events)) => {
                self.route(&events);
                self.cursor = applied;
            }
            Err(WindowError::TooOld { .. }) => {
                // The window moved past us (a Raft snapshot was installed): every
                // proxy gets a full state.
                tracing::warn!(
                    cursor = self.cursor,
                    "discovery hub fell behind the change window; resyncing every proxy"
                );
                self.sessions.values().for_each(|(s, _)| s.request_resync());
                self.cursor = self.reader.applied_revision();
            }
            Err(WindowError::Ahead { applied, .. }) => self.cursor = applied,
        }
    }
}

impl Actor for DiscoveryHub {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.add_stream(WatchStream::new(self.reader.watch_applied()));
    }
}

impl StreamHandler<u64> for DiscoveryHub {
    fn handle(&mut self, _revision: u64, _: &mut Context<Self>) {
        self.catch_up();
    }

    fn finished(&mut self, _: &mut Context<Self>) {}
}

impl Handler<Register> for DiscoveryHub {
    type Result = u64;
    fn handle(&mut self, msg: Register, _: &mut Context<Self>) -> u64 {
        // Deliver what is already applied first, so the new session's
        // full state (taken after this) is never behind what it will get.
        self.catch_up();
        let scope = msg.0.scope();
        self.index(msg.0.id, &scope);
        self.departed
            .remove(&format!("{}/{}", msg.0.info.namespace, msg.0.info.instance));
        self.sessions.insert(msg.0.id, (msg.0, scope));
        self.cursor
    }
}

impl Handler<Unregister> for DiscoveryHub {
    type Result = ();
    fn handle(&mut self, msg: Unregister, _: &mut Context<Self>) {
        if let Some((session, scope)) = self.sessions.remove(&msg.0) {
            self.unindex(msg.0, &scope);
            let key = format!("{}/{}", session.info.namespace, session.info.instance);
            // Another stream of the same proxy still open here: not gone.
            let live = self.sessions.values().any(|(s, _)| {
                s.info.namespace == session.info.namespace
                    && s.info.instance == session.info.instance
            });
            if !live {
                let mut status = session.status();
                status.disconnected_since_ms = Some(crate::procinfo::unix_ms());
                self.departed
                    .insert(key, (status, std::time::Instant::now()));
            }
        }
        // It no longer holds back the revisions it had to acknowledge.
        self.converge(msg.0, None);
    }
}

impl Handler<Acked> for DiscoveryHub {
    type Result = ();
    fn handle(&mut self, msg: Acked, _: &mut Context<Self>) {
        let acked = self.sessions.get(&msg.0).map(|(s, _)| s.acked());
        if let Some(a) = acked {
            self.converge(msg.0, Some(a));
        }
    }
}

impl Handler<Rescope> for DiscoveryHub {
    type Result = u64;
    fn handle(&mut self, msg: Rescope, _: &mut Context<Self>) -> u64 {
        self.catch_up();
        if let Some((s, old)) = self.sessions.get(&msg.0).cloned() {
            self.unindex(msg.0, &old);
            let new = s.scope();
            self.index(msg.0, &new);
            self.sessions.insert(msg.0, (s, new));
        }
        self.cursor
    }
}

impl Handler<ListSessions> for DiscoveryHub {
    type Result = Vec<Arc<Session>>;
    fn handle(&mut self, _: ListSessions, _: &mut Context<Self>) -> Self::Result {
        self.sessions.values().map(|(s, _)| s.clone()).collect()
    }
}

impl Handler<ListDeparted> for DiscoveryHub {
    type Result = Vec<super::session::SessionStatus>;
    fn handle(&mut self, _: ListDeparted, _: &mut Context<Self>) -> Self::Result {
        let ttl = self.departed_ttl;
        self.departed.retain(|_, (_, at)| at.elapsed() < ttl);
        self.departed.values().map(|(s, _)| s.clone()).collect()
    }
}

/// Stops the hub (node shutdown).
#[derive(Message)]
#[rtype(result = "()")]
pub struct StopHub;

impl Handler<StopHub> for DiscoveryHub {
    type Result = ();
    fn handle(&mut self, _: StopHub, ctx: &mut Context<Self>) {
        use actix::ActorContext;
        ctx.stop();
    }
}
