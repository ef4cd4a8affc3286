//! The settlement engine's step against a real chain and indexer: a period closes, its overage is charged with
//! the usage root, the epoch is settled once the charge is indexed, recipients above the threshold are paid, due
//! subscriptions are renewed, and further steps plan nothing more. Only one engine holds the sender lease.

#[path = "../../indexer/tests/common/mod.rs"]
mod common;
#[path = "common/market.rs"]
mod market;

use market::{CUTOFF, Market};
use serde_json::json;
use subsettle_keeper::{
    engine::{Engine, Lease},
    outbox::{FeePolicy, Sender},
    renewals::RenewalPolicy,
    settlement::SettlementPolicy,
    signer::OperatorKey,
};

fn engine(market: &Market, dir: &std::path::Path) -> Engine {
    let path = dir.join("operator.key");
    std::fs::write(&path, alloy::hex::encode_prefixed(market.chain.signer(0).to_bytes())).unwrap();
    let sender = Sender {
        provider: market.chain.provider(0),
        key: OperatorKey::load(Some(&path)).unwrap(),
        chain_id: market.deployment.chain_id,
        fees: FeePolicy::default(),
    };
    Engine {
        pool: market.pool.clone(),
        sender,
        deployment: market.deployment.clone(),
        close: market.close_options(),
        renewals: RenewalPolicy { batch: 100, retry_interval: 3_600 },
        settlement: SettlementPolicy { batch: 100, retry_interval: 3_600, charge_window: 2 * 86_400, payout_threshold: 1_000_000 },
        epoch_interval: 86_400,
    }
}

async fn count(market: &Market, sql: &str) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned())).fetch_one(&market.pool).await.unwrap()
}

#[tokio::test]
async fn a_period_is_charged_settled_paid_out_and_renewed_exactly_once() {
    let market = Market::start(2, 50_000_000).await;
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(&market, dir.path());
    let now = market.now();
    // 600 images at 0.04 = 24 USDC: 4 USDC over the 20 USDC value allowance.
    let (status, _) = market.usage(&json!([market.event("x-1", 0, "image-gen", "images", "600", now)])).await;
    assert_eq!(status, 200);

    let report = engine.step(false).await.unwrap();
    assert!(report.actions.is_empty(), "nothing is due in the first period: {report:?}");

    market.advance(30 * 86_400 + CUTOFF as u64 + 60).await;
    let dry = engine.step(true).await.unwrap();
    assert_eq!(count(&market, "SELECT COUNT(*) FROM keeper.outbox").await, 0, "a dry run writes nothing");
    assert!(dry.actions.iter().any(|k| k.starts_with("renew:")), "{dry:?}");

    // Step 1: close both periods, gather the epoch, renew both subscriptions, charge the overage.
    let first = engine.step(false).await.unwrap();
    assert_eq!((first.periods_closed, first.epoch), (2, Some(1)), "{first:?}");
    let kinds: Vec<&str> = first.actions.iter().map(|k| k.split(':').next().unwrap()).collect();
    assert_eq!(kinds, ["renew", "charge"], "the settlement waits for the charge: {first:?}");
    assert_eq!(first.outbox.sent, 2);

    // Step 2: the charge is indexed, so the epoch settles.
    market.sync().await;
    let second = engine.step(false).await.unwrap();
    assert_eq!(second.outbox.confirmed, 2, "{second:?}");
    assert_eq!(second.actions, ["settle:1"]);

    // Step 3: credits are indexed; recipients above 1 USDC are paid.
    market.sync().await;
    let third = engine.step(false).await.unwrap();
    assert_eq!(third.outbox.confirmed, 1);
    assert!(third.actions.len() == 1 && third.actions[0].starts_with("claim:"), "{third:?}");
    market.sync().await;
    let fourth = engine.step(false).await.unwrap();
    assert_eq!(fourth.outbox.confirmed, 1);
    assert!(fourth.actions.is_empty(), "nothing more to do: {fourth:?}");

    assert_eq!(count(&market, "SELECT COUNT(*) FROM chain.renewals").await, 2);
    let charged: String = sqlx::query_scalar("SELECT SUM(amount)::TEXT FROM chain.usage_charges").fetch_one(&market.pool).await.unwrap();
    assert_eq!(charged, "4000000");
    let settled: String = sqlx::query_scalar("SELECT total::TEXT FROM chain.settlements WHERE settlement_id = 1").fetch_one(&market.pool).await.unwrap();
    assert_eq!(settled, (79_000_000u64 * 2 + 4_000_000).to_string());
    let paid: String =
        sqlx::query_scalar("SELECT SUM(amount)::TEXT FROM chain.claims WHERE succeeded").fetch_one(&market.pool).await.unwrap();
    assert_eq!(paid, settled, "every credit above the threshold was paid out");
    let states: Vec<String> = sqlx::query_scalar("SELECT DISTINCT state FROM keeper.outbox").fetch_all(&market.pool).await.unwrap();
    assert_eq!(states, ["confirmed"]);
}

#[tokio::test]
async fn only_one_keeper_holds_the_sender_lease() {
    let market = Market::start(1, 0).await;
    let first = Lease::try_acquire(&market.pool).await.unwrap().expect("the lease is free");
    assert!(Lease::try_acquire(&market.pool).await.unwrap().is_none(), "a second keeper waits");
    assert!(Lease::holder(&market.pool).await.unwrap().is_some());
    drop(first);
    let mut taken = None;
    for _ in 0..50 {
        taken = Lease::try_acquire(&market.pool).await.unwrap();
        if taken.is_some() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(taken.is_some(), "the lease is taken over once the first keeper is gone");
}
