-- Provenance of each rendered image, for the job's manifest (see migrations/postgres): the
-- worker whose completion was recorded and when the attempt that produced it was leased.
ALTER TABLE tasks ADD COLUMN completed_by TEXT;
ALTER TABLE tasks ADD COLUMN leased_at INTEGER;
