//! [`PostgresStore`]: the records table on Postgres, every time comparison on the database's
//! `clock_timestamp()`.
//!
//! Every built-in the statements use is named so that the connection's `search_path` cannot
//! replace it: functions `pg_catalog.name(…)`, types `pg_catalog.type`, operators
//! `OPERATOR(pg_catalog.=)` ([`op`]). See [`op`] for why.

use idempotency_core::StoreOperation;
use std::sync::Arc;
use std::time::Duration;

use idempotency_core::{
    Claim, Completed, Fenced, Guard, IdempotencyError, IdempotencyStore, InProgress, LeaseToken,
    PendingCompletion, Record, StoreError, StoreKey, StoredOutcome, Waited,
};
use sqlx::postgres::{PgConnection, PgPool, PgQueryResult, PgRow};
use sqlx::{Executor, Postgres, Row as _};

use crate::error::timed;
use crate::pg_notify::{Notifier, flag_waiter_sql, notify_sql, wake_channel};
use crate::row::COLUMNS;
use crate::shared::{Dialect, SharedStore, Written};
use crate::table::{DEFAULT_TABLE, Table};
use crate::{
    DEFAULT_OPERATION_TIMEOUT, SqlStatements, SqlStoreError, TransactionConflict, duration_micros,
};
use op::{CONCAT, EQ, GT, LE, LT, MINUS, PLUS, TIMES};

type Base = SharedStore<Postgres>;

/// The built-in operators the statements use, written `OPERATOR(pg_catalog.op)` so that no
/// operator of the same name in another schema can take their place.
///
/// Postgres looks up an unqualified function, type **or operator** through `search_path`, and
/// `pg_catalog` is searched first only when the path does not list it: a schema listed before
/// it (`SET search_path = evil, pg_catalog`, as a role's or database's setting or the
/// application's connection option) is searched first, so its `=(text, text)` or
/// `>(timestamptz, timestamptz)` would decide which row a claim finds, whether a lease is
/// live, whether a token passes the fence and what a purge deletes. See `search_path`
/// (<https://www.postgresql.org/docs/current/runtime-config-client.html#GUC-SEARCH-PATH>),
/// "The Schema Search Path" and "Secure Schema Usage Patterns"
/// (<https://www.postgresql.org/docs/current/ddl-schemas.html#DDL-SCHEMAS-PATH>, where
/// `OPERATOR(pg_catalog.+)` is the qualified form, and `#DDL-SCHEMAS-PATTERNS`), and CREATE
/// FUNCTION's "Writing SECURITY DEFINER Functions Safely"
/// (<https://www.postgresql.org/docs/current/sql-createfunction.html#SQL-CREATEFUNCTION-SECURITY>).
/// Functions are written `pg_catalog.name(…)` and types `pg_catalog.type` for the same reason;
/// syntax that Postgres itself resolves in `pg_catalog` (`EXTRACT`, `EXISTS`, `IS NULL`, `CASE
/// WHEN`, `COALESCE`) is left as it is, and `IN (subquery)`, which looks `=` up, is written
/// `OPERATOR(pg_catalog.=) ANY (…)`.
///
/// `OPERATOR(…)` has the precedence of "any other operator" whatever it names (above `=`,
/// `<`, `>` and below `*`, `+`: "Operator Precedence",
/// <https://www.postgresql.org/docs/current/sql-syntax-lexical.html#SQL-PRECEDENCE>): an
/// operand that is itself an operation is parenthesised (`t + (x * y)`, `(e * 1000) > 0`).
/// The operators are the very ones the bare names resolve to without a hostile schema, so
/// plans and costs do not change; the names are resolved when a statement is prepared.
/// Assignments (`SET col = …`) are syntax, not operators. SQLite has no `search_path`: its
/// statements are unchanged.
pub(crate) mod op {
    /// `=`.
    pub(crate) const EQ: &str = "OPERATOR(pg_catalog.=)";
    /// `>`.
    pub(crate) const GT: &str = "OPERATOR(pg_catalog.>)";
    /// `<`.
    pub(crate) const LT: &str = "OPERATOR(pg_catalog.<)";
    /// `<=`.
    pub(crate) const LE: &str = "OPERATOR(pg_catalog.<=)";
    /// `+`.
    pub(crate) const PLUS: &str = "OPERATOR(pg_catalog.+)";
    /// `-`.
    pub(crate) const MINUS: &str = "OPERATOR(pg_catalog.-)";
    /// `*`.
    pub(crate) const TIMES: &str = "OPERATOR(pg_catalog.*)";
    /// `||`.
    pub(crate) const CONCAT: &str = "OPERATOR(pg_catalog.||)";
}

/// An idempotency store in a Postgres table, on the application's own [`PgPool`].
///
/// Cheap to clone (an `Arc`). Build it with [`PostgresStore::builder`]; the table must exist
/// (run [`PostgresStoreBuilder::migrate`] or apply the SQL in the crate docs). See the crate docs
/// for the statements and for completing a claim inside the application's transaction
/// ([`PostgresStore::complete_in`]).
#[derive(Debug, Clone)]
pub struct PostgresStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// The pool, table, time budget and statements.
    base: Base,
    /// The wake-up listener (`None` when waking waiters was turned off).
    notifier: Option<Notifier>,
    /// Marks the in-progress row `($1 key, $2 token)` as waited on
    /// (`pg_notify::flag_waiter_sql`).
    flag_waiter: String,
    /// `complete` for the caller's transaction ([`complete_in_transaction`]).
    complete_in_tx: String,
}

/// The completion in the caller's transaction: `complete` that restores the transaction's
/// `lock_timeout` (`$8`, as [`bound_lock_wait_sql`] found it) and fails when it did not apply.
///
/// **Not applied → error**: when the completion matched nothing, the statement itself fails
/// (a cast of [`NOT_APPLIED`] and the transaction's isolation level to `int`, SQLSTATE
/// `22P02`: plain SQL, no PL/pgSQL), so the transaction is aborted even when nobody reads the
/// answer any more (a statement that ends after the caller's timeout, or after its future was
/// dropped). A handler that ignored the error and commits gets a rollback.
fn complete_in_transaction(complete: &str, woken: bool) -> String {
    let answer_at = complete.find(" SELECT EXISTS (SELECT 1 FROM done)");
    debug_assert!(complete.starts_with("WITH done AS (") && answer_at.is_some());
    let (head, answer) = complete.split_at(answer_at.unwrap_or(complete.len()));
    let columns = if woken { "applied, woken" } else { "applied" };
    // `answer` reads `done`, so the columns below come after the UPDATE; the failing cast
    // depends on the row, so the planner cannot fold it.
    format!(
        "{head}, answer ({columns}) AS MATERIALIZED ({answer}) \
         SELECT answer.*, \
         CASE WHEN answer.applied THEN 0 ELSE ('{NOT_APPLIED}' {CONCAT} \
         pg_catalog.current_setting('transaction_isolation') {CONCAT} ')')::pg_catalog.int4 END \
         AS aborts_unless_applied, \
         pg_catalog.set_config('lock_timeout', $8, true) AS lock_timeout_restored \
         FROM answer"
    )
}

/// The statement run in the caller's transaction before the completion: sets `lock_timeout`
/// to `bound_ms` milliseconds, or keeps the transaction's own when that is shorter (and not
/// `0`, no bound), local to the transaction (`set_config(…, true)`); returns the setting as it
/// was, which the completion restores. It names no table, so it waits for no lock.
///
/// Set in a statement of its own, the bound covers every lock the completion waits for: the
/// row (an operator's `DELETE`, a renewal) and the table (an operator's `LOCK TABLE`,
/// `TRUNCATE`, `VACUUM FULL`, a migration), which Postgres takes while parsing and binding,
/// before any part of a statement runs. A tenth under the engine's store timeout, the wait
/// ends on the server first with SQLSTATE `55P03`, which aborts the transaction
/// (<https://www.postgresql.org/docs/current/runtime-config-client.html#GUC-LOCK-TIMEOUT>).
/// `bound_ms` is this crate's number ([`lock_wait_bound`]), written into the text: the simple
/// query protocol, one round trip.
fn bound_lock_wait_sql(bound_ms: &str) -> String {
    debug_assert!(bound_ms.bytes().all(|b| b.is_ascii_digit()));
    // `was.v` in milliseconds: the setting's text (`0`, `250ms`, `90s`, `2min`, `3h`, `2d`)
    // read as an interval.
    let was_ms = format!("(extract(epoch FROM was.v::pg_catalog.interval) {TIMES} 1000)");
    format!(
        "WITH was AS MATERIALIZED (SELECT pg_catalog.current_setting('lock_timeout') AS v) \
         SELECT was.v, pg_catalog.set_config('lock_timeout', \
         CASE WHEN {was_ms} {GT} 0 AND {was_ms} {LT} {bound_ms} THEN was.v \
         ELSE '{bound_ms}ms' END, true) FROM was"
    )
}

