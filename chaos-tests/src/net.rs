//! The network between meshd nodes, and the faults the nemesis puts in it.
//!
//! As root, each node runs in its own network namespace on a bridge, and
//! partitions and packet loss are iptables rules inside the namespaces:
//! real packets are dropped. Without root, nodes share loopback and the
//! same faults go through each node's fault-injection file (meshd's
//! `--fault-file`, which drops or delays its outgoing Raft messages). Slow
//! links always use the fault file (this kernel has no netem). Everything
//! is removed when the `Net` is dropped, also when a test panics.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use serde_json::json;

/// How nodes are connected.
pub enum Mode {
    /// One namespace per node on a bridge (root only).
    Namespaces {
        /// Bridge name.
        bridge: String,
        /// Prefix of namespace and veth names.
        prefix: String,
        /// Second and third octets of 10.x.y.0/24.
        subnet: (u8, u8),
    },
    /// Loopback; faults through fault files.
    Loopback,
}

/// The network of one test cluster.
pub struct Net {
    /// How nodes are connected.
    pub mode: Mode,
    /// Nodes, 1-based (the faults are between them).
    pub n: u64,
    /// Hosts: the nodes, then hosts for workloads (`n+1..=hosts`).
    pub hosts: u64,
    dir: PathBuf,
    /// Current loss per directed pair (from, to) → probability.
    loss: std::sync::Mutex<Vec<(u64, u64, f64)>>,
    delay: std::sync::Mutex<Vec<(u64, u64, u64)>>,
    cut: std::sync::Mutex<BTreeSet<(u64, u64)>>,
}

fn run(args: &[&str]) -> Result<(), String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| format!("{}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

/// Removes namespaces and bridges left by test processes that died without
/// cleaning up (names carry the owner's pid).
/// The pid in a name's tag (`<pid base 36>x<k>`, then a suffix without
/// `x`): split at the *last* `x`, as the pid's own digits may hold one
/// (pid 31281 is `o4x`; taking the first `x` read it as pid 868, and a
/// running test's bridge was swept as stale).
fn tag_pid(rest: &str) -> Option<u32> {
    let (pid, _) = rest.rsplit_once('x')?;
    u32::from_str_radix(pid, 36).ok()
}

fn sweep_stale() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        if let Some(rest) = name.strip_prefix("rmc") {
            let pid = tag_pid(rest);
            if pid.is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists()) {
                let _ = run(&["ip", "netns", "del", name]);
            }
        }
    }
    if let Ok(out) = Command::new("ip")
        .args(["-o", "link", "show", "type", "bridge"])
        .output()
    {
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let name = line
                .split(':')
                .nth(1)
                .unwrap_or("")
                .trim()
                .split('@')
                .next()
                .unwrap_or("");
            if let Some(rest) = name.strip_prefix("rmb") {
                let pid = tag_pid(rest);
                if pid.is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists()) {
                    let _ = run(&["ip", "link", "del", name]);
                }
            }
        }
    }
}

impl Net {
    /// A network for `n` nodes: namespaces when root and `ip` works (unless
    /// `CHAOS_NET=loopback`), loopback otherwise.
    pub fn new(n: u64, dir: &Path) -> Result<Self, String> {
        Self::with_hosts(n, 0, dir)
    }

    /// [`Net::new`] with `extra` more hosts on the same bridge, for
    /// workloads (no faults between them).
    pub fn with_hosts(n: u64, extra: u64, dir: &Path) -> Result<Self, String> {
        Self::with_hosts_on(n, extra, dir, false)
    }

