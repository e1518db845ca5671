//! `meshd demo`: a whole mesh on one machine, with traffic, in one command.
//!
//! Three meshd nodes run as child processes of this one (the same binary,
//! `meshd server`, told to exit if the demo's process disappears); the
//! apps, their mesh-proxies and the traffic generator run in this process,
//! and every request crosses two proxies over loopback sockets. A scripted
//! story then shifts traffic, kills the leader and an endpoint, narrating
//! each step, while a table redraws every second. Ctrl-C stops everything
//! and removes the temporary directory.

mod apps;
mod traffic;

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write as _};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use raftmesh_api::v1 as pb;
use raftmesh_api::Resource;
use raftmesh_dataplane_proxy::config::ProxyConfig;
use raftmesh_dataplane_proxy::Proxy;

use crate::ctl::Conn;
use apps::App;
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
    /// meshd nodes listen on BASE+1..BASE+3.
    #[arg(long, default_value_t = 7400)]
    pub base_port: u16,
    /// Requests per second per caller and service.
    #[arg(long, default_value_t = 25)]
    pub rps: u32,
}

/// The meshd child processes; killed when dropped, whatever happens.
struct Nodes {
    children: BTreeMap<u64, Child>,
    args: BTreeMap<u64, Vec<String>>,
    dir: std::path::PathBuf,
}

