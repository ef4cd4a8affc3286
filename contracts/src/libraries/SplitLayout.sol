// SPDX-License-Identifier: MIT
pragma solidity 0.8.30;

/// @title SplitLayout
/// @notice How SplitEscrow packs a split version into storage words, so that settling a split of up to three
/// recipients reads one cold slot for the whole rule. Recipients are stored as 32-bit ids (their addresses live
/// once, in an id-to-address mapping), which is what makes three of them fit beside the header; a recipient in
/// many splits (the platform, a host) then costs one cold read per transaction, not one per split.
/// @dev The words of a version are keyed by the index of the first member they hold: key 0 holds the header,
/// effectiveAt (bits 0-39) | version (40-63) | count (64-71) | remainderIndex (72-79), and members 0-2 from bit
/// 80; keys 3, 8, 13, ... hold five members each from bit 0. A member is `id << 16 | bps`, 48 bits. Readers walk
/// the members with a bit cursor: when the next member would not fit (`shift > LAST_SHIFT`), member `i` starts
/// the word under key `i` at shift 0, so no division is needed to find a member's word.
library SplitLayout {
    /// @dev Members that share word 0 with the header.
    uint256 internal constant HEAD_MEMBERS = 3;
    /// @dev Members in each further word.
    uint256 internal constant WORD_MEMBERS = 5;
    /// @dev Where member 0 starts in word 0.
    uint256 internal constant HEAD_BITS = 80;
    uint256 internal constant MEMBER_BITS = 48;
    /// @dev The last shift at which a member still fits in its word.
    uint256 internal constant LAST_SHIFT = 256 - MEMBER_BITS;

    function encodeHead(uint256 effectiveAt_, uint256 version_, uint256 count_, uint256 remainderIndex_)
        internal
        pure
        returns (uint256)
    {
        return uint256(uint40(effectiveAt_)) | uint256(uint24(version_)) << 40 | uint256(uint8(count_)) << 64
            | uint256(uint8(remainderIndex_)) << 72;
    }

    function effectiveAt(uint256 head) internal pure returns (uint256) {
        return uint40(head);
    }

    function version(uint256 head) internal pure returns (uint256) {
        return uint24(head >> 40);
    }

    function count(uint256 head) internal pure returns (uint256) {
        return uint8(head >> 64);
    }

    function remainderIndex(uint256 head) internal pure returns (uint256) {
        return uint8(head >> 72);
    }

    /// @dev The key of the word after the one under `key`.
    function nextKey(uint256 key) internal pure returns (uint256) {
        return key == 0 ? HEAD_MEMBERS : key + WORD_MEMBERS;
    }

    function encodeMember(uint256 id, uint256 bps) internal pure returns (uint256) {
        return uint256(uint32(id)) << 16 | uint256(uint16(bps));
    }

    /// @dev The member at `shift` in `word`: its recipient id and bps.
    function member(uint256 word, uint256 shift) internal pure returns (uint256 id, uint256 bps) {
        uint256 packed = uint48(word >> shift);
        return (packed >> 16, uint16(packed));
    }
}
