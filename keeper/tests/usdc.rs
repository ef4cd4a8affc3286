//! The engine on Circle's real USDC (FiatTokenV2_2 behind its proxy, deployed as Circle does): a subscriber the
//! token blacklists fails alone inside the `renew` and `chargeUsage` batches and the keeper names the reason and
//! the token's explanation, then recovers by its retry policy once unblacklisted; a token paused by Circle's
//! pauser in the middle of a run makes the keeper hold every pull and payout without signing anything, and after
//! `unpause` the month completes exactly once and `reconcile` agrees; a blacklisted recipient and a blacklisted
//! payout address fail alone inside `claimMany`, stay claimable, and are paid once their payout address rotates;
//! one of our contracts blacklisted by Circle holds pulls (and payouts, for the escrow) without marking anyone past due;
//! pausing Subscriptions for the span of a long USDC pause keeps subscribers from lapsing (without it they lapse).

#[path = "../../indexer/tests/common/mod.rs"]
mod common;
#[path = "common/market.rs"]
mod market;

use alloy::{primitives::U256, providers::Provider};
use market::{CUTOFF, Market};
use serde_json::json;
use subsettle_abi::{SplitEscrow, usdc::FiatTokenV2_2};
use subsettle_keeper::settlement::{engine::StepReport, token::ItemFailure};

async fn count(market: &Market, sql: &str, id: u64) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned())).bind(id.to_string()).fetch_one(&market.pool).await.unwrap()
}

async fn status(market: &Market, id: u64) -> (String, i64) {
    sqlx::query_as("SELECT status, period_index::BIGINT FROM chain.subscriptions WHERE subscription_id = $1::NUMERIC")
        .bind(id.to_string())
        .fetch_one(&market.pool)
        .await
        .unwrap()
}

/// Steps `engine` (indexing after each) until it plans nothing and every action is confirmed, at most 8 times; the
/// reports of the steps taken.
async fn run_until_idle(market: &Market, engine: &subsettle_keeper::settlement::engine::Engine) -> Vec<StepReport> {
    let mut steps = Vec::new();
    for _ in 0..8 {
        let step = engine.step(false).await.unwrap();
        market.sync().await;
        let open: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM keeper.outbox WHERE state <> 'confirmed'").fetch_one(&market.pool).await.unwrap();
        let idle = step.actions.is_empty() && open == 0;
        steps.push(step);
        if idle {
            break;
        }
    }
    steps
}

fn failure_of<'a>(failures: &'a [ItemFailure], kind: &str, id: u64) -> Option<&'a ItemFailure> {
    failures.iter().find(|f| f.kind == kind && f.item == id.to_string())
}

#[tokio::test]
async fn a_blacklisted_subscriber_fails_alone_in_renew_and_charge_batches_is_explained_and_recovers_by_policy() {
    let market = Market::start(3, 50_000_000).await;
    let dir = tempfile::tempdir().unwrap();
    let engine = market.engine(dir.path());
    let now = market.now();
    // 600 images at 0.04 = 24 USDC each: 4 USDC over the allowance for every subscriber, so one charge batch of 3.
    let events: Vec<_> = (0..3).map(|i| market.event(&format!("b-{i}"), i, "image-gen", "images", "600", now)).collect();
    assert_eq!(market.usage(&json!(events)).await.0, 200);
    let usdc = FiatTokenV2_2::new(market.deployment.token, market.operator());
    let (listed, listed_id) = market.subscribers[1];
    confirm!(usdc.blacklist(listed));

    market.advance(30 * 86_400 + CUTOFF as u64 + 60).await;
    let mut failures = Vec::new();
    for _ in 0..6 {
        failures.extend(engine.step(false).await.unwrap().item_failures);
        market.sync().await;
        if failure_of(&failures, "renew", listed_id).is_some() && failure_of(&failures, "chargeUsage", listed_id).is_some() {
            break;
        }
    }
    for kind in ["renew", "chargeUsage"] {
        let failure = failure_of(&failures, kind, listed_id).unwrap_or_else(|| panic!("no {kind} failure reported: {failures:?}"));
        assert_eq!(failure.reason, "token_rejected", "{failure:?}");
        assert_eq!(failure.account, Some(listed));
        let explanation = failure.explanation.as_deref().unwrap_or_default();
        assert!(explanation.contains("blacklisted") && explanation.contains(&listed.to_string()), "{failure:?}");
    }
    assert_eq!(failures.len(), 2, "only the blacklisted subscriber's items fail: {failures:?}");
    for i in [0usize, 2] {
        let id = market.subscribers[i].1;
        assert_eq!(status(&market, id).await, ("active".to_owned(), 1), "subscriber {i} renewed");
        assert_eq!(count(&market, "SELECT COUNT(*) FROM chain.usage_charges WHERE subscription_id = $1::NUMERIC", id).await, 1);
    }
    assert_eq!(status(&market, listed_id).await, ("past_due".to_owned(), 0), "the period does not advance");
    assert_eq!(count(&market, "SELECT COUNT(*) FROM chain.usage_charges WHERE subscription_id = $1::NUMERIC", listed_id).await, 0);

    // Unblacklisted inside the grace period: the next retry slots renew and charge it, once each.
    // A fresh provider: the engine has sent from the same account since (nonces from its outbox).
    let usdc = FiatTokenV2_2::new(market.deployment.token, market.operator());
    confirm!(usdc.unBlacklist(listed));
    for _ in 0..4 {
        market.advance(3_700).await;
        engine.step(false).await.unwrap();
        market.sync().await;
    }
    assert_eq!(status(&market, listed_id).await, ("active".to_owned(), 1));
    assert_eq!(count(&market, "SELECT COUNT(*) FROM chain.renewals WHERE subscription_id = $1::NUMERIC", listed_id).await, 1);
    assert_eq!(count(&market, "SELECT COUNT(*) FROM chain.usage_charges WHERE subscription_id = $1::NUMERIC", listed_id).await, 1);
}