impl Nodes {
    fn spawn(&mut self, id: u64) -> anyhow::Result<()> {
        let exe = std::env::current_exe().context("cannot find the meshd binary to start nodes")?;
        let log = std::fs::File::create(self.dir.join(format!("meshd-{id}.log")))?;
        let child = Command::new(exe)
            .args(&self.args[&id])
            .env("RAFTMESH_LOG", "info,openraft=warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .context("cannot start a meshd node")?;
        self.children.insert(id, child);
        Ok(())
    }

    fn kill(&mut self, id: u64) {
        if let Some(mut c) = self.children.remove(&id) {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn pids(&self) -> Vec<u32> {
        self.children.values().map(Child::id).collect()
    }
}

impl Drop for Nodes {
    fn drop(&mut self) {
        let ids: Vec<u64> = self.children.keys().copied().collect();
        for id in ids {
            self.kill(id);
        }
    }
}

fn doc(y: &str) -> anyhow::Result<Resource> {
    serde_yaml_ng::from_str(y).with_context(|| format!("demo resource: {y}"))
}

fn route(v1: u32, v2: u32) -> anyhow::Result<Resource> {
    doc(&format!(
        "kind: Route\nmetadata: {{name: web}}\nspec:\n  service: web\n  rules:\n    - backends:\n        - {{subset: {{version: v1}}, weight: {v1}}}\n        - {{subset: {{version: v2}}, weight: {v2}}}\n  timeout: 2s\n  retries: {{attempts: 2, on: [5xx, connect-failure]}}\n  outlier: {{consecutive_failures: 3, base_ejection: 30s}}\n"
    ))
}

async fn apply(conn: &Conn, docs: Vec<Resource>) -> anyhow::Result<u64> {
    let items: Vec<pb::ApplyItem> = docs
        .into_iter()
        .map(|r| pb::ApplyItem {
            resource: Some(r.into()),
            expected_revision: None,
        })
        .collect();
    let r = conn
        .call(false, |mut c| {
            let items = items.clone();
            async move {
                c.apply(pb::ApplyRequest { items })
                    .await
                    .map(|r| r.into_inner())
            }
        })
        .await?;
    Ok(r.revision)
}

async fn mint(conn: &Conn, service: &str) -> anyhow::Result<String> {
    let req = pb::CreateTokenRequest {
        scope: Some(pb::create_token_request::Scope::Service(pb::ServiceScope {
            service: service.into(),
            namespace: String::new(),
        })),
        ttl_ms: 3_600_000,
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

struct Story {
    lines: Mutex<Vec<(Duration, String)>>,
    start: Instant,
}

impl Story {
    fn say(&self, line: impl Into<String>) {
        let line = line.into();
        let t = self.start.elapsed();
        if !std::io::stdout().is_terminal() {
            println!("[{:>5.1}s] {line}", t.as_secs_f64());
        }
        self.lines
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push((t, line));
    }

    fn recent(&self, n: usize) -> Vec<(Duration, String)> {
        let l = self.lines.lock().unwrap_or_else(PoisonError::into_inner);
        l[l.len().saturating_sub(n)..].to_vec()
    }
}

struct Mesh {
    conn: Conn,
    addrs: Vec<String>,
    token: String,
    nodes: Arc<Mutex<Nodes>>,
    flows: Flows,
    story: Arc<Story>,
    proxies: Mutex<BTreeMap<String, Proxy>>,
    status: Mutex<Option<pb::ClusterStatusResponse>>,
}

impl Mesh {
    fn nodes(&self) -> std::sync::MutexGuard<'_, Nodes> {
        self.nodes.lock().unwrap_or_else(PoisonError::into_inner)
    }

    async fn leader(&self, not: Option<u64>, timeout: Duration) -> Option<u64> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            let r = self
                .conn
                .call(true, |mut c| async move {
                    c.cluster_status(pb::ClusterStatusRequest {})
                        .await
                        .map(|r| r.into_inner())
                })
                .await;
            if let Ok(s) = r {
                if let Some(l) = s.leader.filter(|l| Some(*l) != not) {
                    return Some(l);
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        None
    }
}

#[allow(clippy::too_many_arguments)]
fn proxy_config(
    addrs: &[String],
    dir: &Path,
    service: &str,
    instance: &str,
    version: Option<&str>,
    app: Option<SocketAddr>,
    token: String,
    subscribe: &[&str],
) -> ProxyConfig {
    let any: SocketAddr = SocketAddr::from(([127, 0, 0, 1], 0));
    ProxyConfig {
        control_plane: addrs.to_vec(),
        service: service.into(),
        instance: instance.into(),
        namespace: "default".into(),
        labels: version
            .map(|v| [("version".to_string(), v.to_string())].into())
            .unwrap_or_default(),
        app_port: app.map(|a| a.port()),
        advertise: "127.0.0.1".into(),
        inbound: any,
        outbound: any,
        admin: any,
        upstreams: vec![],
        token: Some(token),
        ca_pem: None,
        state_dir: Some(dir.join(format!("proxy-{instance}"))),
        config_file: None,
        cluster: String::new(),
        locality: String::new(),
        subscribe: subscribe.iter().map(|s| s.to_string()).collect(),
        workers: None,
    }
}

/// Runs the demo until its duration ends or Ctrl-C.
pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let dir = tempfile::Builder::new()
        .prefix("raftmesh-demo-")
        .tempdir()?;
    let token = crate::auth::new_secret();
    let token_file = dir.path().join("admin.token");
    std::fs::write(&token_file, &token)?;
    let ports: Vec<u16> = (1..=3).map(|i| args.base_port + i).collect();
    let addrs: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    for a in &addrs {
        if std::net::TcpListener::bind(a).is_err() {
            bail!("port {a} is in use; pick other ports with --base-port");
        }
    }
    let initial = addrs
        .iter()
        .enumerate()
        .map(|(i, a)| format!("{}={a}", i + 1))
        .collect::<Vec<_>>()
        .join(",");
    let mut nodes = Nodes {
        children: BTreeMap::new(),
        args: BTreeMap::new(),
        dir: dir.path().to_path_buf(),
    };
    for (i, a) in addrs.iter().enumerate() {
        let id = i as u64 + 1;
        let args: Vec<String> = vec![
            "server".into(),
            "--id".into(),
            id.to_string(),
            "--listen".into(),
            a.clone(),
            "--http".into(),
            "off".into(),
            "--data-dir".into(),
            dir.path().join(format!("n{id}")).display().to_string(),
            "--initial-cluster".into(),
            initial.clone(),
            "--cluster-name".into(),
            "demo".into(),
            "--admin-token-file".into(),
            token_file.display().to_string(),
            "--endpoint-grace".into(),
            "5s".into(),
            "--parent-pid".into(),
            std::process::id().to_string(),
        ];
        nodes.args.insert(id, args);
        nodes.spawn(id)?;
    }
    println!(
        "meshd demo: starting 3 meshd nodes (pids {:?}) in {}",
        nodes.pids(),
        dir.path().display()
    );
    let conn = Conn::new(addrs.clone(), Some(token.clone())).map_err(anyhow::Error::msg)?;
    let mesh = Arc::new(Mesh {
        conn,
        addrs: addrs.clone(),
        token: token.clone(),
        nodes: Arc::new(Mutex::new(nodes)),
        flows: Default::default(),
        story: Arc::new(Story {
            lines: Mutex::new(Vec::new()),
            start: started,
        }),
        proxies: Mutex::new(BTreeMap::new()),
        status: Mutex::new(None),
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
    if !std::io::stdout().is_terminal() {
        println!(
            "use meshctl against it:\n  export RAFTMESH_SERVER={} RAFTMESH_TOKEN={token}\n  meshctl cluster status; meshctl get routes -o yaml; meshctl proxies",
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

    let apps = vec![
        ("web", "web-v1", Some("v1"), App::start("web v1").await?),
        ("web", "web-v2-a", Some("v2"), App::start("web v2").await?),
        ("web", "web-v2-b", Some("v2"), App::start("web v2").await?),
        ("api", "api-1", Some("v1"), App::start("api v1").await?),
    ];
    for (service, instance, version, app) in &apps {
        let t = mint(&mesh.conn, service).await?;
        let cfg = proxy_config(
            &addrs,
            dir.path(),
            service,
            instance,
            *version,
            Some(app.addr),
            t,
            &[],
        );
        let p = raftmesh_dataplane_proxy::start(cfg).await?;
        mesh.proxies
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(instance.to_string(), p);
    }
    let mut callers = Vec::new();
    for caller in ["frontend", "batch"] {
        let t = mint(&mesh.conn, caller).await?;
        let cfg = proxy_config(
            &addrs,
            dir.path(),
            caller,
            &format!("{caller}-1"),
            None,
            None,
            t,
            &["web", "api"],
        );
        let p = raftmesh_dataplane_proxy::start(cfg).await?;
        callers.push((caller, p.outbound));
        mesh.proxies
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(caller.to_string(), p);
    }
    // Wait until every proxy holds a config before sending traffic.
    let deadline = Instant::now() + Duration::from_secs(20);
    while mesh
        .proxies
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .values()
        .any(|p| p.config.snapshot().revision == 0)
    {
        if Instant::now() > deadline {
            bail!("the demo proxies did not get their config within 20s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    mesh.story
        .say("6 proxies up: web v1, web v2 (x2), api, and two callers (frontend, batch)");
    let mut generators = Vec::new();
    for (caller, outbound) in &callers {
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
            if let Err(e) = run_story(&m).await {
                m.story.say(format!("the story stopped: {e:#}"));
            }
        }))
    };
    let poller = {
        let m = mesh.clone();
        tokio::spawn(async move {
            loop {
                let r = m
                    .conn
                    .call(true, |mut c| async move {
                        c.cluster_status(pb::ClusterStatusRequest {})
                            .await
                            .map(|r| r.into_inner())
                    })
                    .await
                    .ok();
                *m.status.lock().unwrap_or_else(PoisonError::into_inner) = r;
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
            _ = tokio::signal::ctrl_c() => { println!(); break; }
        }
        if tty {
            draw(&mesh, started);
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
                    split_text(&w.split)
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
    let proxies: Vec<Proxy> =
        std::mem::take(&mut *mesh.proxies.lock().unwrap_or_else(PoisonError::into_inner))
            .into_values()
            .collect();
    for p in proxies {
        p.shutdown().await;
    }
    drop(apps);
    let ids: Vec<u64> = mesh.nodes().children.keys().copied().collect();
    for id in ids {
        mesh.nodes().kill(id);
    }
    drop(dir);
    println!("meshd demo: stopped every node and proxy, removed the temporary directory");
    Ok(())
}

fn split_text(s: &BTreeMap<String, f64>) -> String {
    if s.is_empty() {
        return "-".into();
    }
    s.iter()
        .map(|(v, x)| format!("{} {:.0}%", if v.is_empty() { "?" } else { v }, x * 100.0))
        .collect::<Vec<_>>()
        .join(" · ")
}

fn draw(mesh: &Mesh, started: Instant) {
    let mut out = String::new();
    out.push_str("\x1b[2J\x1b[H");
    out.push_str(&format!(
        "Raftmesh demo — 3 meshd nodes, 6 proxies, every request crosses two proxies          t={:.0}s\n\n",
        started.elapsed().as_secs_f64()
    ));
    out.push_str(&format!(
        "{:<10} {:<8} {:>7} {:>9} {:>9} {:>9}  {}\n",
        "CALLER", "SERVICE", "REQ/S", "SUCCESS", "P50", "P99", "SPLIT (by app version)"
    ));
    for ((caller, svc), w) in traffic::windows(&mesh.flows, 5) {
        let success = if w.denied > 0.0 {
            format!("{:.1}% (403 {:.0}%)", w.success * 100.0, w.denied * 100.0)
        } else {
            format!("{:.2}%", w.success * 100.0)
        };
        out.push_str(&format!(
            "{:<10} {:<8} {:>7.1} {:>9} {:>7.1}ms {:>7.1}ms  {}\n",
            caller,
            svc,
            w.rps,
            success,
            w.p50.as_secs_f64() * 1e3,
            w.p99.as_secs_f64() * 1e3,
            split_text(&w.split)
        ));
    }
    let (total, failed, denied) = traffic::totals(&mesh.flows);
    out.push_str(&format!(
        "\n{total} requests so far, {failed} failed, {denied} denied\n\n"
    ));
    match mesh
        .status
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .as_ref()
    {
        Some(s) => {
            out.push_str(&format!(
                "CONTROL PLANE  leader: {}  term {}  revision {}\n",
                s.leader
                    .map(|l| format!("node {l}"))
                    .unwrap_or_else(|| "none".into()),
                s.term,
                s.applied_index
            ));
            for m in &s.members {
                out.push_str(&format!(
                    "  node {}  {:<11} applied {}\n",
                    m.id, m.state, m.applied_index
                ));
            }
        }
        None => out.push_str("CONTROL PLANE  (no node answers)\n"),
    }
    out.push_str("\nSTORY\n");
    for (t, line) in mesh.story.recent(8) {
        out.push_str(&format!("  {:>4.0}s  {line}\n", t.as_secs_f64()));
    }
    out.push_str(&format!(
        "\nTry, in another terminal:\n  export RAFTMESH_SERVER={} RAFTMESH_TOKEN={}\n  meshctl cluster status; meshctl get routes -o yaml; meshctl proxies\nCtrl-C stops everything.\n",
        mesh.addrs.join(","),
        mesh.token
    ));
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(out.as_bytes());
    let _ = stdout.flush();
}

async fn pause(d: u64) {
    tokio::time::sleep(Duration::from_secs(d)).await;
}

async fn run_story(mesh: &Mesh) -> anyhow::Result<()> {
    let say = |s: &str| mesh.story.say(s);
    pause(6).await;
    for (v1, v2) in [(90, 10), (50, 50), (0, 100)] {
        say(&format!(
            "canary: route web {v1}% to v1, {v2}% to v2 (meshctl apply)"
        ));
        let rev = apply(&mesh.conn, vec![route(v1, v2)?]).await?;
        say(&format!(
            "  committed at revision {rev}; the proxies apply it; watch the split follow"
        ));
        pause(8).await;
    }
    // Deny one caller.
    let batch = raftmesh_api::spiffe_id(
        &raftmesh_api::default_trust_domain("demo"),
        "default",
        "batch",
    );
    say(&format!(
        "deny: a Policy on api refuses {batch} (batch); frontend is not named"
    ));
    let rev = apply(
        &mesh.conn,
        vec![doc(&format!(
            "kind: Policy\nmetadata: {{name: api-no-batch}}\nspec: {{service: api, action: deny, from: ['{batch}']}}\n"
        ))?],
    )
    .await?;
    say(&format!(
        "  committed at revision {rev}; api's proxy checks each caller's certificate"
    ));
    pause(2).await;
    let t = Instant::now();
    pause(5).await;
    let (n, denied, _) = traffic::outcomes_since(&mesh.flows, "batch", "api", t);
    let (m, _, failed) = traffic::outcomes_since(&mesh.flows, "frontend", "api", t);
    say(&format!(
        "  batch -> api: {denied} of {n} requests denied (403 denied); frontend -> api: {failed} of {m} failed"
    ));
    say("lift the deny (meshctl delete policy api-no-batch)");
    mesh.conn
        .call(false, |mut c| async move {
            c.delete(pb::DeleteRequest {
                kind: "Policy".into(),
                namespace: String::new(),
                name: "api-no-batch".into(),
                expected_revision: None,
            })
            .await
            .map(|r| r.into_inner())
        })
        .await
        .map_err(|e| anyhow::anyhow!("deleting the policy: {}", e.message()))?;
    pause(4).await;
    // Kill the leader.
    let Some(leader) = mesh.leader(None, Duration::from_secs(5)).await else {
        bail!("no leader to kill");
    };
    say(&format!("kill -9 the leader, node {leader}"));
    let t0 = Instant::now();
    mesh.nodes().kill(leader);
    match mesh.leader(Some(leader), Duration::from_secs(10)).await {
        Some(new) => say(&format!(
            "  node {new} is the new leader after {} ms; traffic never needed the control plane",
            t0.elapsed().as_millis()
        )),
        None => say("  no new leader within 10 s"),
    }
    pause(5).await;
    say(&format!(
        "  failed requests since the kill: {}",
        traffic::failed_since(&mesh.flows, t0)
    ));
    say(&format!(
        "node {leader} restarts from its data directory and catches up"
    ));
    mesh.nodes().spawn(leader)?;
    pause(5).await;
    // Kill an endpoint.
    say("kill the web v2-b instance (its proxy stops answering)");
    let t1 = Instant::now();
    let victim = mesh
        .proxies
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .remove("web-v2-b");
    if let Some(p) = victim {
        p.shutdown().await;
    }
    pause(3).await;
    let after = Instant::now();
    pause(6).await;
    let health = mesh
        .conn
        .call(true, |mut c| async move {
            c.get(pb::GetRequest {
                kind: "Endpoint".into(),
                namespace: String::new(),
                name: "web-v2-b".into(),
                stale: false,
            })
            .await
            .map(|r| r.into_inner())
        })
        .await
        .ok()
        .and_then(|r| r.resource)
        .and_then(|r| Resource::try_from(r).ok())
        .and_then(|r| match r.spec {
            raftmesh_api::Spec::Endpoint(e) => Some(format!("{:?}", e.health).to_lowercase()),
            _ => None,
        })
        .unwrap_or_else(|| "gone".into());
    say(&format!(
        "  callers retried on the other v2 instance and ejected it: {} failed since the kill ({} in the last 6 s); meshd now reports web-v2-b {health}",
        traffic::failed_since(&mesh.flows, t1),
        traffic::failed_since(&mesh.flows, after)
    ));
    say("back to 90/10: the surviving v2 instance takes the canary share");
    apply(&mesh.conn, vec![route(90, 10)?]).await?;
    pause(5).await;
    say("the story is over; the mesh keeps running (Ctrl-C to stop)");
    Ok(())
}
