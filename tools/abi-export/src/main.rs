//! `abi-export`: writes `abi/<Contract>.json` from `contracts/` (`abi-export`), or checks that the committed
//! files are fresh (`abi-export --check`, exit 1 when stale).

use anyhow::Context;
use subsettle_abi_export::{compare, compile, repo_root, write};

fn main() -> anyhow::Result<()> {
    let check = match std::env::args().nth(1).as_deref() {
        None => false,
        Some("--check") => true,
        Some(other) => anyhow::bail!("unknown argument `{other}`; usage: abi-export [--check]"),
    };
    let root = repo_root();
    let abi_dir = root.join("abi");
    let artifacts = compile(&root).context("compiling contracts/")?;
    if check {
        let staleness = compare(&artifacts, &abi_dir)?;
        if !staleness.is_fresh() {
            eprintln!(
                "abi/ is stale (missing: {:?}, changed: {:?}, orphaned: {:?}); run `cargo run -p subsettle-abi-export`",
                staleness.missing, staleness.changed, staleness.orphaned
            );
            std::process::exit(1);
        }
        println!("abi/ is fresh ({} contracts)", artifacts.len());
    } else {
        write(&artifacts, &abi_dir)?;
        for artifact in &artifacts {
            println!("wrote abi/{}.json", artifact.name);
        }
    }
    Ok(())
}
