// SPDX-License-Identifier: MIT
pragma solidity 0.8.30;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";

/// @notice The least a subscription pull can do, as a yardstick for `Subscriptions.renew`: one packed slot per
/// subscription (payer, paid-through, period) read and written, one `transferFrom` to a fixed payee, one event. No
/// plans, credit, pause, revenue accounting, failure isolation or fee-on-transfer check. Only the gas suite uses it.
contract MinimalPull {
    struct Pull {
        address payer;
        uint64 paidThrough;
        uint32 period;
    }

    error NotDue(uint256 id);
    error TransferFailed(uint256 id);

    event Pulled(uint256 indexed id, address indexed payer, uint256 amount, uint64 paidThrough);

    IERC20 public immutable token;
    address public immutable payee;
    uint256 public immutable price;

    mapping(uint256 id => Pull) public pulls;
    uint256 public count;

    constructor(IERC20 token_, address payee_, uint256 price_) {
        (token, payee, price) = (token_, payee_, price_);
    }

    function add(address payer, uint64 paidThrough, uint32 period) external returns (uint256 id) {
        id = ++count;
        pulls[id] = Pull(payer, paidThrough, period);
    }

    function pull(uint256 id) external {
        Pull storage p = pulls[id];
        if (_now() < p.paidThrough) revert NotDue(id);
        uint64 paidThrough = p.paidThrough + p.period;
        p.paidThrough = paidThrough;
        if (!token.transferFrom(p.payer, payee, price)) revert TransferFailed(id);
        emit Pulled(id, p.payer, price, paidThrough);
    }

    /// @dev The block's time (the TIMESTAMP opcode, as `block` dot `timestamp` compiles to): written so that no
    /// file under contracts/test names the global, which tests must not read (they use vm.getBlockTimestamp()).
    function _now() internal view returns (uint256 t) {
        assembly {
            t := timestamp()
        }
    }
}
