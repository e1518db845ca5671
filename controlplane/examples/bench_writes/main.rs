//! Committed writes per second and write latency of a 3-node cluster.
//!
//! Starts real `meshd` processes (release build) on loopback with their own
//! sled directories, then for each client count runs that many concurrent
//! clients, each on its own connection, applying one Service per request
//! for `--duration`, and prints a table of writes/s and p50/p99 latency.
//!
//! With `--etcd`, a three-member etcd cluster (Debian's `etcd-server`) runs
//! beside it and each client count is measured on both, one after the
//! other, with the same number of clients and the same value bytes (the
//! encoded apply request) per write, each to its cluster's leader.
//!
//! ```sh
//! cargo build --release -p raftmesh-controlplane
//! cargo run --release -p raftmesh-controlplane --example bench_writes -- --clients 1,16,64
//! cargo run --release -p raftmesh-controlplane --example bench_writes -- --etcd
//! ```

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use clap::Parser;
use raftmesh_api::v1 as pb;
use raftmesh_api::{Resource, ServicePort, ServiceSpec, Spec};

#[derive(Parser)]
struct Args {
    /// The meshd binary.
    #[arg(long, default_value = "target/release/meshd")]
    meshd: PathBuf,
    /// Client counts to measure, in order.
    #[arg(long, value_delimiter = ',', default_value = "1,16,64")]
    clients: Vec<usize>,
    /// Measuring time per client count.
    #[arg(long, default_value = "10s")]
    duration: humantime::Duration,
    /// Keep each node's log here (RAFTMESH_LOG sets the level).
    #[arg(long)]
    log_dir: Option<PathBuf>,
    /// Send writes to a follower (forwarded) instead of the leader.
    #[arg(long)]
    via_follower: bool,
    /// Measure a three-member etcd cluster too, in the same run.
    #[arg(long)]
    etcd: bool,
    /// The etcd binary.
    #[arg(long, default_value = "/usr/bin/etcd")]
    etcd_bin: PathBuf,
    /// Rounds: each client count measured this many times (alternating
    /// meshd and etcd with --etcd).
    #[arg(long, default_value_t = 1)]
    rounds: usize,
}

mod etcd;

/// The processes of the run, killed at the end.
pub struct Procs(Vec<Child>);

/// A free port on loopback.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Makes one client's writer.
type MakeWriter<'a> = Box<dyn Fn() -> Writer + 'a>;

/// One writer per client: meshd's admin API or etcd's KV.
enum Writer {
    Mesh(raftmesh_client::Admin),
    Etcd(etcd::Etcd),
}

impl Writer {
    async fn write(&mut self, name: String, port: u32) -> bool {
        let req = service(name.clone(), port);
        match self {
            Writer::Mesh(c) => c.apply(req).await.is_ok(),
            Writer::Etcd(e) => {
                // The bytes meshd's apply request carries.
                let value = prost::Message::encode_to_vec(&req);
                e.put(format!("/bench/{name}").into_bytes(), value)
                    .await
                    .is_ok()
            }
        }
    }
}

/// `n` clients writing for `dur` after a second of warm-up: writes/s, p50,
/// p99, errors.
async fn measure(
    n: usize,
    dur: Duration,
    make: impl Fn() -> Writer,
) -> (f64, Duration, Duration, u64) {
    let warmup = Duration::from_secs(1);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for t in 0..n {
        let mut w = make();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut errors = 0u64;
            let mut i = 0u32;
            while start.elapsed() < warmup + dur {
                let t0 = Instant::now();
                let ok = w
                    .write(format!("bench-{n}-{t}-{}", i % 50), 1 + (i % 60000))
                    .await;
                let took = t0.elapsed();
                if t0 >= start + warmup {
                    if ok {
                        lat.push(took)
                    } else {
                        errors += 1
                    }
                }
                i += 1;
            }
            (lat, errors)
        }));
    }
    let mut all = Vec::new();
    let mut errors = 0;
    for t in tasks {
        let (l, e) = t.await.unwrap();
        all.extend(l);
        errors += e;
    }
    all.sort();
    let rate = all.len() as f64 / dur.as_secs_f64();
    (rate, pct(&all, 0.5), pct(&all, 0.99), errors)
}

