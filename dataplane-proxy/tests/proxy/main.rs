//! The proxy on real sockets: upstream servers on loopback, proxies started
//! in-process from static configs or a fake control plane.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod access_log;
mod capture;
mod control_plane;
mod dns;
mod egress;
mod fastpath;
mod faults;
mod metrics;
mod otlp;
mod prom;
mod resilience;
mod routing;
mod run;
mod support;
mod tracing;
mod traffic;
mod transport;

/// `docs/reference/mesh-proxy.md` is clap's help, generated: this test
/// fails when it is stale, and rewrites it with
/// `UPDATE_DOCS=1 cargo test -p raftmesh-dataplane-proxy --test proxy reference`.
#[test]
fn reference_doc_matches_the_help() {
    let help = |args: &[&str]| {
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_mesh-proxy"))
            .args(args)
            .arg("--help")
            .env_remove("RAFTMESH_CONTROL_PLANE")
            .env_remove("RAFTMESH_TOKEN")
            .env_remove("RAFTMESH_CA_FILE")
            .output()
            .unwrap();
        assert!(o.status.success());
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let mut md = format!(
        "# `mesh-proxy` reference\n\nGenerated from `mesh-proxy --help` by the test \
         `reference_doc_matches_the_help` (dataplane-proxy/tests/proxy); do not edit by hand.\n\n\
         ```text\n{}```\n",
        help(&[])
    );
    for cmd in [&["capture", "install"][..], &["capture", "remove"]] {
        md.push_str(&format!(
            "\n## `mesh-proxy {}`\n\n```text\n{}```\n",
            cmd.join(" "),
            help(cmd)
        ));
    }
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/reference/mesh-proxy.md");
    if std::env::var_os("UPDATE_DOCS").is_some() {
        std::fs::write(&path, &md).unwrap();
    } else {
        assert!(
            std::fs::read_to_string(&path).unwrap_or_default() == md,
            "{} is stale: run UPDATE_DOCS=1 cargo test -p raftmesh-dataplane-proxy --test proxy reference",
            path.display()
        );
    }
}
