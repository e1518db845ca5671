//! `mesh-proxy run -- APP`: the app as the proxy's child, started once the
//! proxy can serve, reached by SIGTERM after the drain, its exit status the
//! proxy's.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn proxy(dir: &Path, app: &str) -> Command {
    let cfg = dir.join("s.yaml");
    std::fs::write(&cfg, "kind: Service\nmetadata: {name: web}\nspec: {}\n").unwrap();
    let mut c = Command::new(env!("CARGO_BIN_EXE_mesh-proxy"));
    c.args(["run", "--config-file"])
        .arg(&cfg)
        .args(["--outbound", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
        .args(["--", "sh", "-c", app])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    c
}

#[test]
fn run_starts_the_app_and_exits_with_its_status() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("started");
    let status = proxy(
        dir.path(),
        &format!("echo up > {}; exit 3", marker.display()),
    )
    .status()
    .unwrap();
    assert_eq!(status.code(), Some(3), "the app's status is the proxy's");
    assert_eq!(std::fs::read_to_string(&marker).unwrap(), "up\n");
}

#[test]
fn sigterm_drains_the_proxy_then_reaches_the_app() {
    let dir = tempfile::tempdir().unwrap();
    let (up, term) = (dir.path().join("up"), dir.path().join("term"));
    let mut child = proxy(
        dir.path(),
        &format!(
            "trap 'echo term > {}; exit 7' TERM; echo up > {}; while :; do sleep 0.05; done",
            term.display(),
            up.display()
        ),
    )
    .spawn()
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !up.exists() {
        assert!(Instant::now() < deadline, "the app never started");
        std::thread::sleep(Duration::from_millis(20));
    }
    let ok = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(7), "the app's own exit after SIGTERM");
    assert_eq!(std::fs::read_to_string(&term).unwrap(), "term\n");
}

#[test]
fn run_without_an_app_is_refused() {
    let out = Command::new(env!("CARGO_BIN_EXE_mesh-proxy"))
        .args(["run", "--config-file", "/dev/null"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("APP"), "{err}");
}
