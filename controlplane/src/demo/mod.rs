//! `meshd demo`: a whole mesh on one machine, with traffic, in one command.
//!
//! Three meshd nodes (this very binary, `meshd server`) and six
//! `mesh-proxy` sidecars run as child processes of this one, each told to
//! exit if the demo's process disappears ([`procs`]); the apps and the
//! traffic generator run in this process, and every request crosses two
//! proxies over loopback sockets. A scripted story ([`story`]) then shifts
//! traffic, denies a caller, kills the leader and an endpoint, narrating
//! each step, while a table ([`table`]) redraws every second. Ctrl-C stops
//! everything and removes the temporary directory.
//!
//! The demo starts `mesh-proxy` as a program, so meshd does not link the
//! proxy: under `cargo run` it is built first (a no-op when up to date),
//! otherwise it is looked for next to meshd and on `PATH`
//! (`raftmesh_client::bins`).

mod apps;
mod clusters;
mod hosts;
mod procs;
mod story;
mod table;
mod traffic;

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use raftmesh_api::stat::StatRow;
use raftmesh_api::v1 as pb;
use raftmesh_api::Resource;
use raftmesh_client::Conn;

use apps::App;
use procs::{node_args, proxy_args, Procs, ProxySpec};
use story::Story;
use traffic::Flows;

/// `meshd demo` flags.
#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Just run the mesh, without the scripted story.
    #[arg(long)]
    pub no_story: bool,
    /// Stop after this long (default: run until Ctrl-C).
    #[arg(long)]
    pub duration: Option<humantime::Duration>,
    /// meshd nodes listen on BASE+1..BASE+3, the proxies on BASE+11..BASE+28.
    #[arg(long, default_value_t = 7400)]
    pub base_port: u16,
    /// Requests per second per caller and service.
    #[arg(long, default_value_t = 25)]
    pub rps: u32,
    /// Root only: each workload on a host of its own (a network namespace
    /// with its own address) under transparent capture, the callers plain
    /// `curl http://web/` loops; meshd on the hosts' bridge, with TLS.
    #[arg(long)]
    pub transparent: bool,
    /// 2: two clusters peered (federation): east's `api` fails over to
    /// west's through west's east-west gateway, and back.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=2))]
    pub clusters: u8,
}

/// The demo's instances, one host each with --transparent.
const INSTANCES: [&str; 6] = [
    "web-v1",
    "web-v2-a",
    "web-v2-b",
    "api-1",
    "frontend-1",
    "batch-1",
];

fn doc(y: &str) -> anyhow::Result<Resource> {
    serde_yaml_ng::from_str(y).with_context(|| format!("demo resource: {y}"))
}

fn route(v1: u32, v2: u32) -> anyhow::Result<Resource> {
    doc(&format!(
        "kind: Route\nmetadata: {{name: web}}\nspec:\n  service: web\n  rules:\n    - backends:\n        - {{subset: {{version: v1}}, weight: {v1}}}\n        - {{subset: {{version: v2}}, weight: {v2}}}\n  timeout: 2s\n  retries: {{attempts: 2, on: [5xx, connect-failure]}}\n  outlier: {{consecutive_failures: 3, base_ejection: 30s}}\n"
    ))
}

async fn apply(conn: &Conn, docs: Vec<Resource>) -> anyhow::Result<u64> {
    Ok(conn.apply(&docs).await?.revision)
}

/// A token's secret: `scope` for `ttl_ms` (0: no expiry).
async fn token(
    conn: &Conn,
    scope: pb::create_token_request::Scope,
    ttl_ms: u64,
) -> anyhow::Result<String> {
    let req = pb::CreateTokenRequest {
        scope: Some(scope),
        ttl_ms,
        max_uses: 0,
    };
    Ok(conn
        .call(false, |mut c| {
            let req = req.clone();
            async move { c.create_token(req).await.map(|r| r.into_inner()) }
        })
        .await?
        .secret)
}

/// A read-only admin token, for the dashboard.
async fn read_only_token(conn: &Conn) -> anyhow::Result<String> {
    let role = pb::create_token_request::Scope::Role(pb::TokenRole::ReadOnly as i32);
    token(conn, role, 0).await
}

