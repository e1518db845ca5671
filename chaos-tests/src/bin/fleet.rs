//! fleet: N simulated proxies, each on its own connection, speaking the real
//! discovery protocol to a real cluster; applies M changes and prints one
//! JSON line of what it measured.
//!
//! ```sh
//! fleet --control-plane 127.0.0.1:7101,127.0.0.1:7102,127.0.0.1:7103 --token-file admin.token \
//!       --proxies 10000 --services 200 --subscriptions 3 --changes 100
//! ```
//!
//! With the admin token it mints one bootstrap token per service, as an
//! operator would. Each proxy belongs to one service and calls K others.
//! Changes are Route edits, one at a time: for each, the latency from just
//! before the write to each subscribed proxy's receipt (and immediate ack)
//! of a delta at or past the write's revision, and the bytes every proxy
//! received meanwhile, split by whether it subscribes to the changed service.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use prost::Message;
use raftmesh_api::v1 as pb;
use raftmesh_api::v1::discovery_client::DiscoveryClient;
use raftmesh_api::v1::proxy_message::Msg as In;
use raftmesh_api::v1::server_message::Msg as Out;
use raftmesh_api::Resource;
use raftmesh_chaos_tests::client::{admin, channel, cluster_status};
use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use tokio::sync::mpsc;

#[derive(Parser, Debug)]
#[command(about = "Simulate a fleet of proxies against a real Raftmesh cluster")]
struct Args {
    /// meshd addresses; proxies spread over them.
    #[arg(long, value_delimiter = ',')]
    control_plane: Vec<String>,
    /// A file holding an admin token.
    #[arg(long)]
    token_file: std::path::PathBuf,
    /// Simulated proxies (one connection each).
    #[arg(long, default_value_t = 1000)]
    proxies: usize,
    /// Services in the mesh.
    #[arg(long, default_value_t = 100)]
    services: usize,
    /// Services each proxy calls.
    #[arg(long, default_value_t = 3)]
    subscriptions: usize,
    /// Route changes to apply, one at a time.
    #[arg(long, default_value_t = 50)]
    changes: usize,
    /// Connections opened at once while the fleet comes up.
    #[arg(long, default_value_t = 200)]
    connect_concurrency: usize,
    /// Seed for the choice of subscriptions and changed services.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Per-change time limit.
    #[arg(long, default_value = "30s")]
    change_timeout: humantime::Duration,
}

/// What one simulated proxy has seen.
struct ProxyStats {
    /// Revision of the last delta received (and acked).
    revision: AtomicU64,
    /// Bytes of deltas received.
    bytes: AtomicU64,
    /// Receipt time of the last delta, in µs since the fleet started.
    last_at_us: AtomicU64,
}

