//! A usage event as the keeper holds it once validated, and what happened to each event of a batch. Shared by
//! ingest (which makes them) and entitlement (which judges them), so neither needs the other's internals.

use alloy::primitives::B256;
use rust_decimal::Decimal;
use serde::Serialize;
use serde_json::Value;


/// A validated event, ready to store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageEvent {
    /// Idempotency key.
    pub event_id: String,
    /// The subscription it is billed to.
    pub subscription_id: u64,
    /// Model id.
    pub model: String,
    /// Meter.
    pub meter: String,
    /// Quantity, normalized.
    pub quantity: Decimal,
    /// When it happened, Unix milliseconds.
    pub occurred_at_ms: i64,
    /// Free-form properties (a JSON object), if any.
    pub properties: Option<Value>,
    /// Hash of all of the above: equal for a resend, different for a conflict.
    pub payload_hash: B256,
    /// Why the subscriber is not to be served now: the event is not stored (unless it already was).
    pub refused: Option<String>,
}

/// What happened to one event of a batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Outcome {
    /// Stored now.
    Accepted {
        /// The event's id.
        event_id: String,
    },
    /// Stored before with the same payload: nothing changed.
    Duplicate {
        /// The event's id.
        event_id: String,
    },
    /// Stored before with a different payload: the stored one stands.
    Conflict {
        /// The event's id.
        event_id: String,
        /// Why.
        reason: String,
    },
    /// Invalid: nothing stored.
    Rejected {
        /// The event's id, when it could be read.
        #[serde(skip_serializing_if = "Option::is_none")]
        event_id: Option<String>,
        /// The field at fault.
        field: String,
        /// Why.
        reason: String,
    },
    /// The subscriber is not entitled to be served: nothing stored.
    PaymentRequired {
        /// The event's id.
        event_id: String,
        /// Why.
        reason: String,
    },
}

impl Outcome {
    pub(crate) fn rejected(event_id: Option<&str>, field: &str, reason: impl Into<String>) -> Self {
        Self::Rejected { event_id: event_id.map(str::to_owned), field: field.to_owned(), reason: reason.into() }
    }
}

/// A batch's outcomes in input order, with counts.
#[derive(Debug, Clone, Default, Serialize)]
pub struct BatchReport {
    /// Events stored now.
    pub accepted: usize,
    /// Resends.
    pub duplicates: usize,
    /// Same id, different payload.
    pub conflicts: usize,
    /// Invalid events.
    pub rejected: usize,
    /// Events of subscribers who are not entitled.
    pub payment_required: usize,
    /// One outcome per input event, in order.
    pub results: Vec<Outcome>,
}

impl BatchReport {
    pub(crate) fn from_outcomes(results: Vec<Outcome>) -> Self {
        let mut report = Self::default();
        for outcome in &results {
            match outcome {
                Outcome::Accepted { .. } => report.accepted += 1,
                Outcome::Duplicate { .. } => report.duplicates += 1,
                Outcome::Conflict { .. } => report.conflicts += 1,
                Outcome::Rejected { .. } => report.rejected += 1,
                Outcome::PaymentRequired { .. } => report.payment_required += 1,
            }
        }
        report.results = results;
        report
    }
}
