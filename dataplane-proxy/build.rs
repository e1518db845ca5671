//! Links `mesh-proxy` with packed relative relocations (`DT_RELR`) where the
//! toolchain and the C library support them.
//!
//! A position-independent binary carries one 24-byte record per pointer the
//! loader must adjust at start-up: 31,100 of them, 746 KiB, for mesh-proxy.
//! The loader reads all of them, so every sidecar keeps them resident. Packed,
//! they take 9 KiB; the binary stays position-independent (ASLR is
//! unchanged) and RSS under load drops by about 1.3 MiB
//! (docs/benchmarks.md, "Packed relocations").
//!
//! The flag needs GNU ld 2.38 or lld 15, and glibc 2.36 to run the result.
//! A tiny C program is linked and run with it first; when that fails (an
//! older toolchain, a cross build, musl), the binary is linked as before.
//! `RAFTMESH_NO_RELR=1` turns it off.

use std::env;
use std::path::PathBuf;
use std::process::{Command, Stdio};

const FLAG: &str = "-Wl,-z,pack-relative-relocs";

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=RAFTMESH_NO_RELR");
    println!("cargo:rerun-if-env-changed=CC");
    if env::var_os("RAFTMESH_NO_RELR").is_some() {
        return;
    }
    let os = env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    let target_env = env::var("CARGO_CFG_TARGET_ENV").unwrap_or_default();
    if os != "linux" || target_env != "gnu" || env::var("HOST").ok() != env::var("TARGET").ok() {
        return;
    }
    if probe() {
        println!("cargo:rustc-link-arg-bin=mesh-proxy={FLAG}");
    } else {
        println!("cargo:warning=linking mesh-proxy without packed relocations: the C toolchain here does not support {FLAG} (it needs GNU ld 2.38 or lld 15 and glibc 2.36); the binary works, with about 1 MiB more resident memory");
    }
}

/// Links a program with the flag (warnings are errors, so a linker that
/// ignores an unknown `-z` option says no) and runs it (so a C library
/// that lacks `DT_RELR` says no).
fn probe() -> bool {
    let Some(out) = env::var_os("OUT_DIR").map(PathBuf::from) else {
        return false;
    };
    let src = out.join("relr-probe.c");
    let exe = out.join("relr-probe");
    if std::fs::write(&src, "int main(void) { return 0; }\n").is_err() {
        return false;
    }
    let cc = env::var("CC").unwrap_or_else(|_| "cc".to_owned());
    let linked = Command::new(cc)
        .arg("-pie")
        .arg("-fPIE")
        // Before the flag: ld reports an unknown `-z` as soon as it reads it.
        .arg("-Wl,--fatal-warnings")
        .arg(FLAG)
        .arg("-o")
        .arg(&exe)
        .arg(&src)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    linked && Command::new(&exe).status().is_ok_and(|s| s.success())
}
