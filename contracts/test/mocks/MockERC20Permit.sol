// SPDX-License-Identifier: MIT
pragma solidity 0.8.30;

import {ERC20} from "@openzeppelin/contracts/token/ERC20/ERC20.sol";
import {ERC20Permit} from "@openzeppelin/contracts/token/ERC20/extensions/ERC20Permit.sol";

/// @notice A plain 6-decimal ERC-20 with EIP-2612 permit and open minting. The gas benchmarks run on Circle's USDC;
/// they measure one bare `transferFrom` on this token beside USDC's, to show what USDC's proxy, pause flag and
/// blacklist checks add to a pull (it is a token USDC cannot be: no proxy, no pause, no blacklist).
contract MockERC20Permit is ERC20Permit {
    constructor() ERC20("Mock USD", "mUSD") ERC20Permit("Mock USD") {}

    function decimals() public pure override returns (uint8) {
        return 6;
    }

    function mint(address to, uint256 amount) external {
        _mint(to, amount);
    }
}
