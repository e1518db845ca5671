//! Finding the mesh's programs — `meshd`, `meshctl`, `mesh-proxy` — to
//! start them as processes (`meshd demo` starts proxies, the CLI tests and
//! the chaos harness start all three), and letting a child started that way
//! stop with its parent ([`parent_gone`]).
//!
//! Where they are looked for, in order:
//! 1. `RAFTMESH_BIN_DIR`, when set (e.g. a release build for the chaos
//!    suite);
//! 2. when running under cargo (`cargo run`, `cargo test`: `CARGO` is set),
//!    the workspace's target directory, after one `cargo build` of the
//!    programs in the caller's profile (a no-op when they are up to date),
//!    so a fresh clone needs no other step;
//! 3. next to the running program, then on `PATH` (an installed mesh).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The programs and the packages that build them (`cargo build -p`);
/// `lazyfs` is the chaos suite's power-loss file system.
const PROGRAMS: [(&str, &str); 4] = [
    ("meshd", "raftmesh-controlplane"),
    ("meshctl", "raftmesh-ctl"),
    ("mesh-proxy", "raftmesh-dataplane-proxy"),
    ("lazyfs", "raftmesh-chaos-tests"),
];

/// Why a program could not be found.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BinError {
    /// cargo could not be run, or the build failed.
    #[error("building the mesh's programs with cargo failed: {0}")]
    Build(String),
    /// Not where it was looked for.
    #[error("cannot find {name} (looked in {looked}); build it with `cargo build --release --bin {name}`, or set RAFTMESH_BIN_DIR to the folder holding it")]
    NotFound {
        /// The program.
        name: String,
        /// The places looked in.
        looked: String,
    },
}

/// The workspace's root folder (this crate sits at `api/client`).
pub fn workspace_root() -> PathBuf {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    here.ancestors()
        .nth(2)
        .map(Path::to_path_buf)
        .unwrap_or_else(|| here.to_path_buf())
}

/// Where cargo put this build's programs: the folder of the running one
/// (a test runs from its `deps/` folder, one below). Under cargo, the
/// nested build below uses the same configuration, so the same folder.
fn profile_dir(release: bool) -> PathBuf {
    let own = std::env::current_exe().ok().and_then(|e| {
        let dir = e.parent()?;
        Some(if dir.file_name().is_some_and(|n| n == "deps") {
            dir.parent()?.to_path_buf()
        } else {
            dir.to_path_buf()
        })
    });
    own.unwrap_or_else(|| {
        std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| workspace_root().join("target"))
            .join(if release { "release" } else { "debug" })
    })
}

/// Builds program `name` of `package` in this build's profile; cargo's own
/// progress shows unless `quiet`. Only that program: rebuilding the one
/// that runs this (its features may differ under `cargo test`) would
/// replace it on disk under its feet.
fn build(
    cargo: &std::ffi::OsStr,
    name: &str,
    package: &str,
    quiet: bool,
) -> Result<PathBuf, BinError> {
    let release = !cfg!(debug_assertions);
    let mut cmd = Command::new(cargo);
    cmd.current_dir(workspace_root()).arg("build");
    if quiet {
        cmd.arg("--quiet");
    }
    cmd.args(["-p", package, "--bin", name]);
    if release {
        cmd.arg("--release");
    }
    let status = cmd
        .status()
        .map_err(|e| BinError::Build(format!("cannot run cargo: {e}")))?;
    if !status.success() {
        return Err(BinError::Build(format!("cargo build exited with {status}")));
    }
    Ok(profile_dir(release))
}

/// The path of program `name` (`meshd`, `meshctl`, `mesh-proxy`, `lazyfs`), built
/// first when running under cargo. `quiet` hides cargo's progress.
pub fn find(name: &str, quiet: bool) -> Result<PathBuf, BinError> {
    // Each program is built at most once per process.
    static BUILT: [OnceLock<Result<PathBuf, BinError>>; PROGRAMS.len()] =
        [const { OnceLock::new() }; PROGRAMS.len()];
    let mut looked = Vec::new();
    let mut dirs = Vec::new();
    let program = PROGRAMS.iter().position(|(n, _)| *n == name);
    if let Some(d) = std::env::var_os("RAFTMESH_BIN_DIR") {
        dirs.push(PathBuf::from(d));
    } else if let (Some(cargo), Some(i)) = (std::env::var_os("CARGO"), program) {
        let (name, package) = PROGRAMS[i];
        dirs.push(
            BUILT[i]
                .get_or_init(|| build(&cargo, name, package, quiet))
                .clone()?,
        );
    } else {
        if let Some(d) = std::env::current_exe()
            .ok()
            .and_then(|e| e.parent().map(Path::to_path_buf))
        {
            dirs.push(d);
        }
        if let Some(path) = std::env::var_os("PATH") {
            dirs.extend(std::env::split_paths(&path));
        }
    }
    for d in dirs {
        let p = d.join(name);
        if p.is_file() {
            return Ok(p);
        }
        looked.push(d.display().to_string());
    }
    Err(BinError::NotFound {
        name: name.to_string(),
        looked: looked.join(", "),
    })
}

/// Resolves once process `pid` is gone; never when `pid` is `None`. A
/// program started with `--parent-pid` (the demo's nodes and proxies)
/// selects on this to stop with its parent: a child is not told when its
/// parent dies, so it looks every half second.
pub async fn parent_gone(pid: Option<u32>) {
    match pid {
        Some(pid) => {
            while Path::new(&format!("/proc/{pid}")).exists() {
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            }
        }
        None => std::future::pending().await,
    }
}
