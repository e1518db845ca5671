//! Transparent capture: the iptables rules that send a workload's TCP to
//! its proxy without changing the workload (`mesh-proxy capture install` /
//! `capture remove`), and the original destination of a captured
//! connection (`SO_ORIGINAL_DST`).
//!
//! The rules live in chains of their own in the `nat` table —
//! `RAFTMESH_INBOUND` (from `PREROUTING`: TCP arriving for the workload goes
//! to the proxy's inbound port) and `RAFTMESH_OUTPUT` (from `OUTPUT`: TCP
//! the workload opens goes to the proxy's capture port, DNS to the proxy's
//! DNS port, whatever resolver it was sent to) — so that removing them
//! leaves the tables as they were. The proxy's own traffic
//! (`--proxy-uid`), loopback TCP, and the ports and address ranges
//! excluded are left alone. Both commands are idempotent.
//! A `nat` table that exists only because of the rules (a fresh host or
//! network namespace, iptables on nf_tables) is removed with them: a
//! marker chain records it. Where iptables is missing (or with `--backend
//! nftables`) the same rules go in an nftables table of their own,
//! `ip raftmesh` ([`nft`]), deleted whole on removal. Where the kernel has
//! IPv6 and `ip6tables` is there, the workload's IPv6 connections and DNS
//! are captured too (the same `RAFTMESH_OUTPUT` chain in ip6tables, `ip6
//! raftmesh` in nftables; the proxy listens on `[::1]` beside
//! `127.0.0.1`); IPv6 inbound is not redirected (the inbound port listens
//! on IPv4).

mod nft;

use std::net::{Ipv4Addr, SocketAddr};
use std::process::Command;

/// The jump into each chain: (base chain, match, our chain).
const INBOUND: &str = "RAFTMESH_INBOUND";
const OUTPUT: &str = "RAFTMESH_OUTPUT";
/// Present only while the rules are installed in a `nat` table the
/// install created.
const CREATED_TABLE: &str = "RAFTMESH_CREATED_TABLE";

/// What to capture.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct CaptureSpec {
    /// The user the proxy runs as: its own connections are not captured.
    #[arg(long)]
    pub proxy_uid: u32,
    /// The proxy's inbound port (mTLS from other proxies, and what
    /// arrives for the workload).
    #[arg(long, default_value_t = 15006)]
    pub inbound_port: u16,
    /// The proxy's port for captured outbound connections (its
    /// `--capture` listener).
    #[arg(long, default_value_t = 15002)]
    pub outbound_port: u16,
    /// The proxy's DNS port: the workload's DNS (UDP 53) goes there. Off
    /// when not given.
    #[arg(long)]
    pub dns_port: Option<u16>,
    /// Inbound ports left alone (e.g. SSH).
    #[arg(long, value_delimiter = ',', default_value = "22")]
    pub exclude_inbound_ports: Vec<u16>,
    /// Outbound destination ports left alone.
    #[arg(long, value_delimiter = ',')]
    pub exclude_outbound_ports: Vec<u16>,
    /// Outbound destinations left alone, as CIDRs (e.g. 169.254.169.254/32).
    #[arg(long, value_delimiter = ',')]
    pub exclude_cidrs: Vec<String>,
    /// Which packet filter to write the rules in (auto: iptables when it is
    /// installed, else nftables).
    #[arg(long, value_enum, default_value_t = Backend::Auto)]
    pub backend: Backend,
}

/// The packet filter the rules go in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Backend {
    /// iptables when installed, else nftables.
    Auto,
    /// Chains of our own in iptables' `nat` table.
    Iptables,
    /// A table of our own in nftables (`ip raftmesh`).
    Nftables,
}

/// Why capture could not be installed or removed.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    /// An argument is invalid; nothing was changed.
    #[error("{0}")]
    Invalid(String),
    /// iptables could not be run.
    #[error("cannot run {cmd}: {source} (install iptables; capture needs root)")]
    Spawn {
        /// The command.
        cmd: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// iptables refused a command.
    #[error("{cmd} failed: {stderr}")]
    Failed {
        /// The command.
        cmd: String,
        /// What it said.
        stderr: String,
    },
}

