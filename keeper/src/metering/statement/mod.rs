//! Statements: every priced line that produced money from a subscriber or for a creator, with the price version,
//! the share, the split version and its bps, the amount, the on-chain references and a Merkle proof of the line
//! against its committed root. [`verify`] recomputes each leaf from the line's own fields, checks its proof and
//! the totals, and compares the roots and credits with what the chain recorded (as indexed).
//!
//! A subscriber's amount per line is the line's share of the period as priced (plan fee plus capped overage); each
//! period says what the chain collected (`paid`) and what it did not (`uncollected`, with why, and whether the
//! contract's charge window has closed on it: [`window`]). A creator's amount per line is their part of the split's
//! on-chain credit, divided over the split's lines in the epoch by the lines' amounts with the largest-remainder
//! rule of [`crate::money`], so that it adds up to the credit exactly.

use std::collections::{BTreeMap, HashMap};

use alloy::primitives::{Address, B256};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use sqlx::PgPool;

mod verify;
pub mod window;

pub use verify::{Verification, verify, verify_at};
pub use window::{ChargeClock, ChargePeriod, Chargeable, chargeable};

use crate::{
    KeeperError,
    merkle::MerkleTree,
    money,
    store::{numeric_u64, numeric_u128},
};

/// Whose statement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Party {
    /// A wallet that pays.
    Subscriber,
    /// A split recipient that is paid.
    Creator,
}

/// Which lines.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Scope {
    /// Only this settlement epoch.
    pub epoch: Option<u64>,
    /// Only periods (subscriber) or epochs (creator) ending at or after this time.
    pub from: Option<i64>,
    /// ... and before this time.
    pub to: Option<i64>,
}

/// A statement line: the committed fields of the usage line, and what it means for the party.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatementLine {
    /// Subscription.
    pub subscription_id: u64,
    /// Period.
    pub period_index: u64,
    /// Line number within the period's close.
    pub line_no: u32,
    /// Model id (empty on a fee-only line).
    pub model: String,
    /// Meter.
    pub meter: String,
    /// The price version (its effective time).
    pub price_effective_at: i64,
    /// Price per `per_units`.
    pub unit_price: Decimal,
    /// Units the price is for.
    pub per_units: Decimal,
    /// The split the line earns for.
    pub split_id: u64,
    /// The period the events belonged to, for late events.
    pub adjustment_of: Option<u64>,
    /// Quantity.
    pub quantity: Decimal,
    /// Quantity inside a unit allowance.
    pub included_quantity: Decimal,
    /// Value at list price.
    pub value: Decimal,
    /// Value inside the allowance.
    pub included_value: Decimal,
    /// Overage in base units, before the cap.
    pub overage_amount: String,
    /// The line's share of what the subscriber paid, base units.
    pub attributed: String,
    /// The settlement epoch that carries the line, once gathered.
    pub epoch_id: Option<u64>,
    /// Creator statements: the split version in force at the epoch's end, and the creator's bps in it.
    pub split_version: Option<u64>,
    /// The creator's bps.
    pub bps: Option<u32>,
    /// What the line means for the party, base units: paid (subscriber) or credited (creator).
    pub amount: String,
    /// The root the proof is against: the epoch's root once gathered, else the period's usage root.
    pub root: B256,
    /// The proof.
    pub proof: Vec<B256>,
}

/// A settlement epoch in the statement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EpochRef {
    /// Epoch id = on-chain settlement id.
    pub epoch_id: u64,
    /// The keeper's root.
    pub usage_root: B256,
    /// The settlement transaction, once indexed.
    pub tx_hash: Option<B256>,
}

