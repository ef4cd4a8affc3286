-- Schema `keeper`: written by the keeper alone. Times are Unix seconds (chain time) unless the column says `_ms`.
-- Token amounts are integers in base units, NUMERIC(78,0); prices, quantities and values are exact decimals.

-- Models the operator sells, the meters each one bills by, and the split that earns from it over time.
CREATE TABLE keeper.models (
    model_id      TEXT PRIMARY KEY CHECK (model_id ~ '^[a-z0-9][a-z0-9._:/-]{0,63}$'),
    display_name  TEXT NOT NULL CHECK (length(display_name) BETWEEN 1 AND 200),
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE keeper.meters (
    model_id  TEXT NOT NULL REFERENCES keeper.models,
    meter     TEXT NOT NULL CHECK (meter ~ '^[a-z][a-z0-9_]{0,63}$'),
    -- Decimal places a quantity may carry (0: whole units only).
    scale     SMALLINT NOT NULL CHECK (scale BETWEEN 0 AND 6),
    PRIMARY KEY (model_id, meter)
);

-- Which on-chain split earns from a model, from `effective_at` on. Rows are only ever added.
CREATE TABLE keeper.model_splits (
    model_id      TEXT NOT NULL REFERENCES keeper.models,
    effective_at  BIGINT NOT NULL CHECK (effective_at >= 0),
    split_id      NUMERIC(78,0) NOT NULL CHECK (split_id >= 0),
    recorded_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (model_id, effective_at)
);

-- The price book: a price per (model, meter) in token units for `per_units` of the meter, from `effective_at` on.
-- A change is a new row (a new version); an event is priced by the row in force at its timestamp.
CREATE TABLE keeper.prices (
    model_id      TEXT NOT NULL,
    meter         TEXT NOT NULL,
    effective_at  BIGINT NOT NULL CHECK (effective_at >= 0),
    unit_price    NUMERIC NOT NULL CHECK (unit_price >= 0),
    per_units     NUMERIC NOT NULL CHECK (per_units > 0),
    recorded_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (model_id, meter, effective_at),
    FOREIGN KEY (model_id, meter) REFERENCES keeper.meters
);

-- Usage included in a plan's fee, per period, from `effective_at` on (a period uses the version in force at its
-- start): either a number of units of one meter (across models) or a value in token units (`meter` '').
CREATE TABLE keeper.plan_allowances (
    plan_id       NUMERIC(78,0) NOT NULL CHECK (plan_id >= 0),
    effective_at  BIGINT NOT NULL CHECK (effective_at >= 0),
    meter         TEXT NOT NULL DEFAULT '',   -- '' = a value allowance
    amount        NUMERIC NOT NULL CHECK (amount >= 0),
    recorded_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (plan_id, effective_at, meter)
);

-- Every accepted usage event, exactly once per `event_id`. `payload_hash` tells a resend from a conflict.
CREATE TABLE keeper.usage_events (
    event_id         TEXT PRIMARY KEY,
    payload_hash     BYTEA NOT NULL CHECK (length(payload_hash) = 32),
    subscription_id  BIGINT NOT NULL,           -- on-chain ids are counters, far below 2^63
    model_id         TEXT NOT NULL,
    meter            TEXT NOT NULL,
    quantity         NUMERIC NOT NULL CHECK (quantity >= 0),
    occurred_at_ms   BIGINT NOT NULL,
    properties       JSONB,
    received_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- The period close that billed it; NULL until then. Set once, by the close.
    close_id         BIGINT
);
CREATE INDEX usage_events_open ON keeper.usage_events (subscription_id, occurred_at_ms) WHERE close_id IS NULL;
CREATE INDEX usage_events_closed ON keeper.usage_events (close_id) WHERE close_id IS NOT NULL;

