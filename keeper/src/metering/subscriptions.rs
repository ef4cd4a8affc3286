//! Subscriptions and their periods as the indexer recorded them in schema `chain` (read-only).

use std::{collections::HashMap, sync::Arc};

use alloy::primitives::Address;
use sqlx::PgPool;

use crate::{
    KeeperError,
    store::{numeric_u128, numeric_u64},
};

/// A subscription's on-chain status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Paid, renewing.
    Active,
    /// A renewal failed; serving continues inside the grace period.
    PastDue,
    /// Grace ran out.
    Lapsed,
    /// The subscriber cancelled; paid time is still served.
    Cancelled,
}

/// One subscription, current state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscription {
    /// Subscription id.
    pub id: u64,
    /// Its wallet.
    pub subscriber: Address,
    /// Current plan.
    pub plan_id: u64,
    /// Status.
    pub status: Status,
    /// Index of the last paid period.
    pub period_index: u64,
    /// End of the last paid period (Unix seconds).
    pub paid_through: i64,
    /// Period length of the current plan.
    pub period: i64,
    /// Grace period of the current plan.
    pub grace: i64,
    /// The subscriber's overage cap per period, base units.
    pub overage_cap: u128,
    /// When it started (Unix seconds).
    pub subscribed_at: i64,
    /// Every pause of charging on the deployment, which grace periods do not count.
    pub pauses: Pauses,
}

/// The pauses of charging, oldest first: (start, end), `None` while it lasts. Shared by every subscription.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pauses(pub Arc<[(i64, Option<i64>)]>);

impl Pauses {
    /// Seconds paused between `from` and `now` (`Subscriptions.pausedSince(from)` at `now`).
    pub fn paused_between(&self, from: i64, now: i64) -> i64 {
        self.0
            .iter()
            .map(|(start, end)| (end.unwrap_or(now).min(now) - (*start).max(from)).max(0))
            .sum()
    }

    /// Every pause of the deployment on `chain_id`, as indexed.
    pub async fn load(pool: &PgPool, chain_id: u64) -> Result<Self, KeeperError> {
        let rows: Vec<(i64, Option<i64>)> =
            sqlx::query_as("SELECT started_at, ended_at FROM chain.pauses WHERE chain_id = $1 ORDER BY started_at")
                .bind(chain_id as i64)
                .fetch_all(pool)
                .await?;
        Ok(Self(rows.into()))
    }
}

impl Subscription {
    /// The contract's `isEntitled` at `now`.
    pub fn entitled_at(&self, now: i64) -> bool {
        match self.status {
            Status::Active | Status::PastDue => now < self.grace_end(now),
            Status::Cancelled => now < self.paid_through,
            Status::Lapsed => false,
        }
    }

    /// When the grace period ends, as known at `now`: paid-through plus the grace period plus the time charging was
    /// paused since paid-through (the contract does not count it; a pause still running keeps moving this).
    pub fn grace_end(&self, now: i64) -> i64 {
        self.paid_through.saturating_add(self.grace).saturating_add(self.pauses.paused_between(self.paid_through, now))
    }

    /// Start of the period usage at `now` belongs to: the paid one, or the next one once it has ended.
    pub fn open_period_start(&self, now: i64) -> i64 {
        if now < self.paid_through { self.paid_through - self.period } else { self.paid_through }
    }
}

fn parse_status(text: &str) -> Result<Status, KeeperError> {
    Ok(match text {
        "active" => Status::Active,
        "past_due" => Status::PastDue,
        "lapsed" => Status::Lapsed,
        "cancelled" => Status::Cancelled,
        other => return Err(KeeperError::ChainData(format!("unknown subscription status `{other}`"))),
    })
}

/// Subscriptions indexed by id and by wallet (each wallet's ids in order). Built where they are read, so that the
/// entitlement view only swaps the index in under its lock.
#[derive(Debug, Clone, Default)]
pub struct Index {
    /// By subscription id.
    pub by_id: HashMap<u64, Subscription>,
    /// Each wallet's subscription ids, lowest first.
    pub by_subscriber: HashMap<Address, Vec<u64>>,
}

impl Index {
    /// Every subscription, in no order.
    pub fn iter(&self) -> impl Iterator<Item = &Subscription> {
        self.by_id.values()
    }
}

impl FromIterator<Subscription> for Index {
    fn from_iter<I: IntoIterator<Item = Subscription>>(subscriptions: I) -> Self {
        let mut index = Self::default();
        for sub in subscriptions {
            index.by_subscriber.entry(sub.subscriber).or_default().push(sub.id);
            index.by_id.insert(sub.id, sub);
        }
        for ids in index.by_subscriber.values_mut() {
            ids.sort_unstable();
        }
        index
    }
}

impl From<Vec<Subscription>> for Index {
    fn from(subscriptions: Vec<Subscription>) -> Self {
        subscriptions.into_iter().collect()
    }
}

/// Where the indexer stands on `chain_id`: each followed deployment's cursor (block number and hash). The indexer
/// moves a cursor in the same transaction as the rows it covers (a reorg moves it to another hash), so while the
/// mark is unchanged the subscriptions [`load_all`] reads are unchanged too.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainMark(Vec<(Vec<u8>, Option<i64>, Option<Vec<u8>>)>);

