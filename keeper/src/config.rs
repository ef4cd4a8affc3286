//! The keeper's settings: an optional TOML file, overridden by flags and the environment. Every error names the
//! key and the value at fault. The operator token is read from the environment or a file, never from the TOML
//! file or a flag (so it stays out of shell history and process lists), and is never printed.

use std::{net::SocketAddr, path::{Path, PathBuf}};

use serde::Deserialize;
use subsettle_abi::Deployment;

use crate::KeeperError;

/// The TOML configuration file (every key optional).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Postgres URL.
    pub database_url: Option<String>,
    /// The deployment descriptor (relative to the file).
    pub deployment: Option<PathBuf>,
    /// Address of the HTTP API.
    pub http_addr: Option<String>,
    /// Token decimals.
    pub decimals: Option<u32>,
    /// Late-event cutoff after a period's end (`1h`, `3600s`).
    pub late_cutoff: Option<String>,
    /// How far ahead of now an event may be stamped.
    pub max_future_skew: Option<String>,
    /// Largest request body in bytes.
    pub max_body_bytes: Option<usize>,
    /// Split for the fee of periods without usage.
    pub default_split: Option<u64>,
    /// Reload interval of subscriptions and catalog, milliseconds.
    pub refresh_interval_ms: Option<u64>,
    /// Period-close interval.
    pub close_interval: Option<String>,
    /// File holding the operator's API token.
    pub api_token_file: Option<PathBuf>,
    /// JSON-RPC endpoint of the chain (`serve`, `model set-split`).
    pub rpc_url: Option<String>,
    /// Time between two readings of the wallets' funds (`serve`).
    pub funds_interval: Option<String>,
    /// Time between two reloads of the open periods' usage from Postgres (`serve`; `0` turns them off).
    pub usage_reload_interval: Option<String>,
}

/// Resolved settings.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Postgres URL.
    pub database_url: String,
    /// The deployment.
    pub deployment: Deployment,
    /// HTTP API address.
    pub http_addr: SocketAddr,
    /// Token decimals.
    pub decimals: u32,
    /// Seconds after a period's end before it closes.
    pub late_cutoff: i64,
    /// Milliseconds an event may be stamped ahead of now.
    pub max_future_ms: i64,
    /// Largest request body.
    pub max_body_bytes: usize,
    /// Split for the fee of periods without usage.
    pub default_split: Option<u64>,
    /// Reload interval, milliseconds.
    pub refresh_interval_ms: u64,
    /// Seconds between period-close runs.
    pub close_interval: u64,
    /// The operator token, when one is configured.
    pub api_token: Option<String>,
    /// JSON-RPC endpoint from the file (a command's `--rpc-url` / SUBSETTLE_RPC_URL wins).
    pub rpc_url: Option<String>,
    /// Seconds between two readings of the wallets' funds.
    pub funds_interval: u64,
    /// Seconds between two reloads of the open periods' usage; 0: never.
    pub usage_reload_interval: u64,
}

/// What a command's flags and environment say about the settings; `None` means "not given". Each command takes
/// only the groups it uses (its `--help` lists only those): [`Overrides`] for every command that reads the
/// database, [`CloseFlags`] for the commands that close periods, [`ServeFlags`] for `serve`, [`SkewFlag`] for
/// `usage import`. The TOML file may hold every key; a command ignores the keys it does not use.
pub trait SettingsFlags {
    /// The common group.
    fn common(&self) -> &Overrides;
    /// The period-close group, when the command closes periods.
    fn close(&self) -> Option<&CloseFlags> {
        None
    }
    /// The `serve` group.
    fn serve(&self) -> Option<&ServeFlags> {
        None
    }
    /// How far ahead of now an event may be stamped, when the command takes events.
    fn max_future_skew(&self) -> Option<&str> {
        self.serve().and_then(|s| s.max_future_skew.as_deref())
    }
}

/// Flags of every command that reads the keeper's database.
#[derive(Debug, Default, Clone, clap::Args)]
pub struct Overrides {
    /// TOML configuration file.
    #[arg(long, env = "SUBSETTLE_KEEPER_CONFIG")]
    pub config: Option<PathBuf>,
    /// Postgres URL.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// Deployment descriptor written by `subsettle-keeper deploy` (default deployment.json).
    #[arg(long, env = "SUBSETTLE_DEPLOYMENT")]
    pub deployment: Option<PathBuf>,
    /// Token decimals (default 6).
    #[arg(long)]
    pub decimals: Option<u32>,
}

