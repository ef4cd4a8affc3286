//! What the operator sells: models, their meters, the split that earns from each model over time, the price book
//! and the usage each plan includes. Every change is a new row with an effective time; history is never rewritten.

use std::collections::{BTreeMap, HashMap};

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use sqlx::PgPool;

use crate::{
    KeeperError,
    metering::pricing::{Allowance, Catalog, Price, Timeline},
};

/// Largest quantity scale a meter may declare.
pub const MAX_METER_SCALE: u32 = 6;

/// A model with its meters, as registered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewModel {
    /// Model id: lowercase letters, digits and `._:/-`, at most 64 characters.
    pub model_id: String,
    /// Name shown in statements.
    pub display_name: String,
    /// The on-chain split that earns from it.
    pub split_id: u64,
    /// From when the split applies (Unix seconds; 0 = always).
    #[serde(default)]
    pub effective_at: i64,
    /// Its meters.
    pub meters: Vec<NewMeter>,
}

/// A meter of a model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewMeter {
    /// Meter name: lowercase letters, digits and `_`, starting with a letter.
    pub meter: String,
    /// Decimal places a quantity may carry (0 = whole units).
    #[serde(default)]
    pub scale: u32,
}

/// A price version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewPrice {
    /// Model id.
    pub model_id: String,
    /// Meter name.
    pub meter: String,
    /// Token units per `per_units`.
    pub unit_price: Decimal,
    /// Units the price is for.
    #[serde(default = "one")]
    pub per_units: Decimal,
    /// From when it applies (Unix seconds).
    pub effective_at: i64,
}

fn one() -> Decimal {
    Decimal::ONE
}

/// Usage included in a plan, from a time on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewAllowance {
    /// The on-chain plan id.
    pub plan_id: u64,
    /// From when it applies (a period uses the version in force at its start).
    pub effective_at: i64,
    /// Units per meter.
    #[serde(default)]
    pub units: BTreeMap<String, Decimal>,
    /// Value in token units.
    #[serde(default)]
    pub value: Decimal,
}

fn invalid(field: &str, reason: impl Into<String>) -> KeeperError {
    KeeperError::Invalid { field: field.to_owned(), reason: reason.into() }
}

/// Checks a model id's form.
pub fn check_model_id(id: &str) -> Result<(), KeeperError> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id.bytes().next().is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        && id.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._:/-".contains(&b));
    if ok { Ok(()) } else { Err(invalid("model_id", format!("`{id}` is not 1-64 of a-z 0-9 . _ : / - starting with a letter or digit"))) }
}

/// Checks a meter name's form.
pub fn check_meter(meter: &str) -> Result<(), KeeperError> {
    let ok = !meter.is_empty()
        && meter.len() <= 64
        && meter.bytes().next().is_some_and(|b| b.is_ascii_lowercase())
        && meter.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if ok { Ok(()) } else { Err(invalid("meter", format!("`{meter}` is not 1-64 of a-z 0-9 _ starting with a letter"))) }
}

fn check_time(field: &str, t: i64) -> Result<(), KeeperError> {
    if (0..=253_402_300_799).contains(&t) { Ok(()) } else { Err(invalid(field, format!("{t} is not a Unix time in seconds"))) }
}

async fn check_split_exists(pool: &PgPool, chain_id: u64, split_id: u64) -> Result<(), KeeperError> {
    let exists: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM chain.split_versions_live WHERE chain_id = $1 AND split_id = $2::NUMERIC)",
    )
    .bind(chain_id as i64)
    .bind(split_id.to_string())
    .fetch_one(pool)
    .await?;
    if exists { Ok(()) } else { Err(invalid("split_id", format!("split {split_id} is not on chain {chain_id} (as indexed)"))) }
}

