//! Checking a statement against its own leaves and proofs and against the chain as indexed: see [`verify`].

use alloy::primitives::B256;
use rust_decimal::Decimal;
use serde::Serialize;
use sqlx::PgPool;

use super::{
    CreditRef, Party, PeriodRef, Statement, StatementLine, chain_charges,
    window::{self, ChargeClock, Chargeable, chargeable},
};
use crate::{
    KeeperError,
    metering::close::line_leaf,
    merkle, money,
    metering::pricing::{Line, LineKey},
};

/// What [`verify`] found.
#[derive(Debug, Default, Serialize)]
pub struct Verification {
    /// Lines whose leaf and proof check out.
    pub lines_ok: usize,
    /// Every problem, with the line or reference involved.
    pub problems: Vec<String>,
    /// Epochs not (yet) settled on chain: their lines were checked against the keeper's root only.
    pub unsettled_epochs: Vec<u64>,
    /// Periods whose overage charge the chain has collected only part of while the contract may still collect the
    /// rest (its charge window is open), or where that could not be judged (no clock): what the statement says of
    /// them is true so far but not final. Not a problem.
    pub open_charges: Vec<String>,
}

impl Verification {
    /// True when nothing differs.
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }
}

fn leaf_of(statement: &Statement, line: &StatementLine) -> Result<B256, String> {
    let amount = |text: &str, what: &str| text.parse::<u128>().map_err(|_| format!("{what} `{text}` is not an amount"));
    let priced = Line {
        key: LineKey {
            adjustment_of: line.adjustment_of,
            model: line.model.clone(),
            meter: line.meter.clone(),
            price_effective_at: line.price_effective_at,
            split_id: line.split_id,
        },
        unit_price: line.unit_price,
        per_units: line.per_units,
        event_count: 0,
        quantity: line.quantity,
        included_quantity: line.included_quantity,
        value: line.value,
        included_value: line.included_value,
        overage_amount: amount(&line.overage_amount, "overage_amount")?,
        attributed: amount(&line.attributed, "attributed")?,
    };
    Ok(line_leaf(statement.chain_id, line.subscription_id, line.period_index, line.line_no, &priced))
}

/// [`verify_at`] without the chain's clock: a period said to be uncollectable is accepted only where the index
/// alone shows its charge window closed (the subscription has moved two periods on).
pub async fn verify(pool: &PgPool, statement: &Statement) -> Result<Verification, KeeperError> {
    verify_at(pool, statement, None).await
}

