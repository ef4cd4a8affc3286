//! `serve`: the usage API, the period-close loop and the wallets' funds, with the chain's clock when asked to
//! follow it.

use alloy::providers::DynProvider;
use subsettle_keeper::metering::{
    api::{HttpGuard, HttpLimits},
    funds::{FundsPolicy, FundsReader},
};

use super::*;

/// A provider of the deployment's chain from `--rpc-url` (else `rpc_url` in the config), refusing a node of
/// another chain.
pub(crate) async fn connect_chain(settings: &Settings, flag: Option<&str>, command: &str) -> anyhow::Result<DynProvider> {
    use alloy::providers::{Provider, ProviderBuilder};
    let url = flag
        .map(str::to_owned)
        .or_else(|| settings.rpc_url.clone())
        .with_context(|| format!("rpc_url: missing; {command} reads the chain: give --rpc-url, SUBSETTLE_RPC_URL or rpc_url in the config file"))?;
    let parsed = url.parse().map_err(|_| anyhow::anyhow!("rpc_url: `{url}` is not a URL"))?;
    let provider = ProviderBuilder::new().connect_http(parsed).erased();
    let chain_id = provider.get_chain_id().await.context("rpc_url: eth_chainId")?;
    anyhow::ensure!(
        chain_id == settings.deployment.chain_id,
        "rpc_url: the node is chain {chain_id}, the deployment is on chain {}",
        settings.deployment.chain_id
    );
    Ok(provider)
}

/// `SplitEscrow.splitChangeDelay()`: fixed at deployment, the notice a change of a model's split mapping gives.
pub(crate) async fn read_split_notice(provider: &DynProvider, deployment: &subsettle_abi::Deployment) -> anyhow::Result<u64> {
    let delay = subsettle_abi::SplitEscrow::new(deployment.escrow, provider).splitChangeDelay().call().await.context("SplitEscrow.splitChangeDelay()")?;
    u64::try_from(delay).context("splitChangeDelay does not fit 64 bits")
}

/// The server's limits from the flags, checked against each other and the largest body.
fn http_limits(settings: &Settings) -> anyhow::Result<HttpLimits> {
    let server = settings.server.as_ref().context("server settings")?;
    let limits = HttpLimits {
        header_timeout: Duration::from_secs(server.header_timeout),
        body_timeout: Duration::from_secs(server.body_timeout),
        idle_timeout: Duration::from_secs(server.idle_timeout),
        request_timeout: Duration::from_secs(server.request_timeout),
        max_connections: server.max_connections,
        max_body_memory: server.max_body_memory,
    };
    limits.check(settings.max_body_bytes)?;
    Ok(limits)
}

/// `serve`'s pool: a request waits at most `--db-timeout` for a connection, so that with Postgres down or
/// unreachable it is answered 503 at once rather than after sqlx's default of 30 s.
async fn serve_pool(settings: &Settings, db_timeout: u64) -> anyhow::Result<sqlx::PgPool> {
    anyhow::ensure!(db_timeout >= 1, "db_timeout: must be at least 1s");
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(8)
        .acquire_timeout(Duration::from_secs(db_timeout))
        .connect(&settings.database_url)
        .await
        .context("connecting to Postgres")?;
    store::migrate(&pool).await.context("migrating schema keeper")?;
    store::check_one_deployment(&pool, &settings.deployment).await?;
    Ok(pool)
}

pub(crate) async fn run_serve(args: ServeArgs) -> anyhow::Result<()> {
    let settings = Settings::resolve(&args.settings)?;
    require_default_split(&settings)?;
    if settings.api_token.is_none() {
        anyhow::bail!("api_token: set SUBSETTLE_API_TOKEN or --api-token-file; the API takes no writes without it");
    }
    let limits = http_limits(&settings)?;
    let open_files = match api::raise_open_files_limit() {
        Ok((before, after)) => {
            if after > before {
                tracing::info!(before, after, "raised the open files limit (soft) to the hard limit");
            }
            after
        }
        Err(error) => {
            tracing::warn!(%error, "could not raise the open files limit");
            0
        }
    };
    // Room for the listener, Postgres, the RPC client and the process's own files besides the connections.
    if open_files > 0 && (limits.max_connections as u64).saturating_add(128) > open_files {
        tracing::warn!(
            max_connections = limits.max_connections,
            open_files,
            "--max-connections is close to the open files limit: accepts may fail once it is reached; raise the hard limit (ulimit -Hn, systemd LimitNOFILE=) or lower --max-connections"
        );
    }
    let pool = serve_pool(&settings, settings.server.as_ref().map_or(2, |s| s.db_timeout)).await?;
    let provider = connect_chain(&settings, args.rpc_url.as_deref(), "serve").await?;
    let split_notice = read_split_notice(&provider, &settings.deployment).await?;
    let chain_clock = match &args.chain_clock {
        Some(url) => {
            use alloy::providers::Provider;
            let parsed = url.parse().map_err(|_| anyhow::anyhow!("--chain-clock: `{url}` is not a URL"))?;
            Some(alloy::providers::ProviderBuilder::new().connect_http(parsed).erased())
        }
        None => None,
    };
    let clock = if chain_clock.is_some() { Clock::chain() } else { Clock::System };
    let keeper = Keeper::load(pool, api_settings(&settings), clock).await?;
    let _ = keeper.split_notice.set(split_notice);
    let _ = keeper.chain.set((provider.clone(), settings.deployment.clone()));
    keeper.enable_funds(FundsPolicy { interval_ms: i64::try_from(settings.funds_interval).unwrap_or(600).saturating_mul(1000) });
    if let Some(provider) = &chain_clock {
        follow_chain_clock(&keeper.clock, provider).await.context("--chain-clock: reading the latest block")?;
    }
    // The first reading before the API opens, so that billable usage is judged from the first request.
    let reader = FundsReader::new(provider, &settings.deployment);
    match keeper.refresh_funds(&reader, false).await {
        Ok(wallets) => tracing::info!(wallets, "read the funds of the wallets with a live subscription"),
        Err(error) => tracing::warn!(%error, "could not read the wallets' funds; billable usage is refused until they are read"),
    }
    let (stop, stopped) = watch::channel(false);
    let guard = HttpGuard::new(limits, settings.max_body_bytes);
    let server = tokio::spawn(api::serve(keeper.clone(), settings.http_addr, guard, stopped.clone()));
    let funds = tokio::spawn(funds_loop(keeper.clone(), reader, settings.clone(), stopped.clone()));
    let background = tokio::spawn(background(keeper, settings.clone(), chain_clock, stopped));
    shutdown_signal().await;
    tracing::info!("shutting down");
    let _ = stop.send(true);
    server.await??;
    background.await?;
    funds.await?;
    Ok(())
}

