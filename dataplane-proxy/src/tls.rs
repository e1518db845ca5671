//! Workload identity and mutual TLS: the proxy's key (made here, never
//! sent anywhere), the certificate and trust bundle meshd issues, rustls
//! configurations built from them, and the connector outbound connections
//! use (mTLS to endpoints that have a mesh identity, plaintext otherwise).

use raftmesh_api::{files, identity};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use rcgen::{CertificateParams, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// ALPN of opaque TCP carried over mTLS.
pub const ALPN_TCP: &[u8] = b"raftmesh-tcp";

use crate::unix_ms;

/// The crypto provider of every rustls config the proxy builds.
pub(crate) fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// rustls configurations for one certificate and trust bundle.
pub struct Tls {
    /// Inbound, client certificates required (strict).
    pub server_strict: Arc<ServerConfig>,
    /// Inbound, client certificates optional (permissive).
    pub server_permissive: Arc<ServerConfig>,
    /// Outbound, ALPN http/1.1.
    pub client_h1: Arc<ClientConfig>,
    /// Outbound, ALPN h2.
    pub client_h2: Arc<ClientConfig>,
    /// Outbound, ALPN raftmesh-tcp.
    pub client_tcp: Arc<ClientConfig>,
    /// This workload's SPIFFE ID.
    pub spiffe: String,
}

#[derive(Default)]
struct State {
    cert_pem: Option<String>,
    bundle: Vec<String>,
    /// Peers' trust domains and their roots (PEM).
    peers: Vec<(String, String)>,
    expires_at_ms: u64,
    received_at_ms: u64,
}

/// The workload's key, certificate and trust bundle.
pub struct Workload {
    key: KeyPair,
    dir: Option<PathBuf>,
    state: Mutex<State>,
    tls: ArcSwapOption<Tls>,
}

impl Workload {
    /// The key from `state_dir/identity/` (with its certificate and bundle),
    /// or a new key when there is none.
    pub fn load_or_generate(state_dir: Option<PathBuf>) -> Result<Arc<Self>, String> {
        let dir = state_dir.map(|d| d.join("identity"));
        let dir_read = dir.clone();
        let read = move |name: &str| {
            dir_read
                .as_ref()
                .and_then(|d| std::fs::read_to_string(d.join(name)).ok())
        };
        let key = match read("key.pem") {
            Some(pem) => KeyPair::from_pem(&pem)
                .map_err(|e| format!("the saved workload key is unusable: {e}"))?,
            None => KeyPair::generate().map_err(|e| format!("cannot make a workload key: {e}"))?,
        };
        if let Some(d) = &dir {
            files::create_private_dir(d)
                .map_err(|e| format!("cannot create {}: {e}", d.display()))?;
            files::write_private(&d.join("key.pem"), key.serialize_pem().as_bytes())
                .map_err(|e| e.to_string())?;
        }
        let w = Arc::new(Self {
            key,
            dir,
            state: Mutex::new(State::default()),
            tls: ArcSwapOption::empty(),
        });
        if let (Some(cert), Some(bundle)) = (read("cert.pem"), read("bundle.pem")) {
            let meta: serde_json::Value = read("meta.json")
                .and_then(|m| serde_json::from_str(&m).ok())
                .unwrap_or_default();
            let expires = meta["expires_at_ms"].as_u64().unwrap_or(0);
            let received = meta["received_at_ms"].as_u64().unwrap_or(0);
            if expires > unix_ms() {
                let bundle: Vec<String> = split_pem(&bundle);
                if let Err(e) = w.install(Some(cert), bundle, expires, received) {
                    tracing::warn!(error = %e, "the saved workload certificate is unusable; asking for a new one");
                }
            }
        }
        Ok(w)
    }

    /// A certificate signing request for this key (meshd sets the names).
    pub fn csr(&self) -> Result<String, String> {
        CertificateParams::new(Vec::<String>::new())
            .and_then(|p| p.serialize_request(&self.key))
            .and_then(|c| c.pem())
            .map_err(|e| e.to_string())
    }

    /// The current certificate and a proof of holding its key over meshd's
    /// `nonce` and the Hello's CSR, if the certificate is valid for at
    /// least another minute.
    pub fn proof(&self, instance: &str, nonce: &[u8], csr_pem: &str) -> Option<(String, Vec<u8>)> {
        let s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let cert = s.cert_pem.clone()?;
        if s.expires_at_ms < unix_ms() + 60_000 {
            return None;
        }
        let msg = identity::hello_proof_message(instance, nonce, csr_pem);
        let sig = rcgen::SigningKey::sign(&self.key, &msg).ok()?;
        Some((cert, sig))
    }

    /// Whether the proxy holds a certificate valid for at least another
    /// minute (then it proves itself with it instead of a token).
    pub fn has_usable_certificate(&self) -> bool {
        let s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        s.cert_pem.is_some() && s.expires_at_ms >= unix_ms() + 60_000
    }

    /// Whether the certificate is past half its life (or missing).
    pub fn needs_renewal(&self) -> bool {
        let s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        match &s.cert_pem {
            None => true,
            Some(_) => {
                let half =
                    s.received_at_ms + (s.expires_at_ms.saturating_sub(s.received_at_ms)) / 2;
                unix_ms() >= half
            }
        }
    }

    /// Installs a certificate (or, with `None`, a new trust bundle only),
    /// rebuilds the TLS configurations and saves them.
    pub fn install(
        &self,
        cert_pem: Option<String>,
        bundle: Vec<String>,
        expires_at_ms: u64,
        received_at_ms: u64,
    ) -> Result<(), String> {
        let mut s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(c) = cert_pem {
            s.cert_pem = Some(c);
            s.expires_at_ms = expires_at_ms;
            s.received_at_ms = received_at_ms;
        }
        if !bundle.is_empty() {
            s.bundle = bundle;
        }
        let Some(cert) = s.cert_pem.clone() else {
            return Ok(());
        };
        let tls = build(&cert, &self.key.serialize_pem(), &s.bundle, &s.peers)?;
        self.tls.store(Some(Arc::new(tls)));
        if let Some(d) = &self.dir {
            let meta = serde_json::json!({"expires_at_ms": s.expires_at_ms, "received_at_ms": s.received_at_ms});
            for (name, data) in [
                ("cert.pem", cert),
                ("bundle.pem", s.bundle.join("")),
                ("meta.json", meta.to_string()),
            ] {
                files::write_private(&d.join(name), data.as_bytes()).map_err(|e| e.to_string())?;
            }
        }
        Ok(())
    }

    /// Trusts the peers' workload roots, each for its own trust domain
    /// only; rebuilds the TLS configurations when they changed.
    pub fn set_peers(&self, mut peers: Vec<(String, String)>) -> Result<(), String> {
        peers.sort();
        let mut s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if s.peers == peers {
            return Ok(());
        }
        s.peers = peers;
        let Some(cert) = s.cert_pem.clone() else {
            return Ok(());
        };
        let tls = build(&cert, &self.key.serialize_pem(), &s.bundle, &s.peers)?;
        self.tls.store(Some(Arc::new(tls)));
        Ok(())
    }

    /// The TLS configurations, once the proxy has a certificate.
    pub fn tls(&self) -> Option<Arc<Tls>> {
        self.tls.load_full()
    }
}

fn split_pem(s: &str) -> Vec<String> {
    s.split_inclusive("-----END CERTIFICATE-----")
        .map(|p| p.trim().to_string())
        .filter(|p| p.contains("BEGIN CERTIFICATE"))
        .map(|p| p + "\n")
        .collect()
}

fn roots_of<'a>(pems: impl Iterator<Item = &'a str>) -> Result<Arc<RootCertStore>, String> {
    let mut roots = RootCertStore::empty();
    for pem in pems {
        for c in CertificateDer::pem_slice_iter(pem.as_bytes()) {
            roots
                .add(c.map_err(|e| e.to_string())?)
                .map_err(|e| e.to_string())?;
        }
    }
    Ok(Arc::new(roots))
}

