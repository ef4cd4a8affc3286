//! Reconciliation against a real chain, indexer and keeper: a month that the engine charged, settled and paid
//! out reconciles with no difference and the expected escrow figures; then one source at a time is tampered with
//! and the difference is found with the right ids, and goes away when the tamper is undone. The binary exits 0 on
//! a clean state and 1, naming the recipient, after a tamper.

#[path = "../../indexer/tests/common/mod.rs"]
mod common;
#[path = "common/market.rs"]
mod market;

use alloy::primitives::{Address, U256};
use market::{CUTOFF, Market};
use serde_json::{Value, json};
use subsettle_abi::Subscriptions;
use subsettle_keeper::{
    metering::statement::{
        ChargeClock, Scope, Statement, StatementLine, creator_statement, subscriber_statement_at, to_csv, verify, verify_at,
    },
    operator::reconcile::{Check, Difference, Report, reconcile, to_table},
    settlement::epoch::{EpochScope, SettleRoom, close_epoch},
};

/// A month for two subscribers: subscriber 0 uses 600 images (4 USDC over the allowance), subscriber 1 prepays
/// 100 USDC of credit that pays its renewal. The engine closes, renews, charges, settles and pays out until it
/// has nothing left to do, and everything is indexed.
async fn settled_month() -> (Market, tempfile::TempDir) {
    let market = Market::start(2, 50_000_000).await;
    let dir = tempfile::tempdir().unwrap();
    let engine = market.engine(dir.path());
    let provider = market.chain.provider(2);
    confirm!(Subscriptions::new(market.deployment.subscriptions, &provider).deposit(U256::from(100_000_000u64)));
    let now = market.now();
    let (status, _) = market.usage(&json!([market.event("r-1", 0, "image-gen", "images", "600", now)])).await;
    assert_eq!(status, 200);
    market.advance(30 * 86_400 + CUTOFF as u64 + 60).await;
    for _ in 0..8 {
        let step = engine.step(false).await.unwrap();
        market.sync().await;
        let open: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM keeper.outbox WHERE state <> 'confirmed'").fetch_one(&market.pool).await.unwrap();
        if step.actions.is_empty() && open == 0 {
            let claims: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM chain.claims WHERE succeeded").fetch_one(&market.pool).await.unwrap();
            assert!(claims > 0, "the month was paid out");
            return (market, dir);
        }
    }
    panic!("the engine did not finish the month in 8 steps");
}

/// Reconciles through a read-only connection: any write would fail.
async fn reconciled(market: &Market) -> Report {
    let pool = subsettle_keeper::store::connect_read_only(market.db.url(), 2).await.unwrap();
    reconcile(&pool, &market.operator(), &market.deployment, 6).await.unwrap()
}

/// Runs one tamper (or its undo) that must touch exactly one row.
async fn execute<T>(market: &Market, sql: &str, bind: T)
where
    T: for<'q> sqlx::Encode<'q, sqlx::Postgres> + sqlx::Type<sqlx::Postgres> + Send + 'static,
{
    let done = sqlx::query(sqlx::AssertSqlSafe(sql.to_owned())).bind(bind).execute(&market.pool).await.unwrap();
    assert_eq!(done.rows_affected(), 1, "{sql}");
}

fn found(report: &Report, check: Check, matches: impl Fn(&Difference) -> bool) -> &Difference {
    report.differences.iter().find(|d| d.check == check && matches(d)).unwrap_or_else(|| panic!("no {check:?} difference in\n{}", to_table(report)))
}

fn assert_clean(report: &Report) {
    assert!(report.ok(), "{}", to_table(report));
}

#[tokio::test]
async fn a_settled_month_reconciles_with_no_difference_and_the_expected_escrow_figures() {
    let (market, _dir) = settled_month().await;
    let report = reconciled(&market).await;
    assert_clean(&report);
    assert!(report.pending.is_empty(), "{}", to_table(&report));
    // In: 2 x 79 subscribed, 2 x 79 renewed (one from credit), 4 overage = 320. Settled and paid out: 162.
    let usdc = |n: u64| U256::from(n * 1_000_000);
    let escrow = &report.escrow;
    assert_eq!((escrow.total_revenue, escrow.unallocated, escrow.total_claimable), (usdc(320), usdc(158), U256::ZERO));
    assert_eq!((escrow.token_balance, escrow.surplus, escrow.credit_owed_to_escrow, escrow.solvent), (usdc(158), U256::ZERO, U256::ZERO, true));
    assert_eq!((report.indexed.unallocated.as_str(), report.indexed.settled), ("158000000", usdc(162)));
    let checked = |check: Check| report.sections.iter().find(|s| s.check == check).unwrap().checked;
    // Three splits of three recipients (five distinct) plus the two totals; two subscribers; one charged period.
    assert_eq!(checked(Check::Claimable), 7);
    assert_eq!(checked(Check::Credit), 2);
    assert!(checked(Check::Charged) >= 1 && checked(Check::Statement) == 7, "{}", to_table(&report));
    assert!(to_table(&report).contains("all sources agree"));
}