/// Checks a statement: every line's leaf (recomputed from its fields) proves against its root, the totals add
/// up, every epoch root equals the root of the settlement on chain, and (creators) every credit equals what the
/// chain credited; (subscribers) every period's `paid` is what the chain collected, and what it did not collect
/// is `uncollected`, said to be uncollectable exactly when the contract's rule ([`window`]) at `clock` says so.
pub async fn verify_at(pool: &PgPool, statement: &Statement, clock: Option<&ChargeClock>) -> Result<Verification, KeeperError> {
    let mut report = Verification::default();
    let mut total = 0u128;
    for line in &statement.lines {
        let at = format!("line {}/{}/{}", line.subscription_id, line.period_index, line.line_no);
        match leaf_of(statement, line) {
            Ok(leaf) if merkle::verify(&line.proof, line.root, leaf) => report.lines_ok += 1,
            Ok(_) => report.problems.push(format!("{at}: its fields do not prove against root {}", line.root)),
            Err(e) => report.problems.push(format!("{at}: {e}")),
        }
        match line.amount.parse::<u128>() {
            Ok(a) => total += a,
            Err(_) => report.problems.push(format!("{at}: amount `{}` is not an amount", line.amount)),
        }
        match line.epoch_id {
            Some(epoch) => match statement.epochs.iter().find(|e| e.epoch_id == epoch) {
                Some(e) if e.usage_root == line.root => {}
                _ => report.problems.push(format!("{at}: its root is not epoch {epoch}'s root in the statement")),
            },
            // Not gathered yet: the line proves against its period's usage root, checked below against the chain.
            None => match statement.periods.iter().find(|p| p.subscription_id == line.subscription_id && p.period_index == line.period_index) {
                Some(p) if p.usage_root == line.root => {}
                _ => report.problems.push(format!("{at}: not in an epoch, and its root is not its period's usage root")),
            },
        }
        if statement.party == Party::Subscriber && line.amount != line.attributed {
            report.problems.push(format!("{at}: a subscriber's amount is the line's attributed {}, not {}", line.attributed, line.amount));
        }
    }
    if total.to_string() != statement.total {
        report.problems.push(format!("total: the lines add up to {total}, the statement says {}", statement.total));
    }
    for epoch in &statement.epochs {
        let on_chain: Option<Vec<u8>> = sqlx::query_scalar(
            "SELECT usage_root FROM chain.settlements WHERE chain_id = $1 AND settlement_id = $2::NUMERIC ORDER BY block_number DESC LIMIT 1",
        )
        .bind(statement.chain_id as i64)
        .bind(epoch.epoch_id.to_string())
        .fetch_optional(pool)
        .await?;
        match on_chain {
            None => report.unsettled_epochs.push(epoch.epoch_id),
            Some(root) if root == epoch.usage_root.as_slice() => {}
            Some(root) => report.problems.push(format!(
                "epoch {}: the statement's root {} differs from settlement {}'s root on chain 0x{}",
                epoch.epoch_id,
                epoch.usage_root,
                epoch.epoch_id,
                alloy::hex::encode(root)
            )),
        }
    }
    verify_credits(pool, statement, &mut report).await?;
    verify_periods(pool, statement, clock, &mut report).await?;
    Ok(report)
}

async fn verify_credits(pool: &PgPool, statement: &Statement, report: &mut Verification) -> Result<(), KeeperError> {
    for credit in &statement.credits {
        let lines: u128 = statement
            .lines
            .iter()
            .filter(|l| l.epoch_id == Some(credit.epoch_id) && l.split_id == credit.split_id)
            .filter_map(|l| l.amount.parse::<u128>().ok())
            .sum();
        if lines.to_string() != credit.credit {
            report.problems.push(format!("epoch {} split {}: lines add up to {lines}, credit says {}", credit.epoch_id, credit.split_id, credit.credit));
        }
        check_division(statement, credit, report);
        let on_chain: Option<String> = sqlx::query_scalar(
            "SELECT SUM(amount)::TEXT FROM chain.credits WHERE chain_id = $1 AND recipient = $2
               AND settlement_id = $3::NUMERIC AND split_id = $4::NUMERIC",
        )
        .bind(statement.chain_id as i64)
        .bind(statement.address.to_vec())
        .bind(credit.epoch_id.to_string())
        .bind(credit.split_id.to_string())
        .fetch_one(pool)
        .await?;
        match on_chain {
            Some(amount) if amount != credit.credit => report.problems.push(format!(
                "epoch {} split {}: the chain credited {amount}, the statement says {}",
                credit.epoch_id, credit.split_id, credit.credit
            )),
            // The escrow emits no credit of zero.
            None if credit.credit != "0" && !report.unsettled_epochs.contains(&credit.epoch_id) => report.problems.push(format!(
                "epoch {} split {}: settled on chain but nothing credited to {}",
                credit.epoch_id, credit.split_id, statement.address
            )),
            _ => {}
        }
    }
    Ok(())
}

