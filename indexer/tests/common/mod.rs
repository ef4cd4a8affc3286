//! Helpers shared by the indexer's integration tests: deploying, driving time, an indexer wired to the harness, a
//! busy history (thousands of events), a fault-injecting RPC proxy, and a check that the index holds exactly the
//! chain's logs.
#![allow(dead_code, unreachable_pub)]

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
};

use alloy::{
    hex,
    primitives::{B256, U256},
    providers::{DynProvider, Provider},
    rpc::types::Filter,
    sol_types::SolEvent,
};
use sqlx::{AssertSqlSafe, PgPool};
use subsettle_abi::{Deployment, Subscriptions, usdc::FiatTokenV2_2};
use subsettle_indexer::{
    decode::TYPED_TABLES,
    metrics::Metrics,
    source::{ChainSource, Retry},
    store::Store,
    sync::{Indexer, SyncOptions},
};
use subsettle_keeper::{
    operator::deploy::{DeployPlan, TokenSource, deploy},
    signer::OperatorKey,
};
use subsettle_testkit::{TestChain, TestDatabase};

/// One USDC (6 decimals).
pub const USDC: u64 = 1_000_000;
/// Seconds in a day.
pub const DAY: u64 = 86_400;
/// The plan every subscriber takes: $79 per 30 days, 3 days of grace.
pub const PRICE: u64 = 79 * USDC;
/// Its period.
pub const PERIOD: u64 = 30 * DAY;
/// Its grace period.
pub const GRACE: u64 = 3 * DAY;

/// `U256::from`.
pub fn u(v: u64) -> U256 {
    U256::from(v)
}

/// A deterministic xorshift64* generator (fixed seeds keep the tests reproducible).
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from a non-zero seed.
    pub fn new(seed: u64) -> Self {
        Self(seed.max(1))
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A number in `[low, high]`.
    pub fn between(&mut self, low: u64, high: u64) -> u64 {
        low + self.next_u64() % (high - low + 1)
    }
}

/// Sends a transaction built by a contract binding and waits for a successful receipt.
#[macro_export]
macro_rules! confirm {
    ($call:expr) => {{
        let pending = $call.send().await.expect("send");
        let receipt = $crate::common::receipt(pending.provider(), *pending.tx_hash()).await;
        assert!(receipt.status(), "transaction reverted: {}", stringify!($call));
        receipt
    }};
}

/// Waits for the receipt of `hash`, polling every millisecond (anvil mines at once; alloy's own watcher polls
/// every 250 ms, which makes thousands of transactions slow).
pub async fn receipt<P: Provider>(provider: &P, hash: B256) -> alloy::rpc::types::TransactionReceipt {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        if let Some(receipt) = provider.get_transaction_receipt(hash).await.expect("eth_getTransactionReceipt") {
            return receipt;
        }
        assert!(std::time::Instant::now() < deadline, "transaction {hash} was not mined");
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
}

/// Deploys Circle's USDC, SplitEscrow and Subscriptions with `subsettle-keeper deploy`; dev account 0 owns them and
/// is the keeper. The operator key comes from a file, as an operator provides it.
pub async fn deploy_contracts(chain: &TestChain) -> Deployment {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("operator.key");
    std::fs::write(&path, hex::encode_prefixed(chain.signer(0).to_bytes())).unwrap();
    let plan = DeployPlan {
        rpc_url: chain.endpoint(),
        token: TokenSource::LocalUsdc,
        keeper: None,
        charge_window_secs: 2 * DAY,
        split_change_delay_secs: 7 * DAY,
        max_hold_secs: 30 * DAY,
    };
    deploy(&plan, &OperatorKey::load(Some(&path)).unwrap()).await.unwrap()
}

/// Writes the deployment descriptor into `dir` for the binary's `--deployment`.
pub fn save_deployment(deployment: &Deployment, dir: &Path) -> PathBuf {
    let path = dir.join("deployment.json");
    deployment.save(&path).unwrap();
    path
}

