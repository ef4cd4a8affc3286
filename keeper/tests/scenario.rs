//! A month of a $79 plan with included usage (2M input tokens and 20 USDC of value), three models each earning
//! for a 70/20/10 split: a heavy user who exceeds the allowance in week one, a light user, and one with no usage.
//! The keeper closes the period; the amounts it computed are then posted on chain (as part 2 will) and indexed,
//! and every figure is reconciled: the subscriber's charge, each split's amount, each recipient's credits, and
//! every line's Merkle proof against the roots on chain. A late event then lands in the next period as an
//! adjustment line, and the closed period is unchanged.

#[path = "../../indexer/tests/common/mod.rs"]
mod common;
#[path = "common/market.rs"]
mod market;

use std::collections::BTreeMap;

use alloy::primitives::{Address, B256, U256};
use market::{CREATORS, HOST, Market, PAST_PERIOD, PLATFORM};
use serde_json::json;
use subsettle_abi::{ISubscriptions::Charge, SplitEscrow, Subscriptions};
use subsettle_keeper::{
    metering::catalog,
    metering::close::close_due_periods,
    settlement::epoch::{EpochScope, SettleRoom, close_epoch},
    merkle::MerkleTree,
    metering::statement::{Scope, Statement, creator_statement, subscriber_statement, verify},
};

const DAY: i64 = 86_400;

async fn close_row(market: &Market, sub: u64, period: i64) -> (String, String, String, String, Vec<u8>, i64) {
    sqlx::query_as(
        "SELECT fee::TEXT, overage_amount::TEXT, overage_charge::TEXT, collected::TEXT, usage_root, close_id
         FROM keeper.period_closes WHERE subscription_id = $1 AND period_index = $2",
    )
    .bind(sub as i64)
    .bind(period)
    .fetch_one(&market.pool)
    .await
    .unwrap()
}

