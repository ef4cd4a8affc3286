// SPDX-License-Identifier: MIT
pragma solidity 0.8.30;

/// @title ISubscriptions
/// @notice Subscription pulls for an AI model marketplace: subscribers approve the token once, the contract pulls
/// each period's plan price and keeper-posted usage (overage) charges, capped by the subscriber's own cap, straight
/// into the SplitEscrow. Periods are anchored: period k of a plan covers
/// `[start + k * period, start + (k + 1) * period)`, however late inside the grace period a renewal lands.
/// @dev WARNING: the token must be a plain ERC-20 (USDC-like). A token that takes a fee on transfer is detected by a
/// balance-delta check and every pull batch then reverts. A token that calls back into this contract is stopped by
/// the reentrancy guard. Amounts are base units of the token; prices and caps are bounded to fit packed storage.
interface ISubscriptions {
    /* TYPES */

    /// @notice Lifecycle of a subscription.
    /// @dev None: no such id. Active: paid through `paidThrough`. PastDue: a renewal failed; still entitled until
    /// `paidThrough + gracePeriod`. Cancelled: the subscriber cancelled; entitled until `paidThrough`, never renewed.
    /// Lapsed: the grace period ran out without a successful renewal; never renewed again.
    enum Status {
        None,
        Active,
        PastDue,
        Cancelled,
        Lapsed
    }

    /// @notice Why a renewal or a usage charge item was not collected.
    enum FailureReason {
        None,
        InsufficientBalance,
        InsufficientAllowance,
        TokenRejected,
        UnknownSubscription,
        PeriodNotStarted,
        ChargeWindowClosed
    }

    /// @notice A plan: what a period costs and how long it lasts. Never changes once created except `active`.
    struct Plan {
        uint96 price;
        uint32 period;
        uint32 gracePeriod;
        bool active;
    }

    /// @notice The hot part of a subscription, one storage slot: everything a renewal reads and writes.
    /// @dev `periodIndex` is the index of the last paid period; it ends at `paidThrough`. The current period starts
    /// at `paidThrough - plans[planId].period`.
    struct Subscription {
        address subscriber;
        uint40 paidThrough;
        uint24 periodIndex;
        uint16 planId;
        Status status;
        bool planChangePending;
    }

    /// @notice The usage side of a subscription, one storage slot: for the newest period it knows (`period`) and
    /// the one before it, the overage cap that applies to that period and what was charged in it. Only those two
    /// periods can still be inside the charge window.
    /// @dev `overageCap` applies to `period` and every later period until the subscriber changes it;
    /// `previousOverageCap` is the cap of `period - 1`. A cap change applies from the period in progress when it is
    /// made (the last paid period while it runs, the next one once it ended), never to a period that ended before.
    struct UsageLedger {
        uint24 period;
        uint56 overageCap;
        uint56 chargedInPeriod;
        uint56 previousOverageCap;
        uint56 chargedInPreviousPeriod;
    }

    /// @notice An interval during which charging was paused; `end` is 0 while the pause lasts.
    struct PauseSpan {
        uint40 start;
        uint40 end;
    }

    /// @notice One usage charge posted by the keeper.
    /// @param subscriptionId The subscription.
    /// @param periodIndex The period the usage belongs to (the current or the previous one).
    /// @param cumulativeOverage Total overage for that period so far, before the cap; the contract collects the
    /// difference between `min(cumulativeOverage, cap)` and what it already charged for the period.
    /// @param usageRoot Merkle root of the priced usage lines behind `cumulativeOverage`.
    struct Charge {
        uint256 subscriptionId;
        uint256 periodIndex;
        uint256 cumulativeOverage;
        bytes32 usageRoot;
    }

    /* EVENTS */

    /// @notice A plan was created.
    event PlanCreated(uint256 indexed planId, uint256 price, uint256 period, uint256 gracePeriod);

    /// @notice A plan was opened to or closed for new subscribers.
    event PlanActiveSet(uint256 indexed planId, bool active);

    /// @notice The keeper allowed to post usage charges changed.
    event KeeperSet(address indexed keeper);

    /// @notice Pulls and usage charges were paused or resumed by the owner.
    event ChargingPausedSet(bool paused);

