//! Owner and deployment actions on the chain: `deploy` and `admin`.

use super::*;

pub(crate) async fn run_deploy(args: DeployArgs) -> anyhow::Result<()> {
    let key = OperatorKey::load(args.private_key_file.as_deref())?;
    let plan = DeployPlan {
        rpc_url: args.rpc_url,
        token: match args.token {
            Some(token) => TokenSource::Existing(token),
            None => TokenSource::LocalUsdc,
        },
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

/// Where `run` and `admin` find the node when neither a flag nor the config file says.
const DEFAULT_RPC_URL: &str = "http://127.0.0.1:8545";

/// The signer on the deployment's chain, refusing a node of another chain.
pub(crate) async fn connect_sender(
    settings: &Settings,
    chain: &ChainArgs<impl clap::Args>,
    fees: subsettle_keeper::settlement::outbox::FeePolicy,
) -> anyhow::Result<subsettle_keeper::settlement::outbox::Sender> {
    use alloy::providers::{Provider, ProviderBuilder};
    let key = OperatorKey::load(chain.private_key_file.as_deref().or(settings.private_key_file.as_deref()))?;
    let rpc_url = chain.rpc_url.as_deref().or(settings.rpc_url.as_deref()).unwrap_or(DEFAULT_RPC_URL);
    let url = rpc_url.parse().map_err(|_| anyhow::anyhow!("rpc_url: `{rpc_url}` is not a URL"))?;
    let provider = ProviderBuilder::new().connect_http(url).erased();
    let chain_id = provider.get_chain_id().await.context("eth_chainId")?;
    anyhow::ensure!(
        chain_id == settings.deployment.chain_id,
        "rpc_url: the node is chain {chain_id}, the deployment is on chain {}",
        settings.deployment.chain_id
    );
    use subsettle_keeper::settlement::outbox::Finality;
    let finality = chain.confirmations.or(settings.confirmations).map_or(Finality::Finalized, Finality::Confirmations);
    finality.check(&provider).await?;
    Ok(subsettle_keeper::settlement::outbox::Sender { provider, key, chain_id, fees, finality })
}

/// Token units to base units, refusing more decimals than the token has.
fn base_units(field: &str, value: Decimal, decimals: u32) -> anyhow::Result<u128> {
    anyhow::ensure!(!value.is_sign_negative(), "{field}: {value} is negative");
    anyhow::ensure!(value.normalize().scale() <= decimals, "{field}: {value} has more than {decimals} decimals");
    Ok(subsettle_keeper::money::to_base_units(value, decimals)?)
}

pub(crate) async fn run_admin(args: AdminArgs) -> anyhow::Result<()> {
    use subsettle_keeper::operator::admin::{AdminAction, check_idempotency_key, execute};
    let (settings, pool) = open(&args.chain.settings).await?;
    let decimals = settings.decimals;
    let action = match args.action {
        AdminCommand::CreatePlan { price, period, grace } => AdminAction::CreatePlan { price: base_units("price", price, decimals)?, period, grace },
        AdminCommand::SetPlanActive { plan, active } => AdminAction::SetPlanActive { plan, active },
        AdminCommand::CreateSplit { recipients, remainder_index } => AdminAction::CreateSplit {
            recipients: recipients.iter().map(|(a, _)| *a).collect(),
            bps: recipients.iter().map(|(_, b)| *b).collect(),
            remainder_index,
        },
        AdminCommand::ProposeSplitChange { split, recipients, remainder_index } => AdminAction::ProposeSplitChange {
            split,
            recipients: recipients.iter().map(|(a, _)| *a).collect(),
            bps: recipients.iter().map(|(_, b)| *b).collect(),
            remainder_index,
        },
        AdminCommand::CancelSplitChange { split } => AdminAction::CancelSplitChange { split },
        AdminCommand::Hold { recipient, until, reason } => AdminAction::Hold { recipient, until, reason },
        AdminCommand::Release { recipient } => AdminAction::Release { recipient },
        AdminCommand::Refund { subscription, period, amount, to_credit, reference } => {
            AdminAction::Refund { subscription, period, amount: base_units("amount", amount, decimals)?, to_credit, reference }
        }
        AdminCommand::Pause => AdminAction::Pause,
        AdminCommand::Unpause => AdminAction::Unpause,
        AdminCommand::SetKeeper { keeper } => AdminAction::SetKeeper { keeper },
        AdminCommand::RetrySettlement { epoch } => return run_retry_settlement(&settings, &pool, epoch).await,
    };
    action.validate()?;
    if let Some(key) = &args.idempotency_key {
        check_idempotency_key(key)?;
    }
    let sender = connect_sender(&settings, &args.chain, Default::default()).await?;
    let wait = Duration::from_secs(args.wait);
    let outcomes = execute(&pool, &sender, &settings.deployment, &action, args.idempotency_key.as_deref(), wait).await?;
    println!("{}", serde_json::to_string_pretty(&outcomes)?);
    for outcome in &outcomes {
        if let Some(note) = &outcome.note {
            eprintln!("{}: {note}", outcome.action.as_deref().unwrap_or("admin"));
        }
    }
    if outcomes.iter().any(|o| o.state == "sent" || o.state == "planned") {
        anyhow::bail!(
            "not final within {}; run the same command again to follow it (it sends nothing again), or see `status`",
            humanize(args.wait)
        );
    }
    if outcomes.iter().any(|o| !o.applied()) {
        anyhow::bail!("the action did not go through; see the failure above");
    }
    Ok(())
}

fn humanize(secs: u64) -> String {
    if secs.is_multiple_of(60) && secs > 0 { format!("{} min", secs / 60) } else { format!("{secs} s") }
}

/// `admin retry-settlement --epoch N`: sets a failed settlement's attempts aside so the engine tries it again.
async fn run_retry_settlement(settings: &Settings, pool: &sqlx::PgPool, epoch: u64) -> anyhow::Result<()> {
    use subsettle_keeper::settlement::plan::{SettlementRetry, retry_settlement};
    let epoch = i64::try_from(epoch).context("--epoch: too large")?;
    let outcome = retry_settlement(pool, settings.deployment.chain_id, epoch).await?;
    println!("{}", serde_json::to_string_pretty(&outcome)?);
    match &outcome {
        SettlementRetry::Reopened { failed_attempts, .. } => {
            eprintln!("epoch {epoch}: {failed_attempts} failed attempt(s) set aside; the engine tries the settlement again at its next step")
        }
        SettlementRetry::NothingFailed { latest: Some((key, state)) } if state != "superseded" => {
            eprintln!("epoch {epoch}: already applied or pending: its latest attempt {key} is {state}; nothing to retry")
        }
        SettlementRetry::NothingFailed { .. } => {
            eprintln!("epoch {epoch}: already applied: no failed attempt to set aside (its retry is granted; the engine sends it at its next step)")
        }
        SettlementRetry::Settled => eprintln!("epoch {epoch}: already applied: the chain has settlement {epoch}"),
    }
    Ok(())
}
