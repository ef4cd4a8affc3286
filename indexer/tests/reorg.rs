//! Reorgs on a real anvil (snapshot, then revert and mine a different history): the index must equal the new
//! canonical chain after a fork at depth 1 and at depth 10, and a fork below the finalized block must stop the
//! indexer with an error instead of corrupting data. A reorg that does not make the chain longer (`anvil_reorg`
//! at the same height, a revert to a shorter chain) must be rolled back by the running indexer with no new
//! block at all.

mod common;
#[path = "common/anvil_rpc.rs"]
mod anvil_rpc;

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use alloy::{
    eips::BlockNumberOrTag,
    primitives::U256,
    providers::Provider,
    rpc::types::Filter,
    sol_types::{SolCall, SolEvent},
};
use anvil_rpc::{ReorgTx, reorg, revert, snapshot};
use sqlx::PgPool;
use subsettle_abi::{Deployment, Subscriptions, usdc::FiatTokenV2_2};
use subsettle_indexer::{IndexerError, sync::Indexer};
use subsettle_testkit::{TestChain, TestDatabase};
use common::{DAY, deploy_contracts, indexer, u};

const USDC: u64 = 1_000_000;

/// Plan 1 ($79/month) and subscribers 1..=7 funded and approved.
async fn setup(chain: &TestChain, d: &Deployment) {
    let operator = chain.provider(0);
    confirm!(Subscriptions::new(d.subscriptions, &operator).createPlan(u(79 * USDC), u(30 * DAY), u(3 * DAY)));
    let token = FiatTokenV2_2::new(d.token, &operator);
    for i in 1..=7 {
        confirm!(token.mint(chain.address(i), u(10_000 * USDC)));
        confirm!(FiatTokenV2_2::new(d.token, chain.provider(i)).approve(d.subscriptions, U256::MAX));
    }
}

/// Mines `blocks` blocks, each with one contract event from subscriber `who` (a deposit of `amount`).
async fn deposits(chain: &TestChain, d: &Deployment, who: usize, blocks: usize, amount: u64) {
    let as_who = Subscriptions::new(d.subscriptions, chain.provider(who));
    for _ in 0..blocks {
        confirm!(as_who.deposit(u(amount)));
    }
}

/// The index holds exactly the logs of the canonical chain, each once, with one typed row each.
async fn assert_matches_chain(chain: &TestChain, d: &Deployment, pool: &PgPool) {
    let provider = chain.provider(0);
    let head = provider.get_block_number().await.unwrap();
    let logs = provider
        .get_logs(&Filter::new().address(vec![d.subscriptions, d.escrow]).from_block(d.start_block).to_block(head))
        .await
        .unwrap();
    let mut expected: Vec<(i64, i32, Vec<u8>)> = logs
        .iter()
        .map(|l| {
            (l.block_number.unwrap() as i64, l.log_index.unwrap() as i32, l.block_hash.unwrap().to_vec())
        })
        .collect();
    expected.sort();
    let stored: Vec<(i64, i32, Vec<u8>)> =
        sqlx::query_as("SELECT block_number, log_index, block_hash FROM chain.raw_logs ORDER BY 1, 2")
            .fetch_all(pool)
            .await
            .unwrap();
    assert_eq!(stored, expected, "raw logs equal the canonical chain's");
    let movements: i64 = sqlx::query_scalar("SELECT count(*) FROM chain.credit_movements").fetch_one(pool).await.unwrap();
    let deposit_logs = logs
        .iter()
        .filter(|l| l.topic0() == Some(&Subscriptions::CreditDeposited::SIGNATURE_HASH))
        .count();
    assert_eq!(movements as usize, deposit_logs, "typed rows follow the raw logs");
    // Every subscriber's credit in the view equals the contract's.
    let subs = Subscriptions::new(d.subscriptions, &provider);
    for i in 1..=7 {
        let who = chain.address(i);
        let credit: Option<String> =
            sqlx::query_scalar("SELECT credit::TEXT FROM chain.subscriber_credit WHERE subscriber = $1")
                .bind(who.to_vec())
                .fetch_optional(pool)
                .await
                .unwrap();
        assert_eq!(credit.unwrap_or_else(|| "0".into()), subs.creditOf(who).call().await.unwrap().to_string());
    }
    let cursor: i64 = sqlx::query_scalar("SELECT cursor_number FROM chain.deployments").fetch_one(pool).await.unwrap();
    assert_eq!(cursor as u64, head);
}

