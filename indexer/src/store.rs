//! The indexer's writes to schema `chain`: one transaction per committed range, carrying the raw logs, the typed
//! rows, the block hashes of unfinalized blocks and the cursor, so a crash can neither skip nor repeat a block.

use sqlx::{AssertSqlSafe, PgPool, Row as _};
use subsettle_abi::Deployment;

use crate::{
    copy::CopyBuffer,
    IndexerError,
    decode::TYPED_TABLES,
    rows::{COPY_MIN_ROWS, Row, insert_rows},
};

/// Embedded migrations of schema `chain`.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// A log as stored in `chain.raw_logs`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawLog {
    /// Block number.
    pub block_number: i64,
    /// Index in the block.
    pub log_index: i32,
    /// Block hash.
    pub block_hash: Vec<u8>,
    /// Block timestamp (Unix seconds).
    pub block_time: i64,
    /// Transaction hash.
    pub tx_hash: Vec<u8>,
    /// Transaction index.
    pub tx_index: i32,
    /// Emitting contract.
    pub address: Vec<u8>,
    /// Topics.
    pub topics: Vec<Vec<u8>>,
    /// Data.
    pub data: Vec<u8>,
}

/// A block whose hash is kept to detect reorgs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockRef {
    /// Number.
    pub number: i64,
    /// Hash.
    pub hash: Vec<u8>,
    /// Parent hash.
    pub parent_hash: Vec<u8>,
}

/// The order of overlapping commits (see [`Store::commit`]): what this commit waits for before its
/// cursor update, and whom it tells after.
#[derive(Debug, Default)]
pub struct CursorTurn {
    /// Fires when the previous commit's cursor update has run; `None` for the first of a run.
    pub wait: Option<tokio::sync::oneshot::Receiver<()>>,
    /// Fired after this commit's cursor update.
    pub done: Option<tokio::sync::oneshot::Sender<()>>,
}

/// How far a deployment is indexed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    /// The last indexed block.
    pub number: i64,
    /// Its hash.
    pub hash: Vec<u8>,
}

/// Everything one step of indexing commits at once.
#[derive(Debug, Default)]
pub struct Batch {
    /// Raw logs of the range.
    pub raw: Vec<RawLog>,
    /// Their typed rows.
    pub typed: Vec<Row>,
    /// Unfinalized blocks of the range (for reorg detection).
    pub blocks: Vec<BlockRef>,
}

/// Postgres access of the indexer.
#[derive(Debug, Clone)]
pub struct Store {
    pool: PgPool,
}

fn db_i64(value: u64, what: &str) -> Result<i64, IndexerError> {
    i64::try_from(value).map_err(|_| IndexerError::Schema(format!("{what} {value} does not fit BIGINT")))
}

impl Store {
    /// How many of `wanted` overlapping commits the pool can hold at once. Each needs its own connection, and
    /// a later commit that took the last connection would wait forever for an earlier one that has none.
    pub fn overlapping_commits(&self, wanted: usize) -> usize {
        wanted.min(self.pool.options().get_max_connections() as usize).max(1)
    }

    /// Connects the store to `pool` and applies the migrations of schema `chain`.
    pub async fn open(pool: PgPool) -> Result<Self, IndexerError> {
        MIGRATOR.run(&pool).await?;
        Ok(Self { pool })
    }

    /// The pool, for readers.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Registers `deployment` (idempotent) and returns its cursor (`None` before the first block).
    pub async fn register(&self, deployment: &Deployment) -> Result<Option<Cursor>, IndexerError> {
        let chain_id = db_i64(deployment.chain_id, "chain id")?;
        let start = db_i64(deployment.start_block, "start block")?;
        let row = sqlx::query(
            "INSERT INTO chain.deployments (chain_id, subscriptions, escrow, start_block)
             VALUES ($1, $2, $3, $4)
             ON CONFLICT (chain_id, subscriptions) DO UPDATE SET chain_id = EXCLUDED.chain_id
             RETURNING escrow, start_block, cursor_number, cursor_hash",
        )
        .bind(chain_id)
        .bind(deployment.subscriptions.to_vec())
        .bind(deployment.escrow.to_vec())
        .bind(start)
        .fetch_one(&self.pool)
        .await?;
        let escrow: Vec<u8> = row.get("escrow");
        let stored_start: i64 = row.get("start_block");
        if escrow != deployment.escrow.to_vec() || stored_start != start {
            return Err(IndexerError::Config(format!(
                "deployment {} on chain {} is already indexed with escrow 0x{} from block {stored_start}; \
                 refusing to mix it with escrow {} from block {start}",
                deployment.subscriptions,
                deployment.chain_id,
                alloy::hex::encode(&escrow),
                deployment.escrow
            )));
        }
        let number: Option<i64> = row.get("cursor_number");
        let hash: Option<Vec<u8>> = row.get("cursor_hash");
        Ok(number.zip(hash).map(|(number, hash)| Cursor { number, hash }))
    }

