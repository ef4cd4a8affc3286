//! The admission ledger: usage that adds overage is admitted for good in Postgres, in the transaction that stores
//! it, so that concurrent batches and `serve` replicas sharing one database judge on the same figures.
//!
//! Each open period that has admitted usage has a row in `keeper.admission_periods` and its usage so far per model
//! and meter in `keeper.admission_usage`. A batch's transaction
//!
//! 1. inserts its new events (`ON CONFLICT DO NOTHING`, in `event_id` order, so that two batches holding the same
//!    new ids never wait on each other crosswise);
//! 2. locks the period rows of the subscriptions those events count against and, when funds are judged, of every
//!    live subscription of their wallets (whose periods owe against the same funds), `FOR UPDATE` in
//!    `(subscription_id, period_start)` order, so that deadlocks cannot form; a period met for the first time is
//!    summed from the stored events;
//! 3. reads their usage (a statement after the locks, so it sees what the batch it waited for committed), judges the
//!    new events with [`super::admission::judge`], deletes the refused ones, writes the usage back and moves each
//!    period's version on; then commits.
//!
//! Two batches of one period therefore take turns, each judged on everything the other admitted, and the overage
//! admitted beyond a cap is at most the one event that crossed it, whatever the number of batches or replicas. The
//! view takes the figures of every period locked, with their versions, after the commit.

use std::{
    collections::{BTreeSet, HashMap, HashSet},
    sync::RwLock,
};

use alloy::primitives::Address;
use rust_decimal::Decimal;
use serde_json::Value;
use sqlx::{PgPool, Postgres, Transaction};

use super::{
    Aggregates, Entitlements, OpenUsageRow, RefusalKind,
    admission::{self, Context},
};
use crate::{
    KeeperError,
    metering::{catalog::Snapshot, event::UsageEvent, funds::wall_ms},
};

/// What [`crate::metering::ingest::store`] needs to admit a batch: the view to take the terms from (and to bring up
/// to date after), the catalog that prices the usage, and where to put the kind of each refusal.
#[derive(Debug)]
pub struct Admission<'a> {
    /// The in-memory view.
    pub view: &'a RwLock<Entitlements>,
    /// The catalog the batch was validated with.
    pub catalog: &'a Snapshot,
    /// Token decimals.
    pub decimals: u32,
    /// Now, Unix seconds (the keeper's clock): which period is open.
    pub now: i64,
    /// Per input event of the batch: the kind of its refusal, for the 402 counter; set for those the ledger refuses.
    pub kinds: &'a mut [Option<RefusalKind>],
}

/// One open period as the ledger holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerPeriod {
    /// Subscription id.
    pub subscription_id: u64,
    /// Period start, Unix seconds.
    pub period_start: i64,
    /// The version of these figures (moves on with every admission that stores usage in the period).
    pub version: i64,
    /// The usage admitted so far.
    pub usage: Aggregates,
}

/// Open usage read from Postgres: from the ledger for the periods it holds, summed from the events for the others.
#[derive(Debug, Clone, Default)]
pub struct OpenUsageRead {
    /// Periods the ledger holds.
    pub ledger: Vec<LedgerPeriod>,
    /// Aggregates of the other periods' events.
    pub summed: Vec<OpenUsageRow>,
}

/// What the ledger did with a batch's new events.
#[derive(Debug, Default)]
pub struct Stored {
    /// The ids of the events stored now.
    pub inserted: HashSet<String>,
    /// Per event given, in order: the refusal of an event that was not admitted (and so not stored).
    pub refusals: Vec<Option<(RefusalKind, String)>>,
}

fn columns(periods: &[(u64, i64)]) -> (Vec<i64>, Vec<i64>) {
    periods.iter().map(|(id, start)| (*id as i64, *start)).unzip()
}

