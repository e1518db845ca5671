//! mesh-proxy: the Raftmesh sidecar. It gets its configuration from meshd
//! over the discovery stream (or from a static file), and carries the
//! workload's traffic: outbound HTTP routed by authority through a tower
//! stack (route → timeout → retry → balance → forward), inbound to the local
//! app, and opaque TCP per `--upstream`.
//!
//! This crate must not depend on `raftmesh-storage`, `raftmesh-controlplane`,
//! openraft, sled or actix: a sidecar stays small (`.ci/run` checks it).

pub mod accesslog;
pub mod admin;
pub mod authz;
pub mod balance;
pub mod capture;
pub mod compiled;
pub mod config;
pub mod conn;
pub mod dns;
pub mod egress;
pub mod error;
pub mod fastpath;
pub mod fault;
pub mod forward;
pub mod gateway;
pub mod guard;
pub mod health;
pub mod livestats;
pub mod metrics;
pub mod path;
pub mod persist;
pub mod ratelimit;
pub mod retry;
pub mod route;
pub mod server;
pub mod stack;
pub mod state;
pub mod stats;
pub mod subscriptions;
pub mod takeover;
pub mod tap;
pub mod target;
pub mod timeout;
pub mod tls;
pub mod trace;
pub mod transparent;
pub mod trust;
pub mod upgrade;
pub mod xds;

#[cfg(test)]
mod testing;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::compiled::{compile, validate_all, CompiledConfig, Identity, Source};
use crate::config::ProxyConfig;
use crate::forward::Forward;
use crate::state::Config;

/// A service, by (namespace, name).
pub type ServiceId = (String, String);

/// Wall-clock milliseconds since the Unix epoch (certificate times, log
/// rate limits).
pub(crate) fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The body type every layer passes along.
pub type Body = http_body_util::combinators::BoxBody<Bytes, hyper::Error>;

