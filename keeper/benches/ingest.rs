//! The keeper's metering benchmark in one process (`cargo bench -p subsettle-keeper --bench ingest`); the figures a
//! gateway sees, through real `serve` processes, are `--bench http`'s:
//!
//! 1. sustained ingest through the API's router served from this process: concurrent clients post batches of 1,000
//!    events (deduplication and the admission ledger on) until 1,000,000 events are stored; events/s and the
//!    per-batch latency distribution;
//! 2. a resend of batches already stored (all duplicates);
//! 3. the entitlement check at the server (the in-memory answer the handler returns), p50/p99 over 200,000 calls;
//! 4. period close of 10,000 subscriptions holding those 1,000,000 events.
//!
//! The 10,000 subscriptions are seeded as indexed rows in schema `chain` (creating them through the contracts
//! would measure anvil, not the keeper; the contract path is covered by the keeper's tests). Everything else is
//! the keeper's own code against a real Postgres started by the test harness.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use alloy::primitives::Address;
use anyhow::Result;
use rust_decimal::Decimal;
use sqlx::{AssertSqlSafe, PgPool};
use subsettle_keeper::{
    metering::api::{ApiSettings, router},
    metering::catalog::{self, NewAllowance, NewMeter, NewModel, NewPrice},
    clock::Clock,
    metering::close::{CloseOptions, close_due_periods},
};
use subsettle_testkit::TestDatabase;

const CHAIN_ID: i64 = 31_337;
const SUBSCRIPTIONS: u64 = 10_000;
const EVENTS_PER_SUBSCRIPTION: u64 = 100;
const BATCH: u64 = 1_000;
const CLIENTS: usize = 4;
const T0: i64 = 1_800_000_000;
const PERIOD: i64 = 30 * 86_400;
const TOKEN: &str = "bench-operator-token-0123456789";
const META: &str = "chain_id, block_number, log_index, tx_hash, block_time";

fn subscriber(i: u64) -> Address {
    let mut bytes = [0u8; 20];
    bytes[12..].copy_from_slice(&(i + 1).to_be_bytes());
    Address::from(bytes)
}

async fn seed_chain(pool: &PgPool) -> Result<()> {
    subsettle_indexer::store::Store::open(pool.clone()).await?;
    sqlx::query(AssertSqlSafe(format!(
        "INSERT INTO chain.plans ({META}, plan_id, price, period, grace_period) VALUES ($1, 1, 0, '\\x00', $2, 1, 79000000, $3, 259200)"
    )))
    .bind(CHAIN_ID)
    .bind(T0 - 10)
    .bind(PERIOD)
    .execute(pool)
    .await?;
    for split in 0..3i64 {
        sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO chain.split_versions ({META}, split_id, version, effective_at, recipients, bps, remainder_index)
             VALUES ($1, 2, $2, '\\x00', $3, $2, 0, $3, ARRAY['\\x0101010101010101010101010101010101010101'::BYTEA], ARRAY[10000], 0)"
        )))
        .bind(CHAIN_ID)
        .bind(split)
        .bind(T0 - 10)
        .execute(pool)
        .await?;
    }
    let ids: Vec<i64> = (0..SUBSCRIPTIONS as i64).collect();
    let wallets: Vec<Vec<u8>> = (0..SUBSCRIPTIONS).map(|i| subscriber(i).to_vec()).collect();
    sqlx::query(AssertSqlSafe(format!(
        "INSERT INTO chain.subscribed ({META}, subscription_id, subscriber, plan_id, overage_cap, paid_through, amount, from_credit)
         SELECT $1, 3 + id, 0, '\\x00', $2, id, wallet, 1, 10000000000, $3, 79000000, 0
         FROM UNNEST($4::BIGINT[], $5::BYTEA[]) AS t(id, wallet)"
    )))
    .bind(CHAIN_ID)
    .bind(T0)
    .bind(T0 + PERIOD)
    .bind(&ids)
    .bind(&wallets)
    .execute(pool)
    .await?;
    Ok(())
}