#[tokio::test]
async fn work_the_keeper_sent_but_has_not_seen_confirmed_is_pending_not_a_difference() {
    let market = Market::start(1, 50_000_000).await;
    let dir = tempfile::tempdir().unwrap();
    let engine = market.engine(dir.path());
    let now = market.now();
    let (status, _) = market.usage(&json!([market.event("p-1", 0, "image-gen", "images", "600", now)])).await;
    assert_eq!(status, 200);
    market.advance(30 * 86_400 + CUTOFF as u64 + 60).await;
    // One step closes the period and sends the renewal and the charge; the chain has them (indexed), the
    // keeper's outbox has not matched their receipts yet, and the epoch waits for the charge.
    let step = engine.step(false).await.unwrap();
    assert_eq!(step.epoch, None, "{step:?}");
    market.sync().await;
    let report = reconciled(&market).await;
    assert_clean(&report);
    let subscription = market.subscribers[0].1;
    let charge = report.pending.iter().find(|p| p.check == Check::Charged && p.ids.subscription_id == Some(subscription) && p.ids.period == Some(0));
    assert!(charge.is_some_and(|p| p.detail.contains("4000000") && p.detail.contains("sent")), "{}", to_table(&report));
    assert!(to_table(&report).contains("pending (not confirmed by block"));
    // The next step matches the charge, gathers epoch 1 and sends its settlement: indexed, not matched yet.
    let step = engine.step(false).await.unwrap();
    assert_eq!(step.epoch, Some(1), "{step:?}");
    market.sync().await;
    let report = reconciled(&market).await;
    assert_clean(&report);
    assert!(report.pending.iter().any(|p| p.check == Check::Settlement && p.ids.settlement_id == Some(1)), "{}", to_table(&report));
}

#[tokio::test]
async fn a_tampered_usage_charge_is_a_charged_difference_naming_its_subscription_and_period() {
    let (market, _dir) = settled_month().await;
    let subscription = market.subscribers[0].1;
    let id = subscription.to_string();
    let tamper = "UPDATE chain.usage_charges SET charged_in_period = charged_in_period + 1, amount = amount + 1
                  WHERE subscription_id = $1::NUMERIC";
    execute(&market, tamper, id.clone()).await;
    let report = reconciled(&market).await;
    let difference = found(&report, Check::Charged, |d| d.ids.subscription_id == Some(subscription) && d.ids.period == Some(0));
    assert_eq!(
        (difference.chain.as_deref(), difference.indexer.as_deref(), difference.keeper.as_deref()),
        (Some("4000000"), Some("4000001"), Some("4000000"))
    );
    // The extra unit also shows in the revenue the index implies.
    let unallocated = found(&report, Check::Unallocated, |d| d.ids.figure == Some("unallocated()"));
    assert_eq!((unallocated.chain.as_deref(), unallocated.indexer.as_deref()), (Some("158000000"), Some("158000001")));

    let undo = "UPDATE chain.usage_charges SET charged_in_period = charged_in_period - 1, amount = amount - 1
                WHERE subscription_id = $1::NUMERIC";
    execute(&market, undo, id).await;
    assert_clean(&reconciled(&market).await);
}

