//! The operator's owner actions on the contracts, sent through the outbox like every other transaction (so the
//! engine's nonces stay consistent): each is validated here first, then pre-checked by the node (a revert is
//! reported with the contract's error name), sent, and its receipt's events are what the command prints.
//!
//! Every action applies once. Its outbox key comes from its arguments (the hash of the call) or from a
//! caller-given idempotency key, never from the clock, so running the same command again after a timeout, a
//! crash or by mistake follows or reports the first request and sends nothing; how an action repeated on purpose
//! is told apart from a re-run is [`Repeat`].

use std::time::{Duration, Instant};

use alloy::{
    eips::BlockNumberOrTag,
    primitives::{Address, B256, U256, keccak256},
    providers::{DynProvider, Provider},
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

    /// How a repeat of this action is recognised (see [`Repeat`]).
    pub fn repeat(&self) -> Repeat {
        match self {
            Self::CreatePlan { .. } | Self::CreateSplit { .. } | Self::Refund { .. } => Repeat::OncePerArguments,
            _ => Repeat::ByState,
        }
    }

    /// The contract calls of this action, as outbox actions without their keys yet: (call name, action).
    pub fn calls(&self, deployment: &Deployment) -> Vec<(&'static str, Action)> {
        let subs = deployment.subscriptions;
        let escrow = deployment.escrow;
        let call = |name: &'static str, target: Address, calldata: Vec<u8>, items: serde_json::Value| {
            (name, Action { key: String::new(), kind: "admin", target, calldata: calldata.into(), items })
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

    /// For a [`Repeat::ByState`] action: whether the chain already holds what call `name` would set, said in
    /// words; `None` when it does not (or the thing is unknown: the pre-check then names the contract's error).
    pub async fn in_effect(&self, name: &str, provider: &DynProvider, deployment: &Deployment) -> Result<Option<String>, KeeperError> {
        let subs = Subscriptions::new(deployment.subscriptions, provider);
        let escrow = SplitEscrow::new(deployment.escrow, provider);
        let read = |action: &'static str| move |e: alloy::contract::Error| KeeperError::Chain { action, message: e.to_string() };
        let now = || async {
            let block = provider
                .get_block_by_number(BlockNumberOrTag::Latest)
                .await
                .map_err(|e| KeeperError::Chain { action: "eth_getBlockByNumber", message: e.to_string() })?;
            Ok::<U256, KeeperError>(U256::from(block.map_or(0, |b| b.header.timestamp)))
        };
        Ok(match self {
            Self::SetPlanActive { plan, active } => match subs.plan(U256::from(*plan)).call().await {
                Ok(p) if p.period != 0 && p.active == *active => Some(format!("plan {plan} is already {}", if *active { "open" } else { "closed" })),
                _ => None,
            },
            Self::Pause => subs.chargingPaused().call().await.map_err(read("chargingPaused"))?.then(|| "charging is already paused".to_owned()),
            Self::Unpause => (!subs.chargingPaused().call().await.map_err(read("chargingPaused"))?).then(|| "charging is not paused".to_owned()),
            Self::SetKeeper { keeper } => {
                let current = if name == "set-keeper-escrow" {
                    escrow.keeper().call().await.map_err(read("SplitEscrow.keeper"))?
                } else {
                    subs.keeper().call().await.map_err(read("Subscriptions.keeper"))?
                };
                let contract = if name == "set-keeper-escrow" { "SplitEscrow" } else { "Subscriptions" };
                (current == *keeper).then(|| format!("{contract}'s keeper is already {keeper}"))
            }
            Self::Hold { recipient, until, .. } => {
                let hold = escrow.holdOf(*recipient).call().await.map_err(read("holdOf"))?;
                let now = now().await?;
                let held = U256::from(hold.until) == U256::from(*until) && U256::from(*until) > now;
                held.then(|| format!("{recipient} is already held until {until}"))
            }
            Self::Release { recipient } => {
                let hold = escrow.holdOf(*recipient).call().await.map_err(read("holdOf"))?;
                (U256::from(hold.until) <= now().await?).then(|| format!("{recipient} is not held"))
            }
            Self::ProposeSplitChange { split, recipients, bps, remainder_index } => match escrow.latestVersion(U256::from(*split)).call().await {
                Ok(version) => {
                    let newest = escrow.splitVersion(U256::from(*split), version).call().await.map_err(read("splitVersion"))?;
                    (newest.recipients == *recipients && newest.bps == *bps && newest.remainderIndex == U256::from(*remainder_index)).then(|| {
                        format!("split {split}'s newest version ({version}, effective at {}) already has these shares", newest.effectiveAt)
                    })
                }
                _ => None,
            },
            Self::CancelSplitChange { split } => match escrow.latestVersion(U256::from(*split)).call().await {
                Ok(version) => {
                    let newest = escrow.splitVersion(U256::from(*split), version).call().await.map_err(read("splitVersion"))?;
                    (newest.effectiveAt <= now().await?).then(|| format!("split {split} has no pending change"))
                }
                _ => None,
            },
            Self::CreatePlan { .. } | Self::CreateSplit { .. } | Self::Refund { .. } => None,
        })
    }
}

/// How a repeat of an admin action is recognised, so that re-running a command (after a timeout, a crash, or by
/// mistake) never acts twice, while an action repeated on purpose still goes through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Repeat {
    /// `create-plan`, `create-split`, `refund`: each makes something new or moves money, so it applies once per
    /// identical arguments. Another identical one is made only under a new `--idempotency-key`; a refund applies
    /// once per reference whatever the key (its reference is its on-chain id).
    OncePerArguments,
    /// `set-plan-active`, `pause`, `unpause`, `set-keeper`, `hold`, `release`, `propose-split-change`,
    /// `cancel-split-change`: each sets state, so nothing is sent when the chain already holds what it sets, and it
    /// is sent whenever it does not (pause, unpause, pause again all go through).
    ByState,
}

