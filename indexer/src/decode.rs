//! Decoding contract logs into typed rows, one table per kind of event (see the schema in `migrations/`).

use alloy::{
    primitives::{Address, B256, Log as PrimitiveLog, U256},
    sol_types::SolEventInterface,
};
use subsettle_abi::{SplitEscrow::SplitEscrowEvents, Subscriptions::SubscriptionsEvents};

use crate::rows::{Kind, LogPosition, Row, Table, Value};

macro_rules! table {
    ($ident:ident, $name:literal, [$(($col:literal, $kind:ident)),* $(,)?]) => {
        /// Typed table `chain.
        #[doc = $name]
        /// `.
        pub static $ident: Table = Table { name: $name, columns: &[$(($col, Kind::$kind)),*] };
    };
}

table!(PLANS, "plans", [("plan_id", Numeric), ("price", Numeric), ("period", Numeric), ("grace_period", Numeric)]);
table!(PLAN_ACTIVE_CHANGES, "plan_active_changes", [("plan_id", Numeric), ("active", Bool)]);
table!(SUBSCRIBED, "subscribed", [
    ("subscription_id", Numeric), ("subscriber", Bytes), ("plan_id", Numeric), ("overage_cap", Numeric),
    ("paid_through", Numeric), ("amount", Numeric), ("from_credit", Numeric),
]);
table!(RENEWALS, "renewals", [
    ("subscription_id", Numeric), ("plan_id", Numeric), ("period_index", Numeric), ("paid_through", Numeric),
    ("amount", Numeric), ("from_credit", Numeric),
]);
table!(RENEWAL_FAILURES, "renewal_failures", [("subscription_id", Numeric), ("period_index", Numeric), ("reason", Text)]);
table!(SUBSCRIPTION_ENDS, "subscription_ends", [("subscription_id", Numeric), ("kind", Text), ("paid_through", Numeric)]);
table!(OVERAGE_CAP_CHANGES, "overage_cap_changes", [("subscription_id", Numeric), ("overage_cap", Numeric), ("from_period", Numeric)]);
table!(PLAN_CHANGE_REQUESTS, "plan_change_requests", [("subscription_id", Numeric), ("new_plan_id", Numeric)]);
table!(USAGE_CHARGES, "usage_charges", [
    ("subscription_id", Numeric), ("period_index", Numeric), ("cumulative_overage", Numeric), ("amount", Numeric),
    ("from_credit", Numeric), ("charged_in_period", Numeric), ("usage_root", Bytes),
]);
table!(USAGE_CHARGE_FAILURES, "usage_charge_failures", [
    ("subscription_id", Numeric), ("period_index", Numeric), ("cumulative_overage", Numeric), ("reason", Text),
    ("usage_root", Bytes),
]);
table!(CREDIT_MOVEMENTS, "credit_movements", [("kind", Text), ("subscriber", Bytes), ("amount", Numeric), ("balance", Numeric)]);
table!(SPLIT_VERSIONS, "split_versions", [
    ("split_id", Numeric), ("version", Numeric), ("effective_at", Numeric), ("recipients", BytesList),
    ("bps", IntList), ("remainder_index", Int),
]);
table!(SPLIT_CHANGE_CANCELLATIONS, "split_change_cancellations", [("split_id", Numeric), ("version", Numeric)]);
table!(SETTLEMENTS, "settlements", [
    ("settlement_id", Numeric), ("epoch_start", Numeric), ("epoch_end", Numeric), ("usage_root", Bytes),
    ("total", Numeric), ("split_count", Numeric),
]);
table!(CREDITS, "credits", [("recipient", Bytes), ("settlement_id", Numeric), ("split_id", Numeric), ("amount", Numeric)]);
table!(CLAIMS, "claims", [("recipient", Bytes), ("payout", Bytes), ("amount", Numeric), ("succeeded", Bool)]);
table!(PAYOUT_ADDRESSES, "payout_addresses", [("recipient", Bytes), ("payout", Bytes)]);
table!(HOLDS, "holds", [("recipient", Bytes), ("kind", Text), ("held_until", Numeric), ("reason_hash", Bytes)]);
table!(REFUNDS, "refunds", [
    ("subscriber", Bytes), ("amount", Numeric), ("to_credit", Bool), ("refund_id", Bytes), ("subscription_id", Numeric),
    ("period_index", Numeric),
]);
table!(SURPLUS_SWEEPS, "surplus_sweeps", [("to_address", Bytes), ("amount", Numeric)]);
table!(ADMIN_EVENTS, "admin_events", [("contract", Text), ("kind", Text), ("account", Bytes), ("flag", Bool)]);

