-- Fairness between owners, and pausing a job.
--
-- Every job has an owner (the authenticated caller, or the name the CLI sends). Among
-- claimable tasks of the highest priority, leases go round robin across owners, so one huge
-- sweep does not starve a small one submitted after it. The owner is copied onto the tasks
-- (the job never changes it), as the priority is, so a claim walks one index per owner.
ALTER TABLE jobs ADD COLUMN owner text NOT NULL DEFAULT 'anonymous';
ALTER TABLE tasks ADD COLUMN owner text NOT NULL DEFAULT 'anonymous';

-- A paused job's waiting tasks are not leased; its running tasks finish. The flag is copied
-- onto the job's unfinished tasks so the claim indexes can leave them out altogether: a
-- paused sweep of a million images costs a claim nothing.
ALTER TABLE jobs ADD COLUMN paused boolean NOT NULL DEFAULT false;
ALTER TABLE tasks ADD COLUMN paused boolean NOT NULL DEFAULT false;

-- Whose turn it is, per pool: the owner with the smallest `turn` that has claimable work is
-- served next, and a lease moves it to the back. One row per (pool, owner) that ever
-- submitted there; a newcomer starts at 0, ahead of everyone who was already served.
CREATE TABLE owner_turns (
    pool  text   NOT NULL,
    owner text   NOT NULL,
    turn  bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (pool, owner)
);
CREATE SEQUENCE owner_turn_seq;

INSERT INTO owner_turns (pool, owner)
    SELECT DISTINCT pool, owner FROM tasks WHERE finalized_at IS NULL
    ON CONFLICT DO NOTHING;

-- The fair claim: one owner's claimable tasks in priority order, and the same per model for
-- the affinity claim.
CREATE INDEX tasks_owner_claim_idx ON tasks (pool, owner, priority DESC, id)
    WHERE state IN ('available', 'retryable') AND NOT paused;
CREATE INDEX tasks_owner_affinity_idx ON tasks (pool, owner, (params->>'model'), priority DESC, id)
    WHERE state IN ('available', 'retryable') AND NOT paused;