/// A period of a subscriber statement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeriodRef {
    /// Subscription.
    pub subscription_id: u64,
    /// Period.
    pub period_index: u64,
    /// Start (Unix seconds).
    pub start: i64,
    /// End.
    pub end: i64,
    /// The plan fee collected on chain for the period.
    pub fee: String,
    /// The keeper's overage charge: the period's usage priced over the allowance, capped (what its close asks the
    /// chain to collect, cumulatively). The period's lines add up to `fee + overage_charge`.
    pub overage_charge: String,
    /// What the chain collected for the period: `fee` plus the overage charged on chain (`charged_on_chain`).
    pub paid: String,
    /// The part of `overage_charge` the chain has not collected (`overage_charge` minus `charged_on_chain`), base
    /// units; `None` when it collected all of it. `paid + uncollected = fee + overage_charge`.
    #[serde(default)]
    pub uncollected: Option<String>,
    /// Why `uncollected` was not collected, in words: `charge window closed <RFC 3339> (...)` once the contract
    /// refuses any charge of the period, else that it may still be collected (and until when).
    #[serde(default)]
    pub uncollected_reason: Option<String>,
    /// Whether `uncollected` can never be collected: the period's charge window had closed by the statement's
    /// clock ([`window`]). False while it still may be, and when it could not be judged.
    #[serde(default)]
    pub uncollectable: bool,
    /// The period's usage root.
    pub usage_root: B256,
    /// The usage charge transaction, once indexed.
    pub charge_tx: Option<B256>,
    /// Overage charged on chain so far.
    pub charged_on_chain: Option<String>,
    /// Every usage charge the chain recorded for the period, in order: threshold charges made mid-period (each
    /// with the root of the usage priced until then) and the close's own, with the period's `usage_root`.
    #[serde(default)]
    pub charges: Vec<ChargeRef>,
}

/// One usage charge on chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChargeRef {
    /// Transaction.
    pub tx_hash: B256,
    /// The cumulative overage the keeper asked for, base units.
    pub requested: String,
    /// Collected by this charge, base units.
    pub amount: String,
    /// Charged for the period after it (cumulative), base units.
    pub charged_in_period: String,
    /// The usage root it carried.
    pub usage_root: B256,
    /// A mid-period threshold charge (its root is of the usage priced until then, kept by the keeper), not the
    /// close's own.
    pub threshold: bool,
}

/// A creator's credit from one split in one epoch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreditRef {
    /// Epoch.
    pub epoch_id: u64,
    /// Split.
    pub split_id: u64,
    /// The split's amount in the epoch.
    pub split_amount: String,
    /// The creator's credit by the split's rule.
    pub credit: String,
    /// What the chain credited, once indexed.
    pub credited_on_chain: Option<String>,
}

/// A statement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Statement {
    /// Whose.
    pub party: Party,
    /// The wallet.
    pub address: Address,
    /// The chain.
    pub chain_id: u64,
    /// Token decimals.
    pub decimals: u32,
    /// Which lines.
    pub scope: Scope,
    /// Lines, by epoch, subscription, period and line number.
    pub lines: Vec<StatementLine>,
    /// Total amount over the lines, base units.
    pub total: String,
    /// Subscriber statements: the periods.
    pub periods: Vec<PeriodRef>,
    /// Creator statements: the credits.
    pub credits: Vec<CreditRef>,
    /// The epochs referred to.
    pub epochs: Vec<EpochRef>,
}

#[derive(sqlx::FromRow)]
struct LineRecord {
    close_id: i64,
    subscription_id: i64,
    period_index: i64,
    usage_root: Vec<u8>,
    line_no: i32,
    model_id: String,
    meter: String,
    price_effective_at: i64,
    unit_price: Decimal,
    per_units: Decimal,
    split_id: String,
    adjustment_of: Option<i64>,
    quantity: Decimal,
    included_quantity: Decimal,
    value: Decimal,
    included_value: Decimal,
    overage_amount: String,
    attributed: String,
    leaf: Vec<u8>,
    epoch_id: Option<i64>,
}

struct RawLine {
    close_id: i64,
    close_root: B256,
    line: StatementLine,
    leaf: B256,
}

/// Which lines to load.
enum LineFilter {
    Subscriber(Address),
    Epoch(u64),
}

