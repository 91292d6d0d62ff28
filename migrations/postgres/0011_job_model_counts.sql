-- Queue counts without a scan of the backlog.
--
-- `queue_counts` runs every couple of seconds on every replica; counting unfinished tasks
-- row by row took a third of a second with a million waiting. Each job now keeps, per pool
-- and model, how many of its tasks are unfinished. The store adds a job's tasks as it
-- inserts them; a trigger follows every change of a task between unfinished and finalized
-- (completion, discard, cancel, retry). Those writes all hold the job's row lock (the
-- backend's lock order), so the counter rows add no contention of their own, and claims,
-- heartbeats and releases, which finalize nothing, change no counter.
CREATE TABLE job_model_counts (
    job_id     text   NOT NULL,
    pool       text   NOT NULL,
    model      text   NOT NULL,
    unfinished bigint NOT NULL,
    PRIMARY KEY (job_id, pool, model)
);

INSERT INTO job_model_counts (job_id, pool, model, unfinished)
    SELECT job_id, pool, model, count(*) FILTER (WHERE finalized_at IS NULL)
    FROM tasks GROUP BY job_id, pool, model;

CREATE FUNCTION tasks_count_finalized() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO job_model_counts AS c (job_id, pool, model, unfinished)
        SELECT n.job_id, n.pool, n.model,
               sum(CASE WHEN n.finalized_at IS NULL THEN 1 ELSE -1 END)
        FROM new_rows n JOIN old_rows o ON o.id = n.id
        WHERE (n.finalized_at IS NULL) <> (o.finalized_at IS NULL)
        GROUP BY n.job_id, n.pool, n.model
    ON CONFLICT (job_id, pool, model)
        DO UPDATE SET unfinished = c.unfinished + excluded.unfinished;
    RETURN NULL;
END
$$;

CREATE TRIGGER tasks_count_finalized AFTER UPDATE ON tasks
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION tasks_count_finalized();

-- The rest of the counts come from small sets: running tasks (`tasks_lease_idx`), retryable
-- ones (here; a fresh submit writes no entry), and the unfinished jobs.
CREATE INDEX tasks_retryable_idx ON tasks (pool, model) WHERE state = 'retryable';
CREATE INDEX jobs_unfinished_idx ON jobs (id) WHERE finished_at IS NULL;
