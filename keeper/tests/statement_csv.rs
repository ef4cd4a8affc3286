//! CSV statements carry what the JSON has for checking a line (issue #16 item 15): each row's `proof` (the hashes
//! joined by `;`) proves the leaf rebuilt from the row's own columns against its `root`, and each row names the
//! settlement transaction of its epoch and the usage charge transaction of its period, once indexed. The table
//! says per period what was paid and what the chain did not collect.

use std::collections::HashMap;

use alloy::primitives::{Address, B256};
use rust_decimal::Decimal;
use subsettle_keeper::{
    merkle::{MerkleTree, verify},
    metering::{
        close::line_leaf,
        pricing::{Line, LineKey},
        statement::{EpochRef, Party, PeriodRef, Scope, Statement, StatementLine, to_csv, to_table},
    },
};

const CHAIN_ID: u64 = 31_337;
const SUBSCRIPTION: u64 = 7;

fn d(text: &str) -> Decimal {
    text.parse().unwrap()
}

/// A priced line of `SUBSCRIPTION`, as the close makes it.
fn priced(model: &str, meter: &str, adjustment_of: Option<u64>, quantity: &str, included: &str, overage: u128, attributed: u128) -> Line {
    Line {
        key: LineKey { adjustment_of, model: model.into(), meter: meter.into(), price_effective_at: 1_790_000_000, split_id: 2 },
        unit_price: d("0.04"),
        per_units: d("1000"),
        event_count: 3,
        quantity: d(quantity),
        included_quantity: d(included),
        value: Decimal::ZERO,
        included_value: Decimal::ZERO,
        overage_amount: overage,
        attributed,
    }
}

fn statement_line(period_index: u64, line_no: u32, line: &Line, epoch_id: Option<u64>, root: B256, proof: Vec<B256>) -> StatementLine {
    StatementLine {
        subscription_id: SUBSCRIPTION,
        period_index,
        line_no,
        model: line.key.model.clone(),
        meter: line.key.meter.clone(),
        price_effective_at: line.key.price_effective_at,
        unit_price: line.unit_price,
        per_units: line.per_units,
        split_id: line.key.split_id,
        adjustment_of: line.key.adjustment_of,
        quantity: line.quantity,
        included_quantity: line.included_quantity,
        value: line.value,
        included_value: line.included_value,
        overage_amount: line.overage_amount.to_string(),
        attributed: line.attributed.to_string(),
        epoch_id,
        split_version: None,
        bps: None,
        amount: line.attributed.to_string(),
        root,
        proof,
    }
}

fn period(period_index: u64, usage_root: B256, charge_tx: Option<B256>) -> PeriodRef {
    PeriodRef {
        subscription_id: SUBSCRIPTION,
        period_index,
        start: 1_790_000_000 + period_index as i64 * 2_592_000,
        end: 1_790_000_000 + (period_index as i64 + 1) * 2_592_000,
        fee: "79000000".into(),
        overage_charge: "0".into(),
        paid: "79000000".into(),
        uncollected: None,
        uncollected_reason: None,
        uncollectable: false,
        usage_root,
        charge_tx,
        charged_on_chain: None,
        charges: Vec::new(),
    }
}

