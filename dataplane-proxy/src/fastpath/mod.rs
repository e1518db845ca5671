//! The inbound HTTP/1.1 fast path: a request head is parsed in place
//! (httparse), the same decisions as hyper's path are made on it
//! (authorization with `authz::decide`, the normal path with
//! `path::normalise`, metrics with the connection's `Recorder`), and the
//! head goes to the app as bytes with only the headers the proxy must
//! rewrite touched (hop-by-hop ones dropped, `x-forwarded-client-cert` set).
//! A request's body (up to 64 KiB; a chunked one checked for where it ends,
//! `chunked.rs`) is held whole before the request goes out, in the same
//! write as its head. The app's answer comes back the same way, its body
//! relayed as it comes. No `HeaderMap` is built on either side, and one
//! read and one write per side carry a small request.
//!
//! It covers plain keep-alive HTTP/1.1 requests only. A request it does
//! not cover — HTTP/1.0, an upgrade or CONNECT, `Expect`, a path that is
//! not already in normal form or is refused, an absolute URI, a framing
//! hyper would judge (both `Content-Length` and `Transfer-Encoding`, two
//! lengths, another coding, chunk extensions or trailers), a body over
//! 64 KiB, gRPC, a head over 64 KiB or 64 headers, a service with a rate
//! limit — or a moment when access logs, taps or
//! tracing are on, hands the connection to hyper ([`Served::Fallback`])
//! before anything of that request is sent: hyper serves it and the rest
//! of the connection, from the bytes already read (`Rewind`). The fallbacks
//! are counted (`raftmesh_proxy_http1_fallbacks_total{reason}`).
//!
//! Between requests a connection holds no buffer: a waiting read goes to
//! the stack and only what came is kept (`read_some`), and the buffer is
//! freed after each request, so an idle keep-alive connection costs its
//! task, its metrics and the socket (3.3 KiB, `bench/conns.sh`).
//!
//! Connections to the app are kept in `AppLink`'s stack of idle raw
//! sockets; a request a kept one failed (the app closed it as the request
//! went out) goes again on a new one when it was not written whole or is
//! idempotent. Answers are flushed (a TLS stream may hold what it was
//! given) and a closing connection is shut down (`close_notify`).

mod chunked;
mod rewind;

pub use rewind::Rewind;

use std::future::poll_fn;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use bytes::{Buf, BytesMut};
use http_body_util::BodyExt;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use crate::error::ProxyError;
use crate::forward::AppLink;
use crate::metrics::Recorder;
use crate::state::Config;
use chunked::{BadChunk, Chunked};

/// What a read asks for at least when the buffer is short.
const READ_CHUNK: usize = 8 * 1024;
/// The largest request body held whole (larger ones go to hyper).
const MAX_BODY: usize = 64 * 1024;
/// The least a buffer is allocated with.
const FIRST_BUFFER: usize = 1024;
/// A request or response head longer than this goes to hyper (requests)
/// or is refused (answers).
const MAX_HEAD: usize = 64 * 1024;
/// Headers parsed at most; a head with more goes to hyper (requests).
const MAX_HEADERS: usize = 64;

/// How a connection left the fast path.
pub enum Served {
    /// It is closed (either side, an error, a drain).
    Closed,
    /// A request the fast path does not cover (the reason, for metrics):
    /// hyper serves the connection from here, starting with these bytes.
    Fallback(BytesMut, &'static str),
}

/// What the fast path needs of its inbound connection.
pub struct Conn<'a> {
    /// The proxy's config.
    pub config: &'a Arc<Config>,
    /// The connections to the app.
    pub link: &'a AppLink,
    /// The app's port (named in `app-unavailable` answers).
    pub app_port: u16,
    /// A mesh proxy (not a `--config-file` one).
    pub member: bool,
    /// The caller's SPIFFE ID (mutual TLS).
    pub who: Option<&'a str>,
    /// The connection's request metrics.
    pub recorder: &'a Arc<Recorder>,
    /// The connection's head and idle limits.
    pub clock: &'a Arc<crate::conn::ConnClock>,
    /// Set when the proxy drains: the connection closes after the
    /// request in flight.
    pub draining: &'a AtomicBool,
}

