//! The last step: send the request to the chosen endpoint over a pooled
//! connection (HTTP/1.1 or HTTP/2 prior knowledge, as the request came).

use std::net::SocketAddr;
use std::task::{Context, Poll};
use std::time::Duration;

use http::uri::{Authority, Scheme};
use http::{HeaderMap, Request, Response, Uri, Version};
use http_body_util::BodyExt;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use std::sync::Arc;

use rustls::pki_types::ServerName;

use crate::error::ProxyError;
use crate::stack::BoxFuture;
use crate::target::Upstream;
use crate::tls::{Alpn, MeshConnector, Targets, Workload};
use crate::Body;

/// Pooled HTTP/1.1 and HTTP/2 clients, mutual TLS to mesh workloads.
#[derive(Clone)]
pub struct Forward {
    h1: Client<MeshConnector, Body>,
    h2: Client<MeshConnector, Body>,
    targets: Targets,
    workload: Option<Arc<Workload>>,
}

impl Default for Forward {
    fn default() -> Self {
        Self::new(None, crate::metrics::Metrics::new())
    }
}

impl Forward {
    /// Clients with short connect timeouts and pooled idle connections;
    /// `workload` gives them a certificate for mTLS; their handshakes
    /// count in `metrics`.
    pub fn new(workload: Option<Arc<Workload>>, metrics: Arc<crate::metrics::Metrics>) -> Self {
        let targets = Targets::default();
        let conn = |alpn| MeshConnector {
            workload: workload.clone(),
            targets: targets.clone(),
            alpn,
            metrics: metrics.clone(),
        };
        let h1 = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .build(conn(Alpn::H1));
        let h2 = Client::builder(TokioExecutor::new())
            .http2_only(true)
            .pool_idle_timeout(Duration::from_secs(60))
            .build(conn(Alpn::H2));
        Self {
            h1,
            h2,
            targets,
            workload,
        }
    }

    /// Sends `req` to `addr`; with `server_name` (a mesh workload) over
    /// mTLS; with `dial`, on the connections pooled under that key (a
    /// peer's gateway, see [`crate::tls::gateway_authority`]).
    pub async fn send_to(
        &self,
        req: Request<Body>,
        addr: SocketAddr,
        server_name: Option<ServerName<'static>>,
        dial: Option<&str>,
    ) -> Result<Response<Body>, ProxyError> {
        let authority = match dial {
            Some(d) => d.to_string(),
            None => addr.to_string(),
        };
        if let Some(n) = server_name {
            // A mesh workload is reached over mTLS or not at all.
            if self.workload.as_ref().is_some_and(|w| w.tls().is_none()) {
                return Err(ProxyError::NoIdentity(addr.to_string()));
            }
            self.targets.set(&authority, addr, n);
        }
        self.send_via(req, addr, &authority).await
    }

    /// Sends `req` to `addr` (plaintext unless `addr` is a known mesh workload).
    pub async fn send(
        &self,
        req: Request<Body>,
        addr: SocketAddr,
    ) -> Result<Response<Body>, ProxyError> {
        self.send_via(req, addr, &addr.to_string()).await
    }

    async fn send_via(
        &self,
        mut req: Request<Body>,
        addr: SocketAddr,
        authority: &str,
    ) -> Result<Response<Body>, ProxyError> {
        let mut parts = req.uri().clone().into_parts();
        parts.scheme = Some(Scheme::HTTP);
        parts.authority = Authority::try_from(authority).ok();
        if parts.path_and_query.is_none() {
            parts.path_and_query = Some(http::uri::PathAndQuery::from_static("/"));
        }
        *req.uri_mut() = Uri::from_parts(parts).map_err(|_| ProxyError::BadRequest)?;
        if crate::upgrade::requested(&req) {
            crate::upgrade::strip_keeping_upgrade(req.headers_mut());
        } else {
            strip_hop_by_hop(req.headers_mut());
        }
        let client = if req.version() == Version::HTTP_2 {
            &self.h2
        } else {
            &self.h1
        };
        let limits = req
            .extensions()
            .get::<Upstream>()
            .map(|u| u.limits.clone())
            .unwrap_or_default();
        match crate::tls::DIAL.scope(limits, client.request(req)).await {
            Ok(resp) => Ok(resp.map(|b| b.boxed())),
            Err(e) if e.is_connect() => Err(ProxyError::Connect(addr.to_string())),
            Err(e) => match cut_before_answer(&e) {
                Some(Cut::Ended) => {
                    tracing::debug!(%addr, error = %e, "upstream closed the connection before any answer");
                    Err(ProxyError::Closed(addr.to_string()))
                }
                Some(Cut::Reset) => {
                    tracing::debug!(%addr, error = %e, "upstream reset the connection before any answer");
                    Err(ProxyError::ResetBeforeAnswer(addr.to_string()))
                }
                None if refused(&e) => {
                    tracing::debug!(%addr, error = %e, "upstream refused the request unprocessed");
                    Err(ProxyError::Refused(addr.to_string()))
                }
                None => {
                    tracing::debug!(%addr, error = %e, "upstream request failed");
                    Err(ProxyError::Reset(addr.to_string()))
                }
            },
        }
    }
}

