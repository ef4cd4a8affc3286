//! Typed rows and their bulk insertion: every typed table shares the log-position columns, and rows of one table
//! are written with a single `INSERT ... SELECT FROM UNNEST(...)` per batch.

use sqlx::{AssertSqlSafe, Postgres, Transaction};

use crate::IndexerError;

/// A column value. Amounts are decimal strings cast to NUMERIC(78,0) by Postgres, so no precision is ever lost.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// A uint256 as a base-10 string.
    Numeric(String),
    /// An address or a hash.
    Bytes(Vec<u8>),
    /// A flag.
    Bool(bool),
    /// A label (event kind, failure reason).
    Text(String),
    /// A list of addresses (split recipients).
    BytesList(Vec<Vec<u8>>),
    /// A list of small integers (split basis points).
    IntList(Vec<i32>),
    /// A missing value (SQL NULL), for columns that only some kinds of event fill.
    Null,
}

/// SQL type of a column, for casting the UNNEST arrays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// NUMERIC(78,0), bound as text.
    Numeric,
    /// BYTEA.
    Bytes,
    /// BOOLEAN.
    Bool,
    /// TEXT.
    Text,
    /// BYTEA[] (rows of tables with list columns are inserted one by one: UNNEST would flatten them).
    BytesList,
    /// INTEGER[].
    IntList,
}

/// Where a log sits on the chain: the key of every typed row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogPosition {
    /// EIP-155 chain id.
    pub chain_id: i64,
    /// Block number.
    pub block_number: i64,
    /// Index of the log in its block.
    pub log_index: i32,
    /// Transaction hash.
    pub tx_hash: Vec<u8>,
    /// Block timestamp, Unix seconds.
    pub block_time: i64,
}

/// One typed table: its name and its own columns (after the common log-position columns).
#[derive(Debug)]
pub struct Table {
    /// Table name in schema `chain`.
    pub name: &'static str,
    /// Own columns, in order.
    pub columns: &'static [(&'static str, Kind)],
}

/// A decoded event ready to be written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    /// The table it goes to.
    pub table: &'static Table,
    /// Its position on the chain.
    pub position: LogPosition,
    /// Values of the table's own columns, in order.
    pub values: Vec<Value>,
}

impl PartialEq for Table {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name
    }
}

impl Eq for Table {}

/// Writes `rows` (any tables, any order) with one statement per table.
pub async fn insert_rows(tx: &mut Transaction<'_, Postgres>, rows: &[Row]) -> Result<(), IndexerError> {
    let mut tables: Vec<&'static Table> = Vec::new();
    for row in rows {
        if !tables.iter().any(|t| t.name == row.table.name) {
            tables.push(row.table);
        }
    }
    for table in tables {
        let of_table: Vec<&Row> = rows.iter().filter(|r| r.table.name == table.name).collect();
        insert_table(tx, table, &of_table).await?;
    }
    Ok(())
}

async fn insert_table(
    tx: &mut Transaction<'_, Postgres>,
    table: &'static Table,
    rows: &[&Row],
) -> Result<(), IndexerError> {
    if table.columns.iter().any(|(_, kind)| matches!(kind, Kind::BytesList | Kind::IntList)) {
        for row in rows {
            insert_one(tx, table, row).await?;
        }
        return Ok(());
    }
    let mut names = vec!["chain_id", "block_number", "log_index", "tx_hash", "block_time"];
    let mut selects = vec![
        "unnest($1::int8[])".to_string(),
        "unnest($2::int8[])".to_string(),
        "unnest($3::int4[])".to_string(),
        "unnest($4::bytea[])".to_string(),
        "unnest($5::int8[])".to_string(),
    ];
    for (i, (name, kind)) in table.columns.iter().enumerate() {
        names.push(name);
        let n = i + 6;
        selects.push(match kind {
            Kind::Numeric => format!("unnest(${n}::text[])::numeric"),
            Kind::Bytes => format!("unnest(${n}::bytea[])"),
            Kind::Bool => format!("unnest(${n}::bool[])"),
            Kind::Text => format!("unnest(${n}::text[])"),
            Kind::BytesList | Kind::IntList => unreachable!("tables with list columns are inserted row by row"),
        });
    }
    // Table and column names come from the static table list, never from input.
    let sql = format!(
        "INSERT INTO chain.{} ({}) SELECT {}",
        table.name,
        names.join(", "),
        selects.join(", ")
    );
    let mut query = sqlx::query(AssertSqlSafe(sql))
        .bind(rows.iter().map(|r| r.position.chain_id).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.position.block_number).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.position.log_index).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.position.tx_hash.clone()).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.position.block_time).collect::<Vec<_>>());
    for (i, (name, kind)) in table.columns.iter().enumerate() {
        let column = rows.iter().map(|r| &r.values[i]);
        let mismatch = || IndexerError::Schema(format!("chain.{}.{name}: value of the wrong kind", table.name));
        query = match kind {
            Kind::Numeric | Kind::Text => query.bind(
                column
                    .map(|v| match v {
                        Value::Numeric(s) | Value::Text(s) => Ok(Some(s.clone())),
                        Value::Null => Ok(None),
                        _ => Err(mismatch()),
                    })
                    .collect::<Result<Vec<Option<String>>, _>>()?,
            ),
            Kind::Bytes => query.bind(
                column
                    .map(|v| match v {
                        Value::Bytes(b) => Ok(Some(b.clone())),
                        Value::Null => Ok(None),
                        _ => Err(mismatch()),
                    })
                    .collect::<Result<Vec<Option<Vec<u8>>>, _>>()?,
            ),
            Kind::Bool => query.bind(
                column
                    .map(|v| match v {
                        Value::Bool(b) => Ok(Some(*b)),
                        Value::Null => Ok(None),
                        _ => Err(mismatch()),
                    })
                    .collect::<Result<Vec<Option<bool>>, _>>()?,
            ),
            Kind::BytesList | Kind::IntList => unreachable!("tables with list columns are inserted row by row"),
        };
    }
    query.execute(&mut **tx).await?;
    Ok(())
}

/// Inserts one row with plain binds (for tables with list columns).
async fn insert_one(tx: &mut Transaction<'_, Postgres>, table: &'static Table, row: &Row) -> Result<(), IndexerError> {
    let mut names = vec!["chain_id", "block_number", "log_index", "tx_hash", "block_time"];
    let mut params = vec!["$1".to_string(), "$2".into(), "$3".into(), "$4".into(), "$5".into()];
    for (i, (name, kind)) in table.columns.iter().enumerate() {
        names.push(name);
        let n = i + 6;
        params.push(match kind {
            Kind::Numeric => format!("${n}::text::numeric"),
            _ => format!("${n}"),
        });
    }
    let sql = format!("INSERT INTO chain.{} ({}) VALUES ({})", table.name, names.join(", "), params.join(", "));
    let position = &row.position;
    let mut query = sqlx::query(AssertSqlSafe(sql))
        .bind(position.chain_id)
        .bind(position.block_number)
        .bind(position.log_index)
        .bind(position.tx_hash.clone())
        .bind(position.block_time);
    for value in &row.values {
        query = match value {
            Value::Numeric(s) | Value::Text(s) => query.bind(s.clone()),
            Value::Bytes(b) => query.bind(b.clone()),
            Value::Bool(b) => query.bind(*b),
            Value::BytesList(list) => query.bind(list.clone()),
            Value::IntList(list) => query.bind(list.clone()),
            Value::Null => query.bind(Option::<String>::None),
        };
    }
    query.execute(&mut **tx).await?;
    Ok(())
}
