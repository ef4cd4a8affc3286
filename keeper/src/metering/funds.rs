//! What a subscriber's wallet can pay for usage, read from the chain.
//!
//! Overage is charged after it is served, and a plan with price 0 keeps a subscriber entitled with no funds and
//! no allowance at all. So `serve` admits billable usage only while the wallet can pay what its open periods owe
//! so far plus the new usage ([`crate::metering::entitlement`] does the sums). What a usage charge can collect is the
//! subscriber's prepaid credit (taken first) plus what `transferFrom` can pull from the wallet, the lower of its
//! token balance and its allowance to Subscriptions (`Subscriptions._collect`).
//!
//! The three figures are read for every wallet with a live subscription, all at one block, in JSON-RPC batches
//! (a few in flight at once), every `funds_interval`. Each reading is kept in `keeper.wallet_funds` (the newest
//! block wins), and every `serve` replica judges from that table, so replicas agree on the figures whichever of
//! them read last. Funds move on chain at any time; a reading is only as good as its age, and a reading older than
//! [`STALE_AFTER_INTERVALS`] intervals counts as unknown.

use std::collections::HashMap;

use alloy::{
    eips::BlockId,
    primitives::{Address, Bytes, U256},
    providers::{DynProvider, Provider},
    rpc::{client::BatchRequest, types::TransactionRequest},
    sol_types::SolCall,
};
use futures::{StreamExt, TryStreamExt};
use serde::Serialize;
use sqlx::PgPool;
use subsettle_abi::{Deployment, Subscriptions};

use crate::{KeeperError, store::numeric_u128};

alloy::sol! {
    /// The two ERC-20 views a usage charge depends on (USDC has them; so does the test token).
    interface IErc20Funds {
        function balanceOf(address owner) external view returns (uint256);
        function allowance(address owner, address spender) external view returns (uint256);
    }
}

/// Wallets per JSON-RPC batch (three calls each): small enough for the batch limits of hosted nodes (often 100 to
/// 1,000 calls per request).
pub const WALLETS_PER_BATCH: usize = 50;
/// Batches in flight at once.
pub const BATCHES_IN_FLIGHT: usize = 4;
/// A reading older than this many refresh intervals counts as unknown: the refresh failed (or could not run)
/// several times in a row, and the figures may no longer say anything about the wallet.
pub const STALE_AFTER_INTERVALS: i64 = 3;

/// One wallet's funds at one block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalletFunds {
    /// `token.balanceOf(wallet)`.
    pub balance: U256,
    /// `token.allowance(wallet, Subscriptions)`.
    pub allowance: U256,
    /// `Subscriptions.creditOf(wallet)`: prepaid credit, used before the wallet by every charge.
    pub credit: U256,
    /// The block all three were read at.
    pub block: u64,
    /// When they were read, Unix milliseconds of the wall clock (the age of a reading is real time, also when the
    /// keeper follows a chain whose clock is moved).
    pub read_at_ms: i64,
}

/// `min(value, u128::MAX)`: an allowance is often `2^256 - 1`, far above any amount the keeper adds up.
fn clamp(value: U256) -> u128 {
    u128::try_from(value).unwrap_or(u128::MAX)
}

impl WalletFunds {
    /// What one usage charge could collect now: credit plus the lower of balance and allowance.
    pub fn payable(&self) -> u128 {
        clamp(self.credit).saturating_add(clamp(self.balance.min(self.allowance)))
    }

    /// Which wallet figure limits a pull: the lower of balance and allowance (both when equal).
    pub fn limiting(&self) -> Limit {
        match self.balance.cmp(&self.allowance) {
            std::cmp::Ordering::Less => Limit::Balance,
            std::cmp::Ordering::Greater => Limit::Allowance,
            std::cmp::Ordering::Equal => Limit::BalanceAndAllowance,
        }
    }

    /// The age of the reading at `now_ms` (wall clock).
    pub fn age_ms(&self, now_ms: i64) -> i64 {
        now_ms.saturating_sub(self.read_at_ms).max(0)
    }
}

