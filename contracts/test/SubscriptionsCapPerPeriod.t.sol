// SPDX-License-Identifier: MIT
pragma solidity 0.8.30;

import {SubscriptionsHelpers} from "./Subscriptions.t.sol";
import {ISubscriptions} from "../src/interfaces/ISubscriptions.sol";

/// @notice The overage cap is a cap per period (issue #15, property 2): a change applies from the period in progress
/// when it is made (the last paid period while it runs, else the next one), and a period that ended keeps the cap it
/// had. The bug this guards against: the subscriber raises the cap in period k + 1 and the keeper, still inside
/// period k's charge window, charges k up to the raised cap.
contract SubscriptionsCapPerPeriodTest is SubscriptionsHelpers {
    bytes32 internal constant ROOT = keccak256("usage-root");

    function _setCap(address who, uint256 id, uint256 cap) internal {
        vm.prank(who);
        subs.setOverageCap(id, cap);
    }

    function _assertCap(uint256 id, uint256 k, uint256 expected) internal view {
        (bool known, uint256 cap) = subs.overageCapOf(id, k);
        assertTrue(known, "period should be known to the ledger");
        assertEq(cap, expected, "cap of the period");
    }

    /* A RAISE IN PERIOD k + 1 */

    /// The issue's exact case: period 1 runs, period 0 is inside its charge window; the subscriber raises the cap;
    /// the keeper's late charge for period 0 collects only up to period 0's own cap.
    function test_capRaisedInNextPeriod_endedPeriodKeepsOldCap() public {
        uint256 id = _subscribe(alice, monthly, 10 * USDC);
        _charge(id, 0, 4 * USDC, ROOT);
        uint256 end0 = _sub(id).paidThrough;
        vm.warp(end0);
        assertEq(_renew(id), 1);

        vm.warp(end0 + 1 hours);
        vm.expectEmit(address(subs));
        emit ISubscriptions.OverageCapSet(id, 100 * USDC, 1);
        _setCap(alice, id, 100 * USDC);
        _assertCap(id, 0, 10 * USDC);
        _assertCap(id, 1, 100 * USDC);

        // Period 0 is still chargeable (inside the window) but only up to 10.
        vm.expectEmit(address(subs));
        emit ISubscriptions.UsageCharged(id, 0, 50 * USDC, 6 * USDC, 0, 10 * USDC, ROOT);
        assertEq(_charge(id, 0, 50 * USDC, ROOT), 1);
        assertEq(subs.chargedInPeriod(id, 0), 10 * USDC);
        assertEq(_charge(id, 0, 60 * USDC, ROOT), 0);
        // Period 1 has the raised cap.
        assertEq(_charge(id, 1, 50 * USDC, ROOT), 1);
        assertEq(subs.chargedInPeriod(id, 1), 50 * USDC);
        assertEq(subs.totalRevenue(), 2 * PRICE + 10 * USDC + 50 * USDC);
    }

    /// Same with the ledger already on period 1 (a charge for period 1 came first): the raise changes the current
    /// cap, the previous period's cap stays.
    function test_capRaisedInNextPeriod_afterChargeInIt_endedPeriodKeepsOldCap() public {
        uint256 id = _subscribe(alice, monthly, 10 * USDC);
        uint256 end0 = _sub(id).paidThrough;
        vm.warp(end0);
        _renew(id);
        _charge(id, 1, 3 * USDC, ROOT);
        assertEq(subs.usageLedger(id).period, 1);

        vm.expectEmit(address(subs));
        emit ISubscriptions.OverageCapSet(id, 100 * USDC, 1);
        _setCap(alice, id, 100 * USDC);
        ISubscriptions.UsageLedger memory ledger = subs.usageLedger(id);
        assertEq(ledger.overageCap, 100 * USDC);
        assertEq(ledger.previousOverageCap, 10 * USDC);

        vm.warp(end0 + CHARGE_WINDOW);
        assertEq(_charge(id, 0, 80 * USDC, ROOT), 1);
        assertEq(subs.chargedInPeriod(id, 0), 10 * USDC);
        assertEq(_charge(id, 1, 80 * USDC, ROOT), 1);
        assertEq(subs.chargedInPeriod(id, 1), 80 * USDC);
        assertEq(usdc.balanceOf(address(escrow)), 2 * PRICE + 10 * USDC + 80 * USDC);
    }

    /// A lowering in period k + 1 does not reach back either: period 0 keeps its (higher) cap for its late usage.
    function test_capLoweredInNextPeriod_endedPeriodKeepsOldCap() public {
        uint256 id = _subscribe(alice, monthly, 50 * USDC);
        uint256 end0 = _sub(id).paidThrough;
        vm.warp(end0);
        _renew(id);
        _setCap(alice, id, 5 * USDC);
        _assertCap(id, 0, 50 * USDC);
        _assertCap(id, 1, 5 * USDC);
        assertEq(_charge(id, 0, 45 * USDC, ROOT), 1);
        assertEq(subs.chargedInPeriod(id, 0), 45 * USDC);
        assertEq(_charge(id, 1, 45 * USDC, ROOT), 1);
        assertEq(subs.chargedInPeriod(id, 1), 5 * USDC);
    }

    /* A CHANGE DURING PERIOD k */

    /// A lowering while period k runs applies to k at once: above the new cap nothing more is collected.
    function test_capLoweredDuringPeriod_appliesToItAtOnce() public {
        uint256 id = _subscribe(alice, monthly, 50 * USDC);
        vm.warp(_sub(id).paidThrough);
        _renew(id); // period 1 runs
        _charge(id, 1, 30 * USDC, ROOT);

        vm.expectEmit(address(subs));
        emit ISubscriptions.OverageCapSet(id, 20 * USDC, 1);
        _setCap(alice, id, 20 * USDC);
        _assertCap(id, 1, 20 * USDC);

        vm.recordLogs();
        assertEq(_charge(id, 1, 40 * USDC, ROOT), 0);
        assertEq(vm.getRecordedLogs().length, 0);
        assertEq(subs.chargedInPeriod(id, 1), 30 * USDC); // nothing refunded automatically, nothing more taken
        assertEq(subs.totalRevenue(), 2 * PRICE + 30 * USDC);

        // Lowered before anything was charged in the period: the new cap bounds the first charge.
        vm.warp(_sub(id).paidThrough);
        _renew(id); // period 2
        vm.expectEmit(address(subs));
        emit ISubscriptions.OverageCapSet(id, 7 * USDC, 2);
        _setCap(alice, id, 7 * USDC);
        vm.expectEmit(address(subs));
        emit ISubscriptions.UsageCharged(id, 2, 40 * USDC, 7 * USDC, 0, 7 * USDC, ROOT);
        assertEq(_charge(id, 2, 40 * USDC, ROOT), 1);
        // Period 1 (ended, inside its window) kept the 20 it had when it ended.
        _assertCap(id, 1, 20 * USDC);
    }

    /// A raise while period k runs gives headroom in k at once.
    function test_capRaisedDuringPeriod_appliesToItAtOnce() public {
        uint256 id = _subscribe(alice, monthly, 10 * USDC);
        _charge(id, 0, 25 * USDC, ROOT);
        assertEq(subs.chargedInPeriod(id, 0), 10 * USDC);
        vm.expectEmit(address(subs));
        emit ISubscriptions.OverageCapSet(id, 30 * USDC, 0);
        _setCap(alice, id, 30 * USDC);
        assertEq(_charge(id, 0, 25 * USDC, ROOT), 1);
        assertEq(subs.chargedInPeriod(id, 0), 25 * USDC);
    }

    /// The last second of the period is still "during" it; its end is not.
    function test_capChange_atPeriodEndBoundary() public {
        uint256 id = _subscribe(alice, monthly, 10 * USDC);
        uint256 end0 = _sub(id).paidThrough;
        vm.warp(end0 - 1);
        vm.expectEmit(address(subs));
        emit ISubscriptions.OverageCapSet(id, 20 * USDC, 0);
        _setCap(alice, id, 20 * USDC);
        vm.warp(end0);
        vm.expectEmit(address(subs));
        emit ISubscriptions.OverageCapSet(id, 30 * USDC, 1);
        _setCap(alice, id, 30 * USDC);
        _assertCap(id, 0, 20 * USDC);
        _assertCap(id, 1, 30 * USDC);
    }

    /* A CHANGE AFTER PERIOD k ENDED, BEFORE THE RENEWAL */

    /// Due, not renewed yet (in grace): a raise applies to k + 1 only; k keeps its cap for its late usage.
    function test_capRaisedAfterPeriodEndedBeforeRenewal_appliesToNextOnly() public {
        uint256 id = _subscribe(alice, monthly, 10 * USDC);
        _charge(id, 0, 4 * USDC, ROOT);
        uint256 end0 = _sub(id).paidThrough;
        vm.warp(end0 + 1 hours);
        assertTrue(subs.isEntitled(id));

        vm.expectEmit(address(subs));
        emit ISubscriptions.OverageCapSet(id, 100 * USDC, 1);
        _setCap(alice, id, 100 * USDC);
        ISubscriptions.UsageLedger memory ledger = subs.usageLedger(id);
        assertEq(ledger.period, 1);
        assertEq(ledger.overageCap, 100 * USDC);
        assertEq(ledger.previousOverageCap, 10 * USDC);
        assertEq(ledger.chargedInPreviousPeriod, 4 * USDC); // what period 0 paid is kept
        assertEq(ledger.chargedInPeriod, 0);
        _assertCap(id, 0, 10 * USDC);
        _assertCap(id, 1, 100 * USDC);

        // Period 0 is still the current (last paid) period and inside its window: capped at 10.
        vm.expectEmit(address(subs));
        emit ISubscriptions.UsageCharged(id, 0, 50 * USDC, 6 * USDC, 0, 10 * USDC, ROOT);
        assertEq(_charge(id, 0, 50 * USDC, ROOT), 1);
        assertEq(subs.chargedInPeriod(id, 0), 10 * USDC);

        // The renewal brings period 1 and its raised cap.
        assertEq(_renew(id), 1);
        assertEq(_charge(id, 1, 50 * USDC, ROOT), 1);
        assertEq(subs.chargedInPeriod(id, 1), 50 * USDC);
        assertEq(_charge(id, 0, 90 * USDC, ROOT), 0);
        assertEq(subs.chargedInPeriod(id, 0), 10 * USDC);
    }

    /// Past due (a renewal failed), in grace: a lowering applies to k + 1 only, so period 0 keeps the cap it ran
    /// under and its usage is still collected up to it.
    function test_capLoweredWhilePastDue_appliesToNextOnly() public {
        uint256 id = _subscribe(alice, monthly, 50 * USDC);
        _charge(id, 0, 10 * USDC, ROOT);
        uint256 end0 = _sub(id).paidThrough;
        vm.prank(alice);
        usdc.approve(address(subs), 10 * USDC); // enough for usage, not for the fee
        vm.warp(end0);
        assertEq(_renew(id), 0);
        assertEq(uint8(_sub(id).status), uint8(ISubscriptions.Status.PastDue));

        vm.expectEmit(address(subs));
        emit ISubscriptions.OverageCapSet(id, 0, 1);
        _setCap(alice, id, 0);
        _assertCap(id, 0, 50 * USDC);
        _assertCap(id, 1, 0);

        assertEq(_charge(id, 0, 20 * USDC, ROOT), 1);
        assertEq(subs.chargedInPeriod(id, 0), 20 * USDC);

        vm.prank(alice);
        usdc.approve(address(subs), type(uint256).max);
        vm.warp(end0 + GRACE - 1);
        assertEq(_renew(id), 1);
        assertEq(_charge(id, 1, 20 * USDC, ROOT), 0); // period 1 runs under the new cap, 0
        assertEq(subs.chargedInPeriod(id, 1), 0);
        assertEq(subs.totalRevenue(), 2 * PRICE + 20 * USDC);
    }

    /// Several changes after the end: the last one is period k + 1's cap; k keeps its own throughout.
    function test_capChangedTwiceAfterPeriodEnded_lastAppliesToNext() public {
        uint256 id = _subscribe(alice, monthly, 10 * USDC);
        vm.warp(_sub(id).paidThrough + 1);
        _setCap(alice, id, 40 * USDC);
        _setCap(alice, id, 15 * USDC);
        _assertCap(id, 0, 10 * USDC);
        _assertCap(id, 1, 15 * USDC);
        assertEq(_charge(id, 0, 40 * USDC, ROOT), 1);
        assertEq(subs.chargedInPeriod(id, 0), 10 * USDC);
        _renew(id);
        assertEq(_charge(id, 1, 40 * USDC, ROOT), 1);
        assertEq(subs.chargedInPeriod(id, 1), 15 * USDC);
    }

    /// Cancelled: the next period never comes; a change after the end is recorded for it and the ended period
    /// keeps its cap.
    function test_capChangedAfterCancelledPeriodEnded_endedPeriodKeepsCap() public {
        uint256 id = _subscribe(alice, monthly, 10 * USDC);
        vm.prank(alice);
        subs.cancel(id);
        vm.warp(_sub(id).paidThrough + 1);
        vm.expectEmit(address(subs));
        emit ISubscriptions.OverageCapSet(id, 90 * USDC, 1);
        _setCap(alice, id, 90 * USDC);
        assertEq(_charge(id, 0, 90 * USDC, ROOT), 1);
        assertEq(subs.chargedInPeriod(id, 0), 10 * USDC);
    }

    /* overageCapOf */

    function test_overageCapOf_ledgerPeriodsKnownOlderNot() public {
        uint256 id = _subscribe(alice, monthly, 10 * USDC);
        _assertCap(id, 0, 10 * USDC);
        _assertCap(id, 1, 10 * USDC); // a later period: the cap in force applies until changed
        _assertCap(id, 7, 10 * USDC);

        vm.warp(_sub(id).paidThrough);
        _renew(id);
        _setCap(alice, id, 20 * USDC); // ledger moves to period 1
        vm.warp(_sub(id).paidThrough);
        _renew(id);
        _setCap(alice, id, 30 * USDC); // ledger moves to period 2
        assertEq(subs.usageLedger(id).period, 2);

        (bool known, uint256 cap) = subs.overageCapOf(id, 0);
        assertFalse(known, "older than the ledger's two periods");
        assertEq(cap, 0);
        _assertCap(id, 1, 20 * USDC);
        _assertCap(id, 2, 30 * USDC);
        _assertCap(id, 3, 30 * USDC);

        // Skipping periods: the ledger jumps, periods in between that it never held are unknown once behind it.
        for (uint256 i; i < 3; ++i) {
            vm.warp(_sub(id).paidThrough);
            _renew(id);
        }
        _setCap(alice, id, 40 * USDC); // period 5
        (known,) = subs.overageCapOf(id, 2);
        assertFalse(known);
        _assertCap(id, 4, 30 * USDC); // the cap that applied from 2 on
        _assertCap(id, 5, 40 * USDC);
        assertEq(subs.usageLedger(id).chargedInPreviousPeriod, 0);
    }

    function test_overageCapOf_unknownSubscription_reverts() public {
        vm.expectRevert(abi.encodeWithSelector(ISubscriptions.UnknownSubscription.selector, 3));
        subs.overageCapOf(3, 0);
    }

    /* FUZZ: A MODEL OF WHICH CAP APPLIED TO WHICH PERIOD */

    uint256 internal constant WEEK = 7 days;
    uint256 internal constant N_SUBS = 2;
    uint256 internal constant STEPS = 60;

    struct Model {
        uint256 t0;
        uint256 periodIndex;
        bool ended; // cancelled or lapsed: never renewed again
        uint256 changes;
    }

    /// Per subscription: the cap changes as (first period it applies to, cap), in order; what was charged per period.
    mapping(uint256 id => Model) internal _model;
    mapping(uint256 id => mapping(uint256 i => uint256)) internal _changeFrom;
    mapping(uint256 id => mapping(uint256 i => uint256)) internal _changeCap;
    mapping(uint256 id => mapping(uint256 k => uint256)) internal _charged;
    /// The highest cap that ever applied to a period while it could be charged.
    mapping(uint256 id => mapping(uint256 k => uint256)) internal _maxCapApplied;

    function _modelPaidThrough(uint256 id) internal view returns (uint256) {
        return _model[id].t0 + (_model[id].periodIndex + 1) * WEEK;
    }

    /// The cap of period `k` by the rule "a change applies from the period in progress when it is made": the last
    /// change recorded from a period at or before `k`.
    function _modelCap(uint256 id, uint256 k) internal view returns (uint256) {
        for (uint256 i = _model[id].changes; i > 0; --i) {
            if (_changeFrom[id][i - 1] <= k) return _changeCap[id][i - 1];
        }
        revert("no cap"); // the subscribe records one from period 0
    }

    function _recordCap(uint256 id, uint256 fromPeriod, uint256 cap) internal {
        uint256 i = _model[id].changes++;
        _changeFrom[id][i] = fromPeriod;
        _changeCap[id][i] = cap;
        // Periods whose cap this sets and that are chargeable now: the current one and, at most, the next.
        for (uint256 k = fromPeriod; k <= _model[id].periodIndex + 1; ++k) {
            if (cap > _maxCapApplied[id][k]) _maxCapApplied[id][k] = cap;
        }
    }

    /// A period is chargeable while it is the last paid one or the one before it, until the charge window after its
    /// end has run (no pauses here).
    function _modelChargeable(uint256 id, uint256 k) internal view returns (bool) {
        uint256 current = _model[id].periodIndex;
        if (k > current || k + 1 < current) return false;
        uint256 end = _model[id].t0 + (k + 1) * WEEK;
        return vm.getBlockTimestamp() <= end + CHARGE_WINDOW;
    }

    /// @dev Random sequences of cap changes (raises and lowerings, during a period and after its end), clock moves,
    /// renewals (on time, late, too late: lapse), cancels and cumulative charges for the current or previous
    /// period, on two subscriptions. Every charge collects exactly min(cumulative, cap of that period) minus what
    /// the period already paid, the cap of that period being the one the model says applied to it; at the end,
    /// for every (subscription, period), what was charged is at most the highest cap that ever applied to it.
    function testFuzz_capPerPeriod_chargedNeverAboveCapThatApplied(uint256 seed) public {
        uint256 weekly = _createPlan(PRICE, WEEK, GRACE);
        for (uint256 j = 1; j <= N_SUBS; ++j) {
            uint256 initialCap = uint256(keccak256(abi.encode(seed, "cap", j))) % (100 * USDC);
            uint256 id = _subscribe(j == 1 ? alice : bob, weekly, initialCap);
            assertEq(id, j);
            _model[id].t0 = vm.getBlockTimestamp();
            _recordCap(id, 0, initialCap);
        }

        for (uint256 step; step < STEPS; ++step) {
            uint256 r = uint256(keccak256(abi.encode(seed, step)));
            uint256 id = 1 + (r >> 8) % N_SUBS;
            uint256 op = r % 12;
            uint256 amount = (r >> 64) % (120 * USDC);
            uint256 t = vm.getBlockTimestamp();
            if (op <= 1) {
                _fuzzSetCap(id, amount);
            } else if (op == 2) {
                vm.warp(t + (r >> 128) % 1 days);
            } else if (op == 3) {
                // Around the end of the last paid period, where "during" turns into "after" and the charge window
                // of the ended period runs.
                uint256 target = _modelPaidThrough(id) + (r >> 128) % (CHARGE_WINDOW + 1 days);
                target = target > 12 hours ? target - 12 hours : 0;
                if (target > t) vm.warp(target);
            } else if (op == 4) {
                vm.warp(t + (r >> 128) % 4 days);
            } else if (op <= 6) {
                _fuzzRenew(id);
            } else if (op == 7) {
                // Rarely: cancel (the next period never comes; caps can still be changed).
                if (!_model[id].ended && (r >> 160) % 6 == 0) {
                    vm.prank(_sub(id).subscriber);
                    subs.cancel(id);
                    _model[id].ended = true;
                }
            } else {
                uint256 current = _model[id].periodIndex;
                uint256 k = (op >= 10 && current != 0) ? current - 1 : current;
                _fuzzCharge(id, k, amount);
            }
        }

        for (uint256 id = 1; id <= N_SUBS; ++id) {
            uint256 current = _model[id].periodIndex;
            assertEq(_sub(id).periodIndex, current, "model and contract agree on the period");
            for (uint256 k; k <= current; ++k) {
                assertLe(_charged[id][k], _maxCapApplied[id][k], "charged above every cap that applied to the period");
            }
            // The view agrees with the model for every period the ledger still holds.
            for (uint256 k; k <= current + 2; ++k) {
                (bool known, uint256 cap) = subs.overageCapOf(id, k);
                if (k >= current) assertTrue(known, "the current and later periods are always known");
                if (known) assertEq(cap, _modelCap(id, k), "overageCapOf disagrees with the model");
            }
        }
    }

    function _fuzzSetCap(uint256 id, uint256 cap) internal {
        bool running = vm.getBlockTimestamp() < _modelPaidThrough(id);
        uint256 fromPeriod = running ? _model[id].periodIndex : _model[id].periodIndex + 1;
        vm.expectEmit(address(subs));
        emit ISubscriptions.OverageCapSet(id, cap, fromPeriod);
        _setCap(_sub(id).subscriber, id, cap);
        _recordCap(id, fromPeriod, cap);
    }

    function _fuzzRenew(uint256 id) internal {
        uint256 paidThrough = _modelPaidThrough(id);
        uint256 renewed = _renew(id);
        if (_model[id].ended || vm.getBlockTimestamp() < paidThrough) {
            assertEq(renewed, 0);
        } else if (vm.getBlockTimestamp() >= paidThrough + GRACE) {
            assertEq(renewed, 0);
            assertEq(uint8(_sub(id).status), uint8(ISubscriptions.Status.Lapsed));
            _model[id].ended = true;
        } else {
            assertEq(renewed, 1);
            uint256 k = ++_model[id].periodIndex;
            // The new period starts with the cap in force for it; record it as applied (it may be charged now).
            uint256 cap = _modelCap(id, k);
            if (cap > _maxCapApplied[id][k]) _maxCapApplied[id][k] = cap;
        }
        assertEq(_sub(id).paidThrough, _modelPaidThrough(id));
    }

    function _fuzzCharge(uint256 id, uint256 k, uint256 cumulative) internal {
        uint256 escrowBefore = usdc.balanceOf(address(escrow));
        uint256 collected = _charge(id, k, cumulative, ROOT);
        uint256 delta = usdc.balanceOf(address(escrow)) - escrowBefore;
        uint256 expected;
        if (_modelChargeable(id, k)) {
            uint256 cap = _modelCap(id, k);
            uint256 target = cumulative < cap ? cumulative : cap;
            if (target > _charged[id][k]) expected = target - _charged[id][k];
        }
        assertEq(delta, expected, "collected amount");
        assertEq(collected, expected != 0 ? 1 : 0);
        _charged[id][k] += expected;
        if (_modelChargeable(id, k)) assertEq(subs.chargedInPeriod(id, k), _charged[id][k]);
    }
}
