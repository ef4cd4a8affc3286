//! Issue #16 item 9, against the real binary: every `admin` subcommand run a second time with the same arguments
//! sends nothing and says it already applied; a request still on its way is followed, not sent again (a refund
//! retried after a timeout applies once); actions repeated on purpose still go through (pause, unpause, pause
//! again; a second identical plan under an idempotency key).

#[path = "../../indexer/tests/common/mod.rs"]
mod common;
#[path = "common/market.rs"]
mod market;

use std::process::Command;

use alloy::{
    primitives::{Address, U256, keccak256},
    providers::{DynProvider, Provider},
    rpc::types::Filter,
    sol_types::SolEvent,
};
use market::Market;
use serde_json::Value;
use subsettle_abi::{SplitEscrow, Subscriptions};

/// The binary's `admin` with the market's deployment, database, chain and owner key; one confirmation is final.
struct Admin<'a> {
    market: &'a Market,
    deployment: std::path::PathBuf,
    key: std::path::PathBuf,
}

/// What one run printed.
#[derive(Debug)]
struct Run {
    ok: bool,
    outcomes: Vec<Value>,
    stdout: String,
    stderr: String,
}

impl Run {
    fn sent_now(&self) -> bool {
        self.outcomes.iter().any(|o| o["sent_now"] == true)
    }

    fn notes(&self) -> String {
        self.outcomes.iter().filter_map(|o| o["note"].as_str()).collect::<Vec<_>>().join(" | ")
    }
}

impl Admin<'_> {
    fn run(&self, args: &[&str]) -> Run {
        let out = Command::new(env!("CARGO_BIN_EXE_subsettle-keeper"))
            .env("DATABASE_URL", self.market.db.url())
            .env("SUBSETTLE_DEPLOYMENT", &self.deployment)
            .env("SUBSETTLE_CONFIRMATIONS", "1")
            .env("RUST_LOG", "warn")
            .args(["admin", "--rpc-url", &self.market.chain.endpoint()])
            .arg("--private-key-file")
            .arg(&self.key)
            .args(args)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let parsed: Value = serde_json::from_str(&stdout).unwrap_or(Value::Null);
        let outcomes = match parsed {
            Value::Array(items) => items,
            Value::Null => Vec::new(),
            other => vec![other],
        };
        Run { ok: out.status.success(), outcomes, stdout, stderr: String::from_utf8_lossy(&out.stderr).into_owned() }
    }
}

async fn rows(market: &Market) -> i64 {
    sqlx::query_scalar("SELECT COUNT(*) FROM keeper.outbox").fetch_one(&market.pool).await.unwrap()
}

async fn nonce(provider: &DynProvider, owner: Address) -> u64 {
    provider.get_transaction_count(owner).pending().await.unwrap()
}

/// Runs `args` twice: the first run goes through and signs a transaction; the second signs nothing, writes no
/// outbox row and says it already applied. Returns the first run.
async fn twice(admin: &Admin<'_>, args: &[&str]) -> Run {
    let (market, provider, owner) = (admin.market, admin.market.operator(), admin.market.chain.address(0));
    let first = admin.run(args);
    assert!(first.ok && first.sent_now(), "{args:?}: {}{}", first.stdout, first.stderr);
    assert!(first.outcomes.iter().all(|o| o["state"] == "confirmed"), "{args:?}: {}", first.stdout);
    let (before_rows, before_nonce) = (rows(market).await, nonce(&provider, owner).await);
    let second = admin.run(args);
    assert!(second.ok, "{args:?}: {}{}", second.stdout, second.stderr);
    assert!(!second.sent_now(), "{args:?}: the second run sent again: {}", second.stdout);
    assert!(second.notes().contains("already applied"), "{args:?}: {}", second.stdout);
    assert!(second.stderr.contains("already applied"), "{args:?}: {}", second.stderr);
    assert_eq!((rows(market).await, nonce(&provider, owner).await), (before_rows, before_nonce), "{args:?}: nothing written, nothing signed");
    // The second run names the first one's transaction when this keeper sent it.
    for (a, b) in first.outcomes.iter().zip(&second.outcomes) {
        assert_eq!(a["tx_hash"], b["tx_hash"], "{args:?}");
    }
    first
}