/// Serves `io` until it closes or needs hyper.
pub async fn serve<I>(io: &mut I, c: &Conn<'_>) -> Served
where
    I: AsyncRead + AsyncWrite + Unpin + Send,
{
    // `x-forwarded-client-cert`, as `authz::set_caller` writes it.
    let caller = c.who.and_then(|w| {
        let v = format!("URI={w}");
        http::HeaderValue::from_str(&v)
            .ok()
            .map(|_| format!("{}: {v}\r\n", crate::authz::CALLER_HEADER).into_bytes())
    });
    let mut buf = BytesMut::new();
    loop {
        let mut gate = HeadEnd::default();
        let p = loop {
            if buf.is_empty() {
                if c.draining.load(Ordering::Relaxed) {
                    return close(io).await;
                }
            } else if gate.worth_parsing(&buf) {
                match prepare(&buf, caller.as_deref()) {
                    Prep::More if buf.len() < MAX_HEAD => {}
                    Prep::More => return Served::Fallback(buf, "large-head"),
                    Prep::Fallback(why) => return Served::Fallback(buf, why),
                    Prep::Ready(p) => match refused(&p, c) {
                        Some(why) => return Served::Fallback(buf, why),
                        None => break p,
                    },
                }
            } else if buf.len() >= MAX_HEAD {
                return Served::Fallback(buf, "large-head");
            }
            match read_some(io, &mut buf).await {
                Ok(0) | Err(_) => return Served::Closed,
                Ok(_) => {}
            }
        };
        // The whole request is held before anything of it goes out: the
        // app gets it in one write, and its answer is read as soon as it
        // comes (an early answer, an app that answers while it reads). A
        // body that cannot be held goes to hyper, which streams it. The
        // head's limit (`--header-timeout`) covers the body too. A chunked
        // body is scanned once, as it comes (`Held`).
        let mut held = Held::default();
        let end = loop {
            match p.body {
                Framing::Length(n) if n > MAX_BODY as u64 => {
                    return Served::Fallback(buf, "large-body")
                }
                Framing::Length(n) if buf.len() >= p.head_len + n as usize => {
                    break p.head_len + n as usize
                }
                Framing::Chunked => {
                    match held.feed(&buf[p.head_len..]) {
                        // Extensions and trailers: hyper drops the one and
                        // checks the other.
                        Ok(Some(_)) if held.scan.extras => {
                            return Served::Fallback(buf, "chunk-extras")
                        }
                        Ok(Some(n)) => break p.head_len + n,
                        Ok(None) if buf.len() - p.head_len > MAX_BODY => {
                            return Served::Fallback(buf, "large-body")
                        }
                        Ok(None) => {}
                        // Two parsers could split these bytes into different
                        // requests: nothing of them goes anywhere.
                        Err(_) => return close(io).await,
                    }
                }
                Framing::Length(_) => {}
                Framing::None | Framing::UntilClose => break p.head_len,
            }
            match read_some(io, &mut buf).await {
                Ok(0) | Err(_) => return Served::Closed,
                Ok(_) => {}
            }
        };
        let in_flight = c.clock.request();
        let started = Instant::now();
        let keep = exchange_boxed(io, &mut buf, end, p, c, started).await;
        drop(in_flight);
        // A drain answers what is in flight, then closes (a request already
        // read behind it is not started, as hyper does).
        if !keep || c.draining.load(Ordering::Relaxed) {
            return close(io).await;
        }
        if buf.is_empty() {
            // Nothing held while the connection waits.
            buf = BytesMut::new();
        }
    }
}

/// Ends the connection: what is buffered (TLS records) goes out, then the
/// close (TLS `close_notify`, TCP FIN).
async fn close<I: AsyncWrite + Unpin>(io: &mut I) -> Served {
    let _ = io.shutdown().await;
    Served::Closed
}

/// Reads more of `io` into `buf`. A buffer with no capacity (a connection
/// between requests) stays so while the read waits: the read goes to the
/// stack, and only what came is kept, in a buffer of its size (small
/// ones come from the allocator's per-thread cache).
async fn read_some<I: AsyncRead + Unpin>(io: &mut I, buf: &mut BytesMut) -> std::io::Result<usize> {
    poll_fn(|cx| {
        if buf.capacity() == 0 {
            let mut stack = [std::mem::MaybeUninit::<u8>::uninit(); READ_CHUNK];
            let mut rb = tokio::io::ReadBuf::uninit(&mut stack);
            return Pin::new(&mut *io).poll_read(cx, &mut rb).map_ok(|()| {
                let got = rb.filled();
                if !got.is_empty() {
                    *buf = BytesMut::with_capacity(got.len().max(FIRST_BUFFER));
                    buf.extend_from_slice(got);
                }
                got.len()
            });
        }
        if buf.capacity() - buf.len() < READ_CHUNK / 4 {
            buf.reserve(READ_CHUNK);
        }
        tokio_util::io::poll_read_buf(Pin::new(&mut *io), cx, buf)
    })
    .await
}

/// How a message body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    None,
    Length(u64),
    Chunked,
    /// Until the sender closes (answers only).
    UntilClose,
}

