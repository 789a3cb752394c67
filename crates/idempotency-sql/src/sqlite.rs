//! [`SqliteStore`]: the records table on SQLite, every time comparison on the database's clock
//! (`julianday('now')`, which SQLite keeps constant within one statement).

use idempotency_core::StoreOperation;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use idempotency_core::{
    Claim, Completed, CorruptRecord, Fenced, Guard, IdempotencyError, IdempotencyStore, InProgress,
    LeaseToken, PendingCompletion, Record, StoreError, StoreKey, StoredOutcome,
};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqliteQueryResult,
    SqliteRow, SqliteSynchronous,
};
use sqlx::{ConnectOptions as _, Connection as _, Row as _, Sqlite};

use crate::row::COLUMNS;
use crate::shared::{Dialect, SharedStore, Written};
use crate::table::{DEFAULT_TABLE, Table};
use crate::{
    DEFAULT_OPERATION_TIMEOUT, SqlStatements, SqlStoreError, TransactionConflict, duration_millis,
};

type Base = SharedStore<Sqlite>;

/// The database's clock in milliseconds since the Unix epoch. `julianday('now')` works on every
/// SQLite version (`unixepoch('subsec')` needs 3.42) and is the same for the whole statement.
const NOW_MS: &str = "CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER)";

/// True for a row whose `expires_at` is not a number (hand-edited): such a row is corrupt.
const NOT_NUMERIC: &str = "typeof(expires_at) NOT IN ('integer', 'real')";

/// Connection options for a SQLite database file shared by concurrent tasks: WAL (readers do
/// not block the writer), a 5 s busy timeout (writers queue instead of failing at once),
/// `synchronous = NORMAL` (durable at checkpoints; the usual WAL setting) and
/// `create_if_missing`. Build the application's pool from these (or set the same on yours).
///
/// sqlx's "slow statement" alert is lowered to `DEBUG` (still after 1 s): on SQLite a write's
/// execution time includes waiting for the single write lock, and with transactional
/// completion that wait is expected — a lease renewal, or the background release of a claim
/// whose reply timed out, queues behind the application's transaction that holds the lock (the
/// cause of the warnings after every slow completion). It is not a slow statement; the store
/// reports waits that matter itself, as [`StoreError::Timeout`] / [`StoreError::WriteRefused`]
/// and the engine's metrics.
pub fn connect_options(path: impl AsRef<Path>) -> SqliteConnectOptions {
    SqliteConnectOptions::new()
        .log_slow_statements(log::LevelFilter::Debug, Duration::from_secs(1))
        .filename(path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal)
        .busy_timeout(Duration::from_secs(5))
}

/// An idempotency store in a SQLite table, on the application's own [`SqlitePool`].
///
/// Cheap to clone (an `Arc`). SQLite serialises writers, so of concurrent claims on one key
/// exactly one wins; open the pool with [`connect_options`] (WAL, busy timeout) so that
/// concurrent writers wait rather than fail. An in-memory database is per connection: use a
/// file (or `file:name?mode=memory&cache=shared`).
#[derive(Debug, Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// The pool, table, time budget and statements.
    base: Base,
    /// The completion inside the caller's transaction: fenced on the token alone (see
    /// [`SqliteStore::write_in`] for why that is safe on SQLite).
    complete_in_tx: String,
}