async fn load_lines(pool: &PgPool, chain_id: u64, filter: LineFilter) -> Result<Vec<RawLine>, KeeperError> {
    let condition = match filter {
        LineFilter::Subscriber(_) => "c.subscriber = $2",
        LineFilter::Epoch(_) => "e.epoch_id = $2",
    };
    let query = sqlx::query_as::<_, LineRecord>(sqlx::AssertSqlSafe(format!(
        "SELECT c.close_id, c.subscription_id, c.period_index, c.usage_root, l.line_no, l.model_id, l.meter,
                l.price_effective_at, l.unit_price, l.per_units, l.split_id::TEXT AS split_id, l.adjustment_of, l.quantity,
                l.included_quantity, l.value, l.included_value, l.overage_amount::TEXT AS overage_amount,
                l.attributed::TEXT AS attributed, l.leaf, e.epoch_id
         FROM keeper.period_closes c JOIN keeper.usage_lines l USING (close_id)
         LEFT JOIN keeper.epoch_closes e USING (close_id)
         WHERE c.chain_id = $1 AND {condition}
         ORDER BY e.epoch_id NULLS LAST, c.subscription_id, c.period_index, l.line_no"
    )))
    .bind(chain_id as i64);
    let rows: Vec<LineRecord> = match filter {
        LineFilter::Subscriber(address) => query.bind(address.to_vec()),
        LineFilter::Epoch(epoch) => query.bind(epoch as i64),
    }
    .fetch_all(pool)
    .await?;
    rows.into_iter()
        .map(|r| {
            let line = StatementLine {
                subscription_id: r.subscription_id as u64,
                period_index: r.period_index as u64,
                line_no: r.line_no as u32,
                split_id: numeric_u64(&r.split_id, "split_id")?,
                model: r.model_id,
                meter: r.meter,
                price_effective_at: r.price_effective_at,
                unit_price: r.unit_price,
                per_units: r.per_units,
                adjustment_of: r.adjustment_of.map(|p| p as u64),
                quantity: r.quantity,
                included_quantity: r.included_quantity,
                value: r.value,
                included_value: r.included_value,
                overage_amount: r.overage_amount,
                attributed: r.attributed,
                epoch_id: r.epoch_id.map(|e| e as u64),
                split_version: None,
                bps: None,
                amount: String::new(),
                root: B256::ZERO,
                proof: Vec::new(),
            };
            Ok(RawLine { close_id: r.close_id, close_root: B256::from_slice(&r.usage_root), line, leaf: B256::from_slice(&r.leaf) })
        })
        .collect()
}

/// Proves each line against its epoch's root (all leaves of the epoch), or its close's root when not gathered yet.
async fn attach_proofs(pool: &PgPool, lines: &mut [RawLine]) -> Result<(), KeeperError> {
    let mut trees: HashMap<(bool, i64), MerkleTree> = HashMap::new();
    for raw in lines.iter_mut() {
        let key = match raw.line.epoch_id {
            Some(epoch) => (true, epoch as i64),
            None => (false, raw.close_id),
        };
        if let std::collections::hash_map::Entry::Vacant(slot) = trees.entry(key) {
            let sql = if key.0 {
                "SELECT l.leaf FROM keeper.usage_lines l JOIN keeper.epoch_closes e USING (close_id) WHERE e.epoch_id = $1"
            } else {
                "SELECT leaf FROM keeper.usage_lines WHERE close_id = $1"
            };
            let leaves: Vec<Vec<u8>> = sqlx::query_scalar(sql).bind(key.1).fetch_all(pool).await?;
            let leaves: Vec<B256> = leaves.iter().map(|l| B256::from_slice(l)).collect();
            slot.insert(MerkleTree::new(&leaves));
        }
        let tree = &trees[&key];
        raw.line.root = tree.root();
        raw.line.proof = tree.proof(raw.leaf).ok_or_else(|| KeeperError::ChainData("a line's leaf is missing from its own tree".into()))?;
        if !key.0 && raw.line.root != raw.close_root {
            return Err(KeeperError::ChainData(format!("close {} root does not match its lines", raw.close_id)));
        }
    }
    Ok(())
}

