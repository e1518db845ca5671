//! The control plane as a new user runs it: real meshd processes and the
//! meshctl binary, from the shell's point of view (exit codes, output).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

const MESHD: &str = env!("CARGO_BIN_EXE_meshd");
/// meshctl lives in its own package (`raftmesh-ctl`): found, or built, the
/// way the demo finds mesh-proxy.
fn meshctl() -> PathBuf {
    raftmesh_client::bins::find("meshctl", true).expect("meshctl")
}
const TOKEN: &str = "cli-test-admin-secret";

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// meshd processes, killed when the test ends however it ends.
struct Procs {
    children: Vec<(u64, Child)>,
}

impl Drop for Procs {
    fn drop(&mut self) {
        for (_, c) in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

struct Cluster {
    procs: Procs,
    ports: Vec<u16>,
    dir: PathBuf,
    token_file: PathBuf,
    /// `--tls-dir` of every node (and `--ca-file` of meshctl), if any.
    tls: Option<PathBuf>,
}

impl Cluster {
    fn start(dir: &Path, n: u64, restore: Option<&Path>) -> Self {
        Self::start_with_tls(dir, n, restore, None)
    }

    fn start_with_tls(dir: &Path, n: u64, restore: Option<&Path>, tls: Option<PathBuf>) -> Self {
        let ports: Vec<u16> = (0..n).map(|_| free_port()).collect();
        let initial = ports
            .iter()
            .enumerate()
            .map(|(i, p)| format!("{}=127.0.0.1:{p}", i + 1))
            .collect::<Vec<_>>()
            .join(",");
        let token_file = dir.join("admin.token");
        std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
        let mut c = Cluster {
            procs: Procs { children: vec![] },
            ports,
            dir: dir.to_path_buf(),
            token_file,
            tls,
        };
        for id in 1..=n {
            c.spawn(id, &initial, restore);
        }
        c
    }

    fn spawn(&mut self, id: u64, initial: &str, restore: Option<&Path>) {
        let port = self.ports[id as usize - 1];
        let mut cmd = Command::new(MESHD);
        cmd.args([
            "server",
            "--id",
            &id.to_string(),
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--http",
            "off",
        ])
        .arg("--data-dir")
        .arg(self.dir.join(format!("n{id}")))
        .args(["--initial-cluster", initial, "--cluster-name", "east"])
        .arg("--admin-token-file")
        .arg(&self.token_file)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(self.dir.join(format!("n{id}.log"))).unwrap());
        if let Some(r) = restore {
            cmd.arg("--restore").arg(r);
        }
        if let Some(t) = &self.tls {
            cmd.arg("--tls-dir").arg(t);
        }
        self.procs.children.push((id, cmd.spawn().unwrap()));
    }

    fn servers(&self) -> String {
        self.ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn server(&self, id: u64) -> String {
        format!("127.0.0.1:{}", self.ports[id as usize - 1])
    }

    fn kill9(&mut self, id: u64) {
        let i = self
            .procs
            .children
            .iter()
            .position(|(x, _)| *x == id)
            .unwrap();
        let (_, mut c) = self.procs.children.remove(i);
        c.kill().unwrap(); // SIGKILL
        c.wait().unwrap();
    }

    /// Waits until cluster status names a leader; returns it.
    fn wait_leader(&self, except: Option<u64>) -> u64 {
        let deadline = Instant::now() + Duration::from_secs(15);
        let ca = self
            .tls
            .as_ref()
            .map(|t| t.join("ca.pem").display().to_string());
        let mut args = vec!["cluster", "status", "-o", "json"];
        if let Some(ca) = &ca {
            args.extend(["--ca-file", ca.as_str()]);
        }
        loop {
            let o = ctl(&self.servers(), Some(TOKEN), &args, None);
            if o.status.success() {
                let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
                if let Some(l) = v["leader"].as_u64() {
                    if Some(l) != except {
                        return l;
                    }
                }
            }
            assert!(
                Instant::now() < deadline,
                "no leader: {}",
                String::from_utf8_lossy(&o.stderr)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn ctl(server: &str, token: Option<&str>, args: &[&str], stdin: Option<&str>) -> Output {
    let mut cmd = Command::new(meshctl());
    cmd.arg("--server")
        .arg(server)
        .args(args)
        .env_remove("RAFTMESH_TOKEN")
        .env_remove("RAFTMESH_SERVER");
    if let Some(t) = token {
        cmd.env("RAFTMESH_TOKEN", t);
    }
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    if let Some(s) = stdin {
        use std::io::Write;
        child.stdin.take().unwrap().write_all(s.as_bytes()).unwrap();
    }
    drop(child.stdin.take());
    child.wait_with_output().unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

const RESOURCES: &str = "kind: Service
metadata: {name: web}
spec: {ports: [{port: 80, protocol: http}]}
---
kind: Route
metadata: {name: web}
spec:
  service: web
  rules:
    - backends:
        - {subset: {version: v1}, weight: 90}
        - {subset: {version: v2}, weight: 10}
";

#[test]
fn a_three_node_cluster_from_the_shell() {
    let tmp = TempDir::new().unwrap();
    let mut c = Cluster::start(tmp.path(), 3, None);
    let leader = c.wait_leader(None);
    let follower = (1..=3).find(|i| *i != leader).unwrap();

    // A write through a follower, read back from another node.
    let o = ctl(
        &c.server(follower),
        Some(TOKEN),
        &["apply", "-f", "-"],
        Some(RESOURCES),
    );
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(
        text(&o.stdout).contains("route/web configured (revision"),
        "{}",
        text(&o.stdout)
    );
    let other = (1..=3).find(|i| *i != follower).unwrap();
    let o = ctl(
        &c.server(other),
        Some(TOKEN),
        &["get", "route", "web", "-o", "json"],
        None,
    );
    assert!(o.status.success(), "{}", text(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["spec"]["rules"][0]["backends"][1]["weight"], 10);
    let o = ctl(&c.servers(), Some(TOKEN), &["get", "svc"], None);
    assert!(
        text(&o.stdout).contains("web") && text(&o.stdout).contains("80/http"),
        "{}",
        text(&o.stdout)
    );
    // Its virtual address, assigned by meshd.
    assert!(
        text(&o.stdout).contains("VIP") && text(&o.stdout).contains("240.240.0."),
        "{}",
        text(&o.stdout)
    );

    // Bad input: exit 3, the document, field and rule named, nothing applied.
    let bad = "kind: Service\nmetadata: {name: api}\nspec: {}\n---\nkind: Route\nmetadata: {name: web}\nspec: {service: web, rules: [{backends: [{subset: {v: a}, weight: 90}]}]}\n";
    let o = ctl(&c.servers(), Some(TOKEN), &["apply", "-f", "-"], Some(bad));
    assert_eq!(o.status.code(), Some(3));
    assert!(
        text(&o.stderr).contains(
            "document 2: route \"web\": spec.rules[0].backends: weights sum to 90, must be 100"
        ),
        "{}",
        text(&o.stderr)
    );
    let o = ctl(&c.servers(), Some(TOKEN), &["get", "svc", "api"], None);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o.stderr).contains("not found"), "{}", text(&o.stderr));
    let o = ctl(
        &c.servers(),
        Some(TOKEN),
        &["apply", "-f", "-"],
        Some("kind: [\n"),
    );
    assert_eq!(o.status.code(), Some(3));
    assert!(
        text(&o.stderr).contains("not valid YAML"),
        "{}",
        text(&o.stderr)
    );

    // Tokens: missing and wrong are refused with exit 4.
    let o = ctl(&c.servers(), None, &["get", "svc"], None);
    assert_eq!(o.status.code(), Some(4));
    assert!(
        text(&o.stderr).contains("missing admin token"),
        "{}",
        text(&o.stderr)
    );
    let o = ctl(&c.servers(), Some("wrong"), &["get", "svc"], None);
    assert_eq!(o.status.code(), Some(4));

    // A CAS conflict names the current revision and exits 5.
    let stale = "kind: Service\nmetadata: {name: web, revision: 1}\nspec: {ports: [{port: 81}]}\n";
    let o = ctl(
        &c.servers(),
        Some(TOKEN),
        &["apply", "-f", "-"],
        Some(stale),
    );
    assert_eq!(o.status.code(), Some(5));
    assert!(
        text(&o.stderr).contains("conflict: it is at revision"),
        "{}",
        text(&o.stderr)
    );

    // meshctl check: all well, then a dead node is named and fails it.
    let servers = c.servers();
    let check_until = |want_ok: bool| {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let o = ctl(&servers, Some(TOKEN), &["check"], None);
            if o.status.success() == want_ok {
                return text(&o.stdout);
            }
            assert!(
                Instant::now() < deadline,
                "meshctl check never {}: {} {}",
                if want_ok { "passed" } else { "failed" },
                text(&o.stdout),
                text(&o.stderr)
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    let out = check_until(true);
    assert!(
        out.contains("clock skew") && out.contains("trust bundle"),
        "{out}"
    );

    // kill -9 the leader: a new one is elected and writes go on, through
    // meshctl's fail-over across --server addresses.
    c.kill9(leader);
    let new = c.wait_leader(Some(leader));
    assert_ne!(new, leader);
    let out = check_until(false);
    assert!(
        out.contains(&format!("FAIL  node {leader}")) && out.contains("unreachable"),
        "{out}"
    );
    let o = ctl(
        &c.servers(),
        Some(TOKEN),
        &["apply", "-f", "-"],
        Some("kind: Service\nmetadata: {name: db}\nspec: {}\n"),
    );
    assert!(o.status.success(), "{}", text(&o.stderr));

    // The killed node restarts from its data dir and catches up.
    let initial = (1..=3)
        .map(|i| format!("{i}={}", c.server(i)))
        .collect::<Vec<_>>()
        .join(",");
    c.spawn(leader, &initial, None);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let o = ctl(
            &c.server(leader),
            Some(TOKEN),
            &["get", "svc", "db", "--stale"],
            None,
        );
        if o.status.success() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "restarted node never caught up: {}",
            text(&o.stderr)
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // Backup, then restore into a brand-new cluster.
    let backup = tmp.path().join("backup.json");
    let o = ctl(
        &c.servers(),
        Some(TOKEN),
        &["snapshot", "save", backup.to_str().unwrap()],
        None,
    );
    assert!(o.status.success(), "{}", text(&o.stderr));
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&backup).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "a backup holds the CA key: owner-only");
        assert!(
            text(&o.stderr).contains("private key"),
            "meshctl says what the file holds: {}",
            text(&o.stderr)
        );
        // Secrets at rest: a node's data directory, and everything sled and
        // meshd wrote in it, are the node's user's only.
        let mut dirs = vec![c.dir.join("n1")];
        let mut seen = 0;
        while let Some(d) = dirs.pop() {
            let m = std::fs::metadata(&d).unwrap().permissions().mode();
            assert_eq!(m & 0o077, 0, "{} is {:o}", d.display(), m & 0o777);
            for e in std::fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    dirs.push(p);
                } else {
                    let m = std::fs::metadata(&p).unwrap().permissions().mode();
                    assert_eq!(m & 0o077, 0, "{} is {:o}", p.display(), m & 0o777);
                    seen += 1;
                }
            }
        }
        assert!(seen >= 3, "node.json and sled's files were checked");
    }
    let before = ctl(
        &c.servers(),
        Some(TOKEN),
        &["get", "svc", "-o", "json"],
        None,
    );
    drop(c);
    // A changed backup is refused with the reason, and no node starts.
    let bad_dir = TempDir::new().unwrap();
    let tampered = bad_dir.path().join("tampered.json");
    let text_backup = std::fs::read_to_string(&backup).unwrap();
    std::fs::write(
        &tampered,
        text_backup.replacen("\"port\":", "\"port\": 1", 1),
    )
    .unwrap();
    let port = free_port();
    let o = Command::new(MESHD)
        .args(["server", "--id", "1", "--http", "off"])
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--initial-cluster", &format!("1=127.0.0.1:{port}")])
        .arg("--data-dir")
        .arg(bad_dir.path().join("n1"))
        .arg("--admin-token-file")
        .arg({
            let f = bad_dir.path().join("admin.token");
            std::fs::write(&f, TOKEN).unwrap();
            f
        })
        .arg("--restore")
        .arg(&tampered)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!o.status.success(), "a tampered backup was restored");
    let e = text(&o.stderr);
    assert!(
        e.contains("--restore") && e.contains("does not match its contents"),
        "{e}"
    );
    let tmp2 = TempDir::new().unwrap();
    let c2 = Cluster::start(tmp2.path(), 3, Some(&backup));
    c2.wait_leader(None);
    let after = ctl(
        &c2.servers(),
        Some(TOKEN),
        &["get", "svc", "-o", "json"],
        None,
    );
    assert!(after.status.success(), "{}", text(&after.stderr));
    assert_eq!(
        text(&after.stdout),
        text(&before.stdout),
        "same resources and revisions after restore"
    );
}

#[test]
fn meshd_dev_prints_a_token_that_works() {
    let port = free_port();
    let mut child = Command::new(MESHD)
        .args([
            "dev",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--http",
            "off",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut procs = Procs { children: vec![] };
    let stdout = child.stdout.take().unwrap();
    procs.children.push((1, child));
    use std::io::BufRead;
    let mut token = None;
    let mut data_dir = None;
    for line in std::io::BufReader::new(stdout).lines() {
        let line = line.unwrap();
        if let Some(t) = line.trim().strip_prefix("admin token:") {
            token = Some(t.trim().to_string());
        }
        if let Some(d) = line.trim().strip_prefix("data dir:") {
            data_dir = Some(d.trim().split(' ').next().unwrap().to_string());
        }
        if line.contains("Ctrl-C") {
            break;
        }
    }
    let token = token.expect("meshd dev printed no token");
    let o = ctl(
        &format!("127.0.0.1:{port}"),
        Some(&token),
        &["whoami"],
        None,
    );
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(
        text(&o.stdout).contains("admin-bootstrap"),
        "{}",
        text(&o.stdout)
    );
    // SIGTERM stops it cleanly and the temporary data dir goes away.
    let (_, mut child) = procs.children.pop().unwrap();
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "meshd dev exited with {status}");
    let d = data_dir.expect("no data dir printed");
    assert!(!Path::new(&d).exists(), "{d} was left behind");
}

/// A `--base-port` whose 28 ports are free, below the kernel's ephemeral
/// range (32768 and up), so no test's outgoing connection takes one of
/// them while the demo starts; demos running side by side get different
/// ones.
fn demo_base_port() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let seed = (std::process::id() % 97) as u16;
    for _ in 0..100 {
        let k = NEXT.fetch_add(1, Ordering::SeqCst);
        let base = 20_000 + ((seed + k * 31) % 400) * 30;
        let free = (base + 1..=base + 28).all(|p| TcpListener::bind(("127.0.0.1", p)).is_ok());
        if free {
            return base;
        }
    }
    panic!("no free range of 28 ports for the demo below 32000");
}

/// Runs `meshd demo` with `args`, optionally interrupting it after `sigint_after`,
/// and returns its stdout, the pids of its nodes then its proxies, and the
/// temporary directory it named.
fn run_demo(args: &[&str], sigint_after: Option<Duration>) -> (String, Vec<u32>, PathBuf) {
    let base = demo_base_port();
    let child = Command::new(MESHD)
        .args(["demo", "--base-port", &base.to_string()])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    if let Some(d) = sigint_after {
        std::thread::sleep(d);
        Command::new("kill")
            .args(["-INT", &child.id().to_string()])
            .status()
            .unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "meshd demo exited with {}: {}",
        out.status,
        text(&out.stderr)
    );
    let stdout = text(&out.stdout);
    let first = stdout.lines().next().unwrap_or_default().to_string();
    let pids_in = |line: &str| -> Vec<u32> {
        line.split('[')
            .nth(1)
            .and_then(|s| s.split(']').next())
            .map(|s| s.split(',').filter_map(|p| p.trim().parse().ok()).collect())
            .unwrap_or_default()
    };
    let mut pids = pids_in(&first);
    let dir = PathBuf::from(first.rsplit(" in ").next().unwrap_or_default());
    // The proxies are processes too: none may outlive the demo either.
    let proxies = stdout
        .lines()
        .find(|l| l.contains("mesh-proxy processes"))
        .map(pids_in)
        .unwrap_or_default();
    assert_eq!(proxies.len(), 6, "the demo names its six proxies: {stdout}");
    pids.extend(proxies);
    (stdout, pids, dir)
}

/// A `k=v` number of the demo's `summary` line.
fn summary_field(summary: &str, k: &str) -> u64 {
    summary
        .split_whitespace()
        .find_map(|kv| kv.strip_prefix(&format!("{k}=")))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {k} in {summary}"))
}

fn assert_nothing_left(pids: &[u32], dir: &Path) {
    assert_eq!(
        pids.len(),
        3 + 6,
        "the demo names its three nodes and six proxies"
    );
    // Children of the exited demo are reaped by init: wait a moment.
    let deadline = Instant::now() + Duration::from_secs(5);
    for pid in pids {
        while Path::new(&format!("/proc/{pid}/cmdline")).exists()
            && !std::fs::read(format!("/proc/{pid}/cmdline"))
                .unwrap_or_default()
                .is_empty()
        {
            assert!(
                Instant::now() < deadline,
                "process {pid} (a meshd node or a mesh-proxy) outlived the demo"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    assert!(
        !dir.as_os_str().is_empty() && !dir.exists(),
        "{} was left behind",
        dir.display()
    );
}

#[test]
fn meshd_demo_carries_traffic_through_proxies_and_leaves_nothing_behind() {
    let (out, pids, dir) = run_demo(&["--duration", "20s", "--no-story"], None);
    let summary = out.lines().find(|l| l.starts_with("summary ")).expect(&out);
    let field = |k: &str| summary_field(summary, k);
    assert!(field("requests") > 500, "{summary}");
    assert_eq!(field("failed"), 0, "{out}");
    assert!(
        out.contains("frontend -> web") && out.contains("batch -> api"),
        "{out}"
    );
    // The dashboard's address, with a token that can only read, and what
    // `meshctl stat` says of the same traffic, from the proxies' reports.
    let url = out
        .lines()
        .find_map(|l| l.split("the dashboard is at ").nth(1))
        .expect(&out);
    assert!(
        url.starts_with("http://127.0.0.1:") && url.contains("/#token="),
        "{url}"
    );
    assert!(url.contains("the token is read-only"), "{url}");
    let stat: Vec<&str> = out
        .lines()
        .skip_while(|l| !l.contains("meshctl stat (the last minute"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .collect();
    let row = |svc: &str, from: &str| {
        stat.iter()
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .find(|w| w.len() == 7 && w[0] == svc && w[1] == from)
            .unwrap_or_else(|| panic!("no {svc} <- {from} in meshctl stat: {stat:#?}"))
    };
    for (svc, from) in [
        ("web", "frontend"),
        ("api", "frontend"),
        ("api", "batch"),
        ("api", "*"),
    ] {
        let w = row(svc, from);
        assert_eq!(w[2], "100.00%", "{w:?}");
        let rps: f64 = w[3].parse().unwrap();
        assert!(rps > 1.0, "{w:?}");
    }
    assert_nothing_left(&pids, &dir);

    // Ctrl-C stops everything too.
    let (out, pids, dir) = run_demo(&["--no-story"], Some(Duration::from_secs(8)));
    assert!(out.contains("summary requests="), "{out}");
    assert_nothing_left(&pids, &dir);
}

#[test]
fn meshd_demo_transparent_runs_plain_curl_callers_under_capture_and_removes_its_hosts() {
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("skipped: meshd demo --transparent needs root");
        return;
    }
    for tool in ["ip", "iptables", "curl", "setpriv"] {
        if Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .map_or(true, |o| !o.status.success())
        {
            eprintln!("skipped: meshd demo --transparent needs {tool}");
            return;
        }
    }
    // Few requests: every one is a curl process.
    let (out, pids, dir) = run_demo(
        &[
            "--transparent",
            "--duration",
            "15s",
            "--no-story",
            "--rps",
            "5",
        ],
        None,
    );
    let summary = out.lines().find(|l| l.starts_with("summary ")).expect(&out);
    let field = |k: &str| summary_field(summary, k);
    assert!(field("requests") > 60, "{summary}");
    assert_eq!(field("failed"), 0, "{out}");
    assert!(out.contains("plain curl loops"), "{out}");
    assert!(
        out.contains("frontend -> web") && out.contains("batch -> api"),
        "{out}"
    );
    assert_nothing_left(&pids, &dir);
    let netns = text(
        &Command::new("ip")
            .args(["netns", "list"])
            .output()
            .unwrap()
            .stdout,
    );
    assert!(!netns.contains("rmdemo-"), "hosts left behind: {netns}");
    let left = std::fs::read_dir("/etc/netns")
        .map(|d| {
            d.flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with("rmdemo-"))
                .count()
        })
        .unwrap_or(0);
    assert_eq!(left, 0, "resolver files left in /etc/netns");
}

#[test]
fn server_tls_between_nodes_and_to_clients() {
    let tmp = TempDir::new().unwrap();
    let tls = tmp.path().join("tls");
    let init = |out: &Path| {
        Command::new(MESHD)
            .args(["tls", "init", "--nodes", "3", "--out"])
            .arg(out)
            .output()
            .unwrap()
    };
    let o = init(&tls);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(
        text(&o.stdout).contains("node-3-key.pem"),
        "{}",
        text(&o.stdout)
    );
    let o = init(&tls);
    assert!(!o.status.success());
    assert!(
        text(&o.stderr).contains("already holds a server CA"),
        "{}",
        text(&o.stderr)
    );

    // The cluster forms over mutual TLS (plaintext Raft could not reach a TLS port).
    let c = Cluster::start_with_tls(tmp.path(), 3, None, Some(tls.clone()));
    let leader = c.wait_leader(None);
    let follower = (1..=3).find(|i| *i != leader).unwrap();
    let ca = tls.join("ca.pem").display().to_string();
    let o = ctl(
        &c.server(follower),
        Some(TOKEN),
        &["--ca-file", &ca, "apply", "-f", "-"],
        Some(RESOURCES),
    );
    assert!(
        o.status.success(),
        "a write forwarded over TLS: {}",
        text(&o.stderr)
    );

    // Plaintext to a TLS port fails, as does a server CA meshctl does not trust.
    let o = ctl(&c.servers(), Some(TOKEN), &["get", "svc"], None);
    assert!(
        !o.status.success(),
        "plaintext got through: {}",
        text(&o.stdout)
    );
    let other = tmp.path().join("other-tls");
    assert!(init(&other).status.success());
    let wrong = other.join("ca.pem").display().to_string();
    let o = ctl(
        &c.servers(),
        Some(TOKEN),
        &["--ca-file", &wrong, "get", "svc"],
        None,
    );
    assert!(!o.status.success(), "an unknown server CA was accepted");
    let o = ctl(
        &c.servers(),
        Some(TOKEN),
        &["--ca-file", "/nonexistent/ca.pem", "get", "svc"],
        None,
    );
    assert!(text(&o.stderr).contains("--ca-file"), "{}", text(&o.stderr));

    // A client that verifies the server but has no node certificate cannot
    // speak Raft (or forward writes) to a node.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let status = rt.block_on(async {
        let tls_cfg = tonic::transport::ClientTlsConfig::new().ca_certificate(
            tonic::transport::Certificate::from_pem(std::fs::read(tls.join("ca.pem")).unwrap()),
        );
        let ch = tonic::transport::Endpoint::from_shared(format!("https://{}", c.server(leader)))
            .unwrap()
            .tls_config(tls_cfg)
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut raft = raftmesh_api::v1::raft_client::RaftClient::new(ch);
        raft.vote(raftmesh_api::v1::RaftPayload {
            json: b"{}".to_vec(),
        })
        .await
        .unwrap_err()
    });
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
    assert!(status.message().contains("node certificate"), "{status:?}");

    // meshctl check reads each node's server certificate.
    let o = ctl(
        &c.servers(),
        Some(TOKEN),
        &["--ca-file", &ca, "check"],
        None,
    );
    let out = text(&o.stdout);
    assert!(
        out.contains("node 3 server certificate"),
        "{out} {}",
        text(&o.stderr)
    );
    assert!(!out.contains("FAIL  node 3 server"), "{out}");

    // meshctl ca rotate: a second root, trusted before it signs.
    let o = ctl(
        &c.servers(),
        Some(TOKEN),
        &["--ca-file", &ca, "ca", "rotate"],
        None,
    );
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(
        text(&o.stdout).contains("new workload CA root"),
        "{}",
        text(&o.stdout)
    );
    let o = ctl(
        &c.servers(),
        Some(TOKEN),
        &[
            "--ca-file",
            &ca,
            "get",
            "authority",
            "workload-ca",
            "-o",
            "json",
        ],
        None,
    );
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["spec"]["roots"].as_array().unwrap().len(), 2, "{v}");
    assert!(
        !text(&o.stdout).contains("PRIVATE KEY"),
        "the CA key must never be shown"
    );

    // A proxy verifies meshd with --ca-file and gets its config over TLS.
    let o = ctl(
        &c.servers(),
        Some(TOKEN),
        &["--ca-file", &ca, "token", "create", "--service", "web"],
        None,
    );
    assert!(o.status.success(), "{}", text(&o.stderr));
    let secret = text(&o.stdout).lines().last().unwrap().to_string();
    let any: std::net::SocketAddr = "127.0.0.1:0".parse().unwrap();
    let proxy = rt
        .block_on(raftmesh_dataplane_proxy::start(
            raftmesh_dataplane_proxy::config::ProxyConfig {
                control_plane: c.servers().split(',').map(String::from).collect(),
                service: "web".into(),
                instance: "web-tls-1".into(),
                namespace: "default".into(),
                labels: Default::default(),
                app_port: None,
                gateway: false,
                advertise: "127.0.0.1".into(),
                inbound: any,
                outbound: any,
                capture: None,
                dns: None,
                dns_upstream: None,
                admin: any,
                upstreams: vec![],
                token: Some(secret),
                ca_pem: Some(std::fs::read_to_string(tls.join("ca.pem")).unwrap()),
                state_dir: Some(tmp.path().join("proxy")),
                config_file: None,
                cluster: String::new(),
                locality: String::new(),
                subscribe: vec!["web".into()],
                subscription_idle: std::time::Duration::from_secs(600),
                stats_interval: std::time::Duration::from_secs(1),
                idle_timeout: std::time::Duration::from_secs(60),
                header_timeout: std::time::Duration::from_secs(10),
                http1_fast_path: true,
                workers: None,
                probe: Default::default(),
                drain_timeout: std::time::Duration::from_secs(5),
                takeover: false,
            },
        ))
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let o = ctl(
            &c.servers(),
            Some(TOKEN),
            &["--ca-file", &ca, "proxies", "-o", "json"],
            None,
        );
        let out = text(&o.stdout);
        let acked = serde_json::from_str::<serde_json::Value>(&out)
            .ok()
            .and_then(|v| {
                v.as_array()?
                    .iter()
                    .find(|p| p["instance"] == "web-tls-1")
                    .and_then(|p| p["acked_revision"].as_u64())
            })
            .unwrap_or(0);
        if acked > 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the proxy never acked a config over TLS: {out} {}",
            text(&o.stderr)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    rt.block_on(proxy.shutdown());
}

#[test]
fn meshd_demo_story_shifts_denies_and_survives_the_leader_and_an_endpoint_dying() {
    let (out, pids, dir) = run_demo(&["--duration", "110s"], None);
    assert!(out.contains("the story is over"), "{out}");
    assert!(
        out.contains("canary: route web 0% to v1, 100% to v2"),
        "{out}"
    );
    // The deny: batch's calls to api are refused, frontend's are not.
    let line = out
        .lines()
        .find(|l| l.contains("batch -> api:") && l.contains("denied"))
        .expect(&out);
    let num = |after: &str| -> u64 {
        line.split(after)
            .nth(1)
            .unwrap()
            .split_whitespace()
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    assert!(num("batch -> api: ") > 10, "{line}");
    assert_eq!(num("frontend -> api: "), 0, "{line}");
    // The leader's death fails no request; the dead endpoint is ejected.
    assert!(out.contains("is the new leader after"), "{out}");
    assert!(out.contains("failed requests since the kill: 0"), "{out}");
    assert!(out.contains("(0 in the last 6 s)"), "{out}");
    assert_nothing_left(&pids, &dir);
}

/// `docs/reference/meshd.md` and `meshctl.md` are clap's help, generated:
/// this test fails when they are stale, and rewrites them with
/// `UPDATE_DOCS=1 cargo test -p raftmesh-controlplane --test cli reference`.
#[test]
fn reference_docs_match_the_commands_help() {
    let meshctl = meshctl();
    let commands: [(&Path, &str, &[&[&str]]); 2] = [
        (
            Path::new(MESHD),
            "meshd",
            &[&[], &["server"], &["dev"], &["demo"], &["tls", "init"]],
        ),
        (
            &meshctl,
            "meshctl",
            &[
                &[],
                &["apply"],
                &["get"],
                &["delete"],
                &["cluster", "status"],
                &["cluster", "add-node"],
                &["cluster", "remove-node"],
                &["cluster", "transfer-leader"],
                &["backup", "save"],
                &["token", "create"],
                &["token", "list"],
                &["token", "revoke"],
                &["whoami"],
                &["ca", "rotate"],
                &["check"],
                &["proxies"],
                &["proxy-config"],
            ],
        ),
    ];
    let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/reference");
    for (bin, name, subs) in commands {
        let mut md = format!(
            "# `{name}` reference\n\nGenerated from `{name} --help` by the test \
             `reference_docs_match_the_commands_help` (controlplane/tests/cli); \
             do not edit by hand.\n"
        );
        for sub in subs {
            let o = Command::new(bin)
                .args(*sub)
                .arg("--help")
                .env_remove("RAFTMESH_SERVER")
                .env_remove("RAFTMESH_TOKEN")
                .env_remove("RAFTMESH_CA_FILE")
                .env_remove("RAFTMESH_ADMIN_TOKEN")
                .env("COLUMNS", "100")
                .output()
                .unwrap();
            assert!(o.status.success(), "{name} {sub:?} --help failed");
            let title = std::iter::once(name)
                .chain(sub.iter().copied())
                .collect::<Vec<_>>()
                .join(" ");
            md.push_str(&format!(
                "\n## `{title}`\n\n```text\n{}```\n",
                text(&o.stdout)
            ));
        }
        let path = docs.join(format!("{name}.md"));
        if std::env::var_os("UPDATE_DOCS").is_some() {
            std::fs::create_dir_all(&docs).unwrap();
            std::fs::write(&path, &md).unwrap();
        } else {
            let have = std::fs::read_to_string(&path).unwrap_or_default();
            assert!(
                have == md,
                "{} is stale: run UPDATE_DOCS=1 cargo test -p raftmesh-controlplane --test cli reference",
                path.display()
            );
        }
    }
}

#[test]
fn the_ca_key_is_sealed_at_rest_and_a_restore_under_another_secret_cannot_sign() {
    let tmp = TempDir::new().unwrap();
    let c = Cluster::start(tmp.path(), 1, None);
    c.wait_leader(None);
    // Wait for the CA (the first leader creates it).
    let deadline = Instant::now() + Duration::from_secs(15);
    while !text(
        &ctl(
            &c.servers(),
            Some(TOKEN),
            &["get", "authority", "-o", "json"],
            None,
        )
        .stdout,
    )
    .contains("BEGIN CERTIFICATE")
    {
        assert!(Instant::now() < deadline, "no workload CA");
        std::thread::sleep(Duration::from_millis(100));
    }
    let backup = tmp.path().join("backup.json");
    let o = ctl(
        &c.servers(),
        Some(TOKEN),
        &["backup", "save", backup.to_str().unwrap()],
        None,
    );
    assert!(o.status.success(), "{}", text(&o.stderr));
    let b = std::fs::read_to_string(&backup).unwrap();
    assert!(b.contains("sealed:v1:"), "the backup holds the sealed key");
    assert!(
        !b.contains("PRIVATE KEY"),
        "the backup holds the CA key in clear"
    );
    drop(c);
    // Nothing meshd wrote holds the key in clear either.
    let mut dirs = vec![tmp.path().join("n1")];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                dirs.push(p);
            } else {
                let bytes = std::fs::read(&p).unwrap();
                assert!(
                    !bytes.windows(11).any(|w| w == b"PRIVATE KEY"),
                    "{} holds the CA key in clear",
                    p.display()
                );
            }
        }
    }
    // Restored under another cluster secret: it serves, cannot sign, says so.
    let other = TempDir::new().unwrap();
    let secret = other.path().join("cluster.secret");
    std::fs::write(&secret, "another-cluster-secret-of-32-byte").unwrap();
    let token = other.path().join("admin.token");
    std::fs::write(&token, TOKEN).unwrap();
    let port = free_port();
    let log = other.path().join("n1.log");
    let mut node = Procs { children: vec![] };
    node.children.push((
        1,
        Command::new(MESHD)
            .args([
                "server",
                "--id",
                "1",
                "--http",
                "off",
                "--cluster-name",
                "east",
            ])
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--initial-cluster", &format!("1=127.0.0.1:{port}")])
            .arg("--data-dir")
            .arg(other.path().join("n1"))
            .arg("--admin-token-file")
            .arg(&token)
            .arg("--cluster-secret-file")
            .arg(&secret)
            .arg("--restore")
            .arg(&backup)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    ));
    let server = format!("127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let o = ctl(
            &server,
            Some(TOKEN),
            &["get", "authority", "-o", "json"],
            None,
        );
        let said = std::fs::read_to_string(&log).unwrap_or_default();
        if o.status.success() && said.contains("cannot decrypt the workload CA key") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the restored node did not serve and say it cannot sign: {} / {said}",
            text(&o.stderr)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    drop(node);
}

