//! Period close: once a paid period has ended and the late-event cutoff has passed, its usage is priced, the
//! collected amount attributed, the lines committed to a Merkle root and the result written once. Events that
//! arrive later for a closed period are billed by the next close of the subscription as adjustment lines.
//! Settlement epochs ([`crate::settlement::epoch`]) then gather the closes into one amount per split.

use std::collections::HashMap;

use alloy::{
    primitives::{B256, U256},
    sol_types::SolValue,
};
use rust_decimal::Decimal;
use sqlx::{PgPool, Postgres, Transaction};

use crate::{
    KeeperError,
    metering::catalog::Snapshot,
    merkle::{self, MerkleTree},
    metering::pricing::{Line, MeteredEvent, PeriodTerms, PricedPeriod, price_period},
    metering::subscriptions::{self, Period},
};

/// How period close runs.
#[derive(Debug, Clone, Copy)]
pub struct CloseOptions {
    /// The deployment's chain.
    pub chain_id: u64,
    /// Seconds after a period's end before it closes (late events after it become adjustments).
    pub late_cutoff: i64,
    /// Token decimals.
    pub decimals: u32,
    /// Split for the fee of a period without metered usage.
    pub default_split: Option<u64>,
    /// Subscriptions closed per database transaction.
    pub batch: i64,
}

/// What one run of [`close_due_periods`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct CloseReport {
    /// Periods closed.
    pub periods: u64,
    /// Events billed.
    pub events: u64,
    /// Lines written.
    pub lines: u64,
}

/// The fields of a line's Merkle leaf, ABI-encoded as `abi.encode(...)` of these values in this order.
pub type LeafFields = (
    U256, U256, U256, U256, // chainId, subscriptionId, periodIndex, lineNo
    String, String, U256, // model, meter, priceEffectiveAt
    String, String, U256, // unitPrice, perUnits, splitId
    bool, U256, // isAdjustment, adjustmentOf
    String, String, U256, U256, // quantity, includedQuantity, overageAmount, attributed
);

/// The leaf of a line (see docs/keeper.md): decimals as their shortest text, amounts as uint256.
pub fn line_leaf(chain_id: u64, subscription_id: u64, period_index: u64, line_no: u32, line: &Line) -> B256 {
    let fields: LeafFields = (
        U256::from(chain_id),
        U256::from(subscription_id),
        U256::from(period_index),
        U256::from(line_no),
        line.key.model.clone(),
        line.key.meter.clone(),
        U256::from(line.key.price_effective_at.max(0) as u64),
        line.unit_price.normalize().to_string(),
        line.per_units.normalize().to_string(),
        U256::from(line.key.split_id),
        line.key.adjustment_of.is_some(),
        U256::from(line.key.adjustment_of.unwrap_or(0)),
        line.quantity.normalize().to_string(),
        line.included_quantity.normalize().to_string(),
        U256::from(line.overage_amount),
        U256::from(line.attributed),
    );
    merkle::leaf(&fields.abi_encode_params())
}

/// Closes every period that is due at `now`, in batches; returns what was closed.
pub async fn close_due_periods(pool: &PgPool, catalog: &Snapshot, options: &CloseOptions, now: i64) -> Result<CloseReport, KeeperError> {
    let mut report = CloseReport::default();
    loop {
        let mut due = subscriptions::closable_periods(pool, options.chain_id, now, options.late_cutoff, options.batch).await?;
        if due.is_empty() {
            // Then the unpaid period of each lapse with usage left: closed with nothing to collect.
            due = subscriptions::lapsed_with_unbilled_usage(pool, options.chain_id, options.batch).await?;
        }
        if due.is_empty() {
            refresh_statistics(pool, report.periods).await?;
            return Ok(report);
        }
        let batch = close_batch(pool, catalog, options, now, &due).await?;
        report.periods += batch.periods;
        report.events += batch.events;
        report.lines += batch.lines;
    }
}

/// Closes of at least this many periods refresh the planner statistics of the tables they wrote.
const ANALYZE_AFTER_PERIODS: u64 = 1_000;

/// After a large close, `ANALYZE` the tables it wrote. Autovacuum gets to them within minutes, but until then the
/// planner still sees them as they were before: in the engine bench, a month's close of 10,008 periods planned the
/// next month's due-period query (an anti-join against `period_closes`) for an empty table and took 22.6 s instead
/// of 0.4 s.
async fn refresh_statistics(pool: &PgPool, periods: u64) -> Result<(), KeeperError> {
    if periods >= ANALYZE_AFTER_PERIODS {
        sqlx::query("ANALYZE keeper.period_closes, keeper.usage_lines, keeper.usage_events").execute(pool).await?;
    }
    Ok(())
}

