//! The in-memory view `serve` answers from: the subscriptions as indexed (refreshed on an interval), the usage of
//! each one's open period, and the wallets' funds readings.
//!
//! Open usage comes from the admission ledger ([`super::ledger`]): every batch's decision brings the periods it
//! judged up to date here (with the ledger's version, so an older figure never replaces a newer one), and the
//! periodic reload reads the ledger again for usage other replicas admitted. A period the ledger does not hold
//! yet is summed from the stored events. The view judges usage as a first filter only; the ledger decides.

use std::collections::HashMap;

use alloy::primitives::Address;
use rust_decimal::Decimal;

use super::{
    Aggregates, Entitlement, OpenUsageRead, Refusal, RefusalKind,
    admission::{self, Context, Funds, Terms, Wallet},
    ledger::LedgerPeriod,
    price_overage,
};
use crate::metering::{
    catalog::Snapshot,
    event::{Outcome, UsageEvent},
    funds::{FundsAnswer, FundsPolicy, WalletFunds},
    subscriptions::{Index, Status, Subscription},
};

#[derive(Debug, Clone, Default)]
struct OpenUsage {
    period_start: i64,
    /// (model, meter) -> (quantity, latest event time in ms).
    usage: Aggregates,
    overage_estimate: u128,
    /// The plan includes nothing in this period: every event is billable.
    includes_nothing: bool,
    /// The ledger's version of these figures; `None` when summed from the events (the ledger holds no row yet).
    version: Option<i64>,
}

/// The in-memory view.
#[derive(Debug, Default)]
pub struct Entitlements {
    by_id: HashMap<u64, Subscription>,
    by_subscriber: HashMap<Address, Vec<u64>>,
    open: HashMap<u64, OpenUsage>,
    /// Set when funds are judged.
    funds_policy: Option<FundsPolicy>,
    /// The latest funds reading per wallet.
    funds: HashMap<Address, WalletFunds>,
    /// Per subscription: (period index, what the chain has charged in it), as indexed at the last funds refresh.
    charged: HashMap<u64, (u64, u128)>,
}

impl Entitlements {
    /// Subscriptions whose open period at `now` is not the one whose usage is held: (id, period start). Of
    /// `subscriptions` when given (a fresh read), else of those held.
    pub fn stale(&self, subscriptions: Option<&Index>, now: i64) -> Vec<(u64, i64)> {
        let by_id = subscriptions.map_or(&self.by_id, |index| &index.by_id);
        by_id.values().map(|sub| (sub.id, sub.open_period_start(now))).filter(|(id, start)| self.open.get(id).is_none_or(|o| o.period_start != *start)).collect()
    }

    /// Replaces the subscriptions when given (else keeps those held), and the open usage of the `stale` ones with
    /// `usage` (read with [`super::load_open_usage`]). Returns the subscriptions replaced, for the caller to drop
    /// after it has let go of the lock (freeing thousands of entries is not work for readers to wait on).
    #[must_use = "drop the replaced index outside the lock"]
    pub fn apply(&mut self, subscriptions: Option<Index>, stale: &[(u64, i64)], usage: OpenUsageRead, catalog: &Snapshot, decimals: u32) -> Option<Index> {
        // Swapped in whole: readers wait for no more than that.
        let replaced = subscriptions.map(|Index { by_id, by_subscriber }| Index {
            by_id: std::mem::replace(&mut self.by_id, by_id),
            by_subscriber: std::mem::replace(&mut self.by_subscriber, by_subscriber),
        });
        let mut reset = std::collections::HashSet::new();
        for (id, start) in stale {
            // A period the ledger already brought here is newer than `stale` says; keep it.
            if self.open.get(id).is_none_or(|o| o.period_start < *start) {
                self.open.insert(*id, OpenUsage { period_start: *start, ..OpenUsage::default() });
                self.estimate(*id, catalog, decimals);
                reset.insert(*id);
            }
        }
        self.apply_ledger(usage.ledger, catalog, decimals);
        // The sums fill the periods just started here that the ledger does not hold.
        let mut touched = Vec::new();
        for (id, model, meter, quantity, latest) in usage.summed {
            let id = id as u64;
            if let Some(open) = self.open.get_mut(&id).filter(|o| o.version.is_none() && reset.contains(&id)) {
                let entry = open.usage.entry((model, meter)).or_insert((Decimal::ZERO, 0));
                entry.0 = entry.0.saturating_add(quantity);
                entry.1 = entry.1.max(latest);
                touched.push(id);
            }
        }
        touched.sort_unstable();
        touched.dedup();
        for id in touched {
            self.estimate(id, catalog, decimals);
        }
        replaced
    }