/// The start of the text whose cast to `int` fails the completion in the caller's
/// transaction when it did not apply ([`complete_in_transaction`]); the transaction's
/// isolation level and `)` follow it.
const NOT_APPLIED: &str = "idempotency: the claim could not be completed in this transaction, \
     so the transaction is aborted: its side effect must not commit without the idempotency \
     record; roll back (transaction_isolation: ";

/// Whether `error` is the completion in the caller's transaction failing because it did not
/// apply ([`NOT_APPLIED`]); then the transaction's isolation level, as the statement read it.
fn not_applied_error(error: &sqlx::Error) -> Option<Option<String>> {
    let sqlx::Error::Database(db) = error else {
        return None;
    };
    if db.code().as_deref() != Some("22P02") {
        return None;
    }
    let message = db.message();
    let at = message.find(NOT_APPLIED)?;
    let rest = &message[at + NOT_APPLIED.len()..];
    Some(rest.find(')').map(|end| rest[..end].to_owned()))
}

/// How much earlier than the store timeout `budget` the server ends a completion's lock wait:
/// a tenth of it, at most 100 ms.
fn lock_wait_margin(budget: Duration) -> Duration {
    (budget / 10).min(Duration::from_millis(100))
}

/// `lock_timeout` for a completion in the caller's transaction under `budget`, in milliseconds
/// (decimal text, the statement's `$8`): a tenth (at most 100 ms) under it, so the server ends
/// the wait before the client gives up; at least 1 ms (`0` would turn the bound off).
/// Postgres's largest `lock_timeout` (`INT_MAX` milliseconds, ~24.9 days) bounds it from above:
/// a longer budget would fail the statement (SQLSTATE `22023`).
fn lock_wait_bound(budget: Duration) -> String {
    let millis = budget.saturating_sub(lock_wait_margin(budget)).as_millis();
    millis.clamp(1, i32::MAX as u128).to_string()
}

impl SqlStatements {
    /// `wake`: the notification channel, when `complete` and `release` notify waiters.
    fn postgres(t: &str, wake: Option<&str>) -> Self {
        // The claim, in one statement:
        // - `live`: a live row visible in the statement's snapshot is returned as it is, with no
        //   write and no lock (replays and in-progress answers, the hot path of retry storms);
        // - otherwise `ins` upserts, and its `DO UPDATE` always touches the conflicting row (the
        //   SET keeps every old value unless the row has expired), so its RETURNING always
        //   yields the row as it is after the statement: ours (`claimed`: our fresh random
        //   token is in it), or a live one committed concurrently, after our snapshot, which
        //   `live` could not see. (`DO UPDATE ... WHERE expired` alone would return nothing for
        //   such a row.) Concurrent inserters of one key serialise on the unique index and the
        //   row lock, and each decides on the latest row version: exactly one wins.
        // `now` is read once (a materialised CTE) so every comparison agrees.
        let keep_unless_expired = |column: &str| {
            format!(
                "{column} = CASE WHEN r.expires_at {LE} (SELECT t FROM now) \
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
            // A takeover starts without waiters (`excluded.waiters` is the default, false).
            "waiters",
        ]
        .map(keep_unless_expired)
        .join(", ");
        // Parenthesised: `OPERATOR(…)`s share one precedence (see `op`).
        let micros =
            format!("($N::pg_catalog.float8 {TIMES} '1 microsecond'::pg_catalog.interval)");
        // The fence of `complete`, `release` and `extend`: our claim.
        let held = format!("store_key {EQ} $1 AND token {EQ} $2 AND state {EQ} 'in_progress'");
        let clock = "pg_catalog.clock_timestamp()";
        Self {
            claim: format!(
                "WITH now AS MATERIALIZED (SELECT pg_catalog.clock_timestamp() AS t), \
                 live AS MATERIALIZED (SELECT {COLUMNS} FROM {t}, now \
                   WHERE store_key {EQ} $1 AND expires_at {GT} now.t), \
                 ins AS (\
                   INSERT INTO {t} AS r (store_key, state, token, fingerprint, created_at_ms, expires_at) \
                   SELECT $1, 'in_progress', $2, $3, $4, now.t {PLUS} {} FROM now \
                   WHERE NOT EXISTS (SELECT 1 FROM live) \
                   ON CONFLICT (store_key) DO UPDATE SET {assignments} \
                   RETURNING (r.token {EQ} $2) AS claimed, {COLUMNS}) \
                 SELECT false AS claimed, {COLUMNS} FROM live \
                 UNION ALL SELECT claimed, {COLUMNS} FROM ins",
                micros.replace("$N", "$5")
            ),
            // Applied when it completes our live claim, or when it finds the record already
            // completed under our token (a retried call whose reply was lost: nothing changes).
            // With waking on, the statement also notifies the key's waiters when it changed a
            // row that has some (`waiters`, set by `pg_notify::flag_waiter_sql`): `pg_notify`
            // queues the notification, delivered when the transaction commits (at once on the
            // pool, or at the caller's COMMIT for `complete_in`), and never on a rollback.
            // `count(...)` forces the call once per such row.
            complete: format!(
                "WITH done AS (\
                   UPDATE {t} SET state = 'completed', completed_at_ms = $3, content_type = $4, \
                   encoding = $5, body = $6, expires_at = {clock} {PLUS} {} \
                   WHERE {held} AND expires_at {GT} {clock} RETURNING waiters) \
                 SELECT EXISTS (SELECT 1 FROM done) OR EXISTS (SELECT 1 FROM {t} \
                   WHERE store_key {EQ} $1 AND token {EQ} $2 AND state {EQ} 'completed' \
                   AND expires_at {GT} {clock}){}",
                micros.replace("$N", "$7"),
                wake.map_or_else(String::new, |channel| format!(
                    ", (SELECT pg_catalog.count({}) FROM done WHERE done.waiters) AS woken",
                    notify_sql(channel)
                ))
            ),
            // Our own lapsed claim is deleted too (it is garbage), but reported as lost.
            release: match wake {
                None => format!("DELETE FROM {t} WHERE {held} RETURNING expires_at {GT} {clock}"),
                // One row when a row was deleted (and a notification when it had waiters).
                Some(channel) => format!(
                    "WITH gone AS (DELETE FROM {t} WHERE {held} \
                       RETURNING expires_at {GT} {clock} AS live, waiters) \
                     SELECT gone.live, woken.n FROM gone, \
                       (SELECT pg_catalog.count({}) AS n FROM gone WHERE gone.waiters) AS woken",
                    notify_sql(channel)
                ),
            },
            extend: format!(
                "UPDATE {t} SET expires_at = {clock} {PLUS} {} \
                 WHERE {held} AND expires_at {GT} {clock}",
                micros.replace("$N", "$3")
            ),
            get: format!(
                "SELECT {COLUMNS} FROM {t} WHERE store_key {EQ} $1 AND expires_at {GT} {clock}"
            ),
            delete: format!(
                "DELETE FROM {t} WHERE store_key {EQ} $1 RETURNING expires_at {GT} {clock}"
            ),
            // SKIP LOCKED: rows held by a running transaction (a completion in progress) are
            // left for the next batch instead of waited for. `= ANY (…)` is `IN (…)` with its
            // `=` named.
            purge: format!(
                "DELETE FROM {t} WHERE store_key {EQ} ANY (SELECT store_key FROM {t} \
                   WHERE expires_at {LE} {clock} LIMIT $1 FOR UPDATE SKIP LOCKED) \
                 AND expires_at {LE} {clock}"
            ),
            // `clock_timestamp()` once per row (in the subquery), so the filter and the value
            // agree.
            time_to_live: format!(
                "SELECT left_us FROM (SELECT (EXTRACT(EPOCH FROM expires_at {MINUS} {clock}) \
                 {TIMES} 1000000)::pg_catalog.int8 AS left_us FROM {t} WHERE store_key {EQ} $1) \
                 AS live WHERE left_us {GT} 0"
            ),
        }
    }
}

/// Configures and checks a [`PostgresStore`].
#[derive(Debug)]
#[must_use = "call build() or migrate()"]
pub struct PostgresStoreBuilder {
    pool: PgPool,
    table: String,
    timeout: Duration,
    wake_waiters: bool,
}

impl PostgresStoreBuilder {
    /// The records table (default `idempotency_records`); `schema.table` is accepted. Letters,
    /// digits and `_` only, at most 48 bytes per part. Used quoted, so case matters: `Records`
    /// is the table `"Records"` (as `migrate()` creates it), not the `records` an unquoted
    /// `CREATE TABLE Records` makes. Configure it the same way on every instance (see the crate
    /// docs, "Statements": the notification channel is derived from this text).
    pub fn table(mut self, name: impl Into<String>) -> Self {
        self.table = name.into();
        self
    }

