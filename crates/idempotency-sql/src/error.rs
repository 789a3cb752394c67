//! Errors: [`SqlStoreError`] at construction and migration, and the mapping of `sqlx` errors onto
//! the core's [`StoreError`] for every store operation.

use idempotency_core::StoreOperation;
use std::time::Duration;

use idempotency_core::{CorruptRecord, StoreError};
use thiserror::Error;

/// Why a store could not be built or its schema migrated.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum SqlStoreError {
    /// The table name is not a plain SQL identifier (`[A-Za-z_][A-Za-z0-9_]*`, at most 48
    /// bytes, so that `<table>_migrations` and `<table>_expires_at` fit Postgres's 63; Postgres
    /// also accepts `schema.table`, each part so).
    #[error("invalid table name {name:?}: use letters, digits and `_` (Postgres: `schema.table`)")]
    InvalidTableName {
        /// The refused name.
        name: String,
    },
    /// The records table does not exist.
    #[error(
        "table {table} does not exist: run the store's `migrate()` (or apply the migrations from \
         {migration} on, from the idempotency-sql crate docs, with your migration tool)"
    )]
    MissingTable {
        /// The table looked for.
        table: String,
        /// The migration that creates it (apply it and every later one).
        migration: &'static str,
    },
    /// The records table exists but its columns are not the ones this version needs.
    #[error(
        "table {table} has the wrong shape ({detail}): run the store's `migrate()` (or apply \
         migration {migration} from the idempotency-sql crate docs)"
    )]
    WrongShape {
        /// The table.
        table: String,
        /// What differs (missing column, column of another type).
        detail: String,
        /// The migration that gives the table the expected shape.
        migration: &'static str,
    },
    /// The records table exists with a shape the migrations cannot repair (a column of another
    /// type, or a column missing that no pending migration adds). Checked before any migration
    /// runs, so nothing was changed or recorded.
    #[error(
        "table {table} has the wrong shape ({detail}) and `migrate()` cannot repair it: nothing \
         was changed; fix the table by hand (alter the columns named, or rename the table and \
         let `migrate()` create a new one: the expected definition is migration {migration} in \
         the idempotency-sql crate docs), then run `migrate()` again"
    )]
    NotMigratable {
        /// The table.
        table: String,
        /// What differs.
        detail: String,
        /// The migration that defines the expected shape (with the ones before it).
        migration: &'static str,
    },
    /// Postgres `migrate()` of a table named without a schema, which does not exist yet: the
    /// connection has no schema to create it in (`current_schema()` is NULL: no schema listed
    /// in its `search_path` exists). Nothing was created.
    #[error(
        "no schema to create table {table} in: no schema in the connection's search_path \
         exists (current_schema() is NULL); create one, fix search_path, or name the table \
         `schema.table`"
    )]
    NoSchema {
        /// The table, as configured.
        table: String,
    },
    /// Postgres, a table named without a schema: the name resolves to the connection's own
    /// temporary schema (`pg_temp_N`): a temporary table of that name exists on the connection
    /// that built the store, or `pg_temp` comes first in its `search_path` (then `migrate()`
    /// would create the records as a temporary table, dropped when that connection closes).
    /// The pool's other connections cannot use a temporary table. Nothing was created.
    #[error(
        "table {table} resolves to the connection's temporary schema {schema}, which the pool's \
         other connections cannot use: drop the temporary table of that name, put pg_temp \
         after the other schemas of search_path, or name the table `schema.table`"
    )]
    TemporarySchema {
        /// The table, as configured.
        table: String,
        /// The temporary schema it resolved to (`pg_temp_N`).
        schema: String,
    },
    /// The database failed while checking or migrating the schema.
    #[error("database error while checking or migrating the idempotency table")]
    Database(#[source] sqlx::Error),
}

impl From<sqlx::Error> for SqlStoreError {
    fn from(error: sqlx::Error) -> Self {
        Self::Database(error)
    }
}

