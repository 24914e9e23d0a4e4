-- Indexes for searching the job history (`src/history/search.rs`): the payload by containment
-- (`args.<path>:<value>`) and the last error by trigrams (`error:<text>`).
CREATE EXTENSION IF NOT EXISTS pg_trgm;
CREATE INDEX job_history_payload ON job_history USING gin (payload jsonb_path_ops);
CREATE INDEX job_history_error ON job_history USING gin (last_error gin_trgm_ops);
