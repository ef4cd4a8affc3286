// SPDX-License-Identifier: MIT
pragma solidity 0.8.30;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";

import {SubscriptionsHelpers} from "./Subscriptions.t.sol";
import {ISubscriptions} from "../src/interfaces/ISubscriptions.sol";
import {ERC1271Wallet} from "./mocks/ERC1271Wallet.sol";

/// @notice Subscriptions on Circle's USDC: a blacklisted subscriber inside a batch, USDC paused by its pauser,
/// Subscriptions itself blacklisted by Circle, USDC's EIP-2612 permit, and a smart-contract (ERC-1271) wallet.
/// Every failed pull shows up as a `RenewalFailed` or `UsageChargeFailed` event with `TokenRejected` and is left out
/// of the count `renew`/`chargeUsage` return; the batch itself never reverts.
contract SubscriptionsUSDCTest is SubscriptionsHelpers {
    bytes32 internal constant ROOT = keccak256("usage-root");
    uint256 internal constant CAP = 50 * USDC;
    string internal constant BLACKLISTED = "Blacklistable: account is blacklisted";
    string internal constant PAUSED = "Pausable: paused";

    function _charges(uint256 id0, uint256 amount0, uint256 id1, uint256 amount1, uint256 id2, uint256 amount2)
        internal
        pure
        returns (ISubscriptions.Charge[] memory charges)
    {
        charges = new ISubscriptions.Charge[](3);
        charges[0] = ISubscriptions.Charge(id0, 0, amount0, ROOT);
        charges[1] = ISubscriptions.Charge(id1, 0, amount1, ROOT);
        charges[2] = ISubscriptions.Charge(id2, 0, amount2, ROOT);
    }

    function _chargeBatch(ISubscriptions.Charge[] memory charges) internal returns (uint256) {
        vm.prank(keeper);
        return subs.chargeUsage(charges);
    }

    /* A BLACKLISTED SUBSCRIBER INSIDE A BATCH */

    function test_renew_blacklistedSubscriberFailsAloneInTheBatch() public {
        uint256 a = _subscribe(alice, monthly, 0);
        uint256 b = _subscribe(bob, monthly, 0);
        uint256 c = _subscribe(carol, monthly, 0);
        uint256 paidThrough = _sub(b).paidThrough;
        _blacklist(bob);
        uint256 bobBefore = usdc.balanceOf(bob);
        uint256 escrowBefore = usdc.balanceOf(address(escrow));

        vm.warp(paidThrough);
        vm.expectEmit(address(subs));
        emit ISubscriptions.Renewed(a, monthly, 1, paidThrough + MONTH, PRICE, 0);
        vm.expectEmit(address(subs));
        emit ISubscriptions.RenewalFailed(b, 1, ISubscriptions.FailureReason.TokenRejected);
        vm.expectEmit(address(subs));
        emit ISubscriptions.Renewed(c, monthly, 1, paidThrough + MONTH, PRICE, 0);
        assertEq(subs.renew(_ids(a, b, c)), 2, "the other two renew");

        // The blacklisted subscriber's period did not advance; nothing was taken from it.
        assertEq(_sub(b).periodIndex, 0);
        assertEq(_sub(b).paidThrough, paidThrough);
        assertEq(uint8(_sub(b).status), uint8(ISubscriptions.Status.PastDue));
        assertEq(usdc.balanceOf(bob), bobBefore);
        assertEq(_sub(a).periodIndex, 1);
        assertEq(_sub(c).periodIndex, 1);
        assertEq(usdc.balanceOf(address(escrow)), escrowBefore + 2 * PRICE);
        assertEq(subs.totalRevenue(), 5 * PRICE);
        // The reason USDC gives for the pull Subscriptions made (Subscriptions reports it as TokenRejected).
        vm.prank(address(subs));
        vm.expectRevert(bytes(BLACKLISTED));
        usdc.transferFrom(bob, address(escrow), PRICE);

        // Once Circle lifts the blacklist (within grace), the renewal goes through, once.
        _unBlacklist(bob);
        assertEq(subs.renew(_ids(a, b, c)), 1);
        assertEq(_sub(b).periodIndex, 1);
        assertEq(_sub(b).paidThrough, paidThrough + MONTH);
        assertEq(subs.renew(_ids(a, b, c)), 0);
        assertEq(usdc.balanceOf(bob), bobBefore - PRICE);
    }

    function test_chargeUsage_blacklistedSubscriberFailsAloneInTheBatch() public {
        uint256 a = _subscribe(alice, payg, CAP);
        uint256 b = _subscribe(bob, payg, CAP);
        uint256 c = _subscribe(carol, payg, CAP);
        _blacklist(bob);
        uint256 bobBefore = usdc.balanceOf(bob);
        ISubscriptions.Charge[] memory charges = _charges(a, 3 * USDC, b, 4 * USDC, c, 5 * USDC);

        vm.expectEmit(address(subs));
        emit ISubscriptions.UsageCharged(a, 0, 3 * USDC, 3 * USDC, 0, 3 * USDC, ROOT);
        vm.expectEmit(address(subs));
        emit ISubscriptions.UsageChargeFailed(b, 0, 4 * USDC, ISubscriptions.FailureReason.TokenRejected, ROOT);
        vm.expectEmit(address(subs));
        emit ISubscriptions.UsageCharged(c, 0, 5 * USDC, 5 * USDC, 0, 5 * USDC, ROOT);
        assertEq(_chargeBatch(charges), 2, "the other two are charged");

        assertEq(subs.chargedInPeriod(b, 0), 0, "nothing charged to the blacklisted subscriber");
        assertEq(usdc.balanceOf(bob), bobBefore);
        assertEq(subs.chargedInPeriod(a, 0), 3 * USDC);
        assertEq(subs.chargedInPeriod(c, 0), 5 * USDC);
        assertEq(usdc.balanceOf(address(escrow)), 8 * USDC);
        assertEq(subs.totalRevenue(), 8 * USDC);

        // The keeper resends the same batch once the blacklist is lifted: only the failed item collects.
        _unBlacklist(bob);
        assertEq(_chargeBatch(charges), 1);
        assertEq(subs.chargedInPeriod(b, 0), 4 * USDC);
        assertEq(_chargeBatch(charges), 0);
        assertEq(usdc.balanceOf(bob), bobBefore - 4 * USDC);
        assertEq(subs.totalRevenue(), 12 * USDC);
    }

    /* USDC PAUSED BY ITS PAUSER */

    function test_renewAndChargeUsage_usdcPaused_failCleanlyThenCompleteOnce() public {
        uint256 a = _subscribe(alice, monthly, CAP);
        uint256 b = _subscribe(bob, monthly, CAP);
        uint256 paidThrough = _sub(a).paidThrough;
        vm.warp(paidThrough); // both due; period 0's usage is still inside its charge window
        uint256 aliceBefore = usdc.balanceOf(alice);
        uint256 bobBefore = usdc.balanceOf(bob);
        ISubscriptions.Charge[] memory charges = new ISubscriptions.Charge[](2);
        charges[0] = ISubscriptions.Charge(a, 0, 3 * USDC, ROOT);
        charges[1] = ISubscriptions.Charge(b, 0, 4 * USDC, ROOT);

        _pauseUSDC();
        vm.expectEmit(address(subs));
        emit ISubscriptions.RenewalFailed(a, 1, ISubscriptions.FailureReason.TokenRejected);
        vm.expectEmit(address(subs));
        emit ISubscriptions.RenewalFailed(b, 1, ISubscriptions.FailureReason.TokenRejected);
        assertEq(subs.renew(_ids(a, b)), 0);
        vm.expectEmit(address(subs));
        emit ISubscriptions.UsageChargeFailed(a, 0, 3 * USDC, ISubscriptions.FailureReason.TokenRejected, ROOT);
        vm.expectEmit(address(subs));
        emit ISubscriptions.UsageChargeFailed(b, 0, 4 * USDC, ISubscriptions.FailureReason.TokenRejected, ROOT);
        assertEq(_chargeBatch(charges), 0);

        // Nothing marked paid, nothing moved.
        assertEq(_sub(a).periodIndex, 0);
        assertEq(_sub(b).periodIndex, 0);
        assertEq(_sub(a).paidThrough, paidThrough);
        assertEq(subs.chargedInPeriod(a, 0), 0);
        assertEq(subs.chargedInPeriod(b, 0), 0);
        assertEq(usdc.balanceOf(alice), aliceBefore);
        assertEq(usdc.balanceOf(bob), bobBefore);
        assertEq(usdc.balanceOf(address(escrow)), 2 * PRICE);
        assertEq(subs.totalRevenue(), 2 * PRICE);
        assertEq(subs.creditOwedToEscrow(), 0);
        vm.prank(address(subs));
        vm.expectRevert(bytes(PAUSED));
        usdc.transferFrom(alice, address(escrow), PRICE);

        // After the unpause, the same batches complete, each item exactly once.
        _unpauseUSDC();
        assertEq(subs.renew(_ids(a, b)), 2);
        assertEq(_chargeBatch(charges), 2);
        assertEq(subs.renew(_ids(a, b)), 0);
        assertEq(_chargeBatch(charges), 0);
        assertEq(_sub(a).periodIndex, 1);
        assertEq(_sub(b).paidThrough, paidThrough + MONTH);
        assertEq(subs.chargedInPeriod(a, 0), 3 * USDC);
        assertEq(subs.chargedInPeriod(b, 0), 4 * USDC);
        assertEq(usdc.balanceOf(alice), aliceBefore - PRICE - 3 * USDC);
        assertEq(usdc.balanceOf(bob), bobBefore - PRICE - 4 * USDC);
        assertEq(usdc.balanceOf(address(escrow)), 4 * PRICE + 7 * USDC);
        assertEq(subs.totalRevenue(), 4 * PRICE + 7 * USDC);
    }

    /* SUBSCRIPTIONS BLACKLISTED BY CIRCLE (contracts/README.md, "Circle blacklists one of our contracts") */

    /// Every pull from a wallet fails (Subscriptions is the spender of each `transferFrom`): renewals and usage
    /// charges fail item by item, no batch reverts, subscribing to a paid plan and depositing credit revert, and no
    /// wallet is touched. A free plan still renews (there is nothing to pull).
    function test_subscriptionsBlacklisted_everyWalletPullFailsAndNoBatchReverts() public {
        uint256 a = _subscribe(alice, monthly, CAP);
        uint256 b = _subscribe(bob, payg, CAP);
        uint256 paidThrough = _sub(a).paidThrough;
        _blacklist(address(subs));
        uint256 aliceBefore = usdc.balanceOf(alice);
        uint256 bobBefore = usdc.balanceOf(bob);
        uint256 escrowBefore = usdc.balanceOf(address(escrow));

        vm.expectEmit(address(subs));
        emit ISubscriptions.UsageChargeFailed(b, 0, 5 * USDC, ISubscriptions.FailureReason.TokenRejected, ROOT);
        assertEq(_charge(b, 0, 5 * USDC, ROOT), 0);
        assertEq(subs.chargedInPeriod(b, 0), 0);

        vm.warp(paidThrough);
        vm.expectEmit(address(subs));
        emit ISubscriptions.RenewalFailed(a, 1, ISubscriptions.FailureReason.TokenRejected);
        vm.expectEmit(address(subs));
        emit ISubscriptions.Renewed(b, payg, 1, paidThrough + MONTH, 0, 0);
        assertEq(subs.renew(_ids(a, b)), 1, "only the free plan renews");
        assertEq(uint8(_sub(a).status), uint8(ISubscriptions.Status.PastDue));
        assertEq(_sub(a).periodIndex, 0);
        assertEq(_sub(a).paidThrough, paidThrough);

        vm.expectRevert(
            abi.encodeWithSelector(
                ISubscriptions.PaymentFailed.selector, carol, PRICE, ISubscriptions.FailureReason.TokenRejected
            )
        );
        vm.prank(carol);
        subs.subscribe(monthly, 0);
        vm.expectRevert(bytes(BLACKLISTED));
        vm.prank(carol);
        subs.deposit(10 * USDC);

        assertEq(usdc.balanceOf(alice), aliceBefore);
        assertEq(usdc.balanceOf(bob), bobBefore);
        assertEq(usdc.balanceOf(address(escrow)), escrowBefore);
        assertEq(subs.totalRevenue(), PRICE);
        vm.prank(address(subs));
        vm.expectRevert(bytes(BLACKLISTED));
        usdc.transferFrom(alice, address(escrow), PRICE);
    }

    /// Renewals and charges that credit covers still go through (credit is a balance kept by Subscriptions), but the
    /// tokens cannot leave Subscriptions: their transfer to the escrow is deferred, and `withdraw` and
    /// `flushCreditToEscrow` revert. The credit and the deferred amount stay in Subscriptions, recorded.
    function test_subscriptionsBlacklisted_creditStillPaysButStaysInSubscriptions() public {
        uint256 a = _subscribe(alice, monthly, CAP);
        _deposit(alice, 200 * USDC);
        _blacklist(address(subs));
        uint256 held = usdc.balanceOf(address(subs));
        assertEq(held, 200 * USDC);

        vm.warp(_sub(a).paidThrough);
        vm.expectEmit(address(subs));
        emit ISubscriptions.Renewed(a, monthly, 1, _sub(a).paidThrough + MONTH, PRICE, PRICE);
        vm.expectEmit(address(subs));
        emit ISubscriptions.CreditTransferDeferred(PRICE);
        assertEq(subs.renew(_ids(a)), 1);
        vm.expectEmit(address(subs));
        emit ISubscriptions.UsageCharged(a, 1, 10 * USDC, 10 * USDC, 10 * USDC, 10 * USDC, ROOT);
        vm.expectEmit(address(subs));
        emit ISubscriptions.CreditTransferDeferred(PRICE + 10 * USDC);
        assertEq(_charge(a, 1, 10 * USDC, ROOT), 1);

        assertEq(_sub(a).periodIndex, 1);
        assertEq(subs.creditOf(alice), 200 * USDC - PRICE - 10 * USDC);
        assertEq(subs.creditOwedToEscrow(), PRICE + 10 * USDC);
        assertEq(usdc.balanceOf(address(subs)), held, "no token left Subscriptions");
        assertEq(subs.totalRevenue(), PRICE, "deferred credit is not revenue until it reaches the escrow");

        vm.expectRevert(bytes(BLACKLISTED));
        vm.prank(alice);
        subs.withdraw(1 * USDC);
        vm.expectRevert(bytes(BLACKLISTED));
        subs.flushCreditToEscrow();
        assertEq(subs.creditOf(alice), 200 * USDC - PRICE - 10 * USDC);
        assertEq(subs.creditOwedToEscrow(), PRICE + 10 * USDC);
        assertEq(usdc.balanceOf(address(subs)), held);
    }

    /// What reached the escrow before is unaffected (the escrow is not blacklisted): settlements, claims and
    /// refunds to a wallet go on. A refund as credit reverts: it transfers to Subscriptions.
    function test_subscriptionsBlacklisted_escrowKeepsPayingWhatItHolds() public {
        uint256 splitId = _createSplit();
        uint256 a = _subscribe(alice, monthly, 0);
        _subscribe(bob, monthly, 0);
        _blacklist(address(subs));

        _settle(1, splitId, PRICE);
        uint256 creatorShare = PRICE * 7_000 / 10_000;
        assertEq(escrow.claim(creator), creatorShare);
        assertEq(usdc.balanceOf(creator), creatorShare);

        uint256 aliceBefore = usdc.balanceOf(alice);
        vm.prank(owner);
        escrow.refund(a, 0, 10 * USDC, false, keccak256("refund to the wallet"));
        assertEq(usdc.balanceOf(alice), aliceBefore + 10 * USDC);

        vm.prank(owner);
        vm.expectRevert(bytes(BLACKLISTED));
        escrow.refund(a, 0, 10 * USDC, true, keccak256("refund as credit"));
        assertEq(subs.creditOf(alice), 0);
        assertEq(escrow.refundedFor(a, 0), 10 * USDC);
        assertEq(usdc.balanceOf(address(escrow)), escrow.unallocated() + escrow.totalClaimable());
    }

    /// Without the operator, a blacklist that lasts beyond the grace period lapses every subscription that pays
    /// from its wallet and fell due meanwhile.
    function test_subscriptionsBlacklisted_beyondGraceLapsesWithoutTheOperatorsPause() public {
        uint256 a = _subscribe(alice, monthly, 0);
        _blacklist(address(subs));
        vm.warp(_sub(a).paidThrough);
        assertEq(subs.renew(_ids(a)), 0);
        vm.warp(_sub(a).paidThrough + GRACE);
        _unBlacklist(address(subs)); // too late
        vm.expectEmit(address(subs));
        emit ISubscriptions.Lapsed(a, _sub(a).paidThrough);
        assertEq(subs.renew(_ids(a)), 0);
        assertEq(uint8(_sub(a).status), uint8(ISubscriptions.Status.Lapsed));
        assertFalse(subs.isEntitled(a));
    }

    /// What the operator can do: pause Subscriptions while Circle's blacklist lasts. Time paused does not count
    /// against grace periods or charge windows, so nobody lapses; once Circle lifts the blacklist and the operator
    /// unpauses, each past-due subscription renews once (on its anchored schedule), the deferred credit reaches the
    /// escrow once, and credit can be withdrawn again.
    function test_subscriptionsBlacklisted_operatorPausesUntilCircleLiftsIt() public {
        uint256 a = _subscribe(alice, monthly, 0);
        uint256 c = _subscribe(carol, monthly, 0);
        _deposit(carol, 100 * USDC);
        uint256 paidThrough = _sub(a).paidThrough;
        _blacklist(address(subs));
        vm.warp(paidThrough);
        assertEq(subs.renew(_ids(a, c)), 1, "carol renews from credit, alice's pull fails");
        assertEq(subs.creditOwedToEscrow(), PRICE);

        vm.prank(owner);
        subs.pause();
        vm.warp(paidThrough + 5 * GRACE); // Circle takes longer than the grace period
        assertTrue(subs.isEntitled(a), "time paused does not count against grace");
        _unBlacklist(address(subs));
        vm.prank(owner);
        subs.unpause();

        uint256 aliceBefore = usdc.balanceOf(alice);
        assertEq(subs.renew(_ids(a, c)), 1);
        assertEq(subs.renew(_ids(a, c)), 0);
        assertEq(_sub(a).periodIndex, 1);
        assertEq(_sub(a).paidThrough, paidThrough + MONTH);
        assertEq(usdc.balanceOf(alice), aliceBefore - PRICE);
        assertEq(subs.flushCreditToEscrow(), PRICE);
        assertEq(subs.flushCreditToEscrow(), 0);
        vm.prank(carol);
        subs.withdraw(100 * USDC - PRICE);
        assertEq(subs.totalRevenue(), 4 * PRICE);
        assertEq(usdc.balanceOf(address(escrow)), 4 * PRICE);
        assertEq(usdc.balanceOf(address(subs)), 0);
    }

    /* USDC'S EIP-2612 PERMIT */

    function test_subscribeWithPermit_usdcPermitVRS() public {
        _revoke(alice);
        uint256 deadline = vm.getBlockTimestamp() + 1 hours;
        (uint8 v, bytes32 r, bytes32 s) = _signPermit(aliceKey, alice, PRICE, deadline);
        vm.expectEmit(address(usdc));
        emit IERC20.Approval(alice, address(subs), PRICE);
        vm.expectEmit(address(subs));
        emit ISubscriptions.Subscribed(1, alice, monthly, 0, vm.getBlockTimestamp() + MONTH, PRICE, 0);
        vm.prank(alice);
        uint256 id = subs.subscribeWithPermit(monthly, 0, PRICE, deadline, v, r, s);
        assertEq(_sub(id).subscriber, alice);
        assertEq(usdc.nonces(alice), 1);
        assertEq(usdc.allowance(alice, address(subs)), 0);
        assertEq(usdc.balanceOf(address(escrow)), PRICE);
    }

    /// Someone who saw the permit submits it to USDC first: USDC now refuses it (the nonce is used), and
    /// `subscribeWithPermit` still subscribes on the allowance it set.
    function test_subscribeWithPermit_frontRunOnUsdcStillSubscribes() public {
        _revoke(alice);
        uint256 deadline = vm.getBlockTimestamp() + 1 hours;
        (uint8 v, bytes32 r, bytes32 s) = _signPermit(aliceKey, alice, PRICE, deadline);
        vm.prank(stranger);
        usdc.permit(alice, address(subs), PRICE, deadline, v, r, s);
        vm.expectRevert(bytes("EIP2612: invalid signature"));
        usdc.permit(alice, address(subs), PRICE, deadline, v, r, s);

        vm.prank(alice);
        uint256 id = subs.subscribeWithPermit(monthly, 0, PRICE, deadline, v, r, s);
        assertEq(_sub(id).subscriber, alice);
        assertEq(usdc.nonces(alice), 1);
        assertEq(usdc.allowance(alice, address(subs)), 0);
        assertEq(usdc.balanceOf(address(escrow)), PRICE);
    }

    /* A SMART-CONTRACT WALLET (ERC-1271) */

    function _wallet(string memory name) internal returns (ERC1271Wallet wallet, address signer, uint256 key) {
        (signer, key) = makeAddrAndKey(string.concat(name, " key"));
        wallet = new ERC1271Wallet(signer);
        vm.label(address(wallet), name);
        _mint(address(wallet), 1_000 * USDC);
    }

    /// The documented path for smart wallets: approve and subscribe in one batch (one user operation).
    function test_smartWallet_approvesAndSubscribesInOneBatch() public {
        (ERC1271Wallet wallet, address signer,) = _wallet("smart wallet");
        ERC1271Wallet.Call[] memory calls = new ERC1271Wallet.Call[](2);
        calls[0] = ERC1271Wallet.Call(address(usdc), abi.encodeCall(usdc.approve, (address(subs), 12 * PRICE)));
        calls[1] = ERC1271Wallet.Call(address(subs), abi.encodeCall(subs.subscribe, (monthly, CAP)));
        vm.prank(signer);
        bytes[] memory results = wallet.executeBatch(calls);
        uint256 id = abi.decode(results[1], (uint256));

        assertEq(_sub(id).subscriber, address(wallet));
        assertEq(usdc.balanceOf(address(wallet)), 1_000 * USDC - PRICE);
        // Renewals and usage charges pull from the wallet like from any account.
        vm.warp(_sub(id).paidThrough);
        assertEq(_renew(id), 1);
        assertEq(_charge(id, 1, 7 * USDC, ROOT), 1);
        assertEq(usdc.balanceOf(address(wallet)), 1_000 * USDC - 2 * PRICE - 7 * USDC);
        assertEq(usdc.allowance(address(wallet), address(subs)), 10 * PRICE - 7 * USDC);
    }

    /// USDC's permit with a `bytes` signature accepts an ERC-1271 wallet's signature (here 66 bytes, which the
    /// v, r, s form cannot carry): anyone can submit it, it sets the allowance, and a plain `subscribe` from the wallet
    /// follows. Subscriptions has no `bytes` permit path on purpose; this is the path for wallets that want one.
    function test_smartWallet_usdcBytesPermitThenPlainSubscribe() public {
        (ERC1271Wallet wallet, address signer, uint256 key) = _wallet("smart wallet");
        uint256 deadline = vm.getBlockTimestamp() + 1 hours;
        bytes32 digest = keccak256(
            abi.encodePacked(
                "\x19\x01",
                usdc.DOMAIN_SEPARATOR(),
                keccak256(abi.encode(PERMIT_TYPEHASH, address(wallet), address(subs), 12 * PRICE, 0, deadline))
            )
        );
        (uint8 v, bytes32 r, bytes32 s) = vm.sign(key, wallet.replaySafeHash(digest));
        bytes memory signature = abi.encodePacked(wallet.OWNER_ECDSA(), r, s, v);

        // A signature made for another wallet of the same key is refused.
        (ERC1271Wallet other,,) = _wallet("other wallet");
        vm.expectRevert(bytes("EIP2612: invalid signature"));
        usdc.permit(address(other), address(subs), 12 * PRICE, deadline, signature);

        vm.prank(stranger); // a relayer, or anyone
        usdc.permit(address(wallet), address(subs), 12 * PRICE, deadline, signature);
        assertEq(usdc.allowance(address(wallet), address(subs)), 12 * PRICE);
        assertEq(usdc.nonces(address(wallet)), 1);

        ERC1271Wallet.Call[] memory calls = new ERC1271Wallet.Call[](1);
        calls[0] = ERC1271Wallet.Call(address(subs), abi.encodeCall(subs.subscribe, (monthly, CAP)));
        vm.prank(signer);
        uint256 id = abi.decode(wallet.executeBatch(calls)[0], (uint256));
        assertEq(_sub(id).subscriber, address(wallet));
        assertEq(usdc.allowance(address(wallet), address(subs)), 11 * PRICE);
        assertEq(usdc.balanceOf(address(escrow)), PRICE);
    }
}