/// The wallet figure that limits what a charge can pull.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// The token balance is below the allowance.
    Balance,
    /// The allowance to Subscriptions is below the balance.
    Allowance,
    /// Both are the same (for example both zero).
    BalanceAndAllowance,
}

impl Limit {
    /// As a reason names it.
    pub fn describe(self) -> &'static str {
        match self {
            Self::Balance => "balance is short",
            Self::Allowance => "allowance is short",
            Self::BalanceAndAllowance => "balance and allowance are short",
        }
    }
}

/// How `serve` judges funds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FundsPolicy {
    /// Time between two readings, milliseconds.
    pub interval_ms: i64,
}

impl FundsPolicy {
    /// A reading older than this is unknown.
    pub fn stale_after_ms(&self) -> i64 {
        self.interval_ms.saturating_mul(STALE_AFTER_INTERVALS)
    }
}

/// The funds figures the entitlement answer reports (amounts are decimal strings of base units).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct FundsAnswer {
    /// `known`, or `unknown` (never read, or the last reading is too old to judge by).
    pub state: &'static str,
    /// Token balance.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub balance: Option<String>,
    /// Allowance to Subscriptions.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allowance: Option<String>,
    /// Prepaid credit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credit: Option<String>,
    /// What a charge could collect: credit + min(balance, allowance).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payable: Option<String>,
    /// Overage of the wallet's open periods (all its live subscriptions) not charged on chain yet.
    pub owed: String,
    /// `payable - owed` (0 when owed is more): how much more overage may be served.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub headroom: Option<String>,
    /// The block the figures were read at.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub block: Option<u64>,
    /// When they were read (Unix seconds, wall clock).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub read_at: Option<i64>,
}

/// Reads wallets' funds from the node.
#[derive(Debug, Clone)]
pub struct FundsReader {
    provider: DynProvider,
    token: Address,
    subscriptions: Address,
}

fn chain_error(action: &'static str) -> impl Fn(alloy::transports::TransportError) -> KeeperError {
    move |e| KeeperError::Chain { action, message: e.to_string() }
}

impl FundsReader {
    /// A reader of the deployment's token and Subscriptions through `provider`.
    pub fn new(provider: DynProvider, deployment: &Deployment) -> Self {
        Self { provider, token: deployment.token, subscriptions: deployment.subscriptions }
    }

    /// Reads every wallet's funds at the latest block; fails whole if any call fails (a wallet half read is not
    /// a reading).
    pub async fn read(&self, wallets: &[Address]) -> Result<Vec<(Address, WalletFunds)>, KeeperError> {
        if wallets.is_empty() {
            return Ok(Vec::new());
        }
        let block = self.provider.get_block_number().await.map_err(chain_error("eth_blockNumber"))?;
        let read_at_ms = wall_ms();
        // The futures are built first: a stream mapping a closure over borrowed chunks would not be `Send`.
        let reads: Vec<_> = wallets.chunks(WALLETS_PER_BATCH).map(|chunk| self.read_batch(chunk, block, read_at_ms)).collect();
        let batches: Vec<Vec<(Address, WalletFunds)>> = futures::stream::iter(reads)
            .buffer_unordered(BATCHES_IN_FLIGHT)
            .try_collect()
            .await?;
        Ok(batches.into_iter().flatten().collect())
    }