/// A request ready to go to the app.
#[derive(Debug)]
struct Prepared {
    /// The head as the app gets it.
    out: Vec<u8>,
    /// The head's length as read.
    head_len: usize,
    body: Framing,
    head_method: bool,
    /// The client asked to close after this request.
    close: bool,
    /// The method's and the path's places in `out`.
    method: usize,
    path: (usize, usize),
}

#[derive(Debug)]
enum Prep {
    /// The head is not complete yet.
    More,
    /// Not for the fast path: why.
    Fallback(&'static str),
    Ready(Prepared),
}

/// Writes one header line, `name: value` and CRLF.
fn header_line(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Case-insensitive header name match.
fn is(name: &str, want: &str) -> bool {
    name.len() == want.len() && name.eq_ignore_ascii_case(want)
}

/// Bytes a request target may hold here: RFC 3986's path and query
/// characters (unreserved, sub-delims, `:@/?%`). Anything else goes to
/// hyper, which judges it as it always has.
fn target_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@/?%".contains(&b)
}

/// Parses one request head at the start of `buf` and writes it as the
/// app gets it (nothing is consumed).
fn prepare(buf: &[u8], caller: Option<&[u8]>) -> Prep {
    if buf.starts_with(b"PRI * HTTP/2") {
        return Prep::Fallback("http2");
    }
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Prep::More,
        // hyper answers it (400, 431) as before.
        Err(httparse::Error::TooManyHeaders) => return Prep::Fallback("many-headers"),
        Err(_) => return Prep::Fallback("malformed"),
    };
    let (Some(method), Some(target), Some(1)) = (req.method, req.path, req.version) else {
        return Prep::Fallback("version");
    };
    if method == "CONNECT" {
        return Prep::Fallback("upgrade");
    }
    if !target.starts_with('/') || !target.bytes().all(target_byte) {
        return Prep::Fallback("target");
    }
    let path = target.split('?').next().unwrap_or(target);
    match crate::path::normalise(path) {
        Ok(std::borrow::Cow::Borrowed(_)) => {}
        // Rewritten or refused: hyper's path does both, as before.
        _ => return Prep::Fallback("path"),
    }
    // The head as the app gets it, written as the headers are read.
    let caller_len = caller.map_or(0, <[u8]>::len);
    let mut out = Vec::with_capacity(head_len + caller_len + 16);
    out.extend_from_slice(method.as_bytes());
    out.push(b' ');
    let path_at = out.len();
    out.extend_from_slice(target.as_bytes());
    let path_end = path_at + path.len();
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let (mut hosts, mut length, mut chunked, mut close) = (0, None::<u64>, false, false);
    for h in req.headers.iter() {
        let (n, v) = (h.name, h.value);
        // Told apart by length first: most headers are compared with
        // nothing.
        let skip = match n.len() {
            2 if is(n, "te") => v != b"trailers",
            4 if is(n, "host") => {
                hosts += 1;
                false
            }
            6 if is(n, "expect") => return Prep::Fallback("expect"),
            7 if is(n, "upgrade") => return Prep::Fallback("upgrade"),
            10 if is(n, "connection") => {
                for t in v.split(|&b| b == b',') {
                    let t = t.trim_ascii();
                    if t.eq_ignore_ascii_case(b"close") {
                        close = true;
                    } else if t.eq_ignore_ascii_case(b"upgrade") {
                        return Prep::Fallback("upgrade");
                    }
                }
                true
            }
            10 => is(n, "keep-alive"),
            12 if is(n, "content-type") => {
                if crate::error::is_grpc_type(v) {
                    return Prep::Fallback("grpc");
                }
                false
            }
            14 if is(n, "content-length") => {
                if length.is_some()
                    || v.is_empty()
                    || v.len() > 18
                    || !v.iter().all(u8::is_ascii_digit)
                {
                    return Prep::Fallback("framing");
                }
                length = std::str::from_utf8(v).ok().and_then(|s| s.parse().ok());
                false
            }
            16 => is(n, "proxy-connection"),
            17 if is(n, "transfer-encoding") => {
                if chunked || !v.eq_ignore_ascii_case(b"chunked") {
                    return Prep::Fallback("framing");
                }
                chunked = true;
                false
            }
            19 => is(n, "proxy-authorization"),
            // The caller's identity is the proxy's to say (and the
            // underscore spelling CGI frameworks read as the same header).
            23 => n
                .bytes()
                .zip(crate::authz::CALLER_HEADER.bytes())
                .all(|(a, b)| a.to_ascii_lowercase() == b || (a == b'_' && b == b'-')),
            _ => false,
        };
        if !skip {
            header_line(&mut out, n.as_bytes(), v);
        }
    }
    if hosts != 1 {
        return Prep::Fallback("host");
    }
    if chunked && length.is_some() {
        return Prep::Fallback("framing");
    }
    if let Some(line) = caller {
        out.extend_from_slice(line);
    }
    out.extend_from_slice(b"\r\n");
    let body = match (chunked, length) {
        (true, _) => Framing::Chunked,
        (false, Some(n)) if n > 0 => Framing::Length(n),
        _ => Framing::None,
    };
    Prep::Ready(Prepared {
        out,
        head_len,
        body,
        head_method: method == "HEAD",
        close,
        method: method.len(),
        path: (path_at, path_end),
    })
}

