//! Deploys the subsettle contracts and writes the [`Deployment`] descriptor the daemons read.
//!
//! Order: the token (a [`TestUSDC`] on a local chain; on a real L2 the operator passes the chain's USDC and nothing
//! is deployed for it), the [`SplitEscrow`], the [`Subscriptions`] contract pointing at it, and finally
//! `SplitEscrow.setSubscriptions`, which makes Subscriptions the escrow's only source of revenue.

use alloy::{
    network::EthereumWallet,
    primitives::{Address, U256},
    providers::{Provider, ProviderBuilder},
};
use subsettle_abi::{Deployment, SplitEscrow, Subscriptions, TestUSDC};
use tracing::info;

use crate::{KeeperError, signer::OperatorKey};

/// What to deploy and with which parameters.
#[derive(Debug, Clone)]
pub struct DeployPlan {
    /// JSON-RPC endpoint of the chain.
    pub rpc_url: String,
    /// Use this token instead of deploying a [`TestUSDC`].
    pub existing_token: Option<Address>,
    /// The keeper allowed to post usage charges and settle; the deployer when `None`.
    pub keeper: Option<Address>,
    /// Seconds after a period ends during which its usage can still be charged.
    pub charge_window_secs: u64,
    /// Seconds between a split change proposal and its effect.
    pub split_change_delay_secs: u64,
    /// The longest a dispute hold may last, in seconds.
    pub max_hold_secs: u64,
}

fn chain_error(action: &'static str) -> impl FnOnce(alloy::contract::Error) -> KeeperError {
    move |e| KeeperError::Chain { action, message: e.to_string() }
}

fn rpc_error(action: &'static str) -> impl FnOnce(alloy::transports::TransportError) -> KeeperError {
    move |e| KeeperError::Chain { action, message: e.to_string() }
}

/// Deploys what `plan` asks for with `key` as the owner and returns the descriptor.
pub async fn deploy(plan: &DeployPlan, key: &OperatorKey) -> Result<Deployment, KeeperError> {
    let url = plan.rpc_url.parse().map_err(|_| KeeperError::Chain {
        action: "parse --rpc-url",
        message: format!("`{}` is not a URL", plan.rpc_url),
    })?;
    let provider =
        ProviderBuilder::new().wallet(EthereumWallet::from(key.signer().clone())).connect_http(url);
    let owner = key.signer().address();
    let keeper = plan.keeper.unwrap_or(owner);

    let chain_id = provider.get_chain_id().await.map_err(rpc_error("eth_chainId"))?;
    let start_block = provider.get_block_number().await.map_err(rpc_error("eth_blockNumber"))?;

    let token = match plan.existing_token {
        Some(token) => token,
        None => {
            let token = TestUSDC::deploy(&provider, owner).await.map_err(chain_error("deploy TestUSDC"))?;
            info!(address = %token.address(), %owner, "deployed TestUSDC");
            *token.address()
        }
    };
    let escrow = SplitEscrow::deploy(
        &provider,
        token,
        owner,
        keeper,
        U256::from(plan.split_change_delay_secs),
        U256::from(plan.max_hold_secs),
    )
    .await
    .map_err(chain_error("deploy SplitEscrow"))?;
    info!(address = %escrow.address(), "deployed SplitEscrow");
    let subscriptions = Subscriptions::deploy(
        &provider,
        token,
        *escrow.address(),
        owner,
        keeper,
        U256::from(plan.charge_window_secs),
    )
    .await
    .map_err(chain_error("deploy Subscriptions"))?;
    info!(address = %subscriptions.address(), "deployed Subscriptions");

    let receipt = escrow
        .setSubscriptions(*subscriptions.address())
        .send()
        .await
        .map_err(chain_error("SplitEscrow.setSubscriptions"))?
        .get_receipt()
        .await
        .map_err(|e| KeeperError::Chain { action: "SplitEscrow.setSubscriptions receipt", message: e.to_string() })?;
    if !receipt.status() {
        return Err(KeeperError::Chain {
            action: "SplitEscrow.setSubscriptions",
            message: format!("transaction {} reverted", receipt.transaction_hash),
        });
    }

    Ok(Deployment {
        chain_id,
        token,
        subscriptions: *subscriptions.address(),
        escrow: *escrow.address(),
        start_block,
    })
}
