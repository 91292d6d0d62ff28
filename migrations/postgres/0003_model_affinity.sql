-- Checkpoint affinity: a worker that holds a model in memory first claims that model's tasks
-- of the highest waiting priority. This index makes that claim a range scan per model
-- instead of a walk over every claimable task.
CREATE INDEX tasks_affinity_idx ON tasks (pool, (params->>'model'), priority, id)
    WHERE state IN ('available', 'retryable');
