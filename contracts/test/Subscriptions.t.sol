// SPDX-License-Identifier: MIT
pragma solidity 0.8.30;

import {Ownable} from "@openzeppelin/contracts/access/Ownable.sol";

import {BaseTest} from "./Base.t.sol";
import {Subscriptions} from "../src/Subscriptions.sol";
import {SplitEscrow} from "../src/SplitEscrow.sol";
import {ISubscriptions} from "../src/interfaces/ISubscriptions.sol";
import {FeeOnTransferToken} from "./mocks/FeeOnTransferToken.sol";

/// @notice Shared helpers of the Subscriptions suites.
abstract contract SubscriptionsHelpers is BaseTest {
    uint256 internal constant PRICE = 79 * USDC;
    bytes32 internal constant PERMIT_TYPEHASH =
        keccak256("Permit(address owner,address spender,uint256 value,uint256 nonce,uint256 deadline)");

    function _ids(uint256 a) internal pure returns (uint256[] memory ids) {
        ids = new uint256[](1);
        ids[0] = a;
    }

    function _ids(uint256 a, uint256 b) internal pure returns (uint256[] memory ids) {
        ids = new uint256[](2);
        (ids[0], ids[1]) = (a, b);
    }

    function _ids(uint256 a, uint256 b, uint256 c) internal pure returns (uint256[] memory ids) {
        ids = new uint256[](3);
        (ids[0], ids[1], ids[2]) = (a, b, c);
    }

    function _revoke(address who) internal {
        vm.prank(who);
        usdc.approve(address(subs), 0);
    }

    function _deposit(address who, uint256 amount) internal {
        vm.prank(who);
        subs.deposit(amount);
    }

    function _sub(uint256 id) internal view returns (ISubscriptions.Subscription memory) {
        return subs.subscription(id);
    }

    function _createPlan(uint256 price, uint256 period, uint256 grace) internal returns (uint256 planId) {
        vm.prank(owner);
        planId = subs.createPlan(price, period, grace);
    }

    /// @dev A separate Subscriptions + SplitEscrow pair on `token_`, with one plan of `price` per MONTH.
    function _deployPair(address token_, uint256 price)
        internal
        returns (Subscriptions subs_, SplitEscrow escrow_, uint256 planId)
    {
        escrow_ = new SplitEscrow(token_, owner, keeper, SPLIT_DELAY, MAX_HOLD);
        subs_ = new Subscriptions(token_, address(escrow_), owner, keeper, CHARGE_WINDOW);
        vm.startPrank(owner);
        escrow_.setSubscriptions(address(subs_));
        planId = subs_.createPlan(price, MONTH, GRACE);
        vm.stopPrank();
    }

    function _signPermit(uint256 key, address holder, uint256 value, uint256 deadline)
        internal
        view
        returns (uint8 v, bytes32 r, bytes32 s)
    {
        bytes32 structHash =
            keccak256(abi.encode(PERMIT_TYPEHASH, holder, address(subs), value, usdc.nonces(holder), deadline));
        bytes32 digest = keccak256(abi.encodePacked("\x19\x01", usdc.DOMAIN_SEPARATOR(), structHash));
        return vm.sign(key, digest);
    }
}

