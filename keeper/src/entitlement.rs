//! Whether to serve a subscriber, answered from memory: the subscriptions as indexed (refreshed on an interval)
//! and the usage of each one's open period (loaded when the period starts, then added to as events are accepted).
//!
//! Overage headroom is an estimate: the open period's usage is kept per model and meter and priced as if each
//! aggregate happened at its latest event. The exact figure is computed at period close; the on-chain cap bounds
//! the charge either way.

use std::collections::HashMap;

use alloy::primitives::Address;
use rust_decimal::Decimal;
use serde::Serialize;
use sqlx::PgPool;

use crate::{
    KeeperError,
    catalog::Snapshot,
    metering::UsageEvent,
    pricing::{MeteredEvent, PeriodTerms, price_period},
    subscriptions::{Status, Subscription},
};

/// One aggregate of open-period usage: (subscription id, model, meter, quantity, latest event ms).
pub type OpenUsageRow = (i64, String, String, Decimal, i64);

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

#[derive(Debug, Clone, Default)]
struct OpenUsage {
    period_start: i64,
    /// (model, meter) -> (quantity, latest event time in ms).
    usage: HashMap<(String, String), (Decimal, i64)>,
    overage_estimate: u128,
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
    /// Served until (Unix seconds): paid-through plus grace, or paid-through when cancelled.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub serve_until: Option<i64>,
    /// The on-chain overage cap for the period, base units (decimal string).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub overage_cap: Option<String>,
    /// Estimated overage so far in the open period, base units (decimal string).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub overage_used: Option<String>,
}

/// The in-memory view.
#[derive(Debug, Default)]
pub struct Entitlements {
    by_id: HashMap<u64, Subscription>,
    by_subscriber: HashMap<Address, Vec<u64>>,
    open: HashMap<u64, OpenUsage>,
}

impl Entitlements {
    /// Subscriptions whose open period at `now` is not the one whose usage is held: (id, period start).
    pub fn stale(&self, subscriptions: &[Subscription], now: i64) -> Vec<(u64, i64)> {
        subscriptions
            .iter()
            .map(|sub| (sub.id, sub.open_period_start(now)))
            .filter(|(id, start)| self.open.get(id).is_none_or(|o| o.period_start != *start))
            .collect()
    }

    /// Replaces the subscriptions and the open usage of the `stale` ones (read with [`load_open_usage`]).
    pub fn apply(&mut self, subscriptions: Vec<Subscription>, stale: &[(u64, i64)], usage: Vec<OpenUsageRow>, catalog: &Snapshot, decimals: u32) {
        self.by_id.clear();
        self.by_subscriber.clear();
        for sub in subscriptions {
            self.by_subscriber.entry(sub.subscriber).or_default().push(sub.id);
            self.by_id.insert(sub.id, sub);
        }
        for ids in self.by_subscriber.values_mut() {
            ids.sort_unstable();
        }
        for (id, start) in stale {
            self.open.insert(*id, OpenUsage { period_start: *start, ..OpenUsage::default() });
        }
        for (id, model, meter, quantity, latest) in usage {
            if let Some(open) = self.open.get_mut(&(id as u64)) {
                open.usage.insert((model, meter), (quantity, latest));
            }
        }
        for (id, _) in stale {
            self.estimate(*id, catalog, decimals);
        }
    }

    /// Adds events just stored to their subscription's open usage.
    pub fn record(&mut self, events: &[UsageEvent], catalog: &Snapshot, decimals: u32) {
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
        let events: Vec<MeteredEvent> = open
            .usage
            .iter()
            .map(|((model, meter), (quantity, latest))| MeteredEvent {
                event_id: format!("{model}/{meter}"),
                model: model.clone(),
                meter: meter.clone(),
                quantity: *quantity,
                occurred_at_ms: *latest,
                adjustment_of: None,
            })
            .collect();
        let terms = PeriodTerms {
            fee: 0,
            overage_cap: u128::MAX,
            allowance: catalog.allowance(sub.plan_id, open.period_start),
            default_split: Some(0),
            decimals,
        };
        // A catalog that cannot price the usage (it was valid when accepted) leaves the last estimate in place.
        if let Ok(priced) = price_period(&catalog.catalog, &terms, &events) {
            open.overage_estimate = priced.overage_amount;
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
                let reason = self.refusal(sub, now);
                let used = self.open.get(&sub.id).map_or(0, |o| o.overage_estimate);
                let serve_until = if sub.status == Status::Cancelled { sub.paid_through } else { sub.paid_through + sub.grace };
                Entitlement {
                    entitled: reason.is_none(),
                    reason,
                    subscription_id: Some(sub.id),
                    status: Some(sub.status),
                    serve_until: Some(serve_until),
                    overage_cap: Some(sub.overage_cap.to_string()),
                    overage_used: Some(used.to_string()),
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
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::subscriptions::Status;

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
        }
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