/// Resolves once `rx` turns true (or its sender is gone).
pub async fn stopped(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

/// An empty body.
pub fn empty() -> Body {
    Empty::<Bytes>::new()
        .map_err(|never| match never {})
        .boxed()
}

/// A body of `bytes`.
pub fn full(bytes: Bytes) -> Body {
    http_body_util::Full::new(bytes)
        .map_err(|never| match never {})
        .boxed()
}

/// A running proxy.
pub struct Proxy {
    /// Bound outbound address.
    pub outbound: SocketAddr,
    /// Bound inbound address, if the proxy has an app.
    pub inbound: Option<SocketAddr>,
    /// Bound admin address.
    pub admin: SocketAddr,
    /// Bound TCP upstream listeners, by service name.
    pub upstreams: Vec<(String, SocketAddr)>,
    /// Bound listener for captured connections (`--capture`).
    pub capture: Option<SocketAddr>,
    /// Bound mesh DNS address (`--dns`, UDP).
    pub dns: Option<SocketAddr>,
    /// The live configuration.
    pub config: Arc<Config>,
    /// Registered with meshd (an app or a gateway, and a control plane).
    registered: bool,
    /// Turns true when a new proxy has taken the listening sockets over.
    handed_over: watch::Receiver<bool>,
    workload: Option<Arc<tls::Workload>>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

/// How long a draining proxy goes on accepting after reporting not ready:
/// callers hear of it from meshd within milliseconds of its write, and one
/// that is later still has its connection refused and retries elsewhere
/// (the request never reached the app).
pub const DRAIN_NOTICE: std::time::Duration = std::time::Duration::from_secs(1);

impl Proxy {
    /// Stops every listener and the discovery client.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
    }

    /// Resolves when a new proxy (`--takeover`) has taken this one's
    /// listening sockets over; then [`Self::hand_over`].
    pub async fn taken_over(&self) {
        let mut rx = self.handed_over.clone();
        if rx.wait_for(|h| *h).await.is_err() {
            // No takeover socket (no --state-dir, or it could not be
            // made): never.
            std::future::pending::<()>().await;
        }
    }

    /// After a takeover: stops accepting everywhere, closes every
    /// connection as its requests are answered (within `timeout`), and
    /// stops, leaving the endpoint to the new proxy.
    pub async fn hand_over(self, timeout: std::time::Duration) {
        let deadline = tokio::time::Instant::now() + timeout;
        self.config.life.send_modify(|l| l.handing_over = true);
        let open = || {
            self.config
                .inbound_open
                .load(std::sync::atomic::Ordering::SeqCst)
                + self
                    .config
                    .outbound_open
                    .load(std::sync::atomic::Ordering::SeqCst)
        };
        while open() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        tracing::info!(still_open = open(), "handed over; stopping");
        self.shutdown().await;
    }

    /// Whether the proxy can serve: it has a configuration and, in a
    /// mesh, its workload certificate.
    pub fn ready(&self) -> bool {
        self.config.current().source != Source::Empty
            && self.workload.as_ref().is_none_or(|w| w.tls().is_some())
    }

    /// The first half of a graceful stop (SIGTERM): reports not ready (meshd
    /// marks the endpoint, callers stop choosing it), goes on serving for
    /// [`DRAIN_NOTICE`], then stops accepting inbound connections and closes
    /// open ones as their requests are answered, waiting for them until
    /// `timeout` has passed in all. Outbound keeps serving (the app may still
    /// call out while it stops).
    pub async fn drain(&self, timeout: std::time::Duration) {
        let deadline = tokio::time::Instant::now() + timeout;
        self.config.life.send_modify(|l| l.draining = true);
        if self.registered {
            tokio::time::sleep(DRAIN_NOTICE.min(timeout / 2)).await;
        }
        self.config.life.send_modify(|l| l.closing = true);
        let open = || {
            self.config
                .inbound_open
                .load(std::sync::atomic::Ordering::SeqCst)
        };
        while open() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        if open() > 0 {
            tracing::warn!(
                open = open(),
                "drain timeout: closing the connections still open"
            );
        } else {
            tracing::info!("drained: no inbound connection open");
        }
    }

    /// The second half: deregisters (meshd deletes the Endpoint at once
    /// rather than after its lease) and stops.
    pub async fn leave(self) {
        self.config.life.send_modify(|l| l.leaving = true);
        if self.registered {
            let mut rx = self.config.life.subscribe();
            let _ =
                tokio::time::timeout(std::time::Duration::from_secs(4), rx.wait_for(|l| l.left))
                    .await;
        }
        self.shutdown().await;
    }
}

fn initial_config(
    cfg: &ProxyConfig,
    me: &Identity,
    config_stats: &stats::StatsRegistry,
) -> anyhow::Result<(CompiledConfig, BTreeSet<String>)> {
    if let Some(file) = &cfg.config_file {
        let text = std::fs::read_to_string(file)
            .with_context(|| format!("cannot read --config-file {}", file.display()))?;
        let docs = raftmesh_api::parse_documents(&text)
            .with_context(|| format!("--config-file {}", file.display()))?;
        let held = docs.into_iter().map(|r| (r.key(), r)).collect();
        return Ok((
            compile(1, Source::ConfigFile, held, me, config_stats),
            BTreeSet::new(),
        ));
    }
    if let Some(dir) = &cfg.state_dir {
        match persist::load(dir) {
            Ok(Some(saved)) => {
                let held = saved.resources.into_iter().map(|r| (r.key(), r)).collect();
                if let Err(e) = validate_all(&held) {
                    tracing::warn!(error = %e, "the saved config is invalid; starting without it");
                } else {
                    tracing::info!(revision = saved.revision, "serving the config saved in the state directory until a control plane answers");
                    return Ok((
                        compile(saved.revision, Source::StateDir, held, me, config_stats),
                        saved.subscriptions,
                    ));
                }
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "ignoring the state directory's config"),
        }
    }
    Ok((CompiledConfig::empty(), BTreeSet::new()))
}

/// `[::1]:PORT` for a listener on `127.0.0.1:PORT` (capture's IPv6
/// redirects land there), when the host has IPv6.
fn ipv6_twin(addr: SocketAddr) -> Option<SocketAddr> {
    (addr.ip() == std::net::Ipv4Addr::LOCALHOST && addr.port() != 0)
        .then(|| SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, addr.port())))
}

async fn bind(
    sockets: &mut takeover::Sockets,
    addr: SocketAddr,
    what: &str,
) -> anyhow::Result<TcpListener> {
    sockets.tcp(what, addr).await.with_context(|| {
        format!("cannot listen on {what} {addr} (in use? pick another with --{what}, or take the running proxy's sockets over with --takeover)")
    })
}