/// Registers a model with its meters and first split (from `effective_at`, which may be any time: a new model
/// has earned nothing, so its first mapping moves no one's revenue and needs no notice).
pub async fn add_model(pool: &PgPool, chain_id: u64, model: &NewModel) -> Result<(), KeeperError> {
    check_model_id(&model.model_id)?;
    let name = model.display_name.trim();
    if name.is_empty() || name.len() > 200 {
        return Err(invalid("display_name", "must be 1-200 characters"));
    }
    if model.meters.is_empty() {
        return Err(invalid("meters", "a model needs at least one meter"));
    }
    for meter in &model.meters {
        check_meter(&meter.meter)?;
        if meter.scale > MAX_METER_SCALE {
            return Err(invalid("scale", format!("{} for meter `{}` is above {MAX_METER_SCALE}", meter.scale, meter.meter)));
        }
    }
    check_time("effective_at", model.effective_at)?;
    check_split_exists(pool, chain_id, model.split_id).await?;

    let mut tx = pool.begin().await?;
    let inserted = sqlx::query("INSERT INTO keeper.models (model_id, display_name) VALUES ($1, $2) ON CONFLICT DO NOTHING")
        .bind(&model.model_id)
        .bind(name)
        .execute(&mut *tx)
        .await?;
    if inserted.rows_affected() == 0 {
        return Err(invalid("model_id", format!("`{}` is already registered", model.model_id)));
    }
    for meter in &model.meters {
        sqlx::query("INSERT INTO keeper.meters (model_id, meter, scale) VALUES ($1, $2, $3)")
            .bind(&model.model_id)
            .bind(&meter.meter)
            .bind(meter.scale as i16)
            .execute(&mut *tx)
            .await
            .map_err(|e| unique_violation(e, "meter", &meter.meter))?;
    }
    // The first mapping needs no notice: nothing has earned under the model yet, so no one's revenue moves.
    insert_split(&mut tx, &model.model_id, model.effective_at, model.split_id, None, 0).await?;
    tx.commit().await?;
    Ok(())
}

/// Adds a meter to a registered model (meters are never removed: accepted usage refers to them).
pub async fn add_meter(pool: &PgPool, model_id: &str, meter: &NewMeter) -> Result<(), KeeperError> {
    check_meter(&meter.meter)?;
    if meter.scale > MAX_METER_SCALE {
        return Err(invalid("scale", format!("{} for meter `{}` is above {MAX_METER_SCALE}", meter.scale, meter.meter)));
    }
    let mut tx = pool.begin().await?;
    ensure_model(&mut tx, model_id).await?;
    sqlx::query("INSERT INTO keeper.meters (model_id, meter, scale) VALUES ($1, $2, $3)")
        .bind(model_id)
        .bind(&meter.meter)
        .bind(meter.scale as i16)
        .execute(&mut *tx)
        .await
        .map_err(|e| unique_violation(e, "meter", &meter.meter))?;
    tx.commit().await?;
    Ok(())
}

/// The notice a change of a model's split mapping gives: the escrow's split-change delay, counted from when the
/// change is recorded. Creators learn of a change to their split that long before it applies; a mapping moves
/// a model's revenue between splits just as much, so it waits the same.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SplitNotice {
    /// Now, in the keeper's time (chain time, Unix seconds): when the change is recorded.
    pub now: i64,
    /// `SplitEscrow.splitChangeDelay()`, seconds.
    pub delay_secs: u64,
}

impl SplitNotice {
    /// The earliest `effective_at` a change recorded now may have.
    pub fn earliest(&self) -> i64 {
        self.now.saturating_add(i64::try_from(self.delay_secs).unwrap_or(i64::MAX))
    }
}

