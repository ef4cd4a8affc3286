//! `subsettle-indexer`: see the crate documentation of `subsettle_indexer`.

use clap::Parser;
use subsettle_indexer::cli::Cli;

fn main() {
    let _cli = Cli::parse();
    eprintln!("subsettle-indexer: no subcommand is available yet; see --help");
    std::process::exit(2);
}
