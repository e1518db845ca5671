//! Runs the built `check-history` binary: one stdout line per file, diagnostics on stderr, exit status.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::jepsen::jepsen_dir;
use crate::support::{simulate, Builder, Sim};

fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("check-history-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn run(args: &[&Path], flags: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_check-history"))
        .args(flags)
        .args(args)
        .output()
        .expect("check-history runs")
}

fn stdout_lines(out: &Output) -> Vec<String> {
    String::from_utf8(out.stdout.clone())
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

struct Files {
    good: PathBuf,
    bad: PathBuf,
    malformed: PathBuf,
    big: PathBuf,
}

fn files(name: &str) -> Files {
    let dir = scratch(name);
    let mut good = Builder::new();
    good.write(0, "r", 1).read(1, "r", Some(1));
    let mut bad = Builder::new();
    bad.write(0, "r", 1).write(0, "r", 2).read(1, "r", Some(1));
    let big = simulate(
        1,
        Sim {
            processes: 6,
            ops: 1000,
            ..Sim::default()
        },
    );
    let files = Files {
        good: dir.join("good.jsonl"),
        bad: dir.join("bad.jsonl"),
        malformed: dir.join("malformed.jsonl"),
        big: dir.join("big.jsonl"),
    };
    std::fs::write(&files.good, good.jsonl()).unwrap();
    std::fs::write(&files.bad, bad.jsonl()).unwrap();
    std::fs::write(
        &files.malformed,
        "{\"process\":0,\"type\":\"invoke\",\"f\":\"read\",\"key\":\"r\",\"value\":null}\n{\"process\":0,\"type\":\"maybe\",\"f\":\"read\",\"key\":\"r\",\"value\":null}\n",
    )
    .unwrap();
    std::fs::write(&files.big, big.builder.jsonl()).unwrap();
    files
}

#[test]
fn all_linearizable_exits_zero() {
    let f = files("ok");
    let out = run(&[&f.good, &f.big], &[]);
    assert_eq!(
        stdout_lines(&out),
        vec![
            format!("{} linearizable", f.good.display()),
            format!("{} linearizable", f.big.display())
        ]
    );
    assert_eq!(out.status.code(), Some(0));
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_violation_exits_one_and_explains_on_stderr() {
    let f = files("violation");
    let out = run(&[&f.bad, &f.good, &f.malformed], &[]);
    assert_eq!(
        stdout_lines(&out),
        vec![
            format!("{} not-linearizable", f.bad.display()),
            format!("{} linearizable", f.good.display()),
            format!("{} unknown", f.malformed.display()),
        ]
    );
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(stderr.contains("key \"r\" is not linearizable"), "{stderr}");
    assert!(
        stderr.contains("process 1 read -> 1 ok (lines 5-6)"),
        "{stderr}"
    );
    assert!(
        stderr.contains("process 0 write 2 ok (lines 3-4)"),
        "{stderr}"
    );
    assert!(stderr.contains("line 2: invalid event"), "{stderr}");
}

#[test]
fn undecided_files_exit_three() {
    let f = files("unknown");
    let missing = f.good.with_file_name("missing.jsonl");
    let out = run(&[&f.malformed, &missing], &[]);
    assert_eq!(
        stdout_lines(&out),
        vec![
            format!("{} unknown", f.malformed.display()),
            format!("{} unknown", missing.display())
        ]
    );
    assert_eq!(out.status.code(), Some(3));
    let out = run(&[&f.big], &["--max-steps", "1"]);
    assert_eq!(
        stdout_lines(&out),
        vec![format!("{} unknown", f.big.display())]
    );
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8(out.stderr)
        .unwrap()
        .contains("step limit of 1"));
    let out = run(&[&f.big], &["--timeout", "1ms", "--max-states", "5"]);
    assert_eq!(out.status.code(), Some(3));
}

#[test]
fn usage_errors_exit_two() {
    let out = run(&[], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty());
    let f = files("usage");
    let out = run(&[&f.good], &["--timeout", "soon"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn jepsen_files_through_the_cli() {
    let Some(dir) = jepsen_dir() else { return };
    let (bad, good) = (dir.join("etcd_000.jsonl"), dir.join("etcd_002.jsonl"));
    let out = run(&[&bad, &good], &["--verbose"]);
    assert_eq!(
        stdout_lines(&out),
        vec![
            format!("{} not-linearizable", bad.display()),
            format!("{} linearizable", good.display())
        ]
    );
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        stderr.contains("process 11 read -> 2 ok (lines 85-86)"),
        "{stderr}"
    );
    assert!(stderr.contains("steps"), "{stderr}");
    let out = run(&[&good], &[]);
    assert_eq!(out.status.code(), Some(0));
}
