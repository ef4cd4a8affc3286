//! The keeper's API measured from outside, as a gateway uses it (`cargo bench -p subsettle-keeper --bench http`):
//! real `subsettle-keeper serve` processes (the bench profile's build of the binary, optimized like `--release`)
//! on one Postgres, driven over HTTP by keep-alive clients in this process.
//!
//! 1. Ingest with one `serve`, then with three on one database (a fresh one each time, clients spread over them
//!    round robin, as a load balancer does): 4 clients each keep one batch of 1,000 events in flight (10
//!    subscriptions x 100 events, every event billable or included, judged against caps and funds) until
//!    1,000,000 events are stored; events/s, and the per-batch latency p50, p99 and max.
//! 2. Entitlement on the one-`serve` database after its ingest: 16 clients each keep one
//!    `GET /v1/entitlement/{wallet}` in flight, 200,000 requests in all; p50, p99 and max per request. Then the
//!    same load on `/healthz` (a constant answer): the floor of HTTP and the client on these cores.
//!
//! `SUBSETTLE_BENCH_SERVE_ARGS` adds flags to every `serve` (e.g. `--refresh-interval-ms 60000`),
//! `SUBSETTLE_BENCH_BINARY` runs another build of the binary (an earlier commit's, to compare); an argument
//! after `--` runs only the configurations whose name contains it (`one`, `three`).
//!
//! Each phase also reports the CPU time the `serve` processes, Postgres and this process (the clients) used,
//! as a share of the wall time: on a 2-core machine they compete for the same cores.
//!
//! The 10,000 subscriptions are seeded as indexed rows in schema `chain` (creating them through the contracts would
//! measure anvil, not the keeper), on a real deployment on anvil that `serve` checks and reads funds from; each
//! wallet's balance and allowance are written into the token's storage (`anvil_setStorageAt`) instead of 20,000
//! transactions.

use std::{
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use alloy::{
    primitives::{Address, B256, U256, keccak256},
    providers::Provider,
    sol_types::SolValue,
};
use anyhow::{Context, Result};
use futures::{StreamExt, TryStreamExt};
use rust_decimal::Decimal;
use sqlx::{AssertSqlSafe, PgPool};
use subsettle_keeper::{
    metering::catalog::{self, NewAllowance, NewMeter, NewModel, NewPrice},
    operator::deploy::{DeployPlan, TokenSource, deploy},
    signer::OperatorKey,
};
use subsettle_testkit::{TestChain, TestDatabase};

const CHAIN_ID: i64 = 31_337;
const SUBSCRIPTIONS: u64 = 10_000;
const EVENTS_PER_SUBSCRIPTION: u64 = 100;
const BATCH: u64 = 1_000;
const INGEST_CLIENTS: usize = 4;
const ENTITLEMENT_CLIENTS: usize = 16;
const ENTITLEMENT_REQUESTS: u64 = 200_000;
/// What an entitled answer says (the API writes compact JSON).
const ENTITLED: &[u8] = b"\"entitled\":true";
const PERIOD: i64 = 30 * 86_400;
/// A cap no subscriber reaches: the load measures admission, not refusals.
const OVERAGE_CAP: u64 = 10_000_000_000;
const TOKEN: &str = "bench-operator-token-0123456789";
const META: &str = "chain_id, block_number, log_index, tx_hash, block_time";

fn subscriber(i: u64) -> Address {
    let mut bytes = [0u8; 20];
    bytes[12..].copy_from_slice(&(i + 1).to_be_bytes());
    Address::from(bytes)
}

fn now_secs() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs() as i64
}

/// Storage slots of `FiatTokenV2_2`'s balances and allowances.
const BALANCE_SLOT: u64 = 9;
const ALLOWANCE_SLOT: u64 = 10;

