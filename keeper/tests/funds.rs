//! Billable usage against what the wallet can pay, through the real `subsettle-keeper serve` on a real chain and
//! Postgres: a pay-as-you-go subscriber (plan price 0) with no funds gets 402 naming what is short; once funded and
//! approved it is served exactly what it can pay, event by event; a revoked allowance is refused after the next
//! reading. A paid plan's included usage is never refused for funds; what the chain has charged is not owed twice;
//! funds that cannot be read for three intervals refuse overage as unknown. And the notice a model's split mapping
//! change must give, through the `model set-split` command.

#[path = "../../indexer/tests/common/mod.rs"]
mod common;
#[path = "common/market.rs"]
mod market;
#[path = "common/serve.rs"]
mod serve;

use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};

use alloy::primitives::{Address, B256, U256};
use common::{GRACE, PERIOD, USDC, u};
use market::{Market, TOKEN};
use serde_json::{Value, json};
use serve::{Serve, keeper_command};
use subsettle_abi::{Subscriptions, usdc::FiatTokenV2_2};

/// The funds figure `key` of an entitlement answer.
fn funds<'a>(answer: &'a Value, key: &str) -> &'a str {
    answer["funds"][key].as_str().unwrap_or("")
}

fn event(id: &str, wallet: Address, model: &str, meter: &str, quantity: &str, at: i64) -> Value {
    json!({ "event_id": id, "subscriber": wallet.to_string(), "model": model, "meter": meter, "quantity": quantity, "timestamp": at })
}

/// One event's outcome and reason.
fn outcome(report: &Value, i: usize) -> (&str, &str) {
    let r = &report["results"][i];
    (r["status"].as_str().unwrap(), r["reason"].as_str().unwrap_or(""))
}

/// A Prometheus sample's value.
fn sample(metrics: &str, name: &str) -> f64 {
    let line = metrics.lines().find(|l| l.starts_with(name) && l[name.len()..].starts_with(' ')).unwrap_or_else(|| panic!("{name} in {metrics}"));
    line[name.len()..].trim().parse().unwrap()
}

/// Dev account `account` subscribes to a new plan of price 0 with an overage cap of `cap` base units, without any
/// token or approval; returns the wallet and the subscription id once indexed.
async fn pay_as_you_go(market: &Market, account: usize, cap: u64) -> (Address, u64) {
    let operator = market.operator();
    let receipt = confirm!(Subscriptions::new(market.deployment.subscriptions, &operator).createPlan(u(0), u(PERIOD), u(GRACE)));
    let plan = receipt.decoded_log::<Subscriptions::PlanCreated>().expect("PlanCreated").planId;
    let provider = market.chain.provider(account);
    let receipt = confirm!(Subscriptions::new(market.deployment.subscriptions, &provider).subscribe(plan, u(cap)));
    let id = receipt.decoded_log::<Subscriptions::Subscribed>().expect("Subscribed").id.to::<u64>();
    market.sync().await;
    (market.chain.address(account), id)
}

/// Dev account `account` approves Subscriptions for `amount` base units.
async fn approve(market: &Market, account: usize, amount: u64) {
    let provider = market.chain.provider(account);
    confirm!(FiatTokenV2_2::new(market.deployment.token, &provider).approve(market.deployment.subscriptions, u(amount)));
}