/// An address family: IPv4 (`iptables`, inbound and outbound) or IPv6
/// (`ip6tables`, outbound only: an IPv6 inbound redirect would need the
/// proxy's inbound port on IPv6 too).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    V4,
    V6,
}

impl Family {
    fn iptables(self) -> &'static str {
        match self {
            Family::V4 => "iptables",
            Family::V6 => "ip6tables",
        }
    }
    fn nft(self) -> &'static str {
        match self {
            Family::V4 => "ip",
            Family::V6 => "ip6",
        }
    }
    fn loopback(self) -> &'static str {
        match self {
            Family::V4 => "127.0.0.0/8",
            Family::V6 => "::1/128",
        }
    }
    /// Whether the address part of a (checked) CIDR is of this family.
    fn holds(self, cidr: &str) -> bool {
        cidr.contains(':') == (self == Family::V6)
    }
}

/// Whether this kernel speaks IPv6 and `ip6tables` is there: then the
/// workload's IPv6 connections are captured too.
fn ipv6_capturable(ipt: &Iptables) -> bool {
    std::path::Path::new("/proc/sys/net/ipv6").exists() && ipt.has("ip6tables")
}

/// Runs iptables, optionally through a prefix (tests run it in a network
/// namespace with `ip netns exec NAME`).
#[derive(Debug, Clone, Default)]
pub struct Iptables {
    /// Words put before `iptables`.
    pub prefix: Vec<String>,
}

impl Iptables {
    fn command(&self, program: &str) -> Command {
        match self.prefix.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(program);
                c
            }
            None => Command::new(program),
        }
    }

    fn run_program(&self, program: &str, args: &[&str]) -> Result<(bool, String), CaptureError> {
        let shown = format!("{program} {}", args.join(" "));
        let out = self
            .command(program)
            .args(args)
            .output()
            .map_err(|source| CaptureError::Spawn {
                cmd: shown.clone(),
                source,
            })?;
        Ok((
            out.status.success(),
            if out.status.success() {
                String::from_utf8_lossy(&out.stdout).into_owned()
            } else {
                String::from_utf8_lossy(&out.stderr).trim().to_string()
            },
        ))
    }

    /// `iptables -t nat ARGS` (`ip6tables` for IPv6): whether it succeeded.
    fn check(&self, fam: Family, args: &[&str]) -> Result<bool, CaptureError> {
        let mut all = vec!["-w", "-t", "nat"];
        all.extend_from_slice(args);
        Ok(self.run_program(fam.iptables(), &all)?.0)
    }

    /// `iptables -t nat ARGS`, which must succeed; its output.
    fn run(&self, fam: Family, args: &[&str]) -> Result<String, CaptureError> {
        let mut all = vec!["-w", "-t", "nat"];
        all.extend_from_slice(args);
        match self.run_program(fam.iptables(), &all)? {
            (true, out) => Ok(out),
            (false, stderr) => Err(CaptureError::Failed {
                cmd: format!("{} {}", fam.iptables(), all.join(" ")),
                stderr,
            }),
        }
    }

    /// Whether `program --version` runs.
    fn has(&self, program: &str) -> bool {
        self.run_program(program, &["--version"])
            .is_ok_and(|(ok, _)| ok)
    }

    /// Whether iptables drives nf_tables (where a table exists only once
    /// something is put in it).
    fn on_nftables(&self, fam: Family) -> Result<bool, CaptureError> {
        Ok(self
            .run_program(fam.iptables(), &["--version"])?
            .1
            .contains("nf_tables"))
    }

    /// Whether the `nat` table exists (nf_tables), without creating it;
    /// `true` when it cannot be told (no `nft` program), so that removal
    /// never deletes a table it may not have made.
    fn nat_table_exists(&self, fam: Family) -> Result<bool, CaptureError> {
        Ok(self
            .run_program("nft", &["list", "table", fam.nft(), "nat"])
            .map_or(true, |(ok, _)| ok))
    }
}

