//! The application side of the transactional-completion tests (`breaker15_abort.rs`,
//! `breaker18_tx.rs`, `newuser4_transactions.rs`): an engine on a Postgres store with an
//! orders table next to it, the receipt it stores, and the documented flow (claim, a
//! transaction that writes one order and completes in it, commit).

use std::time::{Duration, Instant};

use idempotency_core::{
    Begin, Fingerprint, Guard, Idempotency, IdempotencyBuilder, IdempotencyError, IdempotencyKey,
    IdempotencyStore, PendingCompletion, Scope, StoredOutcome,
};
use idempotency_sql::sqlx::postgres::PgPool;
use idempotency_sql::{PostgresStore, sqlx};

/// The stored outcome of an order: `text` as a JSON body.
pub fn receipt(text: &str) -> StoredOutcome {
    StoredOutcome::new(text.to_owned(), Some("application/json".into()))
}

/// A table name unique to this test: `{what}_` and 16 random characters.
pub fn unique(what: &str) -> String {
    format!("{what}_{}", &idempotency_testkit::unique_prefix()[1..17])
}

/// A lowercase SQL identifier unique to this test: [`unique`] with every character other than
/// ASCII letters, digits and `_` replaced by `_`.
pub fn identifier(what: &str) -> String {
    unique(what)
        .to_lowercase()
        .replace(|c: char| !c.is_ascii_alphanumeric() && c != '_', "_")
}

/// A new orders table name (`orders_…`).
pub fn orders_table() -> String {
    unique("orders")
}

/// An engine (a unique prefix, the environment ignored) over a Postgres store, with an orders
/// table (`id`, `who`) next to it, on the store's pool.
pub struct Fixture {
    pub engine: Idempotency<PostgresStore>,
    pub orders: String,
    pub pool: PgPool,
}

impl Fixture {
    /// Creates the orders table `orders` on `store`'s pool and builds the engine over `store`;
    /// `configure` sets the lease, renewals, timeouts.
    pub async fn build(
        store: PostgresStore,
        orders: String,
        configure: impl FnOnce(IdempotencyBuilder<PostgresStore>) -> IdempotencyBuilder<PostgresStore>,
    ) -> Self {
        let pool = store.pool().clone();
        sqlx::query(&format!(
            "CREATE TABLE {orders} (id BIGSERIAL PRIMARY KEY, who TEXT NOT NULL)"
        ))
        .execute(&pool)
        .await
        .expect("orders table");
        let engine =
            configure(Idempotency::builder(store).prefix(idempotency_testkit::unique_prefix()))
                .ignore_env()
                .build()
                .expect("engine");
        Self {
            engine,
            orders,
            pool,
        }
    }

    /// An engine over `store` with `lease` (renewed or not) and `store_timeout`, and a new
    /// orders table.
    pub async fn on_store(
        store: PostgresStore,
        lease: Duration,
        renew: bool,
        store_timeout: Duration,
    ) -> Self {
        Self::build(store, orders_table(), |builder| {
            builder
                .lease(lease)
                .renew_leases(renew)
                .store_timeout(store_timeout)
        })
        .await
    }

    /// The records table.
    pub fn table(&self) -> &str {
        self.engine.store().table()
    }

    /// The record key of `key` in the global scope.
    pub fn store_key(&self, key: &IdempotencyKey) -> String {
        self.engine
            .store_key(&Scope::global(), key)
            .as_str()
            .to_owned()
    }

    /// How many orders were committed.
    pub async fn count(&self) -> i64 {
        count(&self.engine, &self.orders).await
    }

    /// [`runs_within`] on this engine.
    pub async fn runs_within(
        &self,
        key: &IdempotencyKey,
        within: Duration,
    ) -> Result<Guard<PostgresStore>, String> {
        runs_within(&self.engine, key, within).await
    }

    /// [`run`] on this engine.
    pub async fn run(&self, key: &IdempotencyKey) -> Guard<PostgresStore> {
        run(&self.engine, key).await
    }

    /// [`retry_orders`] on this engine.
    pub async fn retry_orders(&self, key: &IdempotencyKey) {
        retry_orders(&self.engine, &self.orders, key).await;
    }

    /// `complete_in` on `conn` for `guard`, with the receipt `who`.
    pub async fn complete_in(
        &self,
        conn: &mut sqlx::PgConnection,
        guard: Guard<PostgresStore>,
        who: &str,
    ) -> Result<PendingCompletion<PostgresStore>, IdempotencyError> {
        self.engine
            .store()
            .complete_in(conn, guard, receipt(who))
            .await
    }

    /// Writes the order `who` on `conn` and `complete_in` there for `guard` with the receipt
    /// `who`, while an operator holds the record row: panics unless the completion fails with
    /// `StoreUnavailable`, and answers that error.
    pub async fn order_fails_on_the_lock(
        &self,
        conn: &mut sqlx::PgConnection,
        guard: Guard<PostgresStore>,
        who: &str,
    ) -> IdempotencyError {
        self.insert(conn, who).await;
        let error = self
            .complete_in(conn, guard, who)
            .await
            .expect_err("the UPDATE waits on the operator's lock");
        assert!(
            matches!(error, IdempotencyError::StoreUnavailable(_)),
            "{error:?}"
        );
        error
    }

