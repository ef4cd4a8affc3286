//! `subsettle-indexer`: see the crate documentation of `subsettle_indexer`.

use std::{io::IsTerminal, process::ExitCode, sync::Arc, time::Duration};

use anyhow::Context;
use clap::Parser;
use sqlx::{Connection, PgConnection, postgres::PgPoolOptions};
use subsettle_indexer::{
    IndexerError,
    backoff::Backoff,
    cli::{Cli, Command, LogFormat},
    config::{Followed, Settings},
    http,
    metrics::Metrics,
    source::{ChainSource, Retry},
    store::Store,
    sync::Indexer,
};
use tokio::sync::watch;
use tracing::{error, info, warn};

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let result = match cli.command {
        Command::Run(common) => async { run(Settings::resolve(&common.overrides())?).await }.await,
        Command::Backfill { to, common } => async { backfill(Settings::resolve(&common.overrides())?, to).await }.await,
        Command::Status(common) => async { status(Settings::resolve(&common.overrides())?).await }.await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // The error and its causes, never a backtrace: the text says what to fix.
            error!("{err:#}");
            ExitCode::FAILURE
        }
    }
}

/// Log lines on stderr, filtered by `RUST_LOG` (default `info`): text (coloured only on a terminal) or one JSON
/// object per line with `timestamp`, `level`, `message`, the event's fields and `target` at the top level.
fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let logs = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Text => logs.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => logs.json().flatten_event(true).init(),
    }
}

/// Connects to Postgres and applies the migrations of schema `chain`.
async fn open(settings: &Settings) -> Result<Store, IndexerError> {
    // One plain connection first: it fails at once with the reason (refused, unknown host, bad password), where
    // the pool would keep trying for its acquire timeout and then say only that it timed out.
    PgConnection::connect(&settings.database_url).await?.close().await?;
    let pool = PgPoolOptions::new()
        .max_connections(8)
        .acquire_timeout(Duration::from_secs(10))
        .connect(&settings.database_url)
        .await?;
    Store::open(pool).await
}

/// Whether `err` means Postgres cannot be reached now (not started yet, restarting, out of connections), which
/// waiting can fix, unlike a refused login, a missing database or a failed migration.
fn postgres_unreachable(err: &IndexerError) -> bool {
    let connecting = |err: &sqlx::Error| match err {
        sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut => true,
        // 57P03: the database system is starting up (or shutting down); 53300: too many connections.
        sqlx::Error::Database(db) => matches!(db.code().as_deref(), Some("57P03" | "53300")),
        _ => false,
    };
    match err {
        IndexerError::Database(err) => connecting(err),
        IndexerError::Migration(sqlx::migrate::MigrateError::Execute(err)) => connecting(err),
        _ => false,
    }
}

/// [`open`], retried with [`Backoff`] while Postgres cannot be reached, one warning per attempt.
async fn open_retrying(settings: &Settings, metrics: &Metrics) -> anyhow::Result<Store> {
    let mut backoff = Backoff::default();
    loop {
        match open(settings).await {
            Ok(store) => return Ok(store),
            Err(err) if postgres_unreachable(&err) => {
                let wait = backoff.failed();
                metrics.failed(&err);
                warn!(
                    attempt = backoff.failures(),
                    retry_in = %format!("{:.1}s", wait.as_secs_f64()),
                    error = %err,
                    "cannot reach Postgres (database_url); retrying"
                );
                tokio::time::sleep(wait).await;
            }
            Err(err) => return Err(err).context("connecting to Postgres (database_url)"),
        }
    }
}

fn indexer(settings: &Settings, followed: &Followed, store: &Store, metrics: &Metrics) -> anyhow::Result<Indexer> {
    let source = ChainSource::connect(
        &followed.rpc_url,
        vec![followed.deployment.subscriptions, followed.deployment.escrow],
        settings.max_range,
        Retry::default(),
        metrics.clone(),
    )?;
    Ok(Indexer::new(followed.deployment.clone(), source, store.clone(), settings.sync.clone(), metrics.clone()))
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    let term = async {
        if let Ok(mut signal) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            signal.recv().await;
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        () = term => {}
    }
}

