-- Issue #15: the contracts record which period a cap change applies from, and which subscription period a refund
-- returns. Nullable because rows of a deployment indexed before these events existed have no such field.

ALTER TABLE chain.overage_cap_changes ADD COLUMN from_period NUMERIC(78,0);  -- OverageCapSet.fromPeriod
ALTER TABLE chain.refunds ADD COLUMN subscription_id NUMERIC(78,0);         -- Refunded.subscriptionId
ALTER TABLE chain.refunds ADD COLUMN period_index NUMERIC(78,0);            -- Refunded.periodIndex

-- The cap that applies to each (subscription, period) the chain knows of is the last change whose from_period is at
-- or before it, else the cap given at subscribe; readers find it with this index.
CREATE INDEX overage_cap_changes_by_subscription ON chain.overage_cap_changes (chain_id, subscription_id, from_period);

-- The cap that applied to period `period_index` of a subscription: the last change recorded for a period at or
-- before it, else the cap given at subscribe (what Subscriptions.overageCapOf answers while the ledger holds it).
CREATE FUNCTION chain.overage_cap_for(p_chain_id BIGINT, p_subscription_id NUMERIC, p_period_index NUMERIC)
RETURNS NUMERIC(78,0) LANGUAGE sql STABLE AS $$
    SELECT COALESCE(
        (SELECT c.overage_cap FROM chain.overage_cap_changes c
         WHERE c.chain_id = p_chain_id AND c.subscription_id = p_subscription_id
           AND COALESCE(c.from_period, 0) <= p_period_index
         ORDER BY c.block_number DESC, c.log_index DESC LIMIT 1),
        (SELECT s.overage_cap FROM chain.subscribed s
         WHERE s.chain_id = p_chain_id AND s.subscription_id = p_subscription_id))
$$;

-- Every pause of charging: from a ChargingPausedSet(true) to the next ChargingPausedSet(false) (NULL while it lasts).
-- The contract emits the flag only when it changes, so the events alternate.
CREATE VIEW chain.pauses AS
SELECT chain_id, started_at, ended_at FROM (
    SELECT chain_id, flag, block_time AS started_at,
           LEAD(block_time) OVER (PARTITION BY chain_id ORDER BY block_number, log_index) AS ended_at
    FROM chain.admin_events WHERE contract = 'subscriptions' AND kind = 'charging_paused_set'
) e WHERE flag;

-- Seconds charging was paused between p_from and p_to: what the contract adds to a grace period or a charge window
-- that started at p_from (Subscriptions.pausedSince).
CREATE FUNCTION chain.paused_seconds(p_chain_id BIGINT, p_from BIGINT, p_to BIGINT)
RETURNS BIGINT LANGUAGE sql STABLE AS $$
    SELECT COALESCE(SUM(GREATEST(0, LEAST(COALESCE(p.ended_at, p_to), p_to) - GREATEST(p.started_at, p_from))), 0)::BIGINT
    FROM chain.pauses p WHERE p.chain_id = p_chain_id AND p.started_at < p_to AND COALESCE(p.ended_at, p_to) > p_from
$$;
