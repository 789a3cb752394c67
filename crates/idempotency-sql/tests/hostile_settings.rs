//! The Postgres store under session settings an application or a DBA may impose on its
//! connections:
//! - `statement_timeout` (SQLSTATE `57014` when it fires): every store operation that hits it
//!   answers `StoreError::Timeout` (transient: the engine retries a completion), not `Backend`;
//!   inside the caller's transaction (`complete_in`) the transaction is still left unable to
//!   commit the side effect without the record;
//! - a hostile `search_path` (`evil, pg_catalog, public`: a schema whose functions shadow the
//!   built-ins the store calls, with `pg_catalog` explicitly after it): the store calls the
//!   built-ins (a claim's lease expires by the real clock; waiters are woken by the real
//!   `pg_notify`) and never a shadowing function, and no type or domain of that schema named
//!   like a built-in type (`text`, `float8`, …) takes the built-in's place.
#![cfg(feature = "postgres")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::str::FromStr as _;
use std::time::{Duration, Instant};

use common::orders::{Fixture, assert_aborted, identifier, operator_locks_row, receipt, unique};
use idempotency_core::{
    Begin, Claim, Completed, Fenced, Fingerprint, Guard, IdempotencyError, IdempotencyKey,
    IdempotencyStore, InProgress, LeaseToken, Record, Scope, StoreError, StoreKey, StoreOperation,
    StoredOutcome, Waited,
};
use idempotency_sql::sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use idempotency_sql::{PostgresStore, sqlx};

/// The `statement_timeout` of the "slow" connections. The store's own budget (10 s) and the
/// lock bound `complete_in` derives from it (9.9 s) are far longer, so the server's
/// `statement_timeout` is what ends every wait below.
const STATEMENT_TIMEOUT: &str = "250ms";

/// A pool on the shared server whose connections start with the settings `options`
/// (`-c name=value` in the startup packet, as a role's or database's settings would apply).
async fn pool_with(options: &[(&str, &str)], max: u32) -> PgPool {
    let connect = PgConnectOptions::from_str(common::shared_server().url())
        .expect("url")
        .options(options.iter().copied());
    PgPoolOptions::new()
        .max_connections(max)
        .acquire_timeout(Duration::from_secs(10))
        .connect_with(connect)
        .await
        .expect("connecting to the shared postgres server")
}

/// A store on the default table (migrated on a plain pool) whose connections run with
/// `statement_timeout` = [`STATEMENT_TIMEOUT`], with a 10 s operation timeout.
async fn slow_store() -> PostgresStore {
    common::pg_store(2).await;
    PostgresStore::builder(pool_with(&[("statement_timeout", STATEMENT_TIMEOUT)], 8).await)
        .operation_timeout(Duration::from_secs(10))
        .build()
        .await
        .expect("the store builds")
}

fn in_progress(seed: &str) -> InProgress {
    InProgress {
        token: LeaseToken::generate(),
        fingerprint: Fingerprint::of(seed),
        created_at_ms: 1_764_000_000_000,
    }
}

fn completed(claim: &InProgress, body: &str) -> Completed {
    Completed {
        token: claim.token,
        fingerprint: claim.fingerprint,
        created_at_ms: claim.created_at_ms,
        completed_at_ms: claim.created_at_ms + 5,
        outcome: StoredOutcome::new(body.to_owned(), None),
    }
}

/// `store.complete` of `claim` on `key` with the body `body` (a 60 s retention).
async fn complete(
    store: &PostgresStore,
    key: &StoreKey,
    claim: &InProgress,
    body: &str,
) -> Result<Fenced, StoreError> {
    store
        .complete(
            key,
            &claim.token,
            &completed(claim, body),
            Duration::from_secs(60),
        )
        .await
}

