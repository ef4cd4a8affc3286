//! Time as the keeper sees it. Periods and entitlement are judged in chain time (Unix seconds); a daemon uses the
//! system clock, tests and the demo (which moves a local chain's clock) set it.

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
}

impl Clock {
    /// A manual clock at `now_ms`.
    pub fn manual(now_ms: i64) -> Self {
        Self::Manual(Arc::new(AtomicI64::new(now_ms)))
    }

    /// The time, Unix milliseconds.
    pub fn now_ms(&self) -> i64 {
        match self {
            Self::System => std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX)),
            Self::Manual(now) => now.load(Ordering::SeqCst),
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
