//! The message rate: a token bucket per connection, and one per buyer's
//! conversation that outlives its connections.
//!
//! Every connection's frames share a bucket (`limits.rate_per_sec`, bursts
//! of `limits.rate_burst`). A new connection starts with a full one, so a
//! buyer who closed and resumed in a loop got a fresh burst each time: one
//! conversation took about 730 messages a second, and its agent a pair of
//! `presence` frames per visit, over 11,000 a second (found by review). A
//! buyer's conversation therefore keeps a bucket of its own, with the same
//! rate: each message takes from it as well, and so does each resume.

use tokio::time::Instant;

use crate::config::Limits;
use crate::protocol::{ErrorCode, Refusal};

/// Token bucket: `rate` messages a second, bursts up to `burst`.
#[derive(Debug, Clone)]
pub(crate) struct Bucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl Bucket {
    /// A full bucket.
    pub(crate) fn new(rate: f64, burst: u32, now: Instant) -> Bucket {
        Bucket {
            rate,
            burst: burst as f64,
            tokens: burst as f64,
            last: now,
        }
    }

    /// A full bucket at the configured rate.
    pub(crate) fn for_limits(limits: &Limits, now: Instant) -> Bucket {
        Bucket::new(limits.rate_per_sec, limits.rate_burst, now)
    }

    /// Takes one token if there is one.
    pub(crate) fn take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// A message over the rate, dropped (the connection stays).
pub(crate) fn rate_limited(limits: &Limits) -> Refusal {
    Refusal::new(
        ErrorCode::RateLimited,
        format!(
            "too many messages: at most {} a second (bursts of {}); this one was dropped",
            limits.rate_per_sec, limits.rate_burst
        ),
    )
}

/// A resume over its conversation's rate: the hello is refused and the
/// connection closed with 1013, so the page waits before it comes back.
pub(crate) fn resumes_limited(limits: &Limits) -> Refusal {
    Refusal::new(
        ErrorCode::RateLimited,
        format!(
            "too many reconnects and messages for this conversation: at most {} a second \
             (bursts of {}); reconnect in a few seconds",
            limits.rate_per_sec, limits.rate_burst
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn bucket_allows_bursts_then_the_rate() {
        let t0 = Instant::now();
        let mut b = Bucket::new(2.0, 3, t0);
        assert!((0..3).all(|_| b.take(t0)), "burst of 3");
        assert!(!b.take(t0), "bucket empty");
        assert!(!b.take(t0 + Duration::from_millis(400)));
        assert!(b.take(t0 + Duration::from_millis(600)), "refilled at 2/s");
        assert!(b.take(t0 + Duration::from_secs(100)));
        assert!(b.take(t0 + Duration::from_secs(100)));
        assert!(b.take(t0 + Duration::from_secs(100)));
        assert!(
            !b.take(t0 + Duration::from_secs(100)),
            "never more than the burst"
        );
    }
}
