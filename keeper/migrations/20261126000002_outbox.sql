-- The outbox: every on-chain action is written here under a deterministic key before anything is signed, and
-- moves planned -> sent -> confirmed | failed (or superseded). Nonces come from this table, never from memory.
CREATE TABLE keeper.outbox (
    action_key       TEXT PRIMARY KEY,          -- e.g. renew:7@3,9@1 (ids with the period they renew into)
    kind             TEXT NOT NULL CHECK (kind IN ('renew', 'charge', 'settle', 'claim', 'admin')),
    target           BYTEA NOT NULL CHECK (length(target) = 20),
    calldata         BYTEA NOT NULL,
    items            JSONB NOT NULL DEFAULT '[]',   -- what the action covers, for planners and operators
    state            TEXT NOT NULL DEFAULT 'planned'
                     CHECK (state IN ('planned', 'sent', 'confirmed', 'failed', 'superseded')),
    sender           BYTEA CHECK (length(sender) = 20),
    nonce            BIGINT,
    gas_limit        BIGINT,
    max_fee_per_gas  NUMERIC(78,0),
    priority_fee     NUMERIC(78,0),
    tx_hashes        BYTEA[] NOT NULL DEFAULT '{}', -- every signed version of the transaction, newest last
    raw_tx           BYTEA,                         -- the newest signed transaction, re-broadcast after a restart
    block_number     BIGINT,
    gas_used         BIGINT,
    failure          TEXT,
    planned_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    sent_at          TIMESTAMPTZ,
    finished_at      TIMESTAMPTZ,
    UNIQUE (sender, nonce),
    CHECK (state = 'planned' OR state IN ('failed', 'superseded') OR nonce IS NOT NULL)
);
CREATE INDEX outbox_open ON keeper.outbox (state) WHERE state IN ('planned', 'sent');
