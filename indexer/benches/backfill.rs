//! Indexer benchmark on real contract events. A local anvil (through the testkit) gets a deployment (keeper
//! deploy), a few hundred subscribers (one account each) and hourly rounds of keeper batches until at least
//! `--events` events exist: each round renews every subscription (`renew`), then posts every subscription's usage
//! `--charges-per-period` times (`chargeUsage`), with empty blocks in between like a real chain. Then it measures
//!
//! - (a) the raw ceiling: `ChainSource::logs` + `decode::decode`, no database, events/s;
//! - (b) a full backfill into a fresh Postgres database with `Indexer::backfill_to`, events/s and the ratio to (a);
//! - (c) live-follow latency: `Indexer::run` with a 1 s poll, from the block holding a renewal being mined to its
//!   row being visible in `chain.renewals`;
//!
//! and, to show where the backfill's time goes, each stage alone (fetch, decode, batch build, commit).
//!
//! Run: `cargo bench -p subsettle-indexer --bench backfill` (200,000 events), or scaled down with
//! `cargo bench -p subsettle-indexer --bench backfill -- --events 20000`; `-- --help` lists the knobs. The summary
//! is printed as Markdown on stdout, progress on stderr. See `docs/indexer-bench.md`.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use alloy::{
    eips::BlockNumberOrTag,
    hex,
    network::{EthereumWallet, TransactionBuilder},
    primitives::{Address, B256, U256, keccak256},
    providers::{DynProvider, Provider, ProviderBuilder},
    rpc::types::{Filter, Log, TransactionReceipt, TransactionRequest},
    signers::local::PrivateKeySigner,
    sol_types::{SolCall, SolEvent},
};
use anyhow::{Context, Result, bail, ensure};
use futures::{StreamExt, TryStreamExt, stream};
use serde_json::{Value, json};
use sqlx::{PgPool, postgres::PgPoolOptions};
use subsettle_abi::{Deployment, ISubscriptions, Subscriptions, usdc::FiatTokenV2_2};
use subsettle_indexer::{
    decode::{Source, decode},
    metrics::Metrics,
    rows::LogPosition,
    source::{ChainSource, Retry},
    store::{Batch, BlockRef, Cursor, CursorTurn, RawLog, Store},
    sync::{Indexer, SyncOptions},
};
use subsettle_keeper::{
    operator::deploy::{DeployPlan, TokenSource, deploy},
    signer::OperatorKey,
};
use subsettle_testkit::{TestChain, TestDatabase, toolchain::foundry_bin};

/// 1 USDC in base units.
const USDC: u64 = 1_000_000;
/// The plan's period: the shortest the contract accepts.
const PERIOD: u64 = 3_600;
/// The plan's grace period: as long as allowed, so slow generation never lets a subscription lapse.
const GRACE: u64 = PERIOD - 1;
/// Fee caps of the generated transactions (anvil's base fee stays far below).
const MAX_FEE: u128 = 100_000_000_000;
const PRIORITY_FEE: u128 = 1_000_000_000;
/// Gas limit of a keeper batch: fixed part and per item (a renewal or a usage charge uses about 30k).
const BATCH_GAS_BASE: u64 = 200_000;
const RENEW_GAS_PER_ITEM: u64 = 60_000;
const CHARGE_GAS_PER_ITEM: u64 = 80_000;
/// Each subscriber's overage cap per period, and what each usage posting adds to the cumulative overage.
const OVERAGE_CAP: u64 = 1_000 * USDC;
const OVERAGE_STEP: u64 = 1_000;
/// Transactions in flight while generating.
const SEND_CONCURRENCY: usize = 64;
/// Blocks mined after the last round, so every event block is below anvil's finalized block (head - 2 with
/// `--slots-in-an-epoch 1`) and the backfill commits all of them in ranges.
const TRAILING_BLOCKS: u64 = 10;
/// The block gas limit of the bench chain: one renew transaction carries `--batch` items.
const BLOCK_GAS_LIMIT: &str = "1000000000";

