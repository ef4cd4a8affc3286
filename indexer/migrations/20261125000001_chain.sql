-- The indexer's schema `chain`: a mirror of every event of the subsettle contracts. The indexer is its only
-- writer; the keeper reads it. Conventions:
--   * every event row is keyed by (chain_id, block_number, log_index), the log's position on the chain;
--   * addresses and hashes are BYTEA (20 and 32 bytes); amounts are NUMERIC(78,0), exact for any uint256;
--   * block_time is the block's Unix timestamp in seconds;
--   * a reorg deletes every row above the fork point from every table in one transaction, so typed tables hold
--     facts (events) only; current state is computed by the views at the end.
CREATE SCHEMA IF NOT EXISTS chain;

-- One row per followed deployment: where indexing starts and how far it got. The cursor (block number and hash)
-- moves in the same transaction as the rows it covers, so a crash can neither skip nor repeat a block.
CREATE TABLE chain.deployments (
    chain_id        BIGINT  NOT NULL,
    subscriptions   BYTEA   NOT NULL CHECK (length(subscriptions) = 20),
    escrow          BYTEA   NOT NULL CHECK (length(escrow) = 20),
    start_block     BIGINT  NOT NULL CHECK (start_block >= 0),
    cursor_number   BIGINT,
    cursor_hash     BYTEA   CHECK (length(cursor_hash) = 32),
    PRIMARY KEY (chain_id, subscriptions)
);

