//! What the hub and a stream's task share about one proxy: its scope, the
//! changes waiting for it (coalesced: latest value per key), and what it
//! was sent and has acknowledged.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use raftmesh_api::{Resource, ResourceKey};
use raftmesh_storage::ChangeEvent;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use super::scope::Scope;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Nothing panics while holding these locks (plain map operations).
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Who a stream belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProxyInfo {
    /// Instance id (the Endpoint's name).
    pub instance: String,
    /// Its service.
    pub service: String,
    /// Its namespace.
    pub namespace: String,
    /// The meshd node holding the stream.
    pub node_id: u64,
    /// Unix milliseconds.
    pub connected_since_ms: u64,
}

/// A proxy's status, as `meshctl proxies` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionStatus {
    /// Who.
    pub info: ProxyInfo,
    /// Revision of the last delta sent.
    pub sent_revision: u64,
    /// Revision of the last delta acknowledged.
    pub acked_revision: u64,
    /// The services it calls (`name.namespace`).
    pub subscriptions: Vec<String>,
    /// The last NACK's error, if the last delta was refused.
    pub nack: Option<String>,
    /// When its stream ended, for a proxy gone from this node whose lease
    /// has not ended yet (`None`: connected). Nodes of earlier versions
    /// send none.
    #[serde(default)]
    pub disconnected_since_ms: Option<u64>,
}

#[derive(Debug, Default)]
struct Pending {
    /// Events at or before this revision are already reflected.
    base: u64,
    /// Latest value per key since the last delta (`None` = remove).
    changes: BTreeMap<ResourceKey, Option<Arc<Resource>>>,
    /// Revision of the newest change held.
    revision: u64,
    /// The next delta must be a full state.
    resync: bool,
}

/// What to send next.
#[derive(Debug)]
pub enum Next {
    /// Nothing waiting.
    Nothing,
    /// A full state.
    Resync,
    /// These changes, at this revision.
    Changes {
        /// Revision of the newest change.
        revision: u64,
        /// Latest value per key.
        changes: BTreeMap<ResourceKey, Option<Arc<Resource>>>,
    },
}

/// State shared between the hub and one stream's task.
#[derive(Debug)]
pub struct Session {
    /// Unique on this node.
    pub id: u64,
    /// Who.
    pub info: ProxyInfo,
    scope: Mutex<Scope>,
    pending: Mutex<Pending>,
    /// Woken when something is waiting.
    pub notify: Notify,
    sent: AtomicU64,
    acked: AtomicU64,
    nack: Mutex<Option<String>>,
    bundle_changed: std::sync::atomic::AtomicBool,
    /// The last minute of its traffic reports (`meshctl stat`).
    pub reports: crate::livestats::Reports,
    /// Taps to start or stop on the proxy (`meshctl tap`), not sent yet.
    taps: Mutex<Vec<raftmesh_api::v1::TapStart>>,
}

impl Session {
    /// The CA's roots changed: the proxy gets the new trust bundle.
    pub fn bundle_changed(&self) {
        self.bundle_changed.store(true, Ordering::SeqCst);
        self.notify.notify_one();
    }

    /// A tap to start or stop on the proxy: sent at once.
    pub fn push_tap(&self, t: raftmesh_api::v1::TapStart) {
        lock(&self.taps).push(t);
        self.notify.notify_one();
    }

    /// The taps waiting to be sent.
    pub fn take_taps(&self) -> Vec<raftmesh_api::v1::TapStart> {
        std::mem::take(&mut *lock(&self.taps))
    }

    /// Whether a new trust bundle waits (and clears the flag).
    pub fn take_bundle_changed(&self) -> bool {
        self.bundle_changed.swap(false, Ordering::SeqCst)
    }

    /// A new session; `base` is the revision its first delta reflects.
    pub fn new(id: u64, info: ProxyInfo, scope: Scope) -> Arc<Self> {
        Arc::new(Self {
            id,
            info,
            scope: Mutex::new(scope),
            pending: Mutex::new(Pending::default()),
            notify: Notify::new(),
            sent: AtomicU64::new(0),
            acked: AtomicU64::new(0),
            nack: Mutex::new(None),
            bundle_changed: std::sync::atomic::AtomicBool::new(false),
            reports: crate::livestats::Reports::default(),
            taps: Mutex::default(),
        })
    }