/// Reads the indexer's [`ChainMark`] on `chain_id`.
pub async fn chain_mark(pool: &PgPool, chain_id: u64) -> Result<ChainMark, KeeperError> {
    let cursors = sqlx::query_as("SELECT subscriptions, cursor_number, cursor_hash FROM chain.deployments WHERE chain_id = $1 ORDER BY subscriptions")
        .bind(chain_id as i64)
        .fetch_all(pool)
        .await?;
    Ok(ChainMark(cursors))
}

type Row = (String, Vec<u8>, String, String, String, String, String, String, String, i64);

/// Every subscription of the deployment on `chain_id`, indexed.
pub async fn load_all(pool: &PgPool, chain_id: u64) -> Result<Index, KeeperError> {
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT s.subscription_id::TEXT, s.subscriber, s.plan_id::TEXT, s.status, s.period_index::TEXT,
                s.paid_through::TEXT, p.period::TEXT, p.grace_period::TEXT, s.overage_cap::TEXT, s.subscribed_at
         FROM chain.subscriptions s JOIN chain.plans p ON p.chain_id = s.chain_id AND p.plan_id = s.plan_id
         WHERE s.chain_id = $1",
    )
    .bind(chain_id as i64)
    .fetch_all(pool)
    .await?;
    let pauses = Pauses::load(pool, chain_id).await?;
    rows.into_iter().map(|row| from_row(row, &pauses)).collect::<Result<Vec<_>, _>>().map(Index::from)
}

fn from_row(row: Row, pauses: &Pauses) -> Result<Subscription, KeeperError> {
    let (id, subscriber, plan, status, index, paid_through, period, grace, cap, subscribed_at) = row;
    let subscriber = Address::try_from(subscriber.as_slice())
        .map_err(|_| KeeperError::ChainData(format!("subscription {id}: subscriber is not 20 bytes")))?;
    Ok(Subscription {
        id: numeric_u64(&id, "subscription_id")?,
        subscriber,
        plan_id: numeric_u64(&plan, "plan_id")?,
        status: parse_status(&status)?,
        period_index: numeric_u64(&index, "period_index")?,
        paid_through: seconds(&paid_through)?,
        period: seconds(&period)?,
        grace: seconds(&grace)?,
        overage_cap: numeric_u128(&cap, "overage_cap")?,
        subscribed_at,
        pauses: pauses.clone(),
    })
}

fn seconds(text: &str) -> Result<i64, KeeperError> {
    text.parse().map_err(|_| KeeperError::ChainData(format!("time `{text}` is not Unix seconds")))
}

/// A paid period of a subscription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Period {
    /// Subscription id.
    pub subscription_id: u64,
    /// Period index.
    pub index: u64,
    /// The plan it was paid on.
    pub plan_id: u64,
    /// Start (Unix seconds).
    pub start: i64,
    /// End, exclusive.
    pub end: i64,
    /// The fee collected for it, base units.
    pub fee: u128,
    /// The subscriber.
    pub subscriber: Address,
    /// The overage cap that applied to this period (`Subscriptions.overageCapOf`), base units.
    pub overage_cap: u128,
}

type PeriodRow = (String, i64, String, i64, i64, String, Vec<u8>, String);

/// The earliest unclosed paid period of each subscription whose end plus `cutoff` is at or before `now`, at most
/// `limit` of them. Periods of one subscription come one at a time, so they close in order.
pub async fn closable_periods(pool: &PgPool, chain_id: u64, now: i64, cutoff: i64, limit: i64) -> Result<Vec<Period>, KeeperError> {
    periods(pool, chain_id, "o.paid_through + $2 <= $3", cutoff, now, limit).await
}

/// Each subscription's first period not closed yet, where that period is still running at `now` and usage
/// not billed yet exists (the candidates for a mid-period threshold charge), for subscriptions after `after`.
pub async fn open_periods_with_usage(pool: &PgPool, chain_id: u64, now: i64, after: u64, limit: i64) -> Result<Vec<Period>, KeeperError> {
    let filter = format!(
        "o.subscription_id > {after} AND o.paid_through - pl.period <= $3 AND $3 < o.paid_through + $2
         AND EXISTS (SELECT 1 FROM keeper.usage_events e WHERE e.subscription_id = o.subscription_id::BIGINT AND e.close_id IS NULL)"
    );
    periods(pool, chain_id, &filter, 0, now, limit).await
}

