//! The outbox: on-chain actions written to Postgres under a deterministic key before they are signed, signed
//! with a nonce taken from this table, persisted signed before they are broadcast, and matched to their receipts.
//! A restart first re-broadcasts what was signed and not yet mined, so a crash at any point neither loses an
//! action nor sends it twice; the contracts' own idempotency (anchored periods, cumulative charges, unique
//! settlement ids) covers the rest. An action is confirmed (or failed) only once its block is final ([`Finality`]):
//! until then it stays `sent`, and a transaction that a reorg dropped is broadcast again with its nonce.

use std::time::Duration;

use alloy::{
    consensus::TxEnvelope,
    eips::{BlockNumberOrTag, eip2718::Encodable2718},
    network::{Ethereum, EthereumWallet, NetworkTransactionBuilder, TransactionBuilder},
    primitives::{Address, B256, Bytes},
    providers::{DynProvider, Provider},
    rpc::types::TransactionRequest,
    transports::{RpcError, TransportErrorKind},
};
use serde_json::Value;
use sqlx::PgPool;
use subsettle_abi::{SplitEscrow::SplitEscrowErrors, Subscriptions::SubscriptionsErrors};

use crate::{KeeperError, signer::OperatorKey};

/// An action to write to the outbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Action {
    /// Deterministic key: the same action planned twice has the same key and is stored once.
    pub key: String,
    /// `renew`, `charge`, `settle`, `claim` or `admin`.
    pub kind: &'static str,
    /// Contract called.
    pub target: Address,
    /// ABI-encoded call.
    pub calldata: Bytes,
    /// What the action covers (JSON array), for planners and operators.
    pub items: Value,
}

/// The retry slot of chain time `now`: an action planned in a slot is not planned again in it, so a failing one is
/// tried once per `interval` seconds, not on every step.
pub fn retry_slot(now: i64, interval: i64) -> i64 {
    now.div_euclid(interval.max(1))
}

/// The key of a batch action: `prefix` and its items joined, or, for a long batch (Postgres indexes at most
/// about 8 kB per key), `prefix`, the item count and the keccak256 of the joined items: deterministic either way.
pub fn batch_key(prefix: &str, items: &[String]) -> String {
    let joined = items.join(",");
    if joined.len() <= 512 {
        format!("{prefix}{joined}")
    } else {
        format!("{prefix}{}-items-{}", items.len(), alloy::primitives::keccak256(joined.as_bytes()))
    }
}

/// When a mined transaction is final, so that its action is marked `confirmed` (or `failed`) and never looked at
/// again. Until then a reorg may drop it, and it is broadcast again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finality {
    /// At or below the node's `finalized` block (on an L2, once the batch holding it is final on L1).
    Finalized,
    /// Once its block has this many confirmations: the block itself and `n - 1` above it (at least 1). For nodes
    /// without a `finalized` block tag, and local chains (anvil's `finalized` is 64 blocks behind its head, and a
    /// quiet local chain makes no blocks of its own).
    Confirmations(u64),
}

impl Finality {
    /// The newest final block now, if any.
    pub async fn final_block(&self, provider: &DynProvider) -> Result<Option<u64>, KeeperError> {
        match *self {
            Self::Finalized => {
                let block = provider.get_block_by_number(BlockNumberOrTag::Finalized).await.map_err(rpc("eth_getBlockByNumber(finalized)"))?;
                Ok(block.map(|b| b.header.number))
            }
            Self::Confirmations(n) => {
                let head = provider.get_block_number().await.map_err(rpc("eth_blockNumber"))?;
                Ok((head + 1).checked_sub(n.max(1)))
            }
        }
    }

    /// Whether the node can say what is final under this policy: a node without the `finalized` tag is refused
    /// with `Finalized` (give `--confirmations`).
    pub async fn check(&self, provider: &DynProvider) -> Result<(), KeeperError> {
        match *self {
            Self::Confirmations(0) => Err(KeeperError::Invalid { field: "confirmations".into(), reason: "at least 1".into() }),
            Self::Confirmations(_) => Ok(()),
            Self::Finalized => match provider.get_block_by_number(BlockNumberOrTag::Finalized).await {
                Ok(_) => Ok(()),
                Err(e) => Err(KeeperError::Invalid {
                    field: "confirmations".into(),
                    reason: format!(
                        "the node does not answer for its `finalized` block ({e}); give --confirmations N to count confirmations instead"
                    ),
                }),
            },
        }
    }
}