async fn reorg_at_depth(depth: usize) {
    let chain = TestChain::spawn().unwrap();
    let db = TestDatabase::create().await.unwrap();
    let d = deploy_contracts(&chain).await;
    setup(&chain, &d).await;
    deposits(&chain, &d, 1, 3, USDC).await;
    let (indexer, pool) = indexer(&chain, &db, &d).await;
    indexer.backfill_to(None).await.unwrap();

    // The history that will be dropped: `depth` blocks of deposits by subscriber 2.
    let provider = chain.provider(0);
    let snapshot: U256 = provider.raw_request("evm_snapshot".into(), ()).await.unwrap();
    deposits(&chain, &d, 2, depth, 2 * USDC).await;
    indexer.backfill_to(None).await.unwrap();
    assert_matches_chain(&chain, &d, &pool).await;

    // The new canonical history: one block longer, different events (subscriber 3).
    let reverted: bool = provider.raw_request("evm_revert".into(), (snapshot,)).await.unwrap();
    assert!(reverted);
    deposits(&chain, &d, 3, depth + 1, 3 * USDC).await;
    let progress = indexer.backfill_to(None).await.unwrap();
    assert_eq!(progress.rolled_back, depth as u64, "rolled back exactly to the fork point");
    assert_matches_chain(&chain, &d, &pool).await;
    let from_dropped: i64 = sqlx::query_scalar("SELECT count(*) FROM chain.credit_movements WHERE subscriber = $1")
        .bind(chain.address(2).to_vec())
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(from_dropped, 0, "nothing of the dropped history remains");
}

#[tokio::test]
async fn a_reorg_of_depth_1_is_rolled_back() {
    reorg_at_depth(1).await;
}

#[tokio::test]
async fn a_reorg_of_depth_10_is_rolled_back() {
    reorg_at_depth(10).await;
}

#[tokio::test]
async fn a_reorg_below_the_finalized_block_stops_the_indexer() {
    // One slot per epoch: anvil's finalized block trails the head by two blocks.
    let chain = TestChain::spawn_with(&["--slots-in-an-epoch", "1"]).unwrap();
    let db = TestDatabase::create().await.unwrap();
    let d = deploy_contracts(&chain).await;
    setup(&chain, &d).await;
    let provider = chain.provider(0);
    let snapshot: U256 = provider.raw_request("evm_snapshot".into(), ()).await.unwrap();
    deposits(&chain, &d, 2, 10, USDC).await;
    let (indexer, pool) = indexer(&chain, &db, &d).await;
    indexer.backfill_to(None).await.unwrap();
    let before: i64 = sqlx::query_scalar("SELECT count(*) FROM chain.raw_logs").fetch_one(&pool).await.unwrap();

    let _: bool = provider.raw_request("evm_revert".into(), (snapshot,)).await.unwrap();
    deposits(&chain, &d, 3, 11, USDC).await;
    let err = indexer.backfill_to(None).await.unwrap_err();
    assert!(matches!(err, IndexerError::DeepReorg { .. }), "{err}");
    let after: i64 = sqlx::query_scalar("SELECT count(*) FROM chain.raw_logs").fetch_one(&pool).await.unwrap();
    assert_eq!(after, before, "nothing was written or deleted");
}

#[tokio::test]
async fn a_final_cursor_block_that_changed_stops_the_backfill() {
    // The indexer is behind when the reorg happens and the new history is final by the time it resumes.
    let chain = TestChain::spawn_with(&["--slots-in-an-epoch", "1"]).unwrap();
    let db = TestDatabase::create().await.unwrap();
    let d = deploy_contracts(&chain).await;
    setup(&chain, &d).await;
    let provider = chain.provider(0);
    let snapshot: U256 = provider.raw_request("evm_snapshot".into(), ()).await.unwrap();
    deposits(&chain, &d, 2, 3, USDC).await;
    let (indexer, pool) = indexer(&chain, &db, &d).await;
    indexer.backfill_to(None).await.unwrap();
    let _: bool = provider.raw_request("evm_revert".into(), (snapshot,)).await.unwrap();
    deposits(&chain, &d, 3, 20, USDC).await; // far past the old head: the old cursor height is final now
    let err = indexer.backfill_to(None).await.unwrap_err();
    assert!(matches!(err, IndexerError::DeepReorg { .. }), "{err}");
    let stray: i64 = sqlx::query_scalar("SELECT count(*) FROM chain.credit_movements WHERE subscriber = $1")
        .bind(chain.address(3).to_vec())
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(stray, 0, "nothing of the new history was appended to the old one");
}

/// `Indexer::run` (polling every 100 ms) in the background, as the daemon runs it.
struct Running {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), IndexerError>>,
}

impl Running {
    fn start(indexer: Indexer) -> Self {
        let indexer = Arc::new(indexer);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            indexer
                .run(async {
                    let _ = stopped.await;
                })
                .await
        });
        Self { stop, task }
    }

    async fn stop(self) {
        let _ = self.stop.send(());
        self.task.await.unwrap().unwrap();
    }
}

