//! The comparisons, one function per [`Check`]. A source that does not hold a figure is left out of its
//! comparison: the keeper holds no revenue figures; the chain's usage ledger keeps only a subscription's latest
//! charged period and the one before (older periods are compared between the indexer and the keeper alone).

use std::collections::{BTreeMap, BTreeSet};

use alloy::primitives::{Address, U256};

use super::{
    Check, Difference, EscrowFigures, IndexedEscrow, Ids, Sources, Tally, UNCOLLECTABLE_REMEDY, Uncollectable,
    books::{Books, KeeperCharge, KeeperEpoch, PartyStatement},
    indexed::{Indexed, difference_text},
    onchain::{ChainSubscription, OnChain},
};
use crate::{
    KeeperError,
    metering::statement::{ChargeClock, ChargePeriod, Chargeable, Party, Statement, chargeable},
};

fn figure(name: &'static str) -> Ids {
    Ids { figure: Some(name), ..Ids::default() }
}

fn text(value: U256) -> Option<String> {
    Some(value.to_string())
}

/// The escrow holds at least what it owes.
pub(super) fn solvency(tally: &mut Tally, escrow: &EscrowFigures) {
    let problem = (!escrow.solvent).then(|| Difference {
        check: Check::Solvency,
        ids: figure("balanceOf(escrow) >= unallocated() + totalClaimable()"),
        chain: Some(format!("balance {} < unallocated {} + claimable {}", escrow.token_balance, escrow.unallocated, escrow.total_claimable)),
        indexer: None,
        keeper: None,
    });
    tally.problems(Check::Solvency, problem.into_iter().collect());
}

/// Revenue and unallocated revenue on chain against the events.
pub(super) fn unallocated(tally: &mut Tally, escrow: &EscrowFigures, indexed: &IndexedEscrow) {
    let figures = [
        ("unallocated()", escrow.unallocated, &indexed.unallocated),
        ("totalRevenue()", escrow.total_revenue, &indexed.total_revenue),
        ("creditOwedToEscrow()", escrow.credit_owed_to_escrow, &indexed.credit_owed_to_escrow.to_string()),
    ];
    for (name, chain, index) in figures {
        tally.compare(Check::Unallocated, figure(name), Sources { chain: text(chain), indexer: Some(index.clone()), keeper: None });
    }
}

/// A creator's claimable by the keeper: credits of confirmed settlements minus successful claims, and what is
/// credited in epochs not confirmed yet.
fn keeper_credits(statement: &Statement, epochs: &BTreeMap<u64, KeeperEpoch>) -> Result<(U256, U256), String> {
    let (mut confirmed, mut pending) = (U256::ZERO, U256::ZERO);
    for credit in &statement.credits {
        let amount: U256 = credit.credit.parse().map_err(|_| format!("credit `{}` is not an amount", credit.credit))?;
        if epochs.get(&credit.epoch_id).is_some_and(|e| e.confirmed) {
            confirmed += amount;
        } else {
            pending += amount;
        }
    }
    Ok((confirmed, pending))
}