/// The decisions hyper's path makes before a request goes to the app: a
/// request they refuse is hyper's to answer (it decides the same again).
/// And what needs hyper's request: access log records, taps, tracing.
fn refused(p: &Prepared, c: &Conn<'_>) -> Option<&'static str> {
    if c.config.taps.any_open() {
        return Some("tap");
    }
    let current = c.config.current();
    if current.access_log.is_some() {
        return Some("access-log");
    }
    if c.config.traces.active().is_some() {
        return Some("tracing");
    }
    let strict = current.authz.mtls == raftmesh_api::MtlsMode::Strict;
    let method = std::str::from_utf8(&p.out[..p.method]).unwrap_or("");
    let path = std::str::from_utf8(&p.out[p.path.0..p.path.1]).unwrap_or("");
    if c.member && strict && c.who.is_none()
        || crate::authz::decide(&current.authz, c.who, method, path).is_err()
    {
        Some("refused")
    } else if current.authz.rate_limit.is_some() {
        Some("rate-limit")
    } else {
        None
    }
}

/// A body relay broke (either side, or a malformed body).
struct Failed;

/// [`exchange`], boxed where it is made: a request's state lives only
/// while the request does, and a waiting connection's task stays small.
fn exchange_boxed<'a, I>(
    io: &'a mut I,
    buf: &'a mut BytesMut,
    end: usize,
    p: Prepared,
    c: &'a Conn<'_>,
    started: Instant,
) -> Pin<Box<dyn std::future::Future<Output = bool> + Send + 'a>>
where
    I: AsyncRead + AsyncWrite + Unpin + Send,
{
    Box::pin(exchange(io, buf, end, p, c, started))
}