/// Reads every live wallet's funds every `funds_interval`, and a new subscriber's at the next refresh interval
/// (so that it does not wait a whole funds interval for its first billable request); reloads the open periods'
/// usage every `usage_reload_interval` (never when 0), so that replicas agree on what is owed.
async fn funds_loop(keeper: Arc<Keeper>, reader: FundsReader, settings: Settings, mut stopped: watch::Receiver<bool>) {
    let start = tokio::time::Instant::now();
    let every = |secs: u64| {
        let mut interval = tokio::time::interval_at(start + Duration::from_secs(secs), Duration::from_secs(secs));
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        interval
    };
    let mut all = every(settings.funds_interval);
    let mut reload = every(settings.usage_reload_interval.max(1));
    let mut unread = tokio::time::interval(Duration::from_millis(settings.refresh_interval_ms));
    unread.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stopped.changed() => return,
            _ = reload.tick(), if settings.usage_reload_interval > 0 => {
                if let Err(error) = keeper.reload_open_usage().await {
                    tracing::warn!(%error, "reloading the open periods' usage failed; retrying next interval");
                }
            }
            _ = all.tick() => {
                if let Err(error) = keeper.refresh_funds(&reader, false).await {
                    tracing::warn!(%error, "reading the wallets' funds failed; keeping the previous readings until they are too old");
                }
            }
            _ = unread.tick() => {
                // Failures are retried at the next tick; a lasting one is reported by the full reading above.
                if let Err(error) = keeper.refresh_funds(&reader, true).await {
                    tracing::debug!(%error, "reading new wallets' funds failed; retrying");
                }
            }
        }
    }
}

/// Moves a chain clock to the chain's latest block.
async fn follow_chain_clock(clock: &Clock, provider: &alloy::providers::DynProvider) -> anyhow::Result<()> {
    use alloy::providers::Provider;
    let block = provider.get_block_by_number(alloy::eips::BlockNumberOrTag::Latest).await?.context("the node has no latest block")?;
    clock.observe_block(block.header.timestamp);
    Ok(())
}

/// The refresh and period-close loop; each step finishes before shutdown is honoured.
async fn background(keeper: Arc<Keeper>, settings: Settings, chain_clock: Option<alloy::providers::DynProvider>, mut stopped: watch::Receiver<bool>) {
    let mut refresh = tokio::time::interval(Duration::from_millis(settings.refresh_interval_ms));
    let mut close = tokio::time::interval(Duration::from_secs(settings.close_interval));
    let options = close_options(&settings);
    loop {
        tokio::select! {
            _ = stopped.changed() => return,
            _ = refresh.tick() => {
                if let Some(provider) = &chain_clock
                    && let Err(error) = follow_chain_clock(&keeper.clock, provider).await
                {
                    tracing::warn!(%error, "--chain-clock: could not read the latest block; keeping the previous time");
                }
                if let Err(error) = keeper.refresh().await {
                    tracing::warn!(%error, "refresh failed; serving the previous view");
                }
            }
            _ = close.tick() => {
                let catalog = keeper.catalog.read().expect("catalog lock").clone();
                match close::close_due_periods(&keeper.pool, &catalog, &options, keeper.clock.now_secs()).await {
                    Ok(report) if report.periods > 0 => tracing::info!(?report, "closed periods"),
                    Ok(_) => {}
                    Err(error) => tracing::error!(%error, "period close failed; retrying next interval"),
                }
            }
        }
    }
}
