-- Webhook events are kept for a while after every delivery of theirs has ended (the scheduler
-- prunes older ones): an index to find them by age, and one on deliveries by event so that the
-- cascade of a deleted event, and the check for a pending delivery, do not scan the table.
CREATE INDEX webhook_events_by_age ON webhook_events (created_at);
CREATE INDEX webhook_deliveries_by_event ON webhook_deliveries (event_id);