-- Hashes of the indexed blocks that are not final yet (above the node's finalized block), to detect reorgs.
CREATE TABLE chain.blocks (
    chain_id      BIGINT NOT NULL,
    number        BIGINT NOT NULL,
    hash          BYTEA  NOT NULL CHECK (length(hash) = 32),
    parent_hash   BYTEA  NOT NULL CHECK (length(parent_hash) = 32),
    PRIMARY KEY (chain_id, number)
);

-- The source of truth: every log of the followed contracts, as the node returned it.
CREATE TABLE chain.raw_logs (
    chain_id      BIGINT  NOT NULL,
    block_number  BIGINT  NOT NULL,
    log_index     INTEGER NOT NULL,
    block_hash    BYTEA   NOT NULL,
    block_time    BIGINT  NOT NULL,
    tx_hash       BYTEA   NOT NULL,
    tx_index      INTEGER NOT NULL,
    address       BYTEA   NOT NULL,
    topics        BYTEA[] NOT NULL,
    data          BYTEA   NOT NULL,
    PRIMARY KEY (chain_id, block_number, log_index)
);

-- Typed tables, one per kind of event. The common columns come first.

CREATE TABLE chain.plans (                  -- Subscriptions.PlanCreated
    chain_id BIGINT NOT NULL, block_number BIGINT NOT NULL, log_index INTEGER NOT NULL, tx_hash BYTEA NOT NULL, block_time BIGINT NOT NULL,
    plan_id       NUMERIC(78,0) NOT NULL,
    price         NUMERIC(78,0) NOT NULL,
    period        NUMERIC(78,0) NOT NULL,
    grace_period  NUMERIC(78,0) NOT NULL,
    PRIMARY KEY (chain_id, block_number, log_index)
);

CREATE TABLE chain.plan_active_changes (    -- Subscriptions.PlanActiveSet
    chain_id BIGINT NOT NULL, block_number BIGINT NOT NULL, log_index INTEGER NOT NULL, tx_hash BYTEA NOT NULL, block_time BIGINT NOT NULL,
    plan_id  NUMERIC(78,0) NOT NULL,
    active   BOOLEAN NOT NULL,
    PRIMARY KEY (chain_id, block_number, log_index)
);

CREATE TABLE chain.subscribed (             -- Subscriptions.Subscribed
    chain_id BIGINT NOT NULL, block_number BIGINT NOT NULL, log_index INTEGER NOT NULL, tx_hash BYTEA NOT NULL, block_time BIGINT NOT NULL,
    subscription_id  NUMERIC(78,0) NOT NULL,
    subscriber       BYTEA NOT NULL,
    plan_id          NUMERIC(78,0) NOT NULL,
    overage_cap      NUMERIC(78,0) NOT NULL,
    paid_through     NUMERIC(78,0) NOT NULL,
    amount           NUMERIC(78,0) NOT NULL,
    from_credit      NUMERIC(78,0) NOT NULL,
    PRIMARY KEY (chain_id, block_number, log_index)
);

CREATE TABLE chain.renewals (               -- Subscriptions.Renewed
    chain_id BIGINT NOT NULL, block_number BIGINT NOT NULL, log_index INTEGER NOT NULL, tx_hash BYTEA NOT NULL, block_time BIGINT NOT NULL,
    subscription_id  NUMERIC(78,0) NOT NULL,
    plan_id          NUMERIC(78,0) NOT NULL,
    period_index     NUMERIC(78,0) NOT NULL,
    paid_through     NUMERIC(78,0) NOT NULL,
    amount           NUMERIC(78,0) NOT NULL,
    from_credit      NUMERIC(78,0) NOT NULL,
    PRIMARY KEY (chain_id, block_number, log_index)
);

CREATE TABLE chain.renewal_failures (       -- Subscriptions.RenewalFailed
    chain_id BIGINT NOT NULL, block_number BIGINT NOT NULL, log_index INTEGER NOT NULL, tx_hash BYTEA NOT NULL, block_time BIGINT NOT NULL,
    subscription_id  NUMERIC(78,0) NOT NULL,
    period_index     NUMERIC(78,0) NOT NULL,
    reason           TEXT NOT NULL,
    PRIMARY KEY (chain_id, block_number, log_index)
);

CREATE TABLE chain.subscription_ends (      -- Subscriptions.Lapsed and Subscriptions.Cancelled
    chain_id BIGINT NOT NULL, block_number BIGINT NOT NULL, log_index INTEGER NOT NULL, tx_hash BYTEA NOT NULL, block_time BIGINT NOT NULL,
    subscription_id  NUMERIC(78,0) NOT NULL,
    kind             TEXT NOT NULL CHECK (kind IN ('lapsed', 'cancelled')),
    paid_through     NUMERIC(78,0) NOT NULL,
    PRIMARY KEY (chain_id, block_number, log_index)
);

CREATE TABLE chain.overage_cap_changes (    -- Subscriptions.OverageCapSet
    chain_id BIGINT NOT NULL, block_number BIGINT NOT NULL, log_index INTEGER NOT NULL, tx_hash BYTEA NOT NULL, block_time BIGINT NOT NULL,
    subscription_id  NUMERIC(78,0) NOT NULL,
    overage_cap      NUMERIC(78,0) NOT NULL,
    PRIMARY KEY (chain_id, block_number, log_index)
);

CREATE TABLE chain.plan_change_requests (   -- Subscriptions.PlanChangeScheduled
    chain_id BIGINT NOT NULL, block_number BIGINT NOT NULL, log_index INTEGER NOT NULL, tx_hash BYTEA NOT NULL, block_time BIGINT NOT NULL,
    subscription_id  NUMERIC(78,0) NOT NULL,
    new_plan_id      NUMERIC(78,0) NOT NULL,
    PRIMARY KEY (chain_id, block_number, log_index)
);

CREATE TABLE chain.usage_charges (          -- Subscriptions.UsageCharged
    chain_id BIGINT NOT NULL, block_number BIGINT NOT NULL, log_index INTEGER NOT NULL, tx_hash BYTEA NOT NULL, block_time BIGINT NOT NULL,
    subscription_id    NUMERIC(78,0) NOT NULL,
    period_index       NUMERIC(78,0) NOT NULL,
    cumulative_overage NUMERIC(78,0) NOT NULL,
    amount             NUMERIC(78,0) NOT NULL,
    from_credit        NUMERIC(78,0) NOT NULL,
    charged_in_period  NUMERIC(78,0) NOT NULL,
    usage_root         BYTEA NOT NULL,
    PRIMARY KEY (chain_id, block_number, log_index)
);

CREATE TABLE chain.usage_charge_failures (  -- Subscriptions.UsageChargeFailed
    chain_id BIGINT NOT NULL, block_number BIGINT NOT NULL, log_index INTEGER NOT NULL, tx_hash BYTEA NOT NULL, block_time BIGINT NOT NULL,
    subscription_id    NUMERIC(78,0) NOT NULL,
    period_index       NUMERIC(78,0) NOT NULL,
    cumulative_overage NUMERIC(78,0) NOT NULL,
    reason             TEXT NOT NULL,
    usage_root         BYTEA NOT NULL,
    PRIMARY KEY (chain_id, block_number, log_index)
);

CREATE TABLE chain.credit_movements (       -- Subscriptions.CreditDeposited / CreditWithdrawn / CreditRefunded / CreditTransferDeferred / CreditFlushed
    chain_id BIGINT NOT NULL, block_number BIGINT NOT NULL, log_index INTEGER NOT NULL, tx_hash BYTEA NOT NULL, block_time BIGINT NOT NULL,
    kind        TEXT NOT NULL CHECK (kind IN ('deposit', 'withdrawal', 'refund', 'deferred', 'flushed')),
    subscriber  BYTEA,                      -- NULL for 'deferred' and 'flushed' (credit owed to the escrow)
    amount      NUMERIC(78,0) NOT NULL,
    balance     NUMERIC(78,0),              -- the subscriber's credit afterwards; for 'deferred' the total owed
    PRIMARY KEY (chain_id, block_number, log_index)
);

CREATE TABLE chain.split_versions (         -- SplitEscrow.SplitVersionAdded
    chain_id BIGINT NOT NULL, block_number BIGINT NOT NULL, log_index INTEGER NOT NULL, tx_hash BYTEA NOT NULL, block_time BIGINT NOT NULL,
    split_id         NUMERIC(78,0) NOT NULL,
    version          NUMERIC(78,0) NOT NULL,
    effective_at     NUMERIC(78,0) NOT NULL,
    recipients       BYTEA[] NOT NULL,
    bps              INTEGER[] NOT NULL,
    remainder_index  INTEGER NOT NULL,
    PRIMARY KEY (chain_id, block_number, log_index)
);

CREATE TABLE chain.split_change_cancellations ( -- SplitEscrow.SplitChangeCancelled
    chain_id BIGINT NOT NULL, block_number BIGINT NOT NULL, log_index INTEGER NOT NULL, tx_hash BYTEA NOT NULL, block_time BIGINT NOT NULL,
    split_id  NUMERIC(78,0) NOT NULL,
    version   NUMERIC(78,0) NOT NULL,
    PRIMARY KEY (chain_id, block_number, log_index)
);

CREATE TABLE chain.settlements (            -- SplitEscrow.Settled
    chain_id BIGINT NOT NULL, block_number BIGINT NOT NULL, log_index INTEGER NOT NULL, tx_hash BYTEA NOT NULL, block_time BIGINT NOT NULL,
    settlement_id  NUMERIC(78,0) NOT NULL,
    epoch_start    NUMERIC(78,0) NOT NULL,
    epoch_end      NUMERIC(78,0) NOT NULL,
    usage_root     BYTEA NOT NULL,
    total          NUMERIC(78,0) NOT NULL,
    split_count    NUMERIC(78,0) NOT NULL,
    PRIMARY KEY (chain_id, block_number, log_index)
);

CREATE TABLE chain.credits (                -- SplitEscrow.Credited
    chain_id BIGINT NOT NULL, block_number BIGINT NOT NULL, log_index INTEGER NOT NULL, tx_hash BYTEA NOT NULL, block_time BIGINT NOT NULL,
    recipient      BYTEA NOT NULL,
    settlement_id  NUMERIC(78,0) NOT NULL,
    split_id       NUMERIC(78,0) NOT NULL,
    amount         NUMERIC(78,0) NOT NULL,
    PRIMARY KEY (chain_id, block_number, log_index)
);

CREATE TABLE chain.claims (                 -- SplitEscrow.Claimed and SplitEscrow.ClaimFailed
    chain_id BIGINT NOT NULL, block_number BIGINT NOT NULL, log_index INTEGER NOT NULL, tx_hash BYTEA NOT NULL, block_time BIGINT NOT NULL,
    recipient  BYTEA NOT NULL,
    payout     BYTEA NOT NULL,
    amount     NUMERIC(78,0) NOT NULL,
    succeeded  BOOLEAN NOT NULL,
    PRIMARY KEY (chain_id, block_number, log_index)
);

CREATE TABLE chain.payout_addresses (       -- SplitEscrow.PayoutAddressSet
    chain_id BIGINT NOT NULL, block_number BIGINT NOT NULL, log_index INTEGER NOT NULL, tx_hash BYTEA NOT NULL, block_time BIGINT NOT NULL,
    recipient  BYTEA NOT NULL,
    payout     BYTEA NOT NULL,
    PRIMARY KEY (chain_id, block_number, log_index)
);

CREATE TABLE chain.holds (                  -- SplitEscrow.HoldPlaced and SplitEscrow.HoldReleased
    chain_id BIGINT NOT NULL, block_number BIGINT NOT NULL, log_index INTEGER NOT NULL, tx_hash BYTEA NOT NULL, block_time BIGINT NOT NULL,
    recipient    BYTEA NOT NULL,
    kind         TEXT NOT NULL CHECK (kind IN ('placed', 'released')),
    held_until   NUMERIC(78,0),             -- NULL for 'released' (the hold ended at block_time)
    reason_hash  BYTEA,
    PRIMARY KEY (chain_id, block_number, log_index)
);

CREATE TABLE chain.refunds (                -- SplitEscrow.Refunded
    chain_id BIGINT NOT NULL, block_number BIGINT NOT NULL, log_index INTEGER NOT NULL, tx_hash BYTEA NOT NULL, block_time BIGINT NOT NULL,
    subscriber  BYTEA NOT NULL,
    amount      NUMERIC(78,0) NOT NULL,
    to_credit   BOOLEAN NOT NULL,
    refund_id   BYTEA NOT NULL,
    PRIMARY KEY (chain_id, block_number, log_index)
);

CREATE TABLE chain.surplus_sweeps (         -- SplitEscrow.SurplusSwept
    chain_id BIGINT NOT NULL, block_number BIGINT NOT NULL, log_index INTEGER NOT NULL, tx_hash BYTEA NOT NULL, block_time BIGINT NOT NULL,
    to_address  BYTEA NOT NULL,
    amount      NUMERIC(78,0) NOT NULL,
    PRIMARY KEY (chain_id, block_number, log_index)
);

-- Operator actions of both contracts: keeper changes, pauses, ownership moves, the escrow's Subscriptions link.
CREATE TABLE chain.admin_events (
    chain_id BIGINT NOT NULL, block_number BIGINT NOT NULL, log_index INTEGER NOT NULL, tx_hash BYTEA NOT NULL, block_time BIGINT NOT NULL,
    contract  TEXT NOT NULL CHECK (contract IN ('subscriptions', 'escrow')),
    kind      TEXT NOT NULL,                -- keeper_set, charging_paused_set, subscriptions_set, ownership_transfer_started, ownership_transferred
    account   BYTEA,                        -- the address the event names (new keeper, new owner, ...)
    flag      BOOLEAN,                      -- charging_paused_set: paused
    PRIMARY KEY (chain_id, block_number, log_index)
);

CREATE INDEX ON chain.renewals (chain_id, subscription_id);
CREATE INDEX ON chain.usage_charges (chain_id, subscription_id, period_index);
CREATE INDEX ON chain.credits (chain_id, recipient);
CREATE INDEX ON chain.claims (chain_id, recipient);
CREATE INDEX ON chain.subscribed (chain_id, subscriber);
