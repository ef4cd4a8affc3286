// SPDX-License-Identifier: MIT
pragma solidity 0.8.30;

import {BaseTest} from "./Base.t.sol";
import {ISplitEscrow} from "../src/interfaces/ISplitEscrow.sol";
import {ISubscriptions} from "../src/interfaces/ISubscriptions.sol";

/// @notice SplitEscrow on Circle's USDC: blacklisted recipients and payout addresses in a batch claim, USDC paused by
/// its pauser, and the escrow itself blacklisted by Circle. A refused payout in `claimMany` is a `ClaimFailed` event,
/// is left out of the count it returns, and leaves the balance claimable.
contract SplitEscrowUSDCTest is BaseTest {
    uint256 internal constant PRICE = 79 * USDC;
    bytes32 internal constant ROOT = keccak256("usage-root");
    string internal constant BLACKLISTED = "Blacklistable: account is blacklisted";
    string internal constant PAUSED = "Pausable: paused";

    // Ten subscriptions settled to the split: creator 70%, platform 20%, host 10%.
    uint256 internal constant CREATOR_SHARE = 553 * USDC;
    uint256 internal constant PLATFORM_SHARE = 158 * USDC;
    uint256 internal constant HOST_SHARE = 79 * USDC;

    function _fundedSplit() internal returns (uint256 splitId) {
        splitId = _createSplit();
        for (uint256 i; i < 10; ++i) {
            _subscribe(i % 2 == 0 ? alice : bob, monthly, 0);
        }
        _settle(1, splitId, 790 * USDC);
    }

    function _recipients() internal view returns (address[] memory r) {
        r = new address[](3);
        (r[0], r[1], r[2]) = (creator, platform, host);
    }

    function _assertSolvent() internal view {
        assertGe(usdc.balanceOf(address(escrow)), escrow.unallocated() + escrow.totalClaimable(), "escrow insolvent");
    }

    /* BLACKLISTED RECIPIENT AND PAYOUT ADDRESS */

    /// The creator (paid to itself) and the platform's payout wallet are blacklisted: the host is paid, both others
    /// fail alone and keep their balances; after each rotates its payout address, the next batch pays them, and
    /// every settled unit reaches someone exactly once.
    function test_claimMany_blacklistedRecipientAndPayoutStayClaimableUntilRotated() public {
        _fundedSplit();
        address platformWallet = makeAddr("platform wallet");
        vm.prank(platform);
        escrow.setPayoutAddress(platformWallet);
        _blacklist(creator);
        _blacklist(platformWallet);

        vm.expectEmit(address(escrow));
        emit ISplitEscrow.ClaimFailed(creator, creator, CREATOR_SHARE);
        vm.expectEmit(address(escrow));
        emit ISplitEscrow.ClaimFailed(platform, platformWallet, PLATFORM_SHARE);
        vm.expectEmit(address(escrow));
        emit ISplitEscrow.Claimed(host, host, HOST_SHARE);
        assertEq(escrow.claimMany(_recipients()), 1, "only the host is paid");

        assertEq(escrow.claimableOf(creator), CREATOR_SHARE);
        assertEq(escrow.claimableOf(platform), PLATFORM_SHARE);
        assertEq(escrow.totalClaimable(), CREATOR_SHARE + PLATFORM_SHARE);
        assertEq(usdc.balanceOf(address(escrow)), CREATOR_SHARE + PLATFORM_SHARE);
        assertEq(usdc.balanceOf(host), HOST_SHARE);
        assertEq(escrow.surplus(), 0);
        _assertSolvent();
        // A retry changes nothing while the addresses stay blacklisted.
        assertEq(escrow.claimMany(_recipients()), 0);
        assertEq(escrow.totalClaimable(), CREATOR_SHARE + PLATFORM_SHARE);

        // Rotation: the escrow's own bookkeeping, no token involved, so a blacklisted recipient can do it too.
        address creatorWallet = makeAddr("creator wallet");
        address platformWallet2 = makeAddr("platform wallet 2");
        vm.prank(creator);
        escrow.setPayoutAddress(creatorWallet);
        vm.prank(platform);
        escrow.setPayoutAddress(platformWallet2);
        vm.expectEmit(address(escrow));
        emit ISplitEscrow.Claimed(creator, creatorWallet, CREATOR_SHARE);
        vm.expectEmit(address(escrow));
        emit ISplitEscrow.Claimed(platform, platformWallet2, PLATFORM_SHARE);
        assertEq(escrow.claimMany(_recipients()), 2);
        assertEq(escrow.claimMany(_recipients()), 0, "nobody is paid twice");

        assertEq(usdc.balanceOf(creatorWallet), CREATOR_SHARE);
        assertEq(usdc.balanceOf(platformWallet2), PLATFORM_SHARE);
        assertEq(usdc.balanceOf(platformWallet), 0);
        assertEq(usdc.balanceOf(creator), 0);
        assertEq(usdc.balanceOf(creatorWallet) + usdc.balanceOf(platformWallet2) + usdc.balanceOf(host), 790 * USDC);
        assertEq(escrow.totalClaimable(), 0);
        assertEq(usdc.balanceOf(address(escrow)), 0);
    }

    /* USDC PAUSED BY ITS PAUSER */

    function test_claims_usdcPaused_failCleanlyThenPayOnce() public {
        _fundedSplit();
        uint256 unsettled = _subscribe(carol, monthly, 0); // unallocated revenue a refund could come from
        _pauseUSDC();

        vm.expectRevert(bytes(PAUSED));
        escrow.claim(creator);
        vm.expectEmit(address(escrow));
        emit ISplitEscrow.ClaimFailed(creator, creator, CREATOR_SHARE);
        vm.expectEmit(address(escrow));
        emit ISplitEscrow.ClaimFailed(platform, platform, PLATFORM_SHARE);
        vm.expectEmit(address(escrow));
        emit ISplitEscrow.ClaimFailed(host, host, HOST_SHARE);
        assertEq(escrow.claimMany(_recipients()), 0);
        // A refund has to move tokens too.
        vm.prank(owner);
        vm.expectRevert(bytes(PAUSED));
        escrow.refund(unsettled, 0, 1 * USDC, false, keccak256("refund"));

        // Nothing marked paid; balances intact.
        assertEq(escrow.claimableOf(creator), CREATOR_SHARE);
        assertEq(escrow.claimableOf(platform), PLATFORM_SHARE);
        assertEq(escrow.claimableOf(host), HOST_SHARE);
        assertEq(escrow.totalClaimable(), 790 * USDC);
        assertEq(escrow.unallocated(), PRICE);
        assertEq(usdc.balanceOf(address(escrow)), 790 * USDC + PRICE);
        assertEq(usdc.balanceOf(creator) + usdc.balanceOf(platform) + usdc.balanceOf(host), 0);
        _assertSolvent();

        _unpauseUSDC();
        assertEq(escrow.claim(creator), CREATOR_SHARE);
        assertEq(escrow.claimMany(_recipients()), 2);
        assertEq(escrow.claimMany(_recipients()), 0, "nobody is paid twice");
        vm.expectRevert(abi.encodeWithSelector(ISplitEscrow.NothingToClaim.selector, creator));
        escrow.claim(creator);
        assertEq(usdc.balanceOf(creator), CREATOR_SHARE);
        assertEq(usdc.balanceOf(platform), PLATFORM_SHARE);
        assertEq(usdc.balanceOf(host), HOST_SHARE);
        assertEq(escrow.totalClaimable(), 0);
        assertEq(usdc.balanceOf(address(escrow)), PRICE);
    }

    /* THE ESCROW BLACKLISTED BY CIRCLE (contracts/README.md, "Circle blacklists one of our contracts") */

    /// The escrow receives every pull, so every pull from a wallet fails: renewals and usage charges fail item by
    /// item (no batch reverts), subscribing to a paid plan reverts, credit-covered items are paid and their transfer
    /// to the escrow is deferred. Deposits and withdrawals of credit (between a wallet and Subscriptions) go on.
    function test_escrowBlacklisted_everyPullFailsAndNoBatchReverts() public {
        uint256 a = _subscribe(alice, monthly, 50 * USDC);
        uint256 c = _subscribe(carol, monthly, 50 * USDC);
        vm.prank(carol);
        subs.deposit(100 * USDC);
        uint256 paidThrough = _sub(a).paidThrough;
        _blacklist(address(escrow));
        uint256 aliceBefore = usdc.balanceOf(alice);
        uint256 escrowBefore = usdc.balanceOf(address(escrow));

        vm.warp(paidThrough);
        vm.expectEmit(address(subs));
        emit ISubscriptions.RenewalFailed(a, 1, ISubscriptions.FailureReason.TokenRejected);
        vm.expectEmit(address(subs));
        emit ISubscriptions.Renewed(c, monthly, 1, paidThrough + MONTH, PRICE, PRICE);
        vm.expectEmit(address(subs));
        emit ISubscriptions.CreditTransferDeferred(PRICE);
        assertEq(subs.renew(_ids2(a, c)), 1);
        assertEq(uint8(_sub(a).status), uint8(ISubscriptions.Status.PastDue));
        assertEq(_sub(a).periodIndex, 0);

        vm.expectEmit(address(subs));
        emit ISubscriptions.UsageChargeFailed(a, 0, 5 * USDC, ISubscriptions.FailureReason.TokenRejected, ROOT);
        assertEq(_charge(a, 0, 5 * USDC, ROOT), 0);
        vm.expectRevert(
            abi.encodeWithSelector(
                ISubscriptions.PaymentFailed.selector, bob, PRICE, ISubscriptions.FailureReason.TokenRejected
            )
        );
        vm.prank(bob);
        subs.subscribe(monthly, 0);

        vm.startPrank(alice);
        subs.deposit(10 * USDC);
        subs.withdraw(10 * USDC);
        vm.stopPrank();

        assertEq(usdc.balanceOf(alice), aliceBefore);
        assertEq(usdc.balanceOf(address(escrow)), escrowBefore);
        assertEq(subs.creditOwedToEscrow(), PRICE);
        assertEq(subs.totalRevenue(), 2 * PRICE);
        vm.prank(address(subs));
        vm.expectRevert(bytes(BLACKLISTED));
        usdc.transferFrom(alice, address(escrow), PRICE);
    }

    /// The escrow's balance cannot move (USDC moves nothing out of, or into, a blacklisted account): `claim`,
    /// refunds (to a wallet or as credit) revert, `claimMany` reports every payout as failed; nothing owed is lost:
    /// balances stay claimable, unallocated revenue stays, and settling (bookkeeping) still credits recipients.
    function test_escrowBlacklisted_holdingsFrozenButEverythingOwedKept() public {
        uint256 splitId = _createSplit();
        uint256 a = _subscribe(alice, monthly, 0);
        _subscribe(bob, monthly, 0);
        _settle(1, splitId, 100 * USDC);
        _blacklist(address(escrow));
        uint256 held = usdc.balanceOf(address(escrow));
        assertEq(held, 2 * PRICE);

        vm.expectRevert(bytes(BLACKLISTED));
        escrow.claim(creator);
        vm.expectEmit(address(escrow));
        emit ISplitEscrow.ClaimFailed(creator, creator, 70 * USDC);
        vm.expectEmit(address(escrow));
        emit ISplitEscrow.ClaimFailed(platform, platform, 20 * USDC);
        vm.expectEmit(address(escrow));
        emit ISplitEscrow.ClaimFailed(host, host, 10 * USDC);
        assertEq(escrow.claimMany(_recipients()), 0);
        vm.startPrank(owner);
        vm.expectRevert(bytes(BLACKLISTED));
        escrow.refund(a, 0, 10 * USDC, false, keccak256("to the wallet"));
        vm.expectRevert(bytes(BLACKLISTED));
        escrow.refund(a, 0, 10 * USDC, true, keccak256("as credit"));
        vm.stopPrank();
        // Nothing can be sent to it either.
        _mint(stranger, 1);
        vm.prank(stranger);
        vm.expectRevert(bytes(BLACKLISTED));
        usdc.transfer(address(escrow), 1);

        _settle(2, splitId, 2 * PRICE - 100 * USDC);
        assertEq(escrow.unallocated(), 0);
        assertEq(escrow.totalClaimable(), 2 * PRICE);
        assertEq(escrow.claimableOf(creator), (2 * PRICE) * 7_000 / 10_000);
        assertEq(usdc.balanceOf(address(escrow)), held);
        _assertSolvent();
    }

    /// What the operator can do: pause Subscriptions (so nobody lapses while Circle's blacklist lasts) and keep
    /// settling; once Circle lifts it, every recipient is paid once, each past-due subscription renews once and the
    /// deferred credit reaches the escrow once.
    function test_escrowBlacklisted_afterCircleLiftsItEveryoneIsPaidOnce() public {
        uint256 splitId = _createSplit();
        uint256 a = _subscribe(alice, monthly, 0);
        uint256 c = _subscribe(carol, monthly, 0);
        vm.prank(carol);
        subs.deposit(100 * USDC);
        uint256 paidThrough = _sub(a).paidThrough;
        _settle(1, splitId, 2 * PRICE);
        _blacklist(address(escrow));

        vm.warp(paidThrough);
        assertEq(subs.renew(_ids2(a, c)), 1, "carol from credit, deferred; alice's pull fails");
        assertEq(escrow.claimMany(_recipients()), 0);
        vm.prank(owner);
        subs.pause();
        vm.warp(paidThrough + 5 * GRACE);
        assertTrue(subs.isEntitled(a));

        _unBlacklist(address(escrow));
        vm.prank(owner);
        subs.unpause();
        assertEq(escrow.claimMany(_recipients()), 3);
        assertEq(escrow.claimMany(_recipients()), 0);
        assertEq(subs.renew(_ids2(a, c)), 1);
        assertEq(subs.renew(_ids2(a, c)), 0);
        assertEq(_sub(a).periodIndex, 1);
        assertEq(subs.flushCreditToEscrow(), PRICE);
        assertEq(subs.flushCreditToEscrow(), 0);

        assertEq(usdc.balanceOf(creator) + usdc.balanceOf(platform) + usdc.balanceOf(host), 2 * PRICE);
        assertEq(subs.totalRevenue(), 4 * PRICE);
        assertEq(escrow.unallocated(), 2 * PRICE);
        assertEq(usdc.balanceOf(address(escrow)), 2 * PRICE);
        _assertSolvent();
    }

    function _ids2(uint256 a, uint256 b) internal pure returns (uint256[] memory ids) {
        ids = new uint256[](2);
        (ids[0], ids[1]) = (a, b);
    }

    function _sub(uint256 id) internal view returns (ISubscriptions.Subscription memory) {
        return subs.subscription(id);
    }
}
