//! `subsettle-keeper deploy` against a real anvil: the three contracts are deployed and wired, and a subscription
//! paid through the generated bindings lands in the escrow as unallocated revenue.

use alloy::{hex, primitives::U256};
use subsettle_abi::{SplitEscrow, Subscriptions, usdc::FiatTokenV2_2};
use subsettle_keeper::{
    operator::deploy::{DeployPlan, TokenSource, deploy},
    signer::OperatorKey,
};
use subsettle_testkit::TestChain;

const USDC: u64 = 1_000_000;

/// The operator key as an operator provides it: in a file.
fn operator_key(chain: &TestChain) -> OperatorKey {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("operator.key");
    std::fs::write(&path, hex::encode_prefixed(chain.signer(0).to_bytes())).unwrap();
    OperatorKey::load(Some(&path)).unwrap()
}

#[tokio::test]
async fn deploys_wires_and_collects_a_first_period() {
    let chain = TestChain::spawn().unwrap();
    let plan = DeployPlan {
        rpc_url: chain.endpoint(),
        token: TokenSource::LocalUsdc,
        keeper: Some(chain.address(9)),
        charge_window_secs: 2 * 86_400,
        split_change_delay_secs: 7 * 86_400,
        max_hold_secs: 30 * 86_400,
    };
    let deployment = deploy(&plan, &operator_key(&chain)).await.unwrap();
    assert_eq!(deployment.chain_id, chain.chain_id());

    let operator = chain.provider(0);
    let subs = Subscriptions::new(deployment.subscriptions, &operator);
    let escrow = SplitEscrow::new(deployment.escrow, &operator);
    assert_eq!(subs.escrow().call().await.unwrap(), deployment.escrow);
    assert_eq!(subs.token().call().await.unwrap(), deployment.token);
    assert_eq!(subs.keeper().call().await.unwrap(), chain.address(9));
    assert_eq!(subs.chargeWindow().call().await.unwrap(), U256::from(2 * 86_400));
    assert_eq!(escrow.subscriptions().call().await.unwrap(), deployment.subscriptions);
    assert_eq!(escrow.splitChangeDelay().call().await.unwrap(), U256::from(7 * 86_400));
    assert_eq!(escrow.maxHold().call().await.unwrap(), U256::from(30 * 86_400));

    // The operator creates a $79 monthly plan; a subscriber approves once and subscribes.
    subs.createPlan(U256::from(79 * USDC), U256::from(30 * 86_400), U256::from(3 * 86_400))
        .send()
        .await
        .unwrap()
        .get_receipt()
        .await
        .unwrap();
    let token = FiatTokenV2_2::new(deployment.token, &operator);
    let subscriber = chain.address(1);
    token.mint(subscriber, U256::from(1_000 * USDC)).send().await.unwrap().get_receipt().await.unwrap();
    let as_subscriber = chain.provider(1);
    FiatTokenV2_2::new(deployment.token, &as_subscriber)
        .approve(deployment.subscriptions, U256::MAX)
        .send()
        .await
        .unwrap()
        .get_receipt()
        .await
        .unwrap();
    let receipt = Subscriptions::new(deployment.subscriptions, &as_subscriber)
        .subscribe(U256::from(1), U256::from(20 * USDC))
        .send()
        .await
        .unwrap()
        .get_receipt()
        .await
        .unwrap();
    assert!(receipt.status());
    let subscribed = receipt
        .decoded_log::<Subscriptions::Subscribed>()
        .expect("a Subscribed event");
    assert_eq!(subscribed.subscriber, subscriber);
    assert_eq!(subscribed.amount, U256::from(79 * USDC));

    assert_eq!(token.balanceOf(deployment.escrow).call().await.unwrap(), U256::from(79 * USDC));
    assert_eq!(escrow.unallocated().call().await.unwrap(), U256::from(79 * USDC));
    assert!(subs.isEntitled(U256::from(1)).call().await.unwrap());
}
