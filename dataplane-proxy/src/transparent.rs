//! The listener for captured outbound connections (`--capture ADDR`, the
//! port `mesh-proxy capture install --outbound-port` redirects to).
//!
//! Each connection's original destination comes from `SO_ORIGINAL_DST`.
//! HTTP whose Host is a mesh name (the forms mesh DNS answers) is served
//! like the outbound listener's (routing, retries, mTLS to the callee's
//! proxy), and so is HTTP to a service's virtual address, whatever its
//! Host; any other connection to a virtual address goes to one of the
//! service's endpoints (as opaque TCP, mTLS between the proxies); anything else — another host's HTTP,
//! TLS, any other TCP — is relayed unchanged
//! to where the workload was connecting (MeshConfig `outbound: allow`, the
//! default) or closed (`outbound: deny`). A connection made straight to this port (no
//! original destination other than the port itself) is closed, so the
//! proxy never relays to itself.

use std::sync::Arc;
use std::time::Duration;

use raftmesh_api::OutboundMode;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::conn::{accept, AcceptBackoff};
use crate::metrics::Metrics;
use crate::server::{outbound_connection, relay_stream, relay_to_service, sniff, OutboundStack};
use crate::state::Config;

/// How long the listener waits for a whole request head before it decides
/// by what it has (a slow client's HTTP is relayed, not routed).
const HEAD_WAIT: Duration = Duration::from_millis(300);
/// The most of a request head it looks at for the Host.
const HEAD_BYTES: usize = 8192;

/// Serves captured connections until `shutdown` turns true.
pub async fn serve_captured(
    listener: TcpListener,
    stack: OutboundStack,
    config: Arc<Config>,
    workload: Option<Arc<crate::tls::Workload>>,
    metrics: Arc<Metrics>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut backoff = AcceptBackoff::default();
    loop {
        let stream = tokio::select! {
            s = accept(&listener, &mut backoff, "capture") => s,
            _ = crate::stopped(&mut shutdown) => return,
            _ = crate::health::handing_over(&config.life) => return,
        };
        let (stack, config, metrics, stop) = (
            stack.clone(),
            config.clone(),
            metrics.clone(),
            shutdown.clone(),
        );
        let workload = workload.clone();
        tokio::spawn(async move {
            // A connection made straight to this port (not redirected) has
            // its own local address as its original destination.
            let dst = match crate::capture::original_dst(&stream) {
                Ok(d) if !is_local_addr(&stream, d) => d,
                Ok(_) | Err(_) => {
                    tracing::debug!("closed a connection made straight to the capture port");
                    metrics.error("not-captured");
                    return;
                }
            };
            let http = sniff(&stream).await;
            let vip = by_vip(&config, dst);
            if http && mesh_http(&stream, &config, workload.as_deref()).await {
                outbound_connection(stream, stack, stop, config.clone()).await;
            } else if let (true, Some(t)) = (http, &vip) {
                // HTTP to a service's virtual address, whatever its Host:
                // served as HTTP (routes, retries; the callee's policies
                // see the method and path, the app its caller).
                let stack = stack.fixed_to(t.id.clone());
                outbound_connection(stream, stack, stop, config.clone()).await;
            } else if let Some(t) = vip {
                // Any other TCP to a service's virtual address: to one of
                // its endpoints.
                let guard = crate::metrics::ConnGuard::open(&metrics, "outbound");
                relay_to_service(stream, &t, &config, workload.as_deref(), guard).await;
            } else if config.current().authz.outbound == OutboundMode::Deny {
                tracing::debug!(%dst, "closed a connection outside the mesh (MeshConfig outbound: deny)");
                metrics.error("outbound-denied");
            } else {
                // Out of the mesh: the peer is not a workload.
                let mut guard = crate::metrics::ConnGuard::open(&metrics, "outbound");
                let mut stream = guard.peer(&Default::default(), stream);
                let log = crate::accesslog::TcpStart::new(config.current().access_log.as_ref());
                let ended = relay_stream(&mut stream, dst).await.err();
                if let Some(l) = log {
                    let ends = crate::accesslog::TcpEnds {
                        direction: "outbound",
                        source: config.own_spiffe(),
                        destination: None,
                        service: String::new(),
                        endpoint: Some(dst),
                    };
                    l.finish(&config.access_log, ends, stream.totals(), ended);
                }
            }
        });
    }
}