/// Creates the $79 / 30 days plan (grace 3 days) and returns its id.
pub async fn create_plan(chain: &TestChain, deployment: &Deployment) -> U256 {
    let operator = chain.provider(0);
    let subs = Subscriptions::new(deployment.subscriptions, &operator);
    let receipt = confirm!(subs.createPlan(u(PRICE), u(PERIOD), u(GRACE)));
    receipt.decoded_log::<Subscriptions::PlanCreated>().expect("a PlanCreated event").planId
}

/// Mints enough USDC to dev accounts `accounts` for `periods` renewals of `per_account` subscriptions each, has
/// them approve Subscriptions, subscribes each `per_account` times to `plan` and returns the subscription ids.
pub async fn fund_and_subscribe(
    chain: &TestChain,
    deployment: &Deployment,
    plan: U256,
    accounts: std::ops::RangeInclusive<usize>,
    per_account: usize,
    periods: u64,
) -> Vec<U256> {
    let operator = chain.provider(0);
    let token = FiatTokenV2_2::new(deployment.token, &operator);
    let mut ids = Vec::new();
    for i in accounts {
        let who = chain.address(i);
        confirm!(token.mint(who, u(PRICE * (periods + 2) * per_account as u64)));
        let provider = chain.provider(i);
        confirm!(FiatTokenV2_2::new(deployment.token, &provider).approve(deployment.subscriptions, U256::MAX));
        let subs = Subscriptions::new(deployment.subscriptions, &provider);
        for _ in 0..per_account {
            let receipt = confirm!(subs.subscribe(plan, u(0)));
            ids.push(receipt.decoded_log::<Subscriptions::Subscribed>().expect("a Subscribed event").id);
        }
    }
    ids
}

/// Moves anvil's clock forward by `seconds` and mines one block.
pub async fn advance(provider: &DynProvider, seconds: u64) {
    let _: serde_json::Value = provider.raw_request("evm_increaseTime".into(), (seconds,)).await.unwrap();
    let _: serde_json::Value = provider.raw_request("evm_mine".into(), ()).await.unwrap();
}

/// The shape of a generated history.
#[derive(Debug, Clone, Copy)]
pub struct Workload {
    /// Dev accounts 1..=`subscribers` subscribe (at most 9).
    pub subscribers: usize,
    /// Subscriptions per subscriber.
    pub per_account: usize,
    /// Renewal periods.
    pub periods: u64,
    /// Subscriptions renewed per `renew` transaction (one block each).
    pub batch: usize,
}

impl Default for Workload {
    /// 30 subscriptions renewed over 100 periods, 10 per transaction: 3,000 Renewed events plus the setup's, in
    /// about 450 blocks (anvil mines a block in a few milliseconds, so more blocks would cost more than events).
    fn default() -> Self {
        Self { subscribers: 6, per_account: 5, periods: 100, batch: 10 }
    }
}

/// What [`generate_events`] produced.
#[derive(Debug, Clone)]
pub struct History {
    /// The plan.
    pub plan: U256,
    /// The subscriptions.
    pub ids: Vec<U256>,
    /// Renewed events emitted.
    pub renewals: u64,
    /// The head block after the history.
    pub head: u64,
}

