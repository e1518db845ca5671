//! The route's whole-request time limit (retries included).

use std::task::{Context, Poll};

use http::{Request, Response};

use crate::error::ProxyError;
use crate::stack::{BoxFuture, Next};
use crate::target::Target;
use crate::Body;

/// Ends a request with `upstream-timeout` past the route's timeout.
#[derive(Clone)]
pub struct Timeout<S> {
    inner: S,
}

/// Layer for [`Timeout`].
#[derive(Clone, Default)]
pub struct TimeoutLayer;

impl<S> tower::Layer<S> for TimeoutLayer {
    type Service = Timeout<S>;
    fn layer(&self, inner: S) -> Timeout<S> {
        Timeout { inner }
    }
}

impl<S: Next> tower::Service<Request<Body>> for Timeout<S> {
    type Response = Response<Body>;
    type Error = ProxyError;
    type Future = BoxFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Body>) -> BoxFuture {
        let limit = req
            .extensions()
            .get::<Target>()
            .and_then(|t| t.table.timeout.map(|d| (d, t.table.id.1.clone())));
        let fut = self.inner.call(req);
        Box::pin(async move {
            match limit {
                None => fut.await,
                Some((d, name)) => tokio::time::timeout(d, fut)
                    .await
                    .unwrap_or(Err(ProxyError::Timeout(name))),
            }
        })
    }
}

#[cfg(test)]
mod tests;
