// SPDX-License-Identifier: MIT
pragma solidity 0.8.30;

import {ERC20} from "@openzeppelin/contracts/token/ERC20/ERC20.sol";
import {IERC20Permit} from "@openzeppelin/contracts/token/ERC20/extensions/IERC20Permit.sol";
import {ERC20Permit} from "@openzeppelin/contracts/token/ERC20/extensions/ERC20Permit.sol";
import {Ownable} from "@openzeppelin/contracts/access/Ownable.sol";
import {Ownable2Step} from "@openzeppelin/contracts/access/Ownable2Step.sol";
import {Pausable} from "@openzeppelin/contracts/utils/Pausable.sol";

import {IERC20Metadata} from "@openzeppelin/contracts/token/ERC20/extensions/IERC20Metadata.sol";

import {ITestUSDC} from "./interfaces/ITestUSDC.sol";

/// @title TestUSDC
/// @notice USDC-like token for local chains and tests. See {ITestUSDC}.
contract TestUSDC is ITestUSDC, ERC20Permit, Ownable2Step, Pausable {
    /* STORAGE */

    mapping(address account => bool) private _blacklisted;

    /* CONSTRUCTOR */

    constructor(address initialOwner) ERC20("USD Coin (test)", "USDC") ERC20Permit("USD Coin (test)") Ownable(initialOwner) {}

    /* VIEWS */

    /// @inheritdoc ERC20
    function decimals() public pure override(ERC20, IERC20Metadata) returns (uint8) {
        return 6;
    }

    /// @inheritdoc ITestUSDC
    function isBlacklisted(address account) external view returns (bool) {
        return _blacklisted[account];
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

    /// @inheritdoc ITestUSDC
    function blacklist(address account) external onlyOwner {
        _blacklisted[account] = true;
        emit Blacklisted(account);
    }

    /// @inheritdoc ITestUSDC
    function unBlacklist(address account) external onlyOwner {
        _blacklisted[account] = false;
        emit UnBlacklisted(account);
    }

    /// @inheritdoc ITestUSDC
    function pause() external onlyOwner {
        _pause();
    }

    /// @inheritdoc ITestUSDC
    function unpause() external onlyOwner {
        _unpause();
    }

    /* HOOKS */

    /// @dev Every balance change (transfer, transferFrom, mint) passes here: refuse it while paused or when the
    /// sender, the receiver or the spender moving the funds is blacklisted, as USDC does.
    function _update(address from, address to, uint256 value) internal override whenNotPaused {
        _requireNotBlacklisted(from);
        _requireNotBlacklisted(to);
        _requireNotBlacklisted(_msgSender());
        super._update(from, to, value);
    }

    /// @dev Approvals (approve, permit, and allowance spending) are refused while paused or for blacklisted parties.
    function _approve(address owner, address spender, uint256 value, bool emitEvent)
        internal
        override
        whenNotPaused
    {
        _requireNotBlacklisted(owner);
        _requireNotBlacklisted(spender);
        super._approve(owner, spender, value, emitEvent);
    }

    function _requireNotBlacklisted(address account) private view {
        if (_blacklisted[account]) revert AccountBlacklisted(account);
    }
}