/// Points a model at another split from `effective_at` on, which must be at least the notice after now (a
/// model's first mapping is given at [`add_model`], with no notice: the model has earned nothing yet).
pub async fn set_model_split(pool: &PgPool, chain_id: u64, model_id: &str, split_id: u64, effective_at: i64, notice: SplitNotice) -> Result<(), KeeperError> {
    check_time("effective_at", effective_at)?;
    if effective_at < notice.earliest() {
        return Err(invalid(
            "effective_at",
            format!(
                "{effective_at} is too early: a split mapping takes effect no earlier than the escrow's split-change delay ({} s) after it is recorded; the earliest allowed now is {} ({})",
                notice.delay_secs,
                notice.earliest(),
                crate::clock::show_ms(notice.earliest().saturating_mul(1000))
            ),
        ));
    }
    check_split_exists(pool, chain_id, split_id).await?;
    let mut tx = pool.begin().await?;
    ensure_model(&mut tx, model_id).await?;
    refuse_repricing(&mut tx, model_id, None, effective_at).await?;
    insert_split(&mut tx, model_id, effective_at, split_id, Some(notice.now), notice.delay_secs).await?;
    tx.commit().await?;
    Ok(())
}

/// One entry of a model's published split mapping history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SplitMapping {
    /// The split that earns from the model.
    pub split_id: u64,
    /// From when (Unix seconds, chain time).
    pub effective_at: i64,
    /// When the mapping was recorded (Unix seconds, the keeper's time).
    pub recorded_at: i64,
    /// The notice it gave: the split-change delay it was checked against (0 for a model's first mapping and for
    /// mappings recorded before notice was required).
    pub notice_secs: u64,
}

/// A model's split mapping history, oldest first; `None` for an unknown model.
pub async fn split_history(pool: &PgPool, model_id: &str) -> Result<Option<Vec<SplitMapping>>, KeeperError> {
    // One statement, so the model and its rows are read at one moment.
    type Row = (Option<String>, Option<i64>, Option<i64>, Option<i64>);
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT s.split_id::TEXT, s.effective_at, s.recorded_time, s.notice_secs
         FROM keeper.models m LEFT JOIN keeper.model_splits s USING (model_id)
         WHERE m.model_id = $1 ORDER BY s.effective_at",
    )
    .bind(model_id)
    .fetch_all(pool)
    .await?;
    if rows.is_empty() {
        return Ok(None);
    }
    rows.into_iter()
        .filter_map(|(split, effective_at, recorded_at, notice)| Some((split?, effective_at?, recorded_at?, notice?)))
        .map(|(split, effective_at, recorded_at, notice)| {
            Ok(SplitMapping {
                split_id: crate::store::numeric_u64(&split, "split_id")?,
                effective_at,
                recorded_at,
                notice_secs: u64::try_from(notice).unwrap_or(0),
            })
        })
        .collect::<Result<Vec<_>, KeeperError>>()
        .map(Some)
}

async fn ensure_model(tx: &mut sqlx::PgConnection, model_id: &str) -> Result<(), KeeperError> {
    let known: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM keeper.models WHERE model_id = $1)")
        .bind(model_id)
        .fetch_one(&mut *tx)
        .await?;
    if known { Ok(()) } else { Err(invalid("model_id", format!("unknown model `{model_id}`"))) }
}

/// Records a mapping at `now` (the keeper's time; `None`: the database's clock) with the notice it gave.
async fn insert_split(
    tx: &mut sqlx::PgConnection,
    model_id: &str,
    effective_at: i64,
    split_id: u64,
    now: Option<i64>,
    notice_secs: u64,
) -> Result<(), KeeperError> {
    sqlx::query(
        "INSERT INTO keeper.model_splits (model_id, effective_at, split_id, recorded_time, notice_secs)
         VALUES ($1, $2, $3::NUMERIC, COALESCE($4, EXTRACT(EPOCH FROM now())::BIGINT), $5)",
    )
    .bind(model_id)
    .bind(effective_at)
    .bind(split_id.to_string())
    .bind(now)
    .bind(i64::try_from(notice_secs).unwrap_or(i64::MAX))
    .execute(&mut *tx)
    .await
    .map_err(|e| unique_violation(e, "effective_at", &effective_at.to_string()))?;
    Ok(())
}

