// SPDX-License-Identifier: MIT
pragma solidity 0.8.30;

/// @title ISplitEscrow
/// @notice Holds the revenue the Subscriptions contract collects and pays it out by public split rules.
/// Revenue arrives unallocated; the keeper settles it to splits by the off-chain attribution of usage to models
/// (committing to that usage with a Merkle root); each split divides its amount among its recipients in basis
/// points, by the split version in force for the whole epoch; recipients (or anyone for them) claim to their payout
/// address. Settlements cover consecutive, non-overlapping epochs in order, so no epoch can be chosen to pick a
/// split version. Refunds go only to the wallet that paid a subscription period, at most what it paid for it.
/// @dev Invariant: token balance >= unallocated + total claimable, after every call.
/// WARNING: the token must be a plain ERC-20 (USDC-like). Shares round down; the rounding remainder of each split
/// amount goes to the split's remainder recipient, so a settlement credits exactly its amounts.
interface ISplitEscrow {
    /* TYPES */

    /// @notice A recipient's account, one storage slot: everything a claim reads.
    /// @param claimable What the recipient can claim.
    /// @param heldUntil Claims are refused before this time; after it (or after a release, which sets it to the
    /// release time) a new hold waits `HOLD_COOLDOWN`, so a recipient always gets a window to claim between holds.
    /// @param holdSince When the current hold started; a hold never extends beyond `holdSince + maxHold`.
    /// @param hasPayout Whether claims go to a payout address the recipient set (else to the recipient itself).
    struct Account {
        uint96 claimable;
        uint40 heldUntil;
        uint40 holdSince;
        bool hasPayout;
    }

    /// @notice A dispute hold on a recipient's claims, as {holdOf} reports it.
    struct Hold {
        uint40 until;
        uint40 since;
    }

    /// @notice Revenue and liabilities, one storage slot.
    /// @param consumed Revenue allocated to splits or refunded; unallocated = Subscriptions' totalRevenue - consumed.
    /// @param totalClaimable Sum of all recipients' claimable balances.
    struct Totals {
        uint128 consumed;
        uint128 totalClaimable;
    }

    /* EVENTS */

    /// @notice The Subscriptions contract, the only source of revenue, was set (once).
    event SubscriptionsSet(address indexed subscriptions);

    /// @notice The keeper allowed to settle changed.
    event KeeperSet(address indexed keeper);

    /// @notice A split version was recorded: created (version 0, effective at once) or proposed (effective at
    /// `effectiveAt`, after the change delay). The full recipient list is in the event.
    event SplitVersionAdded(
        uint256 indexed splitId,
        uint256 indexed version,
        uint256 effectiveAt,
        address[] recipients,
        uint256[] bps,
        uint256 remainderIndex
    );

    /// @notice A proposed split version was withdrawn before it took effect.
    event SplitChangeCancelled(uint256 indexed splitId, uint256 indexed version);

    /// @notice A settlement allocated `total` unallocated revenue over `splitCount` splits for the epoch
    /// `[epochStart, epochEnd)`, committed to by `usageRoot`.
    event Settled(
        uint256 indexed settlementId,
        uint256 epochStart,
        uint256 epochEnd,
        bytes32 usageRoot,
        uint256 total,
        uint256 splitCount
    );

    /// @notice `recipient` was credited `amount` by split `splitId` in settlement `settlementId` (by the split's
    /// version in force at the settlement's epoch end: {versionAt}).
    event Credited(address indexed recipient, uint256 settlementId, uint256 splitId, uint256 amount);

    /// @notice `amount` was paid from `recipient`'s balance to `payout`.
    event Claimed(address indexed recipient, address indexed payout, uint256 amount);

    /// @notice A claim in a batch failed (the token refused the transfer); the balance stays claimable.
    event ClaimFailed(address indexed recipient, address indexed payout, uint256 amount);

    /// @notice `recipient` set where its claims are paid.
    event PayoutAddressSet(address indexed recipient, address indexed payout);

    /// @notice `recipient`'s claims are held until `until` for a dispute identified by `reasonHash`.
    event HoldPlaced(address indexed recipient, uint256 until, bytes32 reasonHash);

    /// @notice The hold on `recipient` was released early.
    event HoldReleased(address indexed recipient);

    /// @notice Unallocated revenue was refunded to `subscriber` for what it paid for period `periodIndex` of
    /// subscription `subscriptionId`, to the wallet or as Subscriptions credit.
    event Refunded(
        address indexed subscriber,
        uint256 indexed subscriptionId,
        uint256 periodIndex,
        uint256 amount,
        bool toCredit,
        bytes32 indexed refundId
    );

    /// @notice Tokens that were never owed to anyone (sent here outside the revenue path) were swept to `to`.
    event SurplusSwept(address indexed to, uint256 amount);

    /* ERRORS */