type EventRow = (i64, String, String, String, Decimal, i64);

async fn close_batch(pool: &PgPool, catalog: &Snapshot, options: &CloseOptions, now: i64, due: &[Period]) -> Result<CloseReport, KeeperError> {
    let mut tx = pool.begin().await?;
    let close_ids: Vec<i64> = sqlx::query_scalar("SELECT nextval('keeper.period_closes_close_id_seq') FROM generate_series(1, $1)")
        .bind(due.len() as i64)
        .fetch_all(&mut *tx)
        .await?;
    // Claim the events: every unbilled event of the subscription up to the period's end, this period's and late
    // ones of earlier periods. Events committed after this statement wait for the next close.
    let ids: Vec<i64> = due.iter().map(|p| p.subscription_id as i64).collect();
    let ends: Vec<i64> = due.iter().map(|p| p.end.saturating_mul(1000)).collect();
    let rows: Vec<EventRow> = sqlx::query_as(
        "UPDATE keeper.usage_events e SET close_id = p.close_id
         FROM UNNEST($1::BIGINT[], $2::BIGINT[], $3::BIGINT[]) AS p(id, end_ms, close_id)
         WHERE e.subscription_id = p.id AND e.close_id IS NULL AND e.occurred_at_ms < p.end_ms
         RETURNING e.subscription_id, e.event_id, e.model_id, e.meter, e.quantity, e.occurred_at_ms",
    )
    .bind(&ids)
    .bind(&ends)
    .bind(&close_ids)
    .fetch_all(&mut *tx)
    .await?;
    let mut events: HashMap<u64, Vec<MeteredEvent>> = HashMap::new();
    for (id, event_id, model, meter, quantity, occurred_at_ms) in rows {
        events.entry(id as u64).or_default().push(MeteredEvent { event_id, model, meter, quantity, occurred_at_ms, adjustment_of: None });
    }
    let earlier = earlier_periods(&mut tx, options.chain_id, &ids).await?;

    let mut report = CloseReport::default();
    let mut closes = Vec::with_capacity(due.len());
    for (period, close_id) in due.iter().zip(&close_ids) {
        let mut period_events = events.remove(&period.subscription_id).unwrap_or_default();
        let priced = price(catalog, options, period, &mut period_events, &earlier)?;
        report.periods += 1;
        report.events += period_events.len() as u64;
        report.lines += priced.lines.len() as u64;
        closes.push((*close_id, period, priced));
    }
    write_closes(&mut tx, options, now, &closes).await?;
    tx.commit().await?;
    Ok(report)
}

/// The leaves of a period's lines, numbered in order: what its usage root (and a threshold charge's) commits to.
pub(crate) fn period_leaves(chain_id: u64, period: &Period, lines: &[Line]) -> Vec<B256> {
    lines.iter().enumerate().map(|(n, line)| line_leaf(chain_id, period.subscription_id, period.index, n as u32, line)).collect()
}

/// Prices `events` of `period` as its close does: events of earlier periods that arrived late become adjustment
/// lines of the period they belonged to (by `earlier`, the closed periods' starts).
pub(crate) fn price(
    catalog: &Snapshot,
    options: &CloseOptions,
    period: &Period,
    events: &mut [MeteredEvent],
    earlier: &HashMap<u64, Vec<(i64, u64)>>,
) -> Result<PricedPeriod, KeeperError> {
    for event in events.iter_mut() {
        if event.occurred_at_ms < period.start.saturating_mul(1000) {
            event.adjustment_of = Some(period_of(earlier, period.subscription_id, event.occurred_at_ms));
        }
    }
    let terms = PeriodTerms {
        fee: period.fee,
        overage_cap: period.overage_cap,
        allowance: catalog.allowance(period.plan_id, period.start),
        default_split: options.default_split,
        decimals: options.decimals,
    };
    price_period(&catalog.catalog, &terms, events)
        .map_err(|e| KeeperError::Close { subscription_id: period.subscription_id, period: period.index, reason: e.to_string() })
}

