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
    /// The connection (kept alive from an earlier request) closed before
    /// any byte of an answer: the endpoint may not have seen the request
    /// (it closed an idle connection as the request went out), so an
    /// idempotent request is sent again (RFC 9112 §9.3.1).
    #[error("the connection to {0} closed before any answer")]
    Closed(String),
    /// The connection was reset (or its TLS cut short) before any byte of
    /// an answer. Sent again like [`ProxyError::Closed`] when idempotent (a
    /// proxy that closes a kept connection with the request unread in it
    /// resets it), but counted as the endpoint failing, like
    /// [`ProxyError::Reset`]: an endpoint that resets every request is
    /// ejected.
    #[error("the connection to {0} was reset before any answer")]
    ResetBeforeAnswer(String),
    /// The endpoint refused the request before processing it (HTTP/2
    /// `REFUSED_STREAM`, or a GOAWAY that left it out): safe to send
    /// elsewhere.
    #[error("{0} refused the request before processing it")]
    Refused(String),
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
    /// A Route's fault injection answered instead of the callee (HTTP
    /// status, gRPC status).
    #[error("fault injected by the route (status {0})")]
    Injected(u16, u8),
    /// A host outside the mesh that no External declares (under MeshConfig
    /// `outbound: deny`), or a port its External does not.
    #[error("egress denied: {0}")]
    EgressDenied(String),
    /// The service's Route `rate_limit` admitted no more now (inbound).
    #[error("rate limited: {0} is over its Route's rate_limit")]
    RateLimited(String),
}

/// The header an answer the mesh made itself carries its code in.
pub const ERROR_HEADER: &str = "x-raftmesh-error";

/// Every code an answer's [`ERROR_HEADER`] may carry.
const CODES: [&str; 16] = [
    "bad-request",
    "bad-path",
    "no-route",
    "no-healthy-endpoints",
    "upstream-connect",
    "upstream-timeout",
    "upstream-reset",
    "upstream-refused",
    "circuit-open",
    "denied",
    "mtls-required",
    "app-unavailable",
    "no-identity",
    "fault-injected",
    "rate-limited",
    "egress-denied",
];

/// The mesh's error code an answer carries (another proxy's), if it is one
/// of the mesh's codes (`other` if it is not: a label never takes a value
/// from the network as such).
pub fn code_of(headers: &http::HeaderMap) -> &'static str {
    headers
        .get(ERROR_HEADER)
        .map_or("", |v| code_of_bytes(v.as_bytes()))
}

