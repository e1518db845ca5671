//! Capture with nftables: the same rules as the iptables chains, in a
//! table of our own (`ip raftmesh`) with two NAT chains hooked at
//! `prerouting` and `output`. One `nft -f` transaction replaces the table
//! (so install is idempotent and atomic); removal deletes the table, which
//! leaves every other table as it was.

use super::{CaptureError, CaptureSpec, Iptables};

/// Our table.
const TABLE: &str = "raftmesh";

/// The ruleset file for `spec` (validated as the iptables rules are).
pub(super) fn script(spec: &CaptureSpec) -> Result<String, CaptureError> {
    // The same checks (ports, CIDRs) as the iptables rules.
    super::rules(spec)?;
    let mut s = format!("add table ip {TABLE}\ndelete table ip {TABLE}\ntable ip {TABLE} {{\n");
    s += "  chain prerouting {\n    type nat hook prerouting priority -100; policy accept;\n";
    for p in &spec.exclude_inbound_ports {
        s += &format!("    tcp dport {p} return\n");
    }
    s += &format!(
        "    fib daddr type local meta l4proto tcp redirect to :{}\n  }}\n",
        spec.inbound_port
    );
    s += "  chain output {\n    type nat hook output priority -100; policy accept;\n";
    s += &format!("    meta skuid {} return\n", spec.proxy_uid);
    // DNS first: a host's resolver is often on loopback (127.0.0.53).
    if let Some(dns) = spec.dns_port {
        s += &format!("    udp dport 53 redirect to :{dns}\n");
    }
    s += "    ip daddr 127.0.0.0/8 return\n";
    for c in &spec.exclude_cidrs {
        s += &format!("    ip daddr {c} return\n");
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
    let script = script(spec)?;
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

/// Deletes our table, if it is there.
pub(super) fn remove(nft: &Iptables) -> Result<(), CaptureError> {
    if !nft.run_program("nft", &["list", "table", "ip", TABLE])?.0 {
        return Ok(());
    }
    match nft.run_program("nft", &["delete", "table", "ip", TABLE])? {
        (true, _) => Ok(()),
        (false, stderr) => Err(CaptureError::Failed {
            cmd: format!("nft delete table ip {TABLE}"),
            stderr,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::super::Backend;
    use super::*;

    #[test]
    fn the_nft_table_holds_the_same_rules_in_the_same_order() {
        let spec = CaptureSpec {
            proxy_uid: 1337,
            inbound_port: 15006,
            outbound_port: 15002,
            dns_port: Some(15053),
            exclude_inbound_ports: vec![22],
            exclude_outbound_ports: vec![7100],
            exclude_cidrs: vec!["169.254.169.254/32".into()],
            backend: Backend::Nftables,
        };
        let s = script(&spec).unwrap();
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
        let mut bad = spec;
        bad.exclude_cidrs = vec!["10.0.0.0/8; flush ruleset".into()];
        assert!(matches!(script(&bad), Err(CaptureError::Invalid(_))));
    }
}
