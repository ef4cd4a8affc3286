//! The keeper's books: `usage import`, `close`, `statement`, `verify-statement` and `reconcile`.

use super::*;

pub(crate) async fn run_import(overrides: subsettle_keeper::config::ImportSettings, file: std::path::PathBuf, format: Option<String>) -> anyhow::Result<()> {
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

pub(crate) async fn run_close(args: CloseArgs) -> anyhow::Result<()> {
    let (settings, pool) = open(&args.settings).await?;
    require_default_split(&settings)?;
    let now = args.at.unwrap_or_else(|| Clock::System.now_secs());
    let catalog = catalog::load(&pool).await?;
    let report = close::close_due_periods(&pool, &catalog, &close_options(&settings), now).await?;
    println!("{}", serde_json::to_string(&report)?);
    if args.epoch {
        match subsettle_keeper::settlement::epoch::close_epoch(&pool, settings.deployment.chain_id, now, subsettle_keeper::settlement::epoch::EpochScope::AllClosed, subsettle_keeper::settlement::epoch::SettleRoom::UNLIMITED).await? {
            Some(epoch) => println!("{}", serde_json::to_string(&epoch)?),
            None => println!("no closes to gather into an epoch"),
        }
    }
    Ok(())
}

pub(crate) async fn run_statement(args: StatementArgs) -> anyhow::Result<()> {
    let (settings, pool) = open(&args.settings).await?;
    let scope = Scope { epoch: args.epoch, from: args.from, to: args.to };
    let chain_id = settings.deployment.chain_id;
    let statement = match (args.creator, args.subscriber) {
        (Some(creator), _) => statement::creator_statement(&pool, chain_id, settings.decimals, creator, scope).await?,
        (None, Some(subscriber)) => {
            let clock = charge_clock(&settings, &pool, args.rpc_url.as_deref(), "statement").await?;
            statement::subscriber_statement_at(&pool, chain_id, settings.decimals, subscriber, scope, clock.as_ref()).await?
        }
        (None, None) => anyhow::bail!("give --creator or --subscriber"),
    };
    match args.format.as_str() {
        "json" => println!("{}", serde_json::to_string_pretty(&statement)?),
        "csv" => print!("{}", statement::to_csv(&statement)),
        _ => print!("{}", statement::to_table(&statement)),
    }
    Ok(())
}

/// The chain's clock for the charge window rule, at the block the indexer has reached, when an RPC endpoint is
/// given (`--rpc-url`, SUBSETTLE_RPC_URL or `rpc_url` in the config); `None` without one.
async fn charge_clock(settings: &Settings, pool: &sqlx::PgPool, flag: Option<&str>, command: &str) -> anyhow::Result<Option<statement::ChargeClock>> {
    if flag.is_none() && settings.rpc_url.is_none() {
        return Ok(None);
    }
    let provider = crate::serve::connect_chain(settings, flag, command).await?;
    Ok(Some(statement::ChargeClock::at_cursor(pool, &provider, &settings.deployment).await?))
}

pub(crate) async fn run_verify(overrides: Overrides, file: std::path::PathBuf, rpc_url: Option<String>) -> anyhow::Result<()> {
    let (settings, pool) = open(&overrides).await?;
    let text = std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
    let statement: Statement = serde_json::from_str(&text).with_context(|| format!("{} is not a JSON statement", file.display()))?;
    let clock = charge_clock(&settings, &pool, rpc_url.as_deref(), "verify-statement").await?;
    let report = statement::verify_at(&pool, &statement, clock.as_ref()).await?;
    println!("{}", serde_json::to_string_pretty(&report)?);
    if !report.ok() {
        anyhow::bail!("{} problem(s) in {}", report.problems.len(), file.display());
    }
    Ok(())
}

/// Prints the reconciliation and exits 1 on any difference, 2 when it could not run. Reads only: the database
/// session is read-only and no key is loaded.
pub(crate) async fn run_reconcile(args: subsettle_keeper::cli::ReconcileArgs) -> anyhow::Result<()> {
    use alloy::providers::{Provider, ProviderBuilder};
    let report = async {
        let settings = Settings::resolve(&args.settings)?;
        let pool = store::connect_read_only(&settings.database_url, 4).await.context("connecting to Postgres")?;
        store::check_one_deployment(&pool, &settings.deployment).await?;
        let url = args.rpc_url.parse().map_err(|_| anyhow::anyhow!("rpc_url: `{}` is not a URL", args.rpc_url))?;
        let provider = ProviderBuilder::new().connect_http(url).erased();
        anyhow::Ok(subsettle_keeper::operator::reconcile::reconcile(&pool, &provider, &settings.deployment, settings.decimals).await?)
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
        _ => print!("{}", subsettle_keeper::operator::reconcile::to_table(&report)),
    }
    if !report.ok() {
        std::process::exit(1);
    }
    Ok(())
}
