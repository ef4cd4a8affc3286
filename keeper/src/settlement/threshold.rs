//! Mid-period threshold charges (`run --charge-threshold <base units>`): once per retry slot, the usage of each
//! running period is priced as its close would price it so far, and when the capped overage has crossed a
//! multiple of the threshold the keeper charges that much, with the root of the lines priced so far, instead of
//! waiting for the period to end (less credit risk on heavy users).
//!
//! Each threshold charge collects one base unit less than the multiple it crossed. The period's close then always
//! has at least one unit left to charge, so its final charge, with the final usage root, is the last charge the
//! chain records for the period, and statements verify against it. A charge is cumulative, so the close charges
//! only the difference.

use std::collections::HashMap;

use alloy::{
    primitives::{Address, B256, U256},
    sol_types::SolCall,
};
use serde_json::json;
use sqlx::PgPool;
use subsettle_abi::{ISubscriptions::Charge, Subscriptions};

use crate::{
    KeeperError, metering::catalog,
    metering::close::{self, CloseOptions},
    merkle::MerkleTree,
    settlement::outbox::{Action, batch_key, retry_slot},
    metering::pricing::{Line, MeteredEvent, PricedPeriod},
    metering::subscriptions::{self, Period},
};

/// The outbox keys of threshold charges start with this (then `:<slot>:`).
pub const KEY_PREFIX: &str = "charge-threshold";

/// Running periods priced at a time.
const PERIODS_PER_BATCH: i64 = 2_000;

/// How threshold charges are planned.
#[derive(Debug, Clone, Copy)]
pub struct ThresholdPolicy {
    /// Charge when the capped overage crosses a multiple of this (base units).
    pub threshold: u128,
    /// Evaluate once per slot of this many seconds.
    pub retry_interval: i64,
    /// Items per `chargeUsage` transaction.
    pub batch: usize,
}

/// The cumulative amount to charge mid-period for a capped overage of `capped`: one base unit less than the last
/// multiple of `threshold` it reached, or nothing below the first.
pub fn threshold_target(capped: u128, threshold: u128) -> Option<u128> {
    let reached = capped.checked_div(threshold)?.checked_mul(threshold)?;
    reached.checked_sub(1).filter(|target| *target > 0)
}

/// Plans the threshold charges of this slot (none if it was evaluated already). With `dry_run`, nothing is
/// written: the evaluation is not recorded and the actions are only returned.
pub async fn plan_threshold_charges(
    pool: &PgPool,
    options: &CloseOptions,
    subscriptions_contract: Address,
    policy: ThresholdPolicy,
    now: i64,
    dry_run: bool,
) -> Result<Vec<Action>, KeeperError> {
    let slot = retry_slot(now, policy.retry_interval);
    if !dry_run && !claim_slot(pool, options.chain_id, slot, now).await? {
        return Ok(Vec::new());
    }
    let snapshot = catalog::load(pool).await?;
    let mut due = Vec::new();
    let mut after = 0;
    loop {
        let periods = subscriptions::open_periods_with_usage(pool, options.chain_id, now, after, PERIODS_PER_BATCH).await?;
        let Some(last) = periods.last() else { break };
        after = last.subscription_id;
        due.extend(due_in(pool, &snapshot, options, &periods, policy, now, dry_run).await?);
    }
    let prefix = format!("{KEY_PREFIX}:{slot}:");
    Ok(due.chunks(policy.batch.max(1)).map(|batch| action(&prefix, subscriptions_contract, batch)).collect())
}

/// The threshold charges due among `periods`: (subscription, period, cumulative, usage root).
async fn due_in(
    pool: &PgPool,
    snapshot: &catalog::Snapshot,
    options: &CloseOptions,
    periods: &[Period],
    policy: ThresholdPolicy,
    now: i64,
    dry_run: bool,
) -> Result<Vec<(u64, u64, u128, B256)>, KeeperError> {
    let mut events = unbilled_events(pool, periods, now).await?;
    let ids: Vec<i64> = periods.iter().map(|p| p.subscription_id as i64).collect();
    let earlier = close::earlier_periods(&mut *pool.acquire().await?, options.chain_id, &ids).await?;
    let charged = charged_or_in_flight(pool, options.chain_id, &ids).await?;
    let mut due = Vec::new();
    for period in periods {
        let mut period_events = events.remove(&period.subscription_id).unwrap_or_default();
        let priced = close::price(snapshot, options, period, &mut period_events, &earlier)?;
        let Some(target) = threshold_target(priced.overage_charge, policy.threshold) else { continue };
        if charged.get(&(period.subscription_id, period.index)).is_some_and(|c| *c >= target) {
            continue;
        }
        let root = usage_root(options.chain_id, period, &priced.lines);
        if !dry_run {
            record(pool, options.chain_id, period, target, root, &priced, now).await?;
        }
        due.push((period.subscription_id, period.index, target, root));
    }
    Ok(due)
}

/// Records the evaluation of `slot`; false when it was recorded before.
async fn claim_slot(pool: &PgPool, chain_id: u64, slot: i64, now: i64) -> Result<bool, KeeperError> {
    let inserted = sqlx::query("INSERT INTO keeper.threshold_evaluations (chain_id, slot, evaluated_at) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING")
        .bind(chain_id as i64)
        .bind(slot)
        .bind(now)
        .execute(pool)
        .await?;
    Ok(inserted.rows_affected() == 1)
}

