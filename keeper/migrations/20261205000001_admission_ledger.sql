-- Issue #16 item 12: one admission decision for every `serve` replica on this database. Usage that adds overage is
-- admitted against the open period's cap and the wallet's funds from the figures below, read and updated under a
-- row lock in the same transaction as the insert of the events (`keeper/src/metering/entitlement/ledger.rs`), so
-- that concurrent batches, on one `serve` or on several, see each other's usage.

-- One row per (subscription, period) that has admitted usage: the row every admission of the period locks (in
-- (subscription_id, period_start) order, so that batches never deadlock), with the estimated overage admitted so
-- far. Created when the period's first batch arrives; `ready` once `admission_usage` holds every event of the
-- period stored before it (usage stored by earlier versions of the keeper is summed in then).
CREATE TABLE keeper.admission_periods (
    subscription_id  BIGINT NOT NULL,
    period_start     BIGINT NOT NULL,                  -- Unix seconds
    ready            BOOLEAN NOT NULL DEFAULT FALSE,
    version          BIGINT NOT NULL DEFAULT 0,        -- +1 at every admission that stored usage in the period
    overage          NUMERIC(78,0) NOT NULL DEFAULT 0, -- estimated overage admitted so far, base units (informative)
    PRIMARY KEY (subscription_id, period_start)
);

-- The period's usage so far per model and meter: what the overage estimate is priced from (each aggregate at the
-- price in force at its latest event, as the in-memory view does). Only ever written under its period's lock.
CREATE TABLE keeper.admission_usage (
    subscription_id  BIGINT NOT NULL,
    period_start     BIGINT NOT NULL,
    model_id         TEXT NOT NULL,
    meter            TEXT NOT NULL,
    quantity         NUMERIC NOT NULL CHECK (quantity >= 0),
    latest_ms        BIGINT NOT NULL,
    PRIMARY KEY (subscription_id, period_start, model_id, meter),
    FOREIGN KEY (subscription_id, period_start) REFERENCES keeper.admission_periods ON DELETE CASCADE
);
