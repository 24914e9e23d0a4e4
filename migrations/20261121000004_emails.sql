-- The email log: one row per logical email, written before it is sent and updated with the
-- outcome, so a job delivered twice finds the email sent and does not send it again.
CREATE TABLE emails (
    id              uuid PRIMARY KEY,
    tenant_id       uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    kind            text NOT NULL,
    -- Unique per tenant: the API's key, or one derived from what caused the email.
    idempotency_key text NOT NULL,
    recipient       text NOT NULL,
    subject         text NOT NULL,
    text_body       text,
    html_body       text,
    status          text NOT NULL DEFAULT 'queued' CHECK (status IN ('queued', 'sent', 'failed')),
    attempts        integer NOT NULL DEFAULT 0,
    smtp_reply      text,
    last_error      text,
    message_id      text NOT NULL,
    job_id          text,
    -- Set while one delivery of the job is talking to SMTP, so a concurrent duplicate waits.
    sending_until   timestamptz,
    created_at      timestamptz NOT NULL DEFAULT now(),
    sent_at         timestamptz,
    CONSTRAINT emails_idempotency_key UNIQUE (tenant_id, idempotency_key)
);

CREATE INDEX emails_by_tenant ON emails (tenant_id, created_at DESC);
