-- Current state, derived from the event tables (which a reorg rolls back); what the keeper reads.

-- Each subscription as it stands after the last indexed block.
CREATE VIEW chain.subscriptions AS
WITH last_renewal AS (
    SELECT DISTINCT ON (chain_id, subscription_id) *
    FROM chain.renewals ORDER BY chain_id, subscription_id, block_number DESC, log_index DESC
), last_end AS (
    SELECT DISTINCT ON (chain_id, subscription_id) *
    FROM chain.subscription_ends ORDER BY chain_id, subscription_id, block_number DESC, log_index DESC
), last_failure AS (
    SELECT DISTINCT ON (chain_id, subscription_id) *
    FROM chain.renewal_failures ORDER BY chain_id, subscription_id, block_number DESC, log_index DESC
), last_cap AS (
    SELECT DISTINCT ON (chain_id, subscription_id) *
    FROM chain.overage_cap_changes ORDER BY chain_id, subscription_id, block_number DESC, log_index DESC
), last_change AS (
    SELECT DISTINCT ON (chain_id, subscription_id) *
    FROM chain.plan_change_requests ORDER BY chain_id, subscription_id, block_number DESC, log_index DESC
)
SELECT
    s.chain_id,
    s.subscription_id,
    s.subscriber,
    COALESCE(r.plan_id, s.plan_id)            AS plan_id,
    COALESCE(r.period_index, 0)               AS period_index,
    COALESCE(r.paid_through, s.paid_through)  AS paid_through,
    COALESCE(c.overage_cap, s.overage_cap)    AS overage_cap,
    CASE
        WHEN e.kind IS NOT NULL THEN e.kind
        WHEN f.block_number IS NOT NULL
             AND (f.block_number, f.log_index) > (COALESCE(r.block_number, s.block_number), COALESCE(r.log_index, s.log_index))
            THEN 'past_due'
        ELSE 'active'
    END                                       AS status,
    CASE
        WHEN e.kind IS NULL AND pc.block_number IS NOT NULL
             AND (pc.block_number, pc.log_index) > (COALESCE(r.block_number, s.block_number), COALESCE(r.log_index, s.log_index))
             AND pc.new_plan_id <> COALESCE(r.plan_id, s.plan_id)
            THEN pc.new_plan_id
    END                                       AS pending_plan_id,
    s.block_time                              AS subscribed_at
FROM chain.subscribed s
LEFT JOIN last_renewal r USING (chain_id, subscription_id)
LEFT JOIN last_end     e USING (chain_id, subscription_id)
LEFT JOIN last_failure f USING (chain_id, subscription_id)
LEFT JOIN last_cap     c USING (chain_id, subscription_id)
LEFT JOIN last_change pc USING (chain_id, subscription_id);

-- Each plan with its current active flag.
CREATE VIEW chain.plan_states AS
SELECT p.chain_id, p.plan_id, p.price, p.period, p.grace_period,
       COALESCE((SELECT a.active FROM chain.plan_active_changes a
                 WHERE a.chain_id = p.chain_id AND a.plan_id = p.plan_id
                 ORDER BY a.block_number DESC, a.log_index DESC LIMIT 1), TRUE) AS active
FROM chain.plans p;

-- Prepaid credit per subscriber: deposits and refunds in, withdrawals and credit spent by charges out.
CREATE VIEW chain.subscriber_credit AS
WITH flows AS (
    SELECT chain_id, subscriber, amount AS delta FROM chain.credit_movements WHERE kind IN ('deposit', 'refund')
    UNION ALL
    SELECT chain_id, subscriber, -amount FROM chain.credit_movements WHERE kind = 'withdrawal'
    UNION ALL
    SELECT chain_id, subscriber, -from_credit FROM chain.subscribed
    UNION ALL
    SELECT r.chain_id, s.subscriber, -r.from_credit
    FROM chain.renewals r JOIN chain.subscribed s USING (chain_id, subscription_id)
    UNION ALL
    SELECT u.chain_id, s.subscriber, -u.from_credit
    FROM chain.usage_charges u JOIN chain.subscribed s USING (chain_id, subscription_id)
)
SELECT chain_id, subscriber, SUM(delta)::NUMERIC(78,0) AS credit FROM flows GROUP BY chain_id, subscriber;

-- What each recipient can claim: credited minus successfully claimed.
CREATE VIEW chain.recipient_balances AS
WITH flows AS (
    SELECT chain_id, recipient, amount AS delta FROM chain.credits
    UNION ALL
    SELECT chain_id, recipient, -amount FROM chain.claims WHERE succeeded
)
SELECT chain_id, recipient, SUM(delta)::NUMERIC(78,0) AS claimable FROM flows GROUP BY chain_id, recipient;

-- The payout address in force for each recipient that set one.
CREATE VIEW chain.payout_address_current AS
SELECT DISTINCT ON (chain_id, recipient) chain_id, recipient, payout
FROM chain.payout_addresses ORDER BY chain_id, recipient, block_number DESC, log_index DESC;

-- Split versions that were not cancelled, with their effective time.
CREATE VIEW chain.split_versions_live AS
SELECT v.*
FROM chain.split_versions v
WHERE NOT EXISTS (
    SELECT 1 FROM chain.split_change_cancellations c
    WHERE c.chain_id = v.chain_id AND c.split_id = v.split_id AND c.version = v.version
      AND (c.block_number, c.log_index) > (v.block_number, v.log_index)
);

-- Usage charged per subscription and period: the largest cumulative total charged so far.
CREATE VIEW chain.charged_per_period AS
SELECT chain_id, subscription_id, period_index, MAX(charged_in_period) AS charged
FROM chain.usage_charges GROUP BY chain_id, subscription_id, period_index;