    /// @notice A subscription started; its first period was paid.
    /// @param amount The plan price collected for period 0, of which `fromCredit` came from prepaid credit.
    event Subscribed(
        uint256 indexed id,
        address indexed subscriber,
        uint256 indexed planId,
        uint256 overageCap,
        uint256 paidThrough,
        uint256 amount,
        uint256 fromCredit
    );

    /// @notice A period was paid: `periodIndex` now runs until `paidThrough` on plan `planId`.
    event Renewed(
        uint256 indexed id,
        uint256 indexed planId,
        uint256 periodIndex,
        uint256 paidThrough,
        uint256 amount,
        uint256 fromCredit
    );

    /// @notice Collecting period `periodIndex` failed; the subscription is past due and the period did not advance.
    event RenewalFailed(uint256 indexed id, uint256 periodIndex, FailureReason reason);

    /// @notice The grace period ran out without a successful renewal.
    event Lapsed(uint256 indexed id, uint256 paidThrough);

    /// @notice The subscriber cancelled; access continues until `paidThrough`.
    event Cancelled(uint256 indexed id, uint256 paidThrough);

    /// @notice The subscriber set a new overage cap per period, for period `fromPeriod` and every later one; periods
    /// before `fromPeriod` keep the cap they had.
    event OverageCapSet(uint256 indexed id, uint256 overageCap, uint256 fromPeriod);

    /// @notice The subscriber asked to move to `newPlanId` at the next renewal (equal to the current plan: the
    /// pending change was withdrawn).
    event PlanChangeScheduled(uint256 indexed id, uint256 indexed newPlanId);

    /// @notice A usage charge was collected: `amount` (of which `fromCredit` from credit) for `periodIndex`, bringing
    /// the period's charged total to `chargedInPeriod`, committed to by `usageRoot`.
    event UsageCharged(
        uint256 indexed id,
        uint256 indexed periodIndex,
        uint256 cumulativeOverage,
        uint256 amount,
        uint256 fromCredit,
        uint256 chargedInPeriod,
        bytes32 usageRoot
    );

    /// @notice A usage charge item was not collected, for `reason`; nothing changed.
    event UsageChargeFailed(
        uint256 indexed id, uint256 indexed periodIndex, uint256 cumulativeOverage, FailureReason reason, bytes32 usageRoot
    );

    /// @notice The subscriber deposited prepaid credit; `balance` is their credit afterwards. Credit used by
    /// renewals and charges is reported in those events (`fromCredit`).
    event CreditDeposited(address indexed subscriber, uint256 amount, uint256 balance);

    /// @notice The subscriber withdrew unused credit.
    event CreditWithdrawn(address indexed subscriber, uint256 amount, uint256 balance);

    /// @notice Credit spent by charges could not be transferred to the escrow (the token refused, e.g. paused);
    /// `owed` waits here until the next batch or `flushCreditToEscrow` moves it, and counts as revenue then.
    event CreditTransferDeferred(uint256 owed);

    /// @notice Deferred credit of `amount` reached the escrow and now counts as revenue.
    event CreditFlushed(uint256 amount);

    /// @notice The escrow refunded `amount` to the subscriber as credit.
    event CreditRefunded(address indexed subscriber, uint256 amount, uint256 balance);

    /* ERRORS */

    /// @notice The caller is not the keeper.
    error NotKeeper(address caller);
    /// @notice The caller is not the escrow.
    error NotEscrow(address caller);
    /// @notice The caller is not the subscriber of `id`.
    error NotSubscriber(uint256 id, address caller);
    /// @notice An address argument was zero.
    error ZeroAddress();
    /// @notice Pulls and usage charges are paused.
    error ChargingPaused();
    /// @notice The price does not fit 96 bits.
    error PriceTooLarge(uint256 price);
    /// @notice The period is shorter than the minimum, longer than 32 bits, or shorter than the charge window.
    error InvalidPeriod(uint256 period);
    /// @notice The grace period is not shorter than the period.
    error InvalidGracePeriod(uint256 gracePeriod, uint256 period);
    /// @notice All 65,535 plan ids are used.
    error TooManyPlans();
    /// @notice No plan has this id.
    error UnknownPlan(uint256 planId);
    /// @notice The plan takes no new subscribers.
    error PlanInactive(uint256 planId);
    /// @notice No subscription has this id.
    error UnknownSubscription(uint256 id);
    /// @notice The cap does not fit 56 bits (`MAX_OVERAGE_CAP`).
    error OverageCapTooLarge(uint256 cap);
    /// @notice The subscription is cancelled or lapsed.
    error SubscriptionEnded(uint256 id, Status status);
    /// @notice Collecting the first period from the subscriber failed.
    error PaymentFailed(address subscriber, uint256 amount, FailureReason reason);
    /// @notice The escrow received less than was sent: the token takes a fee on transfer.
    error FeeOnTransferToken(uint256 expected, uint256 received);
    /// @notice The subscriber has less credit than asked for.
    error InsufficientCredit(uint256 available, uint256 requested);
    /// @notice An amount was zero.
    error ZeroAmount();

