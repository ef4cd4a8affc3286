//! Subscriber wallets on the local chain: gas money from anvil, USDC minted by the token's owner, and the one
//! approval a subscriber ever gives, as an `approve` transaction or as an EIP-2612 permit signed off-chain and
//! handed to `subscribeWithPermit` (the subscriber then sends a single transaction).

use std::time::{Duration, Instant};

use alloy::{
    network::EthereumWallet,
    primitives::{Address, B256, U256},
    providers::{DynProvider, Provider, ProviderBuilder},
    rpc::types::TransactionReceipt,
    signers::{SignerSync, local::PrivateKeySigner},
    sol_types::{Eip712Domain, SolStruct},
};
use anyhow::{Context, bail, ensure};
use subsettle_abi::{Deployment, Subscriptions, usdc::FiatTokenV2_2};

use crate::cast::Profile;

alloy::sol! {
    /// EIP-2612's permit, as the token hashes it.
    struct Permit { address owner; address spender; uint256 value; uint256 nonce; uint256 deadline; }
}

/// The chain as the demo's participants see it.
#[derive(Debug, Clone)]
pub struct Chain {
    /// JSON-RPC endpoint.
    pub rpc_url: String,
    /// A provider without a wallet, for reads, time travel and receipts.
    pub reader: DynProvider,
    /// The contracts.
    pub deployment: Deployment,
    /// The token's owner, who mints test USDC.
    pub minter: PrivateKeySigner,
}

impl Chain {
    /// Connects to `rpc_url`.
    pub fn connect(rpc_url: &str, deployment: Deployment, minter: PrivateKeySigner) -> anyhow::Result<Self> {
        let url = rpc_url.parse().with_context(|| format!("--rpc-url: `{rpc_url}` is not a URL"))?;
        Ok(Self { rpc_url: rpc_url.to_owned(), reader: ProviderBuilder::new().connect_http(url).erased(), deployment, minter })
    }

    /// A provider that signs with `signer`.
    pub fn as_signer(&self, signer: &PrivateKeySigner) -> DynProvider {
        let url = self.rpc_url.parse().expect("checked in connect");
        ProviderBuilder::new().wallet(EthereumWallet::from(signer.clone())).connect_http(url).erased()
    }

    /// Waits for the receipt of `hash` and fails when the transaction reverted. Polls every few milliseconds:
    /// anvil mines at once.
    pub async fn confirm(&self, what: &str, hash: B256) -> anyhow::Result<TransactionReceipt> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(receipt) = self.reader.get_transaction_receipt(hash).await.with_context(|| format!("{what}: receipt"))? {
                ensure!(receipt.status(), "{what}: transaction {hash} reverted");
                return Ok(receipt);
            }
            if Instant::now() > deadline {
                bail!("{what}: transaction {hash} was not mined in 30 s");
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Gives `who` gas money and `usdc` base units of the token.
    pub async fn fund(&self, who: Address, usdc: u64) -> anyhow::Result<()> {
        let _: serde_json::Value = self
            .reader
            .raw_request("anvil_setBalance".into(), (who, U256::from(10u128.pow(18))))
            .await
            .context("anvil_setBalance")?;
        self.mint(who, usdc).await
    }

    /// Mints `usdc` base units to `who` (the token's owner only).
    pub async fn mint(&self, who: Address, usdc: u64) -> anyhow::Result<()> {
        let provider = self.as_signer(&self.minter);
        let pending = FiatTokenV2_2::new(self.deployment.token, &provider).mint(who, U256::from(usdc)).send().await.context("mint")?;
        self.confirm("mint", *pending.tx_hash()).await.map(drop)
    }

    /// Subscribes `profile` to `plan_id` with its cap, approving once (a transaction or a permit) for a year of
    /// the plan plus the cap each month. Returns the subscription id.
    pub async fn subscribe(&self, profile: &Profile, plan_id: u64, plan_price: u64) -> anyhow::Result<u64> {
        let who = &profile.signer;
        let provider = self.as_signer(who);
        let subscriptions = Subscriptions::new(self.deployment.subscriptions, &provider);
        let allowance = U256::from((plan_price + profile.cap) * 12);
        let (plan, cap) = (U256::from(plan_id), U256::from(profile.cap));
        let pending = if profile.permit {
            let deadline = U256::from(self.now().await? + 3_600);
            let (v, r, s) = self.sign_permit(who, allowance, deadline).await?;
            subscriptions.subscribeWithPermit(plan, cap, allowance, deadline, v, r, s).send().await.context("subscribeWithPermit")?
        } else {
            let token = FiatTokenV2_2::new(self.deployment.token, &provider);
            let approval = token.approve(self.deployment.subscriptions, allowance).send().await.context("approve")?;
            self.confirm("approve", *approval.tx_hash()).await?;
            subscriptions.subscribe(plan, cap).send().await.context("subscribe")?
        };
        let receipt = self.confirm("subscribe", *pending.tx_hash()).await?;
        let event = receipt.decoded_log::<Subscriptions::Subscribed>().context("subscribe: no Subscribed event")?;
        u64::try_from(event.id).context("subscription id")
    }

    async fn sign_permit(&self, who: &PrivateKeySigner, value: U256, deadline: U256) -> anyhow::Result<(u8, B256, B256)> {
        let token = FiatTokenV2_2::new(self.deployment.token, &self.reader);
        // USDC's EIP-712 domain: its name ("USD Coin") and version ("2"), read from the token.
        let name = token.name().call().await.context("token name")?;
        let version = token.version().call().await.context("token version")?;
        let nonce = token.nonces(who.address()).call().await.context("permit nonce")?;
        let domain = Eip712Domain::new(
            Some(name.into()),
            Some(version.into()),
            Some(U256::from(self.deployment.chain_id)),
            Some(self.deployment.token),
            None,
        );
        let permit = Permit { owner: who.address(), spender: self.deployment.subscriptions, value, nonce, deadline };
        let signature = who.sign_hash_sync(&permit.eip712_signing_hash(&domain)).context("signing the permit")?;
        Ok((27 + u8::from(signature.v()), signature.r().into(), signature.s().into()))
    }

    /// Cancels subscription `id` from its subscriber's wallet.
    pub async fn cancel(&self, profile: &Profile, id: u64) -> anyhow::Result<()> {
        let provider = self.as_signer(&profile.signer);
        let pending = Subscriptions::new(self.deployment.subscriptions, &provider).cancel(U256::from(id)).send().await.context("cancel")?;
        self.confirm("cancel", *pending.tx_hash()).await.map(drop)
    }

    /// The latest block's timestamp.
    pub async fn now(&self) -> anyhow::Result<u64> {
        let block = self
            .reader
            .get_block_by_number(alloy::eips::BlockNumberOrTag::Latest)
            .await
            .context("eth_getBlockByNumber")?
            .context("no latest block")?;
        Ok(block.header.timestamp)
    }
}
