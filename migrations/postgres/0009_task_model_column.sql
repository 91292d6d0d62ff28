-- Submit speed. A task's model gets its own column, so the affinity index keys on a plain
-- text value instead of extracting it from the parameters of every inserted row, and the
-- parameters are stored as the JSON text the coordinator writes (they are only ever read
-- back whole): a million-task submit no longer parses a million jsonb documents.
ALTER TABLE tasks ADD COLUMN model text NOT NULL DEFAULT '';
UPDATE tasks SET model = params->>'model' WHERE params ? 'model';
ALTER TABLE tasks ALTER COLUMN model DROP DEFAULT;

-- Every claim now walks the per-owner indexes of 0006; the pool-wide claim and affinity
-- indexes they replaced only cost each inserted task two more index entries.
DROP INDEX tasks_affinity_idx;
DROP INDEX tasks_pool_claim_idx;

DROP INDEX tasks_owner_affinity_idx;
ALTER TABLE tasks ALTER COLUMN params TYPE text USING params::text;
CREATE INDEX tasks_owner_affinity_idx ON tasks (pool, owner, model, priority DESC, id)
    WHERE state IN ('available', 'retryable') AND NOT paused;

