-- Upload parts are compressed with lz4 rather than the default pglz: a 1 MiB part took Postgres
-- 25-37 ms of CPU to compress (measured with pg_stat_statements in the noisy-neighbour bench, where
-- one tenant's uploads took a third of a core of the Postgres that every tenant shares); lz4 does
-- the same work many times faster. Existing parts keep their compression until rewritten.
ALTER TABLE sales_import_parts ALTER COLUMN data SET COMPRESSION lz4;
