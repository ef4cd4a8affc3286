//! Admission when several `serve` processes share one Postgres (issue #16, item 12): three real
//! `subsettle-keeper serve` processes on one database take concurrent batches from several clients each, for
//! subscribers with small overage caps and a pay-as-you-go wallet that can pay little. Afterwards, priced with the
//! keeper's own pricing, no subscriber has usage admitted beyond its cap by more than one event's price, and the
//! wallet none beyond what it can pay; every refusal is a 402 naming why, never an error. The same under
//! concurrent batches on one `serve`. And in one process: a second keeper judges on what the first admitted
//! without reloading, and usage stored before the admission ledger existed counts against the cap.

#[path = "../../indexer/tests/common/mod.rs"]
mod common;
#[path = "common/market.rs"]
mod market;
#[path = "common/serve.rs"]
mod serve;

use std::{collections::HashMap, sync::Arc};

use alloy::primitives::Address;
use common::{GRACE, PERIOD, USDC, u};
use market::Market;
use rust_decimal::Decimal;
use serde_json::{Value, json};
use serve::Serve;
use subsettle_abi::{Subscriptions, usdc::FiatTokenV2_2};
use subsettle_keeper::metering::{
    catalog::{self, Snapshot},
    pricing::{Allowance, MeteredEvent, PeriodTerms, price_period},
};

/// The paid subscribers' overage cap: 1 USDC on top of the plan's included 20 USDC of value.
const CAP: u64 = USDC;
/// What the pay-as-you-go wallet can pay: 2 USDC minted and approved, with a cap far above it.
const PAYABLE: u64 = 2 * USDC;

/// A subscriber under load: wallet, subscription, plan, and the bound its admitted overage must keep.
#[derive(Debug, Clone, Copy)]
struct Subscriber {
    wallet: Address,
    id: u64,
    plan: u64,
    /// The cap (or what the wallet can pay) the admitted overage must not pass by more than one event's price.
    bound: u128,
    /// The bound is funds: not passed at all.
    funds: bool,
}

/// Three paid subscribers with a 1 USDC cap and a pay-as-you-go wallet that can pay 2 USDC (cap 100 USDC).
async fn subscribers(market: &Market) -> Vec<Subscriber> {
    let mut all: Vec<Subscriber> =
        market.subscribers.iter().map(|(wallet, id)| Subscriber { wallet: *wallet, id: *id, plan: market.plan, bound: CAP.into(), funds: false }).collect();
    let operator = market.operator();
    let receipt = confirm!(Subscriptions::new(market.deployment.subscriptions, &operator).createPlan(u(0), u(PERIOD), u(GRACE)));
    let plan = receipt.decoded_log::<Subscriptions::PlanCreated>().expect("PlanCreated").planId;
    let account = 4;
    let wallet = market.chain.address(account);
    confirm!(FiatTokenV2_2::new(market.deployment.token, &operator).mint(wallet, u(PAYABLE)));
    let provider = market.chain.provider(account);
    confirm!(FiatTokenV2_2::new(market.deployment.token, &provider).approve(market.deployment.subscriptions, u(PAYABLE)));
    let receipt = confirm!(Subscriptions::new(market.deployment.subscriptions, &provider).subscribe(plan, u(100 * USDC)));
    let id = receipt.decoded_log::<Subscriptions::Subscribed>().expect("Subscribed").id.to::<u64>();
    market.sync().await;
    all.push(Subscriber { wallet, id, plan: plan.to::<u64>(), bound: PAYABLE.into(), funds: true });
    all
}

/// Event `k` of client `client`'s batch `batch`: 1 to 10 images (0.04 to 0.40 USDC) for one of the subscribers.
fn event(subscribers: &[Subscriber], client: usize, batch: usize, k: usize, at: i64) -> Value {
    let n = client * 7_919 + batch * 131 + k * 17;
    let who = &subscribers[(k + client + batch) % subscribers.len()];
    json!({
        "event_id": format!("c{client}-b{batch}-e{k}"),
        "subscriber": who.wallet.to_string(),
        "model": "image-gen",
        "meter": "images",
        "quantity": (1 + n % 10).to_string(),
        "timestamp": at,
    })
}