/// A bootstrap token for a proxy of `service`, good for an hour.
async fn mint(conn: &Conn, service: &str) -> anyhow::Result<String> {
    let scope = pb::create_token_request::Scope::Service(pb::ServiceScope {
        service: service.into(),
        namespace: String::new(),
    });
    token(conn, scope, 3_600_000).await
}

/// What the story, the table and the main loop share.
struct Mesh {
    conn: Conn,
    addrs: Vec<String>,
    token: String,
    procs: Mutex<Procs>,
    flows: Flows,
    story: Story,
    last_status: Mutex<Option<pb::ClusterStatusResponse>>,
    /// The dashboard's address, with a read-only token.
    dashboard: Mutex<String>,
    /// The last `meshctl stat` rows (the proxies' own figures).
    stat: Mutex<Vec<StatRow>>,
}

impl Mesh {
    fn procs(&self) -> MutexGuard<'_, Procs> {
        self.procs.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Cluster status from whichever node answers.
    async fn status(&self) -> Option<pb::ClusterStatusResponse> {
        self.conn
            .call(true, |mut c| async move {
                c.cluster_status(pb::ClusterStatusRequest {})
                    .await
                    .map(|r| r.into_inner())
            })
            .await
            .ok()
    }

    /// `meshctl stat`'s rows from whichever node answers.
    async fn stat(&self) -> Option<Vec<StatRow>> {
        let r = self
            .conn
            .call(true, |mut c| async move {
                c.stat(pb::StatRequest::default())
                    .await
                    .map(|r| r.into_inner())
            })
            .await
            .ok()?;
        Some(r.rows.into_iter().map(StatRow::from).collect())
    }

