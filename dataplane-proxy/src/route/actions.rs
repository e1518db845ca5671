//! What a rule does to a request besides choosing where it goes: path and
//! host rewrites, request and response header changes, and redirects the
//! caller's proxy answers itself. Compiled once per config; a rule without
//! any has none (`Rule::actions` is `None`) and costs nothing.

use http::header::{HeaderName, HeaderValue, HOST, LOCATION};
use http::{HeaderMap, Request, Response, StatusCode, Uri};
use raftmesh_api::RouteRule;

use super::matching::Match;
use crate::Body;

/// Header changes, compiled.
#[derive(Debug, Clone, Default)]
pub struct HeaderOps {
    set: Vec<(HeaderName, HeaderValue)>,
    add: Vec<(HeaderName, HeaderValue)>,
    remove: Vec<HeaderName>,
}

impl HeaderOps {
    fn compile(ops: &raftmesh_api::HeaderOps) -> Self {
        let pairs = |m: &std::collections::BTreeMap<String, String>| {
            m.iter()
                .filter_map(|(k, v)| {
                    Some((
                        HeaderName::from_bytes(k.to_ascii_lowercase().as_bytes()).ok()?,
                        HeaderValue::from_str(v).ok()?,
                    ))
                })
                .collect()
        };
        HeaderOps {
            set: pairs(&ops.set),
            add: pairs(&ops.add),
            remove: ops
                .remove
                .iter()
                .filter_map(|k| HeaderName::from_bytes(k.to_ascii_lowercase().as_bytes()).ok())
                .collect(),
        }
    }

    /// Applies them: remove, then set, then add.
    pub fn apply(&self, headers: &mut HeaderMap) {
        for k in &self.remove {
            headers.remove(k);
        }
        for (k, v) in &self.set {
            headers.insert(k.clone(), v.clone());
        }
        for (k, v) in &self.add {
            headers.append(k.clone(), v.clone());
        }
    }
}

/// A redirect, compiled.
#[derive(Debug, Clone)]
pub struct Redirect {
    status: StatusCode,
    scheme: Option<String>,
    host: Option<String>,
    port: Option<u16>,
    path: Option<String>,
    path_prefix: Option<String>,
}

/// Everything a rule does besides choosing a backend.
#[derive(Debug, Clone, Default)]
pub struct Actions {
    rewrite_prefix: Option<String>,
    rewrite_host: Option<HeaderValue>,
    request_headers: Option<HeaderOps>,
    /// Changes to the answer's headers.
    pub response_headers: Option<HeaderOps>,
    /// The redirect this rule answers with instead of routing.
    pub redirect: Option<Redirect>,
}

impl Actions {
    /// A rule's actions; `None` when it has none.
    pub fn compile(rule: &RouteRule) -> Option<Self> {
        let rw = rule.rewrite.as_ref();
        let a = Actions {
            rewrite_prefix: rw.and_then(|r| r.path_prefix.clone()),
            rewrite_host: rw
                .and_then(|r| r.host.as_deref())
                .and_then(|h| HeaderValue::from_str(h).ok()),
            request_headers: rule.request_headers.as_ref().map(HeaderOps::compile),
            response_headers: rule.response_headers.as_ref().map(HeaderOps::compile),
            redirect: rule.redirect.as_ref().map(|r| Redirect {
                status: r
                    .status
                    .and_then(|s| u16::try_from(s).ok())
                    .and_then(|s| StatusCode::from_u16(s).ok())
                    .unwrap_or(StatusCode::FOUND),
                scheme: r.scheme.clone(),
                host: r.host.clone(),
                port: r.port.and_then(|p| u16::try_from(p).ok()),
                path: r.path.clone(),
                path_prefix: r.path_prefix.clone(),
            }),
        };
        let none = a.rewrite_prefix.is_none()
            && a.rewrite_host.is_none()
            && a.request_headers.is_none()
            && a.response_headers.is_none()
            && a.redirect.is_none();
        (!none).then_some(a)
    }

