//! Typed bindings for the subsettle contracts, generated at compile time with alloy's `sol!` from the ABI and
//! bytecode JSON in `abi/` (written by `tools/abi-export`), so building Rust never needs a Solidity compiler.
//!
//! - [`Subscriptions`]: plans, subscriptions, batched renewals and capped usage charges pulled into the escrow.
//! - [`SplitEscrow`]: unallocated revenue, split versions, settlements, claims, holds and refunds.
//! - [`usdc`]: Circle's USDC (`FiatTokenV2_2` behind `FiatTokenProxy`) from its compiled artifacts, and its local
//!   deployment; the token of every test, bench and the demo.
//! - [`TestUSDC`]: our own small token, kept for what USDC cannot be in a test.
//! - [`deployment`]: the deployment descriptor (chain id, contract addresses, start block) both daemons read.
#![allow(missing_docs)] // the `sol!` expansions carry no docs of their own; the contracts' NatSpec is the reference
#![allow(clippy::too_many_arguments)] // generated calls take as many arguments as the contract functions

pub mod deployment;
pub mod usdc;

pub use deployment::{Deployment, DeploymentError};

alloy::sol!(
    #[sol(rpc)]
    #[derive(Debug)]
    Subscriptions,
    "Subscriptions.json"
);

alloy::sol!(
    #[sol(rpc)]
    #[derive(Debug)]
    SplitEscrow,
    "SplitEscrow.json"
);

alloy::sol!(
    #[sol(rpc)]
    #[derive(Debug)]
    TestUSDC,
    "TestUSDC.json"
);

/// The names of `ISubscriptions.FailureReason` by enum value, as the indexer stores them and the keeper reports
/// them (`RenewalFailed`, `UsageChargeFailed`).
pub const FAILURE_REASONS: [&str; 7] = [
    "none",
    "insufficient_balance",
    "insufficient_allowance",
    "token_rejected",
    "unknown_subscription",
    "period_not_started",
    "charge_window_closed",
];

/// The name of `FailureReason` value `code` (`unknown` for a value this build does not know).
pub fn failure_reason(code: u8) -> &'static str {
    FAILURE_REASONS.get(usize::from(code)).copied().unwrap_or("unknown")
}