/// The jumps from the base chains into ours.
fn jumps(spec: &CaptureSpec, fam: Family) -> Vec<Vec<String>> {
    let mut j = vec![words(&["OUTPUT", "-p", "tcp", "-j", OUTPUT])];
    if fam == Family::V4 {
        j.insert(0, words(&["PREROUTING", "-p", "tcp", "-j", INBOUND]));
    }
    if spec.dns_port.is_some() {
        j.push(words(&[
            "OUTPUT", "-p", "udp", "--dport", "53", "-j", OUTPUT,
        ]));
    }
    j
}

/// The IPv4 rules of our chains, in order (`-A CHAIN ...` without the `-A`).
pub fn rules(spec: &CaptureSpec) -> Result<Vec<Vec<String>>, CaptureError> {
    rules_for(spec, Family::V4)
}

fn rules_for(spec: &CaptureSpec, fam: Family) -> Result<Vec<Vec<String>>, CaptureError> {
    for c in &spec.exclude_cidrs {
        check_cidr(c)?;
    }
    if spec.inbound_port == 0 || spec.outbound_port == 0 || spec.dns_port == Some(0) {
        return Err(CaptureError::Invalid("capture ports must not be 0".into()));
    }
    let mut r = Vec::new();
    let inbound = if fam == Family::V4 {
        &spec.exclude_inbound_ports[..]
    } else {
        &[]
    };
    for p in inbound {
        r.push(vec![
            INBOUND.into(),
            "-p".into(),
            "tcp".into(),
            "--dport".into(),
            p.to_string(),
            "-j".into(),
            "RETURN".into(),
        ]);
    }
    // Only TCP for this host: a host that forwards (containers, a
    // router) keeps forwarding what is not its own.
    r.extend((fam == Family::V4).then(|| {
        words(&[
            INBOUND,
            "-p",
            "tcp",
            "-m",
            "addrtype",
            "--dst-type",
            "LOCAL",
            "-j",
            "REDIRECT",
            "--to-ports",
            &spec.inbound_port.to_string(),
        ])
    }));
    let uid = spec.proxy_uid.to_string();
    r.push(words(&[
        OUTPUT,
        "-m",
        "owner",
        "--uid-owner",
        &uid,
        "-j",
        "RETURN",
    ]));
    // DNS first: a host's resolver is often on loopback (127.0.0.53).
    if let Some(dns) = spec.dns_port {
        r.push(words(&[
            OUTPUT,
            "-p",
            "udp",
            "--dport",
            "53",
            "-j",
            "REDIRECT",
            "--to-ports",
            &dns.to_string(),
        ]));
    }
    r.push(words(&[OUTPUT, "-d", fam.loopback(), "-j", "RETURN"]));
    for c in spec.exclude_cidrs.iter().filter(|c| fam.holds(c)) {
        r.push(words(&[OUTPUT, "-d", c, "-j", "RETURN"]));
    }
    for p in &spec.exclude_outbound_ports {
        r.push(words(&[
            OUTPUT,
            "-p",
            "tcp",
            "--dport",
            &p.to_string(),
            "-j",
            "RETURN",
        ]));
    }
    r.push(words(&[
        OUTPUT,
        "-p",
        "tcp",
        "-j",
        "REDIRECT",
        "--to-ports",
        &spec.outbound_port.to_string(),
    ]));
    Ok(r)
}

fn words(w: &[&str]) -> Vec<String> {
    w.iter().map(|s| s.to_string()).collect()
}

