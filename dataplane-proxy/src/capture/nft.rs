//! Capture with nftables: the same rules as the iptables chains, in a
//! table of our own (`ip raftmesh`) with two NAT chains hooked at
//! `prerouting` and `output`, and (where the kernel speaks IPv6) an `ip6
//! raftmesh` table with the outbound chain. One `nft -f` transaction replaces the table
//! (so install is idempotent and atomic); removal deletes the table, which
//! leaves every other table as it was.

use super::{CaptureError, CaptureSpec, Family, Iptables};

/// Our table.
const TABLE: &str = "raftmesh";

/// The ruleset file for `spec` (validated as the iptables rules are):
/// the `ip` table, and the `ip6` one when `v6`.
pub(super) fn script(spec: &CaptureSpec, v6: bool) -> Result<String, CaptureError> {
    let mut s = table(spec, Family::V4)?;
    if v6 {
        s += &table(spec, Family::V6)?;
    }
    Ok(s)
}

fn table(spec: &CaptureSpec, fam: Family) -> Result<String, CaptureError> {
    // The same checks (ports, CIDRs) as the iptables rules.
    super::rules_for(spec, fam)?;
    let f = fam.nft();
    let mut s = format!("add table {f} {TABLE}\ndelete table {f} {TABLE}\ntable {f} {TABLE} {{\n");
    if fam == Family::V4 {
        s += "  chain prerouting {\n    type nat hook prerouting priority -100; policy accept;\n";
        for p in &spec.exclude_inbound_ports {
            s += &format!("    tcp dport {p} return\n");
        }
        s += &format!(
            "    fib daddr type local meta l4proto tcp redirect to :{}\n  }}\n",
            spec.inbound_port
        );
    }
    s += "  chain output {\n    type nat hook output priority -100; policy accept;\n";
    s += &format!("    meta skuid {} return\n", spec.proxy_uid);
    // DNS first: a host's resolver is often on loopback (127.0.0.53).
    if let Some(dns) = spec.dns_port {
        s += &format!("    udp dport 53 redirect to :{dns}\n");
    }
    s += &format!("    {f} daddr {} return\n", fam.loopback());
    for c in spec.exclude_cidrs.iter().filter(|c| fam.holds(c)) {
        s += &format!("    {f} daddr {c} return\n");
    }
    for p in &spec.exclude_outbound_ports {
        s += &format!("    tcp dport {p} return\n");
    }
    s += &format!(
        "    meta l4proto tcp redirect to :{}\n  }}\n}}\n",
        spec.outbound_port
    );
    Ok(s)
}

/// Writes the table (replacing ours).
pub(super) fn install(nft: &Iptables, spec: &CaptureSpec) -> Result<(), CaptureError> {
    let script = script(spec, super::ipv6_capturable(nft))?;
    let path = std::env::temp_dir().join(format!(
        "raftmesh-capture-{}-{}.nft",
        std::process::id(),
        rand::random::<u64>()
    ));
    std::fs::write(&path, &script).map_err(|source| CaptureError::Spawn {
        cmd: format!("writing {}", path.display()),
        source,
    })?;
    let shown = path.display().to_string();
    let result = nft.run_program("nft", &["-f", &shown]);
    let _ = std::fs::remove_file(&path);
    match result? {
        (true, _) => Ok(()),
        (false, stderr) => Err(CaptureError::Failed {
            cmd: format!("nft -f (the ruleset:\n{script})"),
            stderr,
        }),
    }
}

/// Deletes our tables, those that are there.
pub(super) fn remove(nft: &Iptables) -> Result<(), CaptureError> {
    for f in [Family::V4.nft(), Family::V6.nft()] {
        if !nft.run_program("nft", &["list", "table", f, TABLE])?.0 {
            continue;
        }
        match nft.run_program("nft", &["delete", "table", f, TABLE])? {
            (true, _) => {}
            (false, stderr) => {
                return Err(CaptureError::Failed {
                    cmd: format!("nft delete table {f} {TABLE}"),
                    stderr,
                })
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::Backend;
    use super::*;

    #[test]
    fn the_nft_table_holds_the_same_rules_in_the_same_order() {
        let mut spec = super::super::tests::spec();
        spec.exclude_cidrs.push("fd00:ec2::254/128".into());
        spec.backend = Backend::Nftables;
        let s = script(&spec, false).unwrap();
        assert!(!s.contains("ip6") && !s.contains("fd00"), "{s}");
        let out: Vec<&str> = s
            .split("chain output")
            .nth(1)
            .unwrap()
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect();
        assert_eq!(
            &out[2..],
            [
                "meta skuid 1337 return",
                "udp dport 53 redirect to :15053",
                "ip daddr 127.0.0.0/8 return",
                "ip daddr 169.254.169.254/32 return",
                "tcp dport 7100 return",
                "meta l4proto tcp redirect to :15002",
                "}",
                "}",
            ]
        );
        assert!(s.contains(
            "tcp dport 22 return\n    fib daddr type local meta l4proto tcp redirect to :15006"
        ));
        // IPv6: outbound only, its own loopback and CIDRs.
        let s6 = script(&spec, true).unwrap();
        let v6 = s6.split("table ip6 raftmesh {").nth(1).unwrap();
        assert!(!v6.contains("prerouting"), "{v6}");
        assert!(v6.contains("ip6 daddr ::1/128 return\n    ip6 daddr fd00:ec2::254/128 return"));
        assert!(!v6.contains("169.254"));
        let mut bad = spec;
        bad.exclude_cidrs = vec!["10.0.0.0/8; flush ruleset".into()];
        assert!(matches!(script(&bad, true), Err(CaptureError::Invalid(_))));
    }
}
