// SPDX-License-Identifier: MIT
pragma solidity 0.8.30;

import {Test} from "forge-std/Test.sol";
import {Ownable} from "@openzeppelin/contracts/access/Ownable.sol";
import {ERC20Permit} from "@openzeppelin/contracts/token/ERC20/extensions/ERC20Permit.sol";

import {TestUSDC} from "../src/TestUSDC.sol";

/// @notice The small stand-in token (no blacklist, no pause: the suites run on Circle's USDC for those).
contract TestUSDCTest is Test {
    bytes32 private constant PERMIT_TYPEHASH =
        keccak256("Permit(address owner,address spender,uint256 value,uint256 nonce,uint256 deadline)");

    TestUSDC internal token;
    address internal owner = makeAddr("owner");
    address internal alice;
    uint256 internal aliceKey;
    address internal bob = makeAddr("bob");
    address internal spender = makeAddr("spender");

    function setUp() public {
        (alice, aliceKey) = makeAddrAndKey("alice");
        token = new TestUSDC(owner);
        vm.prank(owner);
        token.mint(alice, 1_000e6);
    }

    function _signPermit(uint256 key, address holder, address to, uint256 value, uint256 deadline)
        internal
        view
        returns (uint8 v, bytes32 r, bytes32 s)
    {
        bytes32 structHash = keccak256(abi.encode(PERMIT_TYPEHASH, holder, to, value, token.nonces(holder), deadline));
        bytes32 digest = keccak256(abi.encodePacked("\x19\x01", token.DOMAIN_SEPARATOR(), structHash));
        return vm.sign(key, digest);
    }

    /* METADATA */

    function test_decimals_isSix() public view {
        assertEq(token.decimals(), 6);
        assertEq(token.symbol(), "USDC");
    }

    /* MINT */

    function test_mint_byOwner_increasesBalanceAndSupply() public {
        vm.prank(owner);
        token.mint(bob, 5e6);
        assertEq(token.balanceOf(bob), 5e6);
        assertEq(token.totalSupply(), 1_005e6);
    }

    function test_mint_byStranger_reverts() public {
        vm.expectRevert(abi.encodeWithSelector(Ownable.OwnableUnauthorizedAccount.selector, bob));
        vm.prank(bob);
        token.mint(bob, 1);
    }

    /* PERMIT */

    function test_permit_setsAllowanceAndBumpsNonce() public {
        uint256 deadline = vm.getBlockTimestamp() + 1 hours;
        (uint8 v, bytes32 r, bytes32 s) = _signPermit(aliceKey, alice, spender, 50e6, deadline);
        token.permit(alice, spender, 50e6, deadline, v, r, s);
        assertEq(token.allowance(alice, spender), 50e6);
        assertEq(token.nonces(alice), 1);

        vm.prank(spender);
        token.transferFrom(alice, bob, 50e6);
        assertEq(token.balanceOf(bob), 50e6);
    }

    function test_permit_replay_reverts() public {
        uint256 deadline = vm.getBlockTimestamp() + 1 hours;
        (uint8 v, bytes32 r, bytes32 s) = _signPermit(aliceKey, alice, spender, 50e6, deadline);
        token.permit(alice, spender, 50e6, deadline, v, r, s);
        vm.expectRevert();
        token.permit(alice, spender, 50e6, deadline, v, r, s);
    }

    function test_permit_expired_reverts() public {
        uint256 deadline = vm.getBlockTimestamp() + 1 hours;
        (uint8 v, bytes32 r, bytes32 s) = _signPermit(aliceKey, alice, spender, 50e6, deadline);
        vm.warp(deadline + 1);
        vm.expectRevert(abi.encodeWithSelector(ERC20Permit.ERC2612ExpiredSignature.selector, deadline));
        token.permit(alice, spender, 50e6, deadline, v, r, s);
    }

    /* OWNERSHIP */

    function test_ownership_isTwoStep() public {
        vm.prank(owner);
        token.transferOwnership(bob);
        assertEq(token.owner(), owner);
        vm.prank(bob);
        token.acceptOwnership();
        assertEq(token.owner(), bob);
    }

    /* FUZZ */

    function testFuzz_transfer_conservesSupply(uint256 amount, address to) public {
        vm.assume(to != address(0) && to != alice);
        amount = bound(amount, 0, token.balanceOf(alice));
        uint256 supply = token.totalSupply();
        uint256 before = token.balanceOf(to);
        vm.prank(alice);
        token.transfer(to, amount);
        assertEq(token.totalSupply(), supply);
        assertEq(token.balanceOf(to), before + amount);
        assertEq(token.balanceOf(alice), 1_000e6 - amount);
    }

    function testFuzz_transfer_beyondBalance_reverts(uint256 amount) public {
        amount = bound(amount, 1_000e6 + 1, type(uint256).max);
        vm.expectRevert();
        vm.prank(alice);
        token.transfer(bob, amount);
    }
}