/// Whether the index holds exactly the canonical chain's logs (by position and block hash) and its cursor is the
/// head block (number and hash).
async fn index_is_canonical(chain: &TestChain, d: &Deployment, pool: &PgPool) -> bool {
    let provider = chain.provider(0);
    let head = provider.get_block_by_number(BlockNumberOrTag::Latest).await.unwrap().unwrap().header;
    let cursor: Option<(Option<i64>, Option<Vec<u8>>)> =
        sqlx::query_as("SELECT cursor_number, cursor_hash FROM chain.deployments").fetch_optional(pool).await.unwrap();
    if cursor != Some((Some(head.number as i64), Some(head.hash.to_vec()))) {
        return false;
    }
    let filter = Filter::new().address(vec![d.subscriptions, d.escrow]).from_block(d.start_block).to_block(head.number);
    let logs = provider.get_logs(&filter).await.unwrap();
    let mut expected: Vec<(i64, i32, Vec<u8>)> = logs
        .iter()
        .map(|l| (l.block_number.unwrap() as i64, l.log_index.unwrap() as i32, l.block_hash.unwrap().to_vec()))
        .collect();
    expected.sort();
    let stored: Vec<(i64, i32, Vec<u8>)> =
        sqlx::query_as("SELECT block_number, log_index, block_hash FROM chain.raw_logs ORDER BY 1, 2")
            .fetch_all(pool)
            .await
            .unwrap();
    stored == expected
}

/// Waits up to `within` for the index to equal the canonical chain; returns how long it took.
async fn until_canonical(chain: &TestChain, d: &Deployment, pool: &PgPool, within: Duration, what: &str) -> Duration {
    let started = Instant::now();
    while !index_is_canonical(chain, d, pool).await {
        assert!(started.elapsed() < within, "{what}: the index still differs from the chain after {within:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    started.elapsed()
}

async fn movements_of(pool: &PgPool, who: alloy::primitives::Address) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM chain.credit_movements WHERE subscriber = $1")
        .bind(who.to_vec())
        .fetch_one(pool)
        .await
        .unwrap()
}

/// With 100 ms polls: "within a few polls", with room for a loaded machine.
const A_FEW_POLLS: Duration = Duration::from_secs(3);

#[tokio::test]
async fn a_reorg_that_keeps_the_height_is_rolled_back_with_no_new_block() {
    let chain = TestChain::spawn().unwrap();
    let db = TestDatabase::create().await.unwrap();
    let d = deploy_contracts(&chain).await;
    setup(&chain, &d).await;
    deposits(&chain, &d, 1, 3, USDC).await;
    let (indexer, pool) = indexer(&chain, &db, &d).await;
    let running = Running::start(indexer);

    // The history that will be replaced: the last two blocks, each with a deposit of subscriber 2.
    deposits(&chain, &d, 2, 2, 2 * USDC).await;
    until_canonical(&chain, &d, &pool, Duration::from_secs(10), "before the reorg").await;
    assert_eq!(movements_of(&pool, chain.address(2)).await, 2);

    // Same height, new blocks: the first holds a deposit of subscriber 3 instead, the second nothing. No block
    // is mined after it.
    let provider = chain.provider(0);
    let old_head = provider.get_block_by_number(BlockNumberOrTag::Latest).await.unwrap().unwrap().header;
    let deposit = Subscriptions::depositCall { amount: u(3 * USDC) }.abi_encode();
    reorg(&provider, 2, &[ReorgTx { from: chain.address(3), to: d.subscriptions, input: deposit.into(), block: 0 }])
        .await;
    let new_head = provider.get_block_by_number(BlockNumberOrTag::Latest).await.unwrap().unwrap().header;
    assert_eq!(new_head.number, old_head.number);
    assert_ne!(new_head.hash, old_head.hash);

    let took = until_canonical(&chain, &d, &pool, A_FEW_POLLS, "after a same-height reorg").await;
    eprintln!("same-height reorg rolled back and re-indexed in {took:?}");
    assert_eq!(movements_of(&pool, chain.address(2)).await, 0, "the dropped deposits are gone");
    assert_eq!(movements_of(&pool, chain.address(3)).await, 1, "the new canonical deposit is there");
    assert_matches_chain(&chain, &d, &pool).await;
    running.stop().await;
}

#[tokio::test]
async fn a_revert_to_a_shorter_chain_is_rolled_back_with_no_new_block() {
    let chain = TestChain::spawn().unwrap();
    let db = TestDatabase::create().await.unwrap();
    let d = deploy_contracts(&chain).await;
    setup(&chain, &d).await;
    deposits(&chain, &d, 1, 3, USDC).await;
    let (indexer, pool) = indexer(&chain, &db, &d).await;
    let running = Running::start(indexer);

    let provider = chain.provider(0);
    let snapshot = snapshot(&provider).await;
    let fork = provider.get_block_number().await.unwrap();
    deposits(&chain, &d, 2, 3, 2 * USDC).await;
    until_canonical(&chain, &d, &pool, Duration::from_secs(10), "before the revert").await;
    assert_eq!(movements_of(&pool, chain.address(2)).await, 3);

    // Back to the snapshot: the chain is three blocks shorter than the indexer's cursor, and stays so.
    revert(&provider, snapshot).await;
    assert_eq!(provider.get_block_number().await.unwrap(), fork);

    let took = until_canonical(&chain, &d, &pool, A_FEW_POLLS, "after a revert to a shorter chain").await;
    eprintln!("revert to a shorter chain rolled back in {took:?}");
    assert_eq!(movements_of(&pool, chain.address(2)).await, 0, "the dropped deposits are gone");
    assert_matches_chain(&chain, &d, &pool).await;
    running.stop().await;
}