/// Outcome counts of every batch sent, by status; panics on any answer other than 200 or 402.
#[derive(Debug, Default)]
struct Sent {
    by_status: HashMap<String, usize>,
    /// 402s per subscription.
    refused: HashMap<u64, usize>,
}

/// `clients` client tasks per `serve`, each posting `batches` batches of `size` events, all at once.
async fn load(serves: &[Arc<Serve>], subscribers: &[Subscriber], clients: usize, batches: usize, size: usize, at: i64) -> Sent {
    let by_wallet: Arc<HashMap<String, u64>> = Arc::new(subscribers.iter().map(|s| (s.wallet.to_string(), s.id)).collect());
    let mut tasks = Vec::new();
    for (s, serve) in serves.iter().enumerate() {
        for c in 0..clients {
            let (serve, subscribers, by_wallet) = (serve.clone(), subscribers.to_vec(), by_wallet.clone());
            let client = s * clients + c;
            tasks.push(tokio::spawn(async move {
                let mut sent = Sent::default();
                for b in 0..batches {
                    let events: Vec<Value> = (0..size).map(|k| event(&subscribers, client, b, k, at)).collect();
                    let (status, report) = serve.usage(&Value::Array(events.clone())).await;
                    assert!(status == 200 || status == 402, "client {client} batch {b}: {status} {report}");
                    for (event, result) in events.iter().zip(report["results"].as_array().expect("results")) {
                        let state = result["status"].as_str().unwrap().to_owned();
                        if state == "payment_required" {
                            let reason = result["reason"].as_str().unwrap();
                            assert!(reason.contains("overage cap") || reason.contains("cannot pay"), "{result}");
                            *sent.refused.entry(by_wallet[event["subscriber"].as_str().unwrap()]).or_default() += 1;
                        }
                        *sent.by_status.entry(state).or_default() += 1;
                    }
                }
                sent
            }));
        }
    }
    let mut total = Sent::default();
    for task in tasks {
        let sent = task.await.expect("client task");
        for (k, v) in sent.by_status {
            *total.by_status.entry(k).or_default() += v;
        }
        for (k, v) in sent.refused {
            *total.refused.entry(k).or_default() += v;
        }
    }
    total
}

/// The overage of `sub`'s stored usage, priced by the keeper's pricing (each event at its price, the plan's
/// allowance first), and the price of its dearest event alone.
async fn admitted(market: &Market, snapshot: &Snapshot, sub: &Subscriber) -> (u128, u128, usize) {
    let rows: Vec<(String, String, String, Decimal, i64)> =
        sqlx::query_as("SELECT event_id, model_id, meter, quantity, occurred_at_ms FROM keeper.usage_events WHERE subscription_id = $1")
            .bind(sub.id as i64)
            .fetch_all(&market.pool)
            .await
            .unwrap();
    let events: Vec<MeteredEvent> = rows
        .into_iter()
        .map(|(event_id, model, meter, quantity, occurred_at_ms)| MeteredEvent { event_id, model, meter, quantity, occurred_at_ms, adjustment_of: None })
        .collect();
    let terms = |allowance: Allowance| PeriodTerms { fee: 0, overage_cap: u128::MAX, allowance, default_split: Some(market.splits[0]), decimals: 6 };
    let overage = price_period(&snapshot.catalog, &terms(snapshot.allowance(sub.plan, market.now())), &events).unwrap().overage_amount;
    let dearest = events
        .iter()
        .map(|e| price_period(&snapshot.catalog, &terms(Allowance::default()), std::slice::from_ref(e)).unwrap().overage_amount)
        .max()
        .unwrap_or(0);
    (overage, dearest, events.len())
}

