//! `serve`: the usage API and the period-close loop, with the chain's clock when asked to follow it.

use super::*;

pub(crate) async fn run_serve(args: ServeArgs) -> anyhow::Result<()> {
    let (settings, pool) = open(&args.settings).await?;
    require_default_split(&settings)?;
    if settings.api_token.is_none() {
        anyhow::bail!("api_token: set SUBSETTLE_API_TOKEN or --api-token-file; the API takes no writes without it");
    }
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
    if let Some(provider) = &chain_clock {
        follow_chain_clock(&keeper.clock, provider).await.context("--chain-clock: reading the latest block")?;
    }
    let (stop, stopped) = watch::channel(false);
    let server = tokio::spawn(api::serve(keeper.clone(), settings.http_addr, stopped.clone()));
    let background = tokio::spawn(background(keeper, settings.clone(), chain_clock, stopped));
    shutdown_signal().await;
    tracing::info!("shutting down");
    let _ = stop.send(true);
    server.await??;
    background.await?;
    Ok(())
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
