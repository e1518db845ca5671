//! Fault injection for the chaos tests (`meshd server --fault-file`, a
//! hidden flag): delays and drops of this node's outgoing Raft messages to
//! chosen peers, read from a JSON file the harness rewrites while the node
//! runs. It is how the harness makes links slow or lossy without netem, and
//! partitions when it cannot use network namespaces. Off unless the flag
//! is given.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, SystemTime};

use serde::Deserialize;

use crate::NodeId;

/// The rules, as the file says them.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rules {
    /// Milliseconds added before each message to a peer.
    #[serde(default)]
    pub delay_ms: BTreeMap<NodeId, u64>,
    /// Probability (0–1) that a message to a peer is dropped.
    #[serde(default)]
    pub drop: BTreeMap<NodeId, f64>,
}

/// The live rules of one node.
#[derive(Debug, Default)]
pub struct Faults {
    rules: RwLock<Rules>,
}

impl Faults {
    /// Rules re-read from `file` every 100 ms (a missing or bad file means
    /// no faults; a bad one is reported once per change).
    pub fn watch(file: PathBuf) -> Arc<Self> {
        let f = Arc::new(Self::default());
        let weak = Arc::downgrade(&f);
        tokio::spawn(async move {
            let mut seen: Option<SystemTime> = None;
            while let Some(f) = weak.upgrade() {
                let mtime = std::fs::metadata(&file).and_then(|m| m.modified()).ok();
                if mtime != seen {
                    seen = mtime;
                    let rules = match std::fs::read(&file) {
                        Ok(b) => serde_json::from_slice(&b).unwrap_or_else(|e| {
                            tracing::warn!(file = %file.display(), error = %e, "bad fault file; no faults");
                            Rules::default()
                        }),
                        Err(_) => Rules::default(),
                    };
                    tracing::info!(?rules, "fault injection rules changed");
                    *f.rules.write().unwrap_or_else(PoisonError::into_inner) = rules;
                }
                drop(f);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        f
    }

    /// What to do with a message to `peer`: `None` to drop it, else a delay.
    pub fn outgoing(&self, peer: NodeId) -> Option<Duration> {
        let r = self.rules.read().unwrap_or_else(PoisonError::into_inner);
        if let Some(p) = r.drop.get(&peer) {
            if rand::random::<f64>() < *p {
                return None;
            }
        }
        Some(Duration::from_millis(
            r.delay_ms.get(&peer).copied().unwrap_or(0),
        ))
    }
}