/// One request (the first `end` bytes of `buf`, its body whole) and its
/// answer; whether the connection stays open.
async fn exchange<I>(
    io: &mut I,
    buf: &mut BytesMut,
    end: usize,
    p: Prepared,
    c: &Conn<'_>,
    started: Instant,
) -> bool
where
    I: AsyncRead + AsyncWrite + Unpin + Send,
{
    let mut out = p.out;
    out.extend_from_slice(&buf[p.head_len..end]);
    buf.advance(end);
    let head_method = p.head_method;
    let mut rbuf = BytesMut::new();
    let mut app = None;
    for attempt in 0..2 {
        let kept = if attempt == 0 {
            c.link.take_raw()
        } else {
            None
        };
        let reused = kept.is_some();
        let mut stream = match kept {
            Some(s) => s,
            None => match c.link.open_tunnel().await {
                Ok(s) => s,
                Err(_) => {
                    let e = ProxyError::AppUnavailable(c.app_port);
                    return answer(io, e, c, started, p.close, head_method).await;
                }
            },
        };
        // Whether the request may go out again, on a new connection, if
        // this kept one failed (the app closed it as the request went out).
        let again = match stream.write_all(&out).await {
            // The answer's first bytes.
            Ok(()) => match read_some(&mut stream, &mut rbuf).await {
                Ok(n) if n > 0 => {
                    app = Some(stream);
                    break;
                }
                // Written, and no answer: the app may have seen it, so
                // only an idempotent request goes again (RFC 9112 §9.3.1).
                _ => idempotent(&out[..p.method]),
            },
            // Not written whole: the app cannot have acted on it.
            Err(_) => true,
        };
        if !(reused && again) {
            return reset(io, c, started, head_method).await;
        }
    }
    let Some(mut app) = app else {
        return reset(io, c, started, head_method).await;
    };
    // The answer's head (informational ones relayed as they come).
    let mut gate = HeadEnd::default();
    let r = loop {
        if !gate.worth_parsing(&rbuf) && rbuf.len() < MAX_HEAD {
            match read_some(&mut app, &mut rbuf).await {
                Ok(n) if n > 0 => continue,
                _ => return reset(io, c, started, head_method).await,
            }
        }
        match parse_response(&rbuf, p.head_method) {
            Resp::More if rbuf.len() < MAX_HEAD => match read_some(&mut app, &mut rbuf).await {
                Ok(n) if n > 0 => {}
                _ => return reset(io, c, started, head_method).await,
            },
            Resp::More | Resp::Bad => return reset(io, c, started, head_method).await,
            Resp::Info(n, head) => {
                rbuf.advance(n);
                gate = HeadEnd::default();
                if io.write_all(&head).await.is_err() || io.flush().await.is_err() {
                    return false;
                }
            }
            Resp::Ready(r) => break r,
        }
    };
    rbuf.advance(r.head_len);
    let close = p.close || r.body == Framing::UntilClose || c.draining.load(Ordering::Relaxed);
    let mut head = r.out;
    if close {
        head.extend_from_slice(b"connection: close\r\n");
    }
    head.extend_from_slice(b"\r\n");
    c.recorder
        .record(None, (r.code, "", r.error), false, started.elapsed());
    // Then the body: what is here goes with the head.
    let body = match r.body {
        Framing::None => Body::Done,
        Framing::Length(n) => {
            let k = usize::try_from(n).unwrap_or(usize::MAX).min(rbuf.len());
            head.extend_from_slice(&rbuf[..k]);
            rbuf.advance(k);
            match n - k as u64 {
                0 => Body::Done,
                n => Body::Length(n),
            }
        }
        Framing::Chunked => {
            let mut scan = Chunked::default();
            match scan.scan(&rbuf) {
                Ok(Some(end)) => {
                    head.extend_from_slice(&rbuf[..end]);
                    rbuf.advance(end);
                    Body::Done
                }
                Ok(None) => {
                    head.extend_from_slice(&rbuf);
                    rbuf.clear();
                    Body::Chunked(scan)
                }
                // Nothing sent yet: say so.
                Err(_) => return reset(io, c, started, head_method).await,
            }
        }
        Framing::UntilClose => {
            head.extend_from_slice(&rbuf);
            rbuf.clear();
            Body::UntilClose
        }
    };
    // Flushed: a TLS stream may hold what it was given.
    if io.write_all(&head).await.is_err() || io.flush().await.is_err() {
        return false;
    }
    drop(head);
    if !matches!(body, Body::Done) {
        let relay = relay(&mut app, io, &mut rbuf, body);
        // A streaming answer ends when a committed policy stops allowing
        // it (`guard.rs`); a sized one cannot outlive its decision by much.
        let relayed = if matches!(r.body, Framing::Chunked | Framing::UntilClose) {
            let config = c.config.clone();
            let who = c.who.map(str::to_string);
            let method = String::from_utf8_lossy(&out[..p.method]).into_owned();
            let path = String::from_utf8_lossy(&out[p.path.0..p.path.1]).into_owned();
            let still: crate::guard::StillAllowed = Box::new(move || {
                crate::authz::decide(&config.current().authz, who.as_deref(), &method, &path)
                    .is_ok()
            });
            guarded(relay, c.config.clone(), still).await
        } else {
            relay.await
        };
        if relayed.is_err() || r.body == Framing::UntilClose {
            return false;
        }
    }
    if r.keep && rbuf.is_empty() {
        c.link.give_back_raw(app);
    }
    !close
}