async fn seed_catalog(pool: &PgPool) -> Result<()> {
    let models: [(&str, &[(&str, &str, &str)]); 3] = [
        ("llm-large", &[("input_tokens", "3", "1000000"), ("output_tokens", "15", "1000000")]),
        ("image-gen", &[("images", "0.04", "1")]),
        ("gpu-box", &[("gpu_seconds", "0.0008", "1")]),
    ];
    for (split, (model, meters)) in models.iter().enumerate() {
        let new = NewModel {
            model_id: (*model).into(),
            display_name: model.to_uppercase(),
            split_id: split as u64,
            effective_at: 0,
            meters: meters.iter().map(|(m, _, _)| NewMeter { meter: (*m).into(), scale: 3 }).collect(),
        };
        catalog::add_model(pool, CHAIN_ID as u64, &new).await?;
        for (meter, price, per) in meters.iter() {
            let price = NewPrice {
                model_id: (*model).into(),
                meter: (*meter).into(),
                unit_price: price.parse()?,
                per_units: per.parse()?,
                effective_at: 0,
            };
            catalog::set_price(pool, &price).await?;
        }
    }
    let allowance = NewAllowance {
        plan_id: 1,
        effective_at: 0,
        units: [("input_tokens".to_owned(), Decimal::from(2_000_000))].into(),
        value: Decimal::from(20),
    };
    catalog::set_allowance(pool, CHAIN_ID as u64, &allowance).await?;
    Ok(())
}