impl std::fmt::Display for Finality {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Finalized => f.write_str("the node's finalized block"),
            Self::Confirmations(n) => write!(f, "{n} confirmation(s)"),
        }
    }
}

/// Fee policy for the transactions the keeper signs.
#[derive(Debug, Clone, Copy)]
pub struct FeePolicy {
    /// Highest `maxFeePerGas` ever signed, wei.
    pub max_fee_cap: u128,
    /// `maxPriorityFeePerGas`, wei.
    pub priority_fee: u128,
    /// A transaction not mined after this long is signed again with higher fees (same nonce).
    pub bump_after: Duration,
    /// Fee increase of a replacement, percent (nodes want at least 10).
    pub bump_percent: u128,
}

impl Default for FeePolicy {
    fn default() -> Self {
        Self { max_fee_cap: 200_000_000_000, priority_fee: 1_000_000_000, bump_after: Duration::from_secs(60), bump_percent: 20 }
    }
}

/// The chain as the sender sees it.
#[derive(Debug, Clone)]
pub struct Sender {
    /// Provider without a wallet (signing is done here, with nonces from the outbox).
    pub provider: DynProvider,
    /// The operator key.
    pub key: OperatorKey,
    /// Chain id.
    pub chain_id: u64,
    /// Fees.
    pub fees: FeePolicy,
    /// When a mined transaction's action is confirmed.
    pub finality: Finality,
}

/// What one pass over the outbox did.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct OutboxReport {
    /// Rows newly planned.
    pub planned: u64,
    /// Rows signed and broadcast.
    pub sent: u64,
    /// Rows whose transaction was mined successfully and is final.
    pub confirmed: u64,
    /// Rows whose transaction is mined but not final yet (they stay `sent`).
    pub awaiting_finality: u64,
    /// Rows whose transaction was seen mined and is no longer (a reorg dropped it): broadcast again.
    pub dropped: u64,
    /// Rows refused by a pre-check or reverted.
    pub failed: u64,
    /// Transactions re-signed with higher fees.
    pub bumped: u64,
    /// Rows whose nonce a transaction this keeper did not sign used up: planned again, for a new nonce.
    pub resigned: u64,
    /// The receipts of the rows confirmed in this pass, for what their events say (items a batch could not do).
    #[serde(skip)]
    pub receipts: Vec<alloy::rpc::types::TransactionReceipt>,
}

fn rpc(action: &'static str) -> impl FnOnce(RpcError<TransportErrorKind>) -> KeeperError {
    move |e| KeeperError::Chain { action, message: e.to_string() }
}

/// Writes actions that are not in the outbox yet, planned at chain time `now`; returns how many were new.
pub async fn plan(pool: &PgPool, actions: &[Action], now: i64) -> Result<u64, KeeperError> {
    let mut planned = 0;
    for action in actions {
        let inserted = sqlx::query(
            "INSERT INTO keeper.outbox (action_key, kind, target, calldata, items, chain_time) VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (action_key) DO NOTHING",
        )
        .bind(&action.key)
        .bind(action.kind)
        .bind(action.target.as_slice())
        .bind(action.calldata.as_ref())
        .bind(&action.items)
        .bind(now)
        .execute(pool)
        .await?;
        planned += inserted.rows_affected();
    }
    Ok(planned)
}

/// The custom error name (and arguments) a revert carries, or the node's message.
pub fn decode_revert(error: &RpcError<TransportErrorKind>) -> String {
    if let Some(payload) = error.as_error_resp() {
        if let Some(decoded) = payload.as_decoded_interface_error::<SubscriptionsErrors>() {
            return format!("{decoded:?}");
        }
        if let Some(decoded) = payload.as_decoded_interface_error::<SplitEscrowErrors>() {
            return format!("{decoded:?}");
        }
        return payload.message.to_string();
    }
    error.to_string()
}

impl Sender {
    fn address(&self) -> Address {
        self.key.signer().address()
    }

    fn request(&self, target: Address, calldata: &[u8]) -> TransactionRequest {
        TransactionRequest::default().with_from(self.address()).with_to(target).with_input(Bytes::copy_from_slice(calldata))
    }

