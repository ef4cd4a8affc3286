//! Admission: which events of a batch to take, by the two limits on usage that adds overage (the overage cap of the
//! subscription's open period, and what the wallet can pay), judged event by event in batch order on top of the
//! usage already admitted. Pure: the same judge runs on the in-memory view (a fast first filter, [`super::view`])
//! and, for good, on the admission ledger in Postgres inside the insert's transaction ([`super::ledger`]).
//!
//! The rules, unchanged from when the view alone judged:
//! - **Cap.** An event is refused once the period's estimated overage is above 0 and at or above the cap; the event
//!   that crosses the cap is admitted, so the estimate passes the cap by at most that one event's price.
//! - **Funds.** An event that adds overage is admitted only if the overage the wallet's live subscriptions owe
//!   (each open period's estimate capped, less what the chain has charged in it) plus what the event adds is at
//!   most what a charge can collect; with unknown funds it is refused. An event that adds no overage (included
//!   usage) is never refused for funds.

use std::collections::HashMap;

use alloy::primitives::Address;

use super::{Aggregates, RefusalKind, add, price_overage};
use crate::metering::{
    catalog::Snapshot,
    event::UsageEvent,
    funds::{Limit, WalletFunds},
};

/// What admission needs to know of one subscription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Terms {
    /// Subscription id.
    pub id: u64,
    /// Its wallet.
    pub wallet: Address,
    /// Its plan (for the allowance).
    pub plan_id: u64,
    /// Start of the open period (Unix seconds): usage stamped from then on counts against its cap.
    pub period_start: i64,
    /// The overage cap, base units.
    pub overage_cap: u128,
    /// What the chain has charged in the open period, base units.
    pub charged: u128,
}

impl Terms {
    /// What the open period owes with an estimated overage of `estimate`: capped, less what the chain has charged.
    pub fn owed(&self, estimate: u128) -> u128 {
        estimate.min(self.overage_cap).saturating_sub(self.charged)
    }

    /// Whether `event` counts against the open period (a late event of an earlier period does not).
    pub fn counts(&self, event: &UsageEvent) -> bool {
        event.occurred_at_ms >= self.period_start.saturating_mul(1000)
    }

    /// The cap refusal once the estimate is `estimate`, if any.
    pub fn cap_refusal(&self, estimate: u128) -> Option<(RefusalKind, String)> {
        (estimate > 0 && estimate >= self.overage_cap)
            .then(|| (RefusalKind::OverageCap, format!("subscription {} used its overage cap of {} base units for this period", self.id, self.overage_cap)))
    }
}

/// A wallet's funds as admission judges them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Funds {
    /// Funds are not judged (no funds policy): only caps limit usage.
    NotJudged,
    /// No reading fit to judge by: when it was read, for the reason (e.g. `never read`).
    Unknown(String),
    /// The latest reading.
    Known(WalletFunds),
}

impl Funds {
    /// Whether the wallet can pay `cost` more on top of `owed` (cost 0: whether any headroom is left), for usage of
    /// subscription `id`; the refusal otherwise.
    pub fn refusal(&self, id: u64, owed: u128, cost: u128) -> Option<(RefusalKind, String)> {
        let funds = match self {
            Self::NotJudged => return None,
            Self::Unknown(when) => {
                return Some((
                    RefusalKind::FundsUnknown,
                    format!(
                        "subscription {id}: funds unknown: the wallet's balance, allowance and credit are {when}; billable usage waits until they are read again"
                    ),
                ));
            }
            Self::Known(funds) => funds,
        };
        let payable = funds.payable();
        let need = owed.saturating_add(cost);
        // Serving (cost 0) needs headroom left; admitting usage needs the cost covered.
        let short = if cost == 0 { owed >= payable } else { need > payable };
        if !short {
            return None;
        }
        let limit = funds.limiting();
        let kind = if limit == Limit::Allowance { RefusalKind::FundsAllowance } else { RefusalKind::FundsBalance };
        let this = if cost == 0 { String::new() } else { format!(" + {cost} for this usage") };
        Some((
            kind,
            format!(
                "subscription {id}: the wallet cannot pay for more usage ({}): {owed} base units of overage not charged yet{this} against {payable} a charge can collect (credit {} + the lower of balance {} and allowance {} to Subscriptions, at block {})",
                limit.describe(),
                funds.credit,
                funds.balance,
                funds.allowance,
                funds.block
            ),
        ))
    }
}

