//! The operator's owner actions on the contracts, sent through the outbox like every other transaction (so the
//! engine's nonces stay consistent): each is validated here first, then pre-checked by the node (a revert is
//! reported with the contract's error name), sent, and its receipt's events are what the command prints.

use std::time::{Duration, Instant};

use alloy::{
    primitives::{Address, B256, U256, keccak256},
    providers::Provider,
    rpc::types::Log,
    sol_types::{SolCall, SolEventInterface},
};
use serde_json::json;
use sqlx::PgPool;
use subsettle_abi::{Deployment, SplitEscrow, Subscriptions};

use crate::{
    KeeperError,
    settlement::outbox::{self, Action, OutboxReport, Sender},
};

/// An owner action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminAction {
    /// A plan: price per period (base units), period and grace in seconds.
    CreatePlan {
        /// Price per period.
        price: u128,
        /// Period length.
        period: u64,
        /// Grace period.
        grace: u64,
    },
    /// Opens or closes a plan to new subscribers.
    SetPlanActive {
        /// Plan id.
        plan: u64,
        /// Open or closed.
        active: bool,
    },
    /// A new split.
    CreateSplit {
        /// Recipients.
        recipients: Vec<Address>,
        /// Their bps, summing to 10,000.
        bps: Vec<u16>,
        /// Who receives the rounding remainder.
        remainder_index: u64,
    },
    /// A change of a split, effective after the deployment's delay.
    ProposeSplitChange {
        /// Split id.
        split: u64,
        /// Recipients.
        recipients: Vec<Address>,
        /// Their bps.
        bps: Vec<u16>,
        /// Remainder recipient.
        remainder_index: u64,
    },
    /// Withdraws a pending split change.
    CancelSplitChange {
        /// Split id.
        split: u64,
    },
    /// Holds a recipient's claims until a time (at most the deployment's maximum).
    Hold {
        /// Recipient.
        recipient: Address,
        /// Until (Unix seconds).
        until: u64,
        /// The dispute's reference (its keccak256 goes on chain).
        reason: String,
    },
    /// Ends a hold.
    Release {
        /// Recipient.
        recipient: Address,
    },
    /// Refunds what the subscriber of a subscription paid for one period, from unallocated revenue.
    Refund {
        /// Subscription id.
        subscription: u64,
        /// Period index.
        period: u64,
        /// Amount, base units.
        amount: u128,
        /// As prepaid credit instead of to the wallet.
        to_credit: bool,
        /// The refund's reference (its keccak256 is the on-chain refund id, so it applies once).
        reference: String,
    },
    /// Stops pulls and usage charges.
    Pause,
    /// Resumes them.
    Unpause,
    /// Rotates the keeper address on both contracts.
    SetKeeper {
        /// The new keeper.
        keeper: Address,
    },
}

fn invalid(field: &str, reason: impl Into<String>) -> KeeperError {
    KeeperError::Invalid { field: field.to_owned(), reason: reason.into() }
}

fn check_split(recipients: &[Address], bps: &[u16], remainder_index: u64) -> Result<(), KeeperError> {
    if recipients.is_empty() {
        return Err(invalid("recipients", "a split needs at least one recipient"));
    }
    if recipients.len() != bps.len() {
        return Err(invalid("bps", format!("{} values for {} recipients", bps.len(), recipients.len())));
    }
    if let Some(zero) = recipients.iter().position(|r| r.is_zero()) {
        return Err(invalid("recipients", format!("recipient {zero} is the zero address")));
    }
    for (i, r) in recipients.iter().enumerate() {
        if recipients[..i].contains(r) {
            return Err(invalid("recipients", format!("{r} appears twice")));
        }
    }
    let total: u32 = bps.iter().map(|b| u32::from(*b)).sum();
    if total != 10_000 {
        return Err(invalid("bps", format!("they sum to {total}, not 10000")));
    }
    if remainder_index as usize >= recipients.len() {
        return Err(invalid("remainder_index", format!("{remainder_index} is not one of the {} recipients", recipients.len())));
    }
    Ok(())
}

