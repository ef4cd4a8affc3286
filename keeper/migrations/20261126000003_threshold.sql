-- Mid-period threshold charges (`run --charge-threshold`): what each one committed to on chain, the period's
-- usage priced so far, so that the lines behind an interim usage root can be shown to the subscriber. The
-- period's close later posts the final cumulative charge with the final root (always at least one base unit more,
-- so the final root is the last one the chain records for the period).
CREATE TABLE keeper.threshold_charges (
    chain_id         BIGINT NOT NULL,
    subscription_id  BIGINT NOT NULL,
    period_index     BIGINT NOT NULL,
    cumulative       NUMERIC(78,0) NOT NULL CHECK (cumulative > 0),
    usage_root       BYTEA NOT NULL CHECK (length(usage_root) = 32),
    lines            JSONB NOT NULL,           -- the provisional lines, in leaf order
    computed_at      BIGINT NOT NULL,          -- chain time of the evaluation
    PRIMARY KEY (chain_id, subscription_id, period_index, cumulative)
);

-- Threshold charges are evaluated once per retry slot: re-pricing every open period on every step would cost as
-- much as a close each time.
CREATE TABLE keeper.threshold_evaluations (
    chain_id      BIGINT NOT NULL,
    slot          BIGINT NOT NULL,
    evaluated_at  BIGINT NOT NULL,
    PRIMARY KEY (chain_id, slot)
);