    /// Rewrites the request the callee receives: its path prefix, its host,
    /// its headers. `matches` are the rule's (the first that holds gave the
    /// prefix replaced).
    pub fn apply_request(&self, req: &mut Request<Body>, matches: &[Match]) {
        if let Some(to) = &self.rewrite_prefix {
            if let Some(path) = replaced_prefix(req, matches, to) {
                let pq = match req.uri().query() {
                    Some(q) => format!("{path}?{q}"),
                    None => path,
                };
                let mut parts = req.uri().clone().into_parts();
                if let Ok(pq) = pq.parse() {
                    parts.path_and_query = Some(pq);
                    if let Ok(uri) = Uri::from_parts(parts) {
                        *req.uri_mut() = uri;
                    }
                }
            }
        }
        if let Some(host) = &self.rewrite_host {
            if req.uri().authority().is_some() {
                let mut parts = req.uri().clone().into_parts();
                if let Ok(a) = host.to_str().unwrap_or_default().parse() {
                    parts.authority = Some(a);
                    if let Ok(uri) = Uri::from_parts(parts) {
                        *req.uri_mut() = uri;
                    }
                }
            }
            if req.version() < http::Version::HTTP_2 || req.headers().contains_key(HOST) {
                req.headers_mut().insert(HOST, host.clone());
            }
        }
        if let Some(ops) = &self.request_headers {
            ops.apply(req.headers_mut());
        }
    }

    /// The redirect answer to `req`: the parts the redirect does not give
    /// are the request's own.
    pub fn redirect_answer<B>(
        &self,
        req: &Request<B>,
        matches: &[Match],
    ) -> Option<Response<Body>> {
        let rd = self.redirect.as_ref()?;
        let (req_host, req_port) = request_host(req);
        let scheme = rd
            .scheme
            .as_deref()
            .or(req.uri().scheme_str())
            .unwrap_or("http");
        let host = rd.host.as_deref().unwrap_or(&req_host);
        // A new host without a port drops the request's port; a new scheme
        // drops it too (it was the old scheme's).
        let port = rd.port.or(if rd.host.is_none() && rd.scheme.is_none() {
            req_port
        } else {
            None
        });
        let path = match (&rd.path, &rd.path_prefix) {
            (Some(p), _) => p.clone(),
            (None, Some(to)) => {
                replaced_prefix(req, matches, to).unwrap_or_else(|| req.uri().path().to_string())
            }
            (None, None) => req.uri().path().to_string(),
        };
        let mut location = format!("{scheme}://{host}");
        if let Some(p) = port {
            location += &format!(":{p}");
        }
        location += &path;
        if let Some(q) = req.uri().query() {
            location += "?";
            location += q;
        }
        let mut resp = Response::new(crate::empty());
        *resp.status_mut() = rd.status;
        if let Ok(v) = HeaderValue::from_str(&location) {
            resp.headers_mut().insert(LOCATION, v);
        }
        if let Some(ops) = &self.response_headers {
            ops.apply(resp.headers_mut());
        }
        Some(resp)
    }
}

/// The request's path with the prefix its first holding match tested
/// replaced by `to` (`None` when no match tests a prefix).
fn replaced_prefix<B>(req: &Request<B>, matches: &[Match], to: &str) -> Option<String> {
    let prefix = matches.iter().find(|m| m.test(req))?.prefix()?;
    let rest = req.uri().path().strip_prefix(prefix)?;
    join_prefix(prefix, rest, to)
}

/// The path with `prefix` (matched, leaving `rest`) replaced by `to`, on
/// path segments: `/api` → `/v2` turns `/api/items` into `/v2/items` and
/// `/api/` → `/v2` does too, but `/apiadmin` is not rewritten (`None`):
/// the prefix ended inside a segment.
pub fn join_prefix(prefix: &str, rest: &str, to: &str) -> Option<String> {
    let base = to.trim_end_matches('/');
    let joined = if prefix.ends_with('/') {
        format!("{base}/{rest}")
    } else if rest.is_empty() || rest.starts_with('/') {
        format!("{base}{rest}")
    } else {
        return None;
    };
    Some(if joined.is_empty() {
        "/".into()
    } else {
        joined
    })
}

/// The host and port the request named.
fn request_host<B>(req: &Request<B>) -> (String, Option<u16>) {
    if let Some(a) = req.uri().authority() {
        return (a.host().to_string(), a.port_u16());
    }
    let h = req
        .headers()
        .get(HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or_default();
    match h.parse::<http::uri::Authority>() {
        Ok(a) => (a.host().to_string(), a.port_u16()),
        Err(_) => (String::new(), None),
    }
}
