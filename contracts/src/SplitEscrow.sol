// SPDX-License-Identifier: MIT
pragma solidity 0.8.30;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";
import {Ownable} from "@openzeppelin/contracts/access/Ownable.sol";
import {Ownable2Step} from "@openzeppelin/contracts/access/Ownable2Step.sol";
import {ReentrancyGuardTransient} from "@openzeppelin/contracts/utils/ReentrancyGuardTransient.sol";
import {SafeCast} from "@openzeppelin/contracts/utils/math/SafeCast.sol";

import {ISplitEscrow} from "./interfaces/ISplitEscrow.sol";
import {ISubscriptions} from "./interfaces/ISubscriptions.sol";
import {SplitLayout} from "./libraries/SplitLayout.sol";

/// @title SplitEscrow
/// @notice See {ISplitEscrow}.
contract SplitEscrow is ISplitEscrow, Ownable2Step, ReentrancyGuardTransient {
    using SafeERC20 for IERC20;
    using SafeCast for uint256;
    using SplitLayout for uint256;

    /* CONSTANTS */

    /// @notice Basis points in a whole split.
    uint256 public constant TOTAL_BPS = 10_000;
    /// @notice The most recipients a split version may have.
    uint256 public constant MAX_RECIPIENTS = 32;
    /// @notice After a hold ends, no new hold may start for this long: the recipient's window to claim.
    uint256 public constant HOLD_COOLDOWN = 1 days;
    /// @notice The most gas one payout of a batch claim may use: far above a USDC transfer through its proxy to a
    /// new holder (about 50,000), and bounded so that no recipient can take the gas of the others.
    uint256 public constant PAYOUT_GAS = 150_000;
    /// @dev Gas that must be left before a payout's call so that the call gets all of `PAYOUT_GAS`: 64/63 of it
    /// (a call forwards at most 63/64 of what is left) plus the call's own cost (cold account access, memory).
    uint256 internal constant PAYOUT_GAS_NEEDED = PAYOUT_GAS + PAYOUT_GAS / 63 + 5_000;

    /* IMMUTABLES */

    IERC20 internal immutable TOKEN;
    uint256 internal immutable SPLIT_CHANGE_DELAY;
    uint256 internal immutable MAX_HOLD;

    /* STORAGE */

    ISubscriptions internal _subscriptions;
    address internal _keeper;
    Totals internal _totals;
    uint256 internal _splitCount;
    /// @dev The latest version of each split (in force, or pending until its effectiveAt), packed by SplitLayout
    /// and kept apart from the history, so a settlement reads only these words in the common case.
    mapping(uint256 splitId => mapping(uint256 word => uint256)) internal _latest;
    mapping(uint256 splitId => mapping(uint256 version => mapping(uint256 word => uint256))) internal _versions;
    /// @dev Every address that was ever a split recipient, by the id split versions store (ids start at 1, in
    /// order of first appearance in a SplitVersionAdded event).
    mapping(uint256 id => address) internal _recipientById;
    mapping(address recipient => uint256) internal _recipientIds;
    uint256 internal _recipientCount;
    mapping(address recipient => Account) internal _accounts;
    mapping(address recipient => address) internal _payouts;
    /// @dev Used settlement ids, 256 to a word: the keeper numbers its epochs in sequence, so marking an id
    /// usually rewrites a non-zero word instead of filling a new slot.
    mapping(uint256 word => uint256 bits) internal _settlementsUsed;
    /// @dev Where the last settled epoch ended; the next one must start there.
    uint256 internal _lastEpochEnd;
    /// @dev Refunded so far per subscription and period; written only by refunds, so pulls pay nothing for it.
    mapping(uint256 subscriptionId => mapping(uint256 periodIndex => uint256)) internal _refunded;
    mapping(bytes32 refundId => bool) internal _refundIdsUsed;

    /* CONSTRUCTOR */

    /// @param token_ The settlement token.
    /// @param owner_ The operator.
    /// @param keeper_ The keeper allowed to settle.
    /// @param splitChangeDelay_ Seconds between a split change proposal and its effect.
    /// @param maxHold_ The longest a dispute hold may last, in seconds.
    constructor(address token_, address owner_, address keeper_, uint256 splitChangeDelay_, uint256 maxHold_)
        Ownable(owner_)
    {
        if (token_ == address(0) || keeper_ == address(0)) revert ZeroAddress();
        // Both are added to 40-bit timestamps in storage: bounded here so that no sum is ever truncated.
        if (splitChangeDelay_ > type(uint32).max) revert InvalidDuration(splitChangeDelay_);
        if (maxHold_ > type(uint32).max) revert InvalidDuration(maxHold_);
        TOKEN = IERC20(token_);
        SPLIT_CHANGE_DELAY = splitChangeDelay_;
        MAX_HOLD = maxHold_;
        _keeper = keeper_;
        emit KeeperSet(keeper_);
    }

    /* OWNER */

    /// @inheritdoc ISplitEscrow
    function setSubscriptions(address subscriptions_) external onlyOwner {
        if (subscriptions_ == address(0)) revert ZeroAddress();
        if (address(_subscriptions) != address(0)) revert SubscriptionsAlreadySet();
        ISubscriptions candidate = ISubscriptions(subscriptions_);
        (address payee, address token_) = (candidate.escrow(), candidate.token());
        if (payee != address(this) || token_ != address(TOKEN)) revert SubscriptionsMismatch(payee, token_);
        _subscriptions = candidate;
        emit SubscriptionsSet(subscriptions_);
    }

    /// @inheritdoc ISplitEscrow
    function setKeeper(address keeper_) external onlyOwner {
        if (keeper_ == address(0)) revert ZeroAddress();
        _keeper = keeper_;
        emit KeeperSet(keeper_);
    }

    /// @inheritdoc ISplitEscrow
    function createSplit(address[] calldata recipients, uint16[] calldata bps, uint256 remainderIndex)
        external
        onlyOwner
        returns (uint256 splitId)
    {
        splitId = ++_splitCount;
        // Like a change: a new split takes settlements only for epochs starting after the delay, so that the keeper
        // cannot route revenue to a split nobody had notice of.
        _storeVersion(splitId, 0, block.timestamp + SPLIT_CHANGE_DELAY, recipients, bps, remainderIndex);
    }

    /// @inheritdoc ISplitEscrow
    function proposeSplitChange(
        uint256 splitId,
        address[] calldata recipients,
        uint16[] calldata bps,
        uint256 remainderIndex
    ) external onlyOwner returns (uint256 version) {
        uint256 head = _requireSplit(splitId);
        if (head.effectiveAt() > block.timestamp) revert ChangeAlreadyPending(splitId);
        version = head.version() + 1;
        _storeVersion(splitId, version, block.timestamp + SPLIT_CHANGE_DELAY, recipients, bps, remainderIndex);
    }

    /// @inheritdoc ISplitEscrow
    function cancelSplitChange(uint256 splitId) external onlyOwner {
        uint256 head = _requireSplit(splitId);
        uint256 version = head.version();
        if (head.effectiveAt() <= block.timestamp || version == 0) revert NoPendingChange(splitId);
        mapping(uint256 => uint256) storage latest = _latest[splitId];
        mapping(uint256 => uint256) storage pending = _versions[splitId][version];
        mapping(uint256 => uint256) storage previous = _versions[splitId][version - 1];
        uint256 previousCount = previous[0].count();
        for (uint256 key; key < head.count(); key = SplitLayout.nextKey(key)) {
            delete pending[key];
            if (key >= previousCount) delete latest[key];
        }
        for (uint256 key; key < previousCount; key = SplitLayout.nextKey(key)) {
            latest[key] = previous[key];
        }
        emit SplitChangeCancelled(splitId, version);
    }

    /// @inheritdoc ISplitEscrow
    function hold(address recipient, uint256 until, bytes32 reasonHash) external onlyOwner {
        if (recipient == address(0)) revert ZeroAddress();
        Account storage account = _accounts[recipient];
        uint256 heldUntil = account.heldUntil;
        uint256 since;
        if (heldUntil > block.timestamp) {
            since = account.holdSince; // changing the running hold: its limit stays counted from its start
        } else {
            uint256 allowedFrom = heldUntil + HOLD_COOLDOWN;
            if (heldUntil != 0 && block.timestamp < allowedFrom) revert HoldCooldown(allowedFrom);
            since = block.timestamp;
        }
        uint256 limit = since + MAX_HOLD;
        if (limit > type(uint40).max) limit = type(uint40).max; // refused beyond what storage holds, not truncated
        if (until > limit || until <= block.timestamp) revert HoldTooLong(until, limit);
        account.heldUntil = uint40(until);
        account.holdSince = uint40(since);
        emit HoldPlaced(recipient, until, reasonHash);
    }

    /// @inheritdoc ISplitEscrow
    function release(address recipient) external onlyOwner {
        Account storage account = _accounts[recipient];
        if (account.heldUntil <= block.timestamp) revert NotHeld(recipient);
        account.heldUntil = uint40(block.timestamp); // ended now: the cooldown before a new hold starts here
        emit HoldReleased(recipient);
    }

    /// @inheritdoc ISplitEscrow
    function refund(uint256 subscriptionId, uint256 periodIndex, uint256 amount, bool toCredit, bytes32 refundId)
        external
        onlyOwner
        nonReentrant
    {
        if (amount == 0) revert ZeroAmount();
        if (_refundIdsUsed[refundId]) revert RefundIdUsed(refundId);
        (address subscriber, uint256 left) = _refundable(subscriptionId, periodIndex);
        if (amount > left) revert RefundExceedsPaid(left, amount);
        uint256 available = unallocated();
        if (amount > available) revert InsufficientUnallocated(available, amount);
        _refundIdsUsed[refundId] = true;
        _refunded[subscriptionId][periodIndex] += amount;
        _totals.consumed += amount.toUint128();
        emit Refunded(subscriber, subscriptionId, periodIndex, amount, toCredit, refundId);
        if (toCredit) {
            ISubscriptions subscriptions_ = _subscriptions;
            TOKEN.safeTransfer(address(subscriptions_), amount);
            subscriptions_.creditFromEscrow(subscriber, amount);
        } else {
            TOKEN.safeTransfer(subscriber, amount);
        }
    }

    /// @inheritdoc ISplitEscrow
    function sweepSurplus(address to) external onlyOwner nonReentrant returns (uint256 amount) {
        if (to == address(0)) revert ZeroAddress();
        amount = surplus();
        // slither-disable-next-line incorrect-equality -- 0 = nothing to sweep; a donation only adds to it
        if (amount == 0) revert NoSurplus();
        emit SurplusSwept(to, amount);
        TOKEN.safeTransfer(to, amount);
    }

    /* KEEPER */

    /// @inheritdoc ISplitEscrow
    function settle(
        uint256 settlementId,
        uint256 epochStart,
        uint256 epochEnd,
        uint256[] calldata splitIds,
        uint256[] calldata amounts,
        bytes32 usageRoot
    ) external {
        if (msg.sender != _keeper) revert NotKeeper(msg.sender);
        if (epochEnd > block.timestamp || epochStart >= epochEnd) revert InvalidEpoch(epochStart, epochEnd);
        if (splitIds.length != amounts.length) revert LengthMismatch();
        uint256 expectedStart = _lastEpochEnd;
        if (expectedStart != 0 && epochStart != expectedStart) revert EpochNotConsecutive(expectedStart, epochStart);
        _lastEpochEnd = epochEnd;

        _useSettlementId(settlementId);
        // One pass: credit each split and add up the total; the check against unallocated revenue comes after
        // the loop, and a failing check reverts every credit with it.
        // slither-disable-next-line uninitialized-local -- accumulator; its zero start is intended
        uint256 total;
        for (uint256 i; i < splitIds.length; ++i) {
            uint256 amount = amounts[i];
            total += amount;
            _distribute(settlementId, splitIds[i], amount, epochStart, epochEnd);
        }
        uint256 available = unallocated();
        if (total > available) revert InsufficientUnallocated(available, total);

        Totals memory totals = _totals;
        totals.consumed += total.toUint128();
        totals.totalClaimable += total.toUint128();
        _totals = totals;
        emit Settled(settlementId, epochStart, epochEnd, usageRoot, total, splitIds.length);
    }

    /// @dev Credits `amount` to the recipients of the version of `splitId` in force for the whole epoch
    /// `[epochStart, epochEnd)`: each gets `amount * bps / 10_000` rounded down, and the remainder recipient gets
    /// everything the others did not (its own share plus the rounding remainder).
    function _distribute(uint256 settlementId, uint256 splitId, uint256 amount, uint256 epochStart, uint256 epochEnd)
        internal
    {
        // The version in force at the epoch's last second must already have been in force at its first.
        (mapping(uint256 => uint256) storage words, uint256 word) = _versionAt(splitId, epochEnd - 1);
        if (word.effectiveAt() > epochStart) revert SplitChangedInEpoch(splitId, word.effectiveAt());
        if (amount == 0) return;
        (uint256 count, uint256 remainderIndex) = (word.count(), word.remainderIndex());
        uint256 remainderShare = amount;
        address remainderRecipient = address(0); // set in the loop: remainderIndex < count
        uint256 shift = SplitLayout.HEAD_BITS;
        for (uint256 i; i < count; ++i) {
            if (shift > SplitLayout.LAST_SHIFT) (word, shift) = (words[i], 0);
            (uint256 id, uint256 bps) = word.member(shift);
            unchecked {
                shift += SplitLayout.MEMBER_BITS;
            }
            if (i == remainderIndex) {
                remainderRecipient = _recipientById[id]; // its own share plus the rounding remainder, below
                continue;
            }
            uint256 share;
            // Unchecked: an `amount` large enough to overflow exceeds any unallocated revenue, so settle's check
            // after the loop reverts the whole call; and the other members' bps sum to at most TOTAL_BPS, so their
            // shares never exceed `amount`.
            unchecked {
                share = amount * bps / TOTAL_BPS;
                remainderShare -= share;
            }
            _credit(settlementId, splitId, _recipientById[id], share);
        }
        _credit(settlementId, splitId, remainderRecipient, remainderShare);
    }

    function _credit(uint256 settlementId, uint256 splitId, address recipient, uint256 share) internal {
        if (share == 0) return;
        Account storage account = _accounts[recipient];
        uint256 balance = account.claimable + share;
        if (balance > type(uint96).max) revert AmountTooLarge(balance);
        account.claimable = uint96(balance);
        emit Credited(recipient, settlementId, splitId, share);
    }

    /* RECIPIENTS AND ANYONE */

    /// @inheritdoc ISplitEscrow
    function setPayoutAddress(address payout) external {
        if (payout == address(0)) revert ZeroAddress();
        if (payout == address(this)) revert InvalidPayout(payout);
        _payouts[msg.sender] = payout;
        _accounts[msg.sender].hasPayout = true;
        emit PayoutAddressSet(msg.sender, payout);
    }

    /// @inheritdoc ISplitEscrow
    function claim(address recipient) external nonReentrant returns (uint256 amount) {
        Account storage account = _accounts[recipient];
        if (account.heldUntil > block.timestamp) revert RecipientHeld(recipient, account.heldUntil);
        amount = account.claimable;
        if (amount == 0) revert NothingToClaim(recipient);
        address payout = account.hasPayout ? _payouts[recipient] : recipient;
        account.claimable = 0;
        // totalClaimable is the sum of all claimable balances, this one included: it cannot underflow.
        unchecked {
            _totals.totalClaimable -= uint128(amount);
        }
        emit Claimed(recipient, payout, amount);
        TOKEN.safeTransfer(payout, amount);
    }

    /// @inheritdoc ISplitEscrow
    function claimMany(address[] calldata recipients) external nonReentrant returns (uint256 paid) {
        // slither-disable-next-line uninitialized-local -- accumulator; its zero start is intended
        uint256 totalPaid;
        for (uint256 i; i < recipients.length; ++i) {
            address recipient = recipients[i];
            Account memory account = _accounts[recipient];
            if (account.heldUntil > block.timestamp || account.claimable == 0) continue;
            address payout = account.hasPayout ? _payouts[recipient] : recipient;
            // Effects first; a refused transfer restores the balance.
            _accounts[recipient].claimable = 0;
            if (_tryPayout(payout, account.claimable)) {
                totalPaid += account.claimable;
                ++paid;
                emit Claimed(recipient, payout, account.claimable);
            } else {
                _accounts[recipient].claimable = account.claimable;
                emit ClaimFailed(recipient, payout, account.claimable);
            }
        }
        if (totalPaid != 0) _totals.totalClaimable -= uint128(totalPaid);
    }

    /// @dev `TOKEN.transfer(to, amount)` with exactly `PAYOUT_GAS` and at most 32 bytes of return data copied;
    /// success as SafeERC20 counts it (no return data from a contract, or `true`). Reverts the whole call before the
    /// transfer when less gas is left than the transfer must get (the 63/64 rule would hand it less), so that a
    /// caller cannot mark a payable recipient as failed by starving it. Checked before the call, not after: a callee
    /// behind a proxy hands unused gas back, so the gas left afterwards cannot tell a starved payout.
    function _tryPayout(address to, uint256 amount) internal returns (bool ok) {
        bytes memory data = abi.encodeCall(IERC20.transfer, (to, amount));
        address token_ = address(TOKEN);
        if (gasleft() < PAYOUT_GAS_NEEDED) revert InsufficientGasForPayout();
        uint256 returnSize;
        uint256 returnValue;
        // slither-disable-next-line assembly -- a gas-bounded call with bounded return data has no Solidity form
        assembly ("memory-safe") {
            ok := call(PAYOUT_GAS, token_, 0, add(data, 0x20), mload(data), 0, 0x20)
            returnSize := returndatasize()
            returnValue := mload(0)
        }
        if (ok) ok = returnSize == 0 ? token_.code.length != 0 : (returnSize >= 32 && returnValue == 1);
    }

    /* VIEWS */

    /// @inheritdoc ISplitEscrow
    function token() external view returns (address) {
        return address(TOKEN);
    }

    /// @inheritdoc ISplitEscrow
    function subscriptions() external view returns (address) {
        return address(_subscriptions);
    }

    /// @inheritdoc ISplitEscrow
    function keeper() external view returns (address) {
        return _keeper;
    }

    /// @inheritdoc ISplitEscrow
    function splitChangeDelay() external view returns (uint256) {
        return SPLIT_CHANGE_DELAY;
    }

    /// @inheritdoc ISplitEscrow
    function maxHold() external view returns (uint256) {
        return MAX_HOLD;
    }

    /// @inheritdoc ISplitEscrow
    function unallocated() public view returns (uint256) {
        ISubscriptions subscriptions_ = _subscriptions;
        if (address(subscriptions_) == address(0)) return 0;
        return subscriptions_.totalRevenue() - _totals.consumed;
    }

    /// @inheritdoc ISplitEscrow
    function totalClaimable() external view returns (uint256) {
        return _totals.totalClaimable;
    }

    /// @inheritdoc ISplitEscrow
    function surplus() public view returns (uint256) {
        uint256 owed = unallocated() + _totals.totalClaimable;
        uint256 balance = TOKEN.balanceOf(address(this));
        return balance > owed ? balance - owed : 0;
    }

    /// @inheritdoc ISplitEscrow
    function claimableOf(address recipient) external view returns (uint256) {
        return _accounts[recipient].claimable;
    }

    /// @inheritdoc ISplitEscrow
    function payoutOf(address recipient) external view returns (address) {
        return _accounts[recipient].hasPayout ? _payouts[recipient] : recipient;
    }

    /// @inheritdoc ISplitEscrow
    function holdOf(address recipient) external view returns (Hold memory) {
        Account memory account = _accounts[recipient];
        return Hold({until: account.heldUntil, since: account.holdSince});
    }

    /// @inheritdoc ISplitEscrow
    function settlementUsed(uint256 settlementId) external view returns (bool) {
        (uint256 word, uint256 bit) = _settlementBit(settlementId);
        return _settlementsUsed[word] & bit != 0;
    }

    /// @inheritdoc ISplitEscrow
    function lastEpochEnd() external view returns (uint256) {
        return _lastEpochEnd;
    }

    /// @inheritdoc ISplitEscrow
    function refundedFor(uint256 subscriptionId, uint256 periodIndex) external view returns (uint256) {
        return _refunded[subscriptionId][periodIndex];
    }

    /// @inheritdoc ISplitEscrow
    function refundable(uint256 subscriptionId, uint256 periodIndex) external view returns (uint256 left) {
        (, left) = _refundable(subscriptionId, periodIndex);
    }

    /// @inheritdoc ISplitEscrow
    function refundIdUsed(bytes32 refundId) external view returns (bool) {
        return _refundIdsUsed[refundId];
    }

    /// @inheritdoc ISplitEscrow
    function splitCount() external view returns (uint256) {
        return _splitCount;
    }

    /// @inheritdoc ISplitEscrow
    function latestVersion(uint256 splitId) external view returns (uint256) {
        return _requireSplit(splitId).version();
    }

    /// @inheritdoc ISplitEscrow
    function splitVersion(uint256 splitId, uint256 version)
        external
        view
        returns (address[] memory recipients, uint16[] memory bps, uint256 remainderIndex, uint256 effectiveAt)
    {
        mapping(uint256 => uint256) storage words = _versions[splitId][version];
        uint256 word = words[0];
        uint256 count = word.count();
        if (count == 0) revert UnknownSplit(splitId);
        (remainderIndex, effectiveAt) = (word.remainderIndex(), word.effectiveAt());
        recipients = new address[](count);
        bps = new uint16[](count);
        uint256 shift = SplitLayout.HEAD_BITS;
        for (uint256 i; i < count; ++i) {
            if (shift > SplitLayout.LAST_SHIFT) (word, shift) = (words[i], 0);
            (uint256 id, uint256 memberBps) = word.member(shift);
            shift += SplitLayout.MEMBER_BITS;
            recipients[i] = _recipientById[id];
            bps[i] = uint16(memberBps);
        }
    }

    /// @inheritdoc ISplitEscrow
    function versionAt(uint256 splitId, uint256 timestamp) external view returns (uint256) {
        (, uint256 head) = _versionAt(splitId, timestamp);
        return head.version();
    }

    /* INTERNAL */

    /// @dev The payer of period `periodIndex` of `subscriptionId` and what is left to refund it: what the
    /// Subscriptions contract records as paid for the period, net of refunds so far (never below zero: a period
    /// whose record has moved out of the ledger has nothing left).
    function _refundable(uint256 subscriptionId, uint256 periodIndex)
        internal
        view
        returns (address subscriber, uint256 left)
    {
        ISubscriptions subscriptions_ = _subscriptions;
        if (address(subscriptions_) == address(0)) revert ZeroAddress();
        uint256 paid;
        (subscriber, paid) = subscriptions_.paidFor(subscriptionId, periodIndex);
        uint256 refunded = _refunded[subscriptionId][periodIndex];
        left = paid > refunded ? paid - refunded : 0;
    }

    /// @dev The words and header of the version of `splitId` in force at `timestamp`: the latest one unless it
    /// takes effect later, then the newest older version that had taken effect by then.
    function _versionAt(uint256 splitId, uint256 timestamp)
        internal
        view
        returns (mapping(uint256 => uint256) storage words, uint256 head)
    {
        words = _latest[splitId];
        head = words[0];
        if (head.count() == 0) revert UnknownSplit(splitId);
        while (head.effectiveAt() > timestamp) {
            uint256 version = head.version();
            if (version == 0) revert SplitNotInForce(splitId, timestamp);
            words = _versions[splitId][version - 1];
            head = words[0];
        }
    }

    /// @dev The header word of the latest version of `splitId`.
    function _requireSplit(uint256 splitId) internal view returns (uint256 head) {
        head = _latest[splitId][0];
        if (head.count() == 0) revert UnknownSplit(splitId);
    }

    /// @dev Validates a recipient list and writes it as `version` (to the history and as the latest version).
    function _storeVersion(
        uint256 splitId,
        uint256 version,
        uint256 effectiveAt,
        address[] calldata recipients,
        uint16[] calldata bps,
        uint256 remainderIndex
    ) internal {
        uint256[] memory bpsWide = _validateSplit(recipients, bps, remainderIndex);
        mapping(uint256 => uint256) storage latest = _latest[splitId];
        uint256 previousCount = latest[0].count();
        uint256 head = SplitLayout.encodeHead(effectiveAt.toUint40(), version.toUint24(), recipients.length, remainderIndex);
        _writeMembers(latest, _versions[splitId][version], recipients, bps, head);
        for (uint256 key = SplitLayout.HEAD_MEMBERS; key < previousCount; key += SplitLayout.WORD_MEMBERS) {
            if (key >= recipients.length) delete latest[key];
        }
        emit SplitVersionAdded(splitId, version, effectiveAt, recipients, bpsWide, remainderIndex);
    }

    /// @dev Writes a version with header `head` and these (validated) members, by SplitLayout, as the latest
    /// version and into its history.
    function _writeMembers(
        mapping(uint256 => uint256) storage latest,
        mapping(uint256 => uint256) storage history,
        address[] calldata recipients,
        uint16[] calldata bps,
        uint256 head
    ) internal {
        (uint256 word, uint256 shift, uint256 key) = (head, SplitLayout.HEAD_BITS, 0);
        for (uint256 i; i < recipients.length; ++i) {
            if (shift > SplitLayout.LAST_SHIFT) {
                (latest[key], history[key]) = (word, word);
                (key, word, shift) = (i, 0, 0);
            }
            word |= SplitLayout.encodeMember(_recipientId(recipients[i]), bps[i]) << shift;
            shift += SplitLayout.MEMBER_BITS;
        }
        (latest[key], history[key]) = (word, word);
    }

    /// @dev Marks `settlementId` used, or reverts if it already was.
    function _useSettlementId(uint256 settlementId) internal {
        (uint256 word, uint256 bit) = _settlementBit(settlementId);
        uint256 bits = _settlementsUsed[word];
        if (bits & bit != 0) revert SettlementIdUsed(settlementId);
        _settlementsUsed[word] = bits | bit;
    }

    /// @dev Where `settlementId` is marked in `_settlementsUsed`: its word and the bit within it.
    function _settlementBit(uint256 settlementId) internal pure returns (uint256 word, uint256 bit) {
        return (settlementId >> 8, uint256(1) << (settlementId & 0xff));
    }

    /// @dev The id split versions store for `recipient`, assigned on its first appearance.
    function _recipientId(address recipient) internal returns (uint256 id) {
        id = _recipientIds[recipient];
        if (id != 0) return id;
        id = ++_recipientCount;
        if (id > type(uint32).max) revert TooManyRecipients();
        _recipientIds[recipient] = id;
        _recipientById[id] = recipient;
    }

    /// @dev Checks count, zero and duplicate recipients, the bps sum and the remainder index; returns the bps
    /// widened for the event.
    function _validateSplit(address[] calldata recipients, uint16[] calldata bps, uint256 remainderIndex)
        internal
        view
        returns (uint256[] memory bpsWide)
    {
        uint256 count = recipients.length;
        if (count == 0 || count > MAX_RECIPIENTS) revert InvalidRecipientCount(count);
        if (bps.length != count) revert LengthMismatch();
        if (remainderIndex >= count) revert InvalidRemainderIndex(remainderIndex);
        bpsWide = new uint256[](count);
        // slither-disable-next-line uninitialized-local -- accumulator; its zero start is intended
        uint256 sum;
        for (uint256 i; i < count; ++i) {
            address recipient = recipients[i];
            if (recipient == address(0)) revert ZeroAddress();
            if (recipient == address(this)) revert InvalidRecipient(recipient);
            for (uint256 j; j < i; ++j) {
                if (recipients[j] == recipient) revert DuplicateRecipient(recipient);
            }
            sum += bps[i];
            bpsWide[i] = bps[i];
        }
        if (sum != TOTAL_BPS) revert InvalidBpsSum(sum);
    }
}