#[test]
fn meshd_refuses_plaintext_off_loopback_and_a_node_without_a_credential() {
    let tmp = TempDir::new().unwrap();
    let token = tmp.path().join("admin.token");
    std::fs::write(&token, TOKEN).unwrap();
    let port = free_port();
    let run = |listen: &str, extra: &[&str]| {
        Command::new(MESHD)
            .args(["server", "--id", "1", "--http", "off", "--listen", listen])
            .arg("--data-dir")
            .arg(tmp.path().join("n1"))
            .args(["--initial-cluster", &format!("1={listen}")])
            .args(extra)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    let o = run(
        &format!("0.0.0.0:{port}"),
        &["--admin-token-file", token.to_str().unwrap()],
    );
    assert!(!o.status.success());
    let e = text(&o.stderr);
    assert!(
        e.contains("refusing to listen on 0.0.0.0") && e.contains("--insecure-plaintext"),
        "{e}"
    );
    let o = run(&format!("127.0.0.1:{port}"), &[]);
    assert!(!o.status.success());
    let e = text(&o.stderr);
    assert!(e.contains("--cluster-secret-file"), "{e}");
}

#[test]
fn meshd_demo_with_two_clusters_fails_over_to_the_peer_and_back() {
    let base = demo_base_port();
    let out = Command::new(MESHD)
        .args([
            "demo",
            "--clusters",
            "2",
            "--duration",
            "36s",
            "--base-port",
            &base.to_string(),
        ])
        .output()
        .unwrap();
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", text(&out.stderr));
    let after = |marker: &str| -> Vec<&str> {
        stdout
            .lines()
            .skip_while(|l| !l.contains(marker))
            .filter(|l| l.contains("served by"))
            .collect()
    };
    let failed_over = after("east's api dies");
    assert!(
        failed_over
            .iter()
            .any(|l| l.contains("served by west 100%")),
        "traffic moved to west: {stdout}"
    );
    let back = after("east's api is back");
    assert!(
        back.last()
            .is_some_and(|l| l.contains("served by east 100%")),
        "traffic came back to east: {stdout}"
    );
    let summary = stdout
        .lines()
        .find(|l| l.starts_with("summary "))
        .expect(&stdout);
    assert!(summary_field(summary, "requests") > 500, "{summary}");
    // At most the odd `no-healthy-endpoints` (seen in 2 of about 10 runs:
    // the traffic started before east's api had registered ready; the demo
    // now waits for a first answer), never any other failure. A failure
    // keeps the logs: they are shown, then removed.
    let failed = summary_field(summary, "failed");
    if failed > 0 {
        let kept = stdout
            .lines()
            .find_map(|l| l.split("the logs are kept in ").nth(1))
            .and_then(|r| r.split(' ').next())
            .map(PathBuf::from);
        if let Some(k) = &kept {
            let log =
                std::fs::read_to_string(k.join("proxy-frontend-east-1.log")).unwrap_or_default();
            eprintln!("frontend's log:\n{log}");
            let _ = std::fs::remove_dir_all(k);
        }
        assert!(
            stdout.contains("failures by cause: {\"no-healthy-endpoints\": "),
            "{stdout}"
        );
    }
    assert!(failed <= 2, "{stdout}");
    // Nothing left: the nodes and proxies it named, and its directory.
    let first = stdout.lines().next().unwrap_or_default();
    let dir = PathBuf::from(first.rsplit(" in ").next().unwrap_or_default());
    let pids: Vec<u32> = stdout
        .lines()
        .filter(|l| l.contains("(pids ["))
        .flat_map(|l| {
            l.split('[')
                .nth(1)
                .and_then(|s| s.split(']').next())
                .unwrap_or_default()
                .split(',')
                .filter_map(|p| p.trim().parse().ok())
                .collect::<Vec<u32>>()
        })
        .collect();
    assert_eq!(
        pids.len(),
        6 + 4,
        "six nodes and four proxies named: {stdout}"
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    for pid in pids {
        while std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| !c.is_empty()) {
            assert!(Instant::now() < deadline, "process {pid} outlived the demo");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    assert!(
        !dir.as_os_str().is_empty() && !dir.exists(),
        "{} was left behind",
        dir.display()
    );
}