async fn epoch_refs(pool: &PgPool, chain_id: u64, ids: &[u64]) -> Result<Vec<EpochRef>, KeeperError> {
    let ids: Vec<i64> = ids.iter().map(|i| *i as i64).collect();
    let rows: Vec<(i64, Vec<u8>, Option<Vec<u8>>)> = sqlx::query_as(
        "SELECT e.epoch_id, e.usage_root,
                (SELECT s.tx_hash FROM chain.settlements s WHERE s.chain_id = e.chain_id AND s.settlement_id = e.epoch_id
                 ORDER BY s.block_number DESC LIMIT 1)
         FROM keeper.epochs e WHERE e.chain_id = $1 AND e.epoch_id = ANY($2) ORDER BY e.epoch_id",
    )
    .bind(chain_id as i64)
    .bind(&ids)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(id, root, tx)| EpochRef { epoch_id: id as u64, usage_root: B256::from_slice(&root), tx_hash: tx.map(|t| B256::from_slice(&t)) })
        .collect())
}

fn in_scope(scope: &Scope, epoch: Option<u64>, time: i64) -> bool {
    scope.epoch.is_none_or(|e| epoch == Some(e)) && scope.from.is_none_or(|f| time >= f) && scope.to.is_none_or(|t| time < t)
}

/// The usage charges the chain recorded for a period, in order. The close's own asks for its `overage_charge`;
/// threshold charges ask for less (one unit short of a multiple of the threshold).
async fn chain_charges(pool: &PgPool, chain_id: u64, subscription_id: u64, period_index: u64, close_charge: &str) -> Result<Vec<ChargeRef>, KeeperError> {
    type ChargeRow = (Vec<u8>, String, String, String, Vec<u8>);
    let rows: Vec<ChargeRow> = sqlx::query_as(
        "SELECT tx_hash, cumulative_overage::TEXT, amount::TEXT, charged_in_period::TEXT, usage_root FROM chain.usage_charges
         WHERE chain_id = $1 AND subscription_id = $2::NUMERIC AND period_index = $3::NUMERIC ORDER BY block_number, log_index",
    )
    .bind(chain_id as i64)
    .bind(subscription_id.to_string())
    .bind(period_index.to_string())
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(tx, requested, amount, charged, root)| {
            let usage_root = B256::from_slice(&root);
            let threshold = requested != close_charge;
            ChargeRef { tx_hash: B256::from_slice(&tx), requested, amount, charged_in_period: charged, usage_root, threshold }
        })
        .collect())
}

/// A subscriber's statement drawn without the chain's clock: a period the chain collected less of than its
/// overage charge is said to be uncollectable only where the index alone shows it (the subscription has moved two
/// periods on). See [`subscriber_statement_at`].
pub async fn subscriber_statement(pool: &PgPool, chain_id: u64, decimals: u32, subscriber: Address, scope: Scope) -> Result<Statement, KeeperError> {
    subscriber_statement_at(pool, chain_id, decimals, subscriber, scope, None).await
}

