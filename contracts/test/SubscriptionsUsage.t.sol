// SPDX-License-Identifier: MIT
pragma solidity 0.8.30;

import {ReentrancyGuardTransient} from "@openzeppelin/contracts/utils/ReentrancyGuardTransient.sol";

import {SubscriptionsHelpers} from "./Subscriptions.t.sol";
import {Subscriptions} from "../src/Subscriptions.sol";
import {SplitEscrow} from "../src/SplitEscrow.sol";
import {ISubscriptions} from "../src/interfaces/ISubscriptions.sol";
import {FeeOnTransferToken} from "./mocks/FeeOnTransferToken.sol";
import {ReentrantToken} from "./mocks/ReentrantToken.sol";
import {ReentrantPullToken, ReentrantSubscriberWallet} from "./mocks/ReentrantPullToken.sol";

/// @notice Usage (overage) charges: keeper access, cap arithmetic, charge windows, isolation; and the money-path fuzz
/// tests (cap, credit then wallet). Renewals follow in {SubscriptionsRenewTest}.
contract SubscriptionsUsageTest is SubscriptionsHelpers {
    bytes32 internal constant ROOT = keccak256("usage-root");
    uint256 internal constant CAP = 50 * USDC;

    function _charges(uint256 id, uint256 k, uint256 cumulative)
        internal
        pure
        returns (ISubscriptions.Charge[] memory charges)
    {
        charges = new ISubscriptions.Charge[](1);
        charges[0] = ISubscriptions.Charge(id, k, cumulative, ROOT);
    }

    function _setCap(address who, uint256 id, uint256 cap) internal {
        vm.prank(who);
        subs.setOverageCap(id, cap);
    }

    /* ACCESS */

    function test_chargeUsage_notKeeper_reverts() public {
        uint256 id = _subscribe(alice, payg, CAP);
        vm.expectRevert(abi.encodeWithSelector(ISubscriptions.NotKeeper.selector, stranger));
        vm.prank(stranger);
        subs.chargeUsage(_charges(id, 0, 1));
        vm.expectRevert(abi.encodeWithSelector(ISubscriptions.NotKeeper.selector, owner));
        vm.prank(owner);
        subs.chargeUsage(_charges(id, 0, 1));
    }

    function test_chargeUsage_whilePaused_reverts() public {
        uint256 id = _subscribe(alice, payg, CAP);
        vm.prank(owner);
        subs.pause();
        vm.expectRevert(ISubscriptions.ChargingPaused.selector);
        vm.prank(keeper);
        subs.chargeUsage(_charges(id, 0, 1));
    }

    function test_chargeUsage_emptyBatch() public {
        vm.prank(keeper);
        assertEq(subs.chargeUsage(new ISubscriptions.Charge[](0)), 0);
    }

    /* CAP ARITHMETIC */

    function test_chargeUsage_collectsIntoEscrowAndEmitsUsageRoot() public {
        uint256 id = _subscribe(alice, payg, CAP);
        uint256 aliceBefore = usdc.balanceOf(alice);
        vm.expectEmit(address(subs));
        emit ISubscriptions.UsageCharged(id, 0, 10 * USDC, 10 * USDC, 0, 10 * USDC, ROOT);
        assertEq(_charge(id, 0, 10 * USDC, ROOT), 1);
        assertEq(usdc.balanceOf(alice), aliceBefore - 10 * USDC);
        assertEq(usdc.balanceOf(address(escrow)), 10 * USDC);
        assertEq(subs.totalRevenue(), 10 * USDC);
        assertEq(subs.chargedInPeriod(id, 0), 10 * USDC);
        ISubscriptions.UsageLedger memory ledger = subs.usageLedger(id);
        assertEq(ledger.overageCap, CAP);
        assertEq(ledger.period, 0);
        assertEq(ledger.chargedInPeriod, 10 * USDC);
        assertEq(ledger.chargedInPreviousPeriod, 0);
    }

    function test_chargeUsage_capZero_chargesNothing() public {
        uint256 id = _subscribe(alice, payg, 0);
        vm.recordLogs();
        assertEq(_charge(id, 0, 10 * USDC, ROOT), 0);
        assertEq(vm.getRecordedLogs().length, 0);
        assertEq(usdc.balanceOf(address(escrow)), 0);
        assertEq(subs.totalRevenue(), 0);
        assertEq(subs.chargedInPeriod(id, 0), 0);
    }

    function test_chargeUsage_cumulativeExactlyCap() public {
        uint256 id = _subscribe(alice, payg, CAP);
        vm.expectEmit(address(subs));
        emit ISubscriptions.UsageCharged(id, 0, CAP, CAP, 0, CAP, ROOT);
        assertEq(_charge(id, 0, CAP, ROOT), 1);
        assertEq(subs.chargedInPeriod(id, 0), CAP);
        assertEq(_charge(id, 0, CAP + 1, ROOT), 0); // at the cap: nothing more
        assertEq(usdc.balanceOf(address(escrow)), CAP);
    }

    function test_chargeUsage_aboveCap_chargesUpToCap() public {
        uint256 id = _subscribe(alice, payg, CAP);
        _charge(id, 0, 20 * USDC, ROOT);
        vm.expectEmit(address(subs));
        emit ISubscriptions.UsageCharged(id, 0, 500 * USDC, CAP - 20 * USDC, 0, CAP, ROOT);
        assertEq(_charge(id, 0, 500 * USDC, ROOT), 1);
        assertEq(subs.chargedInPeriod(id, 0), CAP);
        assertEq(usdc.balanceOf(address(escrow)), CAP);
        assertEq(subs.totalRevenue(), CAP);
    }

    function test_chargeUsage_resendIsNoOp() public {
        uint256 id = _subscribe(alice, payg, CAP);
        _charge(id, 0, 10 * USDC, ROOT);
        uint256 aliceBefore = usdc.balanceOf(alice);
        vm.recordLogs();
        assertEq(_charge(id, 0, 10 * USDC, ROOT), 0);
        assertEq(vm.getRecordedLogs().length, 0); // no transfer, no event
        assertEq(usdc.balanceOf(alice), aliceBefore);
        assertEq(usdc.balanceOf(address(escrow)), 10 * USDC);
        assertEq(subs.chargedInPeriod(id, 0), 10 * USDC);
        // A lower (stale) cumulative is a no-op too.
        assertEq(_charge(id, 0, 4 * USDC, ROOT), 0);
        assertEq(subs.chargedInPeriod(id, 0), 10 * USDC);
    }

    function test_chargeUsage_increasingCumulative_chargesDifference() public {
        uint256 id = _subscribe(alice, payg, CAP);
        _charge(id, 0, 10 * USDC, ROOT);
        vm.expectEmit(address(subs));
        emit ISubscriptions.UsageCharged(id, 0, 25 * USDC, 15 * USDC, 0, 25 * USDC, ROOT);
        assertEq(_charge(id, 0, 25 * USDC, ROOT), 1);
        assertEq(usdc.balanceOf(address(escrow)), 25 * USDC);
        assertEq(subs.chargedInPeriod(id, 0), 25 * USDC);
    }

    function test_chargeUsage_capLoweredBelowCharged_chargesNothing() public {
        uint256 id = _subscribe(alice, payg, CAP);
        _charge(id, 0, 30 * USDC, ROOT);
        _setCap(alice, id, 20 * USDC);
        assertEq(_charge(id, 0, 40 * USDC, ROOT), 0);
        assertEq(subs.chargedInPeriod(id, 0), 30 * USDC); // nothing refunded automatically
        assertEq(usdc.balanceOf(address(escrow)), 30 * USDC);
    }

    function test_chargeUsage_capRaisedLater_chargesRest() public {
        uint256 id = _subscribe(alice, payg, CAP);
        _charge(id, 0, 30 * USDC, ROOT);
        _setCap(alice, id, 20 * USDC);
        assertEq(_charge(id, 0, 40 * USDC, ROOT), 0);
        _setCap(alice, id, 100 * USDC);
        vm.expectEmit(address(subs));
        emit ISubscriptions.UsageCharged(id, 0, 40 * USDC, 10 * USDC, 0, 40 * USDC, ROOT);
        assertEq(_charge(id, 0, 40 * USDC, ROOT), 1);
        assertEq(usdc.balanceOf(address(escrow)), 40 * USDC);
    }

    function test_chargeUsage_creditFirstThenWallet() public {
        uint256 id = _subscribe(alice, payg, CAP);
        _deposit(alice, 5 * USDC);
        uint256 aliceBefore = usdc.balanceOf(alice);
        vm.expectEmit(address(subs));
        emit ISubscriptions.UsageCharged(id, 0, 8 * USDC, 8 * USDC, 5 * USDC, 8 * USDC, ROOT);
        _charge(id, 0, 8 * USDC, ROOT);
        assertEq(subs.creditOf(alice), 0);
        assertEq(usdc.balanceOf(alice), aliceBefore - 3 * USDC);
        assertEq(usdc.balanceOf(address(escrow)), 8 * USDC);
        assertEq(usdc.balanceOf(address(subs)), 0);
        assertEq(subs.totalRevenue(), 8 * USDC);
    }

    /* PERIODS AND CHARGE WINDOW */

    function test_chargeUsage_previousPeriodInsideWindowAfterRenewal() public {
        uint256 id = _subscribe(alice, monthly, CAP);
        uint256 end0 = _sub(id).paidThrough;
        vm.warp(end0);
        _renew(id);
        _charge(id, 1, 7 * USDC, ROOT); // the ledger moves to period 1 first
        vm.warp(end0 + CHARGE_WINDOW); // the last second of period 0's window
        vm.expectEmit(address(subs));
        emit ISubscriptions.UsageCharged(id, 0, 12 * USDC, 12 * USDC, 0, 12 * USDC, ROOT);
        assertEq(_charge(id, 0, 12 * USDC, ROOT), 1);
        assertEq(subs.chargedInPeriod(id, 0), 12 * USDC);
        assertEq(subs.chargedInPeriod(id, 1), 7 * USDC);
        ISubscriptions.UsageLedger memory ledger = subs.usageLedger(id);
        assertEq(ledger.period, 1);
        assertEq(ledger.chargedInPeriod, 7 * USDC);
        assertEq(ledger.chargedInPreviousPeriod, 12 * USDC);
    }

    function test_chargeUsage_previousPeriodAfterWindow_fails() public {
        uint256 id = _subscribe(alice, monthly, CAP);
        uint256 end0 = _sub(id).paidThrough;
        vm.warp(end0);
        _renew(id);
        vm.warp(end0 + CHARGE_WINDOW + 1);
        vm.expectEmit(address(subs));
        emit ISubscriptions.UsageChargeFailed(id, 0, 12 * USDC, ISubscriptions.FailureReason.ChargeWindowClosed, ROOT);
        assertEq(_charge(id, 0, 12 * USDC, ROOT), 0);
        assertEq(subs.totalRevenue(), 2 * PRICE);
        assertEq(_charge(id, 1, 12 * USDC, ROOT), 1); // the current period still is chargeable
    }

    function test_chargeUsage_renewedLateAfterWindow_previousClosed() public {
        uint256 id = _subscribe(alice, monthly, CAP);
        uint256 end0 = _sub(id).paidThrough;
        vm.warp(end0 + CHARGE_WINDOW + 1); // inside grace (3 days), outside the window (2 days)
        assertEq(_renew(id), 1);
        vm.expectEmit(address(subs));
        emit ISubscriptions.UsageChargeFailed(id, 0, 1, ISubscriptions.FailureReason.ChargeWindowClosed, ROOT);
        assertEq(_charge(id, 0, 1, ROOT), 0);
    }

    function test_chargeUsage_currentPeriodAfterItsEndInsideWindow() public {
        uint256 id = _subscribe(alice, monthly, CAP);
        uint256 end0 = _sub(id).paidThrough;
        vm.warp(end0 + CHARGE_WINDOW); // not renewed: period 0 is still the current one
        assertEq(_charge(id, 0, 3 * USDC, ROOT), 1);
        vm.warp(end0 + CHARGE_WINDOW + 1);
        vm.expectEmit(address(subs));
        emit ISubscriptions.UsageChargeFailed(id, 0, 4 * USDC, ISubscriptions.FailureReason.ChargeWindowClosed, ROOT);
        assertEq(_charge(id, 0, 4 * USDC, ROOT), 0);
    }

    function test_chargeUsage_olderPeriod_windowClosed() public {
        uint256 id = _subscribe(alice, monthly, CAP);
        for (uint256 k; k < 2; ++k) {
            vm.warp(_sub(id).paidThrough);
            _renew(id);
        }
        vm.expectEmit(address(subs));
        emit ISubscriptions.UsageChargeFailed(id, 0, 1, ISubscriptions.FailureReason.ChargeWindowClosed, ROOT);
        assertEq(_charge(id, 0, 1, ROOT), 0);
    }

    function test_chargeUsage_futurePeriod_fails() public {
        uint256 id = _subscribe(alice, monthly, CAP);
        vm.expectEmit(address(subs));
        emit ISubscriptions.UsageChargeFailed(id, 1, 5 * USDC, ISubscriptions.FailureReason.PeriodNotStarted, ROOT);
        assertEq(_charge(id, 1, 5 * USDC, ROOT), 0);
        // Past due: the unpaid period has not started either.
        _revoke(alice);
        vm.warp(_sub(id).paidThrough + 1);
        _renew(id);
        vm.expectEmit(address(subs));
        emit ISubscriptions.UsageChargeFailed(id, 1, 5 * USDC, ISubscriptions.FailureReason.PeriodNotStarted, ROOT);
        assertEq(_charge(id, 1, 5 * USDC, ROOT), 0);
        assertEq(subs.totalRevenue(), PRICE);
    }

    function test_chargeUsage_hugePeriodIndex_isolated() public {
        uint256 a = _subscribe(alice, payg, CAP);
        ISubscriptions.Charge[] memory charges = new ISubscriptions.Charge[](2);
        charges[0] = ISubscriptions.Charge(a, type(uint256).max, 5 * USDC, ROOT);
        charges[1] = ISubscriptions.Charge(a, 0, 5 * USDC, ROOT);
        vm.expectEmit(address(subs));
        emit ISubscriptions.UsageChargeFailed(
            a, type(uint256).max, 5 * USDC, ISubscriptions.FailureReason.PeriodNotStarted, ROOT
        );
        vm.prank(keeper);
        assertEq(subs.chargeUsage(charges), 1);
        assertEq(subs.chargedInPeriod(a, 0), 5 * USDC);
    }

    function test_chargeUsage_unknownSubscription_fails() public {
        vm.expectEmit(address(subs));
        emit ISubscriptions.UsageChargeFailed(77, 0, 5 * USDC, ISubscriptions.FailureReason.UnknownSubscription, ROOT);
        assertEq(_charge(77, 0, 5 * USDC, ROOT), 0);
    }

    function test_chargeUsage_afterPlanChange_previousWindowFromNewPeriod() public {
        uint256 t0 = vm.getBlockTimestamp();
        uint256 id = _subscribe(alice, monthly, CAP);
        uint256 weekly = _createPlan(20 * USDC, 7 days, 1 days);
        vm.prank(alice);
        subs.changePlan(id, weekly);
        vm.warp(t0 + MONTH);
        _renew(id);
        (, uint256 start, uint256 end) = subs.currentPeriod(id);
        assertEq(start, t0 + MONTH);
        assertEq(end, t0 + MONTH + 7 days);
        vm.warp(t0 + MONTH + CHARGE_WINDOW);
        assertEq(_charge(id, 0, 2 * USDC, ROOT), 1);
        vm.warp(t0 + MONTH + CHARGE_WINDOW + 1);
        assertEq(_charge(id, 0, 3 * USDC, ROOT), 0);
    }

    /* ENDED SUBSCRIPTIONS */

    function test_chargeUsage_cancelled_paidPeriodsInsideWindowOnly() public {
        uint256 id = _subscribe(alice, monthly, CAP);
        uint256 end0 = _sub(id).paidThrough;
        vm.prank(alice);
        subs.cancel(id);
        assertEq(_charge(id, 0, 5 * USDC, ROOT), 1);
        vm.warp(end0 + CHARGE_WINDOW);
        assertEq(_renew(id), 0);
        assertEq(_charge(id, 0, 9 * USDC, ROOT), 1);
        assertEq(subs.chargedInPeriod(id, 0), 9 * USDC);

        vm.expectEmit(address(subs));
        emit ISubscriptions.UsageChargeFailed(id, 1, 1, ISubscriptions.FailureReason.PeriodNotStarted, ROOT);
        assertEq(_charge(id, 1, 1, ROOT), 0);

        vm.warp(end0 + CHARGE_WINDOW + 1);
        vm.expectEmit(address(subs));
        emit ISubscriptions.UsageChargeFailed(id, 0, 20 * USDC, ISubscriptions.FailureReason.ChargeWindowClosed, ROOT);
        assertEq(_charge(id, 0, 20 * USDC, ROOT), 0);
        vm.warp(end0 + 10 * MONTH);
        assertEq(_charge(id, 0, 20 * USDC, ROOT), 0);
        assertEq(subs.totalRevenue(), PRICE + 9 * USDC);
    }

    function test_chargeUsage_lapsed_paidPeriodInsideWindowOnly() public {
        // Grace (1 day) shorter than the charge window (2 days): the subscription lapses while its last paid period
        // is still chargeable.
        uint256 shortGrace = _createPlan(PRICE, MONTH, 1 days);
        uint256 id = _subscribe(alice, shortGrace, CAP);
        uint256 end0 = _sub(id).paidThrough;
        vm.warp(end0 + 1 days);
        vm.expectEmit(address(subs));
        emit ISubscriptions.Lapsed(id, end0);
        _renew(id);
        assertEq(uint8(_sub(id).status), uint8(ISubscriptions.Status.Lapsed));

        vm.expectEmit(address(subs));
        emit ISubscriptions.UsageCharged(id, 0, 6 * USDC, 6 * USDC, 0, 6 * USDC, ROOT);
        assertEq(_charge(id, 0, 6 * USDC, ROOT), 1);
        vm.warp(end0 + CHARGE_WINDOW + 1);
        vm.expectEmit(address(subs));
        emit ISubscriptions.UsageChargeFailed(id, 0, 8 * USDC, ISubscriptions.FailureReason.ChargeWindowClosed, ROOT);
        assertEq(_charge(id, 0, 8 * USDC, ROOT), 0);
        assertEq(subs.totalRevenue(), PRICE + 6 * USDC);
    }

    /* ISOLATION */

    function test_chargeUsage_failureIsolatedPerItem() public {
        uint256 a = _subscribe(alice, payg, CAP);
        uint256 b = _subscribe(bob, payg, CAP);
        uint256 c = _subscribe(carol, payg, CAP);
        _revoke(bob);
        ISubscriptions.Charge[] memory charges = new ISubscriptions.Charge[](4);
        charges[0] = ISubscriptions.Charge(a, 0, 10 * USDC, ROOT);
        charges[1] = ISubscriptions.Charge(b, 0, 10 * USDC, ROOT);
        charges[2] = ISubscriptions.Charge(99, 0, 10 * USDC, ROOT);
        charges[3] = ISubscriptions.Charge(c, 0, 10 * USDC, ROOT);

        vm.expectEmit(address(subs));
        emit ISubscriptions.UsageCharged(a, 0, 10 * USDC, 10 * USDC, 0, 10 * USDC, ROOT);
        vm.expectEmit(address(subs));
        emit ISubscriptions.UsageChargeFailed(b, 0, 10 * USDC, ISubscriptions.FailureReason.InsufficientAllowance, ROOT);
        vm.expectEmit(address(subs));
        emit ISubscriptions.UsageChargeFailed(99, 0, 10 * USDC, ISubscriptions.FailureReason.UnknownSubscription, ROOT);
        vm.expectEmit(address(subs));
        emit ISubscriptions.UsageCharged(c, 0, 10 * USDC, 10 * USDC, 0, 10 * USDC, ROOT);
        vm.prank(keeper);
        assertEq(subs.chargeUsage(charges), 2);

        assertEq(subs.chargedInPeriod(b, 0), 0);
        assertEq(usdc.balanceOf(address(escrow)), 20 * USDC);
        assertEq(subs.totalRevenue(), 20 * USDC);
    }

    function test_chargeUsage_noBalance_reason() public {
        uint256 id = _subscribe(alice, payg, CAP);
        vm.startPrank(alice);
        usdc.transfer(stranger, usdc.balanceOf(alice));
        vm.stopPrank();
        vm.expectEmit(address(subs));
        emit ISubscriptions.UsageChargeFailed(id, 0, 1, ISubscriptions.FailureReason.InsufficientBalance, ROOT);
        assertEq(_charge(id, 0, 1, ROOT), 0);
    }

    function test_chargeUsage_blacklistedAndPaused_tokenRejected() public {
        uint256 a = _subscribe(alice, payg, CAP);
        uint256 b = _subscribe(bob, payg, CAP);
        _blacklist(bob);
        ISubscriptions.Charge[] memory charges = new ISubscriptions.Charge[](2);
        charges[0] = ISubscriptions.Charge(b, 0, 1 * USDC, ROOT);
        charges[1] = ISubscriptions.Charge(a, 0, 1 * USDC, ROOT);
        vm.expectEmit(address(subs));
        emit ISubscriptions.UsageChargeFailed(b, 0, 1 * USDC, ISubscriptions.FailureReason.TokenRejected, ROOT);
        vm.prank(keeper);
        assertEq(subs.chargeUsage(charges), 1);

        _pauseUSDC();
        charges[1].cumulativeOverage = 2 * USDC;
        vm.expectEmit(address(subs));
        emit ISubscriptions.UsageChargeFailed(a, 0, 2 * USDC, ISubscriptions.FailureReason.TokenRejected, ROOT);
        vm.prank(keeper);
        assertEq(subs.chargeUsage(charges), 0);
        assertEq(subs.chargedInPeriod(a, 0), 1 * USDC);
    }

    /* HOSTILE TOKENS */

    function test_chargeUsage_feeOnTransferToken_revertsBatch() public {
        FeeOnTransferToken fot = new FeeOnTransferToken();
        (Subscriptions s, SplitEscrow e,) = _deployPair(address(fot), PRICE);
        vm.prank(owner);
        uint256 free = s.createPlan(0, MONTH, GRACE);
        fot.mint(alice, 1_000 * USDC);
        vm.startPrank(alice);
        fot.approve(address(s), type(uint256).max);
        uint256 id = s.subscribe(free, CAP);
        vm.stopPrank();

        vm.expectRevert(abi.encodeWithSelector(ISubscriptions.FeeOnTransferToken.selector, 10 * USDC, 9.9e6));
        vm.prank(keeper);
        s.chargeUsage(_charges(id, 0, 10 * USDC));
        assertEq(s.chargedInPeriod(id, 0), 0);
        assertEq(fot.balanceOf(address(e)), 0);
    }

    function test_chargeUsage_reentrantCall_blocked() public {
        ReentrantToken token = new ReentrantToken();
        (Subscriptions s, SplitEscrow e,) = _deployPair(address(token), PRICE);
        vm.prank(owner);
        uint256 free = s.createPlan(0, MONTH, GRACE);
        token.mint(alice, 1_000 * USDC);
        vm.startPrank(alice);
        token.approve(address(s), type(uint256).max);
        uint256 id = s.subscribe(free, CAP);
        vm.stopPrank();

        ISubscriptions.Charge[] memory charges = _charges(id, 0, 10 * USDC);
        token.arm(address(s), abi.encodeCall(ISubscriptions.chargeUsage, (charges)));
        vm.prank(keeper);
        assertEq(s.chargeUsage(charges), 1);
        assertFalse(token.attackSucceeded());
        assertEq(
            token.attackReturn(), abi.encodeWithSelector(ReentrancyGuardTransient.ReentrancyGuardReentrantCall.selector)
        );
        assertEq(s.chargedInPeriod(id, 0), 10 * USDC);
        assertEq(token.balanceOf(address(e)), 10 * USDC);
        assertEq(s.totalRevenue(), 10 * USDC);
    }

    /* VIEWS */

    function test_chargedInPeriod_tracksLastTwoPeriods() public {
        uint256 id = _subscribe(alice, monthly, CAP);
        _charge(id, 0, 3 * USDC, ROOT);
        vm.warp(_sub(id).paidThrough);
        _renew(id);
        _charge(id, 1, 4 * USDC, ROOT);
        assertEq(subs.chargedInPeriod(id, 0), 3 * USDC);
        assertEq(subs.chargedInPeriod(id, 1), 4 * USDC);
        assertEq(subs.chargedInPeriod(id, 2), 0);

        vm.warp(_sub(id).paidThrough);
        _renew(id);
        _charge(id, 2, 5 * USDC, ROOT);
        assertEq(subs.chargedInPeriod(id, 0), 0); // no longer tracked
        assertEq(subs.chargedInPeriod(id, 1), 4 * USDC);
        assertEq(subs.chargedInPeriod(id, 2), 5 * USDC);

        // Skipping a period: the ledger jumps and forgets the older one.
        vm.warp(_sub(id).paidThrough);
        _renew(id);
        vm.warp(_sub(id).paidThrough);
        _renew(id);
        _charge(id, 4, 6 * USDC, ROOT);
        ISubscriptions.UsageLedger memory ledger = subs.usageLedger(id);
        assertEq(ledger.period, 4);
        assertEq(ledger.chargedInPeriod, 6 * USDC);
        assertEq(ledger.chargedInPreviousPeriod, 0);
        assertEq(subs.chargedInPeriod(id, 2), 0);
        assertEq(subs.chargedInPeriod(id, 3), 0);
        assertEq(_charge(id, 3, 2 * USDC, ROOT), 1); // period 3 is the previous one, inside its window
        assertEq(subs.chargedInPeriod(id, 3), 2 * USDC);
    }

    /// paidFor: the plan fee only for the last paid period, plus the usage charged for the periods the ledger holds.
    function test_paidFor_feeForLastPaidPeriodPlusLedgerUsage() public {
        uint256 id = _subscribe(alice, monthly, CAP);
        (address subscriber, uint256 paid) = subs.paidFor(id, 0);
        assertEq(subscriber, alice);
        assertEq(paid, PRICE);
        _charge(id, 0, 10 * USDC, ROOT);
        (, paid) = subs.paidFor(id, 0);
        assertEq(paid, PRICE + 10 * USDC);
        (, paid) = subs.paidFor(id, 1); // not paid yet
        assertEq(paid, 0);

        vm.warp(_sub(id).paidThrough);
        _renew(id);
        (, paid) = subs.paidFor(id, 0); // no longer the last paid period: its usage only
        assertEq(paid, 10 * USDC);
        (, paid) = subs.paidFor(id, 1);
        assertEq(paid, PRICE);
        _charge(id, 1, 4 * USDC, ROOT);
        (, paid) = subs.paidFor(id, 1);
        assertEq(paid, PRICE + 4 * USDC);
        (, paid) = subs.paidFor(id, 0);
        assertEq(paid, 10 * USDC); // the ledger's previous period

        vm.warp(_sub(id).paidThrough);
        _renew(id);
        _charge(id, 2, 1 * USDC, ROOT); // the ledger moves to period 2 and forgets period 0
        (, paid) = subs.paidFor(id, 0);
        assertEq(paid, 0);
        (, paid) = subs.paidFor(id, 1);
        assertEq(paid, 4 * USDC);
        (, paid) = subs.paidFor(id, 2);
        assertEq(paid, PRICE + 1 * USDC);

        // The escrow bounds refunds by it.
        assertEq(escrow.refundable(id, 2), PRICE + 1 * USDC);
        assertEq(escrow.refundable(id, 0), 0);
    }

    function test_paidFor_planChangeAndPayAsYouGo() public {
        uint256 pro = _createPlan(199 * USDC, MONTH, GRACE);
        uint256 id = _subscribe(alice, monthly, CAP);
        vm.prank(alice);
        subs.changePlan(id, pro);
        (, uint256 paid) = subs.paidFor(id, 0);
        assertEq(paid, PRICE); // the pending plan is not paid yet
        vm.warp(_sub(id).paidThrough);
        _renew(id);
        (, paid) = subs.paidFor(id, 1);
        assertEq(paid, 199 * USDC);

        uint256 p = _subscribe(bob, payg, CAP);
        (address subscriber, uint256 paidPayg) = subs.paidFor(p, 0);
        assertEq(subscriber, bob);
        assertEq(paidPayg, 0);
        _charge(p, 0, 7 * USDC, ROOT);
        (, paidPayg) = subs.paidFor(p, 0);
        assertEq(paidPayg, 7 * USDC);

        // Cancelled: the subscriber and what the last period paid stay.
        vm.prank(bob);
        subs.cancel(p);
        (subscriber, paidPayg) = subs.paidFor(p, 0);
        assertEq(subscriber, bob);
        assertEq(paidPayg, 7 * USDC);
    }

    function test_paidFor_unknownSubscription_reverts() public {
        vm.expectRevert(abi.encodeWithSelector(ISubscriptions.UnknownSubscription.selector, 4));
        subs.paidFor(4, 0);
    }

    function test_chargedInPeriod_unknownIsZero() public view {
        assertEq(subs.chargedInPeriod(5, 0), 0);
        assertEq(subs.chargedInPeriod(5, type(uint256).max), 0);
        assertEq(subs.usageLedger(5).overageCap, 0);
    }

    /* FUZZ */

    /// @dev A fixed cap and a random sequence of cumulative values (rises, resends, stale lower values): the
    /// period's total is min(max cumulative, cap), never above the cap, and each call collects exactly the increase.
    function testFuzz_chargeUsage_neverExceedsCap(uint256 cap, uint256[10] memory cumulatives) public {
        cap = bound(cap, 0, 1_000 * USDC);
        uint256 id = _subscribe(alice, payg, cap);
        uint256 maxCumulative;
        uint256 charged;
        for (uint256 i; i < cumulatives.length; ++i) {
            uint256 cumulative = bound(cumulatives[i], 0, 2_000 * USDC);
            if (cumulative > maxCumulative) maxCumulative = cumulative;
            uint256 escrowBefore = usdc.balanceOf(address(escrow));
            uint256 collected = _charge(id, 0, cumulative, ROOT);
            uint256 expected = maxCumulative < cap ? maxCumulative : cap;
            assertEq(usdc.balanceOf(address(escrow)) - escrowBefore, expected - charged);
            assertEq(collected, expected > charged ? 1 : 0);
            charged = expected;
            assertEq(subs.chargedInPeriod(id, 0), charged);
            assertLe(charged, cap);
        }
        assertEq(subs.totalRevenue(), charged);
        assertEq(usdc.balanceOf(address(escrow)), charged);
    }

    /// @dev Random cumulative values and cap changes between them: after each call the period's total is
    /// max(previous total, min(cumulative, cap at the time)); an increase never goes above the cap at the time.
    function testFuzz_chargeUsage_capChangesMatchModel(uint256[10] memory cumulatives, uint256[10] memory caps) public {
        uint256 id = _subscribe(alice, payg, 0);
        uint256 charged;
        for (uint256 i; i < cumulatives.length; ++i) {
            uint256 cap = bound(caps[i], 0, 1_000 * USDC);
            if (caps[i] % 3 != 0) _setCap(alice, id, cap); // sometimes keep the previous cap
            cap = subs.usageLedger(id).overageCap;
            uint256 cumulative = bound(cumulatives[i], 0, 2_000 * USDC);
            uint256 target = cumulative < cap ? cumulative : cap;
            uint256 expected = target > charged ? target : charged;
            uint256 escrowBefore = usdc.balanceOf(address(escrow));
            _charge(id, 0, cumulative, ROOT);
            assertEq(usdc.balanceOf(address(escrow)) - escrowBefore, expected - charged);
            if (expected > charged) assertLe(expected, cap);
            charged = expected;
            assertEq(subs.chargedInPeriod(id, 0), charged);
        }
        assertEq(subs.totalRevenue(), charged);
    }

    /// @dev Random credit and price on each pull path (subscribe, renew, usage charge): credit pays
    /// min(credit, price), the wallet the rest, and the escrow receives exactly the price.
    function testFuzz_collect_creditThenWallet(uint256 credit, uint256 price, uint8 path) public {
        price = bound(price, 1, 1e15);
        credit = bound(credit, 0, 2e15);
        path = uint8(bound(path, 0, 2));
        _mint(alice, credit + 2 * price); // path 1 pays period 0 from the wallet first
        uint256 planId = _createPlan(price, MONTH, GRACE);

        uint256 id;
        if (path == 1) id = _subscribe(alice, planId, 0); // period 0 paid before the credit exists
        if (path == 2) id = _subscribe(alice, payg, price);
        if (credit != 0) _deposit(alice, credit);

        uint256 aliceCredit = subs.creditOf(alice);
        uint256 aliceWallet = usdc.balanceOf(alice);
        uint256 escrowBefore = usdc.balanceOf(address(escrow));
        uint256 revenueBefore = subs.totalRevenue();

        if (path == 0) {
            _subscribe(alice, planId, 0);
        } else if (path == 1) {
            vm.warp(_sub(id).paidThrough);
            assertEq(_renew(id), 1);
        } else {
            assertEq(_charge(id, 0, price, ROOT), 1);
        }

        uint256 fromCredit = aliceCredit < price ? aliceCredit : price;
        assertEq(subs.creditOf(alice), aliceCredit - fromCredit);
        assertEq(aliceWallet - usdc.balanceOf(alice), price - fromCredit);
        assertEq(usdc.balanceOf(address(escrow)) - escrowBefore, price);
        assertEq(subs.totalRevenue() - revenueBefore, price);
        assertEq(usdc.balanceOf(address(subs)), subs.creditOf(alice));
    }

    /// @dev The previous period is chargeable exactly until its end plus the charge window.
    function testFuzz_chargeUsage_previousPeriodWindow(uint256 delay) public {
        delay = bound(delay, 0, MONTH - 1);
        uint256 id = _subscribe(alice, monthly, CAP);
        uint256 end0 = _sub(id).paidThrough;
        vm.warp(end0);
        _renew(id);
        vm.warp(end0 + delay);
        assertEq(_charge(id, 0, 1 * USDC, ROOT), delay <= CHARGE_WINDOW ? 1 : 0);
    }
}

