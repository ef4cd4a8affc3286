// SPDX-License-Identifier: MIT
pragma solidity 0.8.30;

import {Test} from "forge-std/Test.sol";
import {MerkleProof} from "@openzeppelin/contracts/utils/cryptography/MerkleProof.sol";

/// @notice The keeper's usage lines (fixture written by keeper/tests/merkle_fixture.rs) verify with OpenZeppelin's
/// MerkleProof: each leaf is keccak256(bytes.concat(keccak256(abi.encode(fields...)))) over the line's sixteen
/// fields in the keeper's order (docs/keeper.md), and every proof leads to the committed root.
contract UsageProofTest is Test {
    /// @dev The committed fields of a usage line, in leaf order.
    struct Fields {
        uint256 chainId;
        uint256 subscriptionId;
        uint256 periodIndex;
        uint256 lineNo;
        string model;
        string meter;
        uint256 priceEffectiveAt;
        string unitPrice;
        string perUnits;
        uint256 splitId;
        bool isAdjustment;
        uint256 adjustmentOf;
        string quantity;
        string includedQuantity;
        uint256 overageAmount;
        uint256 attributed;
    }

    string internal json;

    function setUp() public {
        json = vm.readFile(string.concat(vm.projectRoot(), "/contracts/test/fixtures/usage-lines.json"));
    }

    function _key(uint256 i, string memory field) internal pure returns (string memory) {
        return string.concat(".lines[", vm.toString(i), "].", field);
    }

    function _fields(uint256 i) internal view returns (Fields memory f) {
        f.chainId = vm.parseJsonUint(json, _key(i, "chainId"));
        f.subscriptionId = vm.parseJsonUint(json, _key(i, "subscriptionId"));
        f.periodIndex = vm.parseJsonUint(json, _key(i, "periodIndex"));
        f.lineNo = vm.parseJsonUint(json, _key(i, "lineNo"));
        f.model = vm.parseJsonString(json, _key(i, "model"));
        f.meter = vm.parseJsonString(json, _key(i, "meter"));
        f.priceEffectiveAt = vm.parseJsonUint(json, _key(i, "priceEffectiveAt"));
        f.unitPrice = vm.parseJsonString(json, _key(i, "unitPrice"));
        f.perUnits = vm.parseJsonString(json, _key(i, "perUnits"));
        f.splitId = vm.parseJsonUint(json, _key(i, "splitId"));
        f.isAdjustment = vm.parseJsonBool(json, _key(i, "isAdjustment"));
        f.adjustmentOf = vm.parseJsonUint(json, _key(i, "adjustmentOf"));
        f.quantity = vm.parseJsonString(json, _key(i, "quantity"));
        f.includedQuantity = vm.parseJsonString(json, _key(i, "includedQuantity"));
        f.overageAmount = vm.parseJsonUint(json, _key(i, "overageAmount"));
        f.attributed = vm.parseJsonUint(json, _key(i, "attributed"));
    }

    /// @dev abi.encode(f.chainId, ..., f.attributed): the encoding of the struct without its leading offset word
    /// (sixteen separate arguments would not fit the stack).
    function _encode(Fields memory f) internal pure returns (bytes memory params) {
        bytes memory full = abi.encode(f);
        params = new bytes(full.length - 32);
        for (uint256 j; j < params.length; ++j) {
            params[j] = full[j + 32];
        }
    }

    function _leaf(Fields memory f) internal pure returns (bytes32) {
        return keccak256(bytes.concat(keccak256(_encode(f))));
    }

    function test_keeperLinesVerifyWithOpenZeppelinMerkleProof() public view {
        bytes32 root = vm.parseJsonBytes32(json, ".root");
        uint256 count = vm.parseJsonUint(json, ".count");
        assertGt(count, 1);
        for (uint256 i; i < count; ++i) {
            bytes32 leaf = _leaf(_fields(i));
            assertEq(leaf, vm.parseJsonBytes32(json, _key(i, "leaf")), "leaf encoding differs from the keeper's");
            bytes32[] memory proof = vm.parseJsonBytes32Array(json, _key(i, "proof"));
            assertTrue(MerkleProof.verify(proof, root, leaf), "proof does not verify");
        }
    }

    function test_aLineWithAChangedAmountDoesNotVerify() public view {
        bytes32 root = vm.parseJsonBytes32(json, ".root");
        Fields memory f = _fields(0);
        bytes32[] memory proof = vm.parseJsonBytes32Array(json, _key(0, "proof"));
        assertTrue(MerkleProof.verify(proof, root, _leaf(f)));
        f.attributed += 1;
        assertFalse(MerkleProof.verify(proof, root, _leaf(f)));
    }
}
