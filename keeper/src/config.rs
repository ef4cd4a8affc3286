//! The keeper's settings: an optional TOML file, overridden by flags and the environment. Every error names the
//! key and the value at fault. The operator token is read from the environment or a file, never from the TOML
//! file or a flag (so it stays out of shell history and process lists), and is never printed.

use std::{net::SocketAddr, path::{Path, PathBuf}};

use rust_decimal::Decimal;
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
    /// Confirmations that make an action final (`run`, `admin`); without it, the node's `finalized` block.
    pub confirmations: Option<u64>,
    /// File holding the signing key of `run` and `admin` (relative to the file).
    pub private_key_file: Option<PathBuf>,
    /// The settlement engine's settings (`run`).
    pub run: Option<RunFile>,
    /// `serve`'s limits on clients.
    pub server: Option<ServerFile>,
}

/// The `[run]` table of the TOML file (every key optional; the flags of `run` win).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunFile {
    /// Time between steps (`30s`).
    pub interval: Option<String>,
    /// Time between settlement epochs (`1d`).
    pub epoch_interval: Option<String>,
    /// Time between two attempts at a past-due renewal, a failed charge or a payout (`6h`).
    pub retry_interval: Option<String>,
    /// Items per renew, charge or claim transaction.
    pub batch: Option<usize>,
    /// Push payouts from this claimable balance, token units (`"10"` or `10.5`, written as a string).
    pub payout_threshold: Option<String>,
    /// Charge mid-period when overage crosses a multiple of this, token units (as a string).
    pub charge_threshold: Option<String>,
    /// Highest maxFeePerGas ever signed, gwei.
    pub max_fee_gwei: Option<u64>,
    /// Priority fee, gwei.
    pub priority_fee_gwei: Option<u64>,
    /// Replace a transaction not mined after this long (`60s`).
    pub bump_after: Option<String>,
    /// Address of `/metrics` and `/healthz`.
    pub metrics_addr: Option<String>,
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
    /// Confirmations that make an action final, from the TOML file (`--confirmations` wins); `None`: the node's
    /// `finalized` block.
    pub confirmations: Option<u64>,
    /// The signing key's file, from the TOML file (a command's flag or SUBSETTLE_PRIVATE_KEY_FILE wins).
    pub private_key_file: Option<PathBuf>,
    /// The engine's settings, for `run`.
    pub run: Option<RunSettings>,
    /// `serve`'s limits on clients, for `serve`.
    pub server: Option<ServerSettings>,
}

