-- Dataset runs: a task of a dataset job carries its cell key (SHA-256 of the canonical
-- encoding of its render parameters, hex), and a job holds each key once, so re-submitting
-- a dataset spec adds only the cells it does not have yet. Other jobs leave the key NULL and
-- are not indexed here at all, so the streaming insert of a plain sweep pays nothing for it.
ALTER TABLE tasks ADD COLUMN cell_key text;
CREATE UNIQUE INDEX tasks_cell_key_idx ON tasks (job_id, cell_key) WHERE cell_key IS NOT NULL;
