// SPDX-License-Identifier: MIT
pragma solidity 0.8.30;

import {Test} from "forge-std/Test.sol";
import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";

import {Subscriptions} from "../../src/Subscriptions.sol";
import {SplitEscrow} from "../../src/SplitEscrow.sol";
import {ISubscriptions} from "../../src/interfaces/ISubscriptions.sol";
import {MinimalPull} from "../mocks/MinimalPull.sol";
import {MockERC20Permit} from "../mocks/MockERC20Permit.sol";
import {FeeOnTransferToken} from "../mocks/FeeOnTransferToken.sol";
import {FloorRenewal, PAUSE_AND_REVENUE, PLAN, CREDIT, BALANCE_CHECK, ALL_FEATURES} from "../mocks/FloorRenewal.sol";
import {DeployUSDC, USDCDeployment} from "../usdc/DeployUSDC.sol";
import {IFiatToken} from "../usdc/IFiatToken.sol";

/// @notice Gas benchmarks of the batch operations, whole transactions (run under the `gas` profile, which isolates
/// every top-level call as its own transaction, so figures include the 21,000 intrinsic gas, calldata and refunds).
/// Steady state: every account already holds a non-zero balance, approvals are finite (each pull writes the
/// allowance), plan and split storage exists. The token is Circle's USDC (FiatTokenV2_2 behind its proxy,
/// contracts/test/usdc/DeployUSDC.sol), and the references (a bare `transferFrom`, `transferWithAuthorization`,
/// `MinimalPull`, `FloorRenewal`) are measured on the same token. `scripts/gas` runs them and writes
/// contracts/snapshots/gas.json.
contract GasBenchmarks is Test, DeployUSDC {
    uint256 internal constant USDC = 1e6;
    uint256 internal constant N = 100;
    uint256 internal constant MONTH = 30 days;
    uint256 internal constant SPLIT_DELAY = 7 days;

    IFiatToken internal token;
    address internal minter;
    Subscriptions internal subs;
    SplitEscrow internal escrow;
    address internal owner = makeAddr("owner");
    address internal keeper = makeAddr("keeper");
    address internal platform = makeAddr("platform");
    address internal host = makeAddr("host");
    uint256 internal planId;
    uint256[] internal ids;
    uint256[] internal splitIds;

    function setUp() public {
        vm.warp(1_700_000_000);
        USDCDeployment memory usdc = deployUSDC();
        (token, minter) = (usdc.token, usdc.minter);
        escrow = new SplitEscrow(address(token), owner, keeper, SPLIT_DELAY, 30 days);
        subs = new Subscriptions(address(token), address(escrow), owner, keeper, 2 days);
        vm.startPrank(owner);
        escrow.setSubscriptions(address(subs));
        planId = subs.createPlan(79 * USDC, MONTH, 3 days);
        vm.stopPrank();
        _mint(address(escrow), 1); // the escrow's balance slot is non-zero, as in steady state
        for (uint256 i; i < N; ++i) {
            address subscriber = address(uint160(0x10000 + i));
            _mint(subscriber, 10_000 * USDC);
            vm.startPrank(subscriber);
            token.approve(address(subs), 5_000 * USDC);
            ids.push(subs.subscribe(planId, 1_000 * USDC));
            vm.stopPrank();
        }
    }

    function _mint(address to, uint256 amount) internal {
        vm.prank(minter);
        token.mint(to, amount);
    }

    function _batch(uint256 n) internal view returns (uint256[] memory batch) {
        batch = new uint256[](n);
        for (uint256 i; i < n; ++i) {
            batch[i] = ids[i];
        }
    }

    /// @dev Renewal of N due subscriptions in one call.
    function test_gas_renew_100() public {
        vm.warp(vm.getBlockTimestamp() + MONTH);
        uint256[] memory batch = _batch(N);
        subs.renew(batch);
        vm.snapshotGasLastCall("gas", "renew_100_total");
        assertEq(subs.subscription(ids[N - 1]).periodIndex, 1);
    }

    /// @dev Renewal of a single due subscription, whole transaction.
    function test_gas_renew_1() public {
        vm.warp(vm.getBlockTimestamp() + MONTH);
        uint256[] memory batch = _batch(1);
        subs.renew(batch);
        vm.snapshotGasLastCall("gas", "renew_1_tx");
        assertEq(subs.subscription(ids[0]).periodIndex, 1);
    }

    /// @dev Not a target: the same single pull by `MinimalPull` (one slot, `transferFrom`, one event), with the same
    /// token, payer and payee state as `test_gas_renew_1`: the floor under one renewal as its own transaction.
    function test_gas_minimalPull_reference() public {
        MinimalPull minimal = new MinimalPull(token, address(escrow), 79 * USDC);
        address payer = address(uint160(0x10000));
        vm.prank(payer);
        token.approve(address(minimal), 5_000 * USDC);
        uint256 id = minimal.add(payer, uint64(vm.getBlockTimestamp()), uint32(MONTH));
        minimal.pull(id); // the first period, as `subscribe` pulls it: the allowance is then non-zero but not full
        vm.warp(vm.getBlockTimestamp() + MONTH);
        minimal.pull(id);
        vm.snapshotGasLastCall("gas", "minimal_pull_tx");
        (, uint64 paidThrough,) = minimal.pulls(id);
        assertEq(paidThrough, vm.getBlockTimestamp() + MONTH);
    }

    /// @dev Not a target: the yardstick of the targets. A bare `transferFrom` of the plan price sent as its own
    /// transaction by an EOA holding an allowance, with the same token, payer and payee state as `test_gas_renew_1`
    /// (the payer's allowance was used once before, as the first period's pull uses it).
    function test_gas_transferFrom_reference() public {
        address payer = address(uint160(0x10000));
        address spender = makeAddr("spender");
        vm.prank(payer);
        token.approve(spender, 5_000 * USDC);
        vm.prank(spender);
        assertTrue(token.transferFrom(payer, address(escrow), 79 * USDC));
        vm.prank(spender);
        assertTrue(token.transferFrom(payer, address(escrow), 79 * USDC));
        vm.snapshotGasLastCall("gas", "transfer_from_tx");
        assertEq(token.allowance(payer, spender), 5_000 * USDC - 2 * 79 * USDC);
    }

    /// @dev Not a target: the same bare `transferFrom` transaction on a plain OpenZeppelin ERC-20 (the token these
    /// benchmarks used before they moved to USDC), same payer and payee state: the difference is what USDC's proxy,
    /// pause flag and blacklist checks add to one pull.
    function test_gas_transferFrom_plainERC20_reference() public {
        MockERC20Permit plain = new MockERC20Permit();
        address payer = address(uint160(0x10000));
        address spender = makeAddr("spender");
        plain.mint(payer, 10_000 * USDC);
        plain.mint(address(escrow), 1);
        vm.prank(payer);
        plain.approve(spender, 5_000 * USDC);
        vm.prank(spender);
        assertTrue(plain.transferFrom(payer, address(escrow), 79 * USDC));
        vm.prank(spender);
        assertTrue(plain.transferFrom(payer, address(escrow), 79 * USDC));
        vm.snapshotGasLastCall("gas", "transfer_from_plain_erc20_tx");
        assertEq(plain.allowance(payer, spender), 5_000 * USDC - 2 * 79 * USDC);
    }

    /// @dev Not a target: one EIP-3009 `transferWithAuthorization` of the plan price to the escrow, submitted by a
    /// relayer, signed by a payer that already holds a balance (a fresh nonce: USDC records it in a new slot).
    function test_gas_transferWithAuthorization_reference() public {
        (address payer, uint256 key) = makeAddrAndKey("authorizer");
        _mint(payer, 10_000 * USDC);
        address relayer = makeAddr("relayer");
        uint256 validBefore = vm.getBlockTimestamp() + 1 hours;
        bytes32 nonce = keccak256("authorization 1");
        bytes32 digest = keccak256(
            abi.encodePacked(
                "\x19\x01",
                token.DOMAIN_SEPARATOR(),
                keccak256(
                    abi.encode(
                        token.TRANSFER_WITH_AUTHORIZATION_TYPEHASH(),
                        payer,
                        address(escrow),
                        79 * USDC,
                        0,
                        validBefore,
                        nonce
                    )
                )
            )
        );
        (uint8 v, bytes32 r, bytes32 s) = vm.sign(key, digest);
        vm.prank(relayer);
        token.transferWithAuthorization(payer, address(escrow), 79 * USDC, 0, validBefore, nonce, v, r, s);
        vm.snapshotGasLastCall("gas", "transfer_with_authorization_tx");
        assertTrue(token.authorizationState(payer, nonce));
        assertEq(token.balanceOf(payer), 10_000 * USDC - 79 * USDC);
    }

    /// @dev A `FloorRenewal` of `token_` paying the escrow, with the 79 USDC monthly plan, which `payer` approved.
    function _floorRenewal(IERC20 token_, uint256 features, address payer) internal returns (FloorRenewal floor) {
        floor = new FloorRenewal(token_, address(escrow), features, FloorRenewal.Plan(uint96(79 * USDC), uint32(MONTH), 3 days));
        vm.prank(payer);
        token_.approve(address(floor), 5_000 * USDC);
    }

    /// @dev Not a target: one renewal by `FloorRenewal` with the given requirement `features` on, with the same token,
    /// payer and payee state as `test_gas_renew_1`: what a single renewal costs at the least with those features.
    function _measureFloorRenewal(uint256 features, string memory name) internal {
        address payer = address(uint160(0x10000));
        FloorRenewal floor = _floorRenewal(IERC20(address(token)), features, payer);
        uint256[] memory batch = new uint256[](1);
        batch[0] = floor.add(payer, uint40(vm.getBlockTimestamp()));
        floor.renew(batch); // the first period, as `subscribe` pulls it: the revenue total and allowance are non-zero
        vm.warp(vm.getBlockTimestamp() + MONTH);
        floor.renew(batch);
        vm.snapshotGasLastCall("gas", name);
        (, uint40 paidThrough,,) = floor.subscriptions(batch[0]);
        assertEq(paidThrough, vm.getBlockTimestamp() + MONTH);
    }

    /// @dev Every requirement kept: the least one renewal can cost under issue #3 and PRODUCT.md.
    function test_gas_floorRenewal_reference() public {
        _measureFloorRenewal(ALL_FEATURES, "floor_renewal_tx");
    }

    /// @dev Each requirement priced by leaving it out alone, then all four together.
    function test_gas_floorRenewal_withoutPauseAndRevenue() public {
        _measureFloorRenewal(ALL_FEATURES & ~PAUSE_AND_REVENUE, "floor_renewal_without_pause_and_revenue_tx");
    }

    function test_gas_floorRenewal_withoutPlan() public {
        _measureFloorRenewal(ALL_FEATURES & ~PLAN, "floor_renewal_without_plan_tx");
    }

    function test_gas_floorRenewal_withoutCredit() public {
        _measureFloorRenewal(ALL_FEATURES & ~CREDIT, "floor_renewal_without_credit_tx");
    }

    function test_gas_floorRenewal_withoutBalanceCheck() public {
        _measureFloorRenewal(ALL_FEATURES & ~BALANCE_CHECK, "floor_renewal_without_balance_check_tx");
    }

    function test_gas_floorRenewal_withoutAny() public {
        _measureFloorRenewal(0, "floor_renewal_without_any_tx");
    }

    /// @dev The yardstick keeps the requirements it claims to: a failed pull is isolated and leaves its period alone.
    function test_floorRenewal_isolatesAFailedPull() public {
        address payer = address(uint160(0x10000));
        FloorRenewal floor = _floorRenewal(IERC20(address(token)), ALL_FEATURES, payer);
        uint256[] memory batch = new uint256[](2);
        batch[0] = floor.add(address(uint160(0x10001)), uint40(vm.getBlockTimestamp())); // never approved the floor
        batch[1] = floor.add(payer, uint40(vm.getBlockTimestamp()));
        uint256 escrowBefore = token.balanceOf(address(escrow));
        assertEq(floor.renew(batch), 1);
        (, uint40 failedPaidThrough,,) = floor.subscriptions(batch[0]);
        (, uint40 paidThrough,,) = floor.subscriptions(batch[1]);
        assertEq(failedPaidThrough, vm.getBlockTimestamp());
        assertEq(paidThrough, vm.getBlockTimestamp() + MONTH);
        assertEq(token.balanceOf(address(escrow)) - escrowBefore, 79 * USDC);
    }

    /// @dev ...and its balance check rejects a fee-on-transfer token.
    function test_floorRenewal_rejectsAFeeOnTransferToken() public {
        FeeOnTransferToken feeToken = new FeeOnTransferToken();
        address payer = address(uint160(0x10000));
        feeToken.mint(payer, 1_000 * USDC);
        FloorRenewal floor = _floorRenewal(IERC20(address(feeToken)), ALL_FEATURES, payer);
        uint256[] memory batch = new uint256[](1);
        batch[0] = floor.add(payer, uint40(vm.getBlockTimestamp()));
        vm.expectPartialRevert(FloorRenewal.FeeOnTransferToken.selector);
        floor.renew(batch);
    }

    function _charges(uint256 cumulative) internal view returns (ISubscriptions.Charge[] memory charges) {
        charges = new ISubscriptions.Charge[](N);
        for (uint256 i; i < N; ++i) {
            charges[i] = ISubscriptions.Charge(ids[i], 0, cumulative, keccak256(abi.encode(ids[i], cumulative)));
        }
    }

    /// @dev Usage charges for N subscriptions that were already charged earlier in the period (mid-period
    /// threshold billing: each item collects the increase of its cumulative overage).
    function test_gas_chargeUsage_100() public {
        ISubscriptions.Charge[] memory first = _charges(5 * USDC);
        vm.prank(keeper);
        subs.chargeUsage(first);
        ISubscriptions.Charge[] memory second = _charges(12 * USDC);
        vm.prank(keeper);
        subs.chargeUsage(second);
        vm.snapshotGasLastCall("gas", "chargeUsage_100_total");
        assertEq(subs.chargedInPeriod(ids[N - 1], 0), 12 * USDC);
    }

    /// @dev N splits of 3 recipients, then the clock moves past the change delay and a day more, so that every
    /// split is in force for an epoch of a day ending now.
    function _createSplits() internal {
        for (uint256 i; i < N; ++i) {
            address[] memory recipients = new address[](3);
            (recipients[0], recipients[1], recipients[2]) = (address(uint160(0x20000 + i)), platform, host);
            uint16[] memory bps = new uint16[](3);
            (bps[0], bps[1], bps[2]) = (7_000, 2_000, 1_000);
            vm.prank(owner);
            splitIds.push(escrow.createSplit(recipients, bps, 1));
        }
        vm.warp(vm.getBlockTimestamp() + SPLIT_DELAY + 1 days);
    }

    /// @dev Settles `each` to every split for the next epoch: from where the last one ended (a day back for the
    /// first) to now, as the keeper settles one epoch after another.
    function _settleAll(uint256 settlementId, uint256 each) internal {
        uint256[] memory amounts = new uint256[](N);
        uint256[] memory splits = new uint256[](N);
        for (uint256 i; i < N; ++i) {
            amounts[i] = each;
            splits[i] = splitIds[i];
        }
        uint256 start = escrow.lastEpochEnd();
        if (start == 0) start = vm.getBlockTimestamp() - 1 days;
        vm.prank(keeper);
        escrow.settle(settlementId, start, vm.getBlockTimestamp(), splits, amounts, keccak256("epoch"));
    }

    /// @dev Settlement of N splits of 3 recipients (a distinct creator per split, the same platform and host in
    /// all), every recipient already holding a claimable balance: the second of two daily epochs.
    function test_gas_settle_100x3() public {
        _createSplits();
        _settleAll(1, 10 * USDC);
        vm.warp(vm.getBlockTimestamp() + 1 days);
        _settleAll(2, 10 * USDC + 7);
        vm.snapshotGasLastCall("gas", "settle_100x3_total");
        assertEq(escrow.claimableOf(host), 2 * N * USDC);
        assertEq(escrow.lastEpochEnd(), vm.getBlockTimestamp());
    }

    /// @dev Batch claim for N recipients (the creators of the N splits) with a claimable balance, each paid to a
    /// wallet that already holds tokens, every payout through the gas-bounded call.
    function test_gas_claimMany_100() public {
        _createSplits();
        _settleAll(1, 10 * USDC);
        address[] memory creators = new address[](N);
        for (uint256 i; i < N; ++i) {
            creators[i] = address(uint160(0x20000 + i));
            _mint(creators[i], 1);
        }
        escrow.claimMany(creators);
        vm.snapshotGasLastCall("gas", "claimMany_100_total");
        assertEq(token.balanceOf(creators[N - 1]), 7 * USDC + 1);
    }

    /// @dev Claim of a recipient with a claimable balance to a wallet that already holds tokens.
    function test_gas_claim() public {
        _createSplits();
        _settleAll(1, 10 * USDC);
        address creator = address(uint160(0x20000));
        _mint(creator, 1);
        escrow.claim(creator);
        vm.snapshotGasLastCall("gas", "claim_tx");
        assertEq(token.balanceOf(creator), 7 * USDC + 1);
    }
}