/// The settlement engine's resolved settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunSettings {
    /// Seconds between steps.
    pub interval: u64,
    /// Seconds between settlement epochs.
    pub epoch_interval: u64,
    /// Seconds between two attempts at a past-due renewal, a failed charge or a payout.
    pub retry_interval: u64,
    /// Items per transaction.
    pub batch: usize,
    /// Payout threshold, base units.
    pub payout_threshold: u128,
    /// Mid-period charge threshold, base units; `None`: overage is charged at period close only.
    pub charge_threshold: Option<u128>,
    /// Highest maxFeePerGas, gwei.
    pub max_fee_gwei: u64,
    /// Priority fee, gwei.
    pub priority_fee_gwei: u64,
    /// Seconds before a transaction not mined is replaced with higher fees.
    pub bump_after: u64,
    /// Address of `/metrics` and `/healthz`.
    pub metrics_addr: SocketAddr,
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
    /// `serve`'s limits on clients.
    fn server(&self) -> Option<&ServerFlags> {
        None
    }
    /// The engine's group, for `run`.
    fn run(&self) -> Option<&RunFlags> {
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

/// `serve`'s limits on clients, which the TOML file's `[server]` table may also give.
#[derive(Debug, Default, Clone, clap::Args)]
pub struct ServerFlags {
    /// A request's headers must arrive within this after its first byte, else the connection is closed (default 10s).
    #[arg(long, env = "SUBSETTLE_HEADER_TIMEOUT")]
    pub header_timeout: Option<String>,
    /// A request's body must arrive within this after its headers, else 408 (default 30s).
    #[arg(long, env = "SUBSETTLE_BODY_TIMEOUT")]
    pub body_timeout: Option<String>,
    /// A connection waiting for its next request is closed after this long (default 60s; keep it above a load
    /// balancer's idle timeout, so that the balancer closes first).
    #[arg(long, env = "SUBSETTLE_IDLE_TIMEOUT")]
    pub idle_timeout: Option<String>,
    /// A request is answered within this, body included, else 503; must be longer than --body-timeout (default 60s).
    #[arg(long, env = "SUBSETTLE_REQUEST_TIMEOUT")]
    pub request_timeout: Option<String>,
    /// Connections served at once; more wait in the kernel's accept queue until one closes (default 4096).
    #[arg(long, env = "SUBSETTLE_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// Request-body bytes held in memory at once over all requests; a body waits (up to --body-timeout, then
    /// 503) until its size fits (default 268435456).
    #[arg(long, env = "SUBSETTLE_MAX_BODY_MEMORY")]
    pub max_body_memory: Option<usize>,
    /// How long a request waits for a Postgres connection before it is answered 503 (and `/readyz` reports the
    /// database down) (default 2s).
    #[arg(long, env = "SUBSETTLE_DB_TIMEOUT")]
    pub db_timeout: Option<String>,
}

/// The `[server]` table of the TOML file: `serve`'s limits on clients (its flags win).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerFile {
    /// `--header-timeout`.
    pub header_timeout: Option<String>,
    /// `--body-timeout`.
    pub body_timeout: Option<String>,
    /// `--idle-timeout`.
    pub idle_timeout: Option<String>,
    /// `--request-timeout`.
    pub request_timeout: Option<String>,
    /// `--max-connections`.
    pub max_connections: Option<usize>,
    /// `--max-body-memory`.
    pub max_body_memory: Option<usize>,
    /// `--db-timeout`.
    pub db_timeout: Option<String>,
}

/// `serve`'s resolved limits on clients (seconds and counts; the server checks them against each other).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerSettings {
    /// Header read timeout, seconds.
    pub header_timeout: u64,
    /// Body read timeout, seconds.
    pub body_timeout: u64,
    /// Idle keep-alive timeout, seconds.
    pub idle_timeout: u64,
    /// Whole-request timeout, seconds.
    pub request_timeout: u64,
    /// Connections at once.
    pub max_connections: usize,
    /// Body bytes in memory at once.
    pub max_body_memory: usize,
    /// Postgres acquire timeout, seconds.
    pub db_timeout: u64,
}

