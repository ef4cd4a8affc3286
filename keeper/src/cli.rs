//! The `subsettle-keeper` command line.

use std::path::PathBuf;

use alloy::primitives::Address;
use clap::{Args, Parser, Subcommand};

use crate::config::parse_duration_secs;

/// Turns usage metering into batched on-chain settlement, and runs the operator's contract actions.
#[derive(Debug, Parser)]
#[command(name = "subsettle-keeper", version, about, long_about = None)]
pub struct Cli {
    /// Log lines as text for people or as one JSON object per line for a log collector.
    #[arg(long, global = true, env = "SUBSETTLE_LOG_FORMAT", default_value = "text", value_enum)]
    pub log_format: LogFormat,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// How log lines are written (to stderr; the level comes from `RUST_LOG`, default `info`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// `2026-12-05T10:00:00Z  INFO message key=value`.
    Text,
    /// `{"timestamp":…,"level":"INFO","fields":{"message":…},"target":…}`.
    Json,
}

/// The keeper's subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Deploy the contracts (and, on a local chain, the USDC-like test token) and write the deployment file.
    Deploy(DeployArgs),
    /// Serve the HTTP API (usage ingest, entitlement, models, prices) and close periods as they end.
    Serve(ServeArgs),
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
    /// The operator's owner actions on the contracts (sent through the outbox; prints the tx and its events).
    Admin(AdminArgs),
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
        /// JSON-RPC endpoint of the chain (else `rpc_url` in the config): a period said to be uncollectable is
        /// checked against the contract's charge window at the block the indexer has reached.
        #[arg(long, env = "SUBSETTLE_RPC_URL")]
        rpc_url: Option<String>,
    },
    /// Compare the chain's views, the indexer's tables and the keeper's books; list every difference with its ids.
    /// Read-only, no key needed. Exit code 0 when all agree, 1 on any difference, 2 when it could not run.
    Reconcile(ReconcileArgs),
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
    /// Only periods (subscriber) or epochs (creator) ending at or after this time (Unix seconds or RFC 3339).
    #[arg(long, value_parser = crate::clock::parse_time_arg::<i64>)]
    pub from: Option<i64>,
    /// ... and before this time (Unix seconds or RFC 3339).
    #[arg(long, value_parser = crate::clock::parse_time_arg::<i64>)]
    pub to: Option<i64>,
    /// Output format.
    #[arg(long, default_value = "table", value_parser = ["table", "csv", "json"])]
    pub format: String,
    /// JSON-RPC endpoint of the chain (else `rpc_url` in the config): a subscriber's period the chain collected less
    /// of is judged with the contract's charge window at the block the indexer has reached (without one, it is
    /// called uncollectable only where the index alone shows it).
    #[arg(long, env = "SUBSETTLE_RPC_URL")]
    pub rpc_url: Option<String>,
}