    /// The next nonce: one past the highest this sender used in the outbox, or the chain's count if higher
    /// (transactions sent before the outbox existed).
    async fn next_nonce(&self, tx: &mut sqlx::PgConnection) -> Result<u64, KeeperError> {
        let used: Option<i64> = sqlx::query_scalar("SELECT MAX(nonce) FROM keeper.outbox WHERE sender = $1")
            .bind(self.address().as_slice())
            .fetch_one(&mut *tx)
            .await?;
        let chain = self.provider.get_transaction_count(self.address()).pending().await.map_err(rpc("eth_getTransactionCount"))?;
        Ok(used.map_or(0, |n| n as u64 + 1).max(chain))
    }

    /// The latest block's header: chain time, gas limit and base fee all come from it.
    pub async fn latest_header(&self) -> Result<alloy::rpc::types::Header, KeeperError> {
        let block = self
            .provider
            .get_block_by_number(BlockNumberOrTag::Latest)
            .await
            .map_err(rpc("eth_getBlockByNumber"))?
            .ok_or_else(|| KeeperError::Chain { action: "eth_getBlockByNumber", message: "no latest block".into() })?;
        Ok(block.header)
    }

    async fn fees(&self) -> Result<(u128, u128), KeeperError> {
        let base = u128::from(self.latest_header().await?.base_fee_per_gas.unwrap_or(1_000_000_000));
        let max_fee = (base * 2 + self.fees.priority_fee).min(self.fees.max_fee_cap);
        Ok((max_fee, self.fees.priority_fee.min(max_fee)))
    }

    async fn sign(&self, request: TransactionRequest) -> Result<TxEnvelope, KeeperError> {
        let wallet = EthereumWallet::from(self.key.signer().clone());
        <TransactionRequest as NetworkTransactionBuilder<Ethereum>>::build(request, &wallet).await.map_err(|e| KeeperError::Chain { action: "sign", message: e.to_string() })
    }

    async fn broadcast(&self, raw: &[u8]) -> Result<(), KeeperError> {
        match self.provider.send_raw_transaction(raw).await {
            Ok(_) => Ok(()),
            // Already in the pool or already mined: the receipt will tell.
            Err(e) if e.to_string().contains("already") || e.to_string().contains("nonce too low") => Ok(()),
            Err(e) => Err(KeeperError::Chain { action: "eth_sendRawTransaction", message: e.to_string() }),
        }
    }

    /// Signs the oldest planned action and persists it as sent, without broadcasting it; returns the raw
    /// transaction, or `None` when nothing is planned. A pre-check that reverts fails the action (with the
    /// contract's error name) without using a nonce.
    pub async fn sign_next(&self, pool: &PgPool, report: &mut OutboxReport) -> Result<Option<Vec<u8>>, KeeperError> {
        self.sign_next_of(pool, report, None).await
    }

    /// [`Self::sign_next`] among the actions `keys` only (all when `None`).
    async fn sign_next_of(&self, pool: &PgPool, report: &mut OutboxReport, keys: Option<&[String]>) -> Result<Option<Vec<u8>>, KeeperError> {
        let mut tx = pool.begin().await?;
        let row: Option<(String, Vec<u8>, Vec<u8>)> = sqlx::query_as(
            "SELECT action_key, target, calldata FROM keeper.outbox WHERE state = 'planned' AND ($1::TEXT[] IS NULL OR action_key = ANY($1))
             ORDER BY planned_at, action_key LIMIT 1 FOR UPDATE SKIP LOCKED",
        )
        .bind(keys)
        .fetch_optional(&mut *tx)
        .await?;
        let Some((key, target, calldata)) = row else { return Ok(None) };
        let target = Address::from_slice(&target);
        let request = self.request(target, &calldata);
        let gas = match self.provider.estimate_gas(request.clone()).await {
            Ok(gas) => gas,
            Err(error) => {
                let reason = decode_revert(&error);
                sqlx::query("UPDATE keeper.outbox SET state = 'failed', failure = $2, finished_at = now() WHERE action_key = $1")
                    .bind(&key)
                    .bind(format!("pre-check: {reason}"))
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                report.failed += 1;
                tracing::warn!(action = %key, %reason, "action refused by its pre-check");
                return Ok(Some(Vec::new()));
            }
        };
        let nonce = self.next_nonce(&mut tx).await?;
        let (max_fee, priority) = self.fees().await?;
        let gas_limit = gas + gas / 5;
        let envelope = self
            .sign(
                request
                    .with_nonce(nonce)
                    .with_chain_id(self.chain_id)
                    .with_gas_limit(gas_limit)
                    .with_max_fee_per_gas(max_fee)
                    .with_max_priority_fee_per_gas(priority),
            )
            .await?;
        let raw = envelope.encoded_2718();
        sqlx::query(
            "UPDATE keeper.outbox SET state = 'sent', sender = $2, nonce = $3, gas_limit = $4, max_fee_per_gas = $5::NUMERIC,
                 priority_fee = $6::NUMERIC, tx_hashes = ARRAY[$7::BYTEA], raw_tx = $8, sent_at = now()
             WHERE action_key = $1",
        )
        .bind(&key)
        .bind(self.address().as_slice())
        .bind(nonce as i64)
        .bind(gas_limit as i64)
        .bind(max_fee.to_string())
        .bind(priority.to_string())
        .bind(envelope.tx_hash().as_slice())
        .bind(&raw)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        report.sent += 1;
        tracing::info!(action = %key, nonce, tx = %envelope.tx_hash(), "signed");
        Ok(Some(raw))
    }