/// Start and index of the closed periods of the subscriptions, to tell which period a late event belonged to.
pub(crate) async fn earlier_periods(tx: &mut sqlx::PgConnection, chain_id: u64, ids: &[i64]) -> Result<HashMap<u64, Vec<(i64, u64)>>, KeeperError> {
    let rows: Vec<(i64, i64, i64)> = sqlx::query_as(
        "SELECT subscription_id, period_start, period_index FROM keeper.period_closes
         WHERE chain_id = $1 AND subscription_id = ANY($2) ORDER BY period_start",
    )
    .bind(chain_id as i64)
    .bind(ids)
    .fetch_all(&mut *tx)
    .await?;
    let mut periods: HashMap<u64, Vec<(i64, u64)>> = HashMap::new();
    for (id, start, index) in rows {
        periods.entry(id as u64).or_default().push((start, index as u64));
    }
    Ok(periods)
}

fn period_of(earlier: &HashMap<u64, Vec<(i64, u64)>>, subscription_id: u64, occurred_at_ms: i64) -> u64 {
    let at = occurred_at_ms.div_euclid(1000);
    earlier
        .get(&subscription_id)
        .and_then(|periods| periods.iter().rev().find(|(start, _)| *start <= at))
        .map_or(0, |(_, index)| *index)
}

async fn write_closes(
    tx: &mut Transaction<'_, Postgres>,
    options: &CloseOptions,
    now: i64,
    closes: &[(i64, &Period, PricedPeriod)],
) -> Result<(), KeeperError> {
    let mut c = CloseColumns::default();
    let mut l = LineColumns::default();
    for (close_id, period, priced) in closes {
        let leaves = period_leaves(options.chain_id, period, &priced.lines);
        for (line_no, (line, leaf)) in priced.lines.iter().zip(&leaves).enumerate() {
            l.push(*close_id, line_no as i32, line, *leaf);
        }
        let root = MerkleTree::new(&leaves).root();
        let default_split = priced.lines.iter().find(|line| line.key.model.is_empty()).map(|line| line.key.split_id);
        c.push(*close_id, options.chain_id, period, now, priced, default_split, root);
    }
    c.insert(tx).await?;
    l.insert(tx).await?;
    Ok(())
}

#[derive(Default)]
struct CloseColumns {
    close_id: Vec<i64>,
    chain_id: Vec<i64>,
    subscription_id: Vec<i64>,
    period_index: Vec<i64>,
    subscriber: Vec<Vec<u8>>,
    plan_id: Vec<String>,
    start: Vec<i64>,
    end: Vec<i64>,
    closed_at: Vec<i64>,
    fee: Vec<String>,
    metered_value: Vec<Decimal>,
    included_value: Vec<Decimal>,
    overage_amount: Vec<String>,
    overage_cap: Vec<String>,
    overage_charge: Vec<String>,
    collected: Vec<String>,
    default_split: Vec<Option<String>>,
    root: Vec<Vec<u8>>,
    line_count: Vec<i32>,
}

impl CloseColumns {
    #[allow(clippy::too_many_arguments)]
    fn push(&mut self, close_id: i64, chain_id: u64, p: &Period, now: i64, priced: &PricedPeriod, default_split: Option<u64>, root: B256) {
        self.close_id.push(close_id);
        self.chain_id.push(chain_id as i64);
        self.subscription_id.push(p.subscription_id as i64);
        self.period_index.push(p.index as i64);
        self.subscriber.push(p.subscriber.to_vec());
        self.plan_id.push(p.plan_id.to_string());
        self.start.push(p.start);
        self.end.push(p.end);
        self.closed_at.push(now);
        self.fee.push(p.fee.to_string());
        self.metered_value.push(priced.metered_value);
        self.included_value.push(priced.included_value);
        self.overage_amount.push(priced.overage_amount.to_string());
        self.overage_cap.push(p.overage_cap.to_string());
        self.overage_charge.push(priced.overage_charge.to_string());
        self.collected.push(priced.collected.to_string());
        self.default_split.push(default_split.map(|s| s.to_string()));
        self.root.push(root.to_vec());
        self.line_count.push(priced.lines.len() as i32);
    }

