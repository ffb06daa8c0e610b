//! Admission of agent links at a bounded rate: a token bucket refilled at `rate` a second, holding
//! at most `rate` (one second of burst). A fleet reconnecting at once (after a failover, a stall,
//! a restart) is admitted at that rate; an agent over it is refused with `close::BUSY` and told
//! when a slot will be free for it, spread so that the refused do not all come back at once.
//! Pure: callers pass `now`.

use std::time::{Duration, Instant};

/// The bucket.
#[derive(Debug)]
pub struct Admission {
    rate: f64,
    tokens: f64,
    at: Instant,
    /// Slots already promised to refused agents, in seconds past `at` (so later ones are told later).
    promised: f64,
}

/// The longest wait an agent is told.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(30);

impl Admission {
    /// A full bucket of `rate` a second at `now`.
    pub fn new(rate: u32, now: Instant) -> Self {
        let rate = f64::from(rate.max(1));
        Self { rate, tokens: rate, at: now, promised: 0.0 }
    }

    fn refill(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.at).as_secs_f64();
        self.at = self.at.max(now);
        self.tokens = (self.tokens + dt * self.rate).min(self.rate);
        self.promised = (self.promised - dt).max(0.0);
    }

    /// Admits one link at `now`, or says how long that agent should wait before trying again.
    pub fn admit(&mut self, now: Instant) -> Result<(), Duration> {
        self.refill(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return Ok(());
        }
        // Each refused agent gets the next free slot after those already promised, so a crowd
        // refused together comes back spread at the admission rate instead of all at once.
        self.promised += 1.0 / self.rate;
        let wait = ((1.0 - self.tokens) / self.rate + self.promised).min(MAX_RETRY_AFTER.as_secs_f64());
        Err(Duration::from_secs_f64(wait))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_is_admitted_up_to_the_rate_and_the_rest_are_spread_out() {
        let t0 = Instant::now();
        let mut a = Admission::new(100, t0);
        assert!((0..100).all(|_| a.admit(t0).is_ok()));
        let waits: Vec<Duration> = (0..300).map(|_| a.admit(t0).unwrap_err()).collect();
        // Told later and later, about one slot (10 ms) apart: 300 refused come back over ~3 s.
        assert!(waits.windows(2).all(|w| w[1] > w[0]), "{waits:?}");
        assert!(waits[0] <= Duration::from_millis(25), "{:?}", waits[0]);
        let last = waits[299].as_secs_f64();
        assert!((2.9..=3.2).contains(&last), "{last}");
    }

    #[test]
    fn the_bucket_refills_at_the_rate() {
        let t0 = Instant::now();
        let mut a = Admission::new(10, t0);
        assert!((0..10).all(|_| a.admit(t0).is_ok()));
        assert!(a.admit(t0).is_err());
        // 0.5 s later: 5 more tokens, less the one promised slot's worth of time already gone.
        let t1 = t0 + Duration::from_millis(500);
        let admitted = (0..10).filter(|_| a.admit(t1).is_ok()).count();
        assert_eq!(admitted, 5);
        // Much later the bucket is full again, never fuller than one second's worth.
        let t2 = t1 + Duration::from_secs(60);
        assert_eq!((0..20).filter(|_| a.admit(t2).is_ok()).count(), 10);
    }

    #[test]
    fn no_agent_is_told_to_wait_longer_than_the_cap() {
        let t0 = Instant::now();
        let mut a = Admission::new(1, t0);
        let _ = a.admit(t0);
        let worst = (0..1000).map(|_| a.admit(t0).unwrap_err()).max().unwrap();
        assert_eq!(worst, MAX_RETRY_AFTER);
    }
}
