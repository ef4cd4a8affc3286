//! The settlement engine's benchmark (`cargo bench -p subsettle-keeper --bench engine`): 10,008 subscriptions on
//! a local anvil and 500 splits of 3 recipients (a creator each, the same platform and host in all: the shape of
//! the contracts' settle benchmark). Two months are measured. After each period the engine renews all
//! subscriptions, charges the overage of a third and settles one epoch over the 500 splits. In month 1 every
//! credit is a recipient's first (no payouts: the threshold is above a month's credit); in month 2 recipients
//! already hold a balance (the steady state the contract targets describe), and the engine then pays every
//! recipient out. Measured per month: the wall time from the first engine step to the last confirmation (the
//! indexer catching up between steps included, as in production), and gas per item for each action kind. Setting
//! the chain up is not measured.
//!
//! `-- --pairs` gives every split two creators of its own instead (70/30, no platform or host): 1,000 distinct
//! recipients, each settlement credit a cold account.

use std::time::Instant;

use alloy::{
    primitives::{Address, U256},
    providers::{DynProvider, Provider},
};
use anyhow::{Context, Result};
use rust_decimal::Decimal;
use serde_json::json;
use subsettle_abi::{Deployment, SplitEscrow, Subscriptions, usdc::FiatTokenV2_2};
use subsettle_indexer::{
    metrics::Metrics,
    source::{ChainSource, Retry},
    store::Store,
    sync::{Indexer, SyncOptions},
};
use subsettle_keeper::{
    metering::api::{ApiSettings, Keeper},
    metering::catalog::{self, NewMeter, NewModel, NewPrice},
    clock::Clock,
    metering::close::CloseOptions,
    operator::deploy::{DeployPlan, TokenSource, deploy},
    settlement::engine::Engine,
    settlement::outbox::{FeePolicy, Sender},
    settlement::renewals::RenewalPolicy,
    settlement::plan::SettlementPolicy,
    signer::OperatorKey,
};
use subsettle_testkit::{TestChain, TestDatabase};

const ACCOUNTS: usize = 9;
const PER_ACCOUNT: usize = 1_112;
const SPLITS: usize = 500;
const PRICE: u64 = 1_000_000;
const PERIOD: u64 = 30 * 86_400;
const CAP: u64 = 10_000_000;

