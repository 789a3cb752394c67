//! # idempotency-sql
//!
//! The idempotency store for services that already keep their data in **Postgres** or
//! **SQLite** (through `sqlx`): the records live in one table of the application's own database,
//! on the application's own pool, and a claim can be **completed inside the application's
//! transaction**, so the side effect and the completed record commit together or not at all.
//!
//! That closes the one window no cache store can close: with Redis, a process that dies after
//! its database write committed and before `complete` reached Redis leaves a claim that lapses,
//! and the retry runs the write again. Here the completed record is part of the same commit
//! (Stripe's and Brandur Leach's "atomic phases"); and a stale owner (its lease lapsed and
//! another attempt took the key over) fails inside its transaction, so its side effect rolls
//! back with it.
//!
//! ```no_run
//! # #[cfg(feature = "postgres")]
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use idempotency_core::{Begin, Fingerprint, Idempotency, IdempotencyKey, Scope, StoredOutcome};
//! use idempotency_sql::PostgresStore;
//!
//! let pool = sqlx::PgPool::connect("postgres://app@localhost/shop").await?;
//! // Creates or upgrades the table (safe at every start); `build()` only checks it.
//! let store = PostgresStore::builder(pool.clone()).migrate().await?;
//! let engine = Idempotency::builder(store).build()?;
//!
//! let (scope, key) = (Scope::new("customer-42"), IdempotencyKey::new("order-7f3a")?);
//! let fingerprint = Fingerprint::of(r#"{"sku":"tea","qty":2}"#);
//! match engine.begin(&scope, &key, fingerprint).await? {
//!     Begin::Replay(outcome) => println!("retry: {:?}", outcome.body), // answered before
//!     Begin::Run(guard) => {
//!         let mut tx = pool.begin().await?;
//!         sqlx::query("INSERT INTO orders (sku, qty) VALUES ('tea', 2)")
//!             .execute(&mut *tx)
//!             .await?;
//!         let receipt = StoredOutcome::new(r#"{"order":1}"#, Some("application/json".into()));
//!         // The fenced UPDATE runs in `tx`. On `Err` (e.g. LeaseLost) `tx` is dropped, which
//!         // rolls the order back too; the claim is then released in the background.
//!         let pending = engine.store().complete_in(&mut tx, guard, receipt).await?;
//!         tx.commit().await?;
//!         pending.committed(); // (dropping it instead costs one harmless release round trip)
//!     }
//! }
//! # Ok(()) }
//! ```
//!
//! # Layout
//! - [`PostgresStore`] / [`SqliteStore`] (features `postgres` / `sqlite`): the
//!   [`IdempotencyStore`](idempotency_core::IdempotencyStore) primitives, `migrate()`,
//!   `purge_expired(batch)` and `complete_in(&mut conn, guard, outcome)`; Postgres also wakes
//!   waiting duplicates (`LISTEN`/`NOTIFY`, module `pg_notify`);
//! - [`PurgeExpired`] and [`PurgeTask`]: bounded-batch cleanup of expired rows, in the
//!   background if wanted;
//! - [`SqlStoreError`]: construction and migration errors (missing table, wrong shape: each
//!   names the migration to run);
//! - [`TransactionConflict`]: why `complete_in` could not complete a live claim in the caller's
//!   transaction (isolation level, serialization failure, SQLite snapshot), and what to change;
//! - [`idempotency_core`] and [`sqlx`]: re-exported so versions match (every backend crate
//!   re-exports core and its client crate the same way).
//!
//! # Transactional completion
//! [`Guard::prepare`](idempotency_core::Guard::prepare) (core, backend-neutral) applies the
//! engine's policy (size limit, compression) and returns a
//! [`PendingCompletion`](idempotency_core::PendingCompletion); `complete_in` is `prepare` plus
//! the fenced UPDATE on the caller's connection (`&mut *tx`). Settle it when the transaction's
//! fate is known:
//!
//! | outcome | what to do | effect |
//! |---|---|---|
//! | `complete_in` → `Ok`, commit succeeded | `pending.committed()` | done: replays return the outcome |
//! | `complete_in` → `Err(LeaseLost)` | roll back | the stale side effect is undone; the new owner's claim is untouched |
//! | `complete_in` → `Err(TransactionConflict)` | roll back, fix the transaction (below) | the claim is released: a retry runs at once |
//! | any `Err`, or the commit fails | roll back | the pending completion (dropped) releases the claim in the background: a retry runs |
//! | rolled back for another reason | `pending.release().await` (or drop it) | the claim is released: a retry runs |
//!
//! On Postgres, a `complete_in` whose UPDATE did not apply (`LeaseLost`, a stale snapshot)
//! fails inside the transaction (the completion statement itself raises an error when it
//! matched nothing), so a handler that ignores the error and commits gets a rollback, never a
//! side effect committed without its record — also when the statement ends after the caller
//! stopped waiting for it. Before the completion, one statement bounds the transaction's
//! `lock_timeout` a tenth (at most 100 ms) under the engine's store timeout (or keeps the
//! transaction's own, when shorter; restored by the completion): a completion waiting for the
//! record's row (an operator's `DELETE`) or its table (`LOCK TABLE`, `TRUNCATE`, `VACUUM FULL`,
//! a migration) ends on the server first, with an error that aborts the transaction, and the
//! answer is a timeout. So `complete_in` costs two round trips. Three limits: inside a
//! savepoint (a nested `tx.begin()`), rolling back to the savepoint clears the abort, so call
//! `complete_in` on the outer transaction or do not go on after its error; a server that stalls
//! past the store timeout between the two statements, or a caller that drops `complete_in`'s
//! future while Postgres parses the completion (its first use on a connection, behind a table
//! lock), leaves the transaction committable; and SQLite has no aborted-transaction state.
//! In every case: **roll back after any error** of `complete_in`.
//!
//! Releasing after a successful commit is harmless (a release is fenced on the record being
//! in progress under the token), so a dropped pending completion may always release. The row
//! stays locked by the transaction until it ends. On Postgres a retry of the same key meanwhile
//! is answered "in progress" at once (the claim reads the live row from its snapshot without
//! waiting for the lock); on SQLite the transaction holds the database's write lock, so every
//! writer waits for it: keep such transactions short, and open them with
//! `pool.begin_with("BEGIN IMMEDIATE")` so they take the write lock up front. On SQLite a claim
//! first reads the key (in WAL mode a read never waits for the write lock), so meanwhile a
//! completed key still replays and an in-progress one is answered "in progress" at once; only a
//! new key waits for the lock (and fails with the engine's failure policy past the operation
//! timeout). A claim that gives up with `SQLITE_BUSY`/`SQLITE_LOCKED` wrote nothing and is
//! [`StoreError::WriteRefused`](idempotency_core::StoreError::WriteRefused), so the engine
//! answers from a read where it can. A claim that times out while its statement waits for a
//! lock (SQLite: the write lock, before `SQLITE_BUSY`; Postgres: the key's row, locked by
//! another transaction) is not cancelled: sqlx's SQLite worker, or the Postgres server, runs
//! the statement once the lock is free. The store therefore runs each claim on a connection
//! held by its own future; when that future is dropped (timeout, or a caller gone) while the
//! claim statement may be in flight, the same connection is handed to a background task that
//! waits for the statement to end on it (one connection runs its commands in order) and then
//! releases the claim, fenced by its token, retrying busy and transient failures until the
//! claim's lease would lapse. So a timed-out claim is never left held by a token nobody has:
//! the key is free again as soon as the lock is (plus one release). An attempt dropped before
//! its statement was sent (waiting for a pool connection, or during SQLite's first read) wrote
//! nothing. A claim retried with the same record (same token) while such a release is pending
//! in the process waits for it first, so the retry is never told it holds a key that the
//! release then frees. Remaining limits: the release needs a Tokio runtime that keeps running
//! until the abandoned statement has ended (a runtime shut down before then drops the release,
//! and the claim lapses with its lease); the connection
//! stays with the task until the abandoned statement ends, at most the claim's lease plus the
//! store's operation timeout (on SQLite the busy timeout usually ends the statement first; on
//! Postgres it waits as long as the row lock is held): past that the task gives up, detaches
//! the connection from the pool (the pool opens a replacement; the connection closes once its
//! statement has ended) and logs a `warn` naming the key, so a lock held for hours does not
//! cost the pool a connection per abandoned claim. At most as many connections are detached
//! at once as the pool has (a detached statement's server backend stays until it ends: the
//! server sees at most twice the pool's connections); past that a connection stays with the
//! pool until a place frees. A statement that lands after the task gave
//! up is a claim under a token nobody holds, which nobody releases: the key is "in progress"
//! until it lapses, one lease after it landed (as after a crashed owner; a caller retrying
//! with the same record holds it). And if the database fails the release until the lease
//! would lapse, the claim lapses with its lease.
//!
//! **Claim first, then `BEGIN`; on Postgres at `READ COMMITTED`.** The lease renewals run on the
//! pool, outside the caller's transaction, every third of the lease. At `READ COMMITTED`
//! (Postgres's default) each statement sees them. At `REPEATABLE READ` / `SERIALIZABLE` the
//! transaction's snapshot is taken at its first statement
//! (<https://www.postgresql.org/docs/current/transaction-iso.html>): a claim taken after that
//! statement is invisible to it, and a renewal committed during a transaction longer than a
//! third of the lease makes the fenced UPDATE read the old lease end (no match) or fail with
//! SQLSTATE `40001` ("could not serialize access due to concurrent update"). Completing there
//! would need the lease kept out of the row the completion updates (a schema change, not made).
//! Instead, on those failure paths only (no extra round trip on success), `complete_in` re-reads
//! the claim on the pool (a fresh snapshot): when it is still in progress under this attempt's
//! token and live, or the UPDATE failed with `40001`/`40P01`, the answer is
//! [`IdempotencyError::TransactionConflict`](idempotency_core::IdempotencyError::TransactionConflict)
//! with a [`TransactionConflict`] source naming the cause (`StaleSnapshot { isolation }`, read
//! with `current_setting('transaction_isolation')`; `SerializationFailure { code }`) and the fix,
//! never a misleading `LeaseLost`, and the claim is released (in the background, once the
//! transaction lets go of the row), so the retry runs at once instead of after the lease. On
//! SQLite the equivalent is a deferred `BEGIN` whose first statement read before the claim or a
//! renewal committed: its write fails with `SQLITE_BUSY_SNAPSHOT`
//! ([`TransactionConflict::BusySnapshot`]); open the transaction with `BEGIN IMMEDIATE`, after
//! the claim.
//!
//! **A SQLite transaction may outlast the lease.** The lease renewals wait for the write lock the
//! transaction holds (a renewal that fails with busy or a timeout is a transient failure that the
//! engine retries, not a lost lease), so the lease can lapse by the database clock while the
//! transaction runs. `complete_in` on SQLite is therefore fenced on the token alone: no other
//! attempt can take the key over (which rewrites the token) while the transaction holds the write
//! lock, and a takeover before it leaves another token, so it still answers `LeaseLost`. The
//! plain `complete` (outside a transaction) keeps the expiry condition, as on every store.
//!
//! # Statements
//! One statement, one round trip, per primitive; every time comparison is on the database's
//! clock (Postgres `clock_timestamp()`, SQLite `julianday('now')`), never the application's, so
//! instances with skewed clocks agree. `expires_at` is the lease end of an in-progress row and
//! the retention end of a completed one; a row past it is absent for every operation. On
//! Postgres every built-in function is called by its qualified name
//! (`pg_catalog.clock_timestamp()`, `pg_catalog.pg_notify(…)`, …), every cast names its type
//! qualified (`$5::pg_catalog.float8`) and every operator is written
//! `OPERATOR(pg_catalog.=)`, `OPERATOR(pg_catalog.>)`, … (`IN (…)` as
//! `OPERATOR(pg_catalog.=) ANY (…)`), so a function, type, domain or operator of the same name
//! in a schema that comes earlier in the connection's `search_path` cannot replace it; the
//! migrations write `pg_catalog.text` and `pg_catalog.bytea`, and the SQL keywords `BIGINT`,
//! `SMALLINT` and `TIMESTAMP WITH TIME ZONE`, which always name the built-in types. The
//! statements below are shown with bare operators for reading. The records table is named with
//! its schema too: as configured (`schema.table`), or, for a name given without one (the
//! default `idempotency_records`), with the schema it resolved to once, when the store was
//! built: `build()` looks the name up through the connection's `search_path` (`to_regclass`);
//! `migrate()` uses the table it finds there (an existing install, in whichever schema of the
//! path), else creates it, and its `<table>_migrations` bookkeeping table, in
//! `current_schema()` (the first schema of the path that exists; none is an error,
//! [`SqlStoreError::NoSchema`]). A table of the same name that later appears in a schema
//! earlier in the path, or that another pool connection's `search_path` finds first, is never
//! the store's. [`PostgresStore::statements`] and [`PostgresStore::quoted_table`] show the
//! qualified name;
//! [`PostgresStore::table`], the `LISTEN` channel and the migration lock keep the configured
//! one.
//!
//! What a name without a schema resolves to is decided by each store when it is built: an
//! instance started after a table of the name appeared earlier in its path, or whose
//! `search_path` differs, resolves to another table than one started before; and a table
//! dropped and created again in another schema is not followed (the statements fail,
//! `StoreError::Backend` with SQLSTATE `42P01`, until the store is built again). For one table
//! whatever the paths and start times, name it `schema.table`, and the same way on every
//! instance: the `LISTEN` channel is derived from the configured text, so waiters of an
//! instance configured `idempotency_records` are not woken by completions of one configured
//! `public.idempotency_records` (they re-read at the end of their `max_wait`); `migrate()`
//! serialises with either (a name without a schema also takes the lock of `schema.table` once
//! resolved). Tables of one name in several schemas (a schema per tenant) share the channel: a
//! notification for another tenant's key of the same text costs a waiter one re-read. The
//! name is always quoted, so case matters: `Records` is the table `"Records"`, not the
//! `records` an unquoted `CREATE TABLE Records` makes. A name that resolves to a relation that
//! is not a table (a materialized view, sequence, index, composite type or foreign table) is
//! [`SqlStoreError::WrongShape`] / [`SqlStoreError::NotMigratable`] naming what it is; a simple
//! view over the records table is used as it is by `build()` (`migrate()` cannot index a
//! view: apply the migrations to its table). A name that resolves to the connection's own
//! temporary schema (a temporary table of that name on the connection that builds the store,
//! or `pg_temp` first in `search_path`) is [`SqlStoreError::TemporarySchema`]: no other
//! connection of the pool could use it.
//! - `try_claim`: `INSERT … ON CONFLICT (store_key) DO UPDATE SET col = CASE WHEN expired THEN
//!   excluded.col ELSE col END, … RETURNING (token = $new_token) AS claimed, …`. The upsert
//!   always touches the row, so `RETURNING` always yields it as it is after the statement: ours
//!   (claimed, a fresh random token is in it) or the live one that was there. (`DO UPDATE …
//!   WHERE expired` returns no row for a live one, and a second SELECT in the same statement
//!   reads a snapshot that can miss a row committed concurrently.) Concurrent claims on one key
//!   serialise on the row (Postgres) or on the write lock (SQLite): exactly one wins. On
//!   Postgres the same statement first looks for a live row in its snapshot (a CTE) and returns
//!   it without writing or locking anything, so replays and in-progress answers are plain reads;
//!   the upsert runs only when the snapshot has no live row.
//! - `complete`: `UPDATE … WHERE store_key = $1 AND token = $2 AND state = 'in_progress' AND
//!   expires_at > now`, also applied (changing nothing) when the row is already completed under
//!   the same token (a retried call whose reply was lost). On Postgres it also notifies waiters
//!   (`pg_notify`, see "Waiting duplicates") when it changed a row flagged as waited on.
//! - `release`: `DELETE … WHERE store_key, token, state = 'in_progress'`, applied when the row
//!   was live (Postgres: and notifies when the row was waited on); `extend`: `UPDATE … SET
//!   expires_at = now + lease` with the same fence;
//! - `get`: `SELECT … WHERE store_key = $1 AND expires_at > now`; `delete`: `DELETE … RETURNING
//!   expires_at > now` (whether a live record existed). On SQLite a row whose `expires_at` is
//!   not a number (edited by hand: any text sorts above every number there, so `'never'` would
//!   never lapse) is read too and reported as corrupt by `get` and `try_claim`.
//! - `purge_expired(batch)`: deletes at most `batch` expired rows (Postgres: `FOR UPDATE SKIP
//!   LOCKED`, so rows held by a running transaction are skipped).
//! - `time_to_live`: `SELECT expires_at - now` of the live row (the rest of the lease, or of the
//!   retention): what the CLI's `inspect` shows, and the engine's `Retry-After` for a claim
//!   that has not been renewed lately.
//!
//! # Schema
//! `migrate()` creates `<table>_migrations (version BIGINT PRIMARY KEY, name TEXT)` and applies
//! the migrations not recorded there, in one transaction (Postgres: under an advisory lock).
//! To use your own migration tool instead, copy the SQL below (for another table name, replace
//! `idempotency_records` everywhere); the stores only check the table's columns at construction
//! and fail with [`SqlStoreError::MissingTable`] / [`SqlStoreError::WrongShape`] naming the
//! migration (`0001_create_records`, `0002_waiters`). Before it runs or records any migration,
//! `migrate()` checks an existing table: a column of another type, or one missing that no
//! pending migration adds (the first migration's `CREATE TABLE IF NOT EXISTS` leaves an existing
//! table as it is), is [`SqlStoreError::NotMigratable`], which says what to fix by hand; nothing
//! is changed or recorded. A table that already has every column (created with the SQL below by
//! another tool) is adopted: its migrations are recorded without running again.
//!
//! Postgres, `0001_create_records`:
//! ```sql
#![doc = include_str!("../migrations/postgres/0001_create_records.sql")]
//! ```
//! SQLite, `0001_create_records`:
//! ```sql
#![doc = include_str!("../migrations/sqlite/0001_create_records.sql")]
//! ```
//! Postgres, `0002_waiters`:
//! ```sql
#![doc = include_str!("../migrations/postgres/0002_waiters.sql")]
//! ```
//! SQLite, `0002_waiters`:
//! ```sql
#![doc = include_str!("../migrations/sqlite/0002_waiters.sql")]
//! ```
//!
//! # Errors and faults
//! Every operation runs under the store's `operation_timeout` (default 1 s, including the wait
//! for a pooled connection): an unreachable database or an exhausted pool is a
//! [`StoreError::Timeout`](idempotency_core::StoreError::Timeout) or
//! [`StoreError::Unavailable`](idempotency_core::StoreError::Unavailable), never a hang, and the
//! engine's failure policy applies as for every store. A statement ended by the server for
//! waiting or running too long — Postgres `lock_timeout` (SQLSTATE `55P03`), or
//! `statement_timeout` / a cancel request (`57014`), whether set on the role, the database, the
//! connection or the transaction — is a `StoreError::Timeout` too (transient, so the engine
//! retries a completion), never `StoreError::Backend`; its `after` is how long the statement
//! ran before the server ended it (about the server's timeout), not the store's budget, which
//! had not run out, and a `warn` event carries the SQLSTATE and the server's message (which
//! names the timeout or the cancel: `StoreError::Timeout`'s own message cannot). Inside the
//! caller's transaction (`complete_in`) the failed statement aborts that transaction, so its
//! side effect cannot commit without the record. Errors are recognised by SQLSTATE
//! (Postgres) or result code (SQLite), never by message text. A row that is not a valid record
//! (edited by hand) is [`StoreError::Corrupt`](idempotency_core::StoreError::Corrupt), never
//! absent and never overwritten.
//!
//! # Observability
//! `tracing` events (migrations at info, purge results at debug, failures at warn; the wake-up
//! listener's connections at debug and its lost connections at warn); the engine records the
//! operation metrics, and the wake-up counter, as for every store.
//!
//! # Waiting duplicates
//! With the engine's `wait_for_in_progress`, a duplicate that finds the key in progress waits
//! for the first attempt (`IdempotencyStore::wait_for_change`).
//!
//! **Postgres** wakes it by `LISTEN`/`NOTIFY` (on by default;
//! [`PostgresStoreBuilder::wake_waiters`] turns it off):
//! - A waiting duplicate flags the row it waits on (`waiters`, migration `0002_waiters`), in
//!   one statement that also tells it whether the row is still in progress under the token it
//!   saw. `complete` and `release` call `pg_notify('<table>_wake', <hex SHA-256 of the store
//!   key>)` **in the same statement** when they change a flagged row, so notifying adds no
//!   round trip, and completions nobody waits for send nothing (see the costs below). The
//!   payload is 64 bytes whatever the key's length (Postgres refuses payloads of 8000 bytes or
//!   more) and carries no key text.
//! - A notification is delivered when the transaction commits and dropped on a rollback
//!   (<https://www.postgresql.org/docs/current/sql-notify.html>), so a completion inside the
//!   caller's transaction (`complete_in`) wakes waiters exactly when it becomes visible. The
//!   row lock orders the flag and the completion: a completion that already updated the row in
//!   an open transaction makes the flag statement wait for its commit (then: changed, re-read)
//!   or rollback (then: flagged; the release that follows notifies), and a completion after
//!   the flag sees it and notifies.
//! - Each store opens **one** listener connection (a `PgListener`, `application_name`
//!   [`WAKE_LISTENER_APPLICATION_NAME`], made from the pool's connect options but not taken
//!   from the pool) at its first wait, `LISTEN`s on the table's channel and routes
//!   notifications to the waiters of this process by payload. It pings every second (a
//!   protocol `Sync`, no statement) and reconnects with back-off; after a reconnection every
//!   waiter re-reads once (notifications sent while it was down are lost). A waiter registers,
//!   makes sure the `LISTEN` is in effect, then flags the row, so a completion is either seen
//!   by that statement or notified. A lease that expires is not notified: the flag statement
//!   also answers the lease's time left and the wait ends then at the latest (a duplicate of a
//!   crashed owner takes the key over at the lapse); at the end of the wait the engine re-reads
//!   once more. When the listener cannot connect within the
//!   operation timeout, or the flag statement fails (e.g. it waited longer than the operation
//!   timeout for a long transaction holding the row), that wait polls instead.
//! - A waiting duplicate costs its claim, the flag statement and one re-read (a claim), plus
//!   `LISTEN` once per listener connection: no statement per unit of time waited, except one
//!   look (the flag statement and a claim) per lease period while the first attempt renews.
//! - Costs and limits: a transaction that notified takes a cluster-wide lock at commit
//!   (Postgres serialises notifying commits to keep its queue in commit order); only
//!   completions and releases of waited rows pay it. A listener anywhere in the cluster that
//!   stops consuming (a session that `LISTEN`s and stays idle in a transaction) lets the
//!   notification queue (8 GB) fill, after which notifying commits fail — watch
//!   `pg_notification_queue_usage()`. Behind a pooler that does not keep sessions (PgBouncer in
//!   transaction or statement mode) `LISTEN` does not work: point the store's pool at the
//!   server or use `wake_waiters(false)`, which makes waiters poll every `poll_interval`.
//!
//! **SQLite** polls: the engine re-claims every `poll_interval` (a local read). SQLite has no
//! notification between processes sharing the file, and a completion inside the caller's
//! transaction becomes visible at a `COMMIT` the store does not see, so an in-process wake-up
//! would still need the polling behind it; it is not implemented.
//!
//! # Feature flags
//! - `postgres` (default): [`PostgresStore`] on a `sqlx::PgPool`.
//! - `sqlite` (default): [`SqliteStore`] on a `sqlx::SqlitePool` (SQLite bundled by sqlx) and
//!   [`sqlite_connect_options`].
//!
//! `sqlx` is re-exported ([`sqlx`]) so the application's pool and this crate agree on versions.

