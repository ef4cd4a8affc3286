//! Self-tests of the harness: the services it starts are real, isolated per test, and usable through the
//! `abi` crate's bindings and sqlx.

use alloy::{
    primitives::{U256, keccak256},
    sol_types::SolValue,
};
use sqlx::Row;
use subsettle_abi::usdc::{FiatTokenProxy, FiatTokenV2_2};
use subsettle_testkit::{
    TestChain, TestDatabase,
    usdc::{accounts, deploy_usdc},
};

const USDC: u64 = 1_000_000; // one USDC in base units (6 decimals)

#[tokio::test]
async fn deploys_circles_usdc_as_circle_does_behind_its_proxy() {
    let chain = TestChain::spawn().unwrap();
    let local = deploy_usdc(&chain).await.unwrap();
    let token = FiatTokenV2_2::new(local.token, chain.provider(1));
    assert_eq!(token.name().call().await.unwrap(), "USD Coin");
    assert_eq!(token.symbol().call().await.unwrap(), "USDC");
    assert_eq!(token.currency().call().await.unwrap(), "USD");
    assert_eq!(token.decimals().call().await.unwrap(), 6);
    assert_eq!(token.version().call().await.unwrap(), "2");
    assert_eq!(token.pauser().call().await.unwrap(), chain.address(accounts::PAUSER));
    assert_eq!(token.blacklister().call().await.unwrap(), chain.address(accounts::BLACKLISTER));
    assert!(token.isMinter(chain.address(accounts::MINTER)).call().await.unwrap());
    // The EIP-712 domain permits and authorizations are signed for.
    let domain_type = keccak256("EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)");
    let domain = keccak256((domain_type, keccak256("USD Coin"), keccak256("2"), U256::from(chain.chain_id()), local.token).abi_encode());
    assert_eq!(token.DOMAIN_SEPARATOR().call().await.unwrap(), domain);
    // The proxy points at the implementation and answers its admin only.
    let as_admin = FiatTokenProxy::new(local.token, chain.provider(accounts::PROXY_ADMIN));
    assert_eq!(as_admin.implementation().call().await.unwrap(), local.implementation);
    // Nobody can initialize the implementation again (Circle's deploy initializes it with throw-away values).
    let implementation = FiatTokenV2_2::new(local.implementation, chain.provider(1));
    let again = implementation
        .initialize("X".into(), "X".into(), "X".into(), 6, chain.address(1), chain.address(1), chain.address(1), chain.address(1))
        .call()
        .await;
    assert!(again.is_err(), "the implementation was left open");
}

#[tokio::test]
async fn mints_transfers_and_reads_balances_on_usdc() {
    let chain = TestChain::spawn().unwrap();
    let (alice, bob) = (chain.address(1), chain.address(2));
    let local = deploy_usdc(&chain).await.unwrap();
    let token = FiatTokenV2_2::new(local.token, chain.provider(accounts::MINTER));
    token.mint(alice, U256::from(1_000 * USDC)).send().await.unwrap().get_receipt().await.unwrap();
    let as_alice = FiatTokenV2_2::new(local.token, chain.provider(1));
    let receipt = as_alice.transfer(bob, U256::from(250 * USDC)).send().await.unwrap().get_receipt().await.unwrap();
    assert!(receipt.status());

    assert_eq!(token.balanceOf(alice).call().await.unwrap(), U256::from(750 * USDC));
    assert_eq!(token.balanceOf(bob).call().await.unwrap(), U256::from(250 * USDC));
    assert_eq!(token.totalSupply().call().await.unwrap(), U256::from(1_000 * USDC));
}

#[tokio::test]
async fn a_blacklisted_recipient_or_a_paused_token_reverts_with_usdcs_reason() {
    let chain = TestChain::spawn().unwrap();
    let (alice, bob) = (chain.address(1), chain.address(2));
    let local = deploy_usdc(&chain).await.unwrap();
    let minter = FiatTokenV2_2::new(local.token, chain.provider(accounts::MINTER));
    minter.mint(alice, U256::from(USDC)).send().await.unwrap().get_receipt().await.unwrap();
    let blacklister = FiatTokenV2_2::new(local.token, chain.provider(accounts::BLACKLISTER));
    blacklister.blacklist(bob).send().await.unwrap().get_receipt().await.unwrap();

    let as_alice = FiatTokenV2_2::new(local.token, chain.provider(1));
    let err = as_alice.transfer(bob, U256::from(1)).call().await.unwrap_err();
    assert_eq!(err.as_revert_data().and_then(|d| alloy::sol_types::decode_revert_reason(&d)).as_deref(), Some("revert: Blacklistable: account is blacklisted"));

    let pauser = FiatTokenV2_2::new(local.token, chain.provider(accounts::PAUSER));
    pauser.pause().send().await.unwrap().get_receipt().await.unwrap();
    let err = as_alice.transfer(chain.address(3), U256::from(1)).call().await.unwrap_err();
    assert_eq!(err.as_revert_data().and_then(|d| alloy::sol_types::decode_revert_reason(&d)).as_deref(), Some("revert: Pausable: paused"));
}

#[tokio::test]
async fn creates_a_table_and_reads_a_row_back() {
    let db = TestDatabase::create().await.unwrap();
    let pool = db.pool().await.unwrap();
    sqlx::query("CREATE TABLE amounts (id INT PRIMARY KEY, amount NUMERIC(78,0) NOT NULL)")
        .execute(&pool)
        .await
        .unwrap();
    // The largest uint256 must survive the round trip exactly.
    let max = U256::MAX.to_string();
    sqlx::query("INSERT INTO amounts VALUES (1, $1::NUMERIC)").bind(&max).execute(&pool).await.unwrap();
    let row = sqlx::query("SELECT id, amount::TEXT AS amount FROM amounts").fetch_one(&pool).await.unwrap();
    assert_eq!(row.get::<i32, _>("id"), 1);
    assert_eq!(row.get::<String, _>("amount"), max);
}

#[tokio::test]
async fn concurrent_environments_get_their_own_ports_and_databases() {
    let (a, b) = tokio::join!(TestDatabase::create(), TestDatabase::create());
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_ne!(a.name(), b.name());
    let (chain_a, chain_b) = (TestChain::spawn().unwrap(), TestChain::spawn().unwrap());
    assert_ne!(chain_a.port(), chain_b.port());

    // A table in one database is invisible in the other.
    let (pool_a, pool_b) = (a.pool().await.unwrap(), b.pool().await.unwrap());
    sqlx::query("CREATE TABLE only_in_a (x INT)").execute(&pool_a).await.unwrap();
    let visible: bool = sqlx::query_scalar("SELECT to_regclass('only_in_a') IS NOT NULL")
        .fetch_one(&pool_b)
        .await
        .unwrap();
    assert!(!visible);

    // Deploying on one chain leaves the other untouched.
    deploy_usdc(&chain_a).await.unwrap();
    use alloy::providers::Provider;
    assert!(chain_a.provider(0).get_block_number().await.unwrap() > 0);
    assert_eq!(chain_b.provider(0).get_block_number().await.unwrap(), 0);
}
