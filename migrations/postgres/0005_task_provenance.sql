-- Provenance of each rendered image, for the job's manifest: which worker's completion was
-- recorded (the lease owner at that moment; lease_owner itself is cleared on completion) and
-- when the attempt that produced it was leased. Both are rewritten by every later claim and
-- completion, so a task retried after a lost lease reports its last, recorded attempt.
ALTER TABLE tasks ADD COLUMN completed_by text;
ALTER TABLE tasks ADD COLUMN leased_at bigint;
