// SPDX-License-Identifier: MIT
pragma solidity 0.8.30;

import {ERC20} from "@openzeppelin/contracts/token/ERC20/ERC20.sol";

/// @notice What a {ReentrantPullToken} calls on the payer before it moves tokens in `transferFrom`.
interface IPullSenderHook {
    function onPull(address operator, uint256 amount) external;
}

/// @notice A token with an ERC-777-style sender hook: in `transferFrom`, before moving anything, it calls
/// `onPull` on a payer that registered for it. A contract subscriber can then call back into Subscriptions in the
/// middle of a pull (a renewal or a usage charge), as the subscriber itself.
contract ReentrantPullToken is ERC20 {
    mapping(address account => bool) public hooked;

    constructor() ERC20("Reentrant Pull", "RPULL") {}

    function decimals() public pure override returns (uint8) {
        return 6;
    }

    function mint(address to, uint256 amount) external {
        _mint(to, amount);
    }

    /// @notice The caller asks to be called on every `transferFrom` that takes its tokens.
    function registerHook() external {
        hooked[msg.sender] = true;
    }

    function transferFrom(address from, address to, uint256 value) public override returns (bool) {
        if (hooked[from]) IPullSenderHook(from).onPull(msg.sender, value);
        return super.transferFrom(from, to, value);
    }
}

/// @notice A contract subscriber (a smart wallet) that, once armed, makes one call of its choice from inside the
/// next pull of its tokens and records the outcome. The failure of that call is swallowed, so the pull itself (and
/// the renewal or charge around it) goes on either way.
contract ReentrantSubscriberWallet is IPullSenderHook {
    address public target;
    bytes public payload;
    bool public armed;
    bool public attackAttempted;
    bool public attackSucceeded;
    bytes public attackReturn;

    /// @notice Makes a call as this wallet; a revert is passed on.
    function execute(address target_, bytes calldata data) external returns (bytes memory result) {
        bool ok;
        (ok, result) = target_.call(data);
        if (!ok) {
            assembly ("memory-safe") {
                revert(add(result, 0x20), mload(result))
            }
        }
    }

    /// @notice The next pull calls `target_` with `payload_`, once.
    function arm(address target_, bytes calldata payload_) external {
        target = target_;
        payload = payload_;
        armed = true;
    }

    function onPull(address, uint256) external {
        if (!armed) return;
        armed = false;
        attackAttempted = true;
        (attackSucceeded, attackReturn) = target.call(payload);
    }
}
