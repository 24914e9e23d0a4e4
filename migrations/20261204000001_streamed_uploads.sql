-- Sales uploads are written to the database as they arrive, in parts of at most 1 MiB, so an
-- API process holds one part of an upload in memory rather than the whole file. An upload being
-- received has status 'receiving' and counts against the tenant's queued-imports quota.
CREATE TABLE sales_import_parts (
    import_id uuid NOT NULL REFERENCES sales_imports (id) ON DELETE CASCADE,
    part      integer NOT NULL,
    data      bytea NOT NULL,
    PRIMARY KEY (import_id, part)
);

ALTER TABLE sales_imports DROP CONSTRAINT sales_imports_status_check;
ALTER TABLE sales_imports ADD CONSTRAINT sales_imports_status_check
    CHECK (status IN ('receiving', 'queued', 'loaded', 'failed'));

DROP INDEX sales_imports_queued;
CREATE INDEX sales_imports_queued ON sales_imports (tenant_id) WHERE status IN ('receiving', 'queued');