    async fn leader(&self, not: Option<u64>, timeout: Duration) -> Option<u64> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(s) = self.status().await {
                if let Some(l) = s.leader.filter(|l| Some(*l) != not) {
                    return Some(l);
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        None
    }
}

/// The six proxies: four in front of apps, two callers.
fn proxy_specs(
    base: u16,
    apps: &[(&'static str, &'static str, &'static str, SocketAddr)],
) -> Vec<ProxySpec> {
    let at = |i: usize, k: u16| SocketAddr::from(([127, 0, 0, 1], base + 11 + 3 * i as u16 + k));
    let mut out: Vec<ProxySpec> = apps
        .iter()
        .enumerate()
        .map(|(i, (service, instance, version, app))| ProxySpec {
            service,
            instance: instance.to_string(),
            version: Some(version),
            app: Some(*app),
            subscribe: &[],
            admin: at(i, 0),
            outbound: at(i, 1),
            inbound: at(i, 2),
        })
        .collect();
    for caller in ["frontend", "batch"] {
        let i = out.len();
        out.push(ProxySpec {
            service: caller,
            instance: format!("{caller}-1"),
            version: None,
            app: None,
            subscribe: &["web", "api"],
            admin: at(i, 0),
            outbound: at(i, 1),
            inbound: at(i, 2),
        });
    }
    out
}

fn check_free(addrs: impl IntoIterator<Item = String>) -> anyhow::Result<()> {
    for a in addrs {
        if std::net::TcpListener::bind(&a).is_err() {
            bail!("port {a} is in use; pick other ports with --base-port");
        }
    }
    Ok(())
}

/// An app answering `body`: on loopback, or inside its own host.
async fn start_app(
    hosts: Option<&hosts::Hosts>,
    instance: &str,
    body: &'static str,
) -> anyhow::Result<App> {
    Ok(match hosts {
        Some(h) => App::serve_std(h.bind_app(instance)?, body)?,
        None => App::start(body).await?,
    })
}

/// Runs the demo until its duration ends or Ctrl-C.
pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    // Ctrl-C is taken from the start, so one pressed while the mesh comes
    // up still stops everything cleanly (the children are in their own
    // process group and do not get it from the terminal).
    let mut interrupt = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    if args.base_port > u16::MAX - 40 {
        bail!(
            "--base-port {} leaves no room for the demo's ports (at most {})",
            args.base_port,
            u16::MAX - 40
        );
    }
    if args.clusters == 2 {
        if args.transparent {
            bail!("--clusters 2 runs on loopback; it does not combine with --transparent");
        }
        return clusters::run(&args).await;
    }
    if std::env::var_os("CARGO").is_some() {
        eprintln!(
            "meshd demo: making sure mesh-proxy is built (cargo build; a no-op when up to date)"
        );
    }
    // This program's path first: a build below must not be able to change
    // what it resolves to.
    let meshd_exe =
        std::env::current_exe().context("cannot find the meshd binary to start nodes")?;
    let proxy_exe = raftmesh_client::bins::find("mesh-proxy", false)?;
    let dir = tempfile::Builder::new()
        .prefix("raftmesh-demo-")
        .tempdir()?;
    let hosts = if args.transparent {
        Some(hosts::Hosts::create(&INSTANCES.map(String::from))?)
    } else {
        None
    };
    let token = crate::tokens::new_secret();
    let token_file = dir.path().join("admin.token");
    raftmesh_api::files::write_private(&token_file, token.as_bytes())?;
    let node_ip = hosts
        .as_ref()
        .map_or_else(|| "127.0.0.1".to_string(), |h| h.gateway());
    let addrs: Vec<String> = (1..=3)
        .map(|i| format!("{node_ip}:{}", args.base_port + i))
        .collect();
    // Each node's --http (the dashboard), on the ports after theirs.
    let http: Vec<String> = (1..=3)
        .map(|i| format!("{node_ip}:{}", args.base_port + 3 + i))
        .collect();
    check_free(addrs.iter().chain(&http).cloned())?;
    // Off loopback, meshd speaks TLS (certificates for the bridge address).
    let tls_dir = dir.path().join("tls");
    if hosts.is_some() {
        crate::server_tls::init(&crate::server_tls::InitOptions {
            out: tls_dir.clone(),
            nodes: 3,
            hosts: vec![node_ip.clone()],
            validity: Duration::from_secs(86_400),
        })?;
    }
    let h = hosts.as_ref();
    let apps = vec![
        (
            "web",
            "web-v1",
            "v1",
            start_app(h, "web-v1", "web v1").await?,
        ),
        (
            "web",
            "web-v2-a",
            "v2",
            start_app(h, "web-v2-a", "web v2").await?,
        ),
        (
            "web",
            "web-v2-b",
            "v2",
            start_app(h, "web-v2-b", "web v2").await?,
        ),
        ("api", "api-1", "v1", start_app(h, "api-1", "api v1").await?),
    ];
    let mut specs = proxy_specs(
        args.base_port,
        &apps
            .iter()
            .map(|(s, i, v, a)| (*s, *i, *v, a.addr))
            .collect::<Vec<_>>(),
    );
    match &hosts {
        // Each proxy on the capture defaults inside its own host; the
        // admin port on the host's address, for the demo's readiness check.
        Some(h) => {
            for p in &mut specs {
                p.admin = format!("{}:{}", h.ip(&p.instance)?, hosts::ADMIN_PORT).parse()?;
                p.outbound = SocketAddr::from(([127, 0, 0, 1], hosts::OUTBOUND_PORT));
                p.inbound = SocketAddr::from(([0, 0, 0, 0], hosts::INBOUND_PORT));
            }
        }
        None => check_free(
            specs
                .iter()
                .flat_map(|p| [p.admin, p.outbound, p.inbound])
                .map(|a| a.to_string()),
        )?,
    }
    let initial = addrs
        .iter()
        .enumerate()
        .map(|(i, a)| format!("{}={a}", i + 1))
        .collect::<Vec<_>>()
        .join(",");
    let mut procs = Procs::new(dir.path());
    for (i, a) in addrs.iter().enumerate() {
        let id = i as u64 + 1;
        let mut node = node_args(id, a, &initial, dir.path(), &token_file, Some(&http[i]));
        if hosts.is_some() {
            node.extend(["--tls-dir".into(), tls_dir.display().to_string()]);
        }
        procs.start(&format!("node-{id}"), meshd_exe.clone(), node)?;
    }
    println!(
        "meshd demo: starting 3 meshd nodes (pids {:?}) in {}",
        procs.pids("node-"),
        dir.path().display()
    );
    let ca_file = tls_dir.join(crate::server_tls::CA_CERT);
    let conn = match &hosts {
        Some(_) => Conn::new(addrs.clone(), Some(&token))?.with_tls(Some(
            raftmesh_client::client_tls(&std::fs::read_to_string(&ca_file)?),
        )),
        None => Conn::new(addrs.clone(), Some(&token))?,
    };
    let mesh = Arc::new(Mesh {
        conn,
        addrs: addrs.clone(),
        token: token.clone(),
        procs: Mutex::new(procs),
        flows: Default::default(),
        story: Story::new(started),
        last_status: Mutex::new(None),
        dashboard: Mutex::default(),
        stat: Mutex::default(),
    });
    // The admin token works once the cluster has a leader and stored it.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ok = mesh
            .conn
            .call(true, |mut c| async move {
                c.who_am_i(pb::WhoAmIRequest {}).await
            })
            .await
            .is_ok();
        if ok {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "the demo cluster did not come up within 30s; see the logs in {}",
                dir.path().display()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    mesh.story.say("3 meshd nodes formed a Raft cluster");
    let viewer = read_only_token(&mesh.conn).await?;
    let url = format!("http://{}/#token={viewer}", http[0]);
    println!(
        "meshd demo: the dashboard is at {url} (every node serves it: {}; the token is read-only)",
        http.join(", ")
    );
    *mesh
        .dashboard
        .lock()
        .unwrap_or_else(PoisonError::into_inner) = url;
    if !std::io::stdout().is_terminal() {
        let ca = if hosts.is_some() {
            format!(" RAFTMESH_CA_FILE={}", ca_file.display())
        } else {
            String::new()
        };
        println!(
            "use meshctl against it:\n  export RAFTMESH_SERVER={} RAFTMESH_TOKEN={token}{ca}\n  meshctl stat; meshctl tap web; meshctl cluster status; meshctl get routes -o yaml; meshctl proxies",
            addrs.join(",")
        );
    }

    apply(
        &mesh.conn,
        vec![
            doc(
                "kind: Service\nmetadata: {name: web}\nspec: {ports: [{port: 80, protocol: http}]}",
            )?,
            doc(
                "kind: Service\nmetadata: {name: api}\nspec: {ports: [{port: 80, protocol: http}]}",
            )?,
            route(100, 0)?,
        ],
    )
    .await?;

    for p in &specs {
        let t = mint(&mesh.conn, p.service).await?;
        let file = dir.path().join(format!("{}.token", p.instance));
        raftmesh_api::files::write_private(&file, t.as_bytes())?;
        let name = format!("proxy-{}", p.instance);
        let mut a = proxy_args(p, &addrs, dir.path(), &file);
        let exe = match &hosts {
            Some(h) => {
                h.capture(&proxy_exe, &p.instance)?;
                a = procs::transparent_args(a, &ca_file);
                a.splice(
                    0..0,
                    [
                        "netns".into(),
                        "exec".into(),
                        h.netns(&p.instance)?,
                        proxy_exe.display().to_string(),
                    ],
                );
                "ip".into()
            }
            None => proxy_exe.clone(),
        };
        mesh.procs().start(&name, exe, a)?;
    }
    println!(
        "meshd demo: starting 6 mesh-proxy processes (pids {:?})",
        mesh.procs().pids("proxy-")
    );
    // Wait until every proxy holds a config before sending traffic.
    let deadline = Instant::now() + Duration::from_secs(20);
    for p in &specs {
        while !procs::proxy_ready(p.admin).await {
            if Instant::now() > deadline {
                bail!(
                    "proxy {} did not get its config within 20s; see {}",
                    p.instance,
                    dir.path()
                        .join(format!("proxy-{}.log", p.instance))
                        .display()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    mesh.story
        .say("6 proxies up: web v1, web v2 (x2), api, and two callers (frontend, batch)");
    let callers: Vec<(&str, SocketAddr)> = specs
        .iter()
        .filter(|p| p.app.is_none())
        .map(|p| (p.service, p.outbound))
        .collect();
    let mut generators = Vec::new();
    let mut curl_loops = Vec::new();
    if let Some(h) = &hosts {
        for (caller, svc) in [("frontend", "api"), ("frontend", "web"), ("batch", "api")] {
            let ns = h.netns(&format!("{caller}-1"))?;
            curl_loops.push(traffic::CurlLoop::start(
                mesh.flows.clone(),
                &ns,
                caller,
                svc,
                args.rps,
            )?);
        }
        mesh.story.say(format!(
            "the callers are plain curl loops on hosts of their own, e.g. ip netns exec {} curl http://web/ (capture and mesh DNS carry them)",
            h.netns("frontend-1")?
        ));
    }
    for (caller, outbound) in callers.iter().filter(|_| hosts.is_none()) {
        generators.push(traffic::start(
            mesh.flows.clone(),
            caller,
            "api",
            *outbound,
            args.rps,
        ));
        if *caller == "frontend" {
            generators.push(traffic::start(
                mesh.flows.clone(),
                caller,
                "web",
                *outbound,
                args.rps,
            ));
        }
    }
    mesh.story.say(format!(
        "traffic: {} requests/s per caller and service, through two proxies each",
        args.rps
    ));

    let story = if args.no_story {
        None
    } else {
        let m = mesh.clone();
        Some(tokio::spawn(async move {
            if let Err(e) = story::run(&m).await {
                m.story.say(format!("the story stopped: {e:#}"));
            }
        }))
    };
    let poller = {
        let m = mesh.clone();
        tokio::spawn(async move {
            for n in 0u64.. {
                let r = m.status().await;
                *m.last_status.lock().unwrap_or_else(PoisonError::into_inner) = r;
                if n % 10 == 0 {
                    if let Some(rows) = m.stat().await {
                        *m.stat.lock().unwrap_or_else(PoisonError::into_inner) = rows;
                    }
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        })
    };

    let until = args.duration.map(|d| Instant::now() + Duration::from(d));
    let tty = std::io::stdout().is_terminal();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut last_line = Instant::now();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = interrupt.recv() => { println!(); break; }
        }
        if tty {
            table::draw(&mesh, started);
        } else if last_line.elapsed() >= Duration::from_secs(5) {
            last_line = Instant::now();
            for ((caller, svc), w) in traffic::windows(&mesh.flows, 5) {
                println!(
                    "[{:>5.1}s] {caller} -> {svc}: {:.0} req/s, {:.2}% ok, p50 {:.1}ms, p99 {:.1}ms, split {}",
                    started.elapsed().as_secs_f64(),
                    w.rps,
                    w.success * 100.0,
                    w.p50.as_secs_f64() * 1e3,
                    w.p99.as_secs_f64() * 1e3,
                    table::split_text(&w.split)
                );
            }
        }
        if until.is_some_and(|u| Instant::now() >= u) {
            break;
        }
    }
    if let Some(s) = story {
        s.abort();
    }
    poller.abort();
    for g in generators {
        g.abort();
    }
    // What the proxies themselves saw, as `meshctl stat` prints it.
    if let Some(rows) = mesh.stat().await {
        println!("meshd demo: meshctl stat (the last minute, from the proxies' reports):");
        for l in table::stat_lines(&rows) {
            println!("  {l}");
        }
    }
    drop(curl_loops);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (total, failed, denied) = traffic::totals(&mesh.flows);
    let served = total.saturating_sub(denied);
    let pct = if served == 0 {
        0.0
    } else {
        100.0 * (served - failed.min(served)) as f64 / served as f64
    };
    println!("meshd demo: {total} requests through the mesh, {failed} failed, {denied} denied by policy ({pct:.2}% of allowed requests succeeded)");
    let causes = traffic::causes(&mesh.flows);
    if !causes.is_empty() {
        println!("meshd demo: failures by cause: {causes:?}");
    }
    println!("summary requests={total} failed={failed} denied={denied}");
    mesh.procs().kill_all();
    drop(apps);
    drop(hosts);
    drop(dir);
    println!("meshd demo: stopped every node and proxy, removed the temporary directory");
    Ok(())
}
