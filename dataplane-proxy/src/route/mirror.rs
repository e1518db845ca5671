//! Mirroring (`rules[].mirror`): a copy of a share of a rule's requests
//! goes to another subset of the service or to another service, fire and
//! forget. The copy's body is collected as the primary's flows (a [`Tee`]:
//! the primary never waits for it), up to a limit past which nothing is
//! copied; the copy leaves once the primary's body has ended, with
//! `x-raftmesh-mirror: true`, through the rest of the outbound stack, and
//! its answer is read and dropped. At most [`MAX_IN_FLIGHT`] copies are in
//! flight per proxy; beyond, requests are not copied.

use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request};
use http_body_util::BodyExt;
use hyper::body::{Body as _, Frame, SizeHint};
use rand::Rng;
use tokio::sync::oneshot;

use crate::compiled::{ServiceId, ServiceTable};
use crate::stack::Next;
use crate::state::Config;
use crate::target::Target;
use crate::Body;

/// Copies in flight per proxy, at most.
pub const MAX_IN_FLIGHT: usize = 256;
/// Default largest body copied.
pub const MAX_BODY: usize = 64 * 1024;
/// How long a copy may take before it is dropped.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// Body bytes kept for copies per proxy, at most (beyond, a copy being
/// collected is dropped).
pub const MAX_BYTES: usize = 64 * 1024 * 1024;

static IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);
static BYTES: AtomicUsize = AtomicUsize::new(0);

/// Where copies go.
#[derive(Debug, Clone)]
pub enum To {
    /// A backend of the same rule (weight 0: never chosen for the
    /// primary), holding the mirror subset's endpoints.
    Backend(usize),
    /// Another service, routed by its own rules.
    Service(ServiceId),
}

/// A rule's mirror, compiled.
#[derive(Debug, Clone)]
pub struct Mirror {
    /// Where copies go.
    pub to: To,
    /// Share of the requests copied, 0–100.
    pub percent: u32,
    /// Largest body copied.
    pub max_body: usize,
}

struct Slot;

impl Slot {
    fn take() -> Option<Self> {
        let n = IN_FLIGHT.fetch_add(1, Ordering::Relaxed);
        if n >= MAX_IN_FLIGHT {
            IN_FLIGHT.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        Some(Slot)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        IN_FLIGHT.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Mirror {
    /// Copies `req` (maybe, by `percent`): returns it with its body teed
    /// when a copy is to be sent.
    pub fn copy<S: Next>(
        &self,
        req: Request<Body>,
        table: &Arc<ServiceTable>,
        rule: usize,
        config: &Arc<Config>,
        inner: &S,
    ) -> Request<Body> {
        // A tunnel (upgrade, CONNECT) is never copied: the copy would open
        // one too.
        if self.percent == 0
            || crate::upgrade::requested(&req)
            || rand::rng().random_range(0..100) >= self.percent
        {
            return req;
        }
        let Some(slot) = Slot::take() else {
            return req;
        };
        if req
            .body()
            .size_hint()
            .exact()
            .is_some_and(|n| n > self.max_body as u64)
        {
            return req;
        }
        let mut head = Request::new(());
        *head.method_mut() = req.method().clone();
        *head.uri_mut() = req.uri().clone();
        *head.version_mut() = req.version();
        *head.headers_mut() = req.headers().clone();
        head.headers_mut()
            .insert("x-raftmesh-mirror", HeaderValue::from_static("true"));
        let (req, body) = if req.body().is_end_stream() {
            let (tx, rx) = oneshot::channel();
            let _ = tx.send(Vec::new());
            (req, rx)
        } else {
            let (tx, rx) = oneshot::channel();
            let req = req.map(|b| {
                Tee {
                    inner: b,
                    kept: Vec::new(),
                    len: 0,
                    limit: self.max_body,
                    done: Some(tx),
                }
                .boxed()
            });
            (req, rx)
        };
        let (to, table, config, mut inner) = (
            self.to.clone(),
            table.clone(),
            config.clone(),
            inner.clone(),
        );
        tokio::spawn(async move {
            let _slot = slot;
            // The primary's body ended within the limits (else: no copy),
            // in time.
            let Ok(Ok(frames)) = tokio::time::timeout(TIMEOUT, body).await else {
                return;
            };
            let kept = Kept(frames.iter().map(Bytes::len).sum());
            let bytes: Bytes = match frames.len() {
                0 => Bytes::new(),
                1 => frames[0].clone(),
                _ => frames.concat().into(),
            };
            let mut copy = head.map(|()| crate::full(bytes));
            let (table, rule, backend) = match to {
                To::Backend(b) => (table, rule, b),
                To::Service(id) => {
                    let t = match config.current().service(&id).cloned() {
                        Some(t) => Some(t),
                        None => config.learn(&id, Duration::from_secs(2)).await,
                    };
                    let Some(t) = t else { return };
                    let Some((r, b)) = super::choose(&t.rules, &copy) else {
                        return;
                    };
                    (t, r, b)
                }
            };
            let stats = config.stats.service(&table.id);
            copy.extensions_mut().insert(Target {
                table,
                rule,
                backend,
                stats,
                hash: None,
                chosen: None,
            });
            let send = async {
                if let Ok(resp) = tower::Service::call(&mut inner, copy).await {
                    let _ = resp.into_body().collect().await;
                }
            };
            let _ = tokio::time::timeout(TIMEOUT, send).await;
            drop(kept);
        });
        req
    }
}

/// The primary's body, keeping what flows (shared, not copied) up to a
/// limit; it is handed over when the body ends.
struct Tee {
    inner: Body,
    kept: Vec<Bytes>,
    len: usize,
    limit: usize,
    done: Option<oneshot::Sender<Vec<Bytes>>>,
}

impl hyper::body::Body for Tee {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        let r = Pin::new(&mut this.inner).poll_frame(cx);
        match &r {
            Poll::Ready(Some(Ok(f))) => {
                if let Some(d) = f.data_ref() {
                    if this.done.is_some() {
                        this.len += d.len();
                        let total = BYTES.fetch_add(d.len(), Ordering::Relaxed) + d.len();
                        if this.len > this.limit || total > MAX_BYTES {
                            // Too large, or too much kept already: no copy.
                            this.give_up();
                        } else {
                            this.kept.push(d.clone());
                        }
                    }
                }
                if this.inner.is_end_stream() {
                    this.finish();
                }
            }
            Poll::Ready(None) => this.finish(),
            Poll::Ready(Some(Err(_))) => this.give_up(),
            Poll::Pending => {}
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Tee {
    fn finish(&mut self) {
        if let Some(tx) = self.done.take() {
            // The bytes stay counted until the copy is sent (`Kept`).
            self.len = 0;
            if let Err(frames) = tx.send(std::mem::take(&mut self.kept)) {
                // The copy was given up (timed out): uncount its bytes.
                BYTES.fetch_sub(frames.iter().map(Bytes::len).sum(), Ordering::Relaxed);
            }
        }
    }

    fn give_up(&mut self) {
        self.done = None;
        self.kept = Vec::new();
        BYTES.fetch_sub(std::mem::take(&mut self.len), Ordering::Relaxed);
    }
}

impl Drop for Tee {
    fn drop(&mut self) {
        // Dropped before its end: what it kept is no longer counted.
        if self.done.is_some() {
            self.give_up();
        }
    }
}

/// Body bytes of a copy, counted in [`BYTES`] until dropped.
struct Kept(usize);

impl Drop for Kept {
    fn drop(&mut self) {
        BYTES.fetch_sub(self.0, Ordering::Relaxed);
    }
}
