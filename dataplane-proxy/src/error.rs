//! Errors the proxy answers itself: each becomes a response with
//! `x-raftmesh-error: <code>` and a one-line body, and is counted by code.

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::{BodyExt, Full};

use crate::Body;

/// Why the proxy answered a request itself.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ProxyError {
    /// The request names no service (no Host, no absolute URI).
    #[error("the request names no service: send it with Host: <service> or as an absolute URI")]
    BadRequest,
    /// The path is ambiguous (`crate::path`).
    #[error("{0}")]
    BadPath(crate::path::PathError),
    /// The Host names no valid service.
    #[error("the Host {0:?} is not a service name (name or name.namespace, DNS labels)")]
    BadHost(String),
    /// No service or rule matches.
    #[error("no route to {0}")]
    NoRoute(String),
    /// The service has no healthy endpoint (in the chosen subset).
    #[error("no healthy endpoints for {0}")]
    NoHealthyEndpoints(String),
    /// The connection to the endpoint failed.
    #[error("cannot connect to {0}")]
    Connect(String),
    /// The upstream did not answer in time.
    #[error("{0} did not answer within the route's timeout")]
    Timeout(String),
    /// The upstream reset or broke the connection.
    #[error("the connection to {0} broke before a full answer")]
    Reset(String),
    /// Too many requests pending for the service.
    #[error("circuit open for {0}: too many requests in flight")]
    CircuitOpen(String),
    /// Authorization refused the request.
    #[error("denied: {0}")]
    Denied(String),
    /// Plaintext to an inbound that requires mutual TLS.
    #[error("this workload requires mutual TLS (the mesh is in strict mode)")]
    MtlsRequired,
    /// A mesh workload, and this proxy has no certificate to reach it with
    /// (it never falls back to plaintext).
    #[error("this proxy has no workload certificate yet, and {0} is reached over mutual TLS only")]
    NoIdentity(String),
    /// The local application cannot be reached (inbound).
    #[error("the local application on port {0} cannot be reached")]
    AppUnavailable(u16),
}

impl ProxyError {
    /// The `x-raftmesh-error` code.
    pub fn code(&self) -> &'static str {
        match self {
            ProxyError::BadRequest | ProxyError::BadHost(_) => "bad-request",
            ProxyError::BadPath(_) => "bad-path",
            ProxyError::NoRoute(_) => "no-route",
            ProxyError::NoHealthyEndpoints(_) => "no-healthy-endpoints",
            ProxyError::Connect(_) => "upstream-connect",
            ProxyError::Timeout(_) => "upstream-timeout",
            ProxyError::Reset(_) => "upstream-reset",
            ProxyError::CircuitOpen(_) => "circuit-open",
            ProxyError::Denied(_) => "denied",
            ProxyError::MtlsRequired => "mtls-required",
            ProxyError::AppUnavailable(_) => "app-unavailable",
            ProxyError::NoIdentity(_) => "no-identity",
        }
    }

    /// The HTTP status of the answer.
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::BadRequest | ProxyError::BadPath(_) | ProxyError::BadHost(_) => {
                StatusCode::BAD_REQUEST
            }
            ProxyError::NoRoute(_) => StatusCode::NOT_FOUND,
            ProxyError::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::Reset(_) => StatusCode::BAD_GATEWAY,
            ProxyError::Denied(_) | ProxyError::MtlsRequired => StatusCode::FORBIDDEN,
            ProxyError::NoHealthyEndpoints(_)
            | ProxyError::Connect(_)
            | ProxyError::CircuitOpen(_)
            | ProxyError::AppUnavailable(_)
            | ProxyError::NoIdentity(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// Whether a retry policy's `connect-failure` condition covers it.
    pub fn is_connect_failure(&self) -> bool {
        matches!(self, ProxyError::Connect(_))
    }

    /// The response the client gets.
    pub fn into_response(self) -> Response<Body> {
        let body = format!("{}: {self}\n", self.code());
        let mut r = Response::new(
            Full::new(Bytes::from(body))
                .map_err(|never| match never {})
                .boxed(),
        );
        *r.status_mut() = self.status();
        r.headers_mut().insert(
            "x-raftmesh-error",
            http::HeaderValue::from_static(self.code()),
        );
        r.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("text/plain"),
        );
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_answers_with_its_code_header_and_a_one_line_body() {
        let r = ProxyError::NoHealthyEndpoints("web".into()).into_response();
        assert_eq!(r.status(), 503);
        assert_eq!(r.headers()["x-raftmesh-error"], "no-healthy-endpoints");
        let r = ProxyError::Timeout("web".into()).into_response();
        assert_eq!(r.status(), 504);
        assert_eq!(r.headers()["x-raftmesh-error"], "upstream-timeout");
    }
}