/// A subscriber's statement. Each period's `paid` is what the chain collected (as indexed); a period the chain
/// collected less of than its overage charge has the difference in `uncollected`, judged with the contract's rule
/// ([`window`]) at `clock` (read it at the indexer's cursor: [`ChargeClock::at_cursor`]).
pub async fn subscriber_statement_at(
    pool: &PgPool,
    chain_id: u64,
    decimals: u32,
    subscriber: Address,
    scope: Scope,
    clock: Option<&ChargeClock>,
) -> Result<Statement, KeeperError> {
    type PeriodRow = (i64, i64, i64, i64, String, String, Vec<u8>, Option<i64>, Option<Vec<u8>>, Option<String>, Option<String>);
    let periods: Vec<PeriodRow> = sqlx::query_as(
        "SELECT c.subscription_id, c.period_index, c.period_start, c.period_end, c.fee::TEXT, c.overage_charge::TEXT,
                c.usage_root, e.epoch_id,
                (SELECT u.tx_hash FROM chain.usage_charges u WHERE u.chain_id = c.chain_id
                   AND u.subscription_id = c.subscription_id AND u.period_index = c.period_index
                 ORDER BY u.block_number DESC, u.log_index DESC LIMIT 1),
                (SELECT MAX(u.charged_in_period)::TEXT FROM chain.usage_charges u WHERE u.chain_id = c.chain_id
                   AND u.subscription_id = c.subscription_id AND u.period_index = c.period_index),
                (SELECT f.reason FROM chain.usage_charge_failures f WHERE f.chain_id = c.chain_id
                   AND f.subscription_id = c.subscription_id AND f.period_index = c.period_index
                 ORDER BY f.block_number DESC, f.log_index DESC LIMIT 1)
         FROM keeper.period_closes c LEFT JOIN keeper.epoch_closes e USING (close_id)
         WHERE c.chain_id = $1 AND c.subscriber = $2
         ORDER BY c.subscription_id, c.period_index",
    )
    .bind(chain_id as i64)
    .bind(subscriber.to_vec())
    .fetch_all(pool)
    .await?;
    let mut kept: Vec<(u64, u64)> = Vec::new();
    let mut period_refs = Vec::new();
    for (sub, index, start, end, fee, charge, root, epoch, tx, charged, failure) in periods {
        if !in_scope(&scope, epoch.map(|e| e as u64), end) {
            continue;
        }
        let (sub, index) = (sub as u64, index as u64);
        kept.push((sub, index));
        let fee_amount = numeric_u128(&fee, "fee")?;
        let charge_amount = numeric_u128(&charge, "overage_charge")?;
        let collected = charged.as_deref().map(|c| numeric_u128(c, "charged_in_period")).transpose()?.unwrap_or(0);
        let (mut uncollected, mut uncollected_reason, mut uncollectable) = (None, None, false);
        if collected < charge_amount {
            let period = window::indexed_period(pool, chain_id, sub, index, u64::try_from(end).unwrap_or(0), clock).await?;
            let mut why = match chargeable(&period, clock) {
                Chargeable::Closed { reason, .. } => {
                    uncollectable = true;
                    reason
                }
                Chargeable::Open { until } => format!("not collected yet: its charge window is open until {}", window::show_secs(until)),
                Chargeable::Unjudged => "not collected by the indexed chain; whether its charge window has closed was not judged (the statement was \
                                         drawn without the chain's clock)"
                    .to_owned(),
            };
            if let Some(failure) = failure {
                why.push_str(&format!("; the last charge failed on chain: {failure}"));
            }
            uncollected = Some((charge_amount - collected).to_string());
            uncollected_reason = Some(why);
        }
        period_refs.push(PeriodRef {
            subscription_id: sub,
            period_index: index,
            start,
            end,
            fee,
            overage_charge: charge,
            paid: (fee_amount + collected).to_string(),
            uncollected,
            uncollected_reason,
            uncollectable,
            usage_root: B256::from_slice(&root),
            charge_tx: tx.map(|t| B256::from_slice(&t)),
            charged_on_chain: charged,
            charges: Vec::new(),
        });
    }
    for period in &mut period_refs {
        period.charges = chain_charges(pool, chain_id, period.subscription_id, period.period_index, &period.overage_charge).await?;
    }
    let mut lines = load_lines(pool, chain_id, LineFilter::Subscriber(subscriber)).await?;
    lines.retain(|l| kept.contains(&(l.line.subscription_id, l.line.period_index)));
    attach_proofs(pool, &mut lines).await?;
    let mut total = 0u128;
    for raw in &mut lines {
        raw.line.amount = raw.line.attributed.clone();
        total += numeric_u128(&raw.line.attributed, "attributed")?;
    }
    let mut epoch_ids: Vec<u64> = lines.iter().filter_map(|l| l.line.epoch_id).collect();
    epoch_ids.sort_unstable();
    epoch_ids.dedup();
    Ok(Statement {
        party: Party::Subscriber,
        address: subscriber,
        chain_id,
        decimals,
        scope,
        lines: lines.into_iter().map(|l| l.line).collect(),
        total: total.to_string(),
        periods: period_refs,
        credits: Vec::new(),
        epochs: epoch_refs(pool, chain_id, &epoch_ids).await?,
    })
}