/// Whether an HTTP/2 endpoint refused the stream before processing it
/// (RFC 9113 §8.7: such a request may be retried): `REFUSED_STREAM`, or
/// a graceful GOAWAY (`NO_ERROR`) whose last stream id left it out (h2
/// fails only those streams then; a GOAWAY with an error code may also
/// end streams the server did process, so it does not count).
fn refused(e: &hyper_util::client::legacy::Error) -> bool {
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(h2) = s.downcast_ref::<h2::Error>() {
            return h2.reason() == Some(h2::Reason::REFUSED_STREAM)
                || (h2.is_go_away() && h2.reason() == Some(h2::Reason::NO_ERROR));
        }
        source = s.source();
    }
    false
}

/// How a connection was cut before the answer's head.
enum Cut {
    /// It ended (hyper's "incomplete message"): typically a kept-alive
    /// connection the endpoint closed, idle, as this request went out.
    Ended,
    /// It was reset, or its TLS cut short: the same, when the endpoint
    /// closed it with the request unread in it (a proxy handing over);
    /// or an endpoint failing.
    Reset,
}

/// Whether, and how, the connection was cut before the answer's head. An
/// error of the request's own body (the caller's side) is not.
fn cut_before_answer(e: &hyper_util::client::legacy::Error) -> Option<Cut> {
    use std::io::ErrorKind::{BrokenPipe, ConnectionAborted, ConnectionReset, UnexpectedEof};
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(h) = s.downcast_ref::<hyper::Error>() {
            if h.is_user() {
                return None;
            }
            if h.is_incomplete_message() {
                return Some(Cut::Ended);
            }
        }
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            return matches!(
                io.kind(),
                ConnectionReset | BrokenPipe | ConnectionAborted | UnexpectedEof
            )
            .then_some(Cut::Reset);
        }
        source = s.source();
    }
    None
}

/// Removes the headers that describe one hop only.
pub fn strip_hop_by_hop(h: &mut HeaderMap) {
    for name in [
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authorization",
        "upgrade",
    ] {
        h.remove(name);
    }
    // `te: trailers` must pass (gRPC); any other te value is hop-by-hop.
    if h.get("te").is_some_and(|v| v != "trailers") {
        h.remove("te");
    }
}

impl tower::Service<Request<Body>> for Forward {
    type Response = Response<Body>;
    type Error = ProxyError;
    type Future = BoxFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let up = req
                .extensions()
                .get::<Upstream>()
                .cloned()
                .ok_or(ProxyError::BadRequest)?;
            this.send_to(req, up.addr, up.server_name, up.dial.as_deref())
                .await
        })
    }
}

/// The inbound side's link to the local app: HTTP/1.1 connections kept in
/// a small stack of idle ones, shared by every downstream connection. A
/// request takes an idle connection that is ready for one (or makes a new
/// one) and puts it back as soon as the answer's head is in; the connection
/// becomes ready again once the answer's body has been read. The app sees
/// about as many connections as there are requests in flight, not one per
/// downstream connection, which keeps memory per idle downstream connection
/// small (`bench/conns.sh`). Taking and giving back is a short lock around
/// a `Vec` — no pool key to hash, no checkout future — so the per-request
/// cost stays that of a dedicated connection (`docs/benchmarks.md`).
/// HTTP/2 downstream connections use the pooled client instead.
pub struct AppLink {
    app: SocketAddr,
    authority: http::HeaderValue,
    idle: std::sync::Mutex<Vec<hyper::client::conn::http1::SendRequest<Body>>>,
    /// The fast path's idle connections (`fastpath`): sockets, between
    /// answers.
    raw: std::sync::Mutex<Vec<tokio::net::TcpStream>>,
}

/// Idle connections to the app kept at most; more are closed.
const APP_IDLE_MAX: usize = 256;

impl AppLink {
    /// A link to the app at `app` (nothing is connected yet).
    pub fn new(app: SocketAddr) -> Self {
        let authority = http::HeaderValue::try_from(app.to_string())
            .unwrap_or_else(|_| http::HeaderValue::from_static("localhost"));
        Self {
            app,
            authority,
            idle: std::sync::Mutex::new(Vec::new()),
            raw: std::sync::Mutex::new(Vec::new()),
        }
    }

    /// The app's address.
    pub fn app(&self) -> SocketAddr {
        self.app
    }

