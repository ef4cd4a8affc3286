//! Deploys the subsettle contracts and writes the [`Deployment`] descriptor the daemons read.
//!
//! Order: the token (on a real L2 the operator passes the chain's USDC and nothing is deployed for it; on a local
//! chain Circle's USDC is deployed as Circle deploys it, see [`subsettle_abi::usdc`]), the [`SplitEscrow`], the [`Subscriptions`] contract pointing at it, and finally
//! `SplitEscrow.setSubscriptions`, which makes Subscriptions the escrow's only source of revenue.

use alloy::{
    network::EthereumWallet,
    primitives::{Address, U256, address},
    providers::{Provider, ProviderBuilder},
};
use subsettle_abi::{
    Deployment, SplitEscrow, Subscriptions,
    usdc::{self, Roles},
};
use tracing::info;

use crate::{KeeperError, signer::OperatorKey};

/// What to deploy and with which parameters.
#[derive(Debug, Clone)]
pub struct DeployPlan {
    /// JSON-RPC endpoint of the chain.
    pub rpc_url: String,
    /// The settlement token: the chain's USDC, or Circle's USDC deployed here.
    pub token: TokenSource,
    /// The keeper allowed to post usage charges and settle; the deployer when `None`.
    pub keeper: Option<Address>,
    /// Seconds after a period ends during which its usage can still be charged.
    pub charge_window_secs: u64,
    /// Seconds between a split change proposal and its effect.
    pub split_change_delay_secs: u64,
    /// The longest a dispute hold may last, in seconds.
    pub max_hold_secs: u64,
}

/// Where the settlement token comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenSource {
    /// The token already on the chain (its USDC on a real L2).
    Existing(Address),
    /// Circle's `FiatTokenV2_2` behind a `FiatTokenProxy`, deployed here (a local chain only): the deployer holds
    /// every role but the proxy admin's ([`LOCAL_USDC_PROXY_ADMIN`]) and may mint without limit.
    LocalUsdc,
}

/// The proxy admin of a locally deployed USDC: an address no one holds a key to (the last 20 bytes of
/// `keccak256("subsettle: local USDC proxy admin")`), so the local token can never be upgraded. It must differ
/// from every account that uses the token: USDC's proxy does not forward its admin's calls.
pub const LOCAL_USDC_PROXY_ADMIN: Address = address!("0x0D3651f8B1876edf0900f8A86430cbeEafC7B626");

/// Chains `--local-usdc` deploys to: anvil's and Hardhat's default, and Ganache's. A mintable look-alike of USDC at
/// a new address on any other chain would only mislead.
pub const LOCAL_CHAIN_IDS: [u64; 2] = [31337, 1337];

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

    let token = match plan.token {
        TokenSource::Existing(token) => token,
        TokenSource::LocalUsdc => deploy_local_usdc(&provider, owner, chain_id).await?,
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

/// Deploys Circle's USDC with `owner` in every role but the proxy admin's, on a local chain only.
async fn deploy_local_usdc(provider: &impl Provider, owner: Address, chain_id: u64) -> Result<Address, KeeperError> {
    if !LOCAL_CHAIN_IDS.contains(&chain_id) {
        return Err(KeeperError::Chain {
            action: "deploy --local-usdc",
            message: format!(
                "chain {chain_id} is not a local chain ({LOCAL_CHAIN_IDS:?}): pass the chain's USDC with --token"
            ),
        });
    }
    let roles = Roles {
        proxy_admin: LOCAL_USDC_PROXY_ADMIN,
        owner,
        master_minter: owner,
        pauser: owner,
        blacklister: owner,
        minter: owner,
        minter_allowance: U256::MAX,
    };
    let local = usdc::deploy_local(provider, owner, &roles)
        .await
        .map_err(|e| KeeperError::Chain { action: "deploy --local-usdc", message: e.to_string() })?;
    info!(token = %local.token, implementation = %local.implementation, %owner, "deployed Circle's USDC (FiatTokenV2_2 behind FiatTokenProxy)");
    Ok(local.token)
}

#[cfg(test)]
mod tests {
    use alloy::primitives::keccak256;

    use super::*;

    #[test]
    fn the_local_proxy_admin_is_the_hash_it_is_documented_as() {
        let hash = keccak256("subsettle: local USDC proxy admin");
        assert_eq!(LOCAL_USDC_PROXY_ADMIN, Address::from_slice(&hash[12..]));
    }
}
