//! Planning the money actions after period close: cumulative overage charges with their usage roots, settlement
//! epochs once every charge they attribute is confirmed on chain, and pushed payouts to recipients above a
//! threshold who are not on hold. Each is an [`Action`] with a deterministic key; charges and payouts are tried
//! once per retry slot, a failed settlement again after a retry interval, a bounded number of times.

use alloy::{
    primitives::{Address, B256, U256},
    sol_types::SolCall,
};
use serde_json::json;
use sqlx::PgPool;
use subsettle_abi::{ISubscriptions::Charge, SplitEscrow, Subscriptions};

use crate::{
    KeeperError,
    settlement::outbox::{Action, batch_key, retry_slot},
    store::numeric_u128,
};

/// How charges, settlements and payouts are planned.
#[derive(Debug, Clone, Copy)]
pub struct SettlementPolicy {
    /// Items per `chargeUsage` or `claimMany` transaction.
    pub batch: usize,
    /// Seconds between two attempts at the same charge or payout.
    pub retry_interval: i64,
    /// The contract's charge window: a period's overage can be charged until its end plus this.
    pub charge_window: i64,
    /// Recipients with at least this claimable balance (base units) get a pushed payout.
    pub payout_threshold: u128,
    /// Charge mid-period each time the overage crosses a multiple of this (base units); `None`: at close only.
    pub charge_threshold: Option<u128>,
}

/// Cumulative overage charges of closed periods that the chain has not collected yet, inside the charge window.
pub async fn plan_charges(pool: &PgPool, chain_id: u64, subscriptions: Address, policy: SettlementPolicy, now: i64) -> Result<Vec<Action>, KeeperError> {
    let slot = retry_slot(now, policy.retry_interval);
    let prefix = format!("charge:{slot}:");
    let rows: Vec<(i64, i64, String, Vec<u8>)> = sqlx::query_as(
        "SELECT c.subscription_id, c.period_index, c.overage_charge::TEXT, c.usage_root
         FROM keeper.period_closes c
         LEFT JOIN chain.charged_per_period ch ON ch.chain_id = c.chain_id
              AND ch.subscription_id = c.subscription_id::NUMERIC AND ch.period_index = c.period_index::NUMERIC
         WHERE c.chain_id = $1 AND c.overage_charge > 0 AND COALESCE(ch.charged, 0) < c.overage_charge
           -- Inside the charge window, which time spent paused does not use up (as the contract counts it).
           AND c.period_end + $2 + chain.paused_seconds($1, c.period_end, $3) > $3
           AND NOT EXISTS (
               SELECT 1 FROM keeper.charge_items i
               WHERE (starts_with(i.action_key, $4) OR i.state IN ('planned', 'sent'))
                 AND i.subscription_id = c.subscription_id AND i.period_index = c.period_index)
         ORDER BY c.subscription_id, c.period_index",
    )
    .bind(chain_id as i64)
    .bind(policy.charge_window)
    .bind(now)
    .bind(&prefix)
    .fetch_all(pool)
    .await?;
    rows.chunks(policy.batch.max(1))
        .map(|batch| {
            let mut charges = Vec::with_capacity(batch.len());
            let mut items = Vec::with_capacity(batch.len());
            for (id, period, cumulative, root) in batch {
                let amount = numeric_u128(cumulative, "overage_charge")?;
                charges.push(Charge {
                    subscriptionId: U256::from(*id as u64),
                    periodIndex: U256::from(*period as u64),
                    cumulativeOverage: U256::from(amount),
                    usageRoot: B256::from_slice(root),
                });
                items.push(json!({ "id": id, "period": period, "cumulative": cumulative }));
            }
            let key = batch_key(&prefix, &batch.iter().map(|(id, period, cumulative, _)| format!("{id}:{period}:{cumulative}")).collect::<Vec<_>>());
            Ok(Action {
                key,
                kind: "charge",
                target: subscriptions,
                calldata: Subscriptions::chargeUsageCall { charges }.abi_encode().into(),
                items: json!(items),
            })
        })
        .collect()
}