/// A new version may not reach back over usage already accepted: that usage was accepted (and its subscriber
/// told the price) under the version in force then.
async fn refuse_repricing(tx: &mut sqlx::PgConnection, model_id: &str, meter: Option<&str>, effective_at: i64) -> Result<(), KeeperError> {
    let latest: Option<i64> = sqlx::query_scalar(
        "SELECT MAX(occurred_at_ms) FROM keeper.usage_events WHERE model_id = $1 AND ($2::TEXT IS NULL OR meter = $2)",
    )
    .bind(model_id)
    .bind(meter)
    .fetch_one(&mut *tx)
    .await?;
    match latest {
        Some(latest_ms) if latest_ms >= effective_at.saturating_mul(1000) => Err(invalid(
            "effective_at",
            format!(
                "{effective_at} is not after the latest accepted usage of `{model_id}` ({}); a new version takes effect later",
                crate::clock::show_ms(latest_ms)
            ),
        )),
        _ => Ok(()),
    }
}

fn unique_violation(error: sqlx::Error, field: &str, value: &str) -> KeeperError {
    match &error {
        sqlx::Error::Database(db) if db.is_unique_violation() => invalid(field, format!("`{value}` already exists")),
        _ => error.into(),
    }
}

/// Adds a price version.
pub async fn set_price(pool: &PgPool, price: &NewPrice) -> Result<(), KeeperError> {
    if price.unit_price.is_sign_negative() {
        return Err(invalid("unit_price", format!("{} is negative", price.unit_price)));
    }
    if price.per_units <= Decimal::ZERO {
        return Err(invalid("per_units", format!("{} must be positive", price.per_units)));
    }
    check_time("effective_at", price.effective_at)?;
    let mut tx = pool.begin().await?;
    let meter_known: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM keeper.meters WHERE model_id = $1 AND meter = $2)")
        .bind(&price.model_id)
        .bind(&price.meter)
        .fetch_one(&mut *tx)
        .await?;
    if !meter_known {
        return Err(invalid("meter", format!("model `{}` has no meter `{}`", price.model_id, price.meter)));
    }
    refuse_repricing(&mut tx, &price.model_id, Some(&price.meter), price.effective_at).await?;
    sqlx::query("INSERT INTO keeper.prices (model_id, meter, effective_at, unit_price, per_units) VALUES ($1, $2, $3, $4, $5)")
        .bind(&price.model_id)
        .bind(&price.meter)
        .bind(price.effective_at)
        .bind(price.unit_price)
        .bind(price.per_units)
        .execute(&mut *tx)
        .await
        .map_err(|e| unique_violation(e, "effective_at", &price.effective_at.to_string()))?;
    tx.commit().await?;
    Ok(())
}

/// Adds an allowance version for a plan.
pub async fn set_allowance(pool: &PgPool, chain_id: u64, allowance: &NewAllowance) -> Result<(), KeeperError> {
    check_time("effective_at", allowance.effective_at)?;
    let plan_known: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM chain.plans WHERE chain_id = $1 AND plan_id = $2::NUMERIC)")
        .bind(chain_id as i64)
        .bind(allowance.plan_id.to_string())
        .fetch_one(pool)
        .await?;
    if !plan_known {
        return Err(invalid("plan_id", format!("plan {} is not on chain {chain_id} (as indexed)", allowance.plan_id)));
    }
    if allowance.value.is_sign_negative() {
        return Err(invalid("value", format!("{} is negative", allowance.value)));
    }
    let mut tx = pool.begin().await?;
    for (meter, amount) in &allowance.units {
        check_meter(meter)?;
        if amount.is_sign_negative() {
            return Err(invalid("units", format!("{amount} for meter `{meter}` is negative")));
        }
    }
    let rows = allowance.units.iter().map(|(m, a)| (m.as_str(), *a)).chain(std::iter::once(("", allowance.value)));
    for (meter, amount) in rows {
        sqlx::query("INSERT INTO keeper.plan_allowances (plan_id, effective_at, meter, amount) VALUES ($1::NUMERIC, $2, $3, $4)")
            .bind(allowance.plan_id.to_string())
            .bind(allowance.effective_at)
            .bind(meter)
            .bind(amount)
            .execute(&mut *tx)
            .await
            .map_err(|e| unique_violation(e, "effective_at", &allowance.effective_at.to_string()))?;
    }
    tx.commit().await?;
    Ok(())
}

