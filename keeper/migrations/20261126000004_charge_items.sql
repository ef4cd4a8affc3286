-- One row per item of every usage-charge action in the outbox (a close's charge or a threshold charge): what the
-- planners, epochs and reconciliation ask of the outbox, read in one place instead of parsing `items` in each.
CREATE VIEW keeper.charge_items AS
SELECT o.action_key, o.state, o.block_number, o.planned_at,
       (item ->> 'id')::BIGINT            AS subscription_id,
       (item ->> 'period')::BIGINT        AS period_index,
       (item ->> 'cumulative')::NUMERIC   AS cumulative
FROM keeper.outbox o, jsonb_array_elements(o.items) AS item
WHERE o.kind = 'charge';
