-- Jobs and their tasks: the durable queue. Times are milliseconds since the Unix epoch,
-- supplied by the coordinator (never now()) so tests and replicas share one clock source.

CREATE TABLE jobs (
    id            text    PRIMARY KEY,
    name          text    NOT NULL,
    sweep         text    NOT NULL,
    output_prefix text    NOT NULL,
    max_attempts  integer NOT NULL CHECK (max_attempts >= 1),
    priority      integer NOT NULL DEFAULT 0,
    cancelled     boolean NOT NULL DEFAULT false,
    created_at    bigint  NOT NULL,
    -- Set in the transaction that moves the job's last unfinished task to a final state.
    finished_at   bigint,
    CHECK (NOT cancelled OR finished_at IS NOT NULL)
);

-- list_jobs: newest first.
CREATE INDEX jobs_created_idx ON jobs (created_at DESC, id DESC);

CREATE TABLE tasks (
    id               bigint  GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    job_id           text    NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    image_index      bigint  NOT NULL CHECK (image_index >= 0),
    -- Copied from the job (which never changes it) so the claim can walk one index in
    -- priority order instead of joining and sorting every claimable row.
    priority         integer NOT NULL,
    params           jsonb   NOT NULL,
    state            text    NOT NULL DEFAULT 'available' CHECK (
        state IN ('available', 'running', 'retryable', 'completed', 'cancelled', 'discarded')
    ),
    attempt          integer NOT NULL DEFAULT 0 CHECK (attempt >= 0),
    max_attempts     integer NOT NULL CHECK (max_attempts >= 1),
    output_key       text    NOT NULL,
    lease_owner      text,
    lease_expires_at bigint,
    scheduled_at     bigint  NOT NULL,
    sha256           text,
    infotext         text,
    -- One reason per failed attempt, oldest first.
    errors           jsonb   NOT NULL DEFAULT '[]'::jsonb CHECK (jsonb_typeof(errors) = 'array'),
    finalized_at     bigint,
    render_ms        bigint,

    -- An image is rendered once per job: a re-submitted cell would duplicate output keys.
    UNIQUE (job_id, image_index),
    -- finalized_at is set exactly for final states, so "unfinished" has one definition.
    CHECK ((state IN ('completed', 'cancelled', 'discarded')) = (finalized_at IS NOT NULL)),
    -- Only a running task has a lease; a lease on any other state could be used to
    -- complete a task nobody is rendering.
    CHECK ((state = 'running') = (lease_owner IS NOT NULL AND lease_expires_at IS NOT NULL)),
    -- A completed task always says where its image is and what it contains.
    CHECK (state <> 'completed' OR (sha256 IS NOT NULL AND infotext IS NOT NULL))
);

-- The claim: WHERE state IN ('available', 'retryable') ORDER BY priority DESC, id.
CREATE INDEX tasks_claim_idx ON tasks (priority DESC, id)
    WHERE state IN ('available', 'retryable');

-- The rescuer: running tasks by lease expiry.
CREATE INDEX tasks_lease_idx ON tasks (lease_expires_at) WHERE state = 'running';

-- "Does this job still have unfinished tasks?", asked on every finalizing write.
CREATE INDEX tasks_unfinished_idx ON tasks (job_id) WHERE finalized_at IS NULL;