/// Creates the plan, funds and subscribes the subscribers, then for each period advances the clock by one period
/// and renews every subscription in batches: each renewal emits one Renewed event.
pub async fn generate_events(chain: &TestChain, deployment: &Deployment, workload: Workload) -> History {
    assert!((1..=9).contains(&workload.subscribers), "dev accounts 1..=9 are the subscribers");
    let plan = create_plan(chain, deployment).await;
    let ids = fund_and_subscribe(chain, deployment, plan, 1..=workload.subscribers, workload.per_account, workload.periods)
        .await;
    let keeper = chain.provider(0);
    let subs = Subscriptions::new(deployment.subscriptions, &keeper);
    let mut renewals = 0;
    for _ in 0..workload.periods {
        advance(&keeper, PERIOD).await;
        for batch in ids.chunks(workload.batch.max(1)) {
            let receipt = confirm!(subs.renew(batch.to_vec()));
            let renewed = receipt
                .logs()
                .iter()
                .filter(|log| log.topic0() == Some(&Subscriptions::Renewed::SIGNATURE_HASH))
                .count();
            assert_eq!(renewed, batch.len(), "every subscription in the batch renewed");
            renewals += renewed as u64;
        }
    }
    let head = keeper.get_block_number().await.unwrap();
    History { plan, ids, renewals, head }
}

/// A log's identity and content as the index stores it in `chain.raw_logs`.
type LogRow = (i64, i32, Vec<u8>, Vec<u8>, Vec<u8>, Vec<Vec<u8>>, Vec<u8>);

/// What [`assert_index_matches_chain`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexState {
    /// The cursor (`None` before the first commit).
    pub cursor: Option<u64>,
    /// Logs indexed (equal to the chain's up to the cursor).
    pub logs: usize,
}

/// The cursor of `deployment`, if any.
pub async fn cursor(pool: &PgPool, deployment: &Deployment) -> Option<u64> {
    let migrated: bool = sqlx::query_scalar("SELECT to_regclass('chain.deployments') IS NOT NULL")
        .fetch_one(pool)
        .await
        .unwrap();
    if !migrated {
        return None;
    }
    let cursor: Option<Option<i64>> = sqlx::query_scalar(
        "SELECT cursor_number FROM chain.deployments WHERE chain_id = $1 AND subscriptions = $2",
    )
    .bind(deployment.chain_id as i64)
    .bind(deployment.subscriptions.to_vec())
    .fetch_optional(pool)
    .await
    .unwrap();
    cursor.flatten().map(|n| u64::try_from(n).unwrap())
}

