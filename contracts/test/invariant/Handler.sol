// SPDX-License-Identifier: MIT
pragma solidity 0.8.30;

import {CommonBase} from "forge-std/Base.sol";
import {StdCheats} from "forge-std/StdCheats.sol";
import {StdUtils} from "forge-std/StdUtils.sol";
import {Vm} from "forge-std/Vm.sol";

import {Subscriptions} from "../../src/Subscriptions.sol";
import {SplitEscrow} from "../../src/SplitEscrow.sol";
import {ISubscriptions} from "../../src/interfaces/ISubscriptions.sol";
import {ISplitEscrow} from "../../src/interfaces/ISplitEscrow.sol";
import {USDCDeployment} from "../usdc/DeployUSDC.sol";
import {IFiatToken} from "../usdc/IFiatToken.sol";

/// @notice A plan as the handler models it (never read back from the contract).
struct PlanSpec {
    uint256 id;
    uint256 price;
    uint256 period;
    uint256 grace;
}

/// @notice The deployed contracts and their parameters, as the handler needs them.
struct Deployment {
    USDCDeployment usdc;
    Subscriptions subs;
    SplitEscrow escrow;
    address owner;
    address keeper;
    uint256 chargeWindow;
    uint256 splitDelay;
    uint256 maxHold;
}

/// @notice Categories of disagreement between the contracts and the handler's independent model. Each invariant
/// asserts the counters of its categories are zero; `firstMismatch` names the first one of each category.
enum Mismatch {
    Renewal, // a renewal/lapse/failure the model did not expect, or a wrong price/period
    Charge, // a usage charge outside its window, above min(cumulative, cap of its period), or wrongly refused
    Collection, // money moved by a pull batch differs from what its events report
    SubscriptionModel, // subscribe/cancel/changePlan/setOverageCap/credit outcome differs from the model
    Distribution, // a settlement credited recipients differently from the split version in force
    Settlement, // a settlement was accepted that should be refused, or the reverse, or refused for another reason
    Claim, // a claim paid the wrong amount/address, or succeeded/failed against the model
    Hold, // hold/release outcome differs from the model
    Split, // split create/propose/cancel outcome differs from the model
    Refund, // refund outcome, reason, bound or destination differs from the model
    Sweep, // sweep amount differs from the stray tokens sent to the escrow
    EscrowOutflow, // tokens left the escrow to a destination that is not allowed
    SubsOutflow, // tokens left Subscriptions to a destination that is not allowed
    BatchReverted, // renew/chargeUsage reverted as a whole while charging was not paused (items are isolated)
    Pause // pause/unpause outcome, event or log differs from the model, or a pull went through while paused
}

/// @dev Number of `Mismatch` categories.
uint256 constant MISMATCH_KINDS = 15;

// Test code: every narrowing cast is of a bounded value.
// forge-lint: disable-start(unsafe-typecast)

