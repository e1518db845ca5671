//! Fault injection (`Route.fault`): a share of a route's requests delayed,
//! a share answered with an error instead of sent, optionally only those
//! carrying a header. Before the route's timeout and retries: an injected
//! delay does not count against the timeout, and an injected error is not
//! retried (it stands for the callee failing).

use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response};
use rand::Rng;

use crate::error::ProxyError;
use crate::stack::{BoxFuture, Next};
use crate::target::Target;
use crate::Body;

/// A route's faults, compiled.
#[derive(Debug, Clone, PartialEq)]
pub struct Faults {
    /// Delay and its share (0–100).
    pub delay: Option<(Duration, u32)>,
    /// Answer (HTTP status, gRPC status) and its share (0–100).
    pub abort: Option<(u16, u8, u32)>,
    /// Only requests with this header (lower-case name) and value.
    pub header: Option<(http::HeaderName, Option<String>)>,
}

impl Faults {
    /// From the Route's field (validated).
    pub fn compile(f: &raftmesh_api::Fault) -> Option<Self> {
        let header = match &f.header {
            Some(h) => Some((
                http::HeaderName::from_bytes(h.name.to_ascii_lowercase().as_bytes()).ok()?,
                h.value.clone(),
            )),
            None => None,
        };
        Some(Self {
            delay: f.delay.as_ref().map(|d| (d.fixed.as_duration(), d.percent)),
            abort: f.abort.as_ref().map(|a| {
                let http = a
                    .http_status
                    .and_then(|s| u16::try_from(s).ok())
                    .unwrap_or(503);
                let grpc = a
                    .grpc_status
                    .and_then(|s| u8::try_from(s).ok())
                    .unwrap_or_else(|| grpc_of_http(http));
                (http, grpc, a.percent)
            }),
            header,
        })
    }

    fn applies(&self, h: &http::HeaderMap) -> bool {
        match &self.header {
            None => true,
            Some((name, value)) => h.get(name).is_some_and(|v| {
                value
                    .as_ref()
                    .is_none_or(|want| v.as_bytes() == want.as_bytes())
            }),
        }
    }
}

/// The gRPC status gRPC gives an HTTP status (grpc/doc/http-grpc-status-mapping.md).
fn grpc_of_http(s: u16) -> u8 {
    match s {
        400 => 13,
        401 => 16,
        403 => 7,
        404 => 12,
        429 | 502..=504 => 14,
        _ => 2,
    }
}

fn roll(percent: u32) -> bool {
    percent >= 100 || (percent > 0 && rand::rng().random_range(0..100) < percent)
}

/// Injects a route's faults.
#[derive(Clone)]
pub struct Fault<S> {
    inner: S,
}

/// Layer for [`Fault`].
#[derive(Clone, Default)]
pub struct FaultLayer;

impl<S> tower::Layer<S> for FaultLayer {
    type Service = Fault<S>;
    fn layer(&self, inner: S) -> Fault<S> {
        Fault { inner }
    }
}

impl<S: Next> tower::Service<Request<Body>> for Fault<S> {
    type Response = Response<Body>;
    type Error = ProxyError;
    // No fault: the inner future as it is (no allocation on the common path).
    type Future = futures::future::Either<S::Future, BoxFuture>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        use futures::future::Either;
        let faults = req
            .extensions()
            .get::<Target>()
            .and_then(|t| t.table.fault.clone())
            .filter(|f| f.applies(req.headers()));
        let Some(f) = faults else {
            return Either::Left(self.inner.call(req));
        };
        let delay = f.delay.filter(|(_, p)| roll(*p)).map(|(d, _)| d);
        let abort = f.abort.filter(|(_, _, p)| roll(*p));
        let mut inner = self.inner.clone();
        Either::Right(Box::pin(async move {
            if let Some(d) = delay {
                tokio::time::sleep(d).await;
            }
            if let Some((http, grpc, _)) = abort {
                return Err(ProxyError::Injected(http, grpc));
            }
            inner.call(req).await
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn faults(yaml: &str) -> Faults {
        let f: raftmesh_api::Fault = serde_yaml_ng::from_str(yaml).unwrap();
        Faults::compile(&f).unwrap()
    }

    #[test]
    fn an_abort_answers_the_status_and_its_grpc_equivalent() {
        let f = faults("abort: {http_status: 503, percent: 100}");
        assert_eq!(f.abort, Some((503, 14, 100)));
        let f = faults("abort: {grpc_status: 8, percent: 10}");
        assert_eq!(f.abort, Some((503, 8, 10)));
        let f = faults("abort: {http_status: 403, percent: 1}");
        assert_eq!(f.abort, Some((403, 7, 1)));
    }

    #[test]
    fn only_requests_with_the_header_get_faults_when_one_is_named() {
        let f = faults(
            "header: {name: X-Fault, value: \"on\"}\nabort: {http_status: 500, percent: 100}",
        );
        let mut h = http::HeaderMap::new();
        assert!(!f.applies(&h));
        h.insert("x-fault", "off".parse().unwrap());
        assert!(!f.applies(&h));
        h.insert("x-fault", "on".parse().unwrap());
        assert!(f.applies(&h));
        let any = faults("header: {name: x-fault}\nabort: {http_status: 500, percent: 100}");
        h.insert("x-fault", "whatever".parse().unwrap());
        assert!(any.applies(&h));
    }

    #[test]
    fn shares_are_rolled_per_request() {
        assert!(roll(100) && !roll(0));
        let n = (0..10_000).filter(|_| roll(20)).count();
        // Binomial(10 000, 0.2): sd 40; 5 sd either side.
        assert!((1_800..=2_200).contains(&n), "{n}");
    }
}
