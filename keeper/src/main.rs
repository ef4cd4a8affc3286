//! `subsettle-keeper`: see the crate documentation of `subsettle_keeper`.

use std::{sync::Arc, time::Duration};

use anyhow::Context;
use clap::Parser;
use rust_decimal::Decimal;
use subsettle_keeper::{
    api::{self, ApiSettings, Keeper},
    catalog::{self, NewAllowance, NewMeter, NewModel, NewPrice},
    cli::{AdminArgs, AdminCommand, ChainArgs, CloseArgs, Cli, Command, ServeArgs, DeployArgs, ModelCommand, PriceCommand, RunArgs, StatementArgs, UsageCommand},
    clock::Clock,
    close::{self, CloseOptions},
    config::{Overrides, Settings},
    deploy::{DeployPlan, deploy},
    import::{self, Format},
    signer::OperatorKey,
    statement::{self, Scope, Statement},
    store,
};
use tokio::sync::watch;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Deploy(args) => run_deploy(args).await,
        Command::Serve(args) => run_serve(args).await,
        Command::Model(command) => run_model(command).await,
        Command::Price(command) => run_price(command).await,
        Command::Usage(UsageCommand::Import { settings, file, format }) => run_import(settings, file, format).await,
        Command::Close(args) => run_close(args).await,
        Command::Statement(args) => run_statement(args).await,
        Command::Run(args) => run_engine(args).await,
        Command::Admin(args) => run_admin(args).await,
        Command::Status { settings } => run_status(settings).await,
        Command::VerifyStatement { settings, file } => run_verify(settings, file).await,
        Command::Reconcile(args) => run_reconcile(args).await,
    }
}

async fn run_deploy(args: DeployArgs) -> anyhow::Result<()> {
    let key = OperatorKey::load(args.private_key_file.as_deref())?;
    let plan = DeployPlan {
        rpc_url: args.rpc_url,
        existing_token: args.token,
        keeper: args.keeper,
        charge_window_secs: args.charge_window,
        split_change_delay_secs: args.split_change_delay,
        max_hold_secs: args.max_hold,
    };
    let deployment = deploy(&plan, &key).await.context("deploy")?;
    deployment.save(&args.out)?;
    println!("{}", serde_json::to_string_pretty(&deployment)?);
    eprintln!("wrote {}", args.out.display());
    Ok(())
}

async fn open(overrides: &Overrides) -> anyhow::Result<(Settings, sqlx::PgPool)> {
    let settings = Settings::resolve(overrides)?;
    Ok((settings.clone(), connect(&settings).await?))
}

/// Period close needs somewhere to put the fee of a period without usage; say so before any close is tried.
fn require_default_split(settings: &Settings) -> anyhow::Result<()> {
    anyhow::ensure!(settings.default_split.is_some(), "default_split: missing; give --default-split <split id> (or default_split in the config file)");
    Ok(())
}

async fn connect(settings: &Settings) -> anyhow::Result<sqlx::PgPool> {
    let pool = store::connect(&settings.database_url, 8).await.context("connecting to Postgres")?;
    store::check_one_deployment(&pool, &settings.deployment).await?;
    Ok(pool)
}

fn api_settings(settings: &Settings) -> ApiSettings {
    ApiSettings {
        chain_id: settings.deployment.chain_id,
        api_token: settings.api_token.clone(),
        decimals: settings.decimals,
        max_body_bytes: settings.max_body_bytes,
        max_future_ms: settings.max_future_ms,
    }
}

fn close_options(settings: &Settings) -> CloseOptions {
    CloseOptions {
        chain_id: settings.deployment.chain_id,
        late_cutoff: settings.late_cutoff,
        decimals: settings.decimals,
        default_split: settings.default_split,
        batch: 2_000,
    }
}