/// An engine over `store` (a renewed 60 s lease, a 10 s store timeout, a new orders table),
/// the guard that runs the key `name`, and an operator's open transaction holding its record
/// row (`SELECT … FOR UPDATE`).
async fn running_on_a_locked_row(
    store: PostgresStore,
    name: &str,
) -> (
    Fixture,
    IdempotencyKey,
    Guard<PostgresStore>,
    sqlx::Transaction<'static, sqlx::Postgres>,
) {
    let f = Fixture::on_store(
        store,
        Duration::from_secs(60),
        true,
        Duration::from_secs(10),
    )
    .await;
    let admin = common::pg_pool(2).await;
    let key = IdempotencyKey::new(name).unwrap();
    let guard = f.run(&key).await;
    let operator = operator_locks_row(&admin, f.table(), &f.store_key(&key)).await;
    (f, key, guard, operator)
}

/// Panics unless `result` is a `StoreError::Timeout` of `operation`, reached well before the
/// store's own 10 s budget (so the server's `statement_timeout` ended it).
fn assert_statement_timeout<T: std::fmt::Debug>(
    operation: StoreOperation,
    started: Instant,
    result: Result<T, StoreError>,
) {
    assert!(
        matches!(&result, Err(StoreError::Timeout { operation: op, .. }) if *op == operation),
        "{operation:?} cut short by statement_timeout must be StoreError::Timeout (transient), \
         got {result:?}"
    );
    let error = result.expect_err("checked above");
    assert!(error.is_transient() && error.outcome_unknown(), "{error:?}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "ended by the server's statement_timeout, not the store's budget: {:?}",
        started.elapsed()
    );
    assert_reports_the_time_it_ran(&error);
}

/// lowfix C: a timeout the server imposed (`statement_timeout`, SQLSTATE 57014) reports how
/// long the statement ran (~250 ms here), not the store's 10 s budget, which had not run out
/// (it sent operators to raise the wrong setting). Before, `after` was the budget.
fn assert_reports_the_time_it_ran(error: &StoreError) {
    let StoreError::Timeout { after, .. } = error else {
        panic!("a timeout: {error:?}")
    };
    assert!(
        *after < Duration::from_secs(5),
        "`after` is the time the statement ran, not the store's 10 s budget: {error}"
    );
}

/// A claim whose upsert waits on another transaction's uncommitted row for the same key, and
/// `complete`, `extend`, `release` and `delete` waiting on a row an operator holds with
/// `SELECT … FOR UPDATE`: each is ended by `statement_timeout` (SQLSTATE 57014) and answers
/// `StoreError::Timeout`; once the lock goes, the same calls succeed. Before the fix each
/// answered `StoreError::Backend` ("not retryable").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statement_timeout_is_a_timeout_for_every_operation() {
    let store = slow_store().await;
    let admin = common::pg_pool(4).await;
    let table = store.table().to_owned();
    let prefix = idempotency_testkit::unique_prefix();

    // try_claim: another transaction inserted the key and has not committed.
    let key = StoreKey::from_raw(format!("{prefix}claim"));
    let mut inserter = admin.begin().await.expect("inserter tx");
    sqlx::query(&format!(
        "INSERT INTO {table} (store_key, state, token, fingerprint, created_at_ms, expires_at) \
         VALUES ($1, 'in_progress', $2, $3, 0, pg_catalog.clock_timestamp() + interval '1 hour')"
    ))
    .bind(key.as_str())
    .bind(vec![1u8; 16])
    .bind(vec![2u8; 32])
    .execute(&mut *inserter)
    .await
    .expect("uncommitted insert");
    let claim = in_progress("claim");
    let started = Instant::now();
    let result = store.try_claim(&key, &claim, Duration::from_secs(60)).await;
    assert_statement_timeout(StoreOperation::TryClaim, started, result);
    inserter.rollback().await.expect("rollback");
    let result = store.try_claim(&key, &claim, Duration::from_secs(60)).await;
    assert!(matches!(result, Ok(Claim::Claimed)), "{result:?}");

    // complete, extend, release, delete: an operator holds the claimed row.
    let operator = operator_locks_row(&admin, &table, key.as_str()).await;
    let started = Instant::now();
    let result = complete(&store, &key, &claim, "done").await;
    assert_statement_timeout(StoreOperation::Complete, started, result);
    let started = Instant::now();
    let result = store
        .extend(&key, &claim.token, Duration::from_secs(60))
        .await;
    assert_statement_timeout(StoreOperation::Extend, started, result);
    let started = Instant::now();
    let result = store.release(&key, &claim.token).await;
    assert_statement_timeout(StoreOperation::Release, started, result);
    let started = Instant::now();
    let result = store.delete(&key).await;
    assert_statement_timeout(StoreOperation::Delete, started, result);
    operator.rollback().await.expect("operator rollback");

    // The lock gone, the completion a retry would make applies.
    let result = complete(&store, &key, &claim, "done").await;
    assert!(matches!(result, Ok(Fenced::Applied)), "{result:?}");
}

