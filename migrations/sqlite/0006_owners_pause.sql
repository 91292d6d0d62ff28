-- Fairness between owners, and pausing a job. Mirrors migrations/postgres/0006_owners_pause.sql.
ALTER TABLE jobs ADD COLUMN owner TEXT NOT NULL DEFAULT 'anonymous';
ALTER TABLE tasks ADD COLUMN owner TEXT NOT NULL DEFAULT 'anonymous';

-- A paused job's waiting tasks are not leased; the flag on the tasks keeps them out of the
-- claim indexes.
ALTER TABLE jobs ADD COLUMN paused INTEGER NOT NULL DEFAULT 0 CHECK (paused IN (0, 1));
ALTER TABLE tasks ADD COLUMN paused INTEGER NOT NULL DEFAULT 0 CHECK (paused IN (0, 1));

-- Whose turn it is, per pool: the owner with the smallest `turn` that has claimable work is
-- served next, and a lease moves it to the back (turn = the pool's largest + 1).
CREATE TABLE owner_turns (
    pool  TEXT    NOT NULL,
    owner TEXT    NOT NULL,
    turn  INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (pool, owner)
) STRICT;

INSERT OR IGNORE INTO owner_turns (pool, owner)
    SELECT DISTINCT pool, owner FROM tasks WHERE finalized_at IS NULL;

CREATE INDEX tasks_owner_claim_idx ON tasks (pool, owner, priority DESC, id)
    WHERE state IN ('available', 'retryable') AND paused = 0;
CREATE INDEX tasks_owner_affinity_idx
    ON tasks (pool, owner, json_extract(params, '$.model'), priority DESC, id)
    WHERE state IN ('available', 'retryable') AND paused = 0;