    /// [`order_and_complete`] on this engine.
    pub async fn order_and_complete(&self, guard: Guard<PostgresStore>, who: &str, what: &str) {
        order_and_complete(&self.engine, &self.orders, guard, who, what).await;
    }

    /// Writes the order `who` on `conn` (in the caller's transaction, if any).
    pub async fn insert(&self, conn: &mut sqlx::PgConnection, who: &str) {
        insert(conn, &self.orders, who).await;
    }
}

/// How many orders the table `orders` (on `engine`'s pool) holds.
pub async fn count(engine: &Idempotency<PostgresStore>, orders: &str) -> i64 {
    sqlx::query_scalar(&format!("SELECT COUNT(*) FROM {orders}"))
        .fetch_one(engine.store().pool())
        .await
        .expect("count")
}

/// Writes the order `who` into `orders` on `conn`.
pub async fn insert(conn: &mut sqlx::PgConnection, orders: &str, who: &str) {
    sqlx::query(&format!("INSERT INTO {orders} (who) VALUES ($1)"))
        .bind(who)
        .execute(conn)
        .await
        .expect("insert order");
}

/// `begin` until it runs, within `within` (a claim released in the background has landed).
pub async fn runs_within<S: IdempotencyStore + 'static>(
    engine: &Idempotency<S>,
    key: &IdempotencyKey,
    within: Duration,
) -> Result<Guard<S>, String> {
    let deadline = Instant::now() + within;
    loop {
        match engine
            .begin(&Scope::global(), key, Fingerprint::of("order"))
            .await
        {
            Ok(Begin::Run(guard)) => return Ok(guard),
            Ok(Begin::Replay(outcome)) => return Err(format!("replayed {outcome:?}")),
            Err(error) if Instant::now() >= deadline => {
                return Err(format!("still refused after {within:?}: {error}"));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

/// `begin` once in the global scope; panics unless it runs.
pub async fn claim<S: IdempotencyStore + 'static>(
    engine: &Idempotency<S>,
    key: &IdempotencyKey,
) -> Guard<S> {
    let Ok(Begin::Run(guard)) = engine
        .begin(&Scope::global(), key, Fingerprint::of("order"))
        .await
    else {
        panic!("expected to run");
    };
    guard
}

/// Locks the record row `store_key` of `table` in an operator's open transaction on `pool`
/// (`SELECT … FOR UPDATE`), as an operator's session holds it.
pub async fn operator_locks_row(
    pool: &PgPool,
    table: &str,
    store_key: &str,
) -> sqlx::Transaction<'static, sqlx::Postgres> {
    let mut operator = pool.begin().await.expect("operator tx");
    sqlx::query(&format!(
        "SELECT 1 FROM {table} WHERE store_key = $1 FOR UPDATE"
    ))
    .bind(store_key)
    .execute(&mut *operator)
    .await
    .expect("operator locks the row");
    operator
}

/// `begin` until it runs (within 10 s).
pub async fn run(
    engine: &Idempotency<PostgresStore>,
    key: &IdempotencyKey,
) -> Guard<PostgresStore> {
    runs_within(engine, key, Duration::from_secs(10))
        .await
        .expect("runs")
}

/// The documented flow for `guard`, errors handled (READ COMMITTED, a transaction on the
/// engine's pool): the order `who`, `complete_in` with the receipt `who` (`what`: the panic
/// message if it fails), commit.
pub async fn order_and_complete(
    engine: &Idempotency<PostgresStore>,
    orders: &str,
    guard: Guard<PostgresStore>,
    who: &str,
    what: &str,
) {
    let mut tx = engine.store().pool().begin().await.expect("begin tx");
    insert(&mut tx, orders, who).await;
    let pending = engine
        .store()
        .complete_in(&mut tx, guard, receipt(who))
        .await
        .expect(what);
    tx.commit().await.expect("commit");
    pending.committed();
}

/// A retry of `key` runs the whole documented flow: one more order (`retry`).
pub async fn retry_orders(engine: &Idempotency<PostgresStore>, orders: &str, key: &IdempotencyKey) {
    let guard = run(engine, key).await;
    order_and_complete(engine, orders, guard, "retry", "the retry completes").await;
}

/// Panics unless the transaction on `conn` refuses further statements (SQLSTATE 25P02: a
/// failed statement aborted it).
pub async fn assert_aborted(conn: &mut sqlx::PgConnection) {
    let refused = sqlx::query("SELECT 1").execute(conn).await;
    let code = refused
        .as_ref()
        .err()
        .and_then(|e| e.as_database_error())
        .and_then(|e| e.code())
        .map(|c| c.into_owned());
    assert_eq!(code.as_deref(), Some("25P02"), "{refused:?}");
}
