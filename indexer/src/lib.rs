//! The subsettle indexer: mirrors every event of a subsettle deployment (Subscriptions and SplitEscrow) into the
//! Postgres schema `chain`, exactly once, reorg-safe and resumable. It is the only writer of that schema; the
//! keeper reads it. The schema and its views are documented in `migrations/`.
//!
//! - [`config`]: deployments to follow and loop settings, from a TOML file, flags and the environment.
//! - [`source`]: the chain over JSON-RPC: heads, headers, logs in adaptive ranges, retries.
//! - [`decode`]: contract logs into typed rows, one table per kind of event; `logs`: a range's logs, checked, into
//!   the raw and typed rows of one commit.
//! - [`rows`]: typed rows and their bulk insertion; [`copy`]: the binary `COPY` encoding they are sent in.
//! - [`store`]: one transaction per step (raw logs, typed rows, block hashes, cursor) and rollbacks.
//! - [`sync`]: the loop: backfill below the finalized block, follow above it, roll back reorgs.
//! - [`backoff`]: the wait between attempts while the node or the database is unreachable.
//! - [`metrics`]: Prometheus counters and the health verdict, served by [`http`].
//! - [`cli`]: the `subsettle-indexer` command line.

pub mod backoff;
pub mod cli;
pub mod config;
pub mod copy;
pub mod decode;
pub mod http;
mod logs;
pub mod metrics;
pub mod rows;
pub mod source;
pub mod store;
pub mod sync;

/// Everything that can go wrong while indexing.
#[derive(Debug, thiserror::Error)]
pub enum IndexerError {
    /// The configuration is invalid; the message names the key and the value.
    #[error("config: {0}")]
    Config(String),
    /// An RPC call failed after its retries.
    #[error("rpc: {0}")]
    Rpc(String),
    /// The node returned something a correct node never does.
    #[error("invalid RPC answer: {0}")]
    InvalidRpcAnswer(String),
    /// A log of a followed contract does not match its ABI.
    #[error(transparent)]
    Decode(#[from] decode::DecodeError),
    /// Postgres failed.
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    /// Applying the schema failed.
    #[error("migration: {0}")]
    Migration(#[from] sqlx::migrate::MigrateError),
    /// A value does not fit the schema.
    #[error("schema: {0}")]
    Schema(String),
    /// Another process moved the cursor meanwhile (two indexers on one deployment); nothing was written.
    #[error("the cursor of chain {chain_id} moved under this indexer (is another indexer running?)")]
    CursorMoved {
        /// The chain.
        chain_id: u64,
    },
    /// A reorg reaches below the blocks kept for reorg detection (at or below finalized): the indexer stops
    /// rather than corrupt data.
    #[error(
        "chain {chain_id} reorganised below block {below}, deeper than the unfinalized blocks kept; stopping \
         instead of guessing (check the node, then re-index from a known-good block)"
    )]
    DeepReorg {
        /// The chain.
        chain_id: u64,
        /// The first block whose stored hash was unavailable or different.
        below: u64,
    },
}

impl IndexerError {
    /// Whether retrying cannot help: the configuration is wrong (the node serves another chain than the
    /// deployment's, a bad value, a busy metrics address) or the chain reorganised below the blocks kept. The
    /// daemon stops on these and retries every other error (an unreachable node or database, a failed call).
    pub fn is_permanent(&self) -> bool {
        matches!(self, Self::Config(_) | Self::DeepReorg { .. })
    }
}