/// The chain side: anvil with the contracts deployed, every bench wallet funded and approved in the token's storage.
struct Chain {
    chain: TestChain,
    deployment_file: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

async fn start_chain() -> Result<Chain> {
    let chain = TestChain::spawn()?;
    let dir = tempfile::tempdir()?;
    let key_file = dir.path().join("operator.key");
    std::fs::write(&key_file, alloy::hex::encode_prefixed(chain.signer(0).to_bytes()))?;
    let plan = DeployPlan {
        rpc_url: chain.endpoint(),
        token: TokenSource::LocalUsdc,
        keeper: None,
        charge_window_secs: 2 * 86_400,
        split_change_delay_secs: 7 * 86_400,
        max_hold_secs: 30 * 86_400,
    };
    let deployment = deploy(&plan, &OperatorKey::load(Some(&key_file))?).await?;
    let deployment_file = dir.path().join("deployment.json");
    deployment.save(&deployment_file)?;
    // FiatTokenV2_2 (behind its proxy, whose own slots are unstructured) keeps `balanceAndBlacklistStates` in
    // slot 9 (the balance in the low 255 bits, the blacklist flag in the top bit) and `allowed` in slot 10.
    let provider = chain.provider(0);
    let amount = B256::from(U256::from(1_000_000_000_000u64)); // 1,000,000 USDC
    let writes: Vec<(B256, Address)> = (0..SUBSCRIPTIONS)
        .flat_map(|i| {
            let wallet = subscriber(i);
            let balance = keccak256((wallet, U256::from(BALANCE_SLOT)).abi_encode());
            let allowance = keccak256((deployment.subscriptions, keccak256((wallet, U256::from(ALLOWANCE_SLOT)).abi_encode())).abi_encode());
            [(balance, wallet), (allowance, wallet)]
        })
        .collect();
    futures::stream::iter(writes)
        .map(|(slot, _)| {
            let provider = provider.clone();
            async move { provider.raw_request::<_, bool>("anvil_setStorageAt".into(), (deployment.token, slot, amount)).await.context("anvil_setStorageAt") }
        })
        .buffer_unordered(32)
        .try_collect::<Vec<_>>()
        .await?;
    let token = subsettle_abi::usdc::FiatTokenV2_2::new(deployment.token, &provider);
    let last = subscriber(SUBSCRIPTIONS - 1);
    anyhow::ensure!(token.balanceOf(last).call().await? == U256::from(1_000_000_000_000u64), "the balance slot is not slot {BALANCE_SLOT}");
    anyhow::ensure!(token.allowance(last, deployment.subscriptions).call().await? == U256::from(1_000_000_000_000u64), "the allowance slot is not slot {ALLOWANCE_SLOT}");
    Ok(Chain { chain, deployment_file, _dir: dir })
}

async fn seed_indexer(pool: &PgPool) -> Result<()> {
    subsettle_indexer::store::Store::open(pool.clone()).await?;
    Ok(())
}

/// Applies the keeper's migrations: the library's, or those of the binary under test when it is another build (its
/// commands migrate when they connect).
async fn migrate_keeper(pool: &PgPool, chain: &Chain, database_url: &str) -> Result<()> {
    match std::env::var("SUBSETTLE_BENCH_BINARY") {
        Ok(binary) => {
            let out = Command::new(binary)
                .arg("status")
                .env("DATABASE_URL", database_url)
                .env("SUBSETTLE_DEPLOYMENT", &chain.deployment_file)
                .env("RUST_LOG", "warn")
                .output()
                .context("running the binary's status")?;
            anyhow::ensure!(out.status.success(), "status: {}", String::from_utf8_lossy(&out.stderr));
        }
        Err(_) => subsettle_keeper::store::migrate(pool).await?,
    }
    Ok(())
}

async fn seed_keeper(pool: &PgPool, t0: i64) -> Result<()> {
    sqlx::query(AssertSqlSafe(format!(
        "INSERT INTO chain.plans ({META}, plan_id, price, period, grace_period) VALUES ($1, 1, 0, '\\x00', $2, 1, 79000000, $3, 259200)"
    )))
    .bind(CHAIN_ID)
    .bind(t0 - 10)
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
        .bind(t0 - 10)
        .execute(pool)
        .await?;
    }
    let ids: Vec<i64> = (0..SUBSCRIPTIONS as i64).collect();
    let wallets: Vec<Vec<u8>> = (0..SUBSCRIPTIONS).map(|i| subscriber(i).to_vec()).collect();
    sqlx::query(AssertSqlSafe(format!(
        "INSERT INTO chain.subscribed ({META}, subscription_id, subscriber, plan_id, overage_cap, paid_through, amount, from_credit)
         SELECT $1, 3 + id, 0, '\\x00', $2, id, wallet, 1, $6, $3, 79000000, 0
         FROM UNNEST($4::BIGINT[], $5::BYTEA[]) AS t(id, wallet)"
    )))
    .bind(CHAIN_ID)
    .bind(t0)
    .bind(t0 + PERIOD)
    .bind(&ids)
    .bind(&wallets)
    .bind(Decimal::from(OVERAGE_CAP))
    .execute(pool)
    .await?;
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
            let price = NewPrice { model_id: (*model).into(), meter: (*meter).into(), unit_price: price.parse()?, per_units: per.parse()?, effective_at: 0 };
            catalog::set_price(pool, &price).await?;
        }
    }
    let allowance =
        NewAllowance { plan_id: 1, effective_at: 0, units: [("input_tokens".to_owned(), Decimal::from(2_000_000))].into(), value: Decimal::from(20) };
    catalog::set_allowance(pool, CHAIN_ID as u64, &allowance).await?;
    Ok(())
}

