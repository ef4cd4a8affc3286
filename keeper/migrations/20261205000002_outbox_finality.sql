-- Issue #16 item 10: an action is confirmed (or failed) only once the block holding its transaction is final (the
-- node's `finalized` block, or `--confirmations N`). Until then it stays `sent`, and `block_number` holds the block
-- its receipt was last seen in (cleared when a reorg drops the transaction, which is then broadcast again).
COMMENT ON COLUMN keeper.outbox.block_number IS
    'block of the receipt: while sent, the block it was last seen mined in (NULL if not mined or dropped by a reorg); once confirmed or failed, its final block';

-- The chain time (the latest block's timestamp) of the step that planned the action. A failed settlement is tried
-- again under a new key (`settle:<epoch>:<attempt>`) once `--retry-interval` of chain time has passed since its
-- last attempt was planned, a bounded number of times. NULL for rows planned before this column existed.
ALTER TABLE keeper.outbox ADD COLUMN chain_time BIGINT;

-- Every attempt at settling an epoch, by epoch: the planner and `reconcile` read them through this view.
CREATE VIEW keeper.settle_attempts AS
SELECT split_part(o.action_key, ':', 2)::BIGINT AS epoch_id, o.action_key, o.state, o.block_number, o.chain_time,
       o.planned_at, o.failure
FROM keeper.outbox o
WHERE o.kind = 'settle';
