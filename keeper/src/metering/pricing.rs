//! Pricing a period: each event at the price in force when it happened, included usage taken first in the order
//! the events happened, the rest as overage; events aggregated into lines; the collected amount (plan fee plus
//! capped overage) divided over the lines by their metered value. Pure: the same events give the same result
//! whatever order or batches they arrived in.

use std::collections::{BTreeMap, HashMap};

use rust_decimal::Decimal;

use crate::money::{self, MoneyError};

/// Why a period could not be priced.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PricingError {
    /// No price for the model and meter at the event's time.
    #[error("no price for model `{model}` meter `{meter}` at {at} (Unix seconds)")]
    NoPrice {
        /// Model id.
        model: String,
        /// Meter name.
        meter: String,
        /// The event's time.
        at: i64,
    },
    /// No split earns from the model at the event's time.
    #[error("model `{model}` has no split at {at} (Unix seconds)")]
    NoSplit {
        /// Model id.
        model: String,
        /// The event's time.
        at: i64,
    },
    /// A period without metered value needs a default split for its fee.
    #[error("the period has no metered usage and no default split is configured for its fee")]
    NoDefaultSplit,
    /// A value exceeded the exact arithmetic.
    #[error("arithmetic overflow while pricing {0}")]
    Overflow(&'static str),
    /// Converting to base units failed.
    #[error(transparent)]
    Money(#[from] MoneyError),
}

/// A price: `unit_price` token units for every `per_units` of the meter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Price {
    /// When it takes effect (Unix seconds).
    pub effective_at: i64,
    /// Token units per `per_units`.
    pub unit_price: Decimal,
    /// How many units the price is for (e.g. 1000 tokens).
    pub per_units: Decimal,
}

/// Something that changes over time: the entry in force at `t` is the last one with `effective_at <= t`.
#[derive(Debug, Clone)]
pub struct Timeline<T>(Vec<(i64, T)>);

impl<T> Default for Timeline<T> {
    fn default() -> Self {
        Self(Vec::new())
    }
}

impl<T: Clone> Timeline<T> {
    /// Adds an entry (any order).
    pub fn insert(&mut self, effective_at: i64, value: T) {
        let at = self.0.partition_point(|(t, _)| *t < effective_at);
        if self.0.get(at).is_some_and(|(t, _)| *t == effective_at) {
            self.0[at].1 = value;
        } else {
            self.0.insert(at, (effective_at, value));
        }
    }

    /// The entry in force at `t`.
    pub fn at(&self, t: i64) -> Option<&T> {
        let after = self.0.partition_point(|(e, _)| *e <= t);
        after.checked_sub(1).map(|i| &self.0[i].1)
    }
}

/// The versioned price book and the model → split history.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    /// Price timeline per (model, meter).
    pub prices: HashMap<(String, String), Timeline<Price>>,
    /// Split timeline per model.
    pub splits: HashMap<String, Timeline<u64>>,
}

impl Catalog {
    /// The price of `model`/`meter` in force at `at` (Unix seconds).
    pub fn price_at(&self, model: &str, meter: &str, at: i64) -> Result<Price, PricingError> {
        self.prices
            .get(&(model.to_owned(), meter.to_owned()))
            .and_then(|t| t.at(at))
            .copied()
            .ok_or_else(|| PricingError::NoPrice { model: model.into(), meter: meter.into(), at })
    }

    /// The split earning from `model` at `at`.
    pub fn split_at(&self, model: &str, at: i64) -> Result<u64, PricingError> {
        self.splits
            .get(model)
            .and_then(|t| t.at(at))
            .copied()
            .ok_or_else(|| PricingError::NoSplit { model: model.into(), at })
    }
}

/// Usage included in a plan's fee for one period.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Allowance {
    /// Units per meter, across models.
    pub units: BTreeMap<String, Decimal>,
    /// A value in token units, taken after the unit allowances.
    pub value: Decimal,
}

/// One metered event as the pricing needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeteredEvent {
    /// The idempotency key (orders events that happened in the same millisecond).
    pub event_id: String,
    /// Model id.
    pub model: String,
    /// Meter name.
    pub meter: String,
    /// Quantity in the meter's units.
    pub quantity: Decimal,
    /// When it happened, Unix milliseconds.
    pub occurred_at_ms: i64,
    /// The period it belonged to when it arrived after that period closed.
    pub adjustment_of: Option<u64>,
}

/// What is needed to price one (subscription, period).
#[derive(Debug, Clone)]
pub struct PeriodTerms {
    /// The plan fee collected on chain for the period, base units.
    pub fee: u128,
    /// The subscriber's overage cap, base units.
    pub overage_cap: u128,
    /// Included usage.
    pub allowance: Allowance,
    /// Where the fee goes when there is no metered value.
    pub default_split: Option<u64>,
    /// Token decimals.
    pub decimals: u32,
}

/// The key that aggregates events into a line; lines are numbered in this order.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LineKey {
    /// The period the events belonged to, for late events (`None` sorts first: the period's own usage).
    pub adjustment_of: Option<u64>,
    /// Model id (empty for the fee-only line of a period without usage).
    pub model: String,
    /// Meter name.
    pub meter: String,
    /// The price version (its effective time).
    pub price_effective_at: i64,
    /// The split earning from the model at the events' time.
    pub split_id: u64,
}

/// A priced usage line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    /// What the line aggregates.
    pub key: LineKey,
    /// The price applied.
    pub unit_price: Decimal,
    /// The units the price is for.
    pub per_units: Decimal,
    /// Events in the line.
    pub event_count: u32,
    /// Total quantity.
    pub quantity: Decimal,
    /// Quantity covered by a unit allowance.
    pub included_quantity: Decimal,
    /// Value at list price, token units.
    pub value: Decimal,
    /// Value covered by the allowance (units or value).
    pub included_value: Decimal,
    /// Overage of this line in base units (rule 2 of [`crate::money`]).
    pub overage_amount: u128,
    /// This line's share of what was collected, base units (rule 3).
    pub attributed: u128,
}