/// The engine over a store whose completion is cut short by `statement_timeout` while an
/// operator holds the row for 600 ms: the completion is retried (a transient failure) and
/// lands once the lock goes; a retry of the key replays it. Before the fix the first 57014
/// was `Backend`, not retried: `complete` failed and the key's outcome was lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_engine_retries_a_completion_cut_short_by_statement_timeout() {
    let (f, key, guard, operator) =
        running_on_a_locked_row(slow_store().await, "sqlfix-engine-retry").await;
    let releaser = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(600)).await;
        operator.rollback().await.expect("operator rollback");
    });
    let started = Instant::now();
    guard
        .complete(receipt("done"))
        .await
        .expect("the completion is retried past the statement timeouts");
    releaser.await.expect("releaser");
    assert!(
        started.elapsed() >= Duration::from_millis(500),
        "the completion waited for the operator: {:?}",
        started.elapsed()
    );
    let replay = f
        .engine
        .begin(&Scope::global(), &key, Fingerprint::of("order"))
        .await
        .expect("begin");
    assert!(matches!(replay, Begin::Replay(_)), "{replay:?}");
}

/// `complete_in` in a transaction with `SET LOCAL statement_timeout`, its fenced UPDATE
/// waiting on a row an operator holds: the answer is `StoreUnavailable(Timeout)` (was
/// `Backend`), and the transaction is aborted by the failed statement, so a handler that
/// ignores the error and commits gets a rollback: no order without the record. The claim is
/// released in the background once the operator lets go, and a retry orders once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn complete_in_cut_short_by_statement_timeout_is_a_timeout_and_commits_nothing() {
    let (f, key, guard, operator) =
        running_on_a_locked_row(common::pg_store(8).await, "sqlfix-complete-in").await;

    let mut tx = f.pool.begin().await.expect("begin tx");
    sqlx::query(&format!(
        "SET LOCAL statement_timeout = '{STATEMENT_TIMEOUT}'"
    ))
    .execute(&mut *tx)
    .await
    .expect("SET LOCAL statement_timeout");
    let started = Instant::now();
    let error = f.order_fails_on_the_lock(&mut tx, guard, "first").await;
    assert!(
        matches!(
            error,
            IdempotencyError::StoreUnavailable(StoreError::Timeout {
                operation: StoreOperation::Complete,
                ..
            })
        ),
        "{error:?}"
    );
    assert!(error.is_retryable(), "{error:?}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "ended by statement_timeout, not the 9.9 s lock bound: {:?}",
        started.elapsed()
    );
    let IdempotencyError::StoreUnavailable(timeout) = &error else {
        panic!("checked above")
    };
    assert_reports_the_time_it_ran(timeout);
    // The transaction refuses further statements (25P02): the failed completion aborted it.
    assert_aborted(&mut tx).await;
    // The handler ignores the error and commits.
    let _ = tx.commit().await;
    operator.rollback().await.expect("operator rollback");
    assert_eq!(
        f.count().await,
        0,
        "the attempt whose complete_in failed must not commit its order"
    );
    f.retry_orders(&key).await;
    assert_eq!(f.count().await, 1, "one order for the key");
}

