//! The listeners: outbound HTTP (the tower stack), inbound (HTTP to the app,
//! or opaque TCP), and one local TCP port per `--upstream`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{Request, Response};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tower::{Service, ServiceBuilder};

use crate::accesslog::{TcpEnds, TcpStart};
use crate::balance::BalanceLayer;
use crate::conn::{accept, AcceptBackoff, ConnClock, Watched};
use crate::error::ProxyError;
use crate::forward::Forward;
use crate::metrics::{ConnGuard, Metrics, Party, Recorder, Tally};
use crate::retry::RetryLayer;
use crate::route::{choose, RouteLayer};
use crate::state::Config;
use crate::target::RouteInfo;
use crate::timeout::TimeoutLayer;
use crate::tls::{Workload, ALPN_TCP};
use crate::{authz, Body};
use raftmesh_api::identity::spiffe_of_der;
use raftmesh_api::MtlsMode;

/// The outbound request path, outermost first. Route first (everything
/// after needs the target); injected faults (outside the timeout and
/// retries: they stand for the callee); the timeout wraps retries (a
/// route's timeout covers the whole request); retry wraps balance (each
/// attempt may pick another endpoint); forward last.
pub fn outbound_stack(config: Arc<Config>, forward: Forward) -> OutboundStack {
    ServiceBuilder::new()
        .layer(RouteLayer::new(config))
        .layer(crate::fault::FaultLayer)
        .layer(TimeoutLayer)
        .layer(RetryLayer)
        .layer(BalanceLayer)
        .service(forward)
}

/// The composed outbound service.
pub type OutboundStack = crate::route::Route<
    crate::fault::Fault<
        crate::timeout::Timeout<crate::retry::Retry<crate::balance::Balance<Forward>>>,
    >,
>;

/// The answer to a request: its response, or the proxy's own error (in
/// gRPC for a gRPC call); the HTTP status metrics count it under (an
/// error's own, though a gRPC caller gets it as a 200 with a grpc-status);
/// and the proxy's error code, if it answered one.
pub(crate) fn finish(
    result: Result<Response<Body>, ProxyError>,
    metrics: &Metrics,
    grpc: bool,
) -> (Response<Body>, u16, &'static str) {
    match result {
        Ok(r) => {
            let code = r.status().as_u16();
            (r, code, "")
        }
        Err(e) => {
            metrics.error(e.code());
            tracing::debug!(code = e.code(), error = %e, "answered with an error");
            let code = e.status().as_u16();
            let error = e.code();
            (e.into_response_for(grpc), code, error)
        }
    }
}

