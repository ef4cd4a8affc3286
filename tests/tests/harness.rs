//! Self-tests of the harness: the services it starts are real, isolated per test, and usable through the
//! `abi` crate's bindings and sqlx.

use alloy::primitives::U256;
use sqlx::Row;
use subsettle_abi::TestUSDC;
use subsettle_testkit::{TestChain, TestDatabase};

const USDC: u64 = 1_000_000; // one USDC in base units (6 decimals)

#[tokio::test]
async fn deploys_the_token_mints_transfers_and_reads_balances() {
    let chain = TestChain::spawn().unwrap();
    let (owner, alice, bob) = (chain.address(0), chain.address(1), chain.address(2));

    let token = TestUSDC::deploy(chain.provider(0), owner).await.unwrap();
    assert_eq!(token.decimals().call().await.unwrap(), 6);

    token.mint(alice, U256::from(1_000 * USDC)).send().await.unwrap().get_receipt().await.unwrap();
    let as_alice = TestUSDC::new(*token.address(), chain.provider(1));
    let receipt = as_alice.transfer(bob, U256::from(250 * USDC)).send().await.unwrap().get_receipt().await.unwrap();
    assert!(receipt.status());

    assert_eq!(token.balanceOf(alice).call().await.unwrap(), U256::from(750 * USDC));
    assert_eq!(token.balanceOf(bob).call().await.unwrap(), U256::from(250 * USDC));
    assert_eq!(token.totalSupply().call().await.unwrap(), U256::from(1_000 * USDC));
}

#[tokio::test]
async fn a_blacklisted_transfer_reverts_with_the_decoded_error() {
    let chain = TestChain::spawn().unwrap();
    let (owner, alice, bob) = (chain.address(0), chain.address(1), chain.address(2));
    let token = TestUSDC::deploy(chain.provider(0), owner).await.unwrap();
    token.mint(alice, U256::from(USDC)).send().await.unwrap().get_receipt().await.unwrap();
    token.blacklist(bob).send().await.unwrap().get_receipt().await.unwrap();

    let as_alice = TestUSDC::new(*token.address(), chain.provider(1));
    let err = as_alice.transfer(bob, U256::from(1)).call().await.unwrap_err();
    let decoded = err.as_decoded_interface_error::<TestUSDC::TestUSDCErrors>().expect("a TestUSDC error");
    assert!(
        matches!(decoded, TestUSDC::TestUSDCErrors::AccountBlacklisted(ref e) if e.account == bob),
        "{decoded:?}"
    );
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
    TestUSDC::deploy(chain_a.provider(0), chain_a.address(0)).await.unwrap();
    use alloy::providers::Provider;
    assert_eq!(chain_a.provider(0).get_block_number().await.unwrap(), 1);
    assert_eq!(chain_b.provider(0).get_block_number().await.unwrap(), 0);
}
