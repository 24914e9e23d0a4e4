-- Quotas on expensive work (issue: no tenant can hurt another).
-- A loaded (or failed) import keeps its report but not its file: the CSV is dropped once it has
-- been read, so uploads do not pile up in the database forever.
ALTER TABLE sales_imports ALTER COLUMN body DROP NOT NULL;
-- Finding a tenant's queued imports and active forecast runs (the quotas' checks) by index.
CREATE INDEX sales_imports_queued ON sales_imports (tenant_id) WHERE status = 'queued';
CREATE INDEX forecast_runs_active ON forecast_runs (tenant_id) WHERE status IN ('queued', 'running');

-- Each tenant's own concurrency limit per queue ({"invoices": 2}; a queue not named uses the
-- queue's default) and the queues it is paused on. The queue engine in Redis enforces both;
-- this is the record that workers copy into Redis at start, so they survive a Redis that lost
-- its data.
ALTER TABLE tenants
    ADD COLUMN queue_limits jsonb NOT NULL DEFAULT '{}'::jsonb,
    ADD COLUMN paused_queues text[] NOT NULL DEFAULT '{}';
