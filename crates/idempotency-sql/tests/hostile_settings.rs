//! The Postgres store under session settings an application or a DBA may impose on its
//! connections:
//! - `statement_timeout` (SQLSTATE `57014` when it fires): every store operation that hits it
//!   answers `StoreError::Timeout` (transient: the engine retries a completion), not `Backend`;
//!   inside the caller's transaction (`complete_in`) the transaction is still left unable to
//!   commit the side effect without the record;
//! - a hostile `search_path` (`evil, pg_catalog, public`: a schema whose functions and
//!   operators shadow the built-ins the store uses, with `pg_catalog` explicitly after it): the
//!   store calls the built-ins (a claim's lease expires by the real clock; waiters are woken by
//!   the real `pg_notify`) and never a shadowing function or operator (a `=` that matches every
//!   key, a `>` that keeps every lease live, … decide nothing), and no type or domain of that
//!   schema named like a built-in type (`text`, `float8`, …) takes the built-in's place.
#![cfg(all(feature = "postgres", feature = "sqlite"))]
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

/// Creates the schema `schema` with an `evil.calls` log (and an `evil.calls_seen` sequence,
/// which counts the calls of transactions that rolled back too) and, for each `(signature,
/// returns, result)`, a function `schema.signature` that logs its name and returns `result`.
async fn shadowing_schema(admin: &PgPool, schema: &str, functions: &[(&str, &str, &str)]) {
    sqlx::query(&format!("CREATE SCHEMA {schema}"))
        .execute(admin)
        .await
        .expect("create schema");
    sqlx::query(&format!("CREATE TABLE {schema}.calls (name text NOT NULL)"))
        .execute(admin)
        .await
        .expect("calls table");
    sqlx::query(&format!("CREATE SEQUENCE {schema}.calls_seen"))
        .execute(admin)
        .await
        .expect("calls sequence");
    for (signature, returns, result) in functions {
        let name = &signature[..signature.find('(').expect("a signature")];
        logging_function(admin, schema, signature, name, returns, result).await;
    }
}

/// Creates the function `schema.signature`, which logs `logged` in `schema.calls`, counts
/// itself in `schema.calls_seen` and returns `result` (nothing when it `returns` `void`).
async fn logging_function(
    admin: &PgPool,
    schema: &str,
    signature: &str,
    logged: &str,
    returns: &str,
    result: &str,
) {
    let log = format!(
        "INSERT INTO {schema}.calls VALUES ('{logged}'); \
         SELECT pg_catalog.nextval('{schema}.calls_seen')"
    );
    let body = match returns {
        "void" => log,
        _ => format!("{log}; SELECT {result}"),
    };
    sqlx::query(&format!(
        "CREATE FUNCTION {schema}.{signature} RETURNS {returns} VOLATILE LANGUAGE sql \
         AS $body$ {body} $body$"
    ))
    .execute(admin)
    .await
    .unwrap_or_else(|e| panic!("create {schema}.{signature}: {e}"));
}

/// In the schema `schema` (made by [`shadowing_schema`]), for each `(operator, left, right,
/// returns, result)`, the operator `schema.operator(pg_catalog.left, pg_catalog.right)`: the
/// name and argument types of a built-in one, so it is the one chosen when `schema` comes
/// first in `search_path`. Its function logs `operator(left,right)` and returns `result`
/// (`$1`, `$2`: the operands).
async fn shadowing_operators(
    admin: &PgPool,
    schema: &str,
    operators: &[(&str, &str, &str, &str, &str)],
) {
    for (at, (operator, left, right, returns, result)) in operators.iter().enumerate() {
        let function = format!("shadow_op_{at}");
        logging_function(
            admin,
            schema,
            &format!("{function}(pg_catalog.{left}, pg_catalog.{right})"),
            &format!("{operator}({left},{right})"),
            returns,
            result,
        )
        .await;
        sqlx::query(&format!(
            "CREATE OPERATOR {schema}.{operator} (LEFTARG = pg_catalog.{left}, \
             RIGHTARG = pg_catalog.{right}, FUNCTION = {schema}.{function})"
        ))
        .execute(admin)
        .await
        .unwrap_or_else(|e| panic!("create operator {schema}.{operator}({left}, {right}): {e}"));
    }
}