    /// The open periods to reload so that usage other processes stored (another `serve` replica, `usage import`)
    /// counts here too: every live subscription's, with its start.
    pub fn reload_targets(&self, now: i64) -> Vec<(u64, i64)> {
        let mut targets: Vec<(u64, i64)> = self
            .by_id
            .values()
            .filter(|s| s.entitled_at(now))
            .map(|s| (s.id, self.open.get(&s.id).map_or_else(|| s.open_period_start(now), |o| o.period_start)))
            .collect();
        targets.sort_unstable();
        targets
    }

    /// Takes the open usage of `targets` read again (with [`super::load_open_usage`]), for the periods still open
    /// here.
    pub fn apply_reload(&mut self, targets: &[(u64, i64)], usage: OpenUsageRead, catalog: &Snapshot, decimals: u32) {
        let current: HashMap<u64, i64> = targets.iter().filter(|(id, start)| self.open.get(id).is_none_or(|o| o.period_start == *start)).copied().collect();
        let OpenUsageRead { ledger, summed } = usage;
        let ledger: Vec<LedgerPeriod> = ledger.into_iter().filter(|p| current.get(&p.subscription_id) == Some(&p.period_start)).collect();
        let in_ledger: std::collections::HashSet<u64> = ledger.iter().map(|p| p.subscription_id).collect();
        let mut sums: HashMap<u64, Aggregates> = HashMap::new();
        for (id, model, meter, quantity, latest) in summed {
            let entry = sums.entry(id as u64).or_default().entry((model, meter)).or_insert((Decimal::ZERO, 0));
            entry.0 = entry.0.saturating_add(quantity);
            entry.1 = entry.1.max(latest);
        }
        for (id, start) in current.into_iter().filter(|(id, _)| !in_ledger.contains(id)) {
            let usage = sums.remove(&id).unwrap_or_default();
            // Sums replace sums only (a period the ledger holds is newer than any sum), and only when they differ.
            let replace = self.open.get(&id).is_none_or(|o| o.version.is_none() && (o.period_start != start || o.usage != usage));
            if replace {
                self.open.insert(id, OpenUsage { period_start: start, usage, ..OpenUsage::default() });
                self.estimate(id, catalog, decimals);
            }
        }
        self.apply_ledger(ledger, catalog, decimals);
    }

    /// Takes the ledger's figures of open periods (after a decision, or read by a reload): each replaces what is
    /// held for the subscription unless what is held is newer (a later period, or a later version of the same).
    pub fn apply_ledger(&mut self, periods: Vec<LedgerPeriod>, catalog: &Snapshot, decimals: u32) {
        for period in periods {
            let id = period.subscription_id;
            let newer = match self.open.get(&id) {
                None => true,
                Some(open) if open.period_start != period.period_start => open.period_start < period.period_start,
                Some(open) => open.version.is_none_or(|held| held < period.version),
            };
            if newer {
                let open = OpenUsage { period_start: period.period_start, usage: period.usage, version: Some(period.version), ..OpenUsage::default() };
                self.open.insert(id, open);
                self.estimate(id, catalog, decimals);
            }
        }
    }

    /// Whether the open usage held for subscription `id` is the ledger's figures of the period starting at `start`
    /// (its row exists).
    pub fn held_from_ledger(&self, id: u64, start: i64) -> bool {
        self.open.get(&id).is_some_and(|o| o.period_start == start && o.version.is_some())
    }

    fn estimate(&mut self, id: u64, catalog: &Snapshot, decimals: u32) {
        let (Some(sub), Some(open)) = (self.by_id.get(&id), self.open.get_mut(&id)) else { return };
        let allowance = catalog.allowance(sub.plan_id, open.period_start);
        open.includes_nothing = allowance.units.values().all(Decimal::is_zero) && allowance.value.is_zero();
        // A catalog that cannot price the usage (it was valid when accepted) leaves the last estimate in place.
        if let Some(overage) = price_overage(sub.plan_id, open.period_start, [&open.usage], catalog, decimals) {
            open.overage_estimate = overage;
        }
    }

