// SPDX-License-Identifier: MIT
pragma solidity 0.8.30;

import {ERC20} from "@openzeppelin/contracts/token/ERC20/ERC20.sol";

/// @notice A hostile look-alike of the settlement token, for SplitEscrow's batch claims: a `transfer` to an address
/// marked `Guzzle` burns all the gas it is given; one marked `BombRevert` reverts with `BOMB_BYTES` of data; one
/// marked `BombReturn` moves the tokens and returns `true` followed by `BOMB_BYTES - 32` bytes of padding. Everything
/// else (transferFrom, approvals, balances) is a plain 6-decimal ERC20, so Subscriptions can collect with it.
/// @dev USDC itself cannot behave like this (its transfer does a bounded amount of work and returns 32 bytes);
/// this token stands in for a payout leg that does, to show that `claimMany` bounds every payout.
contract GasGuzzlerToken is ERC20 {
    enum Mode {
        Normal,
        Guzzle,
        BombRevert,
        BombReturn
    }

    /// @notice Size of the return data of the bomb modes: about 95,000 gas of memory in the token, within the
    /// escrow's per-payout gas, and as much again for any caller that copied it all.
    uint256 public constant BOMB_BYTES = 200_000;

    mapping(address to => Mode) public modeOf;

    constructor() ERC20("Gas Guzzler", "GUZZ") {}

    function decimals() public pure override returns (uint8) {
        return 6;
    }

    function mint(address to, uint256 amount) external {
        _mint(to, amount);
    }

    function setMode(address to, Mode mode) external {
        modeOf[to] = mode;
    }

    function transfer(address to, uint256 value) public override returns (bool) {
        Mode mode = modeOf[to];
        if (mode == Mode.Guzzle) {
            // Burns every unit of gas it was given, then runs out of gas (no loop exit the optimizer can see).
            while (gasleft() != 0) {}
        } else if (mode == Mode.BombRevert) {
            assembly {
                revert(0, BOMB_BYTES)
            }
        }
        bool ok = super.transfer(to, value);
        if (mode == Mode.BombReturn) {
            assembly {
                mstore(0, 1)
                return(0, BOMB_BYTES)
            }
        }
        return ok;
    }
}
