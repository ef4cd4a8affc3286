//! `subsettle-keeper`: see the crate documentation of `subsettle_keeper`.

use anyhow::Context;
use clap::Parser;
use subsettle_keeper::{
    cli::{Cli, Command, DeployArgs},
    deploy::{DeployPlan, deploy},
    signer::OperatorKey,
};

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
