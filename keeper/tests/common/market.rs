//! A small marketplace on a real anvil chain, indexed into a real Postgres, with the keeper's API served on a
//! local port: one $79 / 30-day plan, three models each earning for a 70/20/10 split, and funded subscribers.
#![allow(dead_code, unreachable_pub)]

use std::sync::Arc;

use alloy::{
    primitives::{Address, B256},
    providers::{DynProvider, Provider},
};
use rust_decimal::Decimal;
use serde_json::Value;
use sqlx::PgPool;
use subsettle_abi::{Deployment, SplitEscrow, Subscriptions};
use subsettle_indexer::sync::Indexer;
use subsettle_keeper::{
    clock::Clock,
    metering::api::{ApiSettings, Keeper, router},
    metering::catalog::{self, NewAllowance, NewMeter, NewModel, NewPrice},
    metering::close::CloseOptions,
};
use subsettle_testkit::{TestChain, TestDatabase};

use crate::{
    common::{PERIOD, advance, create_plan, deploy_contracts, fund_and_subscribe, indexer, u},
    confirm,
};

/// The operator's API token in tests.
pub const TOKEN: &str = "test-operator-token-0123456789";
/// Dev accounts: subscribers are 1..=n (n <= 4); creators 5, 6, 7; the platform 8; the inference host 9.
pub const CREATORS: [usize; 3] = [5, 6, 7];
/// The platform's dev account.
pub const PLATFORM: usize = 8;
/// The inference host's dev account.
pub const HOST: usize = 9;
/// Late-event cutoff used by the tests.
pub const CUTOFF: i64 = 3_600;

/// The three models: id, meters with scale, and prices (token units per `per` units).
pub const MODELS: [(&str, &[(&str, u32, &str, &str)]); 3] = [
    ("llm-large", &[("input_tokens", 0, "3", "1000000"), ("output_tokens", 0, "15", "1000000")]),
    ("image-gen", &[("images", 0, "0.04", "1")]),
    ("gpu-box", &[("gpu_seconds", 3, "0.0008", "1")]),
];

/// The running marketplace.
pub struct Market {
    pub chain: TestChain,
    pub db: TestDatabase,
    pub deployment: Deployment,
    pub pool: PgPool,
    pub indexer: Indexer,
    pub plan: u64,
    /// Split per model, in `MODELS` order.
    pub splits: Vec<u64>,
    /// (wallet, subscription id) per subscriber, accounts 1..=n.
    pub subscribers: Vec<(Address, u64)>,
    pub keeper: Arc<Keeper>,
    pub clock: Clock,
    pub url: String,
    pub http: reqwest::Client,
}