    /* OWNER */

    /// @notice Creates a plan. Price 0 with a subscriber-set overage cap is pay-as-you-go.
    /// @param price Base units pulled per period (at most 2^96 - 1).
    /// @param period Seconds per period: at least one hour and longer than the charge window (so that only the
    /// last two periods of a subscription can ever be charged).
    /// @param gracePeriod Seconds a due subscription keeps access while renewal is retried; more than 0 and shorter
    /// than `period`, so at most one period is ever owed.
    /// @return planId The new plan's id (1-based).
    function createPlan(uint256 price, uint256 period, uint256 gracePeriod) external returns (uint256 planId);

    /// @notice Opens (`true`) or closes (`false`) a plan to new subscribers; existing subscriptions keep renewing.
    function setPlanActive(uint256 planId, bool active) external;

    /// @notice Sets the keeper allowed to post usage charges.
    function setKeeper(address keeper_) external;

    /// @notice Pauses renewals, subscriptions and usage charges. Cancels, credit withdrawals and escrow claims go on.
    /// Time spent paused does not count against any grace period or charge window: a subscription due during a
    /// pause keeps its whole grace period after it, and a period's usage stays chargeable as long again.
    function pause() external;

    /// @notice Resumes renewals, subscriptions and usage charges.
    function unpause() external;

    /* SUBSCRIBER */

    /// @notice Subscribes the caller to `planId` and pays the first period now (credit first, then the wallet).
    /// @param overageCapPerPeriod The most usage charges may collect per period (at most `MAX_OVERAGE_CAP`).
    /// @return id The new subscription's id (1-based).
    function subscribe(uint256 planId, uint256 overageCapPerPeriod) external returns (uint256 id);

    /// @notice `subscribe` after an EIP-2612 permit for this contract. If the permit was already used (for example
    /// front-run by someone who saw it), the subscribe still goes ahead on the allowance that permit set.
    function subscribeWithPermit(
        uint256 planId,
        uint256 overageCapPerPeriod,
        uint256 permitValue,
        uint256 deadline,
        uint8 v,
        bytes32 r,
        bytes32 s
    ) external returns (uint256 id);

    /// @notice Cancels subscription `id`: no further renewals; access and usage charges for paid periods remain.
    function cancel(uint256 id) external;

    /// @notice Sets the overage cap per period of `id`, from the period in progress on: the last paid period while
    /// it runs (so a lowering protects the subscriber at once, and a raise gives headroom at once), else the next
    /// period. A period that ended keeps its cap. Lowering it below what the period already paid stops further
    /// charges for it; nothing is refunded automatically.
    function setOverageCap(uint256 id, uint256 overageCapPerPeriod) external;

    /// @notice Moves `id` to `newPlanId` at its next renewal. Passing the current plan withdraws a pending change.
    function changePlan(uint256 id, uint256 newPlanId) external;

    /// @notice Deposits `amount` of the caller's tokens as prepaid credit, used before the wallet by every charge.
    function deposit(uint256 amount) external;

    /// @notice Withdraws `amount` of the caller's unused credit to the caller.
    function withdraw(uint256 amount) external;

    /* KEEPER AND ANYONE */

    /// @notice Renews every due subscription in `ids`. Anyone may call. Each item is isolated: not due is skipped,
    /// a failed pull marks the subscription past due and emits `RenewalFailed`, and a subscription whose grace
    /// period has run out lapses. No item reverts the batch.
    /// @return renewed How many subscriptions were renewed.
    function renew(uint256[] calldata ids) external returns (uint256 renewed);

