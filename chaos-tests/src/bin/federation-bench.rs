//! federation-bench: two clusters of three meshd on loopback, peered, and
//! two measurements (`bench/federation.sh` runs it on the release build):
//!
//! 1. **Import propagation.** West registers `--gateways` east-west
//!    gateways and exports `--services` services to east, `--batch` per
//!    apply; a proxy of east (on a real discovery stream to east's meshd,
//!    subscribed to those services) records when each import reaches it.
//!    Imported endpoints = services × gateways. Latency is from just before
//!    west's apply to the delta's arrival at east's proxy: west's Raft,
//!    the link, east's Raft, east's discovery stream.
//! 2. **Added latency through the gateway.** Sequential requests from a
//!    caller's proxy on east to `api` on east (caller proxy → callee proxy
//!    → app) and to `api.default.west` (caller proxy → west's gateway →
//!    callee proxy → app): the gateway's cost is the difference.
//!
//! Prints one JSON line.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt, Empty, Full};
use raftmesh_api::v1 as pb;
use raftmesh_api::v1::discovery_client::DiscoveryClient;
use raftmesh_api::v1::proxy_message::Msg as In;
use raftmesh_api::v1::server_message::Msg as Out;
use raftmesh_api::{Resource, Spec};
use raftmesh_chaos_tests::client::{admin, channel, Admin};
use raftmesh_chaos_tests::cluster::{Cluster, ClusterOpts};
use raftmesh_chaos_tests::procs::{free_port, Proc};
use tokio::sync::mpsc;

#[derive(Parser, Debug)]
#[command(about = "Measure federation: import propagation and the gateway's added latency")]
struct Args {
    /// Services west exports to east.
    #[arg(long, default_value_t = 1000)]
    services: usize,
    /// West's gateways (every import is reached through each).
    #[arg(long, default_value_t = 10)]
    gateways: usize,
    /// Exports per apply.
    #[arg(long, default_value_t = 100)]
    batch: usize,
    /// Sequential requests per path for the latency measurement.
    #[arg(long, default_value_t = 3000)]
    requests: usize,
    /// Also measure nginx (stream, `ssl_preread`) as the SNI passthrough
    /// gateway in the same run (needs nginx and its stream module).
    #[arg(long)]
    nginx: bool,
}

async fn apply(adm: &mut Admin, docs: &[Resource]) -> anyhow::Result<()> {
    adm.apply(pb::ApplyRequest {
        items: docs
            .iter()
            .map(|r| pb::ApplyItem {
                resource: Some(r.clone().into()),
                expected_revision: None,
            })
            .collect(),
    })
    .await?;
    Ok(())
}

fn doc(y: &str) -> Resource {
    serde_yaml_ng::from_str(y).expect("a valid document")
}

async fn mint(adm: &mut Admin, service: &str) -> anyhow::Result<String> {
    raftmesh_chaos_tests::client::bootstrap_token(adm, service).await
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[((v.len() as f64 * p).ceil() as usize).clamp(1, v.len()) - 1]
}

async fn app(body: &'static str) -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(
                    move |_r: hyper::Request<hyper::body::Incoming>| async move {
                        Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::from(body))))
                    },
                );
                let _ = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                )
                .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                .await;
            });
        }
    });
    addr
}

