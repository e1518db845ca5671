//! Answers that end when authorization no longer allows them. A request is
//! authorized once, when it arrives; a streaming answer (HTTP/2 streams,
//! gRPC streams, chunked HTTP/1) can outlive that decision. [`Guarded`]
//! decides again at every config change while the answer flows, and ends
//! it (a reset for HTTP/2, a closed connection for HTTP/1) once a
//! committed policy forbids it. Opaque TCP tunnels get the same from
//! [`until_denied`].

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::Stream;
use hyper::body::{Body as HttpBody, Frame, SizeHint};
use tokio_stream::wrappers::WatchStream;

use crate::state::Config;
use crate::Body;

/// The error a guarded answer ends with.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Whether the request is still allowed (decided again on each change).
pub type StillAllowed = Box<dyn Fn() -> bool + Send + Sync>;

/// A response body that ends once `still_allowed` says no.
pub struct Guarded {
    inner: Body,
    changes: Option<WatchStream<u64>>,
    still_allowed: Option<StillAllowed>,
    /// The request counts as in flight on its connection until the answer
    /// is done (a quiet stream is not an idle connection).
    in_flight: Option<crate::conn::InFlight>,
    /// Its access log record, written when the answer ends.
    log: Option<Box<crate::accesslog::Pending>>,
    /// A gRPC answer's metrics, counted when its trailers come.
    tally: Option<Box<crate::metrics::Tally>>,
    /// The request's span, ended when the answer ends.
    hop: Option<raftmesh_client::otel::Hop>,
}

impl Guarded {
    /// `inner` as is: an answer that cannot outlive its decision.
    pub fn plain(inner: Body) -> Self {
        Self {
            inner,
            changes: None,
            still_allowed: None,
            in_flight: None,
            log: None,
            tally: None,
            hop: None,
        }
    }

    /// Writes `log` (counting the body's bytes) when the answer ends.
    pub fn logging(mut self, log: Option<Box<crate::accesslog::Pending>>) -> Self {
        self.log = log;
        self
    }

    /// Ends `hop` (the request's span) when the answer ends.
    pub fn tracing(mut self, hop: Option<raftmesh_client::otel::Hop>) -> Self {
        self.hop = hop;
        self
    }

    /// Counts a gRPC answer when its trailers come (or it ends without).
    pub fn tallying(mut self, tally: Option<Box<crate::metrics::Tally>>) -> Self {
        self.tally = tally;
        self
    }

    /// Keeps the request in flight on its connection until the answer ends.
    pub fn holding(mut self, in_flight: crate::conn::InFlight) -> Self {
        if !self.inner.is_end_stream() {
            self.in_flight = Some(in_flight);
        }
        self
    }

    /// `inner`, ended when a config change makes `still_allowed` false.
    pub fn new(inner: Body, config: &Config, still_allowed: StillAllowed) -> Self {
        Self {
            inner,
            changes: Some(WatchStream::from_changes(config.watch())),
            still_allowed: Some(still_allowed),
            in_flight: None,
            log: None,
            tally: None,
            hop: None,
        }
    }
}

impl HttpBody for Guarded {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if let (Some(changes), Some(allowed)) = (&mut this.changes, &this.still_allowed) {
            while let Poll::Ready(Some(_)) = Pin::new(&mut *changes).poll_next(cx) {
                if !allowed() {
                    this.changes = None;
                    return Poll::Ready(Some(Err(
                        "ended: a committed policy no longer allows this request".into(),
                    )));
                }
            }
        }
        let r = Pin::new(&mut this.inner).poll_frame(cx).map_err(Into::into);
        if matches!(r, Poll::Ready(None) | Poll::Ready(Some(Err(_)))) {
            this.in_flight = None;
        }
        if let Poll::Ready(Some(Ok(f))) = &r {
            if let (Some(log), Some(d)) = (&mut this.log, f.data_ref()) {
                log.sent(d.len());
            }
            if let (Some(tally), Some(t)) = (&mut this.tally, f.trailers_ref()) {
                tally.trailers(t);
            }
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

impl Drop for Guarded {
    fn drop(&mut self) {
        if let Some(log) = self.log.take() {
            log.finish();
        }
    }
}

/// Resolves once a config change denies an opaque TCP connection from `who`.
pub async fn until_denied(config: Arc<Config>, who: Option<String>) {
    let c = config.clone();
    let still: StillAllowed =
        Box::new(move || crate::authz::decide(&c.current().authz, who.as_deref(), "", "").is_ok());
    until(config, still).await
}

/// Resolves once, at a config change, `still_allowed` says no (a tunnel
/// the config no longer allows); never if the config goes away.
pub async fn until(config: Arc<Config>, still_allowed: StillAllowed) {
    let mut changes = config.watch();
    while changes.changed().await.is_ok() {
        if !still_allowed() {
            return;
        }
    }
    std::future::pending().await
}

/// Resolves once `who` is revoked (a committed Revocation): its open
/// connections are closed, not only its next requests refused.
pub async fn until_revoked(config: Arc<Config>, who: Option<String>) {
    let Some(who) = who else {
        return std::future::pending().await;
    };
    let mut changes = config.watch();
    loop {
        if config.current().authz.revoked.contains(&who) {
            return;
        }
        if changes.changed().await.is_err() {
            return std::future::pending().await;
        }
    }
}
