//! Per-user (else per-IP) per-path rate limiting, like coderd's
//! `httpmw.RateLimit` (go-chi/httprate keyed by user and `KeyByEndpoint`,
//! which is the request's URL path without the method).
//!
//! Windows are one minute long and start at a key's first request (not at
//! wall-clock minute boundaries), which keeps tests deterministic.

use std::collections::HashMap;

/// Outcome of one rate-limit check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Verdict {
    pub allowed: bool,
    pub limit: i64,
    pub remaining: i64,
    /// Unix seconds at which the current window ends.
    pub reset: i64,
}

/// Fixed-window counters keyed by (user-or-IP, URL path).
#[derive(Debug)]
pub(crate) struct RateLimiter {
    limit: i64,
    windows: HashMap<(String, String), (i64, i64)>,
}

/// Window length in seconds.
pub(crate) const WINDOW_SECS: i64 = 60;

impl RateLimiter {
    pub fn new(limit: i64) -> RateLimiter {
        RateLimiter {
            limit,
            windows: HashMap::new(),
        }
    }

    /// Requests per window; `<= 0` means disabled.
    pub fn limit(&self) -> i64 {
        self.limit
    }

    /// Counts one request at unix time `now` (seconds); `None` if disabled.
    pub fn check(&mut self, who: &str, path: &str, now: i64) -> Option<Verdict> {
        if self.limit <= 0 {
            return None;
        }
        let entry = self
            .windows
            .entry((who.to_owned(), path.to_owned()))
            .or_insert((now, 0));
        if now >= entry.0 + WINDOW_SECS {
            *entry = (now, 0);
        }
        let reset = entry.0 + WINDOW_SECS;
        if entry.1 >= self.limit {
            return Some(Verdict {
                allowed: false,
                limit: self.limit,
                remaining: 0,
                reset,
            });
        }
        entry.1 += 1;
        Some(Verdict {
            allowed: true,
            limit: self.limit,
            remaining: self.limit - entry.1,
            reset,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_per_key_and_path() {
        let mut rl = RateLimiter::new(2);
        assert!(
            rl.check("a", "/x", 100)
                .is_some_and(|v| v.allowed && v.remaining == 1)
        );
        assert!(
            rl.check("a", "/x", 100)
                .is_some_and(|v| v.allowed && v.remaining == 0)
        );
        assert!(
            rl.check("a", "/x", 101)
                .is_some_and(|v| !v.allowed && v.reset == 160)
        );
        assert!(rl.check("a", "/y", 101).is_some_and(|v| v.allowed));
        assert!(rl.check("b", "/x", 101).is_some_and(|v| v.allowed));
        assert!(
            rl.check("a", "/x", 160)
                .is_some_and(|v| v.allowed && v.remaining == 1)
        );
    }

    #[test]
    fn disabled() {
        let mut rl = RateLimiter::new(0);
        assert_eq!(rl.check("a", "/x", 1), None);
    }
}
