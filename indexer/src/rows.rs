//! Typed rows and their bulk insertion: every typed table shares the log-position columns, and rows of one table
//! are written with one binary `COPY` per table and batch.

use sqlx::{AssertSqlSafe, Postgres, Transaction};

use crate::{IndexerError, copy::CopyBuffer};

/// A column value. Amounts are decimal strings cast to NUMERIC(78,0) by Postgres, so no precision is ever lost.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// A uint256 as a base-10 string.
    Numeric(String),
    /// An address or a hash.
    Bytes(Vec<u8>),
    /// A flag.
    Bool(bool),
    /// INTEGER.
    Int(i32),
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
    /// INTEGER.
    Int,
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

/// Below this many rows a table's rows are inserted one statement each: a `COPY` costs a delayed-ACK wait
/// (about 40 ms) between its data and its end on a TCP connection, which would dominate a block's commit when
/// following the head.
pub const COPY_MIN_ROWS: usize = 64;

async fn insert_table(
    tx: &mut Transaction<'_, Postgres>,
    table: &'static Table,
    rows: &[&Row],
) -> Result<(), IndexerError> {
    if rows.len() < COPY_MIN_ROWS {
        for row in rows {
            insert_one(tx, table, row).await?;
        }
        return Ok(());
    }
    let mut copy = CopyBuffer::new();
    for row in rows {
        copy.row(5 + table.columns.len());
        copy.int8(row.position.chain_id);
        copy.int8(row.position.block_number);
        copy.int4(row.position.log_index);
        copy.bytea(&row.position.tx_hash);
        copy.int8(row.position.block_time);
        for ((name, kind), value) in table.columns.iter().zip(&row.values) {
            match (kind, value) {
                (_, Value::Null) => copy.null(),
                (Kind::Numeric, Value::Numeric(n)) => copy.numeric(n)?,
                (Kind::Bytes, Value::Bytes(b)) => copy.bytea(b),
                (Kind::Bool, Value::Bool(b)) => copy.bool(*b),
                (Kind::Int, Value::Int(i)) => copy.int4(*i),
                (Kind::Text, Value::Text(t)) => copy.text(t),
                (Kind::BytesList, Value::BytesList(list)) => copy.bytea_array(list),
                (Kind::IntList, Value::IntList(list)) => copy.int4_array(list),
                _ => return Err(IndexerError::Schema(format!("chain.{}.{name}: value of the wrong kind", table.name))),
            }
        }
    }
    let mut names = vec!["chain_id", "block_number", "log_index", "tx_hash", "block_time"];
    names.extend(table.columns.iter().map(|(name, _)| *name));
    // Table and column names come from the static table list, never from input.
    let sql = format!("COPY chain.{} ({}) FROM STDIN (FORMAT binary)", table.name, names.join(", "));
    let mut sink = tx.copy_in_raw(&sql).await?;
    sink.send(copy.finish()).await?;
    sink.finish().await?;
    Ok(())
}

/// One row, one `INSERT`.
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
    for ((_, kind), value) in table.columns.iter().zip(&row.values) {
        query = match value {
            // A NULL must still carry its column's type.
            Value::Null => match kind {
                Kind::Bool => query.bind(Option::<bool>::None),
                Kind::Bytes => query.bind(Option::<Vec<u8>>::None),
                Kind::Int => query.bind(Option::<i32>::None),
                Kind::BytesList => query.bind(Option::<Vec<Vec<u8>>>::None),
                Kind::IntList => query.bind(Option::<Vec<i32>>::None),
                Kind::Numeric | Kind::Text => query.bind(Option::<String>::None),
            },
            Value::Numeric(s) | Value::Text(s) => query.bind(s.clone()),
            Value::Bytes(b) => query.bind(b.clone()),
            Value::Bool(b) => query.bind(*b),
            Value::Int(i) => query.bind(*i),
            Value::BytesList(list) => query.bind(list.clone()),
            Value::IntList(list) => query.bind(list.clone()),
        };
    }
    query.execute(&mut **tx).await?;
    Ok(())
}
