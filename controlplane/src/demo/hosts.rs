//! `meshd demo --transparent` (root only): every workload on a host of its
//! own — a network namespace on a bridge, with its own address, a default
//! route and a resolver — under transparent capture, so the callers are
//! plain `curl http://web/` loops. The meshd nodes listen on the bridge's
//! address with TLS. Everything is removed when [`Hosts`] is dropped;
//! hosts left by a demo that was killed are removed by the next one.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context as _};

/// The proxy ports inside each host (the capture defaults).
pub const ADMIN_PORT: u16 = 15000;
/// Outbound port.
pub const OUTBOUND_PORT: u16 = 15001;
/// Inbound port.
pub const INBOUND_PORT: u16 = 15006;
/// Capture port.
pub const CAPTURE_PORT: u16 = 15002;
/// Mesh DNS port.
pub const DNS_PORT: u16 = 15053;
/// The app's port inside its host.
pub const APP_PORT: u16 = 8080;

/// The demo's hosts.
pub struct Hosts {
    tag: String,
    subnet: u8,
    names: Vec<String>,
}

fn run(args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .with_context(|| format!("cannot run {}", args[0]))?;
    if !out.status.success() {
        bail!(
            "{} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
}

/// Whether this machine can run the transparent demo, and if not, what to do.
pub fn check() -> anyhow::Result<()> {
    if !nix::unistd::Uid::effective().is_root() {
        bail!("--transparent needs root (network namespaces and iptables): run it with sudo, or drop --transparent");
    }
    for (tool, pkg) in [
        ("ip", "iproute2"),
        ("iptables", "iptables"),
        ("curl", "curl"),
        ("setpriv", "util-linux"),
    ] {
        if !on_path(tool) {
            bail!("--transparent needs `{tool}`: install {pkg} (e.g. apt-get install {pkg})");
        }
    }
    Ok(())
}

/// Hosts (namespaces `rmdemo-<tag>-<i>`, bridge `rmdemo<tag>`) whose demo
/// process is gone.
fn sweep_stale() {
    let alive = |tag: &str| {
        tag.split('-')
            .next()
            .and_then(|p| p.parse::<u32>().ok())
            .is_none_or(|pid| Path::new(&format!("/proc/{pid}")).exists())
    };
    if let Ok(list) = run(&["ip", "netns", "list"]) {
        for ns in list.lines().filter_map(|l| l.split_whitespace().next()) {
            if let Some(rest) = ns.strip_prefix("rmdemo-") {
                if !alive(rest) {
                    let _ = run(&["ip", "netns", "del", ns]);
                    let _ = std::fs::remove_dir_all(PathBuf::from("/etc/netns").join(ns));
                }
            }
        }
    }
    if let Ok(list) = run(&["ip", "-o", "link", "show", "type", "bridge"]) {
        for l in list.lines() {
            let name = l.split(':').nth(1).unwrap_or("").trim();
            if let Some(pid) = name.strip_prefix("rmdemo") {
                if !alive(pid) {
                    let _ = run(&["ip", "link", "del", name]);
                }
            }
        }
    }
}

impl Hosts {
    /// One host per name (e.g. an instance), on a new bridge.
    pub fn create(names: &[String]) -> anyhow::Result<Self> {
        check()?;
        sweep_stale();
        let pid = std::process::id();
        // A /24 of 10.250/16 no route of this machine uses yet.
        let taken = run(&["ip", "-4", "route", "show"]).unwrap_or_default();
        let subnet = (0..250u32)
            .map(|k| 1 + ((pid + k) % 250) as u8)
            .find(|x| !taken.contains(&format!("10.250.{x}.")))
            .context("every 10.250.x.0/24 is in use on this machine")?;
        let hosts = Self {
            tag: pid.to_string(),
            subnet,
            names: names.to_vec(),
        };
        let bridge = hosts.bridge();
        run(&["ip", "link", "add", &bridge, "type", "bridge"])?;
        run(&[
            "ip",
            "addr",
            "add",
            &format!("{}/24", hosts.gateway()),
            "dev",
            &bridge,
        ])?;
        run(&["ip", "link", "set", &bridge, "up"])?;
        for i in 0..names.len() {
            let ns = hosts.netns_at(i);
            let (v, p) = (format!("rmd{pid}v{i}"), format!("rmd{pid}p{i}"));
            let (v, p) = (short(&v), short(&p));
            run(&["ip", "netns", "add", &ns])?;
            run(&["ip", "link", "add", &v, "type", "veth", "peer", "name", &p])?;
            run(&["ip", "link", "set", &p, "netns", &ns])?;
            run(&["ip", "link", "set", &v, "master", &bridge])?;
            run(&["ip", "link", "set", &v, "up"])?;
            let inns = |a: &[&str]| {
                let mut all = vec!["ip", "netns", "exec", ns.as_str()];
                all.extend_from_slice(a);
                run(&all)
            };
            inns(&[
                "ip",
                "addr",
                "add",
                &format!("{}/24", hosts.ip_at(i)),
                "dev",
                &p,
            ])?;
            inns(&["ip", "link", "set", &p, "up"])?;
            inns(&["ip", "link", "set", "lo", "up"])?;
            inns(&["ip", "route", "add", "default", "via", &hosts.gateway()])?;
            // The host's resolver: any address does, capture sends DNS
            // to the proxy (`ip netns exec` mounts this over /etc).
            let etc = PathBuf::from("/etc/netns").join(&ns);
            std::fs::create_dir_all(&etc)?;
            std::fs::write(
                etc.join("resolv.conf"),
                format!("nameserver {}\n", hosts.gateway()),
            )?;
        }
        Ok(hosts)
    }

    fn bridge(&self) -> String {
        short(&format!("rmdemo{}", self.tag))
    }

    fn index(&self, name: &str) -> anyhow::Result<usize> {
        self.names
            .iter()
            .position(|n| n == name)
            .with_context(|| format!("the demo has no host {name}"))
    }

    fn netns_at(&self, i: usize) -> String {
        format!("rmdemo-{}-{}", self.tag, self.names[i])
    }

    fn ip_at(&self, i: usize) -> String {
        format!("10.250.{}.{}", self.subnet, 10 + i)
    }

    /// The bridge's address (the meshd nodes listen there).
    pub fn gateway(&self) -> String {
        format!("10.250.{}.1", self.subnet)
    }

    /// The network namespace of host `name`.
    pub fn netns(&self, name: &str) -> anyhow::Result<String> {
        Ok(self.netns_at(self.index(name)?))
    }

    /// The address of host `name`.
    pub fn ip(&self, name: &str) -> anyhow::Result<String> {
        Ok(self.ip_at(self.index(name)?))
    }

    /// A listener on 127.0.0.1:[`APP_PORT`] inside host `name` (the
    /// socket stays in that network namespace wherever it is used).
    pub fn bind_app(&self, name: &str) -> anyhow::Result<std::net::TcpListener> {
        let path = format!("/var/run/netns/{}", self.netns(name)?);
        std::thread::spawn(move || -> anyhow::Result<std::net::TcpListener> {
            let f = std::fs::File::open(&path).with_context(|| format!("cannot open {path}"))?;
            nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET)
                .with_context(|| format!("cannot enter {path}"))?;
            let l = std::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], APP_PORT)))?;
            l.set_nonblocking(true)?;
            Ok(l)
        })
        .join()
        .map_err(|_| anyhow::anyhow!("binding the app panicked"))?
    }

    /// `mesh-proxy capture install` in host `name`: the proxies run as
    /// root there, the callers as `nobody`.
    pub fn capture(&self, proxy_exe: &Path, name: &str) -> anyhow::Result<()> {
        let ns = self.netns(name)?;
        let exe = proxy_exe.display().to_string();
        run(&[
            "ip",
            "netns",
            "exec",
            &ns,
            &exe,
            "capture",
            "install",
            "--proxy-uid",
            "0",
            "--dns-port",
            &DNS_PORT.to_string(),
            // The demo checks each proxy's /ready from outside the host.
            "--exclude-inbound-ports",
            &format!("22,{ADMIN_PORT}"),
        ])?;
        Ok(())
    }
}

/// Interface names are at most 15 bytes.
fn short(s: &str) -> String {
    s.chars().take(15).collect()
}

impl Drop for Hosts {
    fn drop(&mut self) {
        for i in 0..self.names.len() {
            let ns = self.netns_at(i);
            let _ = run(&["ip", "link", "del", &short(&format!("rmd{}v{i}", self.tag))]);
            let _ = run(&["ip", "netns", "del", &ns]);
            let _ = std::fs::remove_dir_all(PathBuf::from("/etc/netns").join(&ns));
        }
        let _ = run(&["ip", "link", "del", &self.bridge()]);
    }
}