impl Market {
    /// Deploys, creates the plan and splits, subscribes `n` subscribers with overage cap `cap` (base units),
    /// indexes, registers the catalog with an allowance of 2,000,000 input tokens and 20 USDC of value, and serves
    /// the API.
    pub async fn start(n: usize, cap: u64) -> Self {
        let chain = TestChain::spawn().expect("anvil");
        let db = TestDatabase::create().await.expect("postgres");
        let deployment = deploy_contracts(&chain).await;
        let plan = create_plan(&chain, &deployment).await;
        let operator = chain.provider(0);
        let escrow = SplitEscrow::new(deployment.escrow, &operator);
        let mut splits = Vec::new();
        for creator in CREATORS {
            let recipients = vec![chain.address(creator), chain.address(PLATFORM), chain.address(HOST)];
            let receipt = confirm!(escrow.createSplit(recipients, vec![7_000, 2_000, 1_000], u(0)));
            let id = receipt.decoded_log::<SplitEscrow::SplitVersionAdded>().expect("SplitVersionAdded").splitId;
            splits.push(id.to::<u64>());
        }
        let ids = fund_and_subscribe(&chain, &deployment, plan, 1..=n, 1, 3).await;
        let mut subscribers = Vec::new();
        for (i, id) in ids.iter().enumerate() {
            let provider = chain.provider(i + 1);
            confirm!(Subscriptions::new(deployment.subscriptions, &provider).setOverageCap(*id, u(cap)));
            subscribers.push((chain.address(i + 1), id.to::<u64>()));
        }
        let (indexer, pool) = indexer(&chain, &db, &deployment).await;
        indexer.backfill_to(None).await.expect("index");
        subsettle_keeper::store::migrate(&pool).await.expect("keeper migrations");

        let plan = plan.to::<u64>();
        for ((model, meters), split) in MODELS.iter().zip(&splits) {
            let new = NewModel {
                model_id: (*model).into(),
                display_name: model.to_uppercase(),
                split_id: *split,
                effective_at: 0,
                meters: meters.iter().map(|(m, scale, _, _)| NewMeter { meter: (*m).into(), scale: *scale }).collect(),
            };
            catalog::add_model(&pool, deployment.chain_id, &new).await.expect("model");
            for (meter, _, price, per) in meters.iter() {
                let price = NewPrice {
                    model_id: (*model).into(),
                    meter: (*meter).into(),
                    unit_price: price.parse().unwrap(),
                    per_units: per.parse().unwrap(),
                    effective_at: 0,
                };
                catalog::set_price(&pool, &price).await.expect("price");
            }
        }
        let allowance = NewAllowance {
            plan_id: plan,
            effective_at: 0,
            units: [("input_tokens".to_owned(), Decimal::from(2_000_000))].into(),
            value: Decimal::from(20),
        };
        catalog::set_allowance(&pool, deployment.chain_id, &allowance).await.expect("allowance");

        let clock = Clock::manual(0);
        let now = chain_time(&operator).await;
        clock.set_ms(now * 1000);
        let settings = ApiSettings {
            chain_id: deployment.chain_id,
            api_token: Some(TOKEN.into()),
            decimals: 6,
            max_body_bytes: 1 << 20,
            max_future_ms: 300_000,
        };
        let keeper = Keeper::load(pool.clone(), settings, clock.clone()).await.expect("keeper");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let app = router(keeper.clone());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self { chain, db, deployment, pool, indexer, plan, splits, subscribers, keeper, clock, url, http: reqwest::Client::new() }
    }

    /// The operator's provider.
    pub fn operator(&self) -> DynProvider {
        self.chain.provider(0)
    }

    /// Moves the chain's clock (and the keeper's) forward, indexes, and refreshes the keeper's view.
    pub async fn advance(&self, seconds: u64) {
        advance(&self.operator(), seconds).await;
        self.sync().await;
    }

    /// Waits until everything the keeper has sent is mined (anvil mines a moment after it answers the send), then
    /// indexes to the head and refreshes the keeper's view; the keeper's clock follows the chain. Without the
    /// wait, a transaction mined just after the index would be confirmed by the keeper's next step but missing
    /// from `chain`, and that step would find nothing to do too early.
    pub async fn sync(&self) {
        self.wait_until_sent_is_mined().await;
        self.indexer.backfill_to(None).await.expect("index");
        self.clock.set_ms(chain_time(&self.operator()).await * 1000);
        self.keeper.refresh().await.expect("refresh");
    }

    /// Waits until one signed version of every transaction in state `sent` has a receipt, so that the next
    /// outbox reconcile finds it.
    pub async fn wait_until_sent_is_mined(&self) {
        let sent: Vec<Vec<Vec<u8>>> =
            sqlx::query_scalar("SELECT tx_hashes FROM keeper.outbox WHERE state = 'sent'").fetch_all(&self.pool).await.unwrap();
        let (operator, deadline) = (self.operator(), std::time::Instant::now() + std::time::Duration::from_secs(10));
        for versions in sent {
            loop {
                let mut mined = false;
                for hash in &versions {
                    mined |= operator.get_transaction_receipt(B256::from_slice(hash)).await.expect("eth_getTransactionReceipt").is_some();
                }
                if mined {
                    break;
                }
                assert!(std::time::Instant::now() < deadline, "a sent transaction was not mined: {versions:x?}");
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            }
        }
    }

    /// Now, Unix seconds (the chain's clock).
    pub fn now(&self) -> i64 {
        self.clock.now_secs()
    }