/// A wallet: its funds and its live subscriptions (whose open periods all owe against the same funds).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wallet {
    /// Its funds.
    pub funds: Funds,
    /// Its live subscriptions (each also in [`Context::subscriptions`]).
    pub live: Vec<u64>,
}

/// Everything one decision needs, taken from the view under its lock and used without it.
#[derive(Debug, Clone, Default)]
pub struct Context {
    /// The subscriptions of the batch's events and, when funds are judged, every live subscription of their wallets.
    pub subscriptions: HashMap<u64, Terms>,
    /// The wallets of the batch's events.
    pub wallets: HashMap<Address, Wallet>,
}

/// The decision on a batch.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Judged {
    /// Per event, in the order given: `None` admitted, or the refusal's kind and reason.
    pub refusals: Vec<Option<(RefusalKind, String)>>,
    /// Per subscription whose open period admitted usage: its usage and estimated overage after the batch.
    pub usage: HashMap<u64, (Aggregates, u128)>,
    /// Per subscription of the context: its estimated overage after the batch.
    pub estimates: HashMap<u64, u128>,
}

/// The open usage of the subscriptions as a decision goes on.
struct Working<'a> {
    context: &'a Context,
    catalog: &'a Snapshot,
    decimals: u32,
    usage: HashMap<u64, Aggregates>,
    estimates: HashMap<u64, u128>,
}

impl Working<'_> {
    fn terms(&self, id: u64) -> &Terms {
        &self.context.subscriptions[&id]
    }

    /// The estimate of `id`'s usage plus `events`, never below the estimate before them.
    fn estimate_with(&self, id: u64, events: &[&UsageEvent]) -> u128 {
        let terms = self.terms(id);
        let before = self.estimates.get(&id).copied().unwrap_or(0);
        let mut extra = Aggregates::new();
        for event in events {
            add(&mut extra, event);
        }
        let stored = self.usage.get(&id);
        price_overage(terms.plan_id, terms.period_start, stored.into_iter().chain([&extra]), self.catalog, self.decimals).unwrap_or(before).max(before)
    }

    /// What the wallet's live subscriptions owe now.
    fn owed(&self, wallet: &Wallet) -> u128 {
        wallet.live.iter().fold(0u128, |sum, id| sum.saturating_add(self.terms(*id).owed(self.estimates.get(id).copied().unwrap_or(0))))
    }

    fn admit(&mut self, id: u64, events: &[&UsageEvent], estimate: u128) {
        let usage = self.usage.entry(id).or_default();
        for event in events {
            add(usage, event);
        }
        self.estimates.insert(id, estimate);
    }
}

/// Judges `events` (validated, not refused, in batch order) against the usage admitted before them (`base`, per
/// subscription of `context`: its open period's usage per model and meter).
pub fn judge(context: &Context, base: HashMap<u64, Aggregates>, events: &[&UsageEvent], catalog: &Snapshot, decimals: u32) -> Judged {
    let mut work = Working { context, catalog, decimals, usage: base, estimates: HashMap::new() };
    let ids: Vec<u64> = context.subscriptions.keys().copied().collect();
    for id in ids {
        let estimate = work.estimate_with(id, &[]);
        work.estimates.insert(id, estimate);
    }
    let mut judged = Judged { refusals: vec![None; events.len()], usage: HashMap::new(), estimates: HashMap::new() };
    // The events that count against an open period, per wallet in order of first appearance.
    let mut wallets: Vec<(Address, Vec<usize>)> = Vec::new();
    for (index, event) in events.iter().enumerate() {
        let Some(terms) = context.subscriptions.get(&event.subscription_id) else { continue };
        if !terms.counts(event) {
            continue; // late usage of a closed or closing period: billed at its close, not against this period's limits
        }
        match wallets.iter_mut().find(|(w, _)| *w == terms.wallet) {
            Some((_, indexes)) => indexes.push(index),
            None => wallets.push((terms.wallet, vec![index])),
        }
    }
    let mut touched: Vec<u64> = Vec::new();
    for (address, indexes) in wallets {
        let wallet = &context.wallets[&address];
        if !admit_whole(&mut work, wallet, events, &indexes, &mut touched) {
            admit_each(&mut work, wallet, events, &indexes, &mut judged.refusals, &mut touched);
        }
    }
    touched.sort_unstable();
    touched.dedup();
    for id in touched {
        let usage = work.usage.remove(&id).unwrap_or_default();
        judged.usage.insert(id, (usage, work.estimates[&id]));
    }
    judged.estimates = work.estimates;
    judged
}