    /// The subscription an event is billed to (the one named, or the subscriber's entitled one), with the reason
    /// it is not to be served, if any.
    pub fn resolve(&self, subscriber: Option<Address>, subscription_id: Option<u64>, now: i64) -> Result<(&Subscription, Option<String>), Refusal> {
        let sub = match (subscriber, subscription_id) {
            (_, Some(id)) => {
                let sub = self.by_id.get(&id).ok_or_else(|| Refusal::Invalid { field: "subscription_id", reason: format!("unknown subscription {id}") })?;
                if subscriber.is_some_and(|s| s != sub.subscriber) {
                    return Err(Refusal::Invalid { field: "subscriber", reason: format!("does not own subscription {id}") });
                }
                sub
            }
            (Some(address), None) => self.pick(address, now)?,
            (None, None) => {
                return Err(Refusal::Invalid { field: "subscriber", reason: "give `subscriber` or `subscription_id`".into() });
            }
        };
        Ok((sub, self.refusal(sub, now)))
    }

    fn pick(&self, address: Address, now: i64) -> Result<&Subscription, Refusal> {
        let ids = self.by_subscriber.get(&address).ok_or_else(|| Refusal::NotEntitled(format!("{address} has no subscription")))?;
        let entitled: Vec<&Subscription> = ids.iter().filter_map(|id| self.by_id.get(id)).filter(|s| s.entitled_at(now)).collect();
        match entitled.as_slice() {
            [one] => Ok(one),
            [] => Ok(ids.last().and_then(|id| self.by_id.get(id)).expect("a listed subscription")),
            many => Err(Refusal::Invalid {
                field: "subscription_id",
                reason: format!("{address} has {} live subscriptions; name one with subscription_id", many.len()),
            }),
        }
    }

    /// The estimated overage of `sub`'s open period at `now` (0 when the period held is an earlier one).
    fn used(&self, sub: &Subscription, now: i64) -> u128 {
        self.open.get(&sub.id).filter(|o| o.period_start >= sub.open_period_start(now)).map_or(0, |o| o.overage_estimate)
    }

    fn refusal(&self, sub: &Subscription, now: i64) -> Option<String> {
        if !sub.entitled_at(now) {
            return Some(match sub.status {
                Status::Lapsed => format!("subscription {} lapsed", sub.id),
                Status::Cancelled => format!("subscription {} was cancelled and its paid time ended", sub.id),
                Status::Active | Status::PastDue => format!("subscription {} is past due and its grace period ended", sub.id),
            });
        }
        self.terms(sub, now).cap_refusal(self.used(sub, now)).map(|(_, reason)| reason)
    }

    /// A wallet with several live subscriptions is served by the newest one with overage headroom left (else the
    /// newest): the answer names it, and usage events for the wallet must name it too.
    fn pick_to_serve(&self, address: Address, now: i64) -> Result<&Subscription, Refusal> {
        match self.pick(address, now) {
            Err(Refusal::Invalid { field: "subscription_id", .. }) => {
                let ids = self.by_subscriber.get(&address).map(Vec::as_slice).unwrap_or_default();
                let live: Vec<&Subscription> = ids.iter().rev().filter_map(|id| self.by_id.get(id)).filter(|s| s.entitled_at(now)).collect();
                let best = live.iter().find(|s| self.refusal(s, now).is_none()).or(live.first());
                best.copied().ok_or_else(|| Refusal::NotEntitled(format!("{address} has no live subscription")))
            }
            other => other,
        }
    }

    /// The entitlement answer for a subscriber.
    pub fn check(&self, subscriber: Address, now: i64) -> Entitlement {
        match self.pick_to_serve(subscriber, now) {
            Ok(sub) => {
                let wall = crate::metering::funds::wall_ms();
                let reason = self.refusal(sub, now).or_else(|| self.funds_refusal_to_serve(sub, now, wall));
                let serve_until = if sub.status == Status::Cancelled { sub.paid_through } else { sub.grace_end(now) };
                Entitlement {
                    entitled: reason.is_none(),
                    reason,
                    subscription_id: Some(sub.id),
                    status: Some(sub.status),
                    serve_until: Some(serve_until),
                    overage_cap: Some(sub.overage_cap.to_string()),
                    overage_used: Some(self.used(sub, now).to_string()),
                    funds: self.funds_answer(sub.subscriber, now, wall),
                }
            }
            Err(Refusal::NotEntitled(reason) | Refusal::Invalid { reason, .. }) => Entitlement {
                entitled: false,
                reason: Some(reason),
                subscription_id: None,
                status: None,
                serve_until: None,
                overage_cap: None,
                overage_used: None,
                funds: None,
            },
        }
    }

