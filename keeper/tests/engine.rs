//! The settlement engine's step against a real chain and indexer: a period closes, its overage is charged with
//! the usage root, the epoch is settled once the charge is indexed, recipients above the threshold are paid, due
//! subscriptions are renewed, and further steps plan nothing more. Only one engine holds the sender lease.

#[path = "../../indexer/tests/common/mod.rs"]
mod common;
#[path = "common/market.rs"]
mod market;

use market::{CUTOFF, Market};
use serde_json::json;
use subsettle_keeper::settlement::engine::Lease;

async fn count(market: &Market, sql: &str) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned())).fetch_one(&market.pool).await.unwrap()
}

#[tokio::test]
async fn a_period_is_charged_settled_paid_out_and_renewed_exactly_once() {
    let market = Market::start(2, 50_000_000).await;
    let dir = tempfile::tempdir().unwrap();
    let engine = market.engine(dir.path());
    let now = market.now();
    // 600 images at 0.04 = 24 USDC: 4 USDC over the 20 USDC value allowance.
    let (status, _) = market.usage(&json!([market.event("x-1", 0, "image-gen", "images", "600", now)])).await;
    assert_eq!(status, 200);

    let report = engine.step(false).await.unwrap();
    assert!(report.actions.is_empty(), "nothing is due in the first period: {report:?}");
    // The next work is the renewals at the end of the first period (30 days after subscribing).
    let next = engine.next_due().await.unwrap().expect("work falls due");
    assert!((next - report.now - 30 * 86_400).abs() < 120, "next due {next}, now {}", report.now);

    market.advance(30 * 86_400 + CUTOFF as u64 + 60).await;
    let dry = engine.step(true).await.unwrap();
    assert_eq!(count(&market, "SELECT COUNT(*) FROM keeper.outbox").await, 0, "a dry run writes nothing");
    assert!(dry.actions.iter().any(|k| k.starts_with("renew:")), "{dry:?}");

    // Step 1: close both periods, renew both subscriptions, charge the overage. The epoch waits for the charge.
    let first = engine.step(false).await.unwrap();
    assert_eq!((first.periods_closed, first.epoch), (2, None), "{first:?}");
    let kinds: Vec<&str> = first.actions.iter().map(|k| k.split(':').next().unwrap()).collect();
    assert_eq!(kinds, ["renew", "charge"], "the settlement waits for the charge: {first:?}");
    assert_eq!(first.outbox.sent, 2);
    // Confirmed but not indexed yet: still on its way, so still no epoch.
    market.wait_until_sent_is_mined().await;
    let waiting = engine.step(false).await.unwrap();
    assert_eq!((waiting.outbox.confirmed, waiting.epoch), (2, None), "{waiting:?}");

    // Step 2: the charge is indexed, so the epoch gathers both closes and settles.
    market.sync().await;
    let second = engine.step(false).await.unwrap();
    assert_eq!(second.epoch, Some(1), "{second:?}");
    assert_eq!(second.actions, ["settle:1"]);

    // Step 3: credits are indexed; recipients above 1 USDC are paid.
    market.sync().await;
    let third = engine.step(false).await.unwrap();
    assert_eq!(third.outbox.confirmed, 1);
    assert!(third.actions.len() == 1 && third.actions[0].starts_with("claim:"), "{third:?}");
    market.sync().await;
    let fourth = engine.step(false).await.unwrap();
    assert_eq!(fourth.outbox.confirmed, 1);
    assert!(fourth.actions.is_empty(), "nothing more to do: {fourth:?}");

    assert_eq!(count(&market, "SELECT COUNT(*) FROM chain.renewals").await, 2);
    let charged: String = sqlx::query_scalar("SELECT SUM(amount)::TEXT FROM chain.usage_charges").fetch_one(&market.pool).await.unwrap();
    assert_eq!(charged, "4000000");
    let settled: String = sqlx::query_scalar("SELECT total::TEXT FROM chain.settlements WHERE settlement_id = 1").fetch_one(&market.pool).await.unwrap();
    assert_eq!(settled, (79_000_000u64 * 2 + 4_000_000).to_string());
    let paid: String =
        sqlx::query_scalar("SELECT SUM(amount)::TEXT FROM chain.claims WHERE succeeded").fetch_one(&market.pool).await.unwrap();
    assert_eq!(paid, settled, "every credit above the threshold was paid out");
    let states: Vec<String> = sqlx::query_scalar("SELECT DISTINCT state FROM keeper.outbox").fetch_all(&market.pool).await.unwrap();
    assert_eq!(states, ["confirmed"]);
}

