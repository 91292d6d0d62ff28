-- Dataset runs: one task per (job, cell key). Mirrors migrations/postgres/0004_dataset_cells.sql.
ALTER TABLE tasks ADD COLUMN cell_key text;
CREATE UNIQUE INDEX tasks_cell_key_idx ON tasks (job_id, cell_key) WHERE cell_key IS NOT NULL;