/// A subscriber statement of three lines: two of period 0 gathered into settled epoch 1 (whose root is over two
/// leaves of another subscription too, so each proof has two hashes), one of period 1 alone in its close, not
/// gathered yet (a lone leaf: its own root, an empty proof).
fn statement() -> (Statement, B256, B256) {
    let in_epoch = [
        priced("llm-large", "input_tokens", None, "120000", "100000", 800_000, 40_000_000),
        priced("llm-large", "output_tokens", Some(0), "2.5", "0", 100, 39_000_000),
    ];
    let leaves: Vec<B256> = in_epoch.iter().enumerate().map(|(no, l)| line_leaf(CHAIN_ID, SUBSCRIPTION, 0, no as u32, l)).collect();
    let others: Vec<B256> =
        (0..2).map(|no| line_leaf(CHAIN_ID, SUBSCRIPTION + 1, 0, no, &priced("image-gen", "images", None, "4", "0", 160_000, 160_000))).collect();
    let epoch_tree = MerkleTree::new(&[leaves[0], leaves[1], others[0], others[1]]);
    let open = priced("llm-large", "input_tokens", None, "5000", "5000", 0, 79_000_000);
    let open_leaf = line_leaf(CHAIN_ID, SUBSCRIPTION, 1, 0, &open);

    let settlement_tx = B256::repeat_byte(0xaa);
    let charge_tx = B256::repeat_byte(0xbb);
    let mut lines: Vec<StatementLine> =
        in_epoch.iter().enumerate().map(|(no, l)| statement_line(0, no as u32, l, Some(1), epoch_tree.root(), epoch_tree.proof(leaves[no]).unwrap())).collect();
    lines.push(statement_line(1, 0, &open, None, open_leaf, Vec::new()));
    let statement = Statement {
        party: Party::Subscriber,
        address: Address::repeat_byte(0x11),
        chain_id: CHAIN_ID,
        decimals: 6,
        scope: Scope::default(),
        total: "158000000".into(),
        lines,
        periods: vec![period(0, MerkleTree::new(&leaves).root(), Some(charge_tx)), period(1, open_leaf, None)],
        credits: Vec::new(),
        epochs: vec![EpochRef { epoch_id: 1, usage_root: epoch_tree.root(), tx_hash: Some(settlement_tx) }],
    };
    (statement, settlement_tx, charge_tx)
}

/// The CSV's rows as maps from the header's column names to the cells.
fn rows(csv: &str) -> Vec<HashMap<String, String>> {
    let mut lines = csv.lines();
    let header: Vec<&str> = lines.next().expect("a header row").split(',').collect();
    lines
        .map(|row| {
            let cells: Vec<&str> = row.split(',').collect();
            assert_eq!(cells.len(), header.len(), "row `{row}` has {} cells for {} columns", cells.len(), header.len());
            header.iter().zip(cells).map(|(h, c)| (h.to_string(), c.to_string())).collect()
        })
        .collect()
}

/// The line's leaf rebuilt from the row's own cells, as anyone holding only the CSV would.
fn leaf_of_row(row: &HashMap<String, String>) -> B256 {
    let cell = |name: &str| row.get(name).unwrap_or_else(|| panic!("no column {name}")).as_str();
    let line = Line {
        key: LineKey {
            adjustment_of: Some(cell("adjustment_of")).filter(|c| !c.is_empty()).map(|c| c.parse().unwrap()),
            model: cell("model").into(),
            meter: cell("meter").into(),
            price_effective_at: cell("price_effective_at").parse().unwrap(),
            split_id: cell("split_id").parse().unwrap(),
        },
        unit_price: d(cell("unit_price")),
        per_units: d(cell("per_units")),
        event_count: 0,
        quantity: d(cell("quantity")),
        included_quantity: d(cell("included_quantity")),
        value: Decimal::ZERO,
        included_value: Decimal::ZERO,
        overage_amount: cell("overage_amount").parse().unwrap(),
        attributed: cell("attributed").parse().unwrap(),
    };
    line_leaf(CHAIN_ID, cell("subscription_id").parse().unwrap(), cell("period_index").parse().unwrap(), cell("line_no").parse().unwrap(), &line)
}

fn proof_of_row(row: &HashMap<String, String>) -> Vec<B256> {
    let cell = row.get("proof").expect("a proof column");
    if cell.is_empty() { Vec::new() } else { cell.split(';').map(|h| h.parse::<B256>().unwrap_or_else(|e| panic!("proof hash `{h}`: {e}"))).collect() }
}