#[tokio::test]
async fn usdc_paused_mid_run_holds_every_pull_and_payout_unsigned_and_the_month_completes_once_after_unpause() {
    let market = Market::start(2, 50_000_000).await;
    let dir = tempfile::tempdir().unwrap();
    let engine = market.engine(dir.path());
    let now = market.now();
    assert_eq!(market.usage(&json!([market.event("p-1", 0, "image-gen", "images", "600", now)])).await.0, 200);
    let usdc = FiatTokenV2_2::new(market.deployment.token, market.operator());
    let keeper = market.chain.address(0);

    market.advance(30 * 86_400 + CUTOFF as u64 + 60).await;
    confirm!(usdc.pause());
    let nonce = market.operator().get_transaction_count(keeper).await.unwrap();
    for _ in 0..3 {
        let step = engine.step(false).await.unwrap();
        assert!(step.token.paused && !step.token.pulls_open() && !step.token.payouts_open(), "{step:?}");
        assert!(step.actions.iter().all(|key| key.starts_with("settle:")), "only settlements while paused: {step:?}");
        market.sync().await;
        market.advance(3_700).await;
    }
    assert_eq!(market.operator().get_transaction_count(keeper).await.unwrap(), nonce, "no nonce spent while paused");
    let signed: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM keeper.outbox WHERE state <> 'planned'").fetch_one(&market.pool).await.unwrap();
    assert_eq!(signed, 0, "nothing signed, nothing marked done");
    for (_, id) in &market.subscribers {
        assert_eq!(status(&market, *id).await, ("active".to_owned(), 0), "not marked past due by a paused token");
        assert_eq!(count(&market, "SELECT COUNT(*) FROM chain.renewal_failures WHERE subscription_id = $1::NUMERIC", *id).await, 0);
    }

    let usdc = FiatTokenV2_2::new(market.deployment.token, market.operator());
    confirm!(usdc.unpause());
    let mut failures = Vec::new();
    for step in run_until_idle(&market, &engine).await {
        assert!(step.token.pulls_open() && step.token.payouts_open(), "{step:?}");
        failures.extend(step.item_failures);
    }
    assert!(failures.is_empty(), "{failures:?}");
    for (_, id) in &market.subscribers {
        assert_eq!(status(&market, *id).await, ("active".to_owned(), 1));
        assert_eq!(count(&market, "SELECT COUNT(*) FROM chain.renewals WHERE subscription_id = $1::NUMERIC", *id).await, 1);
    }
    let id = market.subscribers[0].1;
    assert_eq!(count(&market, "SELECT COUNT(*) FROM chain.usage_charges WHERE subscription_id = $1::NUMERIC", id).await, 1);
    let claims: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM chain.claims WHERE succeeded").fetch_one(&market.pool).await.unwrap();
    assert!(claims > 0, "the month was paid out");
    let paid_twice: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM (SELECT recipient FROM chain.claims WHERE succeeded GROUP BY recipient HAVING COUNT(*) > 1) t")
        .fetch_one(&market.pool)
        .await
        .unwrap();
    assert_eq!(paid_twice, 0, "every recipient paid once");
    let pool = subsettle_keeper::store::connect_read_only(market.db.url(), 2).await.unwrap();
    let report = subsettle_keeper::operator::reconcile::reconcile(&pool, &market.operator(), &market.deployment, 6).await.unwrap();
    assert!(report.ok(), "{}", subsettle_keeper::operator::reconcile::to_table(&report));
}

