//! Retries. Those of requests that reached the app are within a budget
//! (`stats::Budget`: they may add at most 20 % to the load a service
//! receives, plus a small reserve for low traffic).
//!
//! - A request that **never reached the app** (the connection failed, or
//!   the endpoint refused the stream: HTTP/2 `REFUSED_STREAM` or a GOAWAY
//!   before it) is retried on another endpoint whatever its method, with
//!   or without a Route (twice by default; a Route's `retries.attempts`
//!   sets how often, and 0 turns it off).
//! - An idempotent request whose kept-alive connection closed (or was
//!   reset) before any answer is sent again, with or without a Route
//!   (RFC 9112 §9.3.1).
//! - A Route's retry policy adds retries of **idempotent** requests (GET,
//!   HEAD, OPTIONS, TRACE, PUT, DELETE) on its conditions (5xx, reset,
//!   ...), and of **gRPC** calls on its gRPC statuses (`unavailable` by
//!   default), read from a trailers-only answer.
//! - Bodies are sent again from a copy kept as they flow
//!   ([`replay`], up to 64 KiB) when the failed attempt read all of it or
//!   none; a larger body, or one an attempt is part-way through, is sent
//!   once.
//! - The first retry of a request that never reached the app goes at
//!   once (to another endpoint); every other waits an exponential backoff
//!   with full jitter (25 ms doubling to 250 ms by default).

pub mod replay;

use std::task::{Context, Poll};
use std::time::Duration;

use http::{Method, Request, Response};
use http_body_util::BodyExt;
use hyper::body::Body as _;
use raftmesh_api::RetryOn;
use rand::Rng;

use crate::compiled::Retries;
use crate::error::ProxyError;
use crate::stack::{BoxFuture, Next};
use crate::target::{Target, Tried};
use crate::{empty, Body};

/// Whether sending the request twice has the effect of sending it once
/// (RFC 9110 §9.2.2).
fn idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

/// The attempt failed before the app saw the request.
fn never_reached(r: &Result<Response<Body>, ProxyError>) -> bool {
    matches!(r, Err(ProxyError::Connect(_) | ProxyError::Refused(_)))
}

fn retryable(r: &Result<Response<Body>, ProxyError>, on: &[RetryOn]) -> bool {
    match r {
        Ok(resp) => {
            let s = resp.status().as_u16();
            (s >= 500 && on.contains(&RetryOn::Status5xx))
                || (matches!(s, 502..=504) && on.contains(&RetryOn::GatewayError))
        }
        Err(ProxyError::Connect(_)) => on.contains(&RetryOn::ConnectFailure),
        Err(ProxyError::Reset(_) | ProxyError::Closed(_) | ProxyError::ResetBeforeAnswer(_)) => {
            on.contains(&RetryOn::Reset) || on.contains(&RetryOn::Status5xx)
        }
        Err(ProxyError::Timeout(_)) => {
            on.contains(&RetryOn::Status5xx) || on.contains(&RetryOn::GatewayError)
        }
        Err(_) => false,
    }
}

/// The gRPC status of a trailers-only answer.
fn grpc_status(r: &Response<Body>) -> Option<u8> {
    r.headers().get("grpc-status")?.to_str().ok()?.parse().ok()
}

/// Whether the outcome of an attempt calls for another.
fn should_retry(
    r: &Result<Response<Body>, ProxyError>,
    policy: Option<&Retries>,
    idempotent: bool,
    grpc: bool,
) -> bool {
    if never_reached(r) {
        return true;
    }
    // A kept-alive connection closed or reset before any answer: an idempotent
    // request goes again, as HTTP clients do (RFC 9112 §9.3.1).
    if idempotent
        && matches!(
            r,
            Err(ProxyError::Closed(_) | ProxyError::ResetBeforeAnswer(_))
        )
    {
        return true;
    }
    let Some(p) = policy else { return false };
    if let (true, Ok(resp)) = (grpc, r) {
        if let Some(code) = grpc_status(resp) {
            return p.grpc_on.contains(&code);
        }
    }
    idempotent && retryable(r, &p.on)
}