/// Checks that the index is exactly the chain up to its cursor: `chain.raw_logs` holds the logs `eth_getLogs`
/// returns for the two contracts over `[start_block, cursor]`, each once and byte for byte; the cursor's hash is
/// the canonical one; every typed table row has its raw log, the typed rows add up to the raw logs, and the
/// Subscribed, Renewed and PlanCreated rows match the counts of those events on the chain.
pub async fn assert_index_matches_chain(pool: &PgPool, deployment: &Deployment, provider: &DynProvider) -> IndexState {
    let chain_id = deployment.chain_id as i64;
    let Some(cursor) = cursor(pool, deployment).await else {
        // Not migrated yet, or migrated without a commit: no logs.
        let migrated: bool = sqlx::query_scalar("SELECT to_regclass('chain.raw_logs') IS NOT NULL")
            .fetch_one(pool)
            .await
            .unwrap();
        if migrated {
            let raw: i64 = sqlx::query_scalar("SELECT count(*) FROM chain.raw_logs WHERE chain_id = $1")
                .bind(chain_id)
                .fetch_one(pool)
                .await
                .unwrap();
            assert_eq!(raw, 0, "no logs before the first commit");
        }
        return IndexState { cursor: None, logs: 0 };
    };
    assert!(cursor >= deployment.start_block, "cursor {cursor} below the start block {}", deployment.start_block);

    // The cursor's hash is the canonical block's.
    let stored_hash: Vec<u8> = sqlx::query_scalar(
        "SELECT cursor_hash FROM chain.deployments WHERE chain_id = $1 AND subscriptions = $2",
    )
    .bind(chain_id)
    .bind(deployment.subscriptions.to_vec())
    .fetch_one(pool)
    .await
    .unwrap();
    let block = provider.get_block_by_number(cursor.into()).await.unwrap().expect("the cursor block exists");
    assert_eq!(B256::from_slice(&stored_hash), block.header.hash, "cursor hash of block {cursor}");

    // The chain's logs over [start_block, cursor], fetched in chunks.
    let mut logs = Vec::new();
    let mut from = deployment.start_block;
    while from <= cursor {
        let to = cursor.min(from + 1_999);
        let filter = Filter::new().address(vec![deployment.subscriptions, deployment.escrow]).from_block(from).to_block(to);
        logs.extend(provider.get_logs(&filter).await.unwrap());
        from = to + 1;
    }
    let mut expected: Vec<LogRow> = logs
        .iter()
        .map(|log| {
            (
                i64::try_from(log.block_number.unwrap()).unwrap(),
                i32::try_from(log.log_index.unwrap()).unwrap(),
                log.block_hash.unwrap().to_vec(),
                log.transaction_hash.unwrap().to_vec(),
                log.address().to_vec(),
                log.topics().iter().map(|t| t.to_vec()).collect(),
                log.data().data.to_vec(),
            )
        })
        .collect();
    expected.sort();
    let positions: BTreeSet<(i64, i32)> = expected.iter().map(|l| (l.0, l.1)).collect();
    assert_eq!(positions.len(), expected.len(), "eth_getLogs returned a log twice");

    let stored: Vec<LogRow> = sqlx::query_as(
        "SELECT block_number, log_index, block_hash, tx_hash, address, topics, data
         FROM chain.raw_logs WHERE chain_id = $1 ORDER BY block_number, log_index",
    )
    .bind(chain_id)
    .fetch_all(pool)
    .await
    .unwrap();
    let stored_positions: BTreeSet<(i64, i32)> = stored.iter().map(|l| (l.0, l.1)).collect();
    assert_eq!(stored_positions.len(), stored.len(), "a log is stored twice");
    if stored_positions != positions {
        let missing: Vec<_> = positions.difference(&stored_positions).take(10).collect();
        let extra: Vec<_> = stored_positions.difference(&positions).take(10).collect();
        panic!(
            "raw logs differ from the chain up to block {cursor}: {} stored, {} on chain; missing (first 10) \
             {missing:?}; extra (first 10) {extra:?}",
            stored.len(),
            expected.len()
        );
    }
    assert_eq!(stored.len(), expected.len(), "raw log count");
    for (stored, expected) in stored.iter().zip(&expected) {
        assert_eq!(stored, expected, "raw log at block {} index {}", expected.0, expected.1);
    }

    // One typed row per raw log, each at a raw log's position.
    let mut typed_total = 0;
    let mut typed: BTreeMap<&str, i64> = BTreeMap::new();
    for table in TYPED_TABLES {
        // Table names come from the indexer's static list.
        let count: i64 = sqlx::query_scalar(AssertSqlSafe(format!(
            "SELECT count(*) FROM chain.{} WHERE chain_id = $1",
            table.name
        )))
        .bind(chain_id)
        .fetch_one(pool)
        .await
        .unwrap();
        let orphans: i64 = sqlx::query_scalar(AssertSqlSafe(format!(
            "SELECT count(*) FROM chain.{} t WHERE t.chain_id = $1 AND NOT EXISTS (
                 SELECT 1 FROM chain.raw_logs l
                 WHERE l.chain_id = t.chain_id AND l.block_number = t.block_number AND l.log_index = t.log_index)",
            table.name
        )))
        .bind(chain_id)
        .fetch_one(pool)
        .await
        .unwrap();
        assert_eq!(orphans, 0, "rows of chain.{} without a raw log", table.name);
        typed_total += count;
        typed.insert(table.name, count);
    }
    assert_eq!(typed_total as usize, stored.len(), "typed rows per table {typed:?} do not add up to the raw logs");

    let of_kind = |signature: B256| {
        logs.iter().filter(|l| l.address() == deployment.subscriptions && l.topic0() == Some(&signature)).count() as i64
    };
    assert_eq!(typed["plans"], of_kind(Subscriptions::PlanCreated::SIGNATURE_HASH), "chain.plans rows");
    assert_eq!(typed["subscribed"], of_kind(Subscriptions::Subscribed::SIGNATURE_HASH), "chain.subscribed rows");
    assert_eq!(typed["renewals"], of_kind(Subscriptions::Renewed::SIGNATURE_HASH), "chain.renewals rows");
    assert_eq!(
        typed["renewal_failures"],
        of_kind(Subscriptions::RenewalFailed::SIGNATURE_HASH),
        "chain.renewal_failures rows"
    );
    assert_eq!(
        typed["subscription_ends"],
        of_kind(Subscriptions::Lapsed::SIGNATURE_HASH) + of_kind(Subscriptions::Cancelled::SIGNATURE_HASH),
        "chain.subscription_ends rows"
    );
    // Each subscription renews each period once.
    let distinct: i64 = sqlx::query_scalar(
        "SELECT count(DISTINCT (subscription_id, period_index)) FROM chain.renewals WHERE chain_id = $1",
    )
    .bind(chain_id)
    .fetch_one(pool)
    .await
    .unwrap();
    assert_eq!(distinct, typed["renewals"], "a (subscription, period) renewed twice");

    IndexState { cursor: Some(cursor), logs: stored.len() }
}

