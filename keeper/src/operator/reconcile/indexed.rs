//! The indexer's side: its tables and views in schema `chain`, amounts read as text and parsed into `U256`.
//!
//! `unallocated()` can be derived from the events exactly. Every collected item's event carries its whole
//! `amount` (wallet part plus `fromCredit`); the wallet part reaches the escrow in the same batch, the credit part
//! at the end of the batch unless the token refused, in which case it waits in `creditOwedToEscrow` (the last
//! `CreditTransferDeferred` says the total owed; a later `CreditFlushed` means it was all moved). So
//! `totalRevenue = Σ amount(Subscribed, Renewed, UsageCharged) - owed`, and since the escrow consumes revenue only
//! by settling and refunding, `unallocated = totalRevenue - Σ Settled.total - Σ Refunded.amount`.

use std::collections::{BTreeMap, BTreeSet};

use alloy::primitives::{Address, B256, U256};
use sqlx::PgPool;
use subsettle_abi::Deployment;

use super::{IndexedEscrow, onchain::summary};
use crate::{KeeperError, store::numeric_u64};

/// An amount the indexer stores as NUMERIC(78,0), read as text.
fn amount(text: &str, what: &str) -> Result<U256, KeeperError> {
    text.parse().map_err(|_| KeeperError::ChainData(format!("{what} `{text}` is not a base-unit amount")))
}

fn address(bytes: &[u8], what: &str) -> Result<Address, KeeperError> {
    Address::try_from(bytes).map_err(|_| KeeperError::ChainData(format!("{what}: `0x{}` is not an address", alloy::hex::encode(bytes))))
}

/// `Σ parts`, refusing to wrap.
fn sum(parts: &[U256], what: &str) -> Result<U256, KeeperError> {
    parts.iter().try_fold(U256::ZERO, |total, part| total.checked_add(*part)).ok_or_else(|| KeeperError::ChainData(format!("{what} overflows 256 bits")))
}

/// `a - b` as text, with a minus sign when it is negative (only a damaged index gets there).
pub(super) fn difference_text(a: U256, b: U256) -> String {
    match a.checked_sub(b) {
        Some(d) => d.to_string(),
        None => format!("-{}", b - a),
    }
}

/// The block the indexer has reached for the deployment.
pub(super) async fn cursor(pool: &PgPool, deployment: &Deployment) -> Result<u64, KeeperError> {
    let cursor: Option<Option<i64>> = sqlx::query_scalar("SELECT cursor_number FROM chain.deployments WHERE chain_id = $1 AND subscriptions = $2")
        .bind(deployment.chain_id as i64)
        .bind(deployment.subscriptions.as_slice())
        .fetch_optional(pool)
        .await?;
    match cursor.flatten() {
        Some(block) => Ok(block as u64),
        None => Err(KeeperError::ChainData(format!("the indexer has not indexed deployment {} yet", deployment.subscriptions))),
    }
}

/// Whether the indexer committed logs above `block` (or rolled back below it) since the cursor was read.
pub(super) async fn moved_past(pool: &PgPool, deployment: &Deployment, block: u64) -> Result<bool, KeeperError> {
    let newer: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM chain.raw_logs WHERE chain_id = $1 AND block_number > $2)")
        .bind(deployment.chain_id as i64)
        .bind(block as i64)
        .fetch_one(pool)
        .await?;
    Ok(newer || cursor(pool, deployment).await? < block)
}

/// What the indexer holds, as the checks need it.
#[derive(Debug)]
pub(super) struct Indexed {
    /// The escrow's revenue and consumption from the events.
    pub(super) escrow: IndexedEscrow,
    /// `chain.recipient_balances`.
    pub(super) balances: BTreeMap<Address, String>,
    /// The sum over `chain.recipient_balances`.
    pub(super) total_claimable: String,
    /// Successful claims per recipient (`chain.claims`).
    pub(super) claimed: BTreeMap<Address, U256>,
    /// Every recipient in `chain.credits`, `chain.claims` and `chain.split_versions`.
    pub(super) recipients: BTreeSet<Address>,
    /// `chain.charged_per_period`, by (subscription, period).
    pub(super) charged: BTreeMap<(u64, u64), String>,
    /// `chain.subscriber_credit`.
    pub(super) credit: BTreeMap<Address, String>,
    /// Every subscriber in `chain.subscribed` (and anyone who moved credit).
    pub(super) subscribers: BTreeSet<Address>,
    /// `chain.subscriptions`, summarised as `subscription(id)` is.
    pub(super) subscriptions: BTreeMap<u64, String>,
    /// `chain.settlements`: total and usage root per settlement id.
    pub(super) settlements: BTreeMap<u64, (String, B256)>,
}

