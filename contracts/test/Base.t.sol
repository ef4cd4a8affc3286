// SPDX-License-Identifier: MIT
pragma solidity 0.8.30;

import {Test} from "forge-std/Test.sol";

import {Subscriptions} from "../src/Subscriptions.sol";
import {SplitEscrow} from "../src/SplitEscrow.sol";
import {ISubscriptions} from "../src/interfaces/ISubscriptions.sol";
import {ISplitEscrow} from "../src/interfaces/ISplitEscrow.sol";
import {DeployUSDC, USDCDeployment} from "./usdc/DeployUSDC.sol";
import {IFiatToken} from "./usdc/IFiatToken.sol";

/// @notice Shared fixture: Circle's USDC (FiatTokenV2_2 behind its proxy, deployed as Circle does, each role on its
/// own account), both contracts wired together, an operator, a keeper, a few subscribers with funds and approvals,
/// and three recipients.
abstract contract BaseTest is Test, DeployUSDC {
    uint256 internal constant USDC = 1e6;
    uint256 internal constant MONTH = 30 days;
    uint256 internal constant GRACE = 3 days;
    uint256 internal constant CHARGE_WINDOW = 2 days;
    uint256 internal constant SPLIT_DELAY = 7 days;
    uint256 internal constant MAX_HOLD = 30 days;

    address internal owner = makeAddr("owner");
    address internal keeper = makeAddr("keeper");
    address internal alice;
    uint256 internal aliceKey;
    address internal bob = makeAddr("bob");
    address internal carol = makeAddr("carol");
    address internal creator = makeAddr("creator");
    address internal platform = makeAddr("platform");
    address internal host = makeAddr("host");
    address internal stranger = makeAddr("stranger");

    /// @dev The USDC proxy; `usdcRoles` holds its implementation and the accounts of its roles.
    IFiatToken internal usdc;
    USDCDeployment internal usdcRoles;
    Subscriptions internal subs;
    SplitEscrow internal escrow;

    /// @dev A $79 monthly plan and a pay-as-you-go plan.
    uint256 internal monthly;
    uint256 internal payg;

    function setUp() public virtual {
        vm.warp(1_700_000_000);
        (alice, aliceKey) = makeAddrAndKey("alice");
        usdcRoles = deployUSDC();
        usdc = usdcRoles.token;
        escrow = new SplitEscrow(address(usdc), owner, keeper, SPLIT_DELAY, MAX_HOLD);
        subs = new Subscriptions(address(usdc), address(escrow), owner, keeper, CHARGE_WINDOW);
        vm.startPrank(owner);
        escrow.setSubscriptions(address(subs));
        monthly = subs.createPlan(79 * USDC, MONTH, GRACE);
        payg = subs.createPlan(0, MONTH, GRACE);
        vm.stopPrank();
        _fund(alice, 10_000 * USDC);
        _fund(bob, 10_000 * USDC);
        _fund(carol, 10_000 * USDC);
    }

    /// @dev Mints `amount` to `who` (nothing for 0, which USDC refuses to mint) and approves Subscriptions for
    /// everything.
    function _fund(address who, uint256 amount) internal {
        if (amount != 0) _mint(who, amount);
        vm.prank(who);
        usdc.approve(address(subs), type(uint256).max);
    }

    /* USDC ROLES */

    /// @dev USDC's minter mints `amount` (non-zero: USDC refuses to mint 0) to `to`.
    function _mint(address to, uint256 amount) internal {
        vm.prank(usdcRoles.minter);
        usdc.mint(to, amount);
    }

    /// @dev USDC's blacklister blacklists `account`: it can no longer send, receive, approve or spend.
    function _blacklist(address account) internal {
        vm.prank(usdcRoles.blacklister);
        usdc.blacklist(account);
    }

    function _unBlacklist(address account) internal {
        vm.prank(usdcRoles.blacklister);
        usdc.unBlacklist(account);
    }

    /// @dev USDC's pauser pauses the token: every transfer, approval, permit and mint is refused.
    function _pauseUSDC() internal {
        vm.prank(usdcRoles.pauser);
        usdc.pause();
    }

    function _unpauseUSDC() internal {
        vm.prank(usdcRoles.pauser);
        usdc.unpause();
    }

    function _subscribe(address who, uint256 planId, uint256 cap) internal returns (uint256 id) {
        vm.prank(who);
        id = subs.subscribe(planId, cap);
    }

    function _renew(uint256 id) internal returns (uint256 renewed) {
        uint256[] memory ids = new uint256[](1);
        ids[0] = id;
        renewed = subs.renew(ids);
    }

    function _charge(uint256 id, uint256 periodIndex, uint256 cumulative, bytes32 root) internal returns (uint256) {
        ISubscriptions.Charge[] memory charges = new ISubscriptions.Charge[](1);
        charges[0] = ISubscriptions.Charge(id, periodIndex, cumulative, root);
        vm.prank(keeper);
        return subs.chargeUsage(charges);
    }

    /// @dev creator 70% / platform 20% / host 10%, remainder to the platform; the clock then moves past the split
    /// change delay (and one second), so that the split is in force for an epoch starting now.
    function _createSplit() internal returns (uint256 splitId) {
        splitId = _createSplitPending();
        vm.warp(vm.getBlockTimestamp() + SPLIT_DELAY + 1);
    }

    /// @dev The split of {_createSplit}, created without moving the clock: in force only after the change delay.
    function _createSplitPending() internal returns (uint256 splitId) {
        address[] memory recipients = new address[](3);
        (recipients[0], recipients[1], recipients[2]) = (creator, platform, host);
        uint16[] memory bps = new uint16[](3);
        (bps[0], bps[1], bps[2]) = (7_000, 2_000, 1_000);
        vm.prank(owner);
        splitId = escrow.createSplit(recipients, bps, 1);
    }

    /// @dev The next epoch: from where the last settlement ended (one second back from now for the first) to now;
    /// the clock moves a second when the last epoch ended now.
    function _nextEpoch() internal returns (uint256 start, uint256 end) {
        start = escrow.lastEpochEnd();
        if (start == 0) start = vm.getBlockTimestamp() - 1;
        if (start >= vm.getBlockTimestamp()) vm.warp(start + 1);
        end = vm.getBlockTimestamp();
    }

    function _settle(uint256 settlementId, uint256 splitId, uint256 amount) internal {
        uint256[] memory splitIds = new uint256[](1);
        splitIds[0] = splitId;
        uint256[] memory amounts = new uint256[](1);
        amounts[0] = amount;
        (uint256 start, uint256 end) = _nextEpoch();
        vm.prank(keeper);
        escrow.settle(settlementId, start, end, splitIds, amounts, keccak256("usage"));
    }
}