#![deny(missing_docs)]

mod error;
mod migrate;
#[cfg(feature = "postgres")]
mod pg_notify;
#[cfg(feature = "postgres")]
mod postgres;
mod purge;
mod row;
#[cfg(any(feature = "postgres", feature = "sqlite"))]
mod shared;
#[cfg(feature = "sqlite")]
mod sqlite;
mod table;

use std::time::Duration;

pub use error::{SqlStoreError, TransactionConflict};
pub use idempotency_core;
#[cfg(feature = "postgres")]
pub use pg_notify::WAKE_LISTENER_APPLICATION_NAME;
#[cfg(feature = "postgres")]
pub use postgres::{PostgresStore, PostgresStoreBuilder};
pub use purge::{PurgeExpired, PurgeTask};
#[cfg(feature = "sqlite")]
pub use sqlite::{SqliteStore, SqliteStoreBuilder, connect_options as sqlite_connect_options};
pub use sqlx;
pub use table::DEFAULT_TABLE;

/// The SQL text of each primitive, built once per store for its table name (see
/// [`PostgresStore::statements`] / [`SqliteStore::statements`]). Parameters, in order:
/// `claim` (key, token, fingerprint, created-at ms, lease: µs on Postgres, ms on SQLite),
/// `complete` (key, token, completed-at ms, content type, encoding, body, retention), `release`
/// (key, token), `extend` (key, token, lease), `get`, `delete` and `time_to_live` (key), `purge` (batch). On a
/// Postgres store that wakes waiters, `complete` and `release` return a second column (the
/// notifications sent) after the first.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SqlStatements {
    /// `try_claim`: returns `claimed` and the row.
    pub claim: String,
    /// `complete`: Postgres returns one boolean (applied), SQLite one affected row.
    pub complete: String,
    /// `release`: returns whether the deleted row was live (no row: nothing deleted).
    pub release: String,
    /// `extend`: one affected row when applied.
    pub extend: String,
    /// `get`: the live row, if any.
    pub get: String,
    /// `delete`: returns whether the deleted row was live.
    pub delete: String,
    /// `purge_expired`: affected rows.
    pub purge: String,
    /// `time_to_live`: the time the live row has left (Postgres: µs, SQLite: ms), if any.
    pub time_to_live: String,
}

/// The default time budget of one store operation.
pub const DEFAULT_OPERATION_TIMEOUT: Duration = Duration::from_secs(1);

/// Leases and retentions are capped at 100 years so `now + duration` never overflows a
/// database timestamp.
const MAX_DURATION: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

#[cfg_attr(not(feature = "postgres"), allow(dead_code))]
fn duration_micros(duration: Duration) -> i64 {
    i64::try_from(duration.min(MAX_DURATION).as_micros()).unwrap_or(i64::MAX)
}

#[cfg_attr(not(feature = "sqlite"), allow(dead_code))]
fn duration_millis(duration: Duration) -> i64 {
    // Round up, so a sub-millisecond lease is not an already-expired one.
    let micros = duration.min(MAX_DURATION).as_micros();
    i64::try_from(micros.div_ceil(1000)).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_are_capped_and_rounded_up() {
        assert_eq!(duration_micros(Duration::from_millis(1500)), 1_500_000);
        assert_eq!(duration_millis(Duration::from_micros(1)), 1);
        assert_eq!(duration_millis(Duration::from_millis(300)), 300);
        assert_eq!(
            duration_micros(Duration::MAX),
            duration_micros(MAX_DURATION)
        );
    }
}
