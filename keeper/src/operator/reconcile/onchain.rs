//! The contracts' views, every one read at the same block (the indexer's cursor), a few calls at a time.

use std::{collections::BTreeMap, future::Future};

use alloy::{
    eips::BlockId,
    primitives::{Address, U256},
    providers::DynProvider,
};
use futures::{StreamExt, TryStreamExt};
use subsettle_abi::{Deployment, SplitEscrow, Subscriptions, usdc::FiatTokenV2_2};

use super::EscrowFigures;
use crate::{KeeperError, metering::statement::ChargeClock};

/// Calls in flight at once.
const CONCURRENT_CALLS: usize = 16;

/// A subscription and its usage ledger as the contract holds them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct ChainSubscription {
    /// `subscription(id)` in the words of `chain.subscriptions`.
    pub(super) summary: String,
    /// `usageLedger(id).period`: the latest period charged. The ledger keeps this period and the one before.
    pub(super) ledger_period: u64,
    /// `usageLedger(id).chargedInPeriod`.
    pub(super) charged_in_period: u64,
    /// `usageLedger(id).chargedInPreviousPeriod`.
    pub(super) charged_in_previous_period: u64,
    /// `subscription(id).periodIndex`: the current (last paid) period.
    pub(super) period_index: u64,
}

impl ChainSubscription {
    /// Whether the chain still knows what was charged in `period`: the ledger forgets periods older than the one
    /// before its latest (and nothing was ever charged in a later one).
    pub(super) fn keeps(&self, period: u64) -> bool {
        period + 1 >= self.ledger_period
    }
}

/// `subscription(id)` summarised as `chain.subscriptions` is, for comparison.
pub(super) fn summary(subscriber: Address, period_index: u64, paid_through: u64, status: &str) -> String {
    format!("subscriber {subscriber} period {period_index} paid through {paid_through} {status}")
}

/// `ISubscriptions.Status` (a `uint8` in the ABI), in its declaration order.
fn status_name(status: u8) -> &'static str {
    match status {
        0 => "none",
        1 => "active",
        2 => "past_due",
        3 => "cancelled",
        4 => "lapsed",
        _ => "invalid",
    }
}

fn failed(action: &'static str) -> impl Fn(alloy::contract::Error) -> KeeperError {
    move |e| KeeperError::Chain { action, message: e.to_string() }
}

/// Runs `call` for every key, [`CONCURRENT_CALLS`] at a time, keeping the keys' order.
async fn each<K, V, F, Fut>(keys: impl IntoIterator<Item = K>, call: F) -> Result<BTreeMap<K, V>, KeeperError>
where
    K: Copy + Ord,
    F: Fn(K) -> Fut,
    Fut: Future<Output = Result<V, KeeperError>>,
{
    futures::stream::iter(keys.into_iter().map(|key| {
        let answer = call(key);
        async move { Ok::<_, KeeperError>((key, answer.await?)) }
    }))
    .buffered(CONCURRENT_CALLS)
    .try_collect()
    .await
}

/// The deployment's contracts at one block.
pub(super) struct OnChain {
    subscriptions: Subscriptions::SubscriptionsInstance<DynProvider>,
    escrow: SplitEscrow::SplitEscrowInstance<DynProvider>,
    token: FiatTokenV2_2::FiatTokenV2_2Instance<DynProvider>,
    block: BlockId,
    /// The same block's number.
    number: u64,
}

impl OnChain {
    pub(super) fn at(provider: DynProvider, deployment: &Deployment, block: u64) -> Self {
        Self {
            subscriptions: Subscriptions::new(deployment.subscriptions, provider.clone()),
            escrow: SplitEscrow::new(deployment.escrow, provider.clone()),
            token: FiatTokenV2_2::new(deployment.token, provider),
            block: BlockId::number(block),
            number: block,
        }
    }

    /// The escrow's balance, liabilities and revenue.
    pub(super) async fn escrow(&self) -> Result<EscrowFigures, KeeperError> {
        let b = self.block;
        let token_balance = self.token.balanceOf(*self.escrow.address()).block(b).call().await.map_err(failed("balanceOf(escrow)"))?;
        let unallocated = self.escrow.unallocated().block(b).call().await.map_err(failed("unallocated"))?;
        let total_claimable = self.escrow.totalClaimable().block(b).call().await.map_err(failed("totalClaimable"))?;
        let surplus = self.escrow.surplus().block(b).call().await.map_err(failed("surplus"))?;
        let total_revenue = self.subscriptions.totalRevenue().block(b).call().await.map_err(failed("totalRevenue"))?;
        let credit_owed_to_escrow = self.subscriptions.creditOwedToEscrow().block(b).call().await.map_err(failed("creditOwedToEscrow"))?;
        let solvent = unallocated.checked_add(total_claimable).is_some_and(|owed| token_balance >= owed);
        Ok(EscrowFigures { token_balance, unallocated, total_claimable, surplus, total_revenue, credit_owed_to_escrow, solvent })
    }

