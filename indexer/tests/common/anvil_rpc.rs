//! anvil's own RPC methods that rewrite history: `anvil_reorg` (a reorg that keeps the height) and
//! `evm_snapshot` / `evm_revert` (back to an earlier, shorter chain).
#![allow(dead_code, unreachable_pub)]

use alloy::{
    primitives::{Address, Bytes, U256},
    providers::{DynProvider, Provider},
};

/// Takes a snapshot of the chain to revert to later.
pub async fn snapshot(provider: &DynProvider) -> U256 {
    provider.raw_request("evm_snapshot".into(), ()).await.expect("evm_snapshot")
}

/// Reverts the chain to `snapshot`: every block mined since is gone and the head is back where it was.
pub async fn revert(provider: &DynProvider, snapshot: U256) {
    let reverted: bool = provider.raw_request("evm_revert".into(), (snapshot,)).await.expect("evm_revert");
    assert!(reverted, "anvil refused to revert to snapshot {snapshot}");
}

/// A transaction for [`reorg`]: `from` (a dev account anvil signs for) calls `to` with `input`, in the
/// `block`-th of the new blocks (0 is the first).
#[derive(Debug, Clone)]
pub struct ReorgTx {
    /// Sender (one of anvil's dev accounts).
    pub from: Address,
    /// Called contract.
    pub to: Address,
    /// Call data.
    pub input: Bytes,
    /// Index of the new block it goes in.
    pub block: u64,
}

/// `anvil_reorg`: drops the last `depth` blocks and mines `depth` new ones in their place with `txs` (the
/// dropped blocks' transactions are not replayed), so the head keeps its number and changes its hash.
pub async fn reorg(provider: &DynProvider, depth: u64, txs: &[ReorgTx]) {
    let before = provider.get_block_number().await.unwrap();
    let pairs: Vec<serde_json::Value> = txs
        .iter()
        .map(|tx| serde_json::json!([{ "from": tx.from, "to": tx.to, "input": tx.input }, tx.block]))
        .collect();
    let _: serde_json::Value = provider.raw_request("anvil_reorg".into(), (depth, pairs)).await.expect("anvil_reorg");
    assert_eq!(provider.get_block_number().await.unwrap(), before, "anvil_reorg keeps the height");
}