/// Most batches fit whole: admits the wallet's events at once if the whole batch keeps every subscription below
/// its cap (so does every prefix: overage only grows with usage) and the wallet can pay what it all adds.
fn admit_whole(work: &mut Working<'_>, wallet: &Wallet, events: &[&UsageEvent], indexes: &[usize], touched: &mut Vec<u64>) -> bool {
    let mut per_subscription: Vec<(u64, Vec<&UsageEvent>)> = Vec::new();
    for &index in indexes {
        let event = events[index];
        match per_subscription.iter_mut().find(|(id, _)| *id == event.subscription_id) {
            Some((_, list)) => list.push(event),
            None => per_subscription.push((event.subscription_id, vec![event])),
        }
    }
    let mut added = 0u128;
    let mut after = Vec::with_capacity(per_subscription.len());
    for (id, list) in &per_subscription {
        let terms = work.terms(*id);
        let before = work.estimates.get(id).copied().unwrap_or(0);
        let estimate = work.estimate_with(*id, list);
        if terms.cap_refusal(before).is_some() || (estimate > 0 && estimate >= terms.overage_cap) {
            return false;
        }
        added = added.saturating_add(terms.owed(estimate).saturating_sub(terms.owed(before)));
        after.push(estimate);
    }
    if added > 0 {
        let id = per_subscription[0].0;
        if wallet.funds.refusal(id, work.owed(wallet), added).is_some() {
            return false;
        }
    }
    for ((id, list), estimate) in per_subscription.iter().zip(after) {
        work.admit(*id, list, estimate);
        touched.push(*id);
    }
    true
}

/// Admits the wallet's events one by one, each if the limits allow it after the ones admitted before it.
fn admit_each(
    work: &mut Working<'_>,
    wallet: &Wallet,
    events: &[&UsageEvent],
    indexes: &[usize],
    refusals: &mut [Option<(RefusalKind, String)>],
    touched: &mut Vec<u64>,
) {
    for &index in indexes {
        let event = events[index];
        let id = event.subscription_id;
        let terms = work.terms(id);
        let before = work.estimates.get(&id).copied().unwrap_or(0);
        if let Some(refusal) = terms.cap_refusal(before) {
            refusals[index] = Some(refusal);
            continue;
        }
        let estimate = work.estimate_with(id, &[event]);
        let cost = terms.owed(estimate).saturating_sub(terms.owed(before));
        if cost > 0
            && let Some(refusal) = wallet.funds.refusal(id, work.owed(wallet), cost)
        {
            refusals[index] = Some(refusal);
            continue;
        }
        work.admit(id, &[event], estimate);
        touched.push(id);
    }
}

#[cfg(test)]
mod tests {
    use alloy::primitives::{B256, U256};
    use rust_decimal::Decimal;

    use super::*;
    use crate::metering::pricing::{Allowance, Price};

    const USDC: u128 = 1_000_000;
    const WALLET: Address = Address::repeat_byte(9);

    /// One model `m` with meter `u` at 1 USDC per unit; plan 1 includes 2 units of `free`, plan 2 nothing.
    pub(crate) fn catalog() -> Snapshot {
        let mut snapshot = Snapshot::default();
        for meter in ["u", "free"] {
            let price = Price { effective_at: 0, unit_price: Decimal::ONE, per_units: Decimal::ONE };
            snapshot.catalog.prices.entry(("m".into(), meter.into())).or_default().insert(0, price);
            snapshot.meters.insert(("m".into(), meter.into()), 0);
        }
        snapshot.catalog.splits.entry("m".into()).or_default().insert(0, 1);
        let allowance = Allowance { units: [("free".to_owned(), Decimal::from(2))].into(), value: Decimal::ZERO };
        snapshot.allowances.entry(1).or_default().insert(0, allowance);
        snapshot
    }

    fn event(n: usize, id: u64, meter: &str, quantity: u64) -> UsageEvent {
        UsageEvent {
            event_id: format!("e-{n}"),
            subscription_id: id,
            model: "m".into(),
            meter: meter.into(),
            quantity: Decimal::from(quantity),
            occurred_at_ms: 1_500_000,
            properties: None,
            payload_hash: B256::ZERO,
            refused: None,
        }
    }