impl AdminAction {
    /// Checks what the contracts would refuse, with the field named.
    pub fn validate(&self) -> Result<(), KeeperError> {
        match self {
            Self::CreatePlan { period, grace, price } => {
                if *period < 3_600 {
                    return Err(invalid("period", format!("{period} s; at least one hour")));
                }
                if *grace == 0 || grace >= period {
                    return Err(invalid("grace", format!("{grace} s; more than 0 and less than the period ({period} s)")));
                }
                if *price > u128::from(u64::MAX) {
                    return Err(invalid("price", format!("{price} base units is above the contract's limit")));
                }
                Ok(())
            }
            Self::CreateSplit { recipients, bps, remainder_index } | Self::ProposeSplitChange { recipients, bps, remainder_index, .. } => {
                check_split(recipients, bps, *remainder_index)
            }
            Self::Hold { recipient, reason, .. } => {
                if recipient.is_zero() {
                    return Err(invalid("recipient", "the zero address"));
                }
                if reason.trim().is_empty() {
                    return Err(invalid("reason", "give the dispute's reference"));
                }
                Ok(())
            }
            Self::Refund { amount, reference, subscription, .. } => {
                if *amount == 0 {
                    return Err(invalid("amount", "must be more than 0"));
                }
                if *subscription == 0 {
                    return Err(invalid("subscription", "subscription ids start at 1"));
                }
                if reference.trim().is_empty() {
                    return Err(invalid("reference", "give the refund's reference (it makes the refund apply once)"));
                }
                Ok(())
            }
            Self::SetKeeper { keeper } if keeper.is_zero() => Err(invalid("keeper", "the zero address")),
            _ => Ok(()),
        }
    }

    /// The outbox actions (one per contract call) under keys unique to this request.
    pub fn actions(&self, deployment: &Deployment, request_id: &str) -> Vec<Action> {
        let subs = deployment.subscriptions;
        let escrow = deployment.escrow;
        let call = |name: &str, target: Address, calldata: Vec<u8>, items: serde_json::Value| Action {
            key: format!("admin:{name}:{request_id}"),
            kind: "admin",
            target,
            calldata: calldata.into(),
            items,
        };
        let u = U256::from;
        match self {
            Self::CreatePlan { price, period, grace } => vec![call(
                "create-plan",
                subs,
                Subscriptions::createPlanCall { price: U256::from(*price), period: u(*period), gracePeriod: u(*grace) }.abi_encode(),
                json!({ "price": price.to_string(), "period": period, "grace": grace }),
            )],
            Self::SetPlanActive { plan, active } => vec![call(
                "set-plan-active",
                subs,
                Subscriptions::setPlanActiveCall { planId: u(*plan), active: *active }.abi_encode(),
                json!({ "plan": plan, "active": active }),
            )],
            Self::CreateSplit { recipients, bps, remainder_index } => vec![call(
                "create-split",
                escrow,
                SplitEscrow::createSplitCall { recipients: recipients.clone(), bps: bps.clone(), remainderIndex: u(*remainder_index) }.abi_encode(),
                json!({ "recipients": recipients, "bps": bps, "remainder_index": remainder_index }),
            )],
            Self::ProposeSplitChange { split, recipients, bps, remainder_index } => vec![call(
                "propose-split-change",
                escrow,
                SplitEscrow::proposeSplitChangeCall {
                    splitId: u(*split),
                    recipients: recipients.clone(),
                    bps: bps.clone(),
                    remainderIndex: u(*remainder_index),
                }
                .abi_encode(),
                json!({ "split": split, "recipients": recipients, "bps": bps }),
            )],
            Self::CancelSplitChange { split } => vec![call(
                "cancel-split-change",
                escrow,
                SplitEscrow::cancelSplitChangeCall { splitId: u(*split) }.abi_encode(),
                json!({ "split": split }),
            )],
            Self::Hold { recipient, until, reason } => vec![call(
                "hold",
                escrow,
                SplitEscrow::holdCall { recipient: *recipient, until: u(*until), reasonHash: keccak256(reason.as_bytes()) }.abi_encode(),
                json!({ "recipient": recipient, "until": until }),
            )],
            Self::Release { recipient } => {
                vec![call("release", escrow, SplitEscrow::releaseCall { recipient: *recipient }.abi_encode(), json!({ "recipient": recipient }))]
            }
            Self::Refund { subscription, period, amount, to_credit, reference } => vec![call(
                "refund",
                escrow,
                SplitEscrow::refundCall {
                    subscriptionId: u(*subscription),
                    periodIndex: u(*period),
                    amount: U256::from(*amount),
                    toCredit: *to_credit,
                    refundId: keccak256(reference.as_bytes()),
                }
                .abi_encode(),
                json!({ "subscription": subscription, "period": period, "amount": amount.to_string(), "to_credit": to_credit }),
            )],
            Self::Pause => vec![call("pause", subs, Subscriptions::pauseCall {}.abi_encode(), json!([]))],
            Self::Unpause => vec![call("unpause", subs, Subscriptions::unpauseCall {}.abi_encode(), json!([]))],
            Self::SetKeeper { keeper } => vec![
                call("set-keeper-subscriptions", subs, Subscriptions::setKeeperCall { keeper_: *keeper }.abi_encode(), json!({ "keeper": keeper })),
                call("set-keeper-escrow", escrow, SplitEscrow::setKeeperCall { keeper_: *keeper }.abi_encode(), json!({ "keeper": keeper })),
            ],
        }
    }
}

