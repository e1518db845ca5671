//! The last step: send the request to the chosen endpoint over a pooled
//! connection (HTTP/1.1 or HTTP/2 prior knowledge, as the request came).

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use http::uri::{Authority, Scheme};
use http::{HeaderMap, Request, Response, Uri, Version};
use http_body_util::BodyExt;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use std::sync::Arc;

use rustls::pki_types::ServerName;

use crate::balance::Upstream;
use crate::error::ProxyError;
use crate::tls::{Alpn, MeshConnector, Targets, Workload};
use crate::Body;

/// Pooled HTTP/1.1 and HTTP/2 clients, mutual TLS to mesh workloads.
#[derive(Clone)]
pub struct Forward {
    h1: Client<MeshConnector, Body>,
    h2: Client<MeshConnector, Body>,
    targets: Targets,
}

impl Default for Forward {
    fn default() -> Self {
        Self::new(None)
    }
}

impl Forward {
    /// Clients with short connect timeouts and pooled idle connections;
    /// `workload` gives them a certificate for mTLS.
    pub fn new(workload: Option<Arc<Workload>>) -> Self {
        let targets = Targets::default();
        let conn = |alpn| MeshConnector {
            workload: workload.clone(),
            targets: targets.clone(),
            alpn,
        };
        let h1 = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .build(conn(Alpn::H1));
        let h2 = Client::builder(TokioExecutor::new())
            .http2_only(true)
            .pool_idle_timeout(Duration::from_secs(60))
            .build(conn(Alpn::H2));
        Self { h1, h2, targets }
    }

    /// Sends `req` to `addr`; with `server_name` (a mesh workload) over mTLS.
    pub async fn send_to(
        &self,
        req: Request<Body>,
        addr: SocketAddr,
        server_name: Option<ServerName<'static>>,
    ) -> Result<Response<Body>, ProxyError> {
        if let Some(n) = server_name {
            self.targets.set(addr, n);
        }
        self.send(req, addr).await
    }

    /// Sends `req` to `addr` (plaintext unless `addr` is a known mesh workload).
    pub async fn send(
        &self,
        mut req: Request<Body>,
        addr: SocketAddr,
    ) -> Result<Response<Body>, ProxyError> {
        let mut parts = req.uri().clone().into_parts();
        parts.scheme = Some(Scheme::HTTP);
        parts.authority = Authority::try_from(addr.to_string()).ok();
        if parts.path_and_query.is_none() {
            parts.path_and_query = Some(http::uri::PathAndQuery::from_static("/"));
        }
        *req.uri_mut() = Uri::from_parts(parts).map_err(|_| ProxyError::BadRequest)?;
        strip_hop_by_hop(req.headers_mut());
        let client = if req.version() == Version::HTTP_2 {
            &self.h2
        } else {
            &self.h1
        };
        match client.request(req).await {
            Ok(resp) => Ok(resp.map(|b| b.boxed())),
            Err(e) if e.is_connect() => Err(ProxyError::Connect(addr.to_string())),
            Err(e) => {
                tracing::debug!(%addr, error = %e, "upstream request failed");
                Err(ProxyError::Reset(addr.to_string()))
            }
        }
    }
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
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, ProxyError>> + Send>>;

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
            this.send_to(req, up.addr, up.server_name).await
        })
    }
}