/// Reads the open usage of `targets` (subscription, period start): the ledger's figures where it holds the period,
/// else the sums of the period's stored events.
pub async fn load_open_usage(pool: &PgPool, targets: &[(u64, i64)]) -> Result<OpenUsageRead, KeeperError> {
    if targets.is_empty() {
        return Ok(OpenUsageRead::default());
    }
    let (ids, starts) = columns(targets);
    type Row = (i64, i64, i64, Option<String>, Option<String>, Option<Decimal>, Option<i64>);
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT p.subscription_id, p.period_start, p.version, u.model_id, u.meter, u.quantity, u.latest_ms
         FROM UNNEST($1::BIGINT[], $2::BIGINT[]) AS k(id, start)
         JOIN keeper.admission_periods p ON p.subscription_id = k.id AND p.period_start = k.start AND p.ready
         LEFT JOIN keeper.admission_usage u ON u.subscription_id = p.subscription_id AND u.period_start = p.period_start",
    )
    .bind(&ids)
    .bind(&starts)
    .fetch_all(pool)
    .await?;
    let mut held: HashMap<(u64, i64), LedgerPeriod> = HashMap::new();
    for (id, start, version, model, meter, quantity, latest) in rows {
        let period = held.entry((id as u64, start)).or_insert_with(|| LedgerPeriod {
            subscription_id: id as u64,
            period_start: start,
            version,
            usage: Aggregates::new(),
        });
        if let (Some(model), Some(meter), Some(quantity), Some(latest)) = (model, meter, quantity, latest) {
            period.usage.insert((model, meter), (quantity, latest));
        }
    }
    let others: Vec<(u64, i64)> = targets.iter().filter(|key| !held.contains_key(key)).copied().collect();
    let summed = sum_events(pool, &others).await?;
    Ok(OpenUsageRead { ledger: held.into_values().collect(), summed })
}

/// The usage of the `periods` summed from their stored events.
async fn sum_events(pool: &PgPool, periods: &[(u64, i64)]) -> Result<Vec<OpenUsageRow>, KeeperError> {
    if periods.is_empty() {
        return Ok(Vec::new());
    }
    let (ids, starts) = columns(periods);
    let starts_ms: Vec<i64> = starts.iter().map(|s| s.saturating_mul(1000)).collect();
    Ok(sqlx::query_as(
        "SELECT e.subscription_id, e.model_id, e.meter, SUM(e.quantity), MAX(e.occurred_at_ms)
         FROM keeper.usage_events e
         JOIN UNNEST($1::BIGINT[], $2::BIGINT[]) AS p(id, start_ms) ON e.subscription_id = p.id AND e.occurred_at_ms >= p.start_ms
         -- An open period's events are never closed yet; saying so lets the partial index skip closed history.
         WHERE e.close_id IS NULL
         GROUP BY 1, 2, 3",
    )
    .bind(&ids)
    .bind(&starts_ms)
    .fetch_all(pool)
    .await?)
}

/// Stores the new `events` of a batch (validated, not refused by the view, ids unique) that the ledger admits, in
/// one transaction; the view takes the figures of the periods judged. An event already stored is not inserted
/// again (the caller tells duplicates from conflicts).
pub async fn store(pool: &PgPool, admission: &Admission<'_>, events: &[&UsageEvent]) -> Result<Stored, KeeperError> {
    if events.is_empty() {
        return Ok(Stored::default());
    }
    let (context, unknown) = {
        let view = admission.view.read().expect("entitlement lock");
        let context = view.context(events, admission.now, wall_ms());
        let mut keys: Vec<(u64, i64)> = context.subscriptions.values().map(|t| (t.id, t.period_start)).collect();
        keys.sort_unstable();
        let unknown: Vec<(u64, i64)> = keys.iter().filter(|(id, start)| !view.held_from_ledger(*id, *start)).copied().collect();
        (context, (unknown, keys))
    };
    // The rows of periods the view has from the ledger exist, unless another replica, a period ahead of this one's
    // view, has cleared the rows of periods before the previous one meanwhile: the next attempt makes them all.
    for attempt in 1..=3 {
        let create = if attempt == 1 { &unknown.0 } else { &unknown.1 };
        if !create.is_empty() {
            create_periods(pool, create).await?;
        }
        if let Some((stored, periods)) = decide(pool, admission, &context, events).await? {
            admission.view.write().expect("entitlement lock").apply_ledger(periods, admission.catalog, admission.decimals);
            return Ok(stored);
        }
        tracing::debug!(attempt, "an admission period row was cleared meanwhile; admitting again");
    }
    Err(KeeperError::Database(sqlx::Error::RowNotFound))
}