fn build(
    cert_pem: &str,
    key_pem: &str,
    bundle: &[String],
    peers: &[(String, String)],
) -> Result<Tls, String> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| format!("bad certificate: {e}"))?;
    let spiffe = chain
        .first()
        .and_then(|c| identity::spiffe_of_der(c))
        .ok_or("the certificate has no SPIFFE ID")?;
    let key =
        || PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| format!("bad key: {e}"));
    let roots = roots_of(bundle.iter().map(String::as_str))?;
    let own_td = identity::parse_spiffe_id(&spiffe)
        .map(|w| w.trust_domain.to_string())
        .unwrap_or_default();
    let mut domains = vec![(own_td, roots.clone())];
    for (td, pem) in peers {
        match roots_of(split_pem(pem).iter().map(String::as_str)) {
            Ok(r) if !r.is_empty() => domains.push((td.clone(), r)),
            Ok(_) => {
                tracing::warn!(trust_domain = %td, "a peer's trust bundle holds no certificate; its workloads are not trusted")
            }
            Err(e) => {
                tracing::warn!(trust_domain = %td, error = %e, "a peer's trust bundle is unusable; its workloads are not trusted")
            }
        }
    }
    let tls13 = &[&rustls::version::TLS13];
    let server = |required: bool| -> Result<Arc<ServerConfig>, String> {
        let verifier = crate::trust::ClientVerifier::new(&domains, required, provider())?;
        let mut c = ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(tls13)
            .map_err(|e| e.to_string())?
            .with_client_cert_verifier(Arc::new(verifier))
            .with_single_cert(chain.clone(), key()?)
            .map_err(|e| e.to_string())?;
        c.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec(), ALPN_TCP.to_vec()];
        Ok(Arc::new(c))
    };
    let client = |alpn: &[u8]| -> Result<Arc<ClientConfig>, String> {
        let verifier = crate::trust::ServerVerifier::new(&domains, provider())?;
        let mut c = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(tls13)
            .map_err(|e| e.to_string())?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_client_auth_cert(chain.clone(), key()?)
            .map_err(|e| e.to_string())?;
        c.alpn_protocols = vec![alpn.to_vec()];
        Ok(Arc::new(c))
    };
    Ok(Tls {
        server_strict: server(true)?,
        server_permissive: server(false)?,
        client_h1: client(b"http/1.1")?,
        client_h2: client(b"h2")?,
        client_tcp: client(ALPN_TCP)?,
        spiffe,
    })
}

