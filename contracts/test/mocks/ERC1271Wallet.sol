// SPDX-License-Identifier: MIT
pragma solidity 0.8.30;

import {ECDSA} from "@openzeppelin/contracts/utils/cryptography/ECDSA.sol";
import {IERC1271} from "@openzeppelin/contracts/interfaces/IERC1271.sol";

/// @notice A smart-contract wallet, reduced to what the subscription tests need: one owner key, a batch of calls
/// executed together (as one ERC-4337 user operation would: all or nothing), and ERC-1271 signatures.
/// A signature is a validator byte followed by the owner's ECDSA signature (66 bytes, so it does not fit the v, r, s
/// form of a permit): `0x00 ‖ r ‖ s ‖ v` over `keccak256(abi.encode(address(this), hash))`, the hash bound to this
/// wallet so that a signature made for another wallet of the same owner is refused (as Coinbase Smart Wallet's
/// replay-safe hash does).
contract ERC1271Wallet is IERC1271 {
    struct Call {
        address target;
        bytes data;
    }

    /// @notice The validator byte of an owner's ECDSA signature, the only scheme this wallet knows.
    bytes1 public constant OWNER_ECDSA = 0x00;

    address public immutable owner;

    error NotOwner(address caller);
    error CallFailed(uint256 index, bytes reason);

    constructor(address owner_) {
        owner = owner_;
    }

    /// @notice Runs `calls` in order; any failure reverts them all. Owner only.
    function executeBatch(Call[] calldata calls) external returns (bytes[] memory results) {
        if (msg.sender != owner) revert NotOwner(msg.sender);
        results = new bytes[](calls.length);
        for (uint256 i; i < calls.length; ++i) {
            (bool ok, bytes memory result) = calls[i].target.call(calls[i].data);
            if (!ok) revert CallFailed(i, result);
            results[i] = result;
        }
    }

    /// @notice The hash the owner signs for `hash` on behalf of this wallet.
    function replaySafeHash(bytes32 hash) public view returns (bytes32) {
        return keccak256(abi.encode(address(this), hash));
    }

    /// @inheritdoc IERC1271
    function isValidSignature(bytes32 hash, bytes calldata signature) external view returns (bytes4) {
        if (signature.length != 66 || signature[0] != OWNER_ECDSA) return bytes4(0xffffffff);
        (address signer, ECDSA.RecoverError error,) = ECDSA.tryRecover(replaySafeHash(hash), signature[1:]);
        if (error != ECDSA.RecoverError.NoError || signer != owner) return bytes4(0xffffffff);
        return IERC1271.isValidSignature.selector;
    }
}