impl SqlStatements {
    fn sqlite(t: &str) -> Self {
        // As on Postgres, the upsert always writes the row and keeps every old value unless the
        // row has expired, so RETURNING always yields the row as it is after the statement.
        // SQLite runs one writer at a time, so the statement is atomic.
        let keep_unless_expired = |column: &str| {
            format!(
                "{column} = CASE WHEN r.expires_at <= {NOW_MS} \
                 THEN excluded.{column} ELSE r.{column} END"
            )
        };
        let assignments = [
            "state",
            "token",
            "fingerprint",
            "created_at_ms",
            "completed_at_ms",
            "content_type",
            "encoding",
            "body",
            "expires_at",
        ]
        .map(keep_unless_expired)
        .join(", ");
        // SQLite has no data-modifying CTEs: the completion keeps every value of a row already
        // completed under the token (a retried call) and counts it as applied.
        let if_running = |column: &str, value: &str| {
            format!("{column} = CASE WHEN state = 'in_progress' THEN {value} ELSE {column} END")
        };
        Self {
            claim: format!(
                "INSERT INTO {t} AS r (store_key, state, token, fingerprint, created_at_ms, expires_at) \
                 VALUES (?1, 'in_progress', ?2, ?3, ?4, {NOW_MS} + ?5) \
                 ON CONFLICT (store_key) DO UPDATE SET {assignments} \
                 RETURNING (token = ?2) AS claimed, typeof(expires_at) AS expires_type, {COLUMNS}"
            ),
            complete: format!(
                "UPDATE {t} SET {}, {}, {}, {}, {}, state = 'completed' \
                 WHERE store_key = ?1 AND token = ?2 AND state IN ('in_progress', 'completed') \
                 AND expires_at > {NOW_MS}",
                if_running("completed_at_ms", "?3"),
                if_running("content_type", "?4"),
                if_running("encoding", "?5"),
                if_running("body", "?6"),
                if_running("expires_at", &format!("{NOW_MS} + ?7")),
            ),
            release: format!(
                "DELETE FROM {t} WHERE store_key = ?1 AND token = ?2 AND state = 'in_progress' \
                 RETURNING expires_at > {NOW_MS}"
            ),
            extend: format!(
                "UPDATE {t} SET expires_at = {NOW_MS} + ?3 \
                 WHERE store_key = ?1 AND token = ?2 AND state = 'in_progress' \
                 AND expires_at > {NOW_MS}"
            ),
            // A non-numeric `expires_at` (TEXT sorts above every number in SQLite, so `'never'`
            // would look live for ever) is returned too, and decoded as corrupt.
            get: format!(
                "SELECT typeof(expires_at) AS expires_type, {COLUMNS} FROM {t} WHERE store_key = ?1 \
                 AND (expires_at > {NOW_MS} OR {NOT_NUMERIC})"
            ),
            delete: format!("DELETE FROM {t} WHERE store_key = ?1 RETURNING expires_at > {NOW_MS}"),
            purge: format!(
                "DELETE FROM {t} WHERE store_key IN (SELECT store_key FROM {t} \
                 WHERE expires_at <= {NOW_MS} LIMIT ?1)"
            ),
            // A row whose `expires_at` is not a number has no lease end to report.
            time_to_live: format!(
                "SELECT CAST(expires_at - {NOW_MS} AS INTEGER) FROM {t} WHERE store_key = ?1 \
                 AND NOT {NOT_NUMERIC} AND expires_at > {NOW_MS}"
            ),
        }
    }
}

/// The plain completion without its expiry condition: the statement [`SqliteStore::write_in`]
/// runs in the caller's transaction.
fn complete_in_transaction(complete: &str) -> String {
    let lapsed = format!(" AND expires_at > {NOW_MS}");
    complete.replacen(&lapsed, "", 1)
}

/// Configures and checks a [`SqliteStore`].
#[derive(Debug)]
#[must_use = "call build() or migrate()"]
pub struct SqliteStoreBuilder {
    pool: SqlitePool,
    table: String,
    timeout: Duration,
}

impl SqliteStoreBuilder {
    /// The records table (default `idempotency_records`): letters, digits and `_`, at most 48
    /// bytes.
    pub fn table(mut self, name: impl Into<String>) -> Self {
        self.table = name.into();
        self
    }

    /// Each operation's time budget (default 1 s), including waiting for a pooled connection
    /// and for SQLite's write lock; past it the operation fails with [`StoreError::Timeout`].
    pub fn operation_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Check that the table exists with the expected columns, and build the store.
    ///
    /// # Errors
    /// [`SqlStoreError::MissingTable`] / [`SqlStoreError::WrongShape`] naming the migration to
    /// run, [`SqlStoreError::InvalidTableName`], or [`SqlStoreError::Database`].
    pub async fn build(self) -> Result<SqliteStore, SqlStoreError> {
        let table = Table::parse(&self.table, false)?;
        let columns = Base::columns(&self.pool, &table).await?;
        Base::check_shape(&table, !columns.is_empty(), &columns)?;
        let sql = SqlStatements::sqlite(&table.quoted);
        Ok(SqliteStore {
            inner: Arc::new(Inner {
                complete_in_tx: complete_in_transaction(&sql.complete),
                base: Base {
                    sql,
                    pool: self.pool,
                    table,
                    timeout: self.timeout,
                    detached: Arc::default(),
                },
            }),
        })
    }