/// How many times a settlement is tried (its first attempt and the automatic retries) before it waits for the
/// operator (`admin retry-settlement --epoch N`, [`retry_settlement`]).
pub const SETTLE_ATTEMPTS: usize = 5;

/// The outbox key of attempt `attempt` (from 1) at settling `epoch`: `settle:<epoch>`, then `settle:<epoch>:<attempt>`.
pub fn settle_key(epoch: i64, attempt: usize) -> String {
    if attempt <= 1 { format!("settle:{epoch}") } else { format!("settle:{epoch}:{attempt}") }
}

/// One attempt at settling an epoch, as the outbox holds it.
#[derive(Debug, Clone)]
struct Attempt {
    state: String,
    chain_time: Option<i64>,
}

/// Epochs not settled on chain (as indexed) whose every overage charge the chain has collected; one `settle` each,
/// in epoch order (the escrow takes epochs only one after another).
///
/// An epoch whose attempt is planned, sent, or confirmed but not indexed yet is left alone. One whose attempts all
/// failed (refused by the pre-check, or reverted in a final block) is tried again under a new key once
/// `policy.retry_interval` of chain time has passed since its last attempt was planned, up to [`SETTLE_ATTEMPTS`]
/// attempts; then it waits for the operator. The settlement id is the epoch id, so whatever happens to the
/// attempts the escrow credits an epoch once. A retry goes alone, and an epoch that waits (for a charge, a retry or
/// the operator) holds back the later ones, which the escrow would refuse before it anyway.
pub async fn plan_settlements(pool: &PgPool, chain_id: u64, escrow: Address, policy: SettlementPolicy, now: i64) -> Result<Vec<Action>, KeeperError> {
    let epochs: Vec<(i64, i64, i64, Vec<u8>, bool)> = sqlx::query_as(
        "SELECT e.epoch_id, e.epoch_start, e.closed_at, e.usage_root,
                NOT EXISTS (
                    SELECT 1 FROM keeper.epoch_closes ec JOIN keeper.period_closes c USING (close_id)
                    LEFT JOIN chain.charged_per_period ch ON ch.chain_id = c.chain_id
                         AND ch.subscription_id = c.subscription_id::NUMERIC AND ch.period_index = c.period_index::NUMERIC
                    WHERE ec.epoch_id = e.epoch_id AND COALESCE(ch.charged, 0) < c.overage_charge)
         FROM keeper.epochs e
         WHERE e.chain_id = $1
           AND NOT EXISTS (SELECT 1 FROM chain.settlements s WHERE s.chain_id = e.chain_id AND s.settlement_id = e.epoch_id::NUMERIC)
         ORDER BY e.epoch_id",
    )
    .bind(chain_id as i64)
    .fetch_all(pool)
    .await?;
    let ids: Vec<i64> = epochs.iter().map(|(id, ..)| *id).collect();
    let rows: Vec<(i64, String, Option<i64>)> =
        sqlx::query_as("SELECT epoch_id, state, chain_time FROM keeper.settle_attempts WHERE epoch_id = ANY($1) ORDER BY planned_at, action_key")
            .bind(&ids)
            .fetch_all(pool)
            .await?;
    let mut attempts: std::collections::BTreeMap<i64, Vec<Attempt>> = std::collections::BTreeMap::new();
    for (epoch, state, chain_time) in rows {
        attempts.entry(epoch).or_default().push(Attempt { state, chain_time });
    }
    let mut actions = Vec::new();
    for (epoch, start, end, root, collected) in epochs {
        let tries = attempts.remove(&epoch).unwrap_or_default();
        if tries.iter().any(|a| matches!(a.state.as_str(), "planned" | "sent" | "confirmed")) {
            continue; // on its way, or confirmed and not indexed yet
        }
        if !collected {
            break;
        }
        let failed: Vec<&Attempt> = tries.iter().filter(|a| a.state == "failed").collect();
        if failed.len() >= SETTLE_ATTEMPTS {
            tracing::warn!(epoch, attempts = failed.len(), "settlement failed every attempt; waiting for `admin retry-settlement --epoch {epoch}`");
            break;
        }
        let last = failed.iter().filter_map(|a| a.chain_time).max();
        if last.is_some_and(|at| now < at.saturating_add(policy.retry_interval)) {
            break; // tried in this retry interval already
        }
        actions.push(settle_action(pool, escrow, epoch, start, end, &root, settle_key(epoch, tries.len() + 1)).await?);
        if !failed.is_empty() {
            break; // a retry goes alone: the later epochs follow once it is through
        }
    }
    Ok(actions)
}

