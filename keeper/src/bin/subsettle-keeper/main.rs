//! `subsettle-keeper`: see the crate documentation of `subsettle_keeper`. This file parses the command line and
//! holds what the commands share (settings, the database, shutdown); the commands live by subject:
//! [`serve`] (the usage API), [`engine`] (`run`, `status`), [`chain`] (`deploy`, `admin`), [`models`] (`model`,
//! `price`) and [`books`] (`usage import`, `close`, `statement`, `verify-statement`, `reconcile`).

use std::{sync::Arc, time::Duration};

use anyhow::Context;
use clap::Parser;
use rust_decimal::Decimal;
use subsettle_keeper::{
    metering::api::{self, ApiSettings, Keeper},
    metering::catalog::{self, NewAllowance, NewMeter, NewModel, NewPrice},
    cli::{LogFormat, AdminArgs, AdminCommand, ChainArgs, CloseArgs, Cli, Command, ServeArgs, DeployArgs, ModelCommand, PriceCommand, RunArgs, StatementArgs, UsageCommand},
    clock::Clock,
    metering::close::{self, CloseOptions},
    config::{Overrides, Settings},
    operator::deploy::{DeployPlan, TokenSource, deploy},
    operator::import::{self, Format},
    signer::OperatorKey,
    metering::statement::{self, Scope, Statement},
    store,
};
use tokio::sync::watch;

mod books;
mod chain;
mod engine;
mod models;
mod serve;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let logs = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs.json().init(),
    }
    match cli.command {
        Command::Deploy(args) => chain::run_deploy(args).await,
        Command::Serve(args) => serve::run_serve(args).await,
        Command::Model(command) => models::run_model(command).await,
        Command::Price(command) => models::run_price(command).await,
        Command::Usage(UsageCommand::Import { settings, file, format }) => books::run_import(settings, file, format).await,
        Command::Close(args) => books::run_close(args).await,
        Command::Statement(args) => books::run_statement(args).await,
        Command::Run(args) => engine::run_engine(args).await,
        Command::Admin(args) => chain::run_admin(args).await,
        Command::Status { settings } => engine::run_status(settings).await,
        Command::VerifyStatement { settings, file, rpc_url } => books::run_verify(settings, file, rpc_url).await,
        Command::Reconcile(args) => books::run_reconcile(args).await,
    }
}

async fn open(overrides: &impl subsettle_keeper::config::SettingsFlags) -> anyhow::Result<(Settings, sqlx::PgPool)> {
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

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
