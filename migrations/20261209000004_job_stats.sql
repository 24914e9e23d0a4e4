-- Finished jobs counted per minute (kept 2 days) and per hour (kept with the history), per queue
-- and tenant, with histograms of enqueue-to-start and run time (`src/history/stats.rs`). The
-- copier adds each batch's newly stored jobs in the same transaction as the rows, so the counts
-- are exact; histograms add up, so an hour is exactly the sum of its minutes.
CREATE TABLE job_stats (
    -- 'minute' or 'hour'.
    grain text NOT NULL CHECK (grain IN ('minute', 'hour')),
    at timestamptz NOT NULL,
    -- '*': every queue.
    queue text NOT NULL,
    -- The nil uuid for jobs without a tenant; the max uuid (ffffffff-…): every tenant. Each job
    -- counts in its queue and tenant, and in the '*' and every-tenant totals, so that a chart
    -- reads one row per slot.
    tenant_id uuid NOT NULL,
    succeeded bigint NOT NULL DEFAULT 0,
    failed bigint NOT NULL DEFAULT 0,
    dead bigint NOT NULL DEFAULT 0,
    cancelled bigint NOT NULL DEFAULT 0,
    -- Jobs per bucket of `history::stats::BOUNDS_MS` (the last bucket: above the last bound).
    wait_buckets bigint[] NOT NULL,
    run_buckets bigint[] NOT NULL,
    -- A chart reads one queue and tenant over a range of slots.
    PRIMARY KEY (grain, queue, tenant_id, at)
);

CREATE FUNCTION bigint_array_add(a bigint[], b bigint[]) RETURNS bigint[]
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT array_agg(coalesce(x, 0) + coalesce(y, 0) ORDER BY i)
    FROM unnest(a, b) WITH ORDINALITY AS t(x, y, i)
$$;