#[tokio::test]
async fn every_admin_action_run_twice_applies_once_and_the_second_run_says_so() {
    let market = Market::start(1, 0).await;
    let dir = tempfile::tempdir().unwrap();
    let admin = Admin { market: &market, deployment: common::save_deployment(&market.deployment, dir.path()), key: market.key_file(dir.path()) };
    let provider = market.operator();
    let (a, b) = (market.chain.address(5).to_string(), market.chain.address(6).to_string());

    let subs = Subscriptions::new(market.deployment.subscriptions, &provider);
    let escrow = SplitEscrow::new(market.deployment.escrow, &provider);
    let plan = twice(&admin, &["create-plan", "--price", "9.99", "--period", "30d", "--grace", "3d"]).await;
    assert!(plan.stdout.contains("PlanCreated"), "{}", plan.stdout);
    let plan = subs.planCount().call().await.unwrap().to_string();
    twice(&admin, &["set-plan-active", "--plan", &plan, "--active", "false"]).await;
    let split = twice(&admin, &["create-split", "--recipient", &format!("{a}:7000"), "--recipient", &format!("{b}:3000")]).await;
    assert!(split.stdout.contains("SplitVersionAdded"), "{}", split.stdout);
    let split = escrow.splitCount().call().await.unwrap().to_string();
    market.advance(8 * 86_400).await; // a new split takes effect after the 7-day change delay; only then can it change
    twice(&admin, &["propose-split-change", "--split", &split, "--recipient", &format!("{a}:6000"), "--recipient", &format!("{b}:4000")]).await;
    twice(&admin, &["cancel-split-change", "--split", &split]).await;
    let until = (market.now() + 86_400).to_string();
    twice(&admin, &["hold", "--recipient", &a, "--until", &until, "--reason", "dispute-42"]).await;
    twice(&admin, &["release", "--recipient", &a]).await;
    let subscription = market.subscribers[0].1.to_string();
    twice(&admin, &["refund", "--subscription", &subscription, "--period", "0", "--amount", "1", "--reference", "ticket-1"]).await;
    twice(&admin, &["pause"]).await;
    twice(&admin, &["unpause"]).await;
    let nine = market.chain.address(9).to_string();
    twice(&admin, &["set-keeper", "--keeper", &nine]).await;
    assert_eq!((subs.keeper().call().await.unwrap(), escrow.keeper().call().await.unwrap()), (market.chain.address(9), market.chain.address(9)));

    // retry-settlement writes to Postgres only: an epoch whose settlement failed is reopened once.
    let chain = market.deployment.chain_id as i64;
    sqlx::query("INSERT INTO keeper.epochs (epoch_id, chain_id, epoch_start, closed_at, usage_root, total) VALUES (1, $1, 0, 1, $2, 0)")
        .bind(chain)
        .bind(vec![0u8; 32])
        .execute(&market.pool)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO keeper.outbox (action_key, kind, target, calldata, state, failure, chain_time)
         VALUES ('settle:1', 'settle', $1, '\\x00', 'failed', 'pre-check: NotKeeper', 0)",
    )
    .bind(market.deployment.escrow.to_vec())
    .execute(&market.pool)
    .await
    .unwrap();
    let first = admin.run(&["retry-settlement", "--epoch", "1"]);
    assert!(first.ok && first.stdout.contains("reopened") && first.stderr.contains("set aside"), "{}{}", first.stdout, first.stderr);
    let second = admin.run(&["retry-settlement", "--epoch", "1"]);
    assert!(second.ok && second.stdout.contains("nothing_failed") && second.stderr.contains("already applied"), "{}{}", second.stdout, second.stderr);
    let states: Vec<String> = sqlx::query_scalar("SELECT state FROM keeper.outbox WHERE kind = 'settle'").fetch_all(&market.pool).await.unwrap();
    assert_eq!(states, ["superseded"]);
}