/// A mesh-proxy; (process, outbound address, inbound port).
fn proxy(
    dir: &std::path::Path,
    name: &str,
    cp: &[String],
    args: &[&str],
) -> anyhow::Result<(Proc, SocketAddr, u16)> {
    let (o, a, i) = (free_port(), free_port(), free_port());
    let mut cmd = Command::new(raftmesh_client::bins::find("mesh-proxy", true)?);
    cmd.args([
        "--outbound",
        &format!("127.0.0.1:{o}"),
        "--admin",
        &format!("127.0.0.1:{a}"),
    ])
    .args([
        "--inbound",
        &format!("127.0.0.1:{i}"),
        "--control-plane",
        &cp.join(","),
    ])
    .args(["--instance", name])
    .args(args)
    .env("RAFTMESH_LOG", "warn");
    let p = Proc::spawn(name, cmd, &dir.join(format!("{name}.log")))?;
    Ok((p, format!("127.0.0.1:{o}").parse()?, i))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let opts = ClusterOpts {
        loopback: true,
        ..Default::default()
    };
    let west = Cluster::start(3, opts.clone()).map_err(anyhow::Error::msg)?;
    let east = Cluster::start(3, opts).map_err(anyhow::Error::msg)?;
    west.wait_leader(Duration::from_secs(30))
        .await
        .map_err(anyhow::Error::msg)?;
    east.wait_leader(Duration::from_secs(30))
        .await
        .map_err(anyhow::Error::msg)?;
    let mut wa = admin(&west.addrs()[0], &west.token)?;
    let mut ea = admin(&east.addrs()[0], &east.token)?;
    apply(
        &mut wa,
        &[doc(
            "kind: MeshConfig\nmetadata: {name: mesh}\nspec: {trust_domain: west.mesh}",
        )],
    )
    .await?;
    apply(
        &mut ea,
        &[doc(
            "kind: MeshConfig\nmetadata: {name: mesh}\nspec: {trust_domain: east.mesh}",
        )],
    )
    .await?;
    let deadline = Instant::now() + Duration::from_secs(30);
    let token = loop {
        match wa
            .generate_peering_token(pb::GeneratePeeringTokenRequest {
                peer: "east".into(),
                ttl_ms: 0,
            })
            .await
        {
            Ok(r) => break r.into_inner().token,
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await
            }
            Err(e) => bail!("generate-token: {e}"),
        }
    };
    loop {
        match ea
            .establish_peering(pb::EstablishPeeringRequest {
                peer: "west".into(),
                token: token.clone(),
            })
            .await
        {
            Ok(_) => break,
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await
            }
            Err(e) => bail!("establish: {e}"),
        }
    }
    eprintln!("federation-bench: peered");

    // 1. Propagation. Gateways registered by hand (healthy, no lease).
    let gws: Vec<Resource> = (0..args.gateways)
        .map(|g| {
            doc(&format!(
                "kind: Endpoint\nmetadata: {{name: gw-{g}}}\nspec: {{service: gateway, address: 127.0.0.1, port: {}, gateway: true}}",
                20_000 + g
            ))
        })
        .collect();
    apply(&mut wa, &gws).await?;
    let names: Vec<String> = (0..args.services).map(|i| format!("s{i}")).collect();
    let bench_token = mint(&mut ea, "bench").await?;
    let (tx, rx) = mpsc::channel(8);
    tx.send(pb::ProxyMessage {
        msg: Some(In::Hello(pb::Hello {
            service: "bench".into(),
            instance: "bench-1".into(),
            token: bench_token,
            subscriptions: names.clone(),
            ready: true,
            ..Default::default()
        })),
    })
    .await?;
    let mut inbound = DiscoveryClient::new(channel(&east.addrs()[0])?)
        .max_decoding_message_size(64 << 20)
        .stream(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .context("east's discovery stream")?
        .into_inner();
    let (seen_tx, mut seen_rx) = mpsc::unbounded_channel::<(String, usize, Instant)>();
    tokio::spawn(async move {
        while let Ok(Some(m)) = inbound.message().await {
            if let Some(Out::Delta(d)) = m.msg {
                let now = Instant::now();
                for r in d.upserts {
                    if let Ok(r) = Resource::try_from(r) {
                        if let Spec::Import(i) = &r.spec {
                            let _ = seen_tx.send((i.service.clone(), i.gateways.len(), now));
                        }
                    }
                }
                let _ = tx
                    .send(pb::ProxyMessage {
                        msg: Some(In::Ack(pb::Ack { nonce: d.nonce })),
                    })
                    .await;
            }
        }
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut sent_at: BTreeMap<String, Instant> = BTreeMap::new();
    let started = Instant::now();
    for chunk in names.chunks(args.batch) {
        let docs: Vec<Resource> = chunk
            .iter()
            .map(|s| doc(&format!("kind: Export\nmetadata: {{name: exp-{s}}}\nspec: {{service: {s}, peers: [east]}}")))
            .collect();
        let t0 = Instant::now();
        for s in chunk {
            sent_at.insert(s.clone(), t0);
        }
        apply(&mut wa, &docs).await?;
    }
    let applied_s = started.elapsed().as_secs_f64();
    let mut lat = Vec::new();
    let mut endpoints = 0usize;
    let mut arrived: BTreeMap<String, ()> = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    while arrived.len() < names.len() {
        let Ok(Some((svc, gw, at))) =
            tokio::time::timeout_at(deadline.into(), seen_rx.recv()).await
        else {
            bail!(
                "only {} of {} imports reached east's proxy in 120 s",
                arrived.len(),
                names.len()
            );
        };
        if gw == args.gateways && arrived.insert(svc.clone(), ()).is_none() {
            if let Some(t0) = sent_at.get(&svc) {
                lat.push(at.duration_since(*t0).as_secs_f64() * 1e3);
                endpoints += gw;
            }
        }
    }
    let total_s = started.elapsed().as_secs_f64();
    eprintln!("federation-bench: {endpoints} imported endpoints reached east's proxy");

    // 2. Latency through the gateway.
    apply(&mut wa, &[
        doc("kind: Service\nmetadata: {name: api}\nspec: {ports: [{port: 80}]}"),
        doc("kind: Export\nmetadata: {name: api-to-east}\nspec: {service: api, peers: [east]}"),
        doc("kind: Policy\nmetadata: {name: from-east}\nspec: {service: api, action: allow, from: [\"spiffe://east.mesh/ns/default/sa/client\"]}"),
    ])
    .await?;
    // Only the real gateway now.
    for g in 0..args.gateways {
        let _ = wa
            .delete(pb::DeleteRequest {
                kind: "Endpoint".into(),
                namespace: String::new(),
                name: format!("gw-{g}"),
                expected_revision: None,
            })
            .await;
    }
    apply(
        &mut ea,
        &[doc(
            "kind: Service\nmetadata: {name: api}\nspec: {ports: [{port: 80}]}",
        )],
    )
    .await?;
    let dir = tempfile::tempdir()?;
    let (west_app, east_app) = (app("west").await, app("east").await);
    let (wt, gt, et, ct) = (
        mint(&mut wa, "api").await?,
        mint(&mut wa, "gateway").await?,
        mint(&mut ea, "api").await?,
        mint(&mut ea, "client").await?,
    );
    let (wp, ep) = (west_app.port().to_string(), east_app.port().to_string());
    let (_w, _, api_w_inbound) = proxy(
        dir.path(),
        "api-w",
        &west.addrs(),
        &["--service", "api", "--app-port", &wp, "--token", &wt],
    )?;
    let (mut our_gw, _, _) = proxy(
        dir.path(),
        "gw-w",
        &west.addrs(),
        &["--mode", "gateway", "--service", "gateway", "--token", &gt],
    )?;
    let _e = proxy(
        dir.path(),
        "api-e",
        &east.addrs(),
        &["--service", "api", "--app-port", &ep, "--token", &et],
    )?;
    let (_c, out, _) = proxy(
        dir.path(),
        "client-e",
        &east.addrs(),
        &["--service", "client", "--token", &ct],
    )?;
    let http = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Empty<Bytes>>();
    let get = |host: &'static str| {
        let http = http.clone();
        async move {
            let req = hyper::Request::get(format!("http://{out}/"))
                .header("host", host)
                .body(Empty::new())?;
            let r = tokio::time::timeout(Duration::from_secs(5), http.request(req)).await??;
            let ok = r.status() == 200;
            let body = r.into_body().collect().await?.to_bytes();
            anyhow::Ok(ok.then(|| String::from_utf8_lossy(&body).into_owned()))
        }
    };
    for (host, want) in [("api", "east"), ("api.default.west", "west")] {
        let deadline = Instant::now() + Duration::from_secs(30);
        while get(host).await.ok().flatten().as_deref() != Some(want) {
            if Instant::now() > deadline {
                bail!("{host} never answered {want}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let measure = |host: &'static str| async move {
        let mut v = Vec::with_capacity(args.requests);
        for _ in 0..args.requests {
            let t = Instant::now();
            get(host).await?.context("a failed request")?;
            v.push(t.elapsed().as_secs_f64() * 1e6);
        }
        anyhow::Ok(v)
    };
    // Interleaved rounds: the machine is shared and noisy.
    let (mut local, mut cross) = (Vec::new(), Vec::new());
    for _ in 0..3 {
        local.extend(measure("api").await?);
        cross.extend(measure("api.default.west").await?);
    }
    let (l50, l99) = (pct(&mut local, 0.5), pct(&mut local, 0.99));
    let (c50, c99) = (pct(&mut cross, 0.5), pct(&mut cross, 0.99));
    // The same path with nginx as the gateway: SNI read by ssl_preread,
    // bytes relayed, nothing terminated.
    let mut nginx = serde_json::Value::Null;
    let mut _nginx_proc = None;
    if args.nginx {
        let port = free_port();
        let conf = dir.path().join("nginx.conf");
        std::fs::write(
            &conf,
            format!(
                "load_module /usr/lib/nginx/modules/ngx_stream_module.so;\nworker_processes 1;\ndaemon off;\npid {d}/nginx.pid;\nerror_log {d}/nginx.err;\nevents {{ worker_connections 4096; }}\nstream {{\n  map $ssl_preread_server_name $up {{ api.default.svc.west.mesh 127.0.0.1:{api_w_inbound}; default 127.0.0.1:1; }}\n  server {{ listen 127.0.0.1:{port}; ssl_preread on; proxy_pass $up; }}\n}}\n",
                d = dir.path().display()
            ),
        )?;
        let mut cmd = Command::new("nginx");
        cmd.args([
            "-c",
            &conf.display().to_string(),
            "-p",
            &dir.path().display().to_string(),
        ]);
        _nginx_proc = Some(Proc::spawn("nginx", cmd, &dir.path().join("nginx.log"))?);
        our_gw.kill();
        apply(&mut wa, &[doc(&format!("kind: Endpoint\nmetadata: {{name: gw-nginx}}\nspec: {{service: gateway, address: 127.0.0.1, port: {port}, gateway: true}}"))]).await?;
        // Until east's import lists nginx alone (ours unhealthy once its
        // lease runs out).
        let want = vec![format!("127.0.0.1:{port}")];
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let im = ea
                .list(pb::ListRequest {
                    kind: "Import".into(),
                    ..Default::default()
                })
                .await?
                .into_inner();
            let only_nginx = im.resources.into_iter().filter_map(|r| Resource::try_from(r).ok()).any(|r| {
                matches!(&r.spec, Spec::Import(i) if i.service == "api" && i.gateways == want)
            });
            if only_nginx && get("api.default.west").await.ok().flatten().as_deref() == Some("west")
            {
                break;
            }
            if Instant::now() > deadline {
                bail!("east's import never switched to the nginx gateway");
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let (mut local2, mut via_nginx) = (Vec::new(), Vec::new());
        for _ in 0..3 {
            local2.extend(measure("api").await?);
            via_nginx.extend(measure("api.default.west").await?);
        }
        let (m50, m99) = (pct(&mut local2, 0.5), pct(&mut local2, 0.99));
        let (n50, n99) = (pct(&mut via_nginx, 0.5), pct(&mut via_nginx, 0.99));
        nginx = serde_json::json!({
            "local_us": {"p50": m50, "p99": m99},
            "through_gateway_us": {"p50": n50, "p99": n99},
            "gateway_added_us": {"p50": n50 - m50, "p99": n99 - m99},
        });
    }
    println!(
        "{}",
        serde_json::json!({
            "imports": names.len(),
            "gateways": args.gateways,
            "imported_endpoints": endpoints,
            "applies": names.len().div_ceil(args.batch),
            "apply_s": applied_s,
            "all_arrived_s": total_s,
            "propagation_ms": {"p50": pct(&mut lat, 0.5), "p99": pct(&mut lat, 0.99), "max": pct(&mut lat, 1.0)},
            "local_us": {"p50": l50, "p99": l99},
            "through_gateway_us": {"p50": c50, "p99": c99},
            "gateway_added_us": {"p50": c50 - l50, "p99": c99 - l99},
            "nginx": nginx,
        })
    );
    Ok(())
}