async fn lines(market: &Market, close_id: i64) -> Vec<(String, String, String, String, Option<i64>, Vec<u8>)> {
    sqlx::query_as(
        "SELECT model_id, split_id::TEXT, overage_amount::TEXT, attributed::TEXT, adjustment_of, leaf
         FROM keeper.usage_lines WHERE close_id = $1 ORDER BY line_no",
    )
    .bind(close_id)
    .fetch_all(&market.pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn a_month_of_usage_closes_settles_and_reconciles_to_the_unit() {
    let market = Market::start(3, 50_000_000).await;
    let (heavy, light, idle) = (market.subscribers[0], market.subscribers[1], market.subscribers[2]);
    let t0 = market.now();

    // Week one: the heavy user goes through the allowance; the light user stays inside it.
    let (status, report) = market
        .usage(&json!([
            market.event("h-1", 0, "llm-large", "input_tokens", "3000000", t0),
            market.event("h-2", 0, "llm-large", "output_tokens", "1000000", t0 + 1),
            market.event("l-1", 1, "llm-large", "input_tokens", "100000", t0 + 2),
        ]))
        .await;
    assert_eq!((status, report["accepted"].as_u64()), (200, Some(3)), "{report}");
    market.advance(3 * DAY as u64).await;
    let t1 = market.now();
    let (status, report) = market
        .usage(&json!([
            market.event("h-3", 0, "image-gen", "images", "800", t1),
            market.event("h-4", 0, "gpu-box", "gpu_seconds", "1000.5", t1 + 1),
            market.event("l-2", 1, "image-gen", "images", "10", t1 + 2),
        ]))
        .await;
    assert_eq!((status, report["accepted"].as_u64()), (200, Some(3)), "{report}");

    // The period ends; after the late-event cutoff it closes.
    market.advance(PAST_PERIOD - 3 * DAY as u64).await;
    let snapshot = catalog::load(&market.pool).await.unwrap();
    let report = close_due_periods(&market.pool, &snapshot, &market.close_options(), market.now()).await.unwrap();
    assert_eq!((report.periods, report.events), (3, 6));

    // Heavy: input $9 (2M of 3M included: $3 over), output $15, images $32, gpu $0.8004. The 20 USDC of value
    // allowance covers the first $20 of overage in event order ($3 + $15 + $2 of the images): $30.8004 over.
    let (fee, overage, charge, collected, heavy_root, heavy_close) = close_row(&market, heavy.1, 0).await;
    assert_eq!((fee.as_str(), overage.as_str(), charge.as_str(), collected.as_str()), ("79000000", "30800400", "30800400", "109800400"));
    let heavy_lines = lines(&market, heavy_close).await;
    let attributed: u128 = heavy_lines.iter().map(|l| l.3.parse::<u128>().unwrap()).sum();
    assert_eq!(attributed, 109_800_400);
    // Light: inside the allowance, so only the fee, divided $0.30 : $0.40 with the leftover unit to the larger
    // remainder (33,857,142.86 -> 33,857,143 and 45,142,857.14 -> 45,142,857).
    let (_, overage, _, collected, _, light_close) = close_row(&market, light.1, 0).await;
    assert_eq!((overage.as_str(), collected.as_str()), ("0", "79000000"));
    let light_lines = lines(&market, light_close).await;
    let light_amounts: Vec<&str> = light_lines.iter().map(|l| l.3.as_str()).collect();
    assert_eq!(light_amounts, ["45142857", "33857143"], "lines in key order: image-gen, llm-large");
    // Idle: one fee-only line to the default split.
    let (_, _, _, collected, _, idle_close) = close_row(&market, idle.1, 0).await;
    let idle_lines = lines(&market, idle_close).await;
    assert_eq!(collected, "79000000");
    assert_eq!(idle_lines.len(), 1);
    assert_eq!((idle_lines[0].0.as_str(), idle_lines[0].1.parse::<u64>().unwrap()), ("", market.splits[0]));

    let epoch = close_epoch(&market.pool, market.deployment.chain_id, market.now(), EpochScope::AllClosed, SettleRoom::UNLIMITED).await.unwrap().expect("an epoch");
    assert_eq!(epoch.total, 109_800_400 + 79_000_000 * 2);
    assert_eq!(close_epoch(&market.pool, market.deployment.chain_id, market.now(), EpochScope::AllClosed, SettleRoom::UNLIMITED).await.unwrap(), None, "nothing left");

    // Every line proves against its close's root and against the epoch's root.
    let mut all_leaves = Vec::new();
    for close in [heavy_close, light_close, idle_close] {
        let leaves: Vec<B256> = lines(&market, close).await.iter().map(|l| B256::from_slice(&l.5)).collect();
        let tree = MerkleTree::new(&leaves);
        for leaf in &leaves {
            assert!(subsettle_keeper::merkle::verify(&tree.proof(*leaf).unwrap(), tree.root(), *leaf));
        }
        all_leaves.extend(leaves);
    }
    let epoch_tree = MerkleTree::new(&all_leaves);
    assert_eq!(epoch_tree.root(), epoch.usage_root);
    for leaf in &all_leaves {
        assert!(subsettle_keeper::merkle::verify(&epoch_tree.proof(*leaf).unwrap(), epoch.usage_root, *leaf));
    }

    // Post the amounts on chain as the settlement engine will, then index.
    let operator = market.operator();
    let subs = Subscriptions::new(market.deployment.subscriptions, &operator);
    let charge = Charge {
        subscriptionId: U256::from(heavy.1),
        periodIndex: U256::ZERO,
        cumulativeOverage: U256::from(30_800_400u64),
        usageRoot: B256::from_slice(&heavy_root),
    };
    confirm!(subs.chargeUsage(vec![charge]));
    let escrow = SplitEscrow::new(market.deployment.escrow, &operator);
    let split_ids: Vec<U256> = epoch.splits.keys().map(|s| U256::from(*s)).collect();
    let amounts: Vec<U256> = epoch.splits.values().map(|a| U256::from(*a)).collect();
    // The first epoch starts at the earliest period start, or later where a split it credits took effect later: a
    // new split is in force only after the change delay, and the escrow credits a split only by a version in force
    // for the whole epoch.
    let mut in_force_from = 0u64;
    for split in epoch.splits.keys() {
        in_force_from = in_force_from.max(escrow.splitVersion(U256::from(*split), U256::ZERO).call().await.unwrap().effectiveAt.to::<u64>());
    }
    let earliest_period = sqlx::query_scalar::<_, i64>("SELECT MIN(period_start) FROM keeper.period_closes").fetch_one(&market.pool).await.unwrap();
    assert!(earliest_period <= t0 && earliest_period > t0 - 120, "the earliest period started at subscription");
    assert_eq!(epoch.start, earliest_period.max(in_force_from as i64), "the first epoch's start");
    let (start, end) = (U256::from(epoch.start as u64), U256::from(epoch.end as u64));
    confirm!(escrow.settle(U256::from(epoch.epoch_id), start, end, split_ids, amounts, epoch.usage_root));
    market.sync().await;

    // The subscriber paid exactly the fee and the computed overage.
    let paid: String = sqlx::query_scalar(
        "SELECT (s.amount + COALESCE((SELECT SUM(u.amount) FROM chain.usage_charges u WHERE u.subscription_id = s.subscription_id), 0))::TEXT
         FROM chain.subscribed s WHERE s.subscription_id = $1::NUMERIC",
    )
    .bind(heavy.1.to_string())
    .fetch_one(&market.pool)
    .await
    .unwrap();
    assert_eq!(paid, "109800400");
    let roots: Vec<Vec<u8>> = sqlx::query_scalar("SELECT usage_root FROM chain.usage_charges UNION ALL SELECT usage_root FROM chain.settlements")
        .fetch_all(&market.pool)
        .await
        .unwrap();
    assert_eq!(roots, vec![heavy_root.clone(), epoch.usage_root.to_vec()]);

    // Each recipient's credits equal the split amounts divided by 70/20/10, the remainder to the creator.
    let mut expected: BTreeMap<Address, u128> = BTreeMap::new();
    for (split, amount) in &epoch.splits {
        let creator = CREATORS[market.splits.iter().position(|s| s == split).unwrap()];
        let platform = amount * 2_000 / 10_000;
        let host = amount * 1_000 / 10_000;
        *expected.entry(market.chain.address(creator)).or_default() += amount - platform - host;
        *expected.entry(market.chain.address(PLATFORM)).or_default() += platform;
        *expected.entry(market.chain.address(HOST)).or_default() += host;
    }
    let credited: Vec<(Vec<u8>, String)> =
        sqlx::query_as("SELECT recipient, SUM(amount)::TEXT FROM chain.credits GROUP BY recipient").fetch_all(&market.pool).await.unwrap();
    let credited: BTreeMap<Address, u128> =
        credited.into_iter().map(|(r, a)| (Address::from_slice(&r), a.parse().unwrap())).collect();
    assert_eq!(credited, expected);
    assert_eq!(credited.values().sum::<u128>(), epoch.total);

    // Statements: the subscriber's lines add up to what they paid, each creator's to what the chain credited,
    // and every line verifies against the roots on chain. A tampered line is caught.
    let chain_id = market.deployment.chain_id;
    let heavy_statement = subscriber_statement(&market.pool, chain_id, 6, heavy.0, Scope::default()).await.unwrap();
    assert_eq!(heavy_statement.total, "109800400");
    assert_eq!(heavy_statement.lines.len(), 4);
    assert_eq!(heavy_statement.periods[0].charged_on_chain.as_deref(), Some("30800400"));
    let check = verify(&market.pool, &heavy_statement).await.unwrap();
    assert!(check.ok() && check.unsettled_epochs.is_empty(), "{:?}", check.problems);
    assert_eq!(check.lines_ok, 4);
    for (i, creator) in CREATORS.iter().enumerate() {
        let address = market.chain.address(*creator);
        let statement = creator_statement(&market.pool, chain_id, 6, address, Scope { epoch: Some(1), ..Scope::default() }).await.unwrap();
        assert_eq!(statement.total, expected[&address].to_string(), "creator {i}");
        assert!(statement.lines.iter().all(|l| l.split_id == market.splits[i] && l.bps == Some(7_000)));
        let check = verify(&market.pool, &statement).await.unwrap();
        assert!(check.ok(), "creator {i}: {:?}", check.problems);
        // Through JSON and back, as `verify-statement <file>` reads it.
        let file: Statement = serde_json::from_str(&serde_json::to_string(&statement).unwrap()).unwrap();
        assert!(verify(&market.pool, &file).await.unwrap().ok());
        if statement.lines.len() >= 2 {
            // A unit moved between two lines keeps every total but not the division of the credit.
            let mut moved = statement.clone();
            moved.lines[0].amount = (moved.lines[0].amount.parse::<u128>().unwrap() + 1).to_string();
            moved.lines[1].amount = (moved.lines[1].amount.parse::<u128>().unwrap() - 1).to_string();
            let check = verify(&market.pool, &moved).await.unwrap();
            assert_eq!(check.problems.len(), 2, "creator {i}: {:?}", check.problems);
        }
    }
    let platform = creator_statement(&market.pool, chain_id, 6, market.chain.address(PLATFORM), Scope::default()).await.unwrap();
    assert_eq!(platform.total, expected[&market.chain.address(PLATFORM)].to_string());
    assert!(verify(&market.pool, &platform).await.unwrap().ok());
    // The same through HTTP and through the command line, as finance would use them.
    let creator = market.chain.address(CREATORS[1]);
    let (status, _) = market.get(&format!("/v1/statements/creator/{creator}?epoch=1")).await;
    assert_eq!(status, 401, "statements need the operator token");
    let response = market
        .http
        .get(format!("{}/v1/statements/creator/{creator}?epoch=1", market.url))
        .bearer_auth(market::TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let over_http: Statement = response.json().await.unwrap();
    assert_eq!(over_http, creator_statement(&market.pool, chain_id, 6, creator, Scope { epoch: Some(1), ..Scope::default() }).await.unwrap());
    let status = market
        .http
        .get(format!("{}/v1/statements/creator/{creator}?epoch=x", market.url))
        .bearer_auth(market::TOKEN)
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status.as_u16(), 400);
    let dir = tempfile::tempdir().unwrap();
    let deployment = common::save_deployment(&market.deployment, dir.path());
    let keeper_cli = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_subsettle-keeper"))
            .args(args)
            .arg("--deployment")
            .arg(&deployment)
            .env("DATABASE_URL", market.db.url())
            .env("RUST_LOG", "warn")
            .output()
            .unwrap()
    };
    let creator_text = creator.to_string();
    let json = keeper_cli(&["statement", "--creator", &creator_text, "--epoch", "1", "--format", "json"]);
    assert!(json.status.success(), "{}", String::from_utf8_lossy(&json.stderr));
    let file = dir.path().join("statement.json");
    std::fs::write(&file, &json.stdout).unwrap();
    let checked = keeper_cli(&["verify-statement", file.to_str().unwrap()]);
    assert!(checked.status.success(), "{}", String::from_utf8_lossy(&checked.stdout));
    let table = keeper_cli(&["statement", "--creator", &creator_text, "--format", "table"]);
    let table = String::from_utf8(table.stdout).unwrap();
    assert!(table.contains("image-gen") && table.contains("total "), "{table}");
    let csv = keeper_cli(&["statement", "--subscriber", &heavy.0.to_string(), "--format", "csv"]);
    assert_eq!(String::from_utf8(csv.stdout).unwrap().lines().count(), 1 + 4);
    let edited = String::from_utf8(json.stdout).unwrap().replacen("\"amount\": \"", "\"amount\": \"1", 1);
    std::fs::write(&file, edited).unwrap();
    let checked = keeper_cli(&["verify-statement", file.to_str().unwrap()]);
    assert!(!checked.status.success(), "an edited amount must fail verification");

    let mut tampered = heavy_statement.clone();
    tampered.lines[0].quantity += rust_decimal::Decimal::ONE;
    let check = verify(&market.pool, &tampered).await.unwrap();
    assert_eq!(check.problems.len(), 1, "{:?}", check.problems);
    assert!(check.problems[0].contains("do not prove"));
    let mut tampered = heavy_statement.clone();
    tampered.lines[0].amount = (tampered.lines[0].amount.parse::<u128>().unwrap() + 1).to_string();
    tampered.lines[1].amount = (tampered.lines[1].amount.parse::<u128>().unwrap() - 1).to_string();
    let check = verify(&market.pool, &tampered).await.unwrap();
    assert_eq!(check.problems.len(), 2, "a unit moved between lines: {:?}", check.problems);
    let mut tampered = heavy_statement.clone();
    tampered.periods[0].charged_on_chain = Some("0".into());
    tampered.periods[0].overage_charge = "0".into();
    assert!(!verify(&market.pool, &tampered).await.unwrap().ok(), "the chain's charge is read from the chain");
    let mut tampered = heavy_statement.clone();
    tampered.total = "109800401".into();
    assert!(!verify(&market.pool, &tampered).await.unwrap().ok());

    // A late event of the light user's closed period: stored, billed by the next close as an adjustment.
    let before = close_row(&market, light.1, 0).await;
    let (status, report) = market.usage(&json!([market.event("l-late", 1, "image-gen", "images", "5", t0 + 10 * DAY)])).await;
    assert_eq!((status, report["accepted"].as_u64()), (200, Some(1)), "{report}");
    confirm!(subs.renew(vec![U256::from(light.1)]));
    market.advance(30 * DAY as u64).await;
    let report = close_due_periods(&market.pool, &snapshot, &market.close_options(), market.now()).await.unwrap();
    assert_eq!((report.periods, report.events), (1, 1));
    let (_, _, _, collected, _, next_close) = close_row(&market, light.1, 1).await;
    assert_eq!(collected, "79000000");
    let next_lines = lines(&market, next_close).await;
    assert_eq!(next_lines.len(), 1);
    assert_eq!((next_lines[0].0.as_str(), next_lines[0].4), ("image-gen", Some(0)));
    assert_eq!(close_row(&market, light.1, 0).await, before, "a closed period is never edited");
}
