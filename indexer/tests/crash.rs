//! Crash safety of the real binary: `subsettle-indexer backfill` is SIGKILLed at random points of a long backfill
//! (small ranges, so many commits), restarted each time, and finally run to completion. After every kill the index
//! must equal the chain up to its cursor, and at the end the whole history must be there, each log exactly once.

mod common;

use std::{
    path::Path,
    process::{Command, ExitStatus, Stdio},
    time::{Duration, Instant},
};

use alloy::providers::Provider;
use common::{
    Faults, Proxy, Rng, Workload, assert_index_matches_chain, cursor, deploy_contracts, generate_events,
    save_deployment,
};
use subsettle_testkit::{TestChain, TestDatabase};

/// `subsettle-indexer backfill` under test (killed if the test fails while it runs).
struct Indexer(common::Daemon);

impl Indexer {
    /// Starts `subsettle-indexer backfill` with ranges of 20 blocks, 2 at once; its log goes to `log`.
    fn backfill(database_url: &str, deployment: &Path, rpc_url: &str, log: &Path) -> Self {
        let mut command = Command::new(env!("CARGO_BIN_EXE_subsettle-indexer"));
        command
            .arg("backfill")
            .args(["--database-url", database_url, "--rpc-url", rpc_url])
            .arg("--deployment")
            .arg(deployment)
            .args(["--max-range", "20", "--concurrency", "2", "--poll-interval-ms", "50"])
            .env_remove("SUBSETTLE_INDEXER_CONFIG")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).unwrap());
        Self(common::Daemon::spawn(&mut command))
    }

    fn exited(&mut self) -> Option<ExitStatus> {
        self.0.try_wait().unwrap()
    }

    /// SIGKILL (no chance to finish the step), then reap.
    fn kill(mut self) {
        self.0.kill().unwrap();
        self.0.wait().unwrap();
    }
}

fn show_log(log: &Path) -> String {
    std::fs::read_to_string(log).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backfill_killed_at_random_points_resumes_without_gaps_or_duplicates() {
    let started = Instant::now();
    let chain = TestChain::spawn().unwrap();
    let db = TestDatabase::create().await.unwrap();
    let pool = db.pool().await.unwrap();
    let d = deploy_contracts(&chain).await;
    // 30 subscriptions renewed over 100 periods (3,000 Renewed events) in ~450 blocks: ~20 backfill commits of
    // 20 blocks, then the last 64 blocks (above anvil's finalized block) one commit each.
    let history = generate_events(&chain, &d, Workload::default()).await;
    assert_eq!(history.renewals, 3_000);
    let provider = chain.provider(0);
    let head = provider.get_block_number().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let deployment = save_deployment(&d, dir.path());
    eprintln!("history: {} blocks after {:.1?}", head - d.start_block, started.elapsed());
    // The node answers through a proxy that adds the latency of a remote RPC, so the backfill lasts seconds and
    // the kills land all over it rather than after it.
    let proxy = Proxy::start(&chain.endpoint(), Faults { latency: Duration::from_millis(10), ..Faults::default() }).await;

    let mut rng = Rng::new(0x5EED_0FC0_FFEE);
    let mut interrupted = 0;
    const KILLS: usize = 6;
    for round in 0..KILLS {
        let log = dir.path().join(format!("indexer-{round}.log"));
        let before = cursor(&pool, &d).await;
        let mut indexer = Indexer::backfill(db.url(), &deployment, &proxy.url, &log);
        // The first run dies at a random point of its start (connecting, migrating, the first commits); the others
        // make progress first, so every run moves the cursor and the kills land all over the backfill.
        if round > 0 {
            let deadline = Instant::now() + Duration::from_secs(30);
            while cursor(&pool, &d).await == before && indexer.exited().is_none() {
                assert!(Instant::now() < deadline, "run {round} made no progress:\n{}", show_log(&log));
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        let delay = rng.between(50, 400);
        tokio::time::sleep(Duration::from_millis(delay)).await;
        match indexer.exited() {
            Some(status) => {
                assert!(status.success(), "run {round} failed ({status}):\n{}", show_log(&log));
                eprintln!("run {round}: finished before its kill");
            }
            None => {
                indexer.kill();
                interrupted += 1;
            }
        }
        // Whatever the kill interrupted, the committed index is exactly the chain up to the cursor.
        let state = assert_index_matches_chain(&pool, &d, &provider).await;
        eprintln!("run {round}: killed after {delay} ms at cursor {:?} ({} logs)", state.cursor, state.logs);
        if round > 0 {
            assert!(state.cursor > before, "run {round} moved the cursor");
        }
    }
    assert!(interrupted >= KILLS - 1, "only {interrupted} of {KILLS} runs were still running when killed");
    let before_final = cursor(&pool, &d).await;
    assert!(before_final < Some(head), "the kills all landed before the end of the backfill");

    // The last run goes to the end and exits.
    let log = dir.path().join("indexer-final.log");
    let final_run = Instant::now();
    let mut indexer = Indexer::backfill(db.url(), &deployment, &proxy.url, &log);
    let deadline = Instant::now() + Duration::from_secs(45);
    let status = loop {
        if let Some(status) = indexer.exited() {
            break status;
        }
        assert!(Instant::now() < deadline, "the final backfill did not finish:\n{}", show_log(&log));
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(status.success(), "the final backfill failed ({status}):\n{}", show_log(&log));

    let state = assert_index_matches_chain(&pool, &d, &provider).await;
    assert_eq!(state.cursor, Some(head), "chain.deployments.cursor_number is the last block");
    let renewals: i64 = sqlx::query_scalar("SELECT count(*) FROM chain.renewals").fetch_one(&pool).await.unwrap();
    assert_eq!(renewals, 3_000);
    assert!(state.logs >= 3_030, "{} logs", state.logs);
    eprintln!(
        "done: {} logs through block {head}; the last run took {:.1?}, the test {:.1?}",
        state.logs,
        final_run.elapsed(),
        started.elapsed()
    );
}
