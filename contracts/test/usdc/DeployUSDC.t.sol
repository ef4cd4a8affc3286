// SPDX-License-Identifier: MIT
pragma solidity 0.8.30;

import {Test} from "forge-std/Test.sol";

import {DeployUSDC, USDCDeployment} from "./DeployUSDC.sol";
import {IFiatToken, IFiatTokenProxy} from "./IFiatToken.sol";

/// @notice The USDC every suite runs on is Circle's, deployed as Circle deploys it (contracts/test/usdc/DeployUSDC.sol).
contract DeployUSDCTest is Test, DeployUSDC {
    USDCDeployment internal d;
    IFiatToken internal usdc;

    function setUp() public {
        d = deployUSDC();
        usdc = d.token;
    }

    function test_deployUSDC_metadata() public view {
        assertEq(usdc.name(), "USD Coin");
        assertEq(usdc.symbol(), "USDC");
        assertEq(usdc.currency(), "USD");
        assertEq(usdc.decimals(), 6);
        assertEq(usdc.version(), "2");
        assertEq(usdc.totalSupply(), 0);
    }

    function test_deployUSDC_eachRoleOnItsOwnAccount() public view {
        assertEq(usdc.owner(), d.owner);
        assertEq(usdc.masterMinter(), d.masterMinter);
        assertEq(usdc.pauser(), d.pauser);
        assertEq(usdc.blacklister(), d.blacklister);
        assertTrue(usdc.isMinter(d.minter));
        assertEq(usdc.minterAllowance(d.minter), type(uint256).max);
        assertEq(IFiatTokenProxy(address(usdc)).admin(), d.proxyAdmin);
        assertEq(IFiatTokenProxy(address(usdc)).implementation(), d.implementation);
        address[7] memory roles =
            [d.proxyAdmin, d.owner, d.masterMinter, d.pauser, d.blacklister, d.minter, address(usdc)];
        for (uint256 i; i < roles.length; ++i) {
            for (uint256 j = i + 1; j < roles.length; ++j) {
                assertTrue(roles[i] != roles[j], "two roles share an account");
            }
        }
        assertFalse(usdc.paused());
    }

    function test_deployUSDC_implementationIsLinkedToTheLibrary() public view {
        // The library placeholder was replaced by the deployed SignatureChecker's address, at both places.
        bytes memory code = d.implementation.code;
        bytes20 library_ = bytes20(d.signatureChecker);
        uint256 found;
        for (uint256 i; i + 20 <= code.length; ++i) {
            bytes20 word;
            assembly {
                word := mload(add(add(code, 0x20), i))
            }
            if (word == library_) ++found;
        }
        assertEq(found, 2);
    }

    function test_deployUSDC_implementationCannotBeInitializedAgain() public {
        IFiatToken implementation = IFiatToken(d.implementation);
        vm.expectRevert("FiatToken: contract is already initialized");
        implementation.initialize("Evil", "EVIL", "USD", 6, address(this), address(this), address(this), address(this));
        vm.expectRevert();
        implementation.initializeV2("Evil");
        vm.expectRevert();
        implementation.initializeV2_1(address(this));
        vm.expectRevert();
        implementation.initializeV2_2(new address[](0), "EVIL");
        // What it was initialized with: Circle's throw-away values.
        assertEq(implementation.owner(), THROWAWAY_ADDRESS);
        assertEq(implementation.masterMinter(), THROWAWAY_ADDRESS);
        assertEq(implementation.name(), "");
    }

    function test_deployUSDC_proxyCannotBeInitializedAgain() public {
        vm.expectRevert("FiatToken: contract is already initialized");
        usdc.initialize("Evil", "EVIL", "USD", 6, address(this), address(this), address(this), address(this));
        vm.expectRevert();
        usdc.initializeV2_2(new address[](0), "EVIL");
    }

    function test_deployUSDC_proxyAdminCannotCallTheToken() public {
        vm.prank(d.proxyAdmin);
        vm.expectRevert("Cannot call fallback function from the proxy admin");
        usdc.balanceOf(address(this));
    }

    function test_deployUSDC_eip712Domain() public view {
        bytes32 expected = keccak256(
            abi.encode(
                keccak256("EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)"),
                keccak256("USD Coin"),
                keccak256("2"),
                block.chainid,
                address(usdc)
            )
        );
        assertEq(usdc.DOMAIN_SEPARATOR(), expected);
    }

    function test_deployUSDC_permitSignedForTheDomainSetsAllowance() public {
        (address holder, uint256 key) = makeAddrAndKey("holder");
        address spender = makeAddr("spender");
        uint256 deadline = vm.getBlockTimestamp() + 1 hours;
        bytes32 structHash = keccak256(
            abi.encode(
                keccak256("Permit(address owner,address spender,uint256 value,uint256 nonce,uint256 deadline)"),
                holder,
                spender,
                5e6,
                0,
                deadline
            )
        );
        (uint8 v, bytes32 r, bytes32 s) =
            vm.sign(key, keccak256(abi.encodePacked("\x19\x01", usdc.DOMAIN_SEPARATOR(), structHash)));
        usdc.permit(holder, spender, 5e6, deadline, v, r, s);
        assertEq(usdc.allowance(holder, spender), 5e6);
        assertEq(usdc.nonces(holder), 1);
    }

    function test_deployUSDC_minterMintsAndTheTokenIsBlacklistedInItself() public {
        vm.prank(d.minter);
        usdc.mint(address(0xBEEF), 1e6);
        assertEq(usdc.balanceOf(address(0xBEEF)), 1e6);
        // initializeV2_2 blacklists the proxy itself, so nothing can be sent to the token's own address.
        assertTrue(usdc.isBlacklisted(address(usdc)));
    }
}