/// Batch `n` as JSON: 1,000 events of 10 subscriptions (100 each), spread over the models and the day before now.
fn batch_body(n: u64, t0: i64) -> String {
    const METERS: [(&str, &str); 4] = [("llm-large", "input_tokens"), ("llm-large", "output_tokens"), ("image-gen", "images"), ("gpu-box", "gpu_seconds")];
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
                "timestamp": t0 + 60 + (global % EVENTS_PER_SUBSCRIPTION) as i64 * 600,
            })
        })
        .collect();
    serde_json::Value::Array(events).to_string()
}

/// A `serve` process, killed when dropped.
struct Serve {
    child: Child,
    url: String,
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn start_serve(chain: &Chain, database_url: &str) -> Result<Serve> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let binary = std::env::var("SUBSETTLE_BENCH_BINARY").unwrap_or_else(|_| env!("CARGO_BIN_EXE_subsettle-keeper").to_owned());
    let child = Command::new(binary)
        .args(["serve", "--http-addr", &format!("127.0.0.1:{port}"), "--default-split", "0", "--rpc-url", &chain.chain.endpoint()])
        .args(["--funds-interval", "10m"])
        .args(std::env::var("SUBSETTLE_BENCH_SERVE_ARGS").unwrap_or_default().split_whitespace())
        .env("DATABASE_URL", database_url)
        .env("SUBSETTLE_DEPLOYMENT", &chain.deployment_file)
        .env("SUBSETTLE_API_TOKEN", TOKEN)
        .env("RUST_LOG", "warn")
        .env_remove("SUBSETTLE_RPC_URL")
        .stdout(Stdio::null())
        .spawn()
        .context("starting subsettle-keeper serve")?;
    let mut serve = Serve { child, url: format!("http://127.0.0.1:{port}") };
    let client = reqwest::Client::new();
    let started = Instant::now();
    while client.get(format!("{}/healthz", serve.url)).send().await.is_err() {
        if let Some(status) = serve.child.try_wait()? {
            anyhow::bail!("serve exited with {status} (its log is above)");
        }
        anyhow::ensure!(started.elapsed() < Duration::from_secs(300), "serve did not come up in 300 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("serve up in {:.1} s (it reads every wallet's funds first)", started.elapsed().as_secs_f64());
    Ok(serve)
}

/// CPU seconds used so far by process `pid` (user + system), from `/proc`.
fn cpu_secs(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return 0.0 };
    let fields: Vec<&str> = stat.rsplit_once(')').map(|(_, rest)| rest.split_whitespace().collect()).unwrap_or_default();
    let ticks: u64 = fields.get(11).and_then(|v| v.parse().ok()).unwrap_or(0) + fields.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
    ticks as f64 / 100.0
}

/// CPU seconds of the Postgres cluster: the server and every backend (its children).
fn postgres_cpu_secs(server: u32) -> f64 {
    let mut total = cpu_secs(server);
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
        let parent = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().nth(1)).and_then(|p| p.parse::<u32>().ok());
        if parent == Some(server) {
            total += cpu_secs(pid);
        }
    }
    total
}

/// CPU used by the serves, Postgres and this process over a phase.
struct Cpu {
    serves: Vec<u32>,
    postgres: Option<u32>,
    at: Instant,
    before: [f64; 3],
}

impl Cpu {
    fn start(serves: &[&Serve], postgres: Option<u32>) -> Self {
        let mut cpu = Self { serves: serves.iter().map(|s| s.child.id()).collect(), postgres, at: Instant::now(), before: [0.0; 3] };
        cpu.before = cpu.sample();
        cpu
    }

    fn sample(&self) -> [f64; 3] {
        [self.serves.iter().map(|p| cpu_secs(*p)).sum(), self.postgres.map_or(0.0, postgres_cpu_secs), cpu_secs(std::process::id())]
    }