/// The DNS name a workload's certificate carries, from its SPIFFE ID
/// (`spiffe://td/ns/NS/sa/SVC` → `SVC.NS.svc.td`).
pub fn server_name_for(spiffe: &str) -> Option<ServerName<'static>> {
    ServerName::try_from(identity::parse_spiffe_id(spiffe)?.dns_name()).ok()
}

/// A stream that is plaintext or TLS.
pub enum MeshStream {
    /// Plaintext.
    Plain(TcpStream),
    /// Client side of mutual TLS.
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl AsyncRead for MeshStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            MeshStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            MeshStream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for MeshStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            MeshStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            MeshStream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            MeshStream::Plain(s) => Pin::new(s).poll_flush(cx),
            MeshStream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            MeshStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            MeshStream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            MeshStream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            MeshStream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }
    fn is_write_vectored(&self) -> bool {
        match self {
            MeshStream::Plain(s) => s.is_write_vectored(),
            MeshStream::Tls(s) => s.is_write_vectored(),
        }
    }
}

/// The pool key of connections through a peer's gateway at `addr` to the
/// service named `sni`: one gateway address serves many names, and each
/// needs connections of its own (`10-0-0-1.api.default.svc.west.mesh:443`).
pub fn gateway_authority(sni: &str, addr: SocketAddr) -> String {
    let ip = addr.ip().to_string().replace([':', '.'], "-");
    format!("{ip}.{sni}:{}", addr.port())
}

