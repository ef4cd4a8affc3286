// SPDX-License-Identifier: MIT
pragma solidity 0.8.30;

import {ERC20} from "@openzeppelin/contracts/token/ERC20/ERC20.sol";

/// @notice A malicious token: on every transfer it calls `target` with `payload` once (re-entering the contract
/// that moved it) and records whether that call succeeded and what it returned.
contract ReentrantToken is ERC20 {
    address public target;
    bytes public payload;
    bool public attackSucceeded;
    bytes public attackReturn;
    bool internal _armed;

    constructor() ERC20("Reentrant", "RE") {}

    function decimals() public pure override returns (uint8) {
        return 6;
    }

    function mint(address to, uint256 amount) external {
        _mint(to, amount);
    }

    function arm(address target_, bytes calldata payload_) external {
        target = target_;
        payload = payload_;
        _armed = true;
    }

    function _update(address from, address to, uint256 value) internal override {
        super._update(from, to, value);
        if (_armed && from != address(0)) {
            _armed = false;
            (attackSucceeded, attackReturn) = target.call(payload);
        }
    }
}