/// Every operator the Postgres store's statements use, with its argument types, the type it
/// returns and the built-in's answer (the shadows of
/// [`no_shadowing_function_or_operator_is_called_under_a_hostile_search_path`] give the right
/// answer, and log the call).
const STORE_OPERATORS: &[(&str, &str, &str, &str, &str)] = &[
    (
        "=",
        "text",
        "text",
        "boolean",
        "$1 OPERATOR(pg_catalog.=) $2",
    ),
    (
        "=",
        "bytea",
        "bytea",
        "boolean",
        "$1 OPERATOR(pg_catalog.=) $2",
    ),
    (
        "=",
        "name",
        "name",
        "boolean",
        "$1 OPERATOR(pg_catalog.=) $2",
    ),
    ("=", "oid", "oid", "boolean", "$1 OPERATOR(pg_catalog.=) $2"),
    (
        ">",
        "timestamptz",
        "timestamptz",
        "boolean",
        "$1 OPERATOR(pg_catalog.>) $2",
    ),
    (
        "<=",
        "timestamptz",
        "timestamptz",
        "boolean",
        "$1 OPERATOR(pg_catalog.<=) $2",
    ),
    (
        "+",
        "timestamptz",
        "interval",
        "timestamptz",
        "$1 OPERATOR(pg_catalog.+) $2",
    ),
    (
        "-",
        "timestamptz",
        "timestamptz",
        "interval",
        "$1 OPERATOR(pg_catalog.-) $2",
    ),
    (
        "*",
        "float8",
        "interval",
        "interval",
        "$1 OPERATOR(pg_catalog.*) $2",
    ),
    (
        "*",
        "numeric",
        "numeric",
        "numeric",
        "$1 OPERATOR(pg_catalog.*) $2",
    ),
    (
        ">",
        "numeric",
        "numeric",
        "boolean",
        "$1 OPERATOR(pg_catalog.>) $2",
    ),
    (
        "<",
        "numeric",
        "numeric",
        "boolean",
        "$1 OPERATOR(pg_catalog.<) $2",
    ),
    (
        ">",
        "int8",
        "int4",
        "boolean",
        "$1 OPERATOR(pg_catalog.>) $2",
    ),
    (
        ">",
        "int2",
        "int4",
        "boolean",
        "$1 OPERATOR(pg_catalog.>) $2",
    ),
    (
        "||",
        "text",
        "text",
        "text",
        "$1 OPERATOR(pg_catalog.||) $2",
    ),
];

/// Panics if the store's connections called any shadowing function or operator of `schema`
/// (also in a transaction that rolled back: `calls_seen`); then drops the schema.
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
    let seen: i64 = sqlx::query_scalar(&format!(
        "SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM {schema}.calls_seen"
    ))
    .fetch_one(admin)
    .await
    .expect("calls_seen");
    assert_eq!(
        seen, 0,
        "the store called shadowing functions in a transaction that rolled back"
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
    sqlx::raw_sql(&format!(
        "TRUNCATE {schema}.calls; ALTER SEQUENCE {schema}.calls_seen RESTART"
    ))
    .execute(&admin)
    .await
    .expect("forget the probe's call");

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

/// The year 2999, as a `timestamptz` literal.
const FAR_FUTURE: &str = "'2999-01-01 00:00:00+00'::pg_catalog.timestamptz";

/// A shadowing set that answers wrongly: what it would make the store decide, its functions
/// (as [`shadowing_schema`] takes them) and its operators (as [`shadowing_operators`]).
type WrongShadow = (
    &'static str,
    &'static [(&'static str, &'static str, &'static str)],
    &'static [(
        &'static str,
        &'static str,
        &'static str,
        &'static str,
        &'static str,
    )],
);

/// Shadows of the operators the store's claims, lease checks, fences and purges decide with,
/// and of `now()`, each answering wrongly.
const WRONG_SHADOWS: &[WrongShadow] = &[
    (
        "every key is the one claimed (`=` on text always true)",
        &[],
        &[("=", "text", "text", "boolean", "true")],
    ),
    (
        "every token passes the fence (`=` on bytea always true)",
        &[],
        &[("=", "bytea", "bytea", "boolean", "true")],
    ),
    (
        "every lease is live (`>` on timestamptz always true)",
        &[],
        &[(">", "timestamptz", "timestamptz", "boolean", "true")],
    ),
    (
        "no row has expired (`<=` on timestamptz always false)",
        &[],
        &[("<=", "timestamptz", "timestamptz", "boolean", "false")],
    ),
    (
        "every lease ends in 2999 (`timestamptz + interval`)",
        &[],
        &[("+", "timestamptz", "interval", "timestamptz", FAR_FUTURE)],
    ),
    (
        "the clock reads 2999 (`now()`)",
        &[("now()", "timestamptz", FAR_FUTURE)],
        &[],
    ),
];