/// The SNI label of one label set of a peer's service: `s` and 16 hex
/// digits of the SHA-256 of its keys and values in order, each preceded
/// by its length (stable across builds: callers and gateways of different
/// versions agree).
pub fn subset_id(labels: &std::collections::BTreeMap<String, String>) -> String {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    for s in labels.iter().flat_map(|(k, v)| [k, v]) {
        h.update((s.len() as u64).to_be_bytes());
        h.update(s.as_bytes());
    }
    let d = h.finalize();
    let mut out = String::with_capacity(17);
    out.push('s');
    for b in &d[..8] {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// Splits a service name of trust domain `td` into its subset label (if
/// it starts with one: `s<16 hex>.svc.ns.svc.<td>`) and the service's own
/// name (`svc.ns.svc.<td>`), which its certificate carries.
pub fn split_subset<'a>(sni: &'a str, td: &str) -> (Option<&'a str>, &'a str) {
    let is_id = |l: &str| {
        l.len() == 17
            && l.starts_with('s')
            && l[1..]
                .bytes()
                .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    };
    let Some(rest) = sni.strip_suffix(td).and_then(|r| r.strip_suffix(".svc.")) else {
        return (None, sni);
    };
    match rest.split('.').collect::<Vec<_>>()[..] {
        [id, _, _] if is_id(id) => (Some(id), &sni[id.len() + 1..]),
        _ => (None, sni),
    }
}

/// Which endpoints speak mutual TLS, and the name their certificate
/// carries, by the authority connections to them are pooled under (the
/// address, or [`gateway_authority`]).
#[derive(Clone, Default)]
pub struct Targets(Arc<Mutex<HashMap<String, (SocketAddr, ServerName<'static>)>>>);

impl Targets {
    /// Records that `authority` is a mesh workload at `addr` named `name`.
    pub fn set(&self, authority: &str, addr: SocketAddr, name: ServerName<'static>) {
        let mut m = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if m.get(authority)
            .is_none_or(|(a, n)| *a != addr || *n != name)
        {
            m.insert(authority.to_string(), (addr, name));
        }
    }

    fn get(&self, authority: &str) -> Option<(SocketAddr, ServerName<'static>)> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(authority)
            .cloned()
    }
}

/// Which ALPN an outbound connection offers.
#[derive(Clone, Copy, Debug)]
pub enum Alpn {
    /// http/1.1.
    H1,
    /// h2.
    H2,
}

/// How connections to one service's endpoints are opened: within its
/// connect timeout, and, under a connection limit, holding one of its
/// permits for the connection's life (a request finding every connection
/// busy and no permit waits for a connection to come back to the pool).
#[derive(Clone, Debug)]
pub struct Dial {
    /// Time limit of TCP and TLS.
    pub timeout: Duration,
    /// The service's connection permits, if it has a limit.
    pub limit: Option<Arc<tokio::sync::Semaphore>>,
}

impl Default for Dial {
    fn default() -> Self {
        Self {
            timeout: crate::compiled::CONNECT_TIMEOUT,
            limit: None,
        }
    }
}

tokio::task_local! {
    /// The [`Dial`] of the request being sent: hyper's pool asks the
    /// connector for a connection by address only, from the request's task.
    pub static DIAL: Dial;
}

/// Connects to endpoints: TCP, then mutual TLS when the endpoint is a mesh
/// workload and this proxy has a certificate.
#[derive(Clone)]
pub struct MeshConnector {
    /// The workload identity (none for a static-config proxy).
    pub workload: Option<Arc<Workload>>,
    /// Mesh endpoints.
    pub targets: Targets,
    /// ALPN offered.
    pub alpn: Alpn,
    /// Where handshakes are counted.
    pub metrics: Arc<crate::metrics::Metrics>,
}

impl MeshConnector {
    /// Opens a connection for `authority` (an address, or a name
    /// [`Targets`] knows), within the default connect timeout.
    pub async fn connect(&self, authority: &str) -> std::io::Result<MeshStream> {
        self.connect_within(authority, crate::compiled::CONNECT_TIMEOUT)
            .await
    }

    /// [`Self::connect`] within `timeout` (TCP and TLS).
    pub async fn connect_within(
        &self,
        authority: &str,
        timeout: Duration,
    ) -> std::io::Result<MeshStream> {
        tokio::time::timeout(timeout, self.open(authority))
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timeout"))?
    }

    async fn open(&self, authority: &str) -> std::io::Result<MeshStream> {
        let target = self.targets.get(authority);
        let addr = match (
            target.as_ref().map(|t| t.0),
            authority.parse::<SocketAddr>(),
        ) {
            (Some(a), _) | (None, Ok(a)) => a,
            (None, Err(_)) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    "endpoint is not IP:port",
                ))
            }
        };
        let tcp = TcpStream::connect(addr).await?;
        tcp.set_nodelay(true)?;
        let Some((_, name)) = target else {
            return Ok(MeshStream::Plain(tcp));
        };
        let Some(tls) = self.workload.as_ref().and_then(|w| w.tls()) else {
            if self.workload.is_some() {
                // Never plaintext to a mesh workload from a mesh proxy.
                return Err(std::io::Error::new(
                    std::io::ErrorKind::PermissionDenied,
                    "no workload certificate yet: a mesh workload is reached over mutual TLS only",
                ));
            }
            return Ok(MeshStream::Plain(tcp));
        };
        let cfg = match self.alpn {
            Alpn::H1 => tls.client_h1.clone(),
            Alpn::H2 => tls.client_h2.clone(),
        };
        let s = tokio_rustls::TlsConnector::from(cfg)
            .connect(name, tcp)
            .await
            .inspect_err(|e| {
                self.metrics
                    .handshake("client", Some(crate::metrics::handshake_failure(e)))
            })?;
        self.metrics.handshake("client", None);
        Ok(MeshStream::Tls(Box::new(s)))
    }
}

