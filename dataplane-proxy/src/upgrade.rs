//! HTTP/1.1 upgrades (WebSocket and any other `Upgrade` but h2c) and
//! CONNECT tunnels through the mesh. The request goes through the usual
//! stack (routing, authorization, balancing, mTLS) with its upgrade
//! headers kept; when the far side switches protocols (101, or 2xx to a
//! CONNECT), the two connections are spliced and bytes flow both ways until
//! either side closes. A caller's CONNECT reaches the callee's proxy, which
//! opens the tunnel to its app's port itself (a TCP stream through the mesh
//! for a client that can only speak to an HTTP proxy).

use http::header::{HeaderMap, HeaderValue, CONNECTION, UPGRADE};
use http::{Method, Request, Response, StatusCode, Version};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use std::sync::Arc;

use tokio::sync::watch;

use crate::health::Life;
use crate::state::Config;
use crate::Body;

/// Whether `h`'s `Connection` lists the `upgrade` token.
fn connection_upgrade(h: &HeaderMap) -> bool {
    h.get_all(CONNECTION).iter().any(|v| {
        v.to_str().is_ok_and(|s| {
            s.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
        })
    })
}

/// The protocol an HTTP/1.1 request asks to switch to, if it asks
/// (`Connection: upgrade` and `Upgrade`; never h2c, which the proxy speaks
/// itself by prior knowledge).
fn wanted(h: &HeaderMap) -> Option<&HeaderValue> {
    let up = h.get(UPGRADE)?;
    let h2c = up.to_str().map_or(true, |s| {
        s.split(',').any(|t| t.trim().eq_ignore_ascii_case("h2c"))
    });
    (connection_upgrade(h) && !h2c && h.get_all(UPGRADE).iter().count() == 1).then_some(up)
}

/// Whether `req` opens a tunnel: a CONNECT, or an HTTP/1.1 upgrade.
pub fn requested<B>(req: &Request<B>) -> bool {
    req.version() == Version::HTTP_11
        && (req.method() == Method::CONNECT || wanted(req.headers()).is_some())
}

/// Strips the hop-by-hop headers (`forward::strip_hop_by_hop`) but those
/// that carry an upgrade on to the next hop.
pub fn strip_keeping_upgrade(h: &mut HeaderMap) {
    let up = wanted(h).cloned();
    crate::forward::strip_hop_by_hop(h);
    if let Some(up) = up {
        h.insert(CONNECTION, HeaderValue::from_static("upgrade"));
        h.insert(UPGRADE, up);
    }
}

/// Whether `resp` switched protocols for a request of `method`.
pub fn switched(method: &Method, resp: &Response<Body>) -> bool {
    resp.status() == StatusCode::SWITCHING_PROTOCOLS
        || (method == Method::CONNECT && resp.status().is_success())
}

/// Ends a tunnel when a config change stops allowing it (`still` runs
/// again on each change: a policy, strict mTLS), and when the proxy
/// closes (a drain or a takeover).
pub struct Guard {
    /// The proxy's lifecycle.
    pub life: watch::Sender<Life>,
    /// The config, and whether the tunnel may go on under it (none on the
    /// caller's side, where no policy decides).
    pub policy: Option<(Arc<Config>, crate::guard::StillAllowed)>,
}

/// Splices the client's upgraded connection with the far side's, once
/// both are handed over, until either closes (or `guard` says no more).
pub fn splice(client: OnUpgrade, resp: &mut Response<Body>, guard: Option<Guard>) {
    let far = hyper::upgrade::on(resp);
    tokio::spawn(async move {
        match tokio::try_join!(client, far) {
            Ok((c, f)) => relay(TokioIo::new(c), TokioIo::new(f), guard).await,
            Err(e) => tracing::debug!(error = %e, "an upgrade did not complete"),
        }
    });
}

/// Splices the client's upgraded connection (a CONNECT answered 200) with
/// a TCP stream to the app.
pub fn splice_tcp(client: OnUpgrade, app: tokio::net::TcpStream, guard: Option<Guard>) {
    tokio::spawn(async move {
        match client.await {
            Ok(c) => relay(TokioIo::new(c), app, guard).await,
            Err(e) => tracing::debug!(error = %e, "a CONNECT tunnel did not open"),
        }
    });
}

async fn relay<A, B>(mut a: A, mut b: B, guard: Option<Guard>)
where
    A: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    B: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let copy = tokio::io::copy_bidirectional(&mut a, &mut b);
    let Some(Guard { life, policy }) = guard else {
        let _ = copy.await;
        return;
    };
    let revoked = async move {
        match policy {
            Some((config, still)) => crate::guard::until(config, still).await,
            // No policy decides: keep to the copy.
            None => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = copy => {}
        () = revoked => tracing::info!("closed a tunnel: the config no longer allows it"),
        () = crate::health::closing(&life) => tracing::debug!("closed a tunnel: the proxy is closing"),
    }
}