/// The creator's lines of one (epoch, split) must be the credit divided by the lines' amounts (rule 3).
fn check_division(statement: &Statement, credit: &CreditRef, report: &mut Verification) {
    let lines: Vec<&StatementLine> =
        statement.lines.iter().filter(|l| l.epoch_id == Some(credit.epoch_id) && l.split_id == credit.split_id).collect();
    let weights: Option<Vec<Decimal>> = lines.iter().map(|l| l.attributed.parse::<Decimal>().ok()).collect();
    let expected = match (credit.credit.parse::<u128>(), weights) {
        (Ok(amount), Some(weights)) => money::divide_by_weight(amount, &weights).ok().flatten(),
        _ => None,
    };
    match expected {
        Some(parts) => {
            for (line, part) in lines.iter().zip(parts) {
                if line.amount != part.to_string() {
                    report.problems.push(format!(
                        "line {}/{}/{}: the credit divided by the lines' amounts gives {part}, not {}",
                        line.subscription_id, line.period_index, line.line_no, line.amount
                    ));
                }
            }
        }
        None if credit.credit == "0" => {}
        None => report.problems.push(format!("epoch {} split {}: the credit cannot be divided over its lines", credit.epoch_id, credit.split_id)),
    }
}

/// Each period: its lines add up to the fee plus the overage charge as priced; `paid` is the fee plus what the
/// chain charged (read from the indexed chain, not from the statement), with the period's usage root once the
/// whole charge is collected; and what the chain did not collect is `uncollected`, to the unit, said to be
/// uncollectable exactly when the period's charge window has closed by the contract's rule at `clock`.
async fn verify_periods(pool: &PgPool, statement: &Statement, clock: Option<&ChargeClock>, report: &mut Verification) -> Result<(), KeeperError> {
    for period in &statement.periods {
        let at = format!("subscription {} period {}", period.subscription_id, period.period_index);
        let lines: u128 = statement
            .lines
            .iter()
            .filter(|l| l.subscription_id == period.subscription_id && l.period_index == period.period_index)
            .filter_map(|l| l.amount.parse::<u128>().ok())
            .sum();
        let (Ok(fee), Ok(charge)) = (period.fee.parse::<u128>(), period.overage_charge.parse::<u128>()) else {
            report.problems.push(format!("{at}: fee `{}` or overage charge `{}` is not an amount", period.fee, period.overage_charge));
            continue;
        };
        if lines != fee + charge {
            report.problems.push(format!("{at}: lines add up to {lines}, fee {fee} plus overage charge {charge} is {}", fee + charge));
        }
        let charged: Option<(String, Vec<u8>)> = sqlx::query_as(
            "SELECT charged_in_period::TEXT, usage_root FROM chain.usage_charges
             WHERE chain_id = $1 AND subscription_id = $2::NUMERIC AND period_index = $3::NUMERIC
             ORDER BY block_number DESC, log_index DESC LIMIT 1",
        )
        .bind(statement.chain_id as i64)
        .bind(period.subscription_id.to_string())
        .bind(period.period_index.to_string())
        .fetch_optional(pool)
        .await?;
        let (collected, root) = match &charged {
            None => (0, None),
            Some((amount, root)) => (crate::store::numeric_u128(amount, "charged_in_period")?, Some(root)),
        };
        if period.paid != (fee + collected).to_string() {
            report.problems.push(format!("{at}: paid {} is not fee {fee} plus the {collected} of overage the chain collected", period.paid));
        }
        if collected > charge {
            report.problems.push(format!("{at}: the chain charged {collected} of overage, more than the statement's overage charge {charge}"));
        } else if collected == charge {
            if root.is_some_and(|root| root != period.usage_root.as_slice()) {
                report.problems.push(format!("{at}: the chain's usage root differs from the statement's {}", period.usage_root));
            }
            if period.uncollected.is_some() || period.uncollectable {
                report.problems.push(format!(
                    "{at}: the chain collected the whole overage charge {charge}, the statement says {} was not collected",
                    period.uncollected.as_deref().unwrap_or("some")
                ));
            }
        } else {
            verify_uncollected(pool, statement.chain_id, period, (collected, charge), clock, &at, report).await?;
        }
        verify_charges(pool, statement.chain_id, period, &at, report).await?;
    }
    Ok(())
}

