// SPDX-License-Identifier: MIT
pragma solidity 0.8.30;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {IERC20Permit} from "@openzeppelin/contracts/token/ERC20/extensions/IERC20Permit.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";
import {Ownable} from "@openzeppelin/contracts/access/Ownable.sol";
import {Ownable2Step} from "@openzeppelin/contracts/access/Ownable2Step.sol";
import {ReentrancyGuardTransient} from "@openzeppelin/contracts/utils/ReentrancyGuardTransient.sol";
import {SafeCast} from "@openzeppelin/contracts/utils/math/SafeCast.sol";

import {ISubscriptions} from "./interfaces/ISubscriptions.sol";

/// @title Subscriptions
/// @notice See {ISubscriptions}.
contract Subscriptions is ISubscriptions, Ownable2Step, ReentrancyGuardTransient {
    using SafeERC20 for IERC20;
    using SafeCast for uint256;

    /* CONSTANTS */

    /// @notice The shortest plan period. Keeps 24-bit period indexes good for centuries.
    uint256 public constant MIN_PERIOD = 1 hours;
    /// @notice The largest overage cap per period (the ledger keeps caps and charged totals in 56 bits).
    uint256 public constant MAX_OVERAGE_CAP = type(uint56).max;

    /* IMMUTABLES */

    IERC20 internal immutable TOKEN;
    address internal immutable ESCROW;
    uint256 internal immutable CHARGE_WINDOW;

    /* STORAGE */

    /// @dev Counters and the pause flag share one slot: a batch reads it once and writes the revenue total once.
    struct Globals {
        uint128 totalRevenue;
        uint64 subscriptionCount;
        uint16 planCount;
        bool paused;
    }

    /// @dev What one pull batch collected, settled with the escrow once at the end.
    struct Batch {
        uint256 pulled;
        uint256 creditUsed;
    }

    Globals internal _globals;
    address internal _keeper;
    mapping(uint256 planId => Plan) internal _plans;
    mapping(uint256 id => Subscription) internal _subscriptions;
    mapping(uint256 id => UsageLedger) internal _ledgers;
    mapping(uint256 id => uint16) internal _nextPlan;
    mapping(address subscriber => uint256) internal _credit;
    /// @dev Credit already spent by charges but not yet transferred to the escrow (the token refused it).
    uint256 internal _creditOwedToEscrow;
    /// @dev Every pause, oldest first; read only when a grace period or charge window would otherwise have run out.
    PauseSpan[] internal _pauses;

    /* CONSTRUCTOR */

    /// @param token_ The settlement token (USDC-like: 6 decimals, EIP-2612).
    /// @param escrow_ The SplitEscrow every collected amount goes to.
    /// @param owner_ The operator.
    /// @param keeper_ The keeper allowed to post usage charges.
    /// @param chargeWindow_ Seconds after a period ends during which its usage can still be charged.
    constructor(address token_, address escrow_, address owner_, address keeper_, uint256 chargeWindow_)
        Ownable(owner_)
    {
        if (token_ == address(0) || escrow_ == address(0) || keeper_ == address(0)) revert ZeroAddress();
        // A window this long could never fit under a plan period (plans are at most 2^32 - 1 seconds).
        if (chargeWindow_ >= type(uint32).max) revert InvalidPeriod(chargeWindow_);
        TOKEN = IERC20(token_);
        ESCROW = escrow_;
        CHARGE_WINDOW = chargeWindow_;
        _keeper = keeper_;
        emit KeeperSet(keeper_);
    }

    /* MODIFIERS */

    modifier whenCharging() {
        if (_globals.paused) revert ChargingPaused();
        _;
    }

    /* OWNER */

    /// @inheritdoc ISubscriptions
    function createPlan(uint256 price, uint256 period, uint256 gracePeriod)
        external
        onlyOwner
        returns (uint256 planId)
    {
        if (price > type(uint96).max) revert PriceTooLarge(price);
        // Longer than the charge window: when a period ends, the one before it is out of its window, so the ledger's
        // two periods are all that can ever be charged.
        if (period < MIN_PERIOD || period > type(uint32).max || period <= CHARGE_WINDOW) revert InvalidPeriod(period);
        // A zero grace period would lapse a subscription at the very second it falls due, before any renewal.
        if (gracePeriod == 0 || gracePeriod >= period) revert InvalidGracePeriod(gracePeriod, period);
        Globals storage globals = _globals;
        if (globals.planCount == type(uint16).max) revert TooManyPlans();
        planId = ++globals.planCount;
        _plans[planId] =
            Plan({price: uint96(price), period: uint32(period), gracePeriod: uint32(gracePeriod), active: true});
        emit PlanCreated(planId, price, period, gracePeriod);
    }

    /// @inheritdoc ISubscriptions
    function setPlanActive(uint256 planId, bool active) external onlyOwner {
        _requirePlan(planId);
        _plans[planId].active = active;
        emit PlanActiveSet(planId, active);
    }

    /// @inheritdoc ISubscriptions
    function setKeeper(address keeper_) external onlyOwner {
        if (keeper_ == address(0)) revert ZeroAddress();
        _keeper = keeper_;
        emit KeeperSet(keeper_);
    }

    /// @inheritdoc ISubscriptions
    function pause() external onlyOwner {
        if (_globals.paused) return;
        _globals.paused = true;
        _pauses.push(PauseSpan({start: uint40(block.timestamp), end: 0}));
        emit ChargingPausedSet(true);
    }

    /// @inheritdoc ISubscriptions
    function unpause() external onlyOwner {
        if (!_globals.paused) return;
        _globals.paused = false;
        _pauses[_pauses.length - 1].end = uint40(block.timestamp);
        emit ChargingPausedSet(false);
    }

    /* SUBSCRIBER */

    /// @inheritdoc ISubscriptions
    function subscribe(uint256 planId, uint256 overageCapPerPeriod) external nonReentrant returns (uint256) {
        return _subscribe(planId, overageCapPerPeriod);
    }

    /// @inheritdoc ISubscriptions
    function subscribeWithPermit(
        uint256 planId,
        uint256 overageCapPerPeriod,
        uint256 permitValue,
        uint256 deadline,
        uint8 v,
        bytes32 r,
        bytes32 s
    ) external nonReentrant returns (uint256) {
        // A permit seen in the mempool can be submitted by anyone first; it then reverts here, but the allowance
        // it set is in place, so the subscribe must not fail because of it. A bad permit fails at the pull.
        try IERC20Permit(address(TOKEN)).permit(msg.sender, address(this), permitValue, deadline, v, r, s) {} catch {}
        return _subscribe(planId, overageCapPerPeriod);
    }

    /// @inheritdoc ISubscriptions
    function cancel(uint256 id) external nonReentrant {
        Subscription storage sub = _ownedSubscription(id);
        Status status = sub.status;
        if (status != Status.Active && status != Status.PastDue) revert SubscriptionEnded(id, status);
        sub.status = Status.Cancelled;
        sub.planChangePending = false;
        emit Cancelled(id, sub.paidThrough);
    }

    /// @inheritdoc ISubscriptions
    function setOverageCap(uint256 id, uint256 overageCapPerPeriod) external nonReentrant {
        Subscription storage sub = _ownedSubscription(id);
        if (overageCapPerPeriod > MAX_OVERAGE_CAP) revert OverageCapTooLarge(overageCapPerPeriod);
        // The period in progress: the last paid one until it ends, then the next (due, or never to come).
        uint256 fromPeriod = block.timestamp < sub.paidThrough ? sub.periodIndex : uint256(sub.periodIndex) + 1;
        UsageLedger memory ledger = _ledgerAt(_ledgers[id], fromPeriod);
        ledger.overageCap = uint56(overageCapPerPeriod);
        _ledgers[id] = ledger;
        emit OverageCapSet(id, overageCapPerPeriod, ledger.period);
    }

    /// @inheritdoc ISubscriptions
    function changePlan(uint256 id, uint256 newPlanId) external nonReentrant {
        Subscription storage sub = _ownedSubscription(id);
        Status status = sub.status;
        if (status != Status.Active && status != Status.PastDue) revert SubscriptionEnded(id, status);
        if (newPlanId == sub.planId) {
            sub.planChangePending = false;
        } else {
            Plan memory next = _requirePlan(newPlanId);
            if (!next.active) revert PlanInactive(newPlanId);
            _nextPlan[id] = uint16(newPlanId);
            sub.planChangePending = true;
        }
        emit PlanChangeScheduled(id, newPlanId);
    }

    /// @inheritdoc ISubscriptions
    function deposit(uint256 amount) external nonReentrant {
        if (amount == 0) revert ZeroAmount();
        uint256 before = TOKEN.balanceOf(address(this));
        TOKEN.safeTransferFrom(msg.sender, address(this), amount);
        uint256 received = TOKEN.balanceOf(address(this)) - before;
        if (received != amount) revert FeeOnTransferToken(amount, received);
        uint256 balance = _credit[msg.sender] + amount;
        _credit[msg.sender] = balance;
        emit CreditDeposited(msg.sender, amount, balance);
    }

    /// @inheritdoc ISubscriptions
    function withdraw(uint256 amount) external nonReentrant {
        if (amount == 0) revert ZeroAmount();
        uint256 available = _credit[msg.sender];
        if (available < amount) revert InsufficientCredit(available, amount);
        uint256 balance = available - amount;
        _credit[msg.sender] = balance;
        emit CreditWithdrawn(msg.sender, amount, balance);
        TOKEN.safeTransfer(msg.sender, amount);
    }

    /* RENEWALS */

    /// @inheritdoc ISubscriptions
    function renew(uint256[] calldata ids) external nonReentrant whenCharging returns (uint256 renewed) {
        Batch memory batch = Batch({pulled: 0, creditUsed: 0});
        uint256 escrowBefore = TOKEN.balanceOf(ESCROW);
        for (uint256 i; i < ids.length; ++i) {
            if (_renewOne(ids[i], batch)) ++renewed;
        }
        _finishBatch(batch, escrowBefore);
    }

    /// @dev Renews one subscription if it is due. A failed pull leaves the period where it was.
    function _renewOne(uint256 id, Batch memory batch) internal returns (bool) {
        Subscription memory sub = _subscriptions[id];
        if (sub.status != Status.Active && sub.status != Status.PastDue) return false;
        if (block.timestamp < sub.paidThrough) return false;

        Plan memory current = _plans[sub.planId];
        if (_graceOver(sub.paidThrough, current.gracePeriod)) {
            _subscriptions[id].status = Status.Lapsed;
            emit Lapsed(id, sub.paidThrough);
            return false;
        }

        uint256 planId = sub.planChangePending ? _nextPlan[id] : sub.planId;
        // slither-disable-next-line incorrect-equality -- plan ids, not a balance or a time
        Plan memory next = planId == sub.planId ? current : _plans[planId];
        uint256 periodIndex = uint256(sub.periodIndex) + 1;

        // The pull comes before the state change because the item's outcome depends on it and a failed pull must
        // leave no trace. `sub` is written back below as read before the pull: that is safe only because every
        // external function that writes a subscription (cancel, setOverageCap, changePlan, subscribe, renew,
        // chargeUsage) is nonReentrant, so a token calling back during the pull cannot change it in between.
        (bool ok, uint256 fromCredit, FailureReason reason) = _collect(sub.subscriber, next.price, batch);
        if (!ok) {
            if (sub.status != Status.PastDue) _subscriptions[id].status = Status.PastDue;
            emit RenewalFailed(id, periodIndex, reason);
            return false;
        }

        uint40 paidThrough = sub.paidThrough + next.period;
        _subscriptions[id] = Subscription({
            subscriber: sub.subscriber,
            paidThrough: paidThrough,
            periodIndex: periodIndex.toUint24(),
            planId: uint16(planId),
            status: Status.Active,
            planChangePending: false
        });
        emit Renewed(id, planId, periodIndex, paidThrough, next.price, fromCredit);
        return true;
    }

    /* USAGE CHARGES */

    /// @inheritdoc ISubscriptions
    function chargeUsage(Charge[] calldata charges) external nonReentrant whenCharging returns (uint256 collected) {
        if (msg.sender != _keeper) revert NotKeeper(msg.sender);
        Batch memory batch = Batch({pulled: 0, creditUsed: 0});
        uint256 escrowBefore = TOKEN.balanceOf(ESCROW);
        for (uint256 i; i < charges.length; ++i) {
            if (_chargeOne(charges[i], batch)) ++collected;
        }
        _finishBatch(batch, escrowBefore);
    }

    /// @dev Collects one usage charge item; returns whether a non-zero amount was collected.
    function _chargeOne(Charge calldata charge, Batch memory batch) internal returns (bool) {
        uint256 id = charge.subscriptionId;
        FailureReason failure = _chargeablePeriod(id, charge.periodIndex);
        if (failure != FailureReason.None) return _chargeFailed(charge, failure);

        UsageLedger memory ledger = _ledgerAt(_ledgers[id], charge.periodIndex);
        (bool known, uint256 cap, uint256 charged) = _periodEntry(ledger, charge.periodIndex);
        // Older than the ledger's two periods: only after a pause longer than a period can such a period still be
        // in its window, and its cap is no longer known, so it is not charged.
        if (!known) return _chargeFailed(charge, FailureReason.ChargeWindowClosed);

        uint256 target = charge.cumulativeOverage < cap ? charge.cumulativeOverage : cap;
        if (target <= charged) return false; // a resend, or the cap was lowered: nothing more to collect

        (bool ok, uint256 fromCredit, FailureReason reason) =
            _collect(_subscriptions[id].subscriber, target - charged, batch);
        if (!ok) return _chargeFailed(charge, reason);

        // target <= cap <= MAX_OVERAGE_CAP: the casts below never truncate.
        if (charge.periodIndex == ledger.period) ledger.chargedInPeriod = uint56(target);
        else ledger.chargedInPreviousPeriod = uint56(target);
        _ledgers[id] = ledger;
        _chargeCollected(charge, target - charged, fromCredit, target);
        return true;
    }

    function _chargeCollected(Charge calldata charge, uint256 amount, uint256 fromCredit, uint256 chargedTotal)
        internal
    {
        emit UsageCharged(
            charge.subscriptionId,
            charge.periodIndex,
            charge.cumulativeOverage,
            amount,
            fromCredit,
            chargedTotal,
            charge.usageRoot
        );
    }

    function _chargeFailed(Charge calldata charge, FailureReason reason) internal returns (bool) {
        emit UsageChargeFailed(charge.subscriptionId, charge.periodIndex, charge.cumulativeOverage, reason, charge.usageRoot);
        return false;
    }

    /// @dev The ledger moved forward so that its newest period is at least `k`. A period the ledger had not reached
    /// yet has nothing charged, and the cap of the newest period it knew (caps apply until changed).
    function _ledgerAt(UsageLedger memory ledger, uint256 k) internal pure returns (UsageLedger memory) {
        if (k <= ledger.period) return ledger;
        bool adjacent = k == uint256(ledger.period) + 1;
        ledger.chargedInPreviousPeriod = adjacent ? ledger.chargedInPeriod : 0;
        ledger.previousOverageCap = ledger.overageCap;
        ledger.chargedInPeriod = 0;
        ledger.period = k.toUint24();
        return ledger;
    }

    /// @dev Cap and charged total of period `k` in `ledger`; `known` is false for periods it no longer holds.
    function _periodEntry(UsageLedger memory ledger, uint256 k)
        internal
        pure
        returns (bool known, uint256 cap, uint256 charged)
    {
        if (k == ledger.period) return (true, ledger.overageCap, ledger.chargedInPeriod);
        if (k > ledger.period) return (true, ledger.overageCap, 0);
        if (k + 1 == ledger.period) return (true, ledger.previousOverageCap, ledger.chargedInPreviousPeriod);
        return (false, 0, 0);
    }

    /// @dev Whether usage of period `k` of `id` may be charged now: the current (last paid) period, or the previous
    /// one, ended at most the charge window ago.
    function _chargeablePeriod(uint256 id, uint256 k) internal view returns (FailureReason) {
        Subscription memory sub = _subscriptions[id];
        // slither-disable-next-line incorrect-equality -- status enum, not a balance or a time
        if (sub.status == Status.None) return FailureReason.UnknownSubscription;
        uint256 current = sub.periodIndex;
        uint256 periodEnd;
        // slither-disable-next-line incorrect-equality -- period indexes, not a balance or a time
        if (k == current) periodEnd = sub.paidThrough;
        else if (k > current) return FailureReason.PeriodNotStarted; // before `k + 1`: no overflow for any k
        // slither-disable-next-line incorrect-equality -- period indexes, not a balance or a time
        else if (k + 1 == current) periodEnd = sub.paidThrough - _plans[sub.planId].period;
        else return FailureReason.ChargeWindowClosed;
        if (_windowOver(periodEnd, CHARGE_WINDOW + 1)) return FailureReason.ChargeWindowClosed;
        return FailureReason.None;
    }

    /* PAUSES */

    /// @dev Whether `length` seconds have run since `from`, not counting time paused: a grace period or a charge
    /// window. The pause log is read only when the plain clock says the time is up.
    function _windowOver(uint256 from, uint256 length) internal view returns (bool) {
        if (block.timestamp < from + length) return false;
        return block.timestamp >= from + length + _pausedSince(from);
    }

    function _graceOver(uint256 paidThrough, uint256 gracePeriod) internal view returns (bool) {
        return _windowOver(paidThrough, gracePeriod);
    }

    /// @dev Seconds paused between `from` and now; walks the log from the newest pause back to `from`.
    function _pausedSince(uint256 from) internal view returns (uint256 paused) {
        for (uint256 i = _pauses.length; i > 0; --i) {
            PauseSpan memory span = _pauses[i - 1];
            // slither-disable-next-line incorrect-equality -- 0 marks the pause still running, not a time compared
            uint256 end = span.end == 0 ? block.timestamp : span.end;
            if (end <= from) break;
            paused += end - (span.start > from ? span.start : from);
        }
    }

    /* ESCROW */

    /// @inheritdoc ISubscriptions
    function creditFromEscrow(address subscriber, uint256 amount) external {
        if (msg.sender != ESCROW) revert NotEscrow(msg.sender);
        uint256 balance = _credit[subscriber] + amount;
        _credit[subscriber] = balance;
        emit CreditRefunded(subscriber, amount, balance);
    }

    /* COLLECTION */

    function _subscribe(uint256 planId, uint256 overageCap) internal whenCharging returns (uint256 id) {
        Plan memory plan_ = _requirePlan(planId);
        if (!plan_.active) revert PlanInactive(planId);
        if (overageCap > MAX_OVERAGE_CAP) revert OverageCapTooLarge(overageCap);

        Batch memory batch = Batch({pulled: 0, creditUsed: 0});
        uint256 escrowBefore = TOKEN.balanceOf(ESCROW);
        (bool ok, uint256 fromCredit, FailureReason reason) = _collect(msg.sender, plan_.price, batch);
        if (!ok) revert PaymentFailed(msg.sender, plan_.price, reason);

        id = ++_globals.subscriptionCount;
        uint40 paidThrough = uint40(block.timestamp + plan_.period);
        _subscriptions[id] = Subscription({
            subscriber: msg.sender,
            paidThrough: paidThrough,
            periodIndex: 0,
            planId: uint16(planId),
            status: Status.Active,
            planChangePending: false
        });
        _ledgers[id] = UsageLedger({
            period: 0,
            overageCap: uint56(overageCap),
            chargedInPeriod: 0,
            previousOverageCap: 0,
            chargedInPreviousPeriod: 0
        });
        emit Subscribed(id, msg.sender, planId, overageCap, paidThrough, plan_.price, fromCredit);
        _finishBatch(batch, escrowBefore);
    }

    /// @dev Takes `amount` from `subscriber`: prepaid credit first (moved to the escrow at the end of the batch),
    /// the rest pulled from the wallet straight into the escrow. On failure nothing is taken.
    function _collect(address subscriber, uint256 amount, Batch memory batch)
        internal
        returns (bool ok, uint256 fromCredit, FailureReason reason)
    {
        if (amount == 0) return (true, 0, FailureReason.None);
        uint256 credit = _credit[subscriber];
        fromCredit = credit < amount ? credit : amount;
        uint256 fromWallet = amount - fromCredit;
        if (fromWallet != 0) {
            if (!TOKEN.trySafeTransferFrom(subscriber, ESCROW, fromWallet)) {
                return (false, 0, _diagnose(subscriber, fromWallet));
            }
            batch.pulled += fromWallet;
        }
        if (fromCredit != 0) {
            _credit[subscriber] = credit - fromCredit;
            batch.creditUsed += fromCredit;
        }
        return (true, fromCredit, FailureReason.None);
    }

    /// @dev Why a pull of `amount` from `subscriber` failed, as far as this contract can see.
    function _diagnose(address subscriber, uint256 amount) internal view returns (FailureReason) {
        try TOKEN.balanceOf(subscriber) returns (uint256 balance) {
            if (balance < amount) return FailureReason.InsufficientBalance;
        } catch {}
        try TOKEN.allowance(subscriber, address(this)) returns (uint256 allowance) {
            if (allowance < amount) return FailureReason.InsufficientAllowance;
        } catch {}
        return FailureReason.TokenRejected; // paused, blacklisted, or any other refusal by the token
    }

    /// @dev Moves the credit a batch used to the escrow, checks that the escrow received everything the batch
    /// collected (a fee-on-transfer token fails here), and adds it to the revenue total the escrow allocates from.
    function _finishBatch(Batch memory batch, uint256 escrowBefore) internal {
        uint256 revenue = batch.pulled;
        if (batch.creditUsed != 0) revenue += _moveCreditToEscrow(batch.creditUsed);
        if (revenue == 0) return;
        uint256 received = TOKEN.balanceOf(ESCROW) - escrowBefore;
        if (received < revenue) revert FeeOnTransferToken(revenue, received);
        _globals.totalRevenue += revenue.toUint128();
    }

    /// @dev Sends credit that charges used (plus any left from earlier batches) to the escrow and returns what was
    /// sent. If the token refuses (paused), the items stay paid and the amount waits in `_creditOwedToEscrow` for
    /// the next batch or {flushCreditToEscrow}: one paused token must not revert a whole batch.
    function _moveCreditToEscrow(uint256 creditUsed) internal returns (uint256 moved) {
        uint256 owed = _creditOwedToEscrow + creditUsed;
        if (!TOKEN.trySafeTransfer(ESCROW, owed)) {
            _creditOwedToEscrow = owed;
            emit CreditTransferDeferred(owed);
            return 0;
        }
        if (owed != creditUsed) {
            _creditOwedToEscrow = 0;
            emit CreditFlushed(owed - creditUsed);
        }
        return owed;
    }

    /// @inheritdoc ISubscriptions
    function flushCreditToEscrow() external nonReentrant returns (uint256 moved) {
        if (_creditOwedToEscrow == 0) return 0;
        uint256 escrowBefore = TOKEN.balanceOf(ESCROW);
        uint256 owed = _creditOwedToEscrow;
        _creditOwedToEscrow = 0;
        TOKEN.safeTransfer(ESCROW, owed);
        uint256 received = TOKEN.balanceOf(ESCROW) - escrowBefore;
        if (received < owed) revert FeeOnTransferToken(owed, received);
        _globals.totalRevenue += owed.toUint128();
        emit CreditFlushed(owed);
        return owed;
    }

    /* VIEWS */

    /// @inheritdoc ISubscriptions
    function token() external view returns (address) {
        return address(TOKEN);
    }

    /// @inheritdoc ISubscriptions
    function escrow() external view returns (address) {
        return ESCROW;
    }

    /// @inheritdoc ISubscriptions
    function keeper() external view returns (address) {
        return _keeper;
    }

    /// @inheritdoc ISubscriptions
    function chargeWindow() external view returns (uint256) {
        return CHARGE_WINDOW;
    }

    /// @inheritdoc ISubscriptions
    function chargingPaused() external view returns (bool) {
        return _globals.paused;
    }

    /// @inheritdoc ISubscriptions
    function totalRevenue() external view returns (uint256) {
        return _globals.totalRevenue;
    }

    /// @inheritdoc ISubscriptions
    function creditOwedToEscrow() external view returns (uint256) {
        return _creditOwedToEscrow;
    }

    /// @inheritdoc ISubscriptions
    function planCount() external view returns (uint256) {
        return _globals.planCount;
    }

    /// @inheritdoc ISubscriptions
    function subscriptionCount() external view returns (uint256) {
        return _globals.subscriptionCount;
    }

    /// @inheritdoc ISubscriptions
    function plan(uint256 planId) external view returns (Plan memory) {
        return _plans[planId];
    }

    /// @inheritdoc ISubscriptions
    function subscription(uint256 id) external view returns (Subscription memory) {
        return _subscriptions[id];
    }

    /// @inheritdoc ISubscriptions
    function usageLedger(uint256 id) external view returns (UsageLedger memory) {
        return _ledgers[id];
    }

    /// @inheritdoc ISubscriptions
    function nextPlanOf(uint256 id) external view returns (uint256) {
        Subscription memory sub = _subscriptions[id];
        return sub.planChangePending ? _nextPlan[id] : sub.planId;
    }

    /// @inheritdoc ISubscriptions
    function chargedInPeriod(uint256 id, uint256 periodIndex) public view returns (uint256 charged) {
        (,, charged) = _periodEntry(_ledgers[id], periodIndex);
    }

    /// @inheritdoc ISubscriptions
    function overageCapOf(uint256 id, uint256 periodIndex) external view returns (bool known, uint256 cap) {
        // slither-disable-next-line incorrect-equality -- status enum, not a balance or a time
        if (_subscriptions[id].status == Status.None) revert UnknownSubscription(id);
        (known, cap,) = _periodEntry(_ledgers[id], periodIndex);
    }

    /// @inheritdoc ISubscriptions
    function paidFor(uint256 id, uint256 periodIndex) external view returns (address subscriber, uint256 paid) {
        Subscription memory sub = _subscriptions[id];
        // slither-disable-next-line incorrect-equality -- status enum, not a balance or a time
        if (sub.status == Status.None) revert UnknownSubscription(id);
        // slither-disable-next-line incorrect-equality -- period indexes, not a balance or a time
        if (periodIndex == sub.periodIndex) paid = _plans[sub.planId].price;
        return (sub.subscriber, paid + chargedInPeriod(id, periodIndex));
    }

    /// @inheritdoc ISubscriptions
    function pauses() external view returns (PauseSpan[] memory) {
        return _pauses;
    }

    /// @inheritdoc ISubscriptions
    function pausedSince(uint256 from) external view returns (uint256) {
        return _pausedSince(from);
    }

    /// @inheritdoc ISubscriptions
    function currentPeriod(uint256 id) external view returns (uint256 index, uint256 start, uint256 end) {
        Subscription memory sub = _subscriptions[id];
        // slither-disable-next-line incorrect-equality -- status enum, not a balance or a time
        if (sub.status == Status.None) revert UnknownSubscription(id);
        end = sub.paidThrough;
        return (sub.periodIndex, end - _plans[sub.planId].period, end);
    }

    /// @inheritdoc ISubscriptions
    function creditOf(address subscriber) external view returns (uint256) {
        return _credit[subscriber];
    }

    /// @inheritdoc ISubscriptions
    function isEntitled(uint256 id) public view returns (bool) {
        Subscription memory sub = _subscriptions[id];
        // slither-disable-next-line incorrect-equality -- status enum, not a balance or a time
        if (sub.status == Status.Active || sub.status == Status.PastDue) {
            return !_graceOver(sub.paidThrough, _plans[sub.planId].gracePeriod);
        }
        // slither-disable-next-line incorrect-equality -- status enum, not a balance or a time
        if (sub.status == Status.Cancelled) return block.timestamp < sub.paidThrough;
        return false;
    }

    /// @inheritdoc ISubscriptions
    function dueForRenewal(uint256[] calldata ids) external view returns (bool[] memory due) {
        due = new bool[](ids.length);
        if (_globals.paused) return due; // renew refuses while paused
        for (uint256 i; i < ids.length; ++i) {
            due[i] = _wouldRenew(ids[i]);
        }
    }

    function _wouldRenew(uint256 id) internal view returns (bool) {
        Subscription memory sub = _subscriptions[id];
        if (sub.status != Status.Active && sub.status != Status.PastDue) return false;
        if (block.timestamp < sub.paidThrough) return false;
        if (_graceOver(sub.paidThrough, _plans[sub.planId].gracePeriod)) return false;
        uint256 price = _plans[sub.planChangePending ? _nextPlan[id] : sub.planId].price;
        uint256 credit = _credit[sub.subscriber];
        if (credit >= price) return true;
        uint256 needed = price - credit;
        return TOKEN.balanceOf(sub.subscriber) >= needed && TOKEN.allowance(sub.subscriber, address(this)) >= needed;
    }

    /* INTERNAL */

    function _requirePlan(uint256 planId) internal view returns (Plan memory plan_) {
        plan_ = _plans[planId];
        if (plan_.period == 0) revert UnknownPlan(planId);
    }

    function _ownedSubscription(uint256 id) internal view returns (Subscription storage sub) {
        sub = _subscriptions[id];
        if (sub.status == Status.None) revert UnknownSubscription(id);
        if (sub.subscriber != msg.sender) revert NotSubscriber(id, msg.sender);
    }
}