/// The outcome of one admin transaction.
#[derive(Debug, Clone, serde::Serialize)]
pub struct AdminOutcome {
    /// The outbox key.
    pub action: String,
    /// `confirmed` or `failed`.
    pub state: String,
    /// The transaction, when one was sent.
    pub tx_hash: Option<B256>,
    /// Why it failed.
    pub failure: Option<String>,
    /// The events it emitted: the resulting state.
    pub events: Vec<String>,
}

/// Validates, sends through the outbox and waits (up to `timeout`) for every transaction of `action`.
pub async fn execute(
    pool: &PgPool,
    sender: &Sender,
    deployment: &Deployment,
    action: &AdminAction,
    request_id: &str,
    timeout: Duration,
) -> Result<Vec<AdminOutcome>, KeeperError> {
    action.validate()?;
    let actions = action.actions(deployment, request_id);
    outbox::plan(pool, &actions).await?;
    let mut report = OutboxReport::default();
    sender.send_planned(pool, &mut report).await?;
    let started = Instant::now();
    loop {
        sender.reconcile(pool, &mut report).await?;
        let keys: Vec<String> = actions.iter().map(|a| a.key.clone()).collect();
        let open: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM keeper.outbox WHERE action_key = ANY($1) AND state IN ('planned', 'sent')")
            .bind(&keys)
            .fetch_one(pool)
            .await?;
        if open == 0 {
            break;
        }
        if started.elapsed() > timeout {
            return Err(KeeperError::Chain { action: "admin", message: format!("not mined within {timeout:?}; see `status`") });
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut outcomes = Vec::new();
    for action in &actions {
        let (state, hashes, failure): (String, Vec<Vec<u8>>, Option<String>) =
            sqlx::query_as("SELECT state, tx_hashes, failure FROM keeper.outbox WHERE action_key = $1")
                .bind(&action.key)
                .fetch_one(pool)
                .await?;
        let mut tx_hash = None;
        let mut events = Vec::new();
        for hash in hashes.iter().rev() {
            let hash = B256::from_slice(hash);
            if let Some(receipt) = sender
                .provider
                .get_transaction_receipt(hash)
                .await
                .map_err(|e| KeeperError::Chain { action: "eth_getTransactionReceipt", message: e.to_string() })?
            {
                tx_hash = Some(hash);
                events = receipt.inner.logs().iter().filter_map(describe).collect();
                break;
            }
        }
        outcomes.push(AdminOutcome { action: action.key.clone(), state, tx_hash, failure, events });
    }
    Ok(outcomes)
}

fn describe(log: &Log) -> Option<String> {
    if let Ok(event) = Subscriptions::SubscriptionsEvents::decode_raw_log(log.topics(), &log.data().data) {
        return Some(format!("{event:?}"));
    }
    SplitEscrow::SplitEscrowEvents::decode_raw_log(log.topics(), &log.data().data).ok().map(|e| format!("{e:?}"))
}
