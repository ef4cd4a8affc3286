//! Whether to serve a subscriber, answered from memory: the subscriptions as indexed (refreshed on an interval)
//! and the usage of each one's open period (loaded when the period starts, then added to as events are accepted).
//!
//! Overage headroom is an estimate: the open period's usage is kept per model and meter and priced as if each
//! aggregate happened at its latest event. The exact figure is computed at period close; the on-chain cap bounds
//! the charge either way.
//!
//! With funds judged (`serve`, see [`crate::metering::funds`]), billable usage is also admitted only while the wallet can
//! pay it: the overage its open periods owe (the estimate, capped, minus what the chain has charged for the
//! period) plus the new usage's cost must not exceed what a charge could collect. Usage that adds no overage (the
//! plan's included usage) is never refused for funds.

use std::collections::HashMap;

use alloy::primitives::Address;
use rust_decimal::Decimal;
use serde::Serialize;
use sqlx::PgPool;

use crate::{
    KeeperError,
    metering::catalog::Snapshot,
    metering::funds::{FundsAnswer, FundsPolicy, WalletFunds},
    metering::event::{Outcome, UsageEvent},
    metering::pricing::{MeteredEvent, PeriodTerms, price_period},
    metering::subscriptions::{Status, Subscription},
};

/// One aggregate of open-period usage: (subscription id, model, meter, quantity, latest event ms).
pub type OpenUsageRow = (i64, String, String, Decimal, i64);

/// The estimated overage of usage aggregates (merged) in a period of `plan` starting at `period_start`; `None`
/// when the catalog cannot price it.
fn price_overage<'a>(plan: u64, period_start: i64, parts: impl IntoIterator<Item = &'a Aggregates>, catalog: &Snapshot, decimals: u32) -> Option<u128> {
    let mut merged: HashMap<&(String, String), (Decimal, i64)> = HashMap::new();
    for part in parts {
        for (key, (quantity, latest)) in part {
            let entry = merged.entry(key).or_insert((Decimal::ZERO, 0));
            entry.0 = entry.0.saturating_add(*quantity);
            entry.1 = entry.1.max(*latest);
        }
    }
    let events: Vec<MeteredEvent> = merged
        .into_iter()
        .map(|((model, meter), (quantity, latest))| MeteredEvent {
            event_id: format!("{model}/{meter}"),
            model: model.clone(),
            meter: meter.clone(),
            quantity,
            occurred_at_ms: latest,
            adjustment_of: None,
        })
        .collect();
    let terms = PeriodTerms { fee: 0, overage_cap: u128::MAX, allowance: catalog.allowance(plan, period_start), default_split: Some(0), decimals };
    price_period(&catalog.catalog, &terms, &events).ok().map(|priced| priced.overage_amount)
}

/// Reads the open-period usage of the `stale` subscriptions.
pub async fn load_open_usage(pool: &PgPool, stale: &[(u64, i64)]) -> Result<Vec<OpenUsageRow>, KeeperError> {
    if stale.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<i64> = stale.iter().map(|(id, _)| *id as i64).collect();
    let starts: Vec<i64> = stale.iter().map(|(_, start)| start.saturating_mul(1000)).collect();
    Ok(sqlx::query_as(
        "SELECT e.subscription_id, e.model_id, e.meter, SUM(e.quantity), MAX(e.occurred_at_ms)
         FROM keeper.usage_events e
         JOIN UNNEST($1::BIGINT[], $2::BIGINT[]) AS p(id, start_ms) ON e.subscription_id = p.id AND e.occurred_at_ms >= p.start_ms
         -- An open period's events are never closed yet; saying so lets the partial index skip closed history.
         WHERE e.close_id IS NULL
         GROUP BY 1, 2, 3",
    )
    .bind(&ids)
    .bind(&starts)
    .fetch_all(pool)
    .await?)
}

/// Why an event cannot be billed to a subscription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The event names no subscription, or a wrong one.
    Invalid {
        /// The field at fault.
        field: &'static str,
        /// Why.
        reason: String,
    },
    /// The subscription exists but is not to be served.
    NotEntitled(String),
}

