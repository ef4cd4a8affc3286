//! The deployment descriptor: which chain and which contract addresses a daemon works against.
//!
//! `subsettle-keeper deploy` writes it; the indexer and the keeper read it. It is JSON so operators can read it
//! and so it can be published next to the contracts.

use std::path::Path;

use alloy::primitives::Address;
use serde::{Deserialize, Serialize};

/// A deployment of the subsettle contracts on one chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Deployment {
    /// EIP-155 chain id of the chain the contracts live on.
    pub chain_id: u64,
    /// The settlement token: the chain's USDC, or Circle's USDC deployed locally (`deploy --local-usdc`).
    pub token: Address,
    /// The [`crate::Subscriptions`] contract.
    pub subscriptions: Address,
    /// The [`crate::SplitEscrow`] contract.
    pub escrow: Address,
    /// First block the indexer must read: the block the earliest contract was deployed in.
    pub start_block: u64,
}

/// Why a deployment descriptor could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum DeploymentError {
    /// The file could not be read or written.
    #[error("deployment file {path}: {source}")]
    Io {
        /// The file in question.
        path: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The file is not a valid descriptor; the message names the offending field.
    #[error("deployment file {path} is invalid: {source}")]
    Invalid {
        /// The file in question.
        path: String,
        /// The parse error, with line, column and field.
        source: serde_json::Error,
    },
    /// A field parsed but holds a value no deployment can have.
    #[error("deployment file {path}: field `{field}` {reason}")]
    BadValue {
        /// The file in question.
        path: String,
        /// The offending field.
        field: &'static str,
        /// What is wrong with it.
        reason: &'static str,
    },
}

impl Deployment {
    /// Reads and validates a descriptor from `path`.
    pub fn load(path: &Path) -> Result<Self, DeploymentError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path)
            .map_err(|source| DeploymentError::Io { path: shown.clone(), source })?;
        let deployment: Self = serde_json::from_str(&text)
            .map_err(|source| DeploymentError::Invalid { path: shown.clone(), source })?;
        deployment.validate(&shown)?;
        Ok(deployment)
    }

    /// Writes the descriptor to `path` as pretty JSON.
    pub fn save(&self, path: &Path) -> Result<(), DeploymentError> {
        let shown = path.display().to_string();
        let text = serde_json::to_string_pretty(self).expect("a deployment always serializes");
        std::fs::write(path, text + "\n").map_err(|source| DeploymentError::Io { path: shown, source })
    }

    fn validate(&self, path: &str) -> Result<(), DeploymentError> {
        let bad = |field, reason| DeploymentError::BadValue { path: path.to_owned(), field, reason };
        if self.chain_id == 0 {
            return Err(bad("chain_id", "must be a non-zero EIP-155 chain id"));
        }
        for (field, address) in
            [("token", self.token), ("subscriptions", self.subscriptions), ("escrow", self.escrow)]
        {
            if address == Address::ZERO {
                return Err(bad(field, "must not be the zero address"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = r#"{"chain_id":1,"token":"0x1111111111111111111111111111111111111111","subscriptions":"0x2222222222222222222222222222222222222222","escrow":"0x3333333333333333333333333333333333333333","start_block":0}"#;

    fn write(dir: &tempfile::TempDir, text: &str) -> std::path::PathBuf {
        let path = dir.path().join("deployment.json");
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn round_trips_through_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let deployment = Deployment {
            chain_id: 31337,
            token: Address::repeat_byte(0x11),
            subscriptions: Address::repeat_byte(0x22),
            escrow: Address::repeat_byte(0x33),
            start_block: 7,
        };
        let path = dir.path().join("d.json");
        deployment.save(&path).unwrap();
        assert_eq!(Deployment::load(&path).unwrap(), deployment);
    }

    #[test]
    fn names_the_unknown_field() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(&dir, &VALID.replace(r#""start_block":0"#, r#""start_block":0,"tokn":1"#));
        let err = Deployment::load(&path).unwrap_err().to_string();
        assert!(err.contains("tokn"), "{err}");
    }

    #[test]
    fn refuses_a_zero_chain_id() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(&dir, &VALID.replace(r#""chain_id":1"#, r#""chain_id":0"#));
        let err = Deployment::load(&path).unwrap_err().to_string();
        assert!(err.contains("chain_id"), "{err}");
    }

    #[test]
    fn refuses_a_malformed_address() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(&dir, &VALID.replace("0x1111111111111111111111111111111111111111", "0x11"));
        assert!(matches!(Deployment::load(&path), Err(DeploymentError::Invalid { .. })));
    }

    #[test]
    fn refuses_a_zero_escrow_and_names_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(&dir, &VALID.replace("0x3333333333333333333333333333333333333333", &Address::ZERO.to_string()));
        let err = Deployment::load(&path).unwrap_err().to_string();
        assert!(err.contains("escrow"), "{err}");
    }

    #[test]
    fn accepts_a_valid_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(&dir, VALID);
        assert_eq!(Deployment::load(&path).unwrap().chain_id, 1);
    }
}
