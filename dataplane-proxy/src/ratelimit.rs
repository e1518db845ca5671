//! Local rate limits (`Route.rate_limit`), kept by the service's own
//! proxies on inbound requests: a token bucket for the route, or one per
//! caller identity. Each proxy counts alone (N endpoints admit up to N
//! times the rate), as Envoy's and Linkerd's local limits do. Buckets live
//! across config changes and start afresh when the limit itself changes.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::Instant;

use raftmesh_api::{RateLimit, RateLimitKey};

/// Most callers with a bucket of their own; beyond, after the idle ones
/// are dropped, new callers share one.
pub const MAX_CALLERS: usize = 10_000;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn full(burst: f64, now: Instant) -> Self {
        Bucket {
            tokens: burst,
            at: now,
        }
    }

    fn refilled(&self, rate: f64, burst: f64, now: Instant) -> f64 {
        (self.tokens + now.duration_since(self.at).as_secs_f64() * rate).min(burst)
    }

    fn take(&mut self, rate: f64, burst: f64, now: Instant) -> bool {
        self.tokens = self.refilled(rate, burst, now);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[derive(Debug, Default)]
struct State {
    limit: Option<RateLimit>,
    route: Option<Bucket>,
    callers: HashMap<String, Bucket>,
    shared: Option<Bucket>,
    purged: Option<Instant>,
}

/// The buckets of one proxy.
#[derive(Debug, Default)]
pub struct Limiter {
    state: Mutex<State>,
}

impl Limiter {
    /// Whether one more request from `caller` (its identity; `None` for a
    /// plaintext caller, which shares one bucket with every other) fits in
    /// `limit` now; takes its token if so.
    pub fn admit(&self, limit: &RateLimit, caller: Option<&str>) -> bool {
        self.admit_at(limit, caller, Instant::now())
    }

    fn admit_at(&self, limit: &RateLimit, caller: Option<&str>, now: Instant) -> bool {
        let rate = f64::from(limit.requests_per_second);
        let burst = f64::from(limit.burst.unwrap_or(limit.requests_per_second).max(1));
        let mut s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if s.limit.as_ref() != Some(limit) {
            *s = State {
                limit: Some(limit.clone()),
                ..State::default()
            };
        }
        match limit.per {
            RateLimitKey::Route => s
                .route
                .get_or_insert_with(|| Bucket::full(burst, now))
                .take(rate, burst, now),
            RateLimitKey::Caller => {
                let key = caller.unwrap_or_default();
                if let Some(b) = s.callers.get_mut(key) {
                    return b.take(rate, burst, now);
                }
                let due = s
                    .purged
                    .is_none_or(|t| now.duration_since(t).as_secs() >= 1);
                if s.callers.len() >= MAX_CALLERS && due {
                    // Callers whose bucket has refilled lose nothing by
                    // being forgotten (at most one sweep a second).
                    s.purged = Some(now);
                    s.callers
                        .retain(|_, b| b.refilled(rate, burst, now) < burst);
                }
                if s.callers.len() >= MAX_CALLERS {
                    return s
                        .shared
                        .get_or_insert_with(|| Bucket::full(burst, now))
                        .take(rate, burst, now);
                }
                let mut b = Bucket::full(burst, now);
                let ok = b.take(rate, burst, now);
                s.callers.insert(key.to_string(), b);
                ok
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn limit(rps: u32, burst: Option<u32>, per: RateLimitKey) -> RateLimit {
        RateLimit {
            requests_per_second: rps,
            burst,
            per,
        }
    }

    #[test]
    fn a_route_bucket_admits_its_burst_then_its_rate() {
        let l = Limiter::default();
        let lim = limit(10, Some(5), RateLimitKey::Route);
        let t0 = Instant::now();
        let admitted = (0..20).filter(|_| l.admit_at(&lim, Some("a"), t0)).count();
        assert_eq!(admitted, 5);
        // 10 per second: one more every 100 ms, whoever asks.
        assert!(!l.admit_at(&lim, Some("b"), t0 + Duration::from_millis(50)));
        assert!(l.admit_at(&lim, Some("b"), t0 + Duration::from_millis(110)));
        assert!(!l.admit_at(&lim, Some("a"), t0 + Duration::from_millis(120)));
        // Never more than the burst, however long idle.
        let later = t0 + Duration::from_secs(60);
        assert_eq!((0..20).filter(|_| l.admit_at(&lim, None, later)).count(), 5);
    }

    #[test]
    fn each_caller_has_its_own_bucket_and_a_changed_limit_starts_afresh() {
        let l = Limiter::default();
        let lim = limit(1, Some(2), RateLimitKey::Caller);
        let t0 = Instant::now();
        let count = |who: Option<&str>| (0..5).filter(|_| l.admit_at(&lim, who, t0)).count();
        assert_eq!(count(Some("spiffe://td/ns/default/sa/a")), 2);
        assert_eq!(count(Some("spiffe://td/ns/default/sa/b")), 2);
        // Plaintext callers share one bucket.
        assert_eq!(count(None), 2);
        assert_eq!(count(None), 0);
        let more = limit(1, Some(3), RateLimitKey::Caller);
        assert_eq!(
            (0..5)
                .filter(|_| l.admit_at(&more, Some("spiffe://td/ns/default/sa/a"), t0))
                .count(),
            3
        );
    }

    #[test]
    fn callers_beyond_the_cap_share_one_bucket_and_cannot_evict_busy_ones() {
        let l = Limiter::default();
        let lim = limit(1, Some(1), RateLimitKey::Caller);
        let t0 = Instant::now();
        for i in 0..MAX_CALLERS {
            assert!(l.admit_at(&lim, Some(&format!("c{i}")), t0));
        }
        // Every bucket is spent: a flood of new names shares one bucket.
        let newcomers = (0..100)
            .filter(|i| l.admit_at(&lim, Some(&format!("new{i}")), t0))
            .count();
        assert_eq!(newcomers, 1);
        assert!(!l.admit_at(&lim, Some("c7"), t0));
    }
}