/// [`answer`] with `upstream-reset`: the app broke the exchange before a
/// whole answer head.
fn reset<'a, I>(
    io: &'a mut I,
    c: &'a Conn<'_>,
    started: Instant,
    head_method: bool,
) -> Pin<Box<dyn std::future::Future<Output = bool> + Send + 'a>>
where
    I: AsyncWrite + Unpin + Send,
{
    let e = ProxyError::Reset(c.link.app().to_string());
    answer(io, e, c, started, true, head_method)
}

/// `relay`, ended when a committed policy stops allowing the request.
/// Boxed where it is made: rare, and the connection's task should not
/// carry room for it.
fn guarded<'a, F>(
    relay: F,
    config: Arc<Config>,
    still: crate::guard::StillAllowed,
) -> Pin<Box<dyn std::future::Future<Output = Result<(), Failed>> + Send + 'a>>
where
    F: std::future::Future<Output = Result<(), Failed>> + Send + 'a,
{
    Box::pin(async move {
        tokio::select! {
            r = relay => r,
            _ = crate::guard::until(config, still) => Err(Failed),
        }
    })
}

/// RFC 9110 §9.2.2's idempotent methods.
fn idempotent(method: &[u8]) -> bool {
    matches!(
        method,
        b"GET" | b"HEAD" | b"OPTIONS" | b"TRACE" | b"PUT" | b"DELETE"
    )
}

/// What is left of a body to relay.
enum Body {
    Done,
    Length(u64),
    Chunked(Chunked),
    UntilClose,
}

/// Relays the rest of an answer's body (`left`) from the app to the
/// client, through `buf` (which may hold its start), each piece flushed (a
/// streaming answer's pieces go out as they come, TLS too). `Err` when
/// either side broke or the body is malformed: the connection cannot go on.
async fn relay<R, W>(
    from: &mut R,
    to: &mut W,
    buf: &mut BytesMut,
    mut left: Body,
) -> Result<(), Failed>
where
    R: AsyncRead + Unpin + Send,
    W: AsyncWrite + Unpin + Send,
{
    loop {
        if matches!(left, Body::Done) {
            return Ok(());
        }
        if buf.is_empty() {
            match read_some(from, buf).await {
                Ok(n) if n > 0 => {}
                Ok(_) if matches!(left, Body::UntilClose) => return Ok(()),
                _ => return Err(Failed),
            }
        }
        let (take, done) = match &mut left {
            Body::Done => return Ok(()),
            Body::Length(n) => {
                let k = usize::try_from(*n).unwrap_or(usize::MAX).min(buf.len());
                *n -= k as u64;
                (k, *n == 0)
            }
            Body::Chunked(scan) => match scan.scan(buf) {
                Ok(Some(end)) => (end, true),
                Ok(None) => (buf.len(), false),
                Err(_) => return Err(Failed),
            },
            Body::UntilClose => (buf.len(), false),
        };
        if to.write_all(&buf[..take]).await.is_err() || to.flush().await.is_err() {
            return Err(Failed);
        }
        buf.advance(take);
        if done {
            left = Body::Done;
        }
    }
}