/// Counts an answered request: now, or (a gRPC answer whose status comes
/// in its trailers) when its trailers arrive.
pub(crate) fn count<B: hyper::body::Body>(
    recorder: &Arc<Recorder>,
    route: Option<&Arc<RouteInfo>>,
    resp: &Response<B>,
    grpc: bool,
    (code, error): (u16, &'static str),
    started: Instant,
) -> Option<Box<Tally>> {
    // This proxy's own answer (an error code already here is the
    // proxy's) to a request that reached no endpoint.
    let local = !error.is_empty() && !route.is_some_and(|r| r.reached());
    let error = if error.is_empty() && (code >= 400 || grpc) {
        crate::error::code_of(resp.headers())
    } else {
        error
    };
    let status = if grpc {
        crate::metrics::grpc_status(resp.headers().get("grpc-status"))
    } else {
        ""
    };
    if grpc && status.is_empty() && !hyper::body::Body::is_end_stream(resp.body()) {
        return Some(Tally::new(
            recorder.clone(),
            route.cloned(),
            code,
            error,
            started,
        ));
    }
    recorder.record(
        route.map(|r| &**r),
        (code, status, error),
        local,
        started.elapsed(),
    );
    None
}

/// Serves outbound HTTP until `shutdown` turns true.
pub async fn serve_outbound(
    listener: TcpListener,
    stack: OutboundStack,
    config: Arc<Config>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut backoff = AcceptBackoff::default();
    loop {
        let stream = tokio::select! {
            s = accept(&listener, &mut backoff, "outbound") => s,
            _ = crate::stopped(&mut shutdown) => return,
            _ = crate::health::handing_over(&config.life) => return,
        };
        tokio::spawn(outbound_connection(
            stream,
            stack.clone(),
            shutdown.clone(),
            config.clone(),
        ));
    }
}

/// Serves one outbound HTTP connection (from the outbound listener, or a
/// captured one that carries HTTP for a mesh service).
pub(crate) async fn outbound_connection(
    stream: TcpStream,
    stack: OutboundStack,
    mut conn_stop: watch::Receiver<bool>,
    config: Arc<Config>,
) {
    let (metrics, limits, life, open) = (
        config.metrics.clone(),
        config.conn_limits,
        config.life.clone(),
        config.outbound_open.clone(),
    );
    let _open = OpenCount::new(open);
    let _ = stream.set_nodelay(true);
    let clock = ConnClock::new(limits);
    let mut guard = ConnGuard::open(&metrics, "outbound");
    // The peer is the local app.
    let io = Watched::new(guard.peer(&Party::default(), stream), clock.clone());
    let svc_clock = clock.clone();
    let svc_life = life.clone();
    let recorder = Arc::new(Recorder::outbound(&config));
    let svc_config = config;
    let svc = service_fn(move |req: Request<Incoming>| {
        let mut stack = stack.clone();
        let metrics = metrics.clone();
        let in_flight = svc_clock.request();
        let life = svc_life.clone();
        let config = svc_config.clone();
        let recorder = recorder.clone();
        async move {
            let started = Instant::now();
            let mut req = req;
            // First: the access log records the trace the span is in.
            let hop = crate::trace::start(&config, "outbound", &mut req);
            let log = crate::accesslog::Start::new(
                config.current().access_log.as_ref(),
                &config.taps,
                req.method(),
                req.uri(),
                req.headers(),
                started,
            );
            let info: Arc<RouteInfo> = Arc::default();
            let mut req = req.map(|b| match &log {
                Some(l) => l.counting(b.boxed()),
                None => b.boxed(),
            });
            req.extensions_mut().insert(info.clone());
            let grpc = crate::error::is_grpc(req.headers());
            let tunnel = crate::upgrade::requested(&req)
                .then(|| (req.method().clone(), hyper::upgrade::on(&mut req)));
            let (mut resp, code, error) = finish(stack.call(req).await, &metrics, grpc);
            if let Some((method, client)) = tunnel {
                if let Some(stream) = resp
                    .extensions_mut()
                    .remove::<crate::egress::Tunnel>()
                    .and_then(|t| t.take())
                {
                    // A CONNECT out of the mesh.
                    crate::upgrade::splice_tcp(client, stream, Some(closing_guard(&life)));
                } else if crate::upgrade::switched(&method, &resp) {
                    crate::upgrade::splice(client, &mut resp, Some(closing_guard(&life)));
                }
            }
            let log = log.map(|l| {
                let (service, subset) = info.names();
                l.pending(
                    &config.access_log,
                    "outbound",
                    config.own_spiffe(),
                    None,
                    service,
                    subset,
                    info.endpoint().map(|e| e.addr),
                    &resp,
                )
            });
            let tally = count(&recorder, Some(&info), &resp, grpc, (code, error), started);
            if let Some(h) = &hop {
                crate::trace::answered(h, "", Some(&info), code, error, true);
            }
            Ok::<_, Infallible>(resp.map(|b| {
                crate::guard::Guarded::plain(b)
                    .holding(in_flight)
                    .logging(log)
                    .tallying(tally)
                    .tracing(hop)
            }))
        }
    });
    let server = http_server();
    let conn = server.serve_connection_with_upgrades(TokioIo::new(io), svc);
    tokio::pin!(conn);
    let handing_over = crate::health::handing_over(&life);
    tokio::pin!(handing_over);
    let mut graceful = false;
    // A stopped proxy closes its open connections too; one a new proxy
    // took over from closes them once their requests are answered.
    loop {
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(error = %e, "outbound connection ended with an error");
                }
                return;
            }
            _ = &mut handing_over, if !graceful => {
                graceful = true;
                conn.as_mut().graceful_shutdown();
            }
            why = clock.expired() => {
                tracing::debug!(?why, "closed an outbound client connection");
                return;
            }
            _ = crate::stopped(&mut conn_stop) => return,
        }
    }
}

/// The guard of a tunnel the caller's side opens: it ends when the proxy
/// closes (the callee's side decides the policies).
fn closing_guard(life: &watch::Sender<crate::health::Life>) -> crate::upgrade::Guard {
    crate::upgrade::Guard {
        life: life.clone(),
        policy: None,
    }
}

/// The HTTP/1.1 + h2c server every listener uses: small HTTP/2 windows
/// (memory per connection stays bounded); request-head and idle limits are
/// `conn.rs`'s.
fn http_server() -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    // Request-head and idle limits are `conn.rs`'s: hyper's header-read
    // timer also runs while a keep-alive connection waits.
    b.http1()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(None);
    b.http2().timer(hyper_util::rt::TokioTimer::new());
    b
}

