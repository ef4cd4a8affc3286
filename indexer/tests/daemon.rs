//! `subsettle-indexer run` as an operator runs it: a separate process that follows new blocks, serves /healthz
//! and /metrics, and exits cleanly on SIGTERM.

mod common;

use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use alloy::{primitives::U256, transports::http::reqwest};
use subsettle_abi::{Subscriptions, TestUSDC};
use subsettle_testkit::{TestChain, TestDatabase};
use common::{DAY, Daemon, deploy_contracts, u};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

async fn wait_for(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn the_daemon_follows_new_blocks_serves_health_and_stops_on_sigterm() {
    let chain = TestChain::spawn().unwrap();
    let db = TestDatabase::create().await.unwrap();
    let d = deploy_contracts(&chain).await;
    let dir = tempfile::tempdir().unwrap();
    let deployment_file = dir.path().join("deployment.json");
    d.save(&deployment_file).unwrap();
    let metrics_port = free_port();

    let mut daemon = Daemon::spawn(Command::new(env!("CARGO_BIN_EXE_subsettle-indexer"))
        .args(["run", "--poll-interval-ms", "100", "--metrics-addr", &format!("127.0.0.1:{metrics_port}")])
        .arg("--deployment")
        .arg(&deployment_file)
        .args(["--rpc-url", &chain.endpoint(), "--database-url", db.url()])
        .stdout(Stdio::null())
        .stderr(Stdio::null()));

    // A plan and a subscription created while the daemon runs show up in the views.
    let operator = chain.provider(0);
    let subs = Subscriptions::new(d.subscriptions, &operator);
    confirm!(subs.createPlan(u(79_000_000), u(30 * DAY), u(3 * DAY)));
    confirm!(TestUSDC::new(d.token, &operator).mint(chain.address(1), u(1_000_000_000)));
    confirm!(TestUSDC::new(d.token, chain.provider(1)).approve(d.subscriptions, U256::MAX));
    confirm!(Subscriptions::new(d.subscriptions, chain.provider(1)).subscribe(u(1), u(0)));

    let pool = db.pool().await.unwrap();
    wait_for("the subscription to be indexed", async || {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM chain.subscriptions WHERE status = 'active'")
            .fetch_one(&pool)
            .await
            .is_ok_and(|n| n == 1)
    })
    .await;

    let base = format!("http://127.0.0.1:{metrics_port}");
    let health = reqwest::get(format!("{base}/healthz")).await.unwrap();
    assert_eq!(health.status(), 200);
    let metrics = reqwest::get(format!("{base}/metrics")).await.unwrap().text().await.unwrap();
    let events: u64 = metrics
        .lines()
        .find_map(|line| line.strip_prefix("subsettle_indexer_events_total "))
        .expect("an events counter")
        .parse()
        .unwrap();
    assert!(events >= 2, "{metrics}");

    // SIGTERM: the daemon finishes its step and exits 0.
    let status = Command::new("kill").args(["-TERM", &daemon.0.id().to_string()]).status().unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    let exit = loop {
        if let Some(exit) = daemon.0.try_wait().unwrap() {
            break exit;
        }
        assert!(Instant::now() < deadline, "the daemon did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(exit.success(), "exit status {exit}");
}
