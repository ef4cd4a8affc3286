//! Circle's USDC on a test chain, deployed as Circle deploys it (see [`subsettle_abi::usdc`]), with each role on
//! its own development account so that a test can act as the pauser or the blacklister explicitly.

use alloy::primitives::U256;
use subsettle_abi::usdc::{self, LocalUsdc, Roles, UsdcError};

use crate::TestChain;

/// The development account that holds each USDC role on a test chain.
pub mod accounts {
    /// Owner, master minter and minter: the deployer.
    pub const MINTER: usize = 0;
    /// The proxy admin (it cannot use the token).
    pub const PROXY_ADMIN: usize = 9;
    /// The pauser.
    pub const PAUSER: usize = 8;
    /// The blacklister.
    pub const BLACKLISTER: usize = 7;
}

/// Deploys USDC on `chain` with the roles of [`accounts`]; the minter may mint without limit.
pub async fn deploy_usdc(chain: &TestChain) -> Result<LocalUsdc, UsdcError> {
    let minter = chain.address(accounts::MINTER);
    let roles = Roles {
        proxy_admin: chain.address(accounts::PROXY_ADMIN),
        owner: minter,
        master_minter: minter,
        pauser: chain.address(accounts::PAUSER),
        blacklister: chain.address(accounts::BLACKLISTER),
        minter,
        minter_allowance: U256::MAX,
    };
    usdc::deploy_local(&chain.provider(accounts::MINTER), minter, &roles).await
}