#[tokio::test]
async fn only_one_keeper_holds_the_sender_lease() {
    let market = Market::start(1, 0).await;
    let first = Lease::try_acquire(&market.pool).await.unwrap().expect("the lease is free");
    assert!(Lease::try_acquire(&market.pool).await.unwrap().is_none(), "a second keeper waits");
    assert!(Lease::holder(&market.pool).await.unwrap().is_some());
    drop(first);
    let mut taken = None;
    for _ in 0..50 {
        taken = Lease::try_acquire(&market.pool).await.unwrap();
        if taken.is_some() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(taken.is_some(), "the lease is taken over once the first keeper is gone");
}

#[tokio::test]
async fn a_month_with_a_past_due_recovery_a_lapse_and_caps_ends_with_the_chain_equal_to_the_statements() {
    use alloy::primitives::U256;
    use subsettle_abi::{Subscriptions, usdc::FiatTokenV2_2};
    use subsettle_keeper::metering::statement::{Scope, creator_statement, subscriber_statement, verify};

    let market = Market::start(4, 5_000_000).await;
    let dir = tempfile::tempdir().unwrap();
    let engine = market.engine(dir.path());
    // Subscriber 1 raises its cap to 50 USDC; subscriber 0 keeps 5 USDC.
    let provider = market.chain.provider(2);
    confirm!(Subscriptions::new(market.deployment.subscriptions, &provider).setOverageCap(U256::from(market.subscribers[1].1), U256::from(50_000_000u64)));
    let now = market.now();
    // Subscriber 0: 1,500 images = 60 USDC, 40 over the allowance, capped at 5. Subscriber 1: 600 images, 4 over.
    let (status, _) = market
        .usage(&json!([
            market.event("m-0", 0, "image-gen", "images", "1500", now),
            market.event("m-1", 1, "image-gen", "images", "600", now),
        ]))
        .await;
    assert_eq!(status, 200);
    // Subscribers 2 and 3 empty their wallets before the renewal.
    let sink = market.chain.address(9);
    for i in [2usize, 3] {
        let provider = market.chain.provider(i + 1);
        let token = FiatTokenV2_2::new(market.deployment.token, &provider);
        let balance = token.balanceOf(market.subscribers[i].0).call().await.unwrap();
        confirm!(token.transfer(sink, balance));
    }

    market.advance(30 * 86_400 + CUTOFF as u64 + 60).await;
    let step = engine.step(false).await.unwrap();
    assert_eq!((step.periods_closed, step.epoch), (4, None), "the epoch waits for the two charges: {step:?}");
    market.sync().await;
    let status_of = |i: usize| {
        let pool = market.pool.clone();
        let id = market.subscribers[i].1;
        async move {
            sqlx::query_scalar::<_, String>("SELECT status FROM chain.subscriptions WHERE subscription_id = $1::NUMERIC")
                .bind(id.to_string())
                .fetch_one(&pool)
                .await
                .unwrap()
        }
    };
    assert_eq!((status_of(2).await, status_of(3).await), ("past_due".to_owned(), "past_due".to_owned()));
    // Subscriber 3 is still served in its grace period, and uses it.
    let (status, _) = market.usage(&json!([market.event("m-3", 3, "image-gen", "images", "50", market.now())])).await;
    assert_eq!(status, 200, "served while past due, inside the grace period");

    // Subscriber 2 tops up inside its grace; the next retry slot renews it. Subscriber 3 never does.
    let operator = market.operator();
    confirm!(FiatTokenV2_2::new(market.deployment.token, &operator).mint(market.subscribers[2].0, U256::from(200_000_000u64)));
    for _ in 0..3 {
        engine.step(false).await.unwrap(); // settles the epoch once the charges are indexed, then pays out
        market.advance(3_700).await;
    }
    assert_eq!(status_of(2).await, "active");
    market.advance(3 * 86_400).await;
    engine.step(false).await.unwrap();
    market.sync().await;
    engine.step(false).await.unwrap();
    market.sync().await;
    assert_eq!(status_of(3).await, "lapsed");
    assert_eq!(status_of(0).await, "active");
    // Its grace-period usage can never be charged: the unpaid period is closed with nothing to collect, and no
    // usage is left open.
    let lapsed = market.subscribers[3].1 as i64;
    let write_off: (i64, String, String, i32) = sqlx::query_as(
        "SELECT c.period_index, c.fee::TEXT, c.collected::TEXT, (SELECT SUM(l.event_count)::INT FROM keeper.usage_lines l WHERE l.close_id = c.close_id)
         FROM keeper.period_closes c WHERE c.subscription_id = $1 AND c.period_index = 1",
    )
    .bind(lapsed)
    .fetch_one(&market.pool)
    .await
    .unwrap();
    assert_eq!(write_off, (1, "0".to_owned(), "0".to_owned(), 1));
    let open: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM keeper.usage_events WHERE close_id IS NULL AND subscription_id = $1")
        .bind(lapsed)
        .fetch_one(&market.pool)
        .await
        .unwrap();
    assert_eq!(open, 0);

    // Overage charged up to the cap and never beyond it.
    let charged: Vec<(String, String)> =
        sqlx::query_as("SELECT subscription_id::TEXT, SUM(amount)::TEXT FROM chain.usage_charges GROUP BY 1 ORDER BY 1")
            .fetch_all(&market.pool)
            .await
            .unwrap();
    assert_eq!(charged, vec![(market.subscribers[0].1.to_string(), "5000000".into()), (market.subscribers[1].1.to_string(), "4000000".into())]);
    // Every subscriber's and every recipient's statement equals the chain, to the unit.
    let chain_id = market.deployment.chain_id;
    for (wallet, _) in &market.subscribers {
        let statement = subscriber_statement(&market.pool, chain_id, 6, *wallet, Scope::default()).await.unwrap();
        let check = verify(&market.pool, &statement).await.unwrap();
        assert!(check.ok(), "{wallet}: {:?}", check.problems);
    }
    for account in [5usize, 6, 7, 8, 9] {
        let address = market.chain.address(account);
        let statement = creator_statement(&market.pool, chain_id, 6, address, Scope::default()).await.unwrap();
        let check = verify(&market.pool, &statement).await.unwrap();
        assert!(check.ok() && check.unsettled_epochs.is_empty(), "{address}: {:?}", check.problems);
        let claimable: Option<String> =
            sqlx::query_scalar("SELECT claimable::TEXT FROM chain.recipient_balances WHERE recipient = $1").bind(address.to_vec()).fetch_optional(&market.pool).await.unwrap();
        let claimed: Option<String> = sqlx::query_scalar("SELECT SUM(amount)::TEXT FROM chain.claims WHERE recipient = $1 AND succeeded")
            .bind(address.to_vec())
            .fetch_one(&market.pool)
            .await
            .unwrap();
        let credited = statement.total.parse::<u128>().unwrap();
        let on_chain = claimable.map_or(0, |c| c.parse::<u128>().unwrap()) + claimed.map_or(0, |c| c.parse::<u128>().unwrap());
        assert_eq!(on_chain, credited, "{address}: claimable plus claimed equals the statement");
    }
}

#[tokio::test]
async fn a_charge_that_fails_holds_back_only_its_own_close_and_joins_a_later_epoch_once_collected() {
    use alloy::primitives::U256;
    use subsettle_abi::usdc::FiatTokenV2_2;

    let market = Market::start(2, 50_000_000).await;
    let dir = tempfile::tempdir().unwrap();
    let engine = market.engine(dir.path());
    let now = market.now();
    // Both use 600 images: 4 USDC over the allowance each.
    let events = json!([market.event("f-0", 0, "image-gen", "images", "600", now), market.event("f-1", 1, "image-gen", "images", "600", now)]);
    assert_eq!(market.usage(&events).await.0, 200);
    // Subscriber 1 empties its wallet: its renewal and its overage charge will fail.
    let provider = market.chain.provider(2);
    let token = FiatTokenV2_2::new(market.deployment.token, &provider);
    let balance = token.balanceOf(market.subscribers[1].0).call().await.unwrap();
    confirm!(token.transfer(market.chain.address(9), balance));

    market.advance(30 * 86_400 + CUTOFF as u64 + 60).await;
    let first = engine.step(false).await.unwrap();
    assert_eq!((first.periods_closed, first.epoch), (2, None), "{first:?}");
    market.sync().await;
    let failures: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM chain.usage_charge_failures").fetch_one(&market.pool).await.unwrap();
    assert_eq!(failures, 1, "subscriber 1's charge failed on chain");

    // The epoch gathers subscriber 0's close only, and settles it: one empty wallet does not hold back the rest.
    let second = engine.step(false).await.unwrap();
    assert_eq!(second.epoch, Some(1), "{second:?}");
    assert_eq!(second.actions, ["settle:1"]);
    market.sync().await;
    let settled = |id: i64| {
        let pool = market.pool.clone();
        async move {
            sqlx::query_scalar::<_, String>("SELECT total::TEXT FROM chain.settlements WHERE settlement_id = $1::NUMERIC")
                .bind(id.to_string())
                .fetch_optional(&pool)
                .await
                .unwrap()
        }
    };
    assert_eq!(settled(1).await.as_deref(), Some("83000000"), "79 USDC fee + 4 USDC overage of subscriber 0");
    let waiting: Vec<i64> = sqlx::query_scalar(
        "SELECT c.subscription_id FROM keeper.period_closes c WHERE NOT EXISTS (SELECT 1 FROM keeper.epoch_closes e WHERE e.close_id = c.close_id)",
    )
    .fetch_all(&market.pool)
    .await
    .unwrap();
    assert_eq!(waiting, [market.subscribers[1].1 as i64], "subscriber 1's close waits for its money");

    // Subscriber 1 tops up; the next retry slot collects the charge (and renews), and the next epoch settles it.
    let operator = market.operator();
    confirm!(FiatTokenV2_2::new(market.deployment.token, &operator).mint(market.subscribers[1].0, U256::from(200_000_000u64)));
    market.advance(3_700).await;
    engine.step(false).await.unwrap();
    market.sync().await;
    market.advance(86_400).await;
    let mut epoch = None;
    for _ in 0..4 {
        let step = engine.step(false).await.unwrap();
        epoch = epoch.or(step.epoch);
        market.sync().await;
    }
    assert_eq!(epoch, Some(2));
    assert_eq!(settled(2).await.as_deref(), Some("83000000"), "subscriber 1's fee and overage, once collected");
}

#[tokio::test]
async fn an_epoch_too_large_for_one_settlement_is_cut_at_a_close_and_the_rest_makes_the_next_epoch() {
    use subsettle_keeper::{
        metering::catalog,
        metering::close::close_due_periods,
        settlement::epoch::{EpochScope, SettleRoom, close_epoch},
    };
    let market = Market::start(2, 50_000_000).await;
    let now = market.now();
    // Each subscriber uses a model of its own, so each close credits one split of three recipients.
    let events = json!([market.event("c-0", 0, "llm-large", "input_tokens", "1000", now), market.event("c-1", 1, "image-gen", "images", "10", now)]);
    assert_eq!(market.usage(&events).await.0, 200);
    market.advance(30 * 86_400 + CUTOFF as u64 + 60).await;
    let snapshot = catalog::load(&market.pool).await.unwrap();
    assert_eq!(close_due_periods(&market.pool, &snapshot, &market.close_options(), market.now()).await.unwrap().periods, 2);

    // Room for one three-recipient split (5 + 3 x 20 = 65), not two.
    let room = SettleRoom { gas: 100, per_split: 5, per_credit: 20 };
    let chain = market.deployment.chain_id;
    let first = close_epoch(&market.pool, chain, market.now(), EpochScope::AllClosed, room).await.unwrap().expect("an epoch");
    assert_eq!((first.epoch_id, first.closes, first.more, first.splits.len()), (1, 1, true, 1), "{first:?}");
    // Epochs are consecutive and never empty: the rest waits for the clock to move, then makes the next epoch.
    assert_eq!(close_epoch(&market.pool, chain, market.now(), EpochScope::AllClosed, room).await.unwrap(), None);
    market.advance(1).await;
    let second = close_epoch(&market.pool, chain, market.now(), EpochScope::AllClosed, room).await.unwrap().expect("the rest");
    assert_eq!((second.epoch_id, second.closes, second.more, second.splits.len()), (2, 1, false, 1), "{second:?}");
    assert_ne!(first.splits.keys().next(), second.splits.keys().next());
    assert_eq!(first.total + second.total, 2 * 79_000_000, "every close in exactly one epoch");
    assert_eq!(close_epoch(&market.pool, chain, market.now(), EpochScope::AllClosed, room).await.unwrap(), None);
}

/// Dies at a chosen point of the outbox: signs the next planned action and stores it, then broadcasts it or not,
/// and returns without matching any receipt (the process is gone).
async fn sign_and_die(market: &Market, dir: &std::path::Path, broadcast: bool) -> String {
    use alloy::providers::Provider;
    let sender = market.sender(dir);
    let mut report = subsettle_keeper::settlement::outbox::OutboxReport::default();
    let raw = sender.sign_next(&market.pool, &mut report).await.unwrap().expect("a planned action");
    if broadcast {
        let pending = market.chain.provider(0).send_raw_transaction(&raw).await.unwrap();
        common::receipt(&market.chain.provider(0), *pending.tx_hash()).await;
    }
    sqlx::query_scalar("SELECT action_key FROM keeper.outbox WHERE state = 'sent' ORDER BY nonce DESC LIMIT 1").fetch_one(&market.pool).await.unwrap()
}

#[tokio::test]
async fn a_crash_before_or_after_broadcasting_a_settlement_or_a_payout_ends_in_one_of_each() {
    use subsettle_keeper::{
        metering::catalog,
        metering::close::close_due_periods,
        settlement::epoch::{EpochScope, SettleRoom, close_epoch},
        settlement::outbox::plan,
        settlement::plan::{SettlementPolicy, plan_payouts, plan_settlements},
    };
    for broadcast in [false, true] {
        let market = Market::start(1, 50_000_000).await;
        let dir = tempfile::tempdir().unwrap();
        subsettle_keeper::store::migrate(&market.pool).await.unwrap();
        market.advance(30 * 86_400 + CUTOFF as u64 + 60).await;
        let (chain, escrow) = (market.deployment.chain_id, market.deployment.escrow);
        let snapshot = catalog::load(&market.pool).await.unwrap();
        close_due_periods(&market.pool, &snapshot, &market.close_options(), market.now()).await.unwrap();
        close_epoch(&market.pool, chain, market.now(), EpochScope::AllClosed, SettleRoom::UNLIMITED).await.unwrap().expect("an epoch");

        // The settlement is signed and stored, then the process dies (before or after broadcasting it).
        let policy = SettlementPolicy { batch: 10, retry_interval: 3_600, charge_window: 2 * 86_400, payout_threshold: 1_000_000, charge_threshold: None };
        plan(&market.pool, &plan_settlements(&market.pool, chain, escrow, policy, market.now()).await.unwrap(), market.now()).await.unwrap();
        assert_eq!(sign_and_die(&market, dir.path(), broadcast).await, "settle:1");
        // A new keeper takes over: it settles that one first, plans nothing twice, and pays out.
        let engine = market.engine(dir.path());
        engine.step(false).await.unwrap();
        market.sync().await;
        let settlements: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM chain.settlements").fetch_one(&market.pool).await.unwrap();
        assert_eq!(settlements, 1, "broadcast before the crash: {broadcast}");

        // Now the payout dies the same way, planned by hand before the engine gets to it.
        let open: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM keeper.outbox WHERE kind = 'claim'").fetch_one(&market.pool).await.unwrap();
        assert_eq!(open, 0, "no payout planned before the credits were indexed");
        plan(&market.pool, &plan_payouts(&market.pool, chain, escrow, policy, market.now()).await.unwrap(), market.now()).await.unwrap();
        assert!(sign_and_die(&market, dir.path(), broadcast).await.starts_with("claim:"));
        for _ in 0..3 {
            engine.step(false).await.unwrap();
            market.sync().await;
        }
        let (claims, failed): (i64, i64) =
            sqlx::query_as("SELECT COUNT(*) FILTER (WHERE succeeded), COUNT(*) FILTER (WHERE NOT succeeded) FROM chain.claims")
                .fetch_one(&market.pool)
                .await
                .unwrap();
        let recipients: i64 = sqlx::query_scalar("SELECT COUNT(DISTINCT recipient) FROM chain.credits").fetch_one(&market.pool).await.unwrap();
        assert_eq!((claims, failed), (recipients, 0), "each recipient paid once (broadcast before the crash: {broadcast})");
        let left: Option<String> = sqlx::query_scalar("SELECT SUM(claimable)::TEXT FROM chain.recipient_balances").fetch_one(&market.pool).await.unwrap();
        assert_eq!(left.as_deref(), Some("0"));
        let open: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM keeper.outbox WHERE state NOT IN ('confirmed')").fetch_one(&market.pool).await.unwrap();
        assert_eq!(open, 0, "every action confirmed, none failed");
    }
}

#[tokio::test]
async fn threshold_charges_collect_overage_mid_period_and_the_close_posts_the_final_root() {
    use subsettle_keeper::{operator::reconcile::{reconcile, to_table}, metering::statement::{Scope, subscriber_statement, verify}};
    let market = Market::start(1, 50_000_000).await;
    let dir = tempfile::tempdir().unwrap();
    let mut engine = market.engine(dir.path());
    engine.settlement.charge_threshold = Some(3_000_000);
    let charges = |pool: sqlx::PgPool| async move {
        sqlx::query_as::<_, (String, Vec<u8>)>("SELECT charged_in_period::TEXT, usage_root FROM chain.usage_charges ORDER BY block_number, log_index")
            .fetch_all(&pool)
            .await
            .unwrap()
    };

    // 600 images = 24 USDC, 4 over the 20 USDC allowance: past the first 3 USDC threshold.
    assert_eq!(market.usage(&json!([market.event("t-0", 0, "image-gen", "images", "600", market.now())])).await.0, 200);
    let step = engine.step(false).await.unwrap();
    assert!(step.actions.iter().any(|k| k.starts_with("charge-threshold:")), "{step:?}");
    market.sync().await;
    let after_first = charges(market.pool.clone()).await;
    assert_eq!(after_first.len(), 1);
    assert_eq!(after_first[0].0, "2999999", "one unit short of the multiple crossed");
    let committed: Vec<u8> = sqlx::query_scalar("SELECT usage_root FROM keeper.threshold_charges WHERE cumulative = 2999999")
        .fetch_one(&market.pool)
        .await
        .unwrap();
    assert_eq!(after_first[0].1, committed, "the interim root is the one the keeper recorded with its lines");
    assert!(engine.step(false).await.unwrap().actions.is_empty(), "evaluated once per retry slot");

    // 200 more images (8 USDC): 12 over, past the fourth multiple, charged in the next slot.
    assert_eq!(market.usage(&json!([market.event("t-1", 0, "image-gen", "images", "200", market.now())])).await.0, 200);
    market.advance(3_700).await;
    engine.step(false).await.unwrap();
    market.sync().await;
    assert_eq!(charges(market.pool.clone()).await.last().unwrap().0, "11999999");

    // The period ends: the close charges the last unit with the final root, then the epoch settles.
    market.advance(30 * 86_400 + CUTOFF as u64).await;
    for _ in 0..4 {
        engine.step(false).await.unwrap();
        market.sync().await;
    }
    let all = charges(market.pool.clone()).await;
    let close_root: Vec<u8> = sqlx::query_scalar("SELECT usage_root FROM keeper.period_closes WHERE period_index = 0").fetch_one(&market.pool).await.unwrap();
    assert_eq!(all.len(), 3, "two threshold charges and the close's: {all:?}");
    assert_eq!((all[2].0.as_str(), &all[2].1), ("12000000", &close_root), "the last charge carries the close's root");
    let settled: String = sqlx::query_scalar("SELECT total::TEXT FROM chain.settlements").fetch_one(&market.pool).await.unwrap();
    assert_eq!(settled, "91000000", "79 USDC fee + 12 USDC overage");

    let statement = subscriber_statement(&market.pool, market.deployment.chain_id, 6, market.subscribers[0].0, Scope::default()).await.unwrap();
    let check = verify(&market.pool, &statement).await.unwrap();
    assert!(check.ok(), "{:?}", check.problems);
    // The statement shows every charge: two mid-period ones with their own roots, then the close's.
    let listed: Vec<(&str, bool)> = statement.periods[0].charges.iter().map(|c| (c.charged_in_period.as_str(), c.threshold)).collect();
    assert_eq!(listed, [("2999999", true), ("11999999", true), ("12000000", false)]);
    // A threshold charge whose root the keeper has no record of is caught.
    sqlx::query("UPDATE keeper.threshold_charges SET usage_root = $1 WHERE cumulative = 2999999").bind(vec![9u8; 32]).execute(&market.pool).await.unwrap();
    let check = verify(&market.pool, &statement).await.unwrap();
    assert!(check.problems.iter().any(|p| p.contains("no record")), "{:?}", check.problems);
    sqlx::query("UPDATE keeper.threshold_charges SET usage_root = $1 WHERE cumulative = 2999999").bind(committed.clone()).execute(&market.pool).await.unwrap();
    let report = reconcile(&market.pool, &market.operator(), &market.deployment, 6).await.unwrap();
    assert!(report.differences.is_empty(), "{}", to_table(&report));
}

#[tokio::test]
async fn a_database_that_also_indexes_another_deployment_on_the_chain_is_refused() {
    use subsettle_keeper::store::check_one_deployment;
    let market = Market::start(1, 0).await;
    check_one_deployment(&market.pool, &market.deployment).await.expect("one deployment");
    sqlx::query(
        "INSERT INTO chain.deployments (chain_id, subscriptions, escrow, start_block) SELECT chain_id, $1, escrow, 0 FROM chain.deployments",
    )
    .bind(vec![0x11u8; 20])
    .execute(&market.pool)
    .await
    .unwrap();
    let refused = check_one_deployment(&market.pool, &market.deployment).await.unwrap_err().to_string();
    assert!(refused.contains("0x1111111111111111111111111111111111111111") && refused.contains("one deployment per database"), "{refused}");
}

#[tokio::test]
async fn a_settlement_lists_its_splits_in_numeric_order() {
    use alloy::{primitives::U256, sol_types::SolCall};
    use subsettle_abi::SplitEscrow;
    let market = Market::start(1, 0).await;
    subsettle_keeper::store::migrate(&market.pool).await.unwrap();
    let chain = market.deployment.chain_id as i64;
    sqlx::query("INSERT INTO keeper.epochs (epoch_id, chain_id, epoch_start, closed_at, usage_root, total) VALUES (5, $1, 0, 1, $2, 6)")
        .bind(chain)
        .bind(vec![7u8; 32])
        .execute(&market.pool)
        .await
        .unwrap();
    sqlx::query("INSERT INTO keeper.epoch_splits (epoch_id, split_id, amount) VALUES (5, 10, 1), (5, 2, 2), (5, 9, 3)").execute(&market.pool).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let policy = market.engine(dir.path()).settlement;
    let actions = subsettle_keeper::settlement::plan::plan_settlements(&market.pool, market.deployment.chain_id, market.deployment.escrow, policy, market.now())
        .await
        .unwrap();
    assert_eq!(actions.len(), 1);
    let call = SplitEscrow::settleCall::abi_decode(&actions[0].calldata).unwrap();
    assert_eq!(call.splitIds, [2u64, 9, 10].map(U256::from), "as numbers, not as text (\"10\" < \"2\")");
    assert_eq!(call.amounts, [2u64, 3, 1].map(U256::from), "each amount stays with its split");
}

#[tokio::test]
async fn a_pause_longer_than_the_grace_period_and_the_charge_window_lapses_nobody_and_loses_no_charge() {
    use alloy::primitives::U256;
    use subsettle_abi::Subscriptions;
    let market = Market::start(1, 50_000_000).await;
    let dir = tempfile::tempdir().unwrap();
    let engine = market.engine(dir.path());
    // 600 images at 0.04 = 24 USDC: 4 USDC over the 20 USDC value allowance.
    let (status, _) = market.usage(&json!([market.event("p-1", 0, "image-gen", "images", "600", market.now())])).await;
    assert_eq!(status, 200);

    // The period ends and the operator pauses charging before the keeper acts; the pause outlasts both the grace
    // period (3 days) and the charge window (2 days).
    market.advance(30 * 86_400 + CUTOFF as u64 + 60).await;
    let subs = Subscriptions::new(market.deployment.subscriptions, market.operator());
    confirm!(subs.pause());
    market.advance(6 * 86_400).await;
    confirm!(subs.unpause());
    market.sync().await;

    // Paused time counts against neither: the keeper renews (the contract does not lapse the subscription) and
    // charges the ended period's overage, which it still considers inside its window.
    let first = engine.step(false).await.unwrap();
    let kinds: Vec<&str> = first.actions.iter().map(|k| k.split(':').next().unwrap()).collect();
    assert_eq!(kinds, ["renew", "charge"], "{first:?}");
    market.sync().await;
    let id = U256::from(market.subscribers[0].1);
    assert_eq!(subs.subscription(id).call().await.unwrap().periodIndex.to::<u64>(), 1, "renewed, not lapsed");
    assert_eq!(count(&market, "SELECT COUNT(*) FROM chain.subscription_ends").await, 0, "no lapse");
    let charged: String = sqlx::query_scalar("SELECT SUM(amount)::TEXT FROM chain.usage_charges").fetch_one(&market.pool).await.unwrap();
    assert_eq!(charged, "4000000", "the overage of the period that ended before the pause");
    // And the epoch settles it.
    let second = engine.step(false).await.unwrap();
    assert_eq!(second.epoch, Some(1), "{second:?}");
}
