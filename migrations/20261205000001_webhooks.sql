-- Webhooks (issue: tell tenants' systems when their work is done): each tenant's endpoints, the
-- events that happened to it, and one delivery per (event, endpoint). An event and its deliveries
-- are written in the transaction of the change that caused them, together with the outbox rows
-- of their delivery jobs: a committed change never misses its event, a rolled-back one sends none.
CREATE TABLE webhook_endpoints (
    id                    uuid PRIMARY KEY,
    tenant_id             uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    url                   text NOT NULL,
    description           text NOT NULL DEFAULT '',
    -- The event types it wants; empty means every type.
    event_types           text[] NOT NULL DEFAULT '{}',
    enabled               boolean NOT NULL DEFAULT true,
    -- Why it was disabled by the platform (410 Gone), or NULL.
    disabled_reason       text,
    -- "whsec_" + base64 of the key. The previous secret signs alongside until its time is up.
    secret                text NOT NULL,
    previous_secret       text,
    previous_secret_until timestamptz,
    created_at            timestamptz NOT NULL DEFAULT now(),
    updated_at            timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX webhook_endpoints_by_tenant ON webhook_endpoints (tenant_id) WHERE enabled;

CREATE TABLE webhook_events (
    -- "msg_" + a UUID: the `webhook-id` every delivery of it carries.
    id         text PRIMARY KEY,
    tenant_id  uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    type       text NOT NULL,
    -- The whole body as sent: {"type", "id", "created_at", "data"}.
    body       jsonb NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE webhook_deliveries (
    id               uuid PRIMARY KEY,
    tenant_id        uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    endpoint_id      uuid NOT NULL REFERENCES webhook_endpoints (id) ON DELETE CASCADE,
    event_id         text NOT NULL REFERENCES webhook_events (id) ON DELETE CASCADE,
    event_type       text NOT NULL,
    status           text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'delivered', 'failed')),
    attempts         integer NOT NULL DEFAULT 0,
    -- The last attempt: the receiver's status (NULL when none came), the error, how long it took,
    -- and the start of the response body.
    response_status  integer,
    last_error       text,
    latency_ms       integer,
    response_excerpt text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    last_attempt_at  timestamptz,
    delivered_at     timestamptz
);
CREATE INDEX webhook_deliveries_by_tenant ON webhook_deliveries (tenant_id, created_at DESC, id DESC);
CREATE INDEX webhook_deliveries_by_endpoint ON webhook_deliveries (endpoint_id, created_at DESC);
