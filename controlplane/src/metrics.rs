//! meshd's Prometheus metrics: one registry per node, held by
//! [`crate::cluster::ClusterOps`] so that every component of the node
//! counts into it, served on the `--http` port (`http.rs`). Raft's state
//! and the snapshots' figures are read when `/metrics` is scraped; writes,
//! discovery, tokens and certificates are counted as they happen. Every
//! series is listed in `docs/observability.md`.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use openraft::ServerState;
use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::Raft;

type UGauge = Gauge<u64, AtomicU64>;
type FGauge = Gauge<f64, AtomicU64>;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    result: &'static str,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FollowerLabels {
    follower: String,
}

/// Seconds buckets from 0.1 ms to about 26 s.
fn seconds() -> Histogram {
    Histogram::new(exponential_buckets(0.0001, 2.0, 19))
}

/// The metrics of one node.
pub struct NodeMetrics {
    registry: Registry,
    /// Every family registered (`<prefix>_<name>`) and its type
    /// (`counter`, `gauge`, `histogram`).
    families: Vec<(String, &'static str)>,
    // Read at scrape time.
    term: UGauge,
    leader: Gauge<i64, AtomicI64>,
    is_leader: Gauge,
    has_leader: Gauge,
    applied: UGauge,
    last_log: UGauge,
    commit: UGauge,
    apply_lag: UGauge,
    snapshot_index: UGauge,
    purged_index: UGauge,
    replication_lag: Family<FollowerLabels, UGauge>,
    snapshots: Family<KindLabels, Counter>,
    snapshots_seen: Mutex<(u64, u64)>,
    snapshot_bytes: UGauge,
    snapshot_seconds: Family<KindLabels, FGauge>,
    rss: UGauge,
    // Counted as they happen.
    writes: Family<ResultLabels, Histogram>,
    proposals: Histogram,
    proposal_commands: Histogram,
    streams: Gauge,
    deltas: Family<KindLabels, Counter>,
    delta_bytes: Counter,
    ack_seconds: Histogram,
    converged_seconds: Histogram,
    unconverged: Counter,
    bootstrap: Family<OutcomeLabels, Counter>,
    admin_auth: Family<OutcomeLabels, Counter>,
    certificates: Family<KindLabels, Counter>,
}

impl std::fmt::Debug for NodeMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NodeMetrics")
    }
}

impl Default for NodeMetrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Registers `metric` as `name` and notes the name.
fn reg<M: prometheus_client::registry::Metric>(
    r: &mut Registry,
    names: &mut Vec<(&'static str, &'static str)>,
    name: &'static str,
    help: &str,
    metric: M,
) {
    let kind = match metric.metric_type() {
        prometheus_client::metrics::MetricType::Counter => "counter",
        prometheus_client::metrics::MetricType::Histogram => "histogram",
        _ => "gauge",
    };
    names.push((name, kind));
    r.register(name, help, metric);
}