    /// The most recently kept fast-path connection the app has not closed
    /// (as far as the reactor has seen: a closed one reads as ready, and
    /// an open, quiet one costs no system call to tell), if any.
    pub fn take_raw(&self) -> Option<tokio::net::TcpStream> {
        let mut raw = self
            .raw
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        while let Some(s) = raw.pop() {
            match s.try_read(&mut [0u8; 1]) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Some(s),
                // Closed, or bytes nobody asked for: not reusable.
                _ => {}
            }
        }
        None
    }

    /// Keeps a fast-path connection after a whole answer (closed when
    /// [`APP_IDLE_MAX`] are kept already).
    pub fn give_back_raw(&self, s: tokio::net::TcpStream) {
        let mut raw = self
            .raw
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if raw.len() < APP_IDLE_MAX {
            raw.push(s);
        }
    }

    fn idle(
        &self,
    ) -> std::sync::MutexGuard<'_, Vec<hyper::client::conn::http1::SendRequest<Body>>> {
        // Nothing panics while holding it; if something did, the Vec is
        // still a valid list of connections.
        self.idle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The most recently used kept connection that can take a request now;
    /// closed ones are dropped on the way.
    fn take(&self) -> Option<hyper::client::conn::http1::SendRequest<Body>> {
        let mut idle = self.idle();
        let mut i = idle.len();
        while i > 0 {
            i -= 1;
            if idle[i].is_closed() {
                idle.swap_remove(i);
            } else if idle[i].is_ready() {
                return Some(idle.swap_remove(i));
            }
        }
        None
    }

    fn give_back(&self, sender: hyper::client::conn::http1::SendRequest<Body>) {
        let mut idle = self.idle();
        if idle.len() < APP_IDLE_MAX && !sender.is_closed() {
            idle.push(sender);
        }
    }

    async fn connect(&self) -> Result<hyper::client::conn::http1::SendRequest<Body>, ProxyError> {
        let connect_error = || ProxyError::Connect(self.app.to_string());
        let stream = tokio::time::timeout(
            Duration::from_secs(2),
            tokio::net::TcpStream::connect(self.app),
        )
        .await
        .map_err(|_| connect_error())?
        .map_err(|_| connect_error())?;
        let _ = stream.set_nodelay(true);
        let (sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .map_err(|_| connect_error())?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "connection to the app ended with an error");
            }
        });
        Ok(sender)
    }

    /// A TCP connection to the app, for a CONNECT tunnel.
    pub async fn open_tunnel(&self) -> Result<tokio::net::TcpStream, ProxyError> {
        let stream = tokio::time::timeout(
            Duration::from_secs(2),
            tokio::net::TcpStream::connect(self.app),
        )
        .await
        .map_err(|_| ProxyError::Connect(self.app.to_string()))?
        .map_err(|_| ProxyError::Connect(self.app.to_string()))?;
        let _ = stream.set_nodelay(true);
        Ok(stream)
    }

    /// Sends an upgrade request to the app on a connection of its own (it
    /// becomes the tunnel if the app switches protocols).
    pub async fn send_upgrade(&self, mut req: Request<Body>) -> Result<Response<Body>, ProxyError> {
        let path = req
            .uri()
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
        *req.uri_mut() = Uri::from(path);
        crate::upgrade::strip_keeping_upgrade(req.headers_mut());
        if !req.headers().contains_key(http::header::HOST) {
            req.headers_mut()
                .insert(http::header::HOST, self.authority.clone());
        }
        let stream = self.open_tunnel().await?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .map_err(|_| ProxyError::Connect(self.app.to_string()))?;
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(error = %e, "upgraded connection to the app ended with an error");
            }
        });
        sender
            .send_request(req)
            .await
            .map(|r| r.map(|b| b.boxed()))
            .map_err(|_| ProxyError::Reset(self.app.to_string()))
    }

    /// Sends `req` to the app. A request a kept connection could not take
    /// (the app had closed it while idle) goes out again on a new one.
    pub async fn send(&self, mut req: Request<Body>) -> Result<Response<Body>, ProxyError> {
        let path = req
            .uri()
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
        *req.uri_mut() = Uri::from(path);
        *req.version_mut() = Version::HTTP_11;
        strip_hop_by_hop(req.headers_mut());
        if !req.headers().contains_key(http::header::HOST) {
            req.headers_mut()
                .insert(http::header::HOST, self.authority.clone());
        }
        let mut kept = self.take();
        loop {
            let reused = kept.is_some();
            let mut sender = match kept.take() {
                Some(s) => s,
                None => self.connect().await?,
            };
            if sender.ready().await.is_err() {
                if reused {
                    continue;
                }
                return Err(ProxyError::Reset(self.app.to_string()));
            }
            match sender.try_send_request(req).await {
                Ok(resp) => {
                    self.give_back(sender);
                    return Ok(resp.map(|b| b.boxed()));
                }
                Err(mut e) => match e.take_message() {
                    // Never written: safe to send on a new connection.
                    Some(r) if reused => req = r,
                    _ => {
                        tracing::debug!(app = %self.app, error = %e.error(), "request to the app failed");
                        return Err(ProxyError::Reset(self.app.to_string()));
                    }
                },
            }
        }
    }
}