async fn run_serve(args: ServeArgs) -> anyhow::Result<()> {
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

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

fn parse_meter(text: &str) -> anyhow::Result<NewMeter> {
    match text.split_once(':') {
        None => Ok(NewMeter { meter: text.to_owned(), scale: 0 }),
        Some((meter, scale)) => Ok(NewMeter {
            meter: meter.to_owned(),
            scale: scale.parse().with_context(|| format!("--meter {text}: scale `{scale}` is not a number"))?,
        }),
    }
}

async fn run_model(command: ModelCommand) -> anyhow::Result<()> {
    match command {
        ModelCommand::Add { settings, model_id, name, split, meters } => {
            let (settings, pool) = open(&settings).await?;
            let meters = meters.iter().map(|m| parse_meter(m)).collect::<anyhow::Result<Vec<_>>>()?;
            let model = NewModel { model_id, display_name: name, split_id: split, effective_at: 0, meters };
            catalog::add_model(&pool, settings.deployment.chain_id, &model).await?;
            println!("registered model {}", model.model_id);
        }
        ModelCommand::SetSplit { settings, model_id, split, effective_at } => {
            let (settings, pool) = open(&settings).await?;
            catalog::set_model_split(&pool, settings.deployment.chain_id, &model_id, split, effective_at).await?;
            println!("model {model_id} earns for split {split} from {effective_at}");
        }
        ModelCommand::AddMeter { settings, model_id, meter } => {
            let (_, pool) = open(&settings).await?;
            let meter = parse_meter(&meter)?;
            catalog::add_meter(&pool, &model_id, &meter).await?;
            println!("model {model_id}: meter {} (scale {})", meter.meter, meter.scale);
        }
        ModelCommand::List { settings } => {
            let (_, pool) = open(&settings).await?;
            let snapshot = catalog::load(&pool).await?;
            println!("{}", serde_json::to_string_pretty(&snapshot.models.values().collect::<Vec<_>>())?);
        }
    }
    Ok(())
}

async fn run_price(command: PriceCommand) -> anyhow::Result<()> {
    match command {
        PriceCommand::Set { settings, model, meter, price, per, effective_at } => {
            let (_, pool) = open(&settings).await?;
            catalog::set_price(&pool, &NewPrice { model_id: model.clone(), meter: meter.clone(), unit_price: price, per_units: per, effective_at }).await?;
            println!("{model}/{meter}: {price} per {per} from {effective_at}");
        }
        PriceCommand::Allowance { settings, plan, units, value, effective_at } => {
            let (settings, pool) = open(&settings).await?;
            let mut parsed = std::collections::BTreeMap::new();
            for entry in &units {
                let (meter, amount) = entry.split_once('=').with_context(|| format!("--units {entry}: write meter=amount"))?;
                let amount: Decimal = amount.parse().with_context(|| format!("--units {entry}: `{amount}` is not a decimal"))?;
                parsed.insert(meter.to_owned(), amount);
            }
            catalog::set_allowance(&pool, settings.deployment.chain_id, &NewAllowance { plan_id: plan, effective_at, units: parsed, value }).await?;
            println!("plan {plan}: allowance set from {effective_at}");
        }
    }
    Ok(())
}

async fn run_import(overrides: Overrides, file: std::path::PathBuf, format: Option<String>) -> anyhow::Result<()> {
    let (settings, pool) = open(&overrides).await?;
    let format = match format.as_deref() {
        Some("csv") => Format::Csv,
        Some(_) => Format::Ndjson,
        None => Format::of(&file)?,
    };
    let mut api = api_settings(&settings);
    api.api_token = None;
    let keeper = Keeper::load(pool, api, Clock::System).await?;
    let report = import::import(&keeper, &file, format).await?;
    println!("{}", serde_json::to_string_pretty(&report)?);
    if report.rejected + report.conflicts + report.payment_required > 0 {
        std::process::exit(2);
    }
    Ok(())
}

async fn run_close(args: CloseArgs) -> anyhow::Result<()> {
    let (settings, pool) = open(&args.settings).await?;
    require_default_split(&settings)?;
    let now = args.at.unwrap_or_else(|| Clock::System.now_secs());
    let catalog = catalog::load(&pool).await?;
    let report = close::close_due_periods(&pool, &catalog, &close_options(&settings), now).await?;
    println!("{}", serde_json::to_string(&report)?);
    if args.epoch {
        match subsettle_keeper::epoch::close_epoch(&pool, settings.deployment.chain_id, now, subsettle_keeper::epoch::EpochScope::AllClosed, subsettle_keeper::epoch::SettleRoom::UNLIMITED).await? {
            Some(epoch) => println!("{}", serde_json::to_string(&epoch)?),
            None => println!("no closes to gather into an epoch"),
        }
    }
    Ok(())
}

async fn run_statement(args: StatementArgs) -> anyhow::Result<()> {
    let (settings, pool) = open(&args.settings).await?;
    let scope = Scope { epoch: args.epoch, from: args.from, to: args.to };
    let chain_id = settings.deployment.chain_id;
    let statement = match (args.creator, args.subscriber) {
        (Some(creator), _) => statement::creator_statement(&pool, chain_id, settings.decimals, creator, scope).await?,
        (None, Some(subscriber)) => statement::subscriber_statement(&pool, chain_id, settings.decimals, subscriber, scope).await?,
        (None, None) => anyhow::bail!("give --creator or --subscriber"),
    };
    match args.format.as_str() {
        "json" => println!("{}", serde_json::to_string_pretty(&statement)?),
        "csv" => print!("{}", statement::to_csv(&statement)),
        _ => print!("{}", statement::to_table(&statement)),
    }
    Ok(())
}

async fn run_verify(overrides: Overrides, file: std::path::PathBuf) -> anyhow::Result<()> {
    let (_, pool) = open(&overrides).await?;
    let text = std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
    let statement: Statement = serde_json::from_str(&text).with_context(|| format!("{} is not a JSON statement", file.display()))?;
    let report = statement::verify(&pool, &statement).await?;
    println!("{}", serde_json::to_string_pretty(&report)?);
    if !report.ok() {
        anyhow::bail!("{} problem(s) in {}", report.problems.len(), file.display());
    }
    Ok(())
}

async fn run_engine(args: RunArgs) -> anyhow::Result<()> {
    use subsettle_keeper::{
        engine::{Engine, Lease},
        outbox::FeePolicy,
        renewals::RenewalPolicy,
        settlement::SettlementPolicy,
    };
    let (settings, pool) = open(&args.chain.settings).await?;
    require_default_split(&settings)?;
    let gwei = 1_000_000_000u128;
    let fees = FeePolicy {
        max_fee_cap: u128::from(args.max_fee_gwei) * gwei,
        priority_fee: u128::from(args.priority_fee_gwei) * gwei,
        bump_after: Duration::from_secs(args.bump_after),
        bump_percent: 20,
    };
    let sender = connect_sender(&settings, &args.chain, fees).await?;
    let chain_id = sender.chain_id;
    let charge_window = subsettle_abi::Subscriptions::new(settings.deployment.subscriptions, &sender.provider)
        .chargeWindow()
        .call()
        .await
        .context("reading chargeWindow()")?;
    let retry = i64::try_from(args.retry_interval).unwrap_or(i64::MAX);
    let engine = Engine {
        pool: pool.clone(),
        sender,
        deployment: settings.deployment.clone(),
        close: close_options(&settings),
        renewals: RenewalPolicy { batch: args.batch, retry_interval: retry },
        settlement: SettlementPolicy {
            batch: args.batch,
            retry_interval: retry,
            charge_window: i64::try_from(charge_window.to::<u64>()).unwrap_or(i64::MAX),
            payout_threshold: args.payout_threshold,
            charge_threshold: args.charge_threshold.filter(|t| *t > 0),
        },
        epoch_interval: i64::try_from(args.epoch_interval).unwrap_or(i64::MAX),
    };
    if args.dry_run {
        let report = engine.step(true).await?;
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    // One sender at a time: wait for the lease, then keep it for the life of the process.
    let _lease = loop {
        if let Some(lease) = Lease::try_acquire(&pool).await? {
            break lease;
        }
        tracing::info!(holder = ?Lease::holder(&pool).await?, "another keeper holds the sender lease; waiting");
        tokio::select! {
            () = &mut shutdown => return Ok(()),
            () = tokio::time::sleep(Duration::from_secs(5)) => {}
        }
    };
    tracing::info!("holding the sender lease");
    let stale_after = i64::try_from(args.interval.saturating_mul(3).max(60)).unwrap_or(i64::MAX);
    let metrics = Arc::new(subsettle_keeper::metrics::EngineMetrics::new(pool.clone(), chain_id, stale_after));
    let server = (!args.once).then(|| tokio::spawn(subsettle_keeper::metrics::serve(metrics.clone(), args.metrics_addr)));
    loop {
        // A step runs to its end before a shutdown is honoured: whatever it signed is persisted first.
        let mut pause = args.interval;
        let started = std::time::Instant::now();
        match engine.step(false).await {
            Ok(report) => {
                metrics.stepped(started.elapsed(), report.now);
                tracing::info!(?report, "step");
                // Wake early when a renewal or a period close falls due before the next interval.
                match engine.next_due().await {
                    Ok(next) => pause = subsettle_keeper::engine::pause_until(report.now, next, args.interval),
                    Err(error) => tracing::warn!(%error, "could not read when work falls due; waiting the full interval"),
                }
            }
            Err(error) => tracing::error!(%error, "step failed; retrying next interval"),
        }
        if args.once {
            return Ok(());
        }
        tokio::select! {
            () = &mut shutdown => {
                tracing::info!("shutting down");
                if let Some(server) = server {
                    server.abort();
                }
                return Ok(());
            }
            () = tokio::time::sleep(Duration::from_secs(pause)) => {}
        }
    }
}

async fn run_status(overrides: Overrides) -> anyhow::Result<()> {
    let (settings, pool) = open(&overrides).await?;
    let outbox: Vec<(String, String, i64)> =
        sqlx::query_as("SELECT kind, state, COUNT(*) FROM keeper.outbox GROUP BY kind, state ORDER BY kind, state").fetch_all(&pool).await?;
    let open_rows: Vec<(String, String, Option<i64>, Option<String>)> = sqlx::query_as(
        "SELECT action_key, state, nonce, failure FROM keeper.outbox
         WHERE state IN ('planned', 'sent') OR (state = 'failed' AND finished_at > now() - INTERVAL '1 day')
         ORDER BY planned_at DESC LIMIT 20",
    )
    .fetch_all(&pool)
    .await?;
    let epochs: Vec<(i64, i64, String, bool)> = sqlx::query_as(
        "SELECT e.epoch_id, e.closed_at, e.total::TEXT,
                EXISTS (SELECT 1 FROM chain.settlements s WHERE s.chain_id = e.chain_id AND s.settlement_id = e.epoch_id::NUMERIC)
         FROM keeper.epochs e WHERE e.chain_id = $1 ORDER BY e.epoch_id DESC LIMIT 5",
    )
    .bind(settings.deployment.chain_id as i64)
    .fetch_all(&pool)
    .await?;
    let unclosed: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM keeper.usage_events WHERE close_id IS NULL").fetch_one(&pool).await?;
    let status = serde_json::json!({
        "lease_holder": subsettle_keeper::engine::Lease::holder(&pool).await?,
        "outbox": outbox.iter().map(|(k, s, n)| serde_json::json!({"kind": k, "state": s, "count": n})).collect::<Vec<_>>(),
        "open_or_recently_failed": open_rows.iter().map(|(k, s, n, f)| serde_json::json!({"action": k, "state": s, "nonce": n, "failure": f})).collect::<Vec<_>>(),
        "last_epochs": epochs.iter().map(|(id, at, total, settled)| serde_json::json!({"epoch": id, "closed_at": at, "total": total, "settled_on_chain": settled})).collect::<Vec<_>>(),
        "usage_events_not_yet_closed": unclosed,
    });
    println!("{}", serde_json::to_string_pretty(&status)?);
    Ok(())
}

/// The signer on the deployment's chain, refusing a node of another chain.
async fn connect_sender(
    settings: &Settings,
    chain: &ChainArgs,
    fees: subsettle_keeper::outbox::FeePolicy,
) -> anyhow::Result<subsettle_keeper::outbox::Sender> {
    use alloy::providers::{Provider, ProviderBuilder};
    let key = OperatorKey::load(chain.private_key_file.as_deref())?;
    let rpc_url = chain.rpc_url.as_str();
    let url = rpc_url.parse().map_err(|_| anyhow::anyhow!("rpc_url: `{rpc_url}` is not a URL"))?;
    let provider = ProviderBuilder::new().connect_http(url).erased();
    let chain_id = provider.get_chain_id().await.context("eth_chainId")?;
    anyhow::ensure!(
        chain_id == settings.deployment.chain_id,
        "rpc_url: the node is chain {chain_id}, the deployment is on chain {}",
        settings.deployment.chain_id
    );
    Ok(subsettle_keeper::outbox::Sender { provider, key, chain_id, fees })
}

/// Token units to base units, refusing more decimals than the token has.
fn base_units(field: &str, value: Decimal, decimals: u32) -> anyhow::Result<u128> {
    anyhow::ensure!(!value.is_sign_negative(), "{field}: {value} is negative");
    anyhow::ensure!(value.normalize().scale() <= decimals, "{field}: {value} has more than {decimals} decimals");
    Ok(subsettle_keeper::money::to_base_units(value, decimals)?)
}

async fn run_admin(args: AdminArgs) -> anyhow::Result<()> {
    use subsettle_keeper::admin::{AdminAction, execute};
    let (settings, pool) = open(&args.chain.settings).await?;
    let decimals = settings.decimals;
    let action = match args.action {
        AdminCommand::CreatePlan { price, period, grace } => AdminAction::CreatePlan { price: base_units("price", price, decimals)?, period, grace },
        AdminCommand::SetPlanActive { plan, active } => AdminAction::SetPlanActive { plan, active },
        AdminCommand::CreateSplit { recipients, remainder_index } => AdminAction::CreateSplit {
            recipients: recipients.iter().map(|(a, _)| *a).collect(),
            bps: recipients.iter().map(|(_, b)| *b).collect(),
            remainder_index,
        },
        AdminCommand::ProposeSplitChange { split, recipients, remainder_index } => AdminAction::ProposeSplitChange {
            split,
            recipients: recipients.iter().map(|(a, _)| *a).collect(),
            bps: recipients.iter().map(|(_, b)| *b).collect(),
            remainder_index,
        },
        AdminCommand::CancelSplitChange { split } => AdminAction::CancelSplitChange { split },
        AdminCommand::Hold { recipient, until, reason } => AdminAction::Hold { recipient, until, reason },
        AdminCommand::Release { recipient } => AdminAction::Release { recipient },
        AdminCommand::Refund { subscriber, amount, to_credit, reference } => {
            AdminAction::Refund { subscriber, amount: base_units("amount", amount, decimals)?, to_credit, reference }
        }
        AdminCommand::Pause => AdminAction::Pause,
        AdminCommand::Unpause => AdminAction::Unpause,
        AdminCommand::SetKeeper { keeper } => AdminAction::SetKeeper { keeper },
    };
    action.validate()?;
    let sender = connect_sender(&settings, &args.chain, Default::default()).await?;
    let request_id = format!("{}", Clock::System.now_ms());
    let outcomes = execute(&pool, &sender, &settings.deployment, &action, &request_id, Duration::from_secs(120)).await?;
    println!("{}", serde_json::to_string_pretty(&outcomes)?);
    if outcomes.iter().any(|o| o.state != "confirmed") {
        anyhow::bail!("the action did not go through; see the failure above");
    }
    Ok(())
}

/// Prints the reconciliation and exits 1 on any difference, 2 when it could not run. Reads only: the database
/// session is read-only and no key is loaded.
async fn run_reconcile(args: subsettle_keeper::cli::ReconcileArgs) -> anyhow::Result<()> {
    use alloy::providers::{Provider, ProviderBuilder};
    let report = async {
        let settings = Settings::resolve(&args.settings)?;
        let pool = store::connect_read_only(&settings.database_url, 4).await.context("connecting to Postgres")?;
        store::check_one_deployment(&pool, &settings.deployment).await?;
        let url = args.rpc_url.parse().map_err(|_| anyhow::anyhow!("rpc_url: `{}` is not a URL", args.rpc_url))?;
        let provider = ProviderBuilder::new().connect_http(url).erased();
        anyhow::Ok(subsettle_keeper::reconcile::reconcile(&pool, &provider, &settings.deployment, settings.decimals).await?)
    }
    .await;
    let report = match report {
        Ok(report) => report,
        Err(error) => {
            eprintln!("reconcile could not run: {error:#}");
            std::process::exit(2);
        }
    };
    match args.format.as_str() {
        "json" => println!("{}", serde_json::to_string_pretty(&report)?),
        _ => print!("{}", subsettle_keeper::reconcile::to_table(&report)),
    }
    if !report.ok() {
        std::process::exit(1);
    }
    Ok(())
}
