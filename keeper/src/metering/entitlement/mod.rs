//! Whether to serve a subscriber, and which usage to admit.
//!
//! - [`view`]: the in-memory view `serve` answers from: the subscriptions as indexed (refreshed on an interval),
//!   the usage of each one's open period and the wallets' funds readings ([`crate::metering::funds`]).
//! - [`admission`]: the rules that admit usage adding overage (the period's overage cap, the wallet's funds), judged
//!   event by event in batch order.
//! - [`ledger`]: the same rules judged for good in Postgres, in the transaction that stores the events, on each
//!   open period's usage so far held under a row lock: concurrent batches and `serve` replicas sharing one
//!   database admit usage as one. The view is the fast first filter, brought up to date by every decision.
//!
//! Overage headroom is an estimate: the open period's usage is kept per model and meter and priced as if each
//! aggregate happened at its latest event. The exact figure is computed at period close; the on-chain cap bounds
//! the charge either way.

use std::collections::HashMap;

use rust_decimal::Decimal;
use serde::Serialize;

use crate::metering::{
    catalog::Snapshot,
    event::UsageEvent,
    funds::FundsAnswer,
    pricing::{MeteredEvent, PeriodTerms, price_period},
    subscriptions::Status,
};

pub mod admission;
pub mod ledger;
pub mod view;

pub use ledger::{Admission, LedgerPeriod, OpenUsageRead, load_open_usage};
pub use view::Entitlements;

/// One aggregate of open-period usage summed from the events: (subscription id, model, meter, quantity, latest
/// event ms).
pub type OpenUsageRow = (i64, String, String, Decimal, i64);

/// Usage per (model, meter): quantity and the latest event time in ms.
pub type Aggregates = HashMap<(String, String), (Decimal, i64)>;

/// Adds `event` to `usage`.
pub(crate) fn add(usage: &mut Aggregates, event: &UsageEvent) {
    let entry = usage.entry((event.model.clone(), event.meter.clone())).or_insert((Decimal::ZERO, 0));
    entry.0 = entry.0.saturating_add(event.quantity);
    entry.1 = entry.1.max(event.occurred_at_ms);
}

/// The estimated overage of usage aggregates (merged) in a period of `plan` starting at `period_start`; `None`
/// when the catalog cannot price it.
pub(crate) fn price_overage<'a>(
    plan: u64,
    period_start: i64,
    parts: impl IntoIterator<Item = &'a Aggregates>,
    catalog: &Snapshot,
    decimals: u32,
) -> Option<u128> {
    let mut merged: HashMap<&(String, String), (Decimal, i64)> = HashMap::new();
    for part in parts {
        for (key, (quantity, latest)) in part {
            let entry = merged.entry(key).or_insert((Decimal::ZERO, 0));
            entry.0 = entry.0.saturating_add(*quantity);
            entry.1 = entry.1.max(*latest);
        }
    }
    if merged.is_empty() {
        return Some(0);
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