/// What a request does with one call, decided from the outbox and the chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Plan the call under this new key and send it.
    Send(String),
    /// An identical request is still on its way under this key: follow it; nothing new is sent.
    Follow(String),
    /// Nothing to send: already applied (by the action under this key, when this keeper sent it), as said.
    Done(Option<String>, String),
}

/// The outbox keys of a call start with `admin:<call>:` and then the hash of its target and calldata (or
/// `key:<idempotency key>`); attempts are numbered after that.
fn key_prefix(name: &str, action: &Action, idempotency_key: Option<&str>) -> String {
    match idempotency_key {
        Some(key) => format!("admin:{name}:key:{key}"),
        None => {
            let mut bytes = action.target.to_vec();
            bytes.extend_from_slice(&action.calldata);
            format!("admin:{name}:{}", alloy::hex::encode(&keccak256(bytes)[..16]))
        }
    }
}

/// Checks a caller-given idempotency key: 1 to 64 characters from `A-Z a-z 0-9 . _ -`.
pub fn check_idempotency_key(key: &str) -> Result<(), KeeperError> {
    let fine = !key.is_empty() && key.len() <= 64 && key.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if fine { Ok(()) } else { Err(invalid("idempotency_key", format!("`{key}`: 1 to 64 characters from A-Z a-z 0-9 . _ -"))) }
}

/// Decides what a request does with call `name` of `action` (see [`Repeat`]): follow an identical request still
/// on its way; report one already applied (or, by state, what the chain already holds); else send it under the
/// next attempt's key. A failed attempt left nothing on chain, so a request after it sends again.
pub async fn decide(
    pool: &PgPool,
    provider: &DynProvider,
    deployment: &Deployment,
    admin: &AdminAction,
    name: &str,
    action: &Action,
    idempotency_key: Option<&str>,
) -> Result<Decision, KeeperError> {
    let prefix = key_prefix(name, action, idempotency_key);
    let rows: Vec<(String, String, Vec<u8>, Vec<u8>)> = sqlx::query_as(
        "SELECT action_key, state, target, calldata FROM keeper.outbox WHERE starts_with(action_key, $1) ORDER BY planned_at, action_key",
    )
    .bind(format!("{prefix}:"))
    .fetch_all(pool)
    .await?;
    if let Some(key) = idempotency_key
        && let Some((other, ..)) =
            rows.iter().find(|(_, _, target, calldata)| target.as_slice() != action.target.as_slice() || calldata.as_slice() != action.calldata.as_ref())
    {
        return Err(invalid("idempotency_key", format!("`{key}` was used for a different {name} ({other}); give another key")));
    }
    if let Some((key, ..)) = rows.iter().rev().find(|(_, state, ..)| state == "planned" || state == "sent") {
        return Ok(Decision::Follow(key.clone()));
    }
    let applied = rows.iter().rev().find(|(_, state, ..)| state == "confirmed").map(|(key, ..)| key.clone());
    match admin.repeat() {
        Repeat::OncePerArguments => {
            if let Some(key) = applied {
                let again = if matches!(admin, AdminAction::Refund { .. }) {
                    "a refund's reference applies once"
                } else {
                    "give --idempotency-key to make another identical one"
                };
                return Ok(Decision::Done(Some(key), format!("already applied by an identical earlier request; nothing sent ({again})")));
            }
        }
        Repeat::ByState => {
            if let Some(holds) = admin.in_effect(name, provider, deployment).await? {
                let by = if applied.is_some() { "" } else { " (not by this keeper's outbox)" };
                return Ok(Decision::Done(applied, format!("already applied: {holds}{by}; nothing sent")));
            }
        }
    }
    Ok(Decision::Send(format!("{prefix}:{}", rows.len() + 1)))
}

/// The outcome of one admin call.
#[derive(Debug, Clone, serde::Serialize)]
pub struct AdminOutcome {
    /// The outbox key (`None`: nothing was ever sent for it, the chain already held what it sets).
    pub action: Option<String>,
    /// `confirmed` (final), `failed`, `sent` (not final when the wait ended), or `unchanged` (nothing to send).
    pub state: String,
    /// Whether this request signed a transaction for it.
    pub sent_now: bool,
    /// What this request found: an identical one already applied or on its way.
    pub note: Option<String>,
    /// The transaction, when one was mined.
    pub tx_hash: Option<B256>,
    /// The block it was mined in.
    pub block: Option<u64>,
    /// Why it failed.
    pub failure: Option<String>,
    /// The events it emitted: the resulting state.
    pub events: Vec<String>,
}

