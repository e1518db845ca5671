//! `meshd demo --clusters 2`: two clusters of three meshd each, `west` and
//! `east`, peered with a token. West exports `api` to east through its
//! east-west gateway; east runs `api` too, with a Route that fails over to
//! west's. A caller on east calls `api`; the story kills east's `api` and
//! traffic moves to west's (through the gateway, mTLS end to end), then
//! brings it back and traffic returns. Every request's answer names the
//! cluster that served it (`api east` / `api west`), so the split shows it.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use raftmesh_api::v1 as pb;
use raftmesh_client::Conn;

use super::apps::App;
use super::procs::{node_args, proxy_args, proxy_ready, Procs, ProxySpec};
use super::{apply, doc, mint, traffic, DemoArgs};

/// One of the two clusters.
struct Side {
    addrs: Vec<String>,
    conn: Conn,
}

async fn up(conn: &Conn, dir: &Path) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while conn
        .call(true, |mut c| async move {
            c.who_am_i(pb::WhoAmIRequest {}).await
        })
        .await
        .is_err()
    {
        if Instant::now() > deadline {
            bail!(
                "a demo cluster did not come up within 30s; see the logs in {}",
                dir.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

/// Retries `f` while the workload CA is still being made (a moment after
/// a cluster first has a leader).
async fn when_ca<T, F, Fut>(mut f: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, tonic::Status>>,
{
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match f().await {
            Ok(t) => return Ok(t),
            Err(e) if e.message().contains("does not exist yet") && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await
            }
            Err(e) => bail!("peering: {}", e.message()),
        }
    }
}

/// Runs the two-cluster demo until its duration ends or Ctrl-C.
pub async fn run(args: &DemoArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut interrupt = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    let meshd_exe =
        std::env::current_exe().context("cannot find the meshd binary to start nodes")?;
    let proxy_exe = raftmesh_client::bins::find("mesh-proxy", false)?;
    let dir = tempfile::Builder::new()
        .prefix("raftmesh-demo-")
        .tempdir()?;
    let say = |line: String| {
        println!("[{:>5.1}s] {line}", started.elapsed().as_secs_f64());
    };
    let mut procs = Procs::new(dir.path());
    let mut sides = Vec::new();
    for (k, name) in ["west", "east"].into_iter().enumerate() {
        let token = crate::tokens::new_secret();
        let token_file = dir.path().join(format!("{name}-admin.token"));
        raftmesh_api::files::write_private(&token_file, token.as_bytes())?;
        let addrs: Vec<String> = (1..=3)
            .map(|i| format!("127.0.0.1:{}", args.base_port + 3 * k as u16 + i))
            .collect();
        super::check_free(addrs.iter().cloned())?;
        let initial = addrs
            .iter()
            .enumerate()
            .map(|(i, a)| format!("{}={a}", i + 1))
            .collect::<Vec<_>>()
            .join(",");
        let data = dir.path().join(name);
        std::fs::create_dir_all(&data)?;
        for (i, a) in addrs.iter().enumerate() {
            let id = i as u64 + 1;
            procs.start(
                &format!("{name}-node-{id}"),
                meshd_exe.clone(),
                node_args(id, a, &initial, &data, &token_file, None),
            )?;
        }
        sides.push(Side {
            conn: Conn::new(addrs.clone(), Some(&token))?,
            addrs,
        });
    }
    println!(
        "meshd demo: starting 2 clusters of 3 meshd nodes (pids {:?}) in {}",
        procs.pids(""),
        dir.path().display()
    );
    for s in &sides {
        up(&s.conn, dir.path()).await?;
    }
    let (west, east) = (&sides[0], &sides[1]);
    say("two clusters formed, west and east, each its own Raft group, CA and trust domain".into());
    apply(&west.conn, vec![
        doc("kind: MeshConfig\nmetadata: {name: mesh}\nspec: {trust_domain: west.mesh}")?,
        doc("kind: Service\nmetadata: {name: api}\nspec: {ports: [{port: 80, protocol: http}]}")?,
        doc("kind: Export\nmetadata: {name: api-to-east}\nspec: {service: api, peers: [east]}")?,
        doc("kind: Policy\nmetadata: {name: api-from-east}\nspec: {service: api, action: allow, from: [\"spiffe://east.mesh/ns/default/sa/frontend\"]}")?,
    ])
    .await?;
    apply(&east.conn, vec![
        doc("kind: MeshConfig\nmetadata: {name: mesh}\nspec: {trust_domain: east.mesh}")?,
        doc("kind: Service\nmetadata: {name: api}\nspec: {ports: [{port: 80, protocol: http}]}")?,
        doc("kind: Route\nmetadata: {name: api}\nspec: {service: api, failover: [west], retries: {attempts: 2}, outlier: {consecutive_failures: 2, base_ejection: 5s}}")?,
    ])
    .await?;

    // Peering: a token made on west, used once on east.
    let token = when_ca(|| {
        west.conn.call(false, |mut c| async move {
            c.generate_peering_token(pb::GeneratePeeringTokenRequest {
                peer: "east".into(),
                ttl_ms: 0,
            })
            .await
            .map(|r| r.into_inner().token)
        })
    })
    .await?;
    when_ca(|| {
        let token = token.clone();
        east.conn.call(false, move |mut c| {
            let token = token.clone();
            async move {
                c.establish_peering(pb::EstablishPeeringRequest {
                    peer: "west".into(),
                    token,
                })
                .await
            }
        })
    })
    .await?;
    say("peered: `meshctl peering generate-token --peer east` on west, `peering establish --peer west` on east".into());

    let (west_app, east_app) = (App::start("api west").await?, App::start("api east").await?);
    let at = |i: u16, k: u16| SocketAddr::from(([127, 0, 0, 1], args.base_port + 11 + 3 * i + k));
    let spec = |service, instance: &str, app: Option<&App>, subscribe, i| ProxySpec {
        service,
        instance: instance.to_string(),
        version: None,
        app: app.map(|a| a.addr),
        subscribe,
        admin: at(i, 0),
        outbound: at(i, 1),
        inbound: at(i, 2),
    };
    let specs = [
        (
            west,
            spec("api", "api-west-1", Some(&west_app), &[], 0),
            false,
        ),
        (west, spec("gateway", "gateway-west-1", None, &[], 1), true),
        (
            east,
            spec("api", "api-east-1", Some(&east_app), &[], 2),
            false,
        ),
        (
            east,
            spec("frontend", "frontend-east-1", None, &["api"], 3),
            false,
        ),
    ];
    super::check_free(
        specs
            .iter()
            .flat_map(|(_, p, _)| [p.admin, p.outbound, p.inbound])
            .map(|a| a.to_string()),
    )?;
    let mut start_args = Vec::new();
    for (side, p, gateway) in &specs {
        let t = mint(&side.conn, p.service).await?;
        let file = dir.path().join(format!("{}.token", p.instance));
        raftmesh_api::files::write_private(&file, t.as_bytes())?;
        let mut a = proxy_args(p, &side.addrs, dir.path(), &file);
        if *gateway {
            a.extend(["--mode".into(), "gateway".into()]);
        }
        procs.start(
            &format!("proxy-{}", p.instance),
            proxy_exe.clone(),
            a.clone(),
        )?;
        start_args.push(a);
    }
    println!(
        "meshd demo: starting 4 mesh-proxy processes (pids {:?})",
        procs.pids("proxy-")
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    for (_, p, _) in &specs {
        while !proxy_ready(p.admin).await {
            if Instant::now() > deadline {
                bail!(
                    "proxy {} did not get its config within 20s; see {}",
                    p.instance,
                    dir.path().display()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    // A new proxy's endpoint is out until it has its config and its app
    // has been probed: the traffic starts once east's api answers (it
    // failed a request now and then when it started right away).
    let deadline = Instant::now() + Duration::from_secs(20);
    while !super::procs::serves(specs[3].1.outbound, "api").await {
        if Instant::now() > deadline {
            bail!(
                "east's api did not answer through the frontend within 20s; see {}",
                dir.path().display()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    say("proxies up: api and the gateway on west; api and a caller (frontend) on east".into());
    let flows = traffic::Flows::default();
    let generator = traffic::start(
        flows.clone(),
        "frontend",
        "api",
        specs[3].1.outbound,
        args.rps,
    );
    say(format!(
        "traffic: frontend (east) -> api at {} requests/s; east's Route fails over to west",
        args.rps
    ));

    let until = args.duration.map(|d| Instant::now() + Duration::from(d));
    // The story's clock starts with the traffic (building mesh-proxy under
    // cargo may take a while before).
    let traffic_started = Instant::now();
    let story = !args.no_story;
    let (mut killed, mut revived) = (false, false);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut last_line = Instant::now();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = interrupt.recv() => { println!(); break; }
        }
        let t = traffic_started.elapsed();
        if story && !killed && t >= Duration::from_secs(10) {
            killed = true;
            procs.kill("proxy-api-east-1");
            say("story: east's api dies (its proxy killed): the Route fails over to west's api, through west's gateway".into());
        }
        if story && killed && !revived && t >= Duration::from_secs(20) {
            revived = true;
            let mut a = start_args[2].clone();
            if let Some(i) = a.iter().position(|x| x == "--instance") {
                a[i + 1] = "api-east-2".into();
            }
            procs.start("proxy-api-east-2", proxy_exe.clone(), a)?;
            say("story: east's api is back (a new instance): traffic returns to east".into());
        }
        if last_line.elapsed() >= Duration::from_secs(3) {
            last_line = Instant::now();
            for ((caller, svc), w) in traffic::windows(&flows, 3) {
                say(format!(
                    "{caller} -> {svc}: {:.0} req/s, {:.2}% ok, p50 {:.1}ms, p99 {:.1}ms, served by {}",
                    w.rps,
                    w.success * 100.0,
                    w.p50.as_secs_f64() * 1e3,
                    w.p99.as_secs_f64() * 1e3,
                    super::table::split_text(&w.split)
                ));
            }
        }
        if until.is_some_and(|u| Instant::now() >= u) {
            break;
        }
    }
    generator.abort();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (total, failed, denied) = traffic::totals(&flows);
    println!("meshd demo: {total} requests through two clusters, {failed} failed, {denied} denied by policy");
    let causes = traffic::causes(&flows);
    if !causes.is_empty() {
        println!("meshd demo: failures by cause: {causes:?}");
    }
    println!("summary requests={total} failed={failed} denied={denied}");
    procs.kill_all();
    drop((west_app, east_app));
    if failed > 0 {
        // Failed requests are worth a look: the frontend's proxy log says
        // why (e.g. which endpoints were unusable, once a second).
        let kept = dir.keep();
        println!(
            "meshd demo: stopped every node and proxy; the logs are kept in {} (proxy-frontend-east-1.log is the caller's); remove it when done",
            kept.display()
        );
    } else {
        drop(dir);
        println!("meshd demo: stopped every node and proxy, removed the temporary directory");
    }
    Ok(())
}