    /// The kind of the entitlement refusal of subscription `id` (for the 402 counter).
    pub fn refusal_kind(&self, id: u64, now: i64) -> RefusalKind {
        match self.by_id.get(&id) {
            Some(sub) if sub.entitled_at(now) => RefusalKind::OverageCap,
            _ => RefusalKind::NotEntitled,
        }
    }
}

/// Funds: what the wallets can pay, and what admission is judged with.
impl Entitlements {
    /// Judges billable usage against the wallets' funds from now on.
    pub fn enable_funds(&mut self, policy: FundsPolicy) {
        self.funds_policy = Some(policy);
    }

    /// Whether funds are judged.
    pub fn funds_policy(&self) -> Option<FundsPolicy> {
        self.funds_policy
    }

    /// The wallets with a live subscription at `now` (only those without a reading, with `unread_only`), and the
    /// open period (subscription id, period index) of each of their live subscriptions.
    pub fn live(&self, now: i64, unread_only: bool) -> (Vec<Address>, Vec<(u64, u64)>) {
        let mut wallets = Vec::new();
        let mut periods = Vec::new();
        for (wallet, ids) in &self.by_subscriber {
            if unread_only && self.funds.contains_key(wallet) {
                continue;
            }
            let live: Vec<&Subscription> = ids.iter().filter_map(|id| self.by_id.get(id)).filter(|s| s.entitled_at(now)).collect();
            if live.is_empty() {
                continue;
            }
            wallets.push(*wallet);
            periods.extend(live.iter().map(|s| (s.id, open_period_index(s, now))));
        }
        wallets.sort_unstable();
        periods.sort_unstable();
        (wallets, periods)
    }

    /// Takes new funds readings (replacing the wallets' previous ones) and what the chain has charged in the
    /// periods asked for (a period with no charge is absent: charged 0).
    pub fn set_funds(&mut self, readings: HashMap<Address, WalletFunds>, periods: &[(u64, u64)], charged: &HashMap<(u64, u64), u128>) {
        self.funds.extend(readings);
        for (id, period) in periods {
            self.charged.insert(*id, (*period, charged.get(&(*id, *period)).copied().unwrap_or(0)));
        }
        // Wallets with no subscription left are forgotten.
        let known = &self.by_subscriber;
        self.funds.retain(|wallet, _| known.contains_key(wallet));
    }

    /// How many wallets with a live subscription have no reading fresh enough to judge by.
    pub fn wallets_with_unknown_funds(&self, now: i64) -> usize {
        let wall = crate::metering::funds::wall_ms();
        self.live(now, false).0.into_iter().filter(|w| self.fresh_funds(*w, wall).is_none()).count()
    }

    /// What the chain has charged in `sub`'s open period, as last read.
    fn charged_in_open(&self, sub: &Subscription, now: i64) -> u128 {
        match self.charged.get(&sub.id) {
            Some((period, charged)) if *period == open_period_index(sub, now) => *charged,
            _ => 0,
        }
    }

    /// What admission needs to know of `sub` at `now`.
    fn terms(&self, sub: &Subscription, now: i64) -> Terms {
        Terms {
            id: sub.id,
            wallet: sub.subscriber,
            plan_id: sub.plan_id,
            period_start: sub.open_period_start(now),
            overage_cap: sub.overage_cap,
            charged: self.charged_in_open(sub, now),
        }
    }

    /// The live subscriptions of `wallet` at `now`.
    fn live_of(&self, wallet: Address, now: i64) -> impl Iterator<Item = &Subscription> {
        let ids = self.by_subscriber.get(&wallet).map(Vec::as_slice).unwrap_or_default();
        ids.iter().filter_map(|id| self.by_id.get(id)).filter(move |s| s.entitled_at(now))
    }

    /// The overage the wallet's live subscriptions owe for their open periods, not charged on chain yet.
    fn wallet_owed(&self, wallet: Address, now: i64) -> u128 {
        self.live_of(wallet, now).fold(0u128, |sum, s| sum.saturating_add(self.terms(s, now).owed(self.used(s, now))))
    }

    /// The wallet's reading, unless it is too old to judge by.
    fn fresh_funds(&self, wallet: Address, wall_ms: i64) -> Option<&WalletFunds> {
        let policy = self.funds_policy?;
        self.funds.get(&wallet).filter(|f| f.age_ms(wall_ms) <= policy.stale_after_ms())
    }

