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
    /// Serve the HTTP API (usage ingest, entitlement, models, prices) and close periods as they end.
    Serve(crate::config::Overrides),
    /// Register models and change their splits.
    #[command(subcommand)]
    Model(ModelCommand),
    /// Add price versions and plan allowances.
    #[command(subcommand)]
    Price(PriceCommand),
    /// Import usage files.
    #[command(subcommand)]
    Usage(UsageCommand),
    /// Close every period that is due now, then (with --epoch) gather the closes into a settlement epoch.
    Close(CloseArgs),
    /// Run the settlement engine: renewals, usage charges, settlement epochs and payouts, under a Postgres lease.
    Run(RunArgs),
    /// Show the outbox, the last epochs, due work and the lease holder.
    Status {
        /// Settings.
        #[command(flatten)]
        settings: crate::config::Overrides,
    },
    /// Print a creator's or a subscriber's statement.
    Statement(StatementArgs),
    /// Check a JSON statement: every line's proof, the totals, and the roots and amounts on chain.
    VerifyStatement {
        /// Settings.
        #[command(flatten)]
        settings: crate::config::Overrides,
        /// The statement (JSON, as `statement --format json` writes it).
        file: PathBuf,
    },
}

/// `subsettle-keeper statement`
#[derive(Debug, Args)]
pub struct StatementArgs {
    /// Settings.
    #[command(flatten)]
    pub settings: crate::config::Overrides,
    /// A creator (split recipient).
    #[arg(long, conflicts_with = "subscriber", required_unless_present = "subscriber")]
    pub creator: Option<Address>,
    /// A subscriber (wallet).
    #[arg(long)]
    pub subscriber: Option<Address>,
    /// Only this settlement epoch.
    #[arg(long)]
    pub epoch: Option<u64>,
    /// Only periods (subscriber) or epochs (creator) ending at or after this Unix time.
    #[arg(long)]
    pub from: Option<i64>,
    /// ... and before this Unix time.
    #[arg(long)]
    pub to: Option<i64>,
    /// Output format.
    #[arg(long, default_value = "table", value_parser = ["table", "csv", "json"])]
    pub format: String,
}

/// `subsettle-keeper model ...`
#[derive(Debug, Subcommand)]
pub enum ModelCommand {
    /// Register a model with its meters and the split that earns from it.
    Add {
        /// Settings.
        #[command(flatten)]
        settings: crate::config::Overrides,
        /// Model id (a-z 0-9 . _ : / -).
        #[arg(long = "id")]
        model_id: String,
        /// Display name.
        #[arg(long)]
        name: String,
        /// The on-chain split id.
        #[arg(long)]
        split: u64,
        /// A meter, `name` or `name:scale` (decimal places allowed); repeat for several.
        #[arg(long = "meter", required = true)]
        meters: Vec<String>,
    },
    /// Point a model at another split from a time on.
    SetSplit {
        /// Settings.
        #[command(flatten)]
        settings: crate::config::Overrides,
        /// Model id.
        #[arg(long = "id")]
        model_id: String,
        /// The on-chain split id.
        #[arg(long)]
        split: u64,
        /// From when (Unix seconds).
        #[arg(long)]
        effective_at: i64,
    },
    /// Add a meter to a registered model.
    AddMeter {
        /// Settings.
        #[command(flatten)]
        settings: crate::config::Overrides,
        /// Model id.
        #[arg(long = "id")]
        model_id: String,
        /// The meter, `name` or `name:scale`.
        #[arg(long)]
        meter: String,
    },
    /// List models with meters and split history.
    List {
        /// Settings.
        #[command(flatten)]
        settings: crate::config::Overrides,
    },
}

/// `subsettle-keeper price ...`
#[derive(Debug, Subcommand)]
pub enum PriceCommand {
    /// Add a price version for a model's meter.
    Set {
        /// Settings.
        #[command(flatten)]
        settings: crate::config::Overrides,
        /// Model id.
        #[arg(long)]
        model: String,
        /// Meter.
        #[arg(long)]
        meter: String,
        /// Price in token units (e.g. 0.002), for `--per` units.
        #[arg(long)]
        price: rust_decimal::Decimal,
        /// Units the price is for (default 1).
        #[arg(long, default_value = "1")]
        per: rust_decimal::Decimal,
        /// From when (Unix seconds).
        #[arg(long)]
        effective_at: i64,
    },
    /// Set the usage a plan includes per period, from a time on.
    Allowance {
        /// Settings.
        #[command(flatten)]
        settings: crate::config::Overrides,
        /// On-chain plan id.
        #[arg(long)]
        plan: u64,
        /// Included units of a meter, `meter=amount`; repeat for several.
        #[arg(long = "units")]
        units: Vec<String>,
        /// Included value in token units.
        #[arg(long, default_value = "0")]
        value: rust_decimal::Decimal,
        /// From when (Unix seconds).
        #[arg(long)]
        effective_at: i64,
    },
}

