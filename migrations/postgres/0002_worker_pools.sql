-- Worker pools: every task belongs to one pool (a GPU class), and a worker claims only its
-- own pool's tasks. Sweeps that name no pool get the coordinator's default pool, so existing
-- rows and old clients land in 'default'.
ALTER TABLE tasks ADD COLUMN pool text NOT NULL DEFAULT 'default';

-- The claim now filters by pool first; one index per (pool, priority, age) walk replaces the
-- pool-blind one. It also serves the per-pool queue counts of the scaling signal.
CREATE INDEX tasks_pool_claim_idx ON tasks (pool, priority DESC, id)
    WHERE state IN ('available', 'retryable');
DROP INDEX tasks_claim_idx;