/// Whether the first (up to four) bytes of a connection look like HTTP/1
/// or the HTTP/2 preface.
pub fn looks_like_http(b: &[u8]) -> bool {
    const STARTS: [&[u8; 4]; 10] = [
        b"GET ", b"POST", b"PUT ", b"DELE", b"HEAD", b"OPTI", b"PATC", b"TRAC", b"CONN", b"PRI ",
    ];
    let b = &b[..b.len().min(4)];
    !b.is_empty() && STARTS.iter().any(|s| s.starts_with(b))
}

/// How long inbound waits for a client's first bytes before treating the
/// connection as opaque TCP (server-speaks-first protocols).
const SNIFF_WAIT: Duration = Duration::from_millis(300);

pub(crate) async fn sniff(stream: &TcpStream) -> bool {
    let mut buf = [0u8; 4];
    let deadline = tokio::time::Instant::now() + SNIFF_WAIT;
    loop {
        match tokio::time::timeout_at(deadline, stream.peek(&mut buf)).await {
            Ok(Ok(0)) | Err(_) | Ok(Err(_)) => return false,
            Ok(Ok(n)) if n >= 4 || !looks_like_http(&buf[..n]) => {
                return looks_like_http(&buf[..n])
            }
            // A prefix of a method so far: wait for the rest.
            Ok(Ok(_)) => tokio::time::sleep(Duration::from_millis(2)).await,
        }
    }
}

/// Counts an open connection while it lives (a drain waits for none).
pub(crate) struct OpenCount(Arc<std::sync::atomic::AtomicUsize>);

impl OpenCount {
    pub(crate) fn new(n: Arc<std::sync::atomic::AtomicUsize>) -> Self {
        n.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Self(n)
    }
}

impl Drop for OpenCount {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Serves inbound: mutual TLS from other proxies (required in strict mode,
/// optional in permissive), authorization by the caller's identity, then
/// HTTP to the app on `app_port`, or opaque TCP.
pub async fn serve_inbound(
    listener: TcpListener,
    config: Arc<Config>,
    app_port: u16,
    forward: Forward,
    workload: Option<Arc<Workload>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let app: SocketAddr = SocketAddr::from(([127, 0, 0, 1], app_port));
    let inbound = Arc::new(Inbound {
        config: config.clone(),
        member: workload.is_some(),
        last_refusal_log: Default::default(),
        forward,
        link: crate::forward::AppLink::new(app),
        app,
        app_port,
    });
    let mut backoff = AcceptBackoff::default();
    loop {
        let stream = tokio::select! {
            s = accept(&listener, &mut backoff, "inbound") => s,
            _ = crate::stopped(&mut shutdown) => return,
            // A drain: no new connection (a late caller's is refused, and
            // retried elsewhere: it never reached the app).
            _ = crate::health::closing(&config.life) => {
                tracing::info!("draining: the inbound listener is closed");
                return;
            }
        };
        let _ = stream.set_nodelay(true);
        let (inbound, workload) = (inbound.clone(), workload.clone());
        let mut conn_stop = shutdown.clone();
        let open = OpenCount::new(config.inbound_open.clone());
        tokio::spawn(async move {
            let _open = open;
            let guard = ConnGuard::open(&inbound.config.metrics, "inbound");
            // Polled when the proxy stops, not at each of the connection's wakes.
            let stopped = crate::conn::Quiet::new(Box::pin(crate::stopped(&mut conn_stop)));
            tokio::select! {
                biased;
                _ = inbound.connection(stream, workload, guard) => {}
                _ = stopped => {}
            }
        });
    }
}

/// What every connection of an inbound listener shares (one per
/// listener: a connection holds a pointer to it, not a copy).
struct Inbound {
    config: Arc<Config>,
    /// A mesh proxy (with a control plane), not a `--config-file` one.
    member: bool,
    /// When a refused connection was last logged (unix ms).
    last_refusal_log: std::sync::atomic::AtomicU64,
    forward: Forward,
    /// HTTP/1.1 connections to the app, shared by all inbound connections.
    link: crate::forward::AppLink,
    app: SocketAddr,
    app_port: u16,
}

/// Why the inbound refuses every connection now, if it does: a mesh proxy
/// in strict mode has no workload certificate yet (it never falls back to
/// plaintext). Shown on `/ready` too.
pub fn refusing_all(config: &Config, workload: Option<&Workload>) -> Option<&'static str> {
    let w = workload?;
    (config.current().authz.mtls == MtlsMode::Strict && w.tls().is_none()).then_some(
        "no workload certificate yet: strict mutual TLS refuses every inbound connection until meshd issues one",
    )
}

/// Resolves when the mesh switches from permissive to strict, for a
/// connection that presented no client certificate to a mesh proxy
/// (`applies`): such a connection is then closed. (One opened while strict
/// has each request refused with 403 instead, which says why.)
async fn until_strict(config: &Config, applies: bool) {
    if !applies || config.current().authz.mtls == MtlsMode::Strict {
        return std::future::pending().await;
    }
    let mut changes = config.watch();
    loop {
        if config.current().authz.mtls == MtlsMode::Strict {
            return;
        }
        if changes.changed().await.is_err() {
            return std::future::pending().await;
        }
    }
}

/// Resolves (and says why in the log) when an inbound connection must end
/// whatever it is doing: the mesh turned strict and it has no client
/// certificate (`plaintext_member`: a mesh proxy's plaintext connection),
/// its head or idle limit passed, or its caller was revoked.
async fn must_end(
    config: &Arc<Config>,
    plaintext_member: bool,
    clock: &ConnClock,
    who: Option<String>,
) {
    tokio::select! {
        _ = until_strict(config, plaintext_member) => {
            tracing::info!("closed a connection without a client certificate: the mesh switched to strict mTLS");
        }
        why = clock.expired() => {
            tracing::debug!(?why, "closed an inbound connection");
        }
        _ = crate::guard::until_revoked(config.clone(), who) => {
            tracing::info!("closed a connection from a revoked identity");
            config.metrics.error("revoked");
        }
    }
}

impl Inbound {
    /// Relays an opaque TCP connection from `who` to the app at `app`
    /// until either side closes, the mesh turns strict (when the connection
    /// has no client certificate: `ends_when_strict`) or a committed policy
    /// denies it; then writes its access log record.
    async fn relay_to_app<S>(
        &self,
        stream: &mut crate::metrics::Counted<S>,
        app: SocketAddr,
        who: Option<String>,
        ends_when_strict: bool,
    ) where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        let config = &self.config;
        let log = TcpStart::new(config.current().access_log.as_ref());
        let ended = tokio::select! {
            r = relay_stream(&mut *stream, app) => r.err(),
            _ = until_strict(config, ends_when_strict) => {
                tracing::info!(caller = ?who, "closed a TCP connection without a client certificate: the mesh switched to strict mTLS");
                Some("mtls-required")
            }
            _ = crate::guard::until_denied(config.clone(), who.clone()) => {
                tracing::info!(caller = ?who, "closed a TCP connection a committed policy now denies");
                Some("denied")
            }
        };
        if let Some(l) = log {
            let ends = TcpEnds {
                direction: "inbound",
                source: who,
                destination: config.own_spiffe(),
                service: config.identity.service.clone(),
                endpoint: Some(app),
            };
            l.finish(&config.access_log, ends, stream.totals(), ended);
        }
    }

