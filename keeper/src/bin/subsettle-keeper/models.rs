//! `model` and `price`: the operator's catalogue (models, meters, splits, prices, allowances).

use super::*;

fn parse_meter(text: &str) -> anyhow::Result<NewMeter> {
    match text.split_once(':') {
        None => Ok(NewMeter { meter: text.to_owned(), scale: 0 }),
        Some((meter, scale)) => Ok(NewMeter {
            meter: meter.to_owned(),
            scale: scale.parse().with_context(|| format!("--meter {text}: scale `{scale}` is not a number"))?,
        }),
    }
}

pub(crate) async fn run_model(command: ModelCommand) -> anyhow::Result<()> {
    match command {
        ModelCommand::Add { settings, model_id, name, split, meters } => {
            let (settings, pool) = open(&settings).await?;
            let meters = meters.iter().map(|m| parse_meter(m)).collect::<anyhow::Result<Vec<_>>>()?;
            let model = NewModel { model_id, display_name: name, split_id: split, effective_at: 0, meters };
            catalog::add_model(&pool, settings.deployment.chain_id, &model).await?;
            println!("registered model {}", model.model_id);
        }
        ModelCommand::SetSplit { settings, model_id, split, effective_at, rpc_url } => {
            use alloy::providers::Provider;
            let (settings, pool) = open(&settings).await?;
            let provider = crate::serve::connect_chain(&settings, rpc_url.as_deref(), "model set-split").await?;
            let delay_secs = crate::serve::read_split_notice(&provider, &settings.deployment).await?;
            // Now is the later of the system clock and the chain's latest block (a local chain may run ahead).
            let block = provider.get_block_by_number(alloy::eips::BlockNumberOrTag::Latest).await?.context("the node has no latest block")?;
            let now = Clock::System.now_secs().max(i64::try_from(block.header.timestamp).unwrap_or(i64::MAX));
            let notice = catalog::SplitNotice { now, delay_secs };
            catalog::set_model_split(&pool, settings.deployment.chain_id, &model_id, split, effective_at, notice).await?;
            println!("model {model_id} earns for split {split} from {effective_at}");
        }
        ModelCommand::AddMeter { settings, model_id, meter } => {
            let (_, pool) = open(&settings).await?;
            let meter = parse_meter(&meter)?;
            catalog::add_meter(&pool, &model_id, &meter).await?;
            println!("model {model_id}: meter {} (scale {})", meter.meter, meter.scale);
        }
        ModelCommand::List { settings } => {
            let (_, pool) = open(&settings).await?;
            let snapshot = catalog::load(&pool).await?;
            println!("{}", serde_json::to_string_pretty(&snapshot.models.values().collect::<Vec<_>>())?);
        }
    }
    Ok(())
}

pub(crate) async fn run_price(command: PriceCommand) -> anyhow::Result<()> {
    match command {
        PriceCommand::Set { settings, model, meter, price, per, effective_at } => {
            let (_, pool) = open(&settings).await?;
            catalog::set_price(&pool, &NewPrice { model_id: model.clone(), meter: meter.clone(), unit_price: price, per_units: per, effective_at }).await?;
            println!("{model}/{meter}: {price} per {per} from {effective_at}");
        }
        PriceCommand::Allowance { settings, plan, units, value, effective_at } => {
            let (settings, pool) = open(&settings).await?;
            let mut parsed = std::collections::BTreeMap::new();
            for entry in &units {
                let (meter, amount) = entry.split_once('=').with_context(|| format!("--units {entry}: write meter=amount"))?;
                let amount: Decimal = amount.parse().with_context(|| format!("--units {entry}: `{amount}` is not a decimal"))?;
                parsed.insert(meter.to_owned(), amount);
            }
            catalog::set_allowance(&pool, settings.deployment.chain_id, &NewAllowance { plan_id: plan, effective_at, units: parsed, value }).await?;
            println!("plan {plan}: allowance set from {effective_at}");
        }
    }
    Ok(())
}