impl ServerSettings {
    fn resolve(flags: &ServerFlags, file: ServerFile) -> Result<Self, KeeperError> {
        let secs = |key: &str, flag: &Option<String>, file: Option<String>, default: &str| {
            let text = flag.clone().or(file).unwrap_or_else(|| default.to_owned());
            let value = parse_duration_secs(&text).map_err(|e| bad(key, &text, e))?;
            if !(1..=3_600).contains(&value) {
                return Err(bad(key, &text, "between 1s and 1h"));
            }
            Ok(value)
        };
        let max_connections = flags.max_connections.or(file.max_connections).unwrap_or(4096);
        if !(1..=1_000_000).contains(&max_connections) {
            return Err(bad("max_connections", max_connections, "between 1 and 1000000"));
        }
        let max_body_memory = flags.max_body_memory.or(file.max_body_memory).unwrap_or(256 << 20);
        Ok(Self {
            header_timeout: secs("header_timeout", &flags.header_timeout, file.header_timeout, "10s")?,
            body_timeout: secs("body_timeout", &flags.body_timeout, file.body_timeout, "30s")?,
            idle_timeout: secs("idle_timeout", &flags.idle_timeout, file.idle_timeout, "60s")?,
            request_timeout: secs("request_timeout", &flags.request_timeout, file.request_timeout, "60s")?,
            max_connections,
            max_body_memory,
            db_timeout: secs("db_timeout", &flags.db_timeout, file.db_timeout, "2s")?,
        })
    }
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
    /// Limits on clients.
    #[command(flatten)]
    pub server: ServerFlags,
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
    fn server(&self) -> Option<&ServerFlags> {
        Some(&self.server)
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

/// Flags of `run` that the TOML file's `[run]` table may also give (the flag wins; then the file; then the default).
#[derive(Debug, Default, Clone, clap::Args)]
pub struct RunFlags {
    /// Time between steps (default 30s).
    #[arg(long)]
    pub interval: Option<String>,
    /// Time between settlement epochs (default 1d).
    #[arg(long)]
    pub epoch_interval: Option<String>,
    /// Time between two attempts at a past-due renewal, a failed charge or a payout (default 6h).
    #[arg(long)]
    pub retry_interval: Option<String>,
    /// Items per renew, charge or claim transaction (default 200).
    #[arg(long)]
    pub batch: Option<usize>,
    /// Push payouts to recipients with at least this claimable balance, in token units like --price (default 10).
    #[arg(long)]
    pub payout_threshold: Option<Decimal>,
    /// Also charge mid-period, once per retry interval, when a subscription's overage has crossed a multiple of this
    /// many token units (e.g. 10 for every 10 USDC); without it overage is charged at period close only.
    #[arg(long)]
    pub charge_threshold: Option<Decimal>,
    /// Highest maxFeePerGas ever signed, in gwei (default 200).
    #[arg(long)]
    pub max_fee_gwei: Option<u64>,
    /// Priority fee, in gwei (default 1).
    #[arg(long)]
    pub priority_fee_gwei: Option<u64>,
    /// Replace a transaction not mined after this long with higher fees (default 60s).
    #[arg(long)]
    pub bump_after: Option<String>,
    /// Address of `/metrics` and `/healthz` (default 127.0.0.1:9102).
    #[arg(long, env = "SUBSETTLE_KEEPER_METRICS")]
    pub metrics_addr: Option<String>,
}

/// `run`'s settings: the common, close and engine groups.
#[derive(Debug, Default, Clone, clap::Args)]
pub struct RunSettingsArgs {
    /// Common.
    #[command(flatten)]
    pub common: Overrides,
    /// Period close.
    #[command(flatten)]
    pub close: CloseFlags,
    /// The engine.
    #[command(flatten)]
    pub run: RunFlags,
}

impl SettingsFlags for RunSettingsArgs {
    fn common(&self) -> &Overrides {
        &self.common
    }
    fn close(&self) -> Option<&CloseFlags> {
        Some(&self.close)
    }
    fn run(&self) -> Option<&RunFlags> {
        Some(&self.run)
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
        let confirmations = file.confirmations;
        if confirmations == Some(0) {
            return Err(bad("confirmations", 0, "at least 1"));
        }
        let run = match flags.run() {
            Some(run) => Some(RunSettings::resolve(run, file.run.unwrap_or_default(), decimals)?),
            None => None,
        };
        let server = match flags.server() {
            Some(server) => Some(ServerSettings::resolve(server, file.server.unwrap_or_default())?),
            None => None,
        };
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
            confirmations,
            private_key_file: file.private_key_file.map(|p| base.join(p)),
            run,
            server,
        })
    }
}

