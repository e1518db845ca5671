//! A real multi-host mesh, as root: five hosts (network namespaces on a
//! bridge, each with its own address), meshd on three of them, and on the
//! other two a workload with its proxy under transparent capture. The
//! workloads are plain programs — `curl`, bash's `/dev/tcp` — with no proxy
//! address in them: mesh DNS names the service, capture carries the
//! connection, and the proxies speak mTLS between the hosts.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use raftmesh_api::v1 as pb;
use raftmesh_chaos_tests::client::admin;
use raftmesh_chaos_tests::cluster::{Cluster, ClusterOpts};
use raftmesh_chaos_tests::procs::Proc;

/// The user the proxies run as (capture leaves its connections alone).
const PROXY_UID: u32 = 4242;

/// Host numbers: meshd on 1–3, the caller on 4, `web` on 5.
const CALLER: u64 = 4;
const WEB: u64 = 5;

fn missing_tools() -> Option<String> {
    if !nix::unistd::Uid::effective().is_root() {
        return Some("it needs root (network namespaces, iptables)".into());
    }
    for tool in ["ip", "iptables", "iptables-save", "curl", "setpriv", "bash"] {
        let found = std::env::var_os("PATH")
            .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()));
        if !found {
            return Some(format!("`{tool}` is not installed"));
        }
    }
    None
}

/// Runs `args` in host `ns`; (success, stdout, stderr).
fn sh(ns: &str, args: &[&str]) -> (bool, String, String) {
    let out = Command::new("ip")
        .args(["netns", "exec", ns])
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn must(ns: &str, args: &[&str]) -> String {
    let (ok, out, err) = sh(ns, args);
    assert!(ok, "{args:?} in {ns}: {err}");
    out
}

/// `iptables-save` without its dated comment lines.
fn tables(ns: &str) -> String {
    must(ns, &["iptables-save"])
        .lines()
        .filter(|l| !l.starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n")
}

/// A file in `/etc/netns/NS/`, which `ip netns exec` mounts over `/etc/`
/// (the host's resolver configuration); removed on drop.
struct NetnsEtc(PathBuf);

impl NetnsEtc {
    fn resolv_conf(ns: &str, nameserver: &str) -> Self {
        let dir = PathBuf::from("/etc/netns").join(ns);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("resolv.conf"),
            format!("nameserver {nameserver}\n"),
        )
        .unwrap();
        Self(dir)
    }
}

impl Drop for NetnsEtc {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The web app in host `ns` on 127.0.0.1:8080: HTTP answered with the
/// caller its proxy named (`x-forwarded-client-cert`), any other first
/// line echoed back.
fn web_app(ns: &str) {
    use std::io::{BufRead, BufReader, Write};
    let path = format!("/var/run/netns/{ns}");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let f = std::fs::File::open(path).unwrap();
        nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        let l = std::net::TcpListener::bind("127.0.0.1:8080").unwrap();
        tx.send(()).unwrap();
        for s in l.incoming().flatten() {
            std::thread::spawn(move || {
                let mut w = s.try_clone().unwrap();
                let mut r = BufReader::new(s);
                let mut first = String::new();
                if r.read_line(&mut first).is_err() {
                    return;
                }
                if !first.ends_with("HTTP/1.1\r\n") {
                    let _ = w.write_all(format!("echo: {first}").as_bytes());
                    return;
                }
                let mut caller = "anonymous".to_string();
                loop {
                    let mut line = String::new();
                    if r.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    if let Some((k, v)) = line.split_once(':') {
                        if k.eq_ignore_ascii_case("x-forwarded-client-cert") {
                            caller = v.trim().to_string();
                        }
                    }
                }
                let _ = w.write_all(
                    format!(
                        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{caller}",
                        caller.len()
                    )
                    .as_bytes(),
                );
            });
        }
    });
    rx.recv_timeout(Duration::from_secs(5)).unwrap();
}

/// A TCP server in host `ns` that says `line` to every connection.
fn other_server(ns: &str, addr: &'static str, line: &'static str) {
    use std::io::Write;
    let path = format!("/var/run/netns/{ns}");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let f = std::fs::File::open(path).unwrap();
        nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        let l = std::net::TcpListener::bind(addr).unwrap();
        tx.send(()).unwrap();
        for mut s in l.incoming().flatten() {
            let _ = s.write_all(line.as_bytes());
        }
    });
    rx.recv_timeout(Duration::from_secs(5)).unwrap();
}