    /// Each operation's time budget (default 1 s), including waiting for a pooled connection;
    /// past it the operation fails with [`StoreError::Timeout`]. Keep it at or below the
    /// engine's `store_timeout` so the store's typed error is the one reported.
    pub fn operation_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Whether duplicates waiting on an in-progress record are woken by `LISTEN`/`NOTIFY`
    /// (default `true`; see the crate docs, "Waiting duplicates"). With `false`, `complete`
    /// and `release` send no `NOTIFY`, no listener connection is opened, and waiting
    /// duplicates poll (`wait_for_change` answers `Unsupported`). Turn it off behind a pooler
    /// that does not keep sessions (PgBouncer in transaction or statement mode does not
    /// deliver notifications), or when notifying commits would contend (see the crate docs).
    /// Every instance on one table should agree: a completion by an instance that does not
    /// notify (this option off, or a version before it) leaves the waiters of the others
    /// waiting until the end of their `max_wait` (then they re-read).
    pub fn wake_waiters(mut self, wake: bool) -> Self {
        self.wake_waiters = wake;
        self
    }

    /// Check that the table exists with the expected columns, and build the store.
    ///
    /// A table named without a schema is looked up once, here, through the connection's
    /// `search_path` (`to_regclass`), and every statement of the store then names it with the
    /// schema it was found in (`"app"."idempotency_records"`): a table of the same name that
    /// later appears in a schema earlier in the path, or that another pool connection's
    /// `search_path` would find first, is never used.
    ///
    /// # Errors
    /// [`SqlStoreError::MissingTable`] / [`SqlStoreError::WrongShape`] naming the migration to
    /// run (`WrongShape` also for a relation of the name that is not a table: a materialized
    /// view, a sequence, …), [`SqlStoreError::TemporarySchema`] when the name resolves to the
    /// connection's temporary schema, [`SqlStoreError::InvalidTableName`], or
    /// [`SqlStoreError::Database`].
    pub async fn build(self) -> Result<PostgresStore, SqlStoreError> {
        let given = Table::parse(&self.table, true)?;
        let table = if given.schema.is_some() {
            given
        } else {
            match schema_of(&self.pool, &given).await? {
                Some(schema) => pinned(given, &schema)?,
                None => {
                    return Err(SqlStoreError::MissingTable {
                        table: given.name,
                        migration: crate::migrate::FIRST,
                    });
                }
            }
        };
        self.build_on(table).await
    }

    /// [`build`](Self::build) on `table`, schema-qualified when it was resolved.
    async fn build_on(self, table: Table) -> Result<PostgresStore, SqlStoreError> {
        let kind = relation_kind(&self.pool, &table).await?;
        if let Some(detail) = kind.as_deref().and_then(not_a_table) {
            return Err(SqlStoreError::WrongShape {
                table: table.name,
                detail,
                migration: crate::migrate::CURRENT,
            });
        }
        let exists = kind.is_some();
        let columns = if exists {
            Base::columns(&self.pool, &table).await?
        } else {
            Vec::new()
        };
        Base::check_shape(&table, exists, &columns)?;
        // The configured name, not the resolved one: instances of older versions on the same
        // table notify and listen on it too.
        let channel = self.wake_waiters.then(|| wake_channel(&table.name));
        let notifier = channel
            .clone()
            .map(|channel| Notifier::new(&self.pool, channel, self.timeout));
        let sql = SqlStatements::postgres(&table.quoted, channel.as_deref());
        Ok(PostgresStore {
            inner: Arc::new(Inner {
                flag_waiter: flag_waiter_sql(&table.quoted),
                complete_in_tx: complete_in_transaction(&sql.complete, channel.is_some()),
                base: Base {
                    sql,
                    pool: self.pool,
                    table,
                    timeout: self.timeout,
                    detached: Arc::default(),
                },
                notifier,
            }),
        })
    }

    /// Apply the migrations this version knows and has not applied yet (recorded in
    /// `<table>_migrations`), then [`build`](Self::build). Safe to run at every start and from
    /// several instances at once (a transaction-scoped advisory lock serialises them, also an
    /// instance that names the table `schema.table` with one that names it without a schema).
    ///
    /// A table named without a schema is resolved once, under the lock: where the connection's
    /// `search_path` finds an existing table of that name (`to_regclass`; an install made by
    /// an older version, in whichever schema of the path it is), else in the schema tables are
    /// created in (`current_schema()`, the first schema of the path that exists). The
    /// migrations, the bookkeeping table (`<table>_migrations`, in the same schema) and every
    /// statement of the store then name that schema.
    ///
    /// # Errors
    /// As [`build`](Self::build); [`SqlStoreError::NotMigratable`] when the table exists with a
    /// shape the migrations cannot repair, or a relation of the name that is not a table
    /// (checked before any migration runs or is recorded);
    /// [`SqlStoreError::NoSchema`] when the table is named without a schema, does not exist, and
    /// no schema of the connection's `search_path` exists; [`SqlStoreError::TemporarySchema`]
    /// when it resolves to the connection's temporary schema; [`SqlStoreError::Database`] when a
    /// migration fails (nothing of it is applied: each run is one transaction).
    pub async fn migrate(self) -> Result<PostgresStore, SqlStoreError> {
        let given = Table::parse(&self.table, true)?;
        let mut tx = self.pool.begin().await?;
        // The configured name: instances of older versions take the same lock.
        sqlx::query(MIGRATION_LOCK)
            .bind(format!("idempotency-sql:{}", given.name))
            .execute(&mut *tx)
            .await?;
        let table = if given.schema.is_some() {
            given
        } else {
            let schema = match schema_of(&mut *tx, &given).await? {
                Some(schema) => Some(schema),
                None => {
                    sqlx::query_scalar::<_, Option<String>>(CURRENT_SCHEMA)
                        .fetch_one(&mut *tx)
                        .await?
                }
            };
            let table = match schema {
                Some(schema) => pinned(given, &schema)?,
                None => return Err(SqlStoreError::NoSchema { table: given.name }),
            };
            // Also the lock of an instance that names the same table with its schema
            // (`schema.table`), so that the two serialise too. Taken second, and that instance
            // takes only this one: no deadlock.
            if let Some(schema) = &table.schema {
                sqlx::query(MIGRATION_LOCK)
                    .bind(format!("idempotency-sql:{schema}.{}", table.bare))
                    .execute(&mut *tx)
                    .await?;
            }
            table
        };
        let kind = relation_kind(&mut *tx, &table).await?;
        if let Some(detail) = kind.as_deref().and_then(not_a_table) {
            return Err(SqlStoreError::NotMigratable {
                table: table.name,
                detail,
                migration: crate::migrate::CURRENT,
            });
        }
        Base::migrate_in(&mut tx, &table).await?;
        tx.commit().await?;
        self.build_on(table).await
    }
}

/// `table` (named without a schema) pinned to `schema`, where it resolved; refused when that is
/// the connection's own temporary schema (`pg_temp_N`: a temporary table of the name on the
/// connection, or `pg_temp` first in its `search_path`), which no other connection of the pool
/// can use. (No other schema's name can start with `pg_`: Postgres reserves the prefix.)
fn pinned(given: Table, schema: &str) -> Result<Table, SqlStoreError> {
    if schema.starts_with("pg_temp_") {
        return Err(SqlStoreError::TemporarySchema {
            table: given.name,
            schema: schema.to_owned(),
        });
    }
    Ok(given.in_schema(schema))
}

/// The kind of the relation `table` names (`pg_class.relkind`: `r` a table, `p` a
/// partitioned table, `v` a view, …); `None` when no relation of that name exists.
async fn relation_kind<'e, E: 'e + Executor<'e, Database = Postgres>>(
    executor: E,
    table: &Table,
) -> Result<Option<String>, sqlx::Error> {
    sqlx::query_scalar(RELATION_KIND)
        .bind(&table.quoted)
        .fetch_optional(executor)
        .await
}