impl AdminOutcome {
    /// Whether the call's effect is on chain, final (by this request or an earlier one), or was there already.
    pub fn applied(&self) -> bool {
        self.state == "confirmed" || self.state == "unchanged"
    }
}

/// Validates `action`, decides per call what to do ([`decide`]), sends what is to be sent through the outbox
/// (only this request's actions), and waits up to `wait` until every action it sent or follows is final. On
/// timeout the outcomes say `sent`: running the same request again follows them and sends nothing new.
pub async fn execute(
    pool: &PgPool,
    sender: &Sender,
    deployment: &Deployment,
    action: &AdminAction,
    idempotency_key: Option<&str>,
    wait: Duration,
) -> Result<Vec<AdminOutcome>, KeeperError> {
    action.validate()?;
    if let Some(key) = idempotency_key {
        check_idempotency_key(key)?;
    }
    let mut plans = Vec::new();
    for (name, call) in action.calls(deployment) {
        let decision = decide(pool, &sender.provider, deployment, action, name, &call, idempotency_key).await?;
        plans.push((call, decision));
    }
    let now = sender.latest_header().await?.timestamp as i64;
    let mut to_send = Vec::new();
    let mut followed = Vec::new();
    for (call, decision) in &plans {
        match decision {
            Decision::Send(key) => {
                outbox::plan(pool, &[Action { key: key.clone(), ..call.clone() }], now).await?;
                to_send.push(key.clone());
            }
            Decision::Follow(key) => {
                tracing::info!(action = %key, "an identical request is on its way; following it, nothing new is sent");
                followed.push(key.clone());
            }
            Decision::Done(_, note) => tracing::info!("{note}"),
        }
    }
    let mut report = OutboxReport::default();
    // A followed action still planned (its request stopped before signing) is signed now, for the first time.
    let ours: Vec<String> = to_send.iter().chain(&followed).cloned().collect();
    sender.send_planned_of(pool, &mut report, &ours).await?;
    let started = Instant::now();
    while !ours.is_empty() {
        sender.reconcile(pool, &mut report).await?;
        let open: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM keeper.outbox WHERE action_key = ANY($1) AND state IN ('planned', 'sent')")
            .bind(&ours)
            .fetch_one(pool)
            .await?;
        if open == 0 || started.elapsed() > wait {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut outcomes = Vec::new();
    for (_, decision) in &plans {
        let (key, note, sent_now) = match decision {
            Decision::Send(key) => (Some(key.clone()), None, true),
            Decision::Follow(key) => {
                (Some(key.clone()), Some("pending: an identical earlier request is on its way; followed it, nothing new sent".to_owned()), false)
            }
            Decision::Done(key, note) => (key.clone(), Some(note.clone()), false),
        };
        outcomes.push(outcome(pool, sender, key, note, sent_now, matches!(decision, Decision::Done(None, _))).await?);
    }
    Ok(outcomes)
}

/// The outcome of the call under `key`, with the events of its mined transaction.
async fn outcome(
    pool: &PgPool,
    sender: &Sender,
    key: Option<String>,
    note: Option<String>,
    sent_now: bool,
    unchanged: bool,
) -> Result<AdminOutcome, KeeperError> {
    let mut outcome =
        AdminOutcome { action: key.clone(), state: "unchanged".into(), sent_now, note, tx_hash: None, block: None, failure: None, events: Vec::new() };
    let Some(key) = key else { return Ok(outcome) };
    let (state, hashes, failure, nonce): (String, Vec<Vec<u8>>, Option<String>, Option<i64>) =
        sqlx::query_as("SELECT state, tx_hashes, failure, nonce FROM keeper.outbox WHERE action_key = $1").bind(&key).fetch_one(pool).await?;
    outcome.state = if unchanged { "unchanged".into() } else { state };
    // A call refused by its pre-check was never signed.
    outcome.sent_now &= nonce.is_some();
    outcome.failure = failure;
    for hash in hashes.iter().rev() {
        let hash = B256::from_slice(hash);
        if let Some(receipt) = sender
            .provider
            .get_transaction_receipt(hash)
            .await
            .map_err(|e| KeeperError::Chain { action: "eth_getTransactionReceipt", message: e.to_string() })?
        {
            outcome.tx_hash = Some(hash);
            outcome.block = receipt.block_number;
            outcome.events = receipt.inner.logs().iter().filter_map(describe).collect();
            break;
        }
    }
    Ok(outcome)
}

fn describe(log: &Log) -> Option<String> {
    if let Ok(event) = Subscriptions::SubscriptionsEvents::decode_raw_log(log.topics(), &log.data().data) {
        return Some(format!("{event:?}"));
    }
    SplitEscrow::SplitEscrowEvents::decode_raw_log(log.topics(), &log.data().data).ok().map(|e| format!("{e:?}"))
}
