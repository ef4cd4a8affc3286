//! The `subsettle-keeper` binary as an operator runs it: `serve` (API up, events in, entitlement answered,
//! SIGTERM ends it cleanly) and `usage import` of NDJSON and CSV files (a re-run changes nothing).

#[path = "../../indexer/tests/common/mod.rs"]
mod common;
#[path = "common/market.rs"]
mod market;

use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use common::Daemon;
use market::{Market, TOKEN};
use serde_json::{Value, json};

fn keeper(market: &Market, deployment: &std::path::Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_subsettle-keeper"));
    command.env("DATABASE_URL", market.db.url()).env("SUBSETTLE_DEPLOYMENT", deployment).env("RUST_LOG", "warn");
    command.env("SUBSETTLE_CONFIRMATIONS", "1"); // anvil's `finalized` block is 64 blocks behind its head
    command
}

/// Sends SIGTERM and waits up to `secs` for the process to exit.
async fn stop_with_sigterm(child: &mut std::process::Child, what: &str, secs: u64) -> std::process::ExitStatus {
    let sent = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(sent.success());
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(Instant::now() < deadline, "{what} did not stop on SIGTERM");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn serve_takes_usage_answers_entitlement_and_stops_on_sigterm() {
    let market = Market::start(1, 0).await;
    let dir = tempfile::tempdir().unwrap();
    let deployment = common::save_deployment(&market.deployment, dir.path());
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let addr = format!("127.0.0.1:{port}");

    // Without a default split the daemon refuses to start, naming the setting.
    let refused = keeper(&market, &deployment).args(["serve", "--http-addr", &addr]).env("SUBSETTLE_API_TOKEN", TOKEN).output().unwrap();
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("default_split"));
    // A short token is refused without being printed.
    let short = keeper(&market, &deployment)
        .args(["serve", "--http-addr", &addr, "--default-split", &market.splits[0].to_string()])
        .env("SUBSETTLE_API_TOKEN", "hunter2")
        .output()
        .unwrap();
    assert!(!short.status.success());
    let stderr = String::from_utf8_lossy(&short.stderr);
    assert!(stderr.contains("api_token") && !stderr.contains("hunter2"), "{stderr}");

    let mut child = Daemon::spawn(keeper(&market, &deployment)
        .args(["serve", "--http-addr", &addr, "--default-split", &market.splits[0].to_string(), "--rpc-url", &market.chain.endpoint()])
        .env("SUBSETTLE_API_TOKEN", TOKEN)
        .stdout(Stdio::null()));
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while client.get(format!("http://{addr}/healthz")).send().await.is_err() {
        assert!(Instant::now() < deadline, "the API did not come up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let now = market.now();
    let batch = json!([market.event("d-1", 0, "image-gen", "images", "2", now)]);
    let report: Value = client
        .post(format!("http://{addr}/v1/usage"))
        .bearer_auth(TOKEN)
        .json(&batch)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(report["accepted"], 1, "{report}");
    let answer: Value =
        client.get(format!("http://{addr}/v1/entitlement/{}", market.subscribers[0].0)).send().await.unwrap().json().await.unwrap();
    assert_eq!(answer["entitled"], true, "{answer}");

    let status = stop_with_sigterm(&mut child, "serve", 10).await;
    assert!(status.success(), "{status}");
}

#[tokio::test]
async fn usage_import_streams_files_exactly_once() {
    let market = Market::start(2, 0).await;
    let dir = tempfile::tempdir().unwrap();
    let deployment = common::save_deployment(&market.deployment, dir.path());
    let now = market.now();
    let ndjson = dir.path().join("usage.ndjson");
    let lines = [
        market.event("f-1", 0, "llm-large", "input_tokens", "1000", now).to_string(),
        market.event("f-2", 1, "gpu-box", "gpu_seconds", "2.5", now).to_string(),
        market.event("f-3", 1, "no-such-model", "images", "1", now).to_string(),
        "{not json".to_owned(),
    ];
    std::fs::write(&ndjson, lines.join("\n") + "\n").unwrap();
    let csv = dir.path().join("usage.csv");
    let (a, b) = (market.subscribers[0].0, market.subscribers[1].0);
    std::fs::write(
        &csv,
        format!(
            "event_id,subscriber,model,meter,quantity,timestamp,properties\n\
             c-1,{a},image-gen,images,3,{now},\n\
             c-2,{b},image-gen,images,4,{now},\"{{\"\"region\"\":\"\"eu\"\"}}\"\n\
             c-3,{b},image-gen,images,5,{now},\"{{\n  \"\"note\"\": \"\"spans lines\"\"\n}}\"\n"
        ),
    )
    .unwrap();

    let run = |file: &std::path::Path| {
        let out = keeper(&market, &deployment).args(["usage", "import"]).arg(file).output().unwrap();
        let report: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        (out.status.code(), report, String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let (code, report, stderr) = run(&ndjson);
    assert_eq!(code, Some(2), "rejections make the exit code 2: {stderr}");
    assert_eq!((report["events"].as_u64(), report["accepted"].as_u64(), report["rejected"].as_u64()), (Some(4), Some(2), Some(2)));
    let problems = report["problems"].to_string();
    assert!(problems.contains("line 3") && problems.contains("unknown model") && problems.contains("line 4"), "{problems}");
    let (code, report, stderr) = run(&csv);
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(report["accepted"], 3, "a quoted cell may span lines: {report}");

    let before = market.stored().await;
    let (_, report, _) = run(&ndjson);
    assert_eq!((report["accepted"].as_u64(), report["duplicates"].as_u64()), (Some(0), Some(2)));
    let (code, report, _) = run(&csv);
    assert_eq!((code, report["duplicates"].as_u64()), (Some(0), Some(3)));
    assert_eq!(market.stored().await, before);
    assert_eq!(before.0, 5);
    let region: Value = sqlx::query_scalar("SELECT properties FROM keeper.usage_events WHERE event_id = 'c-2'").fetch_one(&market.pool).await.unwrap();
    assert_eq!(region, json!({"region": "eu"}));
    let note: Value = sqlx::query_scalar("SELECT properties FROM keeper.usage_events WHERE event_id = 'c-3'").fetch_one(&market.pool).await.unwrap();
    assert_eq!(note, json!({"note": "spans lines"}));
}

#[tokio::test]
async fn run_once_sends_due_renewals_under_the_lease_and_status_shows_them() {
    let market = Market::start(2, 0).await;
    let dir = tempfile::tempdir().unwrap();
    let deployment = common::save_deployment(&market.deployment, dir.path());
    let key = market.key_file(dir.path());
    market.advance(30 * 86_400 + 60).await;
    let split = market.splits[0].to_string();
    let run = |extra: &[&str]| {
        keeper(&market, &deployment)
            .args(["run", "--rpc-url", &market.chain.endpoint(), "--default-split", &split])
            .arg("--private-key-file")
            .arg(&key)
            .args(extra)
            .output()
            .unwrap()
    };
    let dry = run(&["--dry-run"]);
    assert!(dry.status.success(), "{}", String::from_utf8_lossy(&dry.stderr));
    let report: Value = serde_json::from_slice(&dry.stdout).unwrap();
    assert_eq!(report["actions"].as_array().unwrap().len(), 1, "{report}");
    let once = run(&["--once"]);
    assert!(once.status.success(), "{}", String::from_utf8_lossy(&once.stderr));
    let stderr = String::from_utf8_lossy(&once.stderr);
    assert!(!stderr.contains(&alloy::hex::encode(market.chain.signer(0).to_bytes())), "the key is never logged");

    // Postgres ends the exited process's session (and its lease) as soon as it sees the connection close.
    let mut status = Value::Null;
    for _ in 0..40 {
        let out = keeper(&market, &deployment).arg("status").output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        status = serde_json::from_slice(&out.stdout).unwrap();
        if status["lease_holder"].is_null() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(status["lease_holder"], Value::Null, "the lease ends with the process");
    assert_eq!(status["outbox"][0]["kind"], "renew", "{status}");
    assert_eq!(status["outbox"][0]["state"], "sent");

    // The next run confirms the renewal and sends nothing new once it is indexed.
    market.sync().await;
    // ... and logs one JSON object per line when asked to (for a log collector).
    let again = keeper(&market, &deployment)
        .env("RUST_LOG", "info")
        .args(["run", "--rpc-url", &market.chain.endpoint(), "--default-split", &split, "--once", "--log-format", "json"])
        .arg("--private-key-file")
        .arg(&key)
        .output()
        .unwrap();
    assert!(again.status.success(), "{}", String::from_utf8_lossy(&again.stderr));
    let logs = String::from_utf8_lossy(&again.stderr);
    assert!(logs.lines().count() >= 2, "{logs}");
    for line in logs.lines() {
        let entry: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(entry["level"].is_string() && entry["fields"]["message"].is_string(), "{line}");
    }
    let status: Value = serde_json::from_slice(&keeper(&market, &deployment).arg("status").output().unwrap().stdout).unwrap();
    assert_eq!(status["outbox"][0]["state"], "confirmed", "{status}");
    assert_eq!(status["outbox"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn kill_9_at_random_moments_ends_in_the_same_chain_state() {
    // A month with overage for one subscriber; the engine must renew both, charge 4 USDC, settle and pay out,
    // each exactly once, however often it is killed.
    let market = Market::start(2, 50_000_000).await;
    let dir = tempfile::tempdir().unwrap();
    let deployment = common::save_deployment(&market.deployment, dir.path());
    let key = market.key_file(dir.path());
    let now = market.now();
    let (status, _) = market.usage(&json!([market.event("k-1", 0, "image-gen", "images", "600", now)])).await;
    assert_eq!(status, 200);
    market.advance(30 * 86_400 + market::CUTOFF as u64 + 60).await;

    let split = market.splits[0].to_string();
    let settled = || async {
        let claims: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM chain.claims").fetch_one(&market.pool).await.unwrap();
        claims > 0
    };
    let mut rng = common::Rng::new(0x5eed);
    let mut kills = 0;
    for round in 0..60 {
        let mut child = Daemon::spawn(keeper(&market, &deployment)
            .args(["run", "--rpc-url", &market.chain.endpoint(), "--default-split", &split, "--interval", "1s", "--payout-threshold", "1"])
            .args(["--metrics-addr", "127.0.0.1:0"])
            .arg("--private-key-file")
            .arg(&key)
            .stdout(Stdio::null())
            .stderr(Stdio::null()));
        tokio::time::sleep(Duration::from_millis(rng.between(30, 700))).await;
        let _ = Command::new("kill").args(["-KILL", &child.id().to_string()]).status();
        let _ = child.wait();
        kills += 1;
        market.sync().await;
        if settled().await {
            // One more uninterrupted step to confirm what is left, then stop.
            let last = keeper(&market, &deployment)
                .args(["run", "--once", "--rpc-url", &market.chain.endpoint(), "--default-split", &split, "--payout-threshold", "1"])
                .arg("--private-key-file")
                .arg(&key)
                .output()
                .unwrap();
            assert!(last.status.success());
            market.sync().await;
            break;
        }
        assert!(round < 59, "the engine made no progress in 60 restarts");
    }
    assert!(kills >= 2, "the engine was killed {kills} times");
    let pool = market.pool.clone();
    let one = |sql: &'static str| {
        let pool = pool.clone();
        async move { sqlx::query_scalar::<_, String>(sql).fetch_one(&pool).await.unwrap() }
    };
    assert_eq!(one("SELECT COUNT(*)::TEXT FROM chain.renewals").await, "2");
    assert_eq!(one("SELECT COALESCE(SUM(amount), 0)::TEXT FROM chain.usage_charges").await, "4000000");
    assert_eq!(one("SELECT COUNT(*)::TEXT FROM chain.settlements").await, "1");
    assert_eq!(one("SELECT total::TEXT FROM chain.settlements").await, "162000000");
    assert_eq!(one("SELECT COALESCE(SUM(amount), 0)::TEXT FROM chain.claims WHERE succeeded").await, "162000000");
    let duplicates: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM (SELECT nonce FROM keeper.outbox WHERE nonce IS NOT NULL GROUP BY nonce HAVING COUNT(*) > 1) d",
    )
    .fetch_one(&market.pool)
    .await
    .unwrap();
    assert_eq!(duplicates, 0);
}

#[tokio::test]
async fn run_serves_metrics_and_health_and_stops_on_sigterm() {
    let market = Market::start(1, 0).await;
    let dir = tempfile::tempdir().unwrap();
    let deployment = common::save_deployment(&market.deployment, dir.path());
    let key = market.key_file(dir.path());
    market.advance(30 * 86_400 + 60).await;
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let addr = format!("127.0.0.1:{port}");
    let mut child = Daemon::spawn(keeper(&market, &deployment)
        .args(["run", "--rpc-url", &market.chain.endpoint(), "--default-split", &market.splits[0].to_string()])
        .args(["--interval", "1s", "--metrics-addr", &addr])
        .arg("--private-key-file")
        .arg(&key)
        .stdout(Stdio::null())
        .stderr(Stdio::null()));
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(response) = client.get(format!("http://{addr}/healthz")).send().await {
            if response.status().is_success() {
                break;
            }
        }
        assert!(Instant::now() < deadline, "no healthy step");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let text = client.get(format!("http://{addr}/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(text.contains("subsettle_keeper_actions{kind=\"renew\""), "{text}");
    assert!(text.contains("subsettle_keeper_last_step_age_seconds"), "{text}");
    for name in ["subsettle_keeper_step_seconds_count", "subsettle_keeper_settlement_lag_seconds", "subsettle_keeper_unsettled_base_units"] {
        assert!(text.contains(name), "{name} missing: {text}");
    }
    assert!(!text.contains("subsettle_keeper_step_seconds_count 0"), "the step was recorded: {text}");
    let status = stop_with_sigterm(&mut child, "run", 15).await;
    assert!(status.success(), "{status}");
}

#[tokio::test]
async fn admin_commands_validate_send_through_the_outbox_and_print_events() {
    let market = Market::start(1, 0).await;
    let dir = tempfile::tempdir().unwrap();
    let deployment = common::save_deployment(&market.deployment, dir.path());
    let key = market.key_file(dir.path());
    let admin = |args: &[&str]| {
        let out = keeper(&market, &deployment)
            .args(["admin", "--rpc-url", &market.chain.endpoint()])
            .arg("--private-key-file")
            .arg(&key)
            .args(args)
            .output()
            .unwrap();
        (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let (ok, stdout, stderr) = admin(&["create-plan", "--price", "9.99", "--period", "30d", "--grace", "3d"]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("PlanCreated") && stdout.contains("9990000"), "{stdout}");
    let (ok, _, stderr) = admin(&["create-plan", "--price", "9.9999999", "--period", "30d", "--grace", "3d"]);
    assert!(!ok && stderr.contains("price") && stderr.contains("more than 6 decimals"), "{stderr}");
    let (ok, _, stderr) = admin(&["create-plan", "--price", "5", "--period", "30d", "--grace", "30d"]);
    assert!(!ok && stderr.contains("grace"), "{stderr}");

    let creator = market.chain.address(5).to_string();
    let platform = market.chain.address(8).to_string();
    let (ok, _, stderr) = admin(&["create-split", "--recipient", &format!("{creator}:7000"), "--recipient", &format!("{platform}:2000")]);
    assert!(!ok && stderr.contains("bps: they sum to 9000"), "{stderr}");
    let (ok, stdout, stderr) = admin(&["create-split", "--recipient", &format!("{creator}:8000"), "--recipient", &format!("{platform}:2000")]);
    assert!(ok && stdout.contains("SplitVersionAdded"), "{stdout}{stderr}");

    // A call the contract refuses is reported with its error name; nothing is sent.
    let (ok, stdout, _) = admin(&["set-plan-active", "--plan", "99", "--active", "false"]);
    assert!(!ok && stdout.contains("UnknownPlan"), "{stdout}");

    let until = (market.now() + 86_400).to_string();
    let (ok, stdout, stderr) = admin(&["hold", "--recipient", &creator, "--until", &until, "--reason", "dispute-42"]);
    assert!(ok && stdout.contains("HoldPlaced"), "{stdout}{stderr}");
    let (ok, stdout, _) = admin(&["release", "--recipient", &creator]);
    assert!(ok && stdout.contains("HoldReleased"), "{stdout}");
    let (ok, stdout, _) = admin(&["pause"]);
    assert!(ok && stdout.contains("ChargingPausedSet"), "{stdout}");
    let (ok, _, _) = admin(&["unpause"]);
    assert!(ok);

    let states: Vec<(String, String)> =
        sqlx::query_as("SELECT action_key, state FROM keeper.outbox ORDER BY planned_at").fetch_all(&market.pool).await.unwrap();
    assert_eq!(states.len(), 7, "{states:?}");
    assert!(states.iter().all(|(key, _)| key.starts_with("admin:")));
    assert_eq!(states.iter().filter(|(_, state)| state == "failed").count(), 1);
}

#[tokio::test]
async fn two_keepers_only_one_sends_and_the_other_takes_over_when_it_dies() {
    let market = Market::start(2, 0).await;
    let dir = tempfile::tempdir().unwrap();
    let deployment = common::save_deployment(&market.deployment, dir.path());
    let key = market.key_file(dir.path());
    let split = market.splits[0].to_string();
    let spawn = |log: &str| {
        let log = std::fs::File::create(dir.path().join(log)).unwrap();
        Daemon::spawn(keeper(&market, &deployment)
            .env("RUST_LOG", "info")
            .args(["run", "--rpc-url", &market.chain.endpoint(), "--default-split", &split, "--interval", "1s"])
            .args(["--metrics-addr", "127.0.0.1:0"])
            .arg("--private-key-file")
            .arg(&key)
            .stdout(Stdio::null())
            .stderr(log))
    };
    let read = |log: &str| std::fs::read_to_string(dir.path().join(log)).unwrap_or_default();
    let wait_for = |what: &'static str, check: &dyn Fn() -> bool| {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !check() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    let mut first = spawn("first.log");
    wait_for("the first keeper to take the lease", &|| read("first.log").contains("holding the sender lease"));
    let mut second = spawn("second.log");
    wait_for("the second keeper to wait", &|| read("second.log").contains("another keeper holds the sender lease"));

    // Work appears: only the lease holder sends it.
    market.advance(30 * 86_400 + 60).await;
    let pool = market.pool.clone();
    let sent_by_outbox = || async {
        sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM keeper.outbox WHERE state <> 'planned'").fetch_one(&pool).await.unwrap()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while sent_by_outbox().await == 0 {
        assert!(Instant::now() < deadline, "nothing was sent");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!read("second.log").contains("signed"), "the waiting keeper sent nothing");

    // The holder dies; the other takes over and carries on.
    let _ = Command::new("kill").args(["-KILL", &first.id().to_string()]).status();
    let _ = first.wait();
    wait_for("the second keeper to take over", &|| read("second.log").contains("holding the sender lease"));
    market.sync().await;
    market.advance(30 * 86_400).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let renewals: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM keeper.outbox WHERE kind = 'renew' AND state = 'confirmed'")
            .fetch_one(&market.pool)
            .await
            .unwrap();
        if renewals >= 2 && read("second.log").contains("signed") {
            break;
        }
        assert!(Instant::now() < deadline, "the second keeper did not renew: {}", read("second.log"));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let _ = Command::new("kill").args(["-TERM", &second.id().to_string()]).status();
    let _ = second.wait();
    market.sync().await;
    let per_subscription: Vec<i64> =
        sqlx::query_scalar("SELECT COUNT(*) FROM chain.renewals GROUP BY subscription_id ORDER BY subscription_id").fetch_all(&market.pool).await.unwrap();
    assert_eq!(per_subscription, [2, 2], "two periods renewed, each once");
}