    /// [`Net::with_hosts`]; with `loopback`, every node on the loopback
    /// interface whatever the environment (several clusters that must
    /// reach each other, as in the federation tests).
    pub fn with_hosts_on(n: u64, extra: u64, dir: &Path, loopback: bool) -> Result<Self, String> {
        static COUNT: AtomicU32 = AtomicU32::new(0);
        let want_ns = !loopback
            && std::env::var("CHAOS_NET")
                .map(|v| v != "loopback")
                .unwrap_or(true);
        let tools = || {
            let ok = |t: &str| {
                Command::new(t)
                    .arg("-V")
                    .output()
                    .is_ok_and(|o| o.status.success())
            };
            let (ip, iptables) = (ok("ip"), ok("iptables"));
            if !(ip && iptables) {
                static SAID: std::sync::Once = std::sync::Once::new();
                SAID.call_once(|| {
                    eprintln!(
                        "chaos: running as root but `{}` is missing: nodes share loopback and \
                         partitions are injected in meshd (install iproute2 and iptables for \
                         real packet drops)",
                        if ip { "iptables" } else { "ip" }
                    )
                });
            }
            ip && iptables
        };
        let mode = if want_ns && is_root() && tools() {
            sweep_stale();
            let k = COUNT.fetch_add(1, Ordering::SeqCst);
            let pid = std::process::id();
            // Interface names are at most 15 bytes: the pid in base 36.
            let tag = format!("{}x{}", base36(pid), k % 100);
            let subnet = (((pid % 200) + 20) as u8, (k % 250) as u8);
            let m = Mode::Namespaces {
                bridge: format!("rmb{tag}"),
                prefix: format!("rmc{tag}"),
                subnet,
            };
            Self::setup(&m, n + extra)?;
            m
        } else {
            Mode::Loopback
        };
        let net = Net {
            mode,
            n,
            hosts: n + extra,
            dir: dir.to_path_buf(),
            loss: Default::default(),
            delay: Default::default(),
            cut: Default::default(),
        };
        net.write_fault_files()?;
        Ok(net)
    }

    fn setup(m: &Mode, n: u64) -> Result<(), String> {
        let Mode::Namespaces {
            bridge,
            prefix,
            subnet,
        } = m
        else {
            return Ok(());
        };
        let (a, b) = *subnet;
        run(&["ip", "link", "add", bridge, "type", "bridge"])?;
        run(&[
            "ip",
            "addr",
            "add",
            &format!("10.{a}.{b}.1/24"),
            "dev",
            bridge,
        ])?;
        run(&["ip", "link", "set", bridge, "up"])?;
        for i in 1..=n {
            let ns = format!("{prefix}n{i}");
            let (v, p) = (format!("{prefix}v{i}"), format!("{prefix}p{i}"));
            run(&["ip", "netns", "add", &ns])?;
            run(&["ip", "link", "add", &v, "type", "veth", "peer", "name", &p])?;
            run(&["ip", "link", "set", &p, "netns", &ns])?;
            run(&["ip", "link", "set", &v, "master", bridge])?;
            run(&["ip", "link", "set", &v, "up"])?;
            run(&[
                "ip",
                "netns",
                "exec",
                &ns,
                "ip",
                "addr",
                "add",
                &format!("10.{a}.{b}.{}/24", 10 + i),
                "dev",
                &p,
            ])?;
            run(&["ip", "netns", "exec", &ns, "ip", "link", "set", &p, "up"])?;
            run(&["ip", "netns", "exec", &ns, "ip", "link", "set", "lo", "up"])?;
        }
        Ok(())
    }

    /// Whether packets are really dropped (namespaces).
    pub fn real(&self) -> bool {
        matches!(self.mode, Mode::Namespaces { .. })
    }

    /// The IP node `i` listens on.
    pub fn ip(&self, i: u64) -> String {
        match &self.mode {
            Mode::Namespaces { subnet, .. } => format!("10.{}.{}.{}", subnet.0, subnet.1, 10 + i),
            Mode::Loopback => "127.0.0.1".into(),
        }
    }

    /// The fault file of node `i`.
    pub fn fault_file(&self, i: u64) -> PathBuf {
        self.dir.join(format!("faults-{i}.json"))
    }

    /// The network namespace of host `i` (`None` on loopback).
    pub fn netns(&self, i: u64) -> Option<String> {
        match &self.mode {
            Mode::Namespaces { prefix, .. } => Some(format!("{prefix}n{i}")),
            Mode::Loopback => None,
        }
    }

    /// The bridge's own address (the host side of the network).
    pub fn gateway(&self) -> Option<String> {
        match &self.mode {
            Mode::Namespaces { subnet, .. } => Some(format!("10.{}.{}.1", subnet.0, subnet.1)),
            Mode::Loopback => None,
        }
    }

