//! Issue #16 item 10, against a real anvil: an action is confirmed only once its transaction is final (N
//! confirmations, or the node's `finalized` block); a settlement mined and then dropped by a reorg (`evm_revert`,
//! `anvil_reorg`) is broadcast again and ends settled exactly once; a failed settlement is tried again under a new
//! key after the retry interval, a bounded number of times, then once more when the operator asks.

#[path = "../../indexer/tests/common/mod.rs"]
mod common;
#[path = "common/market.rs"]
mod market;

use alloy::{
    primitives::{Address, U256},
    providers::{DynProvider, Provider},
    rpc::types::Filter,
    sol_types::SolEvent,
};
use market::{CUTOFF, Market};
use serde_json::json;
use subsettle_abi::SplitEscrow;
use subsettle_keeper::settlement::{
    outbox::{Finality, OutboxReport, plan},
    plan::{SETTLE_ATTEMPTS, SettlementRetry, retry_settlement},
    renewals::{RenewalPolicy, plan_renewals},
};

async fn mine(provider: &DynProvider, blocks: u64) {
    let _: serde_json::Value = provider.raw_request("anvil_mine".into(), (U256::from(blocks),)).await.unwrap();
}

async fn outbox(market: &Market, key: &str) -> (String, Option<i64>) {
    sqlx::query_as("SELECT state, block_number FROM keeper.outbox WHERE action_key = $1").bind(key).fetch_one(&market.pool).await.unwrap()
}

/// The `Settled` logs of settlement `id` on the chain as it is now.
async fn settled_logs(market: &Market, id: u64) -> usize {
    let filter = Filter::new().address(market.deployment.escrow).event_signature(SplitEscrow::Settled::SIGNATURE_HASH).from_block(0);
    let logs = market.operator().get_logs(&filter).await.unwrap();
    logs.iter().filter(|log| SplitEscrow::Settled::decode_log(&log.inner).is_ok_and(|e| e.settlementId == U256::from(id))).count()
}

/// Plans and sends the renewal of the market's only subscription with `sender`, and waits until it is mined.
async fn send_a_renewal(market: &Market, sender: &subsettle_keeper::settlement::outbox::Sender) -> String {
    market.advance(30 * 86_400 + 60).await;
    let provider = market.chain.provider(0);
    let (chain, subs) = (market.deployment.chain_id, market.deployment.subscriptions);
    let actions = plan_renewals(&market.pool, &provider, chain, subs, RenewalPolicy::default(), market.now()).await.unwrap();
    assert_eq!(actions.len(), 1);
    plan(&market.pool, &actions, market.now()).await.unwrap();
    sender.send_planned(&market.pool, &mut OutboxReport::default()).await.unwrap();
    market.wait_until_sent_is_mined().await;
    actions[0].key.clone()
}

#[tokio::test]
async fn an_action_is_confirmed_only_once_its_block_has_the_configured_confirmations() {
    let market = Market::start(1, 0).await;
    let dir = tempfile::tempdir().unwrap();
    let mut sender = market.sender(dir.path());
    sender.finality = Finality::Confirmations(3);
    let key = send_a_renewal(&market, &sender).await;
    let provider = market.operator();
    let mined_in = provider.get_block_number().await.unwrap() as i64;

    // Mined (1 confirmation), then 2: still sent, with the block noted.
    for confirmations in 1..=2 {
        let mut report = OutboxReport::default();
        sender.reconcile(&market.pool, &mut report).await.unwrap();
        assert_eq!((report.confirmed, report.awaiting_finality), (0, 1), "{confirmations} confirmation(s): {report:?}");
        assert_eq!(outbox(&market, &key).await, ("sent".to_owned(), Some(mined_in)));
        mine(&provider, 1).await;
    }
    // 3 confirmations: final.
    let mut report = OutboxReport::default();
    sender.reconcile(&market.pool, &mut report).await.unwrap();
    assert_eq!(report.confirmed, 1, "{report:?}");
    assert_eq!(outbox(&market, &key).await, ("confirmed".to_owned(), Some(mined_in)));
}