#[tokio::test]
async fn a_refund_retried_after_a_timeout_is_followed_not_sent_again_and_applies_once() {
    let market = Market::start(1, 0).await;
    let dir = tempfile::tempdir().unwrap();
    let admin = Admin { market: &market, deployment: common::save_deployment(&market.deployment, dir.path()), key: market.key_file(dir.path()) };
    let (provider, owner) = (market.operator(), market.chain.address(0));
    let subscription = market.subscribers[0].1.to_string();
    let refund = ["refund", "--subscription", &subscription, "--period", "0", "--amount", "2.5", "--reference", "ticket-7", "--wait", "1s"];

    // The node stops mining: the refund is sent and waits in the pool; the command gives up waiting.
    let _: Value = provider.raw_request("evm_setAutomine".into(), (false,)).await.unwrap();
    let before = nonce(&provider, owner).await;
    let first = admin.run(&refund);
    assert!(!first.ok && first.stderr.contains("not final within") && first.stderr.contains("run the same command again"), "{}", first.stderr);
    assert_eq!((first.outcomes[0]["state"].as_str(), first.sent_now()), (Some("sent"), true), "{}", first.stdout);
    assert_eq!(nonce(&provider, owner).await, before + 1);

    // Run again while it is still pending: it is followed, nothing new is signed.
    let second = admin.run(&refund);
    assert!(!second.ok && !second.sent_now() && second.notes().contains("pending"), "{}{}", second.stdout, second.stderr);
    assert_eq!(nonce(&provider, owner).await, before + 1, "no second transaction");
    assert_eq!(rows(&market).await, 1);

    // The node mines again: the third run follows the same action to its end.
    let _: Value = provider.raw_request("evm_mine".into(), ()).await.unwrap();
    let _: Value = provider.raw_request("evm_setAutomine".into(), (true,)).await.unwrap();
    let third = admin.run(&refund);
    assert!(third.ok && !third.sent_now(), "{}{}", third.stdout, third.stderr);
    assert_eq!(third.outcomes[0]["state"], "confirmed");
    assert!(third.stdout.contains("Refunded"), "{}", third.stdout);
    let fourth = admin.run(&refund);
    assert!(fourth.ok && !fourth.sent_now() && fourth.notes().contains("already applied"), "{}", fourth.stdout);

    let filter = Filter::new().address(market.deployment.escrow).event_signature(SplitEscrow::Refunded::SIGNATURE_HASH).from_block(0);
    assert_eq!(provider.get_logs(&filter).await.unwrap().len(), 1, "refunded once");
    let escrow = SplitEscrow::new(market.deployment.escrow, &provider);
    assert_eq!(escrow.refundedFor(U256::from(market.subscribers[0].1), U256::ZERO).call().await.unwrap(), U256::from(2_500_000u64));
    assert!(escrow.refundIdUsed(keccak256(b"ticket-7")).call().await.unwrap());
    assert_eq!(nonce(&provider, owner).await, before + 1);
}

#[tokio::test]
async fn actions_repeated_on_purpose_go_through() {
    let market = Market::start(1, 0).await;
    let dir = tempfile::tempdir().unwrap();
    let admin = Admin { market: &market, deployment: common::save_deployment(&market.deployment, dir.path()), key: market.key_file(dir.path()) };
    let provider = market.operator();
    let subs = Subscriptions::new(market.deployment.subscriptions, &provider);

    // Pause, unpause, pause again: each changes the chain, so each is sent.
    for (args, paused) in [(["pause"], true), (["unpause"], false), (["pause"], true), (["unpause"], false)] {
        let run = admin.run(&args);
        assert!(run.ok && run.sent_now(), "{args:?}: {}{}", run.stdout, run.stderr);
        assert_eq!(subs.chargingPaused().call().await.unwrap(), paused);
    }
    assert_eq!(subs.pauses().call().await.unwrap().len(), 2, "two pauses on chain");
    // Already so on chain (not by this keeper's outbox either way): nothing sent.
    let again = admin.run(&["unpause"]);
    assert!(again.ok && !again.sent_now() && again.notes().contains("charging is not paused"), "{}", again.stdout);

    // A plan identical to an existing one only under an idempotency key; the same key again sends nothing.
    let plan = ["create-plan", "--price", "5", "--period", "30d", "--grace", "3d"];
    assert!(admin.run(&plan).sent_now());
    assert!(!admin.run(&plan).sent_now());
    let keyed: Vec<&str> = plan.iter().copied().chain(["--idempotency-key", "second-5-usdc-plan"]).collect();
    let second = admin.run(&keyed);
    assert!(second.ok && second.sent_now() && second.stdout.contains("PlanCreated"), "{}{}", second.stdout, second.stderr);
    let again = admin.run(&keyed);
    assert!(again.ok && !again.sent_now() && again.notes().contains("already applied"), "{}", again.stdout);
    assert_eq!(subs.planCount().call().await.unwrap(), U256::from(3), "the market's plan and two 5 USDC plans");
    // The key names one request: other arguments under it are refused.
    let other = admin.run(&["create-plan", "--price", "6", "--period", "30d", "--grace", "3d", "--idempotency-key", "second-5-usdc-plan"]);
    assert!(!other.ok && other.stderr.contains("idempotency_key") && other.stderr.contains("different create-plan"), "{}", other.stderr);
    let bad = admin.run(&["pause", "--idempotency-key", "no spaces"]);
    assert!(!bad.ok && bad.stderr.contains("idempotency_key"), "{}", bad.stderr);

    // A failed attempt left nothing on chain: the same request tries again.
    let unknown = ["set-plan-active", "--plan", "99", "--active", "false"];
    let failed = admin.run(&unknown);
    assert!(!failed.ok && failed.stdout.contains("UnknownPlan"), "{}", failed.stdout);
    let retried = admin.run(&unknown);
    assert!(!retried.ok && !retried.sent_now() && retried.stdout.contains("UnknownPlan"), "{}", retried.stdout);
    let attempts: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM keeper.outbox WHERE starts_with(action_key, 'admin:set-plan-active:')")
        .fetch_one(&market.pool)
        .await
        .unwrap();
    assert_eq!(attempts, 2, "each request after a failure is a new attempt");
}