/// Makes the rows of `periods` that do not exist yet (committed at once, so that no lock is held meanwhile).
async fn create_periods(pool: &PgPool, periods: &[(u64, i64)]) -> Result<(), KeeperError> {
    let (ids, starts) = columns(periods);
    sqlx::query(
        "INSERT INTO keeper.admission_periods (subscription_id, period_start)
         SELECT * FROM UNNEST($1::BIGINT[], $2::BIGINT[]) ORDER BY 1, 2
         ON CONFLICT DO NOTHING",
    )
    .bind(&ids)
    .bind(&starts)
    .execute(pool)
    .await?;
    Ok(())
}

/// The transaction: insert, lock, judge, write. `None` when a period row was missing (nothing is stored).
async fn decide(
    pool: &PgPool,
    admission: &Admission<'_>,
    context: &Context,
    events: &[&UsageEvent],
) -> Result<Option<(Stored, Vec<LedgerPeriod>)>, KeeperError> {
    let mut tx = pool.begin().await?;
    let mut inserted = insert_events(&mut tx, events).await?;
    let new: Vec<(usize, &UsageEvent)> = events.iter().enumerate().filter(|(_, e)| inserted.contains(&e.event_id)).map(|(i, e)| (i, *e)).collect();
    // The periods the new events count against, and every live subscription's of their wallets.
    let mut needed: BTreeSet<(u64, i64)> = BTreeSet::new();
    let mut wallets: Vec<Address> = Vec::new();
    for (_, event) in &new {
        let terms = &context.subscriptions[&event.subscription_id];
        if terms.counts(event) {
            needed.insert((terms.id, terms.period_start));
            if !wallets.contains(&terms.wallet) {
                wallets.push(terms.wallet);
            }
        }
    }
    for wallet in &wallets {
        for id in &context.wallets[wallet].live {
            needed.insert((*id, context.subscriptions[id].period_start));
        }
    }
    let mut stored = Stored { inserted: HashSet::new(), refusals: vec![None; events.len()] };
    if needed.is_empty() {
        tx.commit().await?;
        stored.inserted = inserted;
        return Ok(Some((stored, Vec::new())));
    }
    let keys: Vec<(u64, i64)> = needed.into_iter().collect();
    let locked = lock_periods(&mut tx, &keys).await?;
    if locked.len() < keys.len() {
        tx.rollback().await?;
        return Ok(None);
    }
    let unready: Vec<(u64, i64)> = locked.iter().filter(|(_, _, ready, _)| !ready).map(|(id, start, _, _)| (*id, *start)).collect();
    if !unready.is_empty() {
        sum_into_ledger(&mut tx, &unready, &inserted).await?;
    }
    let base = read_usage(&mut tx, &keys).await?;

    let judged_context = Context {
        subscriptions: keys.iter().map(|(id, _)| (*id, context.subscriptions[id].clone())).collect(),
        wallets: wallets.iter().map(|w| (*w, context.wallets[w].clone())).collect(),
    };
    let new_events: Vec<&UsageEvent> = new.iter().map(|(_, e)| *e).collect();
    let judged = admission::judge(&judged_context, base.clone(), &new_events, admission.catalog, admission.decimals);
    let mut refused: Vec<&str> = Vec::new();
    for ((position, event), refusal) in new.iter().zip(judged.refusals) {
        if refusal.is_some() {
            refused.push(&event.event_id);
            inserted.remove(&event.event_id);
        }
        stored.refusals[*position] = refusal;
    }
    if !refused.is_empty() {
        sqlx::query("DELETE FROM keeper.usage_events WHERE event_id = ANY($1)").bind(&refused).execute(&mut *tx).await?;
    }
    // Periods summed from their events just now are written too, with their estimate.
    let mut written = judged.usage;
    for (id, _) in &unready {
        if !written.contains_key(id) {
            written.insert(*id, (base.get(id).cloned().unwrap_or_default(), judged.estimates.get(id).copied().unwrap_or(0)));
        }
    }
    let versions = write_usage(&mut tx, &keys, &written).await?;
    tx.commit().await?;
    stored.inserted = inserted;

    let mut base = base;
    let periods = keys
        .iter()
        .zip(&locked)
        .map(|((id, start), (_, _, _, version))| LedgerPeriod {
            subscription_id: *id,
            period_start: *start,
            version: versions.get(id).copied().unwrap_or(*version),
            usage: written.remove(id).map(|(usage, _)| usage).or_else(|| base.remove(id)).unwrap_or_default(),
        })
        .collect();
    Ok(Some((stored, periods)))
}