const USAGE: &str = "\
cargo bench -p subsettle-indexer --bench backfill [-- OPTIONS]

  --events N             events to generate, at least (default 200000)
  --subscribers N        subscribers (default events/800, within 50..=4000)
  --charges-per-period N usage postings per subscriber per 1-hour period, besides its renewal (default 19)
  --batch N              items per keeper transaction (renew ids, usage charges; default 1000)
  --blocks-per-period N  blocks per 1-hour period, spread between the keeper batches (default 400: 9 s blocks;
                         anvil's cost per mined block grows with the chain, so more makes generation much slower)
  --max-range N          eth_getLogs block range of the backfill (default 5000, the indexer's default)
  --concurrency N        ranges fetched at once by the backfill (default 4, the indexer's default)
  --samples N            live-latency samples (default 20)
  --poll-ms N            the indexer's poll interval in the live phase (default 1000)
  --repeat N             runs of (a) and (b), interleaved; medians reported (default 3)
  --tune-ranges A,B      one more backfill with each of these max_range values (default 1000,20000; empty for none)
  --no-profile           skip the per-stage profile
";

#[derive(Debug, Clone)]
struct Config {
    events: u64,
    subscribers: usize,
    batch: usize,
    blocks_per_period: u64,
    charges_per_period: u64,
    max_range: u64,
    concurrency: usize,
    samples: usize,
    poll_ms: u64,
    repeat: usize,
    tune_ranges: Vec<u64>,
    profile: bool,
}

fn number(key: &str, inline: Option<String>, args: &mut impl Iterator<Item = String>) -> Result<u64> {
    let text = match inline {
        Some(text) => text,
        None => args.next().with_context(|| format!("{key} needs a value"))?,
    };
    text.replace('_', "").parse().with_context(|| format!("{key}: `{text}` is not a number"))
}

impl Config {
    fn from_args() -> Result<Self> {
        let mut cfg = Self {
            events: 200_000,
            subscribers: 0,
            batch: 1_000,
            blocks_per_period: 400,
            charges_per_period: 19,
            max_range: 5_000,
            concurrency: 4,
            samples: 20,
            poll_ms: 1_000,
            repeat: 3,
            tune_ranges: vec![1_000, 20_000],
            profile: true,
        };
        let mut args = std::env::args().skip(1);
        while let Some(arg) = args.next() {
            let (key, inline) = match arg.split_once('=') {
                Some((key, value)) => (key.to_owned(), Some(value.to_owned())),
                None => (arg.clone(), None),
            };
            match key.as_str() {
                // `cargo bench` passes `--bench` to every bench binary.
                "--bench" => {}
                "--events" => cfg.events = number(&key, inline, &mut args)?,
                "--subscribers" => cfg.subscribers = usize::try_from(number(&key, inline, &mut args)?)?,
                "--batch" => cfg.batch = usize::try_from(number(&key, inline, &mut args)?)?,
                "--blocks-per-period" => cfg.blocks_per_period = number(&key, inline, &mut args)?,
                "--charges-per-period" => cfg.charges_per_period = number(&key, inline, &mut args)?,
                "--max-range" => cfg.max_range = number(&key, inline, &mut args)?,
                "--concurrency" => cfg.concurrency = usize::try_from(number(&key, inline, &mut args)?)?,
                "--samples" => cfg.samples = usize::try_from(number(&key, inline, &mut args)?)?,
                "--poll-ms" => cfg.poll_ms = number(&key, inline, &mut args)?,
                "--repeat" => cfg.repeat = usize::try_from(number(&key, inline, &mut args)?)?,
                "--tune-ranges" => {
                    let text = match inline {
                        Some(text) => text,
                        None => args.next().context("--tune-ranges needs a value")?,
                    };
                    cfg.tune_ranges = text
                        .split(',')
                        .filter(|t| !t.trim().is_empty())
                        .map(|t| {
                            t.trim().replace('_', "").parse::<u64>().with_context(|| format!("--tune-ranges: `{t}`"))
                        })
                        .collect::<Result<_>>()?;
                }
                "--no-profile" => cfg.profile = false,
                "-h" | "--help" => {
                    print!("{USAGE}");
                    std::process::exit(0);
                }
                other => bail!("unknown argument `{other}`\n\n{USAGE}"),
            }
        }
        if cfg.subscribers == 0 {
            cfg.subscribers = usize::try_from((cfg.events / 800).clamp(50, 4_000))?;
        }
        ensure!(cfg.events > 0 && cfg.batch > 0 && cfg.max_range > 0 && cfg.concurrency > 0, "values must be positive");
        ensure!(cfg.charges_per_period < PERIOD / 60, "--charges-per-period must leave at least a minute per posting");
        ensure!(cfg.samples <= cfg.subscribers, "--samples must not exceed --subscribers (one due subscription each)");
        Ok(cfg)
    }
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

fn median_of(runs: &[Duration]) -> Duration {
    let mut runs = runs.to_vec();
    runs.sort();
    runs.get(runs.len().saturating_sub(1) / 2).copied().unwrap_or_default()
}

fn rate(events: u64, d: Duration) -> f64 {
    events as f64 / d.as_secs_f64().max(1e-9)
}

fn thousands(value: f64) -> String {
    let digits = format!("{:.0}", value);
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn as_u64(value: &Value) -> u64 {
    match value {
        Value::Number(n) => n.as_u64().unwrap_or(0),
        Value::String(s) => u64::from_str_radix(s.trim_start_matches("0x"), 16).unwrap_or(0),
        _ => 0,
    }
}

/// A raw JSON-RPC call (anvil's own methods have no typed binding in the workspace's alloy features).
async fn rpc(provider: &DynProvider, method: &'static str, params: Value) -> Result<Value> {
    provider.raw_request(method.into(), params).await.with_context(|| format!("{method} failed"))
}

/// Signs and sends fully specified transactions: one wallet provider holding the operator and every subscriber.
struct Sender {
    provider: DynProvider,
    chain_id: u64,
}

impl Sender {
    fn tx(&self, from: Address, to: Address, input: Vec<u8>, nonce: u64, gas: u64) -> TransactionRequest {
        TransactionRequest::default()
            .with_from(from)
            .with_to(to)
            .with_input(input)
            .with_nonce(nonce)
            .with_gas_limit(gas)
            .with_max_fee_per_gas(MAX_FEE)
            .with_max_priority_fee_per_gas(PRIORITY_FEE)
            .with_chain_id(self.chain_id)
    }

    async fn send(&self, tx: TransactionRequest) -> Result<B256> {
        Ok(*self.provider.send_transaction(tx).await.context("eth_sendRawTransaction")?.tx_hash())
    }

    async fn send_all(&self, txs: Vec<TransactionRequest>) -> Result<Vec<B256>> {
        stream::iter(txs).map(|tx| self.send(tx)).buffer_unordered(SEND_CONCURRENCY).try_collect().await
    }

    async fn receipt(&self, hash: B256, timeout: Duration) -> Result<TransactionReceipt> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(receipt) = self.provider.get_transaction_receipt(hash).await? {
                return Ok(receipt);
            }
            ensure!(Instant::now() < deadline, "no receipt for {hash} after {timeout:?}");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
}

/// Mines blocks until anvil's pool is empty (automine off: many transactions per block).
async fn mine_pool(provider: &DynProvider) -> Result<u64> {
    for mined in 0..1_000 {
        let status = rpc(provider, "txpool_status", json!([])).await?;
        if as_u64(&status["pending"]) + as_u64(&status["queued"]) == 0 {
            return Ok(mined);
        }
        rpc(provider, "evm_mine", json!([])).await?;
    }
    bail!("anvil's pool did not drain after 1000 blocks (a nonce gap?)")
}

/// The latest block's timestamp.
async fn latest_timestamp(provider: &DynProvider) -> Result<u64> {
    let block = provider.get_block_by_number(BlockNumberOrTag::Latest).await?.context("no latest block")?;
    Ok(block.header.timestamp)
}

/// Mines `blocks` empty blocks spaced evenly up to `target` (Unix seconds), then makes `target` the next block's
/// timestamp: the chain between two actions looks like a real chain's, and actions land at exact times.
async fn advance_to(provider: &DynProvider, target: u64, blocks: u64) -> Result<()> {
    /// Seconds left for anvil's clock, which keeps running with the wall clock while it mines.
    const SLACK: u64 = 3;
    let latest = latest_timestamp(provider).await?;
    ensure!(target > latest + SLACK, "the chain's clock ({latest}) already reached the next action time ({target})");
    let interval = (target - latest - SLACK) / (blocks + 1);
    if blocks > 0 && interval > 0 {
        // anvil_mine steps anvil's clock (wall time plus an offset), not the latest block's time: pin the clock to
        // the latest block first, since wall time passes between actions (e.g. while the bench measures).
        rpc(provider, "evm_setTime", json!([latest])).await?;
        rpc(provider, "anvil_mine", json!([format!("{blocks:#x}"), format!("{interval:#x}")])).await?;
    }
    rpc(provider, "evm_setNextBlockTimestamp", json!([target])).await?;
    Ok(())
}

/// What the generator left on the chain.
struct Generated {
    deployment: Deployment,
    sender: Sender,
    owner: Address,
    owner_nonce: u64,
    ids: Vec<U256>,
    /// When the renewals of the next round are due (Unix seconds).
    next_round_at: u64,
    head: u64,
    events: u64,
    renewals: u64,
    charges: u64,
    rounds: u64,
    elapsed: Duration,
}

fn followed(log: &alloy::rpc::types::Log, d: &Deployment) -> bool {
    log.address() == d.subscriptions || log.address() == d.escrow
}

/// Sends one keeper batch (renew or chargeUsage) from the operator and checks that every item emitted `event`.
async fn keeper_batch(g: &mut Generated, input: Vec<u8>, items: usize, per_item_gas: u64, event: B256) -> Result<()> {
    let d = &g.deployment;
    let gas = BATCH_GAS_BASE + per_item_gas * items as u64;
    let hash = g.sender.send(g.sender.tx(g.owner, d.subscriptions, input, g.owner_nonce, gas)).await?;
    g.owner_nonce += 1;
    let receipt = g.sender.receipt(hash, Duration::from_secs(120)).await?;
    ensure!(receipt.status(), "keeper batch {hash} reverted");
    let logs = receipt.inner.logs();
    let emitted = logs.iter().filter(|l| l.address() == d.subscriptions && l.topic0() == Some(&event)).count();
    ensure!(emitted == items, "batch {hash}: {emitted} of {items} items emitted the expected event");
    g.events += logs.iter().filter(|l| followed(l, d)).count() as u64;
    Ok(())
}

async fn generate(chain: &TestChain, cfg: &Config) -> Result<Generated> {
    let started = Instant::now();
    let key_dir = tempfile::tempdir()?;
    let key_path = key_dir.path().join("operator.key");
    std::fs::write(&key_path, hex::encode_prefixed(chain.signer(0).to_bytes()))?;
    let key = OperatorKey::load(Some(&key_path))?;
    let plan = DeployPlan {
        rpc_url: chain.endpoint(),
        token: TokenSource::LocalUsdc,
        keeper: None, // the operator is the keeper, so it may post usage charges
        charge_window_secs: PERIOD - 1, // the contract wants it shorter than a period
        split_change_delay_secs: 86_400,
        max_hold_secs: 30 * 86_400,
    };
    let d = deploy(&plan, &key).await.context("deploy")?;
    let operator = chain.provider(0);
    let receipt = Subscriptions::new(d.subscriptions, &operator)
        .createPlan(U256::from(USDC), U256::from(PERIOD), U256::from(GRACE))
        .send()
        .await?
        .get_receipt()
        .await?;
    ensure!(receipt.status(), "createPlan reverted");

    // One account per subscriber (the subscriber of a subscription is msg.sender), from deterministic keys.
    let n = cfg.subscribers;
    let signers = (0..n)
        .map(|i| PrivateKeySigner::from_bytes(&keccak256(format!("subsettle-bench/subscriber/{i}"))))
        .collect::<Result<Vec<_>, _>>()?;
    let mut wallet = EthereumWallet::new(chain.signer(0));
    for signer in &signers {
        wallet.register_signer(signer.clone());
    }
    let provider = ProviderBuilder::new()
        .disable_recommended_fillers()
        .wallet(wallet)
        .connect_http(chain.endpoint().parse()?)
        .erased();
    let sender = Sender { provider: provider.clone(), chain_id: chain.chain_id() };
    let owner = chain.address(0);

    stream::iter(signers.iter().map(|s| s.address()))
        .map(|a| rpc(&provider, "anvil_setBalance", json!([a, "0x8ac7230489e80000"]))) // 10 ETH
        .buffer_unordered(SEND_CONCURRENCY)
        .try_collect::<Vec<_>>()
        .await?;

    // Mint and approve, then subscribe: many transactions per block with automine off.
    rpc(&provider, "evm_setAutomine", json!([false])).await?;
    let mut owner_nonce = provider.get_transaction_count(owner).await?;
    let allowance = FiatTokenV2_2::approveCall { spender: d.subscriptions, value: U256::MAX }.abi_encode();
    let mut txs = Vec::with_capacity(2 * n);
    for signer in &signers {
        let mint = FiatTokenV2_2::mintCall { _to: signer.address(), _amount: U256::from(10_000 * USDC) }.abi_encode();
        txs.push(sender.tx(owner, d.token, mint, owner_nonce, 100_000));
        owner_nonce += 1;
        txs.push(sender.tx(signer.address(), d.token, allowance.clone(), 0, 100_000));
    }
    sender.send_all(txs).await?;
    mine_pool(&provider).await?;
    let subscribe =
        Subscriptions::subscribeCall { planId: U256::from(1), overageCapPerPeriod: U256::from(OVERAGE_CAP) }
            .abi_encode();
    let txs = signers.iter().map(|s| sender.tx(s.address(), d.subscriptions, subscribe.clone(), 1, 400_000)).collect();
    sender.send_all(txs).await?;
    mine_pool(&provider).await?;
    rpc(&provider, "evm_setAutomine", json!([true])).await?;
    let count = Subscriptions::new(d.subscriptions, &operator).subscriptionCount().call().await?;
    ensure!(count == U256::from(n), "{count} subscriptions instead of {n}: some setup transactions failed");

    let head = operator.get_block_number().await?;
    let events = operator
        .get_logs(&Filter::new().address(vec![d.subscriptions, d.escrow]).from_block(d.start_block).to_block(head))
        .await?
        .len() as u64;
    eprintln!("setup: {n} subscribers, {events} events, {:.1} s", secs(started.elapsed()));

    // Hourly rounds, each split into slices of equal time and blocks: the renewals of every subscription, then
    // `--charges-per-period` usage postings for every subscription (cumulative overage growing each time).
    // Every subscription was paid through at most `base + PERIOD`, so the renewals at `base + round * PERIOD`
    // find them all due, and the postings fall inside the period just renewed.
    let base = latest_timestamp(&provider).await?;
    let slices = cfg.charges_per_period + 1;
    let slice_secs = PERIOD / slices;
    let blocks_per_slice = cfg.blocks_per_period / slices;
    let mut g = Generated {
        deployment: d,
        sender,
        owner,
        owner_nonce,
        ids: (1..=n as u64).map(U256::from).collect(),
        next_round_at: base + PERIOD,
        head,
        events,
        renewals: 0,
        charges: 0,
        rounds: 0,
        elapsed: Duration::ZERO,
    };
    'rounds: while g.events < cfg.events {
        let round_started = Instant::now();
        g.rounds += 1;
        let round_at = g.next_round_at;
        g.next_round_at += PERIOD;
        let mut mining = Duration::ZERO;
        for slice in 0..slices {
            let t = Instant::now();
            advance_to(&provider, round_at + slice * slice_secs, blocks_per_slice).await?;
            mining += t.elapsed();
            let ids = g.ids.clone();
            for chunk in ids.chunks(cfg.batch) {
                if slice == 0 {
                    let input = Subscriptions::renewCall { ids: chunk.to_vec() }.abi_encode();
                    keeper_batch(
                        &mut g,
                        input,
                        chunk.len(),
                        RENEW_GAS_PER_ITEM,
                        Subscriptions::Renewed::SIGNATURE_HASH,
                    )
                    .await?;
                    g.renewals += chunk.len() as u64;
                } else {
                    let usage_root = keccak256(format!("subsettle-bench/usage/{}/{slice}", g.rounds));
                    let charges = chunk
                        .iter()
                        .map(|id| ISubscriptions::Charge {
                            subscriptionId: *id,
                            periodIndex: U256::from(g.rounds),
                            cumulativeOverage: U256::from(slice * OVERAGE_STEP),
                            usageRoot: usage_root,
                        })
                        .collect();
                    let input = Subscriptions::chargeUsageCall { charges }.abi_encode();
                    keeper_batch(
                        &mut g,
                        input,
                        chunk.len(),
                        CHARGE_GAS_PER_ITEM,
                        Subscriptions::UsageCharged::SIGNATURE_HASH,
                    )
                    .await?;
                    g.charges += chunk.len() as u64;
                }
            }
            if g.events >= cfg.events {
                break 'rounds;
            }
        }
        eprintln!(
            "round {}: {} events; empty blocks mined in {:.1} s, keeper batches sent in {:.1} s",
            g.rounds,
            g.events,
            secs(mining),
            secs(round_started.elapsed() - mining)
        );
    }
    // A few more blocks, so every event block is below anvil's finalized block and the backfill commits all of
    // them in ranges.
    advance_to(&provider, latest_timestamp(&provider).await? + 2 * TRAILING_BLOCKS + 2, TRAILING_BLOCKS).await?;
    rpc(&provider, "evm_mine", json!([])).await?;
    g.head = operator.get_block_number().await?;
    g.elapsed = started.elapsed();
    Ok(g)
}

fn source_of(log: &Log, d: &Deployment) -> Result<Source> {
    if log.address() == d.subscriptions {
        Ok(Source::Subscriptions)
    } else if log.address() == d.escrow {
        Ok(Source::Escrow)
    } else {
        bail!("a log from {}, which is not followed", log.address())
    }
}

/// The same position the indexer builds for a log (block time from the log, as anvil includes it).
fn position(log: &Log, chain_id: u64) -> LogPosition {
    LogPosition {
        chain_id: chain_id as i64,
        block_number: log.block_number.unwrap_or_default() as i64,
        log_index: log.log_index.unwrap_or_default() as i32,
        tx_hash: log.transaction_hash.unwrap_or_default().to_vec(),
        block_time: log.block_timestamp.unwrap_or_default() as i64,
    }
}

/// One pass of (a): fetch `[from, to]` in ranges of `range` blocks, `concurrency` at once, decoding each range as it
/// arrives (in order, like the backfill), without a database.
struct RawPass {
    events: u64,
    ranges: usize,
    wall: Duration,
    decode: Duration,
    with_timestamps: bool,
    kept: Vec<(u64, Vec<Log>)>,
}

async fn raw_pass(
    endpoint: &str,
    d: &Deployment,
    to: u64,
    range: u64,
    concurrency: usize,
    keep: bool,
) -> Result<RawPass> {
    let source =
        ChainSource::connect(endpoint, vec![d.subscriptions, d.escrow], range, Retry::default(), Metrics::default())?;
    let mut ranges = Vec::new();
    let mut start = d.start_block;
    while start <= to {
        let end = to.min(start.saturating_add(range - 1));
        ranges.push((start, end));
        start = end + 1;
    }
    let count = ranges.len();
    let started = Instant::now();
    // Each fetch is a task of its own, as in the backfill, so the JSON parses of different ranges run on
    // every worker thread.
    let source = std::sync::Arc::new(source);
    let mut fetched = stream::iter(ranges)
        .map(|(start, end)| {
            let source = std::sync::Arc::clone(&source);
            tokio::spawn(async move { source.logs(start, end).await.map(|logs| (end, logs)) })
        })
        .buffered(concurrency);
    let (mut events, mut decode_time, mut with_timestamps, mut kept) = (0, Duration::ZERO, true, Vec::new());
    while let Some(item) = fetched.next().await {
        let (end, logs) = item??;
        let t = Instant::now();
        for log in &logs {
            let row = decode(source_of(log, d)?, position(log, d.chain_id), &log.inner)?;
            std::hint::black_box(row);
            with_timestamps &= log.block_timestamp.is_some();
        }
        decode_time += t.elapsed();
        events += logs.len() as u64;
        if keep {
            kept.push((end, logs));
        }
    }
    Ok(RawPass { events, ranges: count, wall: started.elapsed(), decode: decode_time, with_timestamps, kept })
}

/// The pool the daemon uses (see `src/main.rs`).
async fn pool(db: &TestDatabase) -> Result<PgPool> {
    Ok(PgPoolOptions::new().max_connections(8).connect(db.url()).await?)
}

fn indexer(endpoint: &str, d: &Deployment, store: Store, cfg: &Config, metrics: &Metrics) -> Result<Indexer> {
    let source = ChainSource::connect(
        endpoint,
        vec![d.subscriptions, d.escrow],
        cfg.max_range,
        Retry::default(),
        metrics.clone(),
    )?;
    let options = SyncOptions {
        poll_interval: Duration::from_millis(cfg.poll_ms),
        confirmations: 64,
        concurrency: cfg.concurrency,
    };
    Ok(Indexer::new(d.clone(), source, store, options, metrics.clone()))
}

/// The backfill's stages without overlap: batches built from already fetched logs (as `sync` builds them) and
/// committed one range per transaction into a fresh database.
struct CommitProfile {
    events: u64,
    build: Duration,
    commit: Duration,
}

/// Which rows a profiling commit carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rows {
    /// Raw and typed rows, as the indexer commits them.
    Both,
    /// `chain.raw_logs` only.
    Raw,
    /// The typed tables only.
    Typed,
}

/// Batches built from already fetched logs (as `sync` builds them), ready to commit into a fresh database.
struct Prepared {
    _db: TestDatabase,
    store: Store,
    first: Option<Cursor>,
    batches: Vec<(Batch, Cursor)>,
    events: u64,
    build: Duration,
}

async fn prepare_commits(endpoint: &str, d: &Deployment, kept: &[(u64, Vec<Log>)], rows: Rows) -> Result<Prepared> {
    let source = ChainSource::connect(endpoint, vec![], 1, Retry::default(), Metrics::default())?;
    let db = TestDatabase::create().await?;
    let store = Store::open(pool(&db).await?).await?;
    let first = store.register(d).await?;
    let (mut batches, mut build, mut events) = (Vec::with_capacity(kept.len()), Duration::ZERO, 0);
    for (end, logs) in kept {
        let header = source.header(*end).await?;
        let t = Instant::now();
        let mut batch = Batch::default();
        for log in logs {
            let position = position(log, d.chain_id);
            batch.raw.push(RawLog {
                block_number: position.block_number,
                log_index: position.log_index,
                block_hash: log.block_hash.unwrap_or_default().to_vec(),
                block_time: position.block_time,
                tx_hash: position.tx_hash.clone(),
                tx_index: log.transaction_index.unwrap_or_default() as i32,
                address: log.address().to_vec(),
                topics: log.topics().iter().map(|t| t.to_vec()).collect(),
                data: log.data().data.to_vec(),
            });
            batch.typed.push(decode(source_of(log, d)?, position, &log.inner)?);
        }
        batch.blocks.push(BlockRef {
            number: header.number as i64,
            hash: header.hash.to_vec(),
            parent_hash: header.parent_hash.to_vec(),
        });
        build += t.elapsed();
        match rows {
            Rows::Both => {}
            Rows::Raw => batch.typed.clear(),
            Rows::Typed => batch.raw.clear(),
        }
        events += logs.len() as u64;
        batches.push((batch, Cursor { number: header.number as i64, hash: header.hash.to_vec() }));
    }
    Ok(Prepared { _db: db, store, first, batches, events, build })
}

/// Commits the prepared batches in order, one transaction each, as the backfill does.
async fn run_commits(prepared: &Prepared, d: &Deployment) -> Result<Duration> {
    let t = Instant::now();
    let mut cursor = prepared.first.clone();
    for (batch, next) in &prepared.batches {
        prepared.store.commit(d, cursor.as_ref(), batch, next, CursorTurn::default()).await?;
        cursor = Some(next.clone());
    }
    Ok(t.elapsed())
}

async fn commit_only(endpoint: &str, d: &Deployment, kept: &[(u64, Vec<Log>)], rows: Rows) -> Result<CommitProfile> {
    let prepared = prepare_commits(endpoint, d, kept, rows).await?;
    let commit = run_commits(&prepared, d).await?;
    Ok(CommitProfile { events: prepared.events, build: prepared.build, commit })
}

/// Fetch + decode and the commits of the same data running at the same time, each on its own: roughly what a
/// backfill that overlaps them could reach on this machine.
async fn overlapped(
    endpoint: &str,
    d: &Deployment,
    head: u64,
    cfg: &Config,
    kept: &[(u64, Vec<Log>)],
) -> Result<Duration> {
    let prepared = prepare_commits(endpoint, d, kept, Rows::Both).await?;
    let t = Instant::now();
    let (fetched, committed) =
        tokio::join!(raw_pass(endpoint, d, head, cfg.max_range, cfg.concurrency, false), run_commits(&prepared, d));
    fetched?;
    committed?;
    Ok(t.elapsed())
}

struct Sample {
    block: u64,
    inclusion: Duration,
    latency: Duration,
}

/// (c): the indexer follows the chain with its poll interval and each sample renews one subscription; latency runs
/// from the moment the block holding it is seen mined (receipt polled every 5 ms) to the moment its row is visible
/// in `chain.renewals` (polled every 10 ms).
///
/// anvil mines the block the moment the transaction arrives, and the sends are spread evenly over the poll cycle
/// (sample `i` waits `i * 389 mod 1000` ms after the previous row appeared), so the samples cover every phase
/// between block and poll. (With anvil mining on a 1 s clock instead, the indexer's 1 s sleep locks onto the block
/// clock and every sample sees nearly the same phase, which says more about the two clocks than the indexer.)
async fn live(chain: &TestChain, generated: &mut Generated, db_pool: PgPool, cfg: &Config) -> Result<Vec<Sample>> {
    let d = generated.deployment.clone();
    let provider = generated.sender.provider.clone();
    // The next round's time: every subscription is due again.
    advance_to(&provider, generated.next_round_at, cfg.blocks_per_period / (cfg.charges_per_period + 1)).await?;
    let metrics = Metrics::default();
    let store = Store::open(db_pool.clone()).await?;
    let indexer = Arc::new(indexer(&chain.endpoint(), &d, store, cfg, &metrics)?);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn({
        let indexer = Arc::clone(&indexer);
        async move {
            indexer
                .run(async move {
                    let _ = stopped.await;
                })
                .await
        }
    });
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let head = provider.get_block_number().await?;
        let cursor: Option<i64> = sqlx::query_scalar(
            "SELECT cursor_number FROM chain.deployments WHERE chain_id = $1 AND subscriptions = $2",
        )
        .bind(d.chain_id as i64)
        .bind(d.subscriptions.to_vec())
        .fetch_optional(&db_pool)
        .await?
        .flatten();
        if cursor.is_some_and(|c| c >= head as i64) {
            break;
        }
        ensure!(Instant::now() < deadline && !running.is_finished(), "the live indexer did not catch up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let mut samples = Vec::with_capacity(cfg.samples);
    for i in 0..cfg.samples {
        // Spread the sends over the poll cycle.
        tokio::time::sleep(Duration::from_millis((i as u64 * 389) % cfg.poll_ms.max(1))).await;
        let id = generated.ids[i];
        let input = Subscriptions::renewCall { ids: vec![id] }.abi_encode();
        let tx = generated.sender.tx(generated.owner, d.subscriptions, input, generated.owner_nonce, 300_000);
        let hash = generated.sender.send(tx).await?;
        let sent = Instant::now();
        generated.owner_nonce += 1;
        let timeout = Duration::from_secs(30);
        let mined = async {
            let receipt = loop {
                if let Some(receipt) = provider.get_transaction_receipt(hash).await? {
                    break receipt;
                }
                ensure!(sent.elapsed() < timeout, "renew {hash} not mined after {timeout:?}");
                tokio::time::sleep(Duration::from_millis(5)).await;
            };
            let at = Instant::now();
            ensure!(receipt.status(), "live renew {hash} reverted");
            Ok::<_, anyhow::Error>((at, receipt.block_number.unwrap_or_default()))
        };
        let visible = async {
            loop {
                let found: bool = sqlx::query_scalar(
                    "SELECT EXISTS (SELECT 1 FROM chain.renewals
                     WHERE chain_id = $1 AND subscription_id = $2::text::numeric AND tx_hash = $3)",
                )
                .bind(d.chain_id as i64)
                .bind(id.to_string())
                .bind(hash.to_vec())
                .fetch_one(&db_pool)
                .await?;
                if found {
                    return Ok::<_, anyhow::Error>(Instant::now());
                }
                ensure!(sent.elapsed() < timeout, "renewal {hash} not indexed after {timeout:?}");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        let ((mined_at, block), visible_at) = tokio::try_join!(mined, visible)?;
        let sample = Sample {
            block,
            inclusion: mined_at.saturating_duration_since(sent),
            latency: visible_at.saturating_duration_since(mined_at),
        };
        eprintln!(
            "live sample {:>2}: block {}, mined {:>4} ms after send, row visible {:>4} ms after mined",
            i + 1,
            sample.block,
            sample.inclusion.as_millis(),
            sample.latency.as_millis()
        );
        samples.push(sample);
    }
    let _ = stop.send(());
    running.await?.context("the live indexer failed")?;
    Ok(samples)
}

/// CPU time (user + system) of the processes sharing the machine, from `/proc` (in USER_HZ = 1/100 s).
#[derive(Debug, Clone, Copy, Default)]
struct Cpu {
    indexer: f64,
    anvil: f64,
    postgres: f64,
}

impl std::ops::Sub for Cpu {
    type Output = Self;
    fn sub(self, o: Self) -> Self {
        Self { indexer: self.indexer - o.indexer, anvil: self.anvil - o.anvil, postgres: self.postgres - o.postgres }
    }
}

impl std::ops::AddAssign for Cpu {
    fn add_assign(&mut self, o: Self) {
        self.indexer += o.indexer;
        self.anvil += o.anvil;
        self.postgres += o.postgres;
    }
}

/// `(ppid, utime + stime, cutime + cstime)` of `pid`, in seconds.
fn proc_stat(pid: &str) -> Option<(String, f64, f64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = text.rsplit_once(')')?.1.split_whitespace().collect();
    let tick = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0) / 100.0;
    Some((fields.get(1)?.to_string(), tick(11) + tick(12), tick(13) + tick(14)))
}

/// CPU used so far by this process (the indexer under test), anvil, and the Postgres cluster (its postmaster,
/// the backends it already reaped, and the live ones).
fn cpu(anvil: u32, postgres: Option<u32>) -> Cpu {
    let own = |pid: &str| proc_stat(pid).map_or(0.0, |(_, own, _)| own);
    let postgres = postgres.map_or(0.0, |pg| {
        let pg = pg.to_string();
        let mut total = proc_stat(&pg).map_or(0.0, |(_, own, reaped)| own + reaped);
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.bytes().all(|b| b.is_ascii_digit())
                && let Some((ppid, own, _)) = proc_stat(&name)
                && ppid == pg
            {
                total += own;
            }
        }
        total
    });
    Cpu { indexer: own("self"), anvil: own(&anvil.to_string()), postgres }
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".into())
}

fn verdict(ok: bool) -> &'static str {
    if ok { "met" } else { "NOT met" }
}

#[tokio::main]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cfg = Config::from_args()?;
    ensure!(cfg.repeat > 0, "--repeat must be at least 1");
    let bench_started = Instant::now();
    eprintln!("config: {cfg:?}");

    let chain =
        TestChain::spawn_with(&["--gas-limit", BLOCK_GAS_LIMIT, "--slots-in-an-epoch", "1"])?;
    let endpoint = chain.endpoint();
    let mut generated = generate(&chain, &cfg).await?;
    let d = generated.deployment.clone();
    let head = generated.head;
    eprintln!(
        "generated {} events ({} subscribers, {} rounds) in blocks {}..={} in {:.1} s",
        generated.events,
        cfg.subscribers,
        generated.rounds,
        d.start_block,
        head,
        secs(generated.elapsed)
    );

    // (a) and (b), interleaved `--repeat` times so background load hits both alike; the medians are reported.
    // (a) The raw ceiling: the whole range in one request, then the backfill's own ranges and concurrency.
    // (b) A full backfill into a fresh database (the last one is kept for (c)).
    let load_start = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let (mut whole_runs, mut ranged_runs, mut backfill_runs) = (Vec::new(), Vec::new(), Vec::new());
    let mut kept = Vec::new();
    let (mut events, mut ranges) = (0, 0);
    let mut last_db = None;
    let (mut raw_cpu, mut backfill_cpu) = (Cpu::default(), Cpu::default());
    for run in 0..cfg.repeat {
        let whole = raw_pass(&endpoint, &d, head, head - d.start_block + 1, 1, false).await?;
        eprintln!("(a) run {}: one request: {} events in {:.2} s", run + 1, whole.events, secs(whole.wall));
        let before = cpu(chain.pid(), None);
        let ranged = raw_pass(&endpoint, &d, head, cfg.max_range, cfg.concurrency, cfg.profile && run == 0).await?;
        raw_cpu += cpu(chain.pid(), None) - before;
        eprintln!(
            "(a) run {}: {} ranges: {} events in {:.2} s",
            run + 1,
            ranged.ranges,
            ranged.events,
            secs(ranged.wall)
        );
        ensure!(whole.events == ranged.events, "the two raw passes disagree: {} vs {}", whole.events, ranged.events);
        events = ranged.events;
        ranges = ranged.ranges;
        whole_runs.push(whole.wall);
        ranged_runs.push((ranged.wall, ranged.decode));
        if run == 0 {
            ensure!(
                ranged.with_timestamps,
                "the node's logs carry no blockTimestamp; the figures would not be comparable"
            );
            kept = ranged.kept;
        }

        drop(last_db.take());
        let db = TestDatabase::create().await?;
        let db_pool = pool(&db).await?;
        let store = Store::open(db_pool.clone()).await?;
        let metrics = Metrics::default();
        let backfiller = indexer(&endpoint, &d, store, &cfg, &metrics)?;
        let before = cpu(chain.pid(), db.server_pid());
        let t = Instant::now();
        let progress = backfiller.backfill_to(None).await?;
        let backfill = t.elapsed();
        backfill_cpu += cpu(chain.pid(), db.server_pid()) - before;
        drop(backfiller);
        let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM chain.raw_logs").fetch_one(&db_pool).await?;
        ensure!(progress.indexed == Some(head), "backfill stopped at {:?}, head {head}", progress.indexed);
        ensure!(
            progress.events == events && stored as u64 == events,
            "backfill committed {} events ({stored} stored), the chain has {events}",
            progress.events
        );
        eprintln!("(b) run {}: backfill: {events} events in {:.2} s", run + 1, secs(backfill));
        backfill_runs.push(backfill);
        last_db = Some((db, db_pool));
    }
    let (db, db_pool) = last_db.context("--repeat must be at least 1")?;

    // Other ranges, one backfill each, for tuning.
    let mut tuning = Vec::new();
    for &max_range in &cfg.tune_ranges {
        let db = TestDatabase::create().await?;
        let tuned = Config { max_range, ..cfg.clone() };
        let backfiller = indexer(&endpoint, &d, Store::open(pool(&db).await?).await?, &tuned, &Metrics::default())?;
        let t = Instant::now();
        let progress = backfiller.backfill_to(None).await?;
        let took = t.elapsed();
        ensure!(progress.events == events, "tuning backfill committed {} of {events} events", progress.events);
        eprintln!("(b) max_range {max_range}: {events} events in {:.2} s", secs(took));
        tuning.push((max_range, took));
    }
    let whole_wall = median_of(&whole_runs);
    let (ranged_wall, ranged_decode) = {
        let mut runs = ranged_runs.clone();
        runs.sort();
        runs[(runs.len() - 1) / 2]
    };
    let backfill = median_of(&backfill_runs);

    // (c) Live-follow latency on the same database.
    let mut samples = live(&chain, &mut generated, db_pool.clone(), &cfg).await?;

    // Where the backfill's time goes, stage by stage.
    let profile = if cfg.profile {
        let both = commit_only(&endpoint, &d, &kept, Rows::Both).await?;
        let raw = commit_only(&endpoint, &d, &kept, Rows::Raw).await?;
        let typed = commit_only(&endpoint, &d, &kept, Rows::Typed).await?;
        let overlap = overlapped(&endpoint, &d, head, &cfg, &kept).await?;
        Some((both, raw, typed, overlap))
    } else {
        None
    };
    let load_end = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();

    // Summary.
    let ceiling = rate(events, whole_wall).max(rate(events, ranged_wall));
    let backfill_rate = rate(events, backfill);
    let ratio = backfill_rate / ceiling;
    samples.sort_by_key(|s| s.latency);
    let latencies: Vec<Duration> = samples.iter().map(|s| s.latency).collect();
    let median = latencies.get(latencies.len().saturating_sub(1) / 2).copied().unwrap_or_default();
    let max = latencies.last().copied().unwrap_or_default();
    let min = latencies.first().copied().unwrap_or_default();
    let mean = latencies.iter().sum::<Duration>() / u32::try_from(latencies.len().max(1))?;
    let inclusion_max = samples.iter().map(|s| s.inclusion).max().unwrap_or_default();
    let pg_version: String = sqlx::query_scalar("SHOW server_version").fetch_one(&db_pool).await?;
    let anvil_version = std::process::Command::new(foundry_bin("anvil")?)
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.lines().next().map(str::to_owned))
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let blocks = head - d.start_block + 1;

    let mut out = String::new();
    out += "## subsettle indexer benchmark\n\n";
    out += &format!(
        "Machine: {cores} cores, {}; {anvil_version}; Postgres {pg_version} (testkit cluster: fsync=off, \
         synchronous_commit=off).\n\n",
        cpu_model()
    );
    out += &format!(
        "Data: {} events from {} subscribers over {} hourly rounds: {} Subscribed, {} Renewed (one renew round per \
         period), {} UsageCharged ({} usage postings per period), {} deployment events; keeper batches of up to {} \
         items; {} blocks ({} per period). Generation took {:.1} s (not part of the figures).\n\n",
        thousands(events as f64),
        cfg.subscribers,
        generated.rounds,
        cfg.subscribers,
        thousands(generated.renewals as f64),
        thousands(generated.charges as f64),
        cfg.charges_per_period,
        events - cfg.subscribers as u64 - generated.renewals - generated.charges,
        cfg.batch,
        thousands(blocks as f64),
        cfg.blocks_per_period,
        secs(generated.elapsed)
    );
    out += "| Measure | Settings | Time | Result | Target | |\n|---|---|---|---|---|---|\n";
    out += &format!(
        "| (a) raw ceiling: eth_getLogs + decode, no DB | whole range, 1 request | {:.2} s | {} events/s | | |\n",
        secs(whole_wall),
        thousands(rate(events, whole_wall))
    );
    out += &format!(
        "| (a) raw ceiling: eth_getLogs + decode, no DB | {} ranges of {} blocks, {} in flight | {:.2} s | {} events/s | | |\n",
        ranges,
        cfg.max_range,
        cfg.concurrency,
        secs(ranged_wall),
        thousands(rate(events, ranged_wall))
    );
    out += &format!(
        "| (b) full backfill into Postgres | max_range {}, concurrency {} | {:.2} s | {} events/s | >= 20,000 events/s | {} |\n",
        cfg.max_range,
        cfg.concurrency,
        secs(backfill),
        thousands(backfill_rate),
        verdict(backfill_rate >= 20_000.0)
    );
    out += &format!("| (b) / best (a) | | | {:.0} % | >= 70 % | {} |\n", ratio * 100.0, verdict(ratio >= 0.70));
    out += &format!(
        "| (c) live latency, block mined -> row visible: median | poll {} ms, {} samples over the poll cycle | | {} ms (min {}, mean {}) | <= 1 s | {} |\n",
        cfg.poll_ms,
        latencies.len(),
        median.as_millis(),
        min.as_millis(),
        mean.as_millis(),
        verdict(median <= Duration::from_secs(1))
    );
    out += &format!(
        "| (c) live latency: max | same | | {} ms | <= 1 s | {} |\n",
        max.as_millis(),
        verdict(max <= Duration::from_secs(1))
    );
    out += &format!(
        "\n(c) runs on the database of (b) ({} rows); the transactions waited up to {} ms for their block (not \
         counted); resolution about 10 ms. The worst case is one poll interval plus a step: a block mined just \
         after a poll waits for the next one.\n",
        thousands(events as f64),
        inclusion_max.as_millis()
    );
    if let Some((profile, raw_only, typed_only, overlap)) = &profile {
        let fetch = ranged_wall.saturating_sub(ranged_decode);
        out += "\nWhere the backfill's time goes (each stage alone, same ranges):\n\n";
        out += "| Stage | Time | Events/s |\n|---|---|---|\n";
        out += &format!(
            "| eth_getLogs ({} ranges, {} in flight, JSON parse included) | {:.2} s | {} |\n",
            ranges,
            cfg.concurrency,
            secs(fetch),
            thousands(rate(events, fetch))
        );
        out += &format!(
            "| decode (ABI -> typed rows) | {:.2} s | {} |\n",
            secs(ranged_decode),
            thousands(rate(events, ranged_decode))
        );
        out += &format!(
            "| batch build (raw + typed rows, decode included) | {:.2} s | {} |\n",
            secs(profile.build),
            thousands(rate(profile.events, profile.build))
        );
        out += &format!(
            "| Postgres commit (1 transaction per range, sequential) | {:.2} s | {} |\n",
            secs(profile.commit),
            thousands(rate(profile.events, profile.commit))
        );
        out += &format!(
            "| - of which `chain.raw_logs` alone (commits without typed rows) | {:.2} s | {} |\n",
            secs(raw_only.commit),
            thousands(rate(raw_only.events, raw_only.commit))
        );
        out += &format!(
            "| - of which the typed tables alone (commits without raw logs) | {:.2} s | {} |\n",
            secs(typed_only.commit),
            thousands(rate(typed_only.events, typed_only.commit))
        );
        out += &format!(
            "| sum of the stages (fetch + build + commit) | {:.2} s | {} |\n",
            secs(fetch + profile.build + profile.commit),
            thousands(rate(events, fetch + profile.build + profile.commit))
        );
        out += &format!("| measured backfill (b) | {:.2} s | {} |\n", secs(backfill), thousands(backfill_rate));
        out += &format!(
            "| fetch + decode and commit running at the same time (what overlapping them could reach) | {:.2} s | {} |\n",
            secs(*overlap),
            thousands(rate(events, *overlap))
        );
    }
    let runs = cfg.repeat as f64;
    let (raw_wall, backfill_wall): (Duration, Duration) =
        (ranged_runs.iter().map(|r| r.0).sum(), backfill_runs.iter().sum());
    out += &format!(
        "\nCPU seconds per run (the machine has {cores} cores, shared by all three):\n\n\
         | Phase | Wall | Indexer process | anvil | Postgres |\n|---|---|---|---|---|\n\
         | (a) ranges, no DB | {:.2} s | {:.2} s | {:.2} s | - |\n\
         | (b) backfill | {:.2} s | {:.2} s | {:.2} s | {:.2} s |\n",
        secs(raw_wall) / runs,
        raw_cpu.indexer / runs,
        raw_cpu.anvil / runs,
        secs(backfill_wall) / runs,
        backfill_cpu.indexer / runs,
        backfill_cpu.anvil / runs,
        backfill_cpu.postgres / runs,
    );
    if !tuning.is_empty() {
        out += &format!(
            "\nOther eth_getLogs ranges (one backfill each, concurrency {}):\n\n| max_range | Time | Events/s |\n|---|---|---|\n",
            cfg.concurrency
        );
        out += &format!(
            "| {} (above, median) | {:.2} s | {} |\n",
            cfg.max_range,
            secs(backfill),
            thousands(backfill_rate)
        );
        for (max_range, took) in &tuning {
            out += &format!("| {max_range} | {:.2} s | {} |\n", secs(*took), thousands(rate(events, *took)));
        }
    }
    let list = |runs: &[Duration]| runs.iter().map(|d| format!("{:.2}", secs(*d))).collect::<Vec<_>>().join(", ");
    out += &format!(
        "\nEach of (a) and (b) ran {} times, interleaved; the table shows the medians. Runs (s): (a) one request: {}; \
         (a) ranges: {}; (b): {}. Load average before (a): {}; after the profile: {}.\n",
        cfg.repeat,
        list(&whole_runs),
        list(&ranged_runs.iter().map(|r| r.0).collect::<Vec<_>>()),
        list(&backfill_runs),
        load_start.trim(),
        load_end.trim()
    );
    out += &format!("\nBench wall time: {:.1} s.\n", secs(bench_started.elapsed()));
    println!("{out}");
    drop(db_pool);
    drop(db);
    drop(chain);
    Ok(())
}