/// A directory the proxies' user owns.
fn owned_dir(root: &Path, name: &str) -> PathBuf {
    let d = root.join(name);
    std::fs::create_dir_all(&d).unwrap();
    nix::unistd::chown(
        &d,
        Some(nix::unistd::Uid::from_raw(PROXY_UID)),
        Some(nix::unistd::Gid::from_raw(PROXY_UID)),
    )
    .unwrap();
    d
}

/// The mesh-proxy program (found, or built, once).
fn mesh_proxy_bin() -> PathBuf {
    static BIN: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BIN.get_or_init(|| raftmesh_client::bins::find("mesh-proxy", true).unwrap())
        .clone()
}

/// mesh-proxy in host `ns` as the proxies' user.
fn proxy(ns: &str, root: &Path, name: &str, args: &[String]) -> Proc {
    let bin = mesh_proxy_bin();
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns, "setpriv"])
        .arg(format!("--reuid={PROXY_UID}"))
        .arg(format!("--regid={PROXY_UID}"))
        .arg("--clear-groups")
        .arg(bin)
        .args(args)
        .args(["--parent-pid", &std::process::id().to_string()])
        .env("RAFTMESH_LOG", "info");
    Proc::spawn(name, cmd, &root.join(format!("{name}.log"))).unwrap()
}

fn capture(ns: &str, args: &[&str]) {
    let bin = mesh_proxy_bin();
    let mut all = vec![bin.to_str().unwrap(), "capture"];
    all.extend_from_slice(args);
    must(ns, &all);
}

/// `curl http://web/` in host `ns`: (HTTP status, body), or curl's error.
fn curl(ns: &str, url: &str) -> Result<(u16, String), String> {
    let (ok, out, err) = sh(
        ns,
        &[
            "curl",
            "-sS",
            "--max-time",
            "10",
            "-w",
            "\n%{http_code}",
            url,
        ],
    );
    if !ok {
        return Err(err.trim().to_string());
    }
    let (body, code) = out.rsplit_once('\n').unwrap();
    Ok((code.parse().unwrap(), body.to_string()))
}

/// A line sent over plain TCP to `web:80` from host `ns`, and the answer.
fn tcp_echo(ns: &str) -> String {
    sh(
        ns,
        &[
            "bash",
            "-c",
            "exec 3<>/dev/tcp/web/80 && echo hello >&3 && timeout 10 head -n1 <&3",
        ],
    )
    .1
}

