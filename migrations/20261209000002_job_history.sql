-- Every finished job (succeeded, failed, dead, cancelled), copied from Redis by the history
-- copier (`src/history/mod.rs`), so that it outlives Redis's retention. Partitioned by
-- `finished_at` (a week per partition): the copier creates each partition as it needs it, and
-- retention drops whole partitions (`BACKROOM_JOB_HISTORY_DAYS`).

CREATE TABLE job_history (
    id text NOT NULL,
    queue text NOT NULL,
    kind text NOT NULL,
    tenant_id uuid,
    status text NOT NULL,
    attempts integer NOT NULL,
    max_attempts integer NOT NULL,
    payload jsonb NOT NULL,
    result jsonb,
    last_error text,
    errors jsonb NOT NULL,
    idempotency_key text,
    group_id uuid,
    created_at timestamptz NOT NULL,
    started_at timestamptz,
    finished_at timestamptz NOT NULL,
    -- A job an admin retried after it ended has one row per ending.
    PRIMARY KEY (finished_at, id)
) PARTITION BY RANGE (finished_at);

CREATE INDEX job_history_tenant ON job_history (tenant_id, finished_at DESC);
CREATE INDEX job_history_id ON job_history (id);