#[tokio::test]
async fn with_the_nodes_finalized_block_an_action_waits_until_its_block_is_finalized() {
    let market = Market::start(1, 0).await;
    let dir = tempfile::tempdir().unwrap();
    let mut sender = market.sender(dir.path());
    sender.finality = Finality::Finalized;
    let provider = market.operator();
    sender.finality.check(&provider).await.expect("anvil answers for its finalized block");
    let key = send_a_renewal(&market, &sender).await;
    let mined_in = provider.get_block_number().await.unwrap();

    // anvil's `finalized` block is 64 blocks behind its head (two epochs of 32 slots).
    mine(&provider, 40).await;
    let finalized = provider.get_block_by_number(alloy::eips::BlockNumberOrTag::Finalized).await.unwrap().unwrap().header.number;
    assert!(finalized < mined_in, "finalized {finalized}, mined in {mined_in}");
    let mut report = OutboxReport::default();
    sender.reconcile(&market.pool, &mut report).await.unwrap();
    assert_eq!((report.confirmed, report.awaiting_finality), (0, 1), "40 blocks on, not finalized yet: {report:?}");
    assert_eq!(outbox(&market, &key).await.0, "sent");

    mine(&provider, 30).await;
    let mut report = OutboxReport::default();
    sender.reconcile(&market.pool, &mut report).await.unwrap();
    assert_eq!(report.confirmed, 1, "finalized now: {report:?}");
    assert_eq!(outbox(&market, &key).await, ("confirmed".to_owned(), Some(mined_in as i64)));
}

/// How a test drops the block holding the settlement.
#[derive(Debug, Clone, Copy)]
enum Reorg {
    /// `evm_revert` to a snapshot taken before it: the chain is shorter afterwards.
    Revert,
    /// `anvil_reorg` of depth 1 with no transactions: the block is replaced by an empty one at the same height.
    Replace,
}

#[tokio::test]
async fn a_settlement_mined_then_dropped_by_a_reorg_is_sent_again_and_settled_exactly_once() {
    for reorg in [Reorg::Revert, Reorg::Replace] {
        let market = Market::start(1, 50_000_000).await;
        let dir = tempfile::tempdir().unwrap();
        let mut engine = market.engine(dir.path());
        engine.sender.finality = Finality::Confirmations(3);
        let provider = market.operator();
        // 600 images at 0.04 = 24 USDC: 4 USDC over the allowance.
        assert_eq!(market.usage(&json!([market.event("o-1", 0, "image-gen", "images", "600", market.now())])).await.0, 200);
        market.advance(30 * 86_400 + CUTOFF as u64 + 60).await;

        // Close, renew and charge; three confirmations later they are final and indexed.
        let first = engine.step(false).await.unwrap();
        assert_eq!(first.outbox.sent, 2, "{first:?}");
        market.sync().await;
        // The charge is indexed but not final: the epoch waits for it (an epoch is never gathered again).
        let waiting = engine.step(false).await.unwrap();
        assert_eq!((waiting.epoch, waiting.outbox.awaiting_finality), (None, 2), "{reorg:?}: {waiting:?}");
        mine(&provider, 3).await;
        let snapshot: U256 = provider.raw_request("evm_snapshot".into(), ()).await.unwrap();

        // The epoch settles: mined, one confirmation, not final.
        let second = engine.step(false).await.unwrap();
        assert_eq!((second.epoch, second.actions.clone(), second.outbox.confirmed), (Some(1), vec!["settle:1".to_owned()], 2), "{second:?}");
        market.wait_until_sent_is_mined().await;
        let third = engine.step(false).await.unwrap();
        assert_eq!(third.outbox.awaiting_finality, 1, "{third:?}");
        assert_eq!(outbox(&market, "settle:1").await.0, "sent", "{reorg:?}: not confirmed on its first receipt");
        assert_eq!(settled_logs(&market, 1).await, 1);

        // The reorg drops the block holding it.
        match reorg {
            Reorg::Revert => {
                let reverted: bool = provider.raw_request("evm_revert".into(), (snapshot,)).await.unwrap();
                assert!(reverted);
            }
            Reorg::Replace => {
                let _: serde_json::Value = provider.raw_request("anvil_reorg".into(), (1u64, Vec::<serde_json::Value>::new())).await.unwrap();
            }
        }
        assert_eq!(settled_logs(&market, 1).await, 0, "{reorg:?}: the settlement is gone from the chain");

        // The next step sees it gone and broadcasts the same transaction again; nothing is planned twice.
        let fourth = engine.step(false).await.unwrap();
        assert_eq!(fourth.outbox.dropped, 1, "{reorg:?}: {fourth:?}");
        assert!(fourth.actions.iter().all(|k| !k.starts_with("settle:")), "{reorg:?}: {fourth:?}");
        market.wait_until_sent_is_mined().await;
        mine(&provider, 3).await;
        let fifth = engine.step(false).await.unwrap();
        assert_eq!(outbox(&market, "settle:1").await.0, "confirmed", "{reorg:?}: {fifth:?}");
        market.sync().await;

        assert_eq!(settled_logs(&market, 1).await, 1, "{reorg:?}: settled exactly once");
        let escrow = SplitEscrow::new(market.deployment.escrow, &provider);
        assert!(escrow.settlementUsed(U256::from(1)).call().await.unwrap());
        let indexed: Vec<String> = sqlx::query_scalar("SELECT total::TEXT FROM chain.settlements").fetch_all(&market.pool).await.unwrap();
        assert_eq!(indexed, ["83000000"], "{reorg:?}: 79 USDC fee + 4 USDC overage, once");
        let settles: Vec<String> =
            sqlx::query_scalar("SELECT action_key FROM keeper.outbox WHERE kind = 'settle'").fetch_all(&market.pool).await.unwrap();
        assert_eq!(settles, ["settle:1"], "{reorg:?}: one action, one transaction");
    }
}