/// Claimable per recipient on chain, as indexed, and by the keeper's statements; then the totals.
pub(super) async fn claimable(
    tally: &mut Tally,
    chain: &OnChain,
    escrow: &EscrowFigures,
    indexed: &Indexed,
    books: &Books,
    statements: &[PartyStatement],
) -> Result<(), KeeperError> {
    let on_chain = chain.claimable(indexed.recipients.iter().copied()).await?;
    let creators: BTreeMap<Address, &Statement> = statements
        .iter()
        .filter(|s| s.party == Party::Creator)
        .filter_map(|s| s.outcome.as_ref().ok().map(|(statement, _)| (s.address, statement)))
        .collect();
    let (mut keeper_credited, mut keeper_complete) = (U256::ZERO, true);
    for (recipient, claimable) in &on_chain {
        let ids = Ids { recipient: Some(*recipient), ..Ids::default() };
        let claimed = indexed.claimed.get(recipient).copied().unwrap_or_default();
        let keeper = match creators.get(recipient).map(|s| keeper_credits(s, &books.epochs)) {
            Some(Ok((_, pending))) if !pending.is_zero() => {
                // The chain may or may not hold those credits yet: the keeper's figure is not comparable until the
                // settlement is confirmed.
                tally.pending(Check::Claimable, ids.clone(), format!("{pending} credited in epochs whose settlement is not confirmed yet"));
                keeper_complete = false;
                None
            }
            Some(Ok((credited, _))) => {
                keeper_credited += credited;
                Some(difference_text(credited, claimed))
            }
            Some(Err(problem)) => {
                keeper_complete = false;
                Some(problem)
            }
            None => {
                keeper_complete = false; // the statement failed; the statement check reports why
                None
            }
        };
        let index = indexed.balances.get(recipient).cloned().unwrap_or_else(|| "0".into());
        tally.compare(Check::Claimable, ids, Sources { chain: text(*claimable), indexer: Some(index), keeper });
    }
    let claimed: U256 = indexed.claimed.values().copied().sum();
    let keeper_total = keeper_complete.then(|| difference_text(keeper_credited, claimed));
    let total = Sources { chain: text(escrow.total_claimable), indexer: Some(indexed.total_claimable.clone()), keeper: keeper_total };
    tally.compare(Check::Claimable, figure("totalClaimable()"), total);
    let sum: U256 = on_chain.values().copied().sum();
    let unseen = (sum != escrow.total_claimable).then(|| Difference {
        check: Check::Claimable,
        ids: figure("Σ claimableOf(r)"),
        chain: Some(format!("Σ claimableOf over {} known recipients = {sum}, totalClaimable() = {}", on_chain.len(), escrow.total_claimable)),
        indexer: None,
        keeper: None,
    });
    tally.problems(Check::Claimable, unseen.into_iter().collect());
    Ok(())
}

/// The (subscription, period) pairs the chain's ledgers hold a charge for.
fn ledger_pairs(subscriptions: &BTreeMap<u64, ChainSubscription>) -> impl Iterator<Item = (u64, u64)> + '_ {
    subscriptions.iter().flat_map(|(id, s)| {
        let latest = (s.charged_in_period > 0).then_some((*id, s.ledger_period));
        let previous = (s.ledger_period > 0 && s.charged_in_previous_period > 0).then(|| (*id, s.ledger_period - 1));
        latest.into_iter().chain(previous)
    })
}

/// Why the contract will no longer charge `period` of a subscription at the reconciled block, if it will not: the
/// statements' rule ([`chargeable`]) on the contracts' own figures (`subscription(id).periodIndex`, the close's
/// period end, `pausedSince(end)` and the block's clock).
fn window_closed(
    period: u64,
    close: &KeeperCharge,
    subscription: Option<&ChainSubscription>,
    clock: &ChargeClock,
    paused: &BTreeMap<u64, u64>,
) -> Option<String> {
    let end = u64::try_from(close.period_end).ok()?;
    let rule = ChargePeriod { period, end, current: subscription.map(|s| s.period_index), paused: paused.get(&end).copied().unwrap_or(0) };
    match chargeable(&rule, Some(clock)) {
        Chargeable::Closed { reason, .. } => Some(format!("{reason}; block {} is at {}", clock.block, clock.time)),
        Chargeable::Open { .. } | Chargeable::Unjudged => None,
    }
}

/// The overage the index says the chain collected for `pair`.
fn collected(indexed: &Indexed, pair: &(u64, u64)) -> U256 {
    indexed.charged.get(pair).and_then(|c| c.parse().ok()).unwrap_or_default()
}