    /// Apply the migrations this version knows and has not applied yet (recorded in
    /// `<table>_migrations`), then [`build`](Self::build). Safe to run at every start and from
    /// several processes at once (`BEGIN IMMEDIATE` serialises them).
    ///
    /// # Errors
    /// As [`build`](Self::build); [`SqlStoreError::NotMigratable`] when the table exists with a
    /// shape the migrations cannot repair (checked before any migration runs or is recorded);
    /// [`SqlStoreError::Database`] when a migration fails (nothing of it is applied: each run is
    /// one transaction).
    pub async fn migrate(self) -> Result<SqliteStore, SqlStoreError> {
        let table = Table::parse(&self.table, false)?;
        let mut conn = self.pool.acquire().await?;
        let mut tx = conn.begin_with("BEGIN IMMEDIATE").await?;
        Base::migrate_in(&mut tx, &table).await?;
        tx.commit().await?;
        drop(conn);
        self.build().await
    }
}

/// SQLite's `SQLITE_BUSY` (5) or `SQLITE_LOCKED` (6), with their extended codes: the statement
/// gave up waiting for a lock and wrote nothing.
fn is_busy(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Database(db) => db
            .code()
            .and_then(|code| code.parse::<u32>().ok())
            .is_some_and(|code| matches!(code & 0xff, 5 | 6)),
        _ => false,
    }
}

/// `SQLITE_BUSY_SNAPSHOT` (517): a transaction that read an older snapshot (a deferred `BEGIN`
/// whose first statement was a read, before another connection committed) tried to write. It
/// is not retried by the busy handler: the transaction can never write.
fn is_busy_snapshot(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Database(db) => db.code().as_deref() == Some("517"),
        _ => false,
    }
}

impl Dialect for Sqlite {
    const POSTGRES: bool = false;
    const PARAMETER: &'static str = "?";
    const COLUMNS_OF: &'static str = "SELECT name, type FROM pragma_table_info(?1)";
    const COMPLETE_RETURNS_APPLIED: bool = false;

    fn columns_of(table: &Table) -> &str {
        &table.bare
    }

    fn units(duration: Duration) -> i64 {
        duration_millis(duration)
    }

    fn from_units(units: u64) -> Duration {
        Duration::from_millis(units)
    }

    fn rows_affected(done: &SqliteQueryResult) -> u64 {
        done.rows_affected()
    }

    fn encoding(row: &SqliteRow) -> Result<Option<i64>, sqlx::Error> {
        row.try_get("encoding")
    }

    /// A row read with `typeof(expires_at) AS expires_type` whose expiry is not a number
    /// (`'never'`, a date string, a blob, NULL) never lapses, so it is [`StoreError::Corrupt`]
    /// like any other row that is not a record.
    fn check_row(row: &SqliteRow) -> Result<(), StoreError> {
        let expires_type: Option<String> = row
            .try_get("expires_type")
            .map_err(|e| crate::error::map_sqlx(StoreOperation::Get, Duration::ZERO, e))?;
        if !matches!(expires_type.as_deref(), Some("integer" | "real")) {
            return Err(StoreError::Corrupt(CorruptRecord::new(format!(
                "idempotency row: `expires_at` is {}, not milliseconds since the epoch",
                expires_type.as_deref().unwrap_or("missing")
            ))));
        }
        Ok(())
    }
}

impl SqliteStore {
    /// Start configuring a store on `pool` (the application's own pool).
    pub fn builder(pool: SqlitePool) -> SqliteStoreBuilder {
        SqliteStoreBuilder {
            pool,
            table: DEFAULT_TABLE.to_owned(),
            timeout: DEFAULT_OPERATION_TIMEOUT,
        }
    }

    /// A store on the default table, checked to exist.
    ///
    /// # Errors
    /// As [`SqliteStoreBuilder::build`].
    pub async fn new(pool: SqlitePool) -> Result<Self, SqlStoreError> {
        Self::builder(pool).build().await
    }

    /// The pool.
    pub fn pool(&self) -> &SqlitePool {
        &self.inner.base.pool
    }

    /// The records table's name, as configured.
    pub fn table(&self) -> &str {
        &self.inner.base.table.name
    }

    /// The time budget of each operation, including the wait for a pooled connection and for
    /// SQLite's write lock: as set by [`SqliteStoreBuilder::operation_timeout`], else
    /// [`DEFAULT_OPERATION_TIMEOUT`] (1 s).
    pub fn operation_timeout(&self) -> Duration {
        self.inner.base.timeout
    }

    /// The exact SQL of each primitive, for this table (what a DBA reviews, and what the
    /// `raw-postgres` benchmark baseline sends).
    pub fn statements(&self) -> &SqlStatements {
        &self.inner.base.sql
    }