#[tokio::test]
async fn a_blacklisted_recipient_and_payout_address_fail_alone_in_claim_many_stay_claimable_and_are_paid_after_rotation() {
    let market = Market::start(2, 50_000_000).await;
    let dir = tempfile::tempdir().unwrap();
    let engine = market.engine(dir.path());
    let now = market.now();
    assert_eq!(market.usage(&json!([market.event("c-1", 0, "image-gen", "images", "600", now)])).await.0, 200);
    let model = market::MODELS.iter().position(|(m, _)| *m == "image-gen").unwrap();
    let creator = market.chain.address(market::CREATORS[model]);
    let (host, platform) = (market.chain.address(market::HOST), market.chain.address(market::PLATFORM));
    let (listed_payout, clean_payout) = (market.chain.address(3), market.chain.address(4));
    let as_host = SplitEscrow::new(market.deployment.escrow, market.chain.provider(market::HOST));
    confirm!(as_host.setPayoutAddress(listed_payout));
    let usdc = FiatTokenV2_2::new(market.deployment.token, market.operator());
    confirm!(usdc.blacklist(creator));
    confirm!(usdc.blacklist(listed_payout));
    let usdc = FiatTokenV2_2::new(market.deployment.token, market.chain.provider(1));

    market.advance(30 * 86_400 + CUTOFF as u64 + 60).await;
    let mut failures = Vec::new();
    for _ in 0..8 {
        failures.extend(engine.step(false).await.unwrap().item_failures);
        market.sync().await;
        if failures.iter().filter(|f| f.kind == "claim").count() >= 2 {
            break;
        }
    }
    let claim_of = |who: alloy::primitives::Address| failures.iter().find(|f| f.kind == "claim" && f.item == who.to_string());
    let creator_failure = claim_of(creator).unwrap_or_else(|| panic!("no claim failure for the creator: {failures:?}"));
    assert_eq!((creator_failure.reason.as_str(), creator_failure.account), ("transfer_refused", Some(creator)));
    assert!(creator_failure.explanation.as_deref().unwrap_or_default().contains(&creator.to_string()), "{creator_failure:?}");
    let host_failure = claim_of(host).unwrap_or_else(|| panic!("no claim failure for the host: {failures:?}"));
    assert_eq!(host_failure.account, Some(listed_payout));
    assert!(host_failure.explanation.as_deref().unwrap_or_default().contains(&listed_payout.to_string()), "{host_failure:?}");

    let escrow = SplitEscrow::new(market.deployment.escrow, market.chain.provider(1));
    let owed_creator = escrow.claimableOf(creator).call().await.unwrap();
    let owed_host = escrow.claimableOf(host).call().await.unwrap();
    assert!(owed_creator > U256::ZERO && owed_host > U256::ZERO, "the refused balances stay claimable");
    assert!(usdc.balanceOf(platform).call().await.unwrap() > U256::ZERO, "the others are paid");
    assert_eq!(escrow.claimableOf(platform).call().await.unwrap(), U256::ZERO);

    // Both rotate their payout address; the next payout slots pay them, once.
    let as_creator = SplitEscrow::new(market.deployment.escrow, market.chain.provider(market::CREATORS[model]));
    let creator_payout = alloy::primitives::Address::repeat_byte(0x42);
    confirm!(as_creator.setPayoutAddress(creator_payout));
    let as_host = SplitEscrow::new(market.deployment.escrow, market.chain.provider(market::HOST));
    confirm!(as_host.setPayoutAddress(clean_payout));
    let before = (usdc.balanceOf(creator_payout).call().await.unwrap(), usdc.balanceOf(clean_payout).call().await.unwrap());
    for _ in 0..4 {
        market.advance(3_700).await;
        engine.step(false).await.unwrap();
        market.sync().await;
    }
    assert_eq!(escrow.claimableOf(creator).call().await.unwrap(), U256::ZERO);
    assert_eq!(escrow.claimableOf(host).call().await.unwrap(), U256::ZERO);
    assert_eq!(usdc.balanceOf(creator_payout).call().await.unwrap(), before.0 + owed_creator, "the creator's balance, exactly");
    assert_eq!(usdc.balanceOf(clean_payout).call().await.unwrap(), before.1 + owed_host, "the host's balance, exactly");
    assert_eq!(usdc.balanceOf(listed_payout).call().await.unwrap(), U256::ZERO);
}