/// Overage charged per subscription and period: `chargedInPeriod` (where the ledger still keeps the period),
/// `chain.charged_per_period`, and the keeper's close (once its charge is confirmed; a zero charge needs none). A
/// close the chain collected less of than its charge, whose charge window has closed, is listed as uncollectable
/// with the contract's reason instead.
pub(super) async fn charged(
    tally: &mut Tally,
    chain: &OnChain,
    subscriptions: &BTreeMap<u64, ChainSubscription>,
    indexed: &Indexed,
    books: &Books,
    clock: &ChargeClock,
) -> Result<(), KeeperError> {
    let mut pairs: BTreeSet<(u64, u64)> = indexed.charged.keys().chain(books.charges.keys()).copied().collect();
    pairs.extend(ledger_pairs(subscriptions));
    let kept = pairs.iter().copied().filter(|(id, period)| subscriptions.get(id).is_none_or(|s| s.keeps(*period)));
    let on_chain = chain.charged(kept).await?;
    // Closes the chain has collected less of than their charge: is their window still open?
    let short: Vec<u64> = books
        .charges
        .iter()
        .filter(|(pair, close)| close.period_end > 0 && close.charge.parse::<U256>().is_ok_and(|charge| collected(indexed, pair) < charge))
        .filter_map(|(_, close)| u64::try_from(close.period_end).ok())
        .collect::<BTreeSet<u64>>()
        .into_iter()
        .collect();
    let paused = if short.is_empty() { BTreeMap::new() } else { chain.paused_since(short).await? };
    for pair in pairs {
        let ids = Ids { subscription_id: Some(pair.0), period: Some(pair.1), ..Ids::default() };
        let short_of = |close: &&KeeperCharge| close.period_end > 0 && close.charge.parse::<U256>().is_ok_and(|c| collected(indexed, &pair) < c);
        let closed = books.charges.get(&pair).filter(short_of);
        let keeper = match books.charges.get(&pair) {
            None => Some("no close".to_owned()),
            Some(close) if let Some(why) = closed.and_then(|c| window_closed(pair.1, c, subscriptions.get(&pair.0), clock, &paused)) => {
                let got = collected(indexed, &pair);
                let mut detail = format!("the keeper closed it at {}, the chain collected {got}: uncollectable, {why}", close.charge);
                if let Some(reason) = &close.last_failure {
                    detail.push_str(&format!("; the last charge failed on chain: {reason}"));
                }
                match &close.last_state {
                    Some(state) => detail.push_str(&format!("; the keeper's last charge action: {state}")),
                    None => detail.push_str("; the keeper never sent its charge (the window had closed when it could)"),
                }
                detail.push_str(&format!("; the period's plan fee {} was collected", close.fee));
                let charge = close.charge.clone();
                tally.uncollectable.push(Uncollectable { ids: ids.clone(), charge, collected: got.to_string(), detail, what_to_do: UNCOLLECTABLE_REMEDY });
                None
            }
            Some(close) if close.confirmed || close.charge == "0" => Some(close.charge.clone()),
            Some(close) => {
                let state = close.last_state.as_deref().unwrap_or("not planned yet");
                tally.pending(Check::Charged, ids.clone(), format!("the keeper closed it at {}; its charge is {state}", close.charge));
                None
            }
        };
        let index = indexed.charged.get(&pair).cloned().unwrap_or_else(|| "0".into());
        tally.compare(Check::Charged, ids, Sources { chain: on_chain.get(&pair).copied().and_then(text), indexer: Some(index), keeper });
    }
    Ok(())
}

/// Prepaid credit per subscriber: `creditOf` against `chain.subscriber_credit`.
pub(super) async fn credit(tally: &mut Tally, chain: &OnChain, indexed: &Indexed) -> Result<(), KeeperError> {
    let on_chain = chain.credit(indexed.subscribers.iter().copied()).await?;
    for (subscriber, credit) in on_chain {
        let index = indexed.credit.get(&subscriber).cloned().unwrap_or_else(|| "0".into());
        tally.compare(Check::Credit, Ids { subscriber: Some(subscriber), ..Ids::default() }, Sources { chain: text(credit), indexer: Some(index), keeper: None });
    }
    Ok(())
}