fn check_cidr(c: &str) -> Result<(), CaptureError> {
    let bad = || {
        CaptureError::Invalid(format!(
            "--exclude-cidrs: \"{c}\" is not a CIDR like 10.0.0.0/8 or fd00::/8"
        ))
    };
    let (ip, len) = c.split_once('/').ok_or_else(bad)?;
    let max = match ip.parse::<std::net::IpAddr>().map_err(|_| bad())? {
        std::net::IpAddr::V4(_) => 32,
        std::net::IpAddr::V6(_) => 128,
    };
    if len.is_empty() || !len.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    match len.parse::<u8>() {
        Ok(n) if n <= max => Ok(()),
        _ => Err(bad()),
    }
}

/// Installs the rules (replacing ours if present; other rules untouched):
/// IPv4, and IPv6 outbound where the kernel and `ip6tables` allow.
pub fn install(ipt: &Iptables, spec: &CaptureSpec) -> Result<(), CaptureError> {
    rules_for(spec, Family::V4)?;
    let nftables = match spec.backend {
        Backend::Nftables => true,
        Backend::Iptables => false,
        Backend::Auto => !ipt.has("iptables"),
    };
    let v6 = ipv6_capturable(ipt);
    // Rules of the other kind (an earlier install) would redirect too.
    if nftables {
        if ipt.has("iptables") {
            remove_ours(ipt, Family::V4, true)?;
        }
        if v6 {
            remove_ours(ipt, Family::V6, true)?;
        }
        return nft::install(ipt, spec);
    }
    if ipt.has("nft") {
        nft::remove(ipt)?;
    }
    install_family(ipt, spec, Family::V4)?;
    if v6 {
        install_family(ipt, spec, Family::V6)?;
    }
    Ok(())
}

fn install_family(ipt: &Iptables, spec: &CaptureSpec, fam: Family) -> Result<(), CaptureError> {
    let rules = rules_for(spec, fam)?;
    let created = ipt.on_nftables(fam)? && !ipt.nat_table_exists(fam)?;
    let had_marker = !created && ipt.check(fam, &["-S", CREATED_TABLE])?;
    remove_ours(ipt, fam, false)?;
    let chains: &[&str] = match fam {
        Family::V4 => &[INBOUND, OUTPUT],
        Family::V6 => &[OUTPUT],
    };
    for chain in chains {
        ipt.run(fam, &["-N", chain])?;
    }
    if created || had_marker {
        ipt.run(fam, &["-N", CREATED_TABLE])?;
    }
    for r in rules.iter().chain(&jumps(spec, fam)) {
        let mut args = vec!["-A"];
        args.extend(r.iter().map(String::as_str));
        ipt.run(fam, &args)?;
    }
    Ok(())
}

/// Removes the rules, from iptables, ip6tables and nftables alike; a `nat`
/// table the install created goes too.
pub fn remove(ipt: &Iptables) -> Result<(), CaptureError> {
    let (iptables, nftables) = (ipt.has("iptables"), ipt.has("nft"));
    if !iptables && !nftables {
        return Err(CaptureError::Invalid(
            "neither iptables nor nft is installed: there is nothing to remove capture from".into(),
        ));
    }
    if nftables {
        nft::remove(ipt)?;
    }
    if iptables {
        remove_ours(ipt, Family::V4, true)?;
    }
    if ipv6_capturable(ipt) {
        remove_ours(ipt, Family::V6, true)?;
    }
    Ok(())
}

fn remove_ours(ipt: &Iptables, fam: Family, drop_table: bool) -> Result<(), CaptureError> {
    let table_ours = ipt.check(fam, &["-S", CREATED_TABLE])?;
    // Every jump into our chains, whatever the options they were made with.
    for base in ["PREROUTING", "OUTPUT"] {
        let listed = ipt.run(fam, &["-S", base])?;
        for line in listed.lines() {
            let Some(rule) = line.strip_prefix("-A ") else {
                continue;
            };
            if rule.ends_with(&format!("-j {INBOUND}")) || rule.ends_with(&format!("-j {OUTPUT}")) {
                let mut args = vec!["-D"];
                args.extend(rule.split_whitespace());
                ipt.run(fam, &args)?;
            }
        }
    }
    for chain in [INBOUND, OUTPUT, CREATED_TABLE] {
        if ipt.check(fam, &["-S", chain])? {
            ipt.run(fam, &["-F", chain])?;
            ipt.run(fam, &["-X", chain])?;
        }
    }
    if drop_table && table_ours {
        // Empty again: the host had no nat table before.
        let (ok, err) = ipt.run_program("nft", &["delete", "table", fam.nft(), "nat"])?;
        if !ok {
            return Err(CaptureError::Failed {
                cmd: format!("nft delete table {} nat", fam.nft()),
                stderr: err,
            });
        }
    }
    Ok(())
}