/// Creates the schema `schema` with an `evil.calls` log and, for each `(signature, returns,
/// result)`, a function `schema.signature` that logs its name and returns `result`.
async fn shadowing_schema(admin: &PgPool, schema: &str, functions: &[(&str, &str, &str)]) {
    sqlx::query(&format!("CREATE SCHEMA {schema}"))
        .execute(admin)
        .await
        .expect("create schema");
    sqlx::query(&format!("CREATE TABLE {schema}.calls (name text NOT NULL)"))
        .execute(admin)
        .await
        .expect("calls table");
    for (signature, returns, result) in functions {
        let name = &signature[..signature.find('(').expect("a signature")];
        let body = match *returns {
            "void" => format!("INSERT INTO {schema}.calls VALUES ('{name}')"),
            _ => format!("INSERT INTO {schema}.calls VALUES ('{name}'); SELECT {result}"),
        };
        sqlx::query(&format!(
            "CREATE FUNCTION {schema}.{signature} RETURNS {returns} VOLATILE LANGUAGE sql \
             AS $body$ {body} $body$"
        ))
        .execute(admin)
        .await
        .unwrap_or_else(|e| panic!("create {schema}.{signature}: {e}"));
    }
}

/// Panics if the store's connections called any shadowing function of `schema`; then drops
/// the schema.
async fn assert_no_shadow_called(admin: &PgPool, schema: &str) {
    let calls: Vec<String> = sqlx::query_scalar(&format!(
        "SELECT DISTINCT name FROM {schema}.calls ORDER BY name"
    ))
    .fetch_all(admin)
    .await
    .expect("calls");
    assert_eq!(
        calls,
        Vec::<String>::new(),
        "the store called shadowing functions"
    );
    let _ = sqlx::query(&format!("DROP SCHEMA {schema} CASCADE"))
        .execute(admin)
        .await;
}

/// Whether the boolean SQL expression `condition` holds for the row of `key` in
/// `public.<table>` (read on `admin`).
async fn row_holds(admin: &PgPool, table: &str, key: &StoreKey, condition: &str) -> bool {
    sqlx::query_scalar(&format!(
        "SELECT {condition} FROM public.{table} WHERE store_key = $1"
    ))
    .bind(key.as_str())
    .fetch_one(admin)
    .await
    .unwrap_or_else(|e| panic!("{condition}: {e}"))
}

/// A store whose connections run with `search_path = schema, pg_catalog, public` on the table
/// `public.<table>`, migrated through those connections.
async fn hostile_store(schema: &str, table: &str) -> PostgresStore {
    let search_path = format!("{schema},pg_catalog,public");
    PostgresStore::builder(pool_with(&[("search_path", search_path.as_str())], 8).await)
        .table(format!("public.{table}"))
        .operation_timeout(Duration::from_secs(10))
        .migrate()
        .await
        .expect("the store migrates and builds under the hostile search_path")
}

