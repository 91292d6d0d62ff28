-- Postgres keeps per-job unfinished counts for its queue counts (0011 there); SQLite still
-- counts its (single-process, small) queue directly. The file keeps both backends'
-- migration numbers in step.
SELECT 1;