impl Drop for Procs {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

const TOKEN: &str = "bench-admin-secret";

fn client(addr: &str) -> raftmesh_client::Admin {
    raftmesh_client::admin_client(addr, Some(TOKEN), None).unwrap()
}

fn service(name: String, port: u32) -> pb::ApplyRequest {
    let r = Resource::new(
        name,
        Spec::Service(ServiceSpec {
            vip: None,
            ports: vec![ServicePort {
                port,
                protocol: Default::default(),
            }],
        }),
    );
    pb::ApplyRequest {
        items: vec![pb::ApplyItem {
            resource: Some(r.into()),
            expected_revision: None,
        }],
    }
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    assert!(
        args.meshd.exists(),
        "{} not found: build it with cargo build --release -p raftmesh-controlplane",
        args.meshd.display()
    );
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("token"), TOKEN).unwrap();
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let initial = ports
        .iter()
        .enumerate()
        .map(|(i, p)| format!("{}=127.0.0.1:{p}", i + 1))
        .collect::<Vec<_>>()
        .join(",");
    let mut procs = Procs(vec![]);
    for (i, p) in ports.iter().enumerate() {
        let id = i + 1;
        procs.0.push(
            Command::new(&args.meshd)
                .args([
                    "server",
                    "--id",
                    &id.to_string(),
                    "--listen",
                    &format!("127.0.0.1:{p}"),
                    "--http",
                    "off",
                ])
                .arg("--data-dir")
                .arg(dir.path().join(format!("n{id}")))
                .args(["--initial-cluster", &initial])
                .arg("--admin-token-file")
                .arg(dir.path().join("token"))
                .stdout(Stdio::null())
                .stderr(match &args.log_dir {
                    Some(d) => {
                        Stdio::from(std::fs::File::create(d.join(format!("n{id}.log"))).unwrap())
                    }
                    None => Stdio::null(),
                })
                .spawn()
                .unwrap(),
        );
    }
    let addrs: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    // Wait for a leader and the admin token.
    let deadline = Instant::now() + Duration::from_secs(20);
    let leader = loop {
        if let Ok(s) = client(&addrs[0])
            .cluster_status(pb::ClusterStatusRequest {})
            .await
        {
            if let Some(l) = s.into_inner().leader {
                break l;
            }
        }
        assert!(Instant::now() < deadline, "cluster did not start");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let target = if args.via_follower {
        addrs[(leader as usize) % 3].clone()
    } else {
        addrs[leader as usize - 1].clone()
    };
    eprintln!(
        "3 meshd nodes up, leader {leader}; writing to {} ({})",
        target,
        if args.via_follower {
            "a follower"
        } else {
            "the leader"
        }
    );
    let etcd_leader = if args.etcd {
        let a = etcd::start(&args.etcd_bin, dir.path(), &mut procs).await;
        eprintln!("3 etcd members up; writing to the leader {a}");
        Some(a)
    } else {
        None
    };
    println!("| clients | store | writes/s | p50 | p99 | errors |");
    println!("|---|---|---|---|---|---|");
    let dur: Duration = args.duration.into();
    for _ in 0..args.rounds {
        for &n in &args.clients {
            let mut runs: Vec<(&str, MakeWriter)> =
                vec![("meshd", Box::new(|| Writer::Mesh(client(&target))))];
            if let Some(a) = &etcd_leader {
                runs.push(("etcd", Box::new(move || Writer::Etcd(etcd::Etcd::new(a)))));
            }
            for (store, make) in runs {
                let (rate, p50, p99, errors) = measure(n, dur, make).await;
                println!(
                    "| {n} | {store} | {rate:.0} | {:.2} ms | {:.2} ms | {errors} |",
                    p50.as_secs_f64() * 1e3,
                    p99.as_secs_f64() * 1e3
                );
            }
        }
    }
    // Memory and disk after the run (sled's growth is a known risk).
    if let Ok(s) = client(&target)
        .cluster_status(pb::ClusterStatusRequest {})
        .await
    {
        let s = s.into_inner();
        let rss: Vec<String> = s
            .members
            .iter()
            .map(|m| format!("{:.1}", m.rss_bytes as f64 / 1048576.0))
            .collect();
        let du = |p: &std::path::Path| -> u64 {
            fn walk(p: &std::path::Path) -> u64 {
                std::fs::read_dir(p)
                    .map(|rd| {
                        rd.flatten()
                            .map(|e| {
                                let m = e.metadata().unwrap();
                                if m.is_dir() {
                                    walk(&e.path())
                                } else {
                                    m.len()
                                }
                            })
                            .sum()
                    })
                    .unwrap_or(0)
            }
            walk(p)
        };
        let disk: Vec<String> = (1..=3)
            .map(|i| {
                format!(
                    "{:.1}",
                    du(&dir.path().join(format!("n{i}"))) as f64 / 1048576.0
                )
            })
            .collect();
        println!();
        println!(
            "after {} committed writes: RSS per node {} MiB; data dir per node {} MiB",
            s.applied_index,
            rss.join(" / "),
            disk.join(" / ")
        );
    }
    drop(procs);
}