/// The `settle` call of an epoch, under `key`.
async fn settle_action(pool: &PgPool, escrow: Address, epoch: i64, start: i64, end: i64, root: &[u8], key: String) -> Result<Action, KeeperError> {
    let splits: Vec<(String, String)> =
        sqlx::query_as("SELECT split_id::TEXT, amount::TEXT FROM keeper.epoch_splits WHERE epoch_id = $1 ORDER BY epoch_splits.split_id")
            .bind(epoch)
            .fetch_all(pool)
            .await?;
    let split_ids = splits.iter().map(|(s, _)| s.parse::<U256>()).collect::<Result<Vec<_>, _>>();
    let amounts = splits.iter().map(|(_, a)| a.parse::<U256>()).collect::<Result<Vec<_>, _>>();
    let (Ok(split_ids), Ok(amounts)) = (split_ids, amounts) else {
        return Err(KeeperError::ChainData(format!("epoch {epoch}: a split id or amount is not an integer")));
    };
    let call = SplitEscrow::settleCall {
        settlementId: U256::from(epoch as u64),
        epochStart: U256::from(start.max(0) as u64),
        epochEnd: U256::from(end.max(0) as u64),
        splitIds: split_ids,
        amounts,
        usageRoot: B256::from_slice(root),
    };
    Ok(Action {
        key,
        kind: "settle",
        target: escrow,
        calldata: call.abi_encode().into(),
        items: json!(splits.iter().map(|(s, a)| json!({ "split": s, "amount": a })).collect::<Vec<_>>()),
    })
}

/// What [`retry_settlement`] found.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum SettlementRetry {
    /// Its failed attempts were set aside: the engine tries it again at its next step, with a full round of
    /// attempts.
    Reopened {
        /// Failed attempts set aside (state `superseded`, their failures kept).
        failed_attempts: usize,
        /// The newest failure.
        last_failure: Option<String>,
    },
    /// No failed attempt to set aside: it was never tried, its retry is already granted, or it is on its way.
    NothingFailed {
        /// The newest attempt's key and state, if any.
        latest: Option<(String, String)>,
    },
    /// The chain (as indexed) has the settlement already.
    Settled,
}