/// Batch `n` as JSON: 1,000 events of 10 subscriptions (100 each), spread over the models and the period.
fn batch_body(n: u64) -> String {
    const METERS: [(&str, &str); 4] =
        [("llm-large", "input_tokens"), ("llm-large", "output_tokens"), ("image-gen", "images"), ("gpu-box", "gpu_seconds")];
    let events: Vec<serde_json::Value> = (0..BATCH)
        .map(|k| {
            let global = n * BATCH + k;
            let (model, meter) = METERS[(global % 4) as usize];
            serde_json::json!({
                "event_id": format!("ev-{global:08}"),
                "subscriber": subscriber(global / EVENTS_PER_SUBSCRIPTION).to_string(),
                "model": model,
                "meter": meter,
                "quantity": format!("{}.{}", 1 + global % 5_000, global % 1_000),
                "timestamp": T0 + 60 + (global % EVENTS_PER_SUBSCRIPTION) as i64 * 3_600,
            })
        })
        .collect();
    serde_json::Value::Array(events).to_string()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

async fn post(client: &reqwest::Client, url: &str, body: &str) -> Result<serde_json::Value> {
    let response = client.post(url).bearer_auth(TOKEN).header("content-type", "application/json").body(body.to_owned()).send().await?;
    anyhow::ensure!(response.status().is_success(), "status {}", response.status());
    Ok(response.json().await?)
}

#[tokio::main]
async fn main() -> Result<()> {
    let db = TestDatabase::create().await?;
    let pool = sqlx::postgres::PgPoolOptions::new().max_connections(16).connect(db.url()).await?;
    subsettle_keeper::store::migrate(&pool).await?;
    seed_chain(&pool).await?;
    seed_catalog(&pool).await?;
    let clock = Clock::manual((T0 + 100 * 3_600 + 60) * 1000);
    let settings =
        ApiSettings { chain_id: CHAIN_ID as u64, api_token: Some(TOKEN.into()), decimals: 6, max_body_bytes: 8 << 20, max_future_ms: 300_000 };
    let keeper = subsettle_keeper::metering::api::Keeper::load(pool.clone(), settings, clock.clone()).await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/v1/usage", listener.local_addr()?);
    let app = router(keeper.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });

    let batches = SUBSCRIPTIONS * EVENTS_PER_SUBSCRIPTION / BATCH;
    eprintln!("preparing {batches} batches of {BATCH} events");
    let bodies: Arc<Vec<String>> = Arc::new((0..batches).map(batch_body).collect());
    let client = reqwest::Client::new();

    // 1. Sustained ingest.
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..CLIENTS {
        let (client, url, bodies, next) = (client.clone(), url.clone(), bodies.clone(), next.clone());
        workers.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed) as usize;
                let Some(body) = bodies.get(n) else { return Ok::<_, anyhow::Error>(latencies) };
                let sent = Instant::now();
                let report = post(&client, &url, body).await?;
                latencies.push(sent.elapsed());
                anyhow::ensure!(report["accepted"] == BATCH, "batch {n}: {}", report.to_string().chars().take(400).collect::<String>());
            }
        }));
    }
    let mut latencies = Vec::new();
    for worker in workers {
        latencies.extend(worker.await??);
    }
    let elapsed = started.elapsed();
    latencies.sort_unstable();
    let stored: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM keeper.usage_events").fetch_one(&pool).await?;
    anyhow::ensure!(stored as u64 == batches * BATCH, "stored {stored}");
    println!(
        "ingest: {stored} events in {:.2} s = {:.0} events/s over HTTP ({CLIENTS} clients, batches of {BATCH}); per batch p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        elapsed.as_secs_f64(),
        stored as f64 / elapsed.as_secs_f64(),
        ms(percentile(&latencies, 0.50)),
        ms(percentile(&latencies, 0.99)),
        ms(*latencies.last().expect("batches"))
    );

    // 2. Resend: every event a duplicate, nothing stored.
    let started = Instant::now();
    for body in bodies.iter().take(20) {
        let report = post(&client, &url, body).await?;
        anyhow::ensure!(report["duplicates"] == BATCH, "resend not all duplicates");
    }
    let resend = started.elapsed();
    let after: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM keeper.usage_events").fetch_one(&pool).await?;
    anyhow::ensure!(after == stored, "a resend stored events");
    println!("resend: 20 batches, all duplicates, {:.0} events/s", 20.0 * BATCH as f64 / resend.as_secs_f64());

    // 3. Entitlement at the server.
    keeper.refresh().await?;
    let now = clock.now_secs();
    let mut samples = Vec::with_capacity(200_000);
    let mut entitled = 0u64;
    for i in 0..200_000u64 {
        let who = subscriber((i * 7_919) % SUBSCRIPTIONS);
        let t = Instant::now();
        let answer = keeper.entitlements.read().expect("lock").check(who, now);
        samples.push(t.elapsed());
        entitled += u64::from(answer.entitled);
    }
    samples.sort_unstable();
    println!(
        "entitlement: 200000 checks ({entitled} entitled), p50 {:.1} us, p99 {:.1} us, max {:.1} us",
        percentile(&samples, 0.50).as_secs_f64() * 1e6,
        percentile(&samples, 0.99).as_secs_f64() * 1e6,
        samples.last().expect("samples").as_secs_f64() * 1e6
    );

    // 4. Period close of every subscription.
    let snapshot = catalog::load(&pool).await?;
    let options = CloseOptions { chain_id: CHAIN_ID as u64, late_cutoff: 3_600, decimals: 6, default_split: Some(0), batch: 2_000 };
    let started = Instant::now();
    let report = close_due_periods(&pool, &snapshot, &options, T0 + PERIOD + 3_700).await?;
    let elapsed = started.elapsed();
    anyhow::ensure!(report.periods == SUBSCRIPTIONS && report.events == SUBSCRIPTIONS * EVENTS_PER_SUBSCRIPTION, "{report:?}");
    let (collected, attributed): (String, String) = sqlx::query_as(
        "SELECT (SELECT SUM(collected) FROM keeper.period_closes)::TEXT, (SELECT SUM(attributed) FROM keeper.usage_lines)::TEXT",
    )
    .fetch_one(&pool)
    .await?;
    anyhow::ensure!(collected == attributed, "collected {collected} != attributed {attributed}");
    println!(
        "period close: {} subscriptions, {} events, {} lines in {:.2} s ({collected} base units collected and attributed)",
        report.periods,
        report.events,
        report.lines,
        elapsed.as_secs_f64()
    );
    Ok(())
}