impl Indexed {
    pub(super) async fn load(pool: &PgPool, chain_id: u64) -> Result<Self, KeeperError> {
        let id = chain_id as i64;
        let balances: Vec<(Vec<u8>, String)> =
            sqlx::query_as("SELECT recipient, claimable::TEXT FROM chain.recipient_balances WHERE chain_id = $1").bind(id).fetch_all(pool).await?;
        let total_claimable: String = sqlx::query_scalar("SELECT COALESCE(SUM(claimable), 0)::TEXT FROM chain.recipient_balances WHERE chain_id = $1")
            .bind(id)
            .fetch_one(pool)
            .await?;
        let claimed: Vec<(Vec<u8>, String)> =
            sqlx::query_as("SELECT recipient, SUM(amount)::TEXT FROM chain.claims WHERE chain_id = $1 AND succeeded GROUP BY recipient")
                .bind(id)
                .fetch_all(pool)
                .await?;
        let recipients: Vec<Vec<u8>> = sqlx::query_scalar(
            "SELECT recipient FROM chain.credits WHERE chain_id = $1 UNION SELECT recipient FROM chain.claims WHERE chain_id = $1
             UNION SELECT unnest(recipients) FROM chain.split_versions WHERE chain_id = $1",
        )
        .bind(id)
        .fetch_all(pool)
        .await?;
        let credit: Vec<(Vec<u8>, String)> =
            sqlx::query_as("SELECT subscriber, credit::TEXT FROM chain.subscriber_credit WHERE chain_id = $1 AND subscriber IS NOT NULL")
                .bind(id)
                .fetch_all(pool)
                .await?;
        let subscribers: Vec<Vec<u8>> = sqlx::query_scalar(
            "SELECT subscriber FROM chain.subscribed WHERE chain_id = $1
             UNION SELECT subscriber FROM chain.credit_movements WHERE chain_id = $1 AND subscriber IS NOT NULL",
        )
        .bind(id)
        .fetch_all(pool)
        .await?;
        let pairs = |rows: Vec<(Vec<u8>, String)>, what: &str| -> Result<BTreeMap<Address, String>, KeeperError> {
            rows.into_iter().map(|(a, v)| Ok((address(&a, what)?, v))).collect()
        };
        Ok(Self {
            escrow: escrow(pool, id).await?,
            balances: pairs(balances, "chain.recipient_balances")?,
            total_claimable,
            claimed: claimed.into_iter().map(|(a, v)| Ok((address(&a, "chain.claims")?, amount(&v, "claimed")?))).collect::<Result<_, KeeperError>>()?,
            recipients: recipients.iter().map(|a| address(a, "recipient")).collect::<Result<_, _>>()?,
            charged: charged(pool, id).await?,
            credit: pairs(credit, "chain.subscriber_credit")?,
            subscribers: subscribers.iter().map(|a| address(a, "subscriber")).collect::<Result<_, _>>()?,
            subscriptions: subscriptions(pool, id).await?,
            settlements: settlements(pool, id).await?,
        })
    }
}