/// The subscription count, and each subscription's subscriber, period, paid-through time and status.
pub(super) fn subscriptions(tally: &mut Tally, on_chain: &BTreeMap<u64, ChainSubscription>, indexed: &Indexed) {
    let count = Sources { chain: Some(on_chain.len().to_string()), indexer: Some(indexed.subscriptions.len().to_string()), keeper: None };
    tally.compare(Check::Subscription, figure("subscriptionCount()"), count);
    let ids: BTreeSet<u64> = on_chain.keys().chain(indexed.subscriptions.keys()).copied().collect();
    for id in ids {
        let sources = Sources {
            chain: Some(on_chain.get(&id).map_or_else(|| "none".to_owned(), |s| s.summary.clone())),
            indexer: Some(indexed.subscriptions.get(&id).cloned().unwrap_or_else(|| "none".into())),
            keeper: None,
        };
        tally.compare(Check::Subscription, Ids { subscription_id: Some(id), ..Ids::default() }, sources);
    }
}

/// Every settlement id: whether it is settled (chain, index, keeper's outbox), and its total and root (index
/// against the keeper's epoch).
pub(super) async fn settlements(tally: &mut Tally, chain: &OnChain, indexed: &Indexed, books: &Books) -> Result<(), KeeperError> {
    let ids: BTreeSet<u64> = indexed.settlements.keys().chain(books.epochs.keys()).copied().collect();
    let used = chain.settled(ids.iter().copied()).await?;
    let said = |settled: bool| Some(if settled { "settled" } else { "not settled" }.to_owned());
    for id in ids {
        let ids = Ids { settlement_id: Some(id), ..Ids::default() };
        let epoch = books.epochs.get(&id);
        let keeper = match epoch {
            None => Some("no epoch".to_owned()),
            Some(e) if e.confirmed => said(true),
            Some(e) => {
                let state = e.state.as_deref().unwrap_or("not planned yet");
                tally.pending(Check::Settlement, ids.clone(), format!("epoch {id} (total {}) is {state}", e.total));
                None
            }
        };
        let index = indexed.settlements.get(&id);
        tally.compare(Check::Settlement, ids.clone(), Sources { chain: said(used[&id]), indexer: said(index.is_some()), keeper });
        if let (Some((total, root)), Some(epoch)) = (index, epoch) {
            let content = Sources {
                chain: None,
                indexer: Some(format!("total {total} root {root}")),
                keeper: Some(format!("total {} root {}", epoch.total, epoch.root)),
            };
            tally.compare(Check::Settlement, ids, content);
        }
    }
    Ok(())
}

/// Every statement's verification problems, naming the party; epochs not settled yet are pending.
pub(super) fn statements(tally: &mut Tally, statements: &[PartyStatement]) {
    for party in statements {
        let ids = match party.party {
            Party::Subscriber => Ids { subscriber: Some(party.address), ..Ids::default() },
            Party::Creator => Ids { recipient: Some(party.address), ..Ids::default() },
        };
        let problems = match &party.outcome {
            Ok((_, check)) => {
                for epoch in &check.unsettled_epochs {
                    tally.pending(Check::Statement, ids.clone(), format!("epoch {epoch} is not settled on chain yet"));
                }
                for open in &check.open_charges {
                    tally.pending(Check::Statement, ids.clone(), open.clone());
                }
                check.problems.clone()
            }
            Err(problem) => vec![problem.clone()],
        };
        let differences =
            problems.into_iter().map(|p| Difference { check: Check::Statement, ids: ids.clone(), chain: None, indexer: None, keeper: Some(p) }).collect();
        tally.problems(Check::Statement, differences);
    }
}
