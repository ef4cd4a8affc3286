//! The report for a terminal: the escrow's figures, then a short section per check with its counts and one line
//! per difference, then the pending work and the uncollectable charges. Amounts are base units of the token, exactly as the sources hold them.

use std::fmt::Write;

use super::{Check, Difference, Report};

fn said(source: &str, value: &Option<String>) -> Option<String> {
    value.as_ref().map(|v| format!("{source} {v}"))
}

fn line(difference: &Difference) -> String {
    let values: Vec<String> =
        [said("chain", &difference.chain), said("indexer", &difference.indexer), said("keeper", &difference.keeper)].into_iter().flatten().collect();
    format!("  {}: {}", difference.ids, values.join(", "))
}

/// The report as text: `N checked, M differ` per check, one line per difference with its ids and each source's
/// value, the pending work, and the verdict on the last line.
pub fn to_table(report: &Report) -> String {
    let mut out = String::new();
    let (e, i) = (&report.escrow, &report.indexed);
    let _ = writeln!(out, "reconciliation of chain {} at block {} (the indexer's cursor); amounts in base units\n", report.chain_id, report.block);
    let _ = writeln!(
        out,
        "escrow on chain:   balance {}, unallocated {}, total claimable {}, surplus {}: {}",
        e.token_balance,
        e.unallocated,
        e.total_claimable,
        e.surplus,
        if e.solvent { "solvent" } else { "NOT SOLVENT" }
    );
    let _ = writeln!(out, "revenue on chain:  total revenue {}, credit owed to the escrow {}", e.total_revenue, e.credit_owed_to_escrow);
    let _ = writeln!(
        out,
        "escrow as indexed: paid in {} - credit owed {} = revenue {}; - settled {} - refunded {} = unallocated {}\n",
        i.paid_in, i.credit_owed_to_escrow, i.total_revenue, i.settled, i.refunded, i.unallocated
    );
    for section in &report.sections {
        let _ = writeln!(out, "{:<13} {} checked, {} differ", section.check.name(), section.checked, section.differ);
        for difference in report.differences.iter().filter(|d| d.check == section.check) {
            let _ = writeln!(out, "{}", line(difference));
        }
    }
    if !report.pending.is_empty() {
        let _ = writeln!(out, "\npending (not confirmed by block {}; not differences):", report.block);
        for pending in &report.pending {
            let _ = writeln!(out, "  {:<13} {}: {}", pending.check.name(), pending.ids, pending.detail);
        }
    }
    if !report.uncollectable.is_empty() {
        let _ = writeln!(out, "\nuncollectable (the charge window has closed; not differences):");
        for item in &report.uncollectable {
            let _ = writeln!(out, "  {}: {}", item.ids, item.detail);
        }
        let _ = writeln!(out, "  what to do: {}", super::UNCOLLECTABLE_REMEDY);
    }
    let _ = match report.differences.len() {
        0 => writeln!(out, "\nall sources agree"),
        n => writeln!(out, "\n{n} difference(s) in {}", differing_checks(report)),
    };
    out
}

fn differing_checks(report: &Report) -> String {
    let names: Vec<&str> = Check::ALL.iter().filter(|c| report.differences.iter().any(|d| d.check == **c)).map(|c| c.name()).collect();
    names.join(", ")
}