async fn escrow(pool: &PgPool, chain_id: i64) -> Result<IndexedEscrow, KeeperError> {
    let (subscribed, renewed, charged, settled, refunded, owed): (String, String, String, String, String, Option<String>) = sqlx::query_as(
        "SELECT (SELECT COALESCE(SUM(amount), 0) FROM chain.subscribed WHERE chain_id = $1)::TEXT,
                (SELECT COALESCE(SUM(amount), 0) FROM chain.renewals WHERE chain_id = $1)::TEXT,
                (SELECT COALESCE(SUM(amount), 0) FROM chain.usage_charges WHERE chain_id = $1)::TEXT,
                (SELECT COALESCE(SUM(total), 0) FROM chain.settlements WHERE chain_id = $1)::TEXT,
                (SELECT COALESCE(SUM(amount), 0) FROM chain.refunds WHERE chain_id = $1)::TEXT,
                (SELECT CASE kind WHEN 'deferred' THEN balance ELSE 0 END FROM chain.credit_movements
                 WHERE chain_id = $1 AND kind IN ('deferred', 'flushed') ORDER BY block_number DESC, log_index DESC LIMIT 1)::TEXT",
    )
    .bind(chain_id)
    .fetch_one(pool)
    .await?;
    let paid_in = sum(
        &[amount(&subscribed, "Σ Subscribed.amount")?, amount(&renewed, "Σ Renewed.amount")?, amount(&charged, "Σ UsageCharged.amount")?],
        "revenue paid in",
    )?;
    let credit_owed_to_escrow = owed.map_or(Ok(U256::ZERO), |o| amount(&o, "credit owed to the escrow"))?;
    let (settled, refunded) = (amount(&settled, "Σ Settled.total")?, amount(&refunded, "Σ Refunded.amount")?);
    let taken_out = sum(&[credit_owed_to_escrow, settled, refunded], "revenue consumed")?;
    Ok(IndexedEscrow {
        paid_in,
        credit_owed_to_escrow,
        settled,
        refunded,
        total_revenue: difference_text(paid_in, credit_owed_to_escrow),
        unallocated: difference_text(paid_in, taken_out),
    })
}

async fn charged(pool: &PgPool, chain_id: i64) -> Result<BTreeMap<(u64, u64), String>, KeeperError> {
    let rows: Vec<(String, String, String)> =
        sqlx::query_as("SELECT subscription_id::TEXT, period_index::TEXT, charged::TEXT FROM chain.charged_per_period WHERE chain_id = $1")
            .bind(chain_id)
            .fetch_all(pool)
            .await?;
    rows.into_iter().map(|(id, period, charged)| Ok(((numeric_u64(&id, "subscription_id")?, numeric_u64(&period, "period_index")?), charged))).collect()
}

async fn subscriptions(pool: &PgPool, chain_id: i64) -> Result<BTreeMap<u64, String>, KeeperError> {
    let rows: Vec<(String, Vec<u8>, String, String, String)> = sqlx::query_as(
        "SELECT subscription_id::TEXT, subscriber, period_index::TEXT, paid_through::TEXT, status FROM chain.subscriptions WHERE chain_id = $1",
    )
    .bind(chain_id)
    .fetch_all(pool)
    .await?;
    rows.into_iter()
        .map(|(id, subscriber, period, paid_through, status)| {
            let text = summary(
                address(&subscriber, "chain.subscriptions")?,
                numeric_u64(&period, "period_index")?,
                numeric_u64(&paid_through, "paid_through")?,
                &status,
            );
            Ok((numeric_u64(&id, "subscription_id")?, text))
        })
        .collect()
}

async fn settlements(pool: &PgPool, chain_id: i64) -> Result<BTreeMap<u64, (String, B256)>, KeeperError> {
    let rows: Vec<(String, String, Vec<u8>)> = sqlx::query_as(
        "SELECT DISTINCT ON (settlement_id) settlement_id::TEXT, total::TEXT, usage_root FROM chain.settlements
         WHERE chain_id = $1 ORDER BY settlement_id, block_number DESC, log_index DESC",
    )
    .bind(chain_id)
    .fetch_all(pool)
    .await?;
    rows.into_iter()
        .map(|(id, total, root)| {
            let root = B256::try_from(root.as_slice()).map_err(|_| KeeperError::ChainData(format!("settlement {id}: usage root is not 32 bytes")))?;
            Ok((numeric_u64(&id, "settlement_id")?, (total, root)))
        })
        .collect()
}
