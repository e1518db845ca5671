//! Zero-downtime upgrade of the proxy itself: a new mesh-proxy started
//! with `--takeover` and the same `--state-dir` receives the running one's
//! listening sockets over a Unix socket (`SCM_RIGHTS`) instead of binding
//! its own, starts serving on them, and says so; the old one then stops
//! accepting, closes its connections as their requests are answered, and
//! exits, without reporting not ready or deregistering: the endpoint, the
//! instance and the identity (the state directory's key and certificate)
//! carry over. Connections the kernel queued meanwhile are served by
//! whichever proxy accepts them; none is refused.
//!
//! The exchange, on `<state-dir>/takeover.sock` (owner-only):
//! 1. new → old: `raftmesh-takeover v1\n`;
//! 2. old → new: one message, the socket names as JSON on a line, with
//!    the descriptors attached in the same order;
//! 3. new → old: `ok\n` once it serves on them (or the connection closes:
//!    then the old proxy goes on as if nothing happened).

use std::collections::HashMap;
use std::io::{BufRead, BufReader, IoSlice, IoSliceMut, Write};
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use rustix::net::{
    recvmsg, sendmsg, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::watch;

const HELLO: &[u8] = b"raftmesh-takeover v1\n";
/// Most sockets handed over (a proxy has a dozen at most).
const MAX_FDS: usize = 64;

/// The socket a running proxy hands its listeners over on.
pub fn socket_path(state_dir: &Path) -> PathBuf {
    state_dir.join("takeover.sock")
}

/// The listening sockets a proxy serves on, by name: inherited from the
/// proxy it takes over from, or bound anew; each one kept (by descriptor)
/// for the next takeover.
#[derive(Default)]
pub struct Sockets {
    inherited: HashMap<String, OwnedFd>,
    /// What a later takeover is given: the sockets in use, by name (each
    /// a duplicate descriptor of the one its task serves on).
    pub kept: Vec<(String, OwnedFd)>,
}

impl Sockets {
    /// A TCP listener `name` on `addr` (the inherited one if there is).
    pub async fn tcp(&mut self, name: &str, addr: SocketAddr) -> std::io::Result<TcpListener> {
        let inherited = self
            .inherited
            .remove(name)
            .map(std::net::TcpListener::from)
            .filter(|l| {
                // The flags may have moved it: then a new one.
                l.local_addr().is_ok_and(|a| addr.port() == 0 || a == addr)
            });
        let l = match inherited {
            Some(std) => {
                std.set_nonblocking(true)?;
                tracing::info!(name, addr = %std.local_addr()?, "serving on a socket taken over");
                TcpListener::from_std(std)?
            }
            None => TcpListener::bind(addr).await?,
        };
        self.kept
            .push((name.to_string(), l.as_fd().try_clone_to_owned()?));
        Ok(l)
    }

    /// A UDP socket `name` on `addr` (the inherited one if there is).
    pub async fn udp(&mut self, name: &str, addr: SocketAddr) -> std::io::Result<UdpSocket> {
        let s = match self.inherited.remove(name) {
            Some(fd) => {
                let std = std::net::UdpSocket::from(fd);
                std.set_nonblocking(true)?;
                UdpSocket::from_std(std)?
            }
            None => UdpSocket::bind(addr).await?,
        };
        self.kept
            .push((name.to_string(), s.as_fd().try_clone_to_owned()?));
        Ok(s)
    }

    /// Names inherited but not asked for (the new proxy's flags dropped
    /// them): closed.
    pub fn unused(&self) -> Vec<String> {
        self.inherited.keys().cloned().collect()
    }
}

/// The old proxy, waiting to hear that the new one serves.
pub struct Ack(UnixStream);

impl Ack {
    /// Tells the old proxy this one serves: it stops accepting and drains.
    pub fn done(mut self) -> std::io::Result<()> {
        self.0.write_all(b"ok\n")
    }
}

/// Asks the proxy running on `state_dir` for its listening sockets.
pub fn receive(state_dir: &Path) -> anyhow::Result<(Sockets, Ack)> {
    let path = socket_path(state_dir);
    let mut stream = UnixStream::connect(&path).with_context(|| {
        format!(
            "--takeover: no running proxy answers on {} (start without --takeover)",
            path.display()
        )
    })?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.write_all(HELLO)?;
    let mut payload = vec![0u8; 64 * 1024];
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let n = recvmsg(
        &stream,
        &mut [IoSliceMut::new(&mut payload)],
        &mut control,
        RecvFlags::CMSG_CLOEXEC,
    )
    .context("--takeover: receiving the sockets")?
    .bytes;
    let mut fds: Vec<OwnedFd> = Vec::new();
    for m in control.drain() {
        if let RecvAncillaryMessage::ScmRights(got) = m {
            fds.extend(got);
        }
    }
    let names: Vec<String> =
        serde_json::from_slice(payload[..n].strip_suffix(b"\n").unwrap_or(&payload[..n]))
            .context("--takeover: the running proxy's answer is not a list of socket names")?;
    if names.len() != fds.len() {
        anyhow::bail!(
            "--takeover: {} socket names but {} descriptors received",
            names.len(),
            fds.len()
        );
    }
    tracing::info!(sockets = ?names, "took the running proxy's listening sockets");
    Ok((
        Sockets {
            inherited: names.into_iter().zip(fds).collect(),
            kept: Vec::new(),
        },
        Ack(stream),
    ))
}

/// Serves takeover requests on `state_dir`'s socket with `kept` (until
/// `shutdown`); when a new proxy has taken over, sets `handed_over`.
pub async fn serve(
    state_dir: PathBuf,
    kept: Vec<(String, OwnedFd)>,
    handed_over: watch::Sender<bool>,
    life: watch::Sender<crate::health::Life>,
    mut shutdown: watch::Receiver<bool>,
) {
    let path = socket_path(&state_dir);
    // A socket file left by an earlier proxy (or the one taken over from,
    // which serves on it no longer) is replaced.
    let _ = std::fs::remove_file(&path);
    let kept = std::sync::Arc::new(kept);
    let l = match tokio::net::UnixListener::bind(&path) {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot offer a takeover socket; an upgrade of this proxy will need a restart");
            return;
        }
    };
    use std::os::unix::fs::PermissionsExt;
    if let Err(e) = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)) {
        tracing::warn!(path = %path.display(), error = %e, "cannot make the takeover socket owner-only");
        return;
    }
    loop {
        let s = tokio::select! {
            r = l.accept() => match r {
                Ok((s, _)) => s,
                Err(_) => continue,
            },
            _ = crate::stopped(&mut shutdown) => return,
            // A drain: no takeover any more, and the duplicate descriptors
            // go, so a listener the drain closes really closes (late
            // callers are refused, not queued unread).
            _ = async { let _ = life.subscribe().wait_for(|l| l.draining || l.handing_over).await; } => return,
        };
        let sent = std::sync::Arc::clone(&kept);
        let r = tokio::task::spawn_blocking(move || -> std::io::Result<bool> {
            let s = s.into_std()?;
            s.set_nonblocking(false)?;
            hand_over(s, &sent)
        })
        .await;
        match r {
            Ok(Ok(true)) => {
                tracing::info!(
                    "a new proxy took over the listening sockets; draining and stopping"
                );
                handed_over.send_replace(true);
                return;
            }
            Ok(Ok(false)) => tracing::warn!("a takeover did not complete; serving on"),
            Ok(Err(e)) => tracing::warn!(error = %e, "a takeover failed; serving on"),
            Err(e) => tracing::warn!(error = %e, "a takeover failed; serving on"),
        }
    }
}

