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

/// Parses RFC 3339 (`YYYY-MM-DDTHH:MM:SS[.fff][Z|±HH:MM]`) into Unix milliseconds.
pub fn parse_rfc3339_ms(text: &str) -> Option<i64> {
    let bytes = text.as_bytes();
    if bytes.len() < 20 || bytes[4] != b'-' || bytes[7] != b'-' || !matches!(bytes[10], b'T' | b't' | b' ') || bytes[13] != b':' || bytes[16] != b':' {
        return None;
    }
    let num = |range: std::ops::Range<usize>| -> Option<i64> {
        let part = text.get(range)?;
        if part.bytes().all(|b| b.is_ascii_digit()) { part.parse().ok() } else { None }
    };
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&month) || day < 1 || day > days_in_month(year, month) || hour > 23 || minute > 59 || second > 59 {
        return None;
    }
    let mut rest = &text[19..];
    let mut millis = 0i64;
    if let Some(fraction) = rest.strip_prefix('.') {
        let digits = fraction.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        let padded: String = fraction[..digits].chars().chain(std::iter::repeat('0')).take(3).collect();
        millis = padded.parse().ok()?;
        rest = &fraction[digits..];
    }
    let offset_secs = match rest {
        "Z" | "z" => 0,
        _ if rest.len() == 6 && (rest.starts_with('+') || rest.starts_with('-')) && &rest[3..4] == ":" => {
            let hours: i64 = rest[1..3].parse().ok()?;
            let minutes: i64 = rest[4..6].parse().ok()?;
            let sign = if rest.starts_with('-') { -1 } else { 1 };
            sign * (hours * 3600 + minutes * 60)
        }
        _ => return None,
    };
    let days = days_from_civil(year, month, day);
    Some((days * 86_400 + hour * 3600 + minute * 60 + second - offset_secs) * 1000 + millis)
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Unix milliseconds as RFC 3339 UTC text.
pub fn show_ms(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Inverse of days_from_civil.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z", rem / 3600, rem % 3600 / 60, rem % 60, ms.rem_euclid(1000))
}