    fn report(&self) -> String {
        let wall = self.at.elapsed().as_secs_f64();
        let after = self.sample();
        let share = |i: usize| (after[i] - self.before[i]) / wall * 100.0;
        let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
        format!(
            "CPU over {wall:.1} s: serve {:.0} %, postgres {:.0} %, clients {:.0} % (of one core; 2 cores = 200 %); loadavg {}",
            share(0),
            share(1),
            share(2),
            load.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
        )
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Posts every batch with `INGEST_CLIENTS` clients, batch `n` to serve `n % serves`; returns events/s and latencies.
async fn ingest(client: &reqwest::Client, serves: &[&Serve], bodies: Arc<Vec<String>>) -> Result<(f64, Vec<Duration>)> {
    let urls: Arc<Vec<String>> = Arc::new(serves.iter().map(|s| format!("{}/v1/usage", s.url)).collect());
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..INGEST_CLIENTS {
        let (client, urls, bodies, next) = (client.clone(), urls.clone(), bodies.clone(), next.clone());
        workers.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed) as usize;
                let Some(body) = bodies.get(n) else { return Ok::<_, anyhow::Error>(latencies) };
                let sent = Instant::now();
                let response =
                    client.post(&urls[n % urls.len()]).bearer_auth(TOKEN).header("content-type", "application/json").body(body.clone()).send().await?;
                let status = response.status();
                let report: serde_json::Value = response.json().await?;
                latencies.push(sent.elapsed());
                anyhow::ensure!(
                    status.is_success() && report["accepted"] == BATCH,
                    "batch {n}: {status} {}",
                    report.to_string().chars().take(400).collect::<String>()
                );
            }
        }));
    }
    let mut latencies = Vec::new();
    for worker in workers {
        latencies.extend(worker.await??);
    }
    let elapsed = started.elapsed();
    latencies.sort_unstable();
    Ok((bodies.len() as f64 * BATCH as f64 / elapsed.as_secs_f64(), latencies))
}

/// One ingest configuration on a fresh database: `replicas` serves.
async fn ingest_config(chain: &Chain, replicas: usize, entitlement_after: bool) -> Result<()> {
    let db = TestDatabase::create().await?;
    let pool = sqlx::postgres::PgPoolOptions::new().max_connections(4).connect(db.url()).await?;
    let t0 = now_secs() - 2 * 86_400;
    seed_indexer(&pool).await?;
    migrate_keeper(&pool, chain, db.url()).await?;
    seed_keeper(&pool, t0).await?;
    let mut serves = Vec::new();
    for _ in 0..replicas {
        serves.push(start_serve(chain, db.url()).await?);
    }
    let serve_refs: Vec<&Serve> = serves.iter().collect();
    let batches = SUBSCRIPTIONS * EVENTS_PER_SUBSCRIPTION / BATCH;
    let bodies: Arc<Vec<String>> = Arc::new((0..batches).map(|n| batch_body(n, t0)).collect());
    let client = reqwest::Client::builder().pool_max_idle_per_host(64).build()?;

    let cpu = Cpu::start(&serve_refs, db.server_pid());
    let (rate, latencies) = ingest(&client, &serve_refs, bodies.clone()).await?;
    let usage = cpu.report();
    let stored: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM keeper.usage_events").fetch_one(&pool).await?;
    anyhow::ensure!(stored as u64 == batches * BATCH, "stored {stored}");
    println!(
        "ingest, {replicas} serve{}: {stored} events, {rate:.0} events/s ({INGEST_CLIENTS} clients, batches of {BATCH}); per batch p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        if replicas == 1 { "" } else { "s" },
        ms(percentile(&latencies, 0.50)),
        ms(percentile(&latencies, 0.99)),
        ms(*latencies.last().expect("batches"))
    );
    println!("  {usage}");

    if entitlement_after {
        entitlement(&client, serves[0].url.clone(), &serve_refs, db.server_pid()).await?;
    }
    Ok(())
}