    /// `cmd` wrapped to run in node `i`'s namespace.
    pub fn command(&self, i: u64, program: &Path) -> Command {
        match &self.mode {
            Mode::Namespaces { prefix, .. } => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", &format!("{prefix}n{i}")])
                    .arg(program);
                c
            }
            Mode::Loopback => Command::new(program),
        }
    }

    fn write_fault_files(&self) -> Result<(), String> {
        let cut = self.cut.lock().map_err(|e| e.to_string())?.clone();
        let loss = self.loss.lock().map_err(|e| e.to_string())?.clone();
        let delay = self.delay.lock().map_err(|e| e.to_string())?.clone();
        for i in 1..=self.n {
            let mut drop = serde_json::Map::new();
            let mut delays = serde_json::Map::new();
            if !self.real() {
                for (from, to) in &cut {
                    if *from == i {
                        drop.insert(to.to_string(), json!(1.0));
                    }
                }
                for (from, to, p) in &loss {
                    if *from == i {
                        drop.insert(to.to_string(), json!(p));
                    }
                }
            }
            for (from, to, ms) in &delay {
                if *from == i {
                    delays.insert(to.to_string(), json!(ms));
                }
            }
            let body = json!({"drop": drop, "delay_ms": delays});
            let path = self.fault_file(i);
            let tmp = path.with_extension("tmp");
            std::fs::write(&tmp, body.to_string()).map_err(|e| e.to_string())?;
            std::fs::rename(&tmp, &path).map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    fn iptables_apply(&self) -> Result<(), String> {
        let Mode::Namespaces { prefix, .. } = &self.mode else {
            return Ok(());
        };
        let cut = self.cut.lock().map_err(|e| e.to_string())?.clone();
        let loss = self.loss.lock().map_err(|e| e.to_string())?.clone();
        for i in 1..=self.n {
            let ns = format!("{prefix}n{i}");
            run(&["ip", "netns", "exec", &ns, "iptables", "-F", "INPUT"])?;
            for (from, to) in &cut {
                if *to == i {
                    run(&[
                        "ip",
                        "netns",
                        "exec",
                        &ns,
                        "iptables",
                        "-A",
                        "INPUT",
                        "-s",
                        &self.ip(*from),
                        "-j",
                        "DROP",
                    ])?;
                }
            }
            for (from, to, p) in &loss {
                if *to == i {
                    run(&[
                        "ip",
                        "netns",
                        "exec",
                        &ns,
                        "iptables",
                        "-A",
                        "INPUT",
                        "-s",
                        &self.ip(*from),
                        "-m",
                        "statistic",
                        "--mode",
                        "random",
                        "--probability",
                        &format!("{p}"),
                        "-j",
                        "DROP",
                    ])?;
                }
            }
        }
        Ok(())
    }

    fn apply(&self) -> Result<(), String> {
        self.iptables_apply()?;
        self.write_fault_files()
    }

    /// Nodes in different groups can no longer reach each other (each
    /// group is a list of node ids; nodes in no group are cut from all).
    pub fn partition(&self, groups: &[Vec<u64>]) -> Result<(), String> {
        let group_of = |i: u64| groups.iter().position(|g| g.contains(&i));
        let mut cut = BTreeSet::new();
        for a in 1..=self.n {
            for b in 1..=self.n {
                if a != b && (group_of(a).is_none() || group_of(a) != group_of(b)) {
                    cut.insert((a, b));
                }
            }
        }
        *self.cut.lock().map_err(|e| e.to_string())? = cut;
        self.apply()
    }

    /// Cuts exactly these directed links (for rings and bridges).
    pub fn cut_links(&self, links: &[(u64, u64)]) -> Result<(), String> {
        *self.cut.lock().map_err(|e| e.to_string())? = links.iter().copied().collect();
        self.apply()
    }

    /// Drops messages between every pair with probability `p`.
    pub fn lossy(&self, p: f64) -> Result<(), String> {
        let mut l = Vec::new();
        for a in 1..=self.n {
            for b in 1..=self.n {
                if a != b {
                    l.push((a, b, p));
                }
            }
        }
        *self.loss.lock().map_err(|e| e.to_string())? = l;
        self.apply()
    }

    /// Delays every message between nodes by `ms`.
    pub fn slow(&self, ms: u64) -> Result<(), String> {
        let mut d = Vec::new();
        for a in 1..=self.n {
            for b in 1..=self.n {
                if a != b {
                    d.push((a, b, ms));
                }
            }
        }
        *self.delay.lock().map_err(|e| e.to_string())? = d;
        self.apply()
    }

    /// Removes every network fault.
    pub fn heal(&self) -> Result<(), String> {
        self.cut.lock().map_err(|e| e.to_string())?.clear();
        self.loss.lock().map_err(|e| e.to_string())?.clear();
        self.delay.lock().map_err(|e| e.to_string())?.clear();
        self.apply()
    }
}

/// Two nets (two clusters, each on a bridge of its own) that reach each
/// other through the host: a default route in every namespace, forwarding
/// on, and FORWARD rules accepting the two subnets. [`Link::cut`]
/// partitions the clusters from each other with real packet drops while
/// each stays whole inside; everything is removed when it is dropped.
pub struct Link {
    /// (from, to) subnets, both directions.
    pairs: Vec<(String, String)>,
    cut: std::sync::Mutex<bool>,
}

impl Net {
    /// `10.a.b.0/24` of a namespaced net.
    fn subnet(&self) -> Option<(String, String)> {
        match &self.mode {
            Mode::Namespaces { subnet, prefix, .. } => {
                Some((format!("10.{}.{}.0/24", subnet.0, subnet.1), prefix.clone()))
            }
            Mode::Loopback => None,
        }
    }

    /// Routes this net's hosts and `other`'s to each other through the
    /// host (namespaces only; it turns on IPv4 forwarding).
    pub fn link(&self, other: &Net) -> Result<Link, String> {
        let (Some((a, pa)), Some((b, pb))) = (self.subnet(), other.subnet()) else {
            return Err("linking nets needs network namespaces (root)".into());
        };
        for (net, prefix) in [(self, &pa), (other, &pb)] {
            let Mode::Namespaces { subnet, .. } = &net.mode else {
                continue;
            };
            let gw = format!("10.{}.{}.1", subnet.0, subnet.1);
            for i in 1..=net.hosts {
                let ns = format!("{prefix}n{i}");
                run(&[
                    "ip", "netns", "exec", &ns, "ip", "route", "replace", "default", "via", &gw,
                ])?;
            }
        }
        std::fs::write("/proc/sys/net/ipv4/ip_forward", "1")
            .map_err(|e| format!("turning on IPv4 forwarding: {e}"))?;
        let pairs = vec![(a.clone(), b.clone()), (b, a)];
        for (from, to) in &pairs {
            run(&[
                "iptables", "-I", "FORWARD", "-s", from, "-d", to, "-j", "ACCEPT",
            ])?;
        }
        Ok(Link {
            pairs,
            cut: std::sync::Mutex::new(false),
        })
    }
}

impl Link {
    /// Drops every packet between the two nets.
    pub fn cut(&self) -> Result<(), String> {
        let mut cut = self
            .cut
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if !*cut {
            for (from, to) in &self.pairs {
                run(&[
                    "iptables", "-I", "FORWARD", "-s", from, "-d", to, "-j", "DROP",
                ])?;
            }
            *cut = true;
        }
        Ok(())
    }

    /// Lets packets through again.
    pub fn heal(&self) -> Result<(), String> {
        let mut cut = self
            .cut
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if *cut {
            for (from, to) in &self.pairs {
                run(&[
                    "iptables", "-D", "FORWARD", "-s", from, "-d", to, "-j", "DROP",
                ])?;
            }
            *cut = false;
        }
        Ok(())
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        let _ = self.heal();
        for (from, to) in &self.pairs {
            let _ = run(&[
                "iptables", "-D", "FORWARD", "-s", from, "-d", to, "-j", "ACCEPT",
            ]);
        }
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        if let Mode::Namespaces { bridge, prefix, .. } = &self.mode {
            for i in 1..=self.hosts {
                let _ = run(&["ip", "netns", "del", &format!("{prefix}n{i}")]);
                let _ = run(&["ip", "link", "del", &format!("{prefix}v{i}")]);
            }
            let _ = run(&["ip", "link", "del", bridge]);
        }
    }
}

fn base36(mut n: u32) -> String {
    const D: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = Vec::new();
    loop {
        out.push(D[(n % 36) as usize]);
        n /= 36;
        if n == 0 {
            break;
        }
    }
    out.reverse();
    String::from_utf8(out).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    #[test]
    fn pids_in_base_36_parse_back() {
        for pid in [1u32, 35, 36, 12_345, 4_194_304] {
            assert_eq!(u32::from_str_radix(&super::base36(pid), 36).unwrap(), pid);
        }
    }

    #[test]
    fn a_pid_whose_digits_hold_an_x_is_read_back_from_its_tag() {
        for pid in [31_281u32, 33, 1_189, 12_345] {
            for suffix in ["", "n1", "v3", "p2"] {
                let rest = format!("{}x{}{suffix}", super::base36(pid), pid % 100);
                assert_eq!(super::tag_pid(&rest), Some(pid), "{rest}");
            }
        }
    }
}