/// `subsettle-keeper reconcile`
#[derive(Debug, Args)]
pub struct ReconcileArgs {
    /// Settings.
    #[command(flatten)]
    pub settings: crate::config::Overrides,
    /// JSON-RPC endpoint of the chain (read at the block the indexer has reached).
    #[arg(long, env = "SUBSETTLE_RPC_URL", default_value = "http://127.0.0.1:8545")]
    pub rpc_url: String,
    /// Output format.
    #[arg(long, default_value = "table", value_parser = ["table", "json"])]
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
        /// From when (Unix seconds or RFC 3339): at least the escrow's split-change delay from now.
        #[arg(long, value_parser = crate::clock::parse_time_arg::<i64>)]
        effective_at: i64,
        /// JSON-RPC endpoint of the chain, to read the escrow's split-change delay (else `rpc_url` in the config).
        #[arg(long, env = "SUBSETTLE_RPC_URL")]
        rpc_url: Option<String>,
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
        /// From when (Unix seconds or RFC 3339).
        #[arg(long, value_parser = crate::clock::parse_time_arg::<i64>)]
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
        /// From when (Unix seconds or RFC 3339).
        #[arg(long, value_parser = crate::clock::parse_time_arg::<i64>)]
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
        settings: crate::config::ImportSettings,
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
    pub settings: crate::config::CloseSettings,
    /// Also gather the new closes into a settlement epoch.
    #[arg(long)]
    pub epoch: bool,
    /// Judge due periods at this time (Unix seconds or RFC 3339) instead of now, e.g. against a local chain's clock.
    #[arg(long, value_parser = crate::clock::parse_time_arg::<i64>)]
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
    /// Address of the chain's settlement token (its USDC). Either this or --local-usdc.
    #[arg(long, required_unless_present = "local_usdc", conflicts_with = "local_usdc")]
    pub token: Option<Address>,
    /// On a local chain (anvil, chain id 31337 or 1337): deploy Circle's USDC (FiatTokenV2_2 behind
    /// FiatTokenProxy, from the pinned npm package) as Circle does on a new chain; the deployer holds every role
    /// but the proxy admin's and may mint.
    #[arg(long)]
    pub local_usdc: bool,
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


/// What the commands that sign transactions (`run`, `admin`) connect with.
#[derive(Debug, Args)]
pub struct ChainArgs<S: clap::Args = crate::config::Overrides> {
    /// Settings.
    #[command(flatten)]
    pub settings: S,
    /// JSON-RPC endpoint of the chain (else `rpc_url` in the config file; default http://127.0.0.1:8545).
    #[arg(long, env = "SUBSETTLE_RPC_URL")]
    pub rpc_url: Option<String>,
    /// File holding the signing key (hex) (else `private_key_file` in the config file). Without either,
    /// SUBSETTLE_PRIVATE_KEY is read.
    #[arg(long, env = "SUBSETTLE_PRIVATE_KEY_FILE")]
    pub private_key_file: Option<PathBuf>,
    /// Count an action's transaction final once its block has this many confirmations (itself included) instead
    /// of waiting for the node's `finalized` block: required for a node without that tag; 1 on a local chain
    /// (else `confirmations` in the config file).
    #[arg(long, env = "SUBSETTLE_CONFIRMATIONS", value_parser = clap::value_parser!(u64).range(1..))]
    pub confirmations: Option<u64>,
}

/// `subsettle-keeper serve`
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Settings.
    #[command(flatten)]
    pub settings: crate::config::ServeSettings,
    /// Follow the clock of the chain at this JSON-RPC URL instead of the system clock: time is the system clock plus
    /// how far the latest block is ahead of it. For a local chain whose time is moved (the demo); on a live L2
    /// the two agree and this is not needed.
    #[arg(long, env = "SUBSETTLE_CHAIN_CLOCK_RPC")]
    pub chain_clock: Option<String>,
    /// JSON-RPC endpoint of the deployment's chain (required; else `rpc_url` in the config): the wallets' balance,
    /// allowance and credit that billable usage is judged against, and the escrow's split-change delay.
    #[arg(long, env = "SUBSETTLE_RPC_URL")]
    pub rpc_url: Option<String>,
}

/// `subsettle-keeper run`
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Settings, the chain and the keeper's key.
    #[command(flatten)]
    pub chain: ChainArgs<crate::config::RunSettingsArgs>,
    /// Print what one step would send, and exit.
    #[arg(long)]
    pub dry_run: bool,
    /// Run one step and exit.
    #[arg(long)]
    pub once: bool,
}

/// `subsettle-keeper admin ...`: the chain and key to act with, and the action.
#[derive(Debug, Args)]
pub struct AdminArgs {
    /// Settings, the chain and the owner's key.
    #[command(flatten)]
    pub chain: ChainArgs,
    /// Makes the request unique under this key (1-64 of A-Z a-z 0-9 . _ -) instead of its arguments: to create a
    /// second identical plan or split on purpose. A re-run with the same key sends nothing again.
    #[arg(long, global = true)]
    pub idempotency_key: Option<String>,
    /// How long to wait until the transactions are final; a re-run of the same command follows them.
    #[arg(long, global = true, default_value = "10m", value_parser = parse_duration_secs)]
    pub wait: u64,
    /// The action.
    #[command(subcommand)]
    pub action: AdminCommand,
}

