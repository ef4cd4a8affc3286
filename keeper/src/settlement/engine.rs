//! The settlement engine's loop (`subsettle-keeper run`): under a Postgres lease, each step (every interval, or
//! sooner when a renewal or a period close falls due) first reconciles the
//! outbox with the chain (confirming what is final, sending again what a reorg dropped), then closes due periods, gathers an epoch when its cadence has come, plans renewals,
//! charges, settlements and payouts, and sends what was planned. Time is the chain's (the latest block's
//! timestamp), so a local chain whose clock is moved behaves like a real one.

use sqlx::{PgPool, pool::PoolConnection, Postgres};
use subsettle_abi::Deployment;

use crate::{
    KeeperError, metering::catalog,
    metering::close::{self, CloseOptions},
    settlement::epoch::{self, EpochScope, SettleRoom},
    settlement::outbox::{self, Action, OutboxReport, Sender},
    settlement::renewals::{RenewalPolicy, plan_renewals},
    settlement::plan::{SettlementPolicy, plan_charges, plan_payouts, plan_settlements},
    settlement::threshold::{ThresholdPolicy, plan_threshold_charges},
    settlement::token::{self, ItemFailure, TokenGate},
};

/// Everything a step needs.
#[derive(Debug, Clone)]
pub struct Engine {
    /// Postgres.
    pub pool: PgPool,
    /// The signer and the chain.
    pub sender: Sender,
    /// The contracts.
    pub deployment: Deployment,
    /// Period close settings.
    pub close: CloseOptions,
    /// Renewals.
    pub renewals: RenewalPolicy,
    /// Charges, settlements, payouts.
    pub settlement: SettlementPolicy,
    /// Seconds between settlement epochs.
    pub epoch_interval: i64,
}

/// Upper bounds of gas per item, above the measured averages (docs/keeper-bench.md: renew 16,700, charge 20,101,
/// claim 32,086 with fresh token balances), so that a batch cut by them fits.
pub const RENEW_GAS_PER_ITEM: u64 = 40_000;
/// See [`RENEW_GAS_PER_ITEM`].
pub const CHARGE_GAS_PER_ITEM: u64 = 50_000;
/// See [`RENEW_GAS_PER_ITEM`].
pub const CLAIM_GAS_PER_ITEM: u64 = 60_000;
/// Gas of a settlement per split, besides its credits, and per recipient credited: upper bounds of the measured
/// 55,810 per three-recipient split with first credits (docs/keeper-bench.md), so that an epoch cut by them fits.
pub const SETTLE_GAS_PER_SPLIT: u64 = 5_000;
/// See [`SETTLE_GAS_PER_SPLIT`].
pub const SETTLE_GAS_PER_CREDIT: u64 = 20_000;

/// Items per transaction: the configured batch, or fewer so that the transaction takes at most half of a block.
pub fn batch_for(block_gas_limit: u64, gas_per_item: u64, configured: usize) -> usize {
    let fits = (block_gas_limit / 2).saturating_sub(100_000) / gas_per_item.max(1);
    configured.min(usize::try_from(fits).unwrap_or(usize::MAX)).max(1)
}

/// What a step did.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct StepReport {
    /// Chain time of the step.
    pub now: i64,
    /// Periods closed.
    pub periods_closed: u64,
    /// The epoch gathered, if any.
    pub epoch: Option<u64>,
    /// The outbox.
    pub outbox: OutboxReport,
    /// Actions planned (or, in a dry run, that would be planned), by key.
    pub actions: Vec<String>,
    /// What the token let through at this step: while it is paused, or blacklists one of our contracts, no pull
    /// (and, when the escrow is refused, no payout) is planned or signed.
    pub token: TokenGate,
    /// Items the batches confirmed in this step could not do, with the token's explanation of a refusal.
    pub item_failures: Vec<ItemFailure>,
}

/// The lock id of the sender lease (any constant shared by every keeper of a database).
const LEASE_KEY: i64 = 0x5375_6273_6574_746c; // "Subsettl"

/// Holds the sender lease: a session advisory lock on a connection of its own, released when it is dropped or
/// the process dies (Postgres ends the session), so a second keeper takes over without double sends.
#[derive(Debug)]
pub struct Lease {
    _connection: PoolConnection<Postgres>,
}

