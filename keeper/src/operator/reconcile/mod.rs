//! Reconciliation, run by finance at month end: for one deployment, three sources are compared figure by figure
//! and every difference is listed with the ids involved and each source's value. The sources are the contracts'
//! own views, read at the block the indexer has reached (so that chain and index describe the same moment); the
//! indexer's mirror in schema `chain`; and the keeper's books in schema `keeper` (period closes, epochs, outbox
//! confirmations, statements). Work the keeper has decided but not yet seen confirmed by that block is listed as
//! pending, and overage charges whose charge window has closed short as uncollectable; neither is a difference. Nothing is written: run it on a read-only connection ([`crate::store::connect_read_only`]).
//!
//! - `onchain`: the contracts' views at one block.
//! - `indexed`: the indexer's tables and views, including the exact event-side derivation of `unallocated()`.
//! - `books`: the keeper's closes, epochs, their outbox confirmations, and every party's statement.
//! - `checks`: the comparisons, one function per [`Check`].
//! - `report`: [`to_table`], the report for a terminal.

mod books;
mod checks;
mod indexed;
mod onchain;
mod report;

use std::collections::BTreeMap;

use alloy::{
    primitives::{Address, U256},
    providers::{DynProvider, Provider},
};
use serde::{Serialize, Serializer};
use sqlx::PgPool;
use subsettle_abi::Deployment;

use crate::KeeperError;

pub use report::to_table;

/// Times the whole comparison is tried when the indexer commits new logs while it reads.
const ATTEMPTS: usize = 3;

/// The kinds of comparison, in report order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Check {
    /// Token balance of the escrow against unallocated plus total claimable (chain only).
    Solvency,
    /// `unallocated()`, `totalRevenue()` and `creditOwedToEscrow()` against the indexed events.
    Unallocated,
    /// Claimable per recipient, and `totalClaimable()`.
    Claimable,
    /// Overage charged per subscription and period.
    Charged,
    /// Prepaid credit per subscriber.
    Credit,
    /// Subscriptions: count, subscriber, period, paid-through time and status.
    Subscription,
    /// Settlements: settled at all, and their total and usage root.
    Settlement,
    /// Every party's statement, verified.
    Statement,
}

impl Check {
    /// Every check, in report order.
    pub const ALL: [Check; 8] =
        [Check::Solvency, Check::Unallocated, Check::Claimable, Check::Charged, Check::Credit, Check::Subscription, Check::Settlement, Check::Statement];

    /// The check's name in reports.
    pub fn name(self) -> &'static str {
        match self {
            Check::Solvency => "solvency",
            Check::Unallocated => "unallocated",
            Check::Claimable => "claimable",
            Check::Charged => "charged",
            Check::Credit => "credit",
            Check::Subscription => "subscription",
            Check::Settlement => "settlement",
            Check::Statement => "statement",
        }
    }
}

/// The ids a difference is about; absent ids are left out of the JSON.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Ids {
    /// Subscription id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subscription_id: Option<u64>,
    /// Period index.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub period: Option<u64>,
    /// Split recipient (creator).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recipient: Option<Address>,
    /// Subscriber wallet.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subscriber: Option<Address>,
    /// Settlement id (= the keeper's epoch id).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub settlement_id: Option<u64>,
    /// A deployment-wide figure, named by its view.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub figure: Option<&'static str>,
}

impl std::fmt::Display for Ids {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut parts = Vec::new();
        if let Some(id) = self.subscription_id {
            parts.push(format!("subscription {id}"));
        }
        if let Some(period) = self.period {
            parts.push(format!("period {period}"));
        }
        if let Some(recipient) = self.recipient {
            parts.push(format!("recipient {recipient}"));
        }
        if let Some(subscriber) = self.subscriber {
            parts.push(format!("subscriber {subscriber}"));
        }
        if let Some(id) = self.settlement_id {
            parts.push(format!("settlement {id}"));
        }
        if let Some(figure) = self.figure {
            parts.push(figure.to_owned());
        }
        f.write_str(&parts.join(" "))
    }
}

/// One figure on which the sources disagree; a source that does not hold the figure is `None`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Difference {
    /// Which comparison.
    pub check: Check,
    /// What it is about.
    pub ids: Ids,
    /// The contracts' view.
    pub chain: Option<String>,
    /// The indexer's tables.
    pub indexer: Option<String>,
    /// The keeper's books.
    pub keeper: Option<String>,
}

/// Work the keeper decided whose confirmation it has not seen by the reconciled block: information only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Pending {
    /// Which comparison left it out.
    pub check: Check,
    /// What it is about.
    pub ids: Ids,
    /// What is pending.
    pub detail: String,
}

