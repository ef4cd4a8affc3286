//! The keeper's usage lines, leaves and proofs as a fixture that a Foundry test verifies with OpenZeppelin's
//! `MerkleProof` (contracts/test/UsageProof.t.sol): the leaf encoding and the tree are checked by the contracts'
//! own library, not only by the keeper's. The fixture is checked in; this test fails when the keeper's encoding
//! changes without it (`SUBSETTLE_WRITE_FIXTURES=1 cargo test -p subsettle-keeper --test merkle_fixture` rewrites it).

use std::path::PathBuf;

use alloy::primitives::B256;
use rust_decimal::Decimal;
use serde_json::{Value, json};
use subsettle_keeper::{
    metering::close::line_leaf,
    merkle::{MerkleTree, verify},
    metering::pricing::{Line, LineKey},
};

const CHAIN_ID: u64 = 31_337;

fn line(model: &str, meter: &str, adjustment_of: Option<u64>, quantity: &str, included: &str, price: &str, per: &str, overage: u128, attributed: u128) -> Line {
    let d = |s: &str| s.parse::<Decimal>().unwrap();
    Line {
        key: LineKey { adjustment_of, model: model.into(), meter: meter.into(), price_effective_at: 1_790_000_000, split_id: 2 },
        unit_price: d(price),
        per_units: d(per),
        event_count: 1,
        quantity: d(quantity),
        included_quantity: d(included),
        value: Decimal::ZERO,
        included_value: Decimal::ZERO,
        overage_amount: overage,
        attributed,
    }
}

#[test]
fn fixture_matches_the_keepers_encoding() {
    let lines = [
        (7u64, 0u64, line("image-gen", "images", None, "800", "0", "0.04", "1", 30_000_000, 61_852_112)),
        (7, 0, line("llm-large", "input_tokens", None, "3000000", "2000000", "3", "1000000", 0, 20_000_000)),
        (7, 0, line("llm-large", "output_tokens", Some(3), "1000000", "0", "15", "1000000", 0, 27_948_288)),
        (7, 1, line("gpu-box", "gpu_seconds", None, "1000.5", "0", "0.0008", "1", 800_400, 1_420_000)),
        (9, 0, line("", "", None, "0", "0", "0", "1", 0, 79_000_000)),
    ];
    let leaves: Vec<B256> = lines.iter().enumerate().map(|(i, (sub, period, l))| line_leaf(CHAIN_ID, *sub, *period, i as u32, l)).collect();
    let tree = MerkleTree::new(&leaves);
    let entries: Vec<Value> = lines
        .iter()
        .enumerate()
        .map(|(i, (sub, period, l))| {
            let proof = tree.proof(leaves[i]).unwrap();
            assert!(verify(&proof, tree.root(), leaves[i]));
            json!({
                "chainId": CHAIN_ID, "subscriptionId": sub, "periodIndex": period, "lineNo": i,
                "model": l.key.model, "meter": l.key.meter, "priceEffectiveAt": l.key.price_effective_at,
                "unitPrice": l.unit_price.normalize().to_string(), "perUnits": l.per_units.normalize().to_string(),
                "splitId": l.key.split_id, "isAdjustment": l.key.adjustment_of.is_some(), "adjustmentOf": l.key.adjustment_of.unwrap_or(0),
                "quantity": l.quantity.normalize().to_string(), "includedQuantity": l.included_quantity.normalize().to_string(),
                "overageAmount": l.overage_amount as u64, "attributed": l.attributed as u64,
                "leaf": leaves[i], "proof": proof,
            })
        })
        .collect();
    let fixture = serde_json::to_string_pretty(&json!({ "root": tree.root(), "count": entries.len(), "lines": entries })).unwrap() + "\n";
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../contracts/test/fixtures/usage-lines.json");
    if std::env::var_os("SUBSETTLE_WRITE_FIXTURES").is_some() {
        std::fs::write(&path, &fixture).unwrap();
    }
    let checked_in = std::fs::read_to_string(&path).expect("the fixture; write it with SUBSETTLE_WRITE_FIXTURES=1");
    assert_eq!(checked_in, fixture, "contracts/test/fixtures/usage-lines.json is stale; rewrite it with SUBSETTLE_WRITE_FIXTURES=1");
}