impl Lease {
    /// Tries once to take the lease.
    pub async fn try_acquire(pool: &PgPool) -> Result<Option<Self>, KeeperError> {
        let mut connection = pool.acquire().await?;
        let taken: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)").bind(LEASE_KEY).fetch_one(&mut *connection).await?;
        Ok(taken.then_some(Self { _connection: connection }))
    }

    /// Who holds the lease, as Postgres sees it (backend pid and client address), if anyone.
    pub async fn holder(pool: &PgPool) -> Result<Option<String>, KeeperError> {
        let holder: Option<(i32, Option<String>)> = sqlx::query_as(
            "SELECT l.pid, a.client_addr::TEXT FROM pg_locks l LEFT JOIN pg_stat_activity a ON a.pid = l.pid
             WHERE l.locktype = 'advisory' AND l.granted AND ((l.classid::BIGINT << 32) | l.objid::BIGINT) = $1
               AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())",
        )
        .bind(LEASE_KEY)
        .fetch_optional(pool)
        .await?;
        Ok(holder.map(|(pid, addr)| format!("backend {pid} from {}", addr.unwrap_or_else(|| "a local socket".into()))))
    }
}

/// How long to sleep after a step: the interval, or less when work falls due sooner (`next_due`, chain time).
pub fn pause_until(now: i64, next_due: Option<i64>, interval_secs: u64) -> u64 {
    match next_due {
        Some(due) if due > now => interval_secs.min(u64::try_from(due - now).unwrap_or(u64::MAX)).max(1),
        Some(_) => 1,
        None => interval_secs,
    }
}

