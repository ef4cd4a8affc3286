//! The subsettle indexer: mirrors every event of a subsettle deployment (the token, Subscriptions and
//! SplitEscrow) into the Postgres schema `chain`, reorg-safe and resumable. It is the only writer of that schema;
//! the keeper reads it.
//!
//! - [`cli`]: the `subsettle-indexer` command line.
//!
//! The event pipeline lands with the indexer issue; this crate currently provides the CLI shell and deployment
//! loading shared with the keeper.

pub mod cli;
