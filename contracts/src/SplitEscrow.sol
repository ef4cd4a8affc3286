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

/// @title SplitEscrow
/// @notice See {ISplitEscrow}.
contract SplitEscrow is ISplitEscrow, Ownable2Step, ReentrancyGuardTransient {
    using SafeERC20 for IERC20;
    using SafeCast for uint256;

    /* CONSTANTS */

    /// @notice Basis points in a whole split.
    uint256 public constant TOTAL_BPS = 10_000;
    /// @notice The most recipients a split version may have.
    uint256 public constant MAX_RECIPIENTS = 32;
    /// @notice After a hold ends, no new hold may start for this long: the recipient's window to claim.
    uint256 public constant HOLD_COOLDOWN = 1 days;

    /* IMMUTABLES */

    IERC20 internal immutable TOKEN;
    uint256 internal immutable SPLIT_CHANGE_DELAY;
    uint256 internal immutable MAX_HOLD;

    /* STORAGE */

    ISubscriptions internal _subscriptions;
    address internal _keeper;
    Totals internal _totals;
    uint256 internal _splitCount;
    /// @dev The latest version of each split (in force, or pending until its effectiveAt), kept apart from the
    /// history so a settlement reads exactly one slot per recipient in the common case.
    mapping(uint256 splitId => mapping(uint256 index => SplitEntry)) internal _latest;
    mapping(uint256 splitId => mapping(uint256 version => mapping(uint256 index => SplitEntry))) internal _versions;
    mapping(address recipient => Account) internal _accounts;
    mapping(address recipient => address) internal _payouts;
    mapping(uint256 settlementId => bool) internal _settlementUsed;

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
        _subscriptions = ISubscriptions(subscriptions_);
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
        _storeVersion(splitId, 0, block.timestamp, recipients, bps, remainderIndex);
    }

    /// @inheritdoc ISplitEscrow
    function proposeSplitChange(
        uint256 splitId,
        address[] calldata recipients,
        uint16[] calldata bps,
        uint256 remainderIndex
    ) external onlyOwner returns (uint256 version) {
        SplitEntry memory head = _requireSplit(splitId);
        if (head.effectiveAt > block.timestamp) revert ChangeAlreadyPending(splitId);
        version = uint256(head.version) + 1;
        _storeVersion(splitId, version, block.timestamp + SPLIT_CHANGE_DELAY, recipients, bps, remainderIndex);
    }

    /// @inheritdoc ISplitEscrow
    function cancelSplitChange(uint256 splitId) external onlyOwner {
        SplitEntry memory head = _requireSplit(splitId);
        if (head.effectiveAt <= block.timestamp) revert NoPendingChange(splitId);
        uint256 version = head.version;
        mapping(uint256 => SplitEntry) storage latest = _latest[splitId];
        mapping(uint256 => SplitEntry) storage previous = _versions[splitId][version - 1];
        uint256 previousCount = previous[0].count;
        for (uint256 i; i < head.count; ++i) {
            delete _versions[splitId][version][i];
            if (i >= previousCount) delete latest[i];
        }
        for (uint256 i; i < previousCount; ++i) {
            latest[i] = previous[i];
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
    function refund(address subscriber, uint256 amount, bool toCredit, bytes32 refundId)
        external
        onlyOwner
        nonReentrant
    {
        if (subscriber == address(0)) revert ZeroAddress();
        if (amount == 0) revert ZeroAmount();
        uint256 available = unallocated();
        if (amount > available) revert InsufficientUnallocated(available, amount);
        _totals.consumed += amount.toUint128();
        emit Refunded(subscriber, amount, toCredit, refundId);
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
        if (_settlementUsed[settlementId]) revert SettlementIdUsed(settlementId);
        if (epochEnd > block.timestamp || epochStart > epochEnd) revert InvalidEpoch(epochStart, epochEnd);
        if (splitIds.length != amounts.length) revert LengthMismatch();

        // slither-disable-next-line uninitialized-local -- accumulator; its zero start is intended
        uint256 total;
        for (uint256 i; i < amounts.length; ++i) {
            total += amounts[i];
        }
        uint256 available = unallocated();
        if (total > available) revert InsufficientUnallocated(available, total);

        _settlementUsed[settlementId] = true;
        Totals memory totals = _totals;
        totals.consumed += total.toUint128();
        totals.totalClaimable += total.toUint128();
        _totals = totals;

        for (uint256 i; i < splitIds.length; ++i) {
            _distribute(settlementId, splitIds[i], amounts[i], epochEnd);
        }
        emit Settled(settlementId, epochStart, epochEnd, usageRoot, total, splitIds.length);
    }

    /// @dev Credits `amount` to the recipients of the version of `splitId` in force at `epochEnd`: each gets
    /// `amount * bps / 10_000` rounded down, and the remainder recipient gets everything the others did not (its
    /// own share plus the rounding remainder). One pass over the entries, one storage slot each.
    function _distribute(uint256 settlementId, uint256 splitId, uint256 amount, uint256 epochEnd) internal {
        (mapping(uint256 => SplitEntry) storage entries, SplitEntry memory head) = _versionAt(splitId, epochEnd);
        if (amount == 0) return;
        uint256 remainderIndex = head.remainderIndex;
        address remainderRecipient = head.recipient; // replaced in the loop: remainderIndex < count
        uint256 remainderShare = amount;
        for (uint256 i; i < head.count; ++i) {
            // Read through a storage pointer: one slot per recipient, no memory copy of the entry.
            SplitEntry storage entry = entries[i];
            address recipient = entry.recipient;
            if (i == remainderIndex) {
                remainderRecipient = recipient; // gets its own share plus the rounding remainder, below
                continue;
            }
            uint256 share = amount * entry.bps / TOTAL_BPS;
            remainderShare -= share;
            _credit(settlementId, splitId, recipient, share);
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
        Account memory account = _accounts[recipient];
        if (account.heldUntil > block.timestamp) revert RecipientHeld(recipient, account.heldUntil);
        amount = account.claimable;
        if (amount == 0) revert NothingToClaim(recipient);
        address payout = account.hasPayout ? _payouts[recipient] : recipient;
        _accounts[recipient].claimable = 0;
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
            if (TOKEN.trySafeTransfer(payout, account.claimable)) {
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
        return _settlementUsed[settlementId];
    }

    /// @inheritdoc ISplitEscrow
    function splitCount() external view returns (uint256) {
        return _splitCount;
    }

    /// @inheritdoc ISplitEscrow
    function latestVersion(uint256 splitId) external view returns (uint256) {
        return _requireSplit(splitId).version;
    }

    /// @inheritdoc ISplitEscrow
    function splitVersion(uint256 splitId, uint256 version)
        external
        view
        returns (address[] memory recipients, uint16[] memory bps, uint256 remainderIndex, uint256 effectiveAt)
    {
        mapping(uint256 => SplitEntry) storage entries = _versions[splitId][version];
        SplitEntry memory head = entries[0];
        if (head.count == 0) revert UnknownSplit(splitId);
        recipients = new address[](head.count);
        bps = new uint16[](head.count);
        for (uint256 i; i < head.count; ++i) {
            SplitEntry memory entry = entries[i];
            recipients[i] = entry.recipient;
            bps[i] = entry.bps;
        }
        return (recipients, bps, head.remainderIndex, head.effectiveAt);
    }

    /// @inheritdoc ISplitEscrow
    function versionAt(uint256 splitId, uint256 timestamp) external view returns (uint256) {
        (, SplitEntry memory head) = _versionAt(splitId, timestamp);
        return head.version;
    }

    /* INTERNAL */

    /// @dev The entries and header of the version of `splitId` in force at `timestamp`: the latest one unless it
    /// takes effect later, then the newest older version that had taken effect by then.
    function _versionAt(uint256 splitId, uint256 timestamp)
        internal
        view
        returns (mapping(uint256 => SplitEntry) storage entries, SplitEntry memory head)
    {
        entries = _latest[splitId];
        head = entries[0];
        if (head.count == 0) revert UnknownSplit(splitId);
        while (head.effectiveAt > timestamp) {
            if (head.version == 0) revert SplitNotInForce(splitId, timestamp);
            entries = _versions[splitId][head.version - 1];
            head = entries[0];
        }
    }

    function _requireSplit(uint256 splitId) internal view returns (SplitEntry memory head) {
        head = _latest[splitId][0];
        // slither-disable-next-line incorrect-equality -- an unset split has count 0; not a balance or a time
        if (head.count == 0) revert UnknownSplit(splitId);
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
        uint256 count = recipients.length;
        mapping(uint256 => SplitEntry) storage latest = _latest[splitId];
        mapping(uint256 => SplitEntry) storage history = _versions[splitId][version];
        uint256 previousCount = latest[0].count;
        SplitEntry memory entry = SplitEntry({
            recipient: recipients[0],
            bps: bps[0],
            effectiveAt: effectiveAt.toUint40(),
            count: uint8(count),
            remainderIndex: uint8(remainderIndex),
            version: version.toUint24()
        });
        latest[0] = entry;
        history[0] = entry;
        for (uint256 i = 1; i < count; ++i) {
            entry = SplitEntry({recipient: recipients[i], bps: bps[i], effectiveAt: 0, count: 0, remainderIndex: 0, version: 0});
            latest[i] = entry;
            history[i] = entry;
        }
        for (uint256 i = count; i < previousCount; ++i) {
            delete latest[i];
        }
        emit SplitVersionAdded(splitId, version, effectiveAt, recipients, bpsWide, remainderIndex);
    }

    /// @dev Checks count, zero and duplicate recipients, the bps sum and the remainder index; returns the bps
    /// widened for the event.
    function _validateSplit(address[] calldata recipients, uint16[] calldata bps, uint256 remainderIndex)
        internal
        pure
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
            for (uint256 j; j < i; ++j) {
                if (recipients[j] == recipient) revert DuplicateRecipient(recipient);
            }
            sum += bps[i];
            bpsWide[i] = bps[i];
        }
        if (sum != TOTAL_BPS) revert InvalidBpsSum(sum);
    }
}
