//! Client-side rate limiting that keeps the operator under Coder's per-user, per-endpoint rate
//! limit (default 512 requests/minute), and honours `Retry-After` after a 429.
//!
//! Coder keys its limiter by user and URL path (go-chi/httprate `KeyByEndpoint`), so this one is
//! keyed by the request path too: `governor`'s keyed GCRA limiter, one request per `60/n` seconds
//! with bursts of `n/10`. At most once a second it forgets paths idle long enough to be as good
//! as new (`retain_recent`), so paths with ids (one per workspace or chat) do not pile up.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};

/// How often paths that are as good as new are forgotten.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// Per-path limits, all with the same quota.
#[derive(Debug)]
pub struct RateLimiter {
    /// `None` when limiting is disabled.
    limiter: Option<DefaultKeyedRateLimiter<String>>,
    /// Paths Coder answered 429 for, blocked until the time its `Retry-After` gave.
    blocked: Mutex<HashMap<String, Instant>>,
    swept: Mutex<Instant>,
}

impl RateLimiter {
    /// A limiter allowing `per_minute` requests per endpoint, in bursts of a tenth of that
    /// (0 disables it).
    pub fn new(per_minute: u32) -> RateLimiter {
        let limiter = NonZeroU32::new(per_minute).map(|rate| {
            let burst = NonZeroU32::new(per_minute / 10).unwrap_or(NonZeroU32::MIN);
            governor::RateLimiter::keyed(Quota::per_minute(rate).allow_burst(burst))
        });
        RateLimiter {
            limiter,
            blocked: Mutex::new(HashMap::new()),
            swept: Mutex::new(Instant::now()),
        }
    }

    /// Waits until a request to `endpoint` may be sent.
    pub async fn acquire(&self, endpoint: &str) {
        if self.limiter.is_none() {
            return;
        }
        self.sweep();
        while let Some(wait) = self.try_take(endpoint) {
            tokio::time::sleep(wait).await;
        }
    }

    /// Takes a request slot for `endpoint` if one is free; otherwise returns how long to wait.
    fn try_take(&self, endpoint: &str) -> Option<Duration> {
        let limiter = self.limiter.as_ref()?;
        if let Some(wait) = self.blocked_for(endpoint) {
            return Some(wait);
        }
        match limiter.check_key(&endpoint.to_owned()) {
            Ok(()) => None,
            Err(not_until) => Some(not_until.wait_time_from(DefaultClock::default().now())),
        }
    }

    /// How long `endpoint` stays blocked after a 429, if it is.
    fn blocked_for(&self, endpoint: &str) -> Option<Duration> {
        let mut blocked = self.blocked.lock().unwrap_or_else(|p| p.into_inner());
        let until = *blocked.get(endpoint)?;
        let now = Instant::now();
        if until > now {
            return Some(until - now);
        }
        blocked.remove(endpoint);
        None
    }

    /// Forgets paths that are as good as new, at most once per [`SWEEP_EVERY`].
    fn sweep(&self) {
        let Some(limiter) = &self.limiter else { return };
        {
            let mut swept = self.swept.lock().unwrap_or_else(|p| p.into_inner());
            if swept.elapsed() < SWEEP_EVERY {
                return;
            }
            *swept = Instant::now();
        }
        limiter.retain_recent();
        limiter.shrink_to_fit();
        let now = Instant::now();
        self.blocked
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|_, until| *until > now);
    }

    /// Blocks `endpoint` for `delay` after Coder answered 429 (`Retry-After`).
    pub fn back_off(&self, endpoint: &str, delay: Duration) {
        let until = Instant::now() + delay;
        let mut blocked = self.blocked.lock().unwrap_or_else(|p| p.into_inner());
        let entry = blocked.entry(endpoint.to_owned()).or_insert(until);
        *entry = (*entry).max(until);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_waits_at_the_configured_rate() {
        let l = RateLimiter::new(600); // 10/s, burst 60
        for _ in 0..60 {
            assert_eq!(l.try_take("a"), None);
        }
        let wait = l.try_take("a").expect("burst used up");
        assert!(
            wait <= Duration::from_millis(100) && wait > Duration::ZERO,
            "{wait:?}"
        );
        // Other endpoints have their own budget.
        assert_eq!(l.try_take("b"), None);
    }

    #[test]
    fn paths_as_good_as_new_are_forgotten() {
        let l = RateLimiter::new(6_000_000); // one request per 10 µs
        for i in 0..10_000 {
            assert_eq!(l.try_take(&format!("/workspaces/{i}")), None);
        }
        let limiter = l.limiter.as_ref().expect("enabled");
        assert_eq!(limiter.len(), 10_000);
        std::thread::sleep(Duration::from_millis(20));
        *l.swept.lock().expect("lock") = Instant::now() - SWEEP_EVERY;
        l.sweep();
        assert_eq!(limiter.len(), 0);
    }

    #[test]
    fn retry_after_blocks_the_endpoint() {
        let l = RateLimiter::new(600);
        l.back_off("a", Duration::from_secs(60));
        let wait = l.try_take("a").expect("blocked");
        assert!(wait > Duration::from_secs(59));
        assert_eq!(l.try_take("b"), None, "other endpoints are not blocked");
    }

    #[test]
    fn zero_disables_limiting() {
        let l = RateLimiter::new(0);
        for _ in 0..10_000 {
            assert_eq!(l.try_take("a"), None);
        }
    }
}
