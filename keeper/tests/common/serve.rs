//! The real `subsettle-keeper serve` process under test, on a [`Market`](crate::market::Market)'s chain and
//! database, and a keep-alive client of its API.
#![allow(dead_code, unreachable_pub)]

use std::{
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use alloy::primitives::Address;
use serde_json::Value;

use crate::{
    common::{self, Daemon},
    market::{Market, TOKEN},
};

/// The binary with the market's database and deployment file, logging warnings only, with no RPC URL from the
/// environment.
pub fn keeper_command(market: &Market, deployment: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_subsettle-keeper"));
    command.env("DATABASE_URL", market.db.url()).env("SUBSETTLE_DEPLOYMENT", deployment).env("RUST_LOG", "warn").env_remove("SUBSETTLE_RPC_URL");
    command
}

/// A `serve` process under test and a client of its API.
pub struct Serve {
    _child: Daemon,
    pub url: String,
    pub http: reqwest::Client,
}

impl Serve {
    /// Starts `serve` reading funds through `rpc` every second (subscriptions every 100 ms), following the chain's
    /// clock, with `extra` flags, and waits for its API.
    pub async fn start(market: &Market, rpc: &str, dir: &Path, extra: &[&str]) -> Self {
        let deployment = common::save_deployment(&market.deployment, dir);
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let addr = format!("127.0.0.1:{port}");
        let split = market.splits[0].to_string();
        let endpoint = market.chain.endpoint();
        let child = Daemon::spawn(
            keeper_command(market, &deployment)
                .args(["serve", "--http-addr", &addr, "--default-split", &split, "--rpc-url", rpc, "--chain-clock", &endpoint])
                .args(["--funds-interval", "1s", "--refresh-interval-ms", "100"])
                .args(extra)
                .env("SUBSETTLE_API_TOKEN", TOKEN)
                .stdout(Stdio::null()),
        );
        let serve = Self { _child: child, url: format!("http://{addr}"), http: reqwest::Client::new() };
        let deadline = Instant::now() + Duration::from_secs(30);
        while serve.http.get(format!("{}/healthz", serve.url)).send().await.is_err() {
            assert!(Instant::now() < deadline, "the API did not come up");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        serve
    }

    /// POSTs a JSON array of events with the operator token: status and report.
    pub async fn usage(&self, events: &Value) -> (u16, Value) {
        let response = self.http.post(format!("{}/v1/usage", self.url)).bearer_auth(TOKEN).json(events).send().await.unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    /// The entitlement answer for `who`.
    pub async fn entitlement(&self, who: Address) -> Value {
        self.http.get(format!("{}/v1/entitlement/{who}", self.url)).send().await.unwrap().json().await.unwrap()
    }

    /// The `/metrics` text.
    pub async fn metrics(&self) -> String {
        self.http.get(format!("{}/metrics", self.url)).send().await.unwrap().text().await.unwrap()
    }

    /// Polls the entitlement answer of `who` until `ready` holds (the next funds reading), up to 20 s.
    pub async fn wait_for(&self, who: Address, what: &str, ready: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let answer = self.entitlement(who).await;
            if ready(&answer) {
                return answer;
            }
            assert!(Instant::now() < deadline, "waited 20 s for {what}: {answer}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
