// SPDX-License-Identifier: MIT
pragma solidity 0.8.30;

import {ERC20} from "@openzeppelin/contracts/token/ERC20/ERC20.sol";
import {IERC20Permit} from "@openzeppelin/contracts/token/ERC20/extensions/IERC20Permit.sol";
import {ERC20Permit} from "@openzeppelin/contracts/token/ERC20/extensions/ERC20Permit.sol";
import {Ownable} from "@openzeppelin/contracts/access/Ownable.sol";
import {Ownable2Step} from "@openzeppelin/contracts/access/Ownable2Step.sol";

import {IERC20Metadata} from "@openzeppelin/contracts/token/ERC20/extensions/IERC20Metadata.sol";

import {ITestUSDC} from "./interfaces/ITestUSDC.sol";

/// @title TestUSDC
/// @notice A small 6-decimal stand-in token with permit. See {ITestUSDC}.
contract TestUSDC is ITestUSDC, ERC20Permit, Ownable2Step {
    /* CONSTRUCTOR */

    constructor(address initialOwner) ERC20("USD Coin (test)", "USDC") ERC20Permit("USD Coin (test)") Ownable(initialOwner) {}

    /* VIEWS */

    /// @inheritdoc ERC20
    function decimals() public pure override(ERC20, IERC20Metadata) returns (uint8) {
        return 6;
    }

    /// @inheritdoc ERC20Permit
    function nonces(address owner) public view override(ERC20Permit, IERC20Permit) returns (uint256) {
        return super.nonces(owner);
    }

    /* OWNER */

    /// @inheritdoc ITestUSDC
    function mint(address to, uint256 amount) external onlyOwner {
        _mint(to, amount);
    }
}
