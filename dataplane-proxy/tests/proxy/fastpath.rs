//! The inbound HTTP/1.1 fast path (`fastpath`), seen from the wire: heads
//! relayed as sent, bodies and pipelined requests framed exactly, hostile
//! framings never reaching the app, and the hand-over to hyper.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::prom::metric;
use super::routing::reqwest_metrics;
use super::support::*;

const PLAIN: &str = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-App-Header: 1\r\n\r\nok";
const CHUNKED: &str = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n";

/// An app that answers raw bytes by path and keeps every request exactly
/// as it arrived (head and body).
struct RawApp {
    addr: SocketAddr,
    /// Connections that carried a request (the readiness probe's do not).
    connections: AtomicUsize,
    seen: Mutex<Vec<String>>,
}

impl RawApp {
    async fn start() -> Arc<Self> {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let app = Arc::new(Self {
            addr: l.local_addr().unwrap(),
            connections: AtomicUsize::new(0),
            seen: Mutex::new(Vec::new()),
        });
        let a = app.clone();
        tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                tokio::spawn(a.clone().serve(s));
            }
        });
        app
    }

    async fn serve(self: Arc<Self>, mut s: TcpStream) {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        let mut counted = false;
        loop {
            // A whole request: its head, then its body.
            let (end, path) = loop {
                let mut h = [httparse::EMPTY_HEADER; 64];
                let mut r = httparse::Request::new(&mut h);
                if let Ok(httparse::Status::Complete(n)) = r.parse(&buf) {
                    let len: usize = r
                        .headers
                        .iter()
                        .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                        .map_or(0, |h| {
                            std::str::from_utf8(h.value).unwrap().parse().unwrap()
                        });
                    let chunked = r
                        .headers
                        .iter()
                        .any(|h| h.name.eq_ignore_ascii_case("transfer-encoding"));
                    let path = r.path.unwrap().to_string();
                    if path == "/early" {
                        // Refuses before reading the body, and closes.
                        self.seen
                            .lock()
                            .unwrap()
                            .push(String::from_utf8_lossy(&buf[..n]).into_owned());
                        let _ = s
                            .write_all(b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                            .await;
                        return;
                    }
                    let end = if chunked {
                        // The last chunk (after the head's or a chunk's
                        // CRLF), then the trailers' end.
                        find(&buf[n - 2..], b"\r\n0\r\n").and_then(|i| {
                            let from = n - 2 + i + 3;
                            find(&buf[from..], b"\r\n\r\n").map(|j| from + j + 4)
                        })
                    } else {
                        (buf.len() >= n + len).then_some(n + len)
                    };
                    if let Some(end) = end {
                        break (end, path);
                    }
                }
                match s.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            };
            if !counted {
                counted = true;
                self.connections.fetch_add(1, Ordering::SeqCst);
            }
            let req: Vec<u8> = buf.drain(..end).collect();
            self.seen
                .lock()
                .unwrap()
                .push(String::from_utf8_lossy(&req).into_owned());
            if path == "/late" {
                // A HEAD's answer, then a whole answer nobody asked for,
                // late: a broken (or hostile) app.
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\n")
                    .await;
                tokio::time::sleep(Duration::from_millis(300)).await;
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nevil")
                    .await;
                continue;
            }
            let answer = match path.as_str() {
                "/chunked" => CHUNKED,
                "/close" => "HTTP/1.1 200 OK\r\n\r\nuntil-close",
                _ => PLAIN,
            };
            if s.write_all(answer.as_bytes()).await.is_err() || path == "/close" {
                return;
            }
        }
    }

    fn seen(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// A proxy from a static config with its inbound to `app`.
async fn inbound(
    app: SocketAddr,
    fast: bool,
) -> (raftmesh_dataplane_proxy::Proxy, tempfile::TempDir) {
    inbound_with(app, fast, |_| {}).await
}

async fn inbound_with(
    app: SocketAddr,
    fast: bool,
    tweak: impl FnOnce(&mut raftmesh_dataplane_proxy::config::ProxyConfig),
) -> (raftmesh_dataplane_proxy::Proxy, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("s.yaml");
    std::fs::write(&f, "kind: Service\nmetadata: {name: app}\nspec: {}\n").unwrap();
    let mut c = base_config();
    c.config_file = Some(f);
    c.service = "app".into();
    c.app_port = Some(app.port());
    c.http1_fast_path = fast;
    tweak(&mut c);
    (raftmesh_dataplane_proxy::start(c).await.unwrap(), dir)
}

/// Reads until `want` bytes came or the connection closed (5 s at most).
async fn read_upto(s: &mut TcpStream, want: usize) -> (Vec<u8>, bool) {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while got.len() < want {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (got, true),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => panic!("no more bytes after {:?}", String::from_utf8_lossy(&got)),
        }
    }
    (got, false)
}

/// One answer with a Content-Length, whole.
async fn read_answer(s: &mut TcpStream) -> String {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let mut h = [httparse::EMPTY_HEADER; 64];
        let mut r = httparse::Response::new(&mut h);
        if let Ok(httparse::Status::Complete(n)) = r.parse(&got) {
            let len: usize = r
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                .map_or(0, |h| {
                    std::str::from_utf8(h.value).unwrap().parse().unwrap()
                });
            if got.len() >= n + len {
                return String::from_utf8(got).unwrap();
            }
        }
        let n = s.read(&mut buf).await.unwrap();
        assert!(n > 0, "closed after {:?}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
}

#[tokio::test]
async fn heads_reach_the_app_as_sent_and_come_back_as_sent_hyper_lowercases_them() {
    let app = RawApp::start().await;
    for fast in [true, false] {
        let (p, _d) = inbound(app.addr, fast).await;
        let mut s = TcpStream::connect(p.inbound.unwrap()).await.unwrap();
        s.write_all(b"GET /plain HTTP/1.1\r\nHost: app\r\nX-Mixed-Case: Value\r\nX-Forwarded-Client-Cert: URI=spiffe://forged\r\n\r\n")
            .await
            .unwrap();
        let (got, _) = read_upto(&mut s, 40).await;
        let got = String::from_utf8(got).unwrap();
        let head = app.seen().pop().unwrap();
        assert!(!head.to_lowercase().contains("forged"), "{head}");
        if fast {
            assert!(
                head.starts_with("GET /plain HTTP/1.1\r\nHost: app\r\nX-Mixed-Case: Value\r\n"),
                "{head}"
            );
            assert_eq!(got, PLAIN, "the answer as the app wrote it");
        } else {
            assert!(head.contains("x-mixed-case: Value"), "{head}");
            assert!(
                got.contains("x-app-header: 1") && got.ends_with("ok"),
                "{got}"
            );
        }
        p.shutdown().await;
    }
}

#[tokio::test]
async fn pipelined_requests_with_bodies_come_back_in_order_over_one_connection_to_the_app() {
    let app = RawApp::start().await;
    let (p, _d) = inbound(app.addr, true).await;
    let mut s = TcpStream::connect(p.inbound.unwrap()).await.unwrap();
    let chunked_body = "5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n";
    let all = format!(
        "GET /plain HTTP/1.1\r\nHost: app\r\n\r\n\
         POST /plain HTTP/1.1\r\nHost: app\r\nContent-Length: 5\r\n\r\nhello\
         POST /chunked HTTP/1.1\r\nHost: app\r\nTransfer-Encoding: chunked\r\n\r\n{chunked_body}\
         GET /chunked HTTP/1.1\r\nHost: app\r\n\r\n"
    );
    // In one write, and again split into small writes.
    for pieces in [1, 37] {
        for part in all.as_bytes().chunks(all.len().div_ceil(pieces)) {
            s.write_all(part).await.unwrap();
            if pieces > 1 {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
        let want = format!("{PLAIN}{PLAIN}{CHUNKED}{CHUNKED}");
        let (got, closed) = read_upto(&mut s, want.len()).await;
        assert!(!closed);
        assert_eq!(String::from_utf8(got).unwrap(), want);
    }
    let seen = app.seen();
    assert_eq!(seen.len(), 8);
    assert!(seen[1].ends_with("\r\n\r\nhello"), "{:?}", seen[1]);
    assert!(
        seen[2].ends_with(&format!("\r\n\r\n{chunked_body}")),
        "the chunked body as sent: {:?}",
        seen[2]
    );
    assert_eq!(
        app.connections.load(Ordering::SeqCst),
        1,
        "one kept connection to the app"
    );
    let m = reqwest_metrics(p.admin).await;
    assert_eq!(metric(&m, "raftmesh_proxy_http1_fallbacks_total", &[]), 0.0);
    p.shutdown().await;
}

#[tokio::test]
async fn a_malformed_chunked_body_never_reaches_the_app_and_what_follows_is_not_a_request() {
    let app = RawApp::start().await;
    let (p, _d) = inbound(app.addr, true).await;
    let smuggled = "GET /admin HTTP/1.1\r\nHost: app\r\n\r\n";
    // A bare LF after a chunk size: some parsers end the line there, some
    // do not; the two would split the bytes into different requests.
    for (first, rest) in [
        (format!("POST /chunked HTTP/1.1\r\nHost: app\r\nTransfer-Encoding: chunked\r\n\r\n5\nhello\r\n0\r\n\r\n{smuggled}"), String::new()),
        // The same, with the bad bytes arriving after the head went out.
        ("POST /chunked HTTP/1.1\r\nHost: app\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n".to_string(), format!("5\nhello\r\n0\r\n\r\n{smuggled}")),
        // Data longer than its chunk says.
        (format!("POST /chunked HTTP/1.1\r\nHost: app\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nxx\r\n0\r\n\r\n{smuggled}"), String::new()),
    ] {
        let mut s = TcpStream::connect(p.inbound.unwrap()).await.unwrap();
        s.write_all(first.as_bytes()).await.unwrap();
        if !rest.is_empty() {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let _ = s.write_all(rest.as_bytes()).await;
        }
        let (got, closed) = read_upto(&mut s, usize::MAX).await;
        assert!(closed);
        assert!(!String::from_utf8_lossy(&got).contains("HTTP/1.1 200"), "{got:?}");
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let seen = app.seen();
    assert!(seen.iter().all(|r| !r.contains("/admin")), "{seen:?}");
    assert!(seen.iter().all(|r| !r.contains("hello")), "{seen:?}");
    p.shutdown().await;
}

#[tokio::test]
async fn a_connection_moves_to_hyper_for_what_the_fast_path_does_not_cover() {
    let app = RawApp::start().await;
    let (p, _d) = inbound(app.addr, true).await;
    // Fast, fast, then HTTP/1.0: hyper from there on.
    let mut s = TcpStream::connect(p.inbound.unwrap()).await.unwrap();
    s.write_all(
        b"GET /plain HTTP/1.1\r\nHost: app\r\n\r\nGET /plain HTTP/1.1\r\nHost: app\r\n\r\n",
    )
    .await
    .unwrap();
    let (got, _) = read_upto(&mut s, 2 * PLAIN.len()).await;
    assert_eq!(String::from_utf8(got).unwrap(), format!("{PLAIN}{PLAIN}"));
    s.write_all(b"GET /plain HTTP/1.0\r\nHost: app\r\n\r\n")
        .await
        .unwrap();
    let (got, closed) = read_upto(&mut s, usize::MAX).await;
    let got = String::from_utf8(got).unwrap();
    assert!(closed, "HTTP/1.0 without keep-alive closes: {got}");
    assert!(
        got.starts_with("HTTP/1.") && got.contains(" 200 OK\r\n") && got.ends_with("ok"),
        "{got}"
    );
    assert!(got.contains("x-app-header: 1"), "hyper's answer: {got}");
    // Both lengths: hyper frames it by Transfer-Encoding, and closes after.
    let mut s = TcpStream::connect(p.inbound.unwrap()).await.unwrap();
    s.write_all(b"POST /plain HTTP/1.1\r\nHost: app\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\nGET /after HTTP/1.1\r\nHost: app\r\n\r\n")
        .await
        .unwrap();
    let (got, closed) = read_upto(&mut s, usize::MAX).await;
    assert!(closed);
    let got = String::from_utf8(got).unwrap();
    assert_eq!(got.matches(" 200 OK\r\n").count(), 1, "{got}");
    let seen = app.seen();
    assert_eq!(seen.len(), 4, "{seen:?}");
    let framed_twice = |r: &String| {
        let l = r.to_lowercase();
        l.contains("content-length") && l.contains("transfer-encoding")
    };
    assert!(
        !seen.iter().any(framed_twice),
        "never both framings at the app: {seen:?}"
    );
    assert!(
        seen[3].ends_with("\r\n\r\n3\r\nabc\r\n0\r\n\r\n"),
        "{seen:?}"
    );
    assert!(seen.iter().all(|r| !r.contains("/after")), "{seen:?}");
    let m = reqwest_metrics(p.admin).await;
    let fallbacks = |reason| {
        metric(
            &m,
            "raftmesh_proxy_http1_fallbacks_total",
            &[("reason", reason)],
        )
    };
    assert_eq!((fallbacks("version"), fallbacks("framing")), (1.0, 1.0));
    assert_eq!(metric(&m, "raftmesh_proxy_http1_fallbacks_total", &[]), 2.0);
    assert_eq!(
        metric(
            &m,
            "raftmesh_proxy_requests_total",
            &[("direction", "inbound"), ("code", "200")]
        ),
        4.0
    );
    p.shutdown().await;
}

#[tokio::test]
async fn an_answer_without_a_length_is_relayed_until_the_app_closes_then_the_connection_closes() {
    let app = RawApp::start().await;
    let (p, _d) = inbound(app.addr, true).await;
    let mut s = TcpStream::connect(p.inbound.unwrap()).await.unwrap();
    s.write_all(b"GET /close HTTP/1.1\r\nHost: app\r\n\r\n")
        .await
        .unwrap();
    let (got, closed) = read_upto(&mut s, usize::MAX).await;
    assert!(closed);
    let got = String::from_utf8(got).unwrap();
    assert_eq!(
        got,
        "HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nuntil-close"
    );
    p.shutdown().await;
}

#[tokio::test]
async fn an_app_that_is_down_gets_the_mesh_error_and_the_connection_stays_usable() {
    let gone = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = gone.local_addr().unwrap();
    drop(gone);
    let (p, _d) = inbound(addr, true).await;
    let mut s = TcpStream::connect(p.inbound.unwrap()).await.unwrap();
    // HEAD: the error's head only (a body would be read as the next answer).
    s.write_all(b"HEAD /plain HTTP/1.1\r\nHost: app\r\n\r\n")
        .await
        .unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        assert_eq!(s.read(&mut b).await.unwrap(), 1);
        head.push(b[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 503 "),
        "{}",
        String::from_utf8_lossy(&head)
    );
    for _ in 0..2 {
        s.write_all(b"GET /plain HTTP/1.1\r\nHost: app\r\n\r\n")
            .await
            .unwrap();
        let got = read_answer(&mut s).await;
        assert!(got.starts_with("HTTP/1.1 503 "), "{got}");
        assert!(got.contains("x-raftmesh-error: app-unavailable"), "{got}");
    }
    let m = reqwest_metrics(p.admin).await;
    assert_eq!(
        metric(
            &m,
            "raftmesh_proxy_errors_total",
            &[("code", "app-unavailable")]
        ),
        3.0
    );
    p.shutdown().await;
}

#[tokio::test]
async fn an_early_answer_reaches_the_caller_and_large_bodies_go_to_hyper_whole() {
    let app = RawApp::start().await;
    let (p, _d) = inbound(app.addr, true).await;
    // The app refuses on the head alone: the caller gets its answer.
    let body = "x".repeat(60 << 10);
    let mut s = TcpStream::connect(p.inbound.unwrap()).await.unwrap();
    s.write_all(
        format!(
            "POST /early HTTP/1.1\r\nHost: app\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let got = read_answer(&mut s).await;
    assert!(got.starts_with("HTTP/1.1 413 "), "{got}");
    // Over 64 KiB: hyper streams it, and it arrives whole.
    let body = "y".repeat(100 << 10);
    let mut s = TcpStream::connect(p.inbound.unwrap()).await.unwrap();
    s.write_all(
        format!(
            "POST /plain HTTP/1.1\r\nHost: app\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let got = read_answer(&mut s).await;
    assert!(
        got.starts_with("HTTP/1.1 200 ") && got.ends_with("ok"),
        "{got}"
    );
    assert!(app
        .seen()
        .last()
        .unwrap()
        .ends_with(&format!("\r\n\r\n{body}")));
    let m = reqwest_metrics(p.admin).await;
    assert_eq!(
        metric(
            &m,
            "raftmesh_proxy_http1_fallbacks_total",
            &[("reason", "large-body")]
        ),
        1.0
    );
    p.shutdown().await;
}

#[tokio::test]
async fn a_request_hidden_in_chunked_trailers_never_reaches_the_app() {
    let app = RawApp::start().await;
    let (p, _d) = inbound(app.addr, true).await;
    // A parser without trailers would stop at `0\r\n` and read the rest as
    // a second request, with a forged caller; the fast path hands anything
    // with trailers (or chunk extensions) to hyper.
    let mut s = TcpStream::connect(p.inbound.unwrap()).await.unwrap();
    s.write_all(b"POST /plain HTTP/1.1\r\nHost: app\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nGET /admin HTTP/1.1\r\nHost: app\r\nx-forwarded-client-cert: URI=spiffe://forged\r\n\r\n")
        .await
        .unwrap();
    // Whatever hyper answers (it may keep the connection open).
    let _ = tokio::time::timeout(Duration::from_secs(2), read_upto(&mut s, usize::MAX)).await;
    let seen = app.seen();
    assert!(
        seen.iter()
            .all(|r| !r.contains("/admin") && !r.contains("forged")),
        "{seen:?}"
    );
    let m = reqwest_metrics(p.admin).await;
    assert_eq!(
        metric(
            &m,
            "raftmesh_proxy_http1_fallbacks_total",
            &[("reason", "chunk-extras")]
        ),
        1.0
    );
    p.shutdown().await;
}

#[tokio::test]
async fn on_the_fast_path_a_slow_head_or_body_is_cut_and_a_waiting_connection_is_not() {
    let app = RawApp::start().await;
    let (p, _d) = inbound_with(app.addr, true, |c| {
        c.header_timeout = Duration::from_secs(1);
        c.idle_timeout = Duration::from_secs(3);
    })
    .await;
    let mut s = TcpStream::connect(p.inbound.unwrap()).await.unwrap();
    for _ in 0..2 {
        s.write_all(b"GET /plain HTTP/1.1\r\nHost: app\r\n\r\n")
            .await
            .unwrap();
        assert_eq!(read_answer(&mut s).await, PLAIN);
        // Waiting between requests longer than the header limit is fine.
        tokio::time::sleep(Duration::from_millis(1_500)).await;
    }
    let (_, closed) = read_upto(&mut s, usize::MAX).await;
    assert!(closed, "closed after the idle limit");
    // A head, or a held body, that trickles in: cut at the header limit.
    for start in [
        &b"GET /plain HTTP/1.1\r\nHo"[..],
        b"POST /plain HTTP/1.1\r\nHost: app\r\nContent-Length: 10\r\n\r\nabc",
    ] {
        let mut slow = TcpStream::connect(p.inbound.unwrap()).await.unwrap();
        slow.write_all(start).await.unwrap();
        let t0 = std::time::Instant::now();
        let (got, closed) = read_upto(&mut slow, usize::MAX).await;
        assert!(closed && got.is_empty(), "{got:?}");
        assert!(t0.elapsed() < Duration::from_secs(3), "{:?}", t0.elapsed());
    }
    assert!(
        app.seen().iter().all(|r| !r.ends_with("abc")),
        "a part of a body went out"
    );
    p.shutdown().await;
}

#[tokio::test]
async fn a_request_then_one_for_hyper_in_the_same_write_are_each_answered_once() {
    let app = RawApp::start().await;
    let (p, _d) = inbound(app.addr, true).await;
    let mut s = TcpStream::connect(p.inbound.unwrap()).await.unwrap();
    s.write_all(
        b"GET /plain HTTP/1.1\r\nHost: app\r\n\r\nGET /plain HTTP/1.0\r\nHost: app\r\n\r\n",
    )
    .await
    .unwrap();
    let (got, closed) = read_upto(&mut s, usize::MAX).await;
    assert!(closed, "HTTP/1.0 without keep-alive closes");
    let got = String::from_utf8(got).unwrap();
    // The fast path's answer as the app sent it, then hyper's.
    assert!(got.starts_with(PLAIN), "{got}");
    let rest = &got[PLAIN.len()..];
    assert!(
        rest.contains(" 200 OK\r\n") && rest.contains("x-app-header: 1") && rest.ends_with("ok"),
        "{got}"
    );
    assert_eq!(app.seen().len(), 2, "{:?}", app.seen());
    let m = reqwest_metrics(p.admin).await;
    assert_eq!(
        metric(
            &m,
            "raftmesh_proxy_http1_fallbacks_total",
            &[("reason", "version")]
        ),
        1.0
    );
    p.shutdown().await;
}

#[tokio::test]
async fn after_connection_close_a_pipelined_request_is_never_sent() {
    let app = RawApp::start().await;
    let (p, _d) = inbound(app.addr, true).await;
    let mut s = TcpStream::connect(p.inbound.unwrap()).await.unwrap();
    s.write_all(b"GET /plain HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\nGET /admin HTTP/1.1\r\nHost: app\r\n\r\n")
        .await
        .unwrap();
    let (got, closed) = read_upto(&mut s, usize::MAX).await;
    assert!(closed);
    let got = String::from_utf8(got).unwrap();
    assert_eq!(got.matches("HTTP/1.1 ").count(), 1, "{got}");
    assert!(
        got.contains("connection: close\r\n") && got.ends_with("ok"),
        "{got}"
    );
    let seen = app.seen();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert!(!seen[0].contains("/admin"), "{seen:?}");
    p.shutdown().await;
}

#[tokio::test]
async fn late_bytes_from_the_app_never_become_another_caller_s_answer() {
    let app = RawApp::start().await;
    let (p, _d) = inbound(app.addr, true).await;
    // A HEAD answered with a length, and an answer of its own behind it
    // later: the connection to the app is not used for the next request.
    let mut a = TcpStream::connect(p.inbound.unwrap()).await.unwrap();
    a.write_all(b"HEAD /late HTTP/1.1\r\nHost: app\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    while find(&got, b"\r\n\r\n").is_none() {
        let (more, closed) = read_upto(&mut a, 1).await;
        assert!(!closed);
        got.extend(more);
    }
    let head = String::from_utf8(got).unwrap();
    assert!(
        head.starts_with("HTTP/1.1 200 OK\r\n") && head.ends_with("\r\n\r\n"),
        "{head}"
    );
    // At once, before the app's stray answer: another caller.
    let mut b = TcpStream::connect(p.inbound.unwrap()).await.unwrap();
    b.write_all(b"GET /plain HTTP/1.1\r\nHost: app\r\n\r\n")
        .await
        .unwrap();
    let answer = read_answer(&mut b).await;
    assert_eq!(answer, PLAIN, "the second caller gets its own answer");
    // And the first caller got nothing more.
    let more = tokio::time::timeout(Duration::from_millis(500), a.read(&mut [0u8; 64])).await;
    assert!(!matches!(more, Ok(Ok(n)) if n > 0), "{more:?}");
    p.shutdown().await;
}

#[tokio::test]
async fn a_caller_forged_in_declared_trailers_never_reaches_the_app() {
    let app = RawApp::start().await;
    for fast in [true, false] {
        let (p, _d) = inbound(app.addr, fast).await;
        let mut s = TcpStream::connect(p.inbound.unwrap()).await.unwrap();
        // Declared, so an HTTP/1 client passes them on to the app.
        s.write_all(b"POST /plain HTTP/1.1\r\nHost: app\r\nTransfer-Encoding: chunked\r\nTrailer: x-checksum, x-forwarded-client-cert\r\n\r\n3\r\nabc\r\n0\r\nx-checksum: 900150983cd24fb0\r\nx-forwarded-client-cert: URI=spiffe://d/ns/x/sa/admin\r\n\r\n")
            .await
            .unwrap();
        let answer = read_answer(&mut s).await;
        assert!(answer.contains(" 200 OK\r\n"), "{answer}");
        let seen = app.seen();
        let last = seen.last().unwrap().to_lowercase();
        // The trailers do pass: only the forged caller is dropped.
        assert!(
            last.contains("x-checksum: 900150983cd24fb0"),
            "fast={fast}: {last}"
        );
        assert!(
            !last.contains("spiffe://d/ns/x/sa/admin"),
            "fast={fast}: {last}"
        );
        p.shutdown().await;
    }
}

#[tokio::test]
async fn a_head_past_64_kib_goes_to_hyper_and_never_reaches_the_app() {
    let app = RawApp::start().await;
    let (p, _d) = inbound(app.addr, true).await;
    let mut s = TcpStream::connect(p.inbound.unwrap()).await.unwrap();
    // One long header, no end of head: what the fast path holds is
    // bounded, and hyper refuses the head (431) or closes.
    let mut head = b"GET /plain HTTP/1.1\r\nHost: app\r\nX-Big: ".to_vec();
    head.resize(70 * 1024, b'a');
    let _ = s.write_all(&head).await;
    let _ = tokio::time::timeout(Duration::from_secs(3), read_upto(&mut s, usize::MAX)).await;
    assert!(app.seen().is_empty(), "{:?}", app.seen().len());
    let m = reqwest_metrics(p.admin).await;
    assert_eq!(
        metric(
            &m,
            "raftmesh_proxy_http1_fallbacks_total",
            &[("reason", "large-head")]
        ),
        1.0
    );
    p.shutdown().await;
}
