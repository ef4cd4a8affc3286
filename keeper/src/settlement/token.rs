//! What the settlement token says about itself. Circle's USDC can be paused by its pauser and can refuse any
//! blacklisted account (as sender, recipient or caller): the engine plans no pull or payout while the token is
//! paused (each would fail on chain, mark subscribers past due and spend a nonce for nothing), and explains each
//! item a confirmed batch could not do by the token's own state.

use alloy::{
    primitives::{Address, U256},
    providers::DynProvider,
    rpc::types::TransactionReceipt,
    sol_types::SolEvent,
};
use subsettle_abi::{
    SplitEscrow, Subscriptions,
    deployment::Deployment,
    usdc::FiatTokenV2_2,
};

use crate::KeeperError;

/// What the token lets our contracts do now. A pull moves the subscriber's tokens to the escrow with
/// Subscriptions as the caller, a payout moves the escrow's with the escrow as the caller: USDC refuses both while
/// paused, and refuses a transfer whose caller, sender or recipient it blacklists.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct TokenGate {
    /// The token is paused.
    pub paused: bool,
    /// The token blacklists the Subscriptions contract: no pull can succeed.
    pub subscriptions_blacklisted: bool,
    /// The token blacklists the escrow: no pull into it and no payout out of it can succeed.
    pub escrow_blacklisted: bool,
}

impl TokenGate {
    /// Reads the gate of `deployment`'s token.
    pub async fn read(provider: &DynProvider, deployment: &Deployment) -> Result<Self, KeeperError> {
        Ok(Self {
            paused: paused(provider, deployment.token).await?,
            subscriptions_blacklisted: blacklisted(provider, deployment.token, deployment.subscriptions).await?,
            escrow_blacklisted: blacklisted(provider, deployment.token, deployment.escrow).await?,
        })
    }

    /// Whether renewals and usage charges can collect.
    pub fn pulls_open(&self) -> bool {
        !self.paused && !self.subscriptions_blacklisted && !self.escrow_blacklisted
    }

    /// Whether payouts can be paid.
    pub fn payouts_open(&self) -> bool {
        !self.paused && !self.escrow_blacklisted
    }
}

impl std::fmt::Display for TokenGate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let closed: Vec<&str> = [
            (self.paused, "the token is paused"),
            (self.subscriptions_blacklisted, "the token blacklists the Subscriptions contract"),
            (self.escrow_blacklisted, "the token blacklists the escrow"),
        ]
        .into_iter()
        .filter_map(|(on, what)| on.then_some(what))
        .collect();
        match closed.is_empty() {
            true => f.write_str("open"),
            false => f.write_str(&closed.join("; ")),
        }
    }
}

/// Whether the token is paused. A token without `paused()` (not USDC) is never paused; a node that cannot be read
/// is an error, not a guess.
pub async fn paused(provider: &DynProvider, token: Address) -> Result<bool, KeeperError> {
    match FiatTokenV2_2::new(token, provider).paused().call().await {
        Ok(paused) => Ok(paused),
        Err(e) if not_provided(&e) => Ok(false),
        Err(e) => Err(KeeperError::Chain { action: "token paused()", message: e.to_string() }),
    }
}

/// Whether the token blacklists `account`; `false` for a token without a blacklist.
pub async fn blacklisted(provider: &DynProvider, token: Address, account: Address) -> Result<bool, KeeperError> {
    match FiatTokenV2_2::new(token, provider).isBlacklisted(account).call().await {
        Ok(listed) => Ok(listed),
        Err(e) if not_provided(&e) => Ok(false),
        Err(e) => Err(KeeperError::Chain { action: "token isBlacklisted()", message: e.to_string() }),
    }
}

/// The call reverted or returned nothing: the token has no such function.
fn not_provided(error: &alloy::contract::Error) -> bool {
    matches!(error, alloy::contract::Error::ZeroData(..) | alloy::contract::Error::AbiError(_)) || error.as_revert_data().is_some()
}

