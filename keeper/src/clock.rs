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

// Time text is read and written with chrono, whose `parse_from_rfc3339` follows RFC 3339 strictly (a full date
// and time, a `Z` or `±HH:MM` offset with HH at most 23 and MM at most 59); chrono is well kept and widely used,
// and its default features (the system clock, time zones) are left out. A hand-written parser here once accepted
// `+99:99`.

/// The latest time the keeper takes, `9999-12-31T23:59:59Z` in Unix seconds (RFC 3339 has four-digit years).
pub const MAX_UNIX_SECS: i64 = 253_402_300_799;

/// Parses RFC 3339 (`YYYY-MM-DDTHH:MM:SS[.fraction](Z|±HH:MM)`, `T`, `t` or a space between date and time) into
/// Unix milliseconds; fractions below a millisecond are dropped. `None` for anything else, an impossible date or
/// time, or an offset beyond ±23:59.
pub fn parse_rfc3339_ms(text: &str) -> Option<i64> {
    chrono::DateTime::parse_from_rfc3339(text).ok().map(|time| time.timestamp_millis())
}

/// Unix milliseconds as RFC 3339 UTC text with milliseconds (`2026-11-25T10:00:00.250Z`); a time chrono cannot
/// represent is shown as the number.
pub fn show_ms(ms: i64) -> String {
    match chrono::DateTime::from_timestamp_millis(ms) {
        Some(time) => time.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        None => format!("{ms} ms since 1970"),
    }
}

/// Parses a time given on the command line: Unix seconds (`1798192800`) or RFC 3339 (`2026-12-25T10:00:00Z`,
/// whole seconds), between 1970 and the end of 9999. For clap's `value_parser`, in the integer type of the flag.
pub fn parse_time_arg<T: TryFrom<i64>>(text: &str) -> Result<T, String> {
    let secs = if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        text.parse::<i64>().map_err(|_| format!("`{text}` is too large for Unix seconds"))?
    } else {
        let ms = parse_rfc3339_ms(text)
            .ok_or_else(|| format!("`{text}` is neither Unix seconds nor an RFC 3339 time like 2026-12-25T10:00:00Z"))?;
        if ms.rem_euclid(1000) != 0 {
            return Err(format!("`{text}` has a fraction of a second; give whole seconds"));
        }
        ms.div_euclid(1000)
    };
    if !(0..=MAX_UNIX_SECS).contains(&secs) {
        return Err(format!("`{text}` is outside 1970-01-01T00:00:00Z to 9999-12-31T23:59:59Z"));
    }
    T::try_from(secs).map_err(|_| format!("`{text}` does not fit this flag"))
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

    #[test]
    fn rfc3339_is_read_strictly_and_written_in_utc_with_milliseconds() {
        assert_eq!(parse_rfc3339_ms("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_rfc3339_ms("2026-11-25T10:00:00.25Z"), Some(1_795_600_800_250));
        assert_eq!(parse_rfc3339_ms("2026-11-25T10:00:00.250999z"), Some(1_795_600_800_250));
        assert_eq!(parse_rfc3339_ms("2026-11-25t10:00:00Z"), Some(1_795_600_800_000));
        assert_eq!(parse_rfc3339_ms("2026-11-25 10:00:00Z"), Some(1_795_600_800_000));
        assert_eq!(parse_rfc3339_ms("2026-11-25T12:00:00+02:00"), Some(1_795_600_800_000));
        assert_eq!(parse_rfc3339_ms("2026-11-25T10:00:00+23:59"), Some(1_795_600_800_000 - (23 * 3600 + 59 * 60) * 1000));
        assert_eq!(show_ms(1_795_600_800_250), "2026-11-25T10:00:00.250Z");
        assert_eq!(show_ms(-1), "1969-12-31T23:59:59.999Z");
        for bad in [
            "2026-11-25T10:00:00+99:99",
            "2026-11-25T10:00:00+24:00",
            "2026-11-25T10:00:00+05:60",
            "2026-11-25T10:00:00+05",
            "2026-11-25T10:00:00+0500",
            "2026-11-25T10:00:00",
            "2026-02-29T00:00:00Z",
            "2026-11-25T24:00:00Z",
            "2026-11-25T10:00Z",
            "2026-11-25 10:00",
            "20261125T100000Z",
            "2026-11-25T10:00:00.Z",
            " 2026-11-25T10:00:00Z",
            "2026-11-25T10:00:00Z[UTC]",
            "yesterday",
        ] {
            assert_eq!(parse_rfc3339_ms(bad), None, "{bad}");
        }
    }

    #[test]
    fn command_line_times_are_unix_seconds_or_rfc3339() {
        assert_eq!(parse_time_arg::<i64>("1798192800"), Ok(1_798_192_800));
        assert_eq!(parse_time_arg::<i64>("2026-12-25T10:00:00Z"), Ok(1_798_192_800));
        assert_eq!(parse_time_arg::<u64>("2026-12-25T12:00:00+02:00"), Ok(1_798_192_800));
        assert_eq!(parse_time_arg::<i64>("0"), Ok(0));
        for bad in ["2026-12-25T10:00:00.5Z", "2026-12-25T10:00:00+99:99", "-5", "+5", "253402300800", "99999999999999999999", "", "soon"] {
            assert!(parse_time_arg::<i64>(bad).is_err(), "{bad}");
        }
        assert!(parse_time_arg::<i64>("2026-12-25T10:00:00+99:99").unwrap_err().contains("RFC 3339"));
    }
}
