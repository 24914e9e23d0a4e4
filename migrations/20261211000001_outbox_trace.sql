-- The W3C traceparent of the span that wrote the row (traces on): the relay continues that trace,
-- so a job enqueued through the outbox belongs to the request that caused it.
ALTER TABLE outbox ADD COLUMN trace text;
