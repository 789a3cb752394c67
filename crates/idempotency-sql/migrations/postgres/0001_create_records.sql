-- idempotency-sql migration 0001 (Postgres): the records table and its expiry index.
-- One row per store key. `expires_at` is compared with the database's clock_timestamp() only.
-- `text` and `bytea` are written `pg_catalog.`, so that a type of that name in a schema earlier
-- in search_path cannot take their place; BIGINT, SMALLINT and TIMESTAMP WITH TIME ZONE are SQL
-- keywords, which Postgres always reads as its built-in types.
CREATE TABLE IF NOT EXISTS "idempotency_records" (
    store_key       pg_catalog.text  NOT NULL PRIMARY KEY, -- derived from (prefix, scope, client key)
    state           pg_catalog.text  NOT NULL,             -- 'in_progress' or 'completed'
    token           pg_catalog.bytea NOT NULL,             -- the 16-byte lease (fencing) token
    fingerprint     pg_catalog.bytea NOT NULL,             -- 32 bytes identifying the request
    created_at_ms   BIGINT           NOT NULL,             -- informative (app clock, ms since epoch)
    completed_at_ms BIGINT,                                -- informative; completed rows only
    content_type    pg_catalog.text,                       -- the stored outcome's media type
    encoding        SMALLINT,                              -- 0 identity, 1 lz4 (size-prepended)
    body            pg_catalog.bytea,                      -- the stored outcome; completed rows only
    expires_at      TIMESTAMP WITH TIME ZONE NOT NULL      -- lease end (in progress) or retention end
);
CREATE INDEX IF NOT EXISTS "idempotency_records_expires_at" ON "idempotency_records" (expires_at);
