-- Checkpoint affinity: the index behind the claim of a model's tasks. Mirrors
-- migrations/postgres/0003_model_affinity.sql.
CREATE INDEX tasks_affinity_idx ON tasks (pool, json_extract(params, '$.model'), priority, id)
    WHERE state IN ('available', 'retryable');
