//! What the month came to, from the database both daemons write (the indexer's `chain` schema for what happened
//! on chain, the keeper's for what it metered and decided), with every creator's credit checked against the
//! keeper's statement and every statement verified and written to a file.

use std::{fmt::Write as _, path::Path};

use alloy::primitives::Address;
use anyhow::{Context, ensure};
use sqlx::PgPool;
use subsettle_keeper::metering::statement::{self, Scope, Statement};

use crate::{cast::{PlanKind, Profile}, month::Played, short, traffic::Tally, usdc};

/// A split recipient, named for the tables.
#[derive(Debug, Clone)]
pub struct Recipient {
    /// Who (e.g. "Lumen Labs (creator)").
    pub name: String,
    /// The address splits pay.
    pub address: Address,
}

/// Parses `name=0xaddress`.
pub fn parse_recipient(text: &str) -> Result<Recipient, String> {
    let (name, address) = text.rsplit_once('=').ok_or_else(|| format!("`{text}`: write name=0xaddress"))?;
    let address = address.parse().map_err(|_| format!("`{address}` is not a 0x address"))?;
    Ok(Recipient { name: name.to_owned(), address })
}

/// Lays out rows under headers, columns as wide as their widest cell; numbers right-aligned.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let width = |i: usize| rows.iter().map(|r| r[i].chars().count()).chain([headers[i].chars().count()]).max().unwrap_or(0);
    let widths: Vec<usize> = (0..headers.len()).map(width).collect();
    let numeric = |i: usize| rows.iter().all(|r| r[i].chars().all(|c| c.is_ascii_digit() || c == '.' || c == '-'));
    let line = |cells: Vec<&str>| {
        let mut out = String::from(" ");
        for (i, cell) in cells.iter().enumerate() {
            let pad = widths[i] - cell.chars().count();
            if numeric(i) {
                out.push_str(&" ".repeat(pad));
                out.push_str(cell);
            } else {
                out.push_str(cell);
                out.push_str(&" ".repeat(pad));
            }
            out.push_str("  ");
        }
        out.trim_end().to_owned() + "\n"
    };
    let mut text = line(headers.to_vec());
    text += &line(widths.iter().map(|w| "-".repeat(*w)).collect::<Vec<_>>().iter().map(String::as_str).collect());
    for row in rows {
        text += &line(row.iter().map(String::as_str).collect());
    }
    text
}

async fn amount(pool: &PgPool, sql: &str, who: &[u8]) -> anyhow::Result<u128> {
    let text: String = sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT COALESCE(({sql}), 0)::TEXT")))
        .bind(who.to_vec())
        .fetch_one(pool)
        .await
        .with_context(|| sql.to_owned())?;
    Ok(text.parse()?)
}

/// The recipients' table, with each creator statement verified against the chain and written to `dir`.
pub async fn recipients(pool: &PgPool, chain_id: u64, recipients: &[Recipient], dir: &Path) -> anyhow::Result<String> {
    let mut rows = Vec::new();
    let mut hashes = String::new();
    for r in recipients {
        let who = r.address.as_slice();
        let shares: Vec<(String, i32)> = sqlx::query_as(
            "SELECT v.split_id::TEXT, v.bps[array_position(v.recipients, $1)] FROM chain.split_versions_live v
             WHERE $1 = ANY(v.recipients) ORDER BY v.split_id",
        )
        .bind(who.to_vec())
        .fetch_all(pool)
        .await?;
        let splits: Vec<String> = shares.iter().map(|(id, bps)| format!("{id}:{}%", bps / 100)).collect();
        let (models, events): (Option<String>, i64) = sqlx::query_as(
            "SELECT string_agg(DISTINCT l.model_id, ' '), COALESCE(SUM(l.event_count), 0)::BIGINT
             FROM keeper.usage_lines l JOIN chain.split_versions_live v ON v.split_id = l.split_id
             WHERE $1 = ANY(v.recipients)",
        )
        .bind(who.to_vec())
        .fetch_one(pool)
        .await?;
        let attributed = amount(
            pool,
            "SELECT SUM(l.attributed) FROM keeper.usage_lines l WHERE l.split_id IN
               (SELECT v.split_id FROM chain.split_versions_live v WHERE $1 = ANY(v.recipients))",
            who,
        )
        .await?;
        let credited = amount(pool, "SELECT SUM(amount) FROM chain.credits WHERE recipient = $1", who).await?;
        let claimed = amount(pool, "SELECT SUM(amount) FROM chain.claims WHERE recipient = $1 AND succeeded", who).await?;
        let statement = statement::creator_statement(pool, chain_id, 6, r.address, Scope::default()).await?;
        let total: u128 = statement.total.parse()?;
        ensure!(total == credited, "{}: the statement says {} but the chain credited {}", r.name, usdc(total), usdc(credited));
        write_statement(&statement, dir, &format!("creator-{}", slug(&r.name)), pool).await?;
        rows.push(vec![
            r.name.clone(),
            short(&r.address),
            splits.join(" "),
            models.unwrap_or_default(),
            events.to_string(),
            usdc(attributed),
            usdc(credited),
            usdc(claimed),
            usdc(credited.checked_sub(claimed).with_context(|| format!("{}: claimed {claimed} is more than credited {credited}", r.name))?),
        ]);
        let txs: Vec<(Vec<u8>, String)> = sqlx::query_as(
            "SELECT tx_hash, 'credited' FROM chain.credits WHERE recipient = $1
             UNION SELECT tx_hash, 'paid out' FROM chain.claims WHERE recipient = $1 AND succeeded ORDER BY 2, 1",
        )
        .bind(who.to_vec())
        .fetch_all(pool)
        .await?;
        for (hash, what) in txs {
            writeln!(hashes, "   {:<28} {what:<9} 0x{}", r.name, alloy::hex::encode(hash))?;
        }
    }
    let headers = ["recipient", "address", "split:share", "models", "events", "attributed", "credited", "claimed", "claimable"];
    Ok(format!("{}\n transactions\n{hashes}", table(&headers, &rows)))
}

