//! The nemesis: faults injected into a running cluster, chosen from a
//! seeded schedule so a seed replays the same sequence of faults.

use std::fmt;

use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::cluster::Cluster;

/// One kind of fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Fault {
    /// Cut one node off from the others.
    IsolateOne,
    /// Cut the leader off.
    IsolateLeader,
    /// Split into a majority and a minority (random members).
    MajorityMinority,
    /// Two halves that only one node (the bridge) can reach both of.
    Bridge,
    /// Each node reaches only its ring neighbours (5 nodes: overlapping majorities).
    Ring,
    /// kill -9 a node, restart it at heal.
    KillOne,
    /// kill -9 the leader, restart it at heal.
    KillLeader,
    /// SIGSTOP the leader, SIGCONT at heal.
    PauseLeader,
    /// SIGSTOP a node, SIGCONT at heal.
    PauseOne,
    /// Restart a node under libfaketime (clock offset and rate), back at heal.
    ClockSkew,
    /// Drop 30 % of messages between nodes.
    Lossy,
    /// Delay every message between nodes by 100 ms.
    Slow,
    /// kill -9 every node and lose every write not synced to disk (lazyfs),
    /// as a power cut does; restart them all at heal. Root only.
    PowerLoss,
}

impl Fault {
    /// Every fault kind.
    pub const ALL: [Fault; 13] = [
        Fault::IsolateOne,
        Fault::IsolateLeader,
        Fault::MajorityMinority,
        Fault::Bridge,
        Fault::Ring,
        Fault::KillOne,
        Fault::KillLeader,
        Fault::PauseLeader,
        Fault::PauseOne,
        Fault::ClockSkew,
        Fault::Lossy,
        Fault::Slow,
        Fault::PowerLoss,
    ];

    /// Every fault kind this machine can inject (power loss needs root and
    /// `/dev/fuse`; without them it is left out, with a line saying so).
    pub fn available() -> Vec<Fault> {
        match crate::cluster::power_loss_available() {
            Ok(()) => Self::ALL.to_vec(),
            Err(why) => {
                eprintln!("chaos: no power-loss faults: {why}");
                Self::ALL
                    .into_iter()
                    .filter(|f| *f != Fault::PowerLoss)
                    .collect()
            }
        }
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = serde_json::to_value(self)
            .ok()
            .and_then(|v| v.as_str().map(String::from))
            .unwrap_or_default();
        f.write_str(&s)
    }
}

/// What the nemesis did, to undo it.
#[derive(Debug, Default)]
pub struct Injected {
    killed: Vec<u64>,
    paused: Vec<u64>,
    skewed: Vec<u64>,
}

async fn leader_or_random(c: &Cluster, rng: &mut StdRng) -> u64 {
    match c.wait_leader(std::time::Duration::from_secs(3)).await {
        Ok(l) => l,
        Err(_) => rng.random_range(1..=c.nodes.len() as u64),
    }
}

/// Injects `f`; returns a description and what to undo.
pub async fn inject(
    c: &mut Cluster,
    f: Fault,
    rng: &mut StdRng,
) -> Result<(String, Injected), String> {
    let n = c.nodes.len() as u64;
    let all: Vec<u64> = (1..=n).collect();
    let mut undo = Injected::default();
    let what = match f {
        Fault::IsolateOne | Fault::IsolateLeader => {
            let v = if f == Fault::IsolateLeader {
                leader_or_random(c, rng).await
            } else {
                rng.random_range(1..=n)
            };
            let rest: Vec<u64> = all.iter().copied().filter(|x| *x != v).collect();
            c.net.partition(&[vec![v], rest])?;
            format!("{f} (node {v})")
        }
        Fault::MajorityMinority => {
            let mut shuffled = all.clone();
            for i in (1..shuffled.len()).rev() {
                shuffled.swap(i, rng.random_range(0..=i));
            }
            let k = (n as usize) / 2 + 1;
            let (maj, min) = shuffled.split_at(k);
            c.net.partition(&[maj.to_vec(), min.to_vec()])?;
            format!("{f} ({maj:?} | {min:?})")
        }
        Fault::Bridge => {
            let b = rng.random_range(1..=n);
            let rest: Vec<u64> = all.iter().copied().filter(|x| *x != b).collect();
            let (a, z) = rest.split_at(rest.len() / 2);
            let mut links = Vec::new();
            for x in a {
                for y in z {
                    links.push((*x, *y));
                    links.push((*y, *x));
                }
            }
            c.net.cut_links(&links)?;
            format!("{f} (bridge node {b} between {a:?} and {z:?})")
        }
        Fault::Ring => {
            let mut links = Vec::new();
            for x in 1..=n {
                for y in 1..=n {
                    let d = (x as i64 - y as i64).rem_euclid(n as i64);
                    if x != y && d != 1 && d != n as i64 - 1 {
                        links.push((x, y));
                    }
                }
            }
            c.net.cut_links(&links)?;
            format!("{f} (each node reaches its two neighbours)")
        }
        Fault::KillOne | Fault::KillLeader => {
            let v = if f == Fault::KillLeader {
                leader_or_random(c, rng).await
            } else {
                rng.random_range(1..=n)
            };
            c.kill(v);
            undo.killed.push(v);
            format!("{f} (node {v})")
        }
        Fault::PauseOne | Fault::PauseLeader => {
            let v = if f == Fault::PauseLeader {
                leader_or_random(c, rng).await
            } else {
                rng.random_range(1..=n)
            };
            c.pause(v);
            undo.paused.push(v);
            format!("{f} (node {v})")
        }
        Fault::ClockSkew => {
            let v = rng.random_range(1..=n);
            let offset = *["+30s", "-30s", "+5m", "-2m"]
                .choose(rng)
                .unwrap_or(&"+30s");
            let rate = *["x1.0", "x1.5", "x0.7"].choose(rng).unwrap_or(&"x1.0");
            let ft = format!("{offset} {rate}");
            c.kill(v);
            c.start_node(v, Some(&ft))?;
            undo.skewed.push(v);
            format!("{f} (node {v}: {ft})")
        }
        Fault::Lossy => {
            c.net.lossy(0.3)?;
            format!("{f} (30 %)")
        }
        Fault::Slow => {
            c.net.slow(100)?;
            format!("{f} (100 ms)")
        }
        Fault::PowerLoss => {
            for v in all {
                c.kill(v);
                undo.killed.push(v);
            }
            c.power_cut()?;
            format!("{f} (every node)")
        }
    };
    Ok((what, undo))
}

/// Undoes `undo` and every network fault.
pub fn heal(c: &mut Cluster, undo: Injected) -> Result<(), String> {
    c.net.heal()?;
    for v in undo.paused {
        c.resume(v);
    }
    for v in undo.killed {
        c.start_node(v, None)?;
    }
    for v in undo.skewed {
        c.kill(v);
        c.start_node(v, None)?;
    }
    Ok(())
}
