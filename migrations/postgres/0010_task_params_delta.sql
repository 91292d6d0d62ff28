-- Submit speed, continued from 0009.
--
-- A job keeps its base render parameters (the first task's, compact JSON), and each of its
-- tasks stores only the fields that differ from them: in a sweep that is the swept values,
-- a few dozen bytes instead of the whole prompt and settings. Readers lay the task's fields
-- over the base (`base_params::jsonb || params::jsonb`). Jobs without a base (every job
-- created before this migration, and jobs submitted in one statement) keep full parameters
-- in each task, which read as they always did.
ALTER TABLE jobs ADD COLUMN base_params text;

-- The reference from a task to its job checked every inserted row against `jobs` (a key
-- lookup and a row lock per task, about a quarter of a bulk insert's time). Tasks are only
-- ever inserted in the transaction that inserts their job or under that job's row lock, and
-- jobs are never deleted, so the check guarded nothing the store does not already ensure.
ALTER TABLE tasks DROP CONSTRAINT IF EXISTS tasks_job_id_fkey;