/// The old proxy's side of one exchange: whether the new one took over.
fn hand_over(s: UnixStream, kept: &[(String, OwnedFd)]) -> std::io::Result<bool> {
    // The state directory is owner-only already; the caller must also be
    // this user (root's takeover of another user's proxy included: no).
    let peer = rustix::net::sockopt::socket_peercred(&s)?;
    if peer.uid != rustix::process::getuid() {
        tracing::warn!(
            pid = peer.pid.as_raw_nonzero().get(),
            uid = peer.uid.as_raw(),
            "refused a takeover from another user"
        );
        return Ok(false);
    }
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut r = BufReader::new(s.try_clone()?);
    let mut line = String::new();
    r.read_line(&mut line)?;
    if line.as_bytes() != HELLO {
        return Ok(false);
    }
    let names: Vec<&str> = kept.iter().map(|(n, _)| n.as_str()).collect();
    let fds: Vec<_> = kept.iter().map(|(_, fd)| fd.as_fd()).collect();
    let mut payload = serde_json::to_vec(&names).map_err(std::io::Error::other)?;
    payload.push(b'\n');
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if fds.len() > MAX_FDS || !control.push(SendAncillaryMessage::ScmRights(&fds)) {
        return Err(std::io::Error::other("too many sockets to hand over"));
    }
    sendmsg(
        &s,
        &[IoSlice::new(&payload)],
        &mut control,
        SendFlags::empty(),
    )?;
    // The new proxy starts (binds nothing, reads its config): give it time.
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    line.clear();
    r.read_line(&mut line)?;
    Ok(line == "ok\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn listening_sockets_cross_to_another_owner_and_keep_their_address() {
        let dir = tempfile::tempdir().unwrap();
        let mut old = Sockets::default();
        let tcp = old
            .tcp("outbound", "127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let udp = old
            .udp("dns", "127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let (tcp_addr, udp_addr) = (tcp.local_addr().unwrap(), udp.local_addr().unwrap());
        let (over_tx, mut over) = watch::channel(false);
        let (_stop, stop_rx) = watch::channel(false);
        let life = crate::health::channel(false);
        let server = tokio::spawn(serve(
            dir.path().to_path_buf(),
            std::mem::take(&mut old.kept),
            over_tx,
            life,
            stop_rx,
        ));
        // Wait for the socket file.
        for _ in 0..100 {
            if socket_path(dir.path()).exists() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let d = dir.path().to_path_buf();
        let (mut new, ack) = tokio::task::spawn_blocking(move || receive(&d))
            .await
            .unwrap()
            .unwrap();
        ack.done().unwrap();
        // The same flags: the same sockets (binding them again would fail:
        // they are in use).
        let tcp2 = new.tcp("outbound", tcp_addr).await.unwrap();
        let udp2 = new.udp("dns", udp_addr).await.unwrap();
        assert_eq!(
            tcp2.local_addr().unwrap(),
            tcp_addr,
            "the same socket, not a new bind"
        );
        assert_eq!(udp2.local_addr().unwrap(), udp_addr);
        over.wait_for(|o| *o).await.unwrap();
        server.await.unwrap();
        // The old owner lets go; the new one still accepts.
        drop(tcp);
        let c = tokio::net::TcpStream::connect(tcp_addr);
        let (accepted, connected) = tokio::join!(tcp2.accept(), c);
        assert!(accepted.is_ok() && connected.is_ok());
    }

    #[tokio::test]
    async fn a_socket_whose_flag_moved_is_bound_anew() {
        let mut old = Sockets::default();
        let l = old
            .tcp("admin", "127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let (name, fd) = old.kept.remove(0);
        let mut new = Sockets {
            inherited: HashMap::from([(name, fd)]),
            kept: Vec::new(),
        };
        let elsewhere = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let want = elsewhere.local_addr().unwrap();
        drop(elsewhere);
        let l2 = new.tcp("admin", want).await.unwrap();
        assert_eq!(l2.local_addr().unwrap(), want);
        assert_ne!(l2.local_addr().unwrap(), l.local_addr().unwrap());
    }

    #[test]
    fn without_a_running_proxy_takeover_says_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        let e = receive(dir.path()).err().unwrap().to_string();
        assert!(e.contains("start without --takeover"), "{e}");
    }
}