/// A split version as indexed.
#[derive(Debug, Clone)]
struct SplitVersion {
    version: u64,
    effective_at: i64,
    recipients: Vec<Address>,
    bps: Vec<u32>,
    remainder_index: usize,
}

impl SplitVersion {
    /// What `recipient` is credited from `amount`, exactly as `SplitEscrow._distribute` does.
    fn credit_of(&self, recipient: Address, amount: u128) -> (u128, u32) {
        let mut remainder = amount;
        let mut credit = 0u128;
        let mut bps_total = 0u32;
        for (i, (who, bps)) in self.recipients.iter().zip(&self.bps).enumerate() {
            if i == self.remainder_index {
                continue;
            }
            let share = amount * u128::from(*bps) / 10_000;
            remainder -= share;
            if *who == recipient {
                credit += share;
                bps_total += bps;
            }
        }
        if self.recipients.get(self.remainder_index) == Some(&recipient) {
            credit += remainder;
            bps_total += self.bps[self.remainder_index];
        }
        (credit, bps_total)
    }
}

async fn split_versions(pool: &PgPool, chain_id: u64) -> Result<HashMap<u64, Vec<SplitVersion>>, KeeperError> {
    type VersionRow = (String, String, String, Vec<Vec<u8>>, Vec<i32>, i32);
    let rows: Vec<VersionRow> = sqlx::query_as(
        "SELECT split_id::TEXT, version::TEXT, effective_at::TEXT, recipients, bps, remainder_index
         FROM chain.split_versions_live WHERE chain_id = $1",
    )
    .bind(chain_id as i64)
    .fetch_all(pool)
    .await?;
    let mut versions: HashMap<u64, Vec<SplitVersion>> = HashMap::new();
    for (split, version, effective_at, recipients, bps, remainder_index) in rows {
        let recipients = recipients
            .iter()
            .map(|r| Address::try_from(r.as_slice()).map_err(|_| KeeperError::ChainData(format!("split {split}: a recipient is not 20 bytes"))))
            .collect::<Result<Vec<_>, _>>()?;
        versions.entry(numeric_u64(&split, "split_id")?).or_default().push(SplitVersion {
            version: numeric_u64(&version, "version")?,
            effective_at: effective_at.parse().map_err(|_| KeeperError::ChainData(format!("split {split}: effective_at `{effective_at}`")))?,
            recipients,
            bps: bps.into_iter().map(|b| b.max(0) as u32).collect(),
            remainder_index: remainder_index.max(0) as usize,
        });
    }
    Ok(versions)
}

fn version_at(versions: &[SplitVersion], at: i64) -> Option<&SplitVersion> {
    versions.iter().filter(|v| v.effective_at <= at).max_by_key(|v| v.version)
}