/// Inserts the events whose ids are new, in one statement and in `event_id` order; returns the ids inserted.
async fn insert_events(tx: &mut Transaction<'_, Postgres>, events: &[&UsageEvent]) -> Result<HashSet<String>, KeeperError> {
    let mut ids = Vec::with_capacity(events.len());
    let mut hashes = Vec::with_capacity(events.len());
    let mut subscriptions = Vec::with_capacity(events.len());
    let mut models = Vec::with_capacity(events.len());
    let mut meters = Vec::with_capacity(events.len());
    let mut quantities = Vec::with_capacity(events.len());
    let mut times = Vec::with_capacity(events.len());
    let mut properties: Vec<Option<&Value>> = Vec::with_capacity(events.len());
    for event in events {
        ids.push(event.event_id.as_str());
        hashes.push(event.payload_hash.as_slice());
        subscriptions.push(event.subscription_id as i64);
        models.push(event.model.as_str());
        meters.push(event.meter.as_str());
        quantities.push(event.quantity);
        times.push(event.occurred_at_ms);
        properties.push(event.properties.as_ref());
    }
    let inserted: Vec<String> = sqlx::query_scalar(
        "INSERT INTO keeper.usage_events (event_id, payload_hash, subscription_id, model_id, meter, quantity, occurred_at_ms, properties)
         SELECT * FROM UNNEST($1::TEXT[], $2::BYTEA[], $3::BIGINT[], $4::TEXT[], $5::TEXT[], $6::NUMERIC[], $7::BIGINT[], $8::JSONB[])
         ORDER BY 1
         ON CONFLICT (event_id) DO NOTHING
         RETURNING event_id",
    )
    .bind(&ids)
    .bind(&hashes)
    .bind(&subscriptions)
    .bind(&models)
    .bind(&meters)
    .bind(&quantities)
    .bind(&times)
    .bind(&properties)
    .fetch_all(&mut **tx)
    .await?;
    Ok(inserted.into_iter().collect())
}

/// Locks the rows of `periods` (sorted) in that order; returns (id, start, ready, version) of those found.
async fn lock_periods(tx: &mut Transaction<'_, Postgres>, periods: &[(u64, i64)]) -> Result<Vec<(u64, i64, bool, i64)>, KeeperError> {
    let (ids, starts) = columns(periods);
    let rows: Vec<(i64, i64, bool, i64)> = sqlx::query_as(
        "SELECT p.subscription_id, p.period_start, p.ready, p.version
         FROM keeper.admission_periods p
         JOIN UNNEST($1::BIGINT[], $2::BIGINT[]) AS k(id, start) ON p.subscription_id = k.id AND p.period_start = k.start
         ORDER BY p.subscription_id, p.period_start
         FOR UPDATE OF p",
    )
    .bind(&ids)
    .bind(&starts)
    .fetch_all(&mut **tx)
    .await?;
    Ok(rows.into_iter().map(|(id, start, ready, version)| (id as u64, start, ready, version)).collect())
}

/// Sums the stored events of `periods` (locked, met for the first time) into the ledger, leaving out the events
/// this transaction inserted (they are judged, not summed); clears the rows of the subscriptions' periods before the
/// previous one, skipping any another transaction holds.
async fn sum_into_ledger(tx: &mut Transaction<'_, Postgres>, periods: &[(u64, i64)], inserted: &HashSet<String>) -> Result<(), KeeperError> {
    let (ids, starts) = columns(periods);
    let own: Vec<&str> = inserted.iter().map(String::as_str).collect();
    sqlx::query(
        "WITH summed AS (
             INSERT INTO keeper.admission_usage (subscription_id, period_start, model_id, meter, quantity, latest_ms)
             SELECT e.subscription_id, k.start, e.model_id, e.meter, SUM(e.quantity), MAX(e.occurred_at_ms)
             FROM UNNEST($1::BIGINT[], $2::BIGINT[]) AS k(id, start)
             JOIN keeper.usage_events e ON e.subscription_id = k.id AND e.occurred_at_ms >= k.start * 1000
             WHERE e.close_id IS NULL AND e.event_id NOT IN (SELECT UNNEST($3::TEXT[]))
             GROUP BY 1, 2, 3, 4
         )
         UPDATE keeper.admission_periods p SET ready = TRUE
         FROM UNNEST($1::BIGINT[], $2::BIGINT[]) AS k(id, start)
         WHERE p.subscription_id = k.id AND p.period_start = k.start",
    )
    .bind(&ids)
    .bind(&starts)
    .bind(&own)
    .execute(&mut **tx)
    .await?;
    sqlx::query(
        "DELETE FROM keeper.admission_periods WHERE (subscription_id, period_start) IN (
             SELECT o.subscription_id, o.period_start
             FROM keeper.admission_periods o
             JOIN UNNEST($1::BIGINT[], $2::BIGINT[]) AS k(id, start) ON o.subscription_id = k.id
             WHERE o.period_start < (SELECT MAX(q.period_start) FROM keeper.admission_periods q
                                     WHERE q.subscription_id = k.id AND q.period_start < k.start)
             FOR UPDATE OF o SKIP LOCKED
         )",
    )
    .bind(&ids)
    .bind(&starts)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// The usage held for `periods`, per subscription.
