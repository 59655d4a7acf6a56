//! Client-side token buckets that keep the operator under Coder's per-user, per-endpoint rate
//! limit (default 512 requests/minute), and honour `Retry-After` after a 429.
//!
//! Coder keys its limiter by user and URL path (go-chi/httprate `KeyByEndpoint`), so the
//! buckets here are keyed by the request path too.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How often buckets that refilled completely are dropped.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// One token bucket per endpoint, all with the same rate.
#[derive(Debug)]
pub struct RateLimiter {
    per_minute: f64,
    burst: f64,
    buckets: Mutex<Buckets>,
}

/// The buckets in use. A bucket idle long enough to be full again is dropped: a missing bucket
/// is created full, so forgetting it changes nothing (and paths with ids, one per workspace or
/// chat, do not pile up).
#[derive(Debug)]
struct Buckets {
    map: HashMap<String, Bucket>,
    swept: Instant,
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    last: Instant,
    blocked_until: Option<Instant>,
}

impl RateLimiter {
    /// A limiter allowing `per_minute` requests per endpoint (0 or less disables it).
    pub fn new(per_minute: u32) -> RateLimiter {
        let per_minute = f64::from(per_minute);
        RateLimiter {
            per_minute,
            burst: (per_minute / 10.0).max(1.0),
            buckets: Mutex::new(Buckets {
                map: HashMap::new(),
                swept: Instant::now(),
            }),
        }
    }

    /// Waits until a request to `path` may be sent.
    pub async fn acquire(&self, endpoint: &str) {
        if self.per_minute <= 0.0 {
            return;
        }
        loop {
            let wait = self.try_take(endpoint, Instant::now());
            match wait {
                None => return,
                Some(d) => tokio::time::sleep(d).await,
            }
        }
    }

    /// Takes a token if one is available; otherwise returns how long to wait.
    fn try_take(&self, endpoint: &str, now: Instant) -> Option<Duration> {
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if now.duration_since(buckets.swept) >= SWEEP_EVERY {
            let refill = Duration::from_secs_f64(self.burst * 60.0 / self.per_minute);
            buckets.map.retain(|_, b| {
                now.duration_since(b.last) < refill || b.blocked_until.is_some_and(|u| u > now)
            });
            buckets.swept = now;
        }
        let b = buckets.map.entry(endpoint.to_owned()).or_insert(Bucket {
            tokens: self.burst,
            last: now,
            blocked_until: None,
        });
        if let Some(until) = b.blocked_until {
            if until > now {
                return Some(until - now);
            }
            b.blocked_until = None;
        }
        let rate = self.per_minute / 60.0;
        b.tokens = (b.tokens + now.duration_since(b.last).as_secs_f64() * rate).min(self.burst);
        b.last = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            None
        } else {
            Some(Duration::from_secs_f64((1.0 - b.tokens) / rate))
        }
    }

    /// Blocks `path` for `delay` after Coder answered 429.
    pub fn back_off(&self, endpoint: &str, delay: Duration) {
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let b = buckets.map.entry(endpoint.to_owned()).or_insert(Bucket {
            tokens: 0.0,
            last: now,
            blocked_until: None,
        });
        b.tokens = 0.0;
        b.blocked_until = Some(now + delay);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_waits_at_the_configured_rate() {
        let l = RateLimiter::new(600); // 10/s, burst 60
        let now = Instant::now();
        for _ in 0..60 {
            assert_eq!(l.try_take("a", now), None);
        }
        let wait = l.try_take("a", now).expect("bucket empty");
        assert!(wait <= Duration::from_millis(100) && wait > Duration::ZERO);
        // Other endpoints have their own bucket.
        assert_eq!(l.try_take("b", now), None);
    }

    #[test]
    fn buckets_that_refilled_are_forgotten() {
        let l = RateLimiter::new(600); // burst 60 refills in 6 s
        let t0 = Instant::now();
        for i in 0..10_000 {
            assert_eq!(l.try_take(&format!("/workspaces/{i}"), t0), None);
        }
        assert_eq!(l.try_take("hot", t0 + Duration::from_secs(5)), None);
        l.back_off("blocked", Duration::from_secs(60));
        // One sweep later only buckets that are not full yet remain.
        let later = t0 + Duration::from_secs(7);
        assert_eq!(l.try_take("/workspaces/0", later), None);
        let left: Vec<String> = {
            let b = l.buckets.lock().expect("lock");
            let mut k: Vec<String> = b.map.keys().cloned().collect();
            k.sort();
            k
        };
        assert_eq!(left, ["/workspaces/0", "blocked", "hot"]);
    }

    #[test]
    fn retry_after_blocks_the_endpoint() {
        let l = RateLimiter::new(600);
        l.back_off("a", Duration::from_secs(60));
        let wait = l.try_take("a", Instant::now()).expect("blocked");
        assert!(wait > Duration::from_secs(59));
    }
}