/// `subsettle-keeper usage ...`
#[derive(Debug, Subcommand)]
pub enum UsageCommand {
    /// Import an NDJSON or CSV file of usage events (streamed, exactly once).
    Import {
        /// Settings.
        #[command(flatten)]
        settings: crate::config::Overrides,
        /// The file (.ndjson, .jsonl or .csv).
        file: PathBuf,
        /// Format, when the extension does not tell.
        #[arg(long, value_parser = ["ndjson", "csv"])]
        format: Option<String>,
    },
}

/// `subsettle-keeper close`
#[derive(Debug, Args)]
pub struct CloseArgs {
    /// Settings.
    #[command(flatten)]
    pub settings: crate::config::Overrides,
    /// Also gather the new closes into a settlement epoch.
    #[arg(long)]
    pub epoch: bool,
    /// Judge due periods at this time (Unix seconds) instead of now, e.g. against a local chain's clock.
    #[arg(long)]
    pub at: Option<i64>,
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
    /// The keeper address allowed to post usage charges and settle. Defaults to the deployer.
    #[arg(long)]
    pub keeper: Option<Address>,
    /// How long after a period ends its usage can still be charged (e.g. `2d`, `36h`, `3600s`).
    #[arg(long, default_value = "2d", value_parser = parse_duration_secs)]
    pub charge_window: u64,
    /// How long a proposed split change waits before it takes effect.
    #[arg(long, default_value = "7d", value_parser = parse_duration_secs)]
    pub split_change_delay: u64,
    /// The longest a dispute hold on a recipient may last.
    #[arg(long, default_value = "30d", value_parser = parse_duration_secs)]
    pub max_hold: u64,
    /// Where to write the deployment descriptor (JSON).
    #[arg(long, default_value = "deployment.json")]
    pub out: PathBuf,
}

/// Parses a duration written as a whole number with an optional unit: `s` (default), `m`, `h` or `d`.
pub fn parse_duration_secs(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().map_err(|_| format!("`{text}` is not a duration like 30s, 15m, 36h or 2d"))?;
    let scale = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3_600,
        "d" => 86_400,
        other => return Err(format!("unknown unit `{other}` in `{text}`; use s, m, h or d")),
    };
    number.checked_mul(scale).ok_or_else(|| format!("`{text}` is too long"))
}

#[cfg(test)]
mod tests {
    use super::parse_duration_secs;

    #[test]
    fn parses_durations_with_units() {
        assert_eq!(parse_duration_secs("90"), Ok(90));
        assert_eq!(parse_duration_secs("15m"), Ok(900));
        assert_eq!(parse_duration_secs("36h"), Ok(129_600));
        assert_eq!(parse_duration_secs("2d"), Ok(172_800));
    }

    #[test]
    fn rejects_bad_durations_with_the_input_named() {
        assert!(parse_duration_secs("2 weeks").unwrap_err().contains("2 weeks"));
        assert!(parse_duration_secs("d").is_err());
        assert!(parse_duration_secs("5y").unwrap_err().contains("unknown unit"));
        assert!(parse_duration_secs("99999999999999999999d").is_err());
    }
}

/// `subsettle-keeper run`
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Settings.
    #[command(flatten)]
    pub settings: crate::config::Overrides,
    /// JSON-RPC endpoint of the chain.
    #[arg(long, env = "SUBSETTLE_RPC_URL", default_value = "http://127.0.0.1:8545")]
    pub rpc_url: String,
    /// File holding the keeper's private key (hex). Without it, SUBSETTLE_PRIVATE_KEY is read.
    #[arg(long, env = "SUBSETTLE_PRIVATE_KEY_FILE")]
    pub private_key_file: Option<PathBuf>,
    /// Time between steps.
    #[arg(long, default_value = "30s", value_parser = parse_duration_secs)]
    pub interval: u64,
    /// Time between settlement epochs.
    #[arg(long, default_value = "1d", value_parser = parse_duration_secs)]
    pub epoch_interval: u64,
    /// Time between two attempts at a past-due renewal, a failed charge or a payout.
    #[arg(long, default_value = "6h", value_parser = parse_duration_secs)]
    pub retry_interval: u64,
    /// Items per renew, charge or claim transaction.
    #[arg(long, default_value = "200")]
    pub batch: usize,
    /// Push payouts to recipients with at least this claimable balance (base units).
    #[arg(long, default_value = "10000000")]
    pub payout_threshold: u128,
    /// Highest maxFeePerGas ever signed, in gwei.
    #[arg(long, default_value = "200")]
    pub max_fee_gwei: u64,
    /// Priority fee, in gwei.
    #[arg(long, default_value = "1")]
    pub priority_fee_gwei: u64,
    /// Replace a transaction not mined after this long with higher fees.
    #[arg(long, default_value = "60s", value_parser = parse_duration_secs)]
    pub bump_after: u64,
    /// Address of `/metrics` and `/healthz`.
    #[arg(long, env = "SUBSETTLE_KEEPER_METRICS", default_value = "127.0.0.1:9101")]
    pub metrics_addr: std::net::SocketAddr,
    /// Print what one step would send, and exit.
    #[arg(long)]
    pub dry_run: bool,
    /// Run one step and exit.
    #[arg(long)]
    pub once: bool,
}