/// sqlops: operators (and `now()`) shadowed by a schema first in `search_path`, with
/// `pg_catalog` explicitly after it, each answering wrongly ([`WRONG_SHADOWS`], one schema and
/// one store at a time): claims, lease expiry, fences, completion, release, purge and
/// `complete_in` decide exactly as without it ([`decides_as_usual`]). Before the operators
/// were written `OPERATOR(pg_catalog.=)` etc., the first case already failed: the claim of
/// another key answered `Existing` with the first key's claim (the shadowing `=` on text
/// matched every row); alone, each other operator case failed too (see `decides_as_usual`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_shadowing_operators_do_not_change_what_the_store_decides() {
    let admin = common::pg_pool(2).await;
    for (case, functions, operators) in WRONG_SHADOWS {
        let schema = identifier("evil");
        shadowing_schema(&admin, &schema, functions).await;
        shadowing_operators(&admin, &schema, operators).await;
        let table = unique("sp_ops");
        let store = hostile_store(&schema, &table).await;
        decides_as_usual(&store, &admin, &table, case).await;
        store.pool().close().await;
        assert_no_shadow_called(&admin, &schema).await;
    }
}

/// On `store` (the table `public.<table>`): two claims of two keys are both claimed; a
/// duplicate finds the claim; a 300 ms lease ends by the real clock and lapses (gone, then
/// taken over, the stale attempt fenced off); a stranger's completion and release are fenced
/// off; purge deletes exactly the one expired row; extend, time_to_live, complete, get,
/// release, delete and `complete_in` answer as on any connection. `case` names the shadows.
async fn decides_as_usual(store: &PostgresStore, admin: &PgPool, table: &str, case: &str) {
    let prefix = idempotency_testkit::unique_prefix();
    let key = |name: &str| StoreKey::from_raw(format!("{prefix}{name}"));
    let (a, b, c, d) = (key("a"), key("b"), key("c"), key("d"));
    let (short, long) = (Duration::from_millis(300), Duration::from_secs(60));
    let stranger = in_progress("stranger");

    let first_a = in_progress("a");
    let claimed = store.try_claim(&a, &first_a, short).await;
    assert!(matches!(claimed, Ok(Claim::Claimed)), "{case}: {claimed:?}");
    let first_b = in_progress("b");
    let claimed = store.try_claim(&b, &first_b, long).await;
    assert!(
        matches!(claimed, Ok(Claim::Claimed)),
        "{case}: another key is claimed, not found taken: {claimed:?}"
    );
    let first_c = in_progress("c");
    let claimed = store.try_claim(&c, &first_c, short).await;
    assert!(matches!(claimed, Ok(Claim::Claimed)), "{case}: {claimed:?}");
    let duplicate = store.try_claim(&b, &in_progress("b again"), long).await;
    assert!(
        matches!(&duplicate, Ok(Claim::Existing(Record::InProgress(held))) if held.token == first_b.token),
        "{case}: a duplicate finds the live claim: {duplicate:?}"
    );
    assert!(
        row_holds(
            admin,
            table,
            &a,
            "expires_at < pg_catalog.clock_timestamp() + interval '1 minute'"
        )
        .await,
        "{case}: the lease ends by the real clock, 300 ms after the claim"
    );
    assert_eq!(
        complete(store, &b, &stranger, "stolen")
            .await
            .expect("complete"),
        Fenced::LeaseLost,
        "{case}: a completion under another token is fenced off"
    );

    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        store.get(&a).await.expect("get"),
        None,
        "{case}: the 300 ms lease lapsed"
    );
    assert_eq!(store.time_to_live(&a).await.expect("ttl"), None, "{case}");
    let second_c = in_progress("c again");
    let taken = store.try_claim(&c, &second_c, long).await;
    assert!(
        matches!(taken, Ok(Claim::Claimed)),
        "{case}: the lapsed claim is taken over: {taken:?}"
    );
    assert_eq!(
        complete(store, &c, &first_c, "stale")
            .await
            .expect("complete"),
        Fenced::LeaseLost,
        "{case}: the lapsed attempt is fenced off"
    );
    assert_eq!(
        complete(store, &c, &second_c, "c").await.expect("complete"),
        Fenced::Applied,
        "{case}"
    );
    assert_eq!(
        store.purge_expired(100).await.expect("purge"),
        1,
        "{case}: purge deletes the one expired row (a's), no live one"
    );

    assert_eq!(
        store
            .extend(&b, &first_b.token, long)
            .await
            .expect("extend"),
        Fenced::Applied,
        "{case}"
    );
    let left = store.time_to_live(&b).await.expect("ttl");
    assert!(
        left.is_some_and(|left| left > Duration::from_secs(50) && left <= long),
        "{case}: {left:?}"
    );
    assert_eq!(
        complete(store, &b, &first_b, "done")
            .await
            .expect("complete"),
        Fenced::Applied,
        "{case}"
    );
    let Some(Record::Completed(done)) = store.get(&b).await.expect("get") else {
        panic!("{case}: b is completed")
    };
    assert_eq!(&done.outcome.body[..], b"done", "{case}");
    assert!(
        matches!(
            store.get(&c).await.expect("get"),
            Some(Record::Completed(_))
        ),
        "{case}: c is completed, and stays"
    );

    let first_d = in_progress("d");
    let claimed = store.try_claim(&d, &first_d, long).await;
    assert!(matches!(claimed, Ok(Claim::Claimed)), "{case}: {claimed:?}");
    assert_eq!(
        store.release(&d, &stranger.token).await.expect("release"),
        Fenced::LeaseLost,
        "{case}: a release under another token is fenced off"
    );
    assert_eq!(
        store.release(&d, &first_d.token).await.expect("release"),
        Fenced::Applied,
        "{case}"
    );
    assert_eq!(store.get(&d).await.expect("get"), None, "{case}");
    assert!(store.delete(&b).await.expect("delete"), "{case}");
    assert!(!store.delete(&b).await.expect("delete"), "{case}");

    complete_in_a_transaction(store, "sqlops-wrong-shadows").await;
}

