//! The subsettle keeper: turns off-chain usage metering into batched on-chain settlement and runs the operator's
//! actions against the contracts. It is the only writer of the Postgres schema `keeper` and reads the indexer's
//! schema `chain` read-only.
//!
//! The crate has three jobs, each a module folder, over a small shared base:
//!
//! - [`metering`]: usage in over HTTP or from files, entitlement, pricing, period close and statements (`serve`).
//! - [`settlement`]: the engine that renews, charges, settles and pays out through an outbox (`run`).
//! - [`operator`]: deploy, admin actions, import and reconcile, run by hand.
//!
//! Shared by all three: [`config`] (settings and the TOML file), [`signer`] (the operator key, never printed),
//! [`clock`] (time as the keeper sees it), [`metrics`] (Prometheus exposition pieces), [`money`] (the one
//! rounding rule), [`merkle`] (usage roots and proofs) and [`store`] (Postgres connections and schema `keeper`).
//! [`cli`] is the command line; nothing in the jobs imports it.

pub mod cli;
pub mod clock;
pub mod config;
pub mod merkle;
pub mod metering;
pub mod metrics;
pub mod money;
pub mod operator;
pub mod settlement;
pub mod signer;
pub mod store;

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