    /// `claimableOf(r)` for each recipient.
    pub(super) async fn claimable(&self, recipients: impl IntoIterator<Item = Address>) -> Result<BTreeMap<Address, U256>, KeeperError> {
        let (escrow, block) = (&self.escrow, self.block);
        each(recipients, move |r| async move { escrow.claimableOf(r).block(block).call().await.map_err(failed("claimableOf")) }).await
    }

    /// `creditOf(s)` for each subscriber.
    pub(super) async fn credit(&self, subscribers: impl IntoIterator<Item = Address>) -> Result<BTreeMap<Address, U256>, KeeperError> {
        let (subscriptions, block) = (&self.subscriptions, self.block);
        each(subscribers, move |s| async move { subscriptions.creditOf(s).block(block).call().await.map_err(failed("creditOf")) }).await
    }

    /// `chargedInPeriod(id, period)` for each pair.
    pub(super) async fn charged(&self, pairs: impl IntoIterator<Item = (u64, u64)>) -> Result<BTreeMap<(u64, u64), U256>, KeeperError> {
        let (subscriptions, block) = (&self.subscriptions, self.block);
        each(pairs, move |(id, period)| async move {
            subscriptions.chargedInPeriod(U256::from(id), U256::from(period)).block(block).call().await.map_err(failed("chargedInPeriod"))
        })
        .await
    }

    /// `settlementUsed(id)` for each settlement id.
    pub(super) async fn settled(&self, ids: impl IntoIterator<Item = u64>) -> Result<BTreeMap<u64, bool>, KeeperError> {
        let (escrow, block) = (&self.escrow, self.block);
        each(ids, move |id| async move { escrow.settlementUsed(U256::from(id)).block(block).call().await.map_err(failed("settlementUsed")) }).await
    }

    /// The block's timestamp and `chargeWindow()`: the clock of the contract's charge rule.
    pub(super) async fn charge_clock(&self) -> Result<ChargeClock, KeeperError> {
        ChargeClock::read(self.subscriptions.provider(), *self.subscriptions.address(), self.number).await
    }

    /// `pausedSince(from)` for each time: seconds charging was paused between it and the block.
    pub(super) async fn paused_since(&self, froms: impl IntoIterator<Item = u64>) -> Result<BTreeMap<u64, u64>, KeeperError> {
        let (subscriptions, block) = (&self.subscriptions, self.block);
        each(froms, move |from| async move {
            let paused = subscriptions.pausedSince(U256::from(from)).block(block).call().await.map_err(failed("pausedSince"))?;
            Ok(u64::try_from(paused).unwrap_or(u64::MAX))
        })
        .await
    }

    /// Every subscription, `1..=subscriptionCount()`, with its usage ledger.
    pub(super) async fn subscriptions(&self) -> Result<BTreeMap<u64, ChainSubscription>, KeeperError> {
        let (subscriptions, block) = (&self.subscriptions, self.block);
        let count = subscriptions.subscriptionCount().block(block).call().await.map_err(failed("subscriptionCount"))?;
        let count = u64::try_from(count).map_err(|_| KeeperError::ChainData(format!("subscriptionCount() {count} is not a 64-bit number")))?;
        each(1..=count, move |id| async move {
            let sub = subscriptions.subscription(U256::from(id)).block(block).call().await.map_err(failed("subscription"))?;
            let ledger = subscriptions.usageLedger(U256::from(id)).block(block).call().await.map_err(failed("usageLedger"))?;
            Ok(ChainSubscription {
                summary: summary(sub.subscriber, sub.periodIndex.to::<u64>(), sub.paidThrough.to::<u64>(), status_name(sub.status)),
                ledger_period: ledger.period.to::<u64>(),
                charged_in_period: ledger.chargedInPeriod.to::<u64>(),
                charged_in_previous_period: ledger.chargedInPreviousPeriod.to::<u64>(),
                period_index: sub.periodIndex.to::<u64>(),
            })
        })
        .await
    }
}
