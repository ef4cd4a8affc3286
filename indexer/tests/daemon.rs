//! `subsettle-indexer run` as an operator runs it: a separate process that follows new blocks, serves /healthz
//! and /metrics, logs text or JSON lines, waits for a node (or a Postgres) that is down at start or drops out
//! later, stops at once on a node of another chain, and exits cleanly on SIGTERM.

mod common;
#[path = "common/outage.rs"]
mod outage;

use std::{
    path::Path,
    process::{Command, ExitStatus, Stdio},
    time::{Duration, Instant},
};

use alloy::{
    primitives::{Address, U256},
    transports::http::reqwest,
};
use subsettle_abi::{Deployment, Subscriptions, usdc::FiatTokenV2_2};
use subsettle_testkit::{TestChain, TestDatabase};
use common::{DAY, Daemon, deploy_contracts, u};
use outage::Outage;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

async fn wait_for(what: &str, mut check: impl AsyncFnMut() -> bool) {
    wait_up_to(Duration::from_secs(30), what, async || check().await).await;
}

async fn wait_up_to(within: Duration, what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `subsettle-indexer run` with 100 ms polls, its metrics on `metrics_port`, stderr into `log`, and
/// `RUST_BACKTRACE=1` (so that an error printed with its backtrace would show one).
fn indexer_run(deployment: &Path, rpc_url: &str, database_url: &str, metrics_port: u16, log: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_subsettle-indexer"));
    command
        .args(["run", "--poll-interval-ms", "100", "--metrics-addr", &format!("127.0.0.1:{metrics_port}")])
        .arg("--deployment")
        .arg(deployment)
        .args(["--rpc-url", rpc_url, "--database-url", database_url])
        .env_remove("SUBSETTLE_INDEXER_CONFIG")
        .env_remove("SUBSETTLE_LOG_FORMAT")
        .env("RUST_LOG", "info")
        .env("RUST_BACKTRACE", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap());
    command
}

fn read_log(log: &Path) -> String {
    std::fs::read_to_string(log).unwrap()
}

/// Prints the daemon's log when `TEST_LOG` is set.
fn show_log(log: &Path) {
    if std::env::var_os("TEST_LOG").is_some() {
        eprintln!("--- {}\n{}", log.display(), read_log(log));
    }
}

/// Lines of `log` that contain `needle`.
fn lines_with(log: &Path, needle: &str) -> Vec<String> {
    read_log(log).lines().filter(|line| line.contains(needle)).map(str::to_owned).collect()
}

/// Every line of a text log is one event (it starts with its RFC 3339 timestamp) and nothing is a backtrace.
fn assert_one_line_per_event(log: &Path) {
    let text = read_log(log);
    assert!(!text.to_lowercase().contains("backtrace"), "a backtrace in the log:\n{text}");
    for line in text.lines() {
        let bytes = line.as_bytes();
        let stamped = bytes.len() > 20 && bytes[..4].iter().all(u8::is_ascii_digit) && bytes[10] == b'T';
        assert!(stamped, "not a log event (a backtrace frame, a wrapped message?): {line:?}\nlog:\n{text}");
    }
}

/// Fails the test if the daemon has exited.
fn assert_alive(daemon: &mut Daemon, log: &Path) {
    if let Some(exit) = daemon.0.try_wait().unwrap() {
        panic!("the daemon gave up ({exit}):\n{}", read_log(log));
    }
}

/// The `attempt=N` numbers of `lines`.
fn attempts(lines: &[String]) -> Vec<u32> {
    lines
        .iter()
        .map(|line| {
            let rest = line.split("attempt=").nth(1).unwrap_or_else(|| panic!("no attempt number in {line:?}"));
            rest.split(|c: char| !c.is_ascii_digit()).next().unwrap().parse().unwrap()
        })
        .collect()
}

async fn wait_exit(daemon: &mut Daemon, within: Duration) -> ExitStatus {
    let deadline = Instant::now() + within;
    loop {
        if let Some(exit) = daemon.0.try_wait().unwrap() {
            return exit;
        }
        assert!(Instant::now() < deadline, "the daemon did not exit within {within:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn sigterm_and_wait(daemon: &mut Daemon) -> ExitStatus {
    let status = Command::new("kill").args(["-TERM", &daemon.0.id().to_string()]).status().unwrap();
    assert!(status.success());
    wait_exit(daemon, Duration::from_secs(10)).await
}

async fn count(pool: &sqlx::PgPool, sql: &str) -> i64 {
    sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(sql.to_owned())).fetch_one(pool).await.unwrap_or(-1)
}

#[tokio::test]
async fn the_daemon_follows_new_blocks_serves_health_logs_json_and_stops_on_sigterm() {
    let chain = TestChain::spawn().unwrap();
    let db = TestDatabase::create().await.unwrap();
    let d = deploy_contracts(&chain).await;
    let dir = tempfile::tempdir().unwrap();
    let deployment_file = dir.path().join("deployment.json");
    d.save(&deployment_file).unwrap();
    let metrics_port = free_port();

    let log = dir.path().join("indexer.log");
    // JSON log lines, chosen through the environment.
    let mut command = indexer_run(&deployment_file, &chain.endpoint(), db.url(), metrics_port, &log);
    let mut daemon = Daemon::spawn(command.env("SUBSETTLE_LOG_FORMAT", "json"));

    // A plan and a subscription created while the daemon runs show up in the views.
    let operator = chain.provider(0);
    let subs = Subscriptions::new(d.subscriptions, &operator);
    confirm!(subs.createPlan(u(79_000_000), u(30 * DAY), u(3 * DAY)));
    confirm!(FiatTokenV2_2::new(d.token, &operator).mint(chain.address(1), u(1_000_000_000)));
    confirm!(FiatTokenV2_2::new(d.token, chain.provider(1)).approve(d.subscriptions, U256::MAX));
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
    let exit = sigterm_and_wait(&mut daemon).await;
    show_log(&log);
    assert!(exit.success(), "exit status {exit}");

    // Every line of the log is a JSON object with a level and a message.
    let text = read_log(&log);
    let mut messages = Vec::new();
    for line in text.lines() {
        let event: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line:?}\nlog:\n{text}"));
        let level = event["level"].as_str().unwrap_or_else(|| panic!("no level in {line}"));
        assert!(["TRACE", "DEBUG", "INFO", "WARN", "ERROR"].contains(&level), "level {level:?} in {line}");
        let message = event["message"].as_str().unwrap_or_else(|| panic!("no message in {line}"));
        assert!(event["timestamp"].is_string(), "no timestamp in {line}");
        messages.push((level.to_owned(), message.to_owned()));
    }
    for expected in ["serving /metrics and /healthz", "following", "the node answers; indexing", "shutting down"] {
        assert!(
            messages.iter().any(|(level, message)| level == "INFO" && message == expected),
            "no INFO line {expected:?} in\n{text}"
        );
    }
    let following = text.lines().find(|line| line.contains("\"following\"")).unwrap();
    let following: serde_json::Value = serde_json::from_str(following).unwrap();
    assert_eq!(following["chain_id"], 31337, "the event's fields are top-level keys: {following}");
}

#[tokio::test]
async fn a_node_down_at_start_or_dropping_out_is_waited_for_with_one_line_per_attempt() {
    let chain = TestChain::spawn().unwrap();
    let db = TestDatabase::create().await.unwrap();
    let pool = db.pool().await.unwrap();
    let d = deploy_contracts(&chain).await;
    let operator = chain.provider(0);
    let subs = Subscriptions::new(d.subscriptions, &operator);
    confirm!(subs.createPlan(u(79_000_000), u(30 * DAY), u(3 * DAY)));
    let dir = tempfile::tempdir().unwrap();
    let deployment_file = dir.path().join("deployment.json");
    d.save(&deployment_file).unwrap();

    // The indexer's RPC port: nothing listens there yet (the node "is not started").
    let mut node = Outage::new(Outage::free_port(), format!("127.0.0.1:{}", chain.port()).parse().unwrap());
    let rpc_url = format!("http://127.0.0.1:{}", node.port());
    let metrics_port = free_port();
    let log = dir.path().join("indexer.log");
    let mut command = indexer_run(&deployment_file, &rpc_url, db.url(), metrics_port, &log);
    let mut daemon = Daemon::spawn(command.args(["--log-format", "text"]));

    // It keeps trying, one line per attempt, with growing waits (0.5 s, 1 s, 2 s, ...).
    wait_up_to(Duration::from_secs(15), "four attempts at reaching the node", async || {
        assert_alive(&mut daemon, &log);
        lines_with(&log, "cannot start").len() >= 4
    })
    .await;
    let tries = lines_with(&log, "cannot start");
    let numbers = attempts(&tries);
    assert_eq!(numbers, (1..=numbers.len() as u32).collect::<Vec<_>>(), "one line per attempt:\n{}", tries.join("\n"));
    let explained = |line: &String| line.contains("Connection refused") && line.contains("retry_in=");
    assert!(tries.iter().all(explained), "each line says why and when next:\n{}", tries.join("\n"));
    let health = reqwest::get(format!("http://127.0.0.1:{metrics_port}/healthz")).await.unwrap();
    assert_eq!(health.status(), 503);
    assert!(health.text().await.unwrap().contains("Connection refused"), "/healthz says why");

    // The node comes up on that port: the indexer connects and indexes.
    node.up().await;
    let pool_ref = &pool;
    wait_for("the plan to be indexed once the node answers", async || {
        count(pool_ref, "SELECT count(*) FROM chain.plans").await == 1
    })
    .await;
    assert_eq!(lines_with(&log, "the node answers; indexing").len(), 1);

    // The node drops out mid-run (its connections cut, its port closed) while the chain moves on.
    node.down().await;
    confirm!(FiatTokenV2_2::new(d.token, &operator).mint(chain.address(1), u(1_000_000_000)));
    confirm!(FiatTokenV2_2::new(d.token, chain.provider(1)).approve(d.subscriptions, U256::MAX));
    confirm!(Subscriptions::new(d.subscriptions, chain.provider(1)).subscribe(u(1), u(0)));
    wait_up_to(Duration::from_secs(30), "two failed steps", async || {
        assert_alive(&mut daemon, &log);
        lines_with(&log, "indexing step failed").len() >= 2
    })
    .await;
    node.up().await;
    wait_for("the subscription to be indexed once the node is back", async || {
        count(pool_ref, "SELECT count(*) FROM chain.subscriptions WHERE status = 'active'").await == 1
    })
    .await;
    let failed = lines_with(&log, "indexing step failed");
    let numbers = attempts(&failed);
    assert_eq!(numbers, (1..=numbers.len() as u32).collect::<Vec<_>>(), "one line per attempt:\n{}", failed.join("\n"));
    assert_eq!(lines_with(&log, "indexing again").len(), 1, "{}", read_log(&log));

    let exit = sigterm_and_wait(&mut daemon).await;
    show_log(&log);
    assert!(exit.success(), "exit status {exit}");
    assert_one_line_per_event(&log);
}

#[tokio::test]
async fn postgres_down_at_start_is_waited_for() {
    let chain = TestChain::spawn().unwrap();
    let db = TestDatabase::create().await.unwrap();
    let pool = db.pool().await.unwrap();
    let d = deploy_contracts(&chain).await;
    confirm!(Subscriptions::new(d.subscriptions, chain.provider(0)).createPlan(u(79_000_000), u(30 * DAY), u(3 * DAY)));
    let dir = tempfile::tempdir().unwrap();
    let deployment_file = dir.path().join("deployment.json");
    d.save(&deployment_file).unwrap();

    // The indexer's database URL points at a port where Postgres is "not started yet".
    let mut url = url::Url::parse(db.url()).unwrap();
    let server = format!("{}:{}", url.host_str().unwrap(), url.port().unwrap());
    let upstream = tokio::net::lookup_host(&server).await.unwrap().next().unwrap();
    let mut postgres = Outage::new(Outage::free_port(), upstream);
    url.set_host(Some("127.0.0.1")).unwrap();
    url.set_port(Some(postgres.port())).unwrap();
    let log = dir.path().join("indexer.log");
    let mut daemon =
        Daemon::spawn(&mut indexer_run(&deployment_file, &chain.endpoint(), url.as_str(), free_port(), &log));

    wait_up_to(Duration::from_secs(30), "three attempts at reaching Postgres", async || {
        assert_alive(&mut daemon, &log);
        lines_with(&log, "cannot reach Postgres").len() >= 3
    })
    .await;
    let tries = lines_with(&log, "cannot reach Postgres");
    let numbers = attempts(&tries);
    assert_eq!(numbers, (1..=numbers.len() as u32).collect::<Vec<_>>(), "one line per attempt:\n{}", tries.join("\n"));
    assert!(tries.iter().all(|line| line.contains("Connection refused")), "each line says why:\n{}", tries.join("\n"));
    postgres.up().await;
    let pool_ref = &pool;
    wait_for("the plan to be indexed once Postgres answers", async || {
        count(pool_ref, "SELECT count(*) FROM chain.plans").await == 1
    })
    .await;
    let exit = sigterm_and_wait(&mut daemon).await;
    show_log(&log);
    assert!(exit.success(), "exit status {exit}");
    assert_one_line_per_event(&log);
}

#[tokio::test]
async fn a_node_of_another_chain_stops_the_daemon_at_once_with_the_reason() {
    let chain = TestChain::spawn_with(&["--chain-id", "999"]).unwrap();
    let db = TestDatabase::create().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let deployment_file = dir.path().join("deployment.json");
    let d = Deployment {
        chain_id: 31337,
        token: Address::repeat_byte(1),
        subscriptions: Address::repeat_byte(2),
        escrow: Address::repeat_byte(3),
        start_block: 0,
    };
    d.save(&deployment_file).unwrap();
    let log = dir.path().join("indexer.log");
    let started = Instant::now();
    let mut command = indexer_run(&deployment_file, &chain.endpoint(), db.url(), free_port(), &log);
    let mut daemon = Daemon::spawn(command.args(["--log-format", "json"]));
    let exit = wait_exit(&mut daemon, Duration::from_secs(10)).await;
    assert!(!exit.success(), "a node of another chain must stop the daemon");
    show_log(&log);
    let took = started.elapsed();
    assert!(took < Duration::from_secs(5), "it took {took:?} to stop");

    let text = read_log(&log);
    assert!(!text.to_lowercase().contains("backtrace"), "{text}");
    let errors: Vec<serde_json::Value> = text
        .lines()
        .map(|line| {
            serde_json::from_str::<serde_json::Value>(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line:?}"))
        })
        .filter(|event| event["level"] == "ERROR")
        .collect();
    assert_eq!(errors.len(), 1, "one error line:\n{text}");
    let message = errors[0]["message"].as_str().unwrap();
    assert!(message.contains("serves chain 999") && message.contains("on chain 31337"), "{message}");
    assert!(text.lines().all(|line| !line.contains("retrying")), "no retry of what a retry cannot fix:\n{text}");
}

#[tokio::test]
async fn a_daemon_waiting_for_its_node_stops_on_sigterm() {
    let db = TestDatabase::create().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let deployment_file = dir.path().join("deployment.json");
    let d = Deployment {
        chain_id: 31337,
        token: Address::repeat_byte(1),
        subscriptions: Address::repeat_byte(2),
        escrow: Address::repeat_byte(3),
        start_block: 0,
    };
    d.save(&deployment_file).unwrap();
    let log = dir.path().join("indexer.log");
    let rpc_url = format!("http://127.0.0.1:{}", Outage::free_port());
    let mut daemon = Daemon::spawn(&mut indexer_run(&deployment_file, &rpc_url, db.url(), free_port(), &log));
    wait_up_to(Duration::from_secs(15), "two attempts at reaching the node", async || {
        assert_alive(&mut daemon, &log);
        lines_with(&log, "cannot start").len() >= 2
    })
    .await;
    let started = Instant::now();
    let exit = sigterm_and_wait(&mut daemon).await;
    show_log(&log);
    assert!(exit.success(), "exit status {exit}");
    assert!(started.elapsed() < Duration::from_secs(2), "stopping took {:?}", started.elapsed());
    assert_eq!(lines_with(&log, "shutting down").len(), 1, "{}", read_log(&log));
    assert_one_line_per_event(&log);
}