/// Why usage is refused, by kind: the label of the keeper's 402 counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RefusalKind {
    /// No live subscription (none, lapsed, cancelled and ended, past due beyond grace).
    NotEntitled,
    /// The open period's estimated overage reached the on-chain cap.
    OverageCap,
    /// The wallet's funds are unknown (never read, or the last reading is too old).
    FundsUnknown,
    /// The wallet cannot pay: its balance is the lower of balance and allowance (or both are equal).
    FundsBalance,
    /// The wallet cannot pay: its allowance to Subscriptions is below its balance.
    FundsAllowance,
}

impl RefusalKind {
    /// Every kind, in the order the metrics list them.
    pub const ALL: [Self; 5] = [Self::NotEntitled, Self::OverageCap, Self::FundsUnknown, Self::FundsBalance, Self::FundsAllowance];

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Self::NotEntitled => "not_entitled",
            Self::OverageCap => "overage_cap",
            Self::FundsUnknown => "funds_unknown",
            Self::FundsBalance => "funds_balance",
            Self::FundsAllowance => "funds_allowance",
        }
    }
}

/// Usage per (model, meter): quantity and the latest event time in ms.
type Aggregates = HashMap<(String, String), (Decimal, i64)>;

#[derive(Debug, Clone, Default)]
struct OpenUsage {
    period_start: i64,
    /// (model, meter) -> (quantity, latest event time in ms).
    usage: Aggregates,
    overage_estimate: u128,
    /// The plan includes nothing in this period: every event is billable.
    includes_nothing: bool,
}

/// The answer of `GET /v1/entitlement/{subscriber}`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Entitlement {
    /// Serve or not.
    pub entitled: bool,
    /// Why not, when not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The subscription the answer is about.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subscription_id: Option<u64>,
    /// Its status.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<Status>,
    /// Served until (Unix seconds): paid-through plus grace plus the time charging was paused since paid-through (a
    /// running pause moves it on), or paid-through when cancelled.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub serve_until: Option<i64>,
    /// The on-chain overage cap for the period, base units (decimal string).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub overage_cap: Option<String>,
    /// Estimated overage so far in the open period, base units (decimal string).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub overage_used: Option<String>,
    /// What the wallet can pay for overage, when funds are judged (`serve`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub funds: Option<FundsAnswer>,
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
    /// Overage of events admitted but not stored yet (batches in flight), per subscription, so that concurrent
    /// batches do not spend the same funds twice.
    reserved: HashMap<u64, u128>,
    /// Events recorded while a reload of open usage from Postgres is in flight (see [`Self::begin_reload`]).
    journal: Vec<OpenUsageRow>,
    /// The position of `journal[0]` among every event ever journaled.
    journal_start: usize,
    /// Reloads in flight.
    reloads: usize,
}

/// A funds refusal: its kind and reason.
type FundsRefusal = (RefusalKind, String);

impl Entitlements {
    /// Subscriptions whose open period at `now` is not the one whose usage is held: (id, period start).
    pub fn stale(&self, subscriptions: &[Subscription], now: i64) -> Vec<(u64, i64)> {
        subscriptions
            .iter()
            .map(|sub| (sub.id, sub.open_period_start(now)))
            .filter(|(id, start)| self.open.get(id).is_none_or(|o| o.period_start != *start))
            .collect()
    }

    /// Replaces the subscriptions and the open usage of the `stale` ones (read with [`load_open_usage`] after
    /// [`Self::begin_reload`] returned `mark`).
    pub fn apply(&mut self, subscriptions: Vec<Subscription>, stale: &[(u64, i64)], usage: Vec<OpenUsageRow>, mark: usize, catalog: &Snapshot, decimals: u32) {
        self.by_id.clear();
        self.by_subscriber.clear();
        for sub in subscriptions {
            self.by_subscriber.entry(sub.subscriber).or_default().push(sub.id);
            self.by_id.insert(sub.id, sub);
        }
        for ids in self.by_subscriber.values_mut() {
            ids.sort_unstable();
        }
        self.replace_open_usage(stale, usage, mark, catalog, decimals);
    }

    /// Starts reading open usage from Postgres: events recorded from now on are kept until the reload is applied
    /// and added on top of what it read, because the read may have missed them. (Some may be in the read too:
    /// counted twice until the next reload, never missed.) Returns the mark to apply the reload with; every call
    /// must be followed by [`Self::end_reload`].
    pub fn begin_reload(&mut self) -> usize {
        self.reloads += 1;
        self.journal_start + self.journal.len()
    }

