//! `meshctl tap`: while meshd has a tap open on this proxy's service
//! (`ServerMessage.tap`), a sample of the requests served, inbound and
//! outbound, goes back on the discovery stream as `TapRecord`s: what an
//! access log record holds (`accesslog.rs` builds both), plus the request's
//! header *names*; never a header value, a query or a body. At most
//! `max_per_second` records a second; a tap ends by itself when its time
//! is up, even if meshd is gone. Costs one atomic load per request while
//! no tap is open.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use raftmesh_api::v1 as pb;
use rand::Rng;
use tokio::sync::mpsc;

/// At most this many taps at once (each is a meshctl session).
const MAX_TAPS: usize = 16;
/// Records a second, whatever a tap asks.
pub const MAX_PER_SECOND: u32 = 100;
/// Records waiting for the stream.
const QUEUE: usize = 256;
/// A tap lasts at most this long.
const MAX_DURATION: Duration = Duration::from_secs(300);

#[derive(Debug)]
struct Active {
    id: String,
    until: Instant,
    sample_ppm: u32,
    per_second: u32,
    /// The second counted (since `epoch`) and the records sent in it.
    second: u64,
    sent: u32,
}

/// The taps open on this proxy.
#[derive(Debug)]
pub struct Taps {
    any: AtomicBool,
    /// The second (since `epoch`, plus one) in which every open tap has
    /// used its records: until it ends, requests skip the lock.
    full: AtomicU64,
    active: Mutex<Vec<Active>>,
    epoch: Instant,
    dropped: AtomicU64,
    tx: mpsc::Sender<pb::TapRecord>,
    rx: Mutex<Option<mpsc::Receiver<pb::TapRecord>>>,
}

impl Default for Taps {
    fn default() -> Self {
        let (tx, rx) = mpsc::channel(QUEUE);
        Self {
            any: AtomicBool::new(false),
            full: AtomicU64::new(0),
            active: Mutex::default(),
            epoch: Instant::now(),
            dropped: AtomicU64::new(0),
            tx,
            rx: Mutex::new(Some(rx)),
        }
    }
}

impl Taps {
    /// Starts, renews or (duration 0) stops a tap.
    pub fn start(&self, t: &pb::TapStart) {
        let id: String = t.id.chars().take(64).collect();
        let mut active = self.active.lock().unwrap_or_else(PoisonError::into_inner);
        active.retain(|a| a.id != id && a.until > Instant::now());
        self.full.store(0, Relaxed);
        if t.duration_ms > 0 && active.len() >= MAX_TAPS {
            tracing::warn!(tap = %id, max = MAX_TAPS, "not opening another tap: this proxy has as many open as it allows");
        } else if t.duration_ms > 0 && !id.is_empty() {
            let d = Duration::from_millis(t.duration_ms).min(MAX_DURATION);
            tracing::info!(tap = %id, sample_ppm = t.sample_ppm, seconds = d.as_secs(), "meshd opened a tap");
            active.push(Active {
                id,
                until: Instant::now() + d,
                sample_ppm: t.sample_ppm.min(1_000_000),
                per_second: t.max_per_second.clamp(1, MAX_PER_SECOND),
                second: 0,
                sent: 0,
            });
        }
        self.any.store(!active.is_empty(), Relaxed);
    }

    /// Stops every tap (the stream that opened them ended).
    pub fn stop_all(&self) {
        let mut active = self.active.lock().unwrap_or_else(PoisonError::into_inner);
        if !active.is_empty() {
            tracing::info!(
                taps = active.len(),
                "the discovery stream ended; closing its taps"
            );
        }
        active.clear();
        self.any.store(false, Relaxed);
        self.full.store(0, Relaxed);
    }

    /// Whether any tap is open (one atomic load).
    pub fn any_open(&self) -> bool {
        self.any.load(Relaxed)
    }

    /// The taps that record this request (none, cheaply, while none is
    /// open); each counts it against its rate.
    pub fn sample(&self) -> Vec<String> {
        if !self.any.load(Relaxed) {
            return Vec::new();
        }
        let now = Instant::now();
        let second = now.duration_since(self.epoch).as_secs();
        if self.full.load(Relaxed) == second + 1 {
            return Vec::new();
        }
        let mut active = self.active.lock().unwrap_or_else(PoisonError::into_inner);
        active.retain(|a| a.until > now);
        self.any.store(!active.is_empty(), Relaxed);
        let mut rng = rand::rng();
        let mut ids = Vec::new();
        for a in active.iter_mut() {
            if a.second != second {
                a.second = second;
                a.sent = 0;
            }
            if a.sent < a.per_second && rng.random_range(0..1_000_000) < a.sample_ppm {
                a.sent += 1;
                ids.push(a.id.clone());
            }
        }
        if active.iter().all(|a| a.sent >= a.per_second) {
            self.full.store(second + 1, Relaxed);
        }
        ids
    }

    /// Queues a record for the stream (dropped, and counted, when the
    /// stream is behind).
    pub fn send(&self, r: pb::TapRecord) {
        if self.tx.try_send(r).is_err() {
            self.dropped.fetch_add(1, Relaxed);
        }
    }

    /// The records' receiving end (once: the discovery client holds it).
    pub fn take_receiver(&self) -> Option<mpsc::Receiver<pb::TapRecord>> {
        self.rx
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
    }

    /// Records dropped because the stream was behind.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn start(id: &str, ppm: u32, per_second: u32, ms: u64) -> pb::TapStart {
        pb::TapStart {
            id: id.into(),
            sample_ppm: ppm,
            duration_ms: ms,
            max_per_second: per_second,
        }
    }

    #[test]
    fn no_tap_samples_nothing_and_a_tap_is_held_to_its_rate() {
        let t = Taps::default();
        assert!(t.sample().is_empty());
        t.start(&start("a", 1_000_000, 5, 60_000));
        let hits: usize = (0..50).map(|_| t.sample().len()).sum();
        // Within one second (a slow machine may cross one: twice at most).
        assert!((5..=10).contains(&hits), "{hits}");
        // A rate above the proxy's own limit is held to it.
        t.start(&start("a", 1_000_000, 1_000_000, 60_000));
        assert_eq!(t.active.lock().unwrap()[0].per_second, MAX_PER_SECOND);
        // Stopped by meshd.
        t.start(&start("a", 1_000_000, 5, 0));
        assert!(t.sample().is_empty());
    }

    #[test]
    fn a_tap_ends_by_itself_and_samples_its_share() {
        let t = Taps::default();
        t.start(&start("none", 0, 100, 60_000));
        assert!((0..200).all(|_| t.sample().is_empty()));
        let t = Taps::default();
        t.start(&start("brief", 1_000_000, 100, 1));
        std::thread::sleep(Duration::from_millis(5));
        assert!(t.sample().is_empty());
        assert!(t.active.lock().unwrap().is_empty());
        assert!(!t.any.load(Relaxed));
    }

    #[test]
    fn records_beyond_the_queue_are_dropped_and_counted() {
        let t = Taps::default();
        for _ in 0..QUEUE + 10 {
            t.send(pb::TapRecord::default());
        }
        assert_eq!(t.dropped(), 10);
        assert!(t.take_receiver().is_some());
        assert!(t.take_receiver().is_none());
    }
}
