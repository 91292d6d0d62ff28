-- Jobs and their tasks: the durable queue. Mirrors migrations/postgres; times are
-- milliseconds since the Unix epoch supplied by the coordinator.

CREATE TABLE jobs (
    id            TEXT    NOT NULL PRIMARY KEY,
    name          TEXT    NOT NULL,
    sweep         TEXT    NOT NULL,
    output_prefix TEXT    NOT NULL,
    max_attempts  INTEGER NOT NULL CHECK (max_attempts >= 1),
    priority      INTEGER NOT NULL DEFAULT 0,
    cancelled     INTEGER NOT NULL DEFAULT 0 CHECK (cancelled IN (0, 1)),
    created_at    INTEGER NOT NULL,
    -- Set in the transaction that moves the job's last unfinished task to a final state.
    finished_at   INTEGER,
    CHECK (NOT cancelled OR finished_at IS NOT NULL)
) STRICT;

-- list_jobs: newest first.
CREATE INDEX jobs_created_idx ON jobs (created_at DESC, id DESC);

CREATE TABLE tasks (
    -- AUTOINCREMENT: ids are never reused, so a stale worker's task id can never name a
    -- different task.
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id           TEXT    NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    image_index      INTEGER NOT NULL CHECK (image_index >= 0),
    -- Copied from the job (which never changes it) so the claim walks one index in order.
    priority         INTEGER NOT NULL,
    params           TEXT    NOT NULL CHECK (json_valid(params)),
    state            TEXT    NOT NULL DEFAULT 'available' CHECK (
        state IN ('available', 'running', 'retryable', 'completed', 'cancelled', 'discarded')
    ),
    attempt          INTEGER NOT NULL DEFAULT 0 CHECK (attempt >= 0),
    max_attempts     INTEGER NOT NULL CHECK (max_attempts >= 1),
    output_key       TEXT    NOT NULL,
    lease_owner      TEXT,
    lease_expires_at INTEGER,
    scheduled_at     INTEGER NOT NULL,
    sha256           TEXT,
    infotext         TEXT,
    -- One reason per failed attempt, oldest first.
    errors           TEXT    NOT NULL DEFAULT '[]' CHECK (json_type(errors) = 'array'),
    finalized_at     INTEGER,
    render_ms        INTEGER,

    -- An image is rendered once per job: a re-submitted cell would duplicate output keys.
    UNIQUE (job_id, image_index),
    -- finalized_at is set exactly for final states, so "unfinished" has one definition.
    CHECK ((state IN ('completed', 'cancelled', 'discarded')) = (finalized_at IS NOT NULL)),
    -- Only a running task has a lease.
    CHECK ((state = 'running') = (lease_owner IS NOT NULL AND lease_expires_at IS NOT NULL)),
    -- A completed task always says what its image contains.
    CHECK (state <> 'completed' OR (sha256 IS NOT NULL AND infotext IS NOT NULL))
) STRICT;

-- The claim: WHERE state IN ('available', 'retryable') ORDER BY priority DESC, id.
CREATE INDEX tasks_claim_idx ON tasks (priority DESC, id)
    WHERE state IN ('available', 'retryable');

-- The rescuer: running tasks by lease expiry.
CREATE INDEX tasks_lease_idx ON tasks (lease_expires_at) WHERE state = 'running';

-- "Does this job still have unfinished tasks?", asked on every finalizing write.
CREATE INDEX tasks_unfinished_idx ON tasks (job_id) WHERE finalized_at IS NULL;