/// The owner actions.
#[derive(Debug, Subcommand)]
pub enum AdminCommand {
    /// Create a plan.
    CreatePlan {
        /// Price per period in token units (e.g. 79 or 9.99).
        #[arg(long)]
        price: rust_decimal::Decimal,
        /// Period length (e.g. 30d).
        #[arg(long, value_parser = parse_duration_secs)]
        period: u64,
        /// Grace period after a failed renewal (e.g. 3d).
        #[arg(long, value_parser = parse_duration_secs)]
        grace: u64,
    },
    /// Open or close a plan to new subscribers.
    SetPlanActive {
        /// Plan id.
        #[arg(long)]
        plan: u64,
        /// true or false.
        #[arg(long, action = clap::ArgAction::Set)]
        active: bool,
    },
    /// Create a split: `--recipient 0xabc..:7000` for each recipient (bps sum to 10000).
    CreateSplit {
        /// `address:bps`, repeated.
        #[arg(long = "recipient", required = true, value_parser = parse_share)]
        recipients: Vec<(Address, u16)>,
        /// Which recipient (0-based) receives rounding remainders.
        #[arg(long, default_value = "0")]
        remainder_index: u64,
    },
    /// Propose a new version of a split (it takes effect after the deployment's delay).
    ProposeSplitChange {
        /// Split id.
        #[arg(long)]
        split: u64,
        /// `address:bps`, repeated.
        #[arg(long = "recipient", required = true, value_parser = parse_share)]
        recipients: Vec<(Address, u16)>,
        /// Which recipient (0-based) receives rounding remainders.
        #[arg(long, default_value = "0")]
        remainder_index: u64,
    },
    /// Withdraw a pending split change.
    CancelSplitChange {
        /// Split id.
        #[arg(long)]
        split: u64,
    },
    /// Hold a recipient's claims for a dispute, until a time.
    Hold {
        /// Recipient.
        #[arg(long)]
        recipient: Address,
        /// Until (Unix seconds or RFC 3339).
        #[arg(long, value_parser = crate::clock::parse_time_arg::<u64>)]
        until: u64,
        /// The dispute's reference (hashed on chain).
        #[arg(long)]
        reason: String,
    },
    /// End a hold.
    Release {
        /// Recipient.
        #[arg(long)]
        recipient: Address,
    },
    /// Refund what a subscriber paid for one period of a subscription (its plan fee while it is the last paid
    /// period, its usage charges while the contract still records them), from unallocated revenue.
    Refund {
        /// Subscription id; the refund goes to its subscriber.
        #[arg(long)]
        subscription: u64,
        /// Period index of the subscription.
        #[arg(long)]
        period: u64,
        /// Amount in token units.
        #[arg(long)]
        amount: rust_decimal::Decimal,
        /// As prepaid credit instead of to the wallet.
        #[arg(long)]
        to_credit: bool,
        /// The refund's reference (hashed into the on-chain refund id, so it applies once).
        #[arg(long)]
        reference: String,
    },
    /// Stop pulls and usage charges.
    Pause,
    /// Resume them.
    Unpause,
    /// Rotate the keeper address on both contracts.
    SetKeeper {
        /// The new keeper.
        #[arg(long)]
        keeper: Address,
    },
    /// Let the engine try a failed settlement again at its next step, with a new round of attempts (after fixing
    /// its cause; the failures stay in the outbox as `superseded`). Writes to Postgres only.
    RetrySettlement {
        /// The epoch (= settlement id).
        #[arg(long)]
        epoch: u64,
    },
}