/// Checks every subscriber's admitted overage against its bound, and that the bound was reached (the load did
/// not stop short of it).
async fn check_bounds(market: &Market, subscribers: &[Subscriber], sent: &Sent) {
    let snapshot = catalog::load(&market.pool).await.unwrap();
    let mut report = Vec::new();
    let mut failures = Vec::new();
    for sub in subscribers {
        let (overage, dearest, stored) = admitted(market, &snapshot, sub).await;
        let refused = sent.refused.get(&sub.id).copied().unwrap_or(0);
        report.push(format!(
            "subscription {}: {stored} events stored, {refused} refused, overage {overage} against {} {}",
            sub.id,
            if sub.funds { "payable" } else { "cap" },
            sub.bound
        ));
        let limit = if sub.funds { sub.bound } else { sub.bound + dearest };
        if overage > limit {
            let allowed = if sub.funds { 0 } else { dearest };
            failures.push(format!("subscription {}: overage {overage} > {limit} (bound {} + {allowed}, one event's price)", sub.id, sub.bound));
        }
        if overage + dearest < sub.bound || refused == 0 {
            failures.push(format!("subscription {}: the load did not reach the bound (overage {overage}, {refused} refused)", sub.id));
        }
    }
    assert!(failures.is_empty(), "{}\n{}\n{sent:?}", failures.join("\n"), report.join("\n"));
    eprintln!("{}", report.join("\n"));
}

