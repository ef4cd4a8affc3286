//! Overlapping range commits against a real Postgres: a commit whose predecessor is still open writes its rows at
//! once but becomes visible only after the predecessor commits, and fails (leaving nothing) when the predecessor
//! fails. This is what lets the backfill keep two commits open without ever exposing a gap.

use std::time::Duration;

use alloy::primitives::Address;
use subsettle_abi::Deployment;
use subsettle_indexer::{
    IndexerError,
    store::{Batch, BlockRef, Cursor, CursorTurn, RawLog, Store},
};
use subsettle_testkit::TestDatabase;
use tokio::{sync::oneshot, task::JoinHandle};

fn deployment() -> Deployment {
    Deployment { chain_id: 31_337, token: Address::repeat_byte(1), subscriptions: Address::repeat_byte(2), escrow: Address::repeat_byte(3), start_block: 1 }
}

/// A range ending at block `last` with one raw log per block from `first`.
fn range(first: i64, last: i64) -> (Batch, Cursor) {
    let hash = |n: i64| [n.to_be_bytes().to_vec(), vec![0xab; 24]].concat();
    let raw = (first..=last)
        .map(|n| RawLog {
            block_number: n,
            log_index: 0,
            block_hash: hash(n),
            block_time: 1_700_000_000 + n,
            tx_hash: vec![0xcd; 32],
            tx_index: 0,
            address: vec![2; 20],
            topics: vec![vec![0xef; 32]],
            data: vec![],
        })
        .collect();
    let blocks = vec![BlockRef { number: last, hash: hash(last), parent_hash: hash(last - 1) }];
    (Batch { raw, typed: vec![], blocks }, Cursor { number: last, hash: hash(last) })
}

async fn indexed(pool: &sqlx::PgPool) -> (Option<i64>, i64) {
    let cursor: Option<i64> = sqlx::query_scalar("SELECT cursor_number FROM chain.deployments").fetch_one(pool).await.unwrap();
    let logs: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM chain.raw_logs").fetch_one(pool).await.unwrap();
    (cursor, logs)
}

/// Starts the commit of `(batch, cursor)` after `expected`, its cursor update waiting for `wait`.
fn spawn_commit(store: &Store, d: &Deployment, expected: Cursor, (batch, cursor): (Batch, Cursor), wait: oneshot::Receiver<()>) -> JoinHandle<Result<(), IndexerError>> {
    let (store, d) = (store.clone(), d.clone());
    tokio::spawn(async move { store.commit(&d, Some(&expected), &batch, &cursor, CursorTurn { wait: Some(wait), done: None }).await })
}

#[tokio::test]
async fn a_commit_overlapping_its_predecessor_becomes_visible_after_it_and_fails_with_it() {
    let db = TestDatabase::create().await.unwrap();
    let pool = db.pool().await.unwrap();
    let store = Store::open(pool.clone()).await.unwrap();
    let d = deployment();
    store.register(&d).await.unwrap();
    let first_cursor = range(1, 10).1;

    // The predecessor has moved the cursor but not committed yet (held open here, as a slow commit would).
    let mut predecessor = pool.begin().await.unwrap();
    sqlx::query("INSERT INTO chain.raw_logs (chain_id, block_number, log_index, block_hash, block_time, tx_hash, tx_index, address, topics, data)
                 SELECT 31337, n, 0, '\\x00', 0, '\\x00', 0, '\\x02', '{}', '\\x' FROM generate_series(1, 10) n")
        .execute(&mut *predecessor)
        .await
        .unwrap();
    sqlx::query("UPDATE chain.deployments SET cursor_number = $1, cursor_hash = $2")
        .bind(first_cursor.number)
        .bind(&first_cursor.hash)
        .execute(&mut *predecessor)
        .await
        .unwrap();
    let (moved, wait) = oneshot::channel();
    moved.send(()).unwrap();
    let second_commit = spawn_commit(&store, &d, first_cursor, range(11, 20), wait);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!second_commit.is_finished(), "the second range waits for the first to commit (and does not give up)");
    assert_eq!(indexed(&pool).await, (None, 0), "nothing of either range is visible yet");
    predecessor.commit().await.unwrap();
    second_commit.await.unwrap().expect("the second range commits once the first has");
    assert_eq!(indexed(&pool).await, (Some(20), 20));

    // Two real commits, the later one started first.
    let (third, third_cursor) = range(21, 30);
    let (third_done, fourth_wait) = oneshot::channel();
    let fourth_commit = spawn_commit(&store, &d, third_cursor.clone(), range(31, 40), fourth_wait);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!fourth_commit.is_finished());
    let turn = CursorTurn { wait: None, done: Some(third_done) };
    store.commit(&d, Some(&range(11, 20).1), &third, &third_cursor, turn).await.unwrap();
    fourth_commit.await.unwrap().expect("in order");
    assert_eq!(indexed(&pool).await, (Some(40), 40));

    // A predecessor that fails before its cursor update takes the next commit down with it: nothing is written.
    let (failed, wait) = oneshot::channel::<()>();
    drop(failed);
    let refused = spawn_commit(&store, &d, range(31, 40).1, range(41, 50), wait).await.unwrap().unwrap_err();
    assert!(refused.to_string().contains("cursor of chain 31337 moved"), "{refused}");
    assert_eq!(indexed(&pool).await, (Some(40), 40));
}
