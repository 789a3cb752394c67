-- idempotency-sql migration 0002 (Postgres): the waiters flag.
-- Set by a duplicate that waits on an in-progress record (before it waits); `complete` and
-- `release` send a NOTIFY only for a row that has it, so completions nobody waits for never
-- notify (a notifying commit takes a cluster-wide lock). A new claim starts with it unset.
ALTER TABLE "idempotency_records" ADD COLUMN IF NOT EXISTS waiters BOOLEAN NOT NULL DEFAULT false;