/// What the operator can do about an [`Uncollectable`] charge (also in docs/keeper.md, Reconciliation).
pub const UNCOLLECTABLE_REMEDY: &str = "nothing on chain can collect it now (Subscriptions answers ChargeWindowClosed to any \
charge of the period). The close stays out of every settlement epoch, so what the chain did collect for the period (its plan fee, \
any part of the charge) stays in unallocated() and no split is credited for it. Recover the shortfall off-chain if at all (the \
subscriber's statement lists the usage lines behind it) and book it as uncollectable revenue.";

/// A closed period's overage charge that the chain collected less of than the keeper closed it at, and never will:
/// the contract's charge window for the period has closed (`Subscriptions._chargeablePeriod`: a period is charged
/// only while it is the current or the previous period, and until its end plus `chargeWindow()`, not counting time
/// paused). Information, not a difference: the chain and the index agree on what was collected.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Uncollectable {
    /// The subscription and period.
    pub ids: Ids,
    /// The cumulative charge the keeper closed the period at, base units.
    pub charge: String,
    /// What the chain collected for it, base units (as indexed).
    pub collected: String,
    /// Why, in the contract's terms, and what the keeper tried.
    pub detail: String,
    /// What the operator can do ([`UNCOLLECTABLE_REMEDY`]).
    pub what_to_do: &'static str,
}

/// How many figures a check compared and how many differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Section {
    /// Which comparison.
    pub check: Check,
    /// Figures (or parties, for statements) compared.
    pub checked: usize,
    /// Of them, how many differ.
    pub differ: usize,
}

/// The escrow's figures on chain, base units.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EscrowFigures {
    /// `token.balanceOf(escrow)`.
    #[serde(serialize_with = "decimal")]
    pub token_balance: U256,
    /// `unallocated()`.
    #[serde(serialize_with = "decimal")]
    pub unallocated: U256,
    /// `totalClaimable()`.
    #[serde(serialize_with = "decimal")]
    pub total_claimable: U256,
    /// `surplus()`.
    #[serde(serialize_with = "decimal")]
    pub surplus: U256,
    /// Subscriptions' `totalRevenue()`.
    #[serde(serialize_with = "decimal")]
    pub total_revenue: U256,
    /// Subscriptions' `creditOwedToEscrow()`.
    #[serde(serialize_with = "decimal")]
    pub credit_owed_to_escrow: U256,
    /// Whether `token_balance >= unallocated + total_claimable`.
    pub solvent: bool,
}

/// The same figures as the indexed events imply them (see `indexed` for the derivation), base units.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct IndexedEscrow {
    /// Every `amount` of Subscribed, Renewed and UsageCharged: what subscribers paid.
    #[serde(serialize_with = "decimal")]
    pub paid_in: U256,
    /// Credit spent by charges that had not reached the escrow (the last CreditTransferDeferred, or 0 after a
    /// CreditFlushed).
    #[serde(serialize_with = "decimal")]
    pub credit_owed_to_escrow: U256,
    /// Every Settled total.
    #[serde(serialize_with = "decimal")]
    pub settled: U256,
    /// Every Refunded amount.
    #[serde(serialize_with = "decimal")]
    pub refunded: U256,
    /// `paid_in - credit_owed_to_escrow` (text: negative in a damaged index).
    pub total_revenue: String,
    /// `total_revenue - settled - refunded` (text: negative in a damaged index).
    pub unallocated: String,
}

/// Everything reconciliation found.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The deployment's chain.
    pub chain_id: u64,
    /// The block the chain was read at: the indexer's cursor.
    pub block: u64,
    /// The escrow on chain.
    pub escrow: EscrowFigures,
    /// The escrow as indexed.
    pub indexed: IndexedEscrow,
    /// Counts per check.
    pub sections: Vec<Section>,
    /// Every difference.
    pub differences: Vec<Difference>,
    /// Work not confirmed yet (not differences).
    pub pending: Vec<Pending>,
    /// Overage charges whose window has closed short of what the keeper closed them at (not differences).
    pub uncollectable: Vec<Uncollectable>,
}

impl Report {
    /// True when the three sources agree on everything.
    pub fn ok(&self) -> bool {
        self.differences.is_empty()
    }
}

fn decimal<S: Serializer>(value: &U256, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_str(value)
}

/// What each source says about one figure; `None`: the source does not hold it.
#[derive(Debug, Clone, Default)]
struct Sources {
    chain: Option<String>,
    indexer: Option<String>,
    keeper: Option<String>,
}