/// Every typed table, for rollbacks.
pub static TYPED_TABLES: [&Table; 21] = [
    &PLANS, &PLAN_ACTIVE_CHANGES, &SUBSCRIBED, &RENEWALS, &RENEWAL_FAILURES, &SUBSCRIPTION_ENDS,
    &OVERAGE_CAP_CHANGES, &PLAN_CHANGE_REQUESTS, &USAGE_CHARGES, &USAGE_CHARGE_FAILURES, &CREDIT_MOVEMENTS,
    &SPLIT_VERSIONS, &SPLIT_CHANGE_CANCELLATIONS, &SETTLEMENTS, &CREDITS, &CLAIMS, &PAYOUT_ADDRESSES, &HOLDS,
    &REFUNDS, &SURPLUS_SWEEPS, &ADMIN_EVENTS,
];

/// Which contract emitted a log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The Subscriptions contract.
    Subscriptions,
    /// The SplitEscrow contract.
    Escrow,
}

/// A log the contracts' ABI cannot explain: the node returned something our contracts never emit.
#[derive(Debug, thiserror::Error)]
#[error("log {log_index} of block {block_number} from {contract:?} does not decode: {reason}")]
pub struct DecodeError {
    /// Block of the log.
    pub block_number: i64,
    /// Index of the log.
    pub log_index: i32,
    /// The emitting contract.
    pub contract: Source,
    /// What did not match.
    pub reason: String,
}

fn num(v: U256) -> Value {
    Value::Numeric(v.to_string())
}

fn addr(a: Address) -> Value {
    Value::Bytes(a.to_vec())
}

fn hash(h: B256) -> Value {
    Value::Bytes(h.to_vec())
}

fn text(s: &str) -> Value {
    Value::Text(s.to_owned())
}

/// The failure reason of `ISubscriptions.FailureReason` value `code`, by name.
fn failure_reason(code: u8) -> Value {
    text(subsettle_abi::failure_reason(code))
}

/// Decodes one log of `source` into its typed row.
pub fn decode(source: Source, position: LogPosition, log: &PrimitiveLog) -> Result<Row, DecodeError> {
    let fail = |reason: String| DecodeError {
        block_number: position.block_number,
        log_index: position.log_index,
        contract: source,
        reason,
    };
    let (table, values): (&'static Table, Vec<Value>) = match source {
        Source::Subscriptions => {
            let event = SubscriptionsEvents::decode_raw_log(log.topics(), &log.data.data)
                .map_err(|e| fail(e.to_string()))?;
            subscriptions_row(event)
        }
        Source::Escrow => {
            let event = SplitEscrowEvents::decode_raw_log(log.topics(), &log.data.data)
                .map_err(|e| fail(e.to_string()))?;
            escrow_row(event).map_err(fail)?
        }
    };
    Ok(Row { table, position, values })
}

fn subscriptions_row(event: SubscriptionsEvents) -> (&'static Table, Vec<Value>) {
    use SubscriptionsEvents as E;
    let admin = |kind: &str, account: Option<Address>, flag: Option<bool>| {
        (&ADMIN_EVENTS, vec![
            text("subscriptions"),
            text(kind),
            account.map_or(Value::Null, addr),
            flag.map_or(Value::Null, Value::Bool),
        ])
    };
    match event {
        E::PlanCreated(e) => (&PLANS, vec![num(e.planId), num(e.price), num(e.period), num(e.gracePeriod)]),
        E::PlanActiveSet(e) => (&PLAN_ACTIVE_CHANGES, vec![num(e.planId), Value::Bool(e.active)]),
        E::Subscribed(e) => (&SUBSCRIBED, vec![
            num(e.id), addr(e.subscriber), num(e.planId), num(e.overageCap), num(e.paidThrough), num(e.amount),
            num(e.fromCredit),
        ]),
        E::Renewed(e) => (&RENEWALS, vec![
            num(e.id), num(e.planId), num(e.periodIndex), num(e.paidThrough), num(e.amount), num(e.fromCredit),
        ]),
        E::RenewalFailed(e) => (&RENEWAL_FAILURES, vec![num(e.id), num(e.periodIndex), failure_reason(e.reason)]),
        E::Lapsed(e) => (&SUBSCRIPTION_ENDS, vec![num(e.id), text("lapsed"), num(e.paidThrough)]),
        E::Cancelled(e) => (&SUBSCRIPTION_ENDS, vec![num(e.id), text("cancelled"), num(e.paidThrough)]),
        E::OverageCapSet(e) => (&OVERAGE_CAP_CHANGES, vec![num(e.id), num(e.overageCap), num(e.fromPeriod)]),
        E::PlanChangeScheduled(e) => (&PLAN_CHANGE_REQUESTS, vec![num(e.id), num(e.newPlanId)]),
        E::UsageCharged(e) => (&USAGE_CHARGES, vec![
            num(e.id), num(e.periodIndex), num(e.cumulativeOverage), num(e.amount), num(e.fromCredit),
            num(e.chargedInPeriod), hash(e.usageRoot),
        ]),
        E::UsageChargeFailed(e) => (&USAGE_CHARGE_FAILURES, vec![
            num(e.id), num(e.periodIndex), num(e.cumulativeOverage), failure_reason(e.reason), hash(e.usageRoot),
        ]),
        E::CreditDeposited(e) => (&CREDIT_MOVEMENTS, vec![text("deposit"), addr(e.subscriber), num(e.amount), num(e.balance)]),
        E::CreditWithdrawn(e) => (&CREDIT_MOVEMENTS, vec![text("withdrawal"), addr(e.subscriber), num(e.amount), num(e.balance)]),
        E::CreditRefunded(e) => (&CREDIT_MOVEMENTS, vec![text("refund"), addr(e.subscriber), num(e.amount), num(e.balance)]),
        E::CreditTransferDeferred(e) => (&CREDIT_MOVEMENTS, vec![text("deferred"), Value::Null, num(e.owed), num(e.owed)]),
        E::CreditFlushed(e) => (&CREDIT_MOVEMENTS, vec![text("flushed"), Value::Null, num(e.amount), Value::Null]),
        E::KeeperSet(e) => admin("keeper_set", Some(e.keeper), None),
        E::ChargingPausedSet(e) => admin("charging_paused_set", None, Some(e.paused)),
        E::OwnershipTransferStarted(e) => admin("ownership_transfer_started", Some(e.newOwner), None),
        E::OwnershipTransferred(e) => admin("ownership_transferred", Some(e.newOwner), None),
    }
}

