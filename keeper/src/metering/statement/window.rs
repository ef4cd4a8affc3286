//! The contract's rule for how long a period's usage can be charged, in one place: a subscriber statement says an
//! overage charge the chain collected less of is uncollectable only when this rule says so, [`super::verify`]
//! checks it with the rule, and `reconcile` lists such charges as uncollectable by it.
//!
//! `Subscriptions._chargeablePeriod`: usage of period `k` is charged only while `k` is the subscription's current
//! (last paid) period or the one before, and only until the period's end plus `chargeWindow()`, not counting time
//! charging was paused since that end: `_windowOver(periodEnd, CHARGE_WINDOW + 1)` is over once
//! `block.timestamp >= end + window + 1 + pausedSince(end)`, and a window once over never opens again. The rule
//! reads the chain's clock ([`ChargeClock`]) and, per period, its end, the subscription's current period and the
//! seconds paused since the end ([`ChargePeriod`]); each caller takes them from its source (`reconcile` from the
//! contracts' views at the block it reconciles, statements from the index and a clock read at the indexer's cursor).

use alloy::{
    eips::BlockId,
    primitives::Address,
    providers::{DynProvider, Provider},
};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use subsettle_abi::{Deployment, Subscriptions};

use crate::KeeperError;

/// The chain's clock as the rule reads it: one block's timestamp and the contract's `chargeWindow()`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChargeClock {
    /// The block.
    pub block: u64,
    /// Its timestamp, Unix seconds.
    pub time: u64,
    /// `Subscriptions.chargeWindow()`, seconds.
    pub window: u64,
}

impl ChargeClock {
    /// `block`'s timestamp and `chargeWindow()` at that block.
    pub async fn read(provider: &DynProvider, subscriptions: Address, block: u64) -> Result<Self, KeeperError> {
        let header = provider
            .get_block(BlockId::number(block))
            .await
            .map_err(|e| KeeperError::Chain { action: "eth_getBlockByNumber", message: e.to_string() })?
            .ok_or_else(|| KeeperError::ChainData(format!("the node has no block {block}")))?
            .header;
        let window = Subscriptions::new(subscriptions, provider)
            .chargeWindow()
            .block(BlockId::number(block))
            .call()
            .await
            .map_err(|e| KeeperError::Chain { action: "chargeWindow", message: e.to_string() })?;
        Ok(Self { block, time: header.timestamp, window: u64::try_from(window).unwrap_or(u64::MAX) })
    }

    /// The clock at the block the indexer has reached for `deployment` (its cursor), so that the index a statement
    /// is drawn from and the clock describe the same moment.
    pub async fn at_cursor(pool: &PgPool, provider: &DynProvider, deployment: &Deployment) -> Result<Self, KeeperError> {
        let cursor: Option<Option<i64>> =
            sqlx::query_scalar("SELECT cursor_number FROM chain.deployments WHERE chain_id = $1 AND subscriptions = $2")
                .bind(deployment.chain_id as i64)
                .bind(deployment.subscriptions.as_slice())
                .fetch_optional(pool)
                .await?;
        let Some(block) = cursor.flatten() else {
            return Err(KeeperError::ChainData(format!("the indexer has not indexed deployment {} yet", deployment.subscriptions)));
        };
        Self::read(provider, deployment.subscriptions, block as u64).await
    }
}

/// One period as the rule needs it, besides the clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChargePeriod {
    /// The period's index.
    pub period: u64,
    /// Its end, Unix seconds.
    pub end: u64,
    /// The subscription's current (last paid) period at the clock's block, when known.
    pub current: Option<u64>,
    /// Seconds charging was paused between the period's end and the clock's block (`pausedSince(end)`).
    pub paused: u64,
}

/// Whether the contract still charges a period's usage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Chargeable {
    /// It may still be charged, up to and including second `until` (Unix) by the pauses so far.
    Open {
        /// The last second a charge is accepted, unless charging is paused before then.
        until: u64,
    },
    /// The window has closed: the contract answers `ChargeWindowClosed` to any charge of the period, for good.
    Closed {
        /// When it closed (Unix seconds, the first second a charge is refused), where the clock decided it; `None`
        /// when the subscription has moved two periods on.
        at: Option<u64>,
        /// The contract's reason in words, starting with "charge window closed".
        reason: String,
    },
    /// Not known: no clock was given and the subscription has not moved two periods on.
    Unjudged,
}