/// Full jitter over `base · 2^(n-1)`, at most `max` (the n-th backoff).
fn backoff(n: u32, base: Duration, max: Duration) -> Duration {
    let cap = base
        .saturating_mul(2u32.saturating_pow(n.saturating_sub(1)))
        .min(max);
    cap.mul_f64(rand::rng().random::<f64>())
}

/// The body each attempt sends.
enum Bodies {
    Empty,
    Replay(replay::Replay),
}

impl Bodies {
    fn first(&self) -> Body {
        match self {
            Bodies::Empty => empty(),
            Bodies::Replay(r) => r.first().boxed(),
        }
    }

    /// Another attempt's body, if the body can be sent whole again.
    fn again(&self) -> Option<Body> {
        match self {
            Bodies::Empty => Some(empty()),
            Bodies::Replay(r) => r.take_over().map(BodyExt::boxed),
        }
    }
}

/// Retries per the route's policy.
#[derive(Clone)]
pub struct Retry<S> {
    inner: S,
}

/// Layer for [`Retry`].
#[derive(Clone, Default)]
pub struct RetryLayer;

impl<S> tower::Layer<S> for RetryLayer {
    type Service = Retry<S>;
    fn layer(&self, inner: S) -> Retry<S> {
        Retry { inner }
    }
}

impl<S: Next> tower::Service<Request<Body>> for Retry<S> {
    type Response = Response<Body>;
    type Error = ProxyError;
    type Future = BoxFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Body>) -> BoxFuture {
        let mut inner = self.inner.clone();
        Box::pin(async move {
            let Some(target) = req.extensions().get::<Target>().cloned() else {
                return inner.call(req).await;
            };
            target.stats.budget.deposit();
            let policy = target.table.retries.as_ref();
            let defaults = Retries::default();
            let p = policy.unwrap_or(&defaults);
            if p.attempts == 0 {
                return inner.call(req).await;
            }
            let idempotent = idempotent(req.method());
            let grpc = crate::error::is_grpc(req.headers());
            let (parts, body) = req.into_parts();
            let bodies = if body.size_hint().exact() == Some(0) {
                Bodies::Empty
            } else {
                Bodies::Replay(replay::Replay::new(body))
            };
            let tried = Tried::default();
            let rebuild = |body: Body| {
                let mut r = Request::new(body);
                *r.method_mut() = parts.method.clone();
                *r.uri_mut() = parts.uri.clone();
                *r.version_mut() = parts.version;
                *r.headers_mut() = parts.headers.clone();
                r.extensions_mut().insert(target.clone());
                r.extensions_mut().insert(tried.clone());
                r
            };
            let mut attempt = 0;
            let mut body = bodies.first();
            loop {
                let call = inner.call(rebuild(body));
                let result = match p.per_try_timeout {
                    Some(d) => tokio::time::timeout(d, call)
                        .await
                        .unwrap_or_else(|_| Err(ProxyError::Timeout(target.table.id.1.clone()))),
                    None => call.await,
                };
                // A request that never reached the app costs no app any
                // work: its retries are bounded by `attempts`, not by the
                // budget (which keeps retries from multiplying the load
                // on apps that are failing).
                if attempt >= p.attempts || !should_retry(&result, policy, idempotent, grpc) {
                    return result;
                }
                // The body is taken from the earlier attempt now, before
                // any backoff (it cannot read on meanwhile).
                let Some(next) = bodies.again() else {
                    return result;
                };
                if !(never_reached(&result) || target.stats.budget.withdraw()) {
                    return result;
                }
                body = next;
                attempt += 1;
                target.stats.metrics.retry(&target.table.id);
                let at_once = attempt == 1 && never_reached(&result);
                tracing::debug!(service = %target.table.id.1, attempt, at_once, "retrying");
                if !at_once {
                    tokio::time::sleep(backoff(attempt, p.backoff_base, p.backoff_max)).await;
                }
            }
        })
    }
}

#[cfg(test)]
mod tests;
