//! The subsettle keeper: turns off-chain usage metering into batched on-chain settlement and runs the operator's
//! actions against the contracts. It is the only writer of the Postgres schema `keeper` and reads the indexer's
//! schema `chain` read-only.
//!
//! - [`cli`]: the `subsettle-keeper` command line.
//! - [`signer`]: the operator key, read from the environment or a file and never printed.
//! - [`deploy`]: deploys the contracts and writes the deployment descriptor the daemons read.

pub mod cli;
pub mod deploy;
pub mod signer;

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
}
