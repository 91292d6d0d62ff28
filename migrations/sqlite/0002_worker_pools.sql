-- Worker pools: every task belongs to one pool (a GPU class), and a worker claims only its
-- own pool's tasks. Mirrors migrations/postgres/0002_worker_pools.sql.
ALTER TABLE tasks ADD COLUMN pool TEXT NOT NULL DEFAULT 'default';

-- The claim filters by pool first; this index replaces the pool-blind one.
CREATE INDEX tasks_pool_claim_idx ON tasks (pool, priority DESC, id)
    WHERE state IN ('available', 'retryable');
DROP INDEX tasks_claim_idx;
