//! Finding (or building) the binaries the harness runs: `meshd`, `meshctl`
//! and `mesh-proxy`.
//!
//! `RAFTMESH_BIN_DIR`, when set, names a folder holding them (e.g. a
//! release build). Otherwise the harness runs `cargo build` for the
//! packages that own them, once per test process, in the same profile and
//! target directory as the tests; cargo makes that a no-op when they are
//! up to date (and under `cargo test --workspace` they already are).

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

/// The workspace's root folder.
pub fn workspace_root() -> PathBuf {
    let here = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    here.parent().map(PathBuf::from).unwrap_or(here)
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
}

fn build() -> Result<PathBuf, String> {
    if let Some(d) = std::env::var_os("RAFTMESH_BIN_DIR") {
        return Ok(PathBuf::from(d));
    }
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let profile_dir = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    };
    let mut cmd = Command::new(cargo);
    cmd.current_dir(workspace_root()).args([
        "build",
        "--quiet",
        "-p",
        "raftmesh-controlplane",
        "-p",
        "raftmesh-dataplane-proxy",
        "--bins",
    ]);
    if !cfg!(debug_assertions) {
        cmd.arg("--release");
    }
    let status = cmd
        .status()
        .map_err(|e| format!("cannot run cargo to build meshd and mesh-proxy: {e}"))?;
    if !status.success() {
        return Err(format!("building meshd and mesh-proxy failed ({status})"));
    }
    Ok(target_dir().join(profile_dir))
}

/// The path of binary `name`, building it first if needed.
pub fn path(name: &str) -> Result<PathBuf, String> {
    static DIR: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let dir = DIR.get_or_init(build).clone()?;
    let p = dir.join(name);
    if p.exists() {
        Ok(p)
    } else {
        Err(format!(
            "{} does not exist (set RAFTMESH_BIN_DIR or build it)",
            p.display()
        ))
    }
}
