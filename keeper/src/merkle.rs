//! Merkle trees over usage lines that OpenZeppelin's `MerkleProof.verify` accepts: leaves are double-hashed ABI
//! encodings (`keccak256(bytes.concat(keccak256(abi.encode(...))))`, as in OpenZeppelin's `StandardMerkleTree`),
//! inner nodes hash the sorted pair, leaves are sorted before the tree is built and a lone node moves up a level
//! unchanged. Anyone holding the lines can rebuild the root; a proof shows one line is in it.

use alloy::primitives::{B256, keccak256};

/// The leaf of an ABI-encoded line: `keccak256(keccak256(encoded))`.
pub fn leaf(encoded: &[u8]) -> B256 {
    keccak256(keccak256(encoded))
}

fn hash_pair(a: B256, b: B256) -> B256 {
    let (low, high) = if a <= b { (a, b) } else { (b, a) };
    let mut both = [0u8; 64];
    both[..32].copy_from_slice(low.as_slice());
    both[32..].copy_from_slice(high.as_slice());
    keccak256(both)
}

/// A tree built once from its leaves, for the root and any leaf's proof.
#[derive(Debug, Clone)]
pub struct MerkleTree {
    /// Level 0 holds the sorted leaves; the last level holds the root.
    levels: Vec<Vec<B256>>,
}

impl MerkleTree {
    /// Builds the tree; the order of `leaves` does not matter.
    pub fn new(leaves: &[B256]) -> Self {
        let mut level: Vec<B256> = leaves.to_vec();
        level.sort_unstable();
        let mut levels = vec![level];
        while levels.last().is_some_and(|l| l.len() > 1) {
            let below = levels.last().expect("a level");
            let above = below
                .chunks(2)
                .map(|pair| if pair.len() == 2 { hash_pair(pair[0], pair[1]) } else { pair[0] })
                .collect();
            levels.push(above);
        }
        Self { levels }
    }

    /// The root; zero for a tree without leaves (nothing was committed).
    pub fn root(&self) -> B256 {
        self.levels.last().and_then(|l| l.first()).copied().unwrap_or(B256::ZERO)
    }

    /// The proof that `leaf` is in the tree, or `None` when it is not.
    pub fn proof(&self, leaf: B256) -> Option<Vec<B256>> {
        let mut index = self.levels[0].binary_search(&leaf).ok()?;
        let mut proof = Vec::new();
        for level in &self.levels[..self.levels.len() - 1] {
            let sibling = index ^ 1;
            if let Some(node) = level.get(sibling) {
                proof.push(*node);
            }
            index /= 2;
        }
        Some(proof)
    }
}

/// What `MerkleProof.verify(proof, root, leaf)` answers.
pub fn verify(proof: &[B256], root: B256, leaf: B256) -> bool {
    proof.iter().fold(leaf, |node, sibling| hash_pair(node, *sibling)) == root
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn leaves(n: usize) -> Vec<B256> {
        (0..n).map(|i| leaf(&(i as u64).to_be_bytes())).collect()
    }

    #[test]
    fn single_leaf_is_its_own_root() {
        let tree = MerkleTree::new(&leaves(1));
        assert_eq!(tree.root(), leaves(1)[0]);
        assert_eq!(tree.proof(leaves(1)[0]), Some(vec![]));
        assert_eq!(MerkleTree::new(&[]).root(), B256::ZERO);
    }

    #[test]
    fn a_leaf_not_in_the_tree_has_no_proof_and_a_wrong_proof_fails() {
        let tree = MerkleTree::new(&leaves(5));
        assert_eq!(tree.proof(leaf(b"other")), None);
        let proof = tree.proof(leaves(5)[2]).unwrap();
        assert!(!verify(&proof, tree.root(), leaves(5)[3]));
    }

    proptest! {
        #[test]
        fn every_leaf_proves_against_the_root_in_any_order(n in 1usize..70, seed in any::<u64>()) {
            let mut all = leaves(n);
            let root = MerkleTree::new(&all).root();
            all.rotate_left((seed as usize) % n);
            let tree = MerkleTree::new(&all);
            prop_assert_eq!(tree.root(), root);
            for l in &all {
                let proof = tree.proof(*l).unwrap();
                prop_assert!(verify(&proof, root, *l));
            }
        }
    }
}
