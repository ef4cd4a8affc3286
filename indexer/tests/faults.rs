//! A hostile RPC between the indexer and the node: `eth_getLogs` over more than 50 blocks is refused as too large
//! (error -32005, as hosted providers answer), every 5th request fails (HTTP 500 or JSON-RPC error -32603), and
//! some answers are late. The indexer must still index the whole history exactly once, shrinking its ranges and
//! retrying, and count the failures in its metrics.

mod common;

use std::time::{Duration, Instant};

use alloy::providers::Provider;
use common::{Faults, Proxy, ProxyStats, Workload, assert_index_matches_chain, deploy_contracts, generate_events};
use subsettle_indexer::{
    metrics::Metrics,
    source::{ChainSource, Retry},
    store::Store,
    sync::{Indexer, SyncOptions},
};
use subsettle_testkit::{TestChain, TestDatabase};

/// The value of metric `name` in a Prometheus text exposition.
fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no metric {name} in:\n{text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_flaky_size_limited_rpc_still_yields_a_complete_index() {
    let started = Instant::now();
    let chain = TestChain::spawn().unwrap();
    let db = TestDatabase::create().await.unwrap();
    let d = deploy_contracts(&chain).await;
    let history = generate_events(&chain, &d, Workload::default()).await;
    assert_eq!(history.renewals, 3_000);
    let provider = chain.provider(0);
    let head = provider.get_block_number().await.unwrap();
    eprintln!("history: {} blocks after {:.1?}", head - d.start_block, started.elapsed());

    let proxy = Proxy::start(
        &chain.endpoint(),
        Faults {
            max_log_blocks: Some(50),
            fail_every: Some(5),
            delay_every: Some(3),
            latency: Duration::ZERO,
        },
    )
    .await;
    let pool = db.pool().await.unwrap();
    let store = Store::open(pool.clone()).await.unwrap();
    let metrics = Metrics::default();
    let source = ChainSource::connect(
        &proxy.url,
        vec![d.subscriptions, d.escrow],
        1_000,
        Retry { attempts: 6, initial: Duration::from_millis(10), max: Duration::from_millis(100) },
        metrics.clone(),
    )
    .unwrap();
    let options = SyncOptions { poll_interval: Duration::from_millis(50), confirmations: 5, concurrency: 4 };
    let indexer = Indexer::new(d.clone(), source, store, options, metrics.clone());

    let progress = tokio::time::timeout(Duration::from_secs(40), indexer.backfill_to(None))
        .await
        .expect("the backfill finishes")
        .expect("the backfill succeeds despite the faults");
    assert_eq!(progress.indexed, Some(head));

    let state = assert_index_matches_chain(&pool, &d, &provider).await;
    assert_eq!(state.cursor, Some(head));
    let renewals: i64 = sqlx::query_scalar("SELECT count(*) FROM chain.renewals").fetch_one(&pool).await.unwrap();
    assert_eq!(renewals, 3_000);

    let stats = &proxy.stats;
    let (too_large, http, rpc) =
        (ProxyStats::get(&stats.too_large), ProxyStats::get(&stats.http_errors), ProxyStats::get(&stats.rpc_errors));
    eprintln!(
        "proxy: {} requests, {too_large} refused as too large, {http} HTTP 500, {rpc} JSON-RPC errors, {} delayed",
        ProxyStats::get(&stats.requests),
        ProxyStats::get(&stats.delayed)
    );
    assert!(too_large > 0 && http > 0 && rpc > 0, "every kind of fault was injected");
    let text = metrics.render();
    let counted = metric(&text, "subsettle_indexer_rpc_errors_total");
    assert!(counted > 0, "rpc errors counted:\n{text}");
    assert_eq!(metric(&text, "subsettle_indexer_indexed_block"), head);
    assert_eq!(metric(&text, "subsettle_indexer_events_total"), state.logs as u64);
    eprintln!("metrics: {counted} rpc errors; done in {:.1?}", started.elapsed());
}