/// The subscribers' table, with each subscriber statement verified and written to `dir`.
pub async fn subscribers(pool: &PgPool, chain_id: u64, people: &[Profile], played: &Played, dir: &Path) -> anyhow::Result<String> {
    let mut rows = Vec::new();
    for p in people {
        let id = played.ids[p.index].to_string();
        let (status, plan): (String, String) =
            sqlx::query_as("SELECT status, plan_id::TEXT FROM chain.subscriptions WHERE subscription_id = $1::NUMERIC").bind(&id).fetch_one(pool).await?;
        let close: Option<(String, String, String, String, String)> = sqlx::query_as(
            "SELECT ROUND(metered_value, 2)::TEXT, ROUND(included_value, 2)::TEXT, overage_amount::TEXT, overage_cap::TEXT,
                    overage_charge::TEXT
             FROM keeper.period_closes WHERE subscription_id = $1::BIGINT AND period_index = 0",
        )
        .bind(&id)
        .fetch_optional(pool)
        .await?;
        let (metered, included, overage, cap, _) = close.context("period 0 was not closed")?;
        let paid: String = sqlx::query_scalar(
            "SELECT ((SELECT COALESCE(SUM(amount), 0) FROM chain.subscribed WHERE subscription_id = $1::NUMERIC)
                   + (SELECT COALESCE(SUM(amount), 0) FROM chain.renewals WHERE subscription_id = $1::NUMERIC))::TEXT",
        )
        .bind(&id)
        .fetch_one(pool)
        .await?;
        let (usage, charges): (String, i64) =
            sqlx::query_as("SELECT COALESCE(SUM(amount), 0)::TEXT, COUNT(*) FROM chain.usage_charges WHERE subscription_id = $1::NUMERIC")
                .bind(&id)
                .fetch_one(pool)
                .await?;
        let statement = statement::subscriber_statement(pool, chain_id, 6, p.signer.address(), Scope::default()).await?;
        write_statement(&statement, dir, &format!("subscriber-{:02}-{}", p.index, p.signer.address()), pool).await?;
        rows.push(vec![
            p.index.to_string(),
            p.role.label().to_owned(),
            short(&p.signer.address()),
            format!("{plan} {}", if p.plan == PlanKind::Pro { "monthly" } else { "payg" }),
            if p.permit { "permit" } else { "approve" }.to_owned(),
            played.tally.accepted_by_subscriber.get(&p.index).copied().unwrap_or(0).to_string(),
            metered,
            included,
            usdc(overage.parse()?),
            usdc(cap.parse()?),
            usdc(paid.parse()?),
            usdc(usage.parse()?),
            charges.to_string(),
            status,
            played.tally.refused_by_subscriber.get(&p.index).copied().unwrap_or(0).to_string(),
        ]);
    }
    let headers = ["#", "who", "wallet", "plan", "approval", "events", "metered", "included", "overage", "cap", "fees paid", "usage charged", "charges", "status", "402s"];
    Ok(table(&headers, &rows))
}

/// One line about the traffic.
pub fn traffic(tally: &Tally) -> String {
    format!(
        " usage events: {} accepted, {} duplicates of resent events (stored once), {} refused with 402, {} rejected\n",
        tally.accepted, tally.duplicates, tally.payment_required, tally.rejected
    )
}

fn slug(name: &str) -> String {
    let lower = name.to_lowercase();
    let words: Vec<&str> = lower.split(|c: char| !c.is_ascii_alphanumeric()).filter(|w| !w.is_empty()).collect();
    words.join("-")
}

/// Verifies `statement` against the chain and writes it as CSV and JSON.
async fn write_statement(statement: &Statement, dir: &Path, name: &str, pool: &PgPool) -> anyhow::Result<()> {
    let check = statement::verify(pool, statement).await?;
    ensure!(check.ok(), "statement {name} does not verify: {:?}", check.problems);
    std::fs::create_dir_all(dir).with_context(|| dir.display().to_string())?;
    std::fs::write(dir.join(format!("{name}.csv")), statement::to_csv(statement))?;
    std::fs::write(dir.join(format!("{name}.json")), serde_json::to_string_pretty(statement)?)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_and_names_become_file_names() {
        let text = table(&["who", "amount"], &[vec!["a".into(), "1.50".into()], vec!["bbb".into(), "10.00".into()]]);
        assert_eq!(text, " who  amount\n ---  ------\n a      1.50\n bbb   10.00\n");
        assert_eq!(slug("Lumen Labs (creator)"), "lumen-labs-creator");
        assert!(parse_recipient("Host=0x0000000000000000000000000000000000000001").is_ok());
        assert!(parse_recipient("Host=0x01").is_err());
    }
}