impl Engine {
    /// The chain time at which the next renewal falls due or the next paid period can close, if any.
    pub async fn next_due(&self) -> Result<Option<i64>, KeeperError> {
        let due: Option<i64> = sqlx::query_scalar(
            "SELECT LEAST(
                 (SELECT MIN(s.paid_through)::BIGINT FROM chain.subscriptions s
                  WHERE s.chain_id = $1 AND s.status IN ('active', 'past_due')),
                 (SELECT MIN(s.paid_through)::BIGINT + $2 FROM chain.subscriptions s
                  WHERE s.chain_id = $1 AND NOT EXISTS (
                      SELECT 1 FROM keeper.period_closes c
                      WHERE c.chain_id = s.chain_id AND c.subscription_id = s.subscription_id::BIGINT
                        AND c.period_index = s.period_index::BIGINT)))",
        )
        .bind(self.deployment.chain_id as i64)
        .bind(self.close.late_cutoff)
        .fetch_one(&self.pool)
        .await?;
        Ok(due)
    }

    /// The chain's time: the latest block's timestamp.
    pub async fn chain_time(&self) -> Result<i64, KeeperError> {
        Ok(self.sender.latest_header().await?.timestamp as i64)
    }

    /// What to send at `now`. Settlements are book entries in the escrow and always go; a pull or a payout the
    /// token would refuse (`gate`) is not planned: it would fail on chain, mark subscribers past due and spend a
    /// nonce for nothing.
    async fn plan_all(&self, now: i64, gas_limit: u64, gate: TokenGate, dry_run: bool) -> Result<Vec<Action>, KeeperError> {
        let d = &self.deployment;
        // Batches are cut to fit half a block at a conservative gas per item, whatever `--batch` says.
        let renewals = RenewalPolicy { batch: batch_for(gas_limit, RENEW_GAS_PER_ITEM, self.renewals.batch), ..self.renewals };
        let charges = SettlementPolicy { batch: batch_for(gas_limit, CHARGE_GAS_PER_ITEM, self.settlement.batch), ..self.settlement };
        let payouts = SettlementPolicy { batch: batch_for(gas_limit, CLAIM_GAS_PER_ITEM, self.settlement.batch), ..self.settlement };
        let mut actions = Vec::new();
        if gate.pulls_open() {
            actions.extend(plan_renewals(&self.pool, &self.sender.provider, d.chain_id, d.subscriptions, renewals, now).await?);
            actions.extend(plan_charges(&self.pool, d.chain_id, d.subscriptions, charges, now).await?);
            if let Some(threshold) = self.settlement.charge_threshold {
                let policy = ThresholdPolicy { threshold, retry_interval: self.settlement.retry_interval, batch: charges.batch };
                actions.extend(plan_threshold_charges(&self.pool, &self.close, d.subscriptions, policy, now, dry_run).await?);
            }
        }
        actions.extend(plan_settlements(&self.pool, d.chain_id, d.escrow, self.settlement, now).await?);
        if gate.payouts_open() {
            actions.extend(plan_payouts(&self.pool, d.chain_id, d.escrow, payouts, now).await?);
        }
        Ok(actions)
    }

    /// The failed items of the confirmed `receipts`, each explained by the token (`gate`, as read at this step) and
    /// logged.
    async fn item_failures(&self, receipts: &[alloy::rpc::types::TransactionReceipt], gate: TokenGate) -> Result<Vec<ItemFailure>, KeeperError> {
        let mut failures = Vec::new();
        for receipt in receipts {
            for mut failure in token::item_failures(receipt, &self.deployment) {
                failure.explain(&self.sender.provider, &self.deployment, gate).await?;
                tracing::warn!(
                    tx = %receipt.transaction_hash, kind = failure.kind, item = %failure.item, reason = %failure.reason,
                    account = ?failure.account, explanation = failure.explanation.as_deref().unwrap_or("-"),
                    "an item of a confirmed batch failed; it is retried by its policy"
                );
                failures.push(failure);
            }
        }
        Ok(failures)
    }

    async fn epoch_due(&self, now: i64) -> Result<bool, KeeperError> {
        // The last epoch, and whether closes that did not fit it are waiting: they make the next epoch at once.
        let last: Option<(i64, bool)> =
            sqlx::query_as("SELECT closed_at, more FROM keeper.epochs WHERE chain_id = $1 ORDER BY epoch_id DESC LIMIT 1")
                .bind(self.deployment.chain_id as i64)
                .fetch_optional(&self.pool)
                .await?;
        Ok(last.is_none_or(|(last, more)| more || now - last >= self.epoch_interval))
    }

    /// One step. With `dry_run`, nothing is written or sent: the report lists what would be planned.
    pub async fn step(&self, dry_run: bool) -> Result<StepReport, KeeperError> {
        let head = self.sender.latest_header().await?;
        let (now, gas_limit) = (head.timestamp as i64, head.gas_limit);
        let mut report = StepReport { now, ..StepReport::default() };
        report.token = TokenGate::read(&self.sender.provider, &self.deployment).await?;
        if dry_run {
            report.actions = self.plan_all(now, gas_limit, report.token, true).await?.into_iter().map(|a| a.key).collect();
            return Ok(report);
        }
        // Whatever was signed before a restart is settled first: nothing new is sent until then.
        self.sender.reconcile(&self.pool, &mut report.outbox).await?;
        let receipts = std::mem::take(&mut report.outbox.receipts);
        report.item_failures = self.item_failures(&receipts, report.token).await?;
        let snapshot = catalog::load(&self.pool).await?;
        report.periods_closed = close::close_due_periods(&self.pool, &snapshot, &self.close, now).await?.periods;
        if self.epoch_due(now).await? {
            let scope = EpochScope::Collected { charge_window: self.settlement.charge_window };
            let room = SettleRoom { gas: (gas_limit / 2).saturating_sub(100_000), per_split: SETTLE_GAS_PER_SPLIT, per_credit: SETTLE_GAS_PER_CREDIT };
            // One `settle` per epoch. Epochs are consecutive and never empty, so closes that did not fit make the
            // next epoch at the next step (`epoch_due` sees `more`), not an interval later.
            if let Some(epoch) = epoch::close_epoch(&self.pool, self.deployment.chain_id, now, scope, room).await? {
                report.epoch = Some(epoch.epoch_id);
            }
        }
        if !report.token.pulls_open() {
            tracing::warn!(token = %self.deployment.token, gate = %report.token, payouts_open = report.token.payouts_open(),
                "the token refuses our transfers: no renewal or usage charge (nor payout, if the escrow is refused) is planned until it lets them through");
        }
        let actions = self.plan_all(now, gas_limit, report.token, false).await?;
        report.outbox.planned = outbox::plan(&self.pool, &actions, now).await?;
        report.actions = actions.into_iter().map(|a| a.key).collect();
        match report.token.pulls_open() && report.token.payouts_open() {
            true => self.sender.send_planned(&self.pool, &mut report.outbox).await?,
            // Pulls and payouts planned before the token closed wait in the outbox, unsigned, their nonces unspent.
            false => self.sender.send_planned_of(&self.pool, &mut report.outbox, &report.actions).await?,
        }
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_loop_wakes_early_when_work_falls_due() {
        assert_eq!(pause_until(1_000, Some(1_010), 30), 10);
        assert_eq!(pause_until(1_000, Some(5_000), 30), 30);
        assert_eq!(pause_until(1_000, Some(900), 30), 1, "overdue work: soon, but not a busy loop");
        assert_eq!(pause_until(1_000, None, 30), 30);
    }

    #[test]
    fn batches_fit_half_a_block() {
        // 30M gas blocks: 14.9M / 40k = 372 renewals at most.
        assert_eq!(batch_for(30_000_000, RENEW_GAS_PER_ITEM, 500), 372);
        assert_eq!(batch_for(30_000_000, RENEW_GAS_PER_ITEM, 200), 200);
        assert_eq!(batch_for(1_000_000, CLAIM_GAS_PER_ITEM, 200), 6);
        assert_eq!(batch_for(100_000, CLAIM_GAS_PER_ITEM, 200), 1, "never zero");
    }
}