    /// Signs, persists and broadcasts every planned action, one at a time.
    pub async fn send_planned(&self, pool: &PgPool, report: &mut OutboxReport) -> Result<(), KeeperError> {
        while let Some(raw) = self.sign_next_of(pool, report, None).await? {
            if !raw.is_empty() {
                self.broadcast(&raw).await?;
            }
        }
        Ok(())
    }

    /// [`Self::send_planned`] for the actions `keys` only (an operator command sends its own actions, not the
    /// engine's).
    pub async fn send_planned_of(&self, pool: &PgPool, report: &mut OutboxReport, keys: &[String]) -> Result<(), KeeperError> {
        while let Some(raw) = self.sign_next_of(pool, report, Some(keys)).await? {
            if !raw.is_empty() {
                self.broadcast(&raw).await?;
            }
        }
        Ok(())
    }

    /// Puts a sent action whose nonce was used by someone else back to `planned` (its hashes stay, for the record).
    async fn plan_again(&self, pool: &PgPool, key: &str, nonce: i64) -> Result<(), KeeperError> {
        let why = format!("nonce {nonce} was used by a transaction this keeper did not sign; planned again for a new nonce");
        sqlx::query(
            "UPDATE keeper.outbox SET state = 'planned', nonce = NULL, raw_tx = NULL, sent_at = NULL, failure = $2
             WHERE action_key = $1 AND state = 'sent'",
        )
        .bind(key)
        .bind(&why)
        .execute(pool)
        .await?;
        tracing::warn!(action = %key, nonce, "{why}");
        Ok(())
    }

