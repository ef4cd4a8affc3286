//! The operator key. It comes from the environment (`SUBSETTLE_PRIVATE_KEY`) or from a file, never from a flag
//! (flags show in `ps`), and the type that holds it never prints it.

use std::{fmt, path::Path};

use alloy::signers::local::PrivateKeySigner;

/// The environment variable that may hold the operator's private key (hex, with or without `0x`).
pub const PRIVATE_KEY_ENV: &str = "SUBSETTLE_PRIVATE_KEY";

/// Why the operator key could not be loaded. Never contains the key itself.
#[derive(Debug, thiserror::Error)]
pub enum SignerError {
    /// Neither the environment variable nor a key file was given.
    #[error("no operator key: set {PRIVATE_KEY_ENV} or pass --private-key-file")]
    Missing,
    /// The key file could not be read.
    #[error("cannot read key file {path}: {source}")]
    Unreadable {
        /// The key file.
        path: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The key is not a valid secp256k1 private key.
    #[error("the operator key from {origin} is not a valid 32-byte hex private key")]
    Malformed {
        /// Where the key came from (the variable name or the file path), never the key.
        origin: String,
    },
}

/// A loaded operator key. `Debug` shows only the address.
#[derive(Clone)]
pub struct OperatorKey(PrivateKeySigner);

impl fmt::Debug for OperatorKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("OperatorKey").field(&self.0.address()).finish()
    }
}

impl OperatorKey {
    /// Loads the key from `file` when given, else from [`PRIVATE_KEY_ENV`].
    pub fn load(file: Option<&Path>) -> Result<Self, SignerError> {
        match file {
            Some(path) => {
                let shown = path.display().to_string();
                let text = std::fs::read_to_string(path)
                    .map_err(|source| SignerError::Unreadable { path: shown.clone(), source })?;
                Self::parse(&text, shown)
            }
            None => {
                let text = std::env::var(PRIVATE_KEY_ENV).map_err(|_| SignerError::Missing)?;
                Self::parse(&text, PRIVATE_KEY_ENV.to_owned())
            }
        }
    }

    fn parse(text: &str, origin: String) -> Result<Self, SignerError> {
        text.trim().parse::<PrivateKeySigner>().map(Self).map_err(|_| SignerError::Malformed { origin })
    }

    /// The signer, for building a wallet provider.
    pub fn signer(&self) -> &PrivateKeySigner {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // anvil's well-known first development key; not a secret.
    const ANVIL_KEY: &str = "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80";

    #[test]
    fn debug_never_shows_the_key() {
        let key = OperatorKey::parse(ANVIL_KEY, "test".into()).unwrap();
        let shown = format!("{key:?}");
        assert!(!shown.contains("ac0974bec39a17e3"), "{shown}");
        assert!(shown.to_lowercase().contains("f39fd6e51aad88f6f4ce6ab8827279cfffb92266"), "{shown}");
    }

    #[test]
    fn reads_a_key_file_with_surrounding_whitespace() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        std::fs::write(&path, format!("  {ANVIL_KEY}\n")).unwrap();
        assert!(OperatorKey::load(Some(&path)).is_ok());
    }

    #[test]
    fn a_malformed_key_names_its_origin_but_not_its_value() {
        let err = OperatorKey::parse("0xnot-a-key", "/etc/keeper.key".into()).unwrap_err().to_string();
        assert!(err.contains("/etc/keeper.key"), "{err}");
        assert!(!err.contains("not-a-key"), "{err}");
    }
}