impl RunSettings {
    /// The engine's settings from its flags over the file's `[run]` table over the defaults.
    fn resolve(flags: &RunFlags, file: RunFile, decimals: u32) -> Result<Self, KeeperError> {
        let secs = |key: &str, flag: &Option<String>, file: Option<String>, default: &str, range: std::ops::RangeInclusive<u64>| {
            let text = flag.clone().or(file).unwrap_or_else(|| default.to_owned());
            let value = parse_duration_secs(&text).map_err(|e| bad(key, &text, e))?;
            if !range.contains(&value) {
                return Err(bad(key, &text, format!("between {}s and {}s", range.start(), range.end())));
            }
            Ok(value)
        };
        let tokens = |key: &str, flag: Option<Decimal>, file: Option<String>| -> Result<Option<u128>, KeeperError> {
            let value = match (flag, file) {
                (Some(value), _) => value,
                (None, Some(text)) => text.trim().parse::<Decimal>().map_err(|_| bad(key, &text, "not a token amount like 10 or 0.5"))?,
                (None, None) => return Ok(None),
            };
            if value.is_sign_negative() || value.normalize().scale() > decimals {
                return Err(bad(key, value, format!("a token amount of at most {decimals} decimals, not negative")));
            }
            crate::money::to_base_units(value, decimals).map(Some).map_err(|e| bad(key, value, e))
        };
        let batch = flags.batch.or(file.batch).unwrap_or(200);
        if !(1..=2_000).contains(&batch) {
            return Err(bad("batch", batch, "between 1 and 2000"));
        }
        let metrics_text = flags.metrics_addr.clone().or(file.metrics_addr).unwrap_or_else(|| "127.0.0.1:9102".into());
        let metrics_addr = metrics_text.parse().map_err(|_| bad("metrics_addr", &metrics_text, "not an address like 127.0.0.1:9102"))?;
        let max_fee_gwei = flags.max_fee_gwei.or(file.max_fee_gwei).unwrap_or(200);
        let priority_fee_gwei = flags.priority_fee_gwei.or(file.priority_fee_gwei).unwrap_or(1);
        if priority_fee_gwei > max_fee_gwei || max_fee_gwei == 0 || max_fee_gwei > 1_000_000 {
            return Err(bad("max_fee_gwei", max_fee_gwei, format!("between 1 and 1000000 and at least priority_fee_gwei ({priority_fee_gwei})")));
        }
        Ok(Self {
            interval: secs("interval", &flags.interval, file.interval, "30s", 1..=86_400)?,
            epoch_interval: secs("epoch_interval", &flags.epoch_interval, file.epoch_interval, "1d", 1..=366 * 86_400)?,
            retry_interval: secs("retry_interval", &flags.retry_interval, file.retry_interval, "6h", 1..=30 * 86_400)?,
            batch,
            payout_threshold: tokens("payout_threshold", flags.payout_threshold, file.payout_threshold)?
                .unwrap_or_else(|| 10 * 10u128.pow(decimals)),
            charge_threshold: tokens("charge_threshold", flags.charge_threshold, file.charge_threshold)?.filter(|t| *t > 0),
            max_fee_gwei,
            priority_fee_gwei,
            bump_after: secs("bump_after", &flags.bump_after, file.bump_after, "60s", 1..=86_400)?,
            metrics_addr,
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
    use super::{CloseSettings, KeeperError, Overrides, RunFlags, RunSettingsArgs, ServeSettings, ServerFlags, Settings, parse_duration_secs};

    const DEPLOYMENT: &str = r#"{"chain_id":31337,"token":"0x0000000000000000000000000000000000000001",
        "subscriptions":"0x0000000000000000000000000000000000000002","escrow":"0x0000000000000000000000000000000000000003",
        "start_block":1}"#;

    /// A config file with `toml` in a fresh directory beside a deployment descriptor.
    fn config(toml: &str) -> (tempfile::TempDir, Overrides) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("deployment.json"), DEPLOYMENT).unwrap();
        let text = format!("database_url = \"postgres://localhost/x\"\ndeployment = \"deployment.json\"\n{toml}");
        std::fs::write(dir.path().join("keeper.toml"), text).unwrap();
        let common = Overrides { config: Some(dir.path().join("keeper.toml")), ..Overrides::default() };
        (dir, common)
    }

    fn run_settings(common: Overrides, run: RunFlags) -> Result<Settings, KeeperError> {
        Settings::resolve(&RunSettingsArgs { common, close: Default::default(), run })
    }

    #[test]
    fn the_file_configures_run() {
        let (dir, common) = config(
            "rpc_url = \"http://node:8545\"\nconfirmations = 3\nprivate_key_file = \"keeper.key\"\n\n[run]\ninterval = \"5s\"\n\
             epoch_interval = \"12h\"\nretry_interval = \"1h\"\nbatch = 50\npayout_threshold = \"2.5\"\ncharge_threshold = \"10\"\n\
             max_fee_gwei = 50\npriority_fee_gwei = 2\nbump_after = \"2m\"\nmetrics_addr = \"127.0.0.1:9200\"\n",
        );
        let settings = run_settings(common, RunFlags::default()).unwrap();
        let run = settings.run.clone().unwrap();
        assert_eq!((run.interval, run.epoch_interval, run.retry_interval, run.batch), (5, 43_200, 3_600, 50));
        assert_eq!((run.payout_threshold, run.charge_threshold), (2_500_000, Some(10_000_000)));
        assert_eq!((run.max_fee_gwei, run.priority_fee_gwei, run.bump_after), (50, 2, 120));
        assert_eq!(run.metrics_addr.to_string(), "127.0.0.1:9200");
        assert_eq!(settings.rpc_url.as_deref(), Some("http://node:8545"));
        assert_eq!(settings.confirmations, Some(3));
        assert_eq!(settings.private_key_file.as_deref(), Some(dir.path().join("keeper.key").as_path()));
    }

