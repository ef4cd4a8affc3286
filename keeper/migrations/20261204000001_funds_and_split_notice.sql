-- Issue #15 (item 7 and the model-to-split mapping): what wallets can pay for usage, and the notice a change of
-- a model's split mapping gives.

-- What a usage charge could collect from each subscriber with a live subscription, as `serve` last read it from
-- the chain (`keeper/src/funds.rs`): all three figures at one block. Every `serve` replica writes its readings
-- here and judges from the newest one, so replicas agree on the figures. A reading of an older block never
-- replaces a newer one.
CREATE TABLE keeper.wallet_funds (
    chain_id      BIGINT NOT NULL,
    subscriber    BYTEA NOT NULL CHECK (length(subscriber) = 20),
    balance       NUMERIC(78,0) NOT NULL CHECK (balance >= 0),     -- token.balanceOf(subscriber)
    allowance     NUMERIC(78,0) NOT NULL CHECK (allowance >= 0),   -- token.allowance(subscriber, Subscriptions)
    credit        NUMERIC(78,0) NOT NULL CHECK (credit >= 0),      -- Subscriptions.creditOf(subscriber)
    block_number  BIGINT NOT NULL CHECK (block_number >= 0),
    read_at_ms    BIGINT NOT NULL,                                 -- wall clock of the reading, Unix ms
    PRIMARY KEY (chain_id, subscriber)
);

-- A model's split mapping takes effect no earlier than the escrow's split-change delay after it is recorded (a
-- model's first mapping, given when it is registered and before it has earned anything, excepted). The time it
-- was recorded is kept in the keeper's time (chain time, as `effective_at`), with the notice it gave, so the
-- published history shows that the notice was kept. Rows recorded before this migration gave no notice.
ALTER TABLE keeper.model_splits
    ADD COLUMN recorded_time BIGINT,
    ADD COLUMN notice_secs BIGINT NOT NULL DEFAULT 0 CHECK (notice_secs >= 0);
UPDATE keeper.model_splits SET recorded_time = EXTRACT(EPOCH FROM recorded_at)::BIGINT;
ALTER TABLE keeper.model_splits ALTER COLUMN recorded_time SET NOT NULL;
