//! Egress: requests for hosts outside the mesh, through the outbound
//! proxy. A host an `External` of the proxy's namespace declares is
//! reached on its declared ports, with TLS origination if it asks for it,
//! after the Policies on that External (`external: true`) allow this
//! workload; a CONNECT to it opens a TCP tunnel. A host nothing declares
//! (an IP address or a dotted name no mesh service answers to) is relayed
//! as it is under MeshConfig `outbound: allow` (the default) and refused
//! with `egress-denied` under `outbound: deny`.

use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use http::{Method, Request, Response, Uri};
use http_body_util::BodyExt;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use raftmesh_api::{Resource, Spec};
use tokio::net::TcpStream;

use crate::compiled::Authz;
use crate::error::ProxyError;
use crate::Body;

/// How long connecting to an external host may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// One External, compiled.
#[derive(Debug)]
pub struct External {
    /// Its resource name.
    pub name: String,
    exact: HashSet<String>,
    /// `.example.com` for `*.example.com`.
    suffixes: Vec<String>,
    /// Ports it may be reached on.
    pub ports: Vec<u16>,
    /// TLS origination: the port and the client config (roots), or why
    /// there is none (then requests to it are refused).
    pub tls: Option<Result<(u16, Arc<rustls::ClientConfig>), String>>,
    /// The Policies on it (and the mesh's default and trust domain).
    pub authz: Authz,
}

impl External {
    /// Whether it declares `host` (lower-case, no port).
    pub fn declares(&self, host: &str) -> bool {
        self.exact.contains(host) || self.suffixes.iter().any(|s| host.ends_with(s.as_str()))
    }
}

/// The Externals of the proxy's namespace, with the Policies on them.
pub fn compile(resources: &[&Resource], namespace: &str, mesh: &Authz) -> Vec<Arc<External>> {
    let policies: Vec<_> = resources
        .iter()
        .filter(|r| r.metadata.namespace == namespace)
        .filter_map(|r| match &r.spec {
            Spec::Policy(p) if p.external => Some(p.clone()),
            _ => None,
        })
        .collect();
    resources
        .iter()
        .filter(|r| r.metadata.namespace == namespace)
        .filter_map(|r| {
            let Spec::External(e) = &r.spec else {
                return None;
            };
            let name = r.metadata.name.clone();
            let ports = if e.ports.is_empty() {
                raftmesh_api::ExternalSpec::DEFAULT_PORTS.to_vec()
            } else {
                e.ports.clone()
            };
            let tls = e.tls.as_ref().map(|t| {
                let port = t.port.and_then(|p| u16::try_from(p).ok()).unwrap_or(443);
                client_config(t.ca_pem.as_deref())
                    .map(|c| (port, c))
                    .inspect_err(|why| tracing::warn!(external = %name, %why, "cannot originate TLS; requests to it are refused"))
            });
            Some(Arc::new(External {
                exact: e
                    .hosts
                    .iter()
                    .filter(|h| !h.starts_with("*."))
                    .cloned()
                    .collect(),
                suffixes: e
                    .hosts
                    .iter()
                    .filter_map(|h| h.strip_prefix('*').map(str::to_string))
                    .collect(),
                ports: ports.iter().filter_map(|p| u16::try_from(*p).ok()).collect(),
                tls,
                authz: Authz {
                    policies: policies.iter().filter(|p| p.service == name).cloned().collect(),
                    ..mesh.clone()
                },
                name,
            }))
        })
        .collect()
}

/// A TLS client verifying with `ca_pem`, or with the system's roots.
fn client_config(ca_pem: Option<&str>) -> Result<Arc<rustls::ClientConfig>, String> {
    let mut roots = rustls::RootCertStore::empty();
    match ca_pem {
        Some(pem) => {
            for c in rustls_pki_types::CertificateDer::pem_slice_iter(pem.as_bytes()) {
                let c = c.map_err(|e| format!("ca_pem: {e}"))?;
                roots.add(c).map_err(|e| format!("ca_pem: {e}"))?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            for c in found.certs {
                let _ = roots.add(c);
            }
            if roots.is_empty() {
                return Err("no system root certificates found (give tls.ca_pem)".into());
            }
        }
    }
    let mut c = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    c.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(c))
}

use rustls_pki_types::pem::PemObject;

/// Where a request goes when it leaves the mesh.
pub enum Destination {
    /// A host an External declares.
    Declared(Arc<External>),
    /// A host nothing declares.
    Undeclared,
}

/// The host (lower-case) and port a request names; a CONNECT must give a
/// port, other requests default to 80.
pub fn host_port<B>(req: &Request<B>) -> Option<(String, u16)> {
    let authority = match req.uri().authority() {
        Some(a) => a.clone(),
        None => req
            .headers()
            .get(http::header::HOST)?
            .to_str()
            .ok()?
            .parse()
            .ok()?,
    };
    let port = match authority.port_u16() {
        Some(p) => p,
        None if req.method() == Method::CONNECT => return None,
        None => 80,
    };
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    Some((host.to_ascii_lowercase(), port))
}

/// The External of `externals` declaring `host`.
pub fn declared(externals: &[Arc<External>], host: &str) -> Option<Arc<External>> {
    externals.iter().find(|e| e.declares(host)).cloned()
}

/// Whether `host` can only be outside the mesh, or may be once no mesh
/// service answers to it: an IP address, or a dotted name. (A single
/// label is only ever a mesh name.)
pub fn may_be_external(host: &str) -> bool {
    host.parse::<IpAddr>().is_ok() || host.contains('.')
}

/// A TCP stream the outbound listener splices with the client once the
/// CONNECT's 200 is sent (a response extension).
#[derive(Clone, Default)]
pub struct Tunnel(pub Arc<Mutex<Option<TcpStream>>>);