/// The first unclosed period of each subscription that passes `filter` (SQL over `o`, the period, and `pl`, its
/// plan, with `$2` = `offset` seconds and `$3` = `now`).
async fn periods(pool: &PgPool, chain_id: u64, filter: &str, offset: i64, now: i64, limit: i64) -> Result<Vec<Period>, KeeperError> {
    let rows: Vec<PeriodRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "WITH periods AS (
             SELECT s.chain_id, s.subscription_id, 0::BIGINT AS period_index, s.plan_id, s.paid_through, s.amount,
                    s.subscriber, s.overage_cap
             FROM chain.subscribed s WHERE s.chain_id = $1
             UNION ALL
             SELECT r.chain_id, r.subscription_id, r.period_index::BIGINT, r.plan_id, r.paid_through, r.amount,
                    s.subscriber, s.overage_cap
             FROM chain.renewals r JOIN chain.subscribed s USING (chain_id, subscription_id) WHERE r.chain_id = $1
         ), open AS (
             SELECT DISTINCT ON (p.subscription_id) p.*
             FROM periods p
             WHERE NOT EXISTS (SELECT 1 FROM keeper.period_closes c
                               WHERE c.chain_id = p.chain_id AND c.subscription_id = p.subscription_id::BIGINT
                                 AND c.period_index = p.period_index)
             ORDER BY p.subscription_id, p.period_index
         )
         SELECT o.subscription_id::TEXT, o.period_index, o.plan_id::TEXT, (o.paid_through - pl.period)::BIGINT,
                o.paid_through::BIGINT, o.amount::TEXT, o.subscriber,
                -- The cap that applied to this period (a change made after it ended never touches it), as the
                -- contract caps its charges.
                chain.overage_cap_for(o.chain_id, o.subscription_id, o.period_index)::TEXT
         FROM open o
         JOIN chain.plans pl ON pl.chain_id = o.chain_id AND pl.plan_id = o.plan_id
         WHERE {filter}
         ORDER BY o.subscription_id
         LIMIT $4"
    )))
    .bind(chain_id as i64)
    .bind(offset)
    .bind(now)
    .bind(limit)
    .fetch_all(pool)
    .await?;
    rows.into_iter()
        .map(|(id, index, plan, start, end, fee, subscriber, cap)| {
            Ok(Period {
                subscription_id: numeric_u64(&id, "subscription_id")?,
                index: u64::try_from(index).map_err(|_| KeeperError::ChainData(format!("period index {index}")))?,
                plan_id: numeric_u64(&plan, "plan_id")?,
                start,
                end,
                fee: numeric_u128(&fee, "amount")?,
                subscriber: Address::try_from(subscriber.as_slice())
                    .map_err(|_| KeeperError::ChainData(format!("subscription {id}: subscriber is not 20 bytes")))?,
                overage_cap: numeric_u128(&cap, "overage_cap")?,
            })
        })
        .collect()
}

/// The unpaid period after a lapse, for subscriptions that lapsed with usage not billed yet (usage served in the
/// grace period, or late events of paid periods): nothing can be charged for it, so it is closed with no fee and
/// a zero cap, which records that usage with nothing attributed instead of leaving it open for ever.
pub async fn lapsed_with_unbilled_usage(pool: &PgPool, chain_id: u64, limit: i64) -> Result<Vec<Period>, KeeperError> {
    type LapseRow = (String, String, String, String, i64, Vec<u8>);
    let rows: Vec<LapseRow> = sqlx::query_as(
        "SELECT s.subscription_id::TEXT, (s.period_index + 1)::TEXT, s.plan_id::TEXT, s.paid_through::TEXT, e.block_time, s.subscriber
         FROM chain.subscriptions s
         JOIN LATERAL (SELECT x.block_time FROM chain.subscription_ends x
                       WHERE x.chain_id = s.chain_id AND x.subscription_id = s.subscription_id AND x.kind = 'lapsed'
                       ORDER BY x.block_number DESC, x.log_index DESC LIMIT 1) e ON TRUE
         WHERE s.chain_id = $1 AND s.status = 'lapsed'
           AND EXISTS (SELECT 1 FROM keeper.usage_events u WHERE u.subscription_id = s.subscription_id::BIGINT AND u.close_id IS NULL)
           -- After the last paid period's own close, so that it keeps its own usage.
           AND EXISTS (SELECT 1 FROM keeper.period_closes c WHERE c.chain_id = s.chain_id
                         AND c.subscription_id = s.subscription_id::BIGINT AND c.period_index = s.period_index::BIGINT)
           AND NOT EXISTS (SELECT 1 FROM keeper.period_closes c WHERE c.chain_id = s.chain_id
                             AND c.subscription_id = s.subscription_id::BIGINT AND c.period_index = s.period_index::BIGINT + 1)
         ORDER BY s.subscription_id
         LIMIT $2",
    )
    .bind(chain_id as i64)
    .bind(limit)
    .fetch_all(pool)
    .await?;
    rows.into_iter()
        .map(|(id, index, plan, paid_through, lapsed_at, subscriber)| {
            let start = seconds(&paid_through)?;
            Ok(Period {
                subscription_id: numeric_u64(&id, "subscription_id")?,
                index: numeric_u64(&index, "period_index")?,
                plan_id: numeric_u64(&plan, "plan_id")?,
                start,
                // Every event accepted before the lapse: the lapse is sent after the grace period, when the keeper
                // had stopped accepting usage.
                end: lapsed_at.max(start) + 1,
                fee: 0,
                subscriber: Address::try_from(subscriber.as_slice())
                    .map_err(|_| KeeperError::ChainData(format!("subscription {id}: subscriber is not 20 bytes")))?,
                overage_cap: 0,
            })
        })
        .collect()
}
