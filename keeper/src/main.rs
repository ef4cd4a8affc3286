//! `subsettle-keeper`: see the crate documentation of `subsettle_keeper`.

use std::{sync::Arc, time::Duration};

use anyhow::Context;
use clap::Parser;
use rust_decimal::Decimal;
use subsettle_keeper::{
    api::{self, ApiSettings, Keeper},
    catalog::{self, NewAllowance, NewMeter, NewModel, NewPrice},
    cli::{CloseArgs, Cli, Command, DeployArgs, ModelCommand, PriceCommand, StatementArgs, UsageCommand},
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
        Command::Serve(overrides) => run_serve(overrides).await,
        Command::Model(command) => run_model(command).await,
        Command::Price(command) => run_price(command).await,
        Command::Usage(UsageCommand::Import { settings, file, format }) => run_import(settings, file, format).await,
        Command::Close(args) => run_close(args).await,
        Command::Statement(args) => run_statement(args).await,
        Command::VerifyStatement { settings, file } => run_verify(settings, file).await,
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
    store::connect(&settings.database_url, 8).await.context("connecting to Postgres")
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

async fn run_serve(overrides: Overrides) -> anyhow::Result<()> {
    let (settings, pool) = open(&overrides).await?;
    require_default_split(&settings)?;
    if settings.api_token.is_none() {
        anyhow::bail!("api_token: set SUBSETTLE_API_TOKEN or --api-token-file; the API takes no writes without it");
    }
    let keeper = Keeper::load(pool, api_settings(&settings), Clock::System).await?;
    let (stop, stopped) = watch::channel(false);
    let server = tokio::spawn(api::serve(keeper.clone(), settings.http_addr, stopped.clone()));
    let background = tokio::spawn(background(keeper, settings.clone(), stopped));
    shutdown_signal().await;
    tracing::info!("shutting down");
    let _ = stop.send(true);
    server.await??;
    background.await?;
    Ok(())
}

/// The refresh and period-close loop; each step finishes before shutdown is honoured.
async fn background(keeper: Arc<Keeper>, settings: Settings, mut stopped: watch::Receiver<bool>) {
    let mut refresh = tokio::time::interval(Duration::from_millis(settings.refresh_interval_ms));
    let mut close = tokio::time::interval(Duration::from_secs(settings.close_interval));
    let options = close_options(&settings);
    loop {
        tokio::select! {
            _ = stopped.changed() => return,
            _ = refresh.tick() => {
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
        match close::close_epoch(&pool, settings.deployment.chain_id, now).await? {
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