#[tokio::test]
async fn our_contracts_blacklisted_by_circle_hold_pulls_and_payouts_unsigned_and_nobody_is_marked_past_due() {
    let market = Market::start(2, 50_000_000).await;
    let dir = tempfile::tempdir().unwrap();
    let engine = market.engine(dir.path());
    let now = market.now();
    assert_eq!(market.usage(&json!([market.event("o-1", 0, "image-gen", "images", "600", now)])).await.0, 200);
    let keeper = market.chain.address(0);
    let d = market.deployment.clone();
    market.advance(30 * 86_400 + CUTOFF as u64 + 60).await;

    // Subscriptions blacklisted: no pull can succeed (USDC refuses the caller), so none is signed.
    confirm!(FiatTokenV2_2::new(d.token, market.operator()).blacklist(d.subscriptions));
    let nonce = market.operator().get_transaction_count(keeper).await.unwrap();
    let step = engine.step(false).await.unwrap();
    assert!(step.token.subscriptions_blacklisted && !step.token.pulls_open() && step.token.payouts_open(), "{step:?}");
    assert!(step.actions.iter().all(|key| !key.starts_with("renew:") && !key.starts_with("charge:")), "{step:?}");
    // The escrow blacklisted too: no payout either.
    confirm!(FiatTokenV2_2::new(d.token, market.operator()).blacklist(d.escrow));
    let nonce_after_listing = nonce + 1;
    market.advance(3_700).await;
    let step = engine.step(false).await.unwrap();
    assert!(step.token.escrow_blacklisted && !step.token.payouts_open(), "{step:?}");
    assert!(step.actions.iter().all(|key| key.starts_with("settle:")), "{step:?}");
    assert_eq!(market.operator().get_transaction_count(keeper).await.unwrap(), nonce_after_listing, "no nonce spent");
    market.sync().await;
    for (_, id) in &market.subscribers {
        assert_eq!(status(&market, *id).await, ("active".to_owned(), 0), "nobody marked past due for Circle's action");
    }

    // Lifted: the month completes once, and the books agree.
    let usdc = FiatTokenV2_2::new(d.token, market.operator());
    confirm!(usdc.unBlacklist(d.subscriptions));
    confirm!(usdc.unBlacklist(d.escrow));
    run_until_idle(&market, &engine).await;
    for (_, id) in &market.subscribers {
        assert_eq!(status(&market, *id).await, ("active".to_owned(), 1));
        assert_eq!(count(&market, "SELECT COUNT(*) FROM chain.renewals WHERE subscription_id = $1::NUMERIC", *id).await, 1);
    }
    let pool = subsettle_keeper::store::connect_read_only(market.db.url(), 2).await.unwrap();
    let report = subsettle_keeper::operator::reconcile::reconcile(&pool, &market.operator(), &market.deployment, 6).await.unwrap();
    assert!(report.ok(), "{}", subsettle_keeper::operator::reconcile::to_table(&report));
}

/// Runs a month in which Circle pauses USDC from before the renewals until the grace period has run out, with or
/// without the operator pausing Subscriptions for the same span; returns every subscription's status and period
/// index once the engine has nothing left to do.
async fn through_a_long_usdc_pause(also_pause_subscriptions: bool) -> Vec<(String, i64)> {
    let market = Market::start(2, 50_000_000).await;
    let dir = tempfile::tempdir().unwrap();
    let engine = market.engine(dir.path());
    let d = market.deployment.clone();
    market.advance(30 * 86_400 - 3_600).await;
    confirm!(FiatTokenV2_2::new(d.token, market.operator()).pause());
    if also_pause_subscriptions {
        confirm!(subsettle_abi::Subscriptions::new(d.subscriptions, market.operator()).pause());
    }
    market.advance(common::GRACE + 2 * 86_400).await;
    engine.step(false).await.unwrap();
    market.sync().await;
    confirm!(FiatTokenV2_2::new(d.token, market.operator()).unpause());
    if also_pause_subscriptions {
        confirm!(subsettle_abi::Subscriptions::new(d.subscriptions, market.operator()).unpause());
    }
    for _ in 0..6 {
        let step = engine.step(false).await.unwrap();
        market.sync().await;
        if step.actions.is_empty() {
            break;
        }
    }
    let mut statuses = Vec::new();
    for (_, id) in &market.subscribers {
        statuses.push(status(&market, *id).await);
    }
    statuses
}

#[tokio::test]
async fn pausing_subscriptions_for_the_span_of_a_long_usdc_pause_keeps_every_subscriber_from_lapsing() {
    // The README's advice: Circle's pause does not stop our grace periods, our own pause does.
    let with_ours = through_a_long_usdc_pause(true).await;
    assert!(with_ours.iter().all(|s| *s == ("active".to_owned(), 1)), "renewed after both pauses: {with_ours:?}");
    let without = through_a_long_usdc_pause(false).await;
    assert!(without.iter().all(|(status, _)| status == "lapsed"), "without it the grace runs out: {without:?}");
}
