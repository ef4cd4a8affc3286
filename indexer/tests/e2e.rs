//! End to end: deploy, drive every kind of contract event on a real anvil, index into a real Postgres, and check
//! that the typed tables and views equal the chain state read back through the contracts' views.

use alloy::{
    primitives::{Address, B256, U256},
    providers::Provider,
    rpc::types::Filter,
};
use sqlx::{PgPool, Row};
use subsettle_abi::{SplitEscrow, Subscriptions, usdc::FiatTokenV2_2};
use subsettle_testkit::{TestChain, TestDatabase};

const USDC: u64 = 1_000_000;

mod common;

use common::{DAY, deploy_contracts, indexer, u, advance};

async fn numeric(pool: &PgPool, sql: &str, id: U256) -> Option<String> {
    sqlx::query_scalar::<_, Option<String>>(sqlx::AssertSqlSafe(sql.to_owned()))
        .bind(id.to_string())
        .fetch_optional(pool)
        .await
        .unwrap()
        .flatten()
}

#[tokio::test]
async fn every_event_kind_is_mirrored_and_matches_the_contract_views() {
    let chain = TestChain::spawn().unwrap();
    let db = TestDatabase::create().await.unwrap();
    let d = deploy_contracts(&chain).await;
    let operator = chain.provider(0);
    let subs = Subscriptions::new(d.subscriptions, &operator);
    let escrow = SplitEscrow::new(d.escrow, &operator);
    let token = FiatTokenV2_2::new(d.token, &operator);
    let (alice, bob, carol) = (chain.address(1), chain.address(2), chain.address(3));
    let (creator, platform, host) = (chain.address(4), chain.address(5), chain.address(6));

    // Plans (and their active flag), subscribers funded and approved.
    confirm!(subs.createPlan(u(79 * USDC), u(30 * DAY), u(3 * DAY)));
    confirm!(subs.createPlan(u(0), u(30 * DAY), u(3 * DAY)));
    confirm!(subs.setPlanActive(u(2), false));
    confirm!(subs.setPlanActive(u(2), true));
    for (i, who) in [(1, alice), (2, bob), (3, carol)] {
        confirm!(token.mint(who, u(1_000 * USDC)));
        confirm!(FiatTokenV2_2::new(d.token, chain.provider(i)).approve(d.subscriptions, U256::MAX));
    }
    let as_alice = Subscriptions::new(d.subscriptions, chain.provider(1));
    let as_bob = Subscriptions::new(d.subscriptions, chain.provider(2));
    let as_carol = Subscriptions::new(d.subscriptions, chain.provider(3));
    confirm!(as_alice.deposit(u(100 * USDC)));
    confirm!(as_alice.withdraw(u(5 * USDC)));
    confirm!(as_alice.subscribe(u(1), u(50 * USDC)));
    confirm!(as_bob.subscribe(u(1), u(10 * USDC)));
    confirm!(as_carol.subscribe(u(1), u(0)));
    confirm!(as_bob.setOverageCap(u(2), u(20 * USDC)));
    confirm!(as_bob.changePlan(u(2), u(2)));

    // Usage charges: collected, resent (no-op), and refused items.
    let root = B256::repeat_byte(0xab);
    let charge = |id: u64, k: u64, cumulative: u64| subsettle_abi::ISubscriptions::Charge {
        subscriptionId: u(id),
        periodIndex: u(k),
        cumulativeOverage: u(cumulative),
        usageRoot: root,
    };
    confirm!(subs.chargeUsage(vec![charge(1, 0, 12 * USDC), charge(2, 0, 30 * USDC), charge(99, 0, 1)]));
    confirm!(subs.chargeUsage(vec![charge(1, 0, 12 * USDC), charge(1, 5, 1)]));

    // A month later: alice renews from credit and wallet, bob moves to pay-as-you-go, carol has no funds.
    let as_carol_token = FiatTokenV2_2::new(d.token, chain.provider(3));
    confirm!(as_carol_token.transfer(chain.address(7), u(1_000 * USDC - 79 * USDC)));
    advance(&operator, 30 * DAY).await;
    confirm!(subs.renew(vec![u(1), u(2), u(3)]));
    confirm!(as_alice.cancel(u(1)));

    // Splits, a proposal and its cancellation, a settlement, payouts, holds, refunds, a surplus sweep.
    confirm!(escrow.createSplit(vec![creator, platform, host], vec![7_000, 2_000, 1_000], u(1)));
    // A new split takes settlements for epochs starting once the change delay has passed.
    advance(&operator, 8 * DAY + 1).await;
    confirm!(escrow.proposeSplitChange(u(1), vec![creator, platform], vec![8_000, 2_000], u(1)));
    confirm!(escrow.cancelSplitChange(u(1)));
    let now = operator.get_block(alloy::eips::BlockId::latest()).await.unwrap().unwrap().header.timestamp;
    confirm!(escrow.settle(u(1), u(now - DAY), u(now), vec![u(1)], vec![u(100 * USDC + 3)], root));
    confirm!(SplitEscrow::new(d.escrow, chain.provider(4)).setPayoutAddress(chain.address(8)));
    confirm!(escrow.claim(creator));
    confirm!(escrow.hold(host, u(now + 5 * DAY), B256::repeat_byte(1)));
    confirm!(escrow.release(host));
    confirm!(escrow.claimMany(vec![platform, host]));
    // Refunds return what a subscriber paid for a period: part of bob's usage charge of period 0, part of carol's
    // first fee (period 0, her last paid period).
    confirm!(escrow.refund(u(2), u(0), u(5 * USDC), false, B256::repeat_byte(2)));
    confirm!(escrow.refund(u(3), u(0), u(4 * USDC), true, B256::repeat_byte(3)));
    confirm!(token.mint(d.escrow, u(7)));
    confirm!(escrow.sweepSurplus(chain.address(9)));
    confirm!(subs.pause());
    confirm!(subs.unpause());
    confirm!(subs.setKeeper(chain.address(9)));
    confirm!(escrow.setKeeper(chain.address(9)));

    // Index everything.
    let (indexer, pool) = indexer(&chain, &db, &d).await;
    let progress = indexer.backfill_to(None).await.unwrap();
    let head = operator.get_block_number().await.unwrap();
    assert_eq!(progress.indexed, Some(head));

    // The raw table holds exactly the logs of the two contracts.
    let logs = operator
        .get_logs(&Filter::new().address(vec![d.subscriptions, d.escrow]).from_block(d.start_block).to_block(head))
        .await
        .unwrap();
    let raw: i64 = sqlx::query_scalar("SELECT count(*) FROM chain.raw_logs").fetch_one(&pool).await.unwrap();
    assert_eq!(raw as usize, logs.len());
    let typed: i64 = sqlx::query_scalar(
        "SELECT (SELECT count(*) FROM chain.plans) + (SELECT count(*) FROM chain.plan_active_changes)
              + (SELECT count(*) FROM chain.subscribed) + (SELECT count(*) FROM chain.renewals)
              + (SELECT count(*) FROM chain.renewal_failures) + (SELECT count(*) FROM chain.subscription_ends)
              + (SELECT count(*) FROM chain.overage_cap_changes) + (SELECT count(*) FROM chain.plan_change_requests)
              + (SELECT count(*) FROM chain.usage_charges) + (SELECT count(*) FROM chain.usage_charge_failures)
              + (SELECT count(*) FROM chain.credit_movements) + (SELECT count(*) FROM chain.split_versions)
              + (SELECT count(*) FROM chain.split_change_cancellations) + (SELECT count(*) FROM chain.settlements)
              + (SELECT count(*) FROM chain.credits) + (SELECT count(*) FROM chain.claims)
              + (SELECT count(*) FROM chain.payout_addresses) + (SELECT count(*) FROM chain.holds)
              + (SELECT count(*) FROM chain.refunds) + (SELECT count(*) FROM chain.surplus_sweeps)
              + (SELECT count(*) FROM chain.admin_events)",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(typed, raw, "every raw log has exactly one typed row");
    for (table, expected) in [
        ("plans", 2), ("plan_active_changes", 2), ("subscribed", 3), ("renewals", 2), ("renewal_failures", 1),
        ("subscription_ends", 1), ("overage_cap_changes", 1), ("plan_change_requests", 1), ("usage_charges", 2),
        ("usage_charge_failures", 2), ("split_versions", 2), ("split_change_cancellations", 1), ("settlements", 1),
        ("credits", 3), ("payout_addresses", 1), ("holds", 2), ("refunds", 2), ("surplus_sweeps", 1),
    ] {
        let n: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT count(*) FROM chain.{table}")))
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(n, expected, "chain.{table}");
    }

    // Subscriptions: the view equals the contract's records.
    for id in 1..=3u64 {
        let on_chain = subs.subscription(u(id)).call().await.unwrap();
        let ledger = subs.usageLedger(u(id)).call().await.unwrap();
        let row = sqlx::query(
            "SELECT subscriber, plan_id::TEXT, period_index::TEXT, paid_through::TEXT, overage_cap::TEXT, status
             FROM chain.subscriptions WHERE subscription_id = $1::numeric",
        )
        .bind(id.to_string())
        .fetch_one(&pool)
        .await
        .unwrap();
        let status = ["none", "active", "past_due", "cancelled", "lapsed"][on_chain.status as usize];
        assert_eq!(row.get::<Vec<u8>, _>("subscriber"), on_chain.subscriber.to_vec(), "subscription {id}");
        assert_eq!(row.get::<String, _>("plan_id"), on_chain.planId.to_string(), "subscription {id}");
        assert_eq!(row.get::<String, _>("period_index"), on_chain.periodIndex.to_string(), "subscription {id}");
        assert_eq!(row.get::<String, _>("paid_through"), on_chain.paidThrough.to_string(), "subscription {id}");
        assert_eq!(row.get::<String, _>("overage_cap"), ledger.overageCap.to_string(), "subscription {id}");
        assert_eq!(row.get::<String, _>("status"), status, "subscription {id}");
        let charged = numeric(
            &pool,
            "SELECT charged::TEXT FROM chain.charged_per_period WHERE subscription_id = $1::numeric AND period_index = 0",
            u(id),
        )
        .await
        .unwrap_or_else(|| "0".into());
        assert_eq!(charged, subs.chargedInPeriod(u(id), u(0)).call().await.unwrap().to_string());
        // The cap of each period the ledger holds, as the keeper reads it, equals the contract's.
        for period in [on_chain.periodIndex.to::<u64>(), on_chain.periodIndex.to::<u64>() + 1] {
            let (known, cap) = subs.overageCapOf(u(id), u(period)).call().await.map(|r| (r.known, r.cap)).unwrap();
            assert!(known, "subscription {id} period {period}");
            let indexed = numeric(&pool, &format!("SELECT chain.overage_cap_for(31337, $1::numeric, {period})::TEXT"), u(id)).await;
            assert_eq!(indexed, Some(cap.to_string()), "cap of subscription {id} period {period}");
        }
    }

    // Refunds carry the subscription and period they return, and add up to the escrow's record of them.
    for (id, period) in [(2u64, 0u64), (3, 0)] {
        let indexed = numeric(
            &pool,
            &format!("SELECT SUM(amount)::TEXT FROM chain.refunds WHERE subscription_id = $1::numeric AND period_index = {period}"),
            u(id),
        )
        .await;
        assert_eq!(indexed, Some(escrow.refundedFor(u(id), u(period)).call().await.unwrap().to_string()), "refunds of {id}/{period}");
    }

    // Credit per subscriber and claimable per recipient equal the contracts' balances.
    for who in [alice, bob, carol] {
        let credit: Option<String> =
            sqlx::query_scalar("SELECT credit::TEXT FROM chain.subscriber_credit WHERE subscriber = $1")
                .bind(who.to_vec())
                .fetch_optional(&pool)
                .await
                .unwrap();
        assert_eq!(credit.unwrap_or_else(|| "0".into()), subs.creditOf(who).call().await.unwrap().to_string());
    }
    for who in [creator, platform, host] {
        let claimable: Option<String> =
            sqlx::query_scalar("SELECT claimable::TEXT FROM chain.recipient_balances WHERE recipient = $1")
                .bind(who.to_vec())
                .fetch_optional(&pool)
                .await
                .unwrap();
        assert_eq!(
            claimable.unwrap_or_else(|| "0".into()),
            escrow.claimableOf(who).call().await.unwrap().to_string()
        );
    }
    let payout: Vec<u8> = sqlx::query_scalar("SELECT payout FROM chain.payout_address_current WHERE recipient = $1")
        .bind(creator.to_vec())
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(Address::from_slice(&payout), escrow.payoutOf(creator).call().await.unwrap());

    // Live versions: the cancelled proposal is gone, version 0 stays.
    let live: Vec<String> = sqlx::query_scalar("SELECT version::TEXT FROM chain.split_versions_live WHERE split_id = 1")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(live, vec![escrow.latestVersion(u(1)).call().await.unwrap().to_string()]);

    // The same run again changes nothing (exactly once).
    let again = indexer.backfill_to(None).await.unwrap();
    assert_eq!(again.events, 0);
    let raw_again: i64 = sqlx::query_scalar("SELECT count(*) FROM chain.raw_logs").fetch_one(&pool).await.unwrap();
    assert_eq!(raw_again, raw);
}
