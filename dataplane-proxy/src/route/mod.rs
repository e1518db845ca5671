//! Routing: from a request's authority to a service, its first matching
//! rule, and a weighted backend subset. `Route` is the tower service that
//! attaches the [`Target`] every later layer reads.

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response};
use rand::Rng;

use crate::compiled::{HashKey, Rule, ServiceId};
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

/// The first rule that matches, and a backend chosen by weight.
pub fn choose<B>(rules: &[Rule], req: &Request<B>) -> Option<(usize, usize)> {
    let (ri, rule) = rules
        .iter()
        .enumerate()
        .find(|(_, r)| r.matches.is_empty() || r.matches.iter().any(|m| m.test(req)))?;
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

/// A request leaving the mesh: a declared host's, or (under MeshConfig
/// `outbound: allow`) an undeclared one's.
async fn egress(
    config: &Config,
    dest: crate::egress::Destination,
    req: Request<Body>,
    host: String,
    port: u16,
) -> Result<Response<Body>, ProxyError> {
    let current = config.current();
    if matches!(dest, crate::egress::Destination::Undeclared)
        && current.authz.outbound == raftmesh_api::OutboundMode::Deny
    {
        return Err(ProxyError::EgressDenied(format!(
            "{host}:{port}: no External declares it and MeshConfig outbound is deny"
        )));
    }
    drop(current);
    let me = config.own_spiffe();
    crate::egress::send(dest, req, host, port, me.as_deref(), config).await
}

/// The hashed consistent-hash key of `req`, if it has one.
fn hash_key<B>(key: &HashKey, req: &Request<B>, me: &crate::compiled::Identity) -> Option<u64> {
    use crate::balance::ring::key_hash;
    match key {
        HashKey::Header(name) => req.headers().get(name).map(|v| key_hash(v.as_bytes())),
        HashKey::Cookie(name) => req
            .headers()
            .get_all(http::header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|c| c.trim().split_once('='))
            .find(|(k, _)| k == name)
            .map(|(_, v)| key_hash(v.as_bytes())),
        HashKey::Source => Some(key_hash(
            format!("{}/{}", me.namespace, me.service).as_bytes(),
        )),
    }
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
            // (A CONNECT names an authority, no path.)
            if req.method() != http::Method::CONNECT {
                if let Some(uri) =
                    crate::path::normalise_uri(req.uri()).map_err(ProxyError::BadPath)?
                {
                    *req.uri_mut() = uri;
                }
            }
            let mut outside = None;
            if fixed.is_none() {
                // A host an External declares, or an IP address: egress.
                let current = config.current();
                let ip_like = req
                    .uri()
                    .host()
                    .or_else(|| {
                        req.headers()
                            .get(http::header::HOST)
                            .and_then(|h| h.to_str().ok())
                    })
                    .and_then(|h| h.bytes().next())
                    .is_some_and(|b| b.is_ascii_digit() || b == b'[');
                if ip_like || !current.externals.is_empty() {
                    if let Some((host, port)) = crate::egress::host_port(&req) {
                        if let Some(e) = crate::egress::declared(&current.externals, &host) {
                            return egress(
                                &config,
                                crate::egress::Destination::Declared(e),
                                req,
                                host,
                                port,
                            )
                            .await;
                        }
                        if host.parse::<std::net::IpAddr>().is_ok() {
                            return egress(
                                &config,
                                crate::egress::Destination::Undeclared,
                                req,
                                host,
                                port,
                            )
                            .await;
                        }
                        outside = Some((host, port));
                    }
                }
            }
            let is_fixed = fixed.is_some();
            let id = match fixed {
                Some(id) => id,
                None => service_of_with(&req, &config.namespace, |p| config.is_peer(p))?,
            };
            let mut table = config.current().service(&id).cloned();
            if table.is_none() {
                // A service not seen before: ask the control plane for it and
                // give it a moment to arrive. A dotted name may be a host
                // outside the mesh: its misses are remembered a while.
                let host = match &outside {
                    Some(o) => Some(o.clone()),
                    None if !is_fixed => crate::egress::host_port(&req),
                    None => None,
                }
                // `name.<a namespace the proxy knows>` is only ever a mesh
                // name: a miss (or a control plane out of reach) is no
                // route, never a request out of the mesh.
                .filter(|(h, _)| {
                    crate::egress::may_be_external(h)
                        && !h
                            .split('.')
                            .nth(1)
                            .is_some_and(|ns| config.knows_namespace(ns))
                });
                table = match host {
                    Some((host, port)) => match config.lookup(&id, FIRST_SIGHT_WAIT).await {
                        Some(t) => Some(t),
                        None => {
                            return egress(
                                &config,
                                crate::egress::Destination::Undeclared,
                                req,
                                host,
                                port,
                            )
                            .await
                        }
                    },
                    None => config.learn(&id, FIRST_SIGHT_WAIT).await,
                };
            }
            let label = format!("{}.{}", id.1, id.0);
            let table = table.ok_or_else(|| ProxyError::NoRoute(label.clone()))?;
            let (rule, backend) = choose(&table.rules, &req).ok_or(ProxyError::NoRoute(label))?;
            let actions = table.rules[rule].actions.clone();
            if let Some(a) = &actions {
                if let Some(answer) = a.redirect_answer(&req, &table.rules[rule].matches) {
                    return Ok(answer);
                }
                a.apply_request(&mut req, &table.rules[rule].matches);
            }
            if let Some(m) = &table.rules[rule].mirror {
                req = m.copy(req, &table, rule, &config, &inner);
            }
            let hash = table
                .hash_on
                .as_ref()
                .and_then(|k| hash_key(k, &req, &config.identity));
            let stats = config.stats.service(&table.id);
            stats.used.store(true, std::sync::atomic::Ordering::Relaxed);
            let chosen = req.extensions().get::<Arc<RouteInfo>>().cloned();
            if let Some(info) = &chosen {
                info.routed(&table, rule, backend);
            }
            req.extensions_mut().insert(Target {
                table,
                rule,
                backend,
                stats,
                hash,
                chosen,
            });
            let mut resp = inner.call(req).await?;
            if let Some(ops) = actions.as_ref().and_then(|a| a.response_headers.as_ref()) {
                ops.apply(resp.headers_mut());
            }
            Ok(resp)
        })
    }
}

pub mod actions;
pub mod matching;
pub mod mirror;

#[cfg(test)]
mod tests;