    /// The wallet's funds as admission judges them at `wall_ms`.
    fn funds_of(&self, wallet: Address, wall_ms: i64) -> Funds {
        let Some(policy) = self.funds_policy else { return Funds::NotJudged };
        match (self.fresh_funds(wallet, wall_ms), self.funds.get(&wallet)) {
            (Some(funds), _) => Funds::Known(funds.clone()),
            (None, None) => Funds::Unknown("never read".to_owned()),
            (None, Some(f)) => Funds::Unknown(format!("last read {} s ago, more than {} s", f.age_ms(wall_ms) / 1000, policy.stale_after_ms() / 1000)),
        }
    }

    fn funds_answer(&self, wallet: Address, now: i64, wall_ms: i64) -> Option<FundsAnswer> {
        self.funds_policy?;
        let owed = self.wallet_owed(wallet, now);
        let reading = self.funds.get(&wallet);
        let fresh = self.fresh_funds(wallet, wall_ms).is_some();
        Some(FundsAnswer {
            state: if fresh { "known" } else { "unknown" },
            balance: reading.map(|f| f.balance.to_string()),
            allowance: reading.map(|f| f.allowance.to_string()),
            credit: reading.map(|f| f.credit.to_string()),
            payable: reading.map(|f| f.payable().to_string()),
            owed: owed.to_string(),
            headroom: reading.filter(|_| fresh).map(|f| f.payable().saturating_sub(owed).to_string()),
            block: reading.map(|f| f.block),
            read_at: reading.map(|f| f.read_at_ms.div_euclid(1000)),
        })
    }

    /// Why `sub` is not to be served for funds, for the entitlement answer: its open period is in overage (or its
    /// plan includes nothing, so any usage is billable) and the wallet has no headroom left or unknown funds. A
    /// request that would stay inside the included usage is still accepted at ingest.
    fn funds_refusal_to_serve(&self, sub: &Subscription, now: i64, wall_ms: i64) -> Option<String> {
        self.funds_policy?;
        let open = self.open.get(&sub.id).filter(|o| o.period_start >= sub.open_period_start(now));
        let billable = open.is_none_or(|o| o.overage_estimate > 0 || o.includes_nothing);
        if !billable {
            return None;
        }
        let owed = self.wallet_owed(sub.subscriber, now);
        self.funds_of(sub.subscriber, wall_ms).refusal(sub.id, owed, 0).map(|(_, reason)| reason)
    }

    /// What a decision on `events` (validated, not refused) needs: the terms of their subscriptions and, when funds
    /// are judged, of every live subscription of their wallets, and the wallets' funds, at `now`.
    pub fn context(&self, events: &[&UsageEvent], now: i64, wall_ms: i64) -> Context {
        let mut context = Context::default();
        for event in events {
            let Some(sub) = self.by_id.get(&event.subscription_id) else { continue };
            context.subscriptions.entry(sub.id).or_insert_with(|| self.terms(sub, now));
            if context.wallets.contains_key(&sub.subscriber) {
                continue;
            }
            let funds = self.funds_of(sub.subscriber, wall_ms);
            let live: Vec<u64> = if funds == Funds::NotJudged { Vec::new() } else { self.live_of(sub.subscriber, now).map(|s| s.id).collect() };
            for id in &live {
                let other = &self.by_id[id];
                context.subscriptions.entry(*id).or_insert_with(|| self.terms(other, now));
            }
            context.wallets.insert(sub.subscriber, Wallet { funds, live });
        }
        context
    }

    /// The first filter: refuses (in `refused`, with the kind in `kinds`) the events of a batch that the view
    /// already sees beyond the period's cap or the wallet's funds, judged in batch order on top of the open usage
    /// held here. What passes is judged for good by the ledger when stored.
    pub fn admit(&self, prepared: &mut [Result<UsageEvent, Outcome>], kinds: &mut [Option<RefusalKind>], catalog: &Snapshot, decimals: u32, now: i64) {
        let wall = crate::metering::funds::wall_ms();
        let (indexes, events): (Vec<usize>, Vec<&UsageEvent>) =
            prepared.iter().enumerate().filter_map(|(i, item)| item.as_ref().ok().filter(|e| e.refused.is_none()).map(|e| (i, e))).unzip();
        if events.is_empty() {
            return;
        }
        let context = self.context(&events, now, wall);
        let base = context
            .subscriptions
            .values()
            .filter_map(|t| self.open.get(&t.id).filter(|o| o.period_start == t.period_start).map(|o| (t.id, o.usage.clone())))
            .collect();
        let judged = admission::judge(&context, base, &events, catalog, decimals);
        for (index, refusal) in indexes.into_iter().zip(judged.refusals) {
            if let Some((kind, reason)) = refusal {
                kinds[index] = Some(kind);
                if let Ok(event) = &mut prepared[index] {
                    event.refused = Some(reason);
                }
            }
        }
    }
}