#[tokio::test]
async fn a_failed_settlement_is_retried_after_the_retry_interval_a_bounded_number_of_times_then_when_the_operator_asks() {
    let market = Market::start(1, 50_000_000).await;
    let dir = tempfile::tempdir().unwrap();
    let engine = market.engine(dir.path());
    let retry = engine.settlement.retry_interval as u64;
    assert_eq!(market.usage(&json!([market.event("f-1", 0, "image-gen", "images", "600", market.now())])).await.0, 200);
    market.advance(30 * 86_400 + CUTOFF as u64 + 60).await;
    engine.step(false).await.unwrap();
    market.sync().await;

    // The escrow's keeper is rotated away (a cause the operator can fix): the settlement's pre-check fails.
    let escrow = SplitEscrow::new(market.deployment.escrow, market.operator());
    let elsewhere: Address = market.chain.address(9);
    confirm!(escrow.setKeeper(elsewhere));
    let step = engine.step(false).await.unwrap();
    assert_eq!((step.epoch, step.actions.clone(), step.outbox.failed), (Some(1), vec!["settle:1".to_owned()], 1), "{step:?}");
    let failure: String =
        sqlx::query_scalar("SELECT failure FROM keeper.outbox WHERE action_key = 'settle:1'").fetch_one(&market.pool).await.unwrap();
    assert!(failure.contains("NotKeeper"), "{failure}");
    // Not again within the retry interval.
    market.advance(60).await;
    assert!(engine.step(false).await.unwrap().actions.is_empty());

    // Each retry interval, a new attempt under a new key, until the attempts are used up.
    for attempt in 2..=SETTLE_ATTEMPTS {
        market.advance(retry).await;
        let step = engine.step(false).await.unwrap();
        assert_eq!(step.actions, [format!("settle:1:{attempt}")], "{step:?}");
        assert_eq!(step.outbox.failed, 1);
    }
    market.advance(retry).await;
    assert!(engine.step(false).await.unwrap().actions.is_empty(), "bounded: {SETTLE_ATTEMPTS} attempts");

    // The operator fixes the cause; the engine does not try again by itself, the operator asks it to.
    confirm!(escrow.setKeeper(market.chain.address(0)));
    market.advance(retry).await;
    assert!(engine.step(false).await.unwrap().actions.is_empty());
    let chain = market.deployment.chain_id;
    let reopened = retry_settlement(&market.pool, chain, 1).await.unwrap();
    assert!(
        matches!(&reopened, SettlementRetry::Reopened { failed_attempts, last_failure: Some(f) } if *failed_attempts == SETTLE_ATTEMPTS && f.contains("NotKeeper")),
        "{reopened:?}"
    );
    assert!(matches!(retry_settlement(&market.pool, chain, 1).await.unwrap(), SettlementRetry::NothingFailed { .. }), "asking twice changes nothing");
    let step = engine.step(false).await.unwrap();
    let next = format!("settle:1:{}", SETTLE_ATTEMPTS + 1);
    assert_eq!(step.actions, std::slice::from_ref(&next), "{step:?}");
    market.sync().await;
    engine.step(false).await.unwrap();
    assert_eq!(outbox(&market, &next).await.0, "confirmed");
    assert_eq!(settled_logs(&market, 1).await, 1, "settled once");
    assert_eq!(retry_settlement(&market.pool, chain, 1).await.unwrap(), SettlementRetry::Settled);
    let states: Vec<(String, String)> =
        sqlx::query_as("SELECT action_key, state FROM keeper.outbox WHERE kind = 'settle' ORDER BY planned_at, action_key")
            .fetch_all(&market.pool)
            .await
            .unwrap();
    assert_eq!(states.iter().filter(|(_, s)| s == "superseded").count(), SETTLE_ATTEMPTS, "the failed attempts stay, set aside: {states:?}");
}