-- One row per closed (subscription, period): what was metered, included, charged and collected. Never edited.
CREATE TABLE keeper.period_closes (
    close_id          BIGSERIAL PRIMARY KEY,
    chain_id          BIGINT NOT NULL,
    subscription_id   BIGINT NOT NULL,
    period_index      BIGINT NOT NULL,
    subscriber        BYTEA NOT NULL CHECK (length(subscriber) = 20),
    plan_id           NUMERIC(78,0) NOT NULL,
    period_start      BIGINT NOT NULL,
    period_end        BIGINT NOT NULL,
    closed_at         BIGINT NOT NULL,
    fee               NUMERIC(78,0) NOT NULL,   -- the plan fee collected on chain for this period
    metered_value     NUMERIC NOT NULL,         -- all usage at list price, token units
    included_value    NUMERIC NOT NULL,
    overage_amount    NUMERIC(78,0) NOT NULL,   -- overage in base units, before the cap
    overage_cap       NUMERIC(78,0) NOT NULL,   -- the subscriber's on-chain cap at close
    overage_charge    NUMERIC(78,0) NOT NULL,   -- min(overage_amount, cap): the cumulative charge to post
    collected         NUMERIC(78,0) NOT NULL,   -- fee + overage_charge: what the attribution divides
    default_split_id  NUMERIC(78,0),            -- where the fee went when there was no usage
    usage_root        BYTEA NOT NULL CHECK (length(usage_root) = 32),
    line_count        INTEGER NOT NULL,
    UNIQUE (chain_id, subscription_id, period_index)
);

-- The priced usage lines of a close: events aggregated by model, meter, price version and split. `leaf` is the
-- Merkle leaf committed in `usage_root` (see docs/keeper.md for its encoding).
CREATE TABLE keeper.usage_lines (
    close_id           BIGINT NOT NULL REFERENCES keeper.period_closes,
    line_no            INTEGER NOT NULL,
    model_id           TEXT NOT NULL,
    meter              TEXT NOT NULL,
    price_effective_at BIGINT NOT NULL,
    unit_price         NUMERIC NOT NULL,
    per_units          NUMERIC NOT NULL,
    split_id           NUMERIC(78,0) NOT NULL,
    adjustment_of      BIGINT,                  -- the period the events belonged to, when they arrived late
    event_count        INTEGER NOT NULL,
    quantity           NUMERIC NOT NULL,
    included_quantity  NUMERIC NOT NULL,
    value              NUMERIC NOT NULL,
    included_value     NUMERIC NOT NULL,
    overage_amount     NUMERIC(78,0) NOT NULL,
    attributed         NUMERIC(78,0) NOT NULL,  -- this line's share of `collected`, base units
    leaf               BYTEA NOT NULL CHECK (length(leaf) = 32),
    PRIMARY KEY (close_id, line_no)
);

-- Settlement epochs: the closes not yet settled, gathered at `closed_at`, with the amount per split to settle.
-- The on-chain settlement is `settle(epoch_id, epoch_start, closed_at, splits, amounts, usage_root)`; recipients
-- are credited by the split version in force at `closed_at`.
CREATE TABLE keeper.epochs (
    epoch_id     BIGINT PRIMARY KEY CHECK (epoch_id > 0),
    chain_id     BIGINT NOT NULL,
    epoch_start  BIGINT NOT NULL,
    closed_at    BIGINT NOT NULL CHECK (closed_at >= epoch_start),
    usage_root  BYTEA NOT NULL CHECK (length(usage_root) = 32),
    total       NUMERIC(78,0) NOT NULL
);

CREATE TABLE keeper.epoch_closes (
    epoch_id  BIGINT NOT NULL REFERENCES keeper.epochs,
    close_id  BIGINT NOT NULL UNIQUE REFERENCES keeper.period_closes,
    PRIMARY KEY (epoch_id, close_id)
);

CREATE TABLE keeper.epoch_splits (
    epoch_id  BIGINT NOT NULL REFERENCES keeper.epochs,
    split_id  NUMERIC(78,0) NOT NULL,
    amount    NUMERIC(78,0) NOT NULL CHECK (amount > 0),
    PRIMARY KEY (epoch_id, split_id)
);
