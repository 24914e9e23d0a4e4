-- An admin user may be limited to some tenants (support staff for some customers): then every
-- page, list, count, search and chart they open shows only those tenants. NULL: every tenant.
-- An owner manages every tenant, so an owner is never limited.
ALTER TABLE admin_users
    ADD COLUMN tenant_ids uuid[],
    ADD CONSTRAINT admin_users_tenant_ids_check CHECK (
        tenant_ids IS NULL
        OR (role <> 'owner' AND cardinality(tenant_ids) BETWEEN 1 AND 1000)
    );