/// Flags of the commands that close periods (`serve`, `close`, `run`).
#[derive(Debug, Default, Clone, clap::Args)]
pub struct CloseFlags {
    /// Split that receives the fee of periods without usage. Required: here, or `default_split` in the config file.
    #[arg(long)]
    pub default_split: Option<u64>,
    /// Late-event cutoff after a period ends (default 1h).
    #[arg(long)]
    pub late_cutoff: Option<String>,
}

/// Flags of `serve`.
#[derive(Debug, Default, Clone, clap::Args)]
pub struct ServeFlags {
    /// Address of the HTTP API (default 127.0.0.1:8080).
    #[arg(long, env = "SUBSETTLE_KEEPER_HTTP")]
    pub http_addr: Option<String>,
    /// Period-close interval (default 60s).
    #[arg(long)]
    pub close_interval: Option<String>,
    /// How far ahead of now an event may be stamped (default 5m).
    #[arg(long)]
    pub max_future_skew: Option<String>,
    /// Largest request body in bytes (default 8 MiB).
    #[arg(long)]
    pub max_body_bytes: Option<usize>,
    /// Reload interval of subscriptions and catalog, ms (default 1000).
    #[arg(long)]
    pub refresh_interval_ms: Option<u64>,
    /// File holding the operator's API token; without it SUBSETTLE_API_TOKEN is read.
    #[arg(long, env = "SUBSETTLE_API_TOKEN_FILE")]
    pub api_token_file: Option<PathBuf>,
    /// Time between two readings of the wallets' balance, allowance and credit (default 15s).
    #[arg(long)]
    pub funds_interval: Option<String>,
    /// Time between two reloads of the open periods' usage from Postgres, so that usage other replicas store counts
    /// here too (default 15s; 0 turns them off, for a single replica).
    #[arg(long)]
    pub usage_reload_interval: Option<String>,
}

/// The one `serve` flag `usage import` also takes.
#[derive(Debug, Default, Clone, clap::Args)]
pub struct SkewFlag {
    /// How far ahead of now an event may be stamped (default 5m).
    #[arg(long)]
    pub max_future_skew: Option<String>,
}

impl SettingsFlags for Overrides {
    fn common(&self) -> &Overrides {
        self
    }
}

/// `serve`'s settings: the common, close and serve groups.
#[derive(Debug, Default, Clone, clap::Args)]
pub struct ServeSettings {
    /// Common.
    #[command(flatten)]
    pub common: Overrides,
    /// Period close.
    #[command(flatten)]
    pub close: CloseFlags,
    /// The API.
    #[command(flatten)]
    pub serve: ServeFlags,
}

impl SettingsFlags for ServeSettings {
    fn common(&self) -> &Overrides {
        &self.common
    }
    fn close(&self) -> Option<&CloseFlags> {
        Some(&self.close)
    }
    fn serve(&self) -> Option<&ServeFlags> {
        Some(&self.serve)
    }
}

/// The settings of `close` and `run`: the common and close groups.
#[derive(Debug, Default, Clone, clap::Args)]
pub struct CloseSettings {
    /// Common.
    #[command(flatten)]
    pub common: Overrides,
    /// Period close.
    #[command(flatten)]
    pub close: CloseFlags,
}

impl SettingsFlags for CloseSettings {
    fn common(&self) -> &Overrides {
        &self.common
    }
    fn close(&self) -> Option<&CloseFlags> {
        Some(&self.close)
    }
}

/// The settings of `usage import`: the common group and the time skew.
#[derive(Debug, Default, Clone, clap::Args)]
pub struct ImportSettings {
    /// Common.
    #[command(flatten)]
    pub common: Overrides,
    /// Time skew.
    #[command(flatten)]
    pub skew: SkewFlag,
}

impl SettingsFlags for ImportSettings {
    fn common(&self) -> &Overrides {
        &self.common
    }
    fn max_future_skew(&self) -> Option<&str> {
        self.skew.max_future_skew.as_deref()
    }
}

fn bad(key: &str, value: impl std::fmt::Display, why: impl std::fmt::Display) -> KeeperError {
    KeeperError::Invalid { field: key.to_owned(), reason: format!("`{value}`: {why}") }
}

fn duration(key: &str, text: &str) -> Result<i64, KeeperError> {
    let secs = parse_duration_secs(text).map_err(|e| bad(key, text, e))?;
    i64::try_from(secs).map_err(|_| bad(key, text, "too long"))
}

/// Shortest operator token accepted.
pub const MIN_TOKEN_LEN: usize = 16;