/// Whether a head read so far is worth parsing: on its first read (a
/// stranger's bytes that are no HTTP at all are told at once), and then
/// only when new bytes hold a blank line that may end it. httparse starts
/// from the head's first byte each time; parsing after every read would
/// cost the square of a head sent a byte at a time.
#[derive(Debug, Default)]
struct HeadEnd {
    searched: usize,
}

impl HeadEnd {
    fn worth_parsing(&mut self, head: &[u8]) -> bool {
        let first = self.searched == 0;
        // A blank line may straddle the last read: two bytes back.
        let from = self.searched.saturating_sub(2).min(head.len());
        self.searched = head.len();
        let new = &head[from..];
        first || new.windows(2).any(|w| w == b"\n\n") || new.windows(3).any(|w| w == b"\n\r\n")
    }
}

/// A chunked request body being held: its scanner and how much of the
/// body it has read.
#[derive(Debug, Default)]
struct Held {
    scan: Chunked,
    scanned: usize,
}

impl Held {
    /// Scans what of `body` (the body's bytes so far, from its start) is
    /// new: `Some(n)` when the body ends after its first `n` bytes.
    fn feed(&mut self, body: &[u8]) -> Result<Option<usize>, BadChunk> {
        let from = self.scanned;
        let r = self.scan.scan(&body[from..]);
        if let Ok(None) = r {
            self.scanned = body.len();
        }
        r.map(|end| end.map(|n| from + n))
    }
}

/// The app's answer head, read.
#[derive(Debug)]
struct Answer {
    /// The head as the client gets it, without its final CRLF.
    out: Vec<u8>,
    head_len: usize,
    code: u16,
    /// The mesh's error code it carries (`x-raftmesh-error`), if any.
    error: &'static str,
    body: Framing,
    /// The app keeps the connection open after it.
    keep: bool,
}

#[derive(Debug)]
enum Resp {
    More,
    Bad,
    /// An informational (1xx) head of this length, as the client gets it.
    Info(usize, Vec<u8>),
    Ready(Answer),
}