    /// Logs a refusal at most every 10 s (a flood of them says nothing new).
    fn refused(&self, why: &str) {
        self.config.metrics.error("mtls-required");
        let now = crate::unix_ms();
        let last = self
            .last_refusal_log
            .load(std::sync::atomic::Ordering::Relaxed);
        if now.saturating_sub(last) >= 10_000 {
            self.last_refusal_log
                .store(now, std::sync::atomic::Ordering::Relaxed);
            tracing::warn!(reason = why, "refused an inbound connection");
        }
    }

    async fn connection(
        self: Arc<Self>,
        stream: TcpStream,
        workload: Option<Arc<Workload>>,
        mut guard: ConnGuard,
    ) {
        if let Some(why) = refusing_all(&self.config, workload.as_deref()) {
            self.refused(why);
            return;
        }
        let member = workload.is_some();
        let tls = workload.and_then(|w| w.tls());
        let strict = self.config.current().authz.mtls == MtlsMode::Strict;
        let mut first = [0u8; 1];
        // Redirected by capture from another port: TCP to it, TLS too.
        let to = crate::transparent::passthrough(&stream, self.app_port);
        let is_tls = to.is_none()
            && matches!(
                tokio::time::timeout(SNIFF_WAIT, stream.peek(&mut first)).await,
                Ok(Ok(1)) if first[0] == 0x16
            );
        match (is_tls, tls) {
            // Boxed: a TLS connection's state is large, and a plaintext
            // connection's future (the other branches) should not carry
            // room for it.
            (true, Some(tls)) => Box::pin(self.serve_tls(stream, tls, strict, guard)).await,
            (true, None) => {
                // TLS, but no certificate here yet to answer with.
                tracing::debug!("refused a TLS connection: this proxy has no certificate yet");
                self.config.metrics.error("tls-handshake");
                self.config
                    .metrics
                    .handshake("server", Some("no-certificate-here"));
            }
            (false, _) => {
                if to.is_none() && sniff(&stream).await {
                    // Plaintext HTTP: a mesh proxy refuses each request
                    // while the mesh is strict, and closes the connection
                    // when it turns strict.
                    let stream = guard.peer(&Party::default(), stream);
                    self.serve_http(stream, None).await;
                } else if strict && member {
                    self.refused("plaintext TCP to a strict mTLS mesh");
                } else if let Err(why) = authz::decide(&self.config.current().authz, None, "", "") {
                    tracing::info!(reason = %why, "denied an opaque TCP connection");
                } else {
                    let mut stream = guard.peer(&Party::default(), stream);
                    let app = to.unwrap_or(self.app);
                    // Boxed, as TLS: an HTTP connection's task carries no
                    // room for a relay's state.
                    Box::pin(self.relay_to_app(&mut stream, app, None, member)).await;
                }
            }
        }
    }

