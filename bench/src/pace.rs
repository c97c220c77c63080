//! Steady pacing for publishers that share a target rate.
//!
//! Publisher `p` of `P`, together at `total` messages/s, sends its `n`-th
//! message (from 0) at `start + (n + p/P) / (total/P)`: the publishers
//! interleave evenly. Without the phase every publisher would send at the
//! same instants and each tick would be a burst of `P` messages (at 100
//! msg/s from 4 publishers into rooms of 100, bursts of 400 deliveries
//! every 40 ms instead of 100 every 10 ms), which measures bursts, not a
//! steady rate. tokio's timer fires on whole milliseconds, so due times
//! closer than 1 ms apart still leave together.

use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug)]
pub struct Pace {
    start: Instant,
    /// `p / P`: where in each of its periods this publisher sends.
    phase: f64,
    /// This publisher's own rate (messages/s).
    per_publisher: f64,
}

impl Pace {
    /// `None` when `total_rate` is 0 (as fast as possible).
    pub fn new(start: Instant, p: usize, publishers: usize, total_rate: f64) -> Option<Pace> {
        if total_rate <= 0.0 {
            return None;
        }
        let publishers = publishers.max(1);
        Some(Pace {
            start,
            phase: (p % publishers) as f64 / publishers as f64,
            per_publisher: total_rate / publishers as f64,
        })
    }

    /// When message `n` (counting from 0) is due.
    pub fn due(&self, n: u64) -> Instant {
        self.start + Duration::from_secs_f64((n as f64 + self.phase) / self.per_publisher)
    }

    /// Sleep until message `n` is due; false when that is at or past
    /// `end` (the publisher is done).
    pub async fn wait(&self, n: u64, end: Instant) -> bool {
        tokio::time::sleep_until(self.due(n).into()).await;
        Instant::now() < end
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publishers_interleave_evenly() {
        let start = Instant::now();
        // 4 publishers at 100/s together: one message every 10 ms overall.
        let mut all: Vec<Duration> = (0..4)
            .flat_map(|p| {
                let pace = Pace::new(start, p, 4, 100.0).unwrap();
                (0..5).map(move |n| pace.due(n) - start)
            })
            .collect();
        all.sort();
        for (i, d) in all.iter().enumerate() {
            let want = Duration::from_millis(10 * i as u64);
            assert!(
                d.abs_diff(want) < Duration::from_micros(1),
                "{i}: {d:?} vs {want:?}"
            );
        }
    }

    #[test]
    fn no_rate_means_no_pacing() {
        assert!(Pace::new(Instant::now(), 0, 1, 0.0).is_none());
    }
}