/// Why `complete_in` / `write_in` could not record the outcome inside the caller's transaction
/// while the claim is still this attempt's: the `source` of
/// [`IdempotencyError::TransactionConflict`](idempotency_core::IdempotencyError::TransactionConflict).
/// Each message says what to change; match on the cause with
/// `source.downcast_ref::<idempotency_sql::TransactionConflict>()`.
///
/// In every case the claim is given up (released in the background once the transaction lets go
/// of the row), so a retry runs at once instead of waiting for the lease to lapse.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum TransactionConflict {
    /// Postgres: the fenced UPDATE did not see the claim, which the store's pool sees live and
    /// in progress under this attempt's token. The transaction's snapshot is older than the
    /// claim's row: at `REPEATABLE READ` / `SERIALIZABLE` the snapshot is taken at the
    /// transaction's first statement, so it misses a claim taken after that statement, and a
    /// lease renewal committed on the pool after it (the renewals run outside the transaction,
    /// every third of the lease) — the UPDATE then reads the old lease end.
    #[error("{}", stale_snapshot_message(.isolation.as_deref()))]
    StaleSnapshot {
        /// The transaction's isolation level (`current_setting('transaction_isolation')`, e.g.
        /// `repeatable read`), when it could be read.
        isolation: Option<String>,
    },
    /// Postgres: the fenced UPDATE failed with SQLSTATE `40001` (serialization failure: at
    /// `REPEATABLE READ` / `SERIALIZABLE`, a lease renewal updated the claim's row after the
    /// transaction's snapshot, or another serialization conflict) or `40P01` (deadlock). The
    /// transaction is aborted.
    #[error(
        "the transaction failed with SQLSTATE {code} at the completion: roll it back and retry \
         from the claim; a transaction at REPEATABLE READ or SERIALIZABLE that outlasts a lease \
         renewal (a third of the lease) fails this way on every retry: run it at READ COMMITTED \
         (Postgres's default), opened after the claim (claim, then BEGIN)"
    )]
    SerializationFailure {
        /// `40001` or `40P01`.
        code: String,
        /// The database's error.
        #[source]
        source: sqlx::Error,
    },
    /// SQLite: the transaction read before the claim (or a renewal of its lease) was committed
    /// and can no longer write (`SQLITE_BUSY_SNAPSHOT`: a deferred `BEGIN` whose first
    /// statement was a read).
    #[error(
        "the SQLite transaction read an older snapshot and cannot write (SQLITE_BUSY_SNAPSHOT): \
         roll it back and open it with BEGIN IMMEDIATE (`pool.begin_with(\"BEGIN IMMEDIATE\")`) \
         after the claim (claim, then BEGIN)"
    )]
    BusySnapshot {
        /// The database's error.
        #[source]
        source: sqlx::Error,
    },
}

fn stale_snapshot_message(isolation: Option<&str>) -> String {
    match isolation {
        Some(level) if level != "read committed" => format!(
            "the transaction runs at {level}: its snapshot predates the claim or a renewal of \
             its lease, so it cannot complete the claim (every retry would fail the same way): \
             run it at READ COMMITTED (Postgres's default) and open it after the claim (claim, \
             then BEGIN)"
        ),
        _ => "the transaction does not see the claim, which is live under this attempt: open it \
         after the claim (claim, then BEGIN), at READ COMMITTED (Postgres's default), on the \
         store's database (same database and search_path as the store's pool)"
            .to_owned(),
    }
}

impl TransactionConflict {
    /// The core error carrying this cause.
    pub(crate) fn into_error(self) -> idempotency_core::IdempotencyError {
        idempotency_core::IdempotencyError::TransactionConflict {
            source: Box::new(self),
        }
    }
}

/// Map a `sqlx` error from `operation` onto the core's typed error; `budget` is the store's
/// time budget, reported as `after` of a timeout. As [`map_sqlx_after`] with the budget for
/// the time the statement ran (for a caller that did not measure it).
pub(crate) fn map_sqlx(
    operation: StoreOperation,
    budget: Duration,
    error: sqlx::Error,
) -> StoreError {
    map_sqlx_after(operation, budget, budget, error)
}

/// Map a `sqlx` error from `operation`, whose statement ran for `ran`, onto the core's typed
/// error.
///
/// - pool timeouts and the store's own budget → [`StoreError::Timeout`] after `budget`;
///   Postgres's `lock_timeout` (SQLSTATE `55P03`) and `query_canceled` (`57014`: a
///   `statement_timeout` set on the role, database, connection or transaction, or a cancel
///   request such as `pg_cancel_backend`) → [`StoreError::Timeout`] after `ran`, the time the
///   server let the statement run (the store's budget had not run out: naming it would send an
///   operator to the wrong setting), logged at `warn` with the SQLSTATE and the server's
///   message (which names the setting or the cancel). All transient: a retry may succeed; the
///   statement was rolled back, and inside the caller's transaction its failure aborts that
///   transaction;
/// - I/O, TLS, a closed pool, a crashed worker, SQLSTATE class `08` (connection exception),
///   `57P01`..`57P03` (server shutting down / starting), `53300` (too many connections) and
///   SQLite `BUSY`/`LOCKED` after the busy timeout → [`StoreError::Unavailable`];
/// - a value that does not decode → [`StoreError::Corrupt`];
/// - other database errors → [`StoreError::Backend`] with the server's message;
/// - anything else → [`StoreError::Other`].
pub(crate) fn map_sqlx_after(
    operation: StoreOperation,
    budget: Duration,
    ran: Duration,
    error: sqlx::Error,
) -> StoreError {
    use sqlx::Error as E;
    match error {
        E::PoolTimedOut => StoreError::Timeout {
            operation,
            after: budget,
        },
        E::Io(_) | E::Tls(_) | E::PoolClosed | E::WorkerCrashed | E::Protocol(_) => {
            StoreError::Unavailable {
                source: Box::new(error),
            }
        }
        E::ColumnDecode { .. } | E::Decode(_) => StoreError::Corrupt(CorruptRecord::new(format!(
            "a column of the idempotency row does not decode: {error}"
        ))),
        // Postgres `lock_not_available`: a `lock_timeout` ended a wait for a row (the
        // completion in the caller's transaction bounds its wait by the budget this way).
        // `query_canceled`: a `statement_timeout` (which an application or a DBA may set on
        // the role, the database or the connection) or a cancel request ended the statement.
        // Both are waits cut short, not a wrong statement: a retry may succeed, so they are
        // timeouts (transient), not `Backend` (which the engine does not retry).
        E::Database(db) if is_timeout(db.code().as_deref()) => {
            tracing::warn!(
                %operation,
                sqlstate = db.code().as_deref().unwrap_or_default(),
                ran_ms = ran.as_millis() as u64,
                budget_ms = budget.as_millis() as u64,
                message = db.message(),
                "the database ended the statement before the store's budget \
                 (statement_timeout, lock_timeout or a cancel request): answered as a timeout"
            );
            StoreError::Timeout {
                operation,
                after: ran,
            }
        }
        E::Database(db) => {
            if is_unavailable(db.code().as_deref()) {
                StoreError::Unavailable {
                    source: Box::new(E::Database(db)),
                }
            } else {
                StoreError::Backend {
                    source: Box::new(sqlx::Error::Database(db)),
                }
            }
        }
        other => StoreError::Other {
            source: Box::new(other),
        },
    }
}

