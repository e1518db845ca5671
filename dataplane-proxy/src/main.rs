//! mesh-proxy: the Raftmesh sidecar (see the library's docs).

use clap::Parser;
use raftmesh_dataplane_proxy::config::{Args, CaptureCmd, Cmd};

fn main() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("RAFTMESH_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let mut args = Args::parse();
    let (flags, app) = match args.command.take() {
        Some(Cmd::Capture(c)) => capture(c),
        Some(Cmd::Run(r)) => (r.proxy, Some(r.app)),
        None => (args.proxy, None),
    };
    let parent = flags.parent_pid;
    let cfg = match flags.into_config() {
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
        let drain_timeout = cfg.drain_timeout;
        let proxy = raftmesh_dataplane_proxy::start(cfg).await?;
        let code = match app {
            None => {
                use tokio::signal::unix::{signal, SignalKind};
                let mut term = signal(SignalKind::terminate())?;
                let mut int = signal(SignalKind::interrupt())?;
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                    _ = raftmesh_client::bins::parent_gone(parent) => {
                        tracing::info!("the parent process is gone")
                    }
                    _ = proxy.taken_over() => {
                        // An upgrade: the new proxy serves on our sockets
                        // and keeps the endpoint.
                        proxy.hand_over(drain_timeout).await;
                        return anyhow::Ok(0);
                    }
                }
                tracing::info!(timeout = ?drain_timeout, "draining, then stopping");
                proxy.drain(drain_timeout).await;
                0
            }
            Some(app) => match run_app(&proxy, &app, drain_timeout).await? {
                (code, false) => code,
                (code, true) => {
                    // Taken over: the endpoint is the new proxy's.
                    proxy.hand_over(drain_timeout).await;
                    return anyhow::Ok(code);
                }
            },
        };
        proxy.leave().await;
        anyhow::Ok(code)
    });
    match result {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("mesh-proxy: {e:#}");
            std::process::exit(1);
        }
    }
}

struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> std::io::Result<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Self {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            hup: signal(SignalKind::hangup())?,
        })
    }
}

/// `mesh-proxy run -- APP`: starts the app once the proxy is ready (in a
/// process group of its own, so a terminal's signals reach it through the
/// proxy only), drains the proxy on SIGTERM/SIGINT before passing the
/// signal on, passes SIGHUP straight on, and answers the app's exit status
/// (128 + the signal for a signal, as a shell does), and whether another
/// proxy took this one over meanwhile.
async fn run_app(
    proxy: &raftmesh_dataplane_proxy::Proxy,
    app: &[String],
    drain_timeout: std::time::Duration,
) -> anyhow::Result<(i32, bool)> {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    let mut signals = Signals::new()?;
    let started = std::time::Instant::now();
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(5));
    tick.tick().await;
    loop {
        if proxy.ready() {
            break;
        }
        tokio::select! {
            _ = tokio::time::sleep(std::time::Duration::from_millis(50)) => {}
            _ = tick.tick() => tracing::info!(waited = ?started.elapsed(), "the app waits for the proxy's configuration and certificate (is meshd reachable? see above)"),
            _ = signals.term.recv() => return Ok((128 + Signal::SIGTERM as i32, false)),
            _ = signals.int.recv() => return Ok((128 + Signal::SIGINT as i32, false)),
        }
    }
    let mut child = tokio::process::Command::new(&app[0])
        .args(&app[1..])
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| anyhow::anyhow!("cannot start the app {:?}: {e}", app[0]))?;
    let pid = child.id().map(|p| Pid::from_raw(p as i32));
    tracing::info!(app = %app[0], pid = ?pid, "started the app");
    let pass = |sig: Signal| {
        if let Some(pid) = pid {
            let _ = kill(pid, sig);
        }
    };
    let mut handed = false;
    let status = loop {
        tokio::select! {
            s = child.wait() => break s?,
            _ = signals.term.recv() => {
                tracing::info!("SIGTERM: draining the proxy, then stopping the app");
                proxy.drain(drain_timeout).await;
                pass(Signal::SIGTERM);
            }
            _ = signals.int.recv() => {
                proxy.drain(drain_timeout).await;
                pass(Signal::SIGINT);
            }
            _ = signals.hup.recv() => pass(Signal::SIGHUP),
            _ = proxy.taken_over(), if !handed => {
                handed = true;
                // The app is this process's child: it cannot move to the
                // new proxy, so it stops too (use a separate app, not
                // `run`, for upgrades that keep it). No drain: the
                // endpoint is the new proxy's now.
                tracing::warn!("another proxy took over; stopping the app, which is this proxy's child");
                pass(Signal::SIGTERM);
            }
        }
    };
    use std::os::unix::process::ExitStatusExt;
    let code = status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(1);
    tracing::info!(code, "the app exited");
    Ok((code, handed))
}

/// `mesh-proxy capture ...`; exits.
fn capture(c: CaptureCmd) -> ! {
    use raftmesh_dataplane_proxy::capture;
    let ipt = capture::Iptables::default();
    let (done, result) = match c {
        CaptureCmd::Install(spec) => ("installed", capture::install(&ipt, &spec)),
        CaptureCmd::Remove => ("removed", capture::remove(&ipt)),
    };
    match result {
        Ok(()) => {
            println!("capture rules {done}");
            std::process::exit(0)
        }
        Err(e) => {
            eprintln!("mesh-proxy capture: {e}");
            std::process::exit(match e {
                capture::CaptureError::Invalid(_) => 2,
                _ => 1,
            });
        }
    }
}