/// A period the chain collected less of than its overage charge: the statement must say exactly how much was not
/// collected, and call it uncollectable exactly when the period's charge window has closed (its end read from the
/// index, its current period and pauses too, the clock given).
async fn verify_uncollected(
    pool: &PgPool,
    chain_id: u64,
    period: &PeriodRef,
    (collected, charge): (u128, u128),
    clock: Option<&ChargeClock>,
    at: &str,
    report: &mut Verification,
) -> Result<(), KeeperError> {
    let short = charge - collected;
    if period.uncollected.as_deref() != Some(short.to_string().as_str()) {
        report.problems.push(format!(
            "{at}: the chain collected {collected} of the overage charge {charge}; the statement says {} was not collected, not {short}",
            period.uncollected.as_deref().unwrap_or("nothing")
        ));
        return Ok(());
    }
    let Some(end) = window::indexed_period_end(pool, chain_id, period.subscription_id, period.period_index).await? else {
        report.problems.push(format!("{at}: the index has no Subscribed or Renewed event for the period, so its charge window cannot be checked"));
        return Ok(());
    };
    if u64::try_from(period.end).ok() != Some(end) {
        report.problems.push(format!("{at}: the statement says the period ended at {}, the chain at {end}", period.end));
        return Ok(());
    }
    let rule = window::indexed_period(pool, chain_id, period.subscription_id, period.period_index, end, clock).await?;
    match (chargeable(&rule, clock), period.uncollectable) {
        (Chargeable::Closed { .. }, true) => {}
        (Chargeable::Closed { reason, .. }, false) => {
            report.problems.push(format!("{at}: {short} was not collected and never will be ({reason}); the statement does not say it is uncollectable"))
        }
        (Chargeable::Open { until }, true) => report.problems.push(format!(
            "{at}: the statement says {short} is uncollectable, but the period's charge window is open until {}",
            window::show_secs(until)
        )),
        (Chargeable::Open { until }, false) => report.open_charges.push(format!(
            "{at}: the chain has collected {collected} of the overage charge {charge}; its charge window is open until {}",
            window::show_secs(until)
        )),
        (Chargeable::Unjudged, true) => report.problems.push(format!(
            "{at}: the statement says {short} is uncollectable; checking that its charge window has closed needs the chain's clock (an RPC endpoint)"
        )),
        (Chargeable::Unjudged, false) => report.open_charges.push(format!(
            "{at}: the chain has collected {collected} of the overage charge {charge}; whether its charge window has closed was not judged (no chain clock)"
        )),
    }
    Ok(())
}

/// The statement lists exactly the chain's charges for the period, and every threshold charge's root is one the
/// keeper recorded, with its lines, for that amount.
async fn verify_charges(pool: &PgPool, chain_id: u64, period: &PeriodRef, at: &str, report: &mut Verification) -> Result<(), KeeperError> {
    let on_chain = chain_charges(pool, chain_id, period.subscription_id, period.period_index, &period.overage_charge).await?;
    if on_chain != period.charges {
        report.problems.push(format!("{at}: the statement lists {} charges, the chain recorded {} (or they differ)", period.charges.len(), on_chain.len()));
        return Ok(());
    }
    for charge in on_chain.iter().filter(|c| c.threshold) {
        let recorded: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM keeper.threshold_charges WHERE chain_id = $1 AND subscription_id = $2
                              AND period_index = $3 AND usage_root = $4 AND cumulative = $5::NUMERIC)",
        )
        .bind(chain_id as i64)
        .bind(period.subscription_id as i64)
        .bind(period.period_index as i64)
        .bind(charge.usage_root.as_slice())
        .bind(&charge.requested)
        .fetch_one(pool)
        .await?;
        if !recorded {
            report.problems.push(format!("{at}: charge {} carried root {}, which the keeper has no record of", charge.tx_hash, charge.usage_root));
        }
    }
    Ok(())
}
