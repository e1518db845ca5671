//! What every layer of the outbound stack shares: the bound on the inner
//! service it wraps ([`Next`]) and the boxed future it answers with. The
//! layers themselves (`route`, `timeout`, `retry`, `balance`) are composed
//! in `server::outbound_stack`.

use std::future::Future;
use std::pin::Pin;

use http::{Request, Response};

use crate::error::ProxyError;
use crate::Body;

/// The future of one request through a layer.
pub type BoxFuture = Pin<Box<dyn Future<Output = Result<Response<Body>, ProxyError>> + Send>>;

/// The inner service of an outbound layer: the next layer, or `forward`.
pub trait Next:
    tower::Service<Request<Body>, Response = Response<Body>, Error = ProxyError, Future: Send>
    + Clone
    + Send
    + 'static
{
}

impl<T> Next for T where
    T: tower::Service<Request<Body>, Response = Response<Body>, Error = ProxyError, Future: Send>
        + Clone
        + Send
        + 'static
{
}