impl Tunnel {
    /// The stream, once.
    pub fn take(&self) -> Option<TcpStream> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).take()
    }
}

/// Sends `req` out of the mesh to `host:port`.
pub async fn send(
    dest: Destination,
    mut req: Request<Body>,
    host: String,
    port: u16,
    me: Option<&str>,
    config: &crate::state::Config,
) -> Result<Response<Body>, ProxyError> {
    let where_to = format!("{host}:{port}");
    // Never to this proxy's own listeners (a request relayed to itself
    // would loop until sockets run out).
    let loops = |addrs: &[std::net::SocketAddr]| {
        if addrs.iter().any(|a| config.is_own(*a)) {
            Err(ProxyError::EgressDenied(format!(
                "{where_to} is this proxy's own listener"
            )))
        } else {
            Ok(())
        }
    };
    let tls = match &dest {
        Destination::Declared(e) => {
            if !e.ports.contains(&port) {
                return Err(ProxyError::EgressDenied(format!(
                    "{where_to}: port {port} is not one External {:?} declares",
                    e.name
                )));
            }
            // A CONNECT tunnel carries anything: decided as opaque TCP.
            let (m, p) = if req.method() == Method::CONNECT {
                ("", "")
            } else {
                (req.method().as_str(), req.uri().path())
            };
            crate::authz::decide(&e.authz, me, m, p).map_err(ProxyError::Denied)?;
            e.tls.clone()
        }
        Destination::Undeclared => None,
    };
    if req.method() == Method::CONNECT {
        let addrs = resolve(&host, port).await?;
        loops(&addrs)?;
        let stream = connect(&addrs, &where_to).await?;
        let mut resp = Response::new(crate::empty());
        resp.extensions_mut()
            .insert(Tunnel(Arc::new(Mutex::new(Some(stream)))));
        return Ok(resp);
    }
    crate::forward::strip_hop_by_hop(req.headers_mut());
    match tls {
        Some(Ok((tls_port, client))) => {
            let addrs = resolve(&host, tls_port).await?;
            loops(&addrs)?;
            return originate(req, &host, tls_port, &addrs, client).await;
        }
        Some(Err(why)) => return Err(ProxyError::Connect(format!("{where_to} ({why})"))),
        None => {}
    }
    loops(&resolve(&host, port).await?)?;
    // Plain HTTP, on pooled connections.
    static PLAIN: OnceLock<Client<HttpConnector, Body>> = OnceLock::new();
    let client = PLAIN.get_or_init(|| {
        let mut c = HttpConnector::new();
        c.set_connect_timeout(Some(CONNECT_TIMEOUT));
        c.set_nodelay(true);
        Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(c)
    });
    let pq = req
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_string();
    *req.uri_mut() = format!("http://{where_to}{pq}")
        .parse::<Uri>()
        .map_err(|_| ProxyError::BadRequest)?;
    match client.request(req).await {
        Ok(r) => Ok(r.map(|b| b.boxed())),
        Err(e) if e.is_connect() => Err(ProxyError::Connect(where_to)),
        Err(_) => Err(ProxyError::Reset(where_to)),
    }
}

/// The addresses of `host`; a name that does not resolve is no route (it
/// was no mesh service either).
async fn resolve(host: &str, port: u16) -> Result<Vec<std::net::SocketAddr>, ProxyError> {
    let none = || {
        ProxyError::NoRoute(format!(
            "{host} (neither a mesh service nor a resolvable host)"
        ))
    };
    let addrs: Vec<_> =
        tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::lookup_host((host, port)))
            .await
            .map_err(|_| none())?
            .map_err(|_| none())?
            .collect();
    if addrs.is_empty() {
        return Err(none());
    }
    Ok(addrs)
}

/// A connection to the first of `addrs` that answers (the addresses the
/// loop check passed: never resolved again in between).
async fn connect(addrs: &[std::net::SocketAddr], where_to: &str) -> Result<TcpStream, ProxyError> {
    let s = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addrs))
        .await
        .map_err(|_| ProxyError::Connect(where_to.to_string()))?
        .map_err(|_| ProxyError::Connect(where_to.to_string()))?;
    let _ = s.set_nodelay(true);
    Ok(s)
}

/// Sends `req` over TLS to `host:port`, the certificate verified for
/// `host` (one connection per request).
async fn originate(
    mut req: Request<Body>,
    host: &str,
    port: u16,
    addrs: &[std::net::SocketAddr],
    client: Arc<rustls::ClientConfig>,
) -> Result<Response<Body>, ProxyError> {
    let where_to = format!("{host}:{port}");
    let name = rustls_pki_types::ServerName::try_from(host.to_string())
        .map_err(|_| ProxyError::BadHost(host.to_string()))?;
    let tcp = connect(addrs, &where_to).await?;
    let tls = tokio::time::timeout(
        CONNECT_TIMEOUT,
        tokio_rustls::TlsConnector::from(client).connect(name, tcp),
    )
    .await
    .map_err(|_| ProxyError::Connect(where_to.clone()))?
    .map_err(|e| {
        tracing::info!(to = %where_to, error = %e, "TLS origination failed");
        ProxyError::Connect(where_to.clone())
    })?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .map_err(|_| ProxyError::Connect(where_to.clone()))?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "TLS-originated connection ended with an error");
        }
    });
    let pq = req
        .uri()
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
    *req.uri_mut() = Uri::from(pq);
    *req.version_mut() = http::Version::HTTP_11;
    sender
        .send_request(req)
        .await
        .map(|r| r.map(|b| b.boxed()))
        .map_err(|_| ProxyError::Reset(where_to))
}
