//! `lazyfs BACKING MOUNTPOINT`: mounts [`raftmesh_chaos_tests::lazyfs`]
//! (test-only; as root). `SIGUSR1` cuts the power: every write not yet
//! synced is lost, and a line `power-cut N` (N counting cuts) is appended
//! to `MOUNTPOINT/../lazyfs.cuts` once done. `SIGTERM`/`SIGINT` unmount
//! and exit.

use std::io::Write;
use std::path::PathBuf;

use clap::Parser;
use nix::sys::signal::{SigSet, Signal};

#[derive(Parser)]
struct Args {
    /// Where synced data lives.
    backing: PathBuf,
    /// Where the file system is mounted.
    mountpoint: PathBuf,
    /// The file a line is appended to after each power cut.
    #[arg(long)]
    cuts_file: PathBuf,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // Signals go to this thread only (the FUSE threads inherit the mask).
    let mut sigs = SigSet::empty();
    for s in [Signal::SIGUSR1, Signal::SIGTERM, Signal::SIGINT] {
        sigs.add(s);
    }
    sigs.thread_block()?;
    let fs = raftmesh_chaos_tests::lazyfs::LazyFs::new(&args.backing);
    let handle = fs.handle();
    let mut config = fuser::Config::default();
    config.mount_options = vec![
        fuser::MountOption::FSName("lazyfs".into()),
        fuser::MountOption::DefaultPermissions,
    ];
    let session = fuser::spawn_mount(fs, &args.mountpoint, &config)?;
    eprintln!(
        "lazyfs: {} over {}",
        args.mountpoint.display(),
        args.backing.display()
    );
    let mut cuts = 0u64;
    while sigs.wait()? == Signal::SIGUSR1 {
        let (files, pages) = handle.power_cut();
        cuts += 1;
        eprintln!("lazyfs: power cut {cuts}: lost unsynced pages of {files} files ({pages} pages)");
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&args.cuts_file)?;
        writeln!(f, "power-cut {cuts} files={files} pages={pages}")?;
        f.sync_all()?;
    }
    session.umount_and_join()?;
    Ok(())
}