    /// A connection that opened with a TLS ClientHello: the handshake, then
    /// HTTP or (ALPN `raftmesh-tcp`) opaque TCP, authorized by the peer's
    /// identity.
    async fn serve_tls(
        self: Arc<Self>,
        stream: TcpStream,
        tls: Arc<crate::tls::Tls>,
        strict: bool,
        mut guard: ConnGuard,
    ) {
        let cfg = if strict {
            tls.server_strict.clone()
        } else {
            tls.server_permissive.clone()
        };
        let accepted = tokio::time::timeout(
            Duration::from_secs(5),
            tokio_rustls::TlsAcceptor::from(cfg).accept(stream),
        )
        .await;
        let metrics = &self.config.metrics;
        let s = match accepted {
            Ok(Ok(s)) => {
                metrics.handshake("server", None);
                s
            }
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "inbound TLS handshake refused");
                metrics.error("tls-handshake");
                metrics.handshake("server", Some(crate::metrics::handshake_failure(&e)));
                return;
            }
            Err(_) => {
                metrics.handshake("server", Some("timeout"));
                return;
            }
        };
        let (_, conn) = s.get_ref();
        let who = conn
            .peer_certificates()
            .and_then(|c| c.first())
            .and_then(|c| spiffe_of_der(c));
        let tcp = conn.alpn_protocol() == Some(ALPN_TCP);
        let mut s = guard.peer(&Party::caller(who.as_deref(), &self.config), s);
        if tcp {
            if let Err(why) = authz::decide(&self.config.current().authz, who.as_deref(), "", "") {
                tracing::info!(reason = %why, "denied an opaque TCP connection");
                self.config.metrics.error("denied");
                return;
            }
            let no_certificate = who.is_none();
            self.relay_to_app(&mut s, self.app, who, no_certificate)
                .await;
        } else {
            self.serve_http(s, who).await;
        }
    }

    /// Serves HTTP on an inbound connection: HTTP/1.1 on the fast path
    /// (`fastpath`) while it covers the requests, then hyper (HTTP/2,
    /// upgrades, ... and the rest of a connection the fast path handed on).
    async fn serve_http<I>(self: Arc<Self>, io: I, who: Option<String>)
    where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let config = self.config.clone();
        let clock = ConnClock::new(config.conn_limits);
        let mut io = Watched::new(io, clock.clone());
        let recorder = Arc::new(Recorder::inbound(
            &config.metrics,
            Party::caller(who.as_deref(), &config),
            Party::own(&config),
        ));
        let mut graceful = false;
        let mut pre = bytes::BytesMut::new();
        if config.conn_limits.http1_fast_path {
            let draining = std::sync::atomic::AtomicBool::new(false);
            let c = crate::fastpath::Conn {
                config: &config,
                link: &self.link,
                app_port: self.app_port,
                member: self.member,
                who: who.as_deref(),
                recorder: &recorder,
                clock: &clock,
                draining: &draining,
            };
            let fast = crate::fastpath::serve(&mut io, &c);
            // What ends the connection, polled only when it woke.
            let ends = crate::conn::Quiet::new(Box::pin(async {
                let closing = crate::health::closing(&config.life);
                tokio::pin!(closing);
                let mut drain = false;
                loop {
                    tokio::select! {
                        // A drain: the request in flight is answered, then
                        // the connection closes; an idle one closes now.
                        _ = &mut closing, if !drain => {
                            drain = true;
                            draining.store(true, std::sync::atomic::Ordering::Relaxed);
                            if clock.idle_now() {
                                return;
                            }
                        }
                        () = must_end(&config, self.member && who.is_none(), &clock, who.clone()) => return,
                    }
                }
            }));
            let served = tokio::select! {
                biased;
                s = fast => s,
                () = ends => return,
            };
            graceful = draining.load(std::sync::atomic::Ordering::Relaxed);
            match served {
                crate::fastpath::Served::Closed => return,
                crate::fastpath::Served::Fallback(buf, why) => {
                    config.metrics.fallback(why);
                    pre = buf;
                }
            }
        }
        let io = crate::fastpath::Rewind::new(pre, io);
        self.serve_hyper_boxed(io, who, clock, recorder, graceful)
            .await
    }

    /// [`Self::serve_hyper`], boxed where it is made: the fast path's task
    /// carries no room for hyper's connection.
    fn serve_hyper_boxed<I>(
        self: Arc<Self>,
        io: I,
        who: Option<String>,
        clock: Arc<ConnClock>,
        recorder: Arc<Recorder>,
        graceful: bool,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>
    where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        Box::pin(self.serve_hyper(io, who, clock, recorder, graceful))
    }

    /// Serves HTTP/1.1 or HTTP/2 on an inbound connection with hyper;
    /// `graceful`: a drain began already.
    async fn serve_hyper<I>(
        self: Arc<Self>,
        io: I,
        who: Option<String>,
        clock: Arc<ConnClock>,
        recorder: Arc<Recorder>,
        graceful: bool,
    ) where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let (config, member, who_none) = (self.config.clone(), self.member, who.is_none());
        let who_string = who.clone();
        let svc_clock = clock.clone();
        let who: Option<Arc<str>> = who.map(Arc::from);
        let svc = service_fn(move |req: Request<Incoming>| {
            let (this, who, recorder) = (self.clone(), who.clone(), recorder.clone());
            let in_flight = svc_clock.request();
            async move {
                let started = Instant::now();
                let mut req = req;
                let hop = crate::trace::start(&this.config, "inbound", &mut req);
                let log = crate::accesslog::Start::new(
                    this.config.current().access_log.as_ref(),
                    &this.config.taps,
                    req.method(),
                    req.uri(),
                    req.headers(),
                    started,
                );
                let strict = this.config.current().authz.mtls == MtlsMode::Strict;
                let grpc = crate::error::is_grpc(req.headers());
                // A CONNECT names an authority, no path: it is decided as
                // opaque TCP below.
                let connect = req.method() == http::Method::CONNECT;
                let normal = if connect {
                    Ok(None)
                } else {
                    crate::path::normalise_uri(req.uri())
                };
                // A mesh proxy in strict mode serves no request without a
                // client certificate (plaintext, or TLS accepted while
                // permissive).
                let mut decided: Option<(http::Method, http::Uri)> = None;
                let mut tunnel: Option<hyper::upgrade::OnUpgrade> = None;
                let mut tunnel_to_app: Option<tokio::net::TcpStream> = None;
                let mut decided_opaque = false;
                let result = if this.member && strict && who.is_none() {
                    Err(ProxyError::MtlsRequired)
                } else if let Err(e) = normal {
                    Err(ProxyError::BadPath(e))
                } else {
                    // Authorization and the app see the one normal path.
                    if let Ok(Some(uri)) = normal {
                        *req.uri_mut() = uri;
                    }
                    let authz = this.config.current();
                    // A CONNECT tunnel carries anything: decided as opaque
                    // TCP (no method, no path), so a deny that covers the
                    // caller refuses it.
                    let (method, path) = if connect {
                        ("", "")
                    } else {
                        (req.method().as_str(), req.uri().path())
                    };
                    match authz::decide(&authz.authz, who.as_deref(), method, path) {
                        Err(why) => Err(ProxyError::Denied(why)),
                        Ok(())
                            if authz
                                .authz
                                .rate_limit
                                .as_ref()
                                .is_some_and(|l| !this.config.limiter.admit(l, who.as_deref())) =>
                        {
                            Err(ProxyError::RateLimited(
                                this.config.identity.service.clone(),
                            ))
                        }
                        Ok(()) => {
                            // Cheap clones (shared bytes): kept to decide again
                            // while a streaming answer flows.
                            decided = Some((req.method().clone(), req.uri().clone()));
                            if connect {
                                decided_opaque = true;
                            }
                            authz::set_caller(req.headers_mut(), who.as_deref());
                            let mut req = req.map(|b| {
                                let b = b.map_frame(authz::without_caller_trailers).boxed();
                                match &log {
                                    Some(l) => l.counting(b),
                                    None => b,
                                }
                            });
                            if crate::upgrade::requested(&req) {
                                tunnel = Some(hyper::upgrade::on(&mut req));
                            }
                            let sent = if tunnel.is_some() && req.method() == http::Method::CONNECT
                            {
                                this.link.open_tunnel().await.map(|app| {
                                    tunnel_to_app = Some(app);
                                    Response::new(crate::empty())
                                })
                            } else if req.version() == http::Version::HTTP_2 {
                                this.forward.send(req, this.app).await
                            } else if tunnel.is_some() {
                                this.link.send_upgrade(req).await
                            } else {
                                this.link.send(req).await
                            };
                            sent.map_err(|e| match e {
                                ProxyError::Connect(_) => ProxyError::AppUnavailable(this.app_port),
                                other => other,
                            })
                        }
                    }
                };
                let (mut resp, code, error) = finish(result, &this.config.metrics, grpc);
                // A tunnel (upgrade or CONNECT) lives on past the answer: it
                // ends when a committed policy stops allowing it.
                if let (Some(client), Some((method, uri))) = (tunnel, &decided) {
                    let (config, who, m, u) = (
                        this.config.clone(),
                        who.clone(),
                        method.clone(),
                        uri.clone(),
                    );
                    let member = this.member;
                    let still: crate::guard::StillAllowed = Box::new(move || {
                        let c = config.current();
                        // A plaintext tunnel ends when the mesh turns strict.
                        let plaintext_refused =
                            member && who.is_none() && c.authz.mtls == MtlsMode::Strict;
                        let (m, p) = if decided_opaque {
                            ("", "")
                        } else {
                            (m.as_str(), u.path())
                        };
                        !plaintext_refused && authz::decide(&c.authz, who.as_deref(), m, p).is_ok()
                    });
                    let guard = Some(crate::upgrade::Guard {
                        life: this.config.life.clone(),
                        policy: Some((this.config.clone(), still)),
                    });
                    match tunnel_to_app {
                        Some(app) => crate::upgrade::splice_tcp(client, app, guard),
                        None if crate::upgrade::switched(method, &resp) => {
                            crate::upgrade::splice(client, &mut resp, guard)
                        }
                        None => {}
                    }
                }
                // A streaming answer (no known length) ends when a committed
                // policy stops allowing it; a sized one cannot outlive the
                // decision by much.
                let streaming = hyper::body::Body::size_hint(resp.body()).exact().is_none()
                    && !hyper::body::Body::is_end_stream(resp.body());
                let resp = match decided {
                    Some((method, uri)) if streaming => {
                        let (config, who) = (this.config.clone(), who.clone());
                        let still = move || {
                            authz::decide(
                                &config.current().authz,
                                who.as_deref(),
                                method.as_str(),
                                uri.path(),
                            )
                            .is_ok()
                        };
                        resp.map(|b| crate::guard::Guarded::new(b, &this.config, Box::new(still)))
                    }
                    _ => resp.map(crate::guard::Guarded::plain),
                };
                let log = log.map(|l| {
                    l.pending(
                        &this.config.access_log,
                        "inbound",
                        who.as_deref().map(str::to_string),
                        this.config.own_spiffe(),
                        this.config.identity.service.clone(),
                        String::new(),
                        None,
                        &resp,
                    )
                });
                let tally = count(&recorder, None, &resp, grpc, (code, error), started);
                if let Some(h) = &hop {
                    crate::trace::answered(
                        h,
                        &this.config.identity.service,
                        None,
                        code,
                        error,
                        false,
                    );
                }
                let resp = resp.map(|b| {
                    b.holding(in_flight)
                        .logging(log)
                        .tallying(tally)
                        .tracing(hop)
                });
                Ok::<_, Infallible>(resp)
            }
        });
        let server = http_server();
        let conn = server.serve_connection_with_upgrades(TokioIo::new(io), svc);
        tokio::pin!(conn);
        let closing = crate::health::closing(&config.life);
        tokio::pin!(closing);
        let mut graceful = graceful;
        if graceful {
            conn.as_mut().graceful_shutdown();
        }
        loop {
            tokio::select! {
                r = conn.as_mut() => {
                    if let Err(e) = r {
                        tracing::debug!(error = %e, "inbound connection ended with an error");
                    }
                    return;
                }
                // A drain: answer what is in flight, then close (HTTP/1
                // `Connection: close` or an idle close, HTTP/2 GOAWAY).
                _ = &mut closing, if !graceful => {
                    graceful = true;
                    conn.as_mut().graceful_shutdown();
                }
                () = must_end(&config, member && who_none, &clock, who_string.clone()) => return,
            }
        }
    }
}

