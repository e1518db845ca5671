//! How long a client connection may take and may idle. Two limits that
//! hyper keeps as one (its HTTP/1 header-read timer also runs while a
//! keep-alive connection waits for its next request, so a client pool's
//! idle connection was closed after 10 s):
//! - **request head**: a head still incomplete `header` after its first
//!   byte is cut (slowloris; default 10 s; looked at every half of it, so
//!   a head pending at two looks in a row may be cut from half of it on);
//! - **idle**: a connection with no request in flight and no bytes either
//!   way for `idle` is closed (default 60 s, `--idle-timeout`), HTTP/1
//!   keep-alive and HTTP/2 alike.
//!
//! Listeners back off after failed accepts ([`accept`]).
//!
//! [`Watched`] wraps the socket and notes when bytes move; the service
//! marks requests in flight ([`ConnClock::request`]); [`ConnClock::expired`]
//! resolves when either limit is passed. The request path only sets flags
//! (no clock read): the watcher wakes every half header limit.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

/// The limits of a client connection (and how its HTTP/1.1 is served).
#[derive(Debug, Clone, Copy)]
pub struct ConnLimits {
    /// A request head must be complete this long after its first byte.
    pub header: Duration,
    /// A connection with nothing in flight and no bytes for this long is closed.
    pub idle: Duration,
    /// Inbound HTTP/1.1 on the fast path (`fastpath`), hyper for the rest;
    /// off, hyper serves every request.
    pub http1_fast_path: bool,
}

impl Default for ConnLimits {
    fn default() -> Self {
        Self {
            header: Duration::from_secs(10),
            idle: Duration::from_secs(60),
            http1_fast_path: true,
        }
    }
}

/// What one connection is doing. The socket and the service only set
/// flags (no clock read on the request path); [`ConnClock::expired`] wakes
/// every half header limit and reads them.
#[derive(Debug)]
pub struct ConnClock {
    limits: ConnLimits,
    /// Bytes moved since the last look.
    active: AtomicBool,
    /// A request head has begun and not completed.
    head_pending: AtomicBool,
    /// Requests whose head completed, ever (tells one pending head from
    /// the next).
    requests: AtomicU64,
    in_flight: AtomicUsize,
    /// HTTP/2: frames flow without heads; only the idle limit applies.
    h2: AtomicBool,
    seen_bytes: AtomicBool,
}

/// Why a connection was closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expired {
    /// A request head took too long.
    SlowHead,
    /// Nothing happened for the idle limit.
    Idle,
}

impl ConnClock {
    /// A clock for a connection opened now.
    pub fn new(limits: ConnLimits) -> Arc<Self> {
        Arc::new(Self {
            limits,
            active: AtomicBool::new(false),
            head_pending: AtomicBool::new(false),
            requests: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
            h2: AtomicBool::new(false),
            seen_bytes: AtomicBool::new(false),
        })
    }

    fn read(&self, first: &[u8]) {
        self.active.store(true, Ordering::Relaxed);
        if !self.seen_bytes.load(Ordering::Relaxed) {
            self.seen_bytes.store(true, Ordering::Relaxed);
            if first.starts_with(b"PRI ") {
                self.h2.store(true, Ordering::Relaxed);
            }
        }
        if self.in_flight.load(Ordering::Relaxed) == 0 && !self.h2.load(Ordering::Relaxed) {
            self.head_pending.store(true, Ordering::Relaxed);
        }
    }

    fn wrote(&self) {
        self.active.store(true, Ordering::Relaxed);
    }

    /// Marks a request in flight (its head is complete) until the guard
    /// is dropped.
    pub fn request(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.head_pending.store(false, Ordering::Relaxed);
        InFlight(self.clone())
    }

    /// No request in flight now.
    pub fn idle_now(&self) -> bool {
        self.in_flight.load(Ordering::Relaxed) == 0
    }

    /// Resolves when a limit is passed: a head pending at two looks in a
    /// row with no request in between (so cut between half the header limit
    /// and all of it), or nothing at all for the idle limit.
    pub async fn expired(&self) -> Expired {
        let period = (self.limits.header / 2).max(Duration::from_millis(10));
        let mut pending_since_requests: Option<u64> = None;
        let mut idle_for = Duration::ZERO;
        loop {
            tokio::time::sleep(period).await;
            if self.head_pending.load(Ordering::Relaxed) {
                let n = self.requests.load(Ordering::Relaxed);
                if pending_since_requests == Some(n) {
                    return Expired::SlowHead;
                }
                pending_since_requests = Some(n);
            } else {
                pending_since_requests = None;
            }
            if self.active.swap(false, Ordering::Relaxed)
                || self.in_flight.load(Ordering::Relaxed) > 0
            {
                idle_for = Duration::ZERO;
            } else {
                idle_for += period;
                if idle_for >= self.limits.idle {
                    return Expired::Idle;
                }
            }
        }
    }
}

/// A request in flight on a connection.
pub struct InFlight(Arc<ConnClock>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.0.wrote();
    }
}

/// A socket whose reads and writes are noted on a [`ConnClock`].
pub struct Watched<I> {
    io: I,
    clock: Arc<ConnClock>,
}

impl<I> Watched<I> {
    /// Wraps `io`.
    pub fn new(io: I, clock: Arc<ConnClock>) -> Self {
        Self { io, clock }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Watched<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.io).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            let first = &buf.filled()[before..];
            self.clock.read(first);
        }
        r
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Watched<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.clock.wrote();
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.clock.wrote();
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

/// A future polled only when its own waker fired (and at its first
/// poll), not at every wake of the task that holds it. A connection's
/// task wakes twice per request; the futures that end a connection
/// (drains, limits, revocations) are quiet almost always, and polling each
/// of them at every wake costs more than the request's own decisions.
pub struct Quiet<F> {
    inner: F,
    flag: Arc<QuietFlag>,
}