/// @notice Renewals: anchoring, isolation, past due, lapse, plan changes, hostile tokens.
contract SubscriptionsRenewTest is SubscriptionsHelpers {
    function test_renew_anchoredOverTwelveRenewals() public {
        uint256 t0 = vm.getBlockTimestamp();
        uint256 id = _subscribe(alice, monthly, 0);
        uint256[12] memory lateness =
            [uint256(0), 1, 1 hours, GRACE - 1, 2 days, 0, 12 hours, GRACE - 1, 1 days, 59 minutes, GRACE / 2, 0];
        for (uint256 k = 1; k <= 12; ++k) {
            uint256 due = t0 + k * MONTH;
            assertEq(_sub(id).paidThrough, due);
            vm.warp(due - 1);
            assertEq(_renew(id), 0); // not due yet
            vm.warp(due + lateness[k - 1]);
            vm.expectEmit(address(subs));
            emit ISubscriptions.Renewed(id, monthly, k, t0 + (k + 1) * MONTH, PRICE, 0);
            assertEq(_renew(id), 1);
            ISubscriptions.Subscription memory sub = _sub(id);
            assertEq(sub.paidThrough, t0 + (k + 1) * MONTH);
            assertEq(sub.periodIndex, k);
            assertEq(uint8(sub.status), uint8(ISubscriptions.Status.Active));
            assertEq(_renew(id), 0); // at most once per period
        }
        assertEq(subs.totalRevenue(), 13 * PRICE);
        assertEq(usdc.balanceOf(address(escrow)), 13 * PRICE);
    }

    function test_renew_notDue_skipped() public {
        uint256 id = _subscribe(alice, monthly, 0);
        vm.warp(_sub(id).paidThrough - 1);
        vm.recordLogs();
        assertEq(_renew(id), 0);
        assertEq(vm.getRecordedLogs().length, 0);
        assertEq(_sub(id).periodIndex, 0);
        assertEq(subs.totalRevenue(), PRICE);
    }

    function test_renew_unknownAndDuplicateIds() public {
        uint256 id = _subscribe(alice, monthly, 0);
        vm.warp(_sub(id).paidThrough);
        assertEq(subs.renew(_ids(99, id, id)), 1);
        assertEq(_sub(id).periodIndex, 1);
        assertEq(subs.totalRevenue(), 2 * PRICE);
    }

    function test_renew_emptyBatch() public {
        assertEq(subs.renew(new uint256[](0)), 0);
    }

    function test_renew_failureMarksPastDueAndIsolated() public {
        uint256 a = _subscribe(alice, monthly, 0);
        uint256 b = _subscribe(bob, monthly, 0);
        uint256 c = _subscribe(carol, monthly, 0);
        uint256 paidThrough = _sub(b).paidThrough;
        _revoke(bob);
        vm.warp(paidThrough + 1 hours);

        vm.expectEmit(address(subs));
        emit ISubscriptions.Renewed(a, monthly, 1, paidThrough + MONTH, PRICE, 0);
        vm.expectEmit(address(subs));
        emit ISubscriptions.RenewalFailed(b, 1, ISubscriptions.FailureReason.InsufficientAllowance);
        vm.expectEmit(address(subs));
        emit ISubscriptions.Renewed(c, monthly, 1, paidThrough + MONTH, PRICE, 0);
        assertEq(subs.renew(_ids(a, b, c)), 2);

        ISubscriptions.Subscription memory sub = _sub(b);
        assertEq(uint8(sub.status), uint8(ISubscriptions.Status.PastDue));
        assertEq(sub.paidThrough, paidThrough);
        assertEq(sub.periodIndex, 0);
        assertEq(subs.totalRevenue(), 5 * PRICE);
        assertEq(usdc.balanceOf(address(escrow)), 5 * PRICE);
        assertTrue(subs.isEntitled(b));
    }

    function test_renew_insufficientBalance_reason() public {
        uint256 id = _subscribe(alice, monthly, 0);
        vm.startPrank(alice);
        usdc.transfer(stranger, usdc.balanceOf(alice));
        vm.stopPrank();
        vm.warp(_sub(id).paidThrough);
        vm.expectEmit(address(subs));
        emit ISubscriptions.RenewalFailed(id, 1, ISubscriptions.FailureReason.InsufficientBalance);
        assertEq(_renew(id), 0);
    }

    function test_renew_retryAfterTopUpReturnsToActive() public {
        uint256 t0 = vm.getBlockTimestamp();
        uint256 id = _subscribe(alice, monthly, 0);
        vm.startPrank(alice);
        usdc.transfer(stranger, usdc.balanceOf(alice) - 10 * USDC);
        vm.stopPrank();

        vm.warp(t0 + MONTH);
        assertEq(_renew(id), 0);
        assertEq(uint8(_sub(id).status), uint8(ISubscriptions.Status.PastDue));
        vm.warp(t0 + MONTH + 1 days);
        vm.expectEmit(address(subs));
        emit ISubscriptions.RenewalFailed(id, 1, ISubscriptions.FailureReason.InsufficientBalance);
        assertEq(_renew(id), 0); // still failing: still past due

        _mint(alice, 100 * USDC);
        vm.warp(t0 + MONTH + GRACE - 1);
        vm.expectEmit(address(subs));
        emit ISubscriptions.Renewed(id, monthly, 1, t0 + 2 * MONTH, PRICE, 0);
        assertEq(_renew(id), 1);
        ISubscriptions.Subscription memory sub = _sub(id);
        assertEq(uint8(sub.status), uint8(ISubscriptions.Status.Active));
        assertEq(sub.paidThrough, t0 + 2 * MONTH); // anchored, not t0 + MONTH + GRACE - 1 + MONTH
        assertEq(sub.periodIndex, 1);
    }

    function test_renew_lapsesAfterGrace() public {
        uint256 id = _subscribe(alice, monthly, 0);
        uint256 paidThrough = _sub(id).paidThrough;
        _revoke(alice);
        vm.warp(paidThrough);
        _renew(id);

        vm.warp(paidThrough + GRACE);
        vm.expectEmit(address(subs));
        emit ISubscriptions.Lapsed(id, paidThrough);
        assertEq(_renew(id), 0);
        assertEq(uint8(_sub(id).status), uint8(ISubscriptions.Status.Lapsed));

        // Never renewed again, even once funded.
        vm.prank(alice);
        usdc.approve(address(subs), type(uint256).max);
        vm.recordLogs();
        assertEq(_renew(id), 0);
        vm.warp(paidThrough + MONTH);
        assertEq(_renew(id), 0);
        assertEq(vm.getRecordedLogs().length, 0);
        assertEq(_sub(id).paidThrough, paidThrough);
        assertEq(uint8(_sub(id).status), uint8(ISubscriptions.Status.Lapsed));
        assertEq(subs.totalRevenue(), PRICE);
    }

    function test_renew_activeNeverCalledLapsesAfterGrace() public {
        uint256 id = _subscribe(alice, monthly, 0);
        uint256 paidThrough = _sub(id).paidThrough;
        vm.warp(paidThrough + GRACE);
        vm.expectEmit(address(subs));
        emit ISubscriptions.Lapsed(id, paidThrough);
        assertEq(_renew(id), 0);
        assertEq(subs.totalRevenue(), PRICE);
    }

    function test_renew_planChangeTakesEffectAtNextRenewal() public {
        uint256 t0 = vm.getBlockTimestamp();
        uint256 id = _subscribe(alice, monthly, 0);
        uint256 pro = _createPlan(199 * USDC, 7 days, 1 days);
        vm.prank(alice);
        subs.changePlan(id, pro);

        // Nothing changes before the renewal.
        vm.warp(t0 + MONTH - 1);
        assertEq(_renew(id), 0);
        assertEq(_sub(id).planId, monthly);

        vm.warp(t0 + MONTH + 2 days); // late, inside the old plan's grace
        uint256 escrowBefore = usdc.balanceOf(address(escrow));
        vm.expectEmit(address(subs));
        emit ISubscriptions.Renewed(id, pro, 1, t0 + MONTH + 7 days, 199 * USDC, 0);
        assertEq(_renew(id), 1);
        assertEq(usdc.balanceOf(address(escrow)), escrowBefore + 199 * USDC);
        ISubscriptions.Subscription memory sub = _sub(id);
        assertEq(sub.planId, pro);
        assertFalse(sub.planChangePending);
        assertEq(subs.nextPlanOf(id), pro);
        (, uint256 start, uint256 end) = subs.currentPeriod(id);
        assertEq(start, t0 + MONTH);
        assertEq(end, t0 + MONTH + 7 days);

        // From then on: the new period length and price.
        for (uint256 k = 2; k <= 4; ++k) {
            vm.warp(_sub(id).paidThrough);
            vm.expectEmit(address(subs));
            emit ISubscriptions.Renewed(id, pro, k, t0 + MONTH + k * 7 days, 199 * USDC, 0);
            assertEq(_renew(id), 1);
        }
        assertEq(_sub(id).paidThrough, t0 + MONTH + 4 * 7 days);
        assertEq(subs.totalRevenue(), PRICE + 4 * 199 * USDC);
    }

    function test_renew_planChangeUsesNewPlanGraceAfterSwitch() public {
        uint256 t0 = vm.getBlockTimestamp();
        uint256 id = _subscribe(alice, monthly, 0);
        uint256 pro = _createPlan(199 * USDC, 7 days, 1 days);
        vm.prank(alice);
        subs.changePlan(id, pro);
        vm.warp(t0 + MONTH);
        _renew(id);
        // The new plan's 1-day grace applies now: 1 day after the end it lapses.
        vm.warp(t0 + MONTH + 7 days + 1 days);
        vm.expectEmit(address(subs));
        emit ISubscriptions.Lapsed(id, t0 + MONTH + 7 days);
        _renew(id);
    }

    function test_renew_payAsYouGoAdvancesWithoutPull() public {
        uint256 t0 = vm.getBlockTimestamp();
        uint256 id = _subscribe(alice, payg, 10 * USDC);
        _revoke(alice);
        vm.warp(t0 + MONTH);
        assertTrue(subs.dueForRenewal(_ids(id))[0]);
        vm.expectEmit(address(subs));
        emit ISubscriptions.Renewed(id, payg, 1, t0 + 2 * MONTH, 0, 0);
        assertEq(_renew(id), 1);
        assertEq(subs.totalRevenue(), 0);
    }

    function test_renew_creditBeforeWallet() public {
        uint256 id = _subscribe(alice, monthly, 0);
        _deposit(alice, 30 * USDC);
        uint256 aliceBefore = usdc.balanceOf(alice);
        vm.warp(_sub(id).paidThrough);
        vm.expectEmit(address(subs));
        emit ISubscriptions.Renewed(id, monthly, 1, _sub(id).paidThrough + MONTH, PRICE, 30 * USDC);
        _renew(id);
        assertEq(subs.creditOf(alice), 0);
        assertEq(usdc.balanceOf(alice), aliceBefore - 49 * USDC);
        assertEq(usdc.balanceOf(address(escrow)), 2 * PRICE);
        assertEq(usdc.balanceOf(address(subs)), 0);
        assertEq(subs.totalRevenue(), 2 * PRICE);
    }

    function test_renew_creditOnlyWithoutAllowance() public {
        uint256 id = _subscribe(alice, monthly, 0);
        _deposit(alice, 100 * USDC);
        _revoke(alice);
        vm.warp(_sub(id).paidThrough);
        assertEq(_renew(id), 1);
        assertEq(subs.creditOf(alice), 21 * USDC);
        assertEq(usdc.balanceOf(address(escrow)), 2 * PRICE);
        assertEq(usdc.balanceOf(address(subs)), 21 * USDC);
    }

    function test_renew_blacklistedSubscriberIsolated() public {
        uint256 a = _subscribe(alice, monthly, 0);
        uint256 b = _subscribe(bob, monthly, 0);
        _blacklist(bob);
        vm.warp(_sub(a).paidThrough);
        vm.expectEmit(address(subs));
        emit ISubscriptions.RenewalFailed(b, 1, ISubscriptions.FailureReason.TokenRejected);
        assertEq(subs.renew(_ids(b, a)), 1);
        assertEq(_sub(a).periodIndex, 1);
        assertEq(uint8(_sub(b).status), uint8(ISubscriptions.Status.PastDue));
        assertEq(subs.totalRevenue(), 3 * PRICE);
    }

    function test_renew_tokenPausedIsolatesEveryItem() public {
        uint256 a = _subscribe(alice, monthly, 0);
        uint256 b = _subscribe(bob, monthly, 0);
        _pauseUSDC();
        vm.warp(_sub(a).paidThrough);
        vm.expectEmit(address(subs));
        emit ISubscriptions.RenewalFailed(a, 1, ISubscriptions.FailureReason.TokenRejected);
        vm.expectEmit(address(subs));
        emit ISubscriptions.RenewalFailed(b, 1, ISubscriptions.FailureReason.TokenRejected);
        assertEq(subs.renew(_ids(a, b)), 0);
        assertEq(uint8(_sub(a).status), uint8(ISubscriptions.Status.PastDue));
        assertEq(uint8(_sub(b).status), uint8(ISubscriptions.Status.PastDue));

        _unpauseUSDC();
        assertEq(subs.renew(_ids(a, b)), 2);
        assertEq(subs.totalRevenue(), 4 * PRICE);
    }

    function test_renew_feeOnTransferToken_revertsBatch() public {
        FeeOnTransferToken fot = new FeeOnTransferToken();
        (Subscriptions s, SplitEscrow e, uint256 priced) = _deployPair(address(fot), PRICE);
        vm.prank(owner);
        uint256 free = s.createPlan(0, MONTH, GRACE);
        fot.mint(alice, 1_000 * USDC);
        vm.startPrank(alice);
        fot.approve(address(s), type(uint256).max);
        uint256 id = s.subscribe(free, 0); // price 0: no transfer, no fee
        s.changePlan(id, priced);
        vm.stopPrank();

        vm.warp(vm.getBlockTimestamp() + MONTH);
        vm.expectRevert(abi.encodeWithSelector(ISubscriptions.FeeOnTransferToken.selector, PRICE, PRICE - PRICE / 100));
        s.renew(_ids(id));
        assertEq(s.subscription(id).periodIndex, 0);
        assertEq(s.totalRevenue(), 0);
        assertEq(fot.balanceOf(address(e)), 0);
    }

    function test_renew_reentrantRenew_blocked() public {
        ReentrantToken token = new ReentrantToken();
        (Subscriptions s, SplitEscrow e, uint256 planId) = _deployPair(address(token), PRICE);
        token.mint(alice, 1_000 * USDC);
        vm.prank(alice);
        token.approve(address(s), type(uint256).max);
        vm.prank(alice);
        uint256 id = s.subscribe(planId, 0);

        vm.warp(s.subscription(id).paidThrough);
        token.arm(address(s), abi.encodeCall(ISubscriptions.renew, (_ids(id))));
        assertEq(s.renew(_ids(id)), 1);

        assertFalse(token.attackSucceeded());
        assertEq(
            token.attackReturn(), abi.encodeWithSelector(ReentrancyGuardTransient.ReentrancyGuardReentrantCall.selector)
        );
        assertEq(s.subscription(id).periodIndex, 1);
        assertEq(s.subscription(id).paidThrough, vm.getBlockTimestamp() + MONTH);
        assertEq(s.totalRevenue(), 2 * PRICE);
        assertEq(token.balanceOf(address(e)), 2 * PRICE);
        assertEq(token.balanceOf(alice), 1_000 * USDC - 2 * PRICE);
    }

    function test_renew_reentrantWithdraw_blocked() public {
        ReentrantToken token = new ReentrantToken();
        (Subscriptions s, SplitEscrow e, uint256 planId) = _deployPair(address(token), PRICE);
        token.mint(alice, 1_000 * USDC);
        vm.prank(alice);
        token.approve(address(s), type(uint256).max);
        vm.prank(alice);
        uint256 id = s.subscribe(planId, 0);
        // The token itself holds credit, so the re-entering withdraw would succeed without the guard.
        token.mint(address(token), 50 * USDC);
        vm.startPrank(address(token));
        token.approve(address(s), type(uint256).max);
        s.deposit(50 * USDC);
        vm.stopPrank();

        vm.warp(s.subscription(id).paidThrough);
        token.arm(address(s), abi.encodeCall(ISubscriptions.withdraw, (50 * USDC)));
        assertEq(s.renew(_ids(id)), 1);

        assertFalse(token.attackSucceeded());
        assertEq(
            token.attackReturn(), abi.encodeWithSelector(ReentrancyGuardTransient.ReentrancyGuardReentrantCall.selector)
        );
        assertEq(s.creditOf(address(token)), 50 * USDC);
        assertEq(token.balanceOf(address(s)), 50 * USDC);
        assertEq(token.balanceOf(address(e)), 2 * PRICE);
        assertEq(s.totalRevenue(), 2 * PRICE);
    }

    function test_renew_whilePaused_reverts() public {
        uint256 id = _subscribe(alice, monthly, 0);
        vm.prank(owner);
        subs.pause();
        vm.warp(_sub(id).paidThrough);
        vm.expectRevert(ISubscriptions.ChargingPaused.selector);
        _renew(id);
    }

    /* FUZZ */

    function testFuzz_renew_anchoredSchedule(uint256 seed, uint8 count) public {
        uint256 renewals = bound(count, 1, 24);
        uint256 t0 = vm.getBlockTimestamp();
        uint256 id = _subscribe(alice, monthly, 0);
        for (uint256 k = 1; k <= renewals; ++k) {
            uint256 late = bound(uint256(keccak256(abi.encode(seed, k))), 0, GRACE - 1);
            vm.warp(t0 + k * MONTH + late);
            assertEq(_renew(id), 1);
            assertEq(_sub(id).paidThrough, t0 + (k + 1) * MONTH);
            assertEq(_sub(id).periodIndex, k);
            (, uint256 start,) = subs.currentPeriod(id);
            assertEq(start, t0 + k * MONTH);
        }
        assertEq(subs.totalRevenue(), (renewals + 1) * PRICE);
        assertEq(usdc.balanceOf(address(escrow)), (renewals + 1) * PRICE);
    }

    /// A paused token refuses the batch's credit transfer to the escrow: the credit-paid item stays renewed, the
    /// wallet-paid item fails alone, and the credit reaches the escrow (and counts as revenue) once the token works.
    function test_renew_tokenPausedWithCredit_defersCreditTransfer() public {
        uint256 a = _subscribe(alice, monthly, 0);
        uint256 b = _subscribe(bob, monthly, 0);
        _deposit(alice, 100 * USDC);
        _pauseUSDC();
        vm.warp(_sub(a).paidThrough);
        vm.expectEmit(address(subs));
        emit ISubscriptions.CreditTransferDeferred(PRICE);
        assertEq(subs.renew(_ids(a, b)), 1);
        assertEq(_sub(a).periodIndex, 1);
        assertEq(uint8(_sub(b).status), uint8(ISubscriptions.Status.PastDue));
        assertEq(subs.creditOf(alice), 21 * USDC);
        assertEq(subs.creditOwedToEscrow(), PRICE);
        assertEq(subs.totalRevenue(), 2 * PRICE, "deferred credit is not revenue yet");
        assertEq(escrow.unallocated(), usdc.balanceOf(address(escrow)));

        _unpauseUSDC();
        vm.expectEmit(address(subs));
        emit ISubscriptions.CreditFlushed(PRICE);
        assertEq(subs.flushCreditToEscrow(), PRICE);
        assertEq(subs.creditOwedToEscrow(), 0);
        assertEq(subs.totalRevenue(), 3 * PRICE);
        assertEq(usdc.balanceOf(address(escrow)), 3 * PRICE);
        assertEq(subs.flushCreditToEscrow(), 0, "nothing left to flush");
    }

    /// Deferred credit also leaves with the next batch that uses credit.
    function test_renew_deferredCreditMovesWithNextCreditBatch() public {
        uint256 a = _subscribe(alice, monthly, 0);
        _deposit(alice, 200 * USDC);
        _pauseUSDC();
        vm.warp(_sub(a).paidThrough);
        assertEq(_renew(a), 1);
        assertEq(subs.creditOwedToEscrow(), PRICE);
        _unpauseUSDC();
        vm.warp(_sub(a).paidThrough);
        assertEq(_renew(a), 1);
        assertEq(subs.creditOwedToEscrow(), 0);
        assertEq(subs.totalRevenue(), 3 * PRICE);
        assertEq(usdc.balanceOf(address(escrow)), 3 * PRICE);
        assertEq(usdc.balanceOf(address(subs)), subs.creditOf(alice));
    }
}

