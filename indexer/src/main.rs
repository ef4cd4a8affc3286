//! `subsettle-indexer`: see the crate documentation of `subsettle_indexer`.

use std::{sync::Arc, time::Duration};

use anyhow::Context;
use clap::Parser;
use sqlx::postgres::PgPoolOptions;
use subsettle_indexer::{
    cli::{Cli, Command},
    config::{Followed, Settings},
    http,
    metrics::Metrics,
    source::{ChainSource, Retry},
    store::Store,
    sync::Indexer,
};
use tokio::sync::watch;
use tracing::info;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Run(common) => run(Settings::resolve(&common.overrides())?).await,
        Command::Backfill { to, common } => backfill(Settings::resolve(&common.overrides())?, to).await,
        Command::Status(common) => status(Settings::resolve(&common.overrides())?).await,
    }
}

async fn open(settings: &Settings) -> anyhow::Result<Store> {
    let pool = PgPoolOptions::new()
        .max_connections(8)
        .acquire_timeout(Duration::from_secs(10))
        .connect(&settings.database_url)
        .await
        .context("connecting to Postgres (database_url)")?;
    Ok(Store::open(pool).await?)
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

async fn run(settings: Settings) -> anyhow::Result<()> {
    let store = open(&settings).await?;
    let metrics = Metrics::default();
    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };

    let mut tasks = tokio::task::JoinSet::new();
    if let Some(addr) = settings.metrics_addr {
        let stall_after = (settings.sync.poll_interval * 30).max(Duration::from_secs(60));
        let server = http::serve(addr, metrics.clone(), stall_after, stopped(stop_rx.clone()));
        tasks.spawn(async move { server.await.map_err(anyhow::Error::from) });
        info!(%addr, "serving /metrics and /healthz");
    }
    for followed in &settings.deployments {
        let indexer = Arc::new(indexer(&settings, followed, &store, &metrics)?);
        let stop = stopped(stop_rx.clone());
        info!(chain_id = followed.deployment.chain_id, subscriptions = %followed.deployment.subscriptions, "following");
        tasks.spawn(async move { indexer.run(stop).await.map_err(anyhow::Error::from) });
    }

    tokio::select! {
        () = shutdown_signal() => {
            info!("signal received; finishing the current step");
            let _ = stop_tx.send(true);
        }
        Some(result) = tasks.join_next() => {
            let _ = stop_tx.send(true);
            result.context("indexer task panicked")??;
        }
    }
    while let Some(result) = tasks.join_next().await {
        result.context("indexer task panicked")??;
    }
    Ok(())
}

/// Prints a live progress line on a terminal until the returned sender is dropped.
fn progress_line(metrics: &Metrics, started: std::time::Instant) -> Option<tokio::sync::oneshot::Sender<()>> {
    use std::io::{IsTerminal, Write};
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
    let store = open(&settings).await?;
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
    let store = open(&settings).await?;
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