/// A creator's statement: the lines of every epoch in scope whose split (the version in force for the whole epoch,
/// i.e. at its last second, `end - 1`, as the escrow applies it) credits them.
pub async fn creator_statement(pool: &PgPool, chain_id: u64, decimals: u32, creator: Address, scope: Scope) -> Result<Statement, KeeperError> {
    let versions = split_versions(pool, chain_id).await?;
    let epochs: Vec<(i64, i64)> = sqlx::query_as("SELECT epoch_id, closed_at FROM keeper.epochs WHERE chain_id = $1 ORDER BY epoch_id")
        .bind(chain_id as i64)
        .fetch_all(pool)
        .await?;
    let epoch_end: BTreeMap<u64, i64> =
        epochs.into_iter().filter(|(id, end)| in_scope(&scope, Some(*id as u64), *end)).map(|(id, end)| (id as u64, end)).collect();
    let mut lines = Vec::new();
    for epoch in epoch_end.keys() {
        lines.extend(load_lines(pool, chain_id, LineFilter::Epoch(*epoch)).await?);
    }

    // Keep the lines of splits that credit the creator, grouped by (epoch, split).
    let mut groups: BTreeMap<(u64, u64), Vec<usize>> = BTreeMap::new();
    let mut kept = Vec::new();
    for line in lines {
        let (Some(epoch), split) = (line.line.epoch_id, line.line.split_id) else { continue };
        let Some(version) = versions.get(&split).and_then(|v| version_at(v, epoch_end[&epoch] - 1)) else { continue };
        if !version.recipients.contains(&creator) {
            continue;
        }
        groups.entry((epoch, split)).or_default().push(kept.len());
        kept.push(line);
    }
    attach_proofs(pool, &mut kept).await?;
    let mut credits = Vec::new();
    let mut total = 0u128;
    for ((epoch, split), members) in &groups {
        let version = version_at(&versions[split], epoch_end[epoch] - 1).expect("kept lines have a version");
        let amounts: Vec<u128> =
            members.iter().map(|i| numeric_u128(&kept[*i].line.attributed, "attributed")).collect::<Result<_, _>>()?;
        let split_amount: u128 = amounts.iter().sum();
        let (credit, bps) = version.credit_of(creator, split_amount);
        let weights: Vec<Decimal> = amounts.iter().map(|a| Decimal::from_i128_with_scale(*a as i128, 0)).collect();
        let parts = money::divide_by_weight(credit, &weights)
            .map_err(|e| KeeperError::ChainData(e.to_string()))?
            .unwrap_or_else(|| vec![0; members.len()]);
        for (i, part) in members.iter().zip(parts) {
            let line = &mut kept[*i].line;
            line.split_version = Some(version.version);
            line.bps = Some(bps);
            line.amount = part.to_string();
        }
        total += credit;
        let on_chain: Option<String> = sqlx::query_scalar(
            "SELECT SUM(amount)::TEXT FROM chain.credits WHERE chain_id = $1 AND recipient = $2
               AND settlement_id = $3::NUMERIC AND split_id = $4::NUMERIC",
        )
        .bind(chain_id as i64)
        .bind(creator.to_vec())
        .bind(epoch.to_string())
        .bind(split.to_string())
        .fetch_one(pool)
        .await?;
        credits.push(CreditRef {
            epoch_id: *epoch,
            split_id: *split,
            split_amount: split_amount.to_string(),
            credit: credit.to_string(),
            credited_on_chain: on_chain,
        });
    }
    let epoch_ids: Vec<u64> = groups.keys().map(|(e, _)| *e).collect::<std::collections::BTreeSet<_>>().into_iter().collect();
    Ok(Statement {
        party: Party::Creator,
        address: creator,
        chain_id,
        decimals,
        scope,
        lines: kept.into_iter().map(|l| l.line).collect(),
        total: total.to_string(),
        periods: Vec::new(),
        credits,
        epochs: epoch_refs(pool, chain_id, &epoch_ids).await?,
    })
}

/// The statement's lines as CSV (one row per line, a header row first; amounts in base units). Beside the line's
/// fields it carries what the JSON has for checking the line: `root` and `proof` (the proof's hashes as `0x` hex
/// joined by `;`, empty for a lone leaf), `settlement_tx` (the settlement of the line's epoch, once indexed) and
/// `charge_tx` (subscriber statements: the latest indexed usage charge of the line's period).
pub fn to_csv(statement: &Statement) -> String {
    let mut out = String::from(
        "epoch_id,subscription_id,period_index,line_no,model,meter,adjustment_of,quantity,included_quantity,unit_price,per_units,price_effective_at,split_id,split_version,bps,overage_amount,attributed,amount,root,proof,settlement_tx,charge_tx\n",
    );
    for l in &statement.lines {
        let opt = |v: Option<u64>| v.map(|v| v.to_string()).unwrap_or_default();
        let hash = |h: Option<B256>| h.map(|h| h.to_string()).unwrap_or_default();
        let proof = l.proof.iter().map(ToString::to_string).collect::<Vec<_>>().join(";");
        let settlement_tx = l.epoch_id.and_then(|id| statement.epochs.iter().find(|e| e.epoch_id == id)).and_then(|e| e.tx_hash);
        let charge_tx = statement
            .periods
            .iter()
            .find(|p| p.subscription_id == l.subscription_id && p.period_index == l.period_index)
            .and_then(|p| p.charge_tx);
        out.push_str(&format!(
            "{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{}\n",
            opt(l.epoch_id),
            l.subscription_id,
            l.period_index,
            l.line_no,
            l.model,
            l.meter,
            opt(l.adjustment_of),
            l.quantity,
            l.included_quantity,
            l.unit_price,
            l.per_units,
            l.price_effective_at,
            l.split_id,
            opt(l.split_version),
            l.bps.map(|b| b.to_string()).unwrap_or_default(),
            l.overage_amount,
            l.attributed,
            l.amount,
            l.root,
            proof,
            hash(settlement_tx),
            hash(charge_tx)
        ));
    }
    out
}