/// A registered model, for listings.
#[derive(Debug, Clone, Serialize)]
pub struct ModelInfo {
    /// Model id.
    pub model_id: String,
    /// Name.
    pub display_name: String,
    /// Meters with their scale.
    pub meters: BTreeMap<String, u32>,
    /// The split history: (effective_at, split id).
    pub splits: Vec<(i64, u64)>,
}

/// Everything the pricing and the ingest need, loaded at once.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Prices and splits.
    pub catalog: Catalog,
    /// Meter scales per (model, meter).
    pub meters: HashMap<(String, String), u32>,
    /// Allowance timeline per plan.
    pub allowances: HashMap<u64, Timeline<Allowance>>,
    /// Models for listings.
    pub models: BTreeMap<String, ModelInfo>,
}

/// Loads the whole catalog.
pub async fn load(pool: &PgPool) -> Result<Snapshot, KeeperError> {
    let mut snapshot = Snapshot::default();
    let models: Vec<(String, String)> = sqlx::query_as("SELECT model_id, display_name FROM keeper.models").fetch_all(pool).await?;
    for (model_id, display_name) in models {
        let info = ModelInfo { model_id: model_id.clone(), display_name, meters: BTreeMap::new(), splits: Vec::new() };
        snapshot.models.insert(model_id, info);
    }
    let meters: Vec<(String, String, i16)> = sqlx::query_as("SELECT model_id, meter, scale FROM keeper.meters").fetch_all(pool).await?;
    for (model, meter, scale) in meters {
        let scale = u32::try_from(scale).unwrap_or(0);
        if let Some(info) = snapshot.models.get_mut(&model) {
            info.meters.insert(meter.clone(), scale);
        }
        snapshot.meters.insert((model, meter), scale);
    }
    let splits: Vec<(String, i64, String)> =
        sqlx::query_as("SELECT model_id, effective_at, split_id::TEXT FROM keeper.model_splits ORDER BY effective_at").fetch_all(pool).await?;
    for (model, at, split) in splits {
        let split = crate::store::numeric_u64(&split, "split_id")?;
        snapshot.catalog.splits.entry(model.clone()).or_default().insert(at, split);
        if let Some(info) = snapshot.models.get_mut(&model) {
            info.splits.push((at, split));
        }
    }
    let prices: Vec<(String, String, i64, Decimal, Decimal)> =
        sqlx::query_as("SELECT model_id, meter, effective_at, unit_price, per_units FROM keeper.prices").fetch_all(pool).await?;
    for (model, meter, effective_at, unit_price, per_units) in prices {
        let price = Price { effective_at, unit_price, per_units };
        snapshot.catalog.prices.entry((model, meter)).or_default().insert(effective_at, price);
    }
    let allowances: Vec<(String, i64, String, Decimal)> =
        sqlx::query_as("SELECT plan_id::TEXT, effective_at, meter, amount FROM keeper.plan_allowances ORDER BY plan_id, effective_at")
            .fetch_all(pool)
            .await?;
    let mut grouped: BTreeMap<(u64, i64), Allowance> = BTreeMap::new();
    for (plan, at, meter, amount) in allowances {
        let entry = grouped.entry((crate::store::numeric_u64(&plan, "plan_id")?, at)).or_default();
        if meter.is_empty() { entry.value = amount } else { entry.units.insert(meter, amount); }
    }
    for ((plan, at), allowance) in grouped {
        snapshot.allowances.entry(plan).or_default().insert(at, allowance);
    }
    Ok(snapshot)
}

impl Snapshot {
    /// The allowance of `plan` for a period starting at `start` (none registered: nothing included).
    pub fn allowance(&self, plan: u64, start: i64) -> Allowance {
        self.allowances.get(&plan).and_then(|t| t.at(start)).cloned().unwrap_or_default()
    }
}
