-- Per-tenant job rates by queue (jobs started per second across every worker; issue #16):
-- the tenant's own, over the queue's default (`BACKROOM_TENANT_JOB_RATES`).
ALTER TABLE tenants
    ADD COLUMN queue_rates jsonb NOT NULL DEFAULT '{}'::jsonb;
