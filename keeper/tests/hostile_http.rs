//! The real `subsettle-keeper serve`, spawned as a process, under hostile input and a hostile network: values
//! Postgres cannot store, bad times and quantities, wrong media types, unauthenticated and half-sent bodies,
//! idle and slow connections, too many connections, and Postgres going away and coming back.

#[path = "../../indexer/tests/common/mod.rs"]
mod common;
#[path = "common/market.rs"]
mod market;

use std::{
    process::{Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use common::Daemon;
use market::{Market, TOKEN};
use serde_json::{Value, json};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::watch,
};

/// A `serve` process on a free port.
struct Serve {
    addr: String,
    _process: Daemon,
    pid: u32,
}

impl Serve {
    /// Starts `serve` for `market` with `extra` flags, its Postgres at `database_url`, and waits for `/healthz`.
    async fn start(market: &Market, dir: &std::path::Path, database_url: &str, extra: &[&str]) -> Self {
        let deployment = common::save_deployment(&market.deployment, dir);
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let addr = format!("127.0.0.1:{port}");
        let split = market.splits[0].to_string();
        let process = Daemon::spawn(
            Command::new(env!("CARGO_BIN_EXE_subsettle-keeper"))
                .args(["serve", "--http-addr", &addr, "--default-split", &split, "--rpc-url", &market.chain.endpoint()])
                .args(extra)
                .env("DATABASE_URL", database_url)
                .env("SUBSETTLE_DEPLOYMENT", &deployment)
                .env("SUBSETTLE_API_TOKEN", TOKEN)
                .env("RUST_LOG", std::env::var("TEST_LOG").map_or("error", |_| "info"))
                .stdout(Stdio::null()),
        );
        let pid = process.id();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok((200, _)) = request(&addr, "GET /healthz HTTP/1.1\r\nHost: keeper\r\nConnection: close\r\n\r\n").await {
                break;
            }
            assert!(Instant::now() < deadline, "serve did not come up");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Self { addr, _process: process, pid }
    }

    /// POSTs `body` with a content type and the operator token, on a connection of its own.
    async fn post(&self, path: &str, content_type: &str, body: &str) -> (u16, Value) {
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: keeper\r\nConnection: close\r\nAuthorization: Bearer {TOKEN}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        request(&self.addr, &(head + body)).await.expect("request")
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        request(&self.addr, &format!("GET {path} HTTP/1.1\r\nHost: keeper\r\nConnection: close\r\n\r\n")).await.expect("request")
    }

    /// One figure from `/metrics`: the line starting with `series` (name and labels).
    async fn metric(&self, series: &str) -> f64 {
        let (status, text) = self.get("/metrics").await;
        assert_eq!(status, 200);
        let text = text.as_str().unwrap().to_owned();
        let line = text.lines().find(|line| line.starts_with(series) && line[series.len()..].starts_with(' '));
        line.unwrap_or_else(|| panic!("no {series} in:\n{text}")).rsplit(' ').next().unwrap().parse().unwrap()
    }

    /// The process's resident memory, bytes.
    fn rss(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid)).unwrap();
        let kb: u64 = status.lines().find_map(|l| l.strip_prefix("VmRSS:")).unwrap().trim().trim_end_matches(" kB").trim().parse().unwrap();
        kb * 1024
    }
}

/// Sends raw bytes on a new connection and reads the answer until the server closes it (at most 10 s): status
/// and body (JSON when it parses, else a string).
async fn request(addr: &str, raw: &str) -> std::io::Result<(u16, Value)> {
    let mut stream = TcpStream::connect(addr).await?;
    stream.write_all(raw.as_bytes()).await?;
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no complete answer within 10 s"))??;
    Ok(parse_answer(&answer))
}

fn parse_answer(answer: &[u8]) -> (u16, Value) {
    let text = String::from_utf8_lossy(answer);
    let status = text.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map_or("", |(_, body)| body);
    (status, serde_json::from_str(body).unwrap_or_else(|_| Value::String(body.to_owned())))
}

/// Reads from `stream` until `limit`: `Some(bytes)` when the server answered or closed (empty: closed without
/// answering), `None` when nothing came.
async fn read_within(stream: &mut TcpStream, limit: Duration) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; 65_536];
    match tokio::time::timeout(limit, stream.read(&mut buf)).await {
        Ok(Ok(n)) => Some(buf[..n].to_vec()),
        Ok(Err(_reset)) => Some(Vec::new()),
        Err(_) => None,
    }
}

