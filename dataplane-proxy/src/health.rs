//! The app's readiness and the proxy's own lifecycle, as meshd and `/ready`
//! see them.
//!
//! - A **probe** of the local app (an HTTP GET of a path, or by default a
//!   TCP connect to `--app-port`) every interval; `failure_threshold`
//!   failures in a row make a ready app not ready, `success_threshold`
//!   passes make it ready. Settings: the proxy's `--probe-*` flags, else
//!   MeshConfig `app_probe`, else the defaults (1s, 1s, 2, 1), read anew
//!   each round (a MeshConfig change applies without a restart).
//! - **Draining** (SIGTERM): the proxy reports not ready whatever the app
//!   says, so callers stop choosing it, and serves what is in flight.
//! - **Leaving**: the discovery client deregisters (meshd deletes the
//!   Endpoint) and says when it is done.
//!
//! The discovery client (`xds.rs`) reports [`Life::reported_ready`] on the
//! stream whenever it changes.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use raftmesh_api::AppProbe;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::state::Config;

/// The proxy's state as it reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Life {
    /// The app passed its probe (always true without an app).
    pub app_ready: bool,
    /// The app was probed at least once (always true without an app): the
    /// discovery client waits for it before it first registers, so a new
    /// proxy (a takeover's above all) never registers a ready app as not
    /// ready.
    pub probed: bool,
    /// SIGTERM: reported not ready, so callers stop choosing the proxy.
    pub draining: bool,
    /// Later in a drain: inbound listeners stop accepting and connections
    /// close once their requests are answered (HTTP/1 `Connection:
    /// close`, HTTP/2 GOAWAY).
    pub closing: bool,
    /// A new proxy took this one's listening sockets over (`takeover.rs`):
    /// every listener stops accepting and every connection closes as its
    /// requests are answered; the endpoint stays (the new proxy has it).
    pub handing_over: bool,
    /// Deregistration asked for.
    pub leaving: bool,
    /// Deregistered (or there was nothing to deregister from).
    pub left: bool,
}

impl Life {
    /// Whether meshd should mark the endpoint healthy (given a config).
    pub fn reported_ready(&self) -> bool {
        self.app_ready && !self.draining
    }
}

/// A new lifecycle: the app not ready until probed when there is one.
pub fn channel(has_app: bool) -> watch::Sender<Life> {
    watch::Sender::new(Life {
        app_ready: !has_app,
        probed: !has_app,
        draining: false,
        closing: false,
        handing_over: false,
        leaving: false,
        left: false,
    })
}

/// Probe settings in force.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeSettings {
    /// HTTP GET of this path, or a TCP connect.
    pub http_path: Option<String>,
    /// Between probes.
    pub interval: Duration,
    /// One probe's limit.
    pub timeout: Duration,
    /// Failures in a row to turn not ready.
    pub failure_threshold: u32,
    /// Passes in a row to turn ready.
    pub success_threshold: u32,
}

/// `flags` (the proxy's), else MeshConfig's `mesh`, else the defaults.
pub fn settings(flags: &AppProbe, mesh: Option<&AppProbe>) -> ProbeSettings {
    let pick = |f: fn(&AppProbe) -> Option<u64>, default: u64| {
        f(flags).or_else(|| mesh.and_then(f)).unwrap_or(default)
    };
    ProbeSettings {
        http_path: flags
            .http_path
            .clone()
            .or_else(|| mesh.and_then(|m| m.http_path.clone())),
        interval: Duration::from_millis(pick(|p| p.interval.map(|d| d.as_millis()), 1000)),
        timeout: Duration::from_millis(pick(|p| p.timeout.map(|d| d.as_millis()), 1000)),
        failure_threshold: pick(|p| p.failure_threshold.map(u64::from), 2) as u32,
        success_threshold: pick(|p| p.success_threshold.map(u64::from), 1) as u32,
    }
}

/// One probe of the app at `app`; the error says why it failed.
pub async fn probe_once(app: SocketAddr, s: &ProbeSettings) -> Result<(), String> {
    let run = async {
        let mut c = TcpStream::connect(app)
            .await
            .map_err(|e| format!("cannot connect to the app at {app}: {e}"))?;
        let Some(path) = &s.http_path else {
            return Ok(());
        };
        // One small HTTP/1.1 GET, read to the status line: no client pool
        // to keep, nothing but the status to parse.
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: localhost\r\nUser-Agent: mesh-proxy-probe\r\nConnection: close\r\n\r\n"
        );
        c.write_all(req.as_bytes())
            .await
            .map_err(|e| format!("probe request: {e}"))?;
        let mut buf = [0u8; 64];
        let mut n = 0;
        while n < 12 {
            let k = c
                .read(&mut buf[n..])
                .await
                .map_err(|e| format!("probe answer: {e}"))?;
            if k == 0 {
                break;
            }
            n += k;
        }
        let head = std::str::from_utf8(&buf[..n]).unwrap_or("");
        let status: u16 = head
            .strip_prefix("HTTP/1.")
            .and_then(|r| r.get(2..5))
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("GET {path}: not an HTTP answer"))?;
        if (200..400).contains(&status) {
            Ok(())
        } else {
            Err(format!("GET {path} answered {status}"))
        }
    };
    match tokio::time::timeout(s.timeout, run).await {
        Ok(r) => r,
        Err(_) => Err(format!("no answer within {:?}", s.timeout)),
    }
}