/// The destination a captured connection was made to, before the
/// REDIRECT (Linux `SO_ORIGINAL_DST`; `IP6T_SO_ORIGINAL_DST` for IPv6).
pub fn original_dst(s: &impl std::os::fd::AsFd) -> std::io::Result<SocketAddr> {
    use nix::sys::socket::{getsockopt, sockopt};
    match getsockopt(s, sockopt::OriginalDst) {
        Ok(a) => Ok(SocketAddr::from((
            Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr)),
            u16::from_be(a.sin_port),
        ))),
        Err(v4) => match getsockopt(s, sockopt::Ip6tOriginalDst) {
            Ok(a) => Ok(SocketAddr::from((
                std::net::Ipv6Addr::from(a.sin6_addr.s6_addr),
                u16::from_be(a.sin6_port),
            ))),
            Err(_) => Err(std::io::Error::from(v4)),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The spec the unit tests of both backends start from.
    pub(super) fn spec() -> CaptureSpec {
        CaptureSpec {
            proxy_uid: 1337,
            inbound_port: 15006,
            outbound_port: 15002,
            dns_port: Some(15053),
            exclude_inbound_ports: vec![22],
            exclude_outbound_ports: vec![7100],
            exclude_cidrs: vec!["169.254.169.254/32".into()],
            backend: Backend::Auto,
        }
    }

    #[test]
    fn the_proxy_s_own_traffic_and_loopback_are_left_alone_before_anything_is_redirected() {
        let r: Vec<String> = rules(&spec())
            .unwrap()
            .iter()
            .map(|r| r.join(" "))
            .collect();
        let out: Vec<&String> = r.iter().filter(|l| l.starts_with(OUTPUT)).collect();
        assert_eq!(
            out[0],
            "RAFTMESH_OUTPUT -m owner --uid-owner 1337 -j RETURN"
        );
        // The workload's DNS goes to the proxy even to a loopback resolver.
        assert_eq!(
            out[1],
            "RAFTMESH_OUTPUT -p udp --dport 53 -j REDIRECT --to-ports 15053"
        );
        assert_eq!(out[2], "RAFTMESH_OUTPUT -d 127.0.0.0/8 -j RETURN");
        assert_eq!(
            out.last().unwrap().as_str(),
            "RAFTMESH_OUTPUT -p tcp -j REDIRECT --to-ports 15002"
        );
        assert!(r.contains(&"RAFTMESH_INBOUND -p tcp --dport 22 -j RETURN".to_string()));
        assert!(r.contains(
            &"RAFTMESH_OUTPUT -p udp --dport 53 -j REDIRECT --to-ports 15053".to_string()
        ));
    }

    #[test]
    fn bad_cidrs_and_zero_ports_are_refused() {
        for bad in [
            "10.0.0.0",
            "10.0.0.0/33",
            "fd00::/129",
            "10.0.0.0/+8",
            "x/8",
            "10.0.0.0/8 -j ACCEPT",
        ] {
            let mut s = spec();
            s.exclude_cidrs = vec![bad.into()];
            assert!(matches!(rules(&s), Err(CaptureError::Invalid(_))), "{bad}");
        }
        let mut s = spec();
        s.outbound_port = 0;
        assert!(rules(&s).is_err());
    }
}