impl NodeMetrics {
    /// The name of every family (as in `# HELP` lines; a family with no
    /// series yet is not in the exposition at all).
    pub fn families(&self) -> &[(String, &'static str)] {
        &self.families
    }

    /// A registry with every series of a node.
    pub fn new() -> Self {
        let mut r = Registry::with_prefix("raftmesh");
        let m = Self {
            registry: Registry::default(),
            families: Vec::new(),
            term: Gauge::default(),
            leader: Gauge::default(),
            is_leader: Gauge::default(),
            has_leader: Gauge::default(),
            applied: Gauge::default(),
            last_log: Gauge::default(),
            commit: Gauge::default(),
            apply_lag: Gauge::default(),
            snapshot_index: Gauge::default(),
            purged_index: Gauge::default(),
            replication_lag: Family::default(),
            snapshots: Family::default(),
            snapshots_seen: Mutex::new((0, 0)),
            snapshot_bytes: Gauge::default(),
            snapshot_seconds: Family::default(),
            rss: Gauge::default(),
            writes: Family::new_with_constructor(seconds),
            proposals: seconds(),
            proposal_commands: Histogram::new(exponential_buckets(1.0, 2.0, 10)),
            streams: Gauge::default(),
            deltas: Family::default(),
            delta_bytes: Counter::default(),
            ack_seconds: seconds(),
            converged_seconds: seconds(),
            unconverged: Counter::default(),
            bootstrap: Family::default(),
            admin_auth: Family::default(),
            certificates: Family::default(),
        };
        let mut names = Vec::new();
        reg(
            &mut r,
            &mut names,
            "raft_term",
            "Current Raft term",
            m.term.clone(),
        );
        reg(
            &mut r,
            &mut names,
            "raft_leader",
            "The node id of the leader this node knows (-1: none)",
            m.leader.clone(),
        );
        reg(
            &mut r,
            &mut names,
            "raft_is_leader",
            "1 if this node leads",
            m.is_leader.clone(),
        );
        reg(
            &mut r,
            &mut names,
            "raft_has_leader",
            "1 if this node knows a leader",
            m.has_leader.clone(),
        );
        reg(
            &mut r,
            &mut names,
            "raft_applied_index",
            "Last applied log index (revision)",
            m.applied.clone(),
        );
        reg(
            &mut r,
            &mut names,
            "raft_last_log_index",
            "Last log index",
            m.last_log.clone(),
        );
        reg(
            &mut r,
            &mut names,
            "raft_commit_index",
            "Highest index a majority holds (on the leader only)",
            m.commit.clone(),
        );
        reg(
            &mut r,
            &mut names,
            "raft_apply_lag_entries",
            "Entries in this node's log not applied yet",
            m.apply_lag.clone(),
        );
        reg(
            &mut r,
            &mut names,
            "raft_snapshot_index",
            "Index of the last snapshot",
            m.snapshot_index.clone(),
        );
        reg(
            &mut r,
            &mut names,
            "raft_purged_index",
            "Last log index removed after a snapshot",
            m.purged_index.clone(),
        );
        reg(
            &mut r,
            &mut names,
            "raft_replication_lag_entries",
            "Entries a follower lacks (on the leader only)",
            m.replication_lag.clone(),
        );
        reg(
            &mut r,
            &mut names,
            "raft_snapshots",
            "Snapshots built here or installed from the leader, by kind",
            m.snapshots.clone(),
        );
        reg(
            &mut r,
            &mut names,
            "raft_snapshot_bytes",
            "Size of the last snapshot built or installed",
            m.snapshot_bytes.clone(),
        );
        reg(
            &mut r,
            &mut names,
            "raft_snapshot_last_seconds",
            "How long the last snapshot took to build or install, by kind",
            m.snapshot_seconds.clone(),
        );
        reg(
            &mut r,
            &mut names,
            "process_resident_memory_bytes",
            "Resident memory",
            m.rss.clone(),
        );
        reg(
            &mut r,
            &mut names,
            "write_duration_seconds",
            "Admin and proxy writes on this node, from the call to the applied answer, by result",
            m.writes.clone(),
        );
        reg(&mut r, &mut names,
            "raft_proposal_duration_seconds",
            "Raft proposals of the leader (one log entry each, many writes grouped), to commit and apply",
            m.proposals.clone(),
        );
        reg(
            &mut r,
            &mut names,
            "raft_proposal_commands",
            "Writes grouped in one Raft proposal",
            m.proposal_commands.clone(),
        );
        reg(
            &mut r,
            &mut names,
            "discovery_streams",
            "Proxy discovery streams open on this node",
            m.streams.clone(),
        );
        reg(
            &mut r,
            &mut names,
            "discovery_deltas_sent",
            "Deltas sent to proxies, by kind (full, delta)",
            m.deltas.clone(),
        );
        reg(
            &mut r,
            &mut names,
            "discovery_sent_bytes",
            "Encoded bytes of the deltas sent to proxies",
            m.delta_bytes.clone(),
        );
        reg(
            &mut r,
            &mut names,
            "discovery_ack_seconds",
            "Time from sending a delta to a proxy to its acknowledgement",
            m.ack_seconds.clone(),
        );
        reg(&mut r, &mut names,
            "discovery_converged_seconds",
            "Time from this node applying a revision to every proxy on this node it concerns acknowledging it",
            m.converged_seconds.clone(),
        );
        reg(
            &mut r,
            &mut names,
            "discovery_unconverged_revisions",
            "Revisions given up on: a proxy on this node had not acknowledged them when 256 newer ones were waiting (a stuck or refusing proxy)",
            m.unconverged.clone(),
        );
        reg(
            &mut r,
            &mut names,
            "bootstrap_tokens",
            "Proxy bootstrap tokens presented, by result (used, refused) and reason",
            m.bootstrap.clone(),
        );
        reg(
            &mut r,
            &mut names,
            "admin_authentications",
            "Admin API calls authenticated, by result (ok, refused) and reason",
            m.admin_auth.clone(),
        );
        reg(
            &mut r,
            &mut names,
            "certificates_issued",
            "Workload certificates issued, by kind (first, renewal)",
            m.certificates.clone(),
        );
        Self {
            registry: r,
            families: names
                .iter()
                .map(|(n, k)| (format!("raftmesh_{n}"), *k))
                .collect(),
            ..m
        }
    }

    /// A write answered (`ok`, or `error`) after `took`.
    pub fn write(&self, ok: bool, took: Duration) {
        self.writes
            .get_or_create(&ResultLabels {
                result: if ok { "ok" } else { "error" },
            })
            .observe(took.as_secs_f64());
    }

    /// A Raft proposal of `commands` writes answered after `took`.
    pub fn proposal(&self, commands: usize, took: Duration) {
        self.proposals.observe(took.as_secs_f64());
        self.proposal_commands.observe(commands as f64);
    }

    /// A discovery stream opened; it counts until the guard drops.
    pub fn stream_opened(&self) -> StreamGuard {
        self.streams.inc();
        StreamGuard(self.streams.clone())
    }

    /// A delta of `bytes` sent.
    pub fn delta_sent(&self, full: bool, bytes: usize) {
        self.deltas
            .get_or_create(&KindLabels {
                kind: if full { "full" } else { "delta" },
            })
            .inc();
        self.delta_bytes.inc_by(bytes as u64);
    }

    /// A delta acknowledged `took` after it was sent.
    pub fn acked(&self, took: Duration) {
        self.ack_seconds.observe(took.as_secs_f64());
    }

    /// A revision given up on: some proxy on this node never acknowledged
    /// it while 256 newer ones came.
    pub fn unconverged(&self) {
        self.unconverged.inc();
    }

    /// A revision every proxy it concerned acknowledged, `took` after this
    /// node applied it.
    pub fn converged(&self, took: Duration) {
        self.converged_seconds.observe(took.as_secs_f64());
    }

    /// A bootstrap token used (`reason` `None`) or refused.
    pub fn bootstrap(&self, refused: Option<&'static str>) {
        self.bootstrap
            .get_or_create(&OutcomeLabels {
                result: if refused.is_some() { "refused" } else { "used" },
                reason: refused.unwrap_or(""),
            })
            .inc();
    }

    /// An admin call authenticated (`refused` `None`) or refused.
    pub fn admin_auth(&self, refused: Option<&'static str>) {
        self.admin_auth
            .get_or_create(&OutcomeLabels {
                result: if refused.is_some() { "refused" } else { "ok" },
                reason: refused.unwrap_or(""),
            })
            .inc();
    }

    /// A workload certificate issued.
    pub fn certificate(&self, renewal: bool) {
        self.certificates
            .get_or_create(&KindLabels {
                kind: if renewal { "renewal" } else { "first" },
            })
            .inc();
    }

    /// The text exposition, with Raft's state and the snapshots' figures
    /// read now.
    pub fn render(&self, raft: &Raft, reader: &raftmesh_storage::StateReader) -> String {
        let m = raft.metrics().borrow().clone();
        self.term.set(m.current_term);
        self.leader.set(
            m.current_leader
                .map_or(-1, |l| i64::try_from(l).unwrap_or(-1)),
        );
        self.is_leader
            .set(i64::from(m.state == ServerState::Leader));
        self.has_leader.set(i64::from(m.current_leader.is_some()));
        let applied = m.last_applied.map(|l| l.index).unwrap_or(0);
        let last_log = m.last_log_index.unwrap_or(0);
        self.applied.set(applied);
        self.last_log.set(last_log);
        self.apply_lag.set(last_log.saturating_sub(applied));
        self.snapshot_index
            .set(m.snapshot.map(|l| l.index).unwrap_or(0));
        self.purged_index
            .set(m.purged.map(|l| l.index).unwrap_or(0));
        self.replication_lag.clear();
        if let Some(rep) = &m.replication {
            // The commit index is the highest one a majority of voters
            // holds (the leader holds its whole log).
            let voters: Vec<u64> = m.membership_config.membership().voter_ids().collect();
            let mut held: Vec<u64> = voters
                .iter()
                .map(|v| {
                    if *v == m.id {
                        last_log
                    } else {
                        rep.get(v).and_then(|l| l.as_ref()).map_or(0, |l| l.index)
                    }
                })
                .collect();
            held.sort_unstable_by(|a, b| b.cmp(a));
            if let Some(c) = held.get(held.len() / 2) {
                self.commit.set(*c);
            }
            for (id, matched) in rep.iter().filter(|(id, _)| **id != m.id) {
                let at = matched.as_ref().map_or(0, |l| l.index);
                self.replication_lag
                    .get_or_create(&FollowerLabels {
                        follower: id.to_string(),
                    })
                    .set(last_log.saturating_sub(at));
            }
        } else {
            self.commit.set(0);
        }
        let s = reader.snapshots();
        let (built, installed) = (
            s.built.load(Ordering::Relaxed),
            s.installed.load(Ordering::Relaxed),
        );
        {
            let mut seen = self
                .snapshots_seen
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let kind = |kind| KindLabels { kind };
            self.snapshots
                .get_or_create(&kind("built"))
                .inc_by(built.saturating_sub(seen.0));
            self.snapshots
                .get_or_create(&kind("installed"))
                .inc_by(installed.saturating_sub(seen.1));
            *seen = (built.max(seen.0), installed.max(seen.1));
            self.snapshot_seconds
                .get_or_create(&kind("build"))
                .set(s.last_build_us.load(Ordering::Relaxed) as f64 / 1e6);
            self.snapshot_seconds
                .get_or_create(&kind("install"))
                .set(s.last_install_us.load(Ordering::Relaxed) as f64 / 1e6);
        }
        self.snapshot_bytes
            .set(s.last_bytes.load(Ordering::Relaxed));
        self.rss.set(crate::procinfo::rss_bytes());
        let mut out = String::new();
        if let Err(e) = encode(&mut out, &self.registry) {
            tracing::warn!(error = %e, "encoding metrics failed");
            out.clear();
        }
        out
    }
}

/// Counts an open discovery stream until dropped.
pub struct StreamGuard(Gauge);

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}
