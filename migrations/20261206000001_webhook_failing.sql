-- Webhook endpoints that keep failing: since when no attempt has succeeded (NULL while the last
-- attempt succeeded), and when the platform disabled it (410 Gone, or failing for days), so the
-- tenant's email names one disabling and the dashboard can list failing endpoints.
ALTER TABLE webhook_endpoints
    ADD COLUMN failing_since timestamptz,
    ADD COLUMN disabled_at   timestamptz;