/// SQLSTATE codes (Postgres) of a statement ended because it waited or ran too long:
/// `55P03` (`lock_not_available`, after `lock_timeout`) and `57014` (`query_canceled`, after
/// `statement_timeout` or a cancel request).
fn is_timeout(code: Option<&str>) -> bool {
    matches!(code, Some("55P03" | "57014"))
}

/// SQLSTATE codes (Postgres) and primary result codes (SQLite, as decimal text) that mean "the
/// database cannot serve us now" rather than "the statement is wrong".
fn is_unavailable(code: Option<&str>) -> bool {
    match code {
        Some(code) => {
            code.starts_with("08")
                || matches!(code, "57P01" | "57P02" | "57P03" | "53300" | "53000")
                // SQLite: SQLITE_BUSY (5), SQLITE_LOCKED (6) and their extended codes
                // (code & 0xff), after the busy timeout has run out.
                || code.parse::<u32>().is_ok_and(|c| matches!(c & 0xff, 5 | 6))
        }
        None => false,
    }
}

/// Run `call` under the store's own time budget.
pub(crate) async fn timed<T>(
    operation: StoreOperation,
    budget: Duration,
    call: impl Future<Output = Result<T, sqlx::Error>>,
) -> Result<T, StoreError> {
    let started = tokio::time::Instant::now();
    match tokio::time::timeout(budget, call).await {
        Ok(result) => result.map_err(|e| map_sqlx_after(operation, budget, started.elapsed(), e)),
        Err(_) => Err(StoreError::Timeout {
            operation,
            after: budget,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every message reads as one sentence: no run of spaces left by a broken line
    /// continuation in the source.
    #[test]
    fn conflict_messages_have_no_runs_of_spaces() {
        let io = || sqlx::Error::Io(std::io::Error::other("x"));
        let messages = [
            TransactionConflict::StaleSnapshot { isolation: None }.to_string(),
            TransactionConflict::StaleSnapshot {
                isolation: Some("repeatable read".into()),
            }
            .to_string(),
            TransactionConflict::SerializationFailure {
                code: "40001".into(),
                source: io(),
            }
            .to_string(),
            TransactionConflict::BusySnapshot { source: io() }.to_string(),
        ];
        for message in messages {
            assert!(!message.contains("  "), "{message:?}");
            assert!(message.contains("BEGIN"), "{message:?}");
        }
    }

    #[test]
    fn lock_and_statement_timeouts_are_timeouts() {
        assert!(is_timeout(Some("55P03")));
        assert!(is_timeout(Some("57014")));
        assert!(!is_timeout(Some("57P01"))); // admin shutdown: unavailable
        assert!(!is_unavailable(Some("57014")));
        assert!(!is_timeout(Some("42P01")));
        assert!(!is_timeout(None));
    }

    #[test]
    fn unavailable_codes() {
        assert!(is_unavailable(Some("08006")));
        assert!(is_unavailable(Some("57P01")));
        assert!(is_unavailable(Some("5")));
        assert!(is_unavailable(Some("517"))); // SQLITE_BUSY_SNAPSHOT
        assert!(!is_unavailable(Some("42P01")));
        assert!(!is_unavailable(Some("19"))); // SQLITE_CONSTRAINT
        assert!(!is_unavailable(None));
    }

    #[test]
    fn pool_timeout_is_a_timeout() {
        let mapped = map_sqlx(
            StoreOperation::Get,
            Duration::from_secs(1),
            sqlx::Error::PoolTimedOut,
        );
        assert!(matches!(
            mapped,
            StoreError::Timeout {
                operation: StoreOperation::Get,
                ..
            }
        ));
        assert!(matches!(
            map_sqlx(
                StoreOperation::Get,
                Duration::from_secs(1),
                sqlx::Error::PoolClosed
            ),
            StoreError::Unavailable { .. }
        ));
    }
}