#[test]
fn every_csv_row_proves_its_line_and_names_its_transactions() {
    let (statement, settlement_tx, charge_tx) = statement();
    let csv = to_csv(&statement);
    let rows = rows(&csv);
    assert_eq!(rows.len(), statement.lines.len(), "{csv}");
    for (row, line) in rows.iter().zip(&statement.lines) {
        let proof = proof_of_row(row);
        assert_eq!(proof, line.proof, "the proof column is the JSON's proof, in order: {csv}");
        let root: B256 = row["root"].parse().unwrap();
        assert!(verify(&proof, root, leaf_of_row(row)), "row {row:?} does not prove against its root");
    }
    // Two hashes for the epoch's lines (four leaves), none for the lone leaf.
    assert_eq!(rows.iter().map(|r| proof_of_row(r).len()).collect::<Vec<_>>(), [2, 2, 0], "{csv}");
    assert!(rows[0]["proof"].contains(';') && rows[0]["proof"].split(';').all(|h| h.starts_with("0x") && h.len() == 66), "{csv}");

    // The settlement of the line's epoch, and the period's usage charge; empty where there is none yet.
    assert_eq!(rows[0]["settlement_tx"], settlement_tx.to_string());
    assert_eq!(rows[1]["settlement_tx"], settlement_tx.to_string());
    assert_eq!(rows[2]["settlement_tx"], "", "a line not gathered into an epoch has no settlement");
    assert_eq!(rows[0]["charge_tx"], charge_tx.to_string());
    assert_eq!(rows[1]["charge_tx"], charge_tx.to_string());
    assert_eq!(rows[2]["charge_tx"], "", "a period not charged on chain has no charge transaction");
}

#[test]
fn a_csv_row_with_an_edited_cell_no_longer_proves() {
    let (statement, _, _) = statement();
    let csv = to_csv(&statement);
    for column in ["quantity", "attributed", "line_no", "split_id"] {
        let mut row = rows(&csv).remove(0);
        let edited = format!("{}1", row[column]);
        row.insert(column.into(), edited);
        let root: B256 = row["root"].parse().unwrap();
        assert!(!verify(&proof_of_row(&row), root, leaf_of_row(&row)), "an edited {column} must not prove");
    }
    let mut row = rows(&csv).remove(0);
    let proof = proof_of_row(&row).into_iter().rev().map(|h| h.to_string()).collect::<Vec<_>>().join(";");
    row.insert("proof".into(), proof);
    let root: B256 = row["root"].parse().unwrap();
    assert!(!verify(&proof_of_row(&row), root, leaf_of_row(&row)), "the proof's hashes in another order must not prove");
}

#[test]
fn a_creator_statement_names_the_settlement_and_no_charge() {
    let (mut statement, settlement_tx, _) = statement();
    statement.party = Party::Creator;
    statement.periods.clear();
    statement.epochs[0].tx_hash = None;
    let before = rows(&to_csv(&statement));
    assert!(before.iter().all(|r| r["charge_tx"].is_empty()), "creator statements list no periods");
    assert!(before.iter().all(|r| r["settlement_tx"].is_empty()), "a settlement not indexed yet has no transaction");
    statement.epochs[0].tx_hash = Some(settlement_tx);
    let after = rows(&to_csv(&statement));
    assert!(after[..2].iter().all(|r| r["settlement_tx"] == settlement_tx.to_string()));
    assert_eq!(after[2]["settlement_tx"], "", "a line not gathered into an epoch has no settlement");
}

#[test]
fn the_table_says_what_was_paid_and_what_was_never_collected() {
    let (mut statement, _, _) = statement();
    let reason = "charge window closed 2026-09-20T00:00:01Z (period end 2026-09-18T00:00:00Z + chargeWindow() 172800 s + 0 s paused since)";
    let period = &mut statement.periods[1];
    (period.overage_charge, period.uncollected, period.uncollected_reason, period.uncollectable) =
        ("4000000".into(), Some("4000000".into()), Some(reason.into()), true);
    let table = to_table(&statement);
    assert!(table.contains("subscription 7 period 1: fee 79.000000 + overage 4.000000, paid 79.000000 (charged on chain: nothing, tx -)"), "{table}");
    assert!(table.contains(&format!("  uncollectable: 4.000000 of the overage ({reason})")), "{table}");
    // A shortfall the contract may still collect is not called uncollectable.
    statement.periods[1].uncollectable = false;
    assert!(to_table(&statement).contains("  not collected: 4.000000 of the overage"), "{table}");
}