impl Sources {
    /// Whether every source that holds the figure says the same.
    fn agree(&self) -> bool {
        let said: Vec<&String> = [&self.chain, &self.indexer, &self.keeper].into_iter().flatten().collect();
        said.windows(2).all(|pair| pair[0] == pair[1])
    }
}

/// The counts, differences and pending work as the checks go.
#[derive(Debug, Default)]
struct Tally {
    sections: BTreeMap<Check, Section>,
    differences: Vec<Difference>,
    pending: Vec<Pending>,
    uncollectable: Vec<Uncollectable>,
}

impl Tally {
    fn section(&mut self, check: Check) -> &mut Section {
        self.sections.entry(check).or_insert(Section { check, checked: 0, differ: 0 })
    }

    /// Counts one figure, and records it when the sources disagree.
    fn compare(&mut self, check: Check, ids: Ids, sources: Sources) {
        let agree = sources.agree();
        let section = self.section(check);
        section.checked += 1;
        if !agree {
            section.differ += 1;
            self.differences.push(Difference { check, ids, chain: sources.chain, indexer: sources.indexer, keeper: sources.keeper });
        }
    }

    /// Counts one party (or one chain-only figure) with its problems, each recorded as a difference.
    fn problems(&mut self, check: Check, problems: Vec<Difference>) {
        let section = self.section(check);
        section.checked += 1;
        section.differ += usize::from(!problems.is_empty());
        self.differences.extend(problems);
    }

    fn pending(&mut self, check: Check, ids: Ids, detail: String) {
        self.pending.push(Pending { check, ids, detail });
    }
}

/// Compares the chain, the indexer and the keeper for `deployment`. The chain is read at the indexer's cursor;
/// when the indexer commits new logs during the comparison it starts again, up to [`ATTEMPTS`] times.
pub async fn reconcile(pool: &PgPool, provider: &DynProvider, deployment: &Deployment, decimals: u32) -> Result<Report, KeeperError> {
    let chain_id = provider.get_chain_id().await.map_err(|e| KeeperError::Chain { action: "eth_chainId", message: e.to_string() })?;
    if chain_id != deployment.chain_id {
        return Err(KeeperError::Invalid {
            field: "rpc_url".into(),
            reason: format!("the node is chain {chain_id}, the deployment is on chain {}", deployment.chain_id),
        });
    }
    for _ in 0..ATTEMPTS {
        let block = indexed::cursor(pool, deployment).await?;
        let report = reconcile_at(pool, provider, deployment, decimals, block).await?;
        if !indexed::moved_past(pool, deployment, block).await? {
            return Ok(report);
        }
        tracing::info!(block, "the indexer committed new logs while reconciling; starting again");
    }
    Err(KeeperError::ChainData(format!("the indexer committed new logs during each of {ATTEMPTS} attempts; retry when it is idle")))
}

async fn reconcile_at(pool: &PgPool, provider: &DynProvider, deployment: &Deployment, decimals: u32, block: u64) -> Result<Report, KeeperError> {
    let chain_id = deployment.chain_id;
    let chain = onchain::OnChain::at(provider.clone(), deployment, block);
    let index = indexed::Indexed::load(pool, chain_id).await?;
    let books = books::Books::load(pool, chain_id, block).await?;
    let subscribers: Vec<Address> = index.subscribers.union(&books.subscribers).copied().collect();
    let recipients: Vec<Address> = index.recipients.iter().copied().collect();
    // One clock for the charge rule: the charged check and the subscribers' statements judge with it alike.
    let clock = chain.charge_clock().await?;
    let statements = books::statements(pool, chain_id, decimals, &subscribers, &recipients, &clock).await?;
    let escrow = chain.escrow().await?;
    let subscriptions = chain.subscriptions().await?;

    let mut tally = Tally::default();
    checks::solvency(&mut tally, &escrow);
    checks::unallocated(&mut tally, &escrow, &index.escrow);
    checks::claimable(&mut tally, &chain, &escrow, &index, &books, &statements).await?;
    checks::charged(&mut tally, &chain, &subscriptions, &index, &books, &clock).await?;
    checks::credit(&mut tally, &chain, &index).await?;
    checks::subscriptions(&mut tally, &subscriptions, &index);
    checks::settlements(&mut tally, &chain, &index, &books).await?;
    checks::statements(&mut tally, &statements);

    Ok(Report {
        chain_id,
        block,
        escrow,
        indexed: index.escrow,
        sections: Check::ALL.iter().map(|c| tally.sections.get(c).copied().unwrap_or(Section { check: *c, checked: 0, differ: 0 })).collect(),
        differences: tally.differences,
        pending: tally.pending,
        uncollectable: tally.uncollectable,
    })
}