fn escrow_row(event: SplitEscrowEvents) -> Result<(&'static Table, Vec<Value>), String> {
    use SplitEscrowEvents as E;
    let admin = |kind: &str, account: Address| {
        (&ADMIN_EVENTS, vec![text("escrow"), text(kind), addr(account), Value::Null])
    };
    Ok(match event {
        E::SplitVersionAdded(e) => {
            // The contract keeps bps to 10,000 in all and the remainder index below the recipient count: anything
            // else is not a log of ours.
            let bps = e
                .bps
                .iter()
                .map(|b| i32::try_from(*b).ok().filter(|b| *b <= 10_000).ok_or_else(|| format!("bps {b} above 10000")))
                .collect::<Result<Vec<i32>, String>>()?;
            let remainder = i32::try_from(e.remainderIndex)
                .ok()
                .filter(|i| (*i as usize) < e.recipients.len())
                .ok_or_else(|| format!("remainder index {} outside {} recipients", e.remainderIndex, e.recipients.len()))?;
            (&SPLIT_VERSIONS, vec![
                num(e.splitId),
                num(e.version),
                num(e.effectiveAt),
                Value::BytesList(e.recipients.iter().map(|r| r.to_vec()).collect()),
                Value::IntList(bps),
                Value::Int(remainder),
            ])
        }
        E::SplitChangeCancelled(e) => (&SPLIT_CHANGE_CANCELLATIONS, vec![num(e.splitId), num(e.version)]),
        E::Settled(e) => (&SETTLEMENTS, vec![
            num(e.settlementId), num(e.epochStart), num(e.epochEnd), hash(e.usageRoot), num(e.total), num(e.splitCount),
        ]),
        E::Credited(e) => (&CREDITS, vec![addr(e.recipient), num(e.settlementId), num(e.splitId), num(e.amount)]),
        E::Claimed(e) => (&CLAIMS, vec![addr(e.recipient), addr(e.payout), num(e.amount), Value::Bool(true)]),
        E::ClaimFailed(e) => (&CLAIMS, vec![addr(e.recipient), addr(e.payout), num(e.amount), Value::Bool(false)]),
        E::PayoutAddressSet(e) => (&PAYOUT_ADDRESSES, vec![addr(e.recipient), addr(e.payout)]),
        E::HoldPlaced(e) => (&HOLDS, vec![addr(e.recipient), text("placed"), num(e.until), hash(e.reasonHash)]),
        E::HoldReleased(e) => (&HOLDS, vec![addr(e.recipient), text("released"), Value::Null, Value::Null]),
        E::Refunded(e) => (&REFUNDS, vec![
            addr(e.subscriber), num(e.amount), Value::Bool(e.toCredit), hash(e.refundId), num(e.subscriptionId), num(e.periodIndex),
        ]),
        E::SurplusSwept(e) => (&SURPLUS_SWEEPS, vec![addr(e.to), num(e.amount)]),
        E::SubscriptionsSet(e) => admin("subscriptions_set", e.subscriptions),
        E::KeeperSet(e) => admin("keeper_set", e.keeper),
        E::OwnershipTransferStarted(e) => admin("ownership_transfer_started", e.newOwner),
        E::OwnershipTransferred(e) => admin("ownership_transferred", e.newOwner),
    })
}
