//! Transparent capture on a real kernel: the rules in fresh network
//! namespaces (as root; skipped with a line otherwise).

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::time::Duration;

use raftmesh_dataplane_proxy::capture::{self, Backend, CaptureSpec, Iptables};

/// A network namespace of its own, deleted on drop.
struct Netns(String);

impl Netns {
    fn new(tag: &str) -> Option<Self> {
        if !nix::unistd::Uid::effective().is_root() {
            eprintln!("skipped: capture needs root (iptables, network namespaces)");
            return None;
        }
        if Command::new("iptables").arg("--version").output().is_err() {
            eprintln!("skipped: iptables is not installed");
            return None;
        }
        let name = format!("rmcap-{}-{tag}", std::process::id());
        let ok = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .unwrap()
            .success();
        assert!(ok, "cannot make network namespace {name}");
        Some(Self(name))
    }

    fn sh(&self, args: &[&str]) -> String {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.0])
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `iptables-save` and `ip6tables-save` without their dated comment
    /// lines.
    fn tables(&self) -> String {
        let mut out = self.sh(&["iptables-save"]);
        if std::path::Path::new("/proc/sys/net/ipv6").exists() {
            out += &self.sh(&["ip6tables-save"]);
        }
        out.lines()
            .filter(|l| !l.starts_with('#'))
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn iptables(&self) -> Iptables {
        Iptables {
            prefix: vec!["ip".into(), "netns".into(), "exec".into(), self.0.clone()],
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn spec() -> CaptureSpec {
    CaptureSpec {
        proxy_uid: 4242,
        inbound_port: 15006,
        outbound_port: 15002,
        dns_port: Some(15053),
        exclude_inbound_ports: vec![22],
        exclude_outbound_ports: vec![],
        exclude_cidrs: vec!["169.254.169.254/32".into()],
        backend: Backend::Auto,
    }
}

#[test]
fn capture_install_is_idempotent_and_remove_leaves_the_tables_as_they_were() {
    // A fresh namespace (no nat table at all), then one with rules of its own.
    for (tag, existing) in [
        ("fresh", None),
        (
            "busy",
            Some("iptables -t nat -A POSTROUTING -s 10.1.0.0/16 -j MASQUERADE"),
        ),
    ] {
        let Some(ns) = Netns::new(tag) else { return };
        if let Some(rule) = existing {
            ns.sh(&rule.split_whitespace().collect::<Vec<_>>());
        }
        let before = ns.tables();
        let ipt = ns.iptables();
        capture::install(&ipt, &spec()).unwrap();
        capture::install(&ipt, &spec()).unwrap();
        let nat6 = ns.sh(&["ip6tables", "-t", "nat", "-S"]);
        assert!(
            nat6.contains("-A OUTPUT -p tcp -j RAFTMESH_OUTPUT")
                && nat6.contains("-A RAFTMESH_OUTPUT -d ::1/128 -j RETURN")
                && !nat6.contains("RAFTMESH_INBOUND"),
            "IPv6: outbound only:\n{nat6}"
        );
        let nat = ns.sh(&["iptables", "-t", "nat", "-S"]);
        assert_eq!(
            nat.matches("-A OUTPUT -p tcp -j RAFTMESH_OUTPUT").count(),
            1,
            "installing twice doubled a jump:\n{nat}"
        );
        assert!(
            nat.contains("-A PREROUTING -p tcp -j RAFTMESH_INBOUND"),
            "{nat}"
        );
        assert!(
            nat.contains("-A RAFTMESH_OUTPUT -m owner --uid-owner 4242 -j RETURN"),
            "{nat}"
        );
        if let Some(rule) = existing {
            assert!(nat.contains(&rule["iptables -t nat ".len()..]), "{nat}");
        }
        capture::remove(&ipt).unwrap();
        capture::remove(&ipt).unwrap();
        assert_eq!(
            ns.tables(),
            before,
            "{tag}: remove did not restore the tables"
        );
    }
}

#[test]
fn a_captured_connection_reaches_the_proxy_port_with_its_original_destination() {
    captured_connection(Backend::Iptables);
}

#[test]
fn nftables_capture_redirects_the_same_and_remove_leaves_the_ruleset_as_it_was() {
    if Command::new("nft").arg("--version").output().is_err() {
        eprintln!("skipped: nft is not installed");
        return;
    }
    let Some(ns) = Netns::new("nft") else { return };
    let before = ns.sh(&["nft", "list", "ruleset"]);
    let mut s = spec();
    s.backend = Backend::Nftables;
    capture::install(&ns.iptables(), &s).unwrap();
    capture::install(&ns.iptables(), &s).unwrap();
    let table = ns.sh(&["nft", "list", "table", "ip", "raftmesh"]);
    assert_eq!(table.matches("redirect to :15002").count(), 1, "{table}");
    assert!(table.contains("meta skuid 4242 return"), "{table}");
    capture::remove(&ns.iptables()).unwrap();
    capture::remove(&ns.iptables()).unwrap();
    assert_eq!(ns.sh(&["nft", "list", "ruleset"]), before);
    drop(ns);
    captured_connection(Backend::Nftables);
}

fn captured_connection(backend: Backend) {
    let Some(ns) = Netns::new(if backend == Backend::Nftables {
        "dstnft"
    } else {
        "dst"
    }) else {
        return;
    };
    let mut spec = spec();
    spec.backend = backend;
    ns.sh(&["ip", "link", "set", "lo", "up"]);
    // A link with a default route, so an outside address is routable.
    ns.sh(&[
        "ip", "link", "add", "v0", "type", "veth", "peer", "name", "v1",
    ]);
    ns.sh(&["ip", "addr", "add", "10.77.0.1/24", "dev", "v0"]);
    ns.sh(&["ip", "link", "set", "v0", "up"]);
    ns.sh(&["ip", "link", "set", "v1", "up"]);
    ns.sh(&["ip", "route", "add", "default", "dev", "v0"]);
    // IPv6 too, where this kernel has it.
    let v6 = std::path::Path::new("/proc/sys/net/ipv6").exists();
    if v6 {
        ns.sh(&[
            "ip",
            "-6",
            "addr",
            "add",
            "2001:db8::1/64",
            "dev",
            "v0",
            "nodad",
        ]);
        ns.sh(&["ip", "-6", "route", "add", "default", "dev", "v0"]);
    } else {
        eprintln!("skipped the IPv6 half: this kernel has no IPv6");
    }
    capture::install(&ns.iptables(), &spec).unwrap();
    let path = format!("/var/run/netns/{}", ns.0);
    // Sockets belong to the namespace of the thread that makes them.
    let got = std::thread::spawn(move || {
        let f = std::fs::File::open(path).unwrap();
        nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        let dst6 = v6.then(|| {
            let proxy6 = TcpListener::bind("[::1]:15002").unwrap();
            let _app = TcpStream::connect_timeout(
                &"[2001:db8:1::7]:8080".parse().unwrap(),
                Duration::from_secs(5),
            )
            .expect("a captured IPv6 connection was not accepted by the proxy's port");
            let (conn, _) = proxy6.accept().unwrap();
            capture::original_dst(&conn).unwrap()
        });
        let proxy = TcpListener::bind("0.0.0.0:15002").unwrap();
        // An unmodified client calling an address outside the host.
        let _app = TcpStream::connect_timeout(
            &"198.51.100.7:8080".parse().unwrap(),
            Duration::from_secs(5),
        )
        .expect("a captured connection was not accepted by the proxy's port");
        let (conn, _) = proxy.accept().unwrap();
        let dst = capture::original_dst(&conn).unwrap();
        // Loopback is left alone: nothing listens on 127.0.0.1:9.
        let lo =
            TcpStream::connect_timeout(&"127.0.0.1:9".parse().unwrap(), Duration::from_secs(2));
        (dst, lo.is_err(), dst6)
    })
    .join()
    .unwrap();
    assert_eq!(got.0, "198.51.100.7:8080".parse::<SocketAddr>().unwrap());
    assert!(got.1, "a loopback connection was captured");
    if v6 {
        assert_eq!(
            got.2,
            Some("[2001:db8:1::7]:8080".parse::<SocketAddr>().unwrap())
        );
    }
    // Removal takes the IPv6 rules too.
    capture::remove(&ns.iptables()).unwrap();
    if v6 && backend == Backend::Iptables {
        let nat6 = ns.sh(&["ip6tables-save", "-t", "nat"]);
        assert!(!nat6.contains("RAFTMESH"), "{nat6}");
    }
}

/// Runs `f` on a thread inside the namespace (its sockets are the
/// namespace's).
fn in_netns<T: Send + 'static>(
    ns: &Netns,
    f: impl FnOnce() -> T + Send + 'static,
) -> std::thread::JoinHandle<T> {
    let path = format!("/var/run/netns/{}", ns.0);
    std::thread::spawn(move || {
        let file = std::fs::File::open(path).unwrap();
        nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        f()
    })
}

/// mesh-proxy in the namespace, as user 4242 (whose connections capture
/// leaves alone), serving `cfg` with its capture listener on 15002.
fn capture_proxy(ns: &Netns, cfg: &std::path::Path) -> std::process::Child {
    Command::new("ip")
        .args([
            "netns",
            "exec",
            &ns.0,
            "setpriv",
            "--reuid=4242",
            "--regid=4242",
            "--clear-groups",
        ])
        .arg(env!("CARGO_BIN_EXE_mesh-proxy"))
        .args([
            "--config-file",
            cfg.to_str().unwrap(),
            "--service",
            "client",
        ])
        .args([
            "--outbound",
            "127.0.0.1:15001",
            "--admin",
            "127.0.0.1:15000",
        ])
        .args(["--capture", "127.0.0.1:15002"])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap()
}

/// Waits (on a thread in the namespace) until the proxy's admin port answers.
fn wait_for_proxy() {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while TcpStream::connect("127.0.0.1:15000").is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "the proxy did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn an_unmodified_client_s_http_reaches_the_mesh_and_other_tcp_passes_through() {
    use std::io::{Read, Write};
    let Some(ns) = Netns::new("e2e") else { return };
    if Command::new("setpriv").arg("--version").output().is_err() {
        eprintln!("skipped: setpriv (util-linux) is not installed");
        return;
    }
    ns.sh(&["ip", "link", "set", "lo", "up"]);
    ns.sh(&[
        "ip", "link", "add", "v0", "type", "veth", "peer", "name", "v1",
    ]);
    ns.sh(&["ip", "addr", "add", "10.77.0.1/24", "dev", "v0"]);
    ns.sh(&["ip", "addr", "add", "10.77.0.2/24", "dev", "v1"]);
    ns.sh(&["ip", "link", "set", "v0", "up"]);
    ns.sh(&["ip", "link", "set", "v1", "up"]);
    ns.sh(&["ip", "route", "add", "default", "dev", "v0"]);
    // The web app (a mesh endpoint, on loopback) and a server outside the mesh.
    let servers = in_netns(&ns, || {
        let app = TcpListener::bind("127.0.0.1:18080").unwrap();
        let outside = TcpListener::bind("10.77.0.2:9000").unwrap();
        let db = TcpListener::bind("127.0.0.1:15432").unwrap();
        std::thread::spawn(move || {
            for s in db.incoming().flatten() {
                let mut s = s;
                let _ = s.write_all(b"db\n");
            }
        });
        std::thread::spawn(move || {
            for s in app.incoming().flatten() {
                let mut s = s;
                let mut buf = [0u8; 2048];
                let _ = s.read(&mut buf);
                let _ = s.write_all(
                    b"HTTP/1.1 200 OK\r\ncontent-length: 7\r\nconnection: close\r\n\r\nweb-app",
                );
            }
        });
        std::thread::spawn(move || {
            for s in outside.incoming().flatten() {
                let mut s = s;
                let _ = s.write_all(b"outside\n");
            }
        });
    });
    servers.join().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut perms = std::fs::metadata(dir.path()).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
    std::fs::set_permissions(dir.path(), perms).unwrap();
    let cfg = dir.path().join("mesh.yaml");
    std::fs::write(
        &cfg,
        "kind: Service\nmetadata: {name: web}\nspec: {ports: [{port: 80, protocol: http}]}\n---\nkind: Endpoint\nmetadata: {name: web-1}\nspec: {service: web, address: 127.0.0.1, port: 18080}\n---\nkind: Service\nmetadata: {name: db}\nspec: {vip: 240.240.0.9, ports: [{port: 5432, protocol: tcp}]}\n---\nkind: Endpoint\nmetadata: {name: db-1}\nspec: {service: db, address: 127.0.0.1, port: 15432}\n",
    )
    .unwrap();
    let mut proxy = capture_proxy(&ns, &cfg);
    capture::install(&ns.iptables(), &spec()).unwrap();
    let got = in_netns(&ns, || {
        wait_for_proxy();
        // `curl http://web/` without a proxy setting: any address will do
        // until mesh DNS gives web one; the Host names the service.
        let mut c =
            TcpStream::connect_timeout(&"203.0.113.5:80".parse().unwrap(), Duration::from_secs(5))
                .unwrap();
        c.write_all(b"GET / HTTP/1.1\r\nHost: web\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut http = String::new();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let _ = c.read_to_string(&mut http);
        // Anything else goes where it was going.
        let mut o =
            TcpStream::connect_timeout(&"10.77.0.2:9000".parse().unwrap(), Duration::from_secs(5))
                .unwrap();
        o.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut other = String::new();
        let _ = o.read_to_string(&mut other);
        // A Host that only starts like a mesh name is an outside host's.
        let mut f =
            TcpStream::connect_timeout(&"10.77.0.2:9000".parse().unwrap(), Duration::from_secs(5))
                .unwrap();
        f.write_all(b"GET / HTTP/1.1\r\nHost: web.default.example.com\r\n\r\n")
            .unwrap();
        f.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut lookalike = String::new();
        let _ = f.read_to_string(&mut lookalike);
        assert_eq!(
            lookalike, "outside\n",
            "web.default.example.com was routed into the mesh"
        );
        // Straight to the capture port (no original destination): closed,
        // never relayed to itself.
        let mut d = TcpStream::connect("127.0.0.1:15002").unwrap();
        d.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let _ = d.write_all(b"GET / HTTP/1.1\r\nHost: web\r\n\r\n");
        let mut direct = Vec::new();
        let closed = matches!(d.read_to_end(&mut direct), Ok(0)) || direct.is_empty();
        // Any TCP to a service's virtual address reaches the service.
        let mut v = TcpStream::connect_timeout(
            &"240.240.0.9:5432".parse().unwrap(),
            Duration::from_secs(5),
        )
        .unwrap();
        v.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut by_vip = String::new();
        let _ = v.read_to_string(&mut by_vip);
        (http, other, closed, by_vip)
    })
    .join()
    .unwrap();
    let _ = proxy.kill();
    let _ = proxy.wait();
    assert!(
        got.0.starts_with("HTTP/1.1 200") && got.0.ends_with("web-app"),
        "{:?}",
        got.0
    );
    assert_eq!(got.1, "outside\n");
    assert!(
        got.2,
        "a connection straight to the capture port was served"
    );
    assert_eq!(
        got.3, "db\n",
        "TCP to db's virtual address did not reach db"
    );

    // MeshConfig outbound: deny: the mesh still answers, the outside does not.
    let with_deny = format!(
        "{}---\nkind: MeshConfig\nmetadata: {{name: mesh}}\nspec: {{outbound: deny}}\n",
        std::fs::read_to_string(&cfg).unwrap()
    );
    std::fs::write(&cfg, with_deny).unwrap();
    let mut proxy = capture_proxy(&ns, &cfg);
    let denied = in_netns(&ns, || {
        wait_for_proxy();
        let mut c = TcpStream::connect("203.0.113.5:80").unwrap();
        c.write_all(b"GET / HTTP/1.1\r\nHost: web\r\nConnection: close\r\n\r\n")
            .unwrap();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut http = String::new();
        let _ = c.read_to_string(&mut http);
        let mut o = TcpStream::connect("10.77.0.2:9000").unwrap();
        o.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut other = String::new();
        let _ = o.read_to_string(&mut other);
        (http, other)
    })
    .join()
    .unwrap();
    let _ = proxy.kill();
    let _ = proxy.wait();
    assert!(
        denied.0.ends_with("web-app"),
        "the mesh was denied too: {:?}",
        denied.0
    );
    assert_eq!(
        denied.1, "",
        "outbound: deny relayed a connection outside the mesh"
    );
}