/// The daemon: `/metrics` and `/healthz` first (so they answer, 503 with the reason, while Postgres or the node
/// cannot be reached), then Postgres (waited for), then one indexing loop per deployment, until SIGINT/SIGTERM
/// or an error no retry can fix.
async fn run(settings: Settings) -> anyhow::Result<()> {
    let metrics = Metrics::default();
    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    let mut signal = std::pin::pin!(shutdown_signal());

    let mut tasks = tokio::task::JoinSet::new();
    let addr = settings.metrics_addr;
    let stall_after = (settings.sync.poll_interval * 30).max(Duration::from_secs(60));
    let server = http::serve(addr, metrics.clone(), stall_after, stopped(stop_rx.clone()));
    tasks.spawn(async move { server.await.map_err(anyhow::Error::from) });
    info!(%addr, "serving /metrics and /healthz");

    let store = tokio::select! {
        () = &mut signal => None,
        store = open_retrying(&settings, &metrics) => Some(store?),
        // The metrics server only ends early on an error (its address is taken).
        Some(result) = tasks.join_next() => {
            result.context("metrics server panicked")??;
            None
        }
    };
    if let Some(store) = store {
        for followed in &settings.deployments {
            let indexer = Arc::new(indexer(&settings, followed, &store, &metrics)?);
            let stop = stopped(stop_rx.clone());
            info!(
                chain_id = followed.deployment.chain_id,
                subscriptions = %followed.deployment.subscriptions,
                rpc_url = %followed.rpc_url,
                "following"
            );
            tasks.spawn(async move { indexer.run(stop).await.map_err(anyhow::Error::from) });
        }
        tokio::select! {
            () = &mut signal => info!("signal received; finishing the current step"),
            Some(result) = tasks.join_next() => {
                let _ = stop_tx.send(true);
                result.context("indexer task panicked")??;
            }
        }
    } else {
        info!("signal received; stopping");
    }
    let _ = stop_tx.send(true);
    while let Some(result) = tasks.join_next().await {
        result.context("indexer task panicked")??;
    }
    Ok(())
}

/// Prints a live progress line on a terminal until the returned sender is dropped.
fn progress_line(metrics: &Metrics, started: std::time::Instant) -> Option<tokio::sync::oneshot::Sender<()>> {
    use std::io::Write;
    if !std::io::stderr().is_terminal() {
        return None;
    }
    let (done_tx, mut done_rx) = tokio::sync::oneshot::channel::<()>();
    let metrics = metrics.clone();
    tokio::spawn(async move {
        loop {
            let (indexed, head) = metrics.position();
            let events = metrics.events();
            let rate = events as f64 / started.elapsed().as_secs_f64().max(1e-3);
            eprint!("\rblock {indexed} / {head}  {events} events  {rate:.0} events/s   ");
            let _ = std::io::stderr().flush();
            tokio::select! {
                _ = &mut done_rx => { eprintln!(); return; }
                () = tokio::time::sleep(Duration::from_millis(250)) => {}
            }
        }
    });
    Some(done_tx)
}

async fn backfill(settings: Settings, to: Option<u64>) -> anyhow::Result<()> {
    let store = open(&settings).await.context("connecting to Postgres (database_url)")?;
    for followed in &settings.deployments {
        let metrics = Metrics::default();
        let started = std::time::Instant::now();
        let progress_bar = progress_line(&metrics, started);
        let progress = indexer(&settings, followed, &store, &metrics)?.backfill_to(to).await;
        drop(progress_bar);
        let progress = progress?;
        let secs = started.elapsed().as_secs_f64();
        println!(
            "chain {} {}: indexed through block {}, {} events in {:.2} s ({:.0} events/s)",
            followed.deployment.chain_id,
            followed.deployment.subscriptions,
            progress.indexed.map_or("-".to_string(), |b| b.to_string()),
            progress.events,
            secs,
            progress.events as f64 / secs.max(1e-9)
        );
    }
    Ok(())
}

async fn status(settings: Settings) -> anyhow::Result<()> {
    let store = open(&settings).await.context("connecting to Postgres (database_url)")?;
    let metrics = Metrics::default();
    for followed in &settings.deployments {
        let cursor = store.cursor(&followed.deployment).await?;
        let source = ChainSource::connect(&followed.rpc_url, vec![], settings.max_range, Retry::default(), metrics.clone())?;
        let head = source.head().await?;
        let finalized = source.finalized().await?;
        let events: i64 = sqlx::query_scalar("SELECT count(*) FROM chain.raw_logs WHERE chain_id = $1")
            .bind(i64::try_from(followed.deployment.chain_id)?)
            .fetch_one(store.pool())
            .await?;
        let indexed = cursor.as_ref().map(|c| c.number);
        println!(
            "chain {} subscriptions {} escrow {}\n  indexed through block {}  head {}  finalized {}  behind {}  events {}",
            followed.deployment.chain_id,
            followed.deployment.subscriptions,
            followed.deployment.escrow,
            indexed.map_or("- (not started)".to_string(), |n| n.to_string()),
            head,
            finalized.map_or("(no tag)".to_string(), |n| n.to_string()),
            indexed.map_or(head as i64 + 1 - followed.deployment.start_block as i64, |n| head as i64 - n),
            events
        );
    }
    Ok(())
}
