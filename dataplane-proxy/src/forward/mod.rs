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
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use crate::balance::Upstream;
use crate::error::ProxyError;
use crate::Body;

/// Pooled HTTP/1.1 and HTTP/2 clients.
#[derive(Clone)]
pub struct Forward {
    h1: Client<HttpConnector, Body>,
    h2: Client<HttpConnector, Body>,
}

impl Default for Forward {
    fn default() -> Self {
        Self::new()
    }
}

impl Forward {
    /// Clients with short connect timeouts and pooled idle connections.
    pub fn new() -> Self {
        let mut conn = HttpConnector::new();
        conn.set_nodelay(true);
        conn.set_connect_timeout(Some(Duration::from_secs(1)));
        let h1 = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .build(conn.clone());
        let h2 = Client::builder(TokioExecutor::new())
            .http2_only(true)
            .pool_idle_timeout(Duration::from_secs(60))
            .build(conn);
        Self { h1, h2 }
    }

    /// Sends `req` to `addr`.
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
            let addr = req
                .extensions()
                .get::<Upstream>()
                .map(|u| u.addr)
                .ok_or(ProxyError::BadRequest)?;
            this.send(req, addr).await
        })
    }
}