#[tokio::test]
async fn a_tampered_credit_is_a_claimable_difference_naming_its_recipient() {
    let (market, _dir) = settled_month().await;
    let recipient: Vec<u8> =
        sqlx::query_scalar("SELECT recipient FROM chain.credits ORDER BY amount DESC LIMIT 1").fetch_one(&market.pool).await.unwrap();
    let address = Address::from_slice(&recipient);
    execute(&market, "UPDATE chain.credits SET amount = amount + 1 WHERE recipient = $1", recipient.clone()).await;
    let report = reconciled(&market).await;
    let difference = found(&report, Check::Claimable, |d| d.ids.recipient == Some(address));
    assert_eq!((difference.chain.as_deref(), difference.indexer.as_deref(), difference.keeper.as_deref()), (Some("0"), Some("1"), Some("0")));
    let total = found(&report, Check::Claimable, |d| d.ids.figure == Some("totalClaimable()"));
    assert_eq!((total.chain.as_deref(), total.indexer.as_deref()), (Some("0"), Some("1")));
    // The recipient's statement no longer matches what the index says the chain credited.
    found(&report, Check::Statement, |d| d.ids.recipient == Some(address));

    execute(&market, "UPDATE chain.credits SET amount = amount - 1 WHERE recipient = $1", recipient).await;
    assert_clean(&reconciled(&market).await);
}

#[tokio::test]
async fn a_tampered_usage_line_is_a_statement_difference_naming_its_subscriber() {
    let (market, _dir) = settled_month().await;
    let (wallet, subscription) = market.subscribers[0];
    let line = "(close_id, line_no) = (SELECT l.close_id, MIN(l.line_no) FROM keeper.usage_lines l
                  JOIN keeper.period_closes c USING (close_id) WHERE c.subscriber = $1 AND c.period_index = 0 GROUP BY l.close_id)";
    execute(&market, &format!("UPDATE keeper.usage_lines SET attributed = attributed + 1 WHERE {line}"), wallet.to_vec()).await;
    let report = reconciled(&market).await;
    let line_of_the_period = format!("line {subscription}/0/");
    found(&report, Check::Statement, |d| d.ids.subscriber == Some(wallet) && d.keeper.as_deref().is_some_and(|p| p.contains(&line_of_the_period)));
    // The chain and the index still agree with each other on what was charged.
    assert!(!report.differences.iter().any(|d| d.check == Check::Charged), "{}", to_table(&report));

    execute(&market, &format!("UPDATE keeper.usage_lines SET attributed = attributed - 1 WHERE {line}"), wallet.to_vec()).await;
    assert_clean(&reconciled(&market).await);
}

#[tokio::test]
async fn the_binary_exits_0_when_all_agree_and_1_naming_the_recipient_after_a_tamper() {
    let (market, dir) = settled_month().await;
    let deployment = common::save_deployment(&market.deployment, dir.path());
    let run = |format: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_subsettle-keeper"))
            .args(["reconcile", "--rpc-url", &market.chain.endpoint(), "--format", format])
            .env("DATABASE_URL", market.db.url())
            .env("SUBSETTLE_DEPLOYMENT", &deployment)
            .env("RUST_LOG", "warn")
            .env_remove("SUBSETTLE_PRIVATE_KEY")
            .env_remove("SUBSETTLE_PRIVATE_KEY_FILE")
            .output()
            .unwrap()
    };
    let clean = run("table");
    let stdout = String::from_utf8_lossy(&clean.stdout);
    assert_eq!(clean.status.code(), Some(0), "{stdout}\n{}", String::from_utf8_lossy(&clean.stderr));
    assert!(stdout.contains("all sources agree") && stdout.contains("claimable     7 checked, 0 differ"), "{stdout}");

    let recipient: Vec<u8> =
        sqlx::query_scalar("SELECT recipient FROM chain.credits ORDER BY amount DESC LIMIT 1").fetch_one(&market.pool).await.unwrap();
    let address = Address::from_slice(&recipient);
    execute(&market, "UPDATE chain.credits SET amount = amount + 1 WHERE recipient = $1", recipient).await;
    let tampered = run("table");
    let stdout = String::from_utf8_lossy(&tampered.stdout);
    assert_eq!(tampered.status.code(), Some(1), "{stdout}\n{}", String::from_utf8_lossy(&tampered.stderr));
    assert!(stdout.contains(&format!("recipient {address}: chain 0, indexer 1, keeper 0")), "{stdout}");

    let json = run("json");
    assert_eq!(json.status.code(), Some(1));
    let report: Value = serde_json::from_slice(&json.stdout).unwrap();
    let claimable: Vec<&Value> = report["differences"].as_array().unwrap().iter().filter(|d| d["check"] == "claimable").collect();
    let named = claimable.iter().any(|d| d["ids"]["recipient"].as_str().is_some_and(|r| r.eq_ignore_ascii_case(&address.to_string())));
    assert!(named, "{report}");
    assert_eq!(report["escrow"]["unallocated"], "158000000");
}