/// Mints `amount` base units to `wallet`.
async fn mint(market: &Market, wallet: Address, amount: u64) {
    let operator = market.operator();
    confirm!(FiatTokenV2_2::new(market.deployment.token, &operator).mint(wallet, u(amount)));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pay_as_you_go_wallet_is_served_only_what_it_can_pay() {
    let market = Market::start(1, 0).await;
    let dir = tempfile::tempdir().unwrap();
    let serve = Serve::start(&market, &market.chain.endpoint(), dir.path(), &[]).await;
    // Subscribed after serve started: its funds are read at the next refresh interval, not the next funds interval.
    let (payg, id) = pay_as_you_go(&market, 2, 100 * USDC).await;
    let now = market.now();

    // No balance, no allowance, no credit: not to be served, and billable usage (its plan includes nothing) is 402.
    let answer = serve.wait_for(payg, "the new wallet's first reading", |a| a["funds"]["state"] == "known").await;
    assert_eq!((funds(&answer, "balance"), funds(&answer, "allowance"), funds(&answer, "credit")), ("0", "0", "0"), "{answer}");
    assert_eq!(answer["entitled"], false, "{answer}");
    assert!(answer["reason"].as_str().unwrap().contains("balance and allowance are short"), "{answer}");
    let (status, report) = serve.usage(&json!([event("p-0", payg, "image-gen", "images", "1", now)])).await;
    assert_eq!(status, 402, "{report}");
    let (state, reason) = outcome(&report, 0);
    assert_eq!(state, "payment_required");
    assert!(reason.starts_with(&format!("subscription {id}: the wallet cannot pay")), "{reason}");
    assert!(
        reason.contains("balance and allowance are short") && reason.contains("0 base units of overage not charged yet + 40000 for this usage against 0"),
        "{reason}"
    );

    // Funded with 5 USDC and 3 approved: a charge can collect 3 USDC. 4 USDC of images is refused, 2 then 1 served.
    mint(&market, payg, 5 * USDC).await;
    approve(&market, 2, 3 * USDC).await;
    serve.wait_for(payg, "the approval", |a| funds(a, "allowance") == "3000000").await;
    let (status, report) = serve.usage(&json!([event("p-1", payg, "image-gen", "images", "100", now)])).await;
    assert_eq!(status, 402, "{report}");
    let reason = outcome(&report, 0).1;
    assert!(reason.contains("allowance is short") && reason.contains("+ 4000000 for this usage against 3000000"), "{reason}");
    assert!(reason.contains("balance 5000000") && reason.contains("allowance 3000000") && reason.contains("credit 0"), "{reason}");
    let (status, report) = serve.usage(&json!([event("p-2", payg, "image-gen", "images", "50", now)])).await;
    assert_eq!((status, outcome(&report, 0).0), (200, "accepted"), "{report}");
    let (status, report) = serve.usage(&json!([event("p-3", payg, "image-gen", "images", "30", now)])).await;
    assert_eq!(status, 402, "2 + 1.2 USDC is more than 3: {report}");
    let (status, report) = serve.usage(&json!([event("p-4", payg, "image-gen", "images", "25", now)])).await;
    assert_eq!((status, outcome(&report, 0).0), (200, "accepted"), "2 + 1 USDC is exactly 3: {report}");
    let (status, _) = serve.usage(&json!([event("p-5", payg, "image-gen", "images", "1", now)])).await;
    assert_eq!(status, 402);
    let answer = serve.entitlement(payg).await;
    assert_eq!((funds(&answer, "owed"), funds(&answer, "headroom")), ("3000000", "0"), "{answer}");
    assert_eq!((answer["entitled"].as_bool(), answer["overage_used"].as_str()), (Some(false), Some("3000000")), "{answer}");

    // 2 USDC deposited as credit (allowance raised to 10 first, the deposit takes 2 of it): balance 3, allowance 8,
    // credit 2, so 5 can be collected. In one batch each event is judged after the ones before it.
    approve(&market, 2, 10 * USDC).await;
    let provider = market.chain.provider(2);
    confirm!(Subscriptions::new(market.deployment.subscriptions, &provider).deposit(u(2 * USDC)));
    serve.wait_for(payg, "the credit", |a| funds(a, "credit") == "2000000").await;
    let (status, report) = serve
        .usage(&json!([
            event("p-6", payg, "image-gen", "images", "25", now),
            event("p-7", payg, "image-gen", "images", "50", now),
            event("p-8", payg, "image-gen", "images", "25", now),
        ]))
        .await;
    assert_eq!(status, 402, "{report}");
    assert_eq!((outcome(&report, 0).0, outcome(&report, 1).0, outcome(&report, 2).0), ("accepted", "payment_required", "accepted"), "{report}");
    let reason = outcome(&report, 1).1;
    assert!(
        reason.contains("balance is short") && reason.contains("4000000 base units of overage not charged yet + 2000000 for this usage against 5000000"),
        "{reason}"
    );

    // Topped up to balance 13: 10 can be collected, 5 owed. Then the allowance is revoked: after the next reading only
    // the credit (2) can be collected, and billable usage is refused naming the allowance.
    mint(&market, payg, 10 * USDC).await;
    serve.wait_for(payg, "the top-up", |a| funds(a, "headroom") == "5000000").await;
    let (status, _) = serve.usage(&json!([event("p-9", payg, "image-gen", "images", "25", now)])).await;
    assert_eq!(status, 200);
    approve(&market, 2, 0).await;
    let answer = serve.wait_for(payg, "the revocation", |a| funds(a, "allowance") == "0").await;
    assert_eq!((answer["entitled"].as_bool(), funds(&answer, "payable"), funds(&answer, "owed")), (Some(false), "2000000", "6000000"), "{answer}");
    let (status, report) = serve.usage(&json!([event("p-10", payg, "image-gen", "images", "1", now)])).await;
    assert_eq!(status, 402, "{report}");
    assert!(outcome(&report, 0).1.contains("allowance is short"), "{report}");

    // Only what was served is stored; the refusals are counted by reason.
    let stored: (i64, String) = sqlx::query_as("SELECT COUNT(*), SUM(quantity)::TEXT FROM keeper.usage_events WHERE subscription_id = $1")
        .bind(id as i64)
        .fetch_one(&market.pool)
        .await
        .unwrap();
    assert_eq!(stored, (5, "150".to_owned()));
    let metrics = serve.metrics().await;
    // Balance short: p-0 (both zero) and p-7; allowance short: p-1, p-3, p-5 and p-10.
    assert_eq!(sample(&metrics, "subsettle_keeper_payment_required_total{reason=\"funds_balance\"}"), 2.0, "{metrics}");
    assert_eq!(sample(&metrics, "subsettle_keeper_payment_required_total{reason=\"funds_allowance\"}"), 4.0, "{metrics}");
    let age = sample(&metrics, "subsettle_keeper_funds_refresh_age_seconds");
    assert!((0.0..=5.0).contains(&age), "funds are read every second: {metrics}");
}

/// A JSON-RPC proxy that can be switched off (every request then fails with 503), to make the node unreachable.
struct Switch {
    url: String,
    on: Arc<AtomicBool>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for Switch {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl Switch {
    async fn start(upstream: String) -> Self {
        use axum::{http::StatusCode, response::IntoResponse};
        let on = Arc::new(AtomicBool::new(true));
        let (flag, client) = (on.clone(), reqwest::Client::new());
        let forward = move |body: axum::body::Bytes| {
            let (flag, client, upstream) = (flag.clone(), client.clone(), upstream.clone());
            async move {
                if !flag.load(Ordering::SeqCst) {
                    return (StatusCode::SERVICE_UNAVAILABLE, "switched off").into_response();
                }
                match client.post(&upstream).header("content-type", "application/json").body(body.to_vec()).send().await {
                    Ok(answer) => {
                        let status = StatusCode::from_u16(answer.status().as_u16()).unwrap();
                        let bytes = answer.bytes().await.unwrap_or_default().to_vec();
                        (status, [(axum::http::header::CONTENT_TYPE, "application/json")], bytes).into_response()
                    }
                    Err(error) => (StatusCode::BAD_GATEWAY, error.to_string()).into_response(),
                }
            }
        };
        let app = axum::Router::new().route("/", axum::routing::post(forward));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let server = tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self { url, on, server }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn included_usage_is_never_refused_for_funds_and_unreadable_funds_refuse_only_overage() {
    // A $79 plan including 2,000,000 input tokens and 20 USDC of value, with a 100 USDC cap.
    let market = Market::start(1, 100 * USDC).await;
    let (wallet, id) = market.subscribers[0];
    let node = Switch::start(market.chain.endpoint()).await;
    let dir = tempfile::tempdir().unwrap();
    let serve = Serve::start(&market, &node.url, dir.path(), &[]).await;
    let now = market.now();

    // The allowance revoked: the included usage is served all the same, overage is refused.
    approve(&market, 1, 0).await;
    serve.wait_for(wallet, "the revocation", |a| funds(a, "allowance") == "0").await;
    let (status, report) = serve.usage(&json!([market.event("i-1", 0, "image-gen", "images", "500", now)])).await;
    assert_eq!((status, outcome(&report, 0).0), (200, "accepted"), "20 USDC of images is exactly the included value: {report}");
    let (status, report) = serve.usage(&json!([market.event("i-2", 0, "image-gen", "images", "1", now)])).await;
    assert_eq!(status, 402, "{report}");
    assert!(
        outcome(&report, 0).1.contains(&format!("subscription {id}: the wallet cannot pay")) && outcome(&report, 0).1.contains("allowance is short"),
        "{report}"
    );
    let (status, _) = serve.usage(&json!([market.event("i-3", 0, "llm-large", "input_tokens", "1000", now)])).await;
    assert_eq!(status, 200, "input tokens are still included by units");
    let answer = serve.entitlement(wallet).await;
    assert_eq!((answer["entitled"].as_bool(), funds(&answer, "headroom")), (Some(true), "0"), "included usage is left: served: {answer}");

    // 10 USDC approved: 1 USDC of overage served; the chain charges it; once indexed and read, it is owed no more
    // and the headroom is what is left of the allowance (9), not 8.
    approve(&market, 1, 10 * USDC).await;
    serve.wait_for(wallet, "the approval", |a| funds(a, "allowance") == "10000000").await;
    let (status, _) = serve.usage(&json!([market.event("i-4", 0, "image-gen", "images", "25", now)])).await;
    assert_eq!(status, 200);
    let answer = serve.entitlement(wallet).await;
    assert_eq!((funds(&answer, "owed"), funds(&answer, "headroom")), ("1000000", "9000000"), "{answer}");
    let operator = market.operator();
    let charge = subsettle_abi::ISubscriptions::Charge {
        subscriptionId: U256::from(id),
        periodIndex: U256::ZERO,
        cumulativeOverage: u(USDC),
        usageRoot: B256::repeat_byte(1),
    };
    confirm!(Subscriptions::new(market.deployment.subscriptions, &operator).chargeUsage(vec![charge]));
    market.sync().await;
    let answer = serve.wait_for(wallet, "the charge", |a| funds(a, "allowance") == "9000000" && funds(a, "owed") == "0").await;
    assert_eq!(funds(&answer, "headroom"), "9000000", "{answer}");

    // The node unreachable: after three funds intervals the funds are unknown; overage is refused as such, included
    // usage is still served. Back again, the next reading restores them.
    node.on.store(false, Ordering::SeqCst);
    let answer = serve.wait_for(wallet, "stale funds", |a| a["funds"]["state"] == "unknown").await;
    assert_eq!(answer["entitled"], false, "in overage with unknown funds: {answer}");
    assert!(answer["reason"].as_str().unwrap().contains("funds unknown: the wallet's balance, allowance and credit are last read"), "{answer}");
    let (status, report) = serve.usage(&json!([market.event("i-5", 0, "image-gen", "images", "1", now)])).await;
    assert_eq!(status, 402, "{report}");
    assert!(outcome(&report, 0).1.contains(&format!("subscription {id}: funds unknown")), "{report}");
    let (status, _) = serve.usage(&json!([market.event("i-6", 0, "llm-large", "input_tokens", "1000", now)])).await;
    assert_eq!(status, 200);
    let metrics = serve.metrics().await;
    assert!(sample(&metrics, "subsettle_keeper_payment_required_total{reason=\"funds_unknown\"}") >= 1.0, "{metrics}");
    assert_eq!(sample(&metrics, "subsettle_keeper_funds_unknown_wallets"), 1.0, "{metrics}");
    assert!(sample(&metrics, "subsettle_keeper_funds_refresh_age_seconds") >= 3.0, "{metrics}");
    node.on.store(true, Ordering::SeqCst);
    serve.wait_for(wallet, "funds read again", |a| a["funds"]["state"] == "known").await;
    let (status, _) = serve.usage(&json!([market.event("i-7", 0, "image-gen", "images", "1", now)])).await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn serve_needs_the_deployments_chain_and_a_split_mapping_change_gives_the_escrows_notice() {
    let market = Market::start(1, 0).await;
    let dir = tempfile::tempdir().unwrap();
    let deployment = common::save_deployment(&market.deployment, dir.path());
    let split = market.splits[0].to_string();
    let serve = |rpc: Option<&str>| {
        let mut command = keeper_command(&market, &deployment);
        command.args(["serve", "--http-addr", "127.0.0.1:0", "--default-split", &split]).env("SUBSETTLE_API_TOKEN", TOKEN);
        if let Some(rpc) = rpc {
            command.args(["--rpc-url", rpc]);
        }
        command.output().unwrap()
    };
    let missing = serve(None);
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("rpc_url: missing"), "{}", String::from_utf8_lossy(&missing.stderr));
    let other = subsettle_testkit::TestChain::spawn_with(&["--chain-id", "999"]).expect("anvil");
    let wrong = serve(Some(&other.endpoint()));
    assert!(!wrong.status.success());
    let stderr = String::from_utf8_lossy(&wrong.stderr);
    assert!(stderr.contains("the node is chain 999, the deployment is on chain 31337"), "{stderr}");

    // `model set-split` reads the delay (7 days here) from the escrow and refuses an earlier start, naming the
    // earliest allowed; the first mapping, at `model add`, is immediate.
    let set_split = |effective_at: i64| {
        keeper_command(&market, &deployment)
            .args(["model", "set-split", "--id", "image-gen", "--split", &market.splits[2].to_string()])
            .args(["--effective-at", &effective_at.to_string(), "--rpc-url", &market.chain.endpoint()])
            .output()
            .unwrap()
    };
    let now = market.now();
    let early = set_split(now + 3_600);
    assert!(!early.status.success());
    let stderr = String::from_utf8_lossy(&early.stderr);
    assert!(stderr.contains(&format!("{} is too early", now + 3_600)) && stderr.contains("split-change delay (604800 s)"), "{stderr}");
    let earliest: i64 = stderr.split("the earliest allowed now is ").nth(1).unwrap().split_whitespace().next().unwrap().parse().unwrap();
    assert!(earliest >= now + 604_800, "{stderr}");
    let later = set_split(earliest + 60);
    assert!(later.status.success(), "{}", String::from_utf8_lossy(&later.stderr));
    let added = keeper_command(&market, &deployment)
        .args(["model", "add", "--id", "tts-1", "--name", "TTS", "--split", &market.splits[2].to_string(), "--meter", "characters"])
        .output()
        .unwrap();
    assert!(added.status.success(), "{}", String::from_utf8_lossy(&added.stderr));
    let history: Vec<(String, i64, i64)> = sqlx::query_as(
        "SELECT model_id, effective_at, notice_secs FROM keeper.model_splits WHERE model_id IN ('image-gen', 'tts-1') ORDER BY model_id, effective_at",
    )
    .fetch_all(&market.pool)
    .await
    .unwrap();
    assert_eq!(history, [("image-gen".to_owned(), 0, 0), ("image-gen".to_owned(), earliest + 60, 604_800), ("tts-1".to_owned(), 0, 0)]);
}

#[tokio::test(flavor = "multi_thread")]
async fn two_replicas_judge_a_wallet_by_the_same_usage_and_funds() {
    use subsettle_keeper::{
        metering::api::{ApiSettings, Keeper},
        metering::funds::{FundsPolicy, FundsReader},
    };
    let market = Market::start(1, 0).await;
    let (payg, _) = pay_as_you_go(&market, 2, 100 * USDC).await;
    mint(&market, payg, 5 * USDC).await;
    approve(&market, 2, 2 * USDC).await;
    let now = market.now();
    // Replica A is the market's keeper, B a second one on the same database; both read funds from the node.
    let settings =
        ApiSettings { chain_id: market.deployment.chain_id, api_token: Some(TOKEN.into()), decimals: 6, max_body_bytes: 1 << 20, max_future_ms: 300_000 };
    let b = Keeper::load(market.pool.clone(), settings, market.clock.clone()).await.unwrap();
    let a = market.keeper.clone();
    let reader = FundsReader::new(market.operator(), &market.deployment);
    for replica in [&a, &b] {
        replica.enable_funds(FundsPolicy { interval_ms: 60_000 });
        assert_eq!(replica.refresh_funds(&reader, false).await.unwrap(), 2, "the wallets with a live subscription");
    }
    let images = |id: &str, n: &str| vec![Ok(event(id, payg, "image-gen", "images", n, now))];
    let status =
        |report: &subsettle_keeper::metering::event::BatchReport| serde_json::to_value(&report.results[0]).unwrap()["status"].as_str().unwrap().to_owned();

    // 1 of the 2 USDC the wallet can pay is used through A; B, once it reloads the open usage, counts it: 2 more is
    // refused, 1 served.
    assert_eq!(status(&a.ingest(images("r-1", "25")).await.unwrap()), "accepted");
    b.reload_open_usage().await.unwrap();
    assert_eq!(status(&b.ingest(images("r-2", "50")).await.unwrap()), "payment_required");
    assert_eq!(status(&b.ingest(images("r-3", "25")).await.unwrap()), "accepted");
    // A counts B's usage after its own reload, and both answer with the same figures.
    a.reload_open_usage().await.unwrap();
    assert_eq!(status(&a.ingest(images("r-4", "1")).await.unwrap()), "payment_required");
    let answers: Vec<Value> = [&a, &b].iter().map(|k| serde_json::to_value(k.entitlements.read().unwrap().check(payg, now).funds).unwrap()).collect();
    assert_eq!(answers[0], answers[1]);
    assert_eq!((answers[0]["owed"].as_str(), answers[0]["headroom"].as_str(), answers[0]["balance"].as_str()), (Some("2000000"), Some("0"), Some("5000000")));
    let stored: (String, String, i64) = sqlx::query_as("SELECT balance::TEXT, allowance::TEXT, block_number FROM keeper.wallet_funds WHERE subscriber = $1")
        .bind(payg.as_slice())
        .fetch_one(&market.pool)
        .await
        .unwrap();
    assert_eq!((stored.0.as_str(), stored.1.as_str()), ("5000000", "2000000"));
    assert_eq!(answers[0]["block"].as_i64(), Some(stored.2), "both judge by the newest stored reading");
}