    /// The proxy's scope now.
    pub fn scope(&self) -> Scope {
        lock(&self.scope).clone()
    }

    /// Replaces the scope; the caller then asks for a resync.
    pub fn set_scope(&self, scope: Scope) {
        *lock(&self.scope) = scope;
    }

    /// Takes in the changes that concern this proxy, all at once (so a
    /// delta never holds part of a revision): an upsert when the new value
    /// is in scope, a removal when only the old one was.
    /// Answers the newest revision it queued (`None`: nothing concerned
    /// this proxy after all).
    pub fn offer(&self, events: &[&ChangeEvent]) -> Option<u64> {
        let scope = lock(&self.scope);
        let mine: Vec<(&ChangeEvent, bool)> = events
            .iter()
            .filter_map(|ev| {
                let now_in = ev.value.as_ref().is_some_and(|r| scope.wants(r));
                let was_in = ev.previous.as_ref().is_some_and(|r| scope.wants(r));
                (now_in || was_in).then_some((*ev, now_in))
            })
            .collect();
        drop(scope);
        if mine.is_empty() {
            return None;
        }
        let mut p = lock(&self.pending);
        let mut newest = None;
        for (ev, now_in) in mine {
            if ev.revision <= p.base {
                continue;
            }
            let v = if now_in { ev.value.clone() } else { None };
            p.changes.insert(ev.key.clone(), v);
            p.revision = p.revision.max(ev.revision);
            newest = newest.max(Some(ev.revision));
        }
        drop(p);
        if newest.is_some() {
            self.notify.notify_one();
        }
        newest
    }

    /// The revision of the last delta it acknowledged.
    pub fn acked(&self) -> u64 {
        self.acked.load(Ordering::SeqCst)
    }

    /// Asks for a full state next.
    pub fn request_resync(&self) {
        lock(&self.pending).resync = true;
        self.notify.notify_one();
    }

    /// Takes what waits to be sent.
    pub fn take(&self) -> Next {
        let mut p = lock(&self.pending);
        if p.resync {
            p.resync = false;
            p.changes.clear();
            return Next::Resync;
        }
        if p.changes.is_empty() {
            return Next::Nothing;
        }
        Next::Changes {
            revision: p.revision,
            changes: std::mem::take(&mut p.changes),
        }
    }

    /// Everything up to `revision` is in what was just built (a full state):
    /// drop older waiting changes and ignore older events from now on.
    pub fn rebase(&self, revision: u64) {
        let mut p = lock(&self.pending);
        p.base = p.base.max(revision);
        if p.revision <= revision {
            p.changes.clear();
        } else {
            // Keep only changes newer than the full state; their values are
            // the latest anyway, so re-sending them is harmless.
        }
    }

    /// Records a delta sent.
    pub fn mark_sent(&self, revision: u64) {
        self.sent.store(revision, Ordering::SeqCst);
    }

    /// Records an ACK of the delta at `revision`.
    pub fn mark_acked(&self, revision: u64) {
        self.acked.fetch_max(revision, Ordering::SeqCst);
        *lock(&self.nack) = None;
    }

    /// Records a NACK.
    pub fn mark_nacked(&self, error: String) {
        *lock(&self.nack) = Some(error);
    }

    /// Revision of the last delta sent.
    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::SeqCst)
    }

    /// The status `meshctl proxies` shows.
    pub fn status(&self) -> SessionStatus {
        let scope = self.scope();
        SessionStatus {
            info: self.info.clone(),
            sent_revision: self.sent(),
            acked_revision: self.acked.load(Ordering::SeqCst),
            subscriptions: scope
                .calls
                .iter()
                .map(|(ns, n)| format!("{n}.{ns}"))
                .collect(),
            nack: lock(&self.nack).clone(),
            disconnected_since_ms: None,
        }
    }
}
