// SPDX-License-Identifier: MIT
pragma solidity 0.8.30;

import {IERC20Metadata} from "@openzeppelin/contracts/token/ERC20/extensions/IERC20Metadata.sol";
import {IERC20Permit} from "@openzeppelin/contracts/token/ERC20/extensions/IERC20Permit.sol";

/// @title ITestUSDC
/// @notice A USDC stand-in for local chains and tests: 6 decimals, EIP-2612 permit, owner-controlled minting, and
/// USDC's two failure modes that a settlement system must survive — a blacklist and a global pause.
/// @dev WARNING: this token exists so tests and the demo can exercise real token behaviour without a mainnet USDC.
/// It is never deployed to a production chain; there the deployment points at the chain's real USDC.
/// `decimals()` is 6 and `paused()` (from OpenZeppelin Pausable) tells whether the global pause is on.
interface ITestUSDC is IERC20Metadata, IERC20Permit {
    /* EVENTS */

    /// @notice Emitted when `account` is put on the blacklist.
    event Blacklisted(address indexed account);

    /// @notice Emitted when `account` is taken off the blacklist.
    event UnBlacklisted(address indexed account);

    /* ERRORS */

    /// @notice Thrown when `account` takes part in a transfer or approval while blacklisted.
    error AccountBlacklisted(address account);

    /* FUNCTIONS */

    /// @notice Mints `amount` base units to `to`. Owner only; refused while paused or when `to` is blacklisted.
    function mint(address to, uint256 amount) external;

    /// @notice Puts `account` on the blacklist: it can no longer send, receive, approve or spend. Owner only.
    function blacklist(address account) external;

    /// @notice Takes `account` off the blacklist. Owner only.
    function unBlacklist(address account) external;

    /// @notice Whether `account` is blacklisted.
    function isBlacklisted(address account) external view returns (bool);

    /// @notice Stops every transfer, mint and approval (USDC's global pause). Owner only.
    function pause() external;

    /// @notice Lifts the global pause. Owner only.
    function unpause() external;
}