    /// One JSON-RPC batch: `balanceOf`, `allowance` and `creditOf` of each wallet, at `block`.
    async fn read_batch(&self, wallets: &[Address], block: u64, read_at_ms: i64) -> Result<Vec<(Address, WalletFunds)>, KeeperError> {
        let at = BlockId::number(block);
        let call = |to: Address, data: Vec<u8>| (TransactionRequest::default().to(to).input(Bytes::from(data).into()), at);
        let mut batch = BatchRequest::new(self.provider.client());
        let mut waiters = Vec::with_capacity(wallets.len());
        for wallet in wallets {
            let balance = IErc20Funds::balanceOfCall { owner: *wallet }.abi_encode();
            let allowance = IErc20Funds::allowanceCall { owner: *wallet, spender: self.subscriptions }.abi_encode();
            let credit = Subscriptions::creditOfCall { subscriber: *wallet }.abi_encode();
            let add = |batch: &mut BatchRequest<'_>, to, data| {
                batch.add_call::<_, Bytes>("eth_call", &call(to, data)).map_err(chain_error("eth_call batch"))
            };
            waiters.push((
                *wallet,
                add(&mut batch, self.token, balance)?,
                add(&mut batch, self.token, allowance)?,
                add(&mut batch, self.subscriptions, credit)?,
            ));
        }
        batch.send().await.map_err(chain_error("eth_call batch"))?;
        let mut readings = Vec::with_capacity(waiters.len());
        for (wallet, balance, allowance, credit) in waiters {
            readings.push((
                wallet,
                WalletFunds {
                    balance: decode_uint(balance.await.map_err(chain_error("balanceOf"))?, "balanceOf")?,
                    allowance: decode_uint(allowance.await.map_err(chain_error("allowance"))?, "allowance")?,
                    credit: decode_uint(credit.await.map_err(chain_error("creditOf"))?, "creditOf")?,
                    block,
                    read_at_ms,
                },
            ));
        }
        Ok(readings)
    }
}

/// A `uint256` return value.
fn decode_uint(data: Bytes, action: &'static str) -> Result<U256, KeeperError> {
    IErc20Funds::balanceOfCall::abi_decode_returns(&data)
        .map_err(|e| KeeperError::Chain { action, message: format!("cannot decode the answer {data}: {e}") })
}

/// The wall clock, Unix milliseconds.
pub fn wall_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Stores readings; a reading of an older block than the one stored (another replica's node was ahead) is
/// dropped, so the table only moves forward.
pub async fn save(pool: &PgPool, chain_id: u64, readings: &[(Address, WalletFunds)]) -> Result<(), KeeperError> {
    if readings.is_empty() {
        return Ok(());
    }
    let wallets: Vec<&[u8]> = readings.iter().map(|(w, _)| w.as_slice()).collect();
    let text = |f: fn(&WalletFunds) -> U256| readings.iter().map(|(_, r)| f(r).to_string()).collect::<Vec<_>>();
    let blocks: Vec<i64> = readings.iter().map(|(_, r)| i64::try_from(r.block).unwrap_or(i64::MAX)).collect();
    let times: Vec<i64> = readings.iter().map(|(_, r)| r.read_at_ms).collect();
    sqlx::query(
        "INSERT INTO keeper.wallet_funds (chain_id, subscriber, balance, allowance, credit, block_number, read_at_ms)
         SELECT $1, * FROM UNNEST($2::BYTEA[], $3::NUMERIC[], $4::NUMERIC[], $5::NUMERIC[], $6::BIGINT[], $7::BIGINT[])
         ON CONFLICT (chain_id, subscriber) DO UPDATE SET
             balance = EXCLUDED.balance, allowance = EXCLUDED.allowance, credit = EXCLUDED.credit,
             block_number = EXCLUDED.block_number, read_at_ms = EXCLUDED.read_at_ms
         WHERE EXCLUDED.block_number > wallet_funds.block_number
            OR (EXCLUDED.block_number = wallet_funds.block_number AND EXCLUDED.read_at_ms > wallet_funds.read_at_ms)",
    )
    .bind(chain_id as i64)
    .bind(&wallets)
    .bind(text(|r| r.balance))
    .bind(text(|r| r.allowance))
    .bind(text(|r| r.credit))
    .bind(&blocks)
    .bind(&times)
    .execute(pool)
    .await?;
    Ok(())
}

/// The stored readings of `wallets` (whichever replica read them).
pub async fn load(pool: &PgPool, chain_id: u64, wallets: &[Address]) -> Result<HashMap<Address, WalletFunds>, KeeperError> {
    type Row = (Vec<u8>, String, String, String, i64, i64);
    let keys: Vec<&[u8]> = wallets.iter().map(|w| w.as_slice()).collect();
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT subscriber, balance::TEXT, allowance::TEXT, credit::TEXT, block_number, read_at_ms
         FROM keeper.wallet_funds WHERE chain_id = $1 AND subscriber = ANY($2::BYTEA[])",
    )
    .bind(chain_id as i64)
    .bind(&keys)
    .fetch_all(pool)
    .await?;
    let uint = |text: &str, what| text.parse::<U256>().map_err(|_| KeeperError::ChainData(format!("wallet_funds.{what} `{text}`")));
    rows.into_iter()
        .map(|(wallet, balance, allowance, credit, block, read_at_ms)| {
            let wallet = Address::try_from(wallet.as_slice()).map_err(|_| KeeperError::ChainData("wallet_funds.subscriber is not 20 bytes".into()))?;
            let funds = WalletFunds {
                balance: uint(&balance, "balance")?,
                allowance: uint(&allowance, "allowance")?,
                credit: uint(&credit, "credit")?,
                block: u64::try_from(block).unwrap_or(0),
                read_at_ms,
            };
            Ok((wallet, funds))
        })
        .collect()
}