    /// Subscriptions `ids` of one wallet on `plan` (period from 1,000 s) with `cap` each, and its funds.
    fn context(ids: &[u64], plan: u64, cap: u128, funds: Funds) -> Context {
        let subscriptions =
            ids.iter().map(|id| (*id, Terms { id: *id, wallet: WALLET, plan_id: plan, period_start: 1_000, overage_cap: cap, charged: 0 })).collect();
        Context { subscriptions, wallets: [(WALLET, Wallet { funds, live: ids.to_vec() })].into() }
    }

    fn kinds(judged: &Judged) -> Vec<Option<RefusalKind>> {
        judged.refusals.iter().map(|r| r.as_ref().map(|(kind, _)| *kind)).collect()
    }

    #[test]
    fn the_event_that_crosses_the_cap_is_the_last_admitted() {
        // Cap 3 USDC: 2 + 2 crosses it (4), the rest of the batch is refused, whatever its size.
        let ctx = context(&[1], 2, 3 * USDC, Funds::NotJudged);
        let batch: Vec<UsageEvent> = [2, 2, 1, 1].iter().enumerate().map(|(n, q)| event(n, 1, "u", *q)).collect();
        let judged = judge(&ctx, HashMap::new(), &batch.iter().collect::<Vec<_>>(), &catalog(), 6);
        assert_eq!(kinds(&judged), [None, None, Some(RefusalKind::OverageCap), Some(RefusalKind::OverageCap)]);
        assert!(judged.refusals[2].as_ref().unwrap().1.contains("subscription 1 used its overage cap of 3000000"));
        assert_eq!(judged.usage[&1].1, 4 * USDC);
        // On top of 3 USDC already admitted: nothing more.
        let base: HashMap<u64, Aggregates> = [(1, [(("m".to_owned(), "u".to_owned()), (Decimal::from(3), 1_400_000))].into())].into();
        let judged = judge(&ctx, base, &[&event(9, 1, "u", 1)], &catalog(), 6);
        assert_eq!(kinds(&judged), [Some(RefusalKind::OverageCap)]);
        assert!(judged.usage.is_empty(), "nothing admitted, nothing to write");
    }

    #[test]
    fn included_usage_and_late_events_pass_every_limit() {
        // Plan 1 includes 2 units of `free`, and the funds are unknown: the included usage is admitted, then every
        // billable event refused (the third event's unit of `free` is beyond the allowance); a late event counts
        // against no limit of this period.
        let ctx = context(&[1], 1, 100 * USDC, Funds::Unknown("never read".into()));
        let mut late = event(3, 1, "u", 5);
        late.occurred_at_ms = 999_000;
        let batch = [event(0, 1, "free", 2), event(1, 1, "u", 1), event(2, 1, "free", 1), late];
        let judged = judge(&ctx, HashMap::new(), &batch.iter().collect::<Vec<_>>(), &catalog(), 6);
        assert_eq!(kinds(&judged), [None, Some(RefusalKind::FundsUnknown), Some(RefusalKind::FundsUnknown), None]);
        assert!(judged.refusals[1].as_ref().unwrap().1.contains("subscription 1: funds unknown: the wallet's balance, allowance and credit are never read"));
        assert_eq!(judged.usage[&1], ([(("m".to_owned(), "free".to_owned()), (Decimal::from(2), 1_500_000))].into(), 0), "the late event is not this period's");
    }

    #[test]
    fn a_wallets_subscriptions_share_its_funds() {
        // Two subscriptions, payable 3 USDC: 2 on the first, then 2 on the second is refused, 1 admitted.
        let funds = WalletFunds { balance: U256::from(3 * USDC), allowance: U256::MAX, credit: U256::ZERO, block: 4, read_at_ms: 0 };
        let ctx = context(&[1, 2], 2, 100 * USDC, Funds::Known(funds));
        let batch = [event(0, 1, "u", 2), event(1, 2, "u", 2), event(2, 2, "u", 1)];
        let judged = judge(&ctx, HashMap::new(), &batch.iter().collect::<Vec<_>>(), &catalog(), 6);
        assert_eq!(kinds(&judged), [None, Some(RefusalKind::FundsBalance), None]);
        assert!(judged.refusals[1].as_ref().unwrap().1.contains("2000000 base units of overage not charged yet + 2000000 for this usage against 3000000"));
        assert_eq!((judged.usage[&1].1, judged.usage[&2].1), (2 * USDC, USDC));
    }
}
