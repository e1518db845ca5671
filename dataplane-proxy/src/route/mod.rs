//! Routing: from a request's authority to a service, its first matching
//! rule, and a weighted backend subset. `Route` is the tower service that
//! attaches the [`Target`] every later layer reads.

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response};
use raftmesh_api::RouteMatch;
use rand::Rng;

use crate::compiled::{Rule, ServiceId};
use crate::error::ProxyError;
use crate::stack::{BoxFuture, Next};
use crate::state::Config;
use crate::target::{RouteInfo, Target};
use crate::Body;

/// The service a request names: the absolute URI's host, else the Host
/// header; `name` or `name.namespace` (further labels and the port ignored).
/// No name is a bad request; a name that is not a DNS label never becomes a
/// lookup or a subscription.
pub fn service_of<B>(req: &Request<B>, default_ns: &str) -> Result<ServiceId, ProxyError> {
    service_of_with(req, default_ns, |_| false)
}

/// [`service_of`], and `name.namespace.peer` (`is_peer(peer)`) names the
/// import of `name` from that peer: service `name.peer`.
pub fn service_of_with<B>(
    req: &Request<B>,
    default_ns: &str,
    is_peer: impl Fn(&str) -> bool,
) -> Result<ServiceId, ProxyError> {
    let host = match req.uri().authority() {
        Some(a) => a.host().to_string(),
        None => {
            let h = req
                .headers()
                .get(http::header::HOST)
                .ok_or(ProxyError::BadRequest)?;
            let h = h
                .to_str()
                .map_err(|_| ProxyError::BadHost(String::from_utf8_lossy(h.as_bytes()).into()))?;
            h.rsplit_once(':').map(|(h, _)| h).unwrap_or(h).to_string()
        }
    };
    let bad = || {
        let mut shown = host.clone();
        shown.truncate(64);
        ProxyError::BadHost(shown)
    };
    let mut parts = host.split('.');
    let name = parts.next().unwrap_or_default().to_ascii_lowercase();
    let ns = parts
        .next()
        .map(str::to_ascii_lowercase)
        .unwrap_or_else(|| default_ns.to_string());
    if raftmesh_api::validate::dns_label(&name).is_err()
        || raftmesh_api::validate::dns_label(&ns).is_err()
    {
        return Err(bad());
    }
    if let Some(peer) = parts.next().map(str::to_ascii_lowercase) {
        if parts.next().is_none() && is_peer(&peer) {
            return Ok((ns, format!("{name}.{peer}")));
        }
    }
    Ok((ns, name))
}

fn matches<B>(m: &RouteMatch, req: &Request<B>) -> bool {
    m.path_prefix
        .as_deref()
        .is_none_or(|p| req.uri().path().starts_with(p))
        && m.method
            .as_deref()
            .is_none_or(|x| req.method().as_str() == x)
        && m.headers
            .iter()
            .all(|(k, v)| req.headers().get(k).and_then(|h| h.to_str().ok()) == Some(v.as_str()))
}

/// The first rule that matches, and a backend chosen by weight.
pub fn choose<B>(rules: &[Rule], req: &Request<B>) -> Option<(usize, usize)> {
    let (ri, rule) = rules
        .iter()
        .enumerate()
        .find(|(_, r)| r.matches.is_empty() || r.matches.iter().any(|m| matches(m, req)))?;
    let total: u32 = rule.backends.iter().map(|b| b.weight).sum();
    if total == 0 {
        return None;
    }
    let mut x = rand::rng().random_range(0..total);
    for (bi, b) in rule.backends.iter().enumerate() {
        if x < b.weight {
            return Some((ri, bi));
        }
        x -= b.weight;
    }
    None
}

/// How long a request for a service never seen waits for its config.
const FIRST_SIGHT_WAIT: Duration = Duration::from_secs(2);

/// Attaches the [`Target`] of each request.
#[derive(Clone)]
pub struct Route<S> {
    inner: S,
    config: Arc<Config>,
    /// Every request goes to this service, whatever its Host (HTTP the
    /// capture listener took for a service's virtual address).
    fixed: Option<ServiceId>,
}

impl<S> Route<S> {
    /// This stack with every request routed to `id` (the Host is left
    /// as the client sent it).
    pub fn fixed_to(mut self, id: ServiceId) -> Self {
        self.fixed = Some(id);
        self
    }
}

/// Layer for [`Route`].
#[derive(Clone)]
pub struct RouteLayer {
    config: Arc<Config>,
}

impl RouteLayer {
    /// Routes with the proxy's live config.
    pub fn new(config: Arc<Config>) -> Self {
        Self { config }
    }
}

impl<S> tower::Layer<S> for RouteLayer {
    type Service = Route<S>;
    fn layer(&self, inner: S) -> Route<S> {
        Route {
            inner,
            config: self.config.clone(),
            fixed: None,
        }
    }
}

impl<S: Next> tower::Service<Request<Body>> for Route<S> {
    type Response = Response<Body>;
    type Error = ProxyError;
    type Future = BoxFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: Request<Body>) -> BoxFuture {
        let mut inner = self.inner.clone();
        let config = self.config.clone();
        let fixed = self.fixed.clone();
        Box::pin(async move {
            // Rules match, and the callee receives, the one normal path.
            if let Some(uri) = crate::path::normalise_uri(req.uri()).map_err(ProxyError::BadPath)? {
                *req.uri_mut() = uri;
            }
            let id = match fixed {
                Some(id) => id,
                None => service_of_with(&req, &config.namespace, |p| config.is_peer(p))?,
            };
            let mut table = config.current().service(&id).cloned();
            if table.is_none() {
                // A service not seen before: ask the control plane for it and
                // give it a moment to arrive.
                table = config.learn(&id, FIRST_SIGHT_WAIT).await;
            }
            let label = format!("{}.{}", id.1, id.0);
            let table = table.ok_or_else(|| ProxyError::NoRoute(label.clone()))?;
            let (rule, backend) = choose(&table.rules, &req).ok_or(ProxyError::NoRoute(label))?;
            let stats = config.stats.service(&table.id);
            stats.used.store(true, std::sync::atomic::Ordering::Relaxed);
            if let Some(info) = req.extensions().get::<RouteInfo>() {
                let _ = info.0.set((
                    table.id.1.clone(),
                    table.rules[rule].backends[backend].label.clone(),
                ));
            }
            req.extensions_mut().insert(Target {
                table,
                rule,
                backend,
                stats,
            });
            inner.call(req).await
        })
    }
}

#[cfg(test)]
mod tests;
