//! The admission ledger: usage that adds overage is admitted for good in Postgres, in the transaction that stores
//! it, so that concurrent batches and `serve` replicas sharing one database judge on the same figures.
//!
//! Each open period that has admitted usage has a row in `keeper.admission_periods` holding its usage so far per
//! model and meter. The row is made (committed at once, with the usage of any events stored for the period before
//! it existed) when the period's first batch arrives. A batch's transaction then
//!
//! 1. inserts its new events (`ON CONFLICT DO NOTHING`, in `event_id` order, so that two batches holding the same
//!    new ids never wait on each other crosswise);
//! 2. locks the rows of the periods those events count against and, when funds are judged, of every live
//!    subscription of their wallets (whose periods owe against the same funds), `FOR UPDATE` in
//!    `(subscription_id, period_start)` order, so that deadlocks cannot form. The usage is read by that same
//!    statement: a row locked after a wait is read again as the transaction waited for committed it;
//! 3. judges the new events with [`super::admission::judge`] on that usage, deletes the refused ones, writes the
//!    usage back and moves each period's version on; then commits.
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
use serde_json::{Value, json};
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

/// A period's usage as the ledger stores it: `[[model, meter, "quantity", latest_ms], ...]`, in key order.
fn usage_json(usage: &Aggregates) -> Value {
    let mut entries: Vec<(&(String, String), &(Decimal, i64))> = usage.iter().collect();
    entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
    Value::Array(entries.into_iter().map(|((model, meter), (quantity, latest))| json!([model, meter, quantity.to_string(), latest])).collect())
}

/// A period's usage read back from the ledger.
fn usage_from_json(id: i64, value: Value) -> Result<Aggregates, KeeperError> {
    let bad = |why: String| KeeperError::Database(sqlx::Error::Decode(format!("keeper.admission_periods.usage of subscription {id}: {why}").into()));
    let entries: Vec<(String, String, String, i64)> = serde_json::from_value(value).map_err(|e| bad(e.to_string()))?;
    entries
        .into_iter()
        .map(|(model, meter, quantity, latest)| {
            let quantity = Decimal::from_str_exact(&quantity).map_err(|e| bad(format!("quantity `{quantity}`: {e}")))?;
            Ok(((model, meter), (quantity, latest)))
        })
        .collect()
}

/// Reads the open usage of `targets` (subscription, period start): the ledger's figures where it holds the period,
/// else the sums of the period's stored events.
pub async fn load_open_usage(pool: &PgPool, targets: &[(u64, i64)]) -> Result<OpenUsageRead, KeeperError> {
    if targets.is_empty() {
        return Ok(OpenUsageRead::default());
    }
    let (ids, starts) = columns(targets);
    let rows: Vec<(i64, i64, i64, Value)> = sqlx::query_as(
        "SELECT p.subscription_id, p.period_start, p.version, p.usage
         FROM UNNEST($1::BIGINT[], $2::BIGINT[]) AS k(id, start)
         JOIN keeper.admission_periods p ON p.subscription_id = k.id AND p.period_start = k.start",
    )
    .bind(&ids)
    .bind(&starts)
    .fetch_all(pool)
    .await?;
    let mut ledger = Vec::with_capacity(rows.len());
    for (id, start, version, usage) in rows {
        ledger.push(LedgerPeriod { subscription_id: id as u64, period_start: start, version, usage: usage_from_json(id, usage)? });
    }
    let held: HashSet<(u64, i64)> = ledger.iter().map(|p| (p.subscription_id, p.period_start)).collect();
    let others: Vec<(u64, i64)> = targets.iter().filter(|key| !held.contains(key)).copied().collect();
    let summed = sum_events(pool, &others).await?;
    Ok(OpenUsageRead { ledger, summed })
}