    #[test]
    fn flags_win_over_the_file_and_defaults_fill_the_rest() {
        let (_dir, common) = config("[run]\ninterval = \"5s\"\npayout_threshold = \"2.5\"\n");
        let flags = RunFlags { interval: Some("7s".into()), payout_threshold: Some("0.000001".parse().unwrap()), ..RunFlags::default() };
        let run = run_settings(common.clone(), flags).unwrap().run.unwrap();
        assert_eq!((run.interval, run.payout_threshold), (7, 1));
        assert_eq!((run.epoch_interval, run.retry_interval, run.batch, run.charge_threshold), (86_400, 21_600, 200, None));
        let (_dir, common) = config("");
        let run = run_settings(common, RunFlags::default()).unwrap().run.unwrap();
        assert_eq!((run.payout_threshold, run.max_fee_gwei, run.priority_fee_gwei, run.bump_after), (10_000_000, 200, 1, 60));
        assert_eq!(run.metrics_addr.to_string(), "127.0.0.1:9102");
    }

    #[test]
    fn bad_run_settings_are_refused_by_name() {
        let refused = |toml: &str| {
            let (_dir, common) = config(toml);
            run_settings(common, RunFlags::default()).unwrap_err().to_string()
        };
        assert!(refused("[run]\npayout_threshold = \"0.0000001\"\n").starts_with("payout_threshold"));
        assert!(refused("[run]\ncharge_threshold = \"-1\"\n").starts_with("charge_threshold"));
        assert!(refused("[run]\ncharge_threshold = \"ten\"\n").starts_with("charge_threshold"));
        assert!(refused("[run]\ninterval = \"0s\"\n").starts_with("interval"));
        assert!(refused("[run]\nbatch = 0\n").starts_with("batch"));
        assert!(refused("[run]\nmetrics_addr = \"localhost\"\n").starts_with("metrics_addr"));
        assert!(refused("[run]\nmax_fee_gwei = 1\npriority_fee_gwei = 2\n").starts_with("max_fee_gwei"));
        assert!(refused("confirmations = 0\n").starts_with("confirmations"));
        assert!(refused("[run]\nintervall = \"5s\"\n").contains("intervall"), "an unknown key is named");
    }

    #[test]
    fn the_file_configures_the_servers_limits() {
        let (_dir, common) = config("[server]\nheader_timeout = \"5s\"\nmax_connections = 100\ndb_timeout = \"3s\"\n");
        let flags = ServeSettings {
            common,
            server: ServerFlags { max_connections: Some(50), ..ServerFlags::default() },
            ..ServeSettings::default()
        };
        let server = Settings::resolve(&flags).unwrap().server.unwrap();
        assert_eq!((server.header_timeout, server.body_timeout, server.idle_timeout, server.request_timeout), (5, 30, 60, 60));
        assert_eq!((server.max_connections, server.max_body_memory, server.db_timeout), (50, 256 << 20, 3));
        for (toml, key) in [("[server]\ndb_timeout = \"0s\"\n", "db_timeout"), ("[server]\nmax_connections = 0\n", "max_connections"), ("[server]\nbody_timout = \"1s\"\n", "body_timout")] {
            let (_dir, common) = config(toml);
            let refused = Settings::resolve(&ServeSettings { common, ..ServeSettings::default() }).unwrap_err().to_string();
            assert!(refused.contains(key), "{refused}");
        }
    }

    #[test]
    fn only_run_resolves_the_engine_settings() {
        let (_dir, common) = config("[run]\nbatch = 0\n");
        let close = Settings::resolve(&CloseSettings { common, close: Default::default() }).unwrap();
        assert!(close.run.is_none());
    }

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