    /// Ends a reload (applied or not).
    pub fn end_reload(&mut self) {
        self.reloads = self.reloads.saturating_sub(1);
        if self.reloads == 0 {
            self.journal_start += self.journal.len();
            self.journal.clear();
        }
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

    /// Replaces the open usage of `targets` whose open period is still the one read (read with
    /// [`load_open_usage`] after [`Self::begin_reload`] returned `mark`).
    pub fn apply_reload(&mut self, targets: &[(u64, i64)], usage: Vec<OpenUsageRow>, mark: usize, catalog: &Snapshot, decimals: u32) {
        let current: Vec<(u64, i64)> =
            targets.iter().filter(|(id, start)| self.open.get(id).is_none_or(|o| o.period_start == *start)).copied().collect();
        self.replace_open_usage(&current, usage, mark, catalog, decimals);
    }

    fn replace_open_usage(&mut self, periods: &[(u64, i64)], usage: Vec<OpenUsageRow>, mark: usize, catalog: &Snapshot, decimals: u32) {
        for (id, start) in periods {
            self.open.insert(*id, OpenUsage { period_start: *start, ..OpenUsage::default() });
        }
        let replayed = self.journal.iter().skip(mark.saturating_sub(self.journal_start)).cloned();
        let reloaded: std::collections::HashSet<u64> = periods.iter().map(|(id, _)| *id).collect();
        let rows: Vec<OpenUsageRow> = usage.into_iter().chain(replayed.filter(|row| reloaded.contains(&(row.0 as u64)))).collect();
        for (id, model, meter, quantity, latest) in rows {
            if let Some(open) = self.open.get_mut(&(id as u64))
                && latest >= open.period_start.saturating_mul(1000)
            {
                let entry = open.usage.entry((model, meter)).or_insert((Decimal::ZERO, 0));
                entry.0 = entry.0.saturating_add(quantity);
                entry.1 = entry.1.max(latest);
            }
        }
        for (id, _) in periods {
            self.estimate(*id, catalog, decimals);
        }
    }

    /// Adds events just stored to their subscription's open usage.
    pub fn record(&mut self, events: &[UsageEvent], catalog: &Snapshot, decimals: u32) {
        if self.reloads > 0 {
            let rows = events.iter().map(|e| (e.subscription_id as i64, e.model.clone(), e.meter.clone(), e.quantity, e.occurred_at_ms));
            self.journal.extend(rows);
        }
        let mut touched = Vec::new();
        for event in events {
            let Some(open) = self.open.get_mut(&event.subscription_id) else { continue };
            if event.occurred_at_ms < open.period_start.saturating_mul(1000) {
                continue; // late usage of an earlier period: billed at its close, not against this period's cap
            }
            let entry = open.usage.entry((event.model.clone(), event.meter.clone())).or_insert((Decimal::ZERO, 0));
            entry.0 = entry.0.saturating_add(event.quantity);
            entry.1 = entry.1.max(event.occurred_at_ms);
            touched.push(event.subscription_id);
        }
        touched.sort_unstable();
        touched.dedup();
        for id in touched {
            self.estimate(id, catalog, decimals);
        }
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
                let sub = self.by_id.get(&id).ok_or_else(|| Refusal::Invalid {
                    field: "subscription_id",
                    reason: format!("unknown subscription {id}"),
                })?;
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

    fn refusal(&self, sub: &Subscription, now: i64) -> Option<String> {
        if !sub.entitled_at(now) {
            return Some(match sub.status {
                Status::Lapsed => format!("subscription {} lapsed", sub.id),
                Status::Cancelled => format!("subscription {} was cancelled and its paid time ended", sub.id),
                Status::Active | Status::PastDue => format!("subscription {} is past due and its grace period ended", sub.id),
            });
        }
        let used = self.open.get(&sub.id).map_or(0, |o| o.overage_estimate);
        (used > 0 && used >= sub.overage_cap).then(|| {
            format!("subscription {} used its overage cap of {} base units for this period", sub.id, sub.overage_cap)
        })
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
                let used = self.open.get(&sub.id).map_or(0, |o| o.overage_estimate);
                let serve_until = if sub.status == Status::Cancelled { sub.paid_through } else { sub.grace_end(now) };
                Entitlement {
                    entitled: reason.is_none(),
                    reason,
                    subscription_id: Some(sub.id),
                    status: Some(sub.status),
                    serve_until: Some(serve_until),
                    overage_cap: Some(sub.overage_cap.to_string()),
                    overage_used: Some(used.to_string()),
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

/// Funds: what the wallets can pay, and the admission of billable usage against it.
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

    /// What `sub`'s open period would owe with an estimated overage of `estimate`: capped, less what the chain
    /// has charged in it.
    fn owed(&self, sub: &Subscription, estimate: u128, now: i64) -> u128 {
        estimate.min(sub.overage_cap).saturating_sub(self.charged_in_open(sub, now))
    }

    /// The estimate `sub`'s open period is judged with: the stored usage's plus the batches in flight.
    fn judged_estimate(&self, id: u64) -> u128 {
        let estimate = self.open.get(&id).map_or(0, |o| o.overage_estimate);
        estimate.saturating_add(self.reserved.get(&id).copied().unwrap_or(0))
    }

    /// The overage the wallet's live subscriptions owe for their open periods, not charged on chain yet.
    fn wallet_owed(&self, wallet: Address, now: i64) -> u128 {
        let ids = self.by_subscriber.get(&wallet).map(Vec::as_slice).unwrap_or_default();
        ids.iter()
            .filter_map(|id| self.by_id.get(id))
            .filter(|s| s.entitled_at(now))
            .fold(0u128, |sum, s| sum.saturating_add(self.owed(s, self.judged_estimate(s.id), now)))
    }

    /// The wallet's reading, unless it is too old to judge by.
    fn fresh_funds(&self, wallet: Address, wall_ms: i64) -> Option<&WalletFunds> {
        let policy = self.funds_policy?;
        self.funds.get(&wallet).filter(|f| f.age_ms(wall_ms) <= policy.stale_after_ms())
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
        let open = self.open.get(&sub.id);
        let billable = open.is_none_or(|o| o.overage_estimate > 0 || o.includes_nothing);
        if !billable {
            return None;
        }
        let owed = self.wallet_owed(sub.subscriber, now);
        self.funds_refusal(sub, owed, 0, wall_ms).map(|(_, reason)| reason)
    }

    /// Whether the wallet of `sub` can pay `cost` more on top of `owed`; the refusal otherwise.
    fn funds_refusal(&self, sub: &Subscription, owed: u128, cost: u128, wall_ms: i64) -> Option<FundsRefusal> {
        let policy = self.funds_policy?;
        let Some(funds) = self.fresh_funds(sub.subscriber, wall_ms) else {
            let when = match self.funds.get(&sub.subscriber) {
                None => "never read".to_owned(),
                Some(f) => format!("last read {} s ago, more than {} s", f.age_ms(wall_ms) / 1000, policy.stale_after_ms() / 1000),
            };
            return Some((
                RefusalKind::FundsUnknown,
                format!(
                    "subscription {}: funds unknown: the wallet's balance, allowance and credit are {when}; billable usage waits until they are read again",
                    sub.id
                ),
            ));
        };
        let payable = funds.payable();
        let need = owed.saturating_add(cost);
        // Serving (cost 0) needs headroom left; admitting usage needs the cost covered.
        let short = if cost == 0 { owed >= payable } else { need > payable };
        if !short {
            return None;
        }
        let limit = funds.limiting();
        let kind = if limit == crate::metering::funds::Limit::Allowance { RefusalKind::FundsAllowance } else { RefusalKind::FundsBalance };
        let this = if cost == 0 { String::new() } else { format!(" + {cost} for this usage") };
        Some((
            kind,
            format!(
                "subscription {}: the wallet cannot pay for more usage ({}): {owed} base units of overage not charged yet{this} against {payable} a charge can collect (credit {} + the lower of balance {} and allowance {} to Subscriptions, at block {})",
                sub.id,
                limit.describe(),
                funds.credit,
                funds.balance,
                funds.allowance,
                funds.block
            ),
        ))
    }

    /// Admits the events of a batch that add overage only while their wallet can pay for it, in input order;
    /// refused ones get their reason in `refused` and their kind in `kinds`. Returns the overage reserved for the
    /// admitted events per subscription, to [`Self::release`] once they are stored and recorded.
    pub fn admit(
        &mut self,
        prepared: &mut [Result<UsageEvent, Outcome>],
        kinds: &mut [Option<RefusalKind>],
        catalog: &Snapshot,
        decimals: u32,
        now: i64,
    ) -> Vec<(u64, u128)> {
        if self.funds_policy.is_none() {
            return Vec::new();
        }
        let wall = crate::metering::funds::wall_ms();
        // The events to judge, per wallet in order of first appearance.
        let mut wallets: Vec<(Address, Vec<usize>)> = Vec::new();
        let mut position: HashMap<Address, usize> = HashMap::new();
        for (index, item) in prepared.iter().enumerate() {
            let Ok(event) = item else { continue };
            let Some(sub) = self.by_id.get(&event.subscription_id).filter(|_| event.refused.is_none()) else { continue };
            let at = *position.entry(sub.subscriber).or_insert_with(|| {
                wallets.push((sub.subscriber, Vec::new()));
                wallets.len() - 1
            });
            wallets[at].1.push(index);
        }
        let mut reserved: HashMap<u64, u128> = HashMap::new();
        for (wallet, indexes) in wallets {
            let admission = Admission { entitlements: self, catalog, decimals, now, wall };
            for (id, amount) in admission.run(wallet, &indexes, prepared, kinds) {
                *reserved.entry(id).or_default() += amount;
            }
        }
        for (id, amount) in &reserved {
            *self.reserved.entry(*id).or_default() += amount;
        }
        reserved.into_iter().filter(|(_, amount)| *amount > 0).collect()
    }

    /// Ends reservations made by [`Self::admit`] (the events are recorded, or were not stored).
    pub fn release(&mut self, reserved: &[(u64, u128)]) {
        for (id, amount) in reserved {
            if let Some(left) = self.reserved.get_mut(id) {
                *left = left.saturating_sub(*amount);
                if *left == 0 {
                    self.reserved.remove(id);
                }
            }
        }
    }
}

/// The index of the period usage at `now` belongs to (see [`Subscription::open_period_start`]).
fn open_period_index(sub: &Subscription, now: i64) -> u64 {
    if now < sub.paid_through { sub.period_index } else { sub.period_index + 1 }
}

/// The admission of one wallet's events of a batch.
struct Admission<'a> {
    entitlements: &'a Entitlements,
    catalog: &'a Snapshot,
    decimals: u32,
    now: i64,
    wall: i64,
}

/// A subscription's open usage as a batch is admitted: the events admitted so far on top of what is stored.
struct Working {
    extra: Aggregates,
    /// The judged estimate before the batch.
    base: u128,
    /// The judged estimate with `extra`.
    current: u128,
}

impl Admission<'_> {
    fn event(prepared: &[Result<UsageEvent, Outcome>], index: usize) -> &UsageEvent {
        prepared[index].as_ref().expect("only validated events are admitted")
    }

    /// The period start the subscription's open usage counts from (as `record` counts it).
    fn period_start(&self, sub: &Subscription) -> i64 {
        self.entitlements.open.get(&sub.id).map_or_else(|| sub.open_period_start(self.now), |o| o.period_start)
    }

    fn working(&self, sub: &Subscription) -> Working {
        let base = self.entitlements.judged_estimate(sub.id);
        Working { extra: Aggregates::new(), base, current: base }
    }

    /// The judged estimate of `sub` with `extra` on top of its stored usage.
    fn estimate_with(&self, sub: &Subscription, extra: &Aggregates) -> Option<u128> {
        let e = self.entitlements;
        let reserved = e.reserved.get(&sub.id).copied().unwrap_or(0);
        let stored = e.open.get(&sub.id).map(|o| &o.usage);
        let parts = stored.into_iter().chain(std::iter::once(extra));
        price_overage(sub.plan_id, self.period_start(sub), parts, self.catalog, self.decimals).map(|o| o.saturating_add(reserved))
    }

    /// Admits the wallet's events (`indexes`, in input order); returns the estimate's increase per subscription.
    fn run(&self, wallet: Address, indexes: &[usize], prepared: &mut [Result<UsageEvent, Outcome>], kinds: &mut [Option<RefusalKind>]) -> Vec<(u64, u128)> {
        let e = self.entitlements;
        let owed_before = e.wallet_owed(wallet, self.now);
        // Most batches fit: judge them whole first (overage only grows with usage, so every prefix fits too).
        let mut whole: HashMap<u64, Working> = HashMap::new();
        for &index in indexes {
            let event = Self::event(prepared, index);
            let sub = &e.by_id[&event.subscription_id];
            if event.occurred_at_ms >= self.period_start(sub).saturating_mul(1000) {
                add(&mut whole.entry(sub.id).or_insert_with(|| self.working(sub)).extra, event);
            }
        }
        let mut added = 0u128;
        for (id, work) in &mut whole {
            let sub = &e.by_id[id];
            work.current = self.estimate_with(sub, &work.extra).unwrap_or(work.base).max(work.base);
            added = added.saturating_add(e.owed(sub, work.current, self.now).saturating_sub(e.owed(sub, work.base, self.now)));
        }
        let any_sub = &e.by_id[&Self::event(prepared, indexes[0]).subscription_id];
        let fits = added == 0 || e.funds_refusal(any_sub, owed_before, added, self.wall).is_none();
        if fits {
            return whole.into_iter().map(|(id, w)| (id, w.current - w.base)).collect();
        }
        // Otherwise one by one: each event is admitted if the wallet can pay what it adds.
        let mut owed = owed_before;
        let mut work: HashMap<u64, Working> = HashMap::new();
        for &index in indexes {
            let event = Self::event(prepared, index).clone();
            let sub = &e.by_id[&event.subscription_id];
            if event.occurred_at_ms < self.period_start(sub).saturating_mul(1000) {
                continue; // late usage of a closed or closing period: not this period's overage
            }
            let w = work.entry(sub.id).or_insert_with(|| self.working(sub));
            let key = (event.model.clone(), event.meter.clone());
            let before = w.extra.get(&key).copied();
            add(&mut w.extra, &event);
            let estimate = self.estimate_with(sub, &w.extra).unwrap_or(w.current).max(w.current);
            let cost = e.owed(sub, estimate, self.now).saturating_sub(e.owed(sub, w.current, self.now));
            if cost == 0 {
                w.current = estimate;
                continue;
            }
            match e.funds_refusal(sub, owed, cost, self.wall) {
                None => {
                    w.current = estimate;
                    owed = owed.saturating_add(cost);
                }
                Some((kind, reason)) => {
                    match before {
                        Some(previous) => w.extra.insert(key, previous),
                        None => w.extra.remove(&key),
                    };
                    kinds[index] = Some(kind);
                    if let Ok(refused) = &mut prepared[index] {
                        refused.refused = Some(reason);
                    }
                }
            }
        }
        work.into_iter().map(|(id, w)| (id, w.current - w.base)).collect()
    }
}

fn add(usage: &mut Aggregates, event: &UsageEvent) {
    let entry = usage.entry((event.model.clone(), event.meter.clone())).or_insert((Decimal::ZERO, 0));
    entry.0 = entry.0.saturating_add(event.quantity);
    entry.1 = entry.1.max(event.occurred_at_ms);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metering::subscriptions::Status;

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
    use crate::{
        metering::funds::FundsPolicy,
        metering::pricing::{Allowance, Price},
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
        e.apply(vec![sub], &[(1, 1_000)], Vec::new(), 0, &catalog(), 6);
        e.enable_funds(FundsPolicy { interval_ms: 15_000 });
        let reading = WalletFunds {
            balance: U256::from(balance),
            allowance: U256::from(allowance),
            credit: U256::from(credit),
            block: 7,
            read_at_ms,
        };
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

    fn admit(e: &mut Entitlements, batch: &mut [Result<UsageEvent, Outcome>]) -> (Vec<Option<RefusalKind>>, Vec<(u64, u128)>) {
        let mut kinds = vec![None; batch.len()];
        let reserved = e.admit(batch, &mut kinds, &catalog(), 6, 1_500);
        (kinds, reserved)
    }

    fn accepted(batch: &[Result<UsageEvent, Outcome>]) -> Vec<UsageEvent> {
        batch.iter().filter_map(|b| b.as_ref().ok()).filter(|e| e.refused.is_none()).cloned().collect()
    }

    #[test]
    fn each_event_is_admitted_in_order_while_the_wallet_can_pay_it() {
        // Credit 1 + min(balance 3, allowance 10) = 4 USDC.
        let mut e = view(2, 3 * USDC, 10 * USDC, USDC, crate::metering::funds::wall_ms());
        let mut batch = events(&[("u", 2), ("u", 3), ("u", 1), ("u", 1), ("u", 1)]);
        let (kinds, reserved) = admit(&mut e, &mut batch);
        assert_eq!(kinds, [None, Some(RefusalKind::FundsBalance), None, None, Some(RefusalKind::FundsBalance)]);
        let reason = batch[1].as_ref().unwrap().refused.clone().unwrap();
        assert!(reason.contains("subscription 1") && reason.contains("balance is short"), "{reason}");
        assert!(reason.contains("2000000 base units of overage not charged yet + 3000000 for this usage against 4000000"), "{reason}");
        assert!(reason.contains("credit 1000000") && reason.contains("balance 3000000") && reason.contains("allowance 10000000"), "{reason}");
        assert_eq!(reserved, [(1, 4 * USDC)]);

        // A concurrent batch sees the reservation; once recorded and released, the stored usage counts instead.
        let mut other = events(&[("u", 1)]);
        assert_eq!(admit(&mut e, &mut other).0, [Some(RefusalKind::FundsBalance)]);
        e.record(&accepted(&batch), &catalog(), 6);
        e.release(&reserved);
        assert_eq!(e.check(WALLET, 1_500).funds.unwrap().owed, (4 * USDC).to_string());
        let mut other = events(&[("u", 1)]);
        assert_eq!(admit(&mut e, &mut other).0, [Some(RefusalKind::FundsBalance)]);
        let answer = e.check(WALLET, 1_500);
        assert!(!answer.entitled && answer.reason.unwrap().contains("cannot pay"), "no headroom left: not to be served");
    }

    #[test]
    fn a_batch_that_fits_is_admitted_whole_and_what_the_chain_charged_is_not_owed() {
        let mut e = view(2, 10 * USDC, 2 * USDC, 0, crate::metering::funds::wall_ms());
        let mut batch = events(&[("u", 1), ("u", 1)]);
        assert_eq!(admit(&mut e, &mut batch), (vec![None, None], vec![(1, 2 * USDC)]));
        e.record(&accepted(&batch), &catalog(), 6);
        e.release(&[(1, 2 * USDC)]);
        let mut more = events(&[("u", 1)]);
        assert_eq!(admit(&mut e, &mut more).0, [Some(RefusalKind::FundsAllowance)], "allowance 2 is the limit");
        // The chain charged 2 USDC of this period (the next reading shows the allowance used up and re-approved).
        let reading = WalletFunds { balance: U256::from(8 * USDC), allowance: U256::from(3 * USDC), credit: U256::ZERO, block: 8, read_at_ms: crate::metering::funds::wall_ms() };
        e.set_funds([(WALLET, reading)].into(), &[(1, 0)], &[((1, 0), 2 * USDC)].into());
        let funds = e.check(WALLET, 1_500).funds.unwrap();
        assert_eq!((funds.owed.as_str(), funds.headroom.as_deref()), ("0", Some("3000000")));
        let mut more = events(&[("u", 3)]);
        assert_eq!(admit(&mut e, &mut more).0, [None]);
    }

    #[test]
    fn a_reload_keeps_the_events_recorded_while_it_read() {
        let mut e = view(2, 100 * USDC, 100 * USDC, 0, crate::metering::funds::wall_ms());
        let owed = |e: &Entitlements| e.check(WALLET, 1_500).funds.unwrap().owed;
        // Another process stored 2 units; while the reload reads them, this one records 1 unit of its own.
        let mark = e.begin_reload();
        let targets = e.reload_targets(1_500);
        assert_eq!(targets, [(1, 1_000)]);
        e.record(&accepted(&events(&[("u", 1)])), &catalog(), 6);
        assert_eq!(owed(&e), (USDC).to_string());
        e.apply_reload(&targets, vec![(1, "m".into(), "u".into(), Decimal::from(2), 1_400_000)], mark, &catalog(), 6);
        e.end_reload();
        assert_eq!(owed(&e), (3 * USDC).to_string(), "the read's 2 units and the 1 recorded meanwhile");
        // The next reload, which reads all 3 units, counts each once; nothing is journaled between reloads.
        let mark = e.begin_reload();
        e.apply_reload(&targets, vec![(1, "m".into(), "u".into(), Decimal::from(3), 1_500_000)], mark, &catalog(), 6);
        e.end_reload();
        assert_eq!(owed(&e), (3 * USDC).to_string());
        assert!(e.journal.is_empty());
    }

    #[test]
    fn unknown_funds_refuse_overage_but_never_included_usage() {
        let stale = crate::metering::funds::wall_ms() - 46_000; // more than three 15 s intervals ago
        let mut e = view(1, 100 * USDC, 100 * USDC, 0, stale);
        let mut batch = events(&[("free", 2), ("u", 1), ("free", 1)]);
        let (kinds, _) = admit(&mut e, &mut batch);
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