/// Where a plaintext connection on the inbound port goes when capture
/// redirected it there from another port of this host than the app's
/// (`None`: it came to the inbound port itself, or to the app's port):
/// the address it was made to. Such connections follow the same rules as
/// any plaintext caller (refused while mTLS is strict, policies applied).
pub(crate) fn passthrough(stream: &TcpStream, app_port: u16) -> Option<std::net::SocketAddr> {
    let dst = crate::capture::original_dst(stream).ok()?;
    (!is_local_addr(stream, dst) && dst.port() != app_port).then_some(dst)
}

/// Whether `dst` is the accepted socket's own address (a connection made
/// straight to the port, not redirected); IPv4-mapped addresses of a
/// socket bound to `[::]` compare as IPv4.
fn is_local_addr(stream: &TcpStream, dst: std::net::SocketAddr) -> bool {
    let canon = |a: std::net::SocketAddr| (a.ip().to_canonical(), a.port());
    stream.local_addr().is_ok_and(|l| canon(l) == canon(dst))
}

/// The service whose virtual address `dst` is, if the proxy holds it.
fn by_vip(
    config: &Config,
    dst: std::net::SocketAddr,
) -> Option<Arc<crate::compiled::ServiceTable>> {
    match dst.ip() {
        std::net::IpAddr::V4(ip) => config.current().service_by_vip(ip).cloned(),
        std::net::IpAddr::V6(_) => None,
    }
}

/// Whether the connection's first request names a mesh service in its Host.
async fn mesh_http(
    stream: &TcpStream,
    config: &Config,
    workload: Option<&crate::tls::Workload>,
) -> bool {
    let Some(host) = peek_host(stream).await else {
        return false;
    };
    // An address is no service name (a virtual address is found by the
    // connection's destination instead).
    let bare = host.rsplit_once(':').map_or(host.as_str(), |(h, _)| h);
    if bare
        .trim_matches(|c| c == '[' || c == ']')
        .parse::<std::net::IpAddr>()
        .is_ok()
    {
        return false;
    }
    // Only mesh names (`example.com`, `admin.prod.example.com` are outside
    // hosts, relayed at once).
    let Some((id, _)) = crate::dns::mesh_name(config, workload, bare) else {
        return false;
    };
    // A mesh name this proxy has not needed yet (a control plane knows);
    // an outside name costs one bounded look-up, then none for a while.
    config.lookup(&id, Duration::from_secs(1)).await.is_some()
}

/// The Host of the request head waiting on `stream`, read without
/// consuming it.
async fn peek_host(stream: &TcpStream) -> Option<String> {
    let mut buf = vec![0u8; HEAD_BYTES];
    let deadline = tokio::time::Instant::now() + HEAD_WAIT;
    loop {
        let n = tokio::time::timeout_at(deadline, stream.peek(&mut buf))
            .await
            .ok()?
            .ok()?;
        let head = &buf[..n];
        if let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            return host_of(&head[..end]);
        }
        if n == buf.len() || n == 0 {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// The Host header of an HTTP/1 request head.
fn host_of(head: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(head).ok()?;
    text.split("\r\n").skip(1).find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.trim()
            .eq_ignore_ascii_case("host")
            .then(|| value.trim().to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::host_of;

    #[test]
    fn the_host_is_read_from_the_request_head() {
        assert_eq!(
            host_of(b"GET / HTTP/1.1\r\nUser-Agent: curl\r\nhOsT:  web.default:80 ").as_deref(),
            Some("web.default:80")
        );
        assert_eq!(host_of(b"GET / HTTP/1.1\r\nAccept: */*"), None);
        assert_eq!(host_of(b"\xff\xfe"), None);
    }
}