    async fn insert(&self, tx: &mut Transaction<'_, Postgres>) -> Result<(), KeeperError> {
        sqlx::query(
            "INSERT INTO keeper.period_closes (close_id, chain_id, subscription_id, period_index, subscriber, plan_id,
                 period_start, period_end, closed_at, fee, metered_value, included_value, overage_amount, overage_cap,
                 overage_charge, collected, default_split_id, usage_root, line_count)
             SELECT * FROM UNNEST($1::BIGINT[], $2::BIGINT[], $3::BIGINT[], $4::BIGINT[], $5::BYTEA[], $6::NUMERIC[],
                 $7::BIGINT[], $8::BIGINT[], $9::BIGINT[], $10::NUMERIC[], $11::NUMERIC[], $12::NUMERIC[], $13::NUMERIC[],
                 $14::NUMERIC[], $15::NUMERIC[], $16::NUMERIC[], $17::NUMERIC[], $18::BYTEA[], $19::INTEGER[])",
        )
        .bind(&self.close_id)
        .bind(&self.chain_id)
        .bind(&self.subscription_id)
        .bind(&self.period_index)
        .bind(&self.subscriber)
        .bind(&self.plan_id)
        .bind(&self.start)
        .bind(&self.end)
        .bind(&self.closed_at)
        .bind(&self.fee)
        .bind(&self.metered_value)
        .bind(&self.included_value)
        .bind(&self.overage_amount)
        .bind(&self.overage_cap)
        .bind(&self.overage_charge)
        .bind(&self.collected)
        .bind(&self.default_split)
        .bind(&self.root)
        .bind(&self.line_count)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }
}

#[derive(Default)]
struct LineColumns {
    close_id: Vec<i64>,
    line_no: Vec<i32>,
    model: Vec<String>,
    meter: Vec<String>,
    price_at: Vec<i64>,
    unit_price: Vec<Decimal>,
    per_units: Vec<Decimal>,
    split_id: Vec<String>,
    adjustment_of: Vec<Option<i64>>,
    event_count: Vec<i32>,
    quantity: Vec<Decimal>,
    included_quantity: Vec<Decimal>,
    value: Vec<Decimal>,
    included_value: Vec<Decimal>,
    overage_amount: Vec<String>,
    attributed: Vec<String>,
    leaf: Vec<Vec<u8>>,
}

impl LineColumns {
    fn push(&mut self, close_id: i64, line_no: i32, line: &Line, leaf: B256) {
        self.close_id.push(close_id);
        self.line_no.push(line_no);
        self.model.push(line.key.model.clone());
        self.meter.push(line.key.meter.clone());
        self.price_at.push(line.key.price_effective_at);
        self.unit_price.push(line.unit_price);
        self.per_units.push(line.per_units);
        self.split_id.push(line.key.split_id.to_string());
        self.adjustment_of.push(line.key.adjustment_of.map(|p| p as i64));
        self.event_count.push(line.event_count as i32);
        self.quantity.push(line.quantity);
        self.included_quantity.push(line.included_quantity);
        self.value.push(line.value);
        self.included_value.push(line.included_value);
        self.overage_amount.push(line.overage_amount.to_string());
        self.attributed.push(line.attributed.to_string());
        self.leaf.push(leaf.to_vec());
    }

    async fn insert(&self, tx: &mut Transaction<'_, Postgres>) -> Result<(), KeeperError> {
        sqlx::query(
            "INSERT INTO keeper.usage_lines (close_id, line_no, model_id, meter, price_effective_at, unit_price, per_units,
                 split_id, adjustment_of, event_count, quantity, included_quantity, value, included_value, overage_amount,
                 attributed, leaf)
             SELECT * FROM UNNEST($1::BIGINT[], $2::INTEGER[], $3::TEXT[], $4::TEXT[], $5::BIGINT[], $6::NUMERIC[],
                 $7::NUMERIC[], $8::NUMERIC[], $9::BIGINT[], $10::INTEGER[], $11::NUMERIC[], $12::NUMERIC[], $13::NUMERIC[],
                 $14::NUMERIC[], $15::NUMERIC[], $16::NUMERIC[], $17::BYTEA[])",
        )
        .bind(&self.close_id)
        .bind(&self.line_no)
        .bind(&self.model)
        .bind(&self.meter)
        .bind(&self.price_at)
        .bind(&self.unit_price)
        .bind(&self.per_units)
        .bind(&self.split_id)
        .bind(&self.adjustment_of)
        .bind(&self.event_count)
        .bind(&self.quantity)
        .bind(&self.included_quantity)
        .bind(&self.value)
        .bind(&self.included_value)
        .bind(&self.overage_amount)
        .bind(&self.attributed)
        .bind(&self.leaf)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }
}
