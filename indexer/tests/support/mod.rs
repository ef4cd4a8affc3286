//! Helpers shared by the indexer's integration tests.
#![allow(dead_code, unreachable_pub)]

use std::time::Duration;

use alloy::{
    hex,
    primitives::U256,
    providers::{DynProvider, Provider},
};
use sqlx::PgPool;
use subsettle_abi::Deployment;
use subsettle_indexer::{
    metrics::Metrics,
    source::{ChainSource, Retry},
    store::Store,
    sync::{Indexer, SyncOptions},
};
use subsettle_keeper::{
    deploy::{DeployPlan, deploy},
    signer::OperatorKey,
};
use subsettle_testkit::{TestChain, TestDatabase};

/// Seconds in a day.
pub const DAY: u64 = 86_400;

/// Sends a contract call and asserts it succeeded.
#[macro_export]
macro_rules! send {
    ($call:expr) => {{
        let receipt = $call.send().await.expect("send").get_receipt().await.expect("receipt");
        assert!(receipt.status(), "transaction reverted: {}", stringify!($call));
        receipt
    }};
}

/// `U256::from`.
pub fn u(v: u64) -> U256 {
    U256::from(v)
}

/// Deploys the contracts on `chain` with `subsettle-keeper deploy`, dev account 0 as owner and keeper.
pub async fn deploy_on(chain: &TestChain) -> Deployment {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("operator.key");
    std::fs::write(&path, hex::encode_prefixed(chain.signer(0).to_bytes())).unwrap();
    let plan = DeployPlan {
        rpc_url: chain.endpoint(),
        existing_token: None,
        keeper: None,
        charge_window_secs: 2 * DAY,
        split_change_delay_secs: 7 * DAY,
        max_hold_secs: 30 * DAY,
    };
    deploy(&plan, &OperatorKey::load(Some(&path)).unwrap()).await.unwrap()
}

/// Moves anvil's clock forward and mines a block.
pub async fn warp(provider: &DynProvider, seconds: u64) {
    let _: serde_json::Value = provider.raw_request("evm_increaseTime".into(), (seconds,)).await.unwrap();
    let _: serde_json::Value = provider.raw_request("evm_mine".into(), ()).await.unwrap();
}

/// An indexer of `deployment` on `chain` writing to `db`, with the pool to read the results.
pub async fn indexer(chain: &TestChain, db: &TestDatabase, deployment: &Deployment) -> (Indexer, PgPool) {
    let pool = db.pool().await.unwrap();
    let store = Store::open(pool.clone()).await.unwrap();
    let metrics = Metrics::default();
    let source = ChainSource::connect(
        &chain.endpoint(),
        vec![deployment.subscriptions, deployment.escrow],
        1_000,
        Retry::default(),
        metrics.clone(),
    )
    .unwrap();
    let options = SyncOptions { poll_interval: Duration::from_millis(100), confirmations: 5, concurrency: 2 };
    (Indexer::new(deployment.clone(), source, store, options, metrics), pool)
}
