//! The settlement engine's first part against a real chain: due subscriptions are planned once per retry slot,
//! written to the outbox, signed with a nonce from Postgres and persisted before broadcast; a "crash" between
//! persisting and broadcasting is healed by the next pass (re-broadcast, receipt matched), and each subscription
//! is renewed exactly once. A call the contract would refuse fails its pre-check with the custom error's name.

#[path = "../../indexer/tests/common/mod.rs"]
mod common;
#[path = "common/market.rs"]
mod market;

use alloy::{primitives::U256, sol_types::SolCall};
use market::Market;
use subsettle_abi::SplitEscrow;
use subsettle_keeper::{
    settlement::outbox::{Action, OutboxReport, plan},
    settlement::renewals::{RenewalPolicy, plan_renewals},
};


async fn outbox_states(market: &Market) -> Vec<(String, String, Option<String>)> {
    sqlx::query_as("SELECT kind, state, failure FROM keeper.outbox ORDER BY planned_at, action_key")
        .fetch_all(&market.pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn due_subscriptions_are_renewed_exactly_once_across_a_crash() {
    let market = Market::start(3, 0).await;
    subsettle_keeper::store::migrate(&market.pool).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let policy = RenewalPolicy { batch: 2, retry_interval: 3_600 };
    let provider = market.chain.provider(0);
    let plan_now = |now| plan_renewals(&market.pool, &provider, market.deployment.chain_id, market.deployment.subscriptions, policy, now);

    // Nothing is due during the first period.
    assert!(plan_now(market.now()).await.unwrap().is_empty());
    market.advance(30 * 86_400 + 60).await;
    let actions = plan_now(market.now()).await.unwrap();
    assert_eq!(actions.len(), 2, "three due subscriptions in batches of two");
    assert!(actions[0].key.ends_with(&format!("{}@1,{}@1", market.subscribers[0].1, market.subscribers[1].1)), "{}", actions[0].key);
    assert_eq!(plan(&market.pool, &actions, market.now()).await.unwrap(), 2);
    assert_eq!(plan(&market.pool, &actions, market.now()).await.unwrap(), 0, "the same keys are stored once");
    assert!(plan_now(market.now()).await.unwrap().is_empty(), "planned subscriptions are not planned again in the slot");

    // The first action is signed and persisted, then the process "dies" before broadcasting it.
    let first = market.sender(dir.path());
    let mut report = OutboxReport::default();
    let raw = first.sign_next(&market.pool, &mut report).await.unwrap().expect("a planned action");
    assert!(!raw.is_empty());
    drop(first);

    // A new process: reconcile re-broadcasts what was signed, then signs and sends the rest.
    let second = market.sender(dir.path());
    let mut report = OutboxReport::default();
    second.reconcile(&market.pool, &mut report).await.unwrap();
    second.send_planned(&market.pool, &mut report).await.unwrap();
    market.wait_until_sent_is_mined().await;
    second.reconcile(&market.pool, &mut report).await.unwrap();
    assert_eq!((report.sent, report.confirmed, report.failed), (1, 2, 0), "{report:?}");
    let states = outbox_states(&market).await;
    assert!(states.iter().all(|(_, state, _)| state == "confirmed"), "{states:?}");
    let nonces: Vec<i64> = sqlx::query_scalar("SELECT nonce FROM keeper.outbox ORDER BY nonce").fetch_all(&market.pool).await.unwrap();
    assert_eq!(nonces[1], nonces[0] + 1, "consecutive nonces from the outbox");

    market.sync().await;
    let renewed: Vec<(String, String)> =
        sqlx::query_as("SELECT subscription_id::TEXT, period_index::TEXT FROM chain.renewals ORDER BY subscription_id")
            .fetch_all(&market.pool)
            .await
            .unwrap();
    let expected: Vec<(String, String)> = market.subscribers.iter().map(|(_, id)| (id.to_string(), "1".to_owned())).collect();
    assert_eq!(renewed, expected, "each subscription renewed once, into period 1");
    // A later slot finds nothing due: the renewals were indexed.
    assert!(plan_now(market.now() + 3_600).await.unwrap().is_empty());

    // A call the contract refuses fails its pre-check, named by its custom error, and uses no nonce.
    let settle = SplitEscrow::settleCall {
        settlementId: U256::from(77),
        epochStart: U256::ZERO,
        epochEnd: U256::from(market.now() as u64),
        splitIds: vec![U256::from(999)],
        amounts: vec![U256::from(1)],
        usageRoot: Default::default(),
    };
    let action = Action {
        key: "settle:77".into(),
        kind: "settle",
        target: market.deployment.escrow,
        calldata: settle.abi_encode().into(),
        items: serde_json::json!([]),
    };
    plan(&market.pool, &[action], market.now()).await.unwrap();
    let mut report = OutboxReport::default();
    second.send_planned(&market.pool, &mut report).await.unwrap();
    assert_eq!(report.failed, 1);
    let failure: (String, Option<i64>) =
        sqlx::query_as("SELECT failure, nonce FROM keeper.outbox WHERE action_key = 'settle:77'").fetch_one(&market.pool).await.unwrap();
    assert!(failure.0.contains("UnknownSplit"), "{}", failure.0);
    assert_eq!(failure.1, None);
}

#[tokio::test]
async fn a_stuck_transaction_is_replaced_with_higher_fees_and_the_replacement_is_matched() {
    let market = Market::start(1, 0).await;
    subsettle_keeper::store::migrate(&market.pool).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut sender = market.sender(dir.path());
    sender.fees.bump_after = std::time::Duration::ZERO;
    market.advance(30 * 86_400 + 60).await;
    let provider = market.chain.provider(0);
    let policy = RenewalPolicy::default();
    let actions =
        plan_renewals(&market.pool, &provider, market.deployment.chain_id, market.deployment.subscriptions, policy, market.now()).await.unwrap();
    plan(&market.pool, &actions, market.now()).await.unwrap();

    // The node stops mining: the transaction waits in the pool.
    let _: serde_json::Value = alloy::providers::Provider::raw_request(&provider, "evm_setAutomine".into(), (false,)).await.unwrap();
    let mut report = OutboxReport::default();
    sender.send_planned(&market.pool, &mut report).await.unwrap();
    sender.reconcile(&market.pool, &mut report).await.unwrap();
    assert_eq!(report.bumped, 1, "{report:?}");
    let (hashes, max_fee): (Vec<Vec<u8>>, String) =
        sqlx::query_as("SELECT tx_hashes, max_fee_per_gas::TEXT FROM keeper.outbox").fetch_one(&market.pool).await.unwrap();
    assert_eq!(hashes.len(), 2, "the original and its replacement");

    let _: serde_json::Value = alloy::providers::Provider::raw_request(&provider, "evm_mine".into(), ()).await.unwrap();
    let _: serde_json::Value = alloy::providers::Provider::raw_request(&provider, "evm_setAutomine".into(), (true,)).await.unwrap();
    let mut report = OutboxReport::default();
    sender.reconcile(&market.pool, &mut report).await.unwrap();
    assert_eq!(report.confirmed, 1, "{report:?}");
    let mined: Vec<u8> = sqlx::query_scalar("SELECT tx_hashes[2] FROM keeper.outbox").fetch_one(&market.pool).await.unwrap();
    let receipt = alloy::providers::Provider::get_transaction_receipt(&provider, alloy::primitives::B256::from_slice(&mined)).await.unwrap();
    assert!(receipt.is_some(), "the replacement is the one mined");
    assert!(max_fee.parse::<u128>().unwrap() > 0);
    market.sync().await;
    let renewals: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM chain.renewals").fetch_one(&market.pool).await.unwrap();
    assert_eq!(renewals, 1);
}

#[tokio::test]
async fn an_action_whose_nonce_another_transaction_used_is_signed_again_and_applied_once() {
    use alloy::{network::TransactionBuilder, providers::Provider, rpc::types::TransactionRequest};
    let market = Market::start(2, 0).await;
    subsettle_keeper::store::migrate(&market.pool).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let sender = market.sender(dir.path());
    market.advance(30 * 86_400 + 60).await;
    let provider = market.chain.provider(0);
    let actions =
        plan_renewals(&market.pool, &provider, market.deployment.chain_id, market.deployment.subscriptions, RenewalPolicy::default(), market.now())
            .await
            .unwrap();
    plan(&market.pool, &actions, market.now()).await.unwrap();

    // Signed and stored, but the process dies before broadcasting; meanwhile the same key is used elsewhere.
    let mut report = OutboxReport::default();
    sender.sign_next(&market.pool, &mut report).await.unwrap().expect("a planned action");
    let taken: i64 = sqlx::query_scalar("SELECT nonce FROM keeper.outbox").fetch_one(&market.pool).await.unwrap();
    let foreign = TransactionRequest::default().with_to(market.chain.address(0)).with_nonce(taken as u64);
    let hash = *provider.send_transaction(foreign).await.unwrap().tx_hash();
    common::receipt(&provider, hash).await;

    // The signed transaction can never be mined now: reconcile plans it again instead of waiting forever.
    let mut report = OutboxReport::default();
    sender.reconcile(&market.pool, &mut report).await.unwrap();
    assert_eq!(report.resigned, 1, "{report:?}");
    let (state, nonce, failure): (String, Option<i64>, Option<String>) =
        sqlx::query_as("SELECT state, nonce, failure FROM keeper.outbox").fetch_one(&market.pool).await.unwrap();
    assert_eq!((state.as_str(), nonce), ("planned", None));
    assert!(failure.unwrap().contains(&format!("nonce {taken} was used")));

    sender.send_planned(&market.pool, &mut report).await.unwrap();
    market.wait_until_sent_is_mined().await;
    sender.reconcile(&market.pool, &mut report).await.unwrap();
    assert_eq!((report.sent, report.confirmed, report.failed), (1, 1, 0), "{report:?}");
    let (state, nonce): (String, i64) = sqlx::query_as("SELECT state, nonce FROM keeper.outbox").fetch_one(&market.pool).await.unwrap();
    assert_eq!((state.as_str(), nonce), ("confirmed", taken + 1), "signed again with the next free nonce");
    market.sync().await;
    let renewals: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM chain.renewals").fetch_one(&market.pool).await.unwrap();
    assert_eq!(renewals, 2, "each subscription renewed once");
}
