//! A per-connection rate limit: the generic cell rate algorithm (GCRA), the
//! token bucket kept as one instant.
//!
//! A connection may do `burst` things at once and then `rate` per second
//! on average. The state is the *theoretical arrival time* (TAT): when the
//! connection would be back to a full bucket. Each use pushes it on by one
//! interval (1 / rate); the connection is over its limit while the TAT is
//! more than `burst` intervals ahead of now, and may go on once it is not.
//! Uses are charged after the fact (a read may hold many frames), so a
//! connection can run past its burst by one read; it then waits that much
//! longer.

use std::time::{Duration, Instant};

/// A rate and a burst; `rate` 0 means unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    /// Time one use costs (1 / rate); zero when unlimited.
    interval: Duration,
    /// How far ahead of now the TAT may be: `burst` intervals.
    tolerance: Duration,
}

impl RateLimit {
    /// `rate` uses per second on average, `burst` at once (at least 1).
    pub fn new(rate: u32, burst: u32) -> RateLimit {
        if rate == 0 {
            return RateLimit::unlimited();
        }
        let interval = Duration::from_secs(1) / rate;
        RateLimit {
            interval,
            tolerance: interval * burst.max(1),
        }
    }

    pub fn unlimited() -> RateLimit {
        RateLimit {
            interval: Duration::ZERO,
            tolerance: Duration::ZERO,
        }
    }

    pub fn is_unlimited(&self) -> bool {
        self.interval.is_zero()
    }
}

/// One connection's state under a [`RateLimit`].
#[derive(Debug, Clone, Copy, Default)]
pub struct Gcra {
    /// When the bucket is full again; `None`: it is full.
    tat: Option<Instant>,
}

impl Gcra {
    /// Record `n` uses at `now`.
    pub fn charge(&mut self, limit: &RateLimit, n: u32, now: Instant) {
        if n == 0 || limit.is_unlimited() {
            return;
        }
        let from = self.tat.map_or(now, |t| t.max(now));
        self.tat = Some(from + limit.interval * n);
    }

    /// How long the connection must wait before it may use more; `None`
    /// when it may go on now.
    pub fn wait(&self, limit: &RateLimit, now: Instant) -> Option<Duration> {
        let allowed_at = self.tat?.checked_sub(limit.tolerance)?;
        (allowed_at > now).then(|| allowed_at - now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn a_burst_goes_at_once_then_the_rate_holds() {
        let limit = RateLimit::new(100, 10); // one per 10 ms, 10 at once
        let t0 = Instant::now();
        let mut g = Gcra::default();
        for _ in 0..10 {
            g.charge(&limit, 1, t0);
            assert_eq!(g.wait(&limit, t0), None);
        }
        // The eleventh puts it one interval over: wait that long.
        g.charge(&limit, 1, t0);
        assert_eq!(g.wait(&limit, t0), Some(10 * MS));
        assert_eq!(g.wait(&limit, t0 + 10 * MS), None);
        // Steady at the rate: never waits.
        let mut t = t0 + 10 * MS;
        for _ in 0..100 {
            t += 10 * MS;
            g.charge(&limit, 1, t);
            assert_eq!(g.wait(&limit, t), None);
        }
    }

    #[test]
    fn a_read_over_the_burst_owes_its_excess() {
        let limit = RateLimit::new(1000, 100);
        let t0 = Instant::now();
        let mut g = Gcra::default();
        g.charge(&limit, 600, t0); // one read held 600 SENDs
        assert_eq!(g.wait(&limit, t0), Some(500 * MS));
        assert_eq!(g.wait(&limit, t0 + 499 * MS), Some(MS));
        assert_eq!(g.wait(&limit, t0 + 500 * MS), None);
    }

    #[test]
    fn idle_time_refills_only_up_to_the_burst() {
        let limit = RateLimit::new(10, 5);
        let t0 = Instant::now();
        let mut g = Gcra::default();
        g.charge(&limit, 1, t0);
        // An hour of silence buys 5, not 36,000.
        let later = t0 + Duration::from_secs(3600);
        g.charge(&limit, 5, later);
        assert_eq!(g.wait(&limit, later), None);
        g.charge(&limit, 1, later);
        assert_eq!(g.wait(&limit, later), Some(100 * MS));
    }

    #[test]
    fn unlimited_never_waits() {
        let limit = RateLimit::new(0, 0);
        let mut g = Gcra::default();
        let t0 = Instant::now();
        g.charge(&limit, u32::MAX, t0);
        assert_eq!(g.wait(&limit, t0), None);
    }
}