fn statuses(report: &Value) -> Vec<String> {
    report["results"].as_array().unwrap_or_else(|| panic!("{report}")).iter().map(|r| r["status"].as_str().unwrap().to_owned()).collect()
}

#[tokio::test]
async fn values_postgres_refuses_bad_times_and_quantities_and_wrong_media_types_are_refused_one_by_one() {
    let market = Market::start(1, 0).await;
    let dir = tempfile::tempdir().unwrap();
    let serve = Serve::start(&market, dir.path(), market.db.url(), &[]).await;
    let now = market.now();
    let good = |id: &str| market.event(id, 0, "image-gen", "images", "1", now);

    // One event holding U+0000 among good ones: it alone is rejected, naming the field; the others are stored.
    let mut nul = good("h-nul");
    nul["properties"] = json!({ "region": "eu", "foo": "a\u{0}b" });
    let mut nul_key = good("h-nul-key");
    nul_key["properties"] = json!({ "a\u{0}": 1 });
    let batch = json!([good("h-1"), nul, good("h-2"), nul_key]).to_string();
    let (status, report) = serve.post("/v1/usage", "application/json", &batch).await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(statuses(&report), ["accepted", "rejected", "accepted", "rejected"], "{report}");
    assert_eq!(report["results"][1]["field"], "properties.foo", "{report}");
    assert_eq!(report["results"][1]["event_id"], "h-nul");
    assert!(report["results"][1]["reason"].as_str().unwrap().contains("U+0000"), "{report}");
    assert_eq!(report["results"][3]["field"], "properties[\"a\\u0000\"]", "{report}");
    // The batch resent: the good events are duplicates, the bad ones rejected again, and nothing is refused whole.
    let (status, report) = serve.post("/v1/usage", "application/json", &batch).await;
    assert_eq!((status, statuses(&report)), (200, vec!["duplicate".into(), "rejected".into(), "duplicate".into(), "rejected".into()]));
    // Fixed, the event is taken.
    let mut fixed = good("h-nul");
    fixed["properties"] = json!({ "region": "eu", "foo": "ab" });
    let (status, report) = serve.post("/v1/usage", "application/json", &json!([fixed]).to_string()).await;
    assert_eq!((status, statuses(&report)), (200, vec!["accepted".to_owned()]), "{report}");
    let stored: Value = sqlx::query_scalar("SELECT properties FROM keeper.usage_events WHERE event_id = 'h-nul'").fetch_one(&market.pool).await.unwrap();
    assert_eq!(stored, json!({ "region": "eu", "foo": "ab" }));

    // Values the JSON parser cannot read, in one event of an array: that event alone, naming the field.
    let subscriber = market.subscribers[0].0.to_string();
    let raw = format!(
        r#"[{}, {{"event_id": "h-big", "subscriber": "{subscriber}", "model": "image-gen", "meter": "images", "quantity": 1, "timestamp": {now}, "properties": {{"n": 1e400000}}}},
            {{"event_id": "h-sur", "subscriber": "{subscriber}", "model": "image-gen", "meter": "images", "quantity": 1, "timestamp": {now}, "properties": {{"s": "\ud800"}}}}, {}]"#,
        good("h-3"),
        good("h-4")
    );
    let (status, report) = serve.post("/v1/usage", "application/json", &raw).await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(statuses(&report), ["accepted", "rejected", "rejected", "accepted"], "{report}");
    assert_eq!((report["results"][1]["field"].as_str(), report["results"][1]["event_id"].as_str()), (Some("properties.n"), Some("h-big")));
    assert_eq!((report["results"][2]["field"].as_str(), report["results"][2]["event_id"].as_str()), (Some("properties.s"), Some("h-sur")));

    // Times: an offset out of range is refused, not moved 100 hours; a valid one is taken.
    let at = |id: &str, text: &str| {
        let mut event = good(id);
        event["timestamp"] = json!(text);
        event
    };
    let iso = chrono::DateTime::from_timestamp(now, 0).unwrap().format("%Y-%m-%dT%H:%M:%S").to_string();
    let batch = json!([at("t-1", &format!("{iso}+99:99")), at("t-2", &format!("{iso}+24:00")), at("t-3", &format!("{iso}+00:00")), at("t-3", &format!("{iso}Z"))]);
    let (status, report) = serve.post("/v1/usage", "application/json", &batch.to_string()).await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(statuses(&report), ["rejected", "rejected", "accepted", "duplicate"], "the same instant is the same payload: {report}");
    for i in [0, 1] {
        assert_eq!(report["results"][i]["field"], "timestamp");
        assert!(report["results"][i]["reason"].as_str().unwrap().contains("is not an RFC 3339 time"), "{report}");
    }

    // Quantities are written one way: `+5`, ` 5`, `5.`, `.5` and `1_000` are refused; `5` is taken.
    let quantity = |id: &str, text: &str| market.event(id, 0, "image-gen", "images", text, now);
    let batch = json!([quantity("q-1", "+5"), quantity("q-2", " 5"), quantity("q-3", "5."), quantity("q-4", ".5"), quantity("q-5", "1_000"), quantity("q-6", "5")]);
    let (status, report) = serve.post("/v1/usage", "application/json", &batch.to_string()).await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(statuses(&report), ["rejected", "rejected", "rejected", "rejected", "rejected", "accepted"], "{report}");
    for i in 0..5 {
        assert_eq!(report["results"][i]["field"], "quantity");
        assert!(report["results"][i]["reason"].as_str().unwrap().contains("is not a decimal number"), "{report}");
    }
    // ... and so are subscription ids: `+7` is not a digit string.
    let mut plus_id = good("q-7");
    plus_id["subscription_id"] = json!(format!("+{}", market.subscribers[0].1));
    let (_, report) = serve.post("/v1/usage", "application/json", &json!([plus_id]).to_string()).await;
    assert_eq!((statuses(&report), report["results"][0]["field"].as_str()), (vec!["rejected".to_owned()], Some("subscription_id")), "{report}");

    // Media types are matched exactly (parameters allowed); a near miss is 415 and nothing is read.
    let one = json!([good("m-1")]).to_string();
    for refused in ["application/jsonfoo", "application/json-seq", "application/x-ndjsonx", "application/json; charset=latin1", "text/plain"] {
        let (status, body) = serve.post("/v1/usage", refused, &one).await;
        assert_eq!((status, body["code"].as_str()), (415, Some("unsupported_media_type")), "{refused}: {body}");
    }
    let (status, report) = serve.post("/v1/usage", "Application/JSON; charset=UTF-8", &one).await;
    assert_eq!((status, statuses(&report)), (200, vec!["accepted".to_owned()]), "{report}");
    let (status, body) = serve.post("/v1/prices", "application/jsonfoo", "{}").await;
    assert_eq!((status, body["code"].as_str()), (415, Some("unsupported_media_type")), "{body}");

    // The catalog's routes: text Postgres refuses is 422 naming the field (never 503), in a body or a path.
    let model = json!({ "model_id": "nul-1", "display_name": "a\u{0}b", "split_id": market.splits[0], "meters": [{ "meter": "calls" }] });
    let (status, body) = serve.post("/v1/models", "application/json", &model.to_string()).await;
    assert_eq!((status, body["code"].as_str()), (422, Some("invalid")), "{body}");
    assert!(body["message"].as_str().unwrap().starts_with("display_name: contains the character U+0000"), "{body}");
    let price = json!({ "model_id": "image-gen\u{0}", "meter": "images", "unit_price": "0.05", "effective_at": now + 60 });
    let (status, body) = serve.post("/v1/prices", "application/json", &price.to_string()).await;
    assert_eq!(status, 422, "{body}");
    assert!(body["message"].as_str().unwrap().starts_with("model_id: "), "{body}");
    let allowance = json!({ "plan_id": market.plan, "effective_at": now + 60, "units": { "images\u{0}": "5" } });
    let (status, body) = serve.post("/v1/allowances", "application/json", &allowance.to_string()).await;
    assert_eq!(status, 422, "{body}");
    assert!(body["message"].as_str().unwrap().starts_with("units[\"images\\u0000\"]: the key contains"), "{body}");
    let (status, body) = serve.post("/v1/models/image%00gen/meters", "application/json", &json!({ "meter": "calls" }).to_string()).await;
    assert_eq!((status, body["code"].as_str()), (422, Some("invalid")), "{body}");
    assert!(body["message"].as_str().unwrap().starts_with("model_id: unknown model"), "{body}");
    let (status, body) = serve.get("/v1/models/image%00gen/splits").await;
    assert_eq!((status, body["code"].as_str()), (404, Some("not_found")), "{body}");

    assert_eq!(serve.metric("subsettle_keeper_db_unavailable_total{cause=\"error\"}").await, 0.0, "no request failed in the database");
    assert!(serve.metric("subsettle_keeper_ingested_events_total{outcome=\"rejected\"}").await >= 13.0);
    assert_eq!(serve.metric("subsettle_keeper_http_responses_total{route=\"/v1/usage\",method=\"POST\",status=\"415\"}").await, 5.0);
}