    /// Matches every sent action to its receipt. A receipt in a final block ([`Finality`]) marks it confirmed, or
    /// failed (reverted, with the error name); a receipt in a block not final yet leaves it `sent`, with the block
    /// noted. Without a receipt (not mined yet, or mined and then dropped by a reorg) the stored transaction is
    /// broadcast again, or re-signed with higher fees after `bump_after`, always with its own nonce, so it can be
    /// mined once at most. An action whose nonce was used by a transaction this keeper never signed (the same key
    /// used elsewhere) can no longer be mined: it is planned again, to be signed with a new nonce; the contracts
    /// make a repeated effect a no-op.
    pub async fn reconcile(&self, pool: &PgPool, report: &mut OutboxReport) -> Result<(), KeeperError> {
        type SentRow = (String, Vec<u8>, Vec<u8>, i64, i64, String, String, Vec<Vec<u8>>, Vec<u8>, f64, Option<i64>);
        let rows: Vec<SentRow> = sqlx::query_as(
            "SELECT action_key, target, calldata, nonce, gas_limit, max_fee_per_gas::TEXT, priority_fee::TEXT, tx_hashes,
                    raw_tx, EXTRACT(EPOCH FROM now() - sent_at)::FLOAT8, block_number
             FROM keeper.outbox WHERE state = 'sent' AND sender = $1 ORDER BY nonce",
        )
        .bind(self.address().as_slice())
        .fetch_all(pool)
        .await?;
        if rows.is_empty() {
            return Ok(());
        }
        // Read before the receipts: a nonce below this count with none of our receipts was used by another
        // transaction (had ours been mined first, its receipt would be found below).
        let used_nonces = self.provider.get_transaction_count(self.address()).await.map_err(rpc("eth_getTransactionCount"))?;
        // Read before the receipts too: a block final now is final when its receipt is read.
        let final_block = self.finality.final_block(&self.provider).await?;
        for (key, target, calldata, nonce, gas_limit, max_fee, priority, hashes, raw, age, seen_in) in rows {
            let mut mined = None;
            for hash in hashes.iter().rev() {
                let hash = B256::from_slice(hash);
                if let Some(receipt) = self.provider.get_transaction_receipt(hash).await.map_err(rpc("eth_getTransactionReceipt"))? {
                    mined = Some(receipt);
                    break;
                }
            }
            if let Some(receipt) = mined {
                let block = receipt.block_number.unwrap_or_default();
                if final_block.is_none_or(|f| block > f) {
                    // Mined, not final: a reorg may still drop it. It stays `sent` (in flight for every planner).
                    if seen_in != Some(block as i64) {
                        sqlx::query("UPDATE keeper.outbox SET block_number = $2 WHERE action_key = $1 AND state = 'sent'")
                            .bind(&key)
                            .bind(block as i64)
                            .execute(pool)
                            .await?;
                        tracing::info!(action = %key, block, finality = %self.finality, "mined; waiting until final");
                    }
                    report.awaiting_finality += 1;
                    continue;
                }
                let (state, failure) = if receipt.status() {
                    report.confirmed += 1;
                    report.receipts.push(receipt.clone());
                    ("confirmed", None)
                } else {
                    report.failed += 1;
                    let request = self.request(Address::from_slice(&target), &calldata);
                    let replay = self.provider.call(request).block(block.saturating_sub(1).into()).await;
                    (
                        "failed",
                        Some(match replay {
                            Err(e) => format!("reverted in block {block}: {}", decode_revert(&e)),
                            Ok(_) => format!("reverted in block {block}"),
                        }),
                    )
                };
                sqlx::query(
                    "UPDATE keeper.outbox SET state = $2, failure = $3, block_number = $4, gas_used = $5, finished_at = now()
                     WHERE action_key = $1",
                )
                .bind(&key)
                .bind(state)
                .bind(failure)
                .bind(block as i64)
                .bind(receipt.gas_used as i64)
                .execute(pool)
                .await?;
                continue;
            }
            if let Some(block) = seen_in {
                // Seen mined before, gone now: a reorg dropped it. Its nonce is free again (or used by another
                // transaction, below), so the same signed transaction goes out again.
                sqlx::query("UPDATE keeper.outbox SET block_number = NULL WHERE action_key = $1 AND state = 'sent'").bind(&key).execute(pool).await?;
                report.dropped += 1;
                tracing::warn!(action = %key, block, nonce, "a reorg dropped the transaction mined in this block; broadcasting it again");
            }
            if (nonce as u64) < used_nonces {
                self.plan_again(pool, &key, nonce).await?;
                report.resigned += 1;
                continue;
            }
            if age < self.fees.bump_after.as_secs_f64() {
                self.broadcast(&raw).await?;
                continue;
            }
            // Not mined in time: the same nonce again, with fees raised by `bump_percent`, up to the cap.
            let bump = |fee: &str| {
                let fee: u128 = fee.parse().unwrap_or(0);
                (fee + fee * self.fees.bump_percent / 100).min(self.fees.max_fee_cap)
            };
            let (new_max, new_priority) = (bump(&max_fee), bump(&priority));
            if new_max <= max_fee.parse().unwrap_or(0) {
                self.broadcast(&raw).await?; // at the cap: keep waiting
                continue;
            }
            let request = self
                .request(Address::from_slice(&target), &calldata)
                .with_nonce(nonce as u64)
                .with_chain_id(self.chain_id)
                .with_gas_limit(gas_limit as u64)
                .with_max_fee_per_gas(new_max)
                .with_max_priority_fee_per_gas(new_priority.min(new_max));
            let envelope = self.sign(request).await?;
            let raw = envelope.encoded_2718();
            sqlx::query(
                "UPDATE keeper.outbox SET max_fee_per_gas = $2::NUMERIC, priority_fee = $3::NUMERIC,
                     tx_hashes = tx_hashes || $4::BYTEA, raw_tx = $5, sent_at = now() WHERE action_key = $1",
            )
            .bind(&key)
            .bind(new_max.to_string())
            .bind(new_priority.min(new_max).to_string())
            .bind(envelope.tx_hash().as_slice())
            .bind(&raw)
            .execute(pool)
            .await?;
            report.bumped += 1;
            tracing::info!(action = %key, nonce, tx = %envelope.tx_hash(), max_fee = new_max, "replaced with higher fees");
            self.broadcast(&raw).await?;
        }
        Ok(())
    }
}