/// A timer that fires every second, for the timer wheel's sake: tokio
/// wakes its I/O driver (an eventfd write and an extra epoll round) when a
/// timer is armed earlier than the driver's next scheduled wake-up, and with
/// no timer pending that is every time hyper arms a request's header-read
/// timeout. With this tick pending, the next wake-up is always under a
/// second away and arming a 10 s timeout never wakes the driver: about one
/// system call fewer per request (docs/benchmarks.md).
async fn housekeeping_tick(mut shutdown: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stopped(&mut shutdown) => return,
        }
    }
}

/// Starts a proxy: binds every listener, then serves. Errors say which
/// flag to fix.
pub async fn start(cfg: ProxyConfig) -> anyhow::Result<Proxy> {
    let me = Identity {
        namespace: cfg.namespace.clone(),
        service: cfg.service.clone(),
        cluster: cfg.cluster.clone(),
        locality: cfg.locality.clone(),
    };
    let control_plane = cfg.config_file.is_none();
    let (learn_tx, learn_rx) = mpsc::channel(64);
    let stats = stats::StatsRegistry::new(metrics::Metrics::new());
    let (initial, saved_subs) = initial_config(&cfg, &me, &stats)?;
    let config = Config::new(
        me.clone(),
        initial,
        stats,
        control_plane.then_some(learn_tx),
        crate::conn::ConnLimits {
            header: cfg.header_timeout,
            idle: cfg.idle_timeout,
            http1_fast_path: cfg.http1_fast_path,
        },
        cfg.app_port.is_some(),
    );
    let (shutdown, shutdown_rx) = watch::channel(false);
    // A workload key and certificate belong to proxies in a mesh (a
    // static-config proxy has no identity and speaks plaintext).
    let workload = if control_plane {
        Some(tls::Workload::load_or_generate(cfg.state_dir.clone()).map_err(anyhow::Error::msg)?)
    } else {
        None
    };
    if let Some(w) = &workload {
        w.set_peers(config.current().peer_trust())
            .map_err(anyhow::Error::msg)?;
        let _ = config.workload.set(w.clone());
    }
    let forward = Forward::new(workload.clone(), config.metrics.clone());
    let mut tasks = Vec::new();
    tasks.push(tokio::spawn(housekeeping_tick(shutdown_rx.clone())));

    // `--takeover`: the running proxy's listening sockets, not new ones.
    let (mut sockets, ack) = match (&cfg.state_dir, cfg.takeover) {
        (Some(dir), true) => {
            let dir = dir.clone();
            let (s, a) = tokio::task::spawn_blocking(move || takeover::receive(&dir)).await??;
            (s, Some(a))
        }
        _ => (takeover::Sockets::default(), None),
    };
    let outbound_l = bind(&mut sockets, cfg.outbound, "outbound").await?;
    let admin_l = bind(&mut sockets, cfg.admin, "admin").await?;
    let outbound = outbound_l.local_addr()?;
    let admin = admin_l.local_addr()?;
    config.note_own_port(outbound.port());
    config.note_own_port(admin.port());
    tasks.push(tokio::spawn(server::serve_outbound(
        outbound_l,
        server::outbound_stack(config.clone(), forward.clone()),
        config.clone(),
        shutdown_rx.clone(),
    )));
    tasks.push(tokio::spawn(admin::serve(
        admin_l,
        config.clone(),
        // /ready reports an inbound that refuses everything (no certificate).
        workload.clone().filter(|_| cfg.app_port.is_some()),
        shutdown_rx.clone(),
    )));
    let capture = match cfg.capture {
        Some(addr) => {
            let l = bind(&mut sockets, addr, "capture").await?;
            let a = l.local_addr()?;
            config.note_own_port(a.port());
            // Capture redirects the workload's IPv6 connections to ::1 on
            // the same port: listen there too, where the host has IPv6.
            let v6 = match ipv6_twin(addr) {
                Some(v6) => sockets.tcp("capture-v6", v6).await.ok(),
                None => None,
            };
            for l in std::iter::once(l).chain(v6) {
                tasks.push(tokio::spawn(transparent::serve_captured(
                    l,
                    server::outbound_stack(config.clone(), forward.clone()),
                    config.clone(),
                    workload.clone(),
                    config.metrics.clone(),
                    shutdown_rx.clone(),
                )));
            }
            Some(a)
        }
        None => None,
    };
    let dns = match cfg.dns {
        Some(addr) => {
            let socket = sockets
                .udp("dns", addr)
                .await
                .with_context(|| format!("cannot bind the dns listener on {addr}: change --dns"))?;
            let a = socket.local_addr()?;
            let server = dns::Dns::new(config.clone(), workload.clone(), cfg.dns_upstream);
            let v6 = match ipv6_twin(addr) {
                Some(v6) => sockets.udp("dns-v6", v6).await.ok(),
                None => None,
            };
            for socket in std::iter::once(socket).chain(v6) {
                tasks.push(tokio::spawn(dns::serve(
                    socket,
                    server.clone(),
                    shutdown_rx.clone(),
                )));
            }
            Some(a)
        }
        None => None,
    };
    let inbound = match cfg.app_port {
        Some(port) => {
            let l = bind(&mut sockets, cfg.inbound, "inbound").await?;
            let a = l.local_addr()?;
            config.note_own_port(a.port());
            tasks.push(tokio::spawn(server::serve_inbound(
                l,
                config.clone(),
                port,
                forward.clone(),
                workload.clone(),
                shutdown_rx.clone(),
            )));
            Some(a)
        }
        None if cfg.gateway => {
            let l = bind(&mut sockets, cfg.inbound, "gateway").await?;
            let a = l.local_addr()?;
            config.note_own_port(a.port());
            tasks.push(tokio::spawn(gateway::serve(
                l,
                config.clone(),
                workload.clone(),
                shutdown_rx.clone(),
            )));
            Some(a)
        }
        None => None,
    };
    let mut upstreams = Vec::new();
    // Fixed subscriptions (never expire); saved ones are learned ones.
    let mut subscriptions: BTreeSet<String> = BTreeSet::new();
    for (name, addr) in &cfg.upstreams {
        let l = sockets
            .tcp(&format!("upstream {name}"), *addr)
            .await
            .with_context(|| format!("cannot listen on upstream {addr} (--upstream {name})"))?;
        config.note_own_port(l.local_addr()?.port());
        upstreams.push((name.clone(), l.local_addr()?));
        let (svc, ns) = name.split_once('.').unwrap_or((name, &cfg.namespace));
        subscriptions.insert(format!("{svc}.{ns}"));
        tasks.push(tokio::spawn(server::serve_tcp_upstream(
            l,
            (ns.to_string(), svc.to_string()),
            config.clone(),
            workload.clone(),
            shutdown_rx.clone(),
        )));
    }
    for s in &cfg.subscribe {
        let (svc, ns) = s.split_once('.').unwrap_or((s, &cfg.namespace));
        subscriptions.insert(format!("{svc}.{ns}"));
    }
    if control_plane {
        let mut settings = xds::XdsSettings::from_config(&cfg);
        // Register the port actually bound (the flag may say :0).
        settings.hello.port = inbound.map(|a| u32::from(a.port())).unwrap_or(0);
        settings.hello.gateway = cfg.gateway;
        tasks.push(tokio::spawn(xds::run(
            settings,
            config.clone(),
            workload.clone(),
            learn_rx,
            subscriptions::Subscriptions::new(subscriptions, saved_subs),
            shutdown_rx.clone(),
        )));
    }
    if let Some(port) = cfg.app_port {
        tasks.push(tokio::spawn(health::run(
            SocketAddr::from(([127, 0, 0, 1], port)),
            cfg.probe.clone(),
            config.clone(),
            config.life.clone(),
            config.probe_failure.clone(),
            shutdown_rx.clone(),
        )));
    }
    let (handed_over_tx, handed_over) = watch::channel(false);
    if let Some(ack) = ack {
        let unused = sockets.unused();
        if !unused.is_empty() {
            tracing::info!(sockets = ?unused, "closing sockets taken over that these flags do not use");
        }
        ack.done()
            .context("--takeover: the running proxy went away before it was told to stop")?;
        tracing::info!("took over: the previous proxy drains and stops");
    }
    if let Some(dir) = &cfg.state_dir {
        tasks.push(tokio::spawn(takeover::serve(
            dir.clone(),
            std::mem::take(&mut sockets.kept),
            handed_over_tx,
            config.life.clone(),
            shutdown_rx.clone(),
        )));
    }
    tracing::info!(%outbound, ?inbound, %admin, service = %cfg.service, instance = %cfg.instance, "mesh-proxy started");
    Ok(Proxy {
        registered: control_plane && inbound.is_some(),
        handed_over,
        workload: workload.clone(),
        outbound,
        inbound,
        admin,
        upstreams,
        capture,
        dns,
        config,
        shutdown,
        tasks,
    })
}