/// The index of the period usage at `now` belongs to (see [`Subscription::open_period_start`]).
fn open_period_index(sub: &Subscription, now: i64) -> u64 {
    if now < sub.paid_through { sub.period_index } else { sub.period_index + 1 }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sub(id: u64, wallet: Address, status: Status) -> Subscription {
        Subscription {
            id,
            subscriber: wallet,
            plan_id: 1,
            status,
            period_index: 0,
            paid_through: 2_000,
            period: 1_000,
            grace: 100,
            overage_cap: 5,
            subscribed_at: 1_000,
            pauses: Default::default(),
        }
    }

    #[test]
    fn time_paused_since_paid_through_does_not_count_against_the_grace_period() {
        let mut s = sub(1, Address::repeat_byte(7), Status::PastDue);
        assert!(s.entitled_at(2_099) && !s.entitled_at(2_100), "grace ends at 2,100 without a pause");
        // Paused from 1,990 (before paid-through: those 10 s do not count) to 2,050, then again from 2,120 on.
        s.pauses = crate::metering::subscriptions::Pauses(vec![(1_990, Some(2_050)), (2_120, None)].into());
        assert_eq!(s.grace_end(2_140), 2_100 + 50 + 20);
        assert!(s.entitled_at(2_149), "the running pause keeps it entitled");
        assert!(s.entitled_at(5_000), "for as long as it runs, as the contract's isEntitled");
        s.pauses = crate::metering::subscriptions::Pauses(vec![(1_990, Some(2_050))].into());
        assert!(s.entitled_at(2_149) && !s.entitled_at(2_150), "grace plus the 50 s paused after paid-through");
        // A cancelled subscription is served to paid-through only, paused or not.
        s.status = Status::Cancelled;
        assert!(!s.entitled_at(2_000));
    }

    #[test]
    fn a_wallet_with_two_live_subscriptions_is_served_by_the_newest_with_headroom() {
        let wallet = Address::repeat_byte(7);
        let mut entitlements = Entitlements::default();
        for s in [sub(1, wallet, Status::Active), sub(2, wallet, Status::Active), sub(3, wallet, Status::Lapsed)] {
            entitlements.by_subscriber.entry(wallet).or_default().push(s.id);
            entitlements.by_id.insert(s.id, s);
        }
        let answer = entitlements.check(wallet, 1_500);
        assert_eq!((answer.entitled, answer.subscription_id), (true, Some(2)), "{answer:?}");
        // Subscription 2 used its cap: subscription 1 still has headroom.
        entitlements.open.insert(2, OpenUsage { period_start: 1_000, overage_estimate: 5, ..OpenUsage::default() });
        let answer = entitlements.check(wallet, 1_500);
        assert_eq!((answer.entitled, answer.subscription_id), (true, Some(1)), "{answer:?}");
        // Both used up: refused, about the newest.
        entitlements.open.insert(1, OpenUsage { period_start: 1_000, overage_estimate: 9, ..OpenUsage::default() });
        let answer = entitlements.check(wallet, 1_500);
        assert_eq!((answer.entitled, answer.subscription_id), (false, Some(2)), "{answer:?}");
        // Usage without a subscription id stays ambiguous: it must name one.
        assert!(matches!(entitlements.resolve(Some(wallet), None, 1_500), Err(Refusal::Invalid { field: "subscription_id", .. })));
    }
}

#[cfg(test)]
mod funds_tests {
    use alloy::primitives::{B256, U256};

    use super::*;
    use crate::metering::{
        funds::FundsPolicy,
        pricing::{Allowance, Price},
    };

    const USDC: u128 = 1_000_000;
    const WALLET: Address = Address::repeat_byte(9);

