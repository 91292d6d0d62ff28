-- Postgres stores each task's parameters as a delta against its job's base and drops the
-- task-to-job reference (0010 there); SQLite keeps full parameters and its reference, so
-- nothing changes here. The file keeps both backends' migration numbers in step.
SELECT 1;