#[tokio::test]
async fn unauthenticated_slow_idle_and_surplus_connections_hold_no_memory_and_are_cut_off() {
    let market = Market::start(1, 0).await;
    let dir = tempfile::tempdir().unwrap();
    let flags = ["--header-timeout", "1s", "--body-timeout", "2s", "--idle-timeout", "4s", "--request-timeout", "5s", "--max-body-bytes", "16777216"];
    let serve = Serve::start(&market, dir.path(), market.db.url(), &flags).await;

    // 64 clients announce an 8 MiB body without the token and send 1 MiB of it: each is answered 401 at once,
    // without the server reading the body (its memory does not grow by what they sent).
    let rss_before = serve.rss();
    let mut clients = Vec::new();
    for _ in 0..64 {
        let addr = serve.addr.clone();
        clients.push(tokio::spawn(async move {
            let mut stream = TcpStream::connect(&addr).await.unwrap();
            let head = format!("POST /v1/usage HTTP/1.1\r\nHost: keeper\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n", 8 << 20);
            stream.write_all(head.as_bytes()).await.unwrap();
            let started = Instant::now();
            let (mut reader, mut writer) = stream.into_split();
            // The body goes out while the answer is awaited; a server that does not read it stops taking it.
            let sender = tokio::spawn(async move {
                let chunk = vec![b' '; 64 << 10];
                for _ in 0..16 {
                    if writer.write_all(&chunk).await.is_err() {
                        break;
                    }
                }
                writer
            });
            let mut answer = vec![0u8; 4096];
            let n = tokio::time::timeout(Duration::from_secs(3), reader.read(&mut answer)).await.expect("answered within 3 s").unwrap_or(0);
            let took = started.elapsed();
            sender.abort();
            (parse_answer(&answer[..n]).0, took)
        }));
    }
    for client in clients {
        let (status, took) = client.await.unwrap();
        assert_eq!(status, 401, "an unauthenticated body is refused before it is read");
        assert!(took < Duration::from_secs(2), "answered in {took:?}");
    }
    let grown = serve.rss().saturating_sub(rss_before);
    assert!(grown < 24 << 20, "serve grew by {grown} bytes for 64 refused bodies of 1 MiB each");
    assert_eq!(serve.metric("subsettle_keeper_http_body_bytes_in_flight").await, 0.0);

    // Headers that stop half-way: the connection is closed after the header timeout (1 s).
    let mut half = TcpStream::connect(&serve.addr).await.unwrap();
    half.write_all(b"POST /v1/usage HTTP/1.1\r\nHost: keeper\r\nContent-Ty").await.unwrap();
    let started = Instant::now();
    let answer = read_within(&mut half, Duration::from_secs(4)).await.expect("the half-sent request was not closed within 4 s");
    assert!(answer.is_empty() || parse_answer(&answer).0 >= 400, "{}", String::from_utf8_lossy(&answer));
    assert!(started.elapsed() >= Duration::from_millis(800), "closed after {:?}, before the header timeout", started.elapsed());

    // A body that stops half-way (with the token): 408 after the body timeout (2 s).
    let mut slow = TcpStream::connect(&serve.addr).await.unwrap();
    let head = format!("POST /v1/usage HTTP/1.1\r\nHost: keeper\r\nAuthorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n[{{\"event");
    slow.write_all(head.as_bytes()).await.unwrap();
    let started = Instant::now();
    let answer = read_within(&mut slow, Duration::from_secs(5)).await.expect("the half-sent body was not answered within 5 s");
    let (status, body) = parse_answer(&answer);
    assert_eq!((status, body["code"].as_str()), (408, Some("body_timeout")), "{}", String::from_utf8_lossy(&answer));
    assert!(started.elapsed() >= Duration::from_millis(1_800), "answered after {:?}", started.elapsed());

    // An idle connection is not cut by the header timeout but by the idle timeout (4 s), also between requests.
    let mut idle = TcpStream::connect(&serve.addr).await.unwrap();
    let started = Instant::now();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: keeper\r\n\r\n").await.unwrap();
    let answer = read_within(&mut idle, Duration::from_secs(2)).await.unwrap();
    assert_eq!(parse_answer(&answer).0, 200);
    tokio::time::sleep(Duration::from_millis(2_000)).await;
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: keeper\r\n\r\n").await.unwrap();
    let answer = read_within(&mut idle, Duration::from_secs(2)).await.unwrap();
    assert_eq!(parse_answer(&answer).0, 200, "a keep-alive connection idle for 2 s (over the header timeout) is still served");
    let rest = read_within(&mut idle, Duration::from_secs(6)).await.expect("the idle connection was not closed");
    assert!(rest.is_empty());
    assert!(started.elapsed() >= Duration::from_secs(5), "closed after {:?}, before the idle timeout", started.elapsed());
    assert!(serve.metric("subsettle_keeper_http_timeouts_total{part=\"header\"}").await >= 1.0);
    assert!(serve.metric("subsettle_keeper_http_timeouts_total{part=\"body\"}").await >= 1.0);

    // A client that asks (pipelined requests) and never reads the answers is cut off once the answers have
    // stalled for the idle timeout.
    let reader = TcpStream::connect(&serve.addr).await.unwrap();
    let (_unread, mut writer) = reader.into_split();
    let asking = tokio::spawn(async move {
        let ask = b"GET /metrics HTTP/1.1\r\nHost: keeper\r\n\r\n".repeat(20_000);
        let _ = writer.write_all(&ask).await;
        writer
    });
    let deadline = Instant::now() + Duration::from_secs(12);
    while serve.metric("subsettle_keeper_http_timeouts_total{part=\"send\"}").await < 1.0 {
        assert!(Instant::now() < deadline, "a client that does not read its answers is still connected");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    asking.abort();

    // At most --max-connections (2) are served at once: a third waits until one closes.
    let limited = Serve::start(&market, dir.path(), market.db.url(), &["--max-connections", "2"]).await;
    let first = TcpStream::connect(&limited.addr).await.unwrap();
    let _second = TcpStream::connect(&limited.addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut third = TcpStream::connect(&limited.addr).await.unwrap();
    third.write_all(b"GET /healthz HTTP/1.1\r\nHost: keeper\r\nConnection: close\r\n\r\n").await.unwrap();
    assert!(read_within(&mut third, Duration::from_millis(1_500)).await.is_none(), "a third connection was served beyond the limit of 2");
    drop(first);
    let answer = read_within(&mut third, Duration::from_secs(3)).await.expect("served once a connection closed");
    assert_eq!(parse_answer(&answer).0, 200, "{}", String::from_utf8_lossy(&answer));
}

/// What a [`PgProxy`] does with Postgres connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Link {
    /// Passes them through.
    Up,
    /// Postgres stopped: open sessions are cut and new connections refused (nothing listens on the port).
    Stopped,
    /// Postgres unreachable: open sessions are cut, new connections are accepted and never answered.
    Unreachable,
}

/// A TCP proxy in front of the test's Postgres, so that one test can take "its" database away without stopping
/// the cluster the other tests of this file share.
struct PgProxy {
    port: u16,
    link: watch::Sender<Link>,
}

impl PgProxy {
    async fn start(upstream: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (link, mut changes) = watch::channel(Link::Up);
        tokio::spawn(async move {
            let mut listener = Some(listener);
            loop {
                let state = *changes.borrow_and_update();
                match (state, &listener) {
                    (Link::Stopped, Some(_)) => listener = None,
                    (Link::Up | Link::Unreachable, None) => listener = Some(TcpListener::bind(("127.0.0.1", port)).await.unwrap()),
                    _ => {}
                }
                let Some(open) = &listener else {
                    if changes.changed().await.is_err() {
                        return;
                    }
                    continue;
                };
                tokio::select! {
                    accepted = open.accept() => {
                        let Ok((client, _)) = accepted else { continue };
                        tokio::spawn(Self::carry(client, upstream, state, changes.clone()));
                    }
                    changed = changes.changed() => if changed.is_err() { return },
                }
            }
        });
        Self { port, link }
    }

    /// Carries one connection while the link stays as it was when the connection came.
    async fn carry(mut client: TcpStream, upstream: u16, state: Link, mut changes: watch::Receiver<Link>) {
        if state == Link::Up {
            let Ok(mut server) = TcpStream::connect(("127.0.0.1", upstream)).await else { return };
            tokio::select! {
                _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                _ = changes.wait_for(|link| *link != Link::Up) => {}
            }
        } else {
            // Held silently until the link changes.
            let _ = changes.changed().await;
        }
    }

    fn set(&self, link: Link) {
        self.link.send_replace(link);
    }
}

#[tokio::test]
async fn with_postgres_gone_ingest_answers_503_within_two_seconds_and_readyz_says_why() {
    let market = Market::start(1, 0).await;
    let Some(pg_port) = market.db.server_port() else {
        eprintln!("DATABASE_URL points at an outside server: this test needs the harness's own cluster; skipped");
        return;
    };
    let proxy = Arc::new(PgProxy::start(pg_port).await);
    let through_proxy = market.db.url().replace(&format!(":{pg_port}/"), &format!(":{}/", proxy.port));
    let dir = tempfile::tempdir().unwrap();
    let serve = Serve::start(&market, dir.path(), &through_proxy, &["--db-timeout", "2s"]).await;
    let now = market.now();
    let event = |id: &str| json!([market.event(id, 0, "image-gen", "images", "1", now)]).to_string();
    let (status, report) = serve.post("/v1/usage", "application/json", &event("d-1")).await;
    assert_eq!((status, statuses(&report)), (200, vec!["accepted".to_owned()]), "{report}");
    let (status, ready) = serve.get("/readyz").await;
    assert_eq!((status, ready["status"].as_str()), (200, Some("ready")), "{ready}");

    for outage in [Link::Stopped, Link::Unreachable] {
        proxy.set(outage);
        tokio::time::sleep(Duration::from_millis(100)).await;
        let started = Instant::now();
        let (status, body) = serve.post("/v1/usage", "application/json", &event("d-2")).await;
        let took = started.elapsed();
        eprintln!("{outage:?}: ingest answered {status} after {took:?}");
        assert_eq!((status, body["code"].as_str()), (503, Some("unavailable")), "{outage:?}: {body}");
        assert!(took < Duration::from_millis(2_500), "{outage:?}: 503 after {took:?}");
        let started = Instant::now();
        let (status, ready) = serve.get("/readyz").await;
        assert_eq!((status, ready["code"].as_str()), (503, Some("not_ready")), "{outage:?}: {ready}");
        assert!(ready["message"].as_str().unwrap().starts_with("database: "), "{ready}");
        assert!(started.elapsed() < Duration::from_millis(2_500), "{outage:?}: /readyz took {:?}", started.elapsed());
        let (status, _) = serve.get("/healthz").await;
        assert_eq!(status, 200, "liveness does not depend on the database");
        let (status, _) = serve.get(&format!("/v1/entitlement/{}", market.subscribers[0].0)).await;
        assert_eq!(status, 200, "entitlement is answered from memory");
    }

    // Postgres back: ingest and readiness recover without a restart, and the event sent during the outage is
    // taken on its resend.
    proxy.set(Link::Up);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (status, report) = serve.post("/v1/usage", "application/json", &event("d-2")).await;
        if status == 200 {
            assert_eq!(statuses(&report), ["accepted"], "{report}");
            break;
        }
        assert!(Instant::now() < deadline, "ingest did not recover: {status} {report}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (status, _) = serve.get("/readyz").await;
    assert_eq!(status, 200);
    assert!(serve.metric("subsettle_keeper_db_unavailable_total{cause=\"acquire_timeout\"}").await >= 1.0);
    assert!(serve.metric("subsettle_keeper_http_responses_total{route=\"/v1/usage\",method=\"POST\",status=\"503\"}").await >= 2.0);
    assert_eq!(market.stored().await.0, 2);
}
