//! A request body that can be sent again: each attempt reads it through a
//! [`ReplayBody`] handle that replays what earlier attempts already read,
//! then reads on from the caller. What is read is kept up to a limit;
//! past it the body can no longer be replayed and the attempt that read
//! past it is the last. Nothing waits for the whole body first: a
//! streaming call (gRPC bidi) flows as it comes.
//!
//! Only the handle of the newest attempt reads from the caller: an
//! abandoned attempt's handle (a per-try timeout, a refused stream that
//! hyper still polls) stalls instead of taking frames the next attempt
//! needs.

use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body as _, Frame, SizeHint};

use crate::Body;

/// Most request body bytes kept for a retry.
pub const LIMIT: usize = 64 * 1024;

struct Shared {
    source: Body,
    /// Frames read from the caller, in order (while `kept` is true).
    frames: Vec<Frame<Bytes>>,
    bytes: usize,
    /// Every frame read is in `frames` (the limit was never passed).
    kept: bool,
    /// The caller's body ended.
    ended: bool,
    /// The attempt whose handle may read from the caller.
    owner: u32,
    /// The caller's size hint (kept exact for Content-Length).
    hint: SizeHint,
    /// Some attempt read from the caller.
    read_any: bool,
}

/// The body shared by every attempt of one request.
#[derive(Clone)]
pub struct Replay(Arc<Mutex<Shared>>);

impl Replay {
    /// Wraps the caller's body.
    pub fn new(source: Body) -> Self {
        let hint = source.size_hint();
        Self(Arc::new(Mutex::new(Shared {
            source,
            frames: Vec::new(),
            bytes: 0,
            kept: true,
            ended: false,
            owner: 0,
            hint,
            read_any: false,
        })))
    }

    /// The first attempt's body.
    pub fn first(&self) -> ReplayBody {
        let mut s = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        s.owner = 1;
        ReplayBody {
            shared: self.0.clone(),
            id: 1,
            pos: 0,
        }
    }

    /// The body of another attempt, taken over from the earlier ones in
    /// one step, or `None` when it cannot be sent whole again: only when
    /// every byte was read and kept (an earlier attempt that still reads
    /// then finds its whole body and ends), or when no attempt read any
    /// (it failed before sending: nothing will read for it again). A
    /// body an earlier attempt is part-way through stays that attempt's
    /// — taking it would leave it stalled, holding its stream.
    pub fn take_over(&self) -> Option<ReplayBody> {
        let mut s = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let whole = s.ended && s.kept;
        let untouched = !s.read_any;
        if !(whole || untouched) {
            return None;
        }
        s.owner += 1;
        Some(ReplayBody {
            shared: self.0.clone(),
            id: s.owner,
            pos: 0,
        })
    }
}

/// One attempt's view of the body.
pub struct ReplayBody {
    shared: Arc<Mutex<Shared>>,
    id: u32,
    pos: usize,
}

fn copy(f: &Frame<Bytes>) -> Frame<Bytes> {
    match (f.data_ref(), f.trailers_ref()) {
        (Some(d), _) => Frame::data(d.clone()),
        (None, Some(t)) => Frame::trailers(t.clone()),
        // A frame is data or trailers.
        (None, None) => Frame::data(Bytes::new()),
    }
}

impl hyper::body::Body for ReplayBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let mut s = this.shared.lock().unwrap_or_else(PoisonError::into_inner);
        // (Once the limit is passed the kept frames are gone; only the
        // owner, which read them all, still reads.)
        if let Some(f) = s.frames.get(this.pos) {
            this.pos += 1;
            return Poll::Ready(Some(Ok(copy(f))));
        }
        if s.owner != this.id && !(s.ended && s.kept) {
            // Abandoned: never take the next attempt's frames, never end
            // early (a short body could pass for a whole one).
            return Poll::Pending;
        }
        if s.ended {
            return Poll::Ready(None);
        }
        s.read_any = true;
        match Pin::new(&mut s.source).poll_frame(cx) {
            Poll::Ready(Some(Ok(f))) => {
                if s.kept {
                    let n = f.data_ref().map_or(0, Bytes::len);
                    if s.bytes + n <= LIMIT {
                        s.bytes += n;
                        let kept = copy(&f);
                        s.frames.push(kept);
                        this.pos += 1;
                    } else {
                        s.kept = false;
                        s.frames.clear();
                    }
                }
                Poll::Ready(Some(Ok(f)))
            }
            Poll::Ready(None) => {
                s.ended = true;
                Poll::Ready(None)
            }
            other => other,
        }
    }

    fn is_end_stream(&self) -> bool {
        let s = self.shared.lock().unwrap_or_else(PoisonError::into_inner);
        s.ended && self.pos >= s.frames.len()
    }

    fn size_hint(&self) -> SizeHint {
        self.shared
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .hint
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    fn stream(chunks: Vec<&'static [u8]>) -> Body {
        let frames = chunks
            .into_iter()
            .map(|c| Ok::<_, hyper::Error>(Frame::data(Bytes::from_static(c))));
        http_body_util::StreamBody::new(futures::stream::iter(frames)).boxed()
    }

    async fn read(b: ReplayBody) -> Vec<u8> {
        b.collect().await.unwrap().to_bytes().to_vec()
    }

    #[tokio::test]
    async fn a_body_read_whole_is_sent_whole_again() {
        let r = Replay::new(stream(vec![b"hello ", b"world"]));
        assert_eq!(read(r.first()).await, b"hello world");
        assert_eq!(read(r.take_over().unwrap()).await, b"hello world");
        // And again.
        assert_eq!(read(r.take_over().unwrap()).await, b"hello world");
    }

    #[tokio::test]
    async fn a_body_no_attempt_read_goes_to_the_next_and_the_first_takes_nothing() {
        let r = Replay::new(stream(vec![b"a", b"b", b"c"]));
        let mut first = r.first();
        let second = r.take_over().expect("nothing read yet");
        // The old handle stalls rather than read what the next needs.
        let stalled =
            tokio::time::timeout(std::time::Duration::from_millis(50), first.frame()).await;
        assert!(stalled.is_err(), "the abandoned attempt must not read on");
        assert_eq!(read(second).await, b"abc");
    }

    #[tokio::test]
    async fn a_body_part_way_through_an_attempt_is_not_taken_over() {
        let r = Replay::new(stream(vec![b"a", b"b", b"c"]));
        let mut first = r.first();
        assert_eq!(
            first.frame().await.unwrap().unwrap().into_data().unwrap(),
            "a"
        );
        assert!(r.take_over().is_none(), "it would stall the first mid-body");
        // The first goes on to the end.
        assert_eq!(read(first).await, b"bc");
    }

    #[tokio::test]
    async fn past_the_limit_the_body_flows_once_and_cannot_be_replayed() {
        static BIG: [u8; LIMIT] = [7u8; LIMIT];
        let r = Replay::new(stream(vec![b"x", &BIG]));
        let body = read(r.first()).await;
        assert_eq!(body.len(), LIMIT + 1, "the one attempt gets every byte");
        assert!(r.take_over().is_none());
    }

    #[test]
    fn the_callers_exact_length_is_kept() {
        let r = Replay::new(
            http_body_util::Full::new(Bytes::from_static(b"12345"))
                .map_err(|never| match never {})
                .boxed(),
        );
        assert_eq!(r.first().size_hint().exact(), Some(5));
    }
}
