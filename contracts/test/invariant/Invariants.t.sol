// SPDX-License-Identifier: MIT
pragma solidity 0.8.30;

import {Test} from "forge-std/Test.sol";
import {StdInvariant} from "forge-std/StdInvariant.sol";

import {Subscriptions} from "../../src/Subscriptions.sol";
import {SplitEscrow} from "../../src/SplitEscrow.sol";
import {ISubscriptions} from "../../src/interfaces/ISubscriptions.sol";

import {Handler, Deployment, PlanSpec, Mismatch} from "./Handler.sol";
import {DeployUSDC, USDCDeployment} from "../usdc/DeployUSDC.sol";
import {IFiatToken} from "../usdc/IFiatToken.sol";

/// @notice Invariants of Subscriptions + SplitEscrow under random sequences of subscriber, keeper, owner,
/// recipient and USDC-role (minter, blacklister) actions (see {Handler}), on Circle's USDC. Mirrors the fixture of
/// Base.t.sol.
contract InvariantsTest is Test, DeployUSDC {
    uint256 internal constant USDC = 1e6;
    uint256 internal constant MONTH = 30 days;
    uint256 internal constant WEEK = 7 days;
    uint256 internal constant GRACE = 3 days;
    uint256 internal constant CHARGE_WINDOW = 2 days;
    uint256 internal constant SPLIT_DELAY = 7 days;
    uint256 internal constant MAX_HOLD = 30 days;

    address internal owner = makeAddr("owner");
    address internal keeper = makeAddr("keeper");

    IFiatToken internal usdc;
    Subscriptions internal subs;
    SplitEscrow internal escrow;
    Handler internal handler;

    function setUp() public {
        vm.warp(1_700_000_000);
        USDCDeployment memory usdcDeployment = deployUSDC();
        usdc = usdcDeployment.token;
        escrow = new SplitEscrow(address(usdc), owner, keeper, SPLIT_DELAY, MAX_HOLD);
        subs = new Subscriptions(address(usdc), address(escrow), owner, keeper, CHARGE_WINDOW);

        PlanSpec[] memory plans = new PlanSpec[](3);
        vm.startPrank(owner);
        escrow.setSubscriptions(address(subs));
        plans[0] = PlanSpec(subs.createPlan(79 * USDC, MONTH, GRACE), 79 * USDC, MONTH, GRACE); // monthly
        plans[1] = PlanSpec(subs.createPlan(0, MONTH, GRACE), 0, MONTH, GRACE); // pay-as-you-go
        plans[2] = PlanSpec(subs.createPlan(9 * USDC, WEEK, 1 days), 9 * USDC, WEEK, 1 days); // weekly
        vm.stopPrank();

        handler = new Handler(
            Deployment(usdcDeployment, subs, escrow, owner, keeper, CHARGE_WINDOW, SPLIT_DELAY, MAX_HOLD), plans
        );

        // A starting state through the handler, so its model sees it: two splits (in force once the change delay
        // has run) and one subscription each.
        handler.createSplit(3, 0, 1, 1); // three recipients
        handler.createSplit(2, 2, 7, 0); // two recipients
        vm.warp(vm.getBlockTimestamp() + SPLIT_DELAY + 1);
        uint256[5] memory startPlan = [uint256(0), 2, 1, 2, 0]; // monthly, weekly, pay-as-you-go, weekly, monthly
        for (uint256 i; i < handler.N_SUBSCRIBERS(); ++i) {
            handler.subscribe(i, startPlan[i], 40 * USDC + i * 13 * USDC);
        }

        bytes4[] memory selectors = new bytes4[](43);
        selectors[0] = Handler.subscribe.selector;
        selectors[1] = Handler.cancel.selector;
        selectors[2] = Handler.setOverageCap.selector;
        selectors[3] = Handler.changePlan.selector;
        selectors[4] = Handler.deposit.selector;
        selectors[5] = Handler.withdraw.selector;
        selectors[6] = Handler.mintTo.selector;
        selectors[7] = Handler.approveSubscriptions.selector;
        selectors[8] = Handler.spendWallet.selector;
        selectors[9] = Handler.renew.selector;
        selectors[10] = Handler.chargeUsage.selector;
        selectors[11] = Handler.blacklist.selector;
        selectors[12] = Handler.unBlacklist.selector;
        selectors[13] = Handler.warp.selector;
        selectors[14] = Handler.createSplit.selector;
        selectors[15] = Handler.proposeSplitChange.selector;
        selectors[16] = Handler.cancelSplitChange.selector;
        selectors[17] = Handler.settle.selector;
        selectors[18] = Handler.claim.selector;
        selectors[19] = Handler.claimMany.selector;
        selectors[20] = Handler.setPayoutAddress.selector;
        selectors[21] = Handler.hold.selector;
        selectors[22] = Handler.release.selector;
        selectors[23] = Handler.refund.selector;
        selectors[24] = Handler.sweepSurplus.selector;
        selectors[25] = Handler.mistakenTransfer.selector;
        // Weight the money paths (a selector listed k times is picked k times as often): time passes, renewals,
        // usage charges, settlements and claims happen more often than configuration changes.
        selectors[26] = Handler.warp.selector;
        selectors[27] = Handler.warp.selector;
        selectors[28] = Handler.warp.selector;
        selectors[29] = Handler.renew.selector;
        selectors[30] = Handler.renew.selector;
        selectors[31] = Handler.renew.selector;
        selectors[32] = Handler.chargeUsage.selector;
        selectors[33] = Handler.chargeUsage.selector;
        selectors[34] = Handler.chargeUsage.selector;
        selectors[35] = Handler.settle.selector;
        selectors[36] = Handler.settle.selector;
        selectors[37] = Handler.claim.selector;
        selectors[38] = Handler.subscribe.selector;
        // Pauses: resumed twice as often as started, so that most of a run has charging on.
        selectors[39] = Handler.pause.selector;
        selectors[40] = Handler.unpause.selector;
        selectors[41] = Handler.unpause.selector;
        selectors[42] = Handler.flushCreditToEscrow.selector;
        targetSelector(StdInvariant.FuzzSelector({addr: address(handler), selectors: selectors}));
        targetContract(address(handler));
    }

    /* ------------------------------------------------------------------------------------------------- */

    function _noMismatch(Mismatch m, string memory what) internal view {
        uint256 count = handler.mismatchCount(m);
        if (count != 0) assertEq(count, 0, string.concat(what, " mismatch: ", handler.firstMismatch(uint256(m))));
    }

    /// @notice 1. The escrow always holds what it owes: unallocated revenue plus every claimable balance. Anything
    /// above that is exactly the stray tokens sent to it and not yet swept.
    function invariant_escrowSolvent() public view {
        uint256 balance = usdc.balanceOf(address(escrow));
        uint256 owed = escrow.unallocated() + escrow.totalClaimable();
        assertGe(balance, owed, "escrow balance < unallocated + totalClaimable");
        assertEq(balance - owed, handler.ghostStray() - handler.ghostSwept(), "escrow surplus != unswept stray tokens");
        assertEq(escrow.surplus(), balance - owed, "surplus()");
        _noMismatch(Mismatch.Sweep, "sweep");
    }

    /// @notice 2. Subscriptions holds every subscriber's prepaid credit (and nothing else), and each credit is what
    /// deposits, credit refunds, withdrawals and collections say it should be.
    function invariant_subscriptionsHoldsCredit() public view {
        uint256 sum;
        for (uint256 i; i < handler.N_SUBSCRIBERS(); ++i) {
            address s = handler.subscriberAt(i);
            uint256 credit = subs.creditOf(s);
            assertEq(credit, handler.ghostCredit(s), "creditOf differs from the modelled credit");
            sum += credit;
        }
        uint256 balance = usdc.balanceOf(address(subs));
        assertGe(balance, sum, "Subscriptions balance < sum of credits");
        assertEq(balance, sum, "Subscriptions holds tokens that are nobody's credit");
    }

    /// @notice 3. totalClaimable is the sum of the recipients' claimable balances.
    function invariant_totalClaimableIsSumOfBalances() public view {
        uint256 sum;
        for (uint256 i; i < handler.N_RECIPIENTS(); ++i) {
            sum += escrow.claimableOf(handler.recipientAt(i));
        }
        assertEq(escrow.totalClaimable(), sum, "totalClaimable != sum of claimableOf");
    }

    /// @notice 4. Usage charged for a period never exceeds the highest cumulative overage the keeper posted for it
    /// (its cap: invariant_usageChargedWithinCapOfItsPeriod), and every paid period was collected exactly once at
    /// exactly the price of the plan it runs on.
    function invariant_chargesNeverExceedPricePlusCap() public view {
        uint256 pairs = handler.pairCount();
        for (uint256 i; i < pairs; ++i) {
            (uint256 id, uint256 k) = handler.pair(i);
            uint256 charged = handler.ghostCharged(id, k);
            assertLe(charged, handler.ghostMaxCumulative(id, k), "usage charged above the posted overage");
        }
        uint256 n = handler.subCount();
        for (uint256 id = 1; id <= n; ++id) {
            uint256 paidPeriods = uint256(subs.subscription(id).periodIndex) + 1;
            for (uint256 k; k < paidPeriods; ++k) {
                assertEq(handler.ghostPeriodFeeCount(id, k), 1, "period fee collected other than once");
                assertEq(handler.ghostPeriodFee(id, k), handler.ghostPeriodPrice(id, k), "period fee != plan price");
            }
            assertEq(handler.ghostPeriodFeeCount(id, paidPeriods), 0, "fee collected for an unpaid period");
        }
        _noMismatch(Mismatch.Renewal, "renewal");
        _noMismatch(Mismatch.Charge, "charge");
        _noMismatch(Mismatch.Collection, "collection");
    }

    /// @notice 5. A settlement id applies at most once, and each settlement credits exactly its amounts, split by
    /// the version in force for its whole epoch.
    function invariant_settlementAppliesOnce() public view {
        uint256 n = handler.usedSettlementCount();
        for (uint256 i; i < n; ++i) {
            uint256 sid = handler.usedSettlementId(i);
            assertEq(handler.settlementApplied(sid), 1, "settlement applied more than once");
            assertEq(handler.settlementCredits(sid), handler.settlementAmounts(sid), "credits != settlement amounts");
            assertTrue(escrow.settlementUsed(sid), "applied settlement not marked used");
        }
        _noMismatch(Mismatch.Settlement, "settlement");
        _noMismatch(Mismatch.Distribution, "distribution");
    }

    /// @notice 6. Tokens leave the escrow only to recipients' payout addresses (claims), subscribers (wallet
    /// refunds), Subscriptions (credit refunds) or the sweep destination; tokens leave Subscriptions only to the
    /// escrow (revenue) or to subscribers (withdrawals). Each flow matches the operations behind it.
    function invariant_fundsOnlyLeaveToAllowedDestinations() public view {
        assertEq(handler.escrowOutElsewhere(), 0, "escrow paid a disallowed address");
        assertEq(handler.subsOutElsewhere(), 0, "Subscriptions paid a disallowed address");
        _noMismatch(Mismatch.EscrowOutflow, "escrow outflow");
        _noMismatch(Mismatch.SubsOutflow, "subscriptions outflow");

        assertEq(handler.escrowOutToPayouts(), handler.ghostClaimed(), "escrow -> payouts != claims");
        assertEq(handler.escrowOutToSubscribers(), handler.ghostRefundedToWallet(), "escrow -> subscribers != refunds");
        assertEq(handler.escrowOutToSubscriptions(), handler.ghostRefundedToCredit(), "escrow -> subs != credit refunds");
        assertEq(handler.escrowOutToTreasury(), handler.ghostSwept(), "escrow -> treasury != sweeps");
        assertEq(handler.subsOutToEscrow(), handler.ghostCreditUsed(), "subs -> escrow != credit used by pulls");
        assertEq(handler.subsOutToSubscribers(), handler.ghostWithdrawn(), "subs -> subscribers != withdrawals");

        // Every token is accounted for: balances are exactly the recorded inflows minus outflows.
        assertEq(usdc.balanceOf(address(escrow)), handler.escrowIn() - handler.escrowOut(), "untracked escrow flow");
        assertEq(usdc.balanceOf(address(subs)), handler.subsIn() - handler.subsOut(), "untracked subs flow");
        _noMismatch(Mismatch.Claim, "claim");
        _noMismatch(Mismatch.Refund, "refund");
    }

    /// @notice 7. Revenue is conserved: what is unallocated plus what was settled plus what was refunded is all
    /// the revenue Subscriptions ever sent to the escrow.
    function invariant_revenueAccounting() public view {
        assertEq(subs.totalRevenue(), handler.ghostRevenue(), "totalRevenue != collected amounts");
        assertEq(
            escrow.unallocated() + handler.ghostSettled() + handler.ghostRefunded(),
            subs.totalRevenue(),
            "unallocated + settled + refunded != totalRevenue"
        );
    }

    /* ---------------------------------------- model agreement ---------------------------------------- */

    /// @notice Every subscription's state (status, period, paid-through, plan, pending change, cap, ledger) matches
    /// the handler's independent model.
    function invariant_subscriptionStateMatchesModel() public view {
        uint256 n = handler.subCount();
        assertEq(subs.subscriptionCount(), n, "subscriptionCount");
        for (uint256 id = 1; id <= n; ++id) {
            ISubscriptions.Subscription memory s = subs.subscription(id);
            Handler.SubModel memory m = handler.model(id);
            assertEq(s.subscriber, m.subscriber, "subscriber");
            assertEq(uint256(s.status), m.status, "status");
            assertEq(s.periodIndex, m.periodIndex, "periodIndex");
            assertEq(s.paidThrough, m.paidThrough, "paidThrough");
            assertEq(s.planId, m.planId, "planId");
            assertEq(s.planChangePending, m.nextPlan != 0, "planChangePending");
            assertEq(subs.nextPlanOf(id), m.nextPlan != 0 ? m.nextPlan : m.planId, "nextPlanOf");
            ISubscriptions.UsageLedger memory ledger = subs.usageLedger(id);
            assertEq(ledger.period, m.ledgerPeriod, "ledger period");
            assertEq(ledger.overageCap, m.cap, "overageCap");
            assertEq(ledger.chargedInPeriod, handler.ghostCharged(id, ledger.period), "chargedInPeriod");
            if (ledger.period != 0) {
                assertEq(ledger.previousOverageCap, handler.capOf(id, ledger.period - 1), "previousOverageCap");
                assertEq(
                    ledger.chargedInPreviousPeriod, handler.ghostCharged(id, ledger.period - 1), "chargedInPrevious"
                );
            }
        }
        _noMismatch(Mismatch.SubscriptionModel, "subscription model");
    }

    /// @notice The pause flag and the log of pauses match the handler's model, nothing was pulled while paused, and
    /// time paused does not count against grace periods: every subscription's entitlement and paused time since
    /// its paid-through match the model (renewals, lapses and charge windows are checked against it as they happen).
    function invariant_pauseLogMatchesModel() public view {
        assertEq(subs.chargingPaused(), handler.ghostPaused(), "chargingPaused");
        ISubscriptions.PauseSpan[] memory spans = subs.pauses();
        assertEq(spans.length, handler.pauseCount(), "number of pauses");
        for (uint256 i; i < spans.length; ++i) {
            Handler.PauseModel memory p = handler.pauseAt(i);
            assertEq(spans[i].start, p.start, "pause start");
            assertEq(spans[i].end, p.end, "pause end");
        }
        uint256 n = handler.subCount();
        for (uint256 id = 1; id <= n; ++id) {
            uint256 paidThrough = subs.subscription(id).paidThrough;
            assertEq(subs.pausedSince(paidThrough), handler.pausedSinceModel(paidThrough), "pausedSince");
            assertEq(subs.isEntitled(id), handler.entitledModel(id), "isEntitled differs from the model");
        }
        _noMismatch(Mismatch.Pause, "pause");
    }

    /// @notice Claimable balances, holds and split versions match the handler's model.
    function invariant_escrowStateMatchesModel() public view {
        for (uint256 i; i < handler.N_RECIPIENTS(); ++i) {
            address r = handler.recipientAt(i);
            assertEq(escrow.claimableOf(r), handler.ghostClaimable(r), "claimableOf differs from the model");
            assertEq(escrow.payoutOf(r), handler.payoutOf(r), "payoutOf");
        }
        uint256 splits = handler.splitCount();
        assertEq(escrow.splitCount(), splits, "splitCount");
        for (uint256 s = 1; s <= splits; ++s) {
            assertEq(escrow.latestVersion(s), handler.latestVersionModel(s), "latestVersion");
            (bool found, uint256 version) = handler.versionInForce(s, vm.getBlockTimestamp());
            if (found) {
                assertEq(escrow.versionAt(s, vm.getBlockTimestamp()), version, "versionAt(now)");
            } else {
                // A new split before its delay has run: no version is in force yet.
                try escrow.versionAt(s, vm.getBlockTimestamp()) returns (uint256 v) {
                    assertTrue(false, string.concat("versionAt(now) of a split not yet in force: ", vm.toString(v)));
                } catch {}
            }
        }
        _noMismatch(Mismatch.Hold, "hold");
        _noMismatch(Mismatch.Split, "split");
    }

    /* ---------------------------------------- issue #15 ---------------------------------------- */

    /// @notice No wallet is ever refunded more than it paid (plan fees and usage charges, from its wallet or its
    /// credit); per subscription and period, refunds never exceed what was paid for that period, and the escrow's
    /// records of refunds and of what is left to refund match the model.
    function invariant_refundsNeverExceedPaid() public view {
        uint256 refundedToAll;
        for (uint256 i; i < handler.N_SUBSCRIBERS(); ++i) {
            address s = handler.subscriberAt(i);
            uint256 refunded = handler.ghostRefundedTo(s);
            assertLe(refunded, handler.ghostPaidBy(s), "a wallet was refunded more than it paid");
            refundedToAll += refunded;
        }
        assertEq(refundedToAll, handler.ghostRefunded(), "refunds to someone who is not a subscriber");
        uint256 pairs = handler.refundPairCount();
        for (uint256 i; i < pairs; ++i) {
            (uint256 id, uint256 k) = handler.refundPair(i);
            uint256 refunded = handler.ghostRefundedFor(id, k);
            uint256 paid = handler.ghostPeriodFee(id, k) + handler.ghostCharged(id, k);
            assertLe(refunded, paid, "a period was refunded more than was paid for it");
            assertEq(escrow.refundedFor(id, k), refunded, "refundedFor differs from the refunds made");
        }
        // Includes every refund the model refused (amount above what is left, a used refund id) that the escrow
        // accepted, and escrow.refundable differing from the model when a refund was tried.
        _noMismatch(Mismatch.Refund, "refund");
    }

    /// @notice Usage charged for a period never exceeds the cap that applied to that period when it was charged, by
    /// the model of cap changes (a change applies from the period in progress, never to one that ended). The
    /// contract's caps of the periods its ledger holds are compared with the model in
    /// invariant_subscriptionStateMatchesModel.
    function invariant_usageChargedWithinCapOfItsPeriod() public view {
        uint256 pairs = handler.pairCount();
        for (uint256 i; i < pairs; ++i) {
            (uint256 id, uint256 k) = handler.pair(i);
            assertLe(handler.ghostCharged(id, k), handler.ghostCapAtCharge(id, k), "usage charged above its period's cap");
        }
        _noMismatch(Mismatch.Charge, "charge");
    }

    /// @notice Epochs are settled consecutively and never overlap, and no revenue was ever credited under a split
    /// version that was not in force for the whole epoch: for every split credited, the version used took effect
    /// at or before the epoch's start and no later version of the split took effect before the epoch's end.
    function invariant_settlementsUseOneVersionPerEpoch() public view {
        uint256 epochs = handler.epochCount();
        uint256 previousEnd;
        for (uint256 i; i < epochs; ++i) {
            Handler.EpochRecord memory e = handler.epochAt(i);
            assertLt(e.start, e.end, "an empty epoch was settled");
            assertLe(e.end, e.settledAt, "an epoch ending in the future was settled");
            if (i != 0) assertEq(e.start, previousEnd, "epochs not consecutive");
            previousEnd = e.end;
        }
        assertEq(escrow.lastEpochEnd(), previousEnd, "lastEpochEnd is not the end of the last settled epoch");

        uint256 credited = handler.creditedCount();
        for (uint256 i; i < credited; ++i) {
            Handler.CreditedRecord memory c = handler.creditedAt(i);
            uint256 effectiveAt = handler.versionEffectiveAt(c.splitId, c.version);
            (,,, uint256 onChain) = escrow.splitVersion(c.splitId, c.version);
            assertEq(onChain, effectiveAt, "effectiveAt of a used version differs from the model");
            assertLe(effectiveAt, c.epochStart, "credited under a version not in force at the epoch's start");
            uint256 versions = handler.versionCount(c.splitId);
            for (uint256 v = c.version + 1; v < versions; ++v) {
                assertGe(
                    handler.versionEffectiveAt(c.splitId, v), c.epochEnd, "a later version took effect inside the epoch"
                );
            }
        }
        _noMismatch(Mismatch.Settlement, "settlement");
    }

    /// @notice Renewal and usage batches never revert as a whole: each item is isolated.
    function invariant_pullBatchesNeverRevert() public view {
        _noMismatch(Mismatch.BatchReverted, "batch");
    }
}