fn route(service: &str, v1: u32) -> Resource {
    let y = format!(
        "kind: Route\nmetadata: {{name: {service}}}\nspec:\n  service: {service}\n  rules:\n    - backends:\n        - {{subset: {{version: v1}}, weight: {v1}}}\n        - {{subset: {{version: v2}}, weight: {}}}\n",
        100 - v1
    );
    // The text above is a valid Route for any v1 <= 100.
    #[allow(clippy::expect_used)]
    serde_yaml_ng::from_str(&y).expect("route document")
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

async fn run_proxy(
    addr: String,
    hello: pb::Hello,
    stats: Arc<ProxyStats>,
    start: Instant,
    ready: Arc<AtomicUsize>,
) -> anyhow::Result<()> {
    let mut client = DiscoveryClient::new(channel(&addr)?);
    let (tx, rx) = mpsc::channel(8);
    tx.send(pb::ProxyMessage {
        msg: Some(In::Hello(hello)),
    })
    .await?;
    let mut inbound = client
        .stream(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .context("opening the stream")?
        .into_inner();
    let mut first = true;
    let mut heartbeat = tokio::time::interval(Duration::from_secs(10));
    loop {
        tokio::select! {
            m = inbound.message() => {
                let Some(m) = m? else { bail!("stream ended") };
                if let Some(Out::Delta(d)) = m.msg {
                    stats.bytes.fetch_add(d.encoded_len() as u64, Ordering::Relaxed);
                    stats.last_at_us.store(start.elapsed().as_micros() as u64, Ordering::Relaxed);
                    stats.revision.store(d.revision, Ordering::Release);
                    tx.send(pb::ProxyMessage { msg: Some(In::Ack(pb::Ack { nonce: d.nonce })) }).await?;
                    if first {
                        first = false;
                        ready.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            _ = heartbeat.tick() => {
                tx.send(pb::ProxyMessage { msg: Some(In::Heartbeat(pb::Heartbeat { unix_ms: 0 })) }).await?;
            }
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.control_plane.is_empty() {
        bail!("--control-plane: give at least one meshd address");
    }
    if args.subscriptions > args.services {
        bail!("--subscriptions must not exceed --services");
    }
    let token = std::fs::read_to_string(&args.token_file)
        .with_context(|| format!("reading --token-file {}", args.token_file.display()))?
        .trim()
        .to_string();
    let addrs = args.control_plane.clone();
    let mut adm = admin(&addrs[0], &token)?;
    let mut rng = StdRng::seed_from_u64(args.seed);
    let services: Vec<String> = (0..args.services)
        .map(|i| format!("fleet-svc-{i}"))
        .collect();

    // The mesh: services and their routes, and a bootstrap token per service.
    eprintln!("fleet: creating {} services and routes", services.len());
    for chunk in services.chunks(100) {
        let items = chunk
            .iter()
            .flat_map(|s| {
                let svc: Option<Resource> = serde_yaml_ng::from_str(&format!(
                    "kind: Service\nmetadata: {{name: {s}}}\nspec: {{ports: [{{port: 80}}]}}"
                ))
                .ok();
                svc.into_iter().chain(std::iter::once(route(s, 100)))
            })
            .map(|r| pb::ApplyItem {
                resource: Some(r.into()),
                expected_revision: None,
            })
            .collect();
        adm.apply(pb::ApplyRequest { items })
            .await
            .context("creating services")?;
    }
    let mut tokens = Vec::new();
    for s in &services {
        let t = adm
            .create_token(pb::CreateTokenRequest {
                scope: Some(pb::create_token_request::Scope::Service(pb::ServiceScope {
                    service: s.clone(),
                    namespace: String::new(),
                })),
                ttl_ms: 3_600_000,
                max_uses: 0,
            })
            .await
            .context("minting bootstrap tokens")?
            .into_inner();
        tokens.push(t.secret);
    }

    let before = cluster_status(&addrs, &token).await?;
    let start = Instant::now();
    let ready = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let mut subs: Vec<BTreeSet<usize>> = Vec::with_capacity(args.proxies);
    let mut stats = Vec::with_capacity(args.proxies);
    let mut per_node = vec![0usize; addrs.len()];
    let idx: Vec<usize> = (0..args.services).collect();
    let gate = Arc::new(tokio::sync::Semaphore::new(args.connect_concurrency));
    eprintln!("fleet: connecting {} proxies", args.proxies);
    for i in 0..args.proxies {
        let own = i % args.services;
        let calls: BTreeSet<usize> = idx
            .choose_multiple(&mut rng, args.subscriptions)
            .copied()
            .collect();
        let node = i % addrs.len();
        per_node[node] += 1;
        let hello = pb::Hello {
            service: services[own].clone(),
            instance: format!("fleet-{i}"),
            token: tokens[own].clone(),
            subscriptions: calls.iter().map(|c| services[*c].clone()).collect(),
            ready: true,
            ..Default::default()
        };
        subs.push(calls);
        let st = Arc::new(ProxyStats {
            revision: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            last_at_us: AtomicU64::new(0),
        });
        stats.push(st.clone());
        let (addr, ready, failed, gate) = (
            addrs[node].clone(),
            ready.clone(),
            failed.clone(),
            gate.clone(),
        );
        tokio::spawn(async move {
            // At most `connect_concurrency` proxies are between "connecting"
            // and "has its first config" at once.
            let permit = gate.acquire_owned().await;
            let watch = st.clone();
            let mut proxy = tokio::spawn(run_proxy(addr, hello, st, start, ready));
            let mut permit = Some(permit);
            let r = loop {
                tokio::select! {
                    r = &mut proxy => break r,
                    _ = tokio::time::sleep(Duration::from_millis(20)), if permit.is_some() => {
                        if watch.revision.load(Ordering::Acquire) > 0 {
                            permit = None;
                        }
                    }
                }
            };
            match r {
                Ok(Err(e)) => {
                    failed.fetch_add(1, Ordering::Relaxed);
                    eprintln!("fleet: proxy {i}: {e:#}");
                }
                Err(e) => eprintln!("fleet: proxy {i} task: {e}"),
                Ok(Ok(())) => {}
            }
        });
    }
    let mut last_print = Instant::now();
    while ready.load(Ordering::Relaxed) + failed.load(Ordering::Relaxed) < args.proxies {
        if last_print.elapsed() > Duration::from_secs(2) {
            eprintln!(
                "fleet: {}/{} proxies have their config",
                ready.load(Ordering::Relaxed),
                args.proxies
            );
            last_print = Instant::now();
        }
        if start.elapsed() > Duration::from_secs(600) {
            bail!("the fleet did not come up within 10 minutes");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if failed.load(Ordering::Relaxed) > 0 {
        bail!(
            "{} proxies failed to connect",
            failed.load(Ordering::Relaxed)
        );
    }
    let connect_s = start.elapsed().as_secs_f64();
    eprintln!(
        "fleet: all {} proxies have their config after {connect_s:.1}s",
        args.proxies
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = cluster_status(&addrs, &token).await?;
    let rss_per_stream: Vec<f64> = addrs
        .iter()
        .enumerate()
        .map(|(n, a)| {
            let find = |s: &pb::ClusterStatusResponse| {
                s.members.iter().find(|m| &m.addr == a).map(|m| m.rss_bytes)
            };
            let grow = find(&after)
                .unwrap_or(0)
                .saturating_sub(find(&before).unwrap_or(0));
            grow as f64 / 1024.0 / per_node[n].max(1) as f64
        })
        .collect();

    // Changes, one at a time.
    let mut latencies_ms = Vec::new();
    let (mut sub_bytes, mut unsub_bytes, mut sub_count) = (0u64, 0u64, 0u64);
    for m in 0..args.changes {
        let x = rng.random_range(0..args.services);
        let bytes_before: Vec<u64> = stats
            .iter()
            .map(|s| s.bytes.load(Ordering::Relaxed))
            .collect();
        let t0 = start.elapsed().as_micros() as u64;
        let r = adm
            .apply(pb::ApplyRequest {
                items: vec![pb::ApplyItem {
                    resource: Some(route(&services[x], (m % 100) as u32).into()),
                    expected_revision: None,
                }],
            })
            .await?
            .into_inner();
        let rev = r.results.first().map(|w| w.revision).unwrap_or(r.revision);
        let subscribed: Vec<usize> = (0..args.proxies)
            .filter(|i| subs[*i].contains(&x))
            .collect();
        let deadline = Instant::now() + Duration::from(args.change_timeout);
        loop {
            let done = subscribed
                .iter()
                .filter(|i| stats[**i].revision.load(Ordering::Acquire) >= rev)
                .count();
            if done == subscribed.len() {
                break;
            }
            if Instant::now() > deadline {
                bail!(
                    "change {m}: only {done}/{} subscribed proxies reached revision {rev}",
                    subscribed.len()
                );
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        for i in &subscribed {
            let at = stats[*i].last_at_us.load(Ordering::Relaxed);
            latencies_ms.push(at.saturating_sub(t0) as f64 / 1000.0);
        }
        // Give stray deltas to unsubscribed proxies a moment to show up.
        tokio::time::sleep(Duration::from_millis(50)).await;
        for (i, s) in stats.iter().enumerate() {
            let got = s.bytes.load(Ordering::Relaxed) - bytes_before[i];
            if subs[i].contains(&x) {
                sub_bytes += got;
                sub_count += 1;
            } else {
                unsub_bytes += got;
            }
        }
        if (m + 1) % 10 == 0 {
            eprintln!("fleet: {}/{} changes applied", m + 1, args.changes);
        }
    }
    latencies_ms.sort_by(|a, b| a.total_cmp(b));
    let changes = args.changes.max(1) as f64;
    let out = serde_json::json!({
        "proxies": args.proxies,
        "services": args.services,
        "subscriptions": args.subscriptions,
        "changes": args.changes,
        "connect_s": (connect_s * 10.0).round() / 10.0,
        "p50_ms": (pct(&latencies_ms, 0.5) * 100.0).round() / 100.0,
        "p99_ms": (pct(&latencies_ms, 0.99) * 100.0).round() / 100.0,
        "max_ms": (latencies_ms.last().copied().unwrap_or(0.0) * 100.0).round() / 100.0,
        "bytes_per_change_subscribed": sub_bytes.checked_div(sub_count).unwrap_or(0),
        "bytes_per_change_subscribed_total": (sub_bytes as f64 / changes).round(),
        "bytes_per_change_unsubscribed": (unsub_bytes as f64 / changes).round(),
        "meshd_rss_kb_per_stream": (rss_per_stream.iter().copied().fold(0.0, f64::max) * 10.0).round() / 10.0,
        "meshd_rss_kb_per_stream_by_node": rss_per_stream.iter().map(|x| (x * 10.0).round() / 10.0).collect::<Vec<_>>(),
    });
    println!("{out}");
    Ok(())
}