    /// @notice Collects usage charges. Keeper only. Each item collects `min(cumulativeOverage, cap) - charged` for
    /// its period, with the cap that applies to that period, so a resend is a no-op; items are isolated as in
    /// `renew`. A period can be charged while it is the last paid period or the one before it, until the charge
    /// window after its end has run (not counting time paused).
    /// @return collected How many items collected a non-zero amount.
    function chargeUsage(Charge[] calldata charges) external returns (uint256 collected);

    /// @notice Moves credit that charges spent but the token refused to transfer (see `CreditTransferDeferred`) to
    /// the escrow. Anyone may call.
    /// @return moved The amount moved and added to `totalRevenue`.
    function flushCreditToEscrow() external returns (uint256 moved);

    /// @notice Credits `amount` the escrow has just transferred here to `subscriber` (a refund as credit). Escrow only.
    function creditFromEscrow(address subscriber, uint256 amount) external;

    /* VIEWS */

    /// @notice The settlement token.
    function token() external view returns (address);

    /// @notice The SplitEscrow that receives every collected amount.
    function escrow() external view returns (address);

    /// @notice The keeper allowed to post usage charges.
    function keeper() external view returns (address);

    /// @notice Seconds after a period ends during which its usage can still be charged.
    function chargeWindow() external view returns (uint256);

    /// @notice Whether pulls and usage charges are paused.
    function chargingPaused() external view returns (bool);

    /// @notice Total revenue ever sent to the escrow (plan fees and usage charges). The escrow allocates from it.
    function totalRevenue() external view returns (uint256);

    /// @notice Credit spent by charges and still waiting to be transferred to the escrow.
    function creditOwedToEscrow() external view returns (uint256);

    /// @notice The number of plans created; plan ids run from 1 to this.
    function planCount() external view returns (uint256);

    /// @notice The number of subscriptions created; ids run from 1 to this.
    function subscriptionCount() external view returns (uint256);

    /// @notice Plan `planId`.
    function plan(uint256 planId) external view returns (Plan memory);

    /// @notice Subscription `id`.
    function subscription(uint256 id) external view returns (Subscription memory);

    /// @notice The usage ledger (cap and recent charges) of `id`.
    function usageLedger(uint256 id) external view returns (UsageLedger memory);

    /// @notice The plan `id` moves to at its next renewal (its current plan when no change is pending).
    function nextPlanOf(uint256 id) external view returns (uint256);

    /// @notice What was charged for usage in period `periodIndex` of `id`; 0 for periods outside the last two
    /// the ledger knows (see the `UsageCharged` events for the full history).
    function chargedInPeriod(uint256 id, uint256 periodIndex) external view returns (uint256);

    /// @notice The overage cap that applies to period `periodIndex` of `id`; `known` is false for a period older
    /// than the two the ledger holds (no such period can be charged).
    function overageCapOf(uint256 id, uint256 periodIndex) external view returns (bool known, uint256 cap);

    /// @notice What the subscriber of `id` paid for period `periodIndex`, as far as this contract still records
    /// it: the plan fee while it is the last paid period, and the usage charges of the two periods the ledger holds.
    /// The escrow bounds refunds by it.
    /// @return subscriber The wallet that paid (credit included).
    /// @return paid Plan fee plus usage charges recorded for the period.
    function paidFor(uint256 id, uint256 periodIndex) external view returns (address subscriber, uint256 paid);

    /// @notice Every pause so far, oldest first.
    function pauses() external view returns (PauseSpan[] memory);

    /// @notice Seconds charging was paused between `from` and now.
    function pausedSince(uint256 from) external view returns (uint256);

    /// @notice Start and end of the current (last paid) period of `id`.
    function currentPeriod(uint256 id) external view returns (uint256 index, uint256 start, uint256 end);

    /// @notice Prepaid credit of `subscriber`.
    function creditOf(address subscriber) external view returns (uint256);

    /// @notice Whether the marketplace should serve `id` now: active or past due within grace (time paused does not
    /// count), or cancelled but paid through a time still ahead.
    function isEntitled(uint256 id) external view returns (bool);

    /// @notice For each id, whether `renew` would collect it now: due (or past due within grace), and the
    /// subscriber's credit plus wallet balance and allowance cover the next price (blacklists and pauses of the
    /// token cannot be seen from here). All false while charging is paused.
    function dueForRenewal(uint256[] calldata ids) external view returns (bool[] memory);
}