#[tokio::test(flavor = "multi_thread")]
async fn three_replicas_admit_at_most_one_events_price_beyond_any_cap() {
    let market = Market::start(3, CAP).await;
    let subscribers = subscribers(&market).await;
    let dir = tempfile::tempdir().unwrap();
    let endpoint = market.chain.endpoint();
    let mut serves = Vec::new();
    for _ in 0..3 {
        serves.push(Arc::new(Serve::start(&market, &endpoint, dir.path(), &["--usage-reload-interval", "1s"]).await));
    }
    for serve in &serves {
        let payg = subscribers[3].wallet;
        serve.wait_for(payg, "the pay-as-you-go wallet's funds", |a| a["funds"]["payable"] == PAYABLE.to_string()).await;
    }
    // 3 serves x 3 clients x 8 batches x 30 events: 540 events (about 120 USDC) per subscriber, of which the cap
    // and the funds admit some 21 and 2 USDC.
    let sent = load(&serves, &subscribers, 3, 8, 30, market.now()).await;
    check_bounds(&market, &subscribers, &sent).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_batches_on_one_serve_admit_at_most_one_events_price_beyond_any_cap() {
    let market = Market::start(3, CAP).await;
    let subscribers = subscribers(&market).await;
    let dir = tempfile::tempdir().unwrap();
    let serve = Arc::new(Serve::start(&market, &market.chain.endpoint(), dir.path(), &[]).await);
    serve.wait_for(subscribers[3].wallet, "the pay-as-you-go wallet's funds", |a| a["funds"]["payable"] == PAYABLE.to_string()).await;
    // 8 clients x 8 batches x 30 events on one serve.
    let sent = load(&[serve], &subscribers, 8, 8, 30, market.now()).await;
    check_bounds(&market, &subscribers, &sent).await;
}

/// One image event of `market`'s subscriber 0 (0.04 USDC each once the plan's 20 USDC of value is used).
fn images(market: &Market, id: &str, quantity: &str) -> Value {
    market.event(id, 0, "image-gen", "images", quantity, market.now())
}

fn statuses(report: &Value) -> Vec<&str> {
    report["results"].as_array().unwrap().iter().map(|r| r["status"].as_str().unwrap()).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_keeper_judges_on_what_the_first_admitted_and_usage_stored_before_the_ledger_counts() {
    use subsettle_keeper::metering::api::{ApiSettings, Keeper};
    let market = Market::start(1, CAP).await;
    let settings = ApiSettings { chain_id: market.deployment.chain_id, api_token: None, decimals: 6, max_body_bytes: 1 << 20, max_future_ms: 300_000 };
    let b = Keeper::load(market.pool.clone(), settings, market.clock.clone()).await.unwrap();
    let (wallet, id) = market.subscribers[0];

    // The plan's 20 USDC of value used through the market's keeper (A); B, which has not reloaded, admits 25 of 30
    // images in one batch: the 25th reaches the 1 USDC cap, the rest are refused.
    let (status, report) = market.usage(&json!([images(&market, "k-0", "500")])).await;
    assert_eq!((status, statuses(&report)), (200, vec!["accepted"]), "{report}");
    let batch: Vec<Result<Value, subsettle_keeper::metering::event::Outcome>> = (1..=30).map(|n| Ok(images(&market, &format!("k-{n}"), "1"))).collect();
    let report = serde_json::to_value(b.ingest(batch).await.unwrap()).unwrap();
    assert_eq!((report["accepted"].as_u64(), report["payment_required"].as_u64()), (Some(25), Some(5)), "{report}");
    assert!(report["results"][25]["reason"].as_str().unwrap().contains(&format!("subscription {id} used its overage cap of 1000000")), "{report}");
    // B's answer counts A's usage without a reload: the decision brought its view up to date.
    let answer = b.entitlements.read().unwrap().check(wallet, market.now());
    assert_eq!((answer.entitled, answer.overage_used.as_deref()), (false, Some("1000000")), "{answer:?}");
    // A, which has not seen B's usage either, refuses the next event for the cap.
    let (status, report) = market.usage(&json!([images(&market, "k-31", "1")])).await;
    assert_eq!((status, statuses(&report)), (402, vec!["payment_required"]), "{report}");

    // A new period's usage stored by a keeper before the ledger (straight into usage_events) is summed into the
    // period's row when its first batch arrives, and counts against the cap.
    let other = Market::start(1, CAP).await;
    let stored = |event_id: &str, quantity: i64| {
        sqlx::query(
            "INSERT INTO keeper.usage_events (event_id, payload_hash, subscription_id, model_id, meter, quantity, occurred_at_ms)
             VALUES ($1, '\\x0000000000000000000000000000000000000000000000000000000000000000', $2, 'image-gen', 'images', $3, $4)",
        )
        .bind(event_id.to_owned())
        .bind(other.subscribers[0].1 as i64)
        .bind(Decimal::from(quantity))
        .bind(other.now() * 1000)
        .execute(&other.pool)
    };
    stored("old-1", 500).await.unwrap();
    stored("old-2", 25).await.unwrap();
    assert_eq!(sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM keeper.admission_periods").fetch_one(&other.pool).await.unwrap(), 0);
    let (status, report) = other.usage(&json!([images(&other, "n-1", "1")])).await;
    assert_eq!((status, statuses(&report)), (402, vec!["payment_required"]), "20 + 1 USDC stored before: the cap is used: {report}");
    let (version, overage): (i64, String) = sqlx::query_as("SELECT version, overage::TEXT FROM keeper.admission_periods").fetch_one(&other.pool).await.unwrap();
    assert_eq!((version, overage.as_str()), (1, "1000000"), "the period's row, made with the stored usage and its estimate");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_period_row_cleared_under_a_keeper_is_made_again_with_the_stored_usage() {
    let market = Market::start(1, CAP).await;
    let (status, _) = market.usage(&json!([images(&market, "r-0", "500"), images(&market, "r-1", "20")])).await;
    assert_eq!(status, 200);
    // Another replica a period ahead would clear it; the keeper's view still holds it from the ledger. Its next batch
    // finds the row missing, makes it again from the stored events (20.8 USDC) and judges on that: 5 of 10 images
    // reach the 1 USDC cap.
    sqlx::query("DELETE FROM keeper.admission_periods").execute(&market.pool).await.unwrap();
    let batch: Vec<Value> = (2..12).map(|n| images(&market, &format!("r-{n}"), "1")).collect();
    let (status, report) = market.usage(&Value::Array(batch)).await;
    assert_eq!((status, report["accepted"].as_u64(), report["payment_required"].as_u64()), (402, Some(5), Some(5)), "{report}");
    let (version, overage): (i64, String) =
        sqlx::query_as("SELECT version, overage::TEXT FROM keeper.admission_periods").fetch_one(&market.pool).await.unwrap();
    assert_eq!((version, overage.as_str()), (1, "1000000"));
}
