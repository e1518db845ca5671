//! Retries of safe requests, within a budget: retries may add at most 20 %
//! to the load a service receives (plus a small reserve for low traffic).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use http::{Method, Request, Response};
use hyper::body::Body as _;
use raftmesh_api::RetryOn;

use crate::error::ProxyError;
use crate::route::Target;
use crate::{empty, metrics, Body};

/// Milli-tokens a request deposits (0.2 of a retry).
const DEPOSIT: u64 = 200;
/// Milli-tokens a retry costs.
const COST: u64 = 1_000;
/// Most milli-tokens held (100 retries).
const CAP: u64 = 100_000;
/// Milli-tokens at start (10 retries), so low traffic can still retry.
pub const RESERVE: u64 = 10_000;

/// A service's retry budget.
#[derive(Debug)]
pub struct Budget(AtomicU64);

impl Default for Budget {
    fn default() -> Self {
        Self(AtomicU64::new(RESERVE))
    }
}

impl Budget {
    /// A request passed: it earns 0.2 of a retry.
    pub fn deposit(&self) {
        let _ = self
            .0
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
                Some((v + DEPOSIT).min(CAP))
            });
    }

    /// Takes one retry's worth, if there is one.
    pub fn withdraw(&self) -> bool {
        self.0
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
                v.checked_sub(COST)
            })
            .is_ok()
    }
}

/// Whether the request may be sent twice: a safe method and no body.
fn safe(req: &Request<Body>) -> bool {
    matches!(
        *req.method(),
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE
    ) && req.body().size_hint().exact() == Some(0)
}

fn retryable(r: &Result<Response<Body>, ProxyError>, on: &[RetryOn]) -> bool {
    match r {
        Ok(resp) => {
            let s = resp.status().as_u16();
            (s >= 500 && on.contains(&RetryOn::Status5xx))
                || (matches!(s, 502..=504) && on.contains(&RetryOn::GatewayError))
        }
        Err(ProxyError::Connect(_)) => on.contains(&RetryOn::ConnectFailure),
        Err(ProxyError::Reset(_)) => {
            on.contains(&RetryOn::Reset) || on.contains(&RetryOn::Status5xx)
        }
        Err(ProxyError::Timeout(_)) => {
            on.contains(&RetryOn::Status5xx) || on.contains(&RetryOn::GatewayError)
        }
        Err(_) => false,
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

type BoxFut = Pin<Box<dyn Future<Output = Result<Response<Body>, ProxyError>> + Send>>;

impl<S> tower::Service<Request<Body>> for Retry<S>
where
    S: tower::Service<Request<Body>, Response = Response<Body>, Error = ProxyError>
        + Clone
        + Send
        + 'static,
    S::Future: Send,
{
    type Response = Response<Body>;
    type Error = ProxyError;
    type Future = BoxFut;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Body>) -> BoxFut {
        let mut inner = self.inner.clone();
        Box::pin(async move {
            let Some(target) = req.extensions().get::<Target>().cloned() else {
                return inner.call(req).await;
            };
            target.stats.budget.deposit();
            let policy = match &target.table.retries {
                Some(p) if p.attempts > 0 && safe(&req) => p.clone(),
                _ => return inner.call(req).await,
            };
            let (parts, _) = req.into_parts();
            let tried = crate::balance::Tried::default();
            let rebuild = || {
                let mut r = Request::new(empty());
                *r.method_mut() = parts.method.clone();
                *r.uri_mut() = parts.uri.clone();
                *r.version_mut() = parts.version;
                *r.headers_mut() = parts.headers.clone();
                r.extensions_mut().insert(target.clone());
                r.extensions_mut().insert(tried.clone());
                r
            };
            let mut attempt = 0;
            loop {
                let call = inner.call(rebuild());
                let result = match policy.per_try_timeout {
                    Some(d) => tokio::time::timeout(d, call)
                        .await
                        .unwrap_or_else(|_| Err(ProxyError::Timeout(target.table.id.1.clone()))),
                    None => call.await,
                };
                if attempt >= policy.attempts
                    || !retryable(&result, &policy.on)
                    || !target.stats.budget.withdraw()
                {
                    return result;
                }
                attempt += 1;
                metrics::retry(&target.table.id.1);
                tracing::debug!(service = %target.table.id.1, attempt, "retrying");
            }
        })
    }
}

#[cfg(test)]
mod tests;
