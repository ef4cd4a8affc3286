//! The `subsettle-indexer` command line.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::config::Overrides;

/// Mirrors subsettle contract events into Postgres (schema `chain`).
#[derive(Debug, Parser)]
#[command(name = "subsettle-indexer", version, about, long_about = None)]
pub struct Cli {
    /// Log lines on stderr as text, or as JSON objects one per line (`level`, `message`, `target`, `timestamp` and
    /// the event's fields) for a log collector.
    #[arg(long, global = true, env = "SUBSETTLE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines (colours only on a terminal).
    Text,
    /// One JSON object per line.
    Json,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Follow the chain as a daemon until SIGINT/SIGTERM.
    Run(Common),
    /// Index up to a block (or the head) and exit.
    Backfill {
        /// Last block to index; the head when omitted.
        #[arg(long)]
        to: Option<u64>,
        /// Settings.
        #[command(flatten)]
        common: Common,
    },
    /// Print how far each deployment is indexed and how far behind the head it is.
    Status(Common),
}

/// Settings shared by every subcommand.
#[derive(Debug, Args)]
pub struct Common {
    /// TOML config file (several deployments, loop settings); flags win over it.
    #[arg(long, env = "SUBSETTLE_INDEXER_CONFIG")]
    pub config: Option<PathBuf>,
    /// Postgres URL.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// Deployment descriptor (from `subsettle-keeper deploy`).
    #[arg(long, env = "SUBSETTLE_DEPLOYMENT")]
    pub deployment: Option<PathBuf>,
    /// JSON-RPC endpoint of the deployment's chain.
    #[arg(long, env = "SUBSETTLE_RPC_URL")]
    pub rpc_url: Option<String>,
    /// Milliseconds between polls when caught up (default 1000).
    #[arg(long)]
    pub poll_interval_ms: Option<u64>,
    /// Blocks below the head treated as final when the node has no `finalized` tag (default 64).
    #[arg(long)]
    pub confirmations: Option<u64>,
    /// eth_getLogs ranges fetched at once during backfill (default 4).
    #[arg(long)]
    pub concurrency: Option<usize>,
    /// Largest eth_getLogs block range (default 5000; ranges start at 1000, aim at 10,000 logs each and shrink
    /// when the provider refuses).
    #[arg(long)]
    pub max_range: Option<u64>,
    /// Serve /metrics and /healthz here, with `run` (default 127.0.0.1:9101; the keeper engine's is 9102).
    #[arg(long, env = "SUBSETTLE_INDEXER_METRICS_ADDR")]
    pub metrics_addr: Option<String>,
}

impl Common {
    /// The overrides these flags carry.
    pub fn overrides(&self) -> Overrides {
        Overrides {
            config: self.config.clone(),
            database_url: self.database_url.clone(),
            deployment: self.deployment.clone(),
            rpc_url: self.rpc_url.clone(),
            poll_interval_ms: self.poll_interval_ms,
            confirmations: self.confirmations,
            concurrency: self.concurrency,
            max_range: self.max_range,
            metrics_addr: self.metrics_addr.clone(),
        }
    }
}
