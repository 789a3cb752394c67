-- idempotency-sql migration 0001 (SQLite): the records table and its expiry index.
-- One row per store key. `expires_at` (ms since the Unix epoch) is compared with the database's
-- clock (julianday('now')) only.
CREATE TABLE IF NOT EXISTS "idempotency_records" (
    store_key       TEXT    NOT NULL PRIMARY KEY, -- derived from (prefix, scope, client key)
    state           TEXT    NOT NULL,             -- 'in_progress' or 'completed'
    token           BLOB    NOT NULL,             -- the 16-byte lease (fencing) token
    fingerprint     BLOB    NOT NULL,             -- 32 bytes identifying the request
    created_at_ms   INTEGER NOT NULL,             -- informative (app clock, ms since epoch)
    completed_at_ms INTEGER,                      -- informative; completed rows only
    content_type    TEXT,                         -- the stored outcome's media type
    encoding        INTEGER,                      -- 0 identity, 1 lz4 (size-prepended)
    body            BLOB,                         -- the stored outcome; completed rows only
    expires_at      INTEGER NOT NULL              -- lease or retention end, ms since the epoch
);
CREATE INDEX IF NOT EXISTS "idempotency_records_expires_at" ON "idempotency_records" (expires_at);