/// The operator's retry of a settlement (`admin retry-settlement --epoch N`): sets aside the failed attempts at
/// settling `epoch` (state `superseded`, failure kept), so that the engine tries it again at its next step with a
/// full round of [`SETTLE_ATTEMPTS`]. An attempt on its way is left alone. Running it again changes nothing.
pub async fn retry_settlement(pool: &PgPool, chain_id: u64, epoch: i64) -> Result<SettlementRetry, KeeperError> {
    let mut tx = pool.begin().await?;
    let known: Option<bool> = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM chain.settlements s WHERE s.chain_id = e.chain_id AND s.settlement_id = e.epoch_id::NUMERIC)
         FROM keeper.epochs e WHERE e.chain_id = $1 AND e.epoch_id = $2 FOR UPDATE",
    )
    .bind(chain_id as i64)
    .bind(epoch)
    .fetch_optional(&mut *tx)
    .await?;
    match known {
        None => return Err(KeeperError::Invalid { field: "epoch".into(), reason: format!("{epoch} is not an epoch of chain {chain_id}") }),
        Some(true) => return Ok(SettlementRetry::Settled),
        Some(false) => {}
    }
    let open: Option<(String, String)> = sqlx::query_as(
        "SELECT action_key, state FROM keeper.settle_attempts WHERE epoch_id = $1 AND state IN ('planned', 'sent', 'confirmed')
         ORDER BY planned_at DESC LIMIT 1",
    )
    .bind(epoch)
    .fetch_optional(&mut *tx)
    .await?;
    if open.is_some() {
        return Ok(SettlementRetry::NothingFailed { latest: open });
    }
    let set_aside: Vec<(String, Option<String>)> = sqlx::query_as(
        "WITH set_aside AS (
             UPDATE keeper.outbox o SET state = 'superseded' FROM keeper.settle_attempts a
             WHERE o.action_key = a.action_key AND a.epoch_id = $1 AND o.state = 'failed'
             RETURNING o.action_key, o.failure, o.planned_at
         )
         SELECT action_key, failure FROM set_aside ORDER BY planned_at, action_key",
    )
    .bind(epoch)
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    if set_aside.is_empty() {
        let latest: Option<(String, String)> =
            sqlx::query_as("SELECT action_key, state FROM keeper.settle_attempts WHERE epoch_id = $1 ORDER BY planned_at DESC LIMIT 1")
                .bind(epoch)
                .fetch_optional(pool)
                .await?;
        return Ok(SettlementRetry::NothingFailed { latest });
    }
    tracing::info!(epoch, attempts = set_aside.len(), "failed settlement attempts set aside; the engine tries again at its next step");
    let last_failure = set_aside.iter().filter_map(|(_, f)| f.clone()).next_back();
    Ok(SettlementRetry::Reopened { failed_attempts: set_aside.len(), last_failure })
}

/// Recipients whose claimable balance is at least the threshold and who are not on hold; `claimMany` batches.
pub async fn plan_payouts(pool: &PgPool, chain_id: u64, escrow: Address, policy: SettlementPolicy, now: i64) -> Result<Vec<Action>, KeeperError> {
    let slot = retry_slot(now, policy.retry_interval);
    let prefix = format!("claim:{slot}:");
    let rows: Vec<Vec<u8>> = sqlx::query_scalar(
        "WITH last_hold AS (
             SELECT DISTINCT ON (recipient) recipient, kind, held_until FROM chain.holds WHERE chain_id = $1
             ORDER BY recipient, block_number DESC, log_index DESC
         )
         SELECT b.recipient FROM chain.recipient_balances b
         LEFT JOIN last_hold h ON h.recipient = b.recipient
         WHERE b.chain_id = $1 AND b.claimable >= $2::NUMERIC AND b.claimable > 0
           AND NOT COALESCE(h.kind = 'placed' AND h.held_until > $3, FALSE)
           AND NOT EXISTS (
               SELECT 1 FROM keeper.outbox o, jsonb_array_elements(o.items) AS item
               WHERE o.kind = 'claim' AND (starts_with(o.action_key, $4) OR o.state IN ('planned', 'sent'))
                 AND item ->> 'recipient' = '0x' || encode(b.recipient, 'hex'))
         ORDER BY b.recipient",
    )
    .bind(chain_id as i64)
    .bind(policy.payout_threshold.to_string())
    .bind(now)
    .bind(&prefix)
    .fetch_all(pool)
    .await?;
    let recipients: Vec<Address> = rows.iter().map(|r| Address::from_slice(r)).collect();
    Ok(recipients
        .chunks(policy.batch.max(1))
        .map(|batch| Action {
            key: batch_key(&prefix, &batch.iter().map(|a| format!("{a:#x}")).collect::<Vec<_>>()),
            kind: "claim",
            target: escrow,
            calldata: SplitEscrow::claimManyCall { recipients: batch.to_vec() }.abi_encode().into(),
            items: json!(batch.iter().map(|a| json!({ "recipient": format!("{a:#x}") })).collect::<Vec<_>>()),
        })
        .collect())
}