/// Every built-in function the store calls, and every operator its statements use
/// ([`STORE_OPERATORS`]), shadowed (same name and argument types, so the shadow wins when it
/// comes first in `search_path`) by one that logs the call: migrate, build, claim,
/// flag-and-wait, complete (with a waiter, so `pg_notify`), extend, release, get,
/// time_to_live, delete, purge and `complete_in` call none of them, and the waiter is woken by
/// the real `pg_notify` with the real payload. Before the functions were qualified the shadows
/// were called (the log held them; the shadowing `to_regclass` made `build()` find no table);
/// before the operators were (`OPERATOR(pg_catalog.=)` …), the log held every one of
/// [`STORE_OPERATORS`].
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_shadowing_function_or_operator_is_called_under_a_hostile_search_path() {
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
            ("now()", "timestamptz", "pg_catalog.now()"),
            ("quote_ident(text)", "text", "pg_catalog.quote_ident($1)"),
            (
                "replace(text, text, text)",
                "text",
                "pg_catalog.replace($1, $2, $3)",
            ),
        ],
    )
    .await;
    shadowing_operators(&admin, &schema, STORE_OPERATORS).await;
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
    // A lapsed claim taken over (the upsert's expiry test) and an expired row to purge.
    let lapsed = StoreKey::from_raw(format!("{prefix}lapsed"));
    let expired = StoreKey::from_raw(format!("{prefix}expired"));
    for key in [&lapsed, &expired] {
        store
            .try_claim(key, &in_progress("lapsing"), Duration::from_millis(1))
            .await
            .expect("claim");
    }
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(matches!(
        store
            .try_claim(&lapsed, &in_progress("takeover"), Duration::from_secs(60))
            .await
            .expect("claim"),
        Claim::Claimed
    ));
    assert_eq!(store.purge_expired(100).await.expect("purge"), 1);

    // complete_in, in a transaction on the store's (hostile) connections; then one whose
    // claim is gone (the statement that fails when it does not apply), under a lock_timeout
    // of the transaction's own (the lock bound compares it).
    complete_in_a_transaction(&store, "sqlfix-search-path").await;
    complete_in_after_the_claim_is_gone(&store, &admin, &table).await;

    assert_no_shadow_called(&admin, &schema).await;
}

/// A claim through the engine whose row an operator deletes, then `complete_in` in a
/// transaction on the store's own connections with `SET LOCAL lock_timeout = '5s'`: the
/// answer is `LeaseLost` and the transaction is aborted.
async fn complete_in_after_the_claim_is_gone(store: &PostgresStore, admin: &PgPool, table: &str) {
    let engine = idempotency_core::Idempotency::builder(store.clone())
        .prefix(idempotency_testkit::unique_prefix())
        .ignore_env()
        .build()
        .expect("engine");
    let guard = common::orders::claim(&engine, &IdempotencyKey::new("sqlops-gone").unwrap()).await;
    sqlx::query(&format!("DELETE FROM public.{table}"))
        .execute(admin)
        .await
        .expect("the operator deletes the claim");
    let mut tx = store.pool().begin().await.expect("begin");
    sqlx::query("SET LOCAL lock_timeout = '5s'")
        .execute(&mut *tx)
        .await
        .expect("SET LOCAL lock_timeout");
    let lost = store.complete_in(&mut tx, guard, receipt("gone")).await;
    assert!(
        matches!(lost, Err(IdempotencyError::LeaseLost)),
        "{:?}",
        lost.err()
    );
    assert_aborted(&mut tx).await;
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
