//! The `subsettle-indexer` command line.

use clap::Parser;

/// Mirrors subsettle contract events into Postgres.
#[derive(Debug, Parser)]
#[command(name = "subsettle-indexer", version, about, long_about = None)]
pub struct Cli {}