/// `clock_timestamp()` shadowed by one that answers a far-future time, first in `search_path`
/// with `pg_catalog` explicitly after it: a 300 ms claim still lapses after 300 ms by the
/// database's real clock and a new claim takes the key over, and the row's `expires_at` is
/// the real clock's. Before the fix the store called the shadow: the lease ran from the year
/// 2999 and compared against it, so it never lapsed (the takeover answered `Existing`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shadowing_clock_timestamp_does_not_stop_leases_from_lapsing() {
    let admin = common::pg_pool(2).await;
    let schema = identifier("evil");
    shadowing_schema(
        &admin,
        &schema,
        &[(
            "clock_timestamp()",
            "timestamptz",
            "timestamptz '2999-01-01 00:00:00+00'",
        )],
    )
    .await;
    let table = unique("sp_clock");
    let store = hostile_store(&schema, &table).await;
    // The shadow is in effect on the store's connections (pg_catalog comes after it).
    let seen: String = sqlx::query_scalar(
        "SELECT pg_catalog.to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY')",
    )
    .fetch_one(store.pool())
    .await
    .expect("the shadow answers");
    assert_eq!(
        seen, "2999",
        "the shadowing function is first in search_path"
    );
    sqlx::query(&format!("TRUNCATE {schema}.calls"))
        .execute(&admin)
        .await
        .expect("truncate");

    let key = StoreKey::from_raw(format!("{}lease", idempotency_testkit::unique_prefix()));
    let first = in_progress("first");
    let claimed = store
        .try_claim(&key, &first, Duration::from_millis(300))
        .await
        .expect("claim");
    assert!(matches!(claimed, Claim::Claimed), "{claimed:?}");
    let near = row_holds(
        &admin,
        &table,
        &key,
        "expires_at < pg_catalog.clock_timestamp() + interval '1 minute'",
    )
    .await;
    assert!(near, "the lease ends by the real clock, not the shadow's");
    let left = store.time_to_live(&key).await.expect("ttl");
    assert!(
        left.is_some_and(|left| left <= Duration::from_millis(300)),
        "{left:?}"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        store.get(&key).await.expect("get"),
        None,
        "the lease lapsed"
    );
    let second = in_progress("second");
    let taken = store
        .try_claim(&key, &second, Duration::from_secs(60))
        .await
        .expect("claim");
    assert!(
        matches!(taken, Claim::Claimed),
        "the lapsed claim must be taken over, got {taken:?}"
    );
    assert_eq!(
        complete(&store, &key, &first, "stale")
            .await
            .expect("complete"),
        Fenced::LeaseLost
    );
    // The store's own statements never called it.
    assert_no_shadow_called(&admin, &schema).await;
}

/// Every built-in function the store calls, shadowed (same name and argument types, so the
/// shadow wins when it comes first in `search_path`) by one that logs the call: migrate,
/// build, claim, flag-and-wait, complete (with a waiter, so `pg_notify`), extend, release,
/// get, time_to_live, delete, purge and `complete_in` call none of them, and the waiter is
/// woken by the real `pg_notify` with the real payload. Before the fix the shadows were
/// called (the log held them; the shadowing `to_regclass` made `build()` find no table).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_shadowing_function_is_called_under_a_hostile_search_path() {
    let admin = common::pg_pool(2).await;
    let schema = identifier("evil");
    shadowing_schema(
        &admin,
        &schema,
        &[
            (
                "clock_timestamp()",
                "timestamptz",
                "pg_catalog.clock_timestamp()",
            ),
            ("pg_notify(text, text)", "void", ""),
            ("sha256(bytea)", "bytea", "'\\x00'::bytea"),
            ("encode(bytea, text)", "text", "'shadowed'::text"),
            ("convert_to(text, name)", "bytea", "'\\x00'::bytea"),
            ("to_regclass(text)", "regclass", "NULL::regclass"),
            ("format_type(oid, integer)", "text", "'shadowed'::text"),
            ("hashtext(text)", "integer", "0"),
            ("pg_advisory_xact_lock(integer)", "void", ""),
            (
                "current_setting(text)",
                "text",
                "pg_catalog.current_setting($1)",
            ),
            (
                "set_config(text, text, boolean)",
                "text",
                "pg_catalog.set_config($1, $2, $3)",
            ),
        ],
    )
    .await;
    let table = unique("sp_all");
    let store = hostile_store(&schema, &table).await;
    let prefix = idempotency_testkit::unique_prefix();
    let key = StoreKey::from_raw(format!("{prefix}all"));

    // Claim, a waiter that flags the row, a completion that wakes it.
    let claim = in_progress("all");
    assert!(matches!(
        store
            .try_claim(&key, &claim, Duration::from_secs(60))
            .await
            .expect("claim"),
        Claim::Claimed
    ));
    assert_eq!(
        store
            .extend(&key, &claim.token, Duration::from_secs(60))
            .await
            .expect("extend"),
        Fenced::Applied
    );
    assert!(store.time_to_live(&key).await.expect("ttl").is_some());
    let waiter = {
        let (store, key, token) = (store.clone(), key.clone(), claim.token);
        tokio::spawn(async move {
            let started = Instant::now();
            let waited = store
                .wait_for_change(&key, &token, Duration::from_secs(20))
                .await;
            (waited, started.elapsed())
        })
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if row_holds(&admin, &table, &key, "waiters").await {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the waiter never flagged the row"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        complete(&store, &key, &claim, "done")
            .await
            .expect("complete"),
        Fenced::Applied
    );
    let (waited, after) = waiter.await.expect("waiter");
    assert!(
        matches!(waited, Ok(Waited::Changed)) && after < Duration::from_secs(10),
        "the real pg_notify wakes the waiter: {waited:?} after {after:?}"
    );
    assert!(matches!(
        store.get(&key).await.expect("get"),
        Some(Record::Completed(_))
    ));

    // Release (with a waiter flag set by hand, so it notifies), delete, purge.
    let other = StoreKey::from_raw(format!("{prefix}release"));
    let released = in_progress("release");
    store
        .try_claim(&other, &released, Duration::from_secs(60))
        .await
        .expect("claim");
    sqlx::query(&format!(
        "UPDATE public.{table} SET waiters = true WHERE store_key = $1"
    ))
    .bind(other.as_str())
    .execute(&admin)
    .await
    .expect("flag");
    assert_eq!(
        store
            .release(&other, &released.token)
            .await
            .expect("release"),
        Fenced::Applied
    );
    assert!(store.delete(&key).await.expect("delete"));
    store.purge_expired(100).await.expect("purge");

    // complete_in, in a transaction on the store's (hostile) connections.
    complete_in_a_transaction(&store, "sqlfix-search-path").await;

    assert_no_shadow_called(&admin, &schema).await;
}

