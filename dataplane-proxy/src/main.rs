//! mesh-proxy: the Raftmesh sidecar (see the library's docs).

use clap::Parser;
use raftmesh_dataplane_proxy::config::Args;

fn main() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("RAFTMESH_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let mut args = Args::parse();
    if let Some(raftmesh_dataplane_proxy::config::Cmd::Capture(c)) = args.command.take() {
        use raftmesh_dataplane_proxy::capture;
        use raftmesh_dataplane_proxy::config::CaptureCmd;
        let ipt = capture::Iptables::default();
        let (done, result) = match c {
            CaptureCmd::Install(spec) => ("installed", capture::install(&ipt, &spec)),
            CaptureCmd::Remove => ("removed", capture::remove(&ipt)),
        };
        match result {
            Ok(()) => println!("capture rules {done}"),
            Err(e) => {
                eprintln!("mesh-proxy capture: {e}");
                std::process::exit(match e {
                    capture::CaptureError::Invalid(_) => 2,
                    _ => 1,
                });
            }
        }
        return;
    }
    let parent = args.parent_pid;
    let cfg = match args.into_config() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("mesh-proxy: {e}");
            std::process::exit(2);
        }
    };
    // One worker: a current-thread runtime (no work-stealing machinery, no
    // wake-ups across threads); more: a multi-thread one.
    let mut rt = match cfg.workers {
        Some(1) => tokio::runtime::Builder::new_current_thread(),
        Some(n) => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(n);
            b
        }
        None => tokio::runtime::Builder::new_multi_thread(),
    };
    let rt = match rt.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("mesh-proxy: cannot start the runtime: {e}");
            std::process::exit(1);
        }
    };
    let result = rt.block_on(async move {
        let proxy = raftmesh_dataplane_proxy::start(cfg).await?;
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
            _ = raftmesh_client::bins::parent_gone(parent) => {
                tracing::info!("the parent process is gone")
            }
        }
        tracing::info!("stopping");
        proxy.shutdown().await;
        anyhow::Ok(())
    });
    if let Err(e) = result {
        eprintln!("mesh-proxy: {e:#}");
        std::process::exit(1);
    }
}