    /// Delete up to `batch` expired rows and return how many went (one short write
    /// transaction). Call it in a loop until it returns less than `batch`, or use
    /// [`crate::PurgeTask`].
    ///
    /// # Errors
    /// [`StoreError`] as for every operation.
    pub async fn purge_expired(&self, batch: u32) -> Result<u64, StoreError> {
        self.inner.base.purge(batch).await
    }

    /// Complete `guard`'s claim with `outcome` **inside the caller's transaction** `conn` (a
    /// `&mut *tx`; prefer `pool.begin_with("BEGIN IMMEDIATE")` so the transaction takes the
    /// write lock up front). The side effect and the completed record commit together or not
    /// at all. Then commit and call [`PendingCompletion::committed`]; on a rollback call
    /// [`PendingCompletion::release`] (or drop it: it releases in the background).
    ///
    /// # Errors
    /// - [`IdempotencyError::LeaseLost`]: the claim lapsed or was taken over; **roll back**;
    /// - [`IdempotencyError::TransactionConflict`] ([`TransactionConflict::BusySnapshot`]): the
    ///   transaction was opened with a deferred `BEGIN` and read before the claim or a lease
    ///   renewal committed, so it cannot write; **roll back** (the claim is released) and open
    ///   it with `BEGIN IMMEDIATE` after the claim;
    /// - [`IdempotencyError::OutcomeTooLarge`]: nothing written, the claim was released;
    /// - [`IdempotencyError::StoreUnavailable`] / [`IdempotencyError::CorruptRecord`]: roll back.
    pub async fn complete_in<S: IdempotencyStore + 'static>(
        &self,
        conn: &mut SqliteConnection,
        guard: Guard<S>,
        outcome: StoredOutcome,
    ) -> Result<PendingCompletion<S>, IdempotencyError> {
        let pending = guard.prepare(outcome).await?;
        self.write_in(conn, pending).await
    }

    /// The fenced write of a [`PendingCompletion`] in the caller's transaction;
    /// [`complete_in`](Self::complete_in) is [`Guard::prepare`] + this.
    ///
    /// # Fenced on the token alone
    /// Unlike the plain [`IdempotencyStore::complete`], this write does not also require the
    /// lease to be unexpired by the database clock. On SQLite a transaction that writes holds the
    /// database's single write lock from its first write (from `BEGIN` with `BEGIN IMMEDIATE`)
    /// until it ends, and the lease renewals of the claim are writes too: while the caller's
    /// transaction runs they wait for the lock, so a transaction longer than the lease would
    /// always find its own lease lapsed and roll back, and every retry would repeat it.
    /// Fencing on the token is enough here: a claim can only pass to another attempt by a
    /// takeover, which rewrites the token (or by a release, delete or purge, which removes the
    /// row), and no takeover can happen while this transaction holds the write lock, nor
    /// between this statement and the commit. A takeover that happened before the statement
    /// leaves another token, so the write still answers
    /// [`LeaseLost`](IdempotencyError::LeaseLost). (A transaction opened with a deferred
    /// `BEGIN` that read an older snapshot fails with `SQLITE_BUSY_SNAPSHOT` instead of writing
    /// over a newer row.) A renewal that meanwhile fails with `SQLITE_BUSY` or times out is a
    /// transient store failure for the engine's renewal driver (retried soon), not a lost
    /// lease.
    ///
    /// # Errors
    /// As [`complete_in`](Self::complete_in).
    pub async fn write_in<S: IdempotencyStore + 'static>(
        &self,
        conn: &mut SqliteConnection,
        pending: PendingCompletion<S>,
    ) -> Result<PendingCompletion<S>, IdempotencyError> {
        let Some(parts) = pending.parts() else {
            return Ok(pending);
        };
        let written = Base::write_in(
            &self.inner.complete_in_tx,
            &mut *conn,
            &parts,
            parts.timeout,
            None,
        )
        .await?;
        // On every `Err` below (and on a timeout, above), dropping `pending` releases the claim
        // in the background once the caller's transaction lets go of the write lock (fenced on
        // our token).
        match written {
            Written::Applied => Ok(pending),
            // The statement ran with the write lock, so it saw the latest row: not ours.
            Written::NotApplied => Err(pending.lease_lost()),
            Written::Failed(error) if is_busy_snapshot(&error) => {
                tracing::warn!(key = %parts.key, "completion in the caller's transaction: SQLITE_BUSY_SNAPSHOT; releasing the claim");
                drop(pending);
                Err(TransactionConflict::BusySnapshot { source: error }.into_error())
            }
            Written::Failed(error) => {
                Err(crate::error::map_sqlx(StoreOperation::Complete, parts.timeout, error).into())
            }
        }
    }
}

