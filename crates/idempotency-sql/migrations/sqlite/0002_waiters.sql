-- idempotency-sql migration 0002 (SQLite): the waiters flag, kept for one schema on both
-- databases (the Postgres store sets it; the SQLite store's waiters poll and leave it unset).
ALTER TABLE "idempotency_records" ADD COLUMN waiters INTEGER NOT NULL DEFAULT 0;