/// Why a relation of kind `kind` cannot hold the records (`None`: a table, a partitioned table,
/// or a view, which Postgres can update through when it is a simple one over the records
/// table). A materialized view, a sequence, an index or a composite type of the name used to
/// pass `build()` when its columns matched, and every statement failed afterwards.
fn not_a_table(kind: &str) -> Option<String> {
    let what = match kind {
        "r" | "p" | "v" => return None,
        "m" => "a materialized view",
        "S" => "a sequence",
        "i" | "I" => "an index",
        "c" => "a composite type",
        "f" => "a foreign table (no `ON CONFLICT … DO UPDATE` on it)",
        "t" => "a TOAST table",
        other => return Some(format!("it is a relation of kind `{other}`, not a table")),
    };
    Some(format!("it is {what}, not a table"))
}

/// The schema in which `table` (named without a schema) resolves through the connection's
/// `search_path` ([`SCHEMA_OF`]); `None` when no table of that name is found.
async fn schema_of<'e, E: 'e + Executor<'e, Database = Postgres>>(
    executor: E,
    table: &Table,
) -> Result<Option<String>, sqlx::Error> {
    sqlx::query_scalar(SCHEMA_OF)
        .bind(&table.quoted)
        .fetch_optional(executor)
        .await
}

// Every built-in function the store calls is written `pg_catalog.name(...)`, every type it
// casts to `pg_catalog.type` (`$5::pg_catalog.float8`), every operator
// `OPERATOR(pg_catalog.=)` (see `op`), and the catalog tables `pg_catalog.pg_attribute` etc.:
// a function or operator of the same name and arguments, or a type or domain of the same
// name, in a schema earlier in the connection's `search_path` (a role's or database's
// setting, or an application's `search_path` option) would otherwise be used instead, e.g. a
// `clock_timestamp()` or a `>` that never lets a lease expire, an `=` that matches every key
// or token, or a `float8` domain whose check fails every claim. The records table is named
// with its schema too: as configured (`schema.table`), or, named without one, with the schema
// it resolved to once, at `build()` / `migrate()` ([`SCHEMA_OF`], [`CURRENT_SCHEMA`]), so a
// table of the same name in a schema earlier in the path (created later, or found first by
// another pool connection's `search_path`) never takes its claims, completions or purges.
// The constants below cannot use `op`'s names (no `format!` in a `const`): they spell
// `OPERATOR(pg_catalog.…)` out.

/// The kind (`pg_class.relkind`) of the relation `$1` (quoted name); no row when none exists.
const RELATION_KIND: &str = "SELECT c.relkind::pg_catalog.text FROM pg_catalog.pg_class c \
     WHERE c.oid OPERATOR(pg_catalog.=) pg_catalog.to_regclass($1)";

/// The schema (unquoted, as the catalog holds it) of the table `$1` (quoted name, without a
/// schema) as the connection's `search_path` resolves it; no row when none is found.
const SCHEMA_OF: &str = "SELECT n.nspname::pg_catalog.text \
     FROM pg_catalog.pg_class c \
     JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace \
     WHERE c.oid OPERATOR(pg_catalog.=) pg_catalog.to_regclass($1)";

/// The schema a `CREATE TABLE` without a schema creates its table in: the first schema of
/// `search_path` that exists; NULL when none does.
const CURRENT_SCHEMA: &str = "SELECT pg_catalog.current_schema()::pg_catalog.text";

/// The transaction-scoped advisory lock that serialises `migrate()` runs on one table (`$1`:
/// `idempotency-sql:<table>`, the name as configured; a name configured without a schema also
/// takes `idempotency-sql:<schema>.<table>` once resolved, the lock of an instance configured
/// with the schema).
const MIGRATION_LOCK: &str = "SELECT pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtext($1))";

/// The columns of the table `$1` (quoted name) and their types; none when it does not exist.
///
/// A built-in type is named as `format_type` names it, without the `pg_catalog.` it adds when
/// a type of the same name in a schema earlier in `search_path` hides the built-in one
/// (`text`, not `pg_catalog.text`); any other type is named with its schema (`evil.text`), so
/// a column of a look-alike type never passes for the built-in one.
const COLUMNS_OF: &str = "SELECT a.attname::pg_catalog.text, \
     CASE WHEN n.nspname OPERATOR(pg_catalog.=) 'pg_catalog' \
     THEN pg_catalog.replace(pg_catalog.format_type(a.atttypid, a.atttypmod), 'pg_catalog.', '') \
     ELSE pg_catalog.quote_ident(n.nspname) OPERATOR(pg_catalog.||) '.' \
     OPERATOR(pg_catalog.||) pg_catalog.quote_ident(ty.typname) END \
     FROM pg_catalog.pg_attribute a \
     JOIN pg_catalog.pg_type ty ON ty.oid OPERATOR(pg_catalog.=) a.atttypid \
     JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) ty.typnamespace \
     WHERE a.attrelid OPERATOR(pg_catalog.=) pg_catalog.to_regclass($1) \
     AND a.attnum OPERATOR(pg_catalog.>) 0 AND NOT a.attisdropped";

impl Dialect for Postgres {
    const POSTGRES: bool = true;
    const PARAMETER: &'static str = "$";
    const COLUMNS_OF: &'static str = COLUMNS_OF;
    const COMPLETE_RETURNS_APPLIED: bool = true;

    fn columns_of(table: &Table) -> &str {
        &table.quoted
    }

    fn units(duration: Duration) -> i64 {
        duration_micros(duration)
    }

    fn from_units(units: u64) -> Duration {
        Duration::from_micros(units)
    }

    fn rows_affected(done: &PgQueryResult) -> u64 {
        done.rows_affected()
    }

    fn encoding(row: &PgRow) -> Result<Option<i64>, sqlx::Error> {
        Ok(row.try_get::<Option<i16>, _>("encoding")?.map(i64::from))
    }
}

/// Raised in the caller's transaction after `complete_in` could not complete the claim there
/// ([`PostgresStore::abort_transaction`]): Postgres then refuses every later statement of the
/// transaction (SQLSTATE `25P02`) and answers `COMMIT` with `ROLLBACK`.
const ABORT_TRANSACTION: &str = "DO $$ BEGIN RAISE EXCEPTION USING \
     ERRCODE = 'P0001', \
     MESSAGE = 'idempotency: the claim could not be completed in this transaction, so it is \
     aborted: its side effect must not commit without the idempotency record', \
     HINT = 'roll back; see the error complete_in returned'; END $$";

/// Whether the completion statement in the caller's transaction already aborted it.
enum Aborted {
    /// It failed because it did not apply ([`not_applied_error`]); the isolation level it read.
    Yes { isolation: Option<String> },
    /// It answered "not applied" without failing.
    No,
}

/// SQLSTATE `40001` (serialization failure) or `40P01` (deadlock detected): the caller's
/// transaction is aborted and must be retried from the start.
fn serialization_failure(error: &sqlx::Error) -> Option<&'static str> {
    match error {
        sqlx::Error::Database(db) => match db.code().as_deref() {
            Some("40001") => Some("40001"),
            Some("40P01") => Some("40P01"),
            _ => None,
        },
        _ => None,
    }
}

impl PostgresStore {
    /// Start configuring a store on `pool` (the application's own pool).
    pub fn builder(pool: PgPool) -> PostgresStoreBuilder {
        PostgresStoreBuilder {
            pool,
            table: DEFAULT_TABLE.to_owned(),
            timeout: DEFAULT_OPERATION_TIMEOUT,
            wake_waiters: true,
        }
    }

    /// A store on the default table, checked to exist.
    ///
    /// # Errors
    /// As [`PostgresStoreBuilder::build`].
    pub async fn new(pool: PgPool) -> Result<Self, SqlStoreError> {
        Self::builder(pool).build().await
    }

    /// The pool.
    pub fn pool(&self) -> &PgPool {
        &self.inner.base.pool
    }

    /// The records table's name, as configured.
    pub fn table(&self) -> &str {
        &self.inner.base.table.name
    }

    /// The time budget of each operation, including the wait for a pooled connection: as set
    /// by [`PostgresStoreBuilder::operation_timeout`], else [`DEFAULT_OPERATION_TIMEOUT`]
    /// (1 s).
    pub fn operation_timeout(&self) -> Duration {
        self.inner.base.timeout
    }

    /// The records table as the store's statements name it: schema-qualified and quoted
    /// (`"app"."idempotency_records"`), with the schema it was configured with or, for a name
    /// given without one, resolved to when the store was built. SQL of the application's own
    /// that reads the store's table should splice this, not [`table`](Self::table).
    pub fn quoted_table(&self) -> &str {
        &self.inner.base.table.quoted
    }