/// Unix seconds as RFC 3339 UTC (`2026-12-07T10:00:00Z`), with chrono; a time it cannot show is the number.
pub fn show_secs(secs: u64) -> String {
    i64::try_from(secs)
        .ok()
        .and_then(|s| chrono::DateTime::from_timestamp(s, 0))
        .map_or_else(|| format!("{secs} s since 1970"), |t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
}

/// The rule (`Subscriptions._chargeablePeriod`) for `period` at `clock`; without a clock only the period test can
/// be applied.
pub fn chargeable(period: &ChargePeriod, clock: Option<&ChargeClock>) -> Chargeable {
    if let Some(current) = period.current.filter(|c| *c >= period.period.saturating_add(2)) {
        return Chargeable::Closed {
            at: None,
            reason: format!(
                "charge window closed: the subscription is in period {current} now, and Subscriptions charges only the \
                 current period and the one before"
            ),
        };
    }
    let Some(clock) = clock else { return Chargeable::Unjudged };
    let until = period.end.saturating_add(clock.window).saturating_add(period.paused);
    if clock.time <= until {
        return Chargeable::Open { until };
    }
    let at = until + 1;
    Chargeable::Closed {
        at: Some(at),
        reason: format!(
            "charge window closed {} (period end {} + chargeWindow() {} s + {} s paused since)",
            show_secs(at),
            show_secs(period.end),
            clock.window,
            period.paused
        ),
    }
}

/// The rule's inputs for period `period_index` (ending at `end`) of a subscription, from the index: the
/// subscription's current period (`chain.subscriptions`) and the seconds paused between `end` and the clock's time
/// (`chain.paused_seconds`, as `pausedSince(end)` counts them; none without a clock).
pub async fn indexed_period(
    pool: &PgPool,
    chain_id: u64,
    subscription_id: u64,
    period_index: u64,
    end: u64,
    clock: Option<&ChargeClock>,
) -> Result<ChargePeriod, KeeperError> {
    let current: Option<String> = sqlx::query_scalar(
        "SELECT period_index::TEXT FROM chain.subscriptions WHERE chain_id = $1 AND subscription_id = $2::NUMERIC",
    )
    .bind(chain_id as i64)
    .bind(subscription_id.to_string())
    .fetch_optional(pool)
    .await?;
    let current = current.map(|c| crate::store::numeric_u64(&c, "period_index")).transpose()?;
    let paused = match clock {
        Some(clock) => {
            let to = i64::try_from(clock.time).unwrap_or(i64::MAX);
            let from = i64::try_from(end).unwrap_or(i64::MAX);
            let paused: i64 = sqlx::query_scalar("SELECT chain.paused_seconds($1, $2, $3)")
                .bind(chain_id as i64)
                .bind(from)
                .bind(to)
                .fetch_one(pool)
                .await?;
            u64::try_from(paused).unwrap_or(0)
        }
        None => 0,
    };
    Ok(ChargePeriod { period: period_index, end, current, paused })
}

/// The end of period `period_index` of a subscription on chain, as indexed: the `paidThrough` of the `Subscribed`
/// event for period 0, of the `Renewed` event into the period otherwise; `None` when the index has neither.
pub async fn indexed_period_end(pool: &PgPool, chain_id: u64, subscription_id: u64, period_index: u64) -> Result<Option<u64>, KeeperError> {
    let end: Option<String> = sqlx::query_scalar(
        "SELECT paid_through::TEXT FROM (
             SELECT paid_through, 0::NUMERIC AS period_index, block_number, log_index FROM chain.subscribed
             WHERE chain_id = $1 AND subscription_id = $2::NUMERIC
             UNION ALL
             SELECT paid_through, period_index, block_number, log_index FROM chain.renewals
             WHERE chain_id = $1 AND subscription_id = $2::NUMERIC
         ) e WHERE e.period_index = $3::NUMERIC ORDER BY block_number DESC, log_index DESC LIMIT 1",
    )
    .bind(chain_id as i64)
    .bind(subscription_id.to_string())
    .bind(period_index.to_string())
    .fetch_optional(pool)
    .await?;
    end.map(|e| crate::store::numeric_u64(&e, "paid_through")).transpose()
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: u64 = 86_400;

    fn period(current: Option<u64>, paused: u64) -> ChargePeriod {
        ChargePeriod { period: 3, end: 1_800_000_000, current, paused }
    }

    fn at(time: u64) -> ChargeClock {
        ChargeClock { block: 7, time, window: 2 * DAY }
    }

    #[test]
    fn the_window_is_open_through_its_last_second_and_closed_after_it_as_the_contract_counts() {
        let end = 1_800_000_000;
        // `_windowOver(end, window + 1)`: over once `time >= end + window + 1`.
        assert_eq!(chargeable(&period(Some(4), 0), Some(&at(end + 2 * DAY))), Chargeable::Open { until: end + 2 * DAY });
        let Chargeable::Closed { at: closed, reason } = chargeable(&period(Some(4), 0), Some(&at(end + 2 * DAY + 1))) else {
            panic!("closed one second after its last")
        };
        assert_eq!(closed, Some(end + 2 * DAY + 1));
        assert_eq!(reason, "charge window closed 2027-01-17T08:00:01Z (period end 2027-01-15T08:00:00Z + chargeWindow() 172800 s + 0 s paused since)");
    }

    #[test]
    fn time_paused_since_the_end_does_not_use_the_window_up() {
        let end = 1_800_000_000;
        assert_eq!(chargeable(&period(Some(3), 3_600), Some(&at(end + 2 * DAY + 1))), Chargeable::Open { until: end + 2 * DAY + 3_600 });
        assert!(matches!(chargeable(&period(Some(3), 3_600), Some(&at(end + 2 * DAY + 3_601))), Chargeable::Closed { at: Some(_), .. }));
    }

    #[test]
    fn two_periods_on_the_window_is_closed_whatever_the_clock_and_without_one() {
        for clock in [None, Some(at(1_800_000_000))] {
            let judged = chargeable(&period(Some(5), 0), clock.as_ref());
            assert!(matches!(&judged, Chargeable::Closed { at: None, reason } if reason.contains("in period 5 now")), "{judged:?}");
        }
        assert_eq!(chargeable(&period(Some(4), 0), None), Chargeable::Unjudged);
        assert_eq!(chargeable(&period(None, 0), None), Chargeable::Unjudged);
    }
}
