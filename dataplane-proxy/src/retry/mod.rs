//! Retries of safe requests, within a budget (`stats::Budget`): retries may
//! add at most 20 % to the load a service receives (plus a small reserve
//! for low traffic).

use std::task::{Context, Poll};

use http::{Method, Request, Response};
use hyper::body::Body as _;
use raftmesh_api::RetryOn;

use crate::error::ProxyError;
use crate::stack::{BoxFuture, Next};
use crate::target::{Target, Tried};
use crate::{empty, Body};

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
            let policy = match &target.table.retries {
                Some(p) if p.attempts > 0 && safe(&req) => p.clone(),
                _ => return inner.call(req).await,
            };
            let (parts, _) = req.into_parts();
            let tried = Tried::default();
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
                target.stats.metrics.retry(&target.table.id.1);
                tracing::debug!(service = %target.table.id.1, attempt, "retrying");
            }
        })
    }
}

#[cfg(test)]
mod tests;