    /// One model `m` with meter `u` at 1 USDC per unit; plan 1 includes 2 units of `free`, plan 2 nothing.
    fn catalog() -> Snapshot {
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

    /// A wallet with subscription 1 on `plan` (cap 100 USDC, period [1000, 2000)), funds read at `read_at_ms`.
    fn view(plan: u64, balance: u128, allowance: u128, credit: u128, read_at_ms: i64) -> Entitlements {
        let mut e = Entitlements::default();
        let sub = Subscription {
            id: 1,
            subscriber: WALLET,
            plan_id: plan,
            status: Status::Active,
            period_index: 0,
            paid_through: 2_000,
            period: 1_000,
            grace: 100,
            overage_cap: 100 * USDC,
            subscribed_at: 1_000,
            pauses: Default::default(),
        };
        let _ = e.apply(Some(vec![sub].into()), &[(1, 1_000)], OpenUsageRead::default(), &catalog(), 6);
        e.enable_funds(FundsPolicy { interval_ms: 15_000 });
        let reading = WalletFunds { balance: U256::from(balance), allowance: U256::from(allowance), credit: U256::from(credit), block: 7, read_at_ms };
        e.set_funds([(WALLET, reading)].into(), &[(1, 0)], &HashMap::new());
        e
    }

    fn events(quantities: &[(&str, u64)]) -> Vec<Result<UsageEvent, Outcome>> {
        quantities
            .iter()
            .enumerate()
            .map(|(i, (meter, q))| {
                Ok(UsageEvent {
                    event_id: format!("e-{i}"),
                    subscription_id: 1,
                    model: "m".into(),
                    meter: (*meter).into(),
                    quantity: Decimal::from(*q),
                    occurred_at_ms: 1_500_000,
                    properties: None,
                    payload_hash: B256::ZERO,
                    refused: None,
                })
            })
            .collect()
    }

    fn admit(e: &Entitlements, batch: &mut [Result<UsageEvent, Outcome>]) -> Vec<Option<RefusalKind>> {
        let mut kinds = vec![None; batch.len()];
        e.admit(batch, &mut kinds, &catalog(), 6, 1_500);
        kinds
    }

    /// The ledger's figures after `batch`'s admitted events, at `version`.
    fn stored(e: &mut Entitlements, batch: &[Result<UsageEvent, Outcome>], version: i64) {
        let mut usage = e.open.get(&1).map(|o| o.usage.clone()).unwrap_or_default();
        for event in batch.iter().filter_map(|b| b.as_ref().ok()).filter(|e| e.refused.is_none()) {
            crate::metering::entitlement::add(&mut usage, event);
        }
        e.apply_ledger(vec![LedgerPeriod { subscription_id: 1, period_start: 1_000, version, usage }], &catalog(), 6);
    }

    #[test]
    fn each_event_is_admitted_in_order_while_the_wallet_can_pay_it() {
        // Credit 1 + min(balance 3, allowance 10) = 4 USDC.
        let mut e = view(2, 3 * USDC, 10 * USDC, USDC, crate::metering::funds::wall_ms());
        let mut batch = events(&[("u", 2), ("u", 3), ("u", 1), ("u", 1), ("u", 1)]);
        let kinds = admit(&e, &mut batch);
        assert_eq!(kinds, [None, Some(RefusalKind::FundsBalance), None, None, Some(RefusalKind::FundsBalance)]);
        let reason = batch[1].as_ref().unwrap().refused.clone().unwrap();
        assert!(reason.contains("subscription 1") && reason.contains("balance is short"), "{reason}");
        assert!(reason.contains("2000000 base units of overage not charged yet + 3000000 for this usage against 4000000"), "{reason}");
        assert!(reason.contains("credit 1000000") && reason.contains("balance 3000000") && reason.contains("allowance 10000000"), "{reason}");

        // Once the ledger's figures for the stored events are in, they count.
        stored(&mut e, &batch, 1);
        assert_eq!(e.check(WALLET, 1_500).funds.unwrap().owed, (4 * USDC).to_string());
        let mut other = events(&[("u", 1)]);
        assert_eq!(admit(&e, &mut other), [Some(RefusalKind::FundsBalance)]);
        let answer = e.check(WALLET, 1_500);
        assert!(!answer.entitled && answer.reason.unwrap().contains("cannot pay"), "no headroom left: not to be served");
    }

    #[test]
    fn a_batch_that_fits_is_admitted_whole_and_what_the_chain_charged_is_not_owed() {
        let mut e = view(2, 10 * USDC, 2 * USDC, 0, crate::metering::funds::wall_ms());
        let mut batch = events(&[("u", 1), ("u", 1)]);
        assert_eq!(admit(&e, &mut batch), vec![None, None]);
        stored(&mut e, &batch, 1);
        let mut more = events(&[("u", 1)]);
        assert_eq!(admit(&e, &mut more), [Some(RefusalKind::FundsAllowance)], "allowance 2 is the limit");
        // The chain charged 2 USDC of this period (the next reading shows the allowance used up and re-approved).
        let reading = WalletFunds {
            balance: U256::from(8 * USDC),
            allowance: U256::from(3 * USDC),
            credit: U256::ZERO,
            block: 8,
            read_at_ms: crate::metering::funds::wall_ms(),
        };
        e.set_funds([(WALLET, reading)].into(), &[(1, 0)], &[((1, 0), 2 * USDC)].into());
        let funds = e.check(WALLET, 1_500).funds.unwrap();
        assert_eq!((funds.owed.as_str(), funds.headroom.as_deref()), ("0", Some("3000000")));
        let mut more = events(&[("u", 3)]);
        assert_eq!(admit(&e, &mut more), [None]);
    }

    #[test]
    fn the_ledgers_figures_replace_older_ones_and_sums_never_replace_the_ledgers() {
        let mut e = view(2, 100 * USDC, 100 * USDC, 0, crate::metering::funds::wall_ms());
        let owed = |e: &Entitlements| e.check(WALLET, 1_500).funds.unwrap().owed;
        let row = |q: u64| (1, "m".to_owned(), "u".to_owned(), Decimal::from(q), 1_400_000);
        let period = |version: i64, q: u64| LedgerPeriod {
            subscription_id: 1,
            period_start: 1_000,
            version,
            usage: [(("m".to_owned(), "u".to_owned()), (Decimal::from(q), 1_400_000))].into(),
        };
        // Summed from the events while the ledger holds nothing: the sums count.
        let targets = e.reload_targets(1_500);
        assert_eq!(targets, [(1, 1_000)]);
        e.apply_reload(&targets, OpenUsageRead { ledger: Vec::new(), summed: vec![row(2)] }, &catalog(), 6);
        assert_eq!(owed(&e), (2 * USDC).to_string());
        // A decision brings version 3 (5 units); a reload that read version 2 (4 units) or sums does not go back.
        e.apply_ledger(vec![period(3, 5)], &catalog(), 6);
        assert_eq!(owed(&e), (5 * USDC).to_string());
        e.apply_reload(&targets, OpenUsageRead { ledger: vec![period(2, 4)], summed: Vec::new() }, &catalog(), 6);
        e.apply_reload(&targets, OpenUsageRead { ledger: Vec::new(), summed: vec![row(9)] }, &catalog(), 6);
        assert_eq!(owed(&e), (5 * USDC).to_string());
        // A newer version (another replica's usage) replaces it.
        e.apply_reload(&targets, OpenUsageRead { ledger: vec![period(4, 7)], summed: Vec::new() }, &catalog(), 6);
        assert_eq!(owed(&e), (7 * USDC).to_string());
        // So does the next period, whatever its version; the previous period's figures no longer count.
        e.apply_ledger(vec![LedgerPeriod { period_start: 2_000, ..period(1, 1) }], &catalog(), 6);
        e.apply_ledger(vec![period(9, 50)], &catalog(), 6);
        assert_eq!(e.open[&1].period_start, 2_000);
    }

    #[test]
    fn unknown_funds_refuse_overage_but_never_included_usage() {
        let stale = crate::metering::funds::wall_ms() - 46_000; // more than three 15 s intervals ago
        let e = view(1, 100 * USDC, 100 * USDC, 0, stale);
        let mut batch = events(&[("free", 2), ("u", 1), ("free", 1)]);
        let kinds = admit(&e, &mut batch);
        assert_eq!(kinds, [None, Some(RefusalKind::FundsUnknown), Some(RefusalKind::FundsUnknown)]);
        assert!(batch[1].as_ref().unwrap().refused.as_ref().unwrap().contains("funds unknown"));
        let answer = e.check(WALLET, 1_500);
        assert!(answer.entitled, "the plan still includes usage: served, {answer:?}");
        assert_eq!(answer.funds.unwrap().state, "unknown");
        // A plan that includes nothing: not to be served while funds are unknown.
        let e = view(2, 100 * USDC, 100 * USDC, 0, stale);
        let answer = e.check(WALLET, 1_500);
        assert!(!answer.entitled && answer.reason.as_deref().unwrap().contains("funds unknown"), "{answer:?}");
    }
}