    /// @notice The caller is not the keeper.
    error NotKeeper(address caller);
    /// @notice An address argument was zero.
    error ZeroAddress();
    /// @notice Claims cannot be paid to the escrow itself (they would turn into sweepable surplus).
    error InvalidPayout(address payout);
    /// @notice The Subscriptions contract is already set.
    error SubscriptionsAlreadySet();
    /// @notice The Subscriptions contract does not pay this escrow in this escrow's token.
    error SubscriptionsMismatch(address subscriptionsEscrow, address subscriptionsToken);
    /// @notice The escrow itself cannot be a split recipient (its credits would be owed to itself).
    error InvalidRecipient(address recipient);
    /// @notice A deployment parameter (split change delay, maximum hold) is too large for the packed storage.
    error InvalidDuration(uint256 duration);
    /// @notice The refund id was used before.
    error RefundIdUsed(bytes32 refundId);
    /// @notice The refund is more than the subscriber paid for the period, net of earlier refunds.
    error RefundExceedsPaid(uint256 refundable, uint256 requested);
    /// @notice The epoch does not start where the previous settlement's epoch ended.
    error EpochNotConsecutive(uint256 expectedStart, uint256 epochStart);
    /// @notice A version of the split took effect inside the epoch (at `effectiveAt`): the epoch must end there.
    error SplitChangedInEpoch(uint256 splitId, uint256 effectiveAt);
    /// @notice Too little gas was left for a payout in a batch claim.
    error InsufficientGasForPayout();
    /// @notice Array arguments differ in length.
    error LengthMismatch();
    /// @notice A split needs between 1 and `MAX_RECIPIENTS` recipients.
    error InvalidRecipientCount(uint256 count);
    /// @notice Basis points must sum to 10,000.
    error InvalidBpsSum(uint256 sum);
    /// @notice A recipient appears twice.
    error DuplicateRecipient(address recipient);

    /// @notice Splits have named 2^32 distinct recipients, the most the packed split layout can address.
    error TooManyRecipients();
    /// @notice The remainder recipient index is outside the list.
    error InvalidRemainderIndex(uint256 index);
    /// @notice No split has this id.
    error UnknownSplit(uint256 splitId);
    /// @notice The split already has a proposed change waiting to take effect.
    error ChangeAlreadyPending(uint256 splitId);
    /// @notice The split has no proposed change waiting.
    error NoPendingChange(uint256 splitId);
    /// @notice The settlement id was used before.
    error SettlementIdUsed(uint256 settlementId);
    /// @notice The epoch ends in the future, or does not end after it starts.
    error InvalidEpoch(uint256 epochStart, uint256 epochEnd);
    /// @notice The settlement allocates more than is unallocated.
    error InsufficientUnallocated(uint256 available, uint256 requested);
    /// @notice The split has no version in force at `timestamp` (it was created less than the change delay before).
    error SplitNotInForce(uint256 splitId, uint256 timestamp);
    /// @notice The recipient's claims are held until `until`.
    error RecipientHeld(address recipient, uint256 until);
    /// @notice The hold would end after `limit` (the maximum hold, or the current hold's start plus it).
    error HoldTooLong(uint256 until, uint256 limit);
    /// @notice A new hold must wait until `allowedFrom` (the cooldown after the previous one).
    error HoldCooldown(uint256 allowedFrom);
    /// @notice The recipient is not held.
    error NotHeld(address recipient);
    /// @notice Nothing to claim.
    error NothingToClaim(address recipient);
    /// @notice An amount was zero.
    error ZeroAmount();
    /// @notice An amount does not fit the packed storage.
    error AmountTooLarge(uint256 amount);
    /// @notice There is no surplus to sweep.
    error NoSurplus();

    /* OWNER */

    /// @notice Sets the Subscriptions contract, once. Only it may report revenue. It must pay this escrow in this
    /// escrow's token.
    function setSubscriptions(address subscriptions_) external;

    /// @notice Sets the keeper allowed to settle.
    function setKeeper(address keeper_) external;

    /// @notice Creates a split (version 0), effective `SPLIT_CHANGE_DELAY` from now like any change: only epochs
    /// that start after that can be settled to it.
    /// @param recipients Distinct, non-zero addresses other than the escrow (1 to `MAX_RECIPIENTS`).
    /// @param bps Basis points per recipient, summing to 10,000.
    /// @param remainderIndex Index of the recipient who receives the rounding remainder.
    /// @return splitId The new split's id (1-based).
    function createSplit(address[] calldata recipients, uint16[] calldata bps, uint256 remainderIndex)
        external
        returns (uint256 splitId);

    /// @notice Proposes a new version of `splitId`, effective `SPLIT_CHANGE_DELAY` from now. One pending change
    /// per split; cancel it first to propose another.
    /// @return version The proposed version's number.
    function proposeSplitChange(
        uint256 splitId,
        address[] calldata recipients,
        uint16[] calldata bps,
        uint256 remainderIndex
    ) external returns (uint256 version);

    /// @notice Withdraws the pending change of `splitId` before it takes effect. A new split's first version cannot
    /// be withdrawn (leave the split unused).
    function cancelSplitChange(uint256 splitId) external;

    /// @notice Holds `recipient`'s claims until `until` for a dispute; at most `MAX_HOLD` after the hold started,
    /// and `until` must fit 40 bits (it is refused, never truncated).
    function hold(address recipient, uint256 until, bytes32 reasonHash) external;