contract SubscriptionsTest is SubscriptionsHelpers {
    /* CONSTRUCTOR AND VIEWS OF THE WIRING */

    function test_constructor_setsImmutablesAndKeeper() public view {
        assertEq(subs.token(), address(usdc));
        assertEq(subs.escrow(), address(escrow));
        assertEq(subs.keeper(), keeper);
        assertEq(subs.owner(), owner);
        assertEq(subs.chargeWindow(), CHARGE_WINDOW);
        assertEq(subs.MIN_PERIOD(), 1 hours);
        assertFalse(subs.chargingPaused());
        assertEq(subs.totalRevenue(), 0);
        assertEq(subs.planCount(), 2);
        assertEq(subs.subscriptionCount(), 0);
    }

    function test_constructor_emitsKeeperSet() public {
        vm.expectEmit();
        emit ISubscriptions.KeeperSet(keeper);
        new Subscriptions(address(usdc), address(escrow), owner, keeper, CHARGE_WINDOW);
    }

    function test_constructor_zeroAddress_reverts() public {
        vm.expectRevert(ISubscriptions.ZeroAddress.selector);
        new Subscriptions(address(0), address(escrow), owner, keeper, CHARGE_WINDOW);
        vm.expectRevert(ISubscriptions.ZeroAddress.selector);
        new Subscriptions(address(usdc), address(0), owner, keeper, CHARGE_WINDOW);
        vm.expectRevert(ISubscriptions.ZeroAddress.selector);
        new Subscriptions(address(usdc), address(escrow), owner, address(0), CHARGE_WINDOW);
        vm.expectRevert(abi.encodeWithSelector(Ownable.OwnableInvalidOwner.selector, address(0)));
        new Subscriptions(address(usdc), address(escrow), address(0), keeper, CHARGE_WINDOW);
    }

    /* CREATE PLAN */

    function test_createPlan_storesPlanAndEmits() public {
        vm.expectEmit(address(subs));
        emit ISubscriptions.PlanCreated(3, 199 * USDC, 7 days, 1 days);
        uint256 planId = _createPlan(199 * USDC, 7 days, 1 days);
        assertEq(planId, 3);
        assertEq(subs.planCount(), 3);
        ISubscriptions.Plan memory p = subs.plan(planId);
        assertEq(p.price, 199 * USDC);
        assertEq(p.period, 7 days);
        assertEq(p.gracePeriod, 1 days);
        assertTrue(p.active);
    }

    function test_createPlan_priceAtUint96Max_succeeds() public {
        uint256 planId = _createPlan(type(uint96).max, MONTH, GRACE);
        assertEq(subs.plan(planId).price, type(uint96).max);
    }

    function test_createPlan_priceTooLarge_reverts() public {
        uint256 price = uint256(type(uint96).max) + 1;
        vm.expectRevert(abi.encodeWithSelector(ISubscriptions.PriceTooLarge.selector, price));
        vm.prank(owner);
        subs.createPlan(price, MONTH, GRACE);
    }

    function test_createPlan_periodBelowOneHour_reverts() public {
        // A pair whose charge window is 0, so only the one-hour minimum applies.
        Subscriptions s = new Subscriptions(address(usdc), address(escrow), owner, keeper, 0);
        vm.expectRevert(abi.encodeWithSelector(ISubscriptions.InvalidPeriod.selector, 1 hours - 1));
        vm.prank(owner);
        s.createPlan(PRICE, 1 hours - 1, 1);
        vm.prank(owner);
        assertEq(s.createPlan(PRICE, 1 hours, 1), 1);
    }

    /// A period must be longer than the charge window (strictly): when a period ends, the one before it is out of
    /// its window, so the ledger's two periods are all that can be charged.
    function test_createPlan_periodNotAboveChargeWindow_reverts() public {
        vm.expectRevert(abi.encodeWithSelector(ISubscriptions.InvalidPeriod.selector, CHARGE_WINDOW - 1));
        vm.prank(owner);
        subs.createPlan(PRICE, CHARGE_WINDOW - 1, 1);
        vm.expectRevert(abi.encodeWithSelector(ISubscriptions.InvalidPeriod.selector, CHARGE_WINDOW));
        vm.prank(owner);
        subs.createPlan(PRICE, CHARGE_WINDOW, 1);
        assertEq(_createPlan(PRICE, CHARGE_WINDOW + 1, 1), 3);
        assertEq(subs.plan(3).period, CHARGE_WINDOW + 1);
    }

    function test_createPlan_periodAboveUint32_reverts() public {
        uint256 period = uint256(type(uint32).max) + 1;
        vm.expectRevert(abi.encodeWithSelector(ISubscriptions.InvalidPeriod.selector, period));
        vm.prank(owner);
        subs.createPlan(PRICE, period, 1);
        assertEq(subs.plan(_createPlan(PRICE, type(uint32).max, 1)).period, type(uint32).max);
    }

    function test_createPlan_zeroGrace_reverts() public {
        vm.expectRevert(abi.encodeWithSelector(ISubscriptions.InvalidGracePeriod.selector, 0, MONTH));
        vm.prank(owner);
        subs.createPlan(PRICE, MONTH, 0);
    }

    function test_createPlan_graceNotShorterThanPeriod_reverts() public {
        vm.expectRevert(abi.encodeWithSelector(ISubscriptions.InvalidGracePeriod.selector, MONTH, MONTH));
        vm.prank(owner);
        subs.createPlan(PRICE, MONTH, MONTH);
        vm.expectRevert(abi.encodeWithSelector(ISubscriptions.InvalidGracePeriod.selector, MONTH + 1, MONTH));
        vm.prank(owner);
        subs.createPlan(PRICE, MONTH, MONTH + 1);
        assertEq(subs.plan(_createPlan(PRICE, MONTH, MONTH - 1)).gracePeriod, MONTH - 1);
    }

    function test_createPlan_notOwner_reverts() public {
        vm.expectRevert(abi.encodeWithSelector(Ownable.OwnableUnauthorizedAccount.selector, stranger));
        vm.prank(stranger);
        subs.createPlan(PRICE, MONTH, GRACE);
    }

    function test_createPlan_allIdsUsed_reverts() public {
        // Globals (slot 2): totalRevenue uint128 | subscriptionCount uint64 | planCount uint16 at bit 192.
        uint256 globals = uint256(vm.load(address(subs), bytes32(uint256(2))));
        globals = (globals & ~(uint256(0xffff) << 192)) | (uint256(type(uint16).max) << 192);
        vm.store(address(subs), bytes32(uint256(2)), bytes32(globals));
        assertEq(subs.planCount(), type(uint16).max);
        vm.expectRevert(ISubscriptions.TooManyPlans.selector);
        vm.prank(owner);
        subs.createPlan(PRICE, MONTH, GRACE);
    }

    /* SET PLAN ACTIVE */

    function test_setPlanActive_inactiveRefusesNewSubscribers() public {
        vm.expectEmit(address(subs));
        emit ISubscriptions.PlanActiveSet(monthly, false);
        vm.prank(owner);
        subs.setPlanActive(monthly, false);
        assertFalse(subs.plan(monthly).active);

        vm.expectRevert(abi.encodeWithSelector(ISubscriptions.PlanInactive.selector, monthly));
        vm.prank(alice);
        subs.subscribe(monthly, 0);

        vm.prank(owner);
        subs.setPlanActive(monthly, true);
        assertEq(_subscribe(alice, monthly, 0), 1);
    }

    function test_setPlanActive_existingSubscribersKeepRenewing() public {
        uint256 id = _subscribe(alice, monthly, 0);
        vm.prank(owner);
        subs.setPlanActive(monthly, false);
        for (uint256 k = 1; k <= 3; ++k) {
            vm.warp(_sub(id).paidThrough);
            assertEq(_renew(id), 1);
            assertEq(_sub(id).periodIndex, k);
        }
        assertEq(subs.totalRevenue(), 4 * PRICE);
    }

    function test_setPlanActive_unknownPlan_reverts() public {
        vm.expectRevert(abi.encodeWithSelector(ISubscriptions.UnknownPlan.selector, 3));
        vm.prank(owner);
        subs.setPlanActive(3, false);
    }

    function test_setPlanActive_notOwner_reverts() public {
        vm.expectRevert(abi.encodeWithSelector(Ownable.OwnableUnauthorizedAccount.selector, stranger));
        vm.prank(stranger);
        subs.setPlanActive(monthly, false);
    }

    /* SET KEEPER */

    function test_setKeeper_movesChargingRight() public {
        uint256 id = _subscribe(alice, payg, 100 * USDC);
        vm.expectEmit(address(subs));
        emit ISubscriptions.KeeperSet(stranger);
        vm.prank(owner);
        subs.setKeeper(stranger);
        assertEq(subs.keeper(), stranger);

        ISubscriptions.Charge[] memory charges = new ISubscriptions.Charge[](1);
        charges[0] = ISubscriptions.Charge(id, 0, 5 * USDC, bytes32(0));
        vm.expectRevert(abi.encodeWithSelector(ISubscriptions.NotKeeper.selector, keeper));
        vm.prank(keeper);
        subs.chargeUsage(charges);
        vm.prank(stranger);
        assertEq(subs.chargeUsage(charges), 1);
    }

    function test_setKeeper_zeroAddress_reverts() public {
        vm.expectRevert(ISubscriptions.ZeroAddress.selector);
        vm.prank(owner);
        subs.setKeeper(address(0));
    }

    function test_setKeeper_notOwner_reverts() public {
        vm.expectRevert(abi.encodeWithSelector(Ownable.OwnableUnauthorizedAccount.selector, stranger));
        vm.prank(stranger);
        subs.setKeeper(stranger);
    }

    /* PAUSE */

    function test_pause_stopsSubscribeRenewAndCharges() public {
        uint256 id = _subscribe(alice, monthly, 10 * USDC);
        vm.expectEmit(address(subs));
        emit ISubscriptions.ChargingPausedSet(true);
        vm.prank(owner);
        subs.pause();
        assertTrue(subs.chargingPaused());

        vm.expectRevert(ISubscriptions.ChargingPaused.selector);
        vm.prank(bob);
        subs.subscribe(monthly, 0);

        (uint8 v, bytes32 r, bytes32 s) = _signPermit(aliceKey, alice, PRICE, vm.getBlockTimestamp());
        vm.expectRevert(ISubscriptions.ChargingPaused.selector);
        vm.prank(alice);
        subs.subscribeWithPermit(monthly, 0, PRICE, vm.getBlockTimestamp(), v, r, s);

        vm.warp(_sub(id).paidThrough);
        vm.expectRevert(ISubscriptions.ChargingPaused.selector);
        subs.renew(_ids(id));

        ISubscriptions.Charge[] memory charges = new ISubscriptions.Charge[](1);
        charges[0] = ISubscriptions.Charge(id, 0, 1 * USDC, bytes32(0));
        vm.expectRevert(ISubscriptions.ChargingPaused.selector);
        vm.prank(keeper);
        subs.chargeUsage(charges);

        vm.expectEmit(address(subs));
        emit ISubscriptions.ChargingPausedSet(false);
        vm.prank(owner);
        subs.unpause();
        assertFalse(subs.chargingPaused());
        assertEq(_renew(id), 1);
    }

    function test_pause_doesNotStopCancelCreditOrCap() public {
        uint256 id = _subscribe(alice, monthly, 10 * USDC);
        vm.prank(owner);
        subs.pause();

        _deposit(alice, 20 * USDC);
        vm.prank(alice);
        subs.withdraw(5 * USDC);
        assertEq(subs.creditOf(alice), 15 * USDC);

        vm.prank(alice);
        subs.setOverageCap(id, 3 * USDC);
        assertEq(subs.usageLedger(id).overageCap, 3 * USDC);

        vm.prank(alice);
        subs.cancel(id);
        assertEq(uint8(_sub(id).status), uint8(ISubscriptions.Status.Cancelled));

        // A refund as credit from the escrow goes on too: to the subscriber of `id`, for its paid period 0.
        vm.prank(owner);
        escrow.refund(id, 0, 1 * USDC, true, keccak256("r"));
        assertEq(subs.creditOf(alice), 16 * USDC);
    }

    function test_pause_notOwner_reverts() public {
        vm.expectRevert(abi.encodeWithSelector(Ownable.OwnableUnauthorizedAccount.selector, stranger));
        vm.prank(stranger);
        subs.pause();
        vm.expectRevert(abi.encodeWithSelector(Ownable.OwnableUnauthorizedAccount.selector, stranger));
        vm.prank(stranger);
        subs.unpause();
    }

    /* OWNERSHIP */

    function test_transferOwnership_twoStep() public {
        vm.prank(owner);
        subs.transferOwnership(bob);
        assertEq(subs.owner(), owner);
        assertEq(subs.pendingOwner(), bob);

        vm.expectRevert(abi.encodeWithSelector(Ownable.OwnableUnauthorizedAccount.selector, stranger));
        vm.prank(stranger);
        subs.acceptOwnership();

        vm.prank(bob);
        subs.acceptOwnership();
        assertEq(subs.owner(), bob);
        assertEq(subs.pendingOwner(), address(0));

        vm.expectRevert(abi.encodeWithSelector(Ownable.OwnableUnauthorizedAccount.selector, owner));
        vm.prank(owner);
        subs.pause();
        vm.prank(bob);
        subs.pause();
        assertTrue(subs.chargingPaused());
    }

    function test_transferOwnership_notOwner_reverts() public {
        vm.expectRevert(abi.encodeWithSelector(Ownable.OwnableUnauthorizedAccount.selector, stranger));
        vm.prank(stranger);
        subs.transferOwnership(stranger);
    }

    /* SUBSCRIBE */

    function test_subscribe_pullsFirstPeriodIntoEscrow() public {
        uint256 aliceBefore = usdc.balanceOf(alice);
        vm.expectEmit(address(subs));
        emit ISubscriptions.Subscribed(1, alice, monthly, 10 * USDC, vm.getBlockTimestamp() + MONTH, PRICE, 0);
        uint256 id = _subscribe(alice, monthly, 10 * USDC);

        assertEq(id, 1);
        assertEq(subs.subscriptionCount(), 1);
        assertEq(usdc.balanceOf(address(escrow)), PRICE);
        assertEq(usdc.balanceOf(alice), aliceBefore - PRICE);
        assertEq(usdc.balanceOf(address(subs)), 0);
        assertEq(subs.totalRevenue(), PRICE);
        assertEq(escrow.unallocated(), PRICE);

        ISubscriptions.Subscription memory sub = _sub(id);
        assertEq(sub.subscriber, alice);
        assertEq(sub.paidThrough, vm.getBlockTimestamp() + MONTH);
        assertEq(sub.periodIndex, 0);
        assertEq(sub.planId, monthly);
        assertEq(uint8(sub.status), uint8(ISubscriptions.Status.Active));
        assertFalse(sub.planChangePending);
        assertEq(subs.usageLedger(id).overageCap, 10 * USDC);
        assertTrue(subs.isEntitled(id));
    }

    function test_subscribe_idsIncrease() public {
        assertEq(_subscribe(alice, monthly, 0), 1);
        assertEq(_subscribe(bob, monthly, 0), 2);
        assertEq(_subscribe(alice, payg, 0), 3);
        assertEq(subs.totalRevenue(), 2 * PRICE);
    }

    function test_subscribe_usesCreditBeforeWallet() public {
        _deposit(alice, 50 * USDC);
        uint256 aliceBefore = usdc.balanceOf(alice);
        vm.expectEmit(address(subs));
        emit ISubscriptions.Subscribed(1, alice, monthly, 0, vm.getBlockTimestamp() + MONTH, PRICE, 50 * USDC);
        _subscribe(alice, monthly, 0);
        assertEq(subs.creditOf(alice), 0);
        assertEq(usdc.balanceOf(alice), aliceBefore - 29 * USDC);
        assertEq(usdc.balanceOf(address(escrow)), PRICE);
        assertEq(usdc.balanceOf(address(subs)), 0);
        assertEq(subs.totalRevenue(), PRICE);
    }

    function test_subscribe_creditCoversPrice_walletUntouched() public {
        _deposit(alice, 100 * USDC);
        _revoke(alice); // no allowance needed when credit covers the price
        uint256 aliceBefore = usdc.balanceOf(alice);
        _subscribe(alice, monthly, 0);
        assertEq(subs.creditOf(alice), 21 * USDC);
        assertEq(usdc.balanceOf(alice), aliceBefore);
        assertEq(usdc.balanceOf(address(escrow)), PRICE);
        assertEq(usdc.balanceOf(address(subs)), 21 * USDC);
    }

    function test_subscribe_noAllowance_reverts() public {
        _revoke(alice);
        vm.expectRevert(
            abi.encodeWithSelector(
                ISubscriptions.PaymentFailed.selector, alice, PRICE, ISubscriptions.FailureReason.InsufficientAllowance
            )
        );
        vm.prank(alice);
        subs.subscribe(monthly, 0);
    }

    function test_subscribe_noBalance_reverts() public {
        vm.prank(stranger);
        usdc.approve(address(subs), type(uint256).max);
        vm.expectRevert(
            abi.encodeWithSelector(
                ISubscriptions.PaymentFailed.selector, stranger, PRICE, ISubscriptions.FailureReason.InsufficientBalance
            )
        );
        vm.prank(stranger);
        subs.subscribe(monthly, 0);
    }

    function test_subscribe_partialCreditNoAllowance_reportsWalletShortfall() public {
        _deposit(alice, 50 * USDC);
        _revoke(alice);
        vm.expectRevert(
            abi.encodeWithSelector(
                ISubscriptions.PaymentFailed.selector, alice, PRICE, ISubscriptions.FailureReason.InsufficientAllowance
            )
        );
        vm.prank(alice);
        subs.subscribe(monthly, 0);
        assertEq(subs.creditOf(alice), 50 * USDC); // credit untouched on failure
    }

    function test_subscribe_blacklisted_reverts() public {
        _blacklist(alice);
        vm.expectRevert(
            abi.encodeWithSelector(
                ISubscriptions.PaymentFailed.selector, alice, PRICE, ISubscriptions.FailureReason.TokenRejected
            )
        );
        vm.prank(alice);
        subs.subscribe(monthly, 0);
    }

    function test_subscribe_tokenPaused_reverts() public {
        _pauseUSDC();
        vm.expectRevert(
            abi.encodeWithSelector(
                ISubscriptions.PaymentFailed.selector, alice, PRICE, ISubscriptions.FailureReason.TokenRejected
            )
        );
        vm.prank(alice);
        subs.subscribe(monthly, 0);
    }

    function test_subscribe_payAsYouGo_pullsNothing() public {
        uint256 aliceBefore = usdc.balanceOf(alice);
        vm.expectEmit(address(subs));
        emit ISubscriptions.Subscribed(1, alice, payg, 50 * USDC, vm.getBlockTimestamp() + MONTH, 0, 0);
        uint256 id = _subscribe(alice, payg, 50 * USDC);
        assertEq(usdc.balanceOf(alice), aliceBefore);
        assertEq(usdc.balanceOf(address(escrow)), 0);
        assertEq(subs.totalRevenue(), 0);
        assertTrue(subs.isEntitled(id));
    }

    function test_subscribe_unknownPlan_reverts() public {
        vm.expectRevert(abi.encodeWithSelector(ISubscriptions.UnknownPlan.selector, 0));
        vm.prank(alice);
        subs.subscribe(0, 0);
        vm.expectRevert(abi.encodeWithSelector(ISubscriptions.UnknownPlan.selector, 3));
        vm.prank(alice);
        subs.subscribe(3, 0);
    }

    function test_subscribe_overageCapTooLarge_reverts() public {
        uint256 cap = uint256(type(uint56).max) + 1;
        vm.expectRevert(abi.encodeWithSelector(ISubscriptions.OverageCapTooLarge.selector, cap));
        vm.prank(alice);
        subs.subscribe(monthly, cap);
        vm.expectRevert(abi.encodeWithSelector(ISubscriptions.OverageCapTooLarge.selector, type(uint64).max));
        vm.prank(alice);
        subs.subscribe(monthly, type(uint64).max);
        uint256 id = _subscribe(alice, monthly, type(uint56).max);
        assertEq(subs.usageLedger(id).overageCap, type(uint56).max);
    }

    function test_subscribe_feeOnTransferToken_reverts() public {
        FeeOnTransferToken fot = new FeeOnTransferToken();
        (Subscriptions s,,) = _deployPair(address(fot), PRICE);
        fot.mint(alice, 1_000 * USDC);
        vm.prank(alice);
        fot.approve(address(s), type(uint256).max);
        vm.expectRevert(abi.encodeWithSelector(ISubscriptions.FeeOnTransferToken.selector, PRICE, PRICE - PRICE / 100));
        vm.prank(alice);
        s.subscribe(1, 0);
    }

    /* SUBSCRIBE WITH PERMIT */

    function test_subscribeWithPermit_validPermit() public {
        _revoke(alice);
        uint256 deadline = vm.getBlockTimestamp() + 1 hours;
        (uint8 v, bytes32 r, bytes32 s) = _signPermit(aliceKey, alice, PRICE, deadline);
        vm.expectEmit(address(subs));
        emit ISubscriptions.Subscribed(1, alice, monthly, 5 * USDC, vm.getBlockTimestamp() + MONTH, PRICE, 0);
        vm.prank(alice);
        uint256 id = subs.subscribeWithPermit(monthly, 5 * USDC, PRICE, deadline, v, r, s);
        assertEq(id, 1);
        assertEq(usdc.nonces(alice), 1);
        assertEq(usdc.allowance(alice, address(subs)), 0);
        assertEq(usdc.balanceOf(address(escrow)), PRICE);
        assertEq(subs.totalRevenue(), PRICE);
    }

    function test_subscribeWithPermit_frontRunPermitDoesNotBlock() public {
        _revoke(alice);
        uint256 deadline = vm.getBlockTimestamp() + 1 hours;
        (uint8 v, bytes32 r, bytes32 s) = _signPermit(aliceKey, alice, PRICE, deadline);
        vm.prank(stranger);
        usdc.permit(alice, address(subs), PRICE, deadline, v, r, s);
        assertEq(usdc.allowance(alice, address(subs)), PRICE);

        vm.prank(alice);
        uint256 id = subs.subscribeWithPermit(monthly, 0, PRICE, deadline, v, r, s);
        assertEq(_sub(id).subscriber, alice);
        assertEq(usdc.nonces(alice), 1);
        assertEq(usdc.balanceOf(address(escrow)), PRICE);
        assertEq(usdc.allowance(alice, address(subs)), 0);
    }

    function test_subscribeWithPermit_badPermitNoAllowance_reverts() public {
        _revoke(alice);
        uint256 deadline = vm.getBlockTimestamp() + 1 hours;
        (uint8 v, bytes32 r, bytes32 s) = _signPermit(aliceKey, alice, PRICE, deadline);
        // Submitted by bob: the signature does not match bob, the permit fails and the pull finds no allowance.
        _revoke(bob);
        vm.expectRevert(
            abi.encodeWithSelector(
                ISubscriptions.PaymentFailed.selector, bob, PRICE, ISubscriptions.FailureReason.InsufficientAllowance
            )
        );
        vm.prank(bob);
        subs.subscribeWithPermit(monthly, 0, PRICE, deadline, v, r, s);
        assertEq(usdc.nonces(alice), 0);
    }

    function test_subscribeWithPermit_expiredPermit_reverts() public {
        _revoke(alice);
        uint256 deadline = vm.getBlockTimestamp() - 1;
        (uint8 v, bytes32 r, bytes32 s) = _signPermit(aliceKey, alice, PRICE, deadline);
        vm.expectRevert(
            abi.encodeWithSelector(
                ISubscriptions.PaymentFailed.selector, alice, PRICE, ISubscriptions.FailureReason.InsufficientAllowance
            )
        );
        vm.prank(alice);
        subs.subscribeWithPermit(monthly, 0, PRICE, deadline, v, r, s);
    }

    /* CANCEL */

    function test_cancel_keepsAccessUntilPaidThroughAndStopsRenewals() public {
        uint256 id = _subscribe(alice, monthly, 0);
        uint256 paidThrough = _sub(id).paidThrough;
        vm.expectEmit(address(subs));
        emit ISubscriptions.Cancelled(id, paidThrough);
        vm.prank(alice);
        subs.cancel(id);
        assertEq(uint8(_sub(id).status), uint8(ISubscriptions.Status.Cancelled));

        vm.warp(paidThrough - 1);
        assertTrue(subs.isEntitled(id));
        vm.warp(paidThrough);
        assertFalse(subs.isEntitled(id));
        assertFalse(subs.dueForRenewal(_ids(id))[0]);
        uint256 escrowBefore = usdc.balanceOf(address(escrow));
        assertEq(_renew(id), 0);
        assertEq(usdc.balanceOf(address(escrow)), escrowBefore);
        assertEq(_sub(id).paidThrough, paidThrough);
        assertEq(uint8(_sub(id).status), uint8(ISubscriptions.Status.Cancelled));
    }

    function test_cancel_clearsPendingPlanChange() public {
        uint256 id = _subscribe(alice, monthly, 0);
        vm.startPrank(alice);
        subs.changePlan(id, payg);
        subs.cancel(id);
        vm.stopPrank();
        assertFalse(_sub(id).planChangePending);
        assertEq(subs.nextPlanOf(id), monthly);
    }

    function test_cancel_whilePastDue() public {
        uint256 id = _subscribe(alice, monthly, 0);
        _revoke(alice);
        vm.warp(_sub(id).paidThrough);
        _renew(id);
        assertEq(uint8(_sub(id).status), uint8(ISubscriptions.Status.PastDue));
        vm.prank(alice);
        subs.cancel(id);
        assertEq(uint8(_sub(id).status), uint8(ISubscriptions.Status.Cancelled));
        assertFalse(subs.isEntitled(id)); // cancelled: entitled only until paidThrough, which has passed
    }

    function test_cancel_notSubscriber_reverts() public {
        uint256 id = _subscribe(alice, monthly, 0);
        vm.expectRevert(abi.encodeWithSelector(ISubscriptions.NotSubscriber.selector, id, bob));
        vm.prank(bob);
        subs.cancel(id);
    }

    function test_cancel_unknownSubscription_reverts() public {
        vm.expectRevert(abi.encodeWithSelector(ISubscriptions.UnknownSubscription.selector, 7));
        vm.prank(alice);
        subs.cancel(7);
    }

    function test_cancel_twice_reverts() public {
        uint256 id = _subscribe(alice, monthly, 0);
        vm.prank(alice);
        subs.cancel(id);
        vm.expectRevert(
            abi.encodeWithSelector(ISubscriptions.SubscriptionEnded.selector, id, ISubscriptions.Status.Cancelled)
        );
        vm.prank(alice);
        subs.cancel(id);
    }

    function test_cancel_lapsed_reverts() public {
        uint256 id = _subscribe(alice, monthly, 0);
        vm.warp(_sub(id).paidThrough + GRACE);
        _renew(id);
        vm.expectRevert(
            abi.encodeWithSelector(ISubscriptions.SubscriptionEnded.selector, id, ISubscriptions.Status.Lapsed)
        );
        vm.prank(alice);
        subs.cancel(id);
    }

    /* SET OVERAGE CAP */

    function test_setOverageCap_updatesLedger() public {
        uint256 id = _subscribe(alice, payg, 10 * USDC);
        assertEq(subs.MAX_OVERAGE_CAP(), type(uint56).max);
        vm.expectEmit(address(subs));
        emit ISubscriptions.OverageCapSet(id, type(uint56).max, 0);
        vm.prank(alice);
        subs.setOverageCap(id, type(uint56).max);
        assertEq(subs.usageLedger(id).overageCap, type(uint56).max);
        (bool known, uint256 cap) = subs.overageCapOf(id, 0);
        assertTrue(known);
        assertEq(cap, type(uint56).max);
    }

    function test_setOverageCap_tooLarge_reverts() public {
        uint256 id = _subscribe(alice, payg, 10 * USDC);
        uint256 cap = uint256(type(uint56).max) + 1;
        vm.expectRevert(abi.encodeWithSelector(ISubscriptions.OverageCapTooLarge.selector, cap));
        vm.prank(alice);
        subs.setOverageCap(id, cap);
        // What fitted the old 64-bit ledger does not fit the 56-bit one.
        vm.expectRevert(abi.encodeWithSelector(ISubscriptions.OverageCapTooLarge.selector, type(uint64).max));
        vm.prank(alice);
        subs.setOverageCap(id, type(uint64).max);
        assertEq(subs.usageLedger(id).overageCap, 10 * USDC);
    }

    function test_setOverageCap_notSubscriber_reverts() public {
        uint256 id = _subscribe(alice, payg, 10 * USDC);
        vm.expectRevert(abi.encodeWithSelector(ISubscriptions.NotSubscriber.selector, id, keeper));
        vm.prank(keeper);
        subs.setOverageCap(id, 0);
    }

    function test_setOverageCap_unknownSubscription_reverts() public {
        vm.expectRevert(abi.encodeWithSelector(ISubscriptions.UnknownSubscription.selector, 1));
        vm.prank(alice);
        subs.setOverageCap(1, 0);
    }

    /* CHANGE PLAN */

    function test_changePlan_schedulesForNextRenewal() public {
        uint256 id = _subscribe(alice, monthly, 0);
        vm.expectEmit(address(subs));
        emit ISubscriptions.PlanChangeScheduled(id, payg);
        vm.prank(alice);
        subs.changePlan(id, payg);
        assertEq(subs.nextPlanOf(id), payg);
        assertTrue(_sub(id).planChangePending);
        assertEq(_sub(id).planId, monthly); // current period unchanged
    }

    function test_changePlan_backToCurrentWithdrawsPendingChange() public {
        uint256 id = _subscribe(alice, monthly, 0);
        vm.prank(alice);
        subs.changePlan(id, payg);
        vm.expectEmit(address(subs));
        emit ISubscriptions.PlanChangeScheduled(id, monthly);
        vm.prank(alice);
        subs.changePlan(id, monthly);
        assertFalse(_sub(id).planChangePending);
        assertEq(subs.nextPlanOf(id), monthly);

        vm.warp(_sub(id).paidThrough);
        vm.expectEmit(address(subs));
        emit ISubscriptions.Renewed(id, monthly, 1, vm.getBlockTimestamp() + MONTH, PRICE, 0);
        assertEq(_renew(id), 1);
        assertEq(subs.totalRevenue(), 2 * PRICE);
    }

    function test_changePlan_backToInactiveCurrentPlanAllowed() public {
        uint256 id = _subscribe(alice, monthly, 0);
        vm.prank(alice);
        subs.changePlan(id, payg);
        vm.prank(owner);
        subs.setPlanActive(monthly, false);
        vm.prank(alice);
        subs.changePlan(id, monthly);
        assertEq(subs.nextPlanOf(id), monthly);
    }

    function test_changePlan_unknownPlan_reverts() public {
        uint256 id = _subscribe(alice, monthly, 0);
        vm.expectRevert(abi.encodeWithSelector(ISubscriptions.UnknownPlan.selector, 9));
        vm.prank(alice);
        subs.changePlan(id, 9);
    }

    function test_changePlan_inactivePlan_reverts() public {
        uint256 id = _subscribe(alice, monthly, 0);
        vm.prank(owner);
        subs.setPlanActive(payg, false);
        vm.expectRevert(abi.encodeWithSelector(ISubscriptions.PlanInactive.selector, payg));
        vm.prank(alice);
        subs.changePlan(id, payg);
    }

    function test_changePlan_notSubscriber_reverts() public {
        uint256 id = _subscribe(alice, monthly, 0);
        vm.expectRevert(abi.encodeWithSelector(ISubscriptions.NotSubscriber.selector, id, bob));
        vm.prank(bob);
        subs.changePlan(id, payg);
    }

    function test_changePlan_unknownSubscription_reverts() public {
        vm.expectRevert(abi.encodeWithSelector(ISubscriptions.UnknownSubscription.selector, 3));
        vm.prank(alice);
        subs.changePlan(3, payg);
    }

    function test_changePlan_ended_reverts() public {
        uint256 id = _subscribe(alice, monthly, 0);
        vm.prank(alice);
        subs.cancel(id);
        vm.expectRevert(
            abi.encodeWithSelector(ISubscriptions.SubscriptionEnded.selector, id, ISubscriptions.Status.Cancelled)
        );
        vm.prank(alice);
        subs.changePlan(id, payg);
    }

    /* DEPOSIT AND WITHDRAW */

    function test_deposit_creditsCaller() public {
        uint256 aliceBefore = usdc.balanceOf(alice);
        vm.expectEmit(address(subs));
        emit ISubscriptions.CreditDeposited(alice, 30 * USDC, 30 * USDC);
        _deposit(alice, 30 * USDC);
        vm.expectEmit(address(subs));
        emit ISubscriptions.CreditDeposited(alice, 5 * USDC, 35 * USDC);
        _deposit(alice, 5 * USDC);
        assertEq(subs.creditOf(alice), 35 * USDC);
        assertEq(usdc.balanceOf(address(subs)), 35 * USDC);
        assertEq(usdc.balanceOf(alice), aliceBefore - 35 * USDC);
        assertEq(subs.totalRevenue(), 0); // credit is not revenue until used
    }

    function test_deposit_zeroAmount_reverts() public {
        vm.expectRevert(ISubscriptions.ZeroAmount.selector);
        _deposit(alice, 0);
    }

    function test_deposit_feeOnTransfer_reverts() public {
        FeeOnTransferToken fot = new FeeOnTransferToken();
        (Subscriptions s,,) = _deployPair(address(fot), PRICE);
        fot.mint(alice, 1_000 * USDC);
        vm.startPrank(alice);
        fot.approve(address(s), type(uint256).max);
        vm.expectRevert(abi.encodeWithSelector(ISubscriptions.FeeOnTransferToken.selector, 100 * USDC, 99 * USDC));
        s.deposit(100 * USDC);
        vm.stopPrank();
    }

    function test_withdraw_returnsCredit() public {
        _deposit(alice, 30 * USDC);
        uint256 aliceBefore = usdc.balanceOf(alice);
        vm.expectEmit(address(subs));
        emit ISubscriptions.CreditWithdrawn(alice, 10 * USDC, 20 * USDC);
        vm.prank(alice);
        subs.withdraw(10 * USDC);
        assertEq(subs.creditOf(alice), 20 * USDC);
        assertEq(usdc.balanceOf(alice), aliceBefore + 10 * USDC);
        vm.prank(alice);
        subs.withdraw(20 * USDC);
        assertEq(subs.creditOf(alice), 0);
        assertEq(usdc.balanceOf(address(subs)), 0);
    }

    function test_withdraw_zeroAmount_reverts() public {
        vm.expectRevert(ISubscriptions.ZeroAmount.selector);
        vm.prank(alice);
        subs.withdraw(0);
    }

    function test_withdraw_moreThanCredit_reverts() public {
        _deposit(alice, 30 * USDC);
        vm.expectRevert(abi.encodeWithSelector(ISubscriptions.InsufficientCredit.selector, 30 * USDC, 30 * USDC + 1));
        vm.prank(alice);
        subs.withdraw(30 * USDC + 1);
        // Another subscriber's credit is not reachable.
        vm.expectRevert(abi.encodeWithSelector(ISubscriptions.InsufficientCredit.selector, 0, 1));
        vm.prank(bob);
        subs.withdraw(1);
    }

    /* CREDIT FROM ESCROW */

    function test_creditFromEscrow_notEscrow_reverts() public {
        vm.expectRevert(abi.encodeWithSelector(ISubscriptions.NotEscrow.selector, owner));
        vm.prank(owner);
        subs.creditFromEscrow(alice, 1);
        vm.expectRevert(abi.encodeWithSelector(ISubscriptions.NotEscrow.selector, alice));
        vm.prank(alice);
        subs.creditFromEscrow(alice, 1);
    }

    function test_creditFromEscrow_refundToCredit() public {
        uint256 id = _subscribe(alice, monthly, 0);
        vm.expectEmit(address(subs));
        emit ISubscriptions.CreditRefunded(alice, 30 * USDC, 30 * USDC);
        vm.prank(owner);
        escrow.refund(id, 0, 30 * USDC, true, keccak256("refund-1"));
        assertEq(subs.creditOf(alice), 30 * USDC);
        assertEq(escrow.refundedFor(id, 0), 30 * USDC);
        assertEq(escrow.refundable(id, 0), PRICE - 30 * USDC);
        assertEq(usdc.balanceOf(address(subs)), 30 * USDC);
        assertEq(usdc.balanceOf(address(escrow)), PRICE - 30 * USDC);
        assertEq(escrow.unallocated(), PRICE - 30 * USDC);

        // The refunded credit pays the next renewal first.
        uint256 aliceBefore = usdc.balanceOf(alice);
        vm.warp(_sub(id).paidThrough);
        vm.expectEmit(address(subs));
        emit ISubscriptions.Renewed(id, monthly, 1, vm.getBlockTimestamp() + MONTH, PRICE, 30 * USDC);
        _renew(id);
        assertEq(subs.creditOf(alice), 0);
        assertEq(usdc.balanceOf(alice), aliceBefore - 49 * USDC);
        assertEq(escrow.unallocated(), 2 * PRICE - 30 * USDC);
    }

    /* VIEWS */

    function test_isEntitled_lifecycle() public {
        uint256 id = _subscribe(alice, monthly, 0);
        uint256 paidThrough = _sub(id).paidThrough;
        assertFalse(subs.isEntitled(99));
        assertTrue(subs.isEntitled(id));

        vm.warp(paidThrough); // due, in grace, not renewed yet
        assertTrue(subs.isEntitled(id));
        _revoke(alice);
        _renew(id); // fails: past due, still within grace
        assertEq(uint8(_sub(id).status), uint8(ISubscriptions.Status.PastDue));
        vm.warp(paidThrough + GRACE - 1);
        assertTrue(subs.isEntitled(id));
        vm.warp(paidThrough + GRACE); // grace over, even before anyone lapses it
        assertFalse(subs.isEntitled(id));
        _renew(id);
        assertEq(uint8(_sub(id).status), uint8(ISubscriptions.Status.Lapsed));
        assertFalse(subs.isEntitled(id));
    }

    function test_isEntitled_activeNeverRenewedEndsAfterGrace() public {
        uint256 id = _subscribe(alice, monthly, 0);
        vm.warp(_sub(id).paidThrough + GRACE - 1);
        assertTrue(subs.isEntitled(id));
        vm.warp(_sub(id).paidThrough + GRACE);
        assertFalse(subs.isEntitled(id));
    }

    function test_dueForRenewal_onlyWhenDueAndFunded() public {
        uint256 a = _subscribe(alice, monthly, 0);
        uint256 b = _subscribe(bob, monthly, 0);
        uint256 c = _subscribe(carol, monthly, 0);
        uint256[] memory ids = new uint256[](4);
        (ids[0], ids[1], ids[2], ids[3]) = (a, b, c, 99);

        bool[] memory due = subs.dueForRenewal(ids);
        assertEq(due.length, 4);
        assertFalse(due[0] || due[1] || due[2] || due[3]); // not due yet

        vm.warp(_sub(a).paidThrough);
        vm.prank(bob);
        usdc.approve(address(subs), PRICE - 1); // allowance short
        vm.startPrank(carol);
        usdc.transfer(stranger, usdc.balanceOf(carol) - (PRICE - 1)); // balance short
        vm.stopPrank();
        due = subs.dueForRenewal(ids);
        assertTrue(due[0]);
        assertFalse(due[1]);
        assertFalse(due[2]);
        assertFalse(due[3]); // unknown

        // Credit makes up the shortfall.
        _deposit(carol, PRICE - 1); // carol's wallet is now empty, credit PRICE - 1
        _mint(carol, 1);
        assertTrue(subs.dueForRenewal(ids)[2]);
        vm.prank(bob);
        usdc.approve(address(subs), PRICE);
        assertTrue(subs.dueForRenewal(ids)[1]);

        vm.warp(_sub(a).paidThrough + GRACE); // past grace: lapses rather than renews
        due = subs.dueForRenewal(ids);
        assertFalse(due[0] || due[1] || due[2]);
        subs.renew(ids);
        assertEq(uint8(_sub(a).status), uint8(ISubscriptions.Status.Lapsed));
        assertFalse(subs.dueForRenewal(ids)[0]);
    }

    function test_dueForRenewal_usesNextPlanPrice() public {
        uint256 id = _subscribe(alice, monthly, 0);
        uint256 pro = _createPlan(500 * USDC, MONTH, GRACE);
        vm.prank(alice);
        usdc.approve(address(subs), PRICE);
        vm.warp(_sub(id).paidThrough);
        assertTrue(subs.dueForRenewal(_ids(id))[0]);
        vm.prank(alice);
        subs.changePlan(id, pro);
        assertFalse(subs.dueForRenewal(_ids(id))[0]);
    }

    function test_currentPeriod_tracksRenewals() public {
        uint256 t0 = vm.getBlockTimestamp();
        uint256 id = _subscribe(alice, monthly, 0);
        (uint256 index, uint256 start, uint256 end) = subs.currentPeriod(id);
        assertEq(index, 0);
        assertEq(start, t0);
        assertEq(end, t0 + MONTH);

        vm.warp(t0 + MONTH + 1 days);
        _renew(id);
        (index, start, end) = subs.currentPeriod(id);
        assertEq(index, 1);
        assertEq(start, t0 + MONTH);
        assertEq(end, t0 + 2 * MONTH);
    }

    function test_currentPeriod_unknown_reverts() public {
        vm.expectRevert(abi.encodeWithSelector(ISubscriptions.UnknownSubscription.selector, 1));
        subs.currentPeriod(1);
    }

    function test_nextPlanOf_unknownIsZero() public view {
        assertEq(subs.nextPlanOf(42), 0);
    }

    function test_plan_unknownIsEmpty() public view {
        ISubscriptions.Plan memory p = subs.plan(42);
        assertEq(p.period, 0);
        assertFalse(p.active);
    }
}