    /// Whether waiting duplicates are woken by `LISTEN`/`NOTIFY` (see
    /// [`PostgresStoreBuilder::wake_waiters`]).
    pub fn notifies_waiters(&self) -> bool {
        self.inner.notifier.is_some()
    }

    /// The notification channel `complete` and `release` notify (`<table>_wake`), when waking
    /// is on.
    pub fn wake_channel(&self) -> Option<&str> {
        self.inner.notifier.as_ref().map(Notifier::channel)
    }

    /// Whether the wake-up listener connection is up (`false` before the first wait: it is
    /// opened lazily), and how many listener connections were opened (1 + reconnections).
    pub fn wake_up_listener(&self) -> (bool, u64) {
        self.inner
            .notifier
            .as_ref()
            .map_or((false, 0), |n| (n.is_connected(), n.connections()))
    }

    /// Keys on which a duplicate in this process currently waits for a wake-up.
    pub fn waited_keys(&self) -> usize {
        self.inner
            .notifier
            .as_ref()
            .map_or(0, Notifier::waited_keys)
    }

    /// The exact SQL of each primitive, for this table (what a DBA reviews, and what the
    /// `raw-postgres` benchmark baseline sends).
    pub fn statements(&self) -> &SqlStatements {
        &self.inner.base.sql
    }

    /// Delete up to `batch` expired rows (lapsed claims and records past their retention) and
    /// return how many went. One short statement; rows locked by a running transaction are
    /// skipped. Call it in a loop until it returns less than `batch`, or use
    /// [`crate::PurgeTask`].
    ///
    /// # Errors
    /// [`StoreError`] as for every operation.
    pub async fn purge_expired(&self, batch: u32) -> Result<u64, StoreError> {
        self.inner.base.purge(batch).await
    }

    /// Complete `guard`'s claim with `outcome` **inside the caller's transaction** `conn` (a
    /// `&mut *tx` of `pool.begin()`): the fenced UPDATE runs there, so the side effect and the
    /// completed record commit together or not at all.
    ///
    /// Then commit and call [`PendingCompletion::committed`]; on a rollback, call
    /// [`PendingCompletion::release`] (or drop it: it releases in the background) so a retry
    /// runs again. The engine's `store_timeout` bounds the statement.
    ///
    /// When the UPDATE does not apply (every error below but a failed statement or a timeout),
    /// the store aborts the transaction before answering: Postgres refuses its later
    /// statements and answers `COMMIT` with a rollback, so the side effect never commits
    /// without the record, even when the error is ignored.
    ///
    /// # Errors
    /// - [`IdempotencyError::LeaseLost`]: the claim lapsed or was taken over; **roll back**, so
    ///   this stale attempt's side effect is undone too;
    /// - [`IdempotencyError::TransactionConflict`]: the claim is still this attempt's, but the
    ///   transaction cannot complete it: its snapshot predates the claim or a lease renewal
    ///   (`REPEATABLE READ` / `SERIALIZABLE`; run it at `READ COMMITTED`, opened after the
    ///   claim), or the UPDATE failed with SQLSTATE `40001`/`40P01`. The source is a
    ///   [`TransactionConflict`]; **roll back**; the claim is released so a retry runs at once;
    /// - [`IdempotencyError::OutcomeTooLarge`]: nothing written, the claim was released;
    /// - [`IdempotencyError::StoreUnavailable`] / [`IdempotencyError::CorruptRecord`]: the
    ///   statement failed (or, after an UPDATE that matched nothing, the re-read of the claim on
    ///   the pool did); roll back (the claim is released in the background).
    pub async fn complete_in<S: IdempotencyStore + 'static>(
        &self,
        conn: &mut PgConnection,
        guard: Guard<S>,
        outcome: StoredOutcome,
    ) -> Result<PendingCompletion<S>, IdempotencyError> {
        let pending = guard.prepare(outcome).await?;
        self.write_in(conn, pending).await
    }

    /// The fenced write of a [`PendingCompletion`] (from [`Guard::prepare`]) in the caller's
    /// transaction; [`complete_in`](Self::complete_in) is `prepare` + this.
    ///
    /// # Errors
    /// As [`complete_in`](Self::complete_in).
    pub async fn write_in<S: IdempotencyStore + 'static>(
        &self,
        conn: &mut PgConnection,
        pending: PendingCompletion<S>,
    ) -> Result<PendingCompletion<S>, IdempotencyError> {
        let Some(parts) = pending.parts() else {
            return Ok(pending);
        };
        let (key, token, budget) = (parts.key.clone(), *parts.token, parts.timeout);
        let started = tokio::time::Instant::now();
        let timed_out = || -> IdempotencyError {
            StoreError::Timeout {
                operation: StoreOperation::Complete,
                after: budget,
            }
            .into()
        };
        let bound = bound_lock_wait_sql(&lock_wait_bound(budget));
        let was =
            match tokio::time::timeout(budget, Executor::fetch_one(&mut *conn, bound.as_str()))
                .await
            {
                Ok(Ok(row)) => row
                    .try_get::<String, _>(0)
                    .map_err(|e| crate::error::map_sqlx(StoreOperation::Complete, budget, e))?,
                // The transaction cannot run statements (it failed before, say): nothing to abort.
                Ok(Err(error)) => {
                    let ran = started.elapsed();
                    return Err(crate::error::map_sqlx_after(
                        StoreOperation::Complete,
                        budget,
                        ran,
                        error,
                    )
                    .into());
                }
                Err(_) => {
                    self.abort_after_timeout(conn, budget).await;
                    return Err(timed_out());
                }
            };
        let left = budget.saturating_sub(started.elapsed());
        let written = match Base::write_in(
            &self.inner.complete_in_tx,
            &mut *conn,
            &parts,
            left,
            Some(&was),
        )
        .await
        {
            Ok(written) => written,
            Err(_) => {
                // Parsing or binding may still wait for a lock, and then nothing would run
                // the statement that fails when it does not apply.
                self.abort_after_timeout(conn, budget).await;
                return Err(timed_out());
            }
        };
        // On every `Err` below (and on a timeout, above), dropping `pending` releases the claim
        // in the background once the caller's transaction lets go of the row (the release is
        // fenced on our token, so it changes nothing when the claim is not ours any more).
        match written {
            Written::Applied => Ok(pending),
            // The statement fails when it did not apply (so this is not expected): read the
            // isolation level on the connection, then abort the transaction.
            Written::NotApplied => {
                self.not_applied(conn, pending, &key, &token, Aborted::No)
                    .await
            }
            Written::Failed(error) => match not_applied_error(&error) {
                Some(isolation) => {
                    self.not_applied(conn, pending, &key, &token, Aborted::Yes { isolation })
                        .await
                }
                None => {
                    let ran = started.elapsed();
                    self.failed(pending, &key, &token, (budget, ran), error)
                        .await
                }
            },
        }
    }

    /// The completion statement in the caller's transaction failed for another reason than
    /// not applying: a serialization failure or deadlock is told apart from a lost claim
    /// ([`serialization_failed`](Self::serialization_failed)); any other error is the store's
    /// (`budget`: the store's time budget; `ran`: how long the completion had run).
    async fn failed<S: IdempotencyStore + 'static>(
        &self,
        pending: PendingCompletion<S>,
        key: &StoreKey,
        token: &LeaseToken,
        (budget, ran): (Duration, Duration),
        error: sqlx::Error,
    ) -> Result<PendingCompletion<S>, IdempotencyError> {
        match serialization_failure(&error) {
            Some(code) => {
                self.serialization_failed(pending, key, token, code, error)
                    .await
            }
            None => Err(
                crate::error::map_sqlx_after(StoreOperation::Complete, budget, ran, error).into(),
            ),
        }
    }

    /// The fenced UPDATE in the caller's transaction matched nothing: tell a lost claim from a
    /// transaction that cannot see it. Only this failure path pays the extra round trips.
    ///
    /// The claim is read on the pool, in a fresh snapshot. Still in progress under our token
    /// and live means the lease was not lost (a lapsed claim never comes back under the same
    /// token: `extend` is fenced on the lease being live), so the caller's snapshot is older
    /// than the row: a `REPEATABLE READ` / `SERIALIZABLE` transaction whose first statement ran
    /// before the claim or before a lease renewal committed. That is a
    /// [`TransactionConflict::StaleSnapshot`], and the claim is released so a retry runs at
    /// once (answering `LeaseLost` and keeping the claim would block the key for the rest of
    /// the lease, and every retry would fail the same way). The isolation level, read on the
    /// caller's connection (still usable: nothing failed in it), goes into the message.
    ///
    /// Whatever the answer, the caller's transaction is uncommittable: the completion
    /// statement failed ([`Aborted::Yes`], the usual case), or it is made so now
    /// ([`abort_transaction`](Self::abort_transaction)). Its side effect must not commit
    /// without the record, whether another attempt holds the key or the claim is released.
    async fn not_applied<S: IdempotencyStore + 'static>(
        &self,
        conn: &mut PgConnection,
        pending: PendingCompletion<S>,
        key: &StoreKey,
        token: &LeaseToken,
        aborted: Aborted,
    ) -> Result<PendingCompletion<S>, IdempotencyError> {
        let answer = match self.get(key).await {
            Ok(Some(Record::InProgress(claim))) if claim.token == *token => {
                let isolation = match &aborted {
                    Aborted::Yes { isolation } => isolation.clone(),
                    Aborted::No => timed(
                        StoreOperation::Complete,
                        self.inner.base.timeout,
                        sqlx::query_scalar::<_, String>(
                            "SELECT pg_catalog.current_setting('transaction_isolation')",
                        )
                        .fetch_one(&mut *conn),
                    )
                    .await
                    .ok(),
                };
                tracing::warn!(key = %key, isolation = isolation.as_deref().unwrap_or("unknown"), "the caller's transaction does not see the live claim; releasing it");
                drop(pending);
                Err(TransactionConflict::StaleSnapshot { isolation }.into_error())
            }
            Ok(_) => Err(pending.lease_lost()),
            // Cannot tell (or the row is not a record): give the claim up if it is still ours.
            Err(error) => Err(error.into()),
        };
        if matches!(aborted, Aborted::No) {
            self.abort_transaction(conn).await;
        }
        answer
    }

    /// The fenced UPDATE failed with SQLSTATE `40001`/`40P01` (the transaction is aborted):
    /// the row version in the caller's snapshot was changed or deleted after the snapshot was
    /// taken. Tell a lease renewal (the claim, read on the pool, is still live under our
    /// token: [`TransactionConflict::SerializationFailure`], and the claim is released so a
    /// retry runs at once) from a lost claim (deleted, lapsed or taken over: `LeaseLost`, as
    /// at `READ COMMITTED`). When the claim cannot be read, the conflict is reported.
    async fn serialization_failed<S: IdempotencyStore + 'static>(
        &self,
        pending: PendingCompletion<S>,
        key: &StoreKey,
        token: &LeaseToken,
        code: &'static str,
        error: sqlx::Error,
    ) -> Result<PendingCompletion<S>, IdempotencyError> {
        match self.get(key).await {
            Ok(Some(Record::InProgress(claim))) if claim.token != *token => {
                Err(pending.lease_lost())
            }
            Ok(None | Some(Record::Completed(_))) => Err(pending.lease_lost()),
            _ => {
                tracing::warn!(key = %key, code, "completion in the caller's transaction failed with a serialization failure; releasing the claim");
                drop(pending);
                Err(TransactionConflict::SerializationFailure {
                    code: code.to_owned(),
                    source: error,
                }
                .into_error())
            }
        }
    }

    /// After the store timeout passed in the caller's transaction: aborts it
    /// ([`abort_transaction`](Self::abort_transaction)), waiting for the statement still on the
    /// connection (which ends within the lock bound, a tenth of the budget after the timeout
    /// at most, unless Postgres itself is slow) no longer than that tenth (at most 100 ms, at
    /// least 10 ms). Best effort: the caller gets the timeout either way, and must roll back.
    async fn abort_after_timeout(&self, conn: &mut PgConnection, budget: Duration) {
        let grace = lock_wait_margin(budget).max(Duration::from_millis(10));
        if tokio::time::timeout(grace, self.abort_transaction(conn))
            .await
            .is_err()
        {
            tracing::warn!(
                grace_ms = grace.as_millis() as u64,
                "complete_in timed out and its transaction could not be aborted in time; \
                 the caller must roll back"
            );
        }
    }

    /// Makes the caller's transaction uncommittable after a completion that did not apply:
    /// raises an error inside it, so Postgres aborts it and a later `COMMIT` rolls it back
    /// (Postgres answers `COMMIT` in an aborted transaction with `ROLLBACK`). A caller that
    /// ignores the error and commits therefore loses its side effect instead of committing it
    /// without the record — which a retry would run again. Best effort: the statement's own
    /// failure is the point, and any failure to send it also aborts the transaction or leaves
    /// a connection that cannot commit.
    async fn abort_transaction(&self, conn: &mut PgConnection) {
        let raised = tokio::time::timeout(
            self.inner.base.timeout,
            Executor::execute(&mut *conn, ABORT_TRANSACTION),
        )
        .await;
        if let Ok(Ok(_)) = raised {
            tracing::error!("the statement that aborts the caller's transaction did not fail");
        }
    }
}