/// The code an [`ERROR_HEADER`] value names (`other` for one not known).
pub fn code_of_bytes(v: &[u8]) -> &'static str {
    CODES
        .iter()
        .find(|c| c.as_bytes() == v)
        .copied()
        .unwrap_or("other")
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
            ProxyError::Reset(_) | ProxyError::Closed(_) | ProxyError::ResetBeforeAnswer(_) => {
                "upstream-reset"
            }
            ProxyError::Refused(_) => "upstream-refused",
            ProxyError::CircuitOpen(_) => "circuit-open",
            ProxyError::Denied(_) => "denied",
            ProxyError::MtlsRequired => "mtls-required",
            ProxyError::AppUnavailable(_) => "app-unavailable",
            ProxyError::NoIdentity(_) => "no-identity",
            ProxyError::Injected(..) => "fault-injected",
            ProxyError::RateLimited(_) => "rate-limited",
            ProxyError::EgressDenied(_) => "egress-denied",
        }
    }

    /// The HTTP status of the answer.
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::BadRequest | ProxyError::BadPath(_) | ProxyError::BadHost(_) => {
                StatusCode::BAD_REQUEST
            }
            ProxyError::NoRoute(_) => StatusCode::NOT_FOUND,
            ProxyError::RateLimited(_) => StatusCode::TOO_MANY_REQUESTS,
            ProxyError::Injected(s, _) => {
                StatusCode::from_u16(*s).unwrap_or(StatusCode::SERVICE_UNAVAILABLE)
            }
            ProxyError::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::Reset(_) | ProxyError::Closed(_) | ProxyError::ResetBeforeAnswer(_) => {
                StatusCode::BAD_GATEWAY
            }
            ProxyError::Denied(_) | ProxyError::MtlsRequired | ProxyError::EgressDenied(_) => {
                StatusCode::FORBIDDEN
            }
            ProxyError::NoHealthyEndpoints(_)
            | ProxyError::Connect(_)
            | ProxyError::Refused(_)
            | ProxyError::CircuitOpen(_)
            | ProxyError::AppUnavailable(_)
            | ProxyError::NoIdentity(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// Whether a retry policy's `connect-failure` condition covers it.
    pub fn is_connect_failure(&self) -> bool {
        matches!(self, ProxyError::Connect(_))
    }

    /// The gRPC status a gRPC caller gets instead of [`Self::status`].
    pub fn grpc_status(&self) -> u8 {
        use grpc_status::*;
        match self {
            ProxyError::BadRequest | ProxyError::BadPath(_) | ProxyError::BadHost(_) => {
                INVALID_ARGUMENT
            }
            ProxyError::NoRoute(_) => UNIMPLEMENTED,
            ProxyError::Injected(_, g) => *g,
            ProxyError::Timeout(_) => DEADLINE_EXCEEDED,
            ProxyError::Denied(_) | ProxyError::MtlsRequired | ProxyError::EgressDenied(_) => {
                PERMISSION_DENIED
            }
            ProxyError::CircuitOpen(_) | ProxyError::RateLimited(_) => RESOURCE_EXHAUSTED,
            // The call may have reached the app: not UNAVAILABLE, which
            // callers (ours included) retry whatever the method.
            ProxyError::Reset(_) | ProxyError::Closed(_) | ProxyError::ResetBeforeAnswer(_) => {
                INTERNAL
            }
            ProxyError::NoHealthyEndpoints(_)
            | ProxyError::Connect(_)
            | ProxyError::Refused(_)
            | ProxyError::AppUnavailable(_)
            | ProxyError::NoIdentity(_) => UNAVAILABLE,
        }
    }

    /// The response a caller gets: for a gRPC call, a trailers-only
    /// response (HTTP 200, `grpc-status`, `grpc-message` naming the code),
    /// which gRPC clients read as a status; otherwise [`Self::into_response`].
    pub fn into_response_for(self, grpc: bool) -> Response<Body> {
        if !grpc {
            return self.into_response();
        }
        let mut r = Response::new(
            http_body_util::Empty::new()
                .map_err(|never| match never {})
                .boxed(),
        );
        let h = r.headers_mut();
        h.insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/grpc"),
        );
        h.insert(
            "grpc-status",
            http::HeaderValue::from(u16::from(self.grpc_status())),
        );
        let message = grpc_message(&format!("{}: {self}", self.code()));
        if let Ok(v) = http::HeaderValue::try_from(message) {
            h.insert("grpc-message", v);
        }
        h.insert(ERROR_HEADER, http::HeaderValue::from_static(self.code()));
        r
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
        r.headers_mut()
            .insert(ERROR_HEADER, http::HeaderValue::from_static(self.code()));
        r.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("text/plain"),
        );
        r
    }
}

/// gRPC status codes the proxy answers with (grpc/doc/statuscodes.md).
pub mod grpc_status {
    /// The client sent something the proxy cannot route.
    pub const INVALID_ARGUMENT: u8 = 3;
    /// The route's time limit passed.
    pub const DEADLINE_EXCEEDED: u8 = 4;
    /// Authorization refused the call.
    pub const PERMISSION_DENIED: u8 = 7;
    /// A limit of the callee's (circuit breaker) is reached.
    pub const RESOURCE_EXHAUSTED: u8 = 8;
    /// The connection broke after the call may have reached the app.
    pub const INTERNAL: u8 = 13;
    /// No such service.
    pub const UNIMPLEMENTED: u8 = 12;
    /// The callee cannot be reached now; a retry may succeed.
    pub const UNAVAILABLE: u8 = 14;
}

/// Whether a request is a gRPC call (`content-type: application/grpc`,
/// `application/grpc+proto`, ...): its errors are answered in gRPC.
pub fn is_grpc(headers: &http::HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| is_grpc_type(ct.as_bytes()))
}

