//! Renewal planning: the subscriptions due by the indexed tables, in batches, each at most once per retry slot.
//! The first attempt is always sent (a failed pull marks the subscription past due on chain); after that a past-due
//! one is retried only when the contract's `dueForRenewal` view says it would collect, on the retry schedule
//! inside its grace period, and once more when its grace has run out: `renew` is what lapses it on chain.

use alloy::{
    primitives::{Address, U256},
    providers::DynProvider,
    sol_types::SolCall,
};
use serde_json::json;
use sqlx::PgPool;
use subsettle_abi::Subscriptions;

use crate::{
    KeeperError,
    settlement::outbox::{Action, batch_key, retry_slot},
};

/// How renewals are planned.
#[derive(Debug, Clone, Copy)]
pub struct RenewalPolicy {
    /// Subscriptions per `renew` transaction.
    pub batch: usize,
    /// Seconds between two attempts at the same subscription (a retry slot).
    pub retry_interval: i64,
}

impl Default for RenewalPolicy {
    fn default() -> Self {
        Self { batch: 200, retry_interval: 6 * 3_600 }
    }
}

/// The renewals to plan at chain time `now`.
pub async fn plan_renewals(
    pool: &PgPool,
    provider: &DynProvider,
    chain_id: u64,
    subscriptions: Address,
    policy: RenewalPolicy,
    now: i64,
) -> Result<Vec<Action>, KeeperError> {
    let slot = retry_slot(now, policy.retry_interval);
    let prefix = format!("renew:{slot}:");
    // Due by the indexed state, not already attempted in this slot (in any outbox state).
    let due: Vec<(i64, i64, bool, bool)> = sqlx::query_as(
        "SELECT s.subscription_id::BIGINT, s.period_index::BIGINT + 1, s.paid_through + p.grace_period <= $2,
                s.status = 'active'
         FROM chain.subscriptions s JOIN chain.plans p ON p.chain_id = s.chain_id AND p.plan_id = s.plan_id
         WHERE s.chain_id = $1 AND s.status IN ('active', 'past_due') AND s.paid_through <= $2
           AND NOT EXISTS (
               SELECT 1 FROM keeper.outbox o, jsonb_array_elements(o.items) AS item
               WHERE o.kind = 'renew' AND starts_with(o.action_key, $3)
                 AND (item ->> 'id')::BIGINT = s.subscription_id::BIGINT)
         ORDER BY s.subscription_id",
    )
    .bind(chain_id as i64)
    .bind(now)
    .bind(&prefix)
    .fetch_all(pool)
    .await?;
    if due.is_empty() {
        return Ok(Vec::new());
    }
    // The contract's view says which would collect now; past grace they are sent anyway, to lapse.
    let contract = Subscriptions::new(subscriptions, provider);
    let ids: Vec<U256> = due.iter().map(|(id, _, _, _)| U256::from(*id as u64)).collect();
    let mut would_collect = Vec::with_capacity(ids.len());
    for chunk in ids.chunks(1_000) {
        let answer = contract
            .dueForRenewal(chunk.to_vec())
            .call()
            .await
            .map_err(|e| KeeperError::Chain { action: "dueForRenewal", message: e.to_string() })?;
        would_collect.extend(answer);
    }
    // Sent: those that would collect; those past grace (to lapse them); and, once, those not attempted yet even if
    // they would fail, so that the chain records them past due (`RenewalFailed`) for the subscriber to see. After
    // that a past-due one is retried only when it would collect.
    let chosen: Vec<(i64, i64)> = due
        .iter()
        .zip(&would_collect)
        .filter(|((_, _, lapsing, first_attempt), collect)| **collect || *lapsing || *first_attempt)
        .map(|((id, period, _, _), _)| (*id, *period))
        .collect();
    Ok(chosen
        .chunks(policy.batch.max(1))
        .map(|batch| {
            let key = batch_key(&prefix, &batch.iter().map(|(id, period)| format!("{id}@{period}")).collect::<Vec<_>>());
            let ids: Vec<U256> = batch.iter().map(|(id, _)| U256::from(*id as u64)).collect();
            Action {
                key,
                kind: "renew",
                target: subscriptions,
                calldata: Subscriptions::renewCall { ids }.abi_encode().into(),
                items: json!(batch.iter().map(|(id, period)| json!({ "id": id, "period": period })).collect::<Vec<_>>()),
            }
        })
        .collect())
}
