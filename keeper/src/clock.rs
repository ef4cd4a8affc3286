//! Time as the keeper sees it. Periods and entitlement are judged in chain time (Unix seconds). A daemon on a live
//! chain uses the system clock (block times follow it); against a chain whose clock is moved (a local anvil in the
//! demo) it follows the chain; tests set it by hand.

use std::sync::{
    Arc,
    atomic::{AtomicI64, Ordering},
};

/// A source of the current time in Unix milliseconds.
#[derive(Debug, Clone)]
pub enum Clock {
    /// The system clock.
    System,
    /// A clock that only moves when told to.
    Manual(Arc<AtomicI64>),
    /// The system clock plus how far (milliseconds) a chain's latest block has been seen ahead of it.
    Chain(Arc<AtomicI64>),
}

impl Clock {
    /// A manual clock at `now_ms`.
    pub fn manual(now_ms: i64) -> Self {
        Self::Manual(Arc::new(AtomicI64::new(now_ms)))
    }

    /// A clock that follows a chain, starting level with the system clock.
    pub fn chain() -> Self {
        Self::Chain(Arc::new(AtomicI64::new(0)))
    }

    /// The time, Unix milliseconds.
    pub fn now_ms(&self) -> i64 {
        match self {
            Self::System => system_ms(),
            Self::Manual(now) => now.load(Ordering::SeqCst),
            Self::Chain(ahead) => system_ms().saturating_add(ahead.load(Ordering::SeqCst)),
        }
    }

    /// Tells a chain clock the latest block's timestamp (seconds). A block is mined at or after its timestamp
    /// was current, so the chain is at least that far ahead; the lead only grows (chain time never goes back),
    /// and a chain behind the system clock leaves it unchanged. No effect on the other clocks.
    pub fn observe_block(&self, timestamp_secs: u64) {
        if let Self::Chain(ahead) = self {
            let block_ms = i64::try_from(timestamp_secs).unwrap_or(i64::MAX / 1000).saturating_mul(1000);
            ahead.fetch_max(block_ms.saturating_sub(system_ms()), Ordering::SeqCst);
        }
    }

    /// The time, Unix seconds.
    pub fn now_secs(&self) -> i64 {
        self.now_ms().div_euclid(1000)
    }

    /// Sets a manual clock (no effect on the system clock).
    pub fn set_ms(&self, now_ms: i64) {
        if let Self::Manual(now) = self {
            now.store(now_ms, Ordering::SeqCst);
        }
    }
}

fn system_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chain_clock_follows_a_chain_that_is_moved_ahead_and_never_goes_back() {
        let clock = Clock::chain();
        let start = clock.now_secs();
        clock.observe_block(u64::try_from(start).unwrap() - 3_600);
        assert!(clock.now_secs() - start < 5, "a chain behind the system clock does not pull it back");
        clock.observe_block(u64::try_from(start).unwrap() + 30 * 86_400);
        assert!(clock.now_secs() >= start + 30 * 86_400);
        clock.observe_block(u64::try_from(start).unwrap() + 86_400);
        assert!(clock.now_secs() >= start + 30 * 86_400, "an older block does not move it back");
        Clock::System.observe_block(0);
    }
}
