-- Issue #16 item 12: one admission decision for every `serve` replica on this database. Usage that adds overage is
-- admitted against the open period's cap and the wallet's funds from the figures below, read and updated under a
-- row lock in the same transaction as the insert of the events (`keeper/src/metering/entitlement/ledger.rs`), so
-- that concurrent batches, on one `serve` or on several, see each other's usage.

-- One row per (subscription, period) that has admitted usage: the row every admission of the period locks (in
-- (subscription_id, period_start) order, so that batches never deadlock) and the period's usage so far, which the
-- overage estimate is priced from. The usage is in the locked row itself, so that the statement taking the lock
-- also reads it as the transaction it waited for left it. Made when the period's first batch arrives, with the
-- usage of the events already stored for it (by earlier versions of the keeper); only ever written under its lock.
CREATE TABLE keeper.admission_periods (
    subscription_id  BIGINT NOT NULL,
    period_start     BIGINT NOT NULL,                  -- Unix seconds
    version          BIGINT NOT NULL DEFAULT 0,        -- +1 at every admission that writes the period
    -- Per model and meter: [model_id, meter, quantity (decimal text), latest event time in ms].
    usage            JSONB NOT NULL DEFAULT '[]' CHECK (jsonb_typeof(usage) = 'array'),
    overage          NUMERIC(78,0) NOT NULL DEFAULT 0, -- the estimated overage of `usage`, base units (informative)
    PRIMARY KEY (subscription_id, period_start)
);