/// `ENTITLEMENT_REQUESTS` GETs from `ENTITLEMENT_CLIENTS` clients against one serve; then the same load on
/// `/healthz`, which answers a constant: the floor that HTTP, the client and the two shared cores set under any
/// handler.
async fn entitlement(client: &reqwest::Client, url: String, serves: &[&Serve], postgres: Option<u32>) -> Result<()> {
    // Warm the connections first.
    for i in 0..ENTITLEMENT_CLIENTS as u64 {
        client.get(format!("{url}/v1/entitlement/{}", subscriber(i))).send().await?.bytes().await?;
    }
    // The URLs are built once and answers only searched for `"entitled":true`: the clients share the two cores
    // with the server, and parsing would measure them more than it.
    let urls: Vec<reqwest::Url> =
        (0..SUBSCRIPTIONS).map(|i| reqwest::Url::parse(&format!("{url}/v1/entitlement/{}", subscriber(i)))).collect::<Result<_, _>>()?;
    let (entitled, rate) = get_load(client, urls, ENTITLED, serves, postgres, "entitlement").await?;
    anyhow::ensure!(entitled == ENTITLEMENT_REQUESTS, "{entitled} of {ENTITLEMENT_REQUESTS} answers entitled");
    let floor = vec![reqwest::Url::parse(&format!("{url}/healthz"))?];
    let (ok, floor_rate) = get_load(client, floor, b"ok", serves, postgres, "floor (/healthz)").await?;
    anyhow::ensure!(ok == ENTITLEMENT_REQUESTS, "{ok} of {ENTITLEMENT_REQUESTS} /healthz answers ok");
    println!("  entitlement throughput {:.0} % of the floor's", 100.0 * rate / floor_rate);
    Ok(())
}

/// `ENTITLEMENT_REQUESTS` GETs of `urls` (taken in a scattered order) from `ENTITLEMENT_CLIENTS` keep-alive
/// clients; prints p50, p99 and max per request and the CPU shares. Returns how many answers contained `expect`
/// and the requests per second.
async fn get_load(
    client: &reqwest::Client,
    urls: Vec<reqwest::Url>,
    expect: &'static [u8],
    serves: &[&Serve],
    postgres: Option<u32>,
    label: &str,
) -> Result<(u64, f64)> {
    let urls = Arc::new(urls);
    let next = Arc::new(AtomicU64::new(0));
    let cpu = Cpu::start(&serves[..1], postgres);
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..ENTITLEMENT_CLIENTS {
        let (client, urls, next) = (client.clone(), urls.clone(), next.clone());
        workers.push(tokio::spawn(async move {
            let (mut latencies, mut matched) = (Vec::new(), 0u64);
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= ENTITLEMENT_REQUESTS {
                    return Ok::<_, anyhow::Error>((latencies, matched));
                }
                let sent = Instant::now();
                let response = client.get(urls[((i * 7_919) % urls.len() as u64) as usize].clone()).send().await?;
                anyhow::ensure!(response.status().is_success(), "status {}", response.status());
                let body = response.bytes().await?;
                latencies.push(sent.elapsed());
                matched += u64::from(body.windows(expect.len()).any(|w| w == expect));
            }
        }));
    }
    let (mut latencies, mut matched) = (Vec::new(), 0u64);
    for worker in workers {
        let (l, m) = worker.await??;
        latencies.extend(l);
        matched += m;
    }
    let elapsed = started.elapsed();
    let usage = cpu.report();
    latencies.sort_unstable();
    let rate = ENTITLEMENT_REQUESTS as f64 / elapsed.as_secs_f64();
    println!(
        "{label}, 1 serve: {ENTITLEMENT_REQUESTS} GETs from {ENTITLEMENT_CLIENTS} clients in {:.2} s = {rate:.0}/s; p50 {:.3} ms, p99 {:.3} ms, max {:.1} ms",
        elapsed.as_secs_f64(),
        ms(percentile(&latencies, 0.50)),
        ms(percentile(&latencies, 0.99)),
        ms(*latencies.last().expect("requests"))
    );
    println!("  {usage}");
    Ok((matched, rate))
}

#[tokio::main]
async fn main() -> Result<()> {
    let only = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    let wants = |name: &str| only.as_deref().is_none_or(|o| name.contains(o));
    eprintln!("starting anvil, deploying, funding {SUBSCRIPTIONS} wallets");
    let chain = start_chain().await?;
    println!("machine: {} cores; loadavg {}", std::thread::available_parallelism().map_or(0, |n| n.get()), std::fs::read_to_string("/proc/loadavg")?.trim());
    if wants("one") {
        ingest_config(&chain, 1, true).await?;
    }
    if wants("three") {
        ingest_config(&chain, 3, false).await?;
    }
    Ok(())
}