/// Every type name a domain can shadow among the built-in types the store uses (`text`,
/// `bytea`, `float8`, `int8`, `interval`, …) and the keyword names of some of them (`bigint`,
/// `int`, `boolean`), with the built-in type it shadows.
const SHADOWED_TYPES: &[(&str, &str)] = &[
    ("text", "text"),
    ("bytea", "bytea"),
    ("int2", "int2"),
    ("int4", "int4"),
    ("int8", "int8"),
    ("float8", "float8"),
    ("bool", "bool"),
    ("timestamptz", "timestamptz"),
    ("interval", "interval"),
    ("regclass", "regclass"),
    ("int", "int4"),
    ("integer", "int4"),
    ("bigint", "int8"),
    ("smallint", "int2"),
    ("boolean", "bool"),
];

/// lowfix B: domains named like every built-in type the store casts to or creates columns
/// of, each refusing every value (`CHECK (false)`), first in `search_path` with `pg_catalog`
/// explicitly after it (where they do shadow the built-ins: checked first). `migrate()`,
/// `build()`, claim, extend, time_to_live, complete, get, release, delete, purge and
/// `complete_in` work, and every column of the records and bookkeeping tables has a
/// `pg_catalog` type. Before the fix `migrate()` failed (the records table was created with
/// the shadowing `text`, `bytea` and `timestamptz` columns, and `build()`'s `::text` cast hit
/// the domain's check), and claims hit `::float8`, `time_to_live` `::int8`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_shadowing_type_is_used_under_a_hostile_search_path() {
    let admin = common::pg_pool(2).await;
    let schema = identifier("evil");
    shadowing_schema(&admin, &schema, &[]).await;
    for (name, base) in SHADOWED_TYPES {
        sqlx::query(&format!(
            "CREATE DOMAIN {schema}.\"{name}\" AS pg_catalog.{base} CHECK (false)"
        ))
        .execute(&admin)
        .await
        .unwrap_or_else(|e| panic!("create domain {schema}.{name}: {e}"));
    }
    // The shadows are in effect on such connections (pg_catalog listed after them).
    let search_path = format!("{schema},pg_catalog,public");
    let probe = pool_with(&[("search_path", search_path.as_str())], 1).await;
    for cast in ["'x'::text", "1::float8", "'1 s'::pg_catalog.text::bytea"] {
        let shadowed = sqlx::query(&format!("SELECT {cast}"))
            .fetch_one(&probe)
            .await
            .expect_err("the shadowing domain's check refuses the value");
        assert!(
            shadowed.to_string().contains("violates check constraint"),
            "{cast}: {shadowed}"
        );
    }
    probe.close().await;

    let table = unique("sp_types");
    let store = hostile_store(&schema, &table).await;
    let not_built_in: Vec<String> = sqlx::query_scalar(
        "SELECT c.relname || '.' || a.attname || ': ' || n.nspname || '.' || ty.typname \
         FROM pg_catalog.pg_attribute a JOIN pg_catalog.pg_class c ON c.oid = a.attrelid \
         JOIN pg_catalog.pg_type ty ON ty.oid = a.atttypid \
         JOIN pg_catalog.pg_namespace n ON n.oid = ty.typnamespace \
         WHERE a.attrelid IN (pg_catalog.to_regclass($1), pg_catalog.to_regclass($2)) \
         AND a.attnum > 0 AND NOT a.attisdropped AND n.nspname <> 'pg_catalog'",
    )
    .bind(format!("public.{table}"))
    .bind(format!("public.{table}_migrations"))
    .fetch_all(&admin)
    .await
    .expect("column types");
    assert_eq!(
        not_built_in,
        Vec::<String>::new(),
        "columns of shadowing types"
    );

    let prefix = idempotency_testkit::unique_prefix();
    let key = StoreKey::from_raw(format!("{prefix}types"));
    let claim = in_progress("types");
    let claimed = store.try_claim(&key, &claim, Duration::from_secs(60)).await;
    assert!(matches!(claimed, Ok(Claim::Claimed)), "{claimed:?}");
    let extended = store
        .extend(&key, &claim.token, Duration::from_secs(60))
        .await;
    assert!(matches!(extended, Ok(Fenced::Applied)), "{extended:?}");
    let left = store.time_to_live(&key).await.expect("time_to_live");
    assert!(
        left.is_some_and(|left| left <= Duration::from_secs(60)),
        "{left:?}"
    );
    let done = complete(&store, &key, &claim, "done").await;
    assert!(matches!(done, Ok(Fenced::Applied)), "{done:?}");
    let Some(Record::Completed(stored)) = store.get(&key).await.expect("get") else {
        panic!("completed")
    };
    assert_eq!(&stored.outcome.body[..], b"done");

    let other = StoreKey::from_raw(format!("{prefix}types-release"));
    let released = in_progress("release");
    let claimed = store
        .try_claim(&other, &released, Duration::from_secs(60))
        .await;
    assert!(matches!(claimed, Ok(Claim::Claimed)), "{claimed:?}");
    let release = store.release(&other, &released.token).await;
    assert!(matches!(release, Ok(Fenced::Applied)), "{release:?}");
    assert!(store.delete(&key).await.expect("delete"));
    store.purge_expired(100).await.expect("purge");

    // complete_in, in a transaction on the store's (hostile) connections.
    complete_in_a_transaction(&store, "lowfix-shadowing-types").await;

    assert_no_shadow_called(&admin, &schema).await;
}

/// A claim through the engine, completed with `complete_in` in a transaction on the store's
/// own (hostile) connections, then committed.
async fn complete_in_a_transaction(store: &PostgresStore, key: &str) {
    let engine = idempotency_core::Idempotency::builder(store.clone())
        .prefix(idempotency_testkit::unique_prefix())
        .ignore_env()
        .build()
        .expect("engine");
    let ikey = IdempotencyKey::new(key).unwrap();
    let guard = common::orders::claim(&engine, &ikey).await;
    let mut tx = store.pool().begin().await.expect("begin");
    let pending = store
        .complete_in(&mut tx, guard, receipt("in tx"))
        .await
        .expect("complete_in");
    tx.commit().await.expect("commit");
    pending.committed();
}