async fn wait(
    provider: &DynProvider,
    pending: alloy::providers::PendingTransactionBuilder<alloy::network::Ethereum>,
) -> Result<alloy::rpc::types::TransactionReceipt> {
    let hash = *pending.tx_hash();
    // Up to a minute: the last of an account's 1,112 subscriptions is mined after all the others, one block each.
    for _ in 0..12_000 {
        if let Some(receipt) = provider.get_transaction_receipt(hash).await? {
            anyhow::ensure!(receipt.status(), "setup transaction {hash} reverted");
            return Ok(receipt);
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let tx = provider.get_transaction_by_hash(hash).await?;
    let head = provider.get_block_by_number(alloy::eips::BlockNumberOrTag::Latest).await?;
    anyhow::bail!("setup transaction {hash} not mined: {tx:?}; head {:?}", head.map(|b| b.header))
}

#[tokio::main]
async fn main() -> Result<()> {
    // cargo passes `--bench` to a bench target without the libtest harness.
    let pairs = match std::env::args().skip(1).find(|a| a != "--bench") {
        None => false,
        Some(arg) if arg == "--pairs" => true,
        Some(other) => anyhow::bail!("unknown argument `{other}`; usage: engine [--pairs]"),
    };
    let chain = TestChain::spawn_with(&["--gas-limit", "100000000"])?;
    let db = TestDatabase::create().await?;
    let dir = tempfile::tempdir()?;
    let key_path = dir.path().join("operator.key");
    std::fs::write(&key_path, alloy::hex::encode_prefixed(chain.signer(0).to_bytes()))?;
    let key = OperatorKey::load(Some(&key_path))?;
    let plan = DeployPlan {
        rpc_url: chain.endpoint(),
        token: TokenSource::LocalUsdc,
        keeper: None,
        charge_window_secs: 2 * 86_400,
        split_change_delay_secs: 7 * 86_400,
        max_hold_secs: 30 * 86_400,
    };
    let deployment: Deployment = deploy(&plan, &key).await?;
    let operator = chain.provider(0);
    let setup = Instant::now();

    let subs = Subscriptions::new(deployment.subscriptions, &operator);
    let receipt = wait(&operator, subs.createPlan(U256::from(PRICE), U256::from(PERIOD), U256::from(3 * 86_400)).send().await?).await?;
    let plan_id = receipt.decoded_log::<Subscriptions::PlanCreated>().context("PlanCreated")?.planId;
    let escrow = SplitEscrow::new(deployment.escrow, &operator);
    let named = |name: String| Address::from_slice(&alloy::primitives::keccak256(name)[12..]);
    let (platform, host) = (named("platform".into()), named("host".into()));
    let mut last;
    for i in 0..SPLITS {
        last = if pairs {
            let recipients = vec![named(format!("creator-{i}-a")), named(format!("creator-{i}-b"))];
            escrow.createSplit(recipients, vec![7_000, 3_000], U256::ZERO).send().await?
        } else {
            let recipients = vec![named(format!("creator-{i}")), platform, host];
            escrow.createSplit(recipients, vec![7_000, 2_000, 1_000], U256::from(1)).send().await?
        };
        if i % 100 == 99 {
            wait(&operator, last).await?;
        }
    }
    eprintln!("setup: plan and {SPLITS} splits in {:.1} s", setup.elapsed().as_secs_f64());

    let token = FiatTokenV2_2::new(deployment.token, &operator);
    let mut ids = Vec::new();
    for account in 1..=ACCOUNTS {
        let who = chain.address(account);
        wait(&operator, token.mint(who, U256::from((PRICE * 3 + CAP) * PER_ACCOUNT as u64)).send().await?).await?;
        let provider = chain.provider(account);
        wait(&provider, FiatTokenV2_2::new(deployment.token, &provider).approve(deployment.subscriptions, U256::MAX).send().await?).await?;
        let subs = Subscriptions::new(deployment.subscriptions, &provider);
        let mut last = None;
        for _ in 0..PER_ACCOUNT {
            last = Some(subs.subscribe(plan_id, U256::from(CAP)).send().await?);
        }
        wait(&provider, last.context("a subscription")?).await?;
    }
    eprintln!("setup: {} subscriptions in {:.1} s", ACCOUNTS * PER_ACCOUNT, setup.elapsed().as_secs_f64());

    // The indexer, the keeper's catalog (one model per split) and usage for a third of the subscriptions.
    let pool = db.pool().await?;
    let store = Store::open(pool.clone()).await?;
    let metrics = Metrics::default();
    let source = ChainSource::connect(&chain.endpoint(), vec![deployment.subscriptions, deployment.escrow], 5_000, Retry::default(), metrics.clone())?;
    let options = SyncOptions { poll_interval: std::time::Duration::from_millis(100), confirmations: 0, concurrency: 4 };
    let indexer = Indexer::new(deployment.clone(), source, store, options, metrics);
    indexer.backfill_to(None).await?;
    subsettle_keeper::store::migrate(&pool).await?;
    ids.extend(
        sqlx::query_scalar::<_, i64>("SELECT subscription_id::BIGINT FROM chain.subscribed ORDER BY 1").fetch_all(&pool).await?.into_iter().map(|i| i as u64),
    );
    anyhow::ensure!(ids.len() == ACCOUNTS * PER_ACCOUNT, "indexed {} subscriptions", ids.len());
    let split_ids: Vec<u64> = sqlx::query_scalar::<_, String>("SELECT split_id::TEXT FROM chain.split_versions ORDER BY split_id")
        .fetch_all(&pool)
        .await?
        .iter()
        .map(|s| s.parse().unwrap_or(0))
        .collect();
    for (i, split) in split_ids.iter().enumerate() {
        let model = format!("model-{i:03}");
        let new = NewModel { model_id: model.clone(), display_name: model.clone(), split_id: *split, effective_at: 0, meters: vec![NewMeter { meter: "tokens".into(), scale: 0 }] };
        catalog::add_model(&pool, deployment.chain_id, &new).await?;
        catalog::set_price(&pool, &NewPrice { model_id: model, meter: "tokens".into(), unit_price: Decimal::new(5, 1), per_units: Decimal::from(1_000), effective_at: 0 }).await?;
    }
    let clock = Clock::manual(0);
    let head_time = |p: DynProvider| async move {
        Ok::<i64, anyhow::Error>(p.get_block_by_number(alloy::eips::BlockNumberOrTag::Latest).await?.context("head")?.header.timestamp as i64)
    };
    clock.set_ms(head_time(operator.clone()).await? * 1000);
    let settings = ApiSettings { chain_id: deployment.chain_id, api_token: None, decimals: 6, max_body_bytes: 8 << 20, max_future_ms: 300_000 };
    let keeper = Keeper::load(pool.clone(), settings, clock.clone()).await?;
    let with_usage: Vec<u64> = ids.iter().copied().filter(|id| id % 3 == 0).collect();
    post_usage(&keeper, &with_usage, clock.now_secs(), "m1").await?;
    let _: serde_json::Value = operator.raw_request("evm_increaseTime".into(), (PERIOD + 3_700,)).await?;
    let _: serde_json::Value = operator.raw_request("evm_mine".into(), ()).await?;
    indexer.backfill_to(None).await?;
    eprintln!("setup: done in {:.1} s; {} subscriptions with usage", setup.elapsed().as_secs_f64(), with_usage.len());

    let mut engine = Engine {
        pool: pool.clone(),
        sender: Sender { provider: operator.clone(), key, chain_id: deployment.chain_id, fees: FeePolicy::default(), finality: subsettle_keeper::settlement::outbox::Finality::Confirmations(1) },
        deployment: deployment.clone(),
        close: CloseOptions { chain_id: deployment.chain_id, late_cutoff: 3_600, decimals: 6, default_split: split_ids.first().copied(), batch: 2_000 },
        renewals: RenewalPolicy { batch: 500, retry_interval: 3_600 },
        settlement: SettlementPolicy { batch: 500, retry_interval: 3_600, charge_window: 2 * 86_400, payout_threshold: 1, charge_threshold: None },
        epoch_interval: 86_400,
    };
    // Month 1: every credit is a first one; a threshold above any month's credit keeps the balances.
    engine.settlement.payout_threshold = u128::MAX;
    let month1 = run_month(&engine, &indexer, &pool, false).await?;

    // Month 2: usage in the new period, the clock past it; recipients hold month 1's balances, then are paid.
    clock.set_ms(head_time(operator.clone()).await? * 1000);
    post_usage(&keeper, &with_usage, clock.now_secs(), "m2").await?;
    let _: serde_json::Value = operator.raw_request("evm_increaseTime".into(), (PERIOD,)).await?;
    let _: serde_json::Value = operator.raw_request("evm_mine".into(), ()).await?;
    indexer.backfill_to(None).await?;
    let month2 = run_month(&engine, &indexer, &pool, false).await?;
    // Payouts last: a payout before the month's settlement would empty the balances it is meant to find.
    engine.settlement.payout_threshold = 1;
    let payouts = run_month(&engine, &indexer, &pool, true).await?;

    let count = |sql: &'static str| {
        let pool = pool.clone();
        async move { sqlx::query_scalar::<_, i64>(sql).fetch_one(&pool).await }
    };
    let renewed = count("SELECT COUNT(*) FROM chain.renewals").await?;
    let charged = count("SELECT COUNT(*) FROM chain.usage_charges").await?;
    let credited = count("SELECT COUNT(DISTINCT (settlement_id, split_id)) FROM chain.credits").await?;
    let claimed = count("SELECT COUNT(*) FROM chain.claims WHERE succeeded").await?;
    let settlements = count("SELECT COUNT(*) FROM chain.settlements").await?;
    let months = 2;
    anyhow::ensure!(
        renewed as usize == months * ids.len() && charged as usize == months * with_usage.len(),
        "renewed {renewed}, charged {charged}"
    );
    let recipients = if pairs { 2 * SPLITS } else { SPLITS + 2 };
    anyhow::ensure!(claimed as usize == recipients, "paid {claimed} recipients, expected {recipients}");
    println!("| Measure | Result |\n|---|---|");
    for (name, month) in [("month 1", &month1), ("month 2", &month2), ("payouts", &payouts)] {
        println!(
            "| {name}: engine wall time, first step to last confirmation ({} steps, indexer included) | **{:.1} s** (target <= 120 s) |",
            month.steps,
            month.elapsed.as_secs_f64()
        );
    }
    println!("| renewals | {renewed} |\n| usage charges | {charged} |\n| split credits | {credited} (split x epoch), in {settlements} settlements |\n| recipients paid | {claimed} |");
    println!("\n| Month | Action | Transactions | Items | Gas | Gas per item |\n|---|---|---|---|---|---|");
    for (name, month) in [("1", &month1), ("2", &month2), ("payouts", &payouts)] {
        for (kind, txs, gas, items) in &month.gas {
            println!("| {name} | {kind} | {txs} | {items} | {gas} | {} |", gas / (*items).max(1));
        }
    }
    Ok(())
}

/// What one month's engine run measured.
struct Month {
    steps: usize,
    elapsed: std::time::Duration,
    /// (kind, transactions, gas, items) of the actions planned in this month.
    gas: Vec<(String, i64, i64, i64)>,
}

/// Steps the engine (the indexer catching up after each step) until nothing is open and the work is on chain:
/// the month's settlement, or with `payouts` the claims.
async fn run_month(engine: &Engine, indexer: &Indexer, pool: &sqlx::PgPool, payouts: bool) -> Result<Month> {
    let since: String = sqlx::query_scalar("SELECT now()::TEXT").fetch_one(pool).await?;
    let settlements_before: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM chain.settlements").fetch_one(pool).await?;
    let started = Instant::now();
    let mut steps = 0;
    loop {
        let step_started = Instant::now();
        let report = engine.step(false).await?;
        let engine_time = step_started.elapsed();
        steps += 1;
        indexer.backfill_to(None).await?;
        eprintln!("  engine {:.1} s, indexer {:.1} s", engine_time.as_secs_f64(), (step_started.elapsed() - engine_time).as_secs_f64());
        let open: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM keeper.outbox WHERE state IN ('planned', 'sent')").fetch_one(pool).await?;
        let settled: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM chain.settlements").fetch_one(pool).await?;
        let claims: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM chain.claims").fetch_one(pool).await?;
        eprintln!("step {steps}: {:?} in {:.1} s", report.outbox, started.elapsed().as_secs_f64());
        let done = if payouts { claims > 0 } else { settled > settlements_before };
        if open == 0 && done && report.actions.is_empty() {
            break;
        }
        anyhow::ensure!(steps < 20, "the engine did not finish in 20 steps");
    }
    let elapsed = started.elapsed();
    let gas = sqlx::query_as(
        "SELECT kind, COUNT(*), SUM(gas_used)::BIGINT, SUM(jsonb_array_length(items))::BIGINT FROM keeper.outbox
         WHERE state = 'confirmed' AND planned_at >= $1::TIMESTAMPTZ GROUP BY kind ORDER BY kind",
    )
    .bind(&since)
    .fetch_all(pool)
    .await?;
    Ok(Month { steps, elapsed, gas })
}

/// One usage event (1,000 tokens) for each of `ids` at `now`, through the keeper's ingest.
async fn post_usage(keeper: &Keeper, ids: &[u64], now: i64, tag: &str) -> Result<()> {
    for chunk in ids.chunks(1_000) {
        let events = chunk
            .iter()
            .map(|id| {
                Ok(json!({
                    "event_id": format!("u-{tag}-{id}"), "subscription_id": id, "model": format!("model-{:03}", id % SPLITS as u64),
                    "meter": "tokens", "quantity": 1_000, "timestamp": now,
                }))
            })
            .collect();
        let report = keeper.ingest(events).await?;
        anyhow::ensure!(report.accepted == chunk.len(), "usage refused: {:?}", report.results.iter().find(|r| !matches!(r, subsettle_keeper::metering::event::Outcome::Accepted { .. })));
    }
    Ok(())
}
