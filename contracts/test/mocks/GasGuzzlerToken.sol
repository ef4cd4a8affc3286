// SPDX-License-Identifier: MIT
pragma solidity 0.8.30;

import {ERC20} from "@openzeppelin/contracts/token/ERC20/ERC20.sol";

/// @notice A hostile look-alike of the settlement token, for SplitEscrow's batch claims. A `transfer` to an address
/// marked `Guzzle` burns all the gas it is given; `Heavy` burns `heavyGas` first, then transfers (a payout that
/// succeeds only when given most of the escrow's per-payout gas); `HeavyProxied` does the same in an inner call given
/// all but 1/64 of the gas, bubbling its failure (the shape of a proxy in front of its implementation); `BombRevert`
/// reverts with `BOMB_BYTES` of data; `BombReturn` moves the tokens and returns `true` followed by
/// `BOMB_BYTES - 32` bytes of padding. Everything else (transferFrom, approvals, balances) is a plain 6-decimal
/// ERC20, so Subscriptions can collect with it.
/// @dev USDC itself cannot behave like this (its transfer does a bounded amount of work, ~40,000 gas, and returns
/// 32 bytes); this token stands in for a payout leg that does, to show that `claimMany` bounds every payout.
contract GasGuzzlerToken is ERC20 {
    enum Mode {
        Normal,
        Guzzle,
        Heavy,
        HeavyProxied,
        BombRevert,
        BombReturn
    }

    /// @notice Size of the return data of the bomb modes: about 64,000 gas of memory in the token, within the
    /// escrow's per-payout gas, and as much again (growing with each bomb) for a caller that copied it all.
    uint256 public constant BOMB_BYTES = 160_000;
    /// @notice Gas a `Heavy` transfer burns before it moves the tokens.
    uint256 public heavyGas = 100_000;

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

    /// @notice The inner call of a `HeavyProxied` transfer: burns `heavyGas`, then moves the tokens.
    function heavyTransferFrom(address from, address to, uint256 value) external returns (bool) {
        require(msg.sender == address(this), "inner call only");
        uint256 start = gasleft();
        uint256 burn = heavyGas;
        while (start - gasleft() < burn) {}
        _transfer(from, to, value);
        return true;
    }

    function setHeavyGas(uint256 gas_) external {
        heavyGas = gas_;
    }

    function transfer(address to, uint256 value) public override returns (bool) {
        Mode mode = modeOf[to];
        if (mode == Mode.HeavyProxied) {
            // Like a proxy in front of its implementation (USDC's FiatTokenProxy): the work happens in an inner call
            // given all but 1/64 of the gas, and a failure there is passed on as a revert.
            try this.heavyTransferFrom(msg.sender, to, value) returns (bool moved) {
                return moved;
            } catch (bytes memory reason) {
                assembly {
                    revert(add(reason, 0x20), mload(reason))
                }
            }
        }
        if (mode == Mode.Guzzle) {
            // Burns every unit of gas it was given, then runs out of gas (no loop exit the optimizer can see).
            while (gasleft() != 0) {}
        } else if (mode == Mode.Heavy) {
            uint256 start = gasleft();
            uint256 burn = heavyGas;
            while (start - gasleft() < burn) {}
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
