-- Named admin users with roles, and the audit log of every change made by an admin.

CREATE TABLE admin_users (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    email text NOT NULL CHECK (email = lower(email) AND length(email) BETWEEN 3 AND 254),
    role text NOT NULL CHECK (role IN ('viewer', 'operator', 'owner')),
    -- argon2id, PHC string format.
    password_hash text NOT NULL,
    -- Raised by every password reset, role change and disabling: a dashboard session remembers
    -- the version it was made with and ends when it no longer matches.
    credential_version integer NOT NULL DEFAULT 1,
    disabled_at timestamptz,
    last_sign_in_at timestamptz,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT admin_users_email_key UNIQUE (email)
);

-- One row per change. Append-only for the application: no code path updates or deletes a row,
-- and the trigger below refuses it for everyone but a superuser's explicit maintenance (who
-- would first drop the trigger).
CREATE TABLE admin_audit (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at timestamptz NOT NULL DEFAULT now(),
    -- `user:<email>`, `token` (the bootstrap admin token) or `cli:<os user>`.
    actor text NOT NULL,
    actor_user_id uuid REFERENCES admin_users (id),
    action text NOT NULL,
    target text NOT NULL,
    tenant_id uuid,
    before jsonb,
    after jsonb,
    request_id text,
    client_address inet
);

CREATE INDEX admin_audit_at ON admin_audit (at DESC, id DESC);
CREATE INDEX admin_audit_actor ON admin_audit (actor, id DESC);
CREATE INDEX admin_audit_action ON admin_audit (action, id DESC);
CREATE INDEX admin_audit_tenant ON admin_audit (tenant_id, id DESC) WHERE tenant_id IS NOT NULL;

CREATE FUNCTION admin_audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'admin_audit is append-only';
END;
$$;

CREATE TRIGGER admin_audit_append_only
    BEFORE UPDATE OR DELETE ON admin_audit
    FOR EACH STATEMENT EXECUTE FUNCTION admin_audit_append_only();

CREATE TRIGGER admin_audit_no_truncate
    BEFORE TRUNCATE ON admin_audit
    FOR EACH STATEMENT EXECUTE FUNCTION admin_audit_append_only();