/// Relays `client` to `to` until either side closes; `Err` with the
/// mesh's error code when `to` cannot be reached.
pub(crate) async fn relay_stream<S>(mut client: S, to: SocketAddr) -> Result<(), &'static str>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    match tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(to)).await {
        Ok(Ok(mut upstream)) => {
            let _ = upstream.set_nodelay(true);
            let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
            Ok(())
        }
        _ => {
            tracing::debug!(%to, "cannot connect to relay a TCP connection");
            Err("upstream-connect")
        }
    }
}

/// Serves one `--upstream NAME=ADDR`: each local connection is relayed to
/// an endpoint of the service (trying up to three on connect failure).
pub async fn serve_tcp_upstream(
    listener: TcpListener,
    service: crate::compiled::ServiceId,
    config: Arc<Config>,
    workload: Option<Arc<Workload>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut backoff = AcceptBackoff::default();
    loop {
        let stream = tokio::select! {
            s = accept(&listener, &mut backoff, "upstream") => s,
            _ = crate::stopped(&mut shutdown) => return,
            _ = crate::health::handing_over(&config.life) => return,
        };
        let (config, service, workload) = (config.clone(), service.clone(), workload.clone());
        tokio::spawn(async move {
            // Counted open from the moment it is accepted.
            let guard = ConnGuard::open(&config.metrics, "outbound");
            let table = match config.current().service(&service).cloned() {
                Some(t) => Some(t),
                None => config.learn(&service, Duration::from_secs(2)).await,
            };
            let Some(t) = table else {
                tracing::warn!(service = ?service, "TCP upstream: no route; closing the connection");
                config.metrics.error("no-route");
                return;
            };
            relay_to_service(stream, &t, &config, workload.as_deref(), guard).await;
        });
    }
}

