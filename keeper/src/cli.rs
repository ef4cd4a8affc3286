//! The `subsettle-keeper` command line.

use std::path::PathBuf;

use alloy::primitives::Address;
use clap::{Args, Parser, Subcommand};

/// Turns usage metering into batched on-chain settlement, and runs the operator's contract actions.
#[derive(Debug, Parser)]
#[command(name = "subsettle-keeper", version, about, long_about = None)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The keeper's subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Deploy the contracts (and, on a local chain, the USDC-like test token) and write the deployment file.
    Deploy(DeployArgs),
}

/// Arguments of `subsettle-keeper deploy`.
#[derive(Debug, Args)]
pub struct DeployArgs {
    /// JSON-RPC endpoint of the chain to deploy to.
    #[arg(long, env = "SUBSETTLE_RPC_URL", default_value = "http://127.0.0.1:8545")]
    pub rpc_url: String,
    /// File holding the operator's private key (hex). Without it, SUBSETTLE_PRIVATE_KEY is read.
    #[arg(long, env = "SUBSETTLE_PRIVATE_KEY_FILE")]
    pub private_key_file: Option<PathBuf>,
    /// Address of an existing settlement token (the chain's USDC). Without it a TestUSDC is deployed.
    #[arg(long)]
    pub token: Option<Address>,
    /// Where to write the deployment descriptor (JSON).
    #[arg(long, default_value = "deployment.json")]
    pub out: PathBuf,
}