/// Faults a [`Proxy`] injects between the indexer and the node.
#[derive(Debug, Clone, Copy, Default)]
pub struct Faults {
    /// Answer `eth_getLogs` over more than this many blocks with error -32005 ("query returned more than 10000
    /// results"), as hosted providers do.
    pub max_log_blocks: Option<u64>,
    /// Fail every n-th request, alternating HTTP 500 and JSON-RPC error -32603 ("internal error").
    pub fail_every: Option<u64>,
    /// Delay every n-th request by a random 5-50 ms.
    pub delay_every: Option<u64>,
    /// Delay every request by this long (network latency).
    pub latency: std::time::Duration,
}

/// What a [`Proxy`] did.
#[derive(Debug, Default)]
pub struct ProxyStats {
    /// Requests received.
    pub requests: std::sync::atomic::AtomicU64,
    /// `eth_getLogs` refused as too large.
    pub too_large: std::sync::atomic::AtomicU64,
    /// Requests failed with HTTP 500.
    pub http_errors: std::sync::atomic::AtomicU64,
    /// Requests failed with JSON-RPC error -32603.
    pub rpc_errors: std::sync::atomic::AtomicU64,
    /// Requests delayed.
    pub delayed: std::sync::atomic::AtomicU64,
}

impl ProxyStats {
    /// A counter's value.
    pub fn get(counter: &std::sync::atomic::AtomicU64) -> u64 {
        counter.load(std::sync::atomic::Ordering::Relaxed)
    }
}

struct ProxyState {
    upstream: String,
    client: alloy::transports::http::reqwest::Client,
    faults: Faults,
    stats: std::sync::Arc<ProxyStats>,
    rng: std::sync::Mutex<Rng>,
}