/// Usage not billed yet of the periods' subscriptions, up to now.
async fn unbilled_events(pool: &PgPool, periods: &[Period], now: i64) -> Result<HashMap<u64, Vec<MeteredEvent>>, KeeperError> {
    let ids: Vec<i64> = periods.iter().map(|p| p.subscription_id as i64).collect();
    let rows: Vec<(i64, String, String, String, rust_decimal::Decimal, i64)> = sqlx::query_as(
        "SELECT subscription_id, event_id, model_id, meter, quantity, occurred_at_ms FROM keeper.usage_events
         WHERE close_id IS NULL AND subscription_id = ANY($1) AND occurred_at_ms <= $2",
    )
    .bind(&ids)
    .bind(now.saturating_mul(1000))
    .fetch_all(pool)
    .await?;
    let mut events: HashMap<u64, Vec<MeteredEvent>> = HashMap::new();
    for (id, event_id, model, meter, quantity, occurred_at_ms) in rows {
        events.entry(id as u64).or_default().push(MeteredEvent { event_id, model, meter, quantity, occurred_at_ms, adjustment_of: None });
    }
    Ok(events)
}

/// Per (subscription, period): the most the chain has charged, or a charge on its way covers (planned or sent).
async fn charged_or_in_flight(pool: &PgPool, chain_id: u64, ids: &[i64]) -> Result<HashMap<(u64, u64), u128>, KeeperError> {
    let rows: Vec<(i64, i64, String)> = sqlx::query_as(
        "SELECT subscription_id::BIGINT, period_index::BIGINT, charged::TEXT FROM chain.charged_per_period
         WHERE chain_id = $1 AND subscription_id = ANY($2::BIGINT[]::NUMERIC[])
         UNION ALL
         SELECT subscription_id, period_index, cumulative::TEXT FROM keeper.charge_items
         WHERE state IN ('planned', 'sent') AND subscription_id = ANY($2)",
    )
    .bind(chain_id as i64)
    .bind(ids)
    .fetch_all(pool)
    .await?;
    let mut charged: HashMap<(u64, u64), u128> = HashMap::new();
    for (id, period, amount) in rows {
        let amount = crate::store::numeric_u128(&amount, "charged")?;
        let entry = charged.entry((id as u64, period as u64)).or_default();
        *entry = (*entry).max(amount);
    }
    Ok(charged)
}

fn usage_root(chain_id: u64, period: &Period, lines: &[Line]) -> B256 {
    MerkleTree::new(&close::period_leaves(chain_id, period, lines)).root()
}

/// Keeps what a threshold charge commits to: the provisional lines in leaf order.
async fn record(pool: &PgPool, chain_id: u64, period: &Period, target: u128, root: B256, priced: &PricedPeriod, now: i64) -> Result<(), KeeperError> {
    let lines: Vec<serde_json::Value> = priced
        .lines
        .iter()
        .map(|l| {
            json!({
                "model": l.key.model, "meter": l.key.meter, "price_effective_at": l.key.price_effective_at,
                "split_id": l.key.split_id, "adjustment_of": l.key.adjustment_of, "unit_price": l.unit_price.to_string(),
                "per_units": l.per_units.to_string(), "event_count": l.event_count, "quantity": l.quantity.to_string(),
                "included_quantity": l.included_quantity.to_string(), "value": l.value.to_string(),
                "included_value": l.included_value.to_string(), "overage_amount": l.overage_amount.to_string(),
                "attributed": l.attributed.to_string(),
            })
        })
        .collect();
    sqlx::query(
        "INSERT INTO keeper.threshold_charges (chain_id, subscription_id, period_index, cumulative, usage_root, lines, computed_at)
         VALUES ($1, $2, $3, $4::NUMERIC, $5, $6, $7) ON CONFLICT DO NOTHING",
    )
    .bind(chain_id as i64)
    .bind(period.subscription_id as i64)
    .bind(period.index as i64)
    .bind(target.to_string())
    .bind(root.as_slice())
    .bind(json!(lines))
    .bind(now)
    .execute(pool)
    .await?;
    Ok(())
}

fn action(prefix: &str, target: Address, batch: &[(u64, u64, u128, B256)]) -> Action {
    let charges = batch
        .iter()
        .map(|(id, period, cumulative, root)| Charge {
            subscriptionId: U256::from(*id),
            periodIndex: U256::from(*period),
            cumulativeOverage: U256::from(*cumulative),
            usageRoot: *root,
        })
        .collect();
    let items: Vec<serde_json::Value> =
        batch.iter().map(|(id, period, cumulative, _)| json!({ "id": id, "period": period, "cumulative": cumulative.to_string() })).collect();
    Action {
        key: batch_key(prefix, &batch.iter().map(|(id, period, cumulative, _)| format!("{id}:{period}:{cumulative}")).collect::<Vec<_>>()),
        kind: "charge",
        target,
        calldata: Subscriptions::chargeUsageCall { charges }.abi_encode().into(),
        items: json!(items),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_threshold_charge_stops_one_unit_short_of_the_multiple_it_crossed() {
        assert_eq!(threshold_target(2_999_999, 3_000_000), None, "below the first multiple");
        assert_eq!(threshold_target(3_000_000, 3_000_000), Some(2_999_999));
        assert_eq!(threshold_target(7_500_000, 3_000_000), Some(5_999_999));
        assert_eq!(threshold_target(7_500_000, 0), None, "no threshold");
        assert_eq!(threshold_target(1, 1), None, "nothing to charge short of one unit");
    }
}