/// @notice A token that hands control to the subscriber in the middle of a pull (issue #15, property 6). `renew` and
/// `chargeUsage` read a subscription's slot (or its usage ledger) before the pull and write it back after it; a
/// subscriber action made in between would be overwritten by that stale copy. Every subscriber action that writes
/// those slots (`cancel`, `setOverageCap`, `changePlan`) is `nonReentrant`, so it is refused inside the pull, and the
/// same action made after the batch sticks.
///
/// How these tests fail without the guard (checked by removing `nonReentrant` from `cancel` in a scratch copy): the
/// wallet's `cancel` inside the renewal's pull succeeds and writes `Cancelled`; the renewal then writes back the
/// subscription read before the pull, with the new period and status `Active`. The cancel is lost (and the next
/// period would be pulled too). The first assertion after the batch, "a cancel accepted during the pull was lost",
/// fails: the wallet's call succeeded but the status is `Active`. The same holds for `setOverageCap` (the charge
/// writes back the ledger with the old cap) and `changePlan` (the renewal clears the pending change).
contract SubscriptionsReentrancyTest is SubscriptionsHelpers {
    bytes32 internal constant ROOT = keccak256("usage-root");

    ReentrantPullToken internal token;
    ReentrantSubscriberWallet internal wallet;
    Subscriptions internal s;
    SplitEscrow internal e;
    uint256 internal planId;

    function setUp() public override {
        super.setUp();
        token = new ReentrantPullToken();
        (s, e, planId) = _deployPair(address(token), PRICE);
        wallet = new ReentrantSubscriberWallet();
        token.mint(address(wallet), 1_000 * USDC);
        wallet.execute(address(token), abi.encodeCall(token.approve, (address(s), type(uint256).max)));
        wallet.execute(address(token), abi.encodeCall(ReentrantPullToken.registerHook, ()));
    }

    function _walletSubscribe(uint256 plan_, uint256 cap) internal returns (uint256 id) {
        bytes memory ret = wallet.execute(address(s), abi.encodeCall(ISubscriptions.subscribe, (plan_, cap)));
        id = abi.decode(ret, (uint256));
    }

    function _assertRefusedByGuard() internal view {
        assertTrue(wallet.attackAttempted(), "the token called the wallet during the pull");
        assertFalse(wallet.attackSucceeded(), "the call from inside the pull was accepted");
        assertEq(
            wallet.attackReturn(),
            abi.encodeWithSelector(ReentrancyGuardTransient.ReentrancyGuardReentrantCall.selector)
        );
    }

    function test_reentrantCancel_duringRenewalPull_refused_cancelAfterBatchSticks() public {
        uint256 id = _walletSubscribe(planId, 0);
        vm.warp(s.subscription(id).paidThrough);
        wallet.arm(address(s), abi.encodeCall(ISubscriptions.cancel, (id)));
        assertEq(s.renew(_ids(id)), 1);

        // Whatever the guard does, a call that succeeded must not be undone by the renewal's write-back.
        if (wallet.attackSucceeded()) {
            assertEq(
                uint8(s.subscription(id).status),
                uint8(ISubscriptions.Status.Cancelled),
                "a cancel accepted during the pull was lost"
            );
        }
        _assertRefusedByGuard();
        assertEq(uint8(s.subscription(id).status), uint8(ISubscriptions.Status.Active));
        assertEq(s.subscription(id).periodIndex, 1);

        // The cancel made after the batch sticks: no further renewal, no further pull.
        wallet.execute(address(s), abi.encodeCall(ISubscriptions.cancel, (id)));
        assertEq(uint8(s.subscription(id).status), uint8(ISubscriptions.Status.Cancelled));
        vm.warp(s.subscription(id).paidThrough);
        assertEq(s.renew(_ids(id)), 0);
        assertEq(uint8(s.subscription(id).status), uint8(ISubscriptions.Status.Cancelled));
        assertEq(s.totalRevenue(), 2 * PRICE);
        assertEq(token.balanceOf(address(e)), 2 * PRICE);
        assertEq(token.balanceOf(address(wallet)), 1_000 * USDC - 2 * PRICE);
    }

    function test_reentrantChangePlan_duringRenewalPull_refused_changeAfterBatchSticks() public {
        vm.prank(owner);
        uint256 pro = s.createPlan(199 * USDC, MONTH, GRACE);
        uint256 id = _walletSubscribe(planId, 0);
        vm.warp(s.subscription(id).paidThrough);
        wallet.arm(address(s), abi.encodeCall(ISubscriptions.changePlan, (id, pro)));
        assertEq(s.renew(_ids(id)), 1);

        if (wallet.attackSucceeded()) {
            assertEq(s.nextPlanOf(id), pro, "a plan change accepted during the pull was lost");
        }
        _assertRefusedByGuard();
        assertEq(s.nextPlanOf(id), planId);
        assertFalse(s.subscription(id).planChangePending);

        wallet.execute(address(s), abi.encodeCall(ISubscriptions.changePlan, (id, pro)));
        assertEq(s.nextPlanOf(id), pro);
        vm.warp(s.subscription(id).paidThrough);
        assertEq(s.renew(_ids(id)), 1);
        assertEq(s.subscription(id).planId, pro);
        assertEq(token.balanceOf(address(e)), 2 * PRICE + 199 * USDC);
    }

    function test_reentrantSetOverageCap_duringChargePull_refused_capAfterBatchSticks() public {
        vm.prank(owner);
        uint256 free = s.createPlan(0, MONTH, GRACE);
        uint256 id = _walletSubscribe(free, 50 * USDC);
        ISubscriptions.Charge[] memory charges = new ISubscriptions.Charge[](1);
        charges[0] = ISubscriptions.Charge(id, 0, 10 * USDC, ROOT);
        wallet.arm(address(s), abi.encodeCall(ISubscriptions.setOverageCap, (id, 0)));
        vm.prank(keeper);
        assertEq(s.chargeUsage(charges), 1);

        if (wallet.attackSucceeded()) {
            assertEq(s.usageLedger(id).overageCap, 0, "a cap lowered during the pull was lost");
        }
        _assertRefusedByGuard();
        assertEq(s.usageLedger(id).overageCap, 50 * USDC);
        assertEq(s.chargedInPeriod(id, 0), 10 * USDC);

        // The lowering made after the batch sticks: nothing more is collected for the period.
        wallet.execute(address(s), abi.encodeCall(ISubscriptions.setOverageCap, (id, 0)));
        (bool known, uint256 cap) = s.overageCapOf(id, 0);
        assertTrue(known);
        assertEq(cap, 0);
        charges[0].cumulativeOverage = 40 * USDC;
        vm.prank(keeper);
        assertEq(s.chargeUsage(charges), 0);
        assertEq(s.chargedInPeriod(id, 0), 10 * USDC);
        assertEq(token.balanceOf(address(e)), 10 * USDC);
    }

    /// The same three actions attempted from inside a renewal pull and a charge pull: all refused, none changes
    /// anything.
    function test_reentrantSubscriberActions_refusedInEveryPull() public {
        vm.prank(owner);
        uint256 pro = s.createPlan(199 * USDC, MONTH, GRACE);
        bytes[3] memory attacks = [
            abi.encodeCall(ISubscriptions.cancel, (uint256(1))),
            abi.encodeCall(ISubscriptions.setOverageCap, (uint256(1), uint256(0))),
            abi.encodeCall(ISubscriptions.changePlan, (uint256(1), pro))
        ];
        uint256 id = _walletSubscribe(planId, 50 * USDC);
        assertEq(id, 1);
        for (uint256 i; i < attacks.length; ++i) {
            vm.warp(s.subscription(id).paidThrough);
            wallet.arm(address(s), attacks[i]);
            assertEq(s.renew(_ids(id)), 1);
            _assertRefusedByGuard();

            ISubscriptions.Charge[] memory charges = new ISubscriptions.Charge[](1);
            charges[0] = ISubscriptions.Charge(id, s.subscription(id).periodIndex, 5 * USDC, ROOT);
            wallet.arm(address(s), attacks[i]);
            vm.prank(keeper);
            assertEq(s.chargeUsage(charges), 1);
            _assertRefusedByGuard();

            ISubscriptions.Subscription memory sub = s.subscription(id);
            assertEq(uint8(sub.status), uint8(ISubscriptions.Status.Active));
            assertFalse(sub.planChangePending);
            assertEq(s.usageLedger(id).overageCap, 50 * USDC);
        }
    }
}