impl Settings {
    /// Merges the file (if any) and the overrides.
    pub fn resolve(flags: &impl SettingsFlags) -> Result<Self, KeeperError> {
        let overrides = flags.common();
        let (close, serve) = (flags.close().cloned().unwrap_or_default(), flags.serve().cloned().unwrap_or_default());
        let (file, base) = match &overrides.config {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| KeeperError::File { path: path.display().to_string(), message: e.to_string() })?;
                let file: FileConfig = toml::from_str(&text).map_err(|e| KeeperError::File { path: path.display().to_string(), message: e.to_string() })?;
                (file, path.parent().map(Path::to_path_buf).unwrap_or_default())
            }
            None => (FileConfig::default(), PathBuf::new()),
        };
        let o = overrides;
        let database_url = o.database_url.clone().or(file.database_url).ok_or_else(|| bad("database_url", "", "missing: give --database-url or DATABASE_URL"))?;
        let deployment_path = o.deployment.clone().or_else(|| file.deployment.map(|p| base.join(p))).unwrap_or_else(|| PathBuf::from("deployment.json"));
        let deployment = Deployment::load(&deployment_path).map_err(|e| bad("deployment", deployment_path.display(), e))?;
        let http_text = serve.http_addr.clone().or(file.http_addr).unwrap_or_else(|| "127.0.0.1:8080".into());
        let http_addr = http_text.parse().map_err(|_| bad("http_addr", &http_text, "not an address like 127.0.0.1:8080"))?;
        let decimals = o.decimals.or(file.decimals).unwrap_or(6);
        if decimals > 18 {
            return Err(bad("decimals", decimals, "at most 18"));
        }
        let late_cutoff = duration("late_cutoff", &close.late_cutoff.clone().or(file.late_cutoff).unwrap_or_else(|| "1h".into()))?;
        let max_future_ms = duration("max_future_skew", &flags.max_future_skew().map(str::to_owned).or(file.max_future_skew).unwrap_or_else(|| "5m".into()))? * 1000;
        let max_body_bytes = serve.max_body_bytes.or(file.max_body_bytes).unwrap_or(8 << 20);
        if !(1024..=256 << 20).contains(&max_body_bytes) {
            return Err(bad("max_body_bytes", max_body_bytes, "between 1024 and 268435456"));
        }
        let refresh_interval_ms = serve.refresh_interval_ms.or(file.refresh_interval_ms).unwrap_or(1000);
        if !(50..=600_000).contains(&refresh_interval_ms) {
            return Err(bad("refresh_interval_ms", refresh_interval_ms, "between 50 and 600000"));
        }
        let close_text = serve.close_interval.clone().or(file.close_interval).unwrap_or_else(|| "60s".into());
        let close_interval = u64::try_from(duration("close_interval", &close_text)?).unwrap_or(60).max(1);
        let token_file = serve.api_token_file.clone().or_else(|| file.api_token_file.map(|p| base.join(p)));
        // Only `serve` answers with the operator token; other commands neither need it nor fail on a bad one.
        let api_token = if flags.serve().is_some() { read_token(token_file.as_deref())? } else { None };
        let funds_text = serve.funds_interval.clone().or(file.funds_interval).unwrap_or_else(|| "15s".into());
        let funds_interval = u64::try_from(duration("funds_interval", &funds_text)?).unwrap_or(0);
        if !(1..=600).contains(&funds_interval) {
            return Err(bad("funds_interval", &funds_text, "between 1s and 10m"));
        }
        let reload_text = serve.usage_reload_interval.clone().or(file.usage_reload_interval).unwrap_or_else(|| "15s".into());
        let usage_reload_interval = u64::try_from(duration("usage_reload_interval", &reload_text)?).unwrap_or(0);
        Ok(Self {
            database_url,
            deployment,
            http_addr,
            decimals,
            late_cutoff,
            max_future_ms,
            max_body_bytes,
            default_split: close.default_split.or(file.default_split),
            refresh_interval_ms,
            close_interval,
            api_token,
            rpc_url: file.rpc_url,
            funds_interval,
            usage_reload_interval,
        })
    }
}

/// The operator token from a file, else from `SUBSETTLE_API_TOKEN`; `None` when neither is set.
pub fn read_token(file: Option<&Path>) -> Result<Option<String>, KeeperError> {
    let token = match file {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .map_err(|e| KeeperError::File { path: path.display().to_string(), message: e.to_string() })?
                .trim()
                .to_owned(),
        ),
        None => std::env::var("SUBSETTLE_API_TOKEN").ok().map(|t| t.trim().to_owned()),
    };
    match token {
        Some(t) if t.len() < MIN_TOKEN_LEN || !t.bytes().all(|b| b.is_ascii_graphic()) => Err(KeeperError::Invalid {
            field: "api_token".into(),
            reason: format!("must be at least {MIN_TOKEN_LEN} printable characters (value not shown)"),
        }),
        other => Ok(other),
    }
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
