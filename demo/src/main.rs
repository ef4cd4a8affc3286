//! `subsettle-demo`: plays a compressed month of an AI model marketplace against the running indexer and keeper
//! (started by `scripts/demo`), then prints what happened. See the crate documentation of `subsettle_demo`.

use std::{path::PathBuf, time::Duration};

use alloy::{primitives::U256, signers::local::PrivateKeySigner};
use anyhow::Context;
use clap::Parser;
use subsettle_abi::{Deployment, Subscriptions};
use subsettle_demo::{
    cast::cast,
    month::{KeeperPolicy, Month, Plan},
    summary::{self, Recipient, parse_recipient},
    traffic::UsageApi,
    wallets::Chain,
};

/// Plays the demo's month against running daemons.
#[derive(Debug, Parser)]
#[command(name = "subsettle-demo", version)]
struct Args {
    /// JSON-RPC endpoint of the local chain (anvil: the demo moves its clock).
    #[arg(long, env = "SUBSETTLE_RPC_URL")]
    rpc_url: String,
    /// Postgres URL of the database the indexer and the keeper write.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    database_url: String,
    /// Deployment descriptor written by `subsettle-keeper deploy`.
    #[arg(long, env = "SUBSETTLE_DEPLOYMENT")]
    deployment: PathBuf,
    /// Base URL of the keeper's API (`subsettle-keeper serve`).
    #[arg(long)]
    keeper_url: String,
    /// Subscribers (at least 6: one per role).
    #[arg(long, default_value = "24")]
    subscribers: usize,
    /// The monthly plan's id.
    #[arg(long)]
    pro_plan: u64,
    /// The pay-as-you-go plan's id.
    #[arg(long)]
    payg_plan: u64,
    /// A split recipient for the tables, `name=0xaddress`, repeated.
    #[arg(long = "recipient", value_parser = parse_recipient)]
    recipients: Vec<Recipient>,
    /// The keeper's late-event cutoff, seconds.
    #[arg(long, default_value = "3600")]
    late_cutoff: u64,
    /// The keeper's retry interval for past-due renewals, seconds.
    #[arg(long, default_value = "3600")]
    retry_interval: u64,
    /// The keeper's payout threshold, base units.
    #[arg(long, default_value = "10000000")]
    payout_threshold: u128,
    /// The keeper's threshold for mid-period charges, base units (when it runs with --charge-threshold).
    #[arg(long)]
    charge_threshold: Option<u128>,
    /// Longest wait for one step of the daemons, seconds.
    #[arg(long, default_value = "120")]
    timeout: u64,
    /// Where statements and the summary are written.
    #[arg(long)]
    out: PathBuf,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let deployment = Deployment::load(&args.deployment).with_context(|| format!("--deployment {}", args.deployment.display()))?;
    // The token's owner mints test USDC to the subscribers; a local chain's key, from the environment only.
    let minter: PrivateKeySigner = std::env::var("SUBSETTLE_PRIVATE_KEY")
        .context("SUBSETTLE_PRIVATE_KEY: the token owner's key is needed to mint test USDC")?
        .trim()
        .parse()
        .map_err(|_| anyhow::anyhow!("SUBSETTLE_PRIVATE_KEY: not a hex private key (value not shown)"))?;
    let token = std::env::var("SUBSETTLE_API_TOKEN").context("SUBSETTLE_API_TOKEN: the keeper's operator token")?;
    anyhow::ensure!(args.subscribers >= 6, "--subscribers {}: at least 6, one per role", args.subscribers);
    let chain = Chain::connect(&args.rpc_url, deployment.clone(), minter)?;
    let pool = sqlx::postgres::PgPoolOptions::new().max_connections(4).connect(&args.database_url).await.context("connecting to Postgres")?;
    let month = Month {
        pro: plan(&chain, args.pro_plan).await?,
        payg: plan(&chain, args.payg_plan).await?,
        chain,
        api: UsageApi::new(&args.keeper_url, token),
        pool: pool.clone(),
        people: cast(args.subscribers),
        policy: KeeperPolicy {
            late_cutoff: args.late_cutoff,
            retry_interval: args.retry_interval,
            payout_threshold: args.payout_threshold,
            charge_threshold: args.charge_threshold,
            timeout: Duration::from_secs(args.timeout),
        },
    };
    let played = month.play().await?;

    let statements = args.out.join("statements");
    let recipients = summary::recipients(&pool, deployment.chain_id, &args.recipients, &statements).await?;
    let subscribers = summary::subscribers(&pool, deployment.chain_id, &month.people, &played, &statements).await?;
    let text = format!(
        "\nCreators and partners (USDC; every credit equals the keeper's statement, verified against the chain)\n{recipients}\n\
         Subscribers (USDC; usage of the first period as the keeper closed it, payments as the chain recorded them)\n{subscribers}\n{}\
         Statements (CSV and JSON, with Merkle proofs): {}\n",
        summary::traffic(&played.tally),
        statements.display()
    );
    print!("{text}");
    std::fs::write(args.out.join("summary.txt"), &text)?;
    Ok(())
}

async fn plan(chain: &Chain, id: u64) -> anyhow::Result<Plan> {
    let plan = Subscriptions::new(chain.deployment.subscriptions, &chain.reader).plan(U256::from(id)).call().await.with_context(|| format!("plan {id}"))?;
    let number = |value: U256, what: &str| u64::try_from(value).with_context(|| format!("plan {id}: {what} {value} is out of range"));
    anyhow::ensure!(plan.period > 0, "plan {id} does not exist");
    Ok(Plan { id, price: number(U256::from(plan.price), "price")?, period: number(U256::from(plan.period), "period")?, grace: number(U256::from(plan.gracePeriod), "grace")? })
}
