-- Postgres gives a task's model its own column and stores parameters as text (0009 there);
-- SQLite already stores parameters as text and keeps its expression indexes, so nothing
-- changes here. The file keeps both backends' migration numbers in step.
SELECT 1;