/// An HTTP JSON-RPC proxy on 127.0.0.1 (a port the OS chose) in front of a node, injecting [`Faults`]. It stops
/// when dropped.
pub struct Proxy {
    /// The proxy's endpoint, for the indexer's `--rpc-url`.
    pub url: String,
    /// What it did so far.
    pub stats: std::sync::Arc<ProxyStats>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl Proxy {
    /// Starts a proxy to `upstream`.
    pub async fn start(upstream: &str, faults: Faults) -> Self {
        let stats = std::sync::Arc::new(ProxyStats::default());
        let state = std::sync::Arc::new(ProxyState {
            upstream: upstream.to_owned(),
            client: alloy::transports::http::reqwest::Client::new(),
            faults,
            stats: stats.clone(),
            rng: std::sync::Mutex::new(Rng::new(0xFA17_5EED)),
        });
        let app = axum::Router::new().route("/", axum::routing::post(proxy_request)).with_state(state);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Self { url, stats, server }
    }
}

fn json_rpc_error(id: &serde_json::Value, code: i64, message: &str) -> axum::response::Response {
    let body = serde_json::json!({ "jsonrpc": "2.0", "id": id, "error": { "code": code, "message": message } });
    axum::response::IntoResponse::into_response(axum::Json(body))
}

/// The block count of an `eth_getLogs` request over a numbered range, if it is one.
fn log_range_blocks(request: &serde_json::Value) -> Option<u64> {
    if request.get("method")?.as_str()? != "eth_getLogs" {
        return None;
    }
    let filter = request.get("params")?.get(0)?;
    let number = |key: &str| u64::from_str_radix(filter.get(key)?.as_str()?.strip_prefix("0x")?, 16).ok();
    let (from, to) = (number("fromBlock")?, number("toBlock")?);
    Some(to.saturating_sub(from) + 1)
}

async fn proxy_request(
    axum::extract::State(state): axum::extract::State<std::sync::Arc<ProxyState>>,
    body: axum::body::Bytes,
) -> axum::response::Response {
    use std::sync::atomic::Ordering::Relaxed;
    let faults = state.faults;
    let stats = &state.stats;
    let n = stats.requests.fetch_add(1, Relaxed) + 1;
    let request: serde_json::Value = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
    let id = request.get("id").cloned().unwrap_or(serde_json::Value::Null);

    let mut delay = faults.latency;
    if faults.delay_every.is_some_and(|every| n % every == 0) {
        delay += std::time::Duration::from_millis(state.rng.lock().unwrap().between(5, 50));
        stats.delayed.fetch_add(1, Relaxed);
    }
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }

    if let Some(every) = faults.fail_every
        && n % every == 0
    {
        if (n / every) % 2 == 0 {
            stats.http_errors.fetch_add(1, Relaxed);
            return axum::response::IntoResponse::into_response((
                axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                "internal server error",
            ));
        }
        stats.rpc_errors.fetch_add(1, Relaxed);
        return json_rpc_error(&id, -32603, "internal error");
    }
    if let (Some(max), Some(blocks)) = (faults.max_log_blocks, log_range_blocks(&request))
        && blocks > max
    {
        stats.too_large.fetch_add(1, Relaxed);
        return json_rpc_error(&id, -32005, "query returned more than 10000 results");
    }

    let answer = state
        .client
        .post(&state.upstream)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await;
    match answer {
        Ok(answer) => {
            let status = axum::http::StatusCode::from_u16(answer.status().as_u16()).unwrap();
            let bytes = answer.bytes().await.unwrap_or_default();
            axum::response::IntoResponse::into_response((
                status,
                [(axum::http::header::CONTENT_TYPE, "application/json")],
                bytes.to_vec(),
            ))
        }
        Err(err) => axum::response::IntoResponse::into_response((
            axum::http::StatusCode::BAD_GATEWAY,
            format!("upstream: {err}"),
        )),
    }
}

/// An indexer of `deployment` on `chain` writing to `db` (ranges of 1,000 blocks, 2 at once, 100 ms polls), with
/// the pool to read the results.
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
    let options = SyncOptions { poll_interval: std::time::Duration::from_millis(100), confirmations: 5, concurrency: 2 };
    (Indexer::new(deployment.clone(), source, store, options, metrics), pool)
}

/// A process started by a test (a daemon under test): killed and reaped when dropped, so a failing assertion
/// never leaves it running.
pub struct Daemon(pub std::process::Child);

impl Daemon {
    /// Starts `command`.
    pub fn spawn(command: &mut std::process::Command) -> Self {
        Self(command.spawn().expect("start the daemon under test"))
    }
}

impl std::ops::Deref for Daemon {
    type Target = std::process::Child;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl std::ops::DerefMut for Daemon {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}