fn wait_until<T>(what: &str, secs: u64, mut f: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        match f() {
            Ok(v) => return v,
            Err(e) if Instant::now() > deadline => panic!("{what}: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

/// Packets from `src` to host `ns` by whether they went to `port`:
/// (to it, to anything else), counted in `mangle` (before capture's
/// redirect).
fn packets_from(ns: &str, src: &str, port: u16) -> (u64, u64) {
    let out = must(
        ns,
        &[
            "iptables",
            "-t",
            "mangle",
            "-L",
            "PREROUTING",
            "-v",
            "-n",
            "-x",
        ],
    );
    let mut counts = out.lines().skip(2).filter(|l| l.contains(src)).map(|l| {
        let pkts: u64 = l.split_whitespace().next().unwrap().parse().unwrap();
        (
            l.contains(&format!("!{port}")) || l.contains(&format!("! {port}")),
            pkts,
        )
    });
    let (mut to, mut other) = (0, 0);
    for (negated, n) in counts.by_ref() {
        if negated {
            other += n
        } else {
            to += n
        }
    }
    (to, other)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unmodified_client_on_one_host_reaches_a_service_on_another_through_capture_and_mesh_dns(
) {
    if let Some(why) = missing_tools() {
        eprintln!("skipped: the multi-host mesh test: {why}");
        return;
    }
    let t0 = Instant::now();
    let cluster = Cluster::start(
        3,
        ClusterOpts {
            workload_hosts: 2,
            ..Default::default()
        },
    )
    .unwrap();
    cluster.wait_leader(Duration::from_secs(20)).await.unwrap();
    let (caller_ns, web_ns) = (
        cluster.net.netns(CALLER).unwrap(),
        cluster.net.netns(WEB).unwrap(),
    );
    let caller_ip = cluster.net.ip(CALLER);
    // Real hosts have a default route (virtual addresses must route
    // somewhere for a connection to start, and so be captured).
    let gateway = cluster.net.gateway().unwrap();
    for ns in [&caller_ns, &web_ns] {
        must(ns, &["ip", "route", "add", "default", "via", &gateway]);
    }
    let mut adm = admin(&cluster.addrs()[0], &cluster.token).unwrap();
    let tokens = vec![
        super::mint(&mut adm, "web").await,
        super::mint(&mut adm, "client").await,
    ];
    let apply = |yaml: &str| pb::ApplyRequest {
        items: vec![pb::ApplyItem {
            resource: Some(
                serde_yaml_ng::from_str::<raftmesh_api::Resource>(yaml)
                    .unwrap()
                    .into(),
            ),
            expected_revision: None,
        }],
    };
    adm.apply(apply(
        "kind: Service\nmetadata: {name: web}\nspec: {ports: [{port: 80, protocol: http}]}",
    ))
    .await
    .unwrap();

    // The proxies' files, readable by their user.
    let root = tempfile::Builder::new()
        .prefix("raftmesh-hosts-")
        .tempdir()
        .unwrap();
    std::fs::set_permissions(
        root.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let files = owned_dir(root.path(), "files");
    for (svc, t) in ["web", "client"].iter().zip(&tokens) {
        std::fs::write(files.join(format!("{svc}.token")), t).unwrap();
    }
    let cp = cluster.addrs().join(",");
    let common = |svc: &str| -> Vec<String> {
        vec![
            "--control-plane".into(),
            cp.clone(),
            "--service".into(),
            svc.into(),
            "--instance".into(),
            format!("{svc}-1"),
            "--token-file".into(),
            files.join(format!("{svc}.token")).display().to_string(),
            "--state-dir".into(),
            owned_dir(&files, &format!("{svc}-state"))
                .display()
                .to_string(),
        ]
    };

    // Host WEB: a rule of its own in `nat` before capture; packets counted
    // by destination port before capture redirects them.
    must(
        &web_ns,
        &[
            "iptables",
            "-t",
            "nat",
            "-A",
            "POSTROUTING",
            "-d",
            "192.0.2.0/24",
            "-j",
            "RETURN",
        ],
    );
    for neg in [&[][..], &["!"][..]] {
        let mut a = vec![
            "iptables",
            "-t",
            "mangle",
            "-A",
            "PREROUTING",
            "-s",
            &caller_ip,
            "-p",
            "tcp",
        ];
        a.extend_from_slice(neg);
        a.extend_from_slice(&["--dport", "15006"]);
        must(&web_ns, &a);
    }
    let (web_before, caller_before) = (tables(&web_ns), tables(&caller_ns));
    web_app(&web_ns);
    other_server(&web_ns, "0.0.0.0:9100", "metrics\n");
    let uid = PROXY_UID.to_string();
    capture(&web_ns, &["install", "--proxy-uid", &uid]);
    let mut web_args = common("web");
    web_args.extend([
        "--app-port".into(),
        "8080".into(),
        "--inbound".into(),
        "0.0.0.0:15006".into(),
    ]);
    let _web = proxy(&web_ns, root.path(), "web-proxy", &web_args);

    // Host CALLER: capture with DNS; its resolver is one the proxy answers
    // for (any address: capture sends port 53 to the proxy).
    let _resolv = NetnsEtc::resolv_conf(&caller_ns, &gateway);
    capture(
        &caller_ns,
        &["install", "--proxy-uid", &uid, "--dns-port", "15053"],
    );
    let mut caller_args = common("client");
    caller_args.extend([
        "--capture".into(),
        "127.0.0.1:15002".into(),
        "--dns".into(),
        "127.0.0.1:15053".into(),
    ]);
    let mut caller = proxy(&caller_ns, root.path(), "client-proxy", &caller_args);

    eprintln!(
        "hosts: {:>5.1}s capture installed on both hosts",
        t0.elapsed().as_secs_f64()
    );
    // An unmodified `curl http://web/` reaches web on the other host, whose
    // proxy names the caller by its certificate.
    let (status, body) = wait_until("curl http://web/ on the caller's host", 30, || {
        match curl(&caller_ns, "http://web/") {
            Ok((200, b)) => Ok((200, b)),
            other => Err(format!("{other:?}\n{}", caller.log_tail(10))),
        }
    });
    assert_eq!(status, 200);
    assert!(
        body.starts_with("URI=spiffe://") && body.ends_with("/ns/default/sa/client"),
        "the web app was not told the caller's identity: {body:?}"
    );
    let vip = must(&caller_ns, &["getent", "hosts", "web"]);
    let vip = vip.split_whitespace().next().unwrap().to_string();
    assert!(vip.starts_with("240.240."), "web resolved to {vip}");
    // HTTP to web's virtual address with no mesh name in it is still HTTP
    // to web (the app is told its caller; policies see the path).
    let by_vip = curl(&caller_ns, &format!("http://{vip}/"));
    assert!(
        matches!(&by_vip, Ok((200, b)) if b == &body),
        "HTTP to web's virtual address: {by_vip:?}"
    );
    // Plain TCP to the same name reaches the same app.
    assert_eq!(tcp_echo(&caller_ns), "echo: hello\n");
    // Everything between the hosts went to the proxy's mTLS port.
    let (to_proxy, other) = packets_from(&web_ns, &caller_ip, 15006);
    assert!(
        to_proxy > 0,
        "no packet reached the web proxy's inbound port"
    );
    assert_eq!(
        other, 0,
        "packets from the caller reached web's host outside the proxy's mTLS port"
    );

    eprintln!(
        "hosts: {:>5.1}s curl and TCP reached web over mTLS",
        t0.elapsed().as_secs_f64()
    );
    // A deny Policy refuses the same unmodified clients.
    let client_id = body.strip_prefix("URI=").unwrap();
    adm.apply(apply(&format!(
        "kind: Policy\nmetadata: {{name: no-client}}\nspec: {{service: web, action: deny, from: ['{client_id}']}}"
    )))
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    wait_until("the deny policy", 10, || {
        match curl(&caller_ns, "http://web/") {
            Ok((403, _)) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });
    assert_eq!(tcp_echo(&caller_ns), "", "TCP passed a deny policy");
    adm.delete(pb::DeleteRequest {
        kind: "Policy".into(),
        namespace: "default".into(),
        name: "no-client".into(),
        expected_revision: None,
    })
    .await
    .unwrap();
    wait_until("the policy's removal", 10, || {
        match curl(&caller_ns, "http://web/") {
            Ok((200, _)) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });

    eprintln!(
        "hosts: {:>5.1}s the deny policy refused and its removal restored",
        t0.elapsed().as_secs_f64()
    );
    // Another port of web's host (say, a metrics endpoint) is captured
    // too: plaintext to it is refused while mTLS is strict, and reaches
    // it when the mesh is permissive.
    let metrics = format!(
        "echo | timeout 5 bash -c 'exec 3<>/dev/tcp/{}/9100 && head -n1 <&3'",
        cluster.net.ip(WEB)
    );
    assert_eq!(
        sh(&caller_ns, &["bash", "-c", &metrics]).1,
        "",
        "plaintext passed strict mTLS"
    );
    adm.apply(apply(
        "kind: MeshConfig\nmetadata: {name: mesh}\nspec: {mtls: permissive}",
    ))
    .await
    .unwrap();
    wait_until(
        "plaintext to another port under permissive mTLS",
        10,
        || match sh(&caller_ns, &["bash", "-c", &metrics]).1.as_str() {
            "metrics\n" => Ok(()),
            other => Err(other.to_string()),
        },
    );

    eprintln!(
        "hosts: {:>5.1}s the other port: refused under strict, passed under permissive",
        t0.elapsed().as_secs_f64()
    );
    // The caller's proxy dies: with capture still installed, the app's
    // connections fail at once (refused), never hang.
    caller.kill();
    let t = Instant::now();
    let by_name = curl(&caller_ns, "http://web/");
    let by_addr = curl(&caller_ns, &format!("http://{vip}/"));
    let gap = t.elapsed();
    assert!(
        by_name.is_err() && by_addr.is_err(),
        "{by_name:?} {by_addr:?}"
    );
    assert!(
        gap < Duration::from_secs(5),
        "connections during the proxy's absence took {gap:?} to fail: {by_name:?} {by_addr:?}"
    );
    // Restarted, it serves every request once ready.
    let _caller = proxy(&caller_ns, root.path(), "client-proxy-2", &caller_args);
    wait_until("the restarted proxy's /ready", 30, || {
        match curl(&caller_ns, "http://127.0.0.1:15000/ready") {
            Ok((200, _)) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });
    for i in 0..20 {
        let r = curl(&caller_ns, "http://web/");
        assert!(
            matches!(r, Ok((200, _))),
            "request {i} after the restart: {r:?}"
        );
    }

    eprintln!(
        "hosts: {:>5.1}s the restarted proxy served every request",
        t0.elapsed().as_secs_f64()
    );
    // Removing capture leaves each host's tables as they were: the caller's
    // host had no nat table, web's had a rule of its own.
    capture(&caller_ns, &["remove"]);
    capture(&web_ns, &["remove"]);
    assert_eq!(tables(&caller_ns), caller_before);
    assert_eq!(tables(&web_ns), web_before);
}
