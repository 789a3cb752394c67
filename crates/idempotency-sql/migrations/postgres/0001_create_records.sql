-- idempotency-sql migration 0001 (Postgres): the records table and its expiry index.
-- One row per store key. `expires_at` is compared with the database's clock_timestamp() only.
CREATE TABLE IF NOT EXISTS "idempotency_records" (
    store_key       TEXT        NOT NULL PRIMARY KEY, -- derived from (prefix, scope, client key)
    state           TEXT        NOT NULL,             -- 'in_progress' or 'completed'
    token           BYTEA       NOT NULL,             -- the 16-byte lease (fencing) token
    fingerprint     BYTEA       NOT NULL,             -- 32 bytes identifying the request
    created_at_ms   BIGINT      NOT NULL,             -- informative (app clock, ms since epoch)
    completed_at_ms BIGINT,                           -- informative; completed rows only
    content_type    TEXT,                             -- the stored outcome's media type
    encoding        SMALLINT,                         -- 0 identity, 1 lz4 (size-prepended)
    body            BYTEA,                            -- the stored outcome; completed rows only
    expires_at      TIMESTAMPTZ NOT NULL              -- lease end (in progress) or retention end
);
CREATE INDEX IF NOT EXISTS "idempotency_records_expires_at" ON "idempotency_records" (expires_at);