/// Parses `address:bps`.
pub fn parse_share(text: &str) -> Result<(Address, u16), String> {
    let (address, bps) = text.split_once(':').ok_or_else(|| format!("`{text}`: write address:bps, e.g. 0xabc...:7000"))?;
    let address: Address = address.parse().map_err(|_| format!("`{address}` is not a 0x address"))?;
    let bps: u16 = bps.parse().ok().filter(|b| *b <= 10_000).ok_or_else(|| format!("`{bps}` is not a bps value from 0 to 10000"))?;
    Ok((address, bps))
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::Cli;

    fn flags(path: &[&str]) -> Vec<String> {
        let mut command = Cli::command();
        command.build();
        let mut sub = &command;
        for name in path {
            sub = sub.find_subcommand(name).unwrap_or_else(|| panic!("no subcommand {name}"));
        }
        sub.get_arguments().filter_map(|a| a.get_long().map(str::to_owned)).collect()
    }

    #[test]
    fn each_command_takes_only_the_settings_it_uses() {
        let serve_only = ["http-addr", "max-body-bytes", "max-future-skew", "refresh-interval-ms", "api-token-file", "funds-interval", "usage-reload-interval", "close-interval"];
        let close_only = ["default-split", "late-cutoff"];
        for path in [&["status"][..], &["statement"], &["verify-statement"], &["reconcile"], &["model", "list"], &["price", "set"], &["admin"]] {
            let have = flags(path);
            for flag in serve_only.iter().chain(&close_only) {
                assert!(!have.iter().any(|f| f == flag), "{path:?} lists --{flag}");
            }
            assert!(have.iter().any(|f| f == "database-url"), "{path:?} lacks --database-url");
        }
        for path in [&["close"][..], &["run"]] {
            let have = flags(path);
            assert!(close_only.iter().all(|f| have.iter().any(|h| h == f)), "{path:?} lacks a close flag");
            assert!(!serve_only.iter().any(|f| have.iter().any(|h| h == f)), "{path:?} lists a serve flag");
        }
        let serve = flags(&["serve"]);
        assert!(serve_only.iter().chain(&close_only).all(|f| serve.iter().any(|h| h == f)));
        let import = flags(&["usage", "import"]);
        assert!(import.iter().any(|f| f == "max-future-skew") && !import.iter().any(|f| f == "http-addr" || f == "default-split"));
    }

    #[test]
    fn default_split_says_it_is_required() {
        let mut command = Cli::command();
        command.build();
        for name in ["serve", "close", "run"] {
            let sub = command.find_subcommand(name).unwrap();
            let arg = sub.get_arguments().find(|a| a.get_long() == Some("default-split")).unwrap();
            assert!(arg.get_help().unwrap().to_string().contains("Required"), "{name}: --default-split help does not say it is required");
        }
    }

    #[test]
    fn times_are_unix_seconds_or_rfc_3339() {
        use clap::Parser;
        let at = |text: &str| match Cli::try_parse_from(["subsettle-keeper", "close", "--at", text]).map(|c| c.command) {
            Ok(super::Command::Close(args)) => Ok(args.at),
            Ok(_) => unreachable!(),
            Err(e) => Err(e.to_string()),
        };
        assert_eq!(at("1798192800"), Ok(Some(1_798_192_800)));
        assert_eq!(at("2026-12-25T12:00:00+02:00"), Ok(Some(1_798_192_800)));
        assert!(at("2026-12-25T10:00:00+99:99").unwrap_err().contains("--at"));
        let hold = Cli::try_parse_from(["subsettle-keeper", "admin", "hold", "--recipient", "0x0000000000000000000000000000000000000001", "--until", "2026-12-25T10:00:00Z", "--reason", "r"]);
        assert!(hold.is_ok(), "{hold:?}");
    }

    #[test]
    fn help_renders_for_every_command() {
        Cli::command().debug_assert();
    }
}
