-- Finished jobs counted per minute (kept 2 days) and per hour (kept with the history), per queue
-- and tenant, with histograms of enqueue-to-start and run time (`src/history/stats.rs`). The
-- copier adds each batch's newly stored jobs in the same transaction as the rows, so the counts
-- are exact; histograms add up, so an hour is exactly the sum of its minutes.
CREATE TABLE job_stats (
    -- 'minute' or 'hour'.
    grain text NOT NULL CHECK (grain IN ('minute', 'hour')),
    at timestamptz NOT NULL,
    queue text NOT NULL,
    -- The nil uuid for jobs without a tenant.
    tenant_id uuid NOT NULL,
    succeeded bigint NOT NULL DEFAULT 0,
    failed bigint NOT NULL DEFAULT 0,
    dead bigint NOT NULL DEFAULT 0,
    cancelled bigint NOT NULL DEFAULT 0,
    -- Jobs per bucket of `history::stats::BOUNDS_MS` (the last bucket: above the last bound).
    wait_buckets bigint[] NOT NULL,
    run_buckets bigint[] NOT NULL,
    PRIMARY KEY (grain, at, queue, tenant_id)
);

CREATE FUNCTION bigint_array_add(a bigint[], b bigint[]) RETURNS bigint[]
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT array_agg(coalesce(x, 0) + coalesce(y, 0) ORDER BY i)
    FROM unnest(a, b) WITH ORDINALITY AS t(x, y, i)
$$;

-- Sums histograms across rows (a NULL start adds as zeros).
CREATE AGGREGATE bigint_array_sum(bigint[]) (SFUNC = bigint_array_add, STYPE = bigint[]);