/// The usage of the `periods` summed from their stored events.
async fn sum_events(pool: &PgPool, periods: &[(u64, i64)]) -> Result<Vec<OpenUsageRow>, KeeperError> {
    if periods.is_empty() {
        return Ok(Vec::new());
    }
    let (ids, starts) = columns(periods);
    let starts_ms: Vec<i64> = starts.iter().map(|s| s.saturating_mul(1000)).collect();
    // One index lookup per period (most have no events at all): a join would read every open event instead.
    Ok(sqlx::query_as(
        "SELECT p.id, s.model_id, s.meter, s.quantity, s.latest
         FROM UNNEST($1::BIGINT[], $2::BIGINT[]) AS p(id, start_ms)
         CROSS JOIN LATERAL (
             SELECT e.model_id, e.meter, SUM(e.quantity) AS quantity, MAX(e.occurred_at_ms) AS latest
             FROM keeper.usage_events e
             -- An open period's events are never closed yet; saying so lets the partial index skip closed history.
             WHERE e.subscription_id = p.id AND e.occurred_at_ms >= p.start_ms AND e.close_id IS NULL
             GROUP BY 1, 2
         ) s",
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
    let (context, keys, unknown) = {
        let view = admission.view.read().expect("entitlement lock");
        let context = view.context(events, admission.now, wall_ms());
        let mut keys: Vec<(u64, i64)> = context.subscriptions.values().map(|t| (t.id, t.period_start)).collect();
        keys.sort_unstable();
        let unknown: Vec<(u64, i64)> = keys.iter().filter(|(id, start)| !view.held_from_ledger(*id, *start)).copied().collect();
        (context, keys, unknown)
    };
    // The rows of periods the view has from the ledger exist, unless another replica, a period ahead of this one's
    // view, has cleared the rows of periods before the previous one meanwhile: the next attempt makes them all.
    for attempt in 1..=3 {
        let create = if attempt == 1 { &unknown } else { &keys };
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

/// Makes the rows of `periods` that do not exist yet, each with the usage of the events already stored for its
/// period (there are none unless a keeper before the ledger stored them: every later insert of the period's events
/// waits for its row), committed at once so that no lock is held meanwhile; clears the rows of those
/// subscriptions' periods before the previous one, skipping any a transaction holds.
async fn create_periods(pool: &PgPool, periods: &[(u64, i64)]) -> Result<(), KeeperError> {
    let (ids, starts) = columns(periods);
    sqlx::query(
        "WITH made AS (
             INSERT INTO keeper.admission_periods (subscription_id, period_start, usage)
             SELECT k.id, k.start, COALESCE(
                 (SELECT jsonb_agg(jsonb_build_array(s.model_id, s.meter, s.quantity::TEXT, s.latest) ORDER BY s.model_id, s.meter)
                  FROM (SELECT e.model_id, e.meter, SUM(e.quantity) AS quantity, MAX(e.occurred_at_ms) AS latest
                        FROM keeper.usage_events e
                        WHERE e.subscription_id = k.id AND e.occurred_at_ms >= k.start * 1000 AND e.close_id IS NULL
                        GROUP BY 1, 2) s),
                 '[]'::JSONB)
             FROM UNNEST($1::BIGINT[], $2::BIGINT[]) AS k(id, start)
             ORDER BY 1, 2
             ON CONFLICT DO NOTHING
             RETURNING subscription_id, period_start
         )
         DELETE FROM keeper.admission_periods WHERE (subscription_id, period_start) IN (
             SELECT o.subscription_id, o.period_start
             FROM keeper.admission_periods o JOIN made m ON o.subscription_id = m.subscription_id
             WHERE o.period_start < (SELECT MAX(q.period_start) FROM keeper.admission_periods q
                                     WHERE q.subscription_id = m.subscription_id AND q.period_start < m.period_start)
             FOR UPDATE OF o SKIP LOCKED
         )",
    )
    .bind(&ids)
    .bind(&starts)
    .execute(pool)
    .await?;
    Ok(())
}

/// The transaction: insert, lock and read, judge, write. `None` when a period row was missing (nothing is stored).
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
    let mut base: HashMap<u64, Aggregates> = HashMap::with_capacity(locked.len());
    let mut versions: HashMap<u64, i64> = HashMap::with_capacity(locked.len());
    for (id, _, version, usage) in locked {
        versions.insert(id, version);
        base.insert(id, usage);
    }

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
    // The periods that admitted usage, and those never written since they were made (their estimate is recorded).
    let mut written = judged.usage;
    for (id, version) in &versions {
        if *version == 0 && !written.contains_key(id) {
            written.insert(*id, (base.get(id).cloned().unwrap_or_default(), judged.estimates.get(id).copied().unwrap_or(0)));
        }
    }
    versions.extend(write_usage(&mut tx, &keys, &written).await?);
    tx.commit().await?;
    stored.inserted = inserted;

    let periods = keys
        .iter()
        .map(|(id, start)| LedgerPeriod {
            subscription_id: *id,
            period_start: *start,
            version: versions[id],
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

/// Locks the rows of `periods` (sorted) in that order and reads them; returns (id, start, version, usage) of those
/// found.
async fn lock_periods(tx: &mut Transaction<'_, Postgres>, periods: &[(u64, i64)]) -> Result<Vec<(u64, i64, i64, Aggregates)>, KeeperError> {
    let (ids, starts) = columns(periods);
    let rows: Vec<(i64, i64, i64, Value)> = sqlx::query_as(
        "SELECT p.subscription_id, p.period_start, p.version, p.usage
         FROM keeper.admission_periods p
         JOIN UNNEST($1::BIGINT[], $2::BIGINT[]) AS k(id, start) ON p.subscription_id = k.id AND p.period_start = k.start
         ORDER BY p.subscription_id, p.period_start
         FOR UPDATE OF p",
    )
    .bind(&ids)
    .bind(&starts)
    .fetch_all(&mut **tx)
    .await?;
    rows.into_iter().map(|(id, start, version, usage)| Ok((id as u64, start, version, usage_from_json(id, usage)?))).collect()
}

/// Writes the usage of `usage`'s periods with their estimated overage, and moves their versions on; returns the
/// new version per subscription.
async fn write_usage(
    tx: &mut Transaction<'_, Postgres>,
    periods: &[(u64, i64)],
    usage: &HashMap<u64, (Aggregates, u128)>,
) -> Result<HashMap<u64, i64>, KeeperError> {
    if usage.is_empty() {
        return Ok(HashMap::new());
    }
    let start_of: HashMap<u64, i64> = periods.iter().copied().collect();
    let (mut ids, mut starts, mut usages, mut overages) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (id, (aggregates, overage)) in usage {
        ids.push(*id as i64);
        starts.push(start_of[id]);
        usages.push(usage_json(aggregates));
        overages.push(overage.to_string());
    }
    let rows: Vec<(i64, i64)> = sqlx::query_as(
        "UPDATE keeper.admission_periods p SET version = p.version + 1, usage = k.usage, overage = k.overage::NUMERIC
         FROM UNNEST($1::BIGINT[], $2::BIGINT[], $3::JSONB[], $4::TEXT[]) AS k(id, start, usage, overage)
         WHERE p.subscription_id = k.id AND p.period_start = k.start
         RETURNING p.subscription_id, p.version",
    )
    .bind(&ids)
    .bind(&starts)
    .bind(&usages)
    .bind(&overages)
    .fetch_all(&mut **tx)
    .await?;
    Ok(rows.into_iter().map(|(id, version)| (id as u64, version)).collect())
}