/// Whether a `content-type` value is gRPC's (`application/grpc`, `+proto`, ...).
pub fn is_grpc_type(ct: &[u8]) -> bool {
    ct.len() >= 16
        && ct[..16].eq_ignore_ascii_case(b"application/grpc")
        && matches!(ct.get(16), None | Some(b'+') | Some(b';'))
}

/// `grpc-message` is percent-encoded: every byte outside printable ASCII,
/// and `%` itself.
fn grpc_message(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
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
        let r = ProxyError::RateLimited("web".into()).into_response();
        assert_eq!(r.status(), 429);
        assert_eq!(r.headers()["x-raftmesh-error"], "rate-limited");
    }

    #[test]
    fn error_codes_read_back_from_an_answer_are_the_mesh_codes_and_nothing_else() {
        let every = [
            ProxyError::BadRequest,
            ProxyError::BadPath(crate::path::PathError::BadEscape),
            ProxyError::BadHost("x".into()),
            ProxyError::NoRoute("x".into()),
            ProxyError::NoHealthyEndpoints("x".into()),
            ProxyError::Connect("x".into()),
            ProxyError::Timeout("x".into()),
            ProxyError::Reset("x".into()),
            ProxyError::Closed("x".into()),
            ProxyError::ResetBeforeAnswer("x".into()),
            ProxyError::Refused("x".into()),
            ProxyError::CircuitOpen("x".into()),
            ProxyError::Denied("x".into()),
            ProxyError::MtlsRequired,
            ProxyError::AppUnavailable(1),
            ProxyError::NoIdentity("x".into()),
            ProxyError::Injected(503, 14),
            ProxyError::RateLimited("x".into()),
            ProxyError::EgressDenied("x".into()),
        ];
        for e in every {
            let code = e.code();
            assert_eq!(code_of(e.into_response().headers()), code);
        }
        let mut h = http::HeaderMap::new();
        assert_eq!(code_of(&h), "");
        // A callee's app may send the header too: its value never becomes
        // a label as it is.
        h.insert(ERROR_HEADER, "x-user-1234".parse().unwrap());
        assert_eq!(code_of(&h), "other");
    }

    #[test]
    fn a_grpc_call_gets_a_trailers_only_status_never_a_text_503() {
        use hyper::body::Body as _;
        let cases = [
            (ProxyError::NoHealthyEndpoints("web".into()), 14),
            (ProxyError::Connect("web".into()), 14),
            (ProxyError::Timeout("web".into()), 4),
            (ProxyError::Denied("no policy allows it".into()), 7),
            (ProxyError::CircuitOpen("web".into()), 8),
            (ProxyError::RateLimited("web".into()), 8),
            (ProxyError::NoRoute("web".into()), 12),
        ];
        for (e, status) in cases {
            let code = e.code();
            let r = e.into_response_for(true);
            assert_eq!(r.status(), 200, "{code}");
            assert_eq!(r.headers()["content-type"], "application/grpc");
            assert_eq!(r.headers()["grpc-status"], status.to_string().as_str());
            assert_eq!(r.headers()["x-raftmesh-error"], code);
            let msg = r.headers()["grpc-message"].to_str().unwrap();
            assert!(msg.starts_with(&format!("{code}: ")), "{msg}");
            assert!(r.body().is_end_stream(), "trailers-only: no body");
        }
        // Not gRPC: the plain answer.
        let r = ProxyError::Connect("web".into()).into_response_for(false);
        assert_eq!(r.status(), 503);
        assert_eq!(r.headers()["content-type"], "text/plain");
    }

    #[test]
    fn grpc_is_recognised_by_content_type_and_messages_are_percent_encoded() {
        let h = |ct: &str| {
            let mut m = http::HeaderMap::new();
            m.insert(http::header::CONTENT_TYPE, ct.parse().unwrap());
            m
        };
        assert!(is_grpc(&h("application/grpc")));
        assert!(is_grpc(&h("application/grpc+proto")));
        assert!(is_grpc(&h("Application/GRPC;charset=utf-8")));
        assert!(!is_grpc(&h("application/grpc-web")));
        assert!(!is_grpc(&h("application/grpcx")));
        assert!(!is_grpc(&h("text/plain")));
        assert!(!is_grpc(&http::HeaderMap::new()));
        assert_eq!(grpc_message("50% of é"), "50%25 of %C3%A9");
    }
}
