//! The wait between attempts at something that only the world can fix (a node or a database that is down):
//! 0.5 s, doubling to at most 30 s, each wait shortened by up to a quarter at random so that indexers restarted
//! together do not knock in step. Written here rather than taken from a crate: it is one formula, and the loops
//! that use it also log each attempt and stop on the shutdown signal, which no retry crate does for them.

use std::{hash::BuildHasher, time::Duration};

/// The first wait.
pub const INITIAL: Duration = Duration::from_millis(500);
/// The longest wait.
pub const MAX: Duration = Duration::from_secs(30);

/// Consecutive failures and the wait they call for.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    failures: u32,
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new(INITIAL, MAX)
    }
}

impl Backoff {
    /// Waits from `initial`, doubling up to `max`.
    pub fn new(initial: Duration, max: Duration) -> Self {
        Self { initial, max, failures: 0 }
    }

    /// Counts a failure and returns how long to wait before the next attempt.
    pub fn failed(&mut self) -> Duration {
        self.failures = self.failures.saturating_add(1);
        let full = self.full_wait();
        // Up to a quarter off. `RandomState` is seeded at random per instance: enough to spread retries, and no
        // dependency for it.
        let quarter = u64::try_from(full.as_millis() / 4).unwrap_or(u64::MAX);
        let random = std::collections::hash_map::RandomState::new().hash_one(self.failures);
        let off = if quarter == 0 { 0 } else { random % (quarter + 1) };
        full.saturating_sub(Duration::from_millis(off))
    }

    /// Failures since the last success (the attempt just failed, when called after [`Backoff::failed`]).
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// Records a success; returns how many failures came before it.
    pub fn succeeded(&mut self) -> u32 {
        std::mem::take(&mut self.failures)
    }

    /// The wait before jitter: `initial · 2^(failures − 1)`, at most `max`.
    fn full_wait(&self) -> Duration {
        let doublings = self.failures.saturating_sub(1).min(31);
        self.initial.saturating_mul(1 << doublings).min(self.max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_from_half_a_second_to_thirty_seconds_with_at_most_a_quarter_off() {
        let mut backoff = Backoff::default();
        let expected = [500, 1_000, 2_000, 4_000, 8_000, 16_000, 30_000, 30_000];
        for full in expected {
            let wait = backoff.failed().as_millis() as u64;
            assert!(wait <= full && wait >= full - full / 4, "wait {wait} ms for a full wait of {full} ms");
        }
        for _ in 0..100 {
            assert!(backoff.failed() <= MAX, "never above the cap, however many failures");
        }
        assert_eq!(backoff.succeeded(), 108);
        assert_eq!(backoff.failures(), 0);
        assert!(backoff.failed() <= INITIAL, "a success starts over");
    }

    #[test]
    fn waits_differ_between_indexers() {
        let waits: std::collections::BTreeSet<Duration> = (0..20).map(|_| Backoff::default().failed()).collect();
        assert!(waits.len() > 1, "twenty indexers failing together all wait {waits:?}");
    }
}