/// One item a confirmed batch could not do, as its event says.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ItemFailure {
    /// `renew`, `chargeUsage` or `claim`.
    pub kind: &'static str,
    /// The subscription id (renew, chargeUsage) or the recipient (claim).
    pub item: String,
    /// The contract's reason (`FailureReason`), or `transfer_refused` for a claim.
    pub reason: String,
    /// Who holds the money that did not move: the subscriber, or the claim's payout address.
    pub account: Option<Address>,
    /// The token's explanation of a refusal, when it gives one: `blacklisted: <who>` or `token paused`.
    pub explanation: Option<String>,
}

/// The failed items of a confirmed transaction: `RenewalFailed`, `UsageChargeFailed` and `ClaimFailed` of our
/// contracts, in log order.
pub fn item_failures(receipt: &TransactionReceipt, deployment: &Deployment) -> Vec<ItemFailure> {
    let reason = |code: u8| subsettle_abi::failure_reason(code).to_owned();
    let mut failures = Vec::new();
    for log in receipt.inner.logs() {
        if log.address() == deployment.subscriptions {
            if let Ok(e) = Subscriptions::RenewalFailed::decode_log(&log.inner) {
                failures.push(ItemFailure::new("renew", e.id.to_string(), reason(e.reason as u8), None));
            } else if let Ok(e) = Subscriptions::UsageChargeFailed::decode_log(&log.inner) {
                failures.push(ItemFailure::new("chargeUsage", e.id.to_string(), reason(e.reason as u8), None));
            }
        } else if log.address() == deployment.escrow
            && let Ok(e) = SplitEscrow::ClaimFailed::decode_log(&log.inner)
        {
            failures.push(ItemFailure::new("claim", e.recipient.to_string(), "transfer_refused".into(), Some(e.payout)));
        }
    }
    failures
}

impl ItemFailure {
    fn new(kind: &'static str, item: String, reason: String, account: Option<Address>) -> Self {
        Self { kind, item, reason, account, explanation: None }
    }

    /// Explains a refusal by the token's state: `gate` (read at this step: paused, our contracts listed), and
    /// whether it blacklists the subscriber or payout address, the one party the gate does not cover.
    pub async fn explain(&mut self, provider: &DynProvider, deployment: &Deployment, gate: TokenGate) -> Result<(), KeeperError> {
        if !matches!(self.reason.as_str(), "token_rejected" | "transfer_refused") {
            return Ok(());
        }
        if self.account.is_none() && self.kind != "claim" {
            self.account = subscriber(provider, deployment, &self.item).await?;
        }
        if gate.paused {
            self.explanation = Some("token paused".into());
            return Ok(());
        }
        let account_listed = match self.account {
            Some(account) => blacklisted(provider, deployment.token, account).await?,
            None => false,
        };
        let parties = [
            ("the account", self.account.filter(|_| account_listed)),
            ("Subscriptions", Some(deployment.subscriptions).filter(|_| gate.subscriptions_blacklisted)),
            ("SplitEscrow", Some(deployment.escrow).filter(|_| gate.escrow_blacklisted)),
        ];
        let listed: Vec<String> = parties.iter().filter_map(|(name, party)| party.map(|p| format!("{name} {p}"))).collect();
        if !listed.is_empty() {
            self.explanation = Some(format!("blacklisted by the token: {}", listed.join(", ")));
        }
        Ok(())
    }
}

/// The subscriber of subscription `id` (as an item string), or `None` when the contract does not know it.
async fn subscriber(provider: &DynProvider, deployment: &Deployment, id: &str) -> Result<Option<Address>, KeeperError> {
    let Ok(id) = id.parse::<U256>() else { return Ok(None) };
    match Subscriptions::new(deployment.subscriptions, provider).subscription(id).call().await {
        Ok(subscription) => Ok(Some(subscription.subscriber)),
        Err(e) if e.as_revert_data().is_some() => Ok(None),
        Err(e) => Err(KeeperError::Chain { action: "Subscriptions.subscription()", message: e.to_string() }),
    }
}