    /// POSTs `body` to `path` with a content type and an optional token; returns status and JSON body.
    pub async fn post(&self, path: &str, body: impl Into<reqwest::Body>, content_type: &str, token: Option<&str>) -> (u16, Value) {
        let mut request = self.http.post(format!("{}{path}", self.url)).header("content-type", content_type).body(body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.expect("request");
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    /// POSTs events as a JSON array with the operator token.
    pub async fn usage(&self, events: &Value) -> (u16, Value) {
        self.post("/v1/usage", events.to_string(), "application/json", Some(TOKEN)).await
    }

    /// GETs `path`.
    pub async fn get(&self, path: &str) -> (u16, Value) {
        let response = self.http.get(format!("{}{path}", self.url)).send().await.expect("request");
        (response.status().as_u16(), response.json().await.unwrap_or(Value::Null))
    }

    /// Stored events and the sum of their quantities (the "nothing lost, nothing twice" fingerprint).
    pub async fn stored(&self) -> (i64, Decimal) {
        sqlx::query_as("SELECT COUNT(*), COALESCE(SUM(quantity), 0) FROM keeper.usage_events").fetch_one(&self.pool).await.unwrap()
    }

    /// Close options for this market.
    pub fn close_options(&self) -> CloseOptions {
        CloseOptions { chain_id: self.deployment.chain_id, late_cutoff: CUTOFF, decimals: 6, default_split: Some(self.splits[0]), batch: 100 }
    }

    /// The deployer's (owner and keeper) private key, written to a file in `dir` as the binaries read it.
    pub fn key_file(&self, dir: &std::path::Path) -> std::path::PathBuf {
        let path = dir.join("operator.key");
        std::fs::write(&path, alloy::hex::encode_prefixed(self.chain.signer(0).to_bytes())).unwrap();
        path
    }

    /// A transaction sender signing with the deployer's key.
    pub fn sender(&self, dir: &std::path::Path) -> subsettle_keeper::settlement::outbox::Sender {
        subsettle_keeper::settlement::outbox::Sender {
            provider: self.chain.provider(0),
            key: subsettle_keeper::signer::OperatorKey::load(Some(&self.key_file(dir))).unwrap(),
            chain_id: self.deployment.chain_id,
            fees: subsettle_keeper::settlement::outbox::FeePolicy::default(),
            // One confirmation: anvil mines at once, and its `finalized` block is 64 blocks behind its head.
            finality: subsettle_keeper::settlement::outbox::Finality::Confirmations(1),
        }
    }

    /// A settlement engine for this market, signing with the deployer (who is the keeper), its key in `dir`.
    pub fn engine(&self, dir: &std::path::Path) -> subsettle_keeper::settlement::engine::Engine {
        use subsettle_keeper::{settlement::plan::SettlementPolicy, settlement::renewals::RenewalPolicy};
        let sender = self.sender(dir);
        subsettle_keeper::settlement::engine::Engine {
            pool: self.pool.clone(),
            sender,
            deployment: self.deployment.clone(),
            close: self.close_options(),
            renewals: RenewalPolicy { batch: 100, retry_interval: 3_600 },
            settlement: SettlementPolicy {
                batch: 100,
                retry_interval: 3_600,
                charge_window: 2 * 86_400,
                payout_threshold: 1_000_000,
                charge_threshold: None,
            },
            epoch_interval: 86_400,
        }
    }

    /// An event for subscriber `i` (0-based) at `at` (Unix seconds).
    pub fn event(&self, id: &str, i: usize, model: &str, meter: &str, quantity: &str, at: i64) -> Value {
        serde_json::json!({
            "event_id": id,
            "subscriber": self.subscribers[i].0.to_string(),
            "model": model,
            "meter": meter,
            "quantity": quantity,
            "timestamp": at,
        })
    }
}

/// The latest block's timestamp.
pub async fn chain_time(provider: &DynProvider) -> i64 {
    let block = provider.get_block_by_number(alloy::eips::BlockNumberOrTag::Latest).await.unwrap().unwrap();
    block.header.timestamp as i64
}

/// One period plus the cutoff, plus a minute.
pub const PAST_PERIOD: u64 = PERIOD + CUTOFF as u64 + 60;