    /// The cursor of `deployment`, read only (`None` before the first block or when it was never registered).
    pub async fn cursor(&self, deployment: &Deployment) -> Result<Option<Cursor>, IndexerError> {
        let row = sqlx::query(
            "SELECT cursor_number, cursor_hash FROM chain.deployments WHERE chain_id = $1 AND subscriptions = $2",
        )
        .bind(db_i64(deployment.chain_id, "chain id")?)
        .bind(deployment.subscriptions.to_vec())
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.and_then(|row| {
            let number: Option<i64> = row.get("cursor_number");
            let hash: Option<Vec<u8>> = row.get("cursor_hash");
            number.zip(hash).map(|(number, hash)| Cursor { number, hash })
        }))
    }

    /// Commits `batch` and moves the cursor of `deployment` to `cursor`, in one transaction. The update only
    /// applies if the cursor is still `expected`, so two indexers racing on one deployment cannot both commit.
    ///
    /// A commit may overlap the commit of the range before (`turn`; `CursorTurn::default()` when it does not):
    /// the rows are written at once, the cursor moves last. Before it, this commit waits for `turn.wait` (the
    /// previous commit has updated the cursor, so it holds the row's lock), then locks the row, which blocks until
    /// the previous transaction ends; if that one committed, the row holds the cursor this one expects. Ranges so
    /// become visible strictly in order, and a range whose predecessor failed fails too. `turn.done` tells the
    /// next commit that this one's cursor update has run.
    pub async fn commit(
        &self,
        deployment: &Deployment,
        expected: Option<&Cursor>,
        batch: &Batch,
        cursor: &Cursor,
        turn: CursorTurn,
    ) -> Result<(), IndexerError> {
        self.write_range(deployment, expected, batch, cursor, turn).await.map_err(|err| match err {
            // Another indexer committed the same blocks first: its rows took the keys before the cursor check.
            IndexerError::Database(sqlx::Error::Database(db)) if db.is_unique_violation() => {
                IndexerError::CursorMoved { chain_id: deployment.chain_id }
            }
            other => other,
        })
    }

    async fn write_range(
        &self,
        deployment: &Deployment,
        expected: Option<&Cursor>,
        batch: &Batch,
        cursor: &Cursor,
        turn: CursorTurn,
    ) -> Result<(), IndexerError> {
        let chain_id = db_i64(deployment.chain_id, "chain id")?;
        let mut tx = self.pool.begin().await?;
        if !batch.raw.is_empty() && batch.raw.len() < COPY_MIN_ROWS {
            for log in &batch.raw {
                sqlx::query(
                    "INSERT INTO chain.raw_logs
                       (chain_id, block_number, log_index, block_hash, block_time, tx_hash, tx_index, address, topics, data)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
                )
                .bind(chain_id)
                .bind(log.block_number)
                .bind(log.log_index)
                .bind(&log.block_hash)
                .bind(log.block_time)
                .bind(&log.tx_hash)
                .bind(log.tx_index)
                .bind(&log.address)
                .bind(&log.topics)
                .bind(&log.data)
                .execute(&mut *tx)
                .await?;
            }
        } else if !batch.raw.is_empty() {
            let mut copy = CopyBuffer::new();
            for log in &batch.raw {
                copy.row(10);
                copy.int8(chain_id);
                copy.int8(log.block_number);
                copy.int4(log.log_index);
                copy.bytea(&log.block_hash);
                copy.int8(log.block_time);
                copy.bytea(&log.tx_hash);
                copy.int4(log.tx_index);
                copy.bytea(&log.address);
                copy.bytea_array(&log.topics);
                copy.bytea(&log.data);
            }
            let mut sink = tx
                .copy_in_raw(
                    "COPY chain.raw_logs (chain_id, block_number, log_index, block_hash, block_time, tx_hash, tx_index,
                                          address, topics, data) FROM STDIN (FORMAT binary)",
                )
                .await?;
            sink.send(copy.finish()).await?;
            sink.finish().await?;
        }
        insert_rows(&mut tx, &batch.typed).await?;
        if !batch.blocks.is_empty() {
            let blocks = &batch.blocks;
            sqlx::query(
                "INSERT INTO chain.blocks (chain_id, number, hash, parent_hash)
                 SELECT $1, * FROM unnest($2::int8[], $3::bytea[], $4::bytea[])",
            )
            .bind(chain_id)
            .bind(blocks.iter().map(|b| b.number).collect::<Vec<_>>())
            .bind(blocks.iter().map(|b| b.hash.clone()).collect::<Vec<_>>())
            .bind(blocks.iter().map(|b| b.parent_hash.clone()).collect::<Vec<_>>())
            .execute(&mut *tx)
            .await?;
        }
        if let Some(previous) = turn.wait {
            // The previous commit failed before its cursor update if its sender is gone: so does this one.
            previous.await.map_err(|_| IndexerError::CursorMoved { chain_id: deployment.chain_id })?;
        }
        // Locking the row waits for an open predecessor and then reads its committed cursor. (A conditional
        // UPDATE would not wait: it tests its condition on the version its snapshot sees, the old cursor, and
        // skips the row.)
        let current: Option<(Option<i64>, Option<Vec<u8>>)> = sqlx::query_as(
            "SELECT cursor_number, cursor_hash FROM chain.deployments WHERE chain_id = $1 AND subscriptions = $2
             FOR NO KEY UPDATE",
        )
        .bind(chain_id)
        .bind(deployment.subscriptions.to_vec())
        .fetch_optional(&mut *tx)
        .await?;
        let expected = expected.map(|c| (Some(c.number), Some(c.hash.clone()))).unwrap_or((None, None));
        if current != Some(expected) {
            return Err(IndexerError::CursorMoved { chain_id: deployment.chain_id });
        }
        sqlx::query("UPDATE chain.deployments SET cursor_number = $3, cursor_hash = $4 WHERE chain_id = $1 AND subscriptions = $2")
            .bind(chain_id)
            .bind(deployment.subscriptions.to_vec())
            .bind(cursor.number)
            .bind(cursor.hash.clone())
            .execute(&mut *tx)
            .await?;
        if let Some(next) = turn.done {
            // The next commit may wait on the row lock now; it is gone if the backfill stopped meanwhile.
            let _ = next.send(());
        }
        tx.commit().await?;
        Ok(())
    }

    /// The stored hash of block `number`, if it is kept (unfinalized blocks only).
    pub async fn block_hash(&self, chain_id: u64, number: i64) -> Result<Option<Vec<u8>>, IndexerError> {
        let chain_id = db_i64(chain_id, "chain id")?;
        Ok(sqlx::query_scalar("SELECT hash FROM chain.blocks WHERE chain_id = $1 AND number = $2")
            .bind(chain_id)
            .bind(number)
            .fetch_optional(&self.pool)
            .await?)
    }

    /// Deletes every row above block `fork` (raw, typed, block hashes) and moves the cursor back to it, in one
    /// transaction. Returns how many raw logs were removed.
    pub async fn roll_back(&self, deployment: &Deployment, fork: &Cursor) -> Result<u64, IndexerError> {
        let chain_id = db_i64(deployment.chain_id, "chain id")?;
        let mut tx = self.pool.begin().await?;
        let removed = sqlx::query("DELETE FROM chain.raw_logs WHERE chain_id = $1 AND block_number > $2")
            .bind(chain_id)
            .bind(fork.number)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        for table in TYPED_TABLES {
            // Table names come from the static table list.
            let sql = format!("DELETE FROM chain.{} WHERE chain_id = $1 AND block_number > $2", table.name);
            sqlx::query(AssertSqlSafe(sql)).bind(chain_id).bind(fork.number).execute(&mut *tx).await?;
        }
        sqlx::query("DELETE FROM chain.blocks WHERE chain_id = $1 AND number > $2")
            .bind(chain_id)
            .bind(fork.number)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "UPDATE chain.deployments SET cursor_number = $3, cursor_hash = $4
             WHERE chain_id = $1 AND subscriptions = $2",
        )
        .bind(chain_id)
        .bind(deployment.subscriptions.to_vec())
        .bind(fork.number)
        .bind(fork.hash.clone())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(removed)
    }

    /// Forgets block hashes at or below `finalized` except the newest one (final blocks cannot be reorganised).
    pub async fn prune_blocks(&self, chain_id: u64, finalized: i64) -> Result<(), IndexerError> {
        let chain_id = db_i64(chain_id, "chain id")?;
        sqlx::query("DELETE FROM chain.blocks WHERE chain_id = $1 AND number < $2")
            .bind(chain_id)
            .bind(finalized)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store_with(max_connections: u32) -> Store {
        let pool = sqlx::postgres::PgPoolOptions::new().max_connections(max_connections).connect_lazy("postgres://localhost/unused").unwrap();
        Store { pool }
    }

    #[tokio::test]
    async fn overlapping_commits_never_outnumber_the_pool() {
        assert_eq!(store_with(8).overlapping_commits(2), 2);
        assert_eq!(store_with(1).overlapping_commits(2), 1, "a second commit could take the only connection and wait forever");
        assert_eq!(store_with(1).overlapping_commits(0), 1, "always at least one");
    }
}
