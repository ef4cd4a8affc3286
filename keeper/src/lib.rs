//! The subsettle keeper: turns off-chain usage metering into batched on-chain settlement and runs the operator's
//! actions against the contracts. It is the only writer of the Postgres schema `keeper` and reads the indexer's
//! schema `chain` read-only.
//!
//! - [`cli`]: the `subsettle-keeper` command line.
//! - [`signer`]: the operator key, read from the environment or a file and never printed.
//! - [`deploy`]: deploys the contracts and writes the deployment descriptor the daemons read.
//! - [`catalog`], [`pricing`], [`money`]: models, meters, the price book, and the one rounding rule.
//! - [`metering`], [`entitlement`], [`api`]: usage events in over HTTP or from files, exactly once, and whether to
//!   serve a subscriber.
//! - [`funds`]: what each subscriber's wallet can pay for usage (balance, allowance, credit), read from the chain.
//! - [`close`], [`merkle`]: period close, attribution to splits, usage roots.
//! - [`epoch`]: settlement epochs gathered from the closes, one amount per split.
//! - [`metrics`]: Prometheus metrics and `/healthz` of the engine.
//! - [`admin`]: the operator's owner actions, validated and sent through the outbox.
//! - [`engine`]: the `run` loop under a Postgres lease: reconcile, close, plan, send.
//! - [`renewals`]: which subscriptions to renew, when, in which batches.
//! - [`settlement`]: usage charges, settlement epochs and pushed payouts to plan.
//! - [`threshold`]: mid-period charges when the overage crosses a configured threshold.
//! - [`outbox`]: on-chain actions written before they are signed, nonces from Postgres, receipts matched.
//! - [`statement`]: statements for subscribers and creators with Merkle proofs, and their verification.
//! - [`reconcile`]: the chain's views, the indexer's tables and the keeper's books compared, every difference listed.

pub mod admin;
pub mod api;
pub mod catalog;
pub mod cli;
pub mod clock;
pub mod close;
pub mod config;
pub mod deploy;
pub mod engine;
pub mod entitlement;
pub mod epoch;
pub mod funds;
pub mod import;
pub mod merkle;
pub mod metrics;
pub mod metering;
pub mod money;
pub mod outbox;
pub mod pricing;
pub mod reconcile;
pub mod renewals;
pub mod settlement;
pub mod signer;
pub mod statement;
pub mod threshold;
pub mod store;
pub mod subscriptions;

/// Everything that can go wrong in the keeper library.
#[derive(Debug, thiserror::Error)]
pub enum KeeperError {
    /// The operator key is missing or malformed.
    #[error(transparent)]
    Signer(#[from] signer::SignerError),
    /// An RPC call or a transaction failed.
    #[error("{action}: {message}")]
    Chain {
        /// What the keeper was doing.
        action: &'static str,
        /// The node's or the contract's answer.
        message: String,
    },
    /// The deployment descriptor could not be written.
    #[error(transparent)]
    Deployment(#[from] subsettle_abi::DeploymentError),
    /// Postgres failed.
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    /// A migration of schema `keeper` failed.
    #[error("migrating schema keeper: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// The indexer's tables hold something the keeper cannot read.
    #[error("indexed chain data: {0}")]
    ChainData(String),
    /// An input was rejected.
    #[error("{field}: {reason}")]
    Invalid {
        /// The field or key at fault.
        field: String,
        /// Why.
        reason: String,
    },
    /// A period could not be closed.
    #[error("closing subscription {subscription_id} period {period}: {reason}")]
    Close {
        /// Subscription id.
        subscription_id: u64,
        /// Period index.
        period: u64,
        /// Why.
        reason: String,
    },
    /// A file could not be read.
    #[error("{path}: {message}")]
    File {
        /// The file.
        path: String,
        /// What went wrong.
        message: String,
    },
}
