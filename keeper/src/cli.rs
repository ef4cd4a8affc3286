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
