//! Deploys the subsettle contracts and writes the [`Deployment`] descriptor the daemons read.
//!
//! On a local chain it deploys the USDC-like [`TestUSDC`]; against a real L2 the operator passes the chain's USDC
//! address and nothing is deployed for the token.

use alloy::{
    network::EthereumWallet,
    primitives::Address,
    providers::{Provider, ProviderBuilder},
};
use subsettle_abi::{Deployment, TestUSDC};
use tracing::info;

use crate::{KeeperError, signer::OperatorKey};

/// What to deploy.
#[derive(Debug, Clone)]
pub struct DeployPlan {
    /// JSON-RPC endpoint of the chain.
    pub rpc_url: String,
    /// Use this token instead of deploying a [`TestUSDC`].
    pub existing_token: Option<Address>,
}

/// Deploys what `plan` asks for with `key` as the owner and returns the descriptor.
pub async fn deploy(plan: &DeployPlan, key: &OperatorKey) -> Result<Deployment, KeeperError> {
    let url = plan.rpc_url.parse().map_err(|_| KeeperError::Chain {
        action: "parse --rpc-url",
        message: format!("`{}` is not a URL", plan.rpc_url),
    })?;
    let provider =
        ProviderBuilder::new().wallet(EthereumWallet::from(key.signer().clone())).connect_http(url);
    let chain_err = |action| move |e: alloy::contract::Error| KeeperError::Chain { action, message: e.to_string() };

    let chain_id = provider
        .get_chain_id()
        .await
        .map_err(|e| KeeperError::Chain { action: "eth_chainId", message: e.to_string() })?;
    let start_block = provider
        .get_block_number()
        .await
        .map_err(|e| KeeperError::Chain { action: "eth_blockNumber", message: e.to_string() })?;

    let token = match plan.existing_token {
        Some(token) => token,
        None => {
            let owner = key.signer().address();
            let token = TestUSDC::deploy(&provider, owner).await.map_err(chain_err("deploy TestUSDC"))?;
            info!(address = %token.address(), %owner, "deployed TestUSDC");
            *token.address()
        }
    };
    Ok(Deployment { chain_id, token, start_block })
}