/// Parses the app's answer head at the start of `buf`.
fn parse_response(buf: &[u8], head_method: bool) -> Resp {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut r = httparse::Response::new(&mut headers);
    let head_len = match r.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Resp::More,
        Err(_) => return Resp::Bad,
    };
    let (Some(version), Some(code)) = (r.version, r.code) else {
        return Resp::Bad;
    };
    // Never asked for a switch (upgrades go to hyper).
    if code == 101 || !(100..=999).contains(&code) {
        return Resp::Bad;
    }
    let mut out = Vec::with_capacity(head_len + 24);
    out.extend_from_slice(b"HTTP/1.1 ");
    // Three digits (checked above).
    out.extend_from_slice(&[
        b'0' + (code / 100) as u8,
        b'0' + (code / 10 % 10) as u8,
        b'0' + (code % 10) as u8,
    ]);
    out.push(b' ');
    out.extend_from_slice(r.reason.unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    let (mut length, mut te, mut chunked) = (None::<u64>, false, false);
    // Where the (last) Content-Length line went, and how many there were:
    // Transfer-Encoding overrides it, so it is taken out again.
    let (mut length_line, mut lengths) = (0..0, 0);
    let mut keep = version == 1;
    let mut error = "";
    for h in r.headers.iter() {
        let (n, v) = (h.name, h.value);
        let skip = match n.len() {
            7 => is(n, "upgrade"),
            10 if is(n, "connection") => {
                for t in v.split(|&b| b == b',') {
                    let t = t.trim_ascii();
                    if t.eq_ignore_ascii_case(b"close") {
                        keep = false;
                    } else if t.eq_ignore_ascii_case(b"keep-alive") && version == 0 {
                        keep = true;
                    }
                }
                true
            }
            10 => is(n, "keep-alive"),
            14 if is(n, "content-length") => {
                // Digits between optional spaces and tabs, nothing else:
                // the client must read the same length from the line it
                // gets as this proxy did.
                let Some(v) = Some(v.trim_ascii())
                    .filter(|v| !v.is_empty() && v.len() <= 18 && v.iter().all(u8::is_ascii_digit))
                    .and_then(|v| std::str::from_utf8(v).ok()?.parse::<u64>().ok())
                else {
                    return Resp::Bad;
                };
                if length.is_some_and(|l| l != v) {
                    return Resp::Bad;
                }
                length = Some(v);
                lengths += 1;
                length_line = out.len()..out.len() + n.len() + 2 + h.value.len() + 2;
                false
            }
            16 if is(n, "proxy-connection") => true,
            16 => {
                // The first one, as `error::code_of` reads it.
                if code >= 400 && error.is_empty() && is(n, crate::error::ERROR_HEADER) {
                    error = crate::error::code_of_bytes(v);
                }
                false
            }
            17 if is(n, "transfer-encoding") => {
                te = true;
                // Chunked only when it is the last coding.
                chunked = v
                    .rsplit(|&b| b == b',')
                    .next()
                    .is_some_and(|t| t.trim_ascii().eq_ignore_ascii_case(b"chunked"));
                false
            }
            _ => false,
        };
        if !skip {
            header_line(&mut out, n.as_bytes(), v);
        }
    }
    if te && lengths > 0 {
        if lengths > 1 {
            return Resp::Bad;
        }
        out.drain(length_line);
        // Both framings: the connection is not used again (RFC 9112 §6.3).
        keep = false;
    }
    if code < 200 {
        out.extend_from_slice(b"\r\n");
        return Resp::Info(head_len, out);
    }
    let body = if head_method || code == 204 || code == 304 {
        Framing::None
    } else if te {
        if chunked {
            Framing::Chunked
        } else {
            Framing::UntilClose
        }
    } else {
        match length {
            Some(0) => Framing::None,
            Some(n) => Framing::Length(n),
            None => Framing::UntilClose,
        }
    };
    // An answer that must not carry a body but says it has one: bytes may
    // still come after it, so the connection is not used again.
    if body == Framing::None && (te || length.is_some_and(|n| n > 0)) {
        keep = false;
    }
    Resp::Ready(Answer {
        out,
        head_len,
        code,
        error,
        keep: keep && body != Framing::UntilClose,
        body,
    })
}

/// Answers the proxy's own error, counted as hyper's path counts it;
/// whether the connection stays open. Boxed where it is made: rare, and
/// the connection's task should not carry room for it.
fn answer<'a, I>(
    io: &'a mut I,
    e: ProxyError,
    c: &'a Conn<'_>,
    started: Instant,
    close: bool,
    head_method: bool,
) -> Pin<Box<dyn std::future::Future<Output = bool> + Send + 'a>>
where
    I: AsyncWrite + Unpin + Send,
{
    Box::pin(async move {
        let (resp, code, error) = crate::server::finish(Err(e), &c.config.metrics, false);
        let _ = crate::server::count(c.recorder, None, &resp, false, (code, error), started);
        let (parts, body) = resp.into_parts();
        let body = body
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let mut out = Vec::with_capacity(256 + body.len());
        out.extend_from_slice(b"HTTP/1.1 ");
        out.extend_from_slice(parts.status.as_str().as_bytes());
        out.push(b' ');
        out.extend_from_slice(parts.status.canonical_reason().unwrap_or("").as_bytes());
        out.extend_from_slice(b"\r\n");
        for (k, v) in &parts.headers {
            if k == http::header::CONTENT_LENGTH || k == http::header::CONNECTION {
                continue;
            }
            header_line(&mut out, k.as_str().as_bytes(), v.as_bytes());
        }
        out.extend_from_slice(format!("content-length: {}\r\n", body.len()).as_bytes());
        if close {
            out.extend_from_slice(b"connection: close\r\n");
        }
        out.extend_from_slice(b"\r\n");
        // An answer to HEAD has no body (its length says what GET's would).
        if !head_method {
            out.extend_from_slice(&body);
        }
        io.write_all(&out).await.is_ok() && io.flush().await.is_ok() && !close
    })
}

#[cfg(test)]
mod tests;