async fn read_usage(tx: &mut Transaction<'_, Postgres>, periods: &[(u64, i64)]) -> Result<HashMap<u64, Aggregates>, KeeperError> {
    let (ids, starts) = columns(periods);
    let rows: Vec<(i64, String, String, Decimal, i64)> = sqlx::query_as(
        "SELECT u.subscription_id, u.model_id, u.meter, u.quantity, u.latest_ms
         FROM keeper.admission_usage u
         JOIN UNNEST($1::BIGINT[], $2::BIGINT[]) AS k(id, start) ON u.subscription_id = k.id AND u.period_start = k.start",
    )
    .bind(&ids)
    .bind(&starts)
    .fetch_all(&mut **tx)
    .await?;
    let mut usage: HashMap<u64, Aggregates> = HashMap::new();
    for (id, model, meter, quantity, latest) in rows {
        usage.entry(id as u64).or_default().insert((model, meter), (quantity, latest));
    }
    Ok(usage)
}

/// Writes the usage of the periods that admitted some, with their estimated overage, and moves their versions on;
/// returns the new version per subscription.
async fn write_usage(
    tx: &mut Transaction<'_, Postgres>,
    periods: &[(u64, i64)],
    usage: &HashMap<u64, (Aggregates, u128)>,
) -> Result<HashMap<u64, i64>, KeeperError> {
    if usage.is_empty() {
        return Ok(HashMap::new());
    }
    let start_of: HashMap<u64, i64> = periods.iter().copied().collect();
    let (mut ids, mut starts, mut models, mut meters, mut quantities, mut latest) = (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut period_ids, mut period_starts, mut overages) = (Vec::new(), Vec::new(), Vec::new());
    for (id, (aggregates, overage)) in usage {
        let start = start_of[id];
        for ((model, meter), (quantity, at)) in aggregates {
            ids.push(*id as i64);
            starts.push(start);
            models.push(model.as_str());
            meters.push(meter.as_str());
            quantities.push(*quantity);
            latest.push(*at);
        }
        period_ids.push(*id as i64);
        period_starts.push(start);
        overages.push(overage.to_string());
    }
    let rows: Vec<(i64, i64)> = sqlx::query_as(
        "WITH put AS (
             INSERT INTO keeper.admission_usage (subscription_id, period_start, model_id, meter, quantity, latest_ms)
             SELECT * FROM UNNEST($1::BIGINT[], $2::BIGINT[], $3::TEXT[], $4::TEXT[], $5::NUMERIC[], $6::BIGINT[])
             ON CONFLICT (subscription_id, period_start, model_id, meter)
             DO UPDATE SET quantity = EXCLUDED.quantity, latest_ms = EXCLUDED.latest_ms
         )
         UPDATE keeper.admission_periods p SET version = p.version + 1, overage = k.overage::NUMERIC
         FROM UNNEST($7::BIGINT[], $8::BIGINT[], $9::TEXT[]) AS k(id, start, overage)
         WHERE p.subscription_id = k.id AND p.period_start = k.start
         RETURNING p.subscription_id, p.version",
    )
    .bind(&ids)
    .bind(&starts)
    .bind(&models)
    .bind(&meters)
    .bind(&quantities)
    .bind(&latest)
    .bind(&period_ids)
    .bind(&period_starts)
    .bind(&overages)
    .fetch_all(&mut **tx)
    .await?;
    Ok(rows.into_iter().map(|(id, version)| (id as u64, version)).collect())
}