/// Relays one TCP connection to an endpoint of the service (mTLS when the
/// endpoint has an identity and this proxy a certificate), trying up to
/// three endpoints on connect failure.
pub(crate) async fn relay_to_service(
    client: TcpStream,
    t: &crate::compiled::ServiceTable,
    config: &Config,
    workload: Option<&Workload>,
    mut guard: ConnGuard,
) {
    let peer = Party {
        namespace: t.id.0.clone(),
        service: t.id.1.clone(),
        identity: String::new(),
    };
    // Counted from the destination's side: what the app sends, it gets.
    let mut client = guard.relayed_to(&peer, client);
    let log = TcpStart::new(config.current().access_log.as_ref());
    let (ended, endpoint) = relay_to_endpoint(&mut client, t, config, workload).await;
    if let Some(l) = log {
        let ends = TcpEnds {
            direction: "outbound",
            source: config.own_spiffe(),
            destination: None,
            service: t.id.1.clone(),
            endpoint,
        };
        l.finish(&config.access_log, ends, client.totals(), ended);
    }
}

/// [`relay_to_service`]'s tries: the error code if none worked, and the
/// endpoint of the last one.
async fn relay_to_endpoint<S>(
    client: &mut S,
    t: &crate::compiled::ServiceTable,
    config: &Config,
    workload: Option<&Workload>,
) -> (Option<&'static str>, Option<SocketAddr>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let stats = config.stats.service(&t.id);
    let mut last = None;
    for _ in 0..3 {
        let Some((rule, b)) = choose(&t.rules, &Request::new(())) else {
            break;
        };
        let Some(i) = crate::balance::pick(t, &t.rules[rule].backends[b], &stats.rr) else {
            config.metrics.error("no-healthy-endpoints");
            return (Some("no-healthy-endpoints"), last);
        };
        let ep = &t.endpoints[i];
        last = Some(ep.addr);
        match tokio::time::timeout(Duration::from_secs(1), TcpStream::connect(ep.addr)).await {
            Ok(Ok(mut up)) => {
                let _ = up.set_nodelay(true);
                match (&ep.server_name, workload.and_then(|w| w.tls())) {
                    (Some(name), Some(tls)) => {
                        let c = tokio_rustls::TlsConnector::from(tls.client_tcp.clone());
                        match c.connect(name.clone(), up).await {
                            Ok(mut s) => {
                                config.metrics.handshake("client", None);
                                let _ = tokio::io::copy_bidirectional(client, &mut s).await;
                                return (None, last);
                            }
                            Err(e) => {
                                config.metrics.handshake(
                                    "client",
                                    Some(crate::metrics::handshake_failure(&e)),
                                );
                                tracing::debug!(endpoint = %ep.addr, error = %e, "TCP upstream TLS failed; trying another")
                            }
                        }
                    }
                    _ => {
                        let _ = tokio::io::copy_bidirectional(client, &mut up).await;
                        return (None, last);
                    }
                }
            }
            _ => {
                tracing::debug!(endpoint = %ep.addr, "TCP upstream connect failed; trying another")
            }
        }
    }
    config.metrics.error("upstream-connect");
    (Some("upstream-connect"), last)
}

#[cfg(test)]
mod tests {
    use super::looks_like_http;

    #[test]
    fn http_is_told_from_other_protocols_by_its_first_bytes() {
        assert!(looks_like_http(b"GET / HTTP/1.1\r\n"));
        assert!(looks_like_http(b"PRI * HTTP/2.0\r\n"));
        assert!(looks_like_http(b"PO"), "a prefix may still become POST");
        assert!(!looks_like_http(b"\x16\x03\x01"), "TLS");
        assert!(!looks_like_http(b"HELLO redis"));
        assert!(!looks_like_http(b""));
    }
}