#[tokio::test]
async fn a_charge_whose_window_has_closed_is_uncollectable_with_the_contracts_reason_not_pending_or_a_difference() {
    use subsettle_abi::usdc::FiatTokenV2_2;
    use subsettle_keeper::{metering::catalog, metering::close::close_due_periods};
    let market = Market::start(2, 50_000_000).await;
    let dir = tempfile::tempdir().unwrap();
    let engine = market.engine(dir.path());
    // Both use 600 images (4 USDC over the allowance); subscriber 1 empties its wallet.
    let now = market.now();
    let events = json!([market.event("u-0", 0, "image-gen", "images", "600", now), market.event("u-1", 1, "image-gen", "images", "600", now)]);
    assert_eq!(market.usage(&events).await.0, 200);
    let provider = market.chain.provider(2);
    let token = FiatTokenV2_2::new(market.deployment.token, &provider);
    let balance = token.balanceOf(market.subscribers[1].0).call().await.unwrap();
    confirm!(token.transfer(market.chain.address(9), balance));

    // The engine closes period 0 of both, renews subscriber 0 and charges both: subscriber 1's charge fails.
    market.advance(30 * 86_400 + CUTOFF as u64 + 60).await;
    engine.step(false).await.unwrap();
    market.sync().await;
    engine.step(false).await.unwrap();
    market.sync().await;
    let failed: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM chain.usage_charge_failures").fetch_one(&market.pool).await.unwrap();
    assert_eq!(failed, 1);
    // Subscriber 0 uses 600 images in period 1, which is closed with no engine running: its charge is never sent.
    assert_eq!(market.usage(&json!([market.event("u-2", 0, "image-gen", "images", "600", market.now())])).await.0, 200);
    market.advance(30 * 86_400 + CUTOFF as u64).await;
    let snapshot = catalog::load(&market.pool).await.unwrap();
    close_due_periods(&market.pool, &snapshot, &market.close_options(), market.now()).await.unwrap();
    let ((w0, s0), (w1, s1)) = (market.subscribers[0], market.subscribers[1]);

    // Period 1's window is still open: the chain has collected none of its charge and still may. The statement says
    // so (paid is the fee alone), which is pending, not uncollectable and not a difference.
    let report = reconciled(&market).await;
    let table = to_table(&report);
    assert!(report.uncollectable.iter().any(|u| u.ids.subscription_id == Some(s1) && u.ids.period == Some(0)), "{table}");
    assert!(!report.uncollectable.iter().any(|u| u.ids.subscription_id == Some(s0)), "{table}");
    let open = |p: &&subsettle_keeper::operator::reconcile::Pending| p.check == Check::Statement && p.ids.subscriber == Some(w0);
    assert!(report.pending.iter().find(open).is_some_and(|p| p.detail.contains("period 1") && p.detail.contains("open until")), "{table}");
    assert!(!report.differences.iter().any(|d| d.check == Check::Statement), "{table}");
    let statement = drawn(&market, w0).await;
    let period = |statement: &Statement, id: u64, index: u64| {
        statement.periods.iter().find(|p| p.subscription_id == id && p.period_index == index).cloned().expect("the period is in the statement")
    };
    let open = period(&statement, s0, 1);
    assert_eq!((open.paid.as_str(), open.uncollected.as_deref(), open.uncollectable), ("79000000", Some("4000000"), false));
    assert!(open.uncollected_reason.as_deref().is_some_and(|r| r.starts_with("not collected yet: its charge window is open until ")), "{open:?}");
    let check = verify_at(&market.pool, &statement, Some(&clock(&market).await)).await.unwrap();
    assert!(check.problems.is_empty() && check.open_charges.len() == 1, "{check:?}");
    // A statement that calls it uncollectable while the contract may still collect it does not verify.
    let mut early = statement.clone();
    early.periods.iter_mut().filter(|p| p.subscription_id == s0 && p.period_index == 1).for_each(|p| p.uncollectable = true);
    let check = verify_at(&market.pool, &early, Some(&clock(&market).await)).await.unwrap();
    assert!(check.problems.iter().any(|p| p.contains("is uncollectable, but the period's charge window is open until")), "{check:?}");

    // Both charge windows (2 days after each period's end) pass.
    market.advance(2 * 86_400).await;

    let report = reconciled(&market).await;
    let table = to_table(&report);
    let item = |id: u64, period: u64| {
        report.uncollectable.iter().find(|u| u.ids.subscription_id == Some(id) && u.ids.period == Some(period)).unwrap_or_else(|| panic!("{table}"))
    };
    let never_sent = item(s0, 1);
    assert_eq!((never_sent.charge.as_str(), never_sent.collected.as_str()), ("4000000", "0"));
    assert!(never_sent.detail.contains("charge window closed") && never_sent.detail.contains("chargeWindow() 172800 s"), "{table}");
    assert!(never_sent.detail.contains("never sent its charge"), "{table}");
    let failed = item(s1, 0);
    assert!(failed.detail.contains("charge window closed") && failed.detail.contains("insufficient_balance"), "{table}");
    assert!(failed.what_to_do.contains("unallocated()") && failed.what_to_do.contains("ChargeWindowClosed"));
    // Neither is pending ("not planned yet") nor a charged difference.
    assert!(!report.pending.iter().any(|p| p.check == Check::Charged), "{table}");
    assert!(!report.differences.iter().any(|d| d.check == Check::Charged), "{table}");
    assert!(table.contains("uncollectable (the charge window has closed; not differences)") && table.contains("what to do:"), "{table}");
    assert!(!table.contains("not planned yet"), "{table}");
    // The subscribers' statements say what the chain collected and what it never will, so they verify: no
    // statement difference, nothing pending.
    assert!(!report.differences.iter().any(|d| d.check == Check::Statement), "{table}");
    assert!(!report.pending.iter().any(|p| p.check == Check::Statement), "{table}");
    assert_clean(&report);

    // The statements' JSON: paid is the fee the chain collected, uncollected the whole overage charge, for good.
    let clock = clock(&market).await;
    for (wallet, id, index, failure) in [(w0, s0, 1, None), (w1, s1, 0, Some("insufficient_balance"))] {
        let statement = drawn(&market, wallet).await;
        let json = serde_json::to_value(&statement).unwrap();
        let period = json["periods"].as_array().unwrap().iter().find(|p| p["subscription_id"] == id && p["period_index"] == index).unwrap();
        assert_eq!(
            (&period["fee"], &period["overage_charge"], &period["paid"], &period["uncollected"], &period["uncollectable"]),
            (&json!("79000000"), &json!("4000000"), &json!("79000000"), &json!("4000000"), &json!(true)),
            "{period}"
        );
        let reason = period["uncollected_reason"].as_str().unwrap();
        assert!(reason.starts_with("charge window closed 20") && reason.contains("chargeWindow() 172800 s"), "{reason}");
        assert_eq!(failure.is_some_and(|f| reason.contains(f)), failure.is_some(), "{reason}");
        // Its lines are the usage as priced: fee plus overage charge, that is paid plus uncollected.
        let lines: u128 = statement.lines.iter().filter(|l| (l.subscription_id, l.period_index) == (id, index)).map(|l| l.amount.parse::<u128>().unwrap()).sum();
        assert_eq!(lines, 83_000_000);
        let check = verify_at(&market.pool, &statement, Some(&clock)).await.unwrap();
        assert!(check.ok() && check.open_charges.is_empty(), "{check:?}");
        // Without the chain's clock the window cannot be checked (the subscription has not moved two periods on):
        // the claim is not taken on trust.
        let unchecked = verify(&market.pool, &statement).await.unwrap();
        assert!(unchecked.problems.iter().any(|p| p.contains("needs the chain's clock")), "{unchecked:?}");
        // One unit off what the chain did not collect is caught.
        let mut off = statement.clone();
        off.periods.iter_mut().filter(|p| (p.subscription_id, p.period_index) == (id, index)).for_each(|p| p.uncollected = Some("3999999".into()));
        let check = verify_at(&market.pool, &off, Some(&clock)).await.unwrap();
        assert!(check.problems.iter().any(|p| p.contains("not 4000000")), "{check:?}");
    }

    // The binary draws the statement with the chain's clock when given an RPC endpoint, and checks the window with
    // it; without one it does not take "uncollectable" on trust.
    let deployment = common::save_deployment(&market.deployment, dir.path());
    let cli = |args: &[&str], rpc: bool| {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_subsettle-keeper"));
        command.args(args).env("DATABASE_URL", market.db.url()).env("SUBSETTLE_DEPLOYMENT", &deployment).env("RUST_LOG", "warn");
        command.env_remove("SUBSETTLE_RPC_URL");
        if rpc {
            command.args(["--rpc-url", &market.chain.endpoint()]);
        }
        command.output().unwrap()
    };
    let drawn_by_cli = cli(&["statement", "--subscriber", &w0.to_string(), "--format", "json"], true);
    assert!(drawn_by_cli.status.success(), "{}", String::from_utf8_lossy(&drawn_by_cli.stderr));
    let json: Value = serde_json::from_slice(&drawn_by_cli.stdout).unwrap();
    let period = json["periods"].as_array().unwrap().iter().find(|p| p["subscription_id"] == s0 && p["period_index"] == 1).unwrap();
    assert_eq!((&period["paid"], &period["uncollected"], &period["uncollectable"]), (&json!("79000000"), &json!("4000000"), &json!(true)));
    let file = dir.path().join("subscriber-0.json");
    std::fs::write(&file, &drawn_by_cli.stdout).unwrap();
    let checked = cli(&["verify-statement", file.to_str().unwrap()], true);
    assert!(checked.status.success(), "{}{}", String::from_utf8_lossy(&checked.stdout), String::from_utf8_lossy(&checked.stderr));
    let unchecked = cli(&["verify-statement", file.to_str().unwrap()], false);
    assert!(!unchecked.status.success() && String::from_utf8_lossy(&unchecked.stdout).contains("needs the chain's clock"));
    let table = cli(&["statement", "--subscriber", &w0.to_string()], true);
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(table.contains("period 1: fee 79.000000 + overage 4.000000, paid 79.000000") && table.contains("uncollectable: 4.000000 of the overage (charge window closed"), "{table}");

    // `serve` draws it over HTTP with the chain's clock read at the indexer's cursor, as the binary does.
    let over_http = |json: &Value| {
        let period = json["periods"].as_array().unwrap().iter().find(|p| p["subscription_id"] == s0 && p["period_index"] == 1).unwrap().clone();
        (period["paid"].clone(), period["uncollected"].clone(), period["uncollectable"].clone())
    };
    let statement_over_http = || async {
        let response = market.http.get(format!("{}/v1/statements/subscriber/{w0}", market.url)).bearer_auth(market::TOKEN).send().await.unwrap();
        (response.status().as_u16(), response.json::<Value>().await.unwrap())
    };
    let (status, without_chain) = statement_over_http().await;
    assert_eq!(status, 200, "{without_chain}");
    assert_eq!(over_http(&without_chain), (json!("79000000"), json!("4000000"), json!(false)), "not judged without the chain's clock");
    let _ = market.keeper.chain.set((market.chain.provider(0), market.deployment.clone()));
    let (status, with_chain) = statement_over_http().await;
    assert_eq!(status, 200, "{with_chain}");
    assert_eq!(over_http(&with_chain), (json!("79000000"), json!("4000000"), json!(true)), "{with_chain}");

    // Creators: the engine gathers only closes the chain collected in full, so no epoch takes an uncollectable
    // close now either, and no creator statement has a line of one (their fees stay in unallocated()).
    let scope = EpochScope::Collected { charge_window: 2 * 86_400 };
    let epoch = close_epoch(&market.pool, market.deployment.chain_id, market.now(), scope, SettleRoom::UNLIMITED).await.unwrap();
    assert_eq!(epoch, None);
    let recipients: Vec<Vec<u8>> = sqlx::query_scalar("SELECT DISTINCT recipient FROM chain.credits").fetch_all(&market.pool).await.unwrap();
    assert!(!recipients.is_empty());
    for recipient in recipients {
        let statement = creator_statement(&market.pool, market.deployment.chain_id, 6, Address::from_slice(&recipient), Scope::default()).await.unwrap();
        assert!(!statement.lines.is_empty());
        let uncollectable = |l: &&StatementLine| [(s0, 1), (s1, 0)].contains(&(l.subscription_id, l.period_index));
        assert!(!statement.lines.iter().any(|l| uncollectable(&l)), "{}", to_csv(&statement));
        assert!(verify_at(&market.pool, &statement, Some(&clock)).await.unwrap().ok());
    }
}

/// The chain's clock at the indexer's cursor, as reconcile reads it.
async fn clock(market: &Market) -> ChargeClock {
    ChargeClock::at_cursor(&market.pool, &market.operator(), &market.deployment).await.unwrap()
}

/// A subscriber's statement judged at that clock.
async fn drawn(market: &Market, wallet: Address) -> Statement {
    let clock = clock(market).await;
    subscriber_statement_at(&market.pool, market.deployment.chain_id, 6, wallet, Scope::default(), Some(&clock)).await.unwrap()
}