impl IdempotencyStore for SqliteStore {
    async fn try_claim(
        &self,
        key: &StoreKey,
        record: &InProgress,
        lease: Duration,
    ) -> Result<Claim, StoreError> {
        let base = &self.inner.base;
        let budget = base.timeout;
        let attempt = async {
            // A live record needs no write: read it first. In WAL mode a read never waits for
            // the write lock, so a completed key replays (and an in-progress one answers "in
            // progress") even while a long transaction holds the lock. The read is the
            // linearization point of such a claim: the record was live and there, as if the
            // claim had run then.
            // Both statements run on one connection, held by a guard: a claim statement
            // abandoned by a timeout (still waiting for the write lock) is released once it
            // lands, on the same connection ([`crate::shared::ClaimConnection`]).
            let mut conn = base.claim_connection(key, &record.token).await?;
            let live = sqlx::query(&base.sql.get)
                .bind(key.as_str())
                .fetch_optional(conn.conn())
                .await?;
            if let Some(row) = live {
                return Ok((false, row));
            }
            let row = base.claim_on(&mut conn, key, record, lease).await?;
            let claimed: Option<bool> = row.try_get("claimed")?;
            Ok::<_, sqlx::Error>((claimed == Some(true), row))
        };
        let (claimed, row) = match tokio::time::timeout(budget, attempt).await {
            Ok(Ok(done)) => done,
            // SQLITE_BUSY / SQLITE_LOCKED is SQLite's own refusal: the claim was not written
            // (the statement gave up waiting for the write lock). Reads still work, so the
            // engine answers from a read (a completed record replays); see
            // [`StoreError::WriteRefused`].
            Ok(Err(error)) if is_busy(&error) => {
                return Err(StoreError::WriteRefused {
                    source: Box::new(error),
                });
            }
            Ok(Err(error)) => {
                return Err(crate::error::map_sqlx(
                    StoreOperation::TryClaim,
                    budget,
                    error,
                ));
            }
            Err(_) => {
                return Err(StoreError::Timeout {
                    operation: StoreOperation::TryClaim,
                    after: budget,
                });
            }
        };
        if claimed {
            return Ok(Claim::Claimed);
        }
        Ok(Claim::Existing(Base::decode(&row)?))
    }

    async fn complete(
        &self,
        key: &StoreKey,
        token: &LeaseToken,
        record: &Completed,
        retention: Duration,
    ) -> Result<Fenced, StoreError> {
        self.inner
            .base
            .complete(key, token, record, retention)
            .await
    }

    async fn release(&self, key: &StoreKey, token: &LeaseToken) -> Result<Fenced, StoreError> {
        self.inner.base.release(key, token).await
    }

    async fn extend(
        &self,
        key: &StoreKey,
        token: &LeaseToken,
        lease: Duration,
    ) -> Result<Fenced, StoreError> {
        self.inner.base.extend(key, token, lease).await
    }

    async fn get(&self, key: &StoreKey) -> Result<Option<Record>, StoreError> {
        self.inner.base.get(key).await
    }

    async fn delete(&self, key: &StoreKey) -> Result<bool, StoreError> {
        self.inner.base.delete(key).await
    }

    /// One read (`expires_at` minus the database clock, of the live row), under the operation
    /// timeout; in WAL mode it does not wait for the write lock. The rest of the lease of an
    /// in-progress record (which may have lapsed meanwhile while a long `BEGIN IMMEDIATE`
    /// transaction holds the lock the renewals wait for: see [`SqliteStore::write_in`]), the
    /// rest of the retention of a completed one, `None` when the key has no live row.
    async fn time_to_live(&self, key: &StoreKey) -> Result<Option<Duration>, StoreError> {
        self.inner.base.time_to_live(key).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_completion_in_a_transaction_is_fenced_on_the_token_only() {
        let sql = SqlStatements::sqlite("\"t\"");
        let in_tx = complete_in_transaction(&sql.complete);
        assert!(
            sql.complete.contains("AND expires_at >"),
            "{}",
            sql.complete
        );
        assert!(!in_tx.contains("AND expires_at >"), "{in_tx}");
        assert!(in_tx.contains("token = ?2"), "{in_tx}");
    }
}
