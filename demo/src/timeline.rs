//! The local chain's clock, moved forward the way a month passes, and waiting for the daemons (separate
//! processes) to act on what is now due. Every wait says what it waits for and gives up with that message.

use std::{
    future::Future,
    io::{IsTerminal, Write},
    time::{Duration, Instant},
};

use alloy::providers::Provider;
use anyhow::{Context, bail};

use crate::wallets::Chain;

/// One day in seconds.
pub const DAY: u64 = 86_400;

/// Moves the chain's clock forward by `seconds` and mines a block at the new time; returns the new time.
pub async fn advance(chain: &Chain, seconds: u64) -> anyhow::Result<u64> {
    let _: serde_json::Value = chain.reader.raw_request("evm_increaseTime".into(), (seconds,)).await.context("evm_increaseTime")?;
    let _: serde_json::Value = chain.reader.raw_request("evm_mine".into(), ()).await.context("evm_mine")?;
    chain.now().await
}

/// A line on the terminal that is rewritten as a phase progresses (plain lines when not a terminal).
#[derive(Debug)]
pub struct Progress {
    live: bool,
}

impl Default for Progress {
    fn default() -> Self {
        Self { live: std::io::stderr().is_terminal() }
    }
}

impl Progress {
    /// Shows `text` in place of the previous update.
    pub fn update(&self, text: &str) {
        if self.live {
            eprint!("\r\x1b[K   {text}");
            let _ = std::io::stderr().flush();
        }
    }

    /// Ends the phase with `text` on a line of its own.
    pub fn done(&self, text: &str) {
        if self.live {
            eprint!("\r\x1b[K");
        }
        eprintln!("   {text}");
    }
}

/// Polls `check` until it answers `Ok(None)` (done); `Ok(Some(state))` is shown as progress. Fails after
/// `timeout` naming `what` and the last state seen.
pub async fn wait_for<F, Fut>(progress: &Progress, what: &str, timeout: Duration, mut check: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<Option<String>>>,
{
    let started = Instant::now();
    loop {
        let state = check().await.with_context(|| format!("waiting for {what}"))?;
        match state {
            None => {
                progress.done(&format!("{what}: done in {:.1} s", started.elapsed().as_secs_f64()));
                return Ok(());
            }
            Some(state) if started.elapsed() > timeout => {
                bail!("gave up after {} s waiting for {what}; last seen: {state} (see the daemons' logs)", timeout.as_secs())
            }
            Some(state) => progress.update(&format!("{what}: {state} ({} s)", started.elapsed().as_secs())),
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
