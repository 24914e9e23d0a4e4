-- Every API process caches "API key -> tenant" and "this tenant has this SKU" (src/api/lookups.rs).
-- These statement triggers tell all of them, through NOTIFY, when a cached answer may be wrong:
-- a key revoked or deleted, a tenant changed (deactivated), a product deleted or re-keyed.
-- NOTIFY is delivered at commit, so a rolled-back change notifies nobody.
CREATE FUNCTION notify_lookups() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('backroom_lookups', TG_TABLE_NAME);
    RETURN NULL;
END
$$;

CREATE TRIGGER api_keys_notify_lookups AFTER UPDATE OR DELETE OR TRUNCATE ON api_keys
    FOR EACH STATEMENT EXECUTE FUNCTION notify_lookups();
CREATE TRIGGER tenants_notify_lookups AFTER UPDATE OR DELETE OR TRUNCATE ON tenants
    FOR EACH STATEMENT EXECUTE FUNCTION notify_lookups();
CREATE TRIGGER products_notify_lookups AFTER UPDATE OF sku, tenant_id OR DELETE OR TRUNCATE ON products
    FOR EACH STATEMENT EXECUTE FUNCTION notify_lookups();
