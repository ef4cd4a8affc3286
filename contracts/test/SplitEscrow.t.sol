// SPDX-License-Identifier: MIT
pragma solidity 0.8.30;

import {Vm} from "forge-std/Vm.sol";
import {Ownable} from "@openzeppelin/contracts/access/Ownable.sol";

import {BaseTest} from "./Base.t.sol";
import {SplitEscrow} from "../src/SplitEscrow.sol";
import {Subscriptions} from "../src/Subscriptions.sol";
import {ISplitEscrow} from "../src/interfaces/ISplitEscrow.sol";
import {ISubscriptions} from "../src/interfaces/ISubscriptions.sol";
import {IFiatToken} from "./usdc/IFiatToken.sol";
import {GasGuzzlerToken} from "./mocks/GasGuzzlerToken.sol";

contract SplitEscrowTest is BaseTest {
    uint256 internal constant PRICE = 79 * USDC;
    bytes32 internal constant ROOT = keccak256("usage");

    uint256 internal _payerNonce;

    /* HELPERS */

    function _assertSolvent() internal view {
        assertGe(
            usdc.balanceOf(address(escrow)),
            escrow.unallocated() + escrow.totalClaimable(),
            "escrow insolvent: balance < unallocated + totalClaimable"
        );
    }

    /// @dev Brings exactly `amount` of new unallocated revenue through Subscriptions (a fresh subscriber to a fresh
    /// plan priced `amount`).
    function _revenue(uint256 amount) internal {
        vm.prank(owner);
        uint256 planId = subs.createPlan(amount, MONTH, GRACE);
        address payer = makeAddr(string(abi.encodePacked("payer", vm.toString(++_payerNonce))));
        _fund(payer, amount);
        _subscribe(payer, planId, 0);
    }

    function _a1(address a) internal pure returns (address[] memory r) {
        r = new address[](1);
        r[0] = a;
    }

    function _a2(address a, address b) internal pure returns (address[] memory r) {
        r = new address[](2);
        (r[0], r[1]) = (a, b);
    }

    function _a3(address a, address b, address c) internal pure returns (address[] memory r) {
        r = new address[](3);
        (r[0], r[1], r[2]) = (a, b, c);
    }

    function _b1(uint16 a) internal pure returns (uint16[] memory r) {
        r = new uint16[](1);
        r[0] = a;
    }

    function _b2(uint16 a, uint16 b) internal pure returns (uint16[] memory r) {
        r = new uint16[](2);
        (r[0], r[1]) = (a, b);
    }

    function _b3(uint16 a, uint16 b, uint16 c) internal pure returns (uint16[] memory r) {
        r = new uint16[](3);
        (r[0], r[1], r[2]) = (a, b, c);
    }

    function _u1(uint256 a) internal pure returns (uint256[] memory r) {
        r = new uint256[](1);
        r[0] = a;
    }

    function _u2(uint256 a, uint256 b) internal pure returns (uint256[] memory r) {
        r = new uint256[](2);
        (r[0], r[1]) = (a, b);
    }

    function _wide(uint16[] memory bps) internal pure returns (uint256[] memory r) {
        r = new uint256[](bps.length);
        for (uint256 i; i < bps.length; ++i) {
            r[i] = bps[i];
        }
    }

    function _many(uint256 n, uint256 salt) internal pure returns (address[] memory r, uint16[] memory b) {
        r = new address[](n);
        b = new uint16[](n);
        uint256 left = 10_000;
        for (uint256 i; i < n; ++i) {
            r[i] = address(uint160(uint256(keccak256(abi.encode("recipient", salt, i)))));
            b[i] = uint16(i == n - 1 ? left : 10_000 / n);
            left -= b[i];
        }
    }

    /// @dev Settles `amount` to `splitId` for the next consecutive epoch, ending at `epochEnd` (the first epoch
    /// starts a second before it).
    function _settleAt(uint256 settlementId, uint256 splitId, uint256 amount, uint256 epochEnd) internal {
        uint256 start = escrow.lastEpochEnd();
        if (start == 0) start = epochEnd - 1;
        vm.prank(keeper);
        escrow.settle(settlementId, start, epochEnd, _u1(splitId), _u1(amount), ROOT);
    }

    /// @dev An empty settlement (no split) for the next consecutive epoch, ending at `epochEnd`: how the keeper
    /// moves the epochs past a split change when it has nothing to credit.
    function _skipTo(uint256 settlementId, uint256 epochEnd) internal {
        uint256 start = escrow.lastEpochEnd();
        if (start == 0) start = epochEnd - 1;
        vm.prank(keeper);
        escrow.settle(settlementId, start, epochEnd, new uint256[](0), new uint256[](0), ROOT);
    }

    function _settleEpoch(uint256 settlementId, uint256 start, uint256 end, uint256 splitId, uint256 amount)
        internal
    {
        vm.prank(keeper);
        escrow.settle(settlementId, start, end, _u1(splitId), _u1(amount), ROOT);
    }

    function _propose(uint256 splitId, address[] memory r, uint16[] memory b, uint256 ri)
        internal
        returns (uint256 version)
    {
        vm.prank(owner);
        version = escrow.proposeSplitChange(splitId, r, b, ri);
    }

    function _hold(address who, uint256 until) internal {
        vm.prank(owner);
        escrow.hold(who, until, keccak256("dispute"));
    }

    /// @dev Split 1 (creator/platform/host 70/20/10) with 790 USDC settled to it (10 subscriptions of $79).
    function _fundedSplit() internal returns (uint256 splitId) {
        splitId = _createSplit();
        for (uint256 i; i < 10; ++i) {
            _subscribe(i % 2 == 0 ? alice : bob, monthly, 0);
        }
        _settle(1, splitId, 790 * USDC);
    }

    function _assertVersion(
        uint256 splitId,
        uint256 version,
        address[] memory r,
        uint16[] memory b,
        uint256 ri,
        uint256 effectiveAt
    ) internal view {
        (address[] memory gr, uint16[] memory gb, uint256 gri, uint256 geff) = escrow.splitVersion(splitId, version);
        assertEq(gr, r, "recipients");
        assertEq(gb.length, b.length, "bps length");
        for (uint256 i; i < b.length; ++i) {
            assertEq(gb[i], b[i], "bps");
        }
        assertEq(gri, ri, "remainder index");
        assertEq(geff, effectiveAt, "effectiveAt");
    }

    /* CONSTRUCTOR, SUBSCRIPTIONS, KEEPER */

    function test_constructor_setsState() public view {
        assertEq(escrow.token(), address(usdc));
        assertEq(escrow.owner(), owner);
        assertEq(escrow.keeper(), keeper);
        assertEq(escrow.subscriptions(), address(subs));
        assertEq(escrow.splitChangeDelay(), SPLIT_DELAY);
        assertEq(escrow.maxHold(), MAX_HOLD);
        assertEq(escrow.splitCount(), 0);
        assertEq(escrow.unallocated(), 0);
        assertEq(escrow.totalClaimable(), 0);
        assertEq(escrow.surplus(), 0);
    }

    function test_constructor_emitsKeeperSet() public {
        vm.expectEmit();
        emit ISplitEscrow.KeeperSet(keeper);
        new SplitEscrow(address(usdc), owner, keeper, SPLIT_DELAY, MAX_HOLD);
    }

    function test_constructor_revertsOnZeroToken() public {
        vm.expectRevert(ISplitEscrow.ZeroAddress.selector);
        new SplitEscrow(address(0), owner, keeper, SPLIT_DELAY, MAX_HOLD);
    }

    function test_constructor_revertsOnZeroKeeper() public {
        vm.expectRevert(ISplitEscrow.ZeroAddress.selector);
        new SplitEscrow(address(usdc), owner, address(0), SPLIT_DELAY, MAX_HOLD);
    }

    function test_constructor_revertsOnZeroOwner() public {
        vm.expectRevert(abi.encodeWithSelector(Ownable.OwnableInvalidOwner.selector, address(0)));
        new SplitEscrow(address(usdc), address(0), keeper, SPLIT_DELAY, MAX_HOLD);
    }

    function test_setSubscriptions_setsOnceAndEmits() public {
        SplitEscrow fresh = new SplitEscrow(address(usdc), owner, keeper, SPLIT_DELAY, MAX_HOLD);
        // A Subscriptions contract wired to the fresh escrow (the fixture's pays the fixture's escrow).
        Subscriptions freshSubs = new Subscriptions(address(usdc), address(fresh), owner, keeper, CHARGE_WINDOW);
        assertEq(fresh.subscriptions(), address(0));
        assertEq(fresh.unallocated(), 0, "no revenue source yet");
        vm.expectEmit(address(fresh));
        emit ISplitEscrow.SubscriptionsSet(address(freshSubs));
        vm.prank(owner);
        fresh.setSubscriptions(address(freshSubs));
        assertEq(fresh.subscriptions(), address(freshSubs));

        // Set once: not even another correctly wired contract replaces it.
        Subscriptions another = new Subscriptions(address(usdc), address(fresh), owner, keeper, CHARGE_WINDOW);
        vm.prank(owner);
        vm.expectRevert(ISplitEscrow.SubscriptionsAlreadySet.selector);
        fresh.setSubscriptions(address(another));
        assertEq(fresh.subscriptions(), address(freshSubs));
    }

    function test_setSubscriptions_revertsWhenItPaysAnotherEscrow() public {
        SplitEscrow fresh = new SplitEscrow(address(usdc), owner, keeper, SPLIT_DELAY, MAX_HOLD);
        // The fixture's Subscriptions pays the fixture's escrow: its revenue is not the fresh escrow's to settle.
        vm.prank(owner);
        vm.expectRevert(
            abi.encodeWithSelector(ISplitEscrow.SubscriptionsMismatch.selector, address(escrow), address(usdc))
        );
        fresh.setSubscriptions(address(subs));
        assertEq(fresh.subscriptions(), address(0));
        assertEq(fresh.unallocated(), 0);
    }

    function test_setSubscriptions_revertsWhenItUsesAnotherToken() public {
        SplitEscrow fresh = new SplitEscrow(address(usdc), owner, keeper, SPLIT_DELAY, MAX_HOLD);
        IFiatToken otherToken = deployUSDC().token; // another USDC deployment
        Subscriptions otherSubs = new Subscriptions(address(otherToken), address(fresh), owner, keeper, CHARGE_WINDOW);
        vm.prank(owner);
        vm.expectRevert(
            abi.encodeWithSelector(ISplitEscrow.SubscriptionsMismatch.selector, address(fresh), address(otherToken))
        );
        fresh.setSubscriptions(address(otherSubs));

        // Both wrong.
        Subscriptions bothWrong = new Subscriptions(address(otherToken), address(escrow), owner, keeper, CHARGE_WINDOW);
        vm.prank(owner);
        vm.expectRevert(
            abi.encodeWithSelector(ISplitEscrow.SubscriptionsMismatch.selector, address(escrow), address(otherToken))
        );
        fresh.setSubscriptions(address(bothWrong));
        assertEq(fresh.subscriptions(), address(0));

        // The refusals set nothing: the right one is still accepted.
        Subscriptions right = new Subscriptions(address(usdc), address(fresh), owner, keeper, CHARGE_WINDOW);
        vm.prank(owner);
        fresh.setSubscriptions(address(right));
        assertEq(fresh.subscriptions(), address(right));
    }

    function test_constructor_revertsOnDurationsBeyondUint32() public {
        uint256 tooLong = uint256(type(uint32).max) + 1;
        vm.expectRevert(abi.encodeWithSelector(ISplitEscrow.InvalidDuration.selector, tooLong));
        new SplitEscrow(address(usdc), owner, keeper, tooLong, MAX_HOLD);
        vm.expectRevert(abi.encodeWithSelector(ISplitEscrow.InvalidDuration.selector, tooLong));
        new SplitEscrow(address(usdc), owner, keeper, SPLIT_DELAY, tooLong);
        vm.expectRevert(abi.encodeWithSelector(ISplitEscrow.InvalidDuration.selector, type(uint256).max));
        new SplitEscrow(address(usdc), owner, keeper, SPLIT_DELAY, type(uint256).max);

        // 2^32 - 1 is the largest accepted for both.
        SplitEscrow longest = new SplitEscrow(address(usdc), owner, keeper, type(uint32).max, type(uint32).max);
        assertEq(longest.splitChangeDelay(), type(uint32).max);
        assertEq(longest.maxHold(), type(uint32).max);
    }

    function test_setSubscriptions_revertsWhenAlreadySet() public {
        vm.prank(owner);
        vm.expectRevert(ISplitEscrow.SubscriptionsAlreadySet.selector);
        escrow.setSubscriptions(address(0xBEEF));
        assertEq(escrow.subscriptions(), address(subs));
    }

    function test_setSubscriptions_revertsOnZeroAddress() public {
        SplitEscrow fresh = new SplitEscrow(address(usdc), owner, keeper, SPLIT_DELAY, MAX_HOLD);
        vm.prank(owner);
        vm.expectRevert(ISplitEscrow.ZeroAddress.selector);
        fresh.setSubscriptions(address(0));
    }

    function test_setSubscriptions_revertsForNonOwner() public {
        SplitEscrow fresh = new SplitEscrow(address(usdc), owner, keeper, SPLIT_DELAY, MAX_HOLD);
        vm.prank(stranger);
        vm.expectRevert(abi.encodeWithSelector(Ownable.OwnableUnauthorizedAccount.selector, stranger));
        fresh.setSubscriptions(address(subs));
    }

    function test_refund_revertsBeforeSubscriptionsSet() public {
        // Without a Subscriptions contract there is no record of who paid what: nothing can be refunded.
        SplitEscrow fresh = new SplitEscrow(address(usdc), owner, keeper, SPLIT_DELAY, MAX_HOLD);
        vm.prank(owner);
        vm.expectRevert(ISplitEscrow.ZeroAddress.selector);
        fresh.refund(1, 0, 1, true, bytes32(0));
        vm.expectRevert(ISplitEscrow.ZeroAddress.selector);
        fresh.refundable(1, 0);
    }

    function test_setKeeper_changesKeeperAndEmits() public {
        uint256 splitId = _createSplit();
        _subscribe(alice, monthly, 0);
        address newKeeper = makeAddr("newKeeper");
        vm.expectEmit(address(escrow));
        emit ISplitEscrow.KeeperSet(newKeeper);
        vm.prank(owner);
        escrow.setKeeper(newKeeper);
        assertEq(escrow.keeper(), newKeeper);

        vm.prank(keeper);
        vm.expectRevert(abi.encodeWithSelector(ISplitEscrow.NotKeeper.selector, keeper));
        escrow.settle(1, vm.getBlockTimestamp() - 1, vm.getBlockTimestamp(), _u1(splitId), _u1(PRICE), ROOT);

        vm.prank(newKeeper);
        escrow.settle(1, vm.getBlockTimestamp() - 1, vm.getBlockTimestamp(), _u1(splitId), _u1(PRICE), ROOT);
        assertEq(escrow.totalClaimable(), PRICE);
        _assertSolvent();
    }

    function test_setKeeper_revertsOnZeroAddress() public {
        vm.prank(owner);
        vm.expectRevert(ISplitEscrow.ZeroAddress.selector);
        escrow.setKeeper(address(0));
    }

    function test_setKeeper_revertsForNonOwner() public {
        vm.prank(keeper);
        vm.expectRevert(abi.encodeWithSelector(Ownable.OwnableUnauthorizedAccount.selector, keeper));
        escrow.setKeeper(stranger);
    }

    /* CREATE SPLIT */

    function test_createSplit_storesVersionZeroAndEmits() public {
        address[] memory r = _a3(creator, platform, host);
        uint16[] memory b = _b3(7_000, 2_000, 1_000);
        // Version 0 takes effect after the change delay, like a change: nobody had notice of the split before.
        uint256 effectiveAt = vm.getBlockTimestamp() + SPLIT_DELAY;
        vm.expectEmit(address(escrow));
        emit ISplitEscrow.SplitVersionAdded(1, 0, effectiveAt, r, _wide(b), 1);
        vm.prank(owner);
        uint256 splitId = escrow.createSplit(r, b, 1);
        assertEq(splitId, 1);
        assertEq(escrow.splitCount(), 1);
        assertEq(escrow.latestVersion(splitId), 0);
        vm.expectRevert(
            abi.encodeWithSelector(ISplitEscrow.SplitNotInForce.selector, splitId, vm.getBlockTimestamp())
        );
        escrow.versionAt(splitId, vm.getBlockTimestamp());
        vm.expectRevert(abi.encodeWithSelector(ISplitEscrow.SplitNotInForce.selector, splitId, effectiveAt - 1));
        escrow.versionAt(splitId, effectiveAt - 1);
        assertEq(escrow.versionAt(splitId, effectiveAt), 0);
        _assertVersion(splitId, 0, r, b, 1, effectiveAt);
    }

    function test_createSplit_idsIncrement() public {
        assertEq(_createSplit(), 1);
        vm.prank(owner);
        assertEq(escrow.createSplit(_a1(creator), _b1(10_000), 0), 2);
        assertEq(escrow.splitCount(), 2);
        _assertVersion(2, 0, _a1(creator), _b1(10_000), 0, vm.getBlockTimestamp() + SPLIT_DELAY);
    }

    function test_createSplit_acceptsMaxRecipients() public {
        (address[] memory r, uint16[] memory b) = _many(32, 1);
        vm.prank(owner);
        uint256 splitId = escrow.createSplit(r, b, 31);
        _assertVersion(splitId, 0, r, b, 31, vm.getBlockTimestamp() + SPLIT_DELAY);
    }

    function test_createSplit_revertsOnEscrowAsRecipient() public {
        // Revenue credited to the escrow itself could never be claimed by anyone.
        vm.prank(owner);
        vm.expectRevert(abi.encodeWithSelector(ISplitEscrow.InvalidRecipient.selector, address(escrow)));
        escrow.createSplit(_a2(creator, address(escrow)), _b2(5_000, 5_000), 0);
        vm.prank(owner);
        vm.expectRevert(abi.encodeWithSelector(ISplitEscrow.InvalidRecipient.selector, address(escrow)));
        escrow.createSplit(_a1(address(escrow)), _b1(10_000), 0);
        assertEq(escrow.splitCount(), 0);
    }

    function test_createSplit_pendingVersionZeroCannotBeCancelled() public {
        uint256 splitId = _createSplitPending();
        vm.prank(owner);
        vm.expectRevert(abi.encodeWithSelector(ISplitEscrow.NoPendingChange.selector, splitId));
        escrow.cancelSplitChange(splitId);
        assertEq(escrow.latestVersion(splitId), 0);
        // Nor replaced while pending: a change waits for it to take effect.
        vm.prank(owner);
        vm.expectRevert(abi.encodeWithSelector(ISplitEscrow.ChangeAlreadyPending.selector, splitId));
        escrow.proposeSplitChange(splitId, _a1(carol), _b1(10_000), 0);
    }

    function test_createSplit_revertsOnZeroRecipients() public {
        vm.prank(owner);
        vm.expectRevert(abi.encodeWithSelector(ISplitEscrow.InvalidRecipientCount.selector, 0));
        escrow.createSplit(new address[](0), new uint16[](0), 0);
    }

    function test_createSplit_revertsOnTooManyRecipients() public {
        (address[] memory r, uint16[] memory b) = _many(33, 1);
        vm.prank(owner);
        vm.expectRevert(abi.encodeWithSelector(ISplitEscrow.InvalidRecipientCount.selector, 33));
        escrow.createSplit(r, b, 0);
    }

    function test_createSplit_revertsWhenRecipientIdsRunOut() public {
        // Split versions store recipients as 32-bit ids. Storage slot 10 is the id counter (see
        // `forge inspect SplitEscrow storageLayout`); one split of 3 recipients names 3.
        bytes32 counterSlot = bytes32(uint256(10));
        _createSplit();
        assertEq(uint256(vm.load(address(escrow), counterSlot)), 3);
        vm.store(address(escrow), counterSlot, bytes32(uint256(type(uint32).max - 1)));

        // One new recipient still gets the last id; known recipients need none.
        vm.prank(owner);
        uint256 splitId = escrow.createSplit(_a3(creator, platform, bob), _b3(5_000, 3_000, 2_000), 0);
        _assertVersion(
            splitId, 0, _a3(creator, platform, bob), _b3(5_000, 3_000, 2_000), 0, vm.getBlockTimestamp() + SPLIT_DELAY
        );
        vm.prank(owner);
        vm.expectRevert(ISplitEscrow.TooManyRecipients.selector);
        escrow.createSplit(_a2(creator, carol), _b2(5_000, 5_000), 0);
    }

    function test_createSplit_revertsOnLengthMismatch() public {
        vm.prank(owner);
        vm.expectRevert(ISplitEscrow.LengthMismatch.selector);
        escrow.createSplit(_a2(creator, platform), _b1(10_000), 0);
    }

    function test_createSplit_revertsOnBpsSumBelow() public {
        vm.prank(owner);
        vm.expectRevert(abi.encodeWithSelector(ISplitEscrow.InvalidBpsSum.selector, 9_999));
        escrow.createSplit(_a2(creator, platform), _b2(5_000, 4_999), 0);
    }

    function test_createSplit_revertsOnBpsSumAbove() public {
        vm.prank(owner);
        vm.expectRevert(abi.encodeWithSelector(ISplitEscrow.InvalidBpsSum.selector, 10_001));
        escrow.createSplit(_a2(creator, platform), _b2(5_000, 5_001), 0);
    }

    function test_createSplit_revertsOnDuplicateRecipient() public {
        vm.prank(owner);
        vm.expectRevert(abi.encodeWithSelector(ISplitEscrow.DuplicateRecipient.selector, creator));
        escrow.createSplit(_a3(creator, platform, creator), _b3(5_000, 2_500, 2_500), 0);
    }

    function test_createSplit_revertsOnZeroRecipient() public {
        vm.prank(owner);
        vm.expectRevert(ISplitEscrow.ZeroAddress.selector);
        escrow.createSplit(_a2(creator, address(0)), _b2(5_000, 5_000), 0);
    }

    function test_createSplit_revertsOnInvalidRemainderIndex() public {
        vm.prank(owner);
        vm.expectRevert(abi.encodeWithSelector(ISplitEscrow.InvalidRemainderIndex.selector, 2));
        escrow.createSplit(_a2(creator, platform), _b2(5_000, 5_000), 2);
    }

    function test_createSplit_revertsForNonOwner() public {
        vm.prank(stranger);
        vm.expectRevert(abi.encodeWithSelector(Ownable.OwnableUnauthorizedAccount.selector, stranger));
        escrow.createSplit(_a1(creator), _b1(10_000), 0);
    }

    /* SPLIT CHANGES */

    function test_proposeSplitChange_storesPendingVersionAndEmits() public {
        uint256 splitId = _createSplit();
        uint256 v0Effective = vm.getBlockTimestamp() - 1; // _createSplit moves a second past version 0's effectiveAt
        vm.warp(vm.getBlockTimestamp() + 1 hours);
        address[] memory r = _a2(creator, bob);
        uint16[] memory b = _b2(9_000, 1_000);
        vm.expectEmit(address(escrow));
        emit ISplitEscrow.SplitVersionAdded(splitId, 1, vm.getBlockTimestamp() + SPLIT_DELAY, r, _wide(b), 0);
        uint256 version = _propose(splitId, r, b, 0);
        assertEq(version, 1);
        assertEq(escrow.latestVersion(splitId), 1);
        assertEq(escrow.versionAt(splitId, vm.getBlockTimestamp()), 0, "not in force yet");
        assertEq(escrow.versionAt(splitId, vm.getBlockTimestamp() + SPLIT_DELAY - 1), 0);
        assertEq(escrow.versionAt(splitId, vm.getBlockTimestamp() + SPLIT_DELAY), 1);
        _assertVersion(splitId, 1, r, b, 0, vm.getBlockTimestamp() + SPLIT_DELAY);
        _assertVersion(splitId, 0, _a3(creator, platform, host), _b3(7_000, 2_000, 1_000), 1, v0Effective);
    }

    function test_proposeSplitChange_settleBeforeEffectiveUsesOldVersion() public {
        uint256 splitId = _createSplit();
        _subscribe(alice, monthly, 0);
        _propose(splitId, _a1(bob), _b1(10_000), 0);
        uint256 effectiveAt = vm.getBlockTimestamp() + SPLIT_DELAY;
        vm.warp(effectiveAt); // the change is in force now, but the epoch ended just before it
        vm.expectEmit(address(escrow));
        emit ISplitEscrow.Credited(creator, 1, splitId, 55_300_000);
        _settleAt(1, splitId, PRICE, effectiveAt - 1);
        assertEq(escrow.claimableOf(creator), 55_300_000);
        assertEq(escrow.claimableOf(platform), 15_800_000);
        assertEq(escrow.claimableOf(host), 7_900_000);
        assertEq(escrow.claimableOf(bob), 0);
        _assertSolvent();
    }

    function test_proposeSplitChange_epochEndingAtEffectiveUsesOldVersionNextUsesNew() public {
        uint256 splitId = _createSplit();
        _subscribe(alice, monthly, 0);
        _subscribe(bob, monthly, 0);
        _propose(splitId, _a1(bob), _b1(10_000), 0);
        uint256 effectiveAt = vm.getBlockTimestamp() + SPLIT_DELAY;
        vm.warp(effectiveAt + 1);
        // An epoch [.., effectiveAt) ends as the change takes effect: its last second is the old version's.
        vm.expectEmit(address(escrow));
        emit ISplitEscrow.Credited(creator, 1, splitId, 55_300_000);
        _settleAt(1, splitId, PRICE, effectiveAt);
        assertEq(escrow.claimableOf(bob), 0);
        // The next epoch starts at effectiveAt: the new version's.
        vm.expectEmit(address(escrow));
        emit ISplitEscrow.Credited(bob, 2, splitId, PRICE);
        _settleAt(2, splitId, PRICE, effectiveAt + 1);
        assertEq(escrow.claimableOf(bob), PRICE);
        assertEq(escrow.claimableOf(creator), 55_300_000);
        assertEq(escrow.claimableOf(platform), 15_800_000);
        assertEq(escrow.claimableOf(host), 7_900_000);
        _assertSolvent();
    }

    function test_proposeSplitChange_settleAfterEffectiveUsesNewVersion() public {
        uint256 splitId = _createSplit();
        _subscribe(alice, monthly, 0);
        _propose(splitId, _a1(bob), _b1(10_000), 0);
        vm.warp(vm.getBlockTimestamp() + SPLIT_DELAY + 3 days);
        _settle(1, splitId, PRICE);
        assertEq(escrow.claimableOf(bob), PRICE);
        _assertSolvent();
    }

    function test_proposeSplitChange_oldEpochAfterChangeUsesOldVersion() public {
        uint256 splitId = _createSplit();
        uint256 created = vm.getBlockTimestamp();
        _subscribe(alice, monthly, 0);
        _subscribe(bob, monthly, 0);
        _propose(splitId, _a1(bob), _b1(10_000), 0);
        uint256 effectiveAt = created + SPLIT_DELAY;
        vm.warp(created + SPLIT_DELAY + 10 days);
        assertEq(escrow.versionAt(splitId, vm.getBlockTimestamp()), 1);
        // An epoch that ended before the change took effect, settled long after: old version.
        _settleAt(1, splitId, PRICE, created + 5 days);
        assertEq(escrow.claimableOf(creator), 55_300_000);
        assertEq(escrow.claimableOf(platform), 15_800_000);
        assertEq(escrow.claimableOf(host), 7_900_000);
        assertEq(escrow.claimableOf(bob), 0);
        // The epochs go on consecutively: up to the change (nothing to credit), then a current epoch: new version.
        _skipTo(2, effectiveAt);
        _settleAt(3, splitId, PRICE, vm.getBlockTimestamp());
        assertEq(escrow.claimableOf(bob), PRICE);
        assertEq(escrow.totalClaimable(), 2 * PRICE);
        _assertSolvent();
    }

    function test_proposeSplitChange_secondChangeAfterFirstTookEffect() public {
        uint256 splitId = _createSplit();
        uint256 t0 = vm.getBlockTimestamp();
        _propose(splitId, _a1(bob), _b1(10_000), 0);
        vm.warp(t0 + SPLIT_DELAY);
        assertEq(_propose(splitId, _a2(carol, bob), _b2(5_000, 5_000), 1), 2);
        uint256 t2 = vm.getBlockTimestamp() + SPLIT_DELAY;
        assertEq(escrow.latestVersion(splitId), 2);
        assertEq(escrow.versionAt(splitId, t0), 0);
        assertEq(escrow.versionAt(splitId, t0 + SPLIT_DELAY - 1), 0);
        assertEq(escrow.versionAt(splitId, t0 + SPLIT_DELAY), 1);
        assertEq(escrow.versionAt(splitId, t2 - 1), 1);
        assertEq(escrow.versionAt(splitId, t2), 2);
        _assertVersion(splitId, 1, _a1(bob), _b1(10_000), 0, t0 + SPLIT_DELAY);

        // Settle the three eras after the last change took effect, one epoch each, cut at the changes.
        for (uint256 i; i < 3; ++i) {
            _subscribe(alice, monthly, 0);
        }
        vm.warp(t2 + 1 days);
        _settleEpoch(1, t0, t0 + SPLIT_DELAY, splitId, 100); // v0: 70/20/10
        _settleAt(2, splitId, 100, t2); // v1: bob
        _settleAt(3, splitId, 101, t2 + 1 days); // v2: carol 50, bob 50 + 1
        assertEq(escrow.claimableOf(creator), 70);
        assertEq(escrow.claimableOf(platform), 20);
        assertEq(escrow.claimableOf(host), 10);
        assertEq(escrow.claimableOf(bob), 100 + 51);
        assertEq(escrow.claimableOf(carol), 50);
        assertEq(escrow.totalClaimable(), 301);
        _assertSolvent();
    }

    function test_proposeSplitChange_revertsWhenChangePending() public {
        uint256 splitId = _createSplit();
        _propose(splitId, _a1(bob), _b1(10_000), 0);
        vm.warp(vm.getBlockTimestamp() + SPLIT_DELAY - 1);
        vm.prank(owner);
        vm.expectRevert(abi.encodeWithSelector(ISplitEscrow.ChangeAlreadyPending.selector, splitId));
        escrow.proposeSplitChange(splitId, _a1(carol), _b1(10_000), 0);
    }

    function test_proposeSplitChange_revertsOnUnknownSplit() public {
        _createSplit();
        vm.prank(owner);
        vm.expectRevert(abi.encodeWithSelector(ISplitEscrow.UnknownSplit.selector, 2));
        escrow.proposeSplitChange(2, _a1(carol), _b1(10_000), 0);
    }

    function test_proposeSplitChange_validatesRecipients() public {
        uint256 splitId = _createSplit();
        vm.startPrank(owner);
        vm.expectRevert(abi.encodeWithSelector(ISplitEscrow.InvalidBpsSum.selector, 9_000));
        escrow.proposeSplitChange(splitId, _a1(carol), _b1(9_000), 0);
        vm.expectRevert(abi.encodeWithSelector(ISplitEscrow.DuplicateRecipient.selector, carol));
        escrow.proposeSplitChange(splitId, _a2(carol, carol), _b2(5_000, 5_000), 0);
        vm.expectRevert(abi.encodeWithSelector(ISplitEscrow.InvalidRecipientCount.selector, 0));
        escrow.proposeSplitChange(splitId, new address[](0), new uint16[](0), 0);
        vm.stopPrank();
        assertEq(escrow.latestVersion(splitId), 0);
    }

    function test_proposeSplitChange_revertsOnEscrowAsRecipient() public {
        uint256 splitId = _createSplit();
        vm.prank(owner);
        vm.expectRevert(abi.encodeWithSelector(ISplitEscrow.InvalidRecipient.selector, address(escrow)));
        escrow.proposeSplitChange(splitId, _a2(address(escrow), bob), _b2(5_000, 5_000), 1);
        assertEq(escrow.latestVersion(splitId), 0);
    }

    function test_proposeSplitChange_revertsForNonOwner() public {
        uint256 splitId = _createSplit();
        vm.prank(keeper);
        vm.expectRevert(abi.encodeWithSelector(Ownable.OwnableUnauthorizedAccount.selector, keeper));
        escrow.proposeSplitChange(splitId, _a1(carol), _b1(10_000), 0);
    }

    function test_cancelSplitChange_restoresPreviousWhenProposalHadMoreRecipients() public {
        uint256 splitId = _createSplit();
        uint256 created = vm.getBlockTimestamp() - 1; // version 0's effectiveAt
        (address[] memory r, uint16[] memory b) = _many(6, 7);
        _propose(splitId, r, b, 5);
        vm.warp(vm.getBlockTimestamp() + 1 days);
        vm.expectEmit(address(escrow));
        emit ISplitEscrow.SplitChangeCancelled(splitId, 1);
        vm.prank(owner);
        escrow.cancelSplitChange(splitId);

        assertEq(escrow.latestVersion(splitId), 0);
        assertEq(escrow.versionAt(splitId, vm.getBlockTimestamp() + 365 days), 0);
        _assertVersion(splitId, 0, _a3(creator, platform, host), _b3(7_000, 2_000, 1_000), 1, created);
        vm.expectRevert(abi.encodeWithSelector(ISplitEscrow.UnknownSplit.selector, splitId));
        escrow.splitVersion(splitId, 1);

        // Settlements long after use the restored version exactly: 3 recipients, remainder to the platform.
        _subscribe(alice, monthly, 0);
        vm.warp(vm.getBlockTimestamp() + SPLIT_DELAY * 2);
        vm.recordLogs();
        _settle(1, splitId, 101);
        assertEq(_countCredited(vm.getRecordedLogs()), 3);
        assertEq(escrow.claimableOf(creator), 70);
        assertEq(escrow.claimableOf(platform), 21);
        assertEq(escrow.claimableOf(host), 10);
        for (uint256 i; i < r.length; ++i) {
            assertEq(escrow.claimableOf(r[i]), 0);
        }
        _assertSolvent();

        // A new proposal reuses the version number, with no leftovers of the cancelled one.
        assertEq(_propose(splitId, _a2(carol, bob), _b2(4_000, 6_000), 0), 1);
        uint256 effectiveAt = vm.getBlockTimestamp() + SPLIT_DELAY;
        _assertVersion(splitId, 1, _a2(carol, bob), _b2(4_000, 6_000), 0, effectiveAt);
        vm.warp(effectiveAt + 1);
        _skipTo(2, effectiveAt);
        _settle(3, splitId, 11);
        assertEq(escrow.claimableOf(carol), 4 + 1);
        assertEq(escrow.claimableOf(bob), 6);
        _assertSolvent();
    }

    function test_cancelSplitChange_restoresPreviousWhenProposalHadFewerRecipients() public {
        uint256 splitId = _createSplit();
        uint256 created = vm.getBlockTimestamp() - 1; // version 0's effectiveAt
        _propose(splitId, _a1(carol), _b1(10_000), 0);
        vm.prank(owner);
        escrow.cancelSplitChange(splitId);

        assertEq(escrow.latestVersion(splitId), 0);
        _assertVersion(splitId, 0, _a3(creator, platform, host), _b3(7_000, 2_000, 1_000), 1, created);
        _subscribe(alice, monthly, 0);
        vm.warp(vm.getBlockTimestamp() + SPLIT_DELAY * 2);
        _settle(1, splitId, PRICE);
        assertEq(escrow.claimableOf(creator), 55_300_000);
        assertEq(escrow.claimableOf(platform), 15_800_000);
        assertEq(escrow.claimableOf(host), 7_900_000);
        assertEq(escrow.claimableOf(carol), 0);
        _assertSolvent();
    }

    function test_cancelSplitChange_restoresIntermediateVersion() public {
        uint256 splitId = _createSplit();
        _propose(splitId, _a2(carol, bob), _b2(5_000, 5_000), 0);
        vm.warp(vm.getBlockTimestamp() + SPLIT_DELAY);
        uint256 v1Effective = vm.getBlockTimestamp();
        (address[] memory r, uint16[] memory b) = _many(4, 3);
        _propose(splitId, r, b, 2);
        vm.prank(owner);
        escrow.cancelSplitChange(splitId);
        assertEq(escrow.latestVersion(splitId), 1);
        _assertVersion(splitId, 1, _a2(carol, bob), _b2(5_000, 5_000), 0, v1Effective);
        assertEq(escrow.versionAt(splitId, v1Effective - 1), 0);
        assertEq(escrow.versionAt(splitId, vm.getBlockTimestamp() + 100 days), 1);
    }

    function test_cancelSplitChange_revertsAfterChangeTookEffect() public {
        uint256 splitId = _createSplit();
        _propose(splitId, _a1(carol), _b1(10_000), 0);
        vm.warp(vm.getBlockTimestamp() + SPLIT_DELAY);
        vm.prank(owner);
        vm.expectRevert(abi.encodeWithSelector(ISplitEscrow.NoPendingChange.selector, splitId));
        escrow.cancelSplitChange(splitId);
        assertEq(escrow.latestVersion(splitId), 1);
    }

    function test_cancelSplitChange_revertsWithoutProposal() public {
        uint256 splitId = _createSplit();
        vm.prank(owner);
        vm.expectRevert(abi.encodeWithSelector(ISplitEscrow.NoPendingChange.selector, splitId));
        escrow.cancelSplitChange(splitId);
    }

    function test_cancelSplitChange_revertsOnUnknownSplit() public {
        vm.prank(owner);
        vm.expectRevert(abi.encodeWithSelector(ISplitEscrow.UnknownSplit.selector, 1));
        escrow.cancelSplitChange(1);
    }

    function test_cancelSplitChange_revertsForNonOwner() public {
        uint256 splitId = _createSplit();
        _propose(splitId, _a1(carol), _b1(10_000), 0);
        vm.prank(stranger);
        vm.expectRevert(abi.encodeWithSelector(Ownable.OwnableUnauthorizedAccount.selector, stranger));
        escrow.cancelSplitChange(splitId);
    }

    function test_versionAt_revertsBeforeVersionZeroEffective() public {
        uint256 splitId = _createSplit();
        uint256 effectiveAt = vm.getBlockTimestamp() - 1; // _createSplit moves a second past it
        vm.expectRevert(abi.encodeWithSelector(ISplitEscrow.SplitNotInForce.selector, splitId, effectiveAt - 1));
        escrow.versionAt(splitId, effectiveAt - 1);
        // Nor at creation, before the delay ran.
        vm.expectRevert(
            abi.encodeWithSelector(ISplitEscrow.SplitNotInForce.selector, splitId, effectiveAt - SPLIT_DELAY)
        );
        escrow.versionAt(splitId, effectiveAt - SPLIT_DELAY);
        assertEq(escrow.versionAt(splitId, effectiveAt), 0);
    }

    function test_views_revertOnUnknownSplit() public {
        vm.expectRevert(abi.encodeWithSelector(ISplitEscrow.UnknownSplit.selector, 1));
        escrow.latestVersion(1);
        vm.expectRevert(abi.encodeWithSelector(ISplitEscrow.UnknownSplit.selector, 1));
        escrow.versionAt(1, vm.getBlockTimestamp());
        vm.expectRevert(abi.encodeWithSelector(ISplitEscrow.UnknownSplit.selector, 1));
        escrow.splitVersion(1, 0);
        uint256 splitId = _createSplit();
        vm.expectRevert(abi.encodeWithSelector(ISplitEscrow.UnknownSplit.selector, splitId));
        escrow.splitVersion(splitId, 1);
    }

    /* SETTLE */

    function _countCredited(Vm.Log[] memory logs) internal view returns (uint256 n) {
        for (uint256 i; i < logs.length; ++i) {
            if (logs[i].emitter == address(escrow) && logs[i].topics[0] == ISplitEscrow.Credited.selector) ++n;
        }
    }

    function test_settle_creditsRecipientsAndEmits() public {
        uint256 splitId = _createSplit();
        _subscribe(alice, monthly, 0);
        _subscribe(bob, monthly, 0);
        assertEq(escrow.unallocated(), 2 * PRICE);
        uint256 start = vm.getBlockTimestamp() - 1; // the first epoch of _settle

        // The remainder recipient (the platform) is credited last.
        vm.expectEmit(address(escrow));
        emit ISplitEscrow.Credited(creator, 7, splitId, 55_300_000);
        vm.expectEmit(address(escrow));
        emit ISplitEscrow.Credited(host, 7, splitId, 7_900_000);
        vm.expectEmit(address(escrow));
        emit ISplitEscrow.Credited(platform, 7, splitId, 15_800_000);
        vm.expectEmit(address(escrow));
        emit ISplitEscrow.Settled(7, start, vm.getBlockTimestamp(), ROOT, PRICE, 1);
        _settle(7, splitId, PRICE);

        assertTrue(escrow.settlementUsed(7));
        assertFalse(escrow.settlementUsed(8));
        assertEq(escrow.lastEpochEnd(), vm.getBlockTimestamp());
        assertEq(escrow.unallocated(), PRICE);
        assertEq(escrow.totalClaimable(), PRICE);
        assertEq(escrow.claimableOf(creator), 55_300_000);
        assertEq(escrow.claimableOf(platform), 15_800_000);
        assertEq(escrow.claimableOf(host), 7_900_000);
        assertEq(usdc.balanceOf(address(escrow)), 2 * PRICE);
        _assertSolvent();
    }

    function test_settle_multipleSplits() public {
        uint256 s1 = _createSplit();
        vm.prank(owner);
        uint256 s2 = escrow.createSplit(_a2(carol, creator), _b2(3_333, 6_667), 0);
        // The epoch starts once s2 is in force too.
        vm.warp(vm.getBlockTimestamp() + SPLIT_DELAY + 2 days);
        _subscribe(alice, monthly, 0);
        _subscribe(bob, monthly, 0);
        _subscribe(carol, monthly, 0);
        uint256 before = escrow.unallocated();

        vm.expectEmit(address(escrow));
        emit ISplitEscrow.Settled(1, vm.getBlockTimestamp() - 2 days, vm.getBlockTimestamp(), ROOT, 1_000 + 7, 2);
        vm.prank(keeper);
        escrow.settle(1, vm.getBlockTimestamp() - 2 days, vm.getBlockTimestamp(), _u2(s1, s2), _u2(1_000, 7), ROOT);

        // s1: 700/200/100; s2: carol 7*3333/10000 = 2 + remainder 1 = 3, creator 4
        assertEq(escrow.claimableOf(creator), 700 + 4);
        assertEq(escrow.claimableOf(platform), 200);
        assertEq(escrow.claimableOf(host), 100);
        assertEq(escrow.claimableOf(carol), 3);
        assertEq(escrow.totalClaimable(), 1_007);
        assertEq(escrow.unallocated(), before - 1_007);
        _assertSolvent();
    }

    function test_settle_roundingRemainderGoesToRemainderRecipient() public {
        uint256 splitId = _createSplit();
        _subscribe(alice, monthly, 0);
        // 1_009: 706.3 -> 706, 201.8 -> 201, 100.9 -> 100; remainder 2 to the platform.
        _settle(1, splitId, 1_009);
        assertEq(escrow.claimableOf(creator), 706);
        assertEq(escrow.claimableOf(platform), 203);
        assertEq(escrow.claimableOf(host), 100);
        assertEq(escrow.totalClaimable(), 1_009);
        assertEq(escrow.unallocated(), PRICE - 1_009);
        _assertSolvent();
    }

    function test_settle_emitsNoCreditForZeroShare() public {
        uint256 splitId = _createSplit();
        _subscribe(alice, monthly, 0);
        vm.recordLogs();
        _settle(1, splitId, 9); // 6, 1 (+2), 0
        assertEq(_countCredited(vm.getRecordedLogs()), 2);
        assertEq(escrow.claimableOf(creator), 6);
        assertEq(escrow.claimableOf(platform), 3);
        assertEq(escrow.claimableOf(host), 0);

        vm.recordLogs();
        _settle(2, splitId, 1); // everything is remainder
        assertEq(_countCredited(vm.getRecordedLogs()), 1);
        assertEq(escrow.claimableOf(platform), 4);
        assertEq(escrow.totalClaimable(), 10);
        _assertSolvent();
    }

    function test_settle_zeroAmountAndEmptySettlement() public {
        uint256 splitId = _createSplit();
        vm.recordLogs();
        _settle(1, splitId, 0);
        assertEq(_countCredited(vm.getRecordedLogs()), 0);
        (uint256 start, uint256 end) = _nextEpoch();
        vm.prank(keeper);
        escrow.settle(2, start, end, new uint256[](0), new uint256[](0), ROOT);
        assertEq(escrow.lastEpochEnd(), end);
        assertTrue(escrow.settlementUsed(1));
        assertTrue(escrow.settlementUsed(2));
        assertEq(escrow.totalClaimable(), 0);
    }

    function test_settle_revertsForNonKeeper() public {
        uint256 splitId = _createSplit();
        _subscribe(alice, monthly, 0);
        vm.prank(owner);
        vm.expectRevert(abi.encodeWithSelector(ISplitEscrow.NotKeeper.selector, owner));
        escrow.settle(1, vm.getBlockTimestamp() - 1, vm.getBlockTimestamp(), _u1(splitId), _u1(PRICE), ROOT);
    }

    function test_settle_revertsOnUsedSettlementId() public {
        uint256 splitId = _createSplit();
        _subscribe(alice, monthly, 0);
        _settle(1, splitId, 10 * USDC);
        (uint256 start, uint256 end) = _nextEpoch(); // a valid next epoch: only the id is wrong
        vm.prank(keeper);
        vm.expectRevert(abi.encodeWithSelector(ISplitEscrow.SettlementIdUsed.selector, 1));
        escrow.settle(1, start, end, _u1(splitId), _u1(10 * USDC), ROOT);
        assertEq(escrow.totalClaimable(), 10 * USDC);
        _assertSolvent();
    }

    function test_settle_revertsOnFutureEpochEnd() public {
        uint256 splitId = _createSplit();
        _subscribe(alice, monthly, 0);
        uint256 end = vm.getBlockTimestamp() + 1;
        vm.prank(keeper);
        vm.expectRevert(abi.encodeWithSelector(ISplitEscrow.InvalidEpoch.selector, vm.getBlockTimestamp(), end));
        escrow.settle(1, vm.getBlockTimestamp(), end, _u1(splitId), _u1(PRICE), ROOT);
    }

    function test_settle_revertsOnStartAfterEnd() public {
        uint256 splitId = _createSplit();
        _subscribe(alice, monthly, 0);
        uint256 end = vm.getBlockTimestamp() - 1;
        vm.prank(keeper);
        vm.expectRevert(abi.encodeWithSelector(ISplitEscrow.InvalidEpoch.selector, vm.getBlockTimestamp(), end));
        escrow.settle(1, vm.getBlockTimestamp(), end, _u1(splitId), _u1(PRICE), ROOT);
    }

    function test_settle_revertsOnEmptyEpoch() public {
        uint256 splitId = _createSplit();
        _subscribe(alice, monthly, 0);
        uint256 t = vm.getBlockTimestamp();
        vm.prank(keeper);
        vm.expectRevert(abi.encodeWithSelector(ISplitEscrow.InvalidEpoch.selector, t, t));
        escrow.settle(1, t, t, _u1(splitId), _u1(PRICE), ROOT);
        // Not even with nothing to settle.
        vm.prank(keeper);
        vm.expectRevert(abi.encodeWithSelector(ISplitEscrow.InvalidEpoch.selector, t, t));
        escrow.settle(1, t, t, new uint256[](0), new uint256[](0), ROOT);
        // After a settlement ending now, the next epoch is refused until the clock moves on.
        _settle(1, splitId, 1);
        vm.prank(keeper);
        vm.expectRevert(abi.encodeWithSelector(ISplitEscrow.InvalidEpoch.selector, t, t));
        escrow.settle(2, t, t, _u1(splitId), _u1(1), ROOT);
        assertEq(escrow.lastEpochEnd(), t);
    }

    function test_settle_revertsOnLengthMismatch() public {
        uint256 splitId = _createSplit();
        _subscribe(alice, monthly, 0);
        vm.prank(keeper);
        vm.expectRevert(ISplitEscrow.LengthMismatch.selector);
        escrow.settle(1, vm.getBlockTimestamp() - 1, vm.getBlockTimestamp(), _u2(splitId, splitId), _u1(PRICE), ROOT);
    }

    function test_settle_revertsOnInsufficientUnallocated() public {
        uint256 splitId = _createSplit();
        _subscribe(alice, monthly, 0);
        vm.prank(keeper);
        vm.expectRevert(abi.encodeWithSelector(ISplitEscrow.InsufficientUnallocated.selector, PRICE, PRICE + 1));
        escrow.settle(1, vm.getBlockTimestamp() - 1, vm.getBlockTimestamp(), _u1(splitId), _u1(PRICE + 1), ROOT);

        // Over two splits in one settlement; then after part was settled.
        vm.prank(keeper);
        vm.expectRevert(abi.encodeWithSelector(ISplitEscrow.InsufficientUnallocated.selector, PRICE, PRICE + 1));
        escrow.settle(1, vm.getBlockTimestamp() - 1, vm.getBlockTimestamp(), _u2(splitId, splitId), _u2(PRICE, 1), ROOT);
        assertFalse(escrow.settlementUsed(1), "a refused settlement does not use its id");

        _settle(1, splitId, PRICE - 5);
        (uint256 start, uint256 end) = _nextEpoch();
        vm.prank(keeper);
        vm.expectRevert(abi.encodeWithSelector(ISplitEscrow.InsufficientUnallocated.selector, 5, 6));
        escrow.settle(2, start, end, _u1(splitId), _u1(6), ROOT);
        assertEq(escrow.lastEpochEnd(), start, "a refused settlement does not move the epochs");
        _settle(2, splitId, 5);
        assertEq(escrow.unallocated(), 0);
        assertEq(escrow.totalClaimable(), PRICE);
        _assertSolvent();
    }

    function test_settle_revertsOnUnknownSplit() public {
        uint256 splitId = _createSplit();
        _subscribe(alice, monthly, 0);
        vm.prank(keeper);
        vm.expectRevert(abi.encodeWithSelector(ISplitEscrow.UnknownSplit.selector, splitId + 1));
        escrow.settle(1, vm.getBlockTimestamp() - 1, vm.getBlockTimestamp(), _u2(splitId, splitId + 1), _u2(1, 1), ROOT);
        assertEq(escrow.unallocated(), PRICE);
        assertEq(escrow.totalClaimable(), 0);
    }

    function test_settle_revertsOnSplitNotInForce() public {
        uint256 splitId = _createSplit();
        _subscribe(alice, monthly, 0);
        uint256 effectiveAt = vm.getBlockTimestamp() - 1;
        // An epoch whose last second (end - 1) is before version 0 took effect.
        uint256 end = effectiveAt;
        vm.prank(keeper);
        vm.expectRevert(abi.encodeWithSelector(ISplitEscrow.SplitNotInForce.selector, splitId, end - 1));
        escrow.settle(1, end - 1 days, end, _u1(splitId), _u1(PRICE), ROOT);
    }

    function test_settle_revertsOnAmountTooLarge() public {
        uint256 max = type(uint96).max;
        vm.prank(owner);
        uint256 whale = subs.createPlan(max, MONTH, GRACE);
        _fund(alice, max);
        _fund(bob, max);
        _subscribe(alice, whale, 0);
        _subscribe(bob, whale, 0);
        vm.prank(owner);
        uint256 splitId = escrow.createSplit(_a1(creator), _b1(10_000), 0);
        vm.warp(vm.getBlockTimestamp() + SPLIT_DELAY + 1);
        _settle(1, splitId, max);
        assertEq(escrow.claimableOf(creator), max);
        (uint256 start, uint256 end) = _nextEpoch();
        vm.prank(keeper);
        vm.expectRevert(abi.encodeWithSelector(ISplitEscrow.AmountTooLarge.selector, max + 1));
        escrow.settle(2, start, end, _u1(splitId), _u1(1), ROOT);
        assertEq(escrow.totalClaimable(), max);
        _assertSolvent();
    }

    /* CLAIM */

    function test_claim_paysRecipientAndEmits() public {
        _fundedSplit();
        uint256 amount = escrow.claimableOf(creator);
        assertEq(amount, 553 * USDC);
        vm.expectEmit(address(escrow));
        emit ISplitEscrow.Claimed(creator, creator, amount);
        vm.prank(creator);
        assertEq(escrow.claim(creator), amount);
        assertEq(usdc.balanceOf(creator), amount);
        assertEq(escrow.claimableOf(creator), 0);
        assertEq(escrow.totalClaimable(), 790 * USDC - amount);
        _assertSolvent();
    }

    function test_claim_anyoneMayTrigger() public {
        _fundedSplit();
        vm.prank(stranger);
        uint256 amount = escrow.claim(host);
        assertEq(amount, 79 * USDC);
        assertEq(usdc.balanceOf(host), amount);
        assertEq(usdc.balanceOf(stranger), 0);
        _assertSolvent();
    }

    function test_setPayoutAddress_setsAndEmits() public {
        assertEq(escrow.payoutOf(creator), creator, "defaults to the recipient");
        address wallet = makeAddr("wallet");
        vm.expectEmit(address(escrow));
        emit ISplitEscrow.PayoutAddressSet(creator, wallet);
        vm.prank(creator);
        escrow.setPayoutAddress(wallet);
        assertEq(escrow.payoutOf(creator), wallet);
    }

    function test_setPayoutAddress_revertsOnZeroAddress() public {
        vm.prank(creator);
        vm.expectRevert(ISplitEscrow.ZeroAddress.selector);
        escrow.setPayoutAddress(address(0));
    }

    function test_claim_paysPayoutAddressAfterRotation() public {
        uint256 splitId = _fundedSplit();
        address wallet1 = makeAddr("wallet1");
        address wallet2 = makeAddr("wallet2");
        vm.prank(creator);
        escrow.setPayoutAddress(wallet1);
        vm.prank(creator);
        escrow.setPayoutAddress(wallet2);

        vm.expectEmit(address(escrow));
        emit ISplitEscrow.Claimed(creator, wallet2, 553 * USDC);
        escrow.claim(creator);
        assertEq(usdc.balanceOf(wallet2), 553 * USDC);
        assertEq(usdc.balanceOf(wallet1), 0);
        assertEq(usdc.balanceOf(creator), 0);

        // Rotating back to the recipient itself.
        vm.prank(creator);
        escrow.setPayoutAddress(creator);
        _subscribe(carol, monthly, 0);
        _settle(2, splitId, 100);
        escrow.claim(creator);
        assertEq(usdc.balanceOf(creator), 70);
        _assertSolvent();
    }

    function test_claim_revertsWhenNothingToClaim() public {
        _fundedSplit();
        vm.expectRevert(abi.encodeWithSelector(ISplitEscrow.NothingToClaim.selector, stranger));
        escrow.claim(stranger);
        escrow.claim(creator);
        vm.expectRevert(abi.encodeWithSelector(ISplitEscrow.NothingToClaim.selector, creator));
        escrow.claim(creator);
    }

    function test_claim_revertsWhileHeld() public {
        _fundedSplit();
        uint256 until = vm.getBlockTimestamp() + 10 days;
        _hold(creator, until);
        vm.expectRevert(abi.encodeWithSelector(ISplitEscrow.RecipientHeld.selector, creator, until));
        escrow.claim(creator);
        vm.warp(until - 1);
        vm.expectRevert(abi.encodeWithSelector(ISplitEscrow.RecipientHeld.selector, creator, until));
        escrow.claim(creator);
        vm.warp(until);
        assertEq(escrow.claim(creator), 553 * USDC);
        _assertSolvent();
    }

    function test_claim_revertsWhenPayoutBlacklisted() public {
        _fundedSplit();
        _blacklist(creator);
        vm.expectRevert("Blacklistable: account is blacklisted");
        escrow.claim(creator);
        assertEq(escrow.claimableOf(creator), 553 * USDC);
        assertEq(escrow.totalClaimable(), 790 * USDC);
        // Rotating the payout address away from the blacklisted one lets the claim through.
        address wallet = makeAddr("wallet");
        vm.prank(creator);
        escrow.setPayoutAddress(wallet);
        escrow.claim(creator);
        assertEq(usdc.balanceOf(wallet), 553 * USDC);
        _assertSolvent();
    }

    function test_claimMany_paysAll() public {
        _fundedSplit();
        vm.expectEmit(address(escrow));
        emit ISplitEscrow.Claimed(creator, creator, 553 * USDC);
        vm.expectEmit(address(escrow));
        emit ISplitEscrow.Claimed(platform, platform, 158 * USDC);
        vm.expectEmit(address(escrow));
        emit ISplitEscrow.Claimed(host, host, 79 * USDC);
        vm.prank(stranger);
        assertEq(escrow.claimMany(_a3(creator, platform, host)), 3);
        assertEq(escrow.totalClaimable(), 0);
        assertEq(usdc.balanceOf(address(escrow)), 0);
        _assertSolvent();
    }

    function test_claimMany_isolatesBlacklistedPayout() public {
        _fundedSplit();
        address wallet = makeAddr("wallet");
        vm.prank(platform);
        escrow.setPayoutAddress(wallet);
        _blacklist(wallet);

        vm.expectEmit(address(escrow));
        emit ISplitEscrow.Claimed(creator, creator, 553 * USDC);
        vm.expectEmit(address(escrow));
        emit ISplitEscrow.ClaimFailed(platform, wallet, 158 * USDC);
        vm.expectEmit(address(escrow));
        emit ISplitEscrow.Claimed(host, host, 79 * USDC);
        assertEq(escrow.claimMany(_a3(creator, platform, host)), 2);

        assertEq(escrow.claimableOf(platform), 158 * USDC, "failed balance stays claimable");
        assertEq(escrow.totalClaimable(), 158 * USDC);
        assertEq(usdc.balanceOf(creator), 553 * USDC);
        assertEq(usdc.balanceOf(host), 79 * USDC);
        assertEq(usdc.balanceOf(address(escrow)), 158 * USDC);
        assertEq(escrow.surplus(), 0);
        _assertSolvent();

        _unBlacklist(wallet);
        assertEq(escrow.claimMany(_a1(platform)), 1);
        assertEq(usdc.balanceOf(wallet), 158 * USDC);
        assertEq(escrow.totalClaimable(), 0);
        _assertSolvent();
    }

    function test_claimMany_skipsHeldAndEmpty() public {
        _fundedSplit();
        _hold(platform, vm.getBlockTimestamp() + 1 days);
        vm.recordLogs();
        assertEq(escrow.claimMany(_a3(stranger, platform, host)), 1);
        Vm.Log[] memory logs = vm.getRecordedLogs();
        uint256 claimed;
        for (uint256 i; i < logs.length; ++i) {
            if (logs[i].emitter != address(escrow)) continue;
            assertTrue(logs[i].topics[0] != ISplitEscrow.ClaimFailed.selector, "skips are silent");
            if (logs[i].topics[0] == ISplitEscrow.Claimed.selector) ++claimed;
        }
        assertEq(claimed, 1);
        assertEq(escrow.claimableOf(platform), 158 * USDC);
        assertEq(escrow.claimableOf(host), 0);
        assertEq(escrow.totalClaimable(), 711 * USDC);
        _assertSolvent();
    }

    function test_claimMany_duplicatesPaidOnce() public {
        _fundedSplit();
        assertEq(escrow.claimMany(_a3(host, host, host)), 1);
        assertEq(usdc.balanceOf(host), 79 * USDC);
        assertEq(escrow.totalClaimable(), 711 * USDC);
        assertEq(escrow.claimMany(new address[](0)), 0);
        _assertSolvent();
    }

    /* HOLDS */

    function test_hold_placesAndEmits() public {
        uint256 until = vm.getBlockTimestamp() + 5 days;
        vm.expectEmit(address(escrow));
        emit ISplitEscrow.HoldPlaced(creator, until, keccak256("dispute"));
        _hold(creator, until);
        ISplitEscrow.Hold memory h = escrow.holdOf(creator);
        assertEq(h.until, until);
        assertEq(h.since, vm.getBlockTimestamp());
    }

    function test_hold_acceptsExactlyMaxHold() public {
        _hold(creator, vm.getBlockTimestamp() + MAX_HOLD);
        assertEq(escrow.holdOf(creator).until, vm.getBlockTimestamp() + MAX_HOLD);
    }

    function test_hold_revertsBeyondMaxHold() public {
        uint256 until = vm.getBlockTimestamp() + MAX_HOLD + 1;
        vm.prank(owner);
        vm.expectRevert(
            abi.encodeWithSelector(ISplitEscrow.HoldTooLong.selector, until, vm.getBlockTimestamp() + MAX_HOLD)
        );
        escrow.hold(creator, until, bytes32(0));
    }

    function test_hold_revertsWhenUntilNotInFuture() public {
        uint256 limit = vm.getBlockTimestamp() + MAX_HOLD;
        vm.startPrank(owner);
        vm.expectRevert(abi.encodeWithSelector(ISplitEscrow.HoldTooLong.selector, vm.getBlockTimestamp() - 1, limit));
        escrow.hold(creator, vm.getBlockTimestamp() - 1, bytes32(0));
        vm.expectRevert(abi.encodeWithSelector(ISplitEscrow.HoldTooLong.selector, vm.getBlockTimestamp(), limit));
        escrow.hold(creator, vm.getBlockTimestamp(), bytes32(0));
        vm.stopPrank();
    }

    function test_hold_revertsOnZeroAddress() public {
        vm.prank(owner);
        vm.expectRevert(ISplitEscrow.ZeroAddress.selector);
        escrow.hold(address(0), vm.getBlockTimestamp() + 1 days, bytes32(0));
    }

    function test_hold_revertsForNonOwner() public {
        vm.prank(keeper);
        vm.expectRevert(abi.encodeWithSelector(Ownable.OwnableUnauthorizedAccount.selector, keeper));
        escrow.hold(creator, vm.getBlockTimestamp() + 1 days, bytes32(0));
    }

    function test_hold_extendingRunningHoldLimitedByItsStart() public {
        uint256 start = vm.getBlockTimestamp();
        _hold(creator, start + 10 days);
        vm.warp(start + 9 days); // still held
        _hold(creator, start + MAX_HOLD); // extend to the limit counted from the start
        assertEq(escrow.holdOf(creator).since, start);
        vm.warp(start + 25 days);
        uint256 until = vm.getBlockTimestamp() + 10 days; // would be fine for a fresh hold, not for this one
        vm.prank(owner);
        vm.expectRevert(abi.encodeWithSelector(ISplitEscrow.HoldTooLong.selector, until, start + MAX_HOLD));
        escrow.hold(creator, until, bytes32(0));
        // Shortening a running hold is allowed.
        _hold(creator, vm.getBlockTimestamp() + 1);
        assertEq(escrow.holdOf(creator).until, vm.getBlockTimestamp() + 1);
        assertEq(escrow.holdOf(creator).since, start);
    }

    function test_release_endsHoldAndEmits() public {
        _fundedSplit();
        _hold(creator, vm.getBlockTimestamp() + 10 days);
        vm.warp(vm.getBlockTimestamp() + 1 days);
        vm.expectEmit(address(escrow));
        emit ISplitEscrow.HoldReleased(creator);
        vm.prank(owner);
        escrow.release(creator);
        assertEq(escrow.holdOf(creator).until, vm.getBlockTimestamp());
        assertEq(escrow.claim(creator), 553 * USDC);
        _assertSolvent();
    }

    function test_release_revertsWhenNotHeld() public {
        vm.prank(owner);
        vm.expectRevert(abi.encodeWithSelector(ISplitEscrow.NotHeld.selector, creator));
        escrow.release(creator);

        _hold(creator, vm.getBlockTimestamp() + 1 days);
        vm.warp(vm.getBlockTimestamp() + 1 days);
        vm.prank(owner);
        vm.expectRevert(abi.encodeWithSelector(ISplitEscrow.NotHeld.selector, creator));
        escrow.release(creator);
    }

    function test_release_revertsForNonOwner() public {
        _hold(creator, vm.getBlockTimestamp() + 1 days);
        vm.prank(creator);
        vm.expectRevert(abi.encodeWithSelector(Ownable.OwnableUnauthorizedAccount.selector, creator));
        escrow.release(creator);
    }

    function test_hold_cooldownAfterRelease() public {
        _hold(creator, vm.getBlockTimestamp() + 10 days);
        vm.warp(vm.getBlockTimestamp() + 2 days);
        vm.prank(owner);
        escrow.release(creator);
        uint256 allowedFrom = vm.getBlockTimestamp() + 1 days;

        vm.prank(owner);
        vm.expectRevert(abi.encodeWithSelector(ISplitEscrow.HoldCooldown.selector, allowedFrom));
        escrow.hold(creator, vm.getBlockTimestamp() + 1 days, bytes32(0));
        vm.warp(allowedFrom - 1);
        vm.prank(owner);
        vm.expectRevert(abi.encodeWithSelector(ISplitEscrow.HoldCooldown.selector, allowedFrom));
        escrow.hold(creator, vm.getBlockTimestamp() + 1 days, bytes32(0));

        vm.warp(allowedFrom);
        _hold(creator, vm.getBlockTimestamp() + MAX_HOLD); // a fresh hold: full MAX_HOLD from now
        assertEq(escrow.holdOf(creator).since, allowedFrom);
    }

    function test_hold_cooldownAfterExpiry() public {
        uint256 until = vm.getBlockTimestamp() + MAX_HOLD;
        _hold(creator, until);
        vm.warp(until);
        vm.prank(owner);
        vm.expectRevert(abi.encodeWithSelector(ISplitEscrow.HoldCooldown.selector, until + 1 days));
        escrow.hold(creator, vm.getBlockTimestamp() + 1 days, bytes32(0));
        vm.warp(until + 1 days);
        _hold(creator, vm.getBlockTimestamp() + 1 days);
        assertEq(escrow.holdOf(creator).until, until + 2 days);
    }

    /* REFUND */

    function test_refund_toWallet() public {
        _subscribe(alice, monthly, 0);
        uint256 walletBefore = usdc.balanceOf(alice);
        vm.expectEmit(address(escrow));
        emit ISplitEscrow.Refunded(alice, 1, 0, 30 * USDC, false, keccak256("r1"));
        vm.prank(owner);
        escrow.refund(1, 0, 30 * USDC, false, keccak256("r1"));
        assertEq(usdc.balanceOf(alice), walletBefore + 30 * USDC);
        assertEq(escrow.unallocated(), PRICE - 30 * USDC);
        assertEq(usdc.balanceOf(address(escrow)), PRICE - 30 * USDC);
        assertEq(subs.creditOf(alice), 0);
        assertEq(escrow.refundedFor(1, 0), 30 * USDC);
        assertEq(escrow.refundable(1, 0), PRICE - 30 * USDC);
        assertTrue(escrow.refundIdUsed(keccak256("r1")));
        assertFalse(escrow.refundIdUsed(keccak256("r2")));
        _assertSolvent();
    }

    function test_refund_toCredit() public {
        _subscribe(alice, monthly, 0);
        uint256 walletBefore = usdc.balanceOf(alice);
        uint256 subsBefore = usdc.balanceOf(address(subs));
        vm.expectEmit(address(escrow));
        emit ISplitEscrow.Refunded(alice, 1, 0, PRICE, true, keccak256("r2"));
        vm.prank(owner);
        escrow.refund(1, 0, PRICE, true, keccak256("r2"));
        assertEq(subs.creditOf(alice), PRICE);
        assertEq(escrow.refundedFor(1, 0), PRICE);
        assertEq(escrow.refundable(1, 0), 0);
        assertEq(usdc.balanceOf(address(subs)), subsBefore + PRICE);
        assertEq(usdc.balanceOf(alice), walletBefore);
        assertEq(escrow.unallocated(), 0);
        assertEq(usdc.balanceOf(address(escrow)), 0);
        _assertSolvent();

        // The credit pays the next subscription: revenue flows back in, unallocated again.
        _subscribe(alice, monthly, 0);
        assertEq(subs.creditOf(alice), 0);
        assertEq(usdc.balanceOf(alice), walletBefore);
        assertEq(escrow.unallocated(), PRICE);
        assertEq(usdc.balanceOf(address(escrow)), PRICE);
        _assertSolvent();
    }

    function test_refund_toCreditWhileSubscriptionsPaused() public {
        _subscribe(alice, monthly, 0);
        vm.prank(owner);
        subs.pause();
        assertTrue(subs.chargingPaused());
        vm.prank(owner);
        escrow.refund(1, 0, 10 * USDC, true, keccak256("p1"));
        assertEq(subs.creditOf(alice), 10 * USDC);
        vm.prank(owner);
        escrow.refund(1, 0, 10 * USDC, false, keccak256("p2"));
        assertEq(escrow.unallocated(), PRICE - 20 * USDC);
        _assertSolvent();
    }

    function test_refund_revertsOnInsufficientUnallocated() public {
        uint256 splitId = _createSplit();
        _subscribe(alice, monthly, 0);
        // Within what alice paid, but settled revenue is owed to recipients and cannot be refunded.
        _settle(1, splitId, 50 * USDC);
        assertEq(escrow.refundable(1, 0), PRICE);
        vm.prank(owner);
        vm.expectRevert(
            abi.encodeWithSelector(ISplitEscrow.InsufficientUnallocated.selector, 29 * USDC, 29 * USDC + 1)
        );
        escrow.refund(1, 0, 29 * USDC + 1, true, bytes32(0));
        assertFalse(escrow.refundIdUsed(bytes32(0)), "a refused refund does not use its id");
        assertEq(escrow.refundedFor(1, 0), 0);
        vm.prank(owner);
        escrow.refund(1, 0, 29 * USDC, false, bytes32(0));
        assertEq(escrow.unallocated(), 0);
        assertEq(escrow.totalClaimable(), 50 * USDC);
        assertEq(escrow.refundable(1, 0), 50 * USDC);
        _assertSolvent();
    }

    function test_refund_revertsOnZeroAmount() public {
        _subscribe(alice, monthly, 0);
        vm.prank(owner);
        vm.expectRevert(ISplitEscrow.ZeroAmount.selector);
        escrow.refund(1, 0, 0, false, bytes32(0));
    }

    function test_refund_revertsOnUnknownSubscription() public {
        // There is no address to refund to: only a subscription, whose subscriber is the payee.
        _subscribe(alice, monthly, 0);
        vm.prank(owner);
        vm.expectRevert(abi.encodeWithSelector(ISubscriptions.UnknownSubscription.selector, 2));
        escrow.refund(2, 0, 1, false, bytes32(0));
        vm.expectRevert(abi.encodeWithSelector(ISubscriptions.UnknownSubscription.selector, 0));
        escrow.refundable(0, 0);
        assertEq(escrow.unallocated(), PRICE);
    }

    function test_refund_revertsForNonOwner() public {
        _subscribe(alice, monthly, 0);
        vm.prank(alice);
        vm.expectRevert(abi.encodeWithSelector(Ownable.OwnableUnauthorizedAccount.selector, alice));
        escrow.refund(1, 0, 1, false, bytes32(0));
    }

    /* SURPLUS */

    function test_sweepSurplus_sweepsOnlyDirectTransfers() public {
        _fundedSplit();
        _subscribe(carol, monthly, 0); // unallocated
        assertEq(escrow.surplus(), 0);
        vm.prank(alice);
        usdc.transfer(address(escrow), 5 * USDC);
        assertEq(escrow.surplus(), 5 * USDC);
        // Direct transfers are not revenue.
        assertEq(escrow.unallocated(), PRICE);

        address treasury = makeAddr("treasury");
        vm.expectEmit(address(escrow));
        emit ISplitEscrow.SurplusSwept(treasury, 5 * USDC);
        vm.prank(owner);
        assertEq(escrow.sweepSurplus(treasury), 5 * USDC);
        assertEq(usdc.balanceOf(treasury), 5 * USDC);
        assertEq(escrow.surplus(), 0);
        assertEq(usdc.balanceOf(address(escrow)), escrow.unallocated() + escrow.totalClaimable());

        vm.prank(owner);
        vm.expectRevert(ISplitEscrow.NoSurplus.selector);
        escrow.sweepSurplus(treasury);

        // Everything owed remains payable.
        escrow.claimMany(_a3(creator, platform, host));
        vm.prank(owner);
        escrow.refund(1, 0, PRICE, false, bytes32(0));
        assertEq(usdc.balanceOf(address(escrow)), 0);
        _assertSolvent();
    }

    function test_sweepSurplus_revertsWhenNoSurplus() public {
        vm.prank(owner);
        vm.expectRevert(ISplitEscrow.NoSurplus.selector);
        escrow.sweepSurplus(owner);
        _fundedSplit();
        _subscribe(carol, monthly, 0);
        vm.prank(owner);
        vm.expectRevert(ISplitEscrow.NoSurplus.selector);
        escrow.sweepSurplus(owner);
    }

    function test_sweepSurplus_revertsOnZeroAddress() public {
        vm.prank(alice);
        usdc.transfer(address(escrow), 1);
        vm.prank(owner);
        vm.expectRevert(ISplitEscrow.ZeroAddress.selector);
        escrow.sweepSurplus(address(0));
    }

    function test_sweepSurplus_revertsForNonOwner() public {
        vm.prank(alice);
        usdc.transfer(address(escrow), 1);
        vm.prank(stranger);
        vm.expectRevert(abi.encodeWithSelector(Ownable.OwnableUnauthorizedAccount.selector, stranger));
        escrow.sweepSurplus(stranger);
    }

    /* FUZZ */

    function testFuzz_settle_creditsSumToAmount(uint256 n, uint256 seed, uint256 remainderIndex, uint256 amount)
        public
    {
        // Up to the maximum, so versions span several packed words (3 members share the header's word, 5 each
        // after that).
        n = bound(n, 1, 32);
        remainderIndex = bound(remainderIndex, 0, n - 1);
        amount = bound(amount, 1, type(uint96).max);
        address[] memory r = new address[](n);
        uint16[] memory b = new uint16[](n);
        uint256 left = 10_000;
        for (uint256 i; i < n; ++i) {
            r[i] = address(uint160(uint256(keccak256(abi.encode("fuzz-recipient", i)))));
            b[i] = uint16(i == n - 1 ? left : bound(uint256(keccak256(abi.encode(seed, i))), 0, left));
            left -= b[i];
        }
        // An earlier split names the odd-numbered recipients in reverse, so the stored recipient ids are neither
        // dense nor in this split's order.
        (address[] memory earlier, uint16[] memory earlierBps) = _oddReversed(r);
        vm.startPrank(owner);
        escrow.createSplit(earlier, earlierBps, 0);
        uint256 splitId = escrow.createSplit(r, b, remainderIndex);
        vm.stopPrank();
        _assertVersion(splitId, 0, r, b, remainderIndex, vm.getBlockTimestamp() + SPLIT_DELAY);
        vm.warp(vm.getBlockTimestamp() + SPLIT_DELAY + 1);
        _revenue(amount);

        uint256[] memory expected = new uint256[](n);
        uint256 floorSum;
        uint256 nonZero;
        for (uint256 i; i < n; ++i) {
            expected[i] = amount * b[i] / 10_000;
            floorSum += expected[i];
        }
        expected[remainderIndex] += amount - floorSum;
        for (uint256 i; i < n; ++i) {
            if (expected[i] != 0) ++nonZero;
        }

        vm.recordLogs();
        _settle(1, splitId, amount);
        assertEq(_countCredited(vm.getRecordedLogs()), nonZero);

        uint256 sum;
        for (uint256 i; i < n; ++i) {
            assertEq(escrow.claimableOf(r[i]), expected[i]);
            sum += escrow.claimableOf(r[i]);
        }
        assertEq(sum, amount);
        assertEq(escrow.totalClaimable(), amount);
        assertEq(escrow.unallocated(), 0);
        _assertSolvent();
    }

    /// @dev The odd-numbered members of `r` in reverse order (or the first, for a single member), splitting
    /// 10,000 bps among them.
    function _oddReversed(address[] memory r) internal pure returns (address[] memory out, uint16[] memory b) {
        uint256 n = r.length < 2 ? 1 : r.length / 2;
        out = new address[](n);
        b = new uint16[](n);
        for (uint256 k; k < n; ++k) {
            out[k] = r.length < 2 ? r[0] : r[2 * (n - 1 - k) + 1];
            b[k] = uint16(k == 0 ? 10_000 - (n - 1) * (10_000 / n) : 10_000 / n);
        }
    }

    function testFuzz_claim_paysExactlyClaimable(uint256 a1, uint256 a2, bool rotate, address caller) public {
        a1 = bound(a1, 1, 1e15);
        a2 = bound(a2, 0, 1e15);
        vm.assume(caller != address(0));
        uint256 splitId = _createSplit();
        _revenue(a1 + a2 + 1);
        _settle(1, splitId, a1);
        _settle(2, splitId, a2);

        address payout = creator;
        if (rotate) {
            payout = makeAddr("rotated");
            vm.prank(creator);
            escrow.setPayoutAddress(payout);
        }
        uint256 owed = escrow.claimableOf(creator);
        uint256 totalBefore = escrow.totalClaimable();
        uint256 payoutBefore = usdc.balanceOf(payout);
        uint256 escrowBefore = usdc.balanceOf(address(escrow));

        vm.prank(caller);
        if (owed == 0) {
            vm.expectRevert(abi.encodeWithSelector(ISplitEscrow.NothingToClaim.selector, creator));
            escrow.claim(creator);
            return;
        }
        uint256 paid = escrow.claim(creator);
        assertEq(paid, owed);
        assertEq(usdc.balanceOf(payout), payoutBefore + owed);
        assertEq(usdc.balanceOf(address(escrow)), escrowBefore - owed);
        assertEq(escrow.claimableOf(creator), 0);
        assertEq(escrow.totalClaimable(), totalBefore - owed);
        assertEq(escrow.surplus(), 0);
        _assertSolvent();

        escrow.claimMany(_a3(creator, platform, host));
        assertEq(escrow.totalClaimable(), 0);
        assertEq(usdc.balanceOf(address(escrow)), escrow.unallocated());
        _assertSolvent();
    }

    function testFuzz_refundAndSettle_neverExceedUnallocated(
        uint256 revenue,
        uint256 refundAmount,
        uint256 settleAmount,
        bool toCredit,
        bool refundFirst
    ) public {
        revenue = bound(revenue, 1, 1e15);
        refundAmount = bound(refundAmount, 1, 2e15);
        settleAmount = bound(settleAmount, 0, 2e15);
        uint256 splitId = _createSplit();
        _revenue(revenue);
        uint256 id = subs.subscriptionCount(); // the payer's subscription, paid `revenue` for period 0
        assertEq(escrow.unallocated(), revenue);

        if (refundFirst) {
            _tryRefund(id, refundAmount, toCredit);
            _trySettle(settleAmount, splitId);
        } else {
            _trySettle(settleAmount, splitId);
            _tryRefund(id, refundAmount, toCredit);
        }
        assertLe(escrow.totalClaimable(), revenue);
        assertEq(usdc.balanceOf(address(escrow)), escrow.unallocated() + escrow.totalClaimable());
        _assertSolvent();
    }

    /// @dev A refund of `amount` for period 0 of `id`: refused beyond what its subscriber paid (net of refunds),
    /// then beyond unallocated revenue; otherwise paid to the subscriber, wallet or credit.
    function _tryRefund(uint256 id, uint256 amount, bool toCredit) internal {
        uint256 available = escrow.unallocated();
        uint256 left = escrow.refundable(id, 0);
        address subscriber = subs.subscription(id).subscriber;
        uint256 creditBefore = subs.creditOf(subscriber);
        uint256 walletBefore = usdc.balanceOf(subscriber);
        vm.prank(owner);
        if (amount > left) {
            vm.expectRevert(abi.encodeWithSelector(ISplitEscrow.RefundExceedsPaid.selector, left, amount));
            escrow.refund(id, 0, amount, toCredit, bytes32(0));
            assertEq(escrow.unallocated(), available);
        } else if (amount > available) {
            vm.expectRevert(abi.encodeWithSelector(ISplitEscrow.InsufficientUnallocated.selector, available, amount));
            escrow.refund(id, 0, amount, toCredit, bytes32(0));
            assertEq(escrow.unallocated(), available);
        } else {
            escrow.refund(id, 0, amount, toCredit, bytes32(0));
            assertEq(escrow.unallocated(), available - amount);
            assertEq(subs.creditOf(subscriber), creditBefore + (toCredit ? amount : 0));
            assertEq(usdc.balanceOf(subscriber), walletBefore + (toCredit ? 0 : amount));
        }
        _assertSolvent();
    }

    function _trySettle(uint256 amount, uint256 splitId) internal {
        uint256 available = escrow.unallocated();
        uint256 claimableBefore = escrow.totalClaimable();
        (uint256 start, uint256 end) = _nextEpoch();
        vm.prank(keeper);
        if (amount > available) {
            vm.expectRevert(abi.encodeWithSelector(ISplitEscrow.InsufficientUnallocated.selector, available, amount));
            escrow.settle(1, start, end, _u1(splitId), _u1(amount), ROOT);
            assertEq(escrow.unallocated(), available);
            assertEq(escrow.totalClaimable(), claimableBefore);
        } else {
            escrow.settle(1, start, end, _u1(splitId), _u1(amount), ROOT);
            assertEq(escrow.unallocated(), available - amount);
            assertEq(escrow.totalClaimable(), claimableBefore + amount);
        }
        _assertSolvent();
    }

    function testFuzz_hold_neverBeyondStartPlusMaxHold(uint256 first, uint256 elapsed, uint256 extendTo) public {
        uint256 start = vm.getBlockTimestamp();
        first = bound(first, start + 1, start + MAX_HOLD);
        _hold(creator, first);
        elapsed = bound(elapsed, 0, first - start - 1); // the hold is still running
        vm.warp(start + elapsed);
        extendTo = bound(extendTo, vm.getBlockTimestamp() + 1, vm.getBlockTimestamp() + 2 * MAX_HOLD);
        vm.prank(owner);
        if (extendTo > start + MAX_HOLD) {
            vm.expectRevert(abi.encodeWithSelector(ISplitEscrow.HoldTooLong.selector, extendTo, start + MAX_HOLD));
        }
        escrow.hold(creator, extendTo, bytes32(0));
        ISplitEscrow.Hold memory h = escrow.holdOf(creator);
        assertEq(h.since, start);
        assertEq(h.until, extendTo > start + MAX_HOLD ? first : extendTo);
        assertLe(h.until, start + MAX_HOLD);
    }

    function test_settle_zeroAmountForUnknownSplit_reverts() public {
        _subscribe(alice, monthly, 0);
        uint256[] memory splitIds = new uint256[](1);
        splitIds[0] = 42;
        uint256[] memory amounts = new uint256[](1);
        vm.expectRevert(abi.encodeWithSelector(ISplitEscrow.UnknownSplit.selector, 42));
        vm.prank(keeper);
        escrow.settle(1, vm.getBlockTimestamp() - 1 days, vm.getBlockTimestamp(), splitIds, amounts, ROOT);
    }

    function test_setPayoutAddress_escrowItself_reverts() public {
        vm.expectRevert(abi.encodeWithSelector(ISplitEscrow.InvalidPayout.selector, address(escrow)));
        vm.prank(creator);
        escrow.setPayoutAddress(address(escrow));
    }

    /* REFUNDS: BOUNDED BY WHAT THE SUBSCRIBER PAID */

    function test_refund_paysOnlyTheSubscriberOfTheSubscription() public {
        uint256 aliceSub = _subscribe(alice, monthly, 0);
        uint256 bobSub = _subscribe(bob, monthly, 0);
        uint256 aliceWallet = usdc.balanceOf(alice);
        uint256 bobWallet = usdc.balanceOf(bob);

        // The payee is read from the subscription: the operator names no address.
        vm.expectEmit(address(escrow));
        emit ISplitEscrow.Refunded(bob, bobSub, 0, 20 * USDC, false, keccak256("b"));
        vm.prank(owner);
        escrow.refund(bobSub, 0, 20 * USDC, false, keccak256("b"));
        assertEq(usdc.balanceOf(bob), bobWallet + 20 * USDC);
        assertEq(usdc.balanceOf(alice), aliceWallet);
        assertEq(usdc.balanceOf(owner), 0);

        // As credit: to the subscriber's credit, nobody else's.
        vm.expectEmit(address(escrow));
        emit ISplitEscrow.Refunded(alice, aliceSub, 0, 5 * USDC, true, keccak256("a"));
        vm.prank(owner);
        escrow.refund(aliceSub, 0, 5 * USDC, true, keccak256("a"));
        assertEq(subs.creditOf(alice), 5 * USDC);
        assertEq(subs.creditOf(bob), 0);
        assertEq(subs.creditOf(owner), 0);
        assertEq(usdc.balanceOf(alice), aliceWallet);

        assertEq(escrow.refundedFor(bobSub, 0), 20 * USDC);
        assertEq(escrow.refundedFor(aliceSub, 0), 5 * USDC);
        assertEq(escrow.refundable(bobSub, 0), PRICE - 20 * USDC);
        assertEq(escrow.refundable(aliceSub, 0), PRICE - 5 * USDC);
        assertEq(escrow.unallocated(), 2 * PRICE - 25 * USDC);
        _assertSolvent();
    }

    function test_refund_revertsBeyondFeeOfLastPaidPeriod() public {
        _revenue(1_000 * USDC); // unallocated revenue is not the limit here
        uint256 id = _subscribe(alice, monthly, 0);
        assertEq(escrow.refundable(id, 0), PRICE);
        assertEq(escrow.refundable(id, 1), 0, "a period not paid yet");
        vm.startPrank(owner);
        vm.expectRevert(abi.encodeWithSelector(ISplitEscrow.RefundExceedsPaid.selector, PRICE, PRICE + 1));
        escrow.refund(id, 0, PRICE + 1, false, keccak256("over"));
        vm.expectRevert(abi.encodeWithSelector(ISplitEscrow.RefundExceedsPaid.selector, 0, 1));
        escrow.refund(id, 1, 1, false, keccak256("next"));
        vm.expectRevert(abi.encodeWithSelector(ISplitEscrow.RefundExceedsPaid.selector, 0, 1));
        escrow.refund(id, type(uint256).max, 1, false, keccak256("far"));
        vm.stopPrank();
        assertEq(escrow.refundedFor(id, 0), 0);
        assertEq(escrow.unallocated(), 1_000 * USDC + PRICE);

        // Exactly the fee is accepted.
        vm.prank(owner);
        escrow.refund(id, 0, PRICE, false, keccak256("all"));
        assertEq(escrow.refundable(id, 0), 0);
        _assertSolvent();
    }

    function test_refund_usageChargedForALedgerPeriod() public {
        _revenue(1_000 * USDC);
        // Pay as you go: no fee, only usage.
        uint256 id = _subscribe(alice, payg, 10 * USDC);
        assertEq(escrow.refundable(id, 0), 0);
        _charge(id, 0, 4 * USDC, ROOT);
        assertEq(escrow.refundable(id, 0), 4 * USDC);
        vm.prank(owner);
        vm.expectRevert(abi.encodeWithSelector(ISplitEscrow.RefundExceedsPaid.selector, 4 * USDC, 4 * USDC + 1));
        escrow.refund(id, 0, 4 * USDC + 1, false, keccak256("u1"));
        uint256 wallet = usdc.balanceOf(alice);
        vm.prank(owner);
        escrow.refund(id, 0, 4 * USDC, false, keccak256("u2"));
        assertEq(usdc.balanceOf(alice), wallet + 4 * USDC);

        // Fee and usage of the same period add up.
        uint256 both = _subscribe(bob, monthly, 10 * USDC);
        _charge(both, 0, 3 * USDC, ROOT);
        assertEq(escrow.refundable(both, 0), PRICE + 3 * USDC);
        vm.prank(owner);
        vm.expectRevert(
            abi.encodeWithSelector(ISplitEscrow.RefundExceedsPaid.selector, PRICE + 3 * USDC, PRICE + 3 * USDC + 1)
        );
        escrow.refund(both, 0, PRICE + 3 * USDC + 1, false, keccak256("b1"));
        vm.prank(owner);
        escrow.refund(both, 0, PRICE + 3 * USDC, true, keccak256("b2"));
        assertEq(subs.creditOf(bob), PRICE + 3 * USDC);
        _assertSolvent();
    }

    function test_refund_afterRenewalOnlyUsageOfPreviousPeriodWhileLedgerHoldsIt() public {
        _revenue(1_000 * USDC);
        uint256 id = _subscribe(alice, monthly, 10 * USDC);
        _charge(id, 0, 6 * USDC, ROOT);
        assertEq(escrow.refundable(id, 0), PRICE + 6 * USDC);

        (,, uint256 end) = subs.currentPeriod(id);
        vm.warp(end);
        assertEq(_renew(id), 1);
        // Period 1 is now the last paid: period 0's fee is no longer refundable, its usage charge still is.
        assertEq(escrow.refundable(id, 0), 6 * USDC);
        assertEq(escrow.refundable(id, 1), PRICE);
        vm.prank(owner);
        vm.expectRevert(abi.encodeWithSelector(ISplitEscrow.RefundExceedsPaid.selector, 6 * USDC, 6 * USDC + 1));
        escrow.refund(id, 0, 6 * USDC + 1, false, keccak256("r0"));
        vm.prank(owner);
        escrow.refund(id, 0, 2 * USDC, false, keccak256("r1"));
        assertEq(escrow.refundable(id, 0), 4 * USDC);

        // A charge for period 1 moves the ledger to it: period 0 is still held, as its previous period.
        _charge(id, 1, 1 * USDC, ROOT);
        assertEq(escrow.refundable(id, 0), 4 * USDC);
        assertEq(escrow.refundable(id, 1), PRICE + 1 * USDC);

        // Renewed again and charged for period 2, the ledger holds periods 1 and 2: period 0 has nothing left.
        (,, end) = subs.currentPeriod(id);
        vm.warp(end);
        assertEq(_renew(id), 1);
        assertEq(escrow.refundable(id, 1), 1 * USDC);
        _charge(id, 2, 1 * USDC, ROOT);
        assertEq(escrow.refundable(id, 0), 0);
        vm.prank(owner);
        vm.expectRevert(abi.encodeWithSelector(ISplitEscrow.RefundExceedsPaid.selector, 0, 1));
        escrow.refund(id, 0, 1, false, keccak256("r2"));
        assertEq(escrow.refundedFor(id, 0), 2 * USDC);
        assertEq(escrow.refundable(id, 1), 1 * USDC);
        assertEq(escrow.refundable(id, 2), PRICE + 1 * USDC);
        _assertSolvent();
    }

    function test_refund_idIsSingleUse() public {
        _revenue(1_000 * USDC);
        uint256 a = _subscribe(alice, monthly, 0);
        uint256 b = _subscribe(bob, monthly, 0);
        bytes32 refundId = keccak256("ticket-42");
        assertFalse(escrow.refundIdUsed(refundId));
        vm.prank(owner);
        escrow.refund(a, 0, 1 * USDC, false, refundId);
        assertTrue(escrow.refundIdUsed(refundId));

        bytes memory used = abi.encodeWithSelector(ISplitEscrow.RefundIdUsed.selector, refundId);
        vm.startPrank(owner);
        vm.expectRevert(used); // the same refund again
        escrow.refund(a, 0, 1 * USDC, false, refundId);
        vm.expectRevert(used); // another subscription
        escrow.refund(b, 0, 1 * USDC, false, refundId);
        vm.expectRevert(used); // another period
        escrow.refund(a, 1, 1 * USDC, false, refundId);
        vm.expectRevert(used); // another amount, as credit
        escrow.refund(a, 0, 2 * USDC, true, refundId);
        vm.stopPrank();
        assertEq(escrow.refundedFor(a, 0), 1 * USDC);
        assertEq(escrow.refundedFor(b, 0), 0);

        // Another id goes through; the zero id is an id like any other.
        vm.startPrank(owner);
        escrow.refund(b, 0, 1 * USDC, false, keccak256("ticket-43"));
        escrow.refund(b, 0, 1 * USDC, false, bytes32(0));
        vm.expectRevert(abi.encodeWithSelector(ISplitEscrow.RefundIdUsed.selector, bytes32(0)));
        escrow.refund(a, 0, 1 * USDC, false, bytes32(0));
        vm.stopPrank();
        assertEq(escrow.refundedFor(b, 0), 2 * USDC);
        _assertSolvent();
    }

    function test_refund_partialThenTheRest() public {
        _revenue(1_000 * USDC);
        uint256 id = _subscribe(alice, monthly, 0);
        uint256 wallet = usdc.balanceOf(alice);
        vm.prank(owner);
        escrow.refund(id, 0, 30 * USDC, false, keccak256("part"));
        assertEq(escrow.refundable(id, 0), PRICE - 30 * USDC);
        assertEq(escrow.refundedFor(id, 0), 30 * USDC);

        vm.prank(owner);
        vm.expectRevert(
            abi.encodeWithSelector(ISplitEscrow.RefundExceedsPaid.selector, PRICE - 30 * USDC, PRICE - 30 * USDC + 1)
        );
        escrow.refund(id, 0, PRICE - 30 * USDC + 1, true, keccak256("rest+1"));

        // The rest, as credit.
        vm.expectEmit(address(escrow));
        emit ISplitEscrow.Refunded(alice, id, 0, PRICE - 30 * USDC, true, keccak256("rest"));
        vm.prank(owner);
        escrow.refund(id, 0, PRICE - 30 * USDC, true, keccak256("rest"));
        assertEq(escrow.refundable(id, 0), 0);
        assertEq(escrow.refundedFor(id, 0), PRICE);
        assertEq(usdc.balanceOf(alice), wallet + 30 * USDC);
        assertEq(subs.creditOf(alice), PRICE - 30 * USDC);

        vm.prank(owner);
        vm.expectRevert(abi.encodeWithSelector(ISplitEscrow.RefundExceedsPaid.selector, 0, 1));
        escrow.refund(id, 0, 1, false, keccak256("more"));
        assertEq(escrow.unallocated(), 1_000 * USDC);
        _assertSolvent();
    }

    function testFuzz_refund_sequenceNeverExceedsPaid(uint256[10] memory raw, uint256 usage, bool renewed) public {
        _revenue(100_000 * USDC); // unallocated revenue is never the limit here
        uint256 id = _subscribe(alice, monthly, 50 * USDC);
        usage = bound(usage, 0, 50 * USDC);
        if (usage != 0) _charge(id, 0, usage, ROOT);
        uint256 paid = PRICE + usage;
        if (renewed) {
            // After a renewal only period 0's usage charge is left to refund.
            (,, uint256 end) = subs.currentPeriod(id);
            vm.warp(end);
            assertEq(_renew(id), 1);
            paid = usage;
        }
        assertEq(escrow.refundable(id, 0), paid);

        uint256 walletBefore = usdc.balanceOf(alice);
        uint256 creditBefore = subs.creditOf(alice);
        uint256 total;
        uint256 toWallet;
        for (uint256 i; i < raw.length; ++i) {
            // Mostly small refunds, some up to everything paid and one more.
            uint256 amount = bound(raw[i], 1, raw[i] % 3 == 0 ? paid + 1 : paid / 3 + 1);
            bool toCredit = raw[i] % 2 == 0;
            uint256 left = paid - total;
            vm.prank(owner);
            if (amount > left) {
                vm.expectRevert(abi.encodeWithSelector(ISplitEscrow.RefundExceedsPaid.selector, left, amount));
            }
            escrow.refund(id, 0, amount, toCredit, keccak256(abi.encode("seq", i)));
            if (amount <= left) {
                total += amount;
                if (!toCredit) toWallet += amount;
            }
            assertLe(escrow.refundedFor(id, 0), paid, "refunded more than paid");
            assertEq(escrow.refundedFor(id, 0), total);
            assertEq(escrow.refundable(id, 0), paid - total);
        }
        assertEq(usdc.balanceOf(alice), walletBefore + toWallet);
        assertEq(subs.creditOf(alice), creditBefore + total - toWallet);
        _assertSolvent();
    }

    /* EPOCHS: CONSECUTIVE, ONE SPLIT VERSION EACH */

    function test_settle_firstEpochMayStartAnywhere() public {
        assertEq(escrow.lastEpochEnd(), 0, "no epoch yet");
        uint256 splitId = _createSplit();
        uint256 effectiveAt = vm.getBlockTimestamp() - 1;
        _subscribe(alice, monthly, 0);
        vm.warp(effectiveAt + 40 days);
        // From the split's first second in force, forty days long.
        _settleEpoch(1, effectiveAt, vm.getBlockTimestamp(), splitId, PRICE);
        assertEq(escrow.lastEpochEnd(), vm.getBlockTimestamp());
        assertEq(escrow.claimableOf(creator), 55_300_000);
    }

    function test_settle_firstEmptyEpochMayStartAtZero() public {
        vm.prank(keeper);
        escrow.settle(1, 0, vm.getBlockTimestamp(), new uint256[](0), new uint256[](0), ROOT);
        assertEq(escrow.lastEpochEnd(), vm.getBlockTimestamp());
    }

    function test_settle_revertsUnlessEpochStartsAtLastEnd() public {
        uint256 splitId = _createSplit();
        _subscribe(alice, monthly, 0);
        uint256 t0 = vm.getBlockTimestamp();
        vm.warp(t0 + 10 days);
        uint256 last = t0 + 5 days;
        _settleEpoch(1, t0, last, splitId, 10);
        assertEq(escrow.lastEpochEnd(), last);
        uint256 nowT = vm.getBlockTimestamp();

        vm.startPrank(keeper);
        // Overlap: the same revenue window settled twice.
        vm.expectRevert(abi.encodeWithSelector(ISplitEscrow.EpochNotConsecutive.selector, last, last - 1));
        escrow.settle(2, last - 1, nowT, _u1(splitId), _u1(20), ROOT);
        // Gap: a window nobody settles.
        vm.expectRevert(abi.encodeWithSelector(ISplitEscrow.EpochNotConsecutive.selector, last, last + 1));
        escrow.settle(2, last + 1, nowT, _u1(splitId), _u1(20), ROOT);
        // Backdated: an epoch before the last one.
        vm.expectRevert(abi.encodeWithSelector(ISplitEscrow.EpochNotConsecutive.selector, last, t0 - 2 days));
        escrow.settle(2, t0 - 2 days, t0 - 1 days, new uint256[](0), new uint256[](0), ROOT);
        // The last epoch again.
        vm.expectRevert(abi.encodeWithSelector(ISplitEscrow.EpochNotConsecutive.selector, last, t0));
        escrow.settle(2, t0, last, _u1(splitId), _u1(20), ROOT);
        // From its end: accepted.
        escrow.settle(2, last, nowT, _u1(splitId), _u1(20), ROOT);
        vm.stopPrank();
        assertEq(escrow.lastEpochEnd(), nowT);
        assertEq(escrow.claimableOf(creator), 7 + 14);
        assertEq(escrow.totalClaimable(), 30);
    }

    function testFuzz_settle_nextEpochMustStartAtLastEnd(
        uint256 firstEnd,
        uint256 start,
        uint256 end,
        bool fromLastEnd
    ) public {
        uint256 splitId = _createSplit();
        uint256 t0 = vm.getBlockTimestamp();
        _subscribe(alice, monthly, 0);
        vm.warp(t0 + 30 days);
        uint256 nowT = vm.getBlockTimestamp();
        firstEnd = bound(firstEnd, t0 + 1, nowT - 1);
        _settleEpoch(1, t0, firstEnd, splitId, 1);

        start = fromLastEnd ? firstEnd : bound(start, t0 - 1, nowT + 1 days);
        end = bound(end, t0 - 1, nowT + 1 days);
        bool accepted;
        vm.prank(keeper);
        if (end > nowT || start >= end) {
            vm.expectRevert(abi.encodeWithSelector(ISplitEscrow.InvalidEpoch.selector, start, end));
        } else if (start != firstEnd) {
            vm.expectRevert(abi.encodeWithSelector(ISplitEscrow.EpochNotConsecutive.selector, firstEnd, start));
        } else {
            accepted = true;
        }
        escrow.settle(2, start, end, _u1(splitId), _u1(1), ROOT);
        assertEq(escrow.lastEpochEnd(), accepted ? end : firstEnd);
        assertEq(escrow.totalClaimable(), accepted ? 2 : 1);
        assertEq(escrow.settlementUsed(2), accepted);
    }

    function test_settle_splitChangeInEpochRefused_settledByCuttingAtChange() public {
        uint256 splitId = _createSplit();
        uint256 t0 = vm.getBlockTimestamp();
        _subscribe(alice, monthly, 0);
        _propose(splitId, _a2(carol, bob), _b2(6_000, 4_000), 0);
        uint256 effectiveAt = t0 + SPLIT_DELAY;
        vm.warp(effectiveAt + 3 days);
        uint256 nowT = vm.getBlockTimestamp();

        // One epoch over the change would credit revenue from before it by the new version.
        bytes memory changed = abi.encodeWithSelector(ISplitEscrow.SplitChangedInEpoch.selector, splitId, effectiveAt);
        vm.startPrank(keeper);
        vm.expectRevert(changed);
        escrow.settle(1, t0, nowT, _u1(splitId), _u1(3_001), ROOT);
        // Also when the change takes effect at the epoch's last second, and for a zero amount.
        vm.expectRevert(changed);
        escrow.settle(1, t0, effectiveAt + 1, _u1(splitId), _u1(3_001), ROOT);
        vm.expectRevert(changed);
        escrow.settle(1, t0, nowT, _u1(splitId), _u1(0), ROOT);
        vm.stopPrank();
        assertEq(escrow.lastEpochEnd(), 0);
        assertEq(escrow.totalClaimable(), 0);

        // The same revenue, cut at the change: the old version before it, the new one after.
        _settleEpoch(1, t0, effectiveAt, splitId, 1_000); // 700 / 200 / 100
        _settleEpoch(2, effectiveAt, nowT, splitId, 2_001); // carol 1200 + 1 remainder, bob 800
        assertEq(escrow.claimableOf(creator), 700);
        assertEq(escrow.claimableOf(platform), 200);
        assertEq(escrow.claimableOf(host), 100);
        assertEq(escrow.claimableOf(carol), 1_201);
        assertEq(escrow.claimableOf(bob), 800);
        assertEq(escrow.totalClaimable(), 3_001);
        assertEq(escrow.lastEpochEnd(), nowT);
        _assertSolvent();
    }

    function test_settle_splitChangeInEpochRefusesWholeSettlement() public {
        uint256 s1 = _createSplitPending();
        vm.prank(owner);
        uint256 s2 = escrow.createSplit(_a1(carol), _b1(10_000), 0);
        vm.warp(vm.getBlockTimestamp() + SPLIT_DELAY + 1);
        uint256 t0 = vm.getBlockTimestamp();
        _subscribe(alice, monthly, 0);
        _propose(s2, _a1(bob), _b1(10_000), 0);
        uint256 effectiveAt = t0 + SPLIT_DELAY;
        vm.warp(effectiveAt + 1 days);
        uint256 nowT = vm.getBlockTimestamp();

        // s1 did not change, s2 did: nothing is credited, to either.
        vm.prank(keeper);
        vm.expectRevert(abi.encodeWithSelector(ISplitEscrow.SplitChangedInEpoch.selector, s2, effectiveAt));
        escrow.settle(1, t0, nowT, _u2(s1, s2), _u2(100, 100), ROOT);
        assertEq(escrow.claimableOf(creator), 0);
        assertEq(escrow.totalClaimable(), 0);

        vm.startPrank(keeper);
        escrow.settle(1, t0, effectiveAt, _u2(s1, s2), _u2(100, 100), ROOT);
        escrow.settle(2, effectiveAt, nowT, _u2(s1, s2), _u2(100, 100), ROOT);
        vm.stopPrank();
        assertEq(escrow.claimableOf(creator), 140);
        assertEq(escrow.claimableOf(carol), 100);
        assertEq(escrow.claimableOf(bob), 100);
        _assertSolvent();
    }

    function test_settle_emptyEpochMayCrossSplitChange() public {
        uint256 splitId = _createSplit();
        uint256 t0 = vm.getBlockTimestamp();
        _subscribe(alice, monthly, 0);
        _propose(splitId, _a1(bob), _b1(10_000), 0);
        vm.warp(t0 + SPLIT_DELAY + 1 days);
        // Nothing to credit: the keeper moves the epochs past the change in one empty epoch.
        _skipTo(1, vm.getBlockTimestamp());
        vm.warp(vm.getBlockTimestamp() + 1);
        _settle(2, splitId, PRICE);
        assertEq(escrow.claimableOf(bob), PRICE);
        assertEq(escrow.claimableOf(creator), 0);
    }

    function test_settle_newSplitRefusedBeforeItTakesEffect() public {
        _subscribe(alice, monthly, 0);
        uint256 created = vm.getBlockTimestamp();
        uint256 splitId = _createSplitPending();
        uint256 effectiveAt = created + SPLIT_DELAY;
        vm.warp(effectiveAt + 1 days);
        uint256 nowT = vm.getBlockTimestamp();

        vm.startPrank(keeper);
        // Backdated to its creation, ending as it takes effect: not in force at the epoch's last second.
        vm.expectRevert(abi.encodeWithSelector(ISplitEscrow.SplitNotInForce.selector, splitId, effectiveAt - 1));
        escrow.settle(1, created, effectiveAt, _u1(splitId), _u1(PRICE), ROOT);
        // Starting before it takes effect.
        vm.expectRevert(abi.encodeWithSelector(ISplitEscrow.SplitChangedInEpoch.selector, splitId, effectiveAt));
        escrow.settle(1, created, nowT, _u1(splitId), _u1(PRICE), ROOT);
        vm.expectRevert(abi.encodeWithSelector(ISplitEscrow.SplitChangedInEpoch.selector, splitId, effectiveAt));
        escrow.settle(1, effectiveAt - 1, nowT, _u1(splitId), _u1(PRICE), ROOT);
        // From the second it takes effect: accepted.
        escrow.settle(1, effectiveAt, nowT, _u1(splitId), _u1(PRICE), ROOT);
        vm.stopPrank();
        assertEq(escrow.claimableOf(creator), 55_300_000);
        _assertSolvent();
    }

    function test_settle_splitCreatedLaterJoinsAfterItsDelay() public {
        uint256 s1 = _createSplit();
        _subscribe(alice, monthly, 0);
        _settle(1, s1, 10);
        uint256 last = escrow.lastEpochEnd();
        vm.prank(owner);
        uint256 s2 = escrow.createSplit(_a1(carol), _b1(10_000), 0);
        uint256 effectiveAt = vm.getBlockTimestamp() + SPLIT_DELAY;
        vm.warp(effectiveAt + 1 days);
        uint256 nowT = vm.getBlockTimestamp();

        // The next epoch starts where the last ended, before s2 took effect: s2 takes nothing from it.
        vm.prank(keeper);
        vm.expectRevert(abi.encodeWithSelector(ISplitEscrow.SplitChangedInEpoch.selector, s2, effectiveAt));
        escrow.settle(2, last, nowT, _u2(s1, s2), _u2(10, 10), ROOT);
        // Cut at its effectiveAt: s1 alone before, both after.
        _settleEpoch(2, last, effectiveAt, s1, 10);
        vm.prank(keeper);
        escrow.settle(3, effectiveAt, nowT, _u2(s1, s2), _u2(10, 10), ROOT);
        assertEq(escrow.claimableOf(carol), 10);
        assertEq(escrow.claimableOf(creator), 21);
        _assertSolvent();
    }

    /// @dev An epoch boundary: one of the interesting instants (most of the time) or anywhere in [lo, hi].
    function _pickTime(uint256 raw, uint256 lo, uint256 hi, uint256 a, uint256 b) internal pure returns (uint256 t) {
        uint256 pick = raw % 8;
        if (pick == 0) t = a - 1;
        else if (pick == 1) t = a;
        else if (pick == 2) t = a + 1;
        else if (pick == 3) t = b - 1;
        else if (pick == 4) t = b;
        else if (pick == 5) t = b + 1;
        else t = lo + (raw >> 3) % (hi - lo + 1);
        if (t < lo) t = lo;
        if (t > hi) t = hi;
    }

    function testFuzz_settle_epochAgainstSplitChange(uint256 rawStart, uint256 rawEnd) public {
        uint256 splitId = _createSplit();
        uint256 v0 = vm.getBlockTimestamp() - 1; // version 0's effectiveAt
        _subscribe(alice, monthly, 0);
        _propose(splitId, _a1(bob), _b1(10_000), 0);
        uint256 change = vm.getBlockTimestamp() + SPLIT_DELAY;
        vm.warp(change + 10 days);
        uint256 nowT = vm.getBlockTimestamp();

        uint256 start = _pickTime(rawStart, v0 - 2 days, nowT - 1, v0, change);
        uint256 end = _pickTime(rawEnd, start + 1, nowT, v0, change);

        // The version in force at the epoch's last second must have been in force at its first.
        bytes memory refusal;
        bool newVersion;
        if (end - 1 < v0) {
            refusal = abi.encodeWithSelector(ISplitEscrow.SplitNotInForce.selector, splitId, end - 1);
        } else if (end - 1 < change) {
            if (start < v0) refusal = abi.encodeWithSelector(ISplitEscrow.SplitChangedInEpoch.selector, splitId, v0);
        } else if (start < change) {
            refusal = abi.encodeWithSelector(ISplitEscrow.SplitChangedInEpoch.selector, splitId, change);
        } else {
            newVersion = true;
        }

        vm.prank(keeper);
        if (refusal.length != 0) vm.expectRevert(refusal);
        escrow.settle(1, start, end, _u1(splitId), _u1(PRICE), ROOT);
        if (refusal.length != 0) {
            assertEq(escrow.totalClaimable(), 0);
            assertEq(escrow.lastEpochEnd(), 0);
        } else if (newVersion) {
            assertEq(escrow.claimableOf(bob), PRICE);
            assertEq(escrow.claimableOf(creator), 0);
        } else {
            assertEq(escrow.claimableOf(creator), 55_300_000);
            assertEq(escrow.claimableOf(platform), 15_800_000);
            assertEq(escrow.claimableOf(bob), 0);
        }
    }

    /* HOLDS: 40-BIT TIMESTAMPS */

    function test_hold_refusesUntilBeyondUint40() public {
        // A deployment whose longest hold reaches past the 40-bit timestamps holds are stored in.
        SplitEscrow longHolds = new SplitEscrow(address(usdc), owner, keeper, SPLIT_DELAY, type(uint32).max);
        uint256 maxTime = type(uint40).max;
        uint256 start = maxTime - 10 days;
        vm.warp(start);
        vm.startPrank(owner);
        // 2^40 would be stored as 0 if truncated; 2^40 + 5 days as 5 days after 1970.
        vm.expectRevert(abi.encodeWithSelector(ISplitEscrow.HoldTooLong.selector, maxTime + 1, maxTime));
        longHolds.hold(creator, maxTime + 1, bytes32(0));
        vm.expectRevert(abi.encodeWithSelector(ISplitEscrow.HoldTooLong.selector, maxTime + 5 days, maxTime));
        longHolds.hold(creator, maxTime + 5 days, bytes32(0));
        assertEq(longHolds.holdOf(creator).until, 0);
        // The last time storage holds is accepted, as it is.
        longHolds.hold(creator, maxTime, bytes32(0));
        vm.stopPrank();
        assertEq(longHolds.holdOf(creator).until, maxTime);
        assertEq(longHolds.holdOf(creator).since, start);
    }

    function testFuzz_hold_untilNeverTruncated(uint256 start, uint256 until) public {
        SplitEscrow longHolds = new SplitEscrow(address(usdc), owner, keeper, SPLIT_DELAY, type(uint32).max);
        start = bound(start, uint256(type(uint40).max) - type(uint32).max, uint256(type(uint40).max) - 1);
        vm.warp(start);
        until = bound(until, start + 1, start + type(uint32).max);
        vm.prank(owner);
        if (until > type(uint40).max) {
            vm.expectRevert(abi.encodeWithSelector(ISplitEscrow.HoldTooLong.selector, until, type(uint40).max));
        }
        longHolds.hold(creator, until, bytes32(0));
        assertEq(longHolds.holdOf(creator).until, until > type(uint40).max ? 0 : until);
    }

    /* CLAIM MANY: BOUNDED PAYOUTS */

    /// @dev A second deployment on a GasGuzzlerToken: `amount` paid in by one subscription and settled to a split
    /// of `recipients` (remainder to the first), in force.
    function _hostileEscrow(address[] memory recipients, uint16[] memory bps, uint256 amount)
        internal
        returns (GasGuzzlerToken token, SplitEscrow hostile)
    {
        token = new GasGuzzlerToken();
        hostile = new SplitEscrow(address(token), owner, keeper, SPLIT_DELAY, MAX_HOLD);
        Subscriptions hostileSubs = new Subscriptions(address(token), address(hostile), owner, keeper, CHARGE_WINDOW);
        vm.startPrank(owner);
        hostile.setSubscriptions(address(hostileSubs));
        uint256 planId = hostileSubs.createPlan(amount, MONTH, GRACE);
        uint256 splitId = hostile.createSplit(recipients, bps, 0);
        vm.stopPrank();
        token.mint(alice, amount);
        vm.startPrank(alice);
        token.approve(address(hostileSubs), amount);
        hostileSubs.subscribe(planId, 0);
        vm.stopPrank();
        vm.warp(vm.getBlockTimestamp() + SPLIT_DELAY + 1);
        vm.prank(keeper);
        hostile.settle(1, vm.getBlockTimestamp() - 1, vm.getBlockTimestamp(), _u1(splitId), _u1(amount), ROOT);
        assertEq(hostile.totalClaimable(), amount);
    }

    function test_claimMany_gasGuzzlingPayoutFailsAloneWithinBoundedGas() public {
        // A look-alike token is needed: USDC's transfer cannot burn the gas it is given. This one burns all of it
        // for a transfer to `guzzler`, standing in for any payout leg that would take the gas of the batch.
        address guzzler = makeAddr("guzzler");
        address[] memory r = _a3(creator, guzzler, host);
        (GasGuzzlerToken token, SplitEscrow hostile) = _hostileEscrow(r, _b3(5_000, 3_000, 2_000), 1_000 * USDC);
        token.setMode(guzzler, GasGuzzlerToken.Mode.Guzzle);
        uint256 payoutGas = hostile.PAYOUT_GAS();

        vm.expectEmit(address(hostile));
        emit ISplitEscrow.Claimed(creator, creator, 500 * USDC);
        vm.expectEmit(address(hostile));
        emit ISplitEscrow.ClaimFailed(guzzler, guzzler, 300 * USDC);
        vm.expectEmit(address(hostile));
        emit ISplitEscrow.Claimed(host, host, 200 * USDC);
        uint256 before = gasleft();
        uint256 paid = hostile.claimMany{gas: 10_000_000}(r);
        uint256 used = before - gasleft();
        emit log_named_uint("claimMany gas, one guzzler of three", used);

        assertEq(paid, 2);
        // The guzzler took PAYOUT_GAS, not 63/64 of the 10,000,000 given; the two others ~30,000 each.
        assertGt(used, payoutGas);
        assertLt(used, payoutGas + 120_000, "a payout took more than PAYOUT_GAS");
        assertEq(token.balanceOf(creator), 500 * USDC);
        assertEq(token.balanceOf(host), 200 * USDC);
        assertEq(token.balanceOf(guzzler), 0);
        assertEq(hostile.claimableOf(guzzler), 300 * USDC, "the failed balance stays claimable");
        assertEq(hostile.totalClaimable(), 300 * USDC);
        assertEq(token.balanceOf(address(hostile)), 300 * USDC);

        // It can still be paid once it accepts a transfer.
        token.setMode(guzzler, GasGuzzlerToken.Mode.Normal);
        assertEq(hostile.claimMany(_a1(guzzler)), 1);
        assertEq(token.balanceOf(guzzler), 300 * USDC);
        assertEq(hostile.totalClaimable(), 0);
    }

    function test_claimMany_manyGasGuzzlersCostAtMostPayoutGasEach() public {
        // A look-alike token is needed (USDC's transfer cannot burn the gas it is given): half of a 32-recipient
        // split guzzles; the batch still pays the other half, in gas linear in the number of payouts.
        (address[] memory r, uint16[] memory b) = _many(32, 9);
        (GasGuzzlerToken token, SplitEscrow hostile) = _hostileEscrow(r, b, 3_200 * USDC);
        for (uint256 i = 1; i < r.length; i += 2) {
            token.setMode(r[i], GasGuzzlerToken.Mode.Guzzle);
        }
        uint256 payoutGas = hostile.PAYOUT_GAS();
        uint256 before = gasleft();
        uint256 paid = hostile.claimMany{gas: 30_000_000}(r);
        uint256 used = before - gasleft();
        emit log_named_uint("claimMany gas, 16 guzzlers of 32", used);
        assertEq(paid, 16);
        // PAYOUT_GAS for each guzzler, and at most ~45,000 of bookkeeping and transfer for each of the 32 items.
        assertLt(used, 16 * payoutGas + 32 * 45_000);
        for (uint256 i; i < r.length; ++i) {
            assertEq(token.balanceOf(r[i]) + hostile.claimableOf(r[i]) > 0, true);
            assertEq(hostile.claimableOf(r[i]) == 0, i % 2 == 0, "even paid, odd kept");
        }
    }

    function test_claimMany_starvedCallRevertsInsteadOfFailingPayableRecipient() public {
        // The fixture's USDC: any transfer fails when given too little gas.
        _fundedSplit();
        uint256 owed = escrow.claimableOf(creator);
        bytes memory claimCall = abi.encodeCall(escrow.claimMany, (_a1(creator)));
        bytes memory starved = abi.encodeWithSelector(ISplitEscrow.InsufficientGasForPayout.selector);
        uint256 snapshot = vm.snapshotState();
        uint256 starvedCalls;
        uint256 paidCalls;
        for (uint256 g = 10_000; g <= 200_000; g += 500) {
            (bool ok, bytes memory ret) = address(escrow).call{gas: g}(claimCall);
            if (ok) {
                // Enough gas to finish: the recipient was paid, never marked failed.
                assertEq(escrow.claimableOf(creator), 0, "a starved payout marked a payable recipient failed");
                assertEq(usdc.balanceOf(creator), owed);
                ++paidCalls;
                vm.revertToState(snapshot);
            } else {
                // Out of gas before or after the payout, or the payout starved: nothing changed.
                if (ret.length != 0) {
                    assertEq(ret, starved);
                    ++starvedCalls;
                }
                assertEq(escrow.claimableOf(creator), owed);
                assertEq(usdc.balanceOf(creator), 0);
            }
        }
        emit log_named_uint("calls refused with InsufficientGasForPayout", starvedCalls);
        assertGt(starvedCalls, 0);
        assertGt(paidCalls, 0);
    }

    function test_claimMany_starvedHeavyPayoutsRevertInsteadOfFailing() public {
        // A look-alike token is needed: USDC's transfer needs ~40,000 gas; this one's burns `heavyGas` (110,000)
        // more, so that a full PAYOUT_GAS is just enough, and its proxied mode does the work in an inner call (as
        // USDC's proxy does). Neither shape lets a starved payout pass for a refused one: the call reverts or pays.
        address heavy = makeAddr("heavy");
        (GasGuzzlerToken token, SplitEscrow hostile) = _hostileEscrow(_a1(heavy), _b1(10_000), 100 * USDC);
        token.setHeavyGas(110_000);
        token.setMode(heavy, GasGuzzlerToken.Mode.Heavy);
        _sweepClaimGas(token, hostile, heavy, 100_000, 180_000, 100, true);
        // Proxied, the inner call hands back the 1/64 it kept when it fails, which lifts gasleft() above
        // PAYOUT_GAS / 63 for most starved limits: those calls end out of gas (recording the failure costs more
        // than is left), not with InsufficientGasForPayout, which only the lowest limits get.
        token.setMode(heavy, GasGuzzlerToken.Mode.HeavyProxied);
        _sweepClaimGas(token, hostile, heavy, 40_000, 180_000, 100, false);
        // Given the gas, it is paid in a batch like any other.
        assertEq(hostile.claimMany(_a1(heavy)), 1);
        assertEq(token.balanceOf(heavy), 100 * USDC);
    }

    /// @dev Calls `claimMany([recipient])` with each gas limit in [from, to] by `step`: every call either pays the
    /// recipient in full or reverts leaving its balance claimable (with InsufficientGasForPayout or out of gas);
    /// some pay, and when `mustRefuse`, some revert InsufficientGasForPayout.
    function _sweepClaimGas(
        GasGuzzlerToken token,
        SplitEscrow hostile,
        address recipient,
        uint256 from,
        uint256 to,
        uint256 step,
        bool mustRefuse
    ) internal {
        uint256 owed = hostile.claimableOf(recipient);
        bytes memory claimCall = abi.encodeCall(hostile.claimMany, (_a1(recipient)));
        bytes memory starved = abi.encodeWithSelector(ISplitEscrow.InsufficientGasForPayout.selector);
        uint256 snapshot = vm.snapshotState();
        uint256 starvedCalls;
        uint256 paidCalls;
        for (uint256 g = from; g <= to; g += step) {
            (bool ok, bytes memory ret) = address(hostile).call{gas: g}(claimCall);
            if (ok) {
                assertEq(hostile.claimableOf(recipient), 0, "a starved payout marked a payable recipient failed");
                assertEq(token.balanceOf(recipient), owed);
                ++paidCalls;
                vm.revertToState(snapshot);
            } else {
                if (ret.length != 0) {
                    assertEq(ret, starved);
                    ++starvedCalls;
                }
                assertEq(hostile.claimableOf(recipient), owed);
            }
        }
        emit log_named_uint("calls refused with InsufficientGasForPayout", starvedCalls);
        if (mustRefuse) assertGt(starvedCalls, 0);
        assertGt(paidCalls, 0);
    }

    function test_claimMany_returnBombsDoNotBreakTheBatch() public {
        // A look-alike token is needed: USDC returns 32 bytes. This one returns (or reverts with) 160 KB for six of
        // the recipients; the escrow copies at most 32 bytes of a payout's return data, so they cost the batch no
        // memory, and the others are paid.
        address[] memory r = new address[](8);
        uint16[] memory b = new uint16[](8);
        for (uint256 i; i < 8; ++i) {
            r[i] = makeAddr(string(abi.encodePacked("bomb-recipient-", vm.toString(i))));
            b[i] = 1_250;
        }
        (GasGuzzlerToken token, SplitEscrow hostile) = _hostileEscrow(r, b, 800 * USDC);
        for (uint256 i = 1; i <= 3; ++i) {
            token.setMode(r[i], GasGuzzlerToken.Mode.BombRevert);
            token.setMode(r[i + 3], GasGuzzlerToken.Mode.BombReturn);
        }
        uint256 payoutGas = hostile.PAYOUT_GAS();
        vm.expectEmit(address(hostile));
        emit ISplitEscrow.ClaimFailed(r[1], r[1], 100 * USDC);
        uint256 before = gasleft();
        uint256 paid = hostile.claimMany{gas: 5_000_000}(r);
        uint256 used = before - gasleft();
        emit log_named_uint("claimMany gas, six 160 KB return bombs of eight", used);

        // A reverting bomb is a failed payout; a returning one moved the tokens and returned true: paid.
        assertEq(paid, 5);
        for (uint256 i = 1; i <= 3; ++i) {
            assertEq(hostile.claimableOf(r[i]), 100 * USDC);
            assertEq(token.balanceOf(r[i + 3]), 100 * USDC);
        }
        assertEq(token.balanceOf(r[0]), 100 * USDC);
        assertEq(token.balanceOf(r[7]), 100 * USDC);
        assertEq(hostile.totalClaimable(), 300 * USDC);
        assertLt(used, 6 * payoutGas + 2 * 45_000, "return data cost the batch more than the payouts' gas");
    }
}
