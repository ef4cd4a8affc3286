//! A real anvil node per test.

use alloy::{
    network::EthereumWallet,
    node_bindings::{Anvil, AnvilInstance},
    primitives::Address,
    providers::{DynProvider, Provider, ProviderBuilder},
    signers::local::PrivateKeySigner,
};

use crate::{HarnessError, toolchain::foundry_bin};

/// A running anvil node on a port the OS chose. Dropping it kills the node.
#[derive(Debug)]
pub struct TestChain {
    anvil: AnvilInstance,
}

impl TestChain {
    /// Starts anvil with its ten funded development accounts and instant mining.
    pub fn spawn() -> Result<Self, HarnessError> {
        Self::spawn_with(&[])
    }

    /// Starts anvil with extra command-line arguments (for example `["--block-time", "1"]`).
    pub fn spawn_with(args: &[&str]) -> Result<Self, HarnessError> {
        // Without pruning, anvil keeps every block's state under ~/.foundry/anvil/tmp and a killed node never
        // deletes it (about 150 KB per block); 256 blocks of history are enough for every test's reorgs.
        let anvil = Anvil::at(foundry_bin("anvil")?)
            .args(["--prune-history", "256"])
            .args(args.iter().copied())
            .try_spawn()
            .map_err(|e| HarnessError::Start { service: "anvil", reason: e.to_string() })?;
        Ok(Self { anvil })
    }

    /// The HTTP JSON-RPC endpoint, e.g. `http://localhost:41234`.
    pub fn endpoint(&self) -> String {
        self.anvil.endpoint()
    }

    /// The TCP port the node listens on.
    pub fn port(&self) -> u16 {
        self.anvil.port()
    }

    /// The chain id (31337 unless changed with `--chain-id`).
    pub fn chain_id(&self) -> u64 {
        self.anvil.chain_id()
    }

    /// The node's process id, so tests can prove it is gone after drop.
    pub fn pid(&self) -> u32 {
        self.anvil.child().id()
    }

    /// The funded development account `index` (0..10) as a signer.
    pub fn signer(&self, index: usize) -> PrivateKeySigner {
        PrivateKeySigner::from_signing_key(self.anvil.keys()[index].clone().into())
    }

    /// The address of development account `index`.
    pub fn address(&self, index: usize) -> Address {
        self.anvil.addresses()[index]
    }

    /// A provider that signs with development account `index`.
    pub fn provider(&self, index: usize) -> DynProvider {
        ProviderBuilder::new()
            .wallet(EthereumWallet::from(self.signer(index)))
            .connect_http(self.anvil.endpoint_url())
            .erased()
    }
}
