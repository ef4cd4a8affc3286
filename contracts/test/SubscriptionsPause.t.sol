// SPDX-License-Identifier: MIT
pragma solidity 0.8.30;

import {SubscriptionsHelpers} from "./Subscriptions.t.sol";
import {ISubscriptions} from "../src/interfaces/ISubscriptions.sol";

/// @notice Time paused does not count against grace periods or charge windows (issue #15, property 4): renewals are
/// refused while charging is paused, so a subscription must not lapse, nor a period's usage become unchargeable,
/// because of a pause the subscriber could do nothing about.
contract SubscriptionsPauseTest is SubscriptionsHelpers {
    bytes32 internal constant ROOT = keccak256("usage-root");
    uint256 internal constant CAP = 50 * USDC;

    function _pause() internal {
        vm.prank(owner);
        subs.pause();
    }

    function _unpause() internal {
        vm.prank(owner);
        subs.unpause();
    }

    function _status(uint256 id) internal view returns (ISubscriptions.Status) {
        return _sub(id).status;
    }

    /* GRACE PERIOD */

    /// Due one day before a pause longer than the grace period: entitled all through the pause, and after it the two
    /// days of grace that were left are still there to renew (and pay).
    function test_pauseLongerThanGrace_dueBeforePause_canRenewInRemainingGrace() public {
        uint256 id = _subscribe(alice, monthly, 0);
        uint256 due = _sub(id).paidThrough;
        vm.warp(due + 1 days);
        _pause();
        for (uint256 t = due + 1 days; t <= due + 11 days; t += 12 hours) {
            vm.warp(t);
            assertTrue(subs.isEntitled(id), "entitled through the pause");
            assertFalse(subs.dueForRenewal(_ids(id))[0], "renew refuses while paused, so nothing is due");
        }
        vm.warp(due + 11 days); // a 10-day pause, grace is 3 days
        _unpause();
        assertTrue(subs.isEntitled(id));
        assertTrue(subs.dueForRenewal(_ids(id))[0]);

        vm.warp(due + 11 days + (GRACE - 1 days) - 1); // the last second of the grace that was left
        assertTrue(subs.isEntitled(id));
        assertTrue(subs.dueForRenewal(_ids(id))[0]);
        uint256 escrowBefore = usdc.balanceOf(address(escrow));
        vm.expectEmit(address(subs));
        emit ISubscriptions.Renewed(id, monthly, 1, due + MONTH, PRICE, 0);
        assertEq(_renew(id), 1);
        assertEq(usdc.balanceOf(address(escrow)), escrowBefore + PRICE);
        assertEq(uint8(_status(id)), uint8(ISubscriptions.Status.Active));
        assertTrue(subs.isEntitled(id));
    }

    /// The same subscription lapses exactly once grace + paused time has run, not a second earlier.
    function test_pauseLongerThanGrace_lapsesOnlyAfterGracePlusPausedTime() public {
        uint256 id = _subscribe(alice, monthly, 0);
        uint256 due = _sub(id).paidThrough;
        vm.warp(due + 1 days);
        _pause();
        vm.warp(due + 11 days);
        _unpause();
        uint256 lapseAt = due + GRACE + 10 days;

        vm.warp(lapseAt - 1);
        assertTrue(subs.isEntitled(id));
        vm.warp(lapseAt);
        assertFalse(subs.isEntitled(id));
        assertFalse(subs.dueForRenewal(_ids(id))[0]);
        vm.expectEmit(address(subs));
        emit ISubscriptions.Lapsed(id, due);
        assertEq(_renew(id), 0);
        assertEq(uint8(_status(id)), uint8(ISubscriptions.Status.Lapsed));
        assertEq(subs.totalRevenue(), PRICE);
    }

    /// Past due (a renewal failed) before the pause: the same, the retry after the pause goes through.
    function test_pause_pastDueBeforePause_retryAfterPause() public {
        uint256 id = _subscribe(alice, monthly, 0);
        uint256 due = _sub(id).paidThrough;
        _revoke(alice);
        vm.warp(due + 2 days);
        assertEq(_renew(id), 0);
        assertEq(uint8(_status(id)), uint8(ISubscriptions.Status.PastDue));
        _pause();
        vm.warp(due + 2 days + 20 days);
        assertTrue(subs.isEntitled(id));
        _unpause();
        vm.prank(alice);
        usdc.approve(address(subs), type(uint256).max);
        vm.warp(due + 2 days + 20 days + 1 days - 1);
        assertEq(_renew(id), 1);
        assertEq(_sub(id).periodIndex, 1);
        assertEq(_sub(id).paidThrough, due + MONTH);
    }

    /// Due during the pause: the whole grace period is left after it.
    function test_pause_dueDuringPause_wholeGraceAfter() public {
        uint256 id = _subscribe(alice, monthly, 0);
        uint256 due = _sub(id).paidThrough;
        vm.warp(due - 1 days);
        _pause();
        vm.warp(due + 10 days);
        assertTrue(subs.isEntitled(id));
        _unpause();
        vm.warp(due + 10 days + GRACE - 1);
        assertTrue(subs.isEntitled(id));
        vm.warp(due + 10 days + GRACE);
        assertFalse(subs.isEntitled(id));
        vm.warp(due + 10 days + GRACE - 1);
        assertEq(_renew(id), 1);
    }

    /// A pause that ended before the subscription fell due gives no extra grace; one that straddles the due time
    /// counts only from it.
    function test_pause_onlyPausedTimeAfterDueCounts() public {
        uint256 id = _subscribe(alice, monthly, 0);
        uint256 due = _sub(id).paidThrough;
        vm.warp(due - 10 days);
        _pause();
        vm.warp(due - 5 days);
        _unpause(); // entirely before `due`
        vm.warp(due - 1 hours);
        _pause();
        vm.warp(due + 2 hours);
        _unpause(); // 2 hours after `due`
        assertEq(subs.pausedSince(due), 2 hours);
        vm.warp(due + GRACE + 2 hours - 1);
        assertTrue(subs.isEntitled(id));
        vm.warp(due + GRACE + 2 hours);
        assertFalse(subs.isEntitled(id));
        _renew(id);
        assertEq(uint8(_status(id)), uint8(ISubscriptions.Status.Lapsed));
    }

    /// Several pauses add up.
    function test_pause_severalPausesAddUp() public {
        uint256 id = _subscribe(alice, monthly, 0);
        uint256 due = _sub(id).paidThrough;
        uint256 t = due + 1 hours;
        uint256[3] memory lengths = [uint256(2 days), 1 days, 5 days];
        uint256 total;
        for (uint256 i; i < lengths.length; ++i) {
            vm.warp(t);
            _pause();
            t += lengths[i];
            vm.warp(t);
            _unpause();
            total += lengths[i];
            t += 10 minutes; // unpaused time between pauses counts
        }
        assertEq(subs.pausedSince(due), total);
        assertEq(subs.pauses().length, 3);
        uint256 lapseAt = due + GRACE + total;
        assertGt(lapseAt, t); // 1 hour + 20 minutes of grace used so far
        vm.warp(lapseAt - 1);
        assertTrue(subs.isEntitled(id));
        vm.warp(lapseAt);
        assertFalse(subs.isEntitled(id));
        vm.warp(lapseAt - 1);
        assertEq(_renew(id), 1);
    }

    /// A cancelled subscription is entitled until paidThrough, pause or not: a pause does not extend what was paid.
    function test_pause_doesNotExtendCancelledAccess() public {
        uint256 id = _subscribe(alice, monthly, 0);
        uint256 due = _sub(id).paidThrough;
        vm.prank(alice);
        subs.cancel(id);
        vm.warp(due - 1 days);
        _pause();
        vm.warp(due);
        assertFalse(subs.isEntitled(id));
    }

    /* CHARGE WINDOW */

    /// Period 0 ended one day before a 10-day pause: one day of its window was left, and it is there after the
    /// pause; a second later the window is closed.
    function test_pause_extendsChargeWindowOfEndedPeriod() public {
        uint256 id = _subscribe(alice, monthly, CAP);
        uint256 end0 = _sub(id).paidThrough;
        vm.warp(end0);
        _renew(id);
        vm.warp(end0 + 1 days);
        _pause();
        vm.warp(end0 + 11 days);
        _unpause();

        vm.warp(end0 + 11 days + (CHARGE_WINDOW - 1 days)); // the last second of the window
        vm.expectEmit(address(subs));
        emit ISubscriptions.UsageCharged(id, 0, 5 * USDC, 5 * USDC, 0, 5 * USDC, ROOT);
        assertEq(_charge(id, 0, 5 * USDC, ROOT), 1);

        vm.warp(end0 + 11 days + (CHARGE_WINDOW - 1 days) + 1);
        vm.expectEmit(address(subs));
        emit ISubscriptions.UsageChargeFailed(id, 0, 9 * USDC, ISubscriptions.FailureReason.ChargeWindowClosed, ROOT);
        assertEq(_charge(id, 0, 9 * USDC, ROOT), 0);
        assertEq(subs.chargedInPeriod(id, 0), 5 * USDC);
    }

    /// Period 0 ended just before a pause longer than a whole period and was not renewed: after the pause it can
    /// still be charged for the rest of its window, before and after the late renewal of period 1.
    function test_pauseLongerThanPeriod_endedPeriodChargeableForRestOfWindow() public {
        uint256 id = _subscribe(alice, monthly, CAP);
        uint256 end0 = _sub(id).paidThrough;
        vm.warp(end0 + 1 hours);
        _pause();
        vm.warp(end0 + 1 hours + 40 days);
        _unpause();
        uint256 closesAfter = end0 + CHARGE_WINDOW + 40 days; // last chargeable second
        assertEq(_charge(id, 0, 3 * USDC, ROOT), 1);
        assertEq(_renew(id), 1); // in grace (2 days 23 hours left)
        assertEq(_sub(id).periodIndex, 1);
        vm.warp(closesAfter);
        assertEq(_charge(id, 0, 4 * USDC, ROOT), 1);
        assertEq(subs.chargedInPeriod(id, 0), 4 * USDC);
        vm.warp(closesAfter + 1);
        assertEq(_charge(id, 0, 6 * USDC, ROOT), 0);
        assertEq(subs.chargedInPeriod(id, 0), 4 * USDC);
    }

    /// The current period's window (not renewed, not renewable: cancelled) is extended the same way.
    function test_pause_extendsChargeWindowOfCurrentPeriod() public {
        uint256 id = _subscribe(alice, monthly, CAP);
        vm.prank(alice);
        subs.cancel(id);
        uint256 end0 = _sub(id).paidThrough;
        vm.warp(end0 + CHARGE_WINDOW);
        _pause();
        vm.warp(end0 + CHARGE_WINDOW + 7 days);
        _unpause();
        assertEq(_charge(id, 0, 1 * USDC, ROOT), 1); // the window's last second was not used before the pause
        vm.warp(end0 + CHARGE_WINDOW + 7 days + 1);
        assertEq(_charge(id, 0, 2 * USDC, ROOT), 0);
    }

    /* pause / unpause AND THE LOG */

    function test_pause_idempotent_oneSpanOneEvent() public {
        uint256 t0 = vm.getBlockTimestamp();
        _pause();
        vm.warp(t0 + 1 hours);
        vm.recordLogs();
        _pause(); // already paused: nothing changes
        assertEq(vm.getRecordedLogs().length, 0);
        ISubscriptions.PauseSpan[] memory spans = subs.pauses();
        assertEq(spans.length, 1);
        assertEq(spans[0].start, t0);
        assertEq(spans[0].end, 0);

        vm.warp(t0 + 2 hours);
        vm.expectEmit(address(subs));
        emit ISubscriptions.ChargingPausedSet(false);
        _unpause();
        vm.warp(t0 + 3 hours);
        vm.recordLogs();
        _unpause(); // already running: nothing changes
        assertEq(vm.getRecordedLogs().length, 0);
        spans = subs.pauses();
        assertEq(spans.length, 1);
        assertEq(spans[0].start, t0);
        assertEq(spans[0].end, t0 + 2 hours);
        assertFalse(subs.chargingPaused());
    }

    function test_unpause_neverPaused_noSpanNoEvent() public {
        vm.recordLogs();
        _unpause();
        assertEq(vm.getRecordedLogs().length, 0);
        assertEq(subs.pauses().length, 0);
        assertEq(subs.pausedSince(0), 0);
    }

    function test_pauses_andPausedSince_views() public {
        uint256 t0 = vm.getBlockTimestamp();
        _pause();
        vm.warp(t0 + 100);
        _unpause();
        vm.warp(t0 + 1_000);
        _pause();
        vm.warp(t0 + 1_500);
        // The second pause is still on: counted up to now.
        ISubscriptions.PauseSpan[] memory spans = subs.pauses();
        assertEq(spans.length, 2);
        assertEq(spans[0].start, t0);
        assertEq(spans[0].end, t0 + 100);
        assertEq(spans[1].start, t0 + 1_000);
        assertEq(spans[1].end, 0);

        assertEq(subs.pausedSince(0), 100 + 500);
        assertEq(subs.pausedSince(t0), 100 + 500);
        assertEq(subs.pausedSince(t0 + 40), 60 + 500);
        assertEq(subs.pausedSince(t0 + 100), 500);
        assertEq(subs.pausedSince(t0 + 500), 500);
        assertEq(subs.pausedSince(t0 + 1_200), 300);
        assertEq(subs.pausedSince(t0 + 1_500), 0);
        assertEq(subs.pausedSince(t0 + 9_999), 0);

        vm.warp(t0 + 2_000);
        assertEq(subs.pausedSince(t0), 100 + 1_000);
        _unpause();
        vm.warp(t0 + 5_000);
        assertEq(subs.pausedSince(t0), 100 + 1_000);
        assertEq(subs.pauses()[1].end, t0 + 2_000);
    }

    /* FUZZ */

    /// @dev A pause of any length (up to two periods) starting before the due time or anywhere inside the grace
    /// period: entitled through it, and after it the subscription lapses exactly when grace + the paused time after
    /// the due time have run; a renewal one second earlier succeeds.
    function testFuzz_pause_lengthVsGrace(uint256 startOffset, uint256 length, bool renewAtLastSecond) public {
        uint256 id = _subscribe(alice, monthly, 0);
        uint256 due = _sub(id).paidThrough;
        uint256 start = bound(startOffset, due - 5 days, due + GRACE - 1);
        length = bound(length, 0, 2 * MONTH);
        uint256 end = start + length;

        vm.warp(start);
        _pause();
        vm.warp(start + length / 2);
        assertTrue(subs.isEntitled(id), "entitled during the pause");
        vm.warp(end);
        assertTrue(subs.isEntitled(id), "entitled at the end of the pause");
        _unpause();

        uint256 pausedAfterDue = end > due ? end - (start > due ? start : due) : 0;
        assertEq(subs.pausedSince(due), pausedAfterDue);
        uint256 lapseAt = due + GRACE + pausedAfterDue;
        assertGt(lapseAt, end);

        vm.warp(lapseAt - 1);
        assertTrue(subs.isEntitled(id));
        if (renewAtLastSecond) {
            vm.expectEmit(address(subs));
            emit ISubscriptions.Renewed(id, monthly, 1, due + MONTH, PRICE, 0);
            assertEq(_renew(id), 1);
        } else {
            vm.warp(lapseAt);
            assertFalse(subs.isEntitled(id));
            vm.expectEmit(address(subs));
            emit ISubscriptions.Lapsed(id, due);
            assertEq(_renew(id), 0);
        }
    }

    /// @dev A pause of any length starting anywhere in period 0's charge window (after the renewal): period 0 stays
    /// chargeable exactly until its end + the window + the paused time.
    function testFuzz_pause_lengthVsChargeWindow(uint256 startOffset, uint256 length, uint256 after_) public {
        uint256 id = _subscribe(alice, monthly, CAP);
        uint256 end0 = _sub(id).paidThrough;
        vm.warp(end0);
        _renew(id);
        uint256 start = bound(startOffset, end0, end0 + CHARGE_WINDOW);
        length = bound(length, 0, 2 * MONTH);
        vm.warp(start);
        _pause();
        vm.warp(start + length);
        _unpause();
        uint256 lastChargeable = end0 + CHARGE_WINDOW + length;
        uint256 t = bound(after_, start + length, lastChargeable + 1 days);
        vm.warp(t);
        assertEq(_charge(id, 0, 1 * USDC, ROOT), t <= lastChargeable ? 1 : 0);
    }
}