struct QuietFlag {
    woken: AtomicBool,
    task: futures::task::AtomicWaker,
}

impl futures::task::ArcWake for QuietFlag {
    fn wake_by_ref(this: &Arc<Self>) {
        this.woken.store(true, Ordering::Release);
        this.task.wake();
    }
}

impl<F> Quiet<F> {
    /// `inner`, polled when it asks to be.
    pub fn new(inner: F) -> Self {
        Self {
            inner,
            flag: Arc::new(QuietFlag {
                woken: AtomicBool::new(true),
                task: futures::task::AtomicWaker::new(),
            }),
        }
    }
}

impl<F: std::future::Future + Unpin> std::future::Future for Quiet<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        self.flag.task.register(cx.waker());
        if !self.flag.woken.swap(false, Ordering::AcqRel) {
            return Poll::Pending;
        }
        let flag = self.flag.clone();
        let waker = futures::task::waker_ref(&flag);
        Pin::new(&mut self.inner).poll(&mut Context::from_waker(&waker))
    }
}

/// Backs off after failed accepts (out of file descriptors, ...), so a
/// listener never spins: 5 ms, doubling to 1 s, reset by a success.
#[derive(Debug, Default)]
pub struct AcceptBackoff {
    delay: Duration,
}

impl AcceptBackoff {
    const FIRST: Duration = Duration::from_millis(5);
    const MAX: Duration = Duration::from_secs(1);

    /// The wait after a failure.
    pub fn failed(&mut self) -> Duration {
        let d = self.delay.max(Self::FIRST);
        self.delay = (d * 2).min(Self::MAX);
        d
    }

    /// A success resets it.
    pub fn succeeded(&mut self) {
        self.delay = Duration::ZERO;
    }
}

/// The next connection on `listener`, backing off after errors.
pub async fn accept(
    listener: &TcpListener,
    backoff: &mut AcceptBackoff,
    what: &'static str,
) -> TcpStream {
    loop {
        match listener.accept().await {
            Ok((s, _)) => {
                backoff.succeeded();
                return s;
            }
            Err(e) => {
                let wait = backoff.failed();
                tracing::warn!(error = %e, retry_in = ?wait, listener = what, "accept failed; backing off");
                tokio::time::sleep(wait).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> ConnLimits {
        ConnLimits {
            header: Duration::from_secs(10),
            idle: Duration::from_secs(60),
            http1_fast_path: true,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiting_keep_alive_connection_lives_until_the_idle_limit() {
        let c = ConnClock::new(limits());
        c.read(b"GET / HTTP/1.1\r\n");
        drop(c.request());
        let t0 = tokio::time::Instant::now();
        assert_eq!(c.expired().await, Expired::Idle);
        let waited = t0.elapsed();
        assert!(
            waited >= Duration::from_secs(60) && waited <= Duration::from_secs(66),
            "{waited:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_request_head_is_cut_at_the_header_limit() {
        let c = ConnClock::new(limits());
        c.read(b"GET / HT");
        let t0 = tokio::time::Instant::now();
        assert_eq!(c.expired().await, Expired::SlowHead);
        assert!(
            t0.elapsed() <= Duration::from_secs(10),
            "{:?}",
            t0.elapsed()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn http2_and_requests_in_flight_are_not_slow_heads() {
        let c = ConnClock::new(limits());
        c.read(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
        c.read(b"frames");
        let t0 = tokio::time::Instant::now();
        assert_eq!(
            c.expired().await,
            Expired::Idle,
            "h2 has only the idle limit"
        );
        assert!(t0.elapsed() >= Duration::from_secs(60));
        let c = ConnClock::new(limits());
        let r = c.request();
        let busy = tokio::time::timeout(Duration::from_secs(300), c.expired()).await;
        assert!(busy.is_err(), "a request in flight is never idle");
        drop(r);
    }
    #[tokio::test(start_paused = true)]
    async fn a_quiet_future_is_polled_when_it_woke_and_not_at_other_wakes() {
        use std::sync::atomic::AtomicUsize;
        let polls = Arc::new(AtomicUsize::new(0));
        let (tx, mut rx) = tokio::sync::watch::channel(0);
        let p = polls.clone();
        let quiet = Quiet::new(Box::pin(async move {
            loop {
                p.fetch_add(1, Ordering::SeqCst);
                let _ = rx.changed().await;
                if *rx.borrow() == 2 {
                    return "ended";
                }
            }
        }));
        tokio::pin!(quiet);
        // The task wakes 50 times for other reasons: one poll, the first.
        let mut ended = None;
        for _ in 0..50 {
            tokio::select! {
                r = &mut quiet => { ended = Some(r); break; }
                _ = tokio::time::sleep(Duration::from_millis(1)) => {}
            }
        }
        assert_eq!((ended, polls.load(Ordering::SeqCst)), (None, 1));
        // Its own wake: polled again; then it ends when it says so.
        tx.send(1).unwrap();
        let r = tokio::time::timeout(Duration::from_millis(5), &mut quiet).await;
        assert!(r.is_err());
        assert_eq!(polls.load(Ordering::SeqCst), 2);
        tx.send(2).unwrap();
        assert_eq!(quiet.await, "ended");
    }

    #[test]
    fn failed_accepts_back_off_to_a_second_and_a_success_resets() {
        let mut b = AcceptBackoff::default();
        let waits: Vec<u64> = (0..10).map(|_| b.failed().as_millis() as u64).collect();
        assert_eq!(waits, [5, 10, 20, 40, 80, 160, 320, 640, 1000, 1000]);
        b.succeeded();
        assert_eq!(b.failed(), Duration::from_millis(5));
    }
}