/// What the chain has charged so far in each (subscription, period) asked for, as indexed
/// (`chain.charged_per_period`); pairs with no charge are absent.
pub async fn load_charged(pool: &PgPool, chain_id: u64, periods: &[(u64, u64)]) -> Result<HashMap<(u64, u64), u128>, KeeperError> {
    if periods.is_empty() {
        return Ok(HashMap::new());
    }
    let ids: Vec<String> = periods.iter().map(|(id, _)| id.to_string()).collect();
    let rows: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT subscription_id::TEXT, period_index::TEXT, charged::TEXT FROM chain.charged_per_period
         WHERE chain_id = $1 AND subscription_id = ANY($2::NUMERIC[])",
    )
    .bind(chain_id as i64)
    .bind(&ids)
    .fetch_all(pool)
    .await?;
    let wanted: std::collections::HashSet<(u64, u64)> = periods.iter().copied().collect();
    let mut charged = HashMap::new();
    for (id, period, amount) in rows {
        let key = (crate::store::numeric_u64(&id, "subscription_id")?, crate::store::numeric_u64(&period, "period_index")?);
        if wanted.contains(&key) {
            charged.insert(key, numeric_u128(&amount, "charged")?);
        }
    }
    Ok(charged)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn funds(balance: u64, allowance: U256, credit: u64) -> WalletFunds {
        WalletFunds { balance: U256::from(balance), allowance, credit: U256::from(credit), block: 1, read_at_ms: 0 }
    }

    #[test]
    fn a_charge_collects_credit_plus_the_lower_of_balance_and_allowance() {
        assert_eq!(funds(10, U256::from(4), 3).payable(), 7);
        assert_eq!(funds(10, U256::from(4), 3).limiting(), Limit::Allowance);
        assert_eq!(funds(2, U256::MAX, 0).payable(), 2);
        assert_eq!(funds(2, U256::MAX, 0).limiting(), Limit::Balance);
        assert_eq!(funds(0, U256::ZERO, 0).limiting(), Limit::BalanceAndAllowance);
        // An unlimited allowance and a huge credit saturate instead of wrapping.
        let mut rich = funds(u64::MAX, U256::MAX, 0);
        rich.credit = U256::MAX;
        assert_eq!(rich.payable(), u128::MAX);
    }

    #[test]
    fn a_reading_goes_stale_after_three_intervals() {
        let policy = FundsPolicy { interval_ms: 15_000 };
        assert_eq!(policy.stale_after_ms(), 45_000);
        assert_eq!(funds(0, U256::ZERO, 0).age_ms(-5), 0, "a reading from a clock ahead of ours is not negative");
    }
}