/// The priced period.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PricedPeriod {
    /// Lines in `LineKey` order.
    pub lines: Vec<Line>,
    /// Total value at list price.
    pub metered_value: Decimal,
    /// Value covered by the allowance.
    pub included_value: Decimal,
    /// Sum of the lines' overage, before the cap.
    pub overage_amount: u128,
    /// `min(overage_amount, cap)`: the cumulative overage charge to post.
    pub overage_charge: u128,
    /// `fee + overage_charge`, divided over the lines.
    pub collected: u128,
}

/// Prices one period. Events must all belong to it (or be its adjustments).
pub fn price_period(catalog: &Catalog, terms: &PeriodTerms, events: &[MeteredEvent]) -> Result<PricedPeriod, PricingError> {
    let mut ordered: Vec<&MeteredEvent> = events.iter().collect();
    ordered.sort_by(|a, b| a.occurred_at_ms.cmp(&b.occurred_at_ms).then_with(|| a.event_id.cmp(&b.event_id)));

    let mut units_left = terms.allowance.units.clone();
    let mut value_left = terms.allowance.value;
    let mut lines: BTreeMap<LineKey, Line> = BTreeMap::new();
    for event in ordered {
        let at = event.occurred_at_ms.div_euclid(1000);
        let price = catalog.price_at(&event.model, &event.meter, at)?;
        let split_id = catalog.split_at(&event.model, at)?;

        let included_quantity = take(units_left.get_mut(&event.meter), event.quantity);
        let value = value_of(event.quantity, &price)?;
        let over_quantity_value = value_of(event.quantity - included_quantity, &price)?;
        let included_by_value = take(Some(&mut value_left), over_quantity_value);
        let included_value = value - over_quantity_value + included_by_value;

        let key = LineKey {
            adjustment_of: event.adjustment_of,
            model: event.model.clone(),
            meter: event.meter.clone(),
            price_effective_at: price.effective_at,
            split_id,
        };
        let line = lines.entry(key.clone()).or_insert_with(|| Line::empty(key, &price));
        line.event_count += 1;
        line.quantity = add(line.quantity, event.quantity)?;
        line.included_quantity = add(line.included_quantity, included_quantity)?;
        line.value = add(line.value, value)?;
        line.included_value = add(line.included_value, included_value)?;
    }

    let mut lines: Vec<Line> = lines.into_values().collect();
    let mut overage_amount = 0u128;
    for line in &mut lines {
        line.overage_amount = money::to_base_units(line.value - line.included_value, terms.decimals)?;
        overage_amount = overage_amount.checked_add(line.overage_amount).ok_or(PricingError::Overflow("overage"))?;
    }
    let overage_charge = overage_amount.min(terms.overage_cap);
    let collected = terms.fee.checked_add(overage_charge).ok_or(PricingError::Overflow("collected"))?;
    let metered_value = sum(lines.iter().map(|l| l.value))?;
    let included_value = sum(lines.iter().map(|l| l.included_value))?;

    let weights: Vec<Decimal> = lines.iter().map(|l| l.value).collect();
    match money::divide_by_weight(collected, &weights)? {
        Some(parts) => lines.iter_mut().zip(parts).for_each(|(line, part)| line.attributed = part),
        None => {
            // Nothing metered has value: the fee (all that was collected) goes to the default split on a line of
            // its own, so that every unit collected is on a committed line.
            let split_id = terms.default_split.ok_or(PricingError::NoDefaultSplit)?;
            lines.push(Line::fee_only(split_id, collected));
        }
    }
    Ok(PricedPeriod { lines, metered_value, included_value, overage_amount, overage_charge, collected })
}

impl Line {
    fn empty(key: LineKey, price: &Price) -> Self {
        Self {
            key,
            unit_price: price.unit_price,
            per_units: price.per_units,
            event_count: 0,
            quantity: Decimal::ZERO,
            included_quantity: Decimal::ZERO,
            value: Decimal::ZERO,
            included_value: Decimal::ZERO,
            overage_amount: 0,
            attributed: 0,
        }
    }

    fn fee_only(split_id: u64, attributed: u128) -> Self {
        let key = LineKey { adjustment_of: None, model: String::new(), meter: String::new(), price_effective_at: 0, split_id };
        Self { attributed, ..Self::empty(key, &Price { effective_at: 0, unit_price: Decimal::ZERO, per_units: Decimal::ONE }) }
    }
}

/// `quantity` at `price`, in token units.
pub fn value_of(quantity: Decimal, price: &Price) -> Result<Decimal, PricingError> {
    quantity
        .checked_mul(price.unit_price)
        .and_then(|v| v.checked_div(price.per_units))
        .map(|v| v.normalize())
        .ok_or(PricingError::Overflow("value"))
}

/// Takes up to `wanted` from `left`, returning what was taken.
fn take(left: Option<&mut Decimal>, wanted: Decimal) -> Decimal {
    match left {
        Some(left) => {
            let taken = wanted.min(*left);
            *left -= taken;
            taken
        }
        None => Decimal::ZERO,
    }
}

fn add(a: Decimal, b: Decimal) -> Result<Decimal, PricingError> {
    a.checked_add(b).ok_or(PricingError::Overflow("sum"))
}

fn sum(values: impl Iterator<Item = Decimal>) -> Result<Decimal, PricingError> {
    values.into_iter().try_fold(Decimal::ZERO, add)
}