impl IdempotencyStore for PostgresStore {
    async fn try_claim(
        &self,
        key: &StoreKey,
        record: &InProgress,
        lease: Duration,
    ) -> Result<Claim, StoreError> {
        let base = &self.inner.base;
        // On a connection held by a guard: a claim abandoned by a timeout while it waits for a
        // row lock keeps running on the server, and is released once it lands, on the same
        // connection ([`crate::shared::ClaimConnection`]).
        let row = timed(StoreOperation::TryClaim, base.timeout, async {
            let mut conn = base.claim_connection(key, &record.token).await?;
            base.claim_on(&mut conn, key, record, lease).await
        })
        .await?;
        let claimed: Option<bool> = row
            .try_get("claimed")
            .map_err(|e| crate::error::map_sqlx(StoreOperation::TryClaim, Duration::ZERO, e))?;
        if claimed == Some(true) {
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

    /// One statement (`expires_at - clock_timestamp()` of the live row), under the operation
    /// timeout: the rest of the lease of an in-progress record, the rest of the retention of a
    /// completed one, `None` when the key has no live row.
    async fn time_to_live(&self, key: &StoreKey) -> Result<Option<Duration>, StoreError> {
        self.inner.base.time_to_live(key).await
    }

    /// One `LISTEN` connection per store, multiplexed across keys (see the module
    /// `pg_notify`); `Unsupported` (the engine polls) when waking is off. The wait ends when
    /// the lease it found ends, if that comes first (nothing notifies a lapse).
    async fn wait_for_change(
        &self,
        key: &StoreKey,
        seen: &LeaseToken,
        timeout: Duration,
    ) -> Result<Waited, StoreError> {
        match &self.inner.notifier {
            Some(notifier) => {
                let flag = async {
                    let lease_left_us: Option<i64> = timed(
                        StoreOperation::WaitForChange,
                        self.inner.base.timeout,
                        sqlx::query_scalar(&self.inner.flag_waiter)
                            .bind(key.as_str())
                            .bind(seen.as_bytes().as_slice())
                            .fetch_optional(&self.inner.base.pool),
                    )
                    .await?;
                    // Zero or less: it lapsed since the row was matched (a change).
                    Ok(lease_left_us
                        .and_then(|us| u64::try_from(us).ok())
                        .filter(|&us| us > 0)
                        .map(Duration::from_micros))
                };
                notifier.wait(key, timeout, flag).await
            }
            None => Ok(Waited::Unsupported),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_completion_in_a_transaction_bounds_its_lock_wait_and_restores_it() {
        for wake in [None, Some("t_wake")] {
            let sql = SqlStatements::postgres("t", wake);
            let in_tx = complete_in_transaction(&sql.complete, wake.is_some());
            assert!(in_tx.starts_with("WITH done AS ("), "{in_tx}");
            assert!(
                in_tx.ends_with(
                    "pg_catalog.set_config('lock_timeout', $8, true) AS lock_timeout_restored \
                     FROM answer"
                ),
                "{in_tx}"
            );
            assert!(in_tx.contains("$8") && !sql.complete.contains("$8"));
            // The answer (its first column, and `woken`) is the pool statement's, named.
            let answer = sql
                .complete
                .find(" SELECT EXISTS (SELECT 1 FROM done)")
                .unwrap();
            let columns = if wake.is_some() {
                "applied, woken"
            } else {
                "applied"
            };
            assert!(
                in_tx.contains(&format!(
                    "answer ({columns}) AS MATERIALIZED ({})",
                    &sql.complete[answer..]
                )),
                "{in_tx}"
            );
            assert!(
                in_tx.contains(&format!(
                    "CASE WHEN answer.applied THEN 0 ELSE ('{NOT_APPLIED}' {CONCAT}"
                )),
                "{in_tx}"
            );
        }
        let bound = bound_lock_wait_sql("900");
        assert!(
            bound.starts_with(
                "WITH was AS MATERIALIZED (SELECT pg_catalog.current_setting('lock_timeout') AS v)"
            ),
            "{bound}"
        );
        assert!(
            bound.contains(&format!(
                "{LT} 900 THEN was.v ELSE '900ms' END, true) FROM was"
            )),
            "{bound}"
        );
        assert_eq!(lock_wait_bound(Duration::from_secs(1)), "900");
        assert_eq!(lock_wait_bound(Duration::from_secs(10)), "9900");
        assert_eq!(lock_wait_bound(Duration::from_millis(50)), "45");
        assert_eq!(lock_wait_bound(Duration::ZERO), "1");
        // Postgres's largest lock_timeout (INT_MAX ms).
        assert_eq!(
            lock_wait_bound(Duration::from_secs(30 * 24 * 3600)),
            "2147483647"
        );
    }

    #[test]
    fn the_not_applied_failure_names_its_isolation_level() {
        // As Postgres words the failed cast.
        let message =
            format!("invalid input syntax for type integer: \"{NOT_APPLIED}repeatable read)\"");
        let rest = &message[message.find(NOT_APPLIED).unwrap() + NOT_APPLIED.len()..];
        assert_eq!(&rest[..rest.find(')').unwrap()], "repeatable read");
        assert!(!NOT_APPLIED.contains('\''), "inside an SQL string literal");
    }

    #[test]
    fn statements_name_the_table_and_bind_in_order() {
        let sql = SqlStatements::postgres("\"t\"", None);
        assert!(sql.claim.contains("INSERT INTO \"t\" AS r"));
        assert!(
            sql.claim
                .contains("now.t OPERATOR(pg_catalog.+) ($5::pg_catalog.float8")
        );
        assert!(sql.complete.contains("$7::pg_catalog.float8"));
        assert!(sql.extend.contains("$3::pg_catalog.float8"));
        for s in [
            &sql.claim,
            &sql.complete,
            &sql.release,
            &sql.extend,
            &sql.get,
            &sql.delete,
            &sql.time_to_live,
        ] {
            assert!(s.contains("clock_timestamp()") || s.contains("(SELECT t FROM now)"));
            assert!(!s.contains("$N"));
        }
        let woke = SqlStatements::postgres("\"t\"", Some("t_wake"));
        for s in [&woke.complete, &woke.release] {
            assert!(
                s.contains(
                    "pg_catalog.pg_notify('t_wake', pg_catalog.encode(pg_catalog.sha256(\
                     pg_catalog.convert_to($1, 'UTF8')), 'hex'))"
                ),
                "{s}"
            );
            assert!(
                s.contains(".waiters) AS"),
                "only rows with waiters notify: {s}"
            );
        }
        assert!(!sql.complete.contains("pg_notify") && !sql.release.contains("pg_notify"));
        assert_eq!(woke.claim, sql.claim);
        let flag = flag_waiter_sql("\"t\"");
        assert!(flag.contains("SET waiters = true") && flag.contains("$2"));
    }

    /// The names called as functions in `sql` (an identifier, possibly qualified, right
    /// before `(`), outside string literals.
    fn called_functions(sql: &str) -> Vec<String> {
        let mut names = Vec::new();
        let mut name = String::new();
        let mut in_literal = false;
        for c in sql.chars() {
            if c == '\'' {
                in_literal = !in_literal;
                name.clear();
            } else if in_literal {
            } else if c.is_ascii_alphanumeric() || c == '_' || c == '.' {
                name.push(c);
            } else {
                if c == '(' && !name.is_empty() {
                    names.push(std::mem::take(&mut name));
                }
                name.clear();
            }
        }
        names
    }

    /// Every statement the Postgres store sends (both with and without waking waiters), but
    /// the migrations.
    fn every_statement() -> Vec<String> {
        let mut statements = Vec::new();
        for wake in [None, Some("t_wake")] {
            let sql = SqlStatements::postgres("\"t\"", wake);
            statements.extend([
                sql.claim.clone(),
                sql.complete.clone(),
                sql.release.clone(),
                sql.extend.clone(),
                sql.get.clone(),
                sql.delete.clone(),
                sql.purge.clone(),
                sql.time_to_live.clone(),
                complete_in_transaction(&sql.complete, wake.is_some()),
            ]);
        }
        statements.extend([
            bound_lock_wait_sql("900"),
            flag_waiter_sql("\"t\""),
            RELATION_KIND.to_owned(),
            SCHEMA_OF.to_owned(),
            CURRENT_SCHEMA.to_owned(),
            MIGRATION_LOCK.to_owned(),
            COLUMNS_OF.to_owned(),
            ABORT_TRANSACTION.to_owned(),
            "SELECT pg_catalog.current_setting('transaction_isolation')".to_owned(),
        ]);
        statements
    }

    /// Every built-in function call in every statement the Postgres store sends is qualified
    /// with `pg_catalog.`, so a schema earlier in `search_path` cannot shadow it.
    #[test]
    fn every_function_call_is_qualified_with_pg_catalog() {
        let found = called_functions("SELECT count(x), pg_catalog.now(), 'f(x)', a.b(c)");
        assert_eq!(found, ["count", "pg_catalog.now", "a.b"]);
        for statement in &every_statement() {
            for name in called_functions(statement) {
                // `EXTRACT(field FROM ...)` is syntax, which Postgres itself resolves in
                // `pg_catalog`; `OPERATOR(...)` names an operator (checked by
                // `every_operator_is_qualified_with_pg_catalog`).
                assert!(
                    name.starts_with("pg_catalog.")
                        || name.eq_ignore_ascii_case("extract")
                        || name.eq_ignore_ascii_case("operator"),
                    "unqualified call of {name} in {statement}"
                );
            }
        }
    }

    /// Built-in type names that Postgres looks up through `search_path` when written bare
    /// (`::float8`, `CAST(x AS text)`, a column's type): a type or domain of that name in a
    /// schema earlier in it is used instead.
    const LOOKED_UP_TYPES: &[&str] = &[
        "text",
        "bytea",
        "int2",
        "int4",
        "int8",
        "float4",
        "float8",
        "bool",
        "timestamptz",
        "timetz",
        "date",
        "uuid",
        "json",
        "jsonb",
        "regclass",
        "regtype",
        "oid",
    ];

    /// Type names that are SQL keywords: the grammar maps them to the built-in types
    /// (`BIGINT` is always `pg_catalog.int8`), so they are safe bare; the statements qualify
    /// them anyway (one rule to check), the DDL keeps the readable standard names.
    const KEYWORD_TYPES: &[&str] = &[
        "int",
        "integer",
        "bigint",
        "smallint",
        "boolean",
        "interval",
        "numeric",
        "decimal",
        "real",
        "float",
        "timestamp",
        "time",
        "varchar",
    ];

    /// The type names written bare (not `pg_catalog.name`) in `sql`, outside string literals,
    /// quoted identifiers and `--` comments: any of [`LOOKED_UP_TYPES`], and in statements
    /// (not `ddl`) any of [`KEYWORD_TYPES`] too. A dotted word is a column or a qualified
    /// name, never reported.
    fn bare_types(sql: &str, ddl: bool) -> Vec<String> {
        let mut found = Vec::new();
        let mut check = |word: &str| {
            let lower = word.to_ascii_lowercase();
            if !lower.contains('.')
                && (LOOKED_UP_TYPES.contains(&lower.as_str())
                    || (!ddl && KEYWORD_TYPES.contains(&lower.as_str())))
            {
                found.push(word.to_owned());
            }
        };
        for line in sql.lines() {
            let line = line.find("--").map_or(line, |at| &line[..at]);
            let mut word = String::new();
            let mut quote: Option<char> = None;
            for c in line.chars() {
                match quote {
                    Some(q) if c == q => quote = None,
                    Some(_) => {}
                    None if c == '\'' || c == '"' => {
                        check(&std::mem::take(&mut word));
                        quote = Some(c);
                    }
                    None if c.is_ascii_alphanumeric() || c == '_' || c == '.' || c == '$' => {
                        word.push(c);
                    }
                    None => check(&std::mem::take(&mut word)),
                }
            }
            check(&word);
        }
        found
    }

    /// lowfix B: every type the Postgres statements cast to, and every type the migrations
    /// and the bookkeeping table give a column, is the built-in one whatever `search_path`
    /// holds: `pg_catalog.name`, or (in the DDL) a keyword type name. Before, `::float8`,
    /// `::int8`, `::text`, `TEXT`, `BYTEA` and `TIMESTAMPTZ` were looked up.
    #[test]
    fn every_type_is_qualified_with_pg_catalog() {
        let found = bare_types(
            "SELECT $1::float8, x::int, CAST(y AS text), interval '1 s', 'int8'::pg_catalog.text, \
             t.oid, \"text\" -- text",
            false,
        );
        assert_eq!(found, ["float8", "int", "text", "interval"]);
        assert_eq!(
            bare_types("c BIGINT, d TEXT, e TIMESTAMP WITH TIME ZONE", true),
            ["TEXT"]
        );
        for statement in &every_statement() {
            let bare = bare_types(statement, false);
            assert!(bare.is_empty(), "unqualified types {bare:?} in {statement}");
        }
        let table = Table::parse("app.records", true).expect("a table name");
        let mut ddl: Vec<String> = crate::migrate::MIGRATIONS
            .iter()
            .map(|m| m.postgres.to_owned())
            .collect();
        ddl.push(crate::migrate::bookkeeping(&table, true));
        for sql in &ddl {
            let bare = bare_types(sql, true);
            assert!(bare.is_empty(), "unqualified types {bare:?} in {sql}");
        }
    }

    /// A token of SQL text, as [`bare_operators`] reads it.
    #[derive(Debug, PartialEq)]
    enum Token {
        /// An identifier, keyword, number or parameter (`pg_catalog.now`, `answer.`, `$1`).
        Word(String),
        /// A run of operator characters.
        Operator(String),
        /// `OPERATOR(…)`: what is between the parentheses.
        Named(String),
        Open,
        Close,
        Comma,
        /// A string literal, a quoted identifier, a `$$` body, `::`, `;`.
        Other,
    }

    /// The tokens of `sql`, without `--` comments.
    fn tokens(sql: &str) -> Vec<Token> {
        const OPERATOR_CHARS: &str = "+-*/<>=~!@#%^&|`?";
        let chars: Vec<char> = sql.chars().collect();
        let mut tokens = Vec::new();
        let mut at = 0;
        let skip_to = |from: usize, end: &str| {
            let rest: String = chars[from..].iter().collect();
            rest.find(end).map_or(chars.len(), |i| {
                from + rest[..i].chars().count() + end.chars().count()
            })
        };
        while at < chars.len() {
            let c = chars[at];
            let next = chars.get(at + 1).copied();
            if c == '-' && next == Some('-') {
                at = skip_to(at, "\n");
            } else if c == '\'' || c == '"' {
                at = skip_to(at + 1, &c.to_string());
                tokens.push(Token::Other);
            } else if c == '$' && next == Some('$') {
                at = skip_to(at + 2, "$$");
                tokens.push(Token::Other);
            } else if c.is_ascii_alphanumeric() || c == '_' || c == '.' || c == '$' {
                let start = at;
                while at < chars.len()
                    && (chars[at].is_ascii_alphanumeric() || "_.$".contains(chars[at]))
                {
                    at += 1;
                }
                let word: String = chars[start..at].iter().collect();
                if word.eq_ignore_ascii_case("operator") && chars.get(at) == Some(&'(') {
                    let end = skip_to(at, ")");
                    tokens.push(Token::Named(chars[at + 1..end - 1].iter().collect()));
                    at = end;
                } else {
                    tokens.push(Token::Word(word));
                }
            } else if OPERATOR_CHARS.contains(c) {
                let start = at;
                while at < chars.len() && OPERATOR_CHARS.contains(chars[at]) {
                    at += 1;
                }
                tokens.push(Token::Operator(chars[start..at].iter().collect()));
            } else {
                at += 1;
                match c {
                    '(' => tokens.push(Token::Open),
                    ')' => tokens.push(Token::Close),
                    ',' => tokens.push(Token::Comma),
                    c if c.is_whitespace() => {}
                    _ => tokens.push(Token::Other),
                }
            }
        }
        tokens
    }

    /// The operators in `sql` that Postgres would look up through `search_path`: a bare
    /// operator (`=`, `>`, `||`, …; not `SET column =`, an assignment, nor the `*` of
    /// `alias.*`), an `OPERATOR(…)` of another schema than `pg_catalog`, and syntax that looks
    /// `=` or `<`/`>` up (`IN`, `BETWEEN`, `LIKE`, `NULLIF`, `IS DISTINCT FROM`, `CASE x WHEN`,
    /// …). Outside string literals, quoted identifiers, `$$` bodies and `--` comments.
    fn bare_operators(sql: &str) -> Vec<String> {
        const LOOKING_UP: &[&str] = &[
            "in", "between", "like", "ilike", "similar", "nullif", "distinct", "overlaps",
        ];
        let mut found = Vec::new();
        let mut depth = 0usize;
        // The depth of the `SET` list being read, a column comes next, a column was just read.
        let (mut set_list, mut column_next, mut column) = (None, false, false);
        let mut previous: Option<Token> = None;
        for token in tokens(sql) {
            let after_case =
                matches!(&previous, Some(Token::Word(w)) if w.eq_ignore_ascii_case("case"));
            if after_case && !matches!(&token, Token::Word(w) if w.eq_ignore_ascii_case("when")) {
                found.push("CASE x WHEN".to_owned());
            }
            let was_column = std::mem::take(&mut column);
            match &token {
                Token::Word(word) => {
                    let lower = word.to_ascii_lowercase();
                    if LOOKING_UP.contains(&lower.as_str()) {
                        found.push(word.clone());
                    }
                    if lower == "set" {
                        (set_list, column_next) = (Some(depth), true);
                    } else {
                        if set_list == Some(depth)
                            && ["where", "returning", "from"].contains(&lower.as_str())
                        {
                            set_list = None;
                        }
                        column = std::mem::take(&mut column_next);
                    }
                }
                Token::Operator(operator) => {
                    let star = operator == "*"
                        && matches!(&previous, Some(Token::Word(w)) if w.ends_with('.'));
                    let assignment = operator == "=" && was_column;
                    if !star && !assignment {
                        found.push(operator.clone());
                    }
                    column_next = false;
                }
                Token::Named(name) => {
                    if !name.starts_with("pg_catalog.") {
                        found.push(format!("OPERATOR({name})"));
                    }
                    column_next = false;
                }
                Token::Open => {
                    depth += 1;
                    column_next = false;
                }
                Token::Close => {
                    depth = depth.saturating_sub(1);
                    if set_list.is_some_and(|list| depth < list) {
                        set_list = None;
                    }
                    column_next = false;
                }
                Token::Comma => column_next = set_list == Some(depth),
                Token::Other => column_next = false,
            }
            previous = Some(token);
        }
        found
    }

    /// sqlops: every operator in every statement the Postgres store sends, and in the
    /// migrations and the bookkeeping table, is `OPERATOR(pg_catalog.…)`, so a schema earlier
    /// in `search_path` cannot shadow it. Before, every statement compared with bare `=`, `>`,
    /// `<=` and computed with `+`, `-`, `*`, `||`, and the purge used `IN (…)`.
    #[test]
    fn every_operator_is_qualified_with_pg_catalog() {
        assert_eq!(
            bare_operators(
                "SELECT a = b, c OPERATOR(pg_catalog.<) d, e OPERATOR(evil.>) f, 'x = y', \
                 \"a+b\", g.*, h::pg_catalog.int8 FROM t -- x > y\n\
                 WHERE i IN (SELECT 1) AND j || k AND CASE l WHEN 1 THEN 2 END \
                 AND CASE WHEN m THEN 1 END"
            ),
            ["=", "OPERATOR(evil.>)", "IN", "||", "CASE x WHEN"]
        );
        assert_eq!(
            bare_operators(
                "UPDATE t SET a = 1, b = CASE WHEN c OPERATOR(pg_catalog.<=) d THEN e END, \
                 f = pg_catalog.g(h, i) WHERE j = k RETURNING l > m"
            ),
            ["=", ">"]
        );
        assert_eq!(
            bare_operators("DO $$ BEGIN RAISE EXCEPTION USING ERRCODE = 'P0001'; END $$"),
            Vec::<String>::new()
        );
        let table = Table::parse("app.records", true).expect("a table name");
        let mut checked = every_statement();
        checked.extend(
            crate::migrate::MIGRATIONS
                .iter()
                .map(|m| m.postgres.to_owned()),
        );
        checked.push(crate::migrate::bookkeeping(&table, true));
        for sql in &checked {
            let bare = bare_operators(sql);
            assert!(bare.is_empty(), "operators {bare:?} looked up in {sql}");
        }
    }
}