    /// @notice Releases the hold on `recipient` early.
    function release(address recipient) external;

    /// @notice Refunds `amount` of unallocated revenue to the subscriber of `subscriptionId` for what it paid for
    /// period `periodIndex`, to the wallet or as Subscriptions credit. At most what {ISubscriptions-paidFor} reports
    /// for that period net of earlier refunds for it: the plan fee while it is the subscription's last paid period,
    /// and the usage charges of the two periods the usage ledger holds.
    /// @param refundId The operator's reference for the refund (e.g. a dispute id hash); each id is used once.
    function refund(uint256 subscriptionId, uint256 periodIndex, uint256 amount, bool toCredit, bytes32 refundId)
        external;

    /// @notice Sends tokens that are owed to no one (balance above unallocated + total claimable) to `to`.
    function sweepSurplus(address to) external returns (uint256 amount);

    /* KEEPER */

    /// @notice Allocates unallocated revenue to splits for the epoch `[epochStart, epochEnd)`. Epochs are consecutive:
    /// `epochStart` must equal the previous settlement's `epochEnd` (any start for the first settlement), and
    /// `epochStart < epochEnd <= now`. Each split's amount is divided by the one version of the split in force for
    /// the whole epoch and credited to its recipients; a split with a version taking effect inside the epoch, or
    /// none in force at its start, is refused.
    /// @param settlementId Unique id chosen by the keeper; a used id is refused, so a resend cannot apply twice.
    function settle(
        uint256 settlementId,
        uint256 epochStart,
        uint256 epochEnd,
        uint256[] calldata splitIds,
        uint256[] calldata amounts,
        bytes32 usageRoot
    ) external;

    /* RECIPIENTS AND ANYONE */

    /// @notice Sets where the caller's claims are paid (the caller itself when never set). Not the escrow itself.
    function setPayoutAddress(address payout) external;

    /// @notice Pays `recipient`'s whole claimable balance to its payout address. Anyone may call. Refused while held.
    function claim(address recipient) external returns (uint256 amount);

    /// @notice Claims for each recipient; held recipients and empty balances are skipped, a refused transfer emits
    /// `ClaimFailed` and leaves that balance claimable. No item reverts the batch, and each transfer may use at most
    /// `PAYOUT_GAS`, so no recipient can starve the others (the call reverts, before paying, when too little gas is
    /// left to give the next payout all of `PAYOUT_GAS`).
    /// @return paid How many recipients were paid.
    function claimMany(address[] calldata recipients) external returns (uint256 paid);

    /* VIEWS */

    /// @notice The settlement token.
    function token() external view returns (address);

    /// @notice The Subscriptions contract (zero until set).
    function subscriptions() external view returns (address);

    /// @notice The keeper allowed to settle.
    function keeper() external view returns (address);

    /// @notice Seconds between a split change proposal and its effect.
    function splitChangeDelay() external view returns (uint256);

    /// @notice The longest a hold may last.
    function maxHold() external view returns (uint256);

    /// @notice Revenue not yet allocated to splits or refunded.
    function unallocated() external view returns (uint256);

    /// @notice Sum of all claimable balances.
    function totalClaimable() external view returns (uint256);

    /// @notice Tokens held beyond what is owed (unallocated + total claimable).
    function surplus() external view returns (uint256);

    /// @notice What `recipient` can claim.
    function claimableOf(address recipient) external view returns (uint256);

    /// @notice Where `recipient`'s claims are paid.
    function payoutOf(address recipient) external view returns (address);

    /// @notice The hold on `recipient`.
    function holdOf(address recipient) external view returns (Hold memory);

    /// @notice Whether `settlementId` was used.
    function settlementUsed(uint256 settlementId) external view returns (bool);

    /// @notice Where the last settlement's epoch ended: the next epoch starts here (0 before the first settlement).
    function lastEpochEnd() external view returns (uint256);

    /// @notice What was refunded so far for period `periodIndex` of subscription `subscriptionId`.
    function refundedFor(uint256 subscriptionId, uint256 periodIndex) external view returns (uint256);

    /// @notice What can still be refunded for period `periodIndex` of `subscriptionId` (before the unallocated
    /// revenue limit).
    function refundable(uint256 subscriptionId, uint256 periodIndex) external view returns (uint256);

    /// @notice Whether `refundId` was used.
    function refundIdUsed(bytes32 refundId) external view returns (bool);

    /// @notice The number of splits created; split ids run from 1 to this.
    function splitCount() external view returns (uint256);

    /// @notice The latest version number of `splitId` (pending or in force).
    function latestVersion(uint256 splitId) external view returns (uint256);

    /// @notice Version `version` of `splitId`.
    function splitVersion(uint256 splitId, uint256 version)
        external
        view
        returns (address[] memory recipients, uint16[] memory bps, uint256 remainderIndex, uint256 effectiveAt);

    /// @notice The version of `splitId` in force at `timestamp`.
    function versionAt(uint256 splitId, uint256 timestamp) external view returns (uint256 version);
}