/// @title Handler
/// @notice Drives Circle's USDC, Subscriptions and SplitEscrow with bounded random actions by a fixed cast of actors and
/// keeps an independent model (ghost state) of what the contracts should hold. Every action records the token's
/// Transfer logs, so every token that leaves the escrow or Subscriptions is accounted for by destination.
contract Handler is CommonBase, StdCheats, StdUtils {
    /* CONSTANTS */

    uint256 internal constant USDC = 1e6;
    uint256 public constant N_SUBSCRIBERS = 5;
    uint256 public constant N_RECIPIENTS = 4;
    uint256 public constant N_PAYOUTS = 2;
    uint256 internal constant MAX_SUBSCRIPTIONS = 40;
    uint256 internal constant MAX_SPLITS = 6;
    uint256 internal constant MAX_CAP = 200 * USDC;
    uint256 internal constant TOTAL_BPS = 10_000;
    uint256 internal constant HOLD_COOLDOWN = 1 days;

    uint8 internal constant ACTIVE = 1;
    uint8 internal constant PAST_DUE = 2;
    uint8 internal constant CANCELLED = 3;
    uint8 internal constant LAPSED = 4;

    bytes32 internal constant TRANSFER_TOPIC = keccak256("Transfer(address,address,uint256)");

    /* DEPLOYMENT AND ACTORS */

    /// @notice Circle's USDC (the proxy), and the accounts of the two roles the handler acts as.
    IFiatToken public immutable usdc;
    address public immutable usdcMinter;
    address public immutable usdcBlacklister;
    Subscriptions public immutable subs;
    SplitEscrow public immutable escrow;
    address public immutable owner;
    address public immutable keeper;
    uint256 public immutable chargeWindow;
    uint256 public immutable splitDelay;
    uint256 public immutable maxHold;

    /// @notice Where `sweepSurplus` sends stray tokens.
    address public immutable treasury;
    /// @notice Sends tokens to the escrow by mistake.
    address public immutable stranger;
    /// @notice Where subscribers spend their wallet (running out of funds).
    address public immutable sink;

    address[] internal _subscribers;
    uint256[] internal _subscriberKeys; // to sign permits
    address[] internal _recipients;
    address[] internal _payoutWallets;
    mapping(address => uint256) internal _subscriberSlot; // index + 1
    mapping(address => uint256) internal _recipientSlot; // index + 1
    mapping(address => bool) public blacklisted;

    uint256[] internal _planIds;
    mapping(uint256 planId => PlanSpec) internal _plans;

    /* MISMATCH COUNTERS */

    uint256[MISMATCH_KINDS] public mismatches;
    /// @notice The first mismatch of each category in the current run, to say what went wrong.
    string[MISMATCH_KINDS] public firstMismatch;

    /* SUBSCRIPTION MODEL */

    struct SubModel {
        address subscriber;
        uint16 planId;
        uint16 nextPlan; // 0: no change pending
        uint8 status;
        uint24 periodIndex;
        uint40 paidThrough;
        uint64 cap; // the latest cap set: it applies from its period on
        uint24 ledgerPeriod; // the newest period the contract's usage ledger holds (moved by charges and caps)
    }

    /// @notice A cap set by the subscriber (or at subscribe) for period `from` and every later one.
    struct CapChange {
        uint24 from;
        uint64 cap;
    }

    mapping(uint256 id => SubModel) internal _model;
    uint256 public subCount;
    /// @dev Every cap change of a subscription, oldest first; `from` never decreases (the period in progress only
    /// moves forward), so the cap of period k is the one of the last change with `from <= k`.
    mapping(uint256 id => CapChange[]) internal _capChanges;

    /// @notice Usage charged per (subscription, period), summed from collected UsageCharged amounts.
    mapping(uint256 => mapping(uint256 => uint256)) public ghostCharged;
    /// @notice The cap of (subscription, period) by the model when it was last charged.
    mapping(uint256 => mapping(uint256 => uint256)) public ghostCapAtCharge;
    /// @notice Highest cumulative overage the keeper ever posted for (subscription, period).
    mapping(uint256 => mapping(uint256 => uint256)) public ghostMaxCumulative;
    /// @notice Plan fee collected for (subscription, period) and how many times it was collected.
    mapping(uint256 => mapping(uint256 => uint256)) public ghostPeriodFee;
    mapping(uint256 => mapping(uint256 => uint256)) public ghostPeriodFeeCount;
    /// @notice Price of the plan the model says period k of a subscription runs on.
    mapping(uint256 => mapping(uint256 => uint256)) public ghostPeriodPrice;
    mapping(uint256 => mapping(uint256 => bool)) internal _pairSeen;
    uint256[] internal _pairIds;
    uint256[] internal _pairPeriods;

    mapping(address => uint256) public ghostCredit;
    /// @notice Everything each wallet paid (plan fees and usage charges, from its wallet or its credit).
    mapping(address => uint256) public ghostPaidBy;
    /// @notice Everything refunded to each wallet (to the wallet or as credit).
    mapping(address => uint256) public ghostRefundedTo;
    /// @notice Refunded per (subscription, period), and the pairs refunded at least once.
    mapping(uint256 => mapping(uint256 => uint256)) public ghostRefundedFor;
    mapping(uint256 => mapping(uint256 => bool)) internal _refundPairSeen;
    uint256[] internal _refundPairIds;
    uint256[] internal _refundPairPeriods;
    mapping(bytes32 => bool) public ghostRefundIdUsed;
    bytes32[] internal _usedRefundIds;
    uint256 internal _refundNonce;
    uint256 public ghostRevenue;
    uint256 public ghostCreditUsed;
    uint256 public ghostDeposited;
    uint256 public ghostWithdrawn;

    /* ESCROW MODEL */

    struct VersionModel {
        uint8[] recipients; // indexes into _recipients
        uint16[] bps;
        uint8 remainderIndex;
        uint40 effectiveAt;
    }

    struct HoldModel {
        uint40 until;
        uint40 since;
    }

    mapping(uint256 splitId => VersionModel[]) internal _versions;
    uint256 public splitCount;

    mapping(address => uint256) public ghostClaimable;
    mapping(address => address) internal _payout; // zero: the recipient itself
    mapping(address => HoldModel) internal _holds;

    uint256[] internal _usedSettlementIds;
    mapping(uint256 => uint256) public settlementApplied;
    mapping(uint256 => uint256) public settlementAmounts;
    mapping(uint256 => uint256) public settlementCredits;
    uint256 internal _settlementNonce;

    uint256 public ghostSettled;
    uint256 public ghostRefunded;
    uint256 public ghostRefundedToWallet;
    uint256 public ghostRefundedToCredit;
    uint256 public ghostClaimed;
    uint256 public ghostStray;
    uint256 public ghostSwept;

    /// @notice Every settled epoch, in order, and when it was settled.
    struct EpochRecord {
        uint64 start;
        uint64 end;
        uint64 settledAt;
    }

    /// @notice One split credited by a settlement (from its Credited events) and the version it was divided by
    /// (`escrow.versionAt(split, epochEnd - 1)`, read right after the settlement).
    struct CreditedRecord {
        uint256 settlementId;
        uint256 splitId;
        uint256 version;
        uint64 epochStart;
        uint64 epochEnd;
    }

    EpochRecord[] internal _epochs;
    CreditedRecord[] internal _credited;
    uint256 public ghostLastEpochEnd;

    /* PAUSE MODEL */

    struct PauseModel {
        uint40 start;
        uint40 end; // 0 while it lasts
    }

    PauseModel[] internal _pauses;
    bool public ghostPaused;

    /* TOKEN FLOWS (from Transfer logs) */

    uint256 public escrowIn;
    uint256 public escrowOut;
    uint256 public escrowOutToPayouts;
    uint256 public escrowOutToSubscribers;
    uint256 public escrowOutToSubscriptions;
    uint256 public escrowOutToTreasury;
    uint256 public escrowOutElsewhere;
    uint256 public subsIn;
    uint256 public subsOut;
    uint256 public subsOutToEscrow;
    uint256 public subsOutToSubscribers;
    uint256 public subsOutElsewhere;
    mapping(address => uint256) public escrowOutTo;
    mapping(address => uint256) public subsOutTo;

    /* PER-CALL SCRATCH FOR PULL BATCHES */

    struct ExpectedSubscribe {
        address subscriber;
        uint256 planId;
        uint256 cap;
        bool seen;
    }

    uint256 internal _callNonce;
    mapping(uint256 id => uint256 nonce) internal _failedInCall;
    mapping(uint256 id => uint256 nonce) internal _renewedInCall;
    uint256[5] internal _spent;
    uint256[5] internal _creditSpent;
    uint256[5] internal _walletBefore;
    uint256[5] internal _creditBefore;
    uint256 internal _collected;
    uint256 internal _revenueBefore;
    uint256 internal _escrowBefore;
    ExpectedSubscribe internal _expectSub;
    /// @dev What the events of the call in progress must say (set by the action before it calls).
    uint256 internal _expectCapFrom;
    uint256 internal _capEvents;
    uint256 internal _pauseEvents;
    bytes32 internal _expectRefundHash;
    uint256 internal _refundEvents;
    uint256 internal _settlingId;
    uint256 internal _settlingStart;
    uint256 internal _settlingEnd;
    bool internal _settling;

    /* CONSTRUCTOR */

    constructor(Deployment memory d, PlanSpec[] memory plans_) {
        usdc = d.usdc.token;
        usdcMinter = d.usdc.minter;
        usdcBlacklister = d.usdc.blacklister;
        subs = d.subs;
        escrow = d.escrow;
        owner = d.owner;
        keeper = d.keeper;
        chargeWindow = d.chargeWindow;
        splitDelay = d.splitDelay;
        maxHold = d.maxHold;
        treasury = makeAddr("treasury");
        stranger = makeAddr("stranger");
        sink = makeAddr("sink");
        for (uint256 i; i < plans_.length; ++i) {
            _planIds.push(plans_[i].id);
            _plans[plans_[i].id] = plans_[i];
        }
        for (uint256 i; i < N_SUBSCRIBERS; ++i) {
            (address s, uint256 key) = makeAddrAndKey(string.concat("subscriber", vm.toString(i)));
            _subscribers.push(s);
            _subscriberKeys.push(key);
            _subscriberSlot[s] = i + 1;
            vm.prank(usdcMinter);
            usdc.mint(s, 5_000 * USDC);
            vm.prank(s);
            usdc.approve(address(d.subs), type(uint256).max);
        }
        for (uint256 i; i < N_RECIPIENTS; ++i) {
            address r = makeAddr(string.concat("recipient", vm.toString(i)));
            _recipients.push(r);
            _recipientSlot[r] = i + 1;
        }
        for (uint256 i; i < N_PAYOUTS; ++i) {
            _payoutWallets.push(makeAddr(string.concat("payoutWallet", vm.toString(i))));
        }
    }

    /* ===================================================================================================== */
    /* SUBSCRIBER ACTIONS                                                                                    */
    /* ===================================================================================================== */

    /// @notice Subscribes, with `subscribe` or (one in four) `subscribeWithPermit` and a permit signed by the
    /// subscriber (sometimes for too little, sometimes signed by someone else: the subscribe then goes on with the
    /// allowance already in place).
    function subscribe(uint256 subscriberSeed, uint256 planSeed, uint256 capSeed) public {
        if (subCount >= MAX_SUBSCRIPTIONS) return;
        uint256 slot = subscriberSeed % N_SUBSCRIBERS;
        address s = _subscribers[slot];
        uint256 planId = _planIds[planSeed % _planIds.length];
        uint256 cap = _bound(capSeed, 0, MAX_CAP);
        _expectSub = ExpectedSubscribe({subscriber: s, planId: planId, cap: cap, seen: false});
        uint256 countBefore = subCount;
        bool withPermit = (subscriberSeed >> 8) % 4 == 1; // never for the small seeds of the starting state

        _beginCollection();
        bool ok;
        uint256 id;
        bytes memory reason;
        if (withPermit) {
            (ok, id, reason) = _subscribeWithPermit(slot, planId, cap, subscriberSeed >> 16);
        } else {
            vm.prank(s);
            try subs.subscribe(planId, cap) returns (uint256 id_) {
                (ok, id) = (true, id_);
            } catch (bytes memory r) {
                reason = r;
            }
        }
        _endCollection();

        if (ok) _stat(withPermit ? bytes32("subscribeWithPermit") : bytes32("subscribe"));
        if (ok && (!_expectSub.seen || id != countBefore + 1 || subCount != id)) {
            _flag(Mismatch.SubscriptionModel, "subscribe: id or Subscribed event wrong");
        }
        if (!ok && _expectSub.seen) _flag(Mismatch.SubscriptionModel, "subscribe: event without success");
        if (ghostPaused) {
            if (ok) _flag(Mismatch.Pause, "subscribe: accepted while paused");
            else if (!_isError(reason, abi.encodeWithSelector(ISubscriptions.ChargingPaused.selector))) {
                _flag(Mismatch.Pause, "subscribe: refused while paused for another reason");
            }
        } else if (!ok && _plans[planId].price == 0) {
            _flag(Mismatch.SubscriptionModel, "subscribe: free plan refused");
        }
        delete _expectSub;
    }

    function _subscribeWithPermit(uint256 slot, uint256 planId, uint256 cap, uint256 seed)
        internal
        returns (bool ok, uint256 id, bytes memory reason)
    {
        address s = _subscribers[slot];
        uint256 mode = seed % 4;
        uint256 value = mode == 0 ? _bound(seed >> 8, 0, 100 * USDC) : type(uint256).max;
        uint256 deadline = vm.getBlockTimestamp() + 1 hours;
        // Mode 1: signed by another subscriber's key, so the permit fails and the subscribe goes on without it.
        uint256 key = _subscriberKeys[mode == 1 ? (slot + 1) % N_SUBSCRIBERS : slot];
        bytes32 structHash = keccak256(
            abi.encode(
                keccak256("Permit(address owner,address spender,uint256 value,uint256 nonce,uint256 deadline)"),
                s,
                address(subs),
                value,
                usdc.nonces(s),
                deadline
            )
        );
        (uint8 v, bytes32 r, bytes32 sig) =
            vm.sign(key, keccak256(abi.encodePacked("\x19\x01", usdc.DOMAIN_SEPARATOR(), structHash)));
        vm.prank(s);
        try subs.subscribeWithPermit(planId, cap, value, deadline, v, r, sig) returns (uint256 id_) {
            (ok, id) = (true, id_);
        } catch (bytes memory r_) {
            reason = r_;
        }
    }

    function cancel(uint256 idSeed) external {
        if (subCount == 0) return;
        uint256 id = _bound(idSeed, 1, subCount);
        SubModel storage m = _model[id];
        bool expectOk = m.status == ACTIVE || m.status == PAST_DUE;

        _begin();
        bool ok;
        vm.prank(m.subscriber);
        try subs.cancel(id) {
            ok = true;
            _stat("cancel");
        } catch {}
        _end();

        if (ok != expectOk) _flag(Mismatch.SubscriptionModel, "cancel: outcome differs from model");
        if (ok) {
            m.status = CANCELLED;
            m.nextPlan = 0;
        }
    }

    /// @notice The subscriber sets its cap: from the period in progress (the last paid one while it runs, else the
    /// next), never for a period that ended. Sometimes the largest cap, sometimes one above it (refused).
    function setOverageCap(uint256 idSeed, uint256 capSeed) external {
        if (subCount == 0) return;
        uint256 id = _bound(idSeed, 1, subCount);
        uint256 max = subs.MAX_OVERAGE_CAP();
        uint256 mode = capSeed % 32;
        uint256 cap = mode == 0 ? max + 1 : mode == 1 ? max : _bound(capSeed >> 5, 0, MAX_CAP);
        SubModel storage m = _model[id];
        uint256 from = vm.getBlockTimestamp() < m.paidThrough ? m.periodIndex : uint256(m.periodIndex) + 1;
        (_expectCapFrom, _capEvents) = (from, 0);

        _begin();
        bool ok;
        bytes memory reason;
        vm.prank(m.subscriber);
        try subs.setOverageCap(id, cap) {
            ok = true;
        } catch (bytes memory r) {
            reason = r;
        }
        _end();

        if (cap > max) {
            if (ok || !_isError(reason, abi.encodeWithSelector(ISubscriptions.OverageCapTooLarge.selector, cap))) {
                _flag(Mismatch.SubscriptionModel, "setOverageCap: a cap above the maximum not refused as such");
            }
            return;
        }
        if (!ok) {
            _flag(Mismatch.SubscriptionModel, "setOverageCap: refused for the owner");
            return;
        }
        if (_capEvents != 1) _flag(Mismatch.SubscriptionModel, "setOverageCap: OverageCapSet missing or wrong");
        _stat(from > m.periodIndex ? bytes32("setOverageCapFromNext") : bytes32("setOverageCapFromCurrent"));
        m.cap = uint64(cap);
        if (from > m.ledgerPeriod) m.ledgerPeriod = uint24(from);
        _setCap(id, from, cap);
    }

    function changePlan(uint256 idSeed, uint256 planSeed) external {
        if (subCount == 0) return;
        uint256 id = _bound(idSeed, 1, subCount);
        uint256 planId = _planIds[planSeed % _planIds.length];
        SubModel storage m = _model[id];
        bool expectOk = m.status == ACTIVE || m.status == PAST_DUE;

        _begin();
        bool ok;
        vm.prank(m.subscriber);
        try subs.changePlan(id, planId) {
            ok = true;
            _stat("changePlan");
        } catch {}
        _end();

        if (ok != expectOk) _flag(Mismatch.SubscriptionModel, "changePlan: outcome differs from model");
        if (ok) m.nextPlan = planId == m.planId ? 0 : uint16(planId);
    }

    function deposit(uint256 subscriberSeed, uint256 amountSeed) external {
        address s = _subscribers[subscriberSeed % N_SUBSCRIBERS];
        uint256 amount = _bound(amountSeed, 1, 500 * USDC);
        uint256 creditBefore = subs.creditOf(s);
        uint256 walletBefore = usdc.balanceOf(s);

        _begin();
        bool ok;
        vm.prank(s);
        try subs.deposit(amount) {
            ok = true;
            _stat("deposit");
        } catch {}
        _end();

        if (!ok) return;
        ghostCredit[s] += amount;
        ghostDeposited += amount;
        if (subs.creditOf(s) != creditBefore + amount || usdc.balanceOf(s) + amount != walletBefore) {
            _flag(Mismatch.SubscriptionModel, "deposit: credit or wallet moved wrongly");
        }
    }

    function withdraw(uint256 subscriberSeed, uint256 amountSeed) external {
        // Prefer a subscriber that has credit to withdraw.
        address s = _subscribers[subscriberSeed % N_SUBSCRIBERS];
        for (uint256 i; i < N_SUBSCRIBERS && subs.creditOf(s) == 0; ++i) {
            s = _subscribers[(subscriberSeed % N_SUBSCRIBERS + i + 1) % N_SUBSCRIBERS];
        }
        uint256 credit = subs.creditOf(s);
        // Mostly within the credit; sometimes one more than it (must be refused).
        uint256 amount = amountSeed % 8 == 0 ? credit + 1 : _bound(amountSeed >> 3, 1, credit == 0 ? 1 : credit);
        uint256 walletBefore = usdc.balanceOf(s);
        bool expectOk = amount <= credit && !blacklisted[s];

        _begin();
        bool ok;
        vm.prank(s);
        try subs.withdraw(amount) {
            ok = true;
            _stat("withdraw");
        } catch {}
        _end();

        if (ok != expectOk) _flag(Mismatch.SubscriptionModel, "withdraw: outcome differs from model");
        if (!ok) return;
        if (ghostCredit[s] < amount) {
            _flag(Mismatch.SubscriptionModel, "withdraw: more than the modelled credit");
            ghostCredit[s] = 0;
        } else {
            ghostCredit[s] -= amount;
        }
        ghostWithdrawn += amount;
        if (usdc.balanceOf(s) != walletBefore + amount) _flag(Mismatch.SubscriptionModel, "withdraw: wallet");
    }

    /// @notice Mints more funds to a subscriber (USDC's minter; refused while the subscriber is blacklisted).
    function mintTo(uint256 subscriberSeed, uint256 amountSeed) external {
        address s = _subscribers[subscriberSeed % N_SUBSCRIBERS];
        uint256 amount = _bound(amountSeed, 1, 2_000 * USDC);
        vm.prank(usdcMinter);
        try usdc.mint(s, amount) {} catch {}
    }

    /// @notice A subscriber changes its allowance to Subscriptions: revoke, a small amount, or unlimited.
    function approveSubscriptions(uint256 subscriberSeed, uint256 mode, uint256 amountSeed) external {
        address s = _subscribers[subscriberSeed % N_SUBSCRIBERS];
        uint256 amount;
        mode %= 3;
        if (mode == 1) amount = _bound(amountSeed, 1, 150 * USDC);
        else if (mode == 2) amount = type(uint256).max;
        vm.prank(s);
        try usdc.approve(address(subs), amount) {} catch {}
    }

    /// @notice A subscriber spends part of its wallet elsewhere (and may run out of funds).
    function spendWallet(uint256 subscriberSeed, uint256 amountSeed) external {
        address s = _subscribers[subscriberSeed % N_SUBSCRIBERS];
        uint256 balance = usdc.balanceOf(s);
        if (balance == 0) return;
        uint256 amount = _bound(amountSeed, 1, balance);
        vm.prank(s);
        try usdc.transfer(sink, amount) {} catch {}
    }

    /* ===================================================================================================== */
    /* KEEPER / ANYONE: PULLS                                                                                */
    /* ===================================================================================================== */

    function renew(uint256 seed, uint256 countSeed) external {
        uint256 n = subCount;
        if (n == 0) return;
        uint256[] memory ids;
        if (countSeed % 2 == 0) {
            // The keeper's usual sweep: every subscription.
            ids = new uint256[](n);
            for (uint256 i; i < n; ++i) {
                ids[i] = i + 1;
            }
        } else {
            ids = new uint256[](_bound(countSeed >> 1, 1, 6));
            for (uint256 i; i < ids.length; ++i) {
                ids[i] = _bound(uint256(keccak256(abi.encode(seed, i))), 1, n);
            }
        }

        _beginCollection();
        bool ok;
        bytes memory reason;
        try subs.renew(ids) {
            ok = true;
        } catch (bytes memory r) {
            reason = r;
        }
        _endCollection();
        if (_pullOutcomeOk("renew", ok, reason)) _checkRenewOutcome(ids);
    }

    /// @dev A pull batch reverts as a whole exactly while charging is paused, with `ChargingPaused`.
    function _pullOutcomeOk(string memory what, bool ok, bytes memory reason) internal returns (bool) {
        if (!ghostPaused) {
            if (!ok) _flag(Mismatch.BatchReverted, string.concat(what, " batch reverted"));
            return ok;
        }
        if (ok) _flag(Mismatch.Pause, string.concat(what, ": went through while paused"));
        else if (!_isError(reason, abi.encodeWithSelector(ISubscriptions.ChargingPaused.selector))) {
            _flag(Mismatch.Pause, string.concat(what, ": refused while paused for another reason"));
        } else {
            _stat("pullRefusedPaused");
        }
        return false;
    }

    function chargeUsage(uint256 idSeed, uint256 periodSeed, uint256 cumulativeSeed, uint256 countSeed) external {
        uint256 n = subCount;
        if (n == 0) return;
        ISubscriptions.Charge[] memory charges = new ISubscriptions.Charge[](_bound(countSeed, 1, 3));
        for (uint256 i; i < charges.length; ++i) {
            charges[i] = _randomCharge(
                uint256(keccak256(abi.encode(idSeed, i))),
                uint256(keccak256(abi.encode(periodSeed, i))),
                uint256(keccak256(abi.encode(cumulativeSeed, i))),
                n
            );
        }

        _beginCollection();
        bool ok;
        bytes memory reason;
        vm.prank(keeper);
        try subs.chargeUsage(charges) {
            ok = true;
        } catch (bytes memory r) {
            reason = r;
        }
        _endCollection();
        _pullOutcomeOk("chargeUsage", ok, reason);
    }

    function _randomCharge(uint256 idSeed, uint256 periodSeed, uint256 cumulativeSeed, uint256 n)
        internal
        returns (ISubscriptions.Charge memory charge)
    {
        uint256 id = _bound(idSeed, 1, n);
        // One in four: the first subscription from there whose last paid period has a cap other than its latest
        // one (the cap was changed once the period ended: a charge for it must keep the old cap).
        if ((idSeed >> 128) % 4 == 0) {
            for (uint256 i; i < n; ++i) {
                uint256 candidate = (id + i - 1) % n + 1;
                SubModel storage m = _model[candidate];
                if (capOf(candidate, m.periodIndex) != m.cap) {
                    id = candidate;
                    periodSeed = 0; // its last paid period
                    break;
                }
            }
        }
        (uint256 current,,) = subs.currentPeriod(id);
        uint256 mode = periodSeed % 10;
        uint256 k;
        if (mode < 5 || current == 0) {
            k = current;
        } else if (mode < 9) {
            k = current - 1;
        } else {
            k = (periodSeed >> 8) % 2 == 0 || current < 2 ? current + 1 : current - 2; // never chargeable
        }
        uint256 cumulative = cumulativeSeed % 2 == 0
            ? ghostCharged[id][k] + _bound(cumulativeSeed >> 1, 0, 60 * USDC) // the usual growing total
            : _bound(cumulativeSeed >> 1, 0, 300 * USDC); // anything, including stale resends
        if (cumulative > ghostMaxCumulative[id][k]) ghostMaxCumulative[id][k] = cumulative;
        charge = ISubscriptions.Charge({
            subscriptionId: id,
            periodIndex: k,
            cumulativeOverage: cumulative,
            usageRoot: keccak256(abi.encode(id, k, cumulative))
        });
    }

    /// @dev After a renew batch: every listed subscription that the model still sees as due must have lapsed or
    /// failed in this call (so no due renewal was silently skipped).
    function _checkRenewOutcome(uint256[] memory ids) internal {
        for (uint256 i; i < ids.length; ++i) {
            uint256 id = ids[i];
            SubModel storage m = _model[id];
            if (m.status != ACTIVE && m.status != PAST_DUE) continue;
            if (vm.getBlockTimestamp() < m.paidThrough) continue;
            // Renewed in this call and still due: after a pause longer than a period, several periods can be owed
            // and a renewal collects one (the next may even be past its grace when the plan changed to a shorter
            // one: it lapses at the next call).
            if (_renewedInCall[id] == _callNonce) continue;
            if (_graceOver(m)) {
                _flag(
                    Mismatch.Renewal,
                    string.concat(
                        "renew: grace over but not lapsed: id ",
                        vm.toString(id),
                        " paidThrough ",
                        vm.toString(uint256(m.paidThrough)),
                        " now ",
                        vm.toString(vm.getBlockTimestamp()),
                        " paused since ",
                        vm.toString(pausedSinceModel(m.paidThrough)),
                        " (contract: ",
                        vm.toString(subs.pausedSince(m.paidThrough)),
                        ")"
                    )
                );
            } else if (_failedInCall[id] != _callNonce) {
                _flag(Mismatch.Renewal, "renew: due but neither renewed nor failed");
            }
        }
    }

    /* ===================================================================================================== */
    /* OWNER / USDC ROLES                                                                                    */
    /* ===================================================================================================== */

    function blacklist(uint256 accountSeed) external {
        address a = _blacklistable(accountSeed);
        vm.prank(usdcBlacklister);
        usdc.blacklist(a);
        blacklisted[a] = true;
    }

    function unBlacklist(uint256 accountSeed) external {
        address a = _blacklistable(accountSeed);
        vm.prank(usdcBlacklister);
        usdc.unBlacklist(a);
        blacklisted[a] = false;
    }

    /// @dev Subscribers, recipients and payout wallets; never the contracts, the treasury or the stranger.
    function _blacklistable(uint256 seed) internal view returns (address) {
        uint256 i = seed % (N_SUBSCRIBERS + N_RECIPIENTS + N_PAYOUTS);
        if (i < N_SUBSCRIBERS) return _subscribers[i];
        i -= N_SUBSCRIBERS;
        if (i < N_RECIPIENTS) return _recipients[i];
        return _payoutWallets[i - N_RECIPIENTS];
    }

    function warp(uint256 mode, uint256 seed) external {
        uint256 dt;
        mode %= 10;
        if (mode < 2) {
            dt = _bound(seed, 1, 1 hours);
        } else if (mode < 5) {
            dt = _bound(seed, 1 hours, 3 days);
        } else if (mode < 6) {
            dt = _bound(seed, 3 days, 40 days);
        } else {
            // Just past the end of a live subscription's paid period, inside its grace: its renewal becomes due.
            dt = _timeToNextDue(seed);
            if (dt == 0) dt = _bound(seed, 1 hours, 3 days);
        }
        vm.warp(vm.getBlockTimestamp() + dt);
    }

    /// @notice The owner pauses charging (a no-op without an event when already paused).
    function pause() external {
        bool wasPaused = ghostPaused;
        _pauseEvents = 0;
        _begin();
        bool ok;
        vm.prank(owner);
        try subs.pause() {
            ok = true;
        } catch {}
        _end();
        if (!ok) {
            _flag(Mismatch.Pause, "pause: refused");
            return;
        }
        if (_pauseEvents != (wasPaused ? 0 : 1)) _flag(Mismatch.Pause, "pause: ChargingPausedSet other than on a change");
        if (!wasPaused) {
            _pauses.push(PauseModel({start: uint40(vm.getBlockTimestamp()), end: 0}));
            ghostPaused = true;
            _stat("pause");
        }
        if (!subs.chargingPaused()) _flag(Mismatch.Pause, "pause: not paused");
    }

    /// @notice The owner resumes charging (a no-op without an event when not paused).
    function unpause() external {
        bool wasPaused = ghostPaused;
        _pauseEvents = 0;
        _begin();
        bool ok;
        vm.prank(owner);
        try subs.unpause() {
            ok = true;
        } catch {}
        _end();
        if (!ok) {
            _flag(Mismatch.Pause, "unpause: refused");
            return;
        }
        if (_pauseEvents != (wasPaused ? 1 : 0)) {
            _flag(Mismatch.Pause, "unpause: ChargingPausedSet other than on a change");
        }
        if (wasPaused) {
            _pauses[_pauses.length - 1].end = uint40(vm.getBlockTimestamp());
            ghostPaused = false;
            _stat("unpause");
        }
        if (subs.chargingPaused()) _flag(Mismatch.Pause, "unpause: still paused");
    }

    /// @notice Anyone flushes credit owed to the escrow: the token never refuses a transfer between the two
    /// contracts here, so nothing is ever owed and nothing moves.
    function flushCreditToEscrow() external {
        _begin();
        bool ok;
        uint256 moved;
        vm.prank(stranger);
        try subs.flushCreditToEscrow() returns (uint256 m) {
            (ok, moved) = (true, m);
        } catch {}
        _end();
        if (!ok || moved != 0 || subs.creditOwedToEscrow() != 0) {
            _flag(Mismatch.Collection, "flushCreditToEscrow: credit owed to the escrow");
        }
    }

    /// @dev Time until just past the earliest upcoming due date of a live subscription (a random point in the
    /// first half of its grace), or 0 when none is upcoming.
    function _timeToNextDue(uint256 seed) internal view returns (uint256) {
        uint256 earliest = type(uint256).max;
        uint256 grace;
        for (uint256 id = 1; id <= subCount; ++id) {
            SubModel storage m = _model[id];
            if ((m.status == ACTIVE || m.status == PAST_DUE) && m.paidThrough > vm.getBlockTimestamp()) {
                if (m.paidThrough < earliest) {
                    earliest = m.paidThrough;
                    grace = _plans[m.planId].grace;
                }
            }
        }
        if (earliest == type(uint256).max) return 0;
        return earliest - vm.getBlockTimestamp() + _bound(seed, 0, grace / 2);
    }

    /* ===================================================================================================== */
    /* SPLITS                                                                                                */
    /* ===================================================================================================== */

    function createSplit(uint256 countSeed, uint256 startSeed, uint256 bpsSeed, uint256 remainderSeed) public {
        if (splitCount >= MAX_SPLITS) return;
        (address[] memory rs, uint8[] memory idx, uint16[] memory bps, uint256 rem) =
            _randomSplit(countSeed, startSeed, bpsSeed, remainderSeed);

        _begin();
        bool ok;
        uint256 splitId;
        vm.prank(owner);
        try escrow.createSplit(rs, bps, rem) returns (uint256 id_) {
            ok = true;
            _stat("createSplit");
            splitId = id_;
        } catch {}
        _end();

        if (!ok) {
            _flag(Mismatch.Split, "createSplit: valid split refused");
            return;
        }
        if (splitId != splitCount + 1) _flag(Mismatch.Split, "createSplit: unexpected id");
        splitCount = splitId;
        // Like a change: in force only after the delay.
        _pushVersion(splitId, idx, bps, rem, vm.getBlockTimestamp() + splitDelay);
    }

    function proposeSplitChange(uint256 splitSeed, uint256 countSeed, uint256 startSeed, uint256 bpsSeed) external {
        if (splitCount == 0) return;
        uint256 splitId = _bound(splitSeed, 1, splitCount);
        (address[] memory rs, uint8[] memory idx, uint16[] memory bps, uint256 rem) =
            _randomSplit(countSeed, startSeed, bpsSeed, splitSeed >> 8);
        VersionModel[] storage versions = _versions[splitId];
        bool expectOk = versions[versions.length - 1].effectiveAt <= vm.getBlockTimestamp();

        _begin();
        bool ok;
        uint256 version;
        vm.prank(owner);
        try escrow.proposeSplitChange(splitId, rs, bps, rem) returns (uint256 v) {
            ok = true;
            _stat("proposeSplitChange");
            version = v;
        } catch {}
        _end();

        if (ok != expectOk) _flag(Mismatch.Split, "proposeSplitChange: outcome differs from model");
        if (!ok) return;
        if (version != versions.length) _flag(Mismatch.Split, "proposeSplitChange: unexpected version");
        _pushVersion(splitId, idx, bps, rem, vm.getBlockTimestamp() + splitDelay);
    }

    function cancelSplitChange(uint256 splitSeed) external {
        if (splitCount == 0) return;
        uint256 splitId = _bound(splitSeed, 1, splitCount);
        VersionModel[] storage versions = _versions[splitId];
        // Only a pending change can be cancelled; a pending version 0 (a new split) cannot.
        bool expectOk = versions[versions.length - 1].effectiveAt > vm.getBlockTimestamp() && versions.length > 1;

        _begin();
        bool ok;
        vm.prank(owner);
        try escrow.cancelSplitChange(splitId) {
            ok = true;
            _stat("cancelSplitChange");
        } catch {}
        _end();

        if (ok != expectOk) _flag(Mismatch.Split, "cancelSplitChange: outcome differs from model");
        if (ok) versions.pop();
    }

    function _randomSplit(uint256 countSeed, uint256 startSeed, uint256 bpsSeed, uint256 remainderSeed)
        internal
        view
        returns (address[] memory rs, uint8[] memory idx, uint16[] memory bps, uint256 rem)
    {
        uint256 count = _bound(countSeed, 1, N_RECIPIENTS);
        uint256 start = startSeed % N_RECIPIENTS;
        uint256 stride = (startSeed >> 8) % 2 == 0 ? 1 : 3; // 3 is coprime with 4: another order
        rs = new address[](count);
        idx = new uint8[](count);
        bps = new uint16[](count);
        uint256 left = TOTAL_BPS;
        for (uint256 i; i < count; ++i) {
            uint256 r = (start + i * stride) % N_RECIPIENTS;
            idx[i] = uint8(r);
            rs[i] = _recipients[r];
            uint256 b = i + 1 == count ? left : _bound(uint256(keccak256(abi.encode(bpsSeed, i))), 0, left);
            bps[i] = uint16(b);
            left -= b;
        }
        rem = remainderSeed % count;
    }

    function _pushVersion(uint256 splitId, uint8[] memory idx, uint16[] memory bps, uint256 rem, uint256 effectiveAt)
        internal
    {
        VersionModel storage v = _versions[splitId].push();
        v.recipients = idx;
        v.bps = bps;
        v.remainderIndex = uint8(rem);
        v.effectiveAt = uint40(effectiveAt);
    }

    /// @notice The modelled version of `splitId` in force at `timestamp`.
    function versionInForce(uint256 splitId, uint256 timestamp) public view returns (bool found, uint256 version) {
        VersionModel[] storage versions = _versions[splitId];
        for (uint256 i = versions.length; i > 0; --i) {
            if (versions[i - 1].effectiveAt <= timestamp) return (true, i - 1);
        }
    }

    function latestVersionModel(uint256 splitId) external view returns (uint256) {
        return _versions[splitId].length - 1;
    }

    /* ===================================================================================================== */
    /* SETTLEMENT                                                                                            */
    /* ===================================================================================================== */

    struct SettleCall {
        uint256 settlementId;
        uint256 epochStart;
        uint256 epochEnd;
        uint256[] splitIds;
        uint256[] amounts;
        uint256 total;
        uint256[4] expected;
        uint256[4] before;
        uint256 totalClaimableBefore;
        bytes expectedError; // empty: the model accepts the settlement
        bool ok;
        bytes reason;
    }

    /// @notice The keeper settles the next epoch: from where the last one ended (any start for the first) to now,
    /// to the next version change of one of its splits, or to a random point. Sometimes a wrong start, an empty or
    /// future epoch, a used settlement id, or a split changed (or not yet in force) inside the epoch: the model
    /// says which must be refused, and why.
    function settle(uint256 idSeed, uint256 splitSeed, uint256 amountSeed, uint256 epochSeed) external {
        if (splitCount == 0) return;
        SettleCall memory c;
        // One in five reuses a settlement id that was applied: a resend must never apply twice.
        if (idSeed % 5 == 0 && _usedSettlementIds.length != 0) {
            c.settlementId = _usedSettlementIds[(idSeed >> 8) % _usedSettlementIds.length];
        } else {
            c.settlementId = uint256(keccak256(abi.encode("settlement", ++_settlementNonce)));
        }
        _settleAmounts(c, splitSeed, amountSeed);
        _settleEpoch(c, epochSeed);
        c.expectedError = _expectedSettleError(c);
        if (c.expectedError.length == 0) _expectedCredits(c);
        for (uint256 i; i < N_RECIPIENTS; ++i) {
            c.before[i] = escrow.claimableOf(_recipients[i]);
        }
        c.totalClaimableBefore = escrow.totalClaimable();
        (_settling, _settlingId, _settlingStart, _settlingEnd) = (true, c.settlementId, c.epochStart, c.epochEnd);

        _begin();
        vm.prank(keeper);
        try escrow.settle(
            c.settlementId, c.epochStart, c.epochEnd, c.splitIds, c.amounts, keccak256(abi.encode(c.settlementId))
        ) {
            c.ok = true;
            _stat("settle");
        } catch (bytes memory reason) {
            c.reason = reason;
        }
        _end();
        _settling = false;
        _afterSettle(c);
    }

    function _settleAmounts(SettleCall memory c, uint256 splitSeed, uint256 amountSeed) internal view {
        uint256 n = _bound(splitSeed, 1, 3);
        c.splitIds = new uint256[](n);
        c.amounts = new uint256[](n);
        uint256 left = escrow.unallocated();
        bool allOfIt = amountSeed % 3 == 0;
        for (uint256 i; i < n; ++i) {
            c.splitIds[i] = _bound(uint256(keccak256(abi.encode(splitSeed, i))), 1, splitCount);
            uint256 a = allOfIt && i + 1 == n ? left : _bound(uint256(keccak256(abi.encode(amountSeed, i))), 0, left);
            c.amounts[i] = a;
            c.total += a;
            left -= a;
        }
        // Rarely more than is unallocated (refused).
        if (amountSeed % 29 == 0) {
            c.amounts[0] += 1;
            c.total += 1;
        }
    }

    /// @dev Picks the epoch: mostly the next consecutive one (to now, to the next version change of one of its
    /// splits, or to a random point), sometimes a wrong start or an invalid epoch.
    function _settleEpoch(SettleCall memory c, uint256 seed) internal view {
        uint256 now_ = vm.getBlockTimestamp();
        uint256 last = ghostLastEpochEnd;
        uint256 start = last != 0 ? last : now_ - _bound(seed >> 8, 1, 2 days);
        uint256 mode = seed % 16;
        uint256 end;
        if (mode < 2 && last != 0) {
            // Not where the last epoch ended: earlier (overlapping it) or later (leaving a gap).
            uint256 delta = _bound(seed >> 16, 1, 3 days);
            start = (seed >> 64) % 2 == 0 ? last - delta : last + delta;
            end = start < now_ ? now_ : start + 1;
        } else if (mode < 3) {
            // Ending in the future, or empty.
            end = (seed >> 16) % 2 == 0 ? now_ + _bound(seed >> 24, 1, 1 days) : start;
        } else if (mode < 9) {
            end = now_;
        } else if (mode < 13) {
            end = _nextVersionChange(c.splitIds, start, now_);
        } else {
            end = start < now_ ? start + _bound(seed >> 32, 1, now_ - start) : now_;
        }
        (c.epochStart, c.epochEnd) = (start, end);
    }

    /// @dev The earliest effectiveAt after `start` among the versions of `splitIds`, or `now_` if none is earlier.
    function _nextVersionChange(uint256[] memory splitIds, uint256 start, uint256 now_)
        internal
        view
        returns (uint256 end)
    {
        end = now_;
        for (uint256 i; i < splitIds.length; ++i) {
            VersionModel[] storage versions = _versions[splitIds[i]];
            for (uint256 v; v < versions.length; ++v) {
                uint256 at = versions[v].effectiveAt;
                if (at > start && at < end) end = at;
            }
        }
    }

    /// @dev Why the model refuses settlement `c` (the contract's order of checks), or empty if it accepts it.
    function _expectedSettleError(SettleCall memory c) internal view returns (bytes memory) {
        (uint256 start, uint256 end) = (c.epochStart, c.epochEnd);
        if (end > vm.getBlockTimestamp() || start >= end) {
            return abi.encodeWithSelector(ISplitEscrow.InvalidEpoch.selector, start, end);
        }
        uint256 last = ghostLastEpochEnd;
        if (last != 0 && start != last) {
            return abi.encodeWithSelector(ISplitEscrow.EpochNotConsecutive.selector, last, start);
        }
        if (settlementApplied[c.settlementId] != 0) {
            return abi.encodeWithSelector(ISplitEscrow.SettlementIdUsed.selector, c.settlementId);
        }
        for (uint256 i; i < c.splitIds.length; ++i) {
            uint256 splitId = c.splitIds[i];
            // The version in force at the epoch's last second must have been in force at its first.
            (bool found, uint256 version) = versionInForce(splitId, end - 1);
            if (!found) return abi.encodeWithSelector(ISplitEscrow.SplitNotInForce.selector, splitId, end - 1);
            uint256 effectiveAt = _versions[splitId][version].effectiveAt;
            if (effectiveAt > start) {
                return abi.encodeWithSelector(ISplitEscrow.SplitChangedInEpoch.selector, splitId, effectiveAt);
            }
        }
        uint256 available = escrow.unallocated();
        if (c.total > available) {
            return abi.encodeWithSelector(ISplitEscrow.InsufficientUnallocated.selector, available, c.total);
        }
        return "";
    }

    /// @dev What each recipient should be credited, by the modelled version in force for the whole epoch.
    function _expectedCredits(SettleCall memory c) internal view {
        for (uint256 i; i < c.splitIds.length; ++i) {
            uint256 amount = c.amounts[i];
            if (amount == 0) continue;
            (, uint256 version) = versionInForce(c.splitIds[i], c.epochEnd - 1);
            VersionModel storage v = _versions[c.splitIds[i]][version];
            uint256 left = amount;
            for (uint256 j; j < v.recipients.length; ++j) {
                uint256 share = amount * v.bps[j] / TOTAL_BPS;
                c.expected[v.recipients[j]] += share;
                left -= share;
            }
            c.expected[v.recipients[v.remainderIndex]] += left;
        }
    }

    function _afterSettle(SettleCall memory c) internal {
        bool expectOk = c.expectedError.length == 0;
        if (c.ok != expectOk) {
            _flag(Mismatch.Settlement, "settle: accepted/refused against the model");
        } else if (!c.ok) {
            if (keccak256(c.reason) != keccak256(c.expectedError)) {
                _flag(Mismatch.Settlement, "settle: refused for another reason than the model's");
            }
            _stat(bytes4(c.expectedError));
        }
        if (!c.ok) return;
        uint256 sid = c.settlementId;
        if (settlementApplied[sid] == 0) _usedSettlementIds.push(sid);
        ++settlementApplied[sid];
        settlementAmounts[sid] += c.total;
        ghostSettled += c.total;
        ghostLastEpochEnd = c.epochEnd;
        _epochs.push(
            EpochRecord({start: uint64(c.epochStart), end: uint64(c.epochEnd), settledAt: uint64(vm.getBlockTimestamp())})
        );
        uint256 credited;
        for (uint256 i; i < N_RECIPIENTS; ++i) {
            address r = _recipients[i];
            uint256 afterBalance = escrow.claimableOf(r);
            if (afterBalance < c.before[i]) {
                _flag(Mismatch.Distribution, "settle: a claimable balance went down");
                continue;
            }
            uint256 delta = afterBalance - c.before[i];
            credited += delta;
            if (delta != c.expected[i]) _flag(Mismatch.Distribution, "settle: recipient credit differs from split");
            ghostClaimable[r] += c.expected[i];
        }
        settlementCredits[sid] += credited;
        if (escrow.totalClaimable() != c.totalClaimableBefore + c.total) {
            _flag(Mismatch.Distribution, "settle: totalClaimable moved by other than the total");
        }
    }

    /// @dev A Credited event of the settlement in progress: records the version the split was divided by.
    function _onCredited(Vm.Log memory l) internal {
        (uint256 settlementId, uint256 splitId,) = abi.decode(l.data, (uint256, uint256, uint256));
        if (!_settling || settlementId != _settlingId) {
            _flag(Mismatch.Distribution, "Credited outside its settlement");
            return;
        }
        uint256 n = _credited.length;
        // One record per split and settlement (each recipient has its own event).
        if (n != 0 && _credited[n - 1].settlementId == settlementId && _credited[n - 1].splitId == splitId) return;
        _credited.push(
            CreditedRecord({
                settlementId: settlementId,
                splitId: splitId,
                version: escrow.versionAt(splitId, _settlingEnd - 1),
                epochStart: uint64(_settlingStart),
                epochEnd: uint64(_settlingEnd)
            })
        );
    }

    /* ===================================================================================================== */
    /* RECIPIENTS / ANYONE                                                                                   */
    /* ===================================================================================================== */

    function claim(uint256 recipientSeed) external {
        address r = _recipients[recipientSeed % N_RECIPIENTS];
        uint256 claimable = escrow.claimableOf(r);
        address payout = payoutOf(r);
        uint256 payoutBefore = usdc.balanceOf(payout);
        bool expectOk = _holds[r].until <= vm.getBlockTimestamp() && claimable != 0 && !blacklisted[payout];

        _begin();
        bool ok;
        uint256 amount;
        vm.prank(stranger);
        try escrow.claim(r) returns (uint256 a) {
            ok = true;
            _stat("claim");
            amount = a;
        } catch {}
        _end();

        if (ok != expectOk) _flag(Mismatch.Claim, "claim: outcome differs from model");
        if (!ok) return;
        if (amount != claimable || usdc.balanceOf(payout) != payoutBefore + claimable) {
            _flag(Mismatch.Claim, "claim: wrong amount or payout");
        }
        if (escrow.claimableOf(r) != 0) _flag(Mismatch.Claim, "claim: balance left");
        ghostClaimable[r] = 0;
        ghostClaimed += claimable;
    }

    function claimMany(uint256 seed, uint256 countSeed) external {
        address[] memory rs = new address[](_bound(countSeed, 1, 5));
        for (uint256 i; i < rs.length; ++i) {
            rs[i] = _recipients[uint256(keccak256(abi.encode(seed, i))) % N_RECIPIENTS];
        }
        uint256 escrowBefore = usdc.balanceOf(address(escrow));
        uint256 expectedPaid;
        uint256 expectedCount;
        uint256[4] memory expectedAfter;
        for (uint256 i; i < N_RECIPIENTS; ++i) {
            expectedAfter[i] = escrow.claimableOf(_recipients[i]);
        }
        for (uint256 i; i < rs.length; ++i) {
            uint256 slot = _recipientSlot[rs[i]] - 1;
            uint256 c = expectedAfter[slot];
            if (c == 0 || _holds[rs[i]].until > vm.getBlockTimestamp() || blacklisted[payoutOf(rs[i])]) continue;
            expectedPaid += c;
            ++expectedCount;
            expectedAfter[slot] = 0;
        }

        _begin();
        uint256 paid;
        vm.prank(stranger);
        try escrow.claimMany(rs) returns (uint256 p) {
            paid = p;
        } catch {
            _flag(Mismatch.Claim, "claimMany reverted");
        }
        _end();

        if (paid != expectedCount || usdc.balanceOf(address(escrow)) + expectedPaid != escrowBefore) {
            _flag(Mismatch.Claim, "claimMany: paid differs from model");
        }
        for (uint256 i; i < N_RECIPIENTS; ++i) {
            address r = _recipients[i];
            if (escrow.claimableOf(r) != expectedAfter[i]) _flag(Mismatch.Claim, "claimMany: balance differs");
            if (expectedAfter[i] == 0) ghostClaimable[r] = 0;
        }
        ghostClaimed += expectedPaid;
        if (paid != 0) _stat("claimManyPaid");
    }

    function setPayoutAddress(uint256 recipientSeed, uint256 payoutSeed) external {
        address r = _recipients[recipientSeed % N_RECIPIENTS];
        uint256 choice = payoutSeed % (N_PAYOUTS + 1);
        address payout = choice == N_PAYOUTS ? r : _payoutWallets[choice];
        vm.prank(r);
        escrow.setPayoutAddress(payout);
        _payout[r] = payout;
    }

    /// @notice Where the model says `recipient`'s claims are paid.
    function payoutOf(address r) public view returns (address) {
        address p = _payout[r];
        return p == address(0) ? r : p;
    }

    /* ===================================================================================================== */
    /* ESCROW OWNER                                                                                          */
    /* ===================================================================================================== */

    function hold(uint256 recipientSeed, uint256 untilSeed) external {
        address r = _recipients[recipientSeed % N_RECIPIENTS];
        uint256 until = vm.getBlockTimestamp() + _bound(untilSeed, 0, maxHold + 2 days);
        HoldModel memory h = _holds[r];
        bool expectOk = true;
        uint256 since;
        if (h.until > vm.getBlockTimestamp()) {
            since = h.since;
        } else {
            if (h.until != 0 && vm.getBlockTimestamp() < uint256(h.until) + HOLD_COOLDOWN) expectOk = false;
            since = vm.getBlockTimestamp();
        }
        if (until > since + maxHold || until <= vm.getBlockTimestamp()) expectOk = false;

        _begin();
        bool ok;
        vm.prank(owner);
        try escrow.hold(r, until, keccak256(abi.encode(untilSeed))) {
            ok = true;
            _stat("hold");
        } catch {}
        _end();

        if (ok != expectOk) _flag(Mismatch.Hold, "hold: outcome differs from model");
        if (ok) _holds[r] = HoldModel({until: uint40(until), since: uint40(since)});
    }

    function release(uint256 recipientSeed) external {
        address r = _recipients[recipientSeed % N_RECIPIENTS];
        bool expectOk = _holds[r].until > vm.getBlockTimestamp();

        _begin();
        bool ok;
        vm.prank(owner);
        try escrow.release(r) {
            ok = true;
            _stat("release");
        } catch {}
        _end();

        if (ok != expectOk) _flag(Mismatch.Hold, "release: outcome differs from model");
        if (ok) _holds[r].until = uint40(vm.getBlockTimestamp());
    }

    struct RefundCall {
        uint256 id;
        uint256 periodIndex;
        uint256 amount;
        bool toCredit;
        bytes32 refundId;
        address subscriber;
        uint256 left; // refundable for (id, periodIndex) by the model
        uint256 available; // unallocated revenue
        bytes expectedError; // empty: the model accepts the refund
    }

    /// @notice The owner refunds part of what a subscriber paid for one period of one subscription, to its wallet
    /// or as credit: mostly within what is left to refund, sometimes more (refused), sometimes with a refund id
    /// already used (refused), a period with nothing paid, or a subscription that does not exist.
    function refund(uint256 idSeed, uint256 periodSeed, uint256 amountSeed, bool toCredit) external {
        uint256 n = subCount;
        if (n == 0) return;
        RefundCall memory c;
        c.toCredit = toCredit;
        c.id = idSeed % 16 == 0 ? n + 1 : _bound(idSeed >> 4, 1, n);
        c.available = escrow.unallocated();
        if (c.id <= n) {
            c.periodIndex = _refundPeriod(_model[c.id], periodSeed);
            // Three times in four, the first subscription from there with something left for the period picked.
            for (uint256 i; i < n && (idSeed >> 2) % 4 != 0 && refundableModel(c.id, c.periodIndex) == 0; ++i) {
                c.id = c.id % n + 1;
                c.periodIndex = _refundPeriod(_model[c.id], periodSeed);
            }
            c.subscriber = _model[c.id].subscriber;
            c.left = refundableModel(c.id, c.periodIndex);
            if (escrow.refundable(c.id, c.periodIndex) != c.left) {
                _flag(Mismatch.Refund, "refundable differs from the model (fee of the last paid period + usage the ledger holds - refunded)");
            }
        }
        c.amount = _refundAmount(c.left, c.available, amountSeed);
        if (periodSeed % 6 == 0 && _usedRefundIds.length != 0) {
            c.refundId = _usedRefundIds[(periodSeed >> 8) % _usedRefundIds.length];
        } else {
            c.refundId = keccak256(abi.encode("refund", ++_refundNonce));
        }
        c.expectedError = _expectedRefundError(c);
        uint256 walletBefore = c.subscriber == address(0) ? 0 : usdc.balanceOf(c.subscriber);
        uint256 creditBefore = c.subscriber == address(0) ? 0 : subs.creditOf(c.subscriber);
        (_expectRefundHash, _refundEvents) =
            (keccak256(abi.encode(c.subscriber, c.id, c.periodIndex, c.amount, c.toCredit, c.refundId)), 0);

        _begin();
        bool ok;
        bytes memory reason;
        vm.prank(owner);
        try escrow.refund(c.id, c.periodIndex, c.amount, c.toCredit, c.refundId) {
            ok = true;
        } catch (bytes memory r) {
            reason = r;
        }
        _end();

        if (ok != (c.expectedError.length == 0)) {
            _flag(Mismatch.Refund, "refund: outcome differs from model");
        } else if (!ok) {
            if (keccak256(reason) != keccak256(c.expectedError)) {
                _flag(Mismatch.Refund, "refund: refused for another reason than the model's");
            }
            _stat(bytes4(c.expectedError));
        }
        if (!ok) return;
        _stat(toCredit ? bytes32("refundToCredit") : bytes32("refundToWallet"));
        if (_refundEvents != 1) _flag(Mismatch.Refund, "refund: Refunded event missing or wrong");
        _recordRefund(c);
        if (escrow.refundedFor(c.id, c.periodIndex) != ghostRefundedFor[c.id][c.periodIndex]) {
            _flag(Mismatch.Refund, "refund: refundedFor differs from the model");
        }
        address s = c.subscriber;
        if (toCredit) {
            if (subs.creditOf(s) != creditBefore + c.amount || usdc.balanceOf(s) != walletBefore) {
                _flag(Mismatch.Refund, "refund: credit not added");
            }
        } else {
            if (usdc.balanceOf(s) != walletBefore + c.amount || subs.creditOf(s) != creditBefore) {
                _flag(Mismatch.Refund, "refund: wallet not paid");
            }
        }
    }

    /// @dev Mostly the last paid period; else the one before, the ledger's two periods, or any up to the next one.
    function _refundPeriod(SubModel storage m, uint256 seed) internal view returns (uint256) {
        uint256 current = m.periodIndex;
        uint256 mode = (seed >> 16) % 10;
        if (mode < 5) return current;
        if (mode < 7) return current == 0 ? 0 : current - 1;
        if (mode < 8) return m.ledgerPeriod;
        if (mode < 9) return m.ledgerPeriod == 0 ? 0 : m.ledgerPeriod - 1;
        return _bound(seed >> 24, 0, current + 1);
    }

    function _refundAmount(uint256 left, uint256 available, uint256 seed) internal pure returns (uint256) {
        uint256 mode = seed % 20;
        uint256 most = left < available ? left : available;
        if (mode == 0) return 0; // refused: nothing to refund
        if (mode < 4) return left + _bound(seed >> 8, 1, 10 * USDC); // more than is left to refund (refused)
        if (mode < 7) return most == 0 ? 1 : most; // everything that can be refunded
        return _bound(seed >> 8, 1, most == 0 ? 1 : most);
    }

    /// @dev Why the model refuses refund `c` (the contract's order of checks), or empty if it accepts it.
    function _expectedRefundError(RefundCall memory c) internal view returns (bytes memory) {
        if (c.amount == 0) return abi.encodeWithSelector(ISplitEscrow.ZeroAmount.selector);
        if (ghostRefundIdUsed[c.refundId]) return abi.encodeWithSelector(ISplitEscrow.RefundIdUsed.selector, c.refundId);
        if (c.id > subCount) return abi.encodeWithSelector(ISubscriptions.UnknownSubscription.selector, c.id);
        if (c.amount > c.left) return abi.encodeWithSelector(ISplitEscrow.RefundExceedsPaid.selector, c.left, c.amount);
        if (c.amount > c.available) {
            return abi.encodeWithSelector(ISplitEscrow.InsufficientUnallocated.selector, c.available, c.amount);
        }
        if (!c.toCredit && blacklisted[c.subscriber]) {
            return abi.encodeWithSignature("Error(string)", "Blacklistable: account is blacklisted");
        }
        return "";
    }

    function _recordRefund(RefundCall memory c) internal {
        (uint256 id, uint256 k, uint256 amount) = (c.id, c.periodIndex, c.amount);
        ghostRefundIdUsed[c.refundId] = true;
        _usedRefundIds.push(c.refundId);
        ghostRefundedFor[id][k] += amount;
        if (!_refundPairSeen[id][k]) {
            _refundPairSeen[id][k] = true;
            _refundPairIds.push(id);
            _refundPairPeriods.push(k);
        }
        ghostRefundedTo[c.subscriber] += amount;
        ghostRefunded += amount;
        if (c.toCredit) {
            ghostRefundedToCredit += amount;
            ghostCredit[c.subscriber] += amount;
        } else {
            ghostRefundedToWallet += amount;
        }
    }

    /// @notice What is left to refund for period `k` of `id` by the model: the plan fee while `k` is the last paid
    /// period, plus the usage charged for `k` while the usage ledger holds it, net of refunds so far.
    function refundableModel(uint256 id, uint256 k) public view returns (uint256) {
        SubModel storage m = _model[id];
        uint256 paid = k == m.periodIndex ? _plans[m.planId].price : 0;
        uint256 newest = m.ledgerPeriod;
        if (k == newest || k + 1 == newest) paid += ghostCharged[id][k];
        uint256 refunded = ghostRefundedFor[id][k];
        return paid > refunded ? paid - refunded : 0;
    }

    function sweepSurplus() external {
        uint256 expected = ghostStray - ghostSwept;
        uint256 treasuryBefore = usdc.balanceOf(treasury);

        _begin();
        bool ok;
        uint256 amount;
        vm.prank(owner);
        try escrow.sweepSurplus(treasury) returns (uint256 a) {
            ok = true;
            _stat("sweepSurplus");
            amount = a;
        } catch {}
        _end();

        if (ok != (expected != 0)) _flag(Mismatch.Sweep, "sweep: outcome differs from model");
        if (!ok) return;
        if (amount != expected || usdc.balanceOf(treasury) != treasuryBefore + amount) {
            _flag(Mismatch.Sweep, "sweep: amount is not the stray tokens");
        }
        ghostSwept += amount;
    }

    /// @notice Someone sends tokens straight to the escrow, outside the revenue path.
    function mistakenTransfer(uint256 amountSeed) external {
        uint256 amount = _bound(amountSeed, 1, 1_000 * USDC);
        vm.prank(usdcMinter);
        usdc.mint(stranger, amount);
        _begin();
        vm.prank(stranger);
        require(usdc.transfer(address(escrow), amount), "transfer");
        _end();
        ghostStray += amount;
    }

    /* ===================================================================================================== */
    /* LOG PROCESSING                                                                                        */
    /* ===================================================================================================== */

    function _begin() internal {
        vm.recordLogs();
    }

    function _end() internal {
        Vm.Log[] memory logs = vm.getRecordedLogs();
        for (uint256 i; i < logs.length; ++i) {
            Vm.Log memory l = logs[i];
            if (l.topics.length == 0) continue;
            if (l.emitter == address(usdc)) {
                if (l.topics[0] == TRANSFER_TOPIC) _onTransfer(l);
            } else if (l.emitter == address(subs)) {
                _onSubscriptionsEvent(l);
            } else if (l.emitter == address(escrow)) {
                _onEscrowEvent(l);
            }
        }
    }

    function _onEscrowEvent(Vm.Log memory l) internal {
        bytes32 topic = l.topics[0];
        if (topic == ISplitEscrow.Credited.selector) {
            _onCredited(l);
        } else if (topic == ISplitEscrow.Refunded.selector) {
            (uint256 k, uint256 amount, bool toCredit) = abi.decode(l.data, (uint256, uint256, bool));
            address subscriber = address(uint160(uint256(l.topics[1])));
            bytes32 got = keccak256(abi.encode(subscriber, uint256(l.topics[2]), k, amount, toCredit, l.topics[3]));
            if (got == _expectRefundHash) ++_refundEvents;
            else _flag(Mismatch.Refund, "Refunded: differs from the refund made");
        }
    }

    function _onTransfer(Vm.Log memory l) internal {
        address from = address(uint160(uint256(l.topics[1])));
        address to = address(uint160(uint256(l.topics[2])));
        uint256 value = abi.decode(l.data, (uint256));
        if (to == address(escrow)) escrowIn += value;
        if (to == address(subs)) subsIn += value;
        if (from == address(escrow)) {
            escrowOut += value;
            escrowOutTo[to] += value;
            if (to == address(subs)) {
                escrowOutToSubscriptions += value;
            } else if (_subscriberSlot[to] != 0) {
                escrowOutToSubscribers += value;
            } else if (to == treasury) {
                escrowOutToTreasury += value;
            } else if (_isCurrentPayout(to)) {
                escrowOutToPayouts += value;
            } else {
                escrowOutElsewhere += value;
                _flag(Mismatch.EscrowOutflow, "tokens left the escrow to a disallowed address");
            }
        }
        if (from == address(subs)) {
            subsOut += value;
            subsOutTo[to] += value;
            if (to == address(escrow)) {
                subsOutToEscrow += value;
            } else if (_subscriberSlot[to] != 0) {
                subsOutToSubscribers += value;
            } else {
                subsOutElsewhere += value;
                _flag(Mismatch.SubsOutflow, "tokens left Subscriptions to a disallowed address");
            }
        }
    }

    function _isCurrentPayout(address a) internal view returns (bool) {
        for (uint256 i; i < N_RECIPIENTS; ++i) {
            if (payoutOf(_recipients[i]) == a) return true;
        }
        return false;
    }

    function _onSubscriptionsEvent(Vm.Log memory l) internal {
        bytes32 topic = l.topics[0];
        if (topic == ISubscriptions.Subscribed.selector) _onSubscribed(l);
        else if (topic == ISubscriptions.Renewed.selector) _onRenewed(l);
        else if (topic == ISubscriptions.RenewalFailed.selector) _onRenewalFailed(l);
        else if (topic == ISubscriptions.Lapsed.selector) _onLapsed(l);
        else if (topic == ISubscriptions.UsageCharged.selector) _onUsageCharged(l);
        else if (topic == ISubscriptions.UsageChargeFailed.selector) _onUsageChargeFailed(l);
        else if (topic == ISubscriptions.OverageCapSet.selector) _onOverageCapSet(l);
        else if (topic == ISubscriptions.ChargingPausedSet.selector) ++_pauseEvents;
    }

    function _onOverageCapSet(Vm.Log memory l) internal {
        (, uint256 from) = abi.decode(l.data, (uint256, uint256));
        if (from == _expectCapFrom) ++_capEvents;
        else _flag(Mismatch.SubscriptionModel, "OverageCapSet: not from the period in progress");
    }

    /// @dev The non-indexed fields of Subscribed and Renewed (first field: cap, resp. period index).
    struct PaidData {
        uint256 first;
        uint256 paidThrough;
        uint256 amount;
        uint256 fromCredit;
    }

    function _onSubscribed(Vm.Log memory l) internal {
        uint256 id = uint256(l.topics[1]);
        address who = address(uint160(uint256(l.topics[2])));
        uint256 planId = uint256(l.topics[3]);
        PaidData memory d = abi.decode(l.data, (PaidData));
        PlanSpec storage p = _plans[planId];
        ExpectedSubscribe storage e = _expectSub;
        if (
            e.seen || id != subCount + 1 || who != e.subscriber || planId != e.planId || d.first != e.cap
                || d.amount != p.price || d.paidThrough != vm.getBlockTimestamp() + p.period
        ) _flag(Mismatch.SubscriptionModel, "Subscribed: differs from the request");
        e.seen = true;
        subCount = id;
        _model[id] = SubModel({
            subscriber: who,
            planId: uint16(planId),
            nextPlan: 0,
            status: ACTIVE,
            periodIndex: 0,
            paidThrough: uint40(vm.getBlockTimestamp() + p.period),
            cap: uint64(e.cap),
            ledgerPeriod: 0
        });
        _setCap(id, 0, e.cap);
        _recordPeriodFee(id, 0, d.amount, p.price);
        _attribute(who, d.amount, d.fromCredit);
    }

    function _onRenewed(Vm.Log memory l) internal {
        uint256 id = uint256(l.topics[1]);
        PaidData memory d = abi.decode(l.data, (PaidData));
        SubModel storage m = _model[id];
        uint256 expectedPlan = m.nextPlan != 0 ? m.nextPlan : m.planId;
        PlanSpec storage p = _plans[expectedPlan];
        uint256 k = uint256(m.periodIndex) + 1;
        uint256 expectedPaidThrough = uint256(m.paidThrough) + p.period;
        if (
            !_due(m) || uint256(l.topics[2]) != expectedPlan || d.first != k || d.paidThrough != expectedPaidThrough
                || d.amount != p.price
        ) _flag(Mismatch.Renewal, "Renewed: not due, or wrong plan/period/price");
        m.planId = uint16(expectedPlan);
        m.nextPlan = 0;
        m.status = ACTIVE;
        m.periodIndex = uint24(k);
        m.paidThrough = uint40(expectedPaidThrough);
        if (_renewedInCall[id] == _callNonce || vm.getBlockTimestamp() >= expectedPaidThrough) {
            _stat("renewedStillDue"); // more than one period owed (only after a long pause)
        }
        _renewedInCall[id] = _callNonce;
        _stat("renewed");
        _recordPeriodFee(id, k, d.amount, p.price);
        _attribute(m.subscriber, d.amount, d.fromCredit);
    }

    function _onRenewalFailed(Vm.Log memory l) internal {
        uint256 id = uint256(l.topics[1]);
        (uint256 periodIndex,) = abi.decode(l.data, (uint256, uint8));
        SubModel storage m = _model[id];
        if (!_due(m) || periodIndex != uint256(m.periodIndex) + 1) {
            _flag(Mismatch.Renewal, "RenewalFailed: not due or wrong period");
        }
        _stat("renewalFailed");
        m.status = PAST_DUE;
        _failedInCall[id] = _callNonce;
    }

    function _onLapsed(Vm.Log memory l) internal {
        uint256 id = uint256(l.topics[1]);
        uint256 paidThrough = abi.decode(l.data, (uint256));
        SubModel storage m = _model[id];
        bool live = m.status == ACTIVE || m.status == PAST_DUE;
        if (!live || !_graceOver(m) || paidThrough != m.paidThrough) {
            _flag(Mismatch.Renewal, "Lapsed: inside grace or not live");
        }
        _stat("lapsed");
        m.status = LAPSED;
    }

    /// @dev The non-indexed fields of UsageCharged.
    struct ChargedData {
        uint256 cumulative;
        uint256 amount;
        uint256 fromCredit;
        uint256 chargedTotal;
        bytes32 usageRoot;
    }

    function _onUsageCharged(Vm.Log memory l) internal {
        uint256 id = uint256(l.topics[1]);
        uint256 k = uint256(l.topics[2]);
        ChargedData memory d = abi.decode(l.data, (ChargedData));
        SubModel storage m = _model[id];
        uint256 cap = capOf(id, k); // the cap of period k, which may differ from the latest one
        uint256 target = d.cumulative < cap ? d.cumulative : cap;
        uint256 newTotal = ghostCharged[id][k] + d.amount;
        if (!_chargeable(m, k)) _flag(Mismatch.Charge, "UsageCharged: period outside its charge window");
        if (d.amount == 0 || d.chargedTotal != target || newTotal != d.chargedTotal) {
            _flag(Mismatch.Charge, "UsageCharged: amount is not min(cumulative, cap of the period) - charged");
        }
        _stat("usageCharged");
        if (d.chargedTotal == cap) _stat("usageChargedToCap");
        if (cap != m.cap) _stat("usageChargedUnderAnOlderCap");
        ghostCharged[id][k] = newTotal;
        ghostCapAtCharge[id][k] = cap;
        if (k > m.ledgerPeriod) m.ledgerPeriod = uint24(k);
        if (!_pairSeen[id][k]) {
            _pairSeen[id][k] = true;
            _pairIds.push(id);
            _pairPeriods.push(k);
        }
        _attribute(m.subscriber, d.amount, d.fromCredit);
    }

    function _onUsageChargeFailed(Vm.Log memory l) internal {
        uint256 id = uint256(l.topics[1]);
        uint256 k = uint256(l.topics[2]);
        (, uint8 reason,) = abi.decode(l.data, (uint256, uint8, bytes32));
        _stat(reason >= 4 ? bytes32("chargeRefusedWindow") : bytes32("chargeRefusedFunds"));
        bool windowReason = reason == uint8(ISubscriptions.FailureReason.UnknownSubscription)
            || reason == uint8(ISubscriptions.FailureReason.PeriodNotStarted)
            || reason == uint8(ISubscriptions.FailureReason.ChargeWindowClosed);
        if (windowReason == _chargeable(_model[id], k)) {
            _flag(Mismatch.Charge, "UsageChargeFailed: reason contradicts the charge window");
        }
    }

    /* ===================================================================================================== */
    /* MODEL HELPERS                                                                                         */
    /* ===================================================================================================== */

    function _due(SubModel storage m) internal view returns (bool) {
        if (m.status != ACTIVE && m.status != PAST_DUE) return false;
        return vm.getBlockTimestamp() >= m.paidThrough && !_graceOver(m);
    }

    /// @dev Whether the grace period after `m.paidThrough` ran out, not counting time paused.
    function _graceOver(SubModel storage m) internal view returns (bool) {
        return vm.getBlockTimestamp() >= uint256(m.paidThrough) + _plans[m.planId].grace + pausedSinceModel(m.paidThrough);
    }

    /// @notice Whether the model says `id` is entitled now.
    function entitledModel(uint256 id) external view returns (bool) {
        SubModel storage m = _model[id];
        if (m.status == ACTIVE || m.status == PAST_DUE) return !_graceOver(m);
        if (m.status == CANCELLED) return vm.getBlockTimestamp() < m.paidThrough;
        return false;
    }

    /// @dev Whether period `k` may be charged now: the current or previous period, ended at most the window ago
    /// (time paused not counted), and still one of the two periods the usage ledger holds (after a pause longer
    /// than a period, a period can be inside its window but older than those two).
    function _chargeable(SubModel storage m, uint256 k) internal view returns (bool) {
        if (m.status == 0) return false;
        uint256 current = m.periodIndex;
        uint256 end;
        if (k == current) end = m.paidThrough;
        else if (k + 1 == current) end = uint256(m.paidThrough) - _plans[m.planId].period;
        else return false;
        if (vm.getBlockTimestamp() > end + chargeWindow + pausedSinceModel(end)) return false;
        return k + 1 >= m.ledgerPeriod;
    }

    /// @notice Seconds paused between `from` and now, by the model's own log of pauses.
    function pausedSinceModel(uint256 from) public view returns (uint256 paused) {
        uint256 now_ = vm.getBlockTimestamp();
        // Newest first; pauses never overlap and come in order, so the walk stops at the first one over by `from`.
        for (uint256 i = _pauses.length; i > 0; --i) {
            PauseModel storage p = _pauses[i - 1];
            uint256 end = p.end == 0 ? now_ : p.end;
            if (end <= from) break;
            paused += end - (p.start > from ? p.start : from);
        }
    }

    /// @notice The cap of period `k` of `id` by the model: the last change made from `k` or earlier.
    function capOf(uint256 id, uint256 k) public view returns (uint256) {
        CapChange[] storage changes = _capChanges[id];
        for (uint256 i = changes.length; i > 0; --i) {
            if (changes[i - 1].from <= k) return changes[i - 1].cap;
        }
        return 0;
    }

    function _setCap(uint256 id, uint256 from, uint256 cap) internal {
        CapChange[] storage changes = _capChanges[id];
        uint256 n = changes.length;
        if (n != 0 && changes[n - 1].from > from) _flag(Mismatch.SubscriptionModel, "cap change for an ended period");
        if (n != 0 && changes[n - 1].from == from) changes[n - 1].cap = uint64(cap);
        else changes.push(CapChange({from: uint24(from), cap: uint64(cap)}));
    }

    function _recordPeriodFee(uint256 id, uint256 k, uint256 amount, uint256 price) internal {
        ghostPeriodFee[id][k] += amount;
        ++ghostPeriodFeeCount[id][k];
        ghostPeriodPrice[id][k] = price;
    }

    /// @dev Books `amount` collected from `subscriber` in the current pull batch.
    function _attribute(address who, uint256 amount, uint256 fromCredit) internal {
        uint256 slot = _subscriberSlot[who];
        if (slot == 0) {
            _flag(Mismatch.Collection, "collected from someone who is not a subscriber");
            return;
        }
        _spent[slot - 1] += amount;
        _creditSpent[slot - 1] += fromCredit;
        _collected += amount;
        ghostPaidBy[who] += amount;
        ghostRevenue += amount;
        ghostCreditUsed += fromCredit;
        if (ghostCredit[who] < fromCredit) {
            _flag(Mismatch.Collection, "more credit used than the subscriber had");
            ghostCredit[who] = 0;
        } else {
            ghostCredit[who] -= fromCredit;
        }
    }

    function _beginCollection() internal {
        ++_callNonce;
        _collected = 0;
        _revenueBefore = subs.totalRevenue();
        _escrowBefore = usdc.balanceOf(address(escrow));
        for (uint256 i; i < N_SUBSCRIBERS; ++i) {
            _spent[i] = 0;
            _creditSpent[i] = 0;
            _walletBefore[i] = usdc.balanceOf(_subscribers[i]);
            _creditBefore[i] = subs.creditOf(_subscribers[i]);
        }
        _begin();
    }

    /// @dev After a pull batch: the revenue total and the escrow grew by exactly what the events report, and each
    /// subscriber's wallet plus credit shrank by exactly what was collected from it (credit by `fromCredit`).
    function _endCollection() internal {
        _end();
        if (subs.totalRevenue() != _revenueBefore + _collected) {
            _flag(Mismatch.Collection, "totalRevenue delta differs from collected amounts");
        }
        if (usdc.balanceOf(address(escrow)) != _escrowBefore + _collected) {
            _flag(Mismatch.Collection, "escrow balance delta differs from collected amounts");
        }
        for (uint256 i; i < N_SUBSCRIBERS; ++i) {
            address s = _subscribers[i];
            uint256 credit = subs.creditOf(s);
            if (usdc.balanceOf(s) + credit + _spent[i] != _walletBefore[i] + _creditBefore[i]) {
                _flag(Mismatch.Collection, "subscriber paid other than what was collected");
            }
            if (credit + _creditSpent[i] != _creditBefore[i]) {
                _flag(Mismatch.Collection, "credit used differs from fromCredit");
            }
        }
    }

    /// @notice How often each kind of action or outcome happened (to check the suite exercises the contracts).
    mapping(bytes32 => uint256) public stats;

    function _stat(bytes32 what) internal {
        ++stats[what];
    }

    /// @dev Whether revert data `reason` is exactly the error `expected`.
    function _isError(bytes memory reason, bytes memory expected) internal pure returns (bool) {
        return keccak256(reason) == keccak256(expected);
    }

    function _flag(Mismatch m, string memory why) internal {
        ++mismatches[uint256(m)];
        if (bytes(firstMismatch[uint256(m)]).length == 0) firstMismatch[uint256(m)] = why;
    }

    /* ===================================================================================================== */
    /* VIEWS FOR THE INVARIANTS                                                                              */
    /* ===================================================================================================== */

    function subscriberAt(uint256 i) external view returns (address) {
        return _subscribers[i];
    }

    function recipientAt(uint256 i) external view returns (address) {
        return _recipients[i];
    }

    function planPrice(uint256 planId) external view returns (uint256) {
        return _plans[planId].price;
    }

    function model(uint256 id) external view returns (SubModel memory) {
        return _model[id];
    }

    function pairCount() external view returns (uint256) {
        return _pairIds.length;
    }

    function pair(uint256 i) external view returns (uint256 id, uint256 periodIndex) {
        return (_pairIds[i], _pairPeriods[i]);
    }

    function usedSettlementCount() external view returns (uint256) {
        return _usedSettlementIds.length;
    }

    function usedSettlementId(uint256 i) external view returns (uint256) {
        return _usedSettlementIds[i];
    }

    function mismatchCount(Mismatch m) external view returns (uint256) {
        return mismatches[uint256(m)];
    }

    function refundPairCount() external view returns (uint256) {
        return _refundPairIds.length;
    }

    function refundPair(uint256 i) external view returns (uint256 id, uint256 periodIndex) {
        return (_refundPairIds[i], _refundPairPeriods[i]);
    }

    function epochCount() external view returns (uint256) {
        return _epochs.length;
    }

    function epochAt(uint256 i) external view returns (EpochRecord memory) {
        return _epochs[i];
    }

    function creditedCount() external view returns (uint256) {
        return _credited.length;
    }

    function creditedAt(uint256 i) external view returns (CreditedRecord memory) {
        return _credited[i];
    }

    /// @notice How many versions of `splitId` the model knows (cancelled changes removed).
    function versionCount(uint256 splitId) external view returns (uint256) {
        return _versions[splitId].length;
    }

    function versionEffectiveAt(uint256 splitId, uint256 version) external view returns (uint256) {
        return _versions[splitId][version].effectiveAt;
    }

    function pauseCount() external view returns (uint256) {
        return _pauses.length;
    }

    function pauseAt(uint256 i) external view returns (PauseModel memory) {
        return _pauses[i];
    }
}
// forge-lint: disable-end(unsafe-typecast)
