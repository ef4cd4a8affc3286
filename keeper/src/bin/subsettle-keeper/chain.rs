//! Owner and deployment actions on the chain: `deploy` and `admin`.

use super::*;

pub(crate) async fn run_deploy(args: DeployArgs) -> anyhow::Result<()> {
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

/// The signer on the deployment's chain, refusing a node of another chain.
pub(crate) async fn connect_sender(
    settings: &Settings,
    chain: &ChainArgs<impl clap::Args>,
    fees: subsettle_keeper::settlement::outbox::FeePolicy,
) -> anyhow::Result<subsettle_keeper::settlement::outbox::Sender> {
    use alloy::providers::{Provider, ProviderBuilder};
    let key = OperatorKey::load(chain.private_key_file.as_deref())?;
    let rpc_url = chain.rpc_url.as_str();
    let url = rpc_url.parse().map_err(|_| anyhow::anyhow!("rpc_url: `{rpc_url}` is not a URL"))?;
    let provider = ProviderBuilder::new().connect_http(url).erased();
    let chain_id = provider.get_chain_id().await.context("eth_chainId")?;
    anyhow::ensure!(
        chain_id == settings.deployment.chain_id,
        "rpc_url: the node is chain {chain_id}, the deployment is on chain {}",
        settings.deployment.chain_id
    );
    Ok(subsettle_keeper::settlement::outbox::Sender { provider, key, chain_id, fees })
}

/// Token units to base units, refusing more decimals than the token has.
fn base_units(field: &str, value: Decimal, decimals: u32) -> anyhow::Result<u128> {
    anyhow::ensure!(!value.is_sign_negative(), "{field}: {value} is negative");
    anyhow::ensure!(value.normalize().scale() <= decimals, "{field}: {value} has more than {decimals} decimals");
    Ok(subsettle_keeper::money::to_base_units(value, decimals)?)
}

pub(crate) async fn run_admin(args: AdminArgs) -> anyhow::Result<()> {
    use subsettle_keeper::operator::admin::{AdminAction, execute};
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
    };
    action.validate()?;
    let sender = connect_sender(&settings, &args.chain, Default::default()).await?;
    let request_id = format!("{}", Clock::System.now_ms());
    let outcomes = execute(&pool, &sender, &settings.deployment, &action, &request_id, Duration::from_secs(120)).await?;
    println!("{}", serde_json::to_string_pretty(&outcomes)?);
    if outcomes.iter().any(|o| o.state != "confirmed") {
        anyhow::bail!("the action did not go through; see the failure above");
    }
    Ok(())
}