/// Probes the app at `app` until `shutdown`, keeping `life.app_ready` and
/// `why` (the last failure, for `/ready`) up to date.
pub async fn run(
    app: SocketAddr,
    flags: AppProbe,
    config: Arc<Config>,
    life: watch::Sender<Life>,
    why: Arc<std::sync::Mutex<String>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let (mut passes, mut failures) = (0u32, 0u32);
    loop {
        let mesh = config.current().app_probe.clone();
        let s = settings(&flags, mesh.as_ref());
        let r = probe_once(app, &s).await;
        let ready = life.borrow().app_ready;
        match r {
            Ok(()) => {
                failures = 0;
                passes = passes.saturating_add(1);
                if !ready && passes >= s.success_threshold {
                    tracing::info!(%app, "the app is ready");
                    life.send_modify(|l| l.app_ready = true);
                }
            }
            Err(e) => {
                passes = 0;
                failures = failures.saturating_add(1);
                // Not ready from the start until the first pass; a ready
                // app turns not ready after the threshold.
                if ready && failures >= s.failure_threshold {
                    tracing::warn!(%app, error = %e, "the app is not ready; meshd takes this endpoint out");
                    life.send_modify(|l| l.app_ready = false);
                } else if !ready && failures == 1 {
                    tracing::info!(%app, error = %e, "the app is not ready yet; the endpoint stays out until it is");
                }
                *why.lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = e;
            }
        }
        if !life.borrow().probed {
            // After the first verdict is in `app_ready` (xds waits for it).
            life.send_modify(|l| l.probed = true);
        }
        tokio::select! {
            _ = tokio::time::sleep(s.interval) => {}
            _ = crate::stopped(&mut shutdown) => return,
        }
    }
}

/// Resolves once inbound connections should close gracefully (a drain,
/// or a takeover).
pub async fn closing(life: &watch::Sender<Life>) {
    let mut rx = life.subscribe();
    let _ = rx.wait_for(|l| l.closing || l.handing_over).await;
}

/// Resolves once every listener should stop and every connection close
/// gracefully (a new proxy took over).
pub async fn handing_over(life: &watch::Sender<Life>) {
    let mut rx = life.subscribe();
    let _ = rx.wait_for(|l| l.handing_over).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use raftmesh_api::HumanDuration;

    #[test]
    fn flags_win_over_meshconfig_which_wins_over_the_defaults() {
        let none = AppProbe::default();
        let d = settings(&none, None);
        assert_eq!(d.http_path, None);
        assert_eq!(d.interval, Duration::from_secs(1));
        assert_eq!((d.failure_threshold, d.success_threshold), (2, 1));
        let mesh = AppProbe {
            http_path: Some("/healthz".into()),
            interval: Some(HumanDuration::from_millis(500)),
            failure_threshold: Some(5),
            ..Default::default()
        };
        let flags = AppProbe {
            interval: Some(HumanDuration::from_millis(200)),
            ..Default::default()
        };
        let s = settings(&flags, Some(&mesh));
        assert_eq!(s.http_path.as_deref(), Some("/healthz"));
        assert_eq!(s.interval, Duration::from_millis(200));
        assert_eq!(s.failure_threshold, 5);
        assert_eq!(s.timeout, Duration::from_secs(1));
    }

    #[tokio::test]
    async fn a_probe_passes_on_2xx_and_3xx_and_fails_otherwise() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let app = l.local_addr().unwrap();
        let status = Arc::new(std::sync::atomic::AtomicU16::new(200));
        let st = status.clone();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let code = st.load(std::sync::atomic::Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buf = [0u8; 512];
                    let _ = s.read(&mut buf).await;
                    let _ = s
                        .write_all(
                            format!("HTTP/1.1 {code} X\r\ncontent-length: 0\r\n\r\n").as_bytes(),
                        )
                        .await;
                });
            }
        });
        let s = ProbeSettings {
            http_path: Some("/ready".into()),
            interval: Duration::from_millis(10),
            timeout: Duration::from_secs(2),
            failure_threshold: 1,
            success_threshold: 1,
        };
        assert_eq!(probe_once(app, &s).await, Ok(()));
        status.store(302, std::sync::atomic::Ordering::SeqCst);
        assert_eq!(probe_once(app, &s).await, Ok(()));
        status.store(503, std::sync::atomic::Ordering::SeqCst);
        assert_eq!(
            probe_once(app, &s).await,
            Err("GET /ready answered 503".into())
        );
        // TCP only: the listener is enough.
        let tcp = ProbeSettings {
            http_path: None,
            ..s.clone()
        };
        assert_eq!(probe_once(app, &tcp).await, Ok(()));
        drop(tcp);
        // Nothing listening.
        let gone = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        assert!(probe_once(gone, &s)
            .await
            .unwrap_err()
            .contains("cannot connect"));
    }
}