/// hyper's view of a [`MeshStream`] (holding its connection permit, if
/// its service has a limit).
pub struct MeshIo(
    hyper_util::rt::TokioIo<MeshStream>,
    // Held, never read: given back when the connection closes.
    #[allow(dead_code)] Option<tokio::sync::OwnedSemaphorePermit>,
);

impl hyper::rt::Read for MeshIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for MeshIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }
}

impl hyper_util::client::legacy::connect::Connection for MeshIo {
    fn connected(&self) -> hyper_util::client::legacy::connect::Connected {
        hyper_util::client::legacy::connect::Connected::new()
    }
}

impl tower::Service<http::Uri> for MeshConnector {
    type Response = MeshIo;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn std::future::Future<Output = std::io::Result<MeshIo>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let this = self.clone();
        // Read here, in the request's task (the future may finish in the
        // background, for the pool).
        let dial = DIAL.try_with(Dial::clone).unwrap_or_default();
        Box::pin(async move {
            // Waiting for a permit counts as connecting: past the connect
            // timeout the attempt fails (and is retried, as it never
            // reached the app), while hyper's pool may still hand the
            // request a connection that comes back meanwhile.
            let permit = match dial.limit {
                Some(s) => Some(
                    tokio::time::timeout(dial.timeout, s.acquire_owned())
                        .await
                        .map_err(|_| {
                            std::io::Error::new(
                                std::io::ErrorKind::TimedOut,
                                "the service's connection limit is reached",
                            )
                        })?
                        .map_err(|_| std::io::Error::other("the connection limit was replaced"))?,
                ),
                None => None,
            };
            let authority = uri.authority().map(|a| a.as_str()).unwrap_or_default();
            Ok(MeshIo(
                hyper_util::rt::TokioIo::new(this.connect_within(authority, dial.timeout).await?),
                permit,
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_spiffe_id_maps_to_the_dns_name_in_its_certificate() {
        let n = super::server_name_for("spiffe://east.mesh/ns/default/sa/web").unwrap();
        assert_eq!(
            format!("{n:?}"),
            format!(
                "{:?}",
                rustls::pki_types::ServerName::try_from("web.default.svc.east.mesh").unwrap()
            )
        );
        assert!(super::server_name_for("http://x").is_none());
    }
}