/// The statement as a table for a terminal, amounts in token units. The lines (and `total`) are the usage as
/// priced; each period says what was paid, and what was not collected under it.
pub fn to_table(statement: &Statement) -> String {
    let units = |text: &str| {
        text.parse::<u128>().ok().and_then(|a| money::from_base_units(a, statement.decimals).ok()).map_or_else(|| text.to_owned(), |d| d.to_string())
    };
    let who = match statement.party {
        Party::Subscriber => "subscriber",
        Party::Creator => "creator",
    };
    let mut out = format!("statement for {who} {} on chain {}\n\n", statement.address, statement.chain_id);
    out.push_str(&format!(
        "{:>5} {:>6} {:>6} {:>4}  {:<14} {:<14} {:>14} {:>12} {:>8} {:>6} {:>14}\n",
        "epoch", "sub", "period", "line", "model", "meter", "quantity", "unit price", "split", "bps", "amount"
    ));
    for l in &statement.lines {
        let model = if l.model.is_empty() { "(plan fee)" } else { &l.model };
        out.push_str(&format!(
            "{:>5} {:>6} {:>6} {:>4}  {:<14} {:<14} {:>14} {:>12} {:>8} {:>6} {:>14}\n",
            l.epoch_id.map(|e| e.to_string()).unwrap_or_else(|| "-".into()),
            l.subscription_id,
            match l.adjustment_of {
                Some(p) => format!("{}<{p}", l.period_index),
                None => l.period_index.to_string(),
            },
            l.line_no,
            model,
            l.meter,
            l.quantity.to_string(),
            format!("{}/{}", l.unit_price.normalize(), l.per_units.normalize()),
            l.split_id,
            l.bps.map(|b| b.to_string()).unwrap_or_default(),
            units(&l.amount)
        ));
    }
    out.push_str(&format!("\ntotal {}\n", units(&statement.total)));
    for p in &statement.periods {
        out.push_str(&format!(
            "subscription {} period {}: fee {} + overage {}, paid {} (charged on chain: {}, tx {})\n",
            p.subscription_id,
            p.period_index,
            units(&p.fee),
            units(&p.overage_charge),
            units(&p.paid),
            p.charged_on_chain.as_deref().map_or_else(|| "nothing".into(), units),
            p.charge_tx.map_or_else(|| "-".into(), |t| t.to_string())
        ));
        if let Some(uncollected) = &p.uncollected {
            let what = if p.uncollectable { "uncollectable" } else { "not collected" };
            let why = p.uncollected_reason.as_deref().unwrap_or("no reason given");
            out.push_str(&format!("  {what}: {} of the overage ({why})\n", units(uncollected)));
        }
    }
    for c in &statement.credits {
        out.push_str(&format!(
            "epoch {} split {}: {} of {} (credited on chain: {})\n",
            c.epoch_id,
            c.split_id,
            units(&c.credit),
            units(&c.split_amount),
            c.credited_on_chain.as_deref().map_or_else(|| "not yet".into(), units)
        ));
    }
    for e in &statement.epochs {
        out.push_str(&format!(
            "epoch {}: root {} settled in {}\n",
            e.epoch_id,
            e.usage_root,
            e.tx_hash.map_or_else(|| "not yet".into(), |t| t.to_string())
        ));
    }
    out
}
