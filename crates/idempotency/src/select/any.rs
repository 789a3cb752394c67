//! [`AnyStore`]: whichever store the environment chose, behind one type the engine takes.

use std::fmt;
#[cfg(any(feature = "redis", feature = "sql"))]
use std::sync::Arc;
use std::time::Duration;

use idempotency_core::{
    Claim, Completed, Fenced, IdempotencyStore, InProgress, LeaseToken, Record, StoreError,
    StoreKey, Waited,
};

#[cfg(any(feature = "redis", feature = "sql"))]
use super::deferred::{Connect, Deferred};
use super::description::{BackendKind, StoreDescription, StoreSelectionError};
#[cfg(any(feature = "redis", feature = "sql"))]
use idempotency_core::error_chain;

/// One of the stores compiled into this build, chosen at run time (by [`super::store_from_env`]
/// or built from a store with `From`). Implements [`IdempotencyStore`] by delegation, so
/// `Idempotency<AnyStore>` is one engine type whatever the environment says.
#[derive(Clone)]
pub struct AnyStore {
    inner: Inner,
    description: StoreDescription,
}

#[derive(Clone)]
enum Inner {
    #[cfg(feature = "memory")]
    Memory(idempotency_memory::MemoryStore),
    #[cfg(feature = "redis")]
    Redis(idempotency_redis::RedisStore),
    #[cfg(feature = "redis")]
    RedisCluster(idempotency_redis::RedisClusterStore),
    #[cfg(feature = "kv-rest")]
    KvRest(idempotency_kv_rest::KvRestStore),
    #[cfg(feature = "sql")]
    Postgres(idempotency_sql::PostgresStore),
    #[cfg(feature = "sql")]
    Sqlite(idempotency_sql::SqliteStore),
    /// A Postgres server that did not answer at start-up: connecting in the background.
    #[cfg(feature = "sql")]
    PostgresDeferred(Arc<Deferred<idempotency_sql::PostgresStore>>),
    /// Not opened because the kill switch was on at start-up (the engine never calls it).
    Unopened,
    /// A Redis server that did not answer at start-up: connecting in the background.
    #[cfg(feature = "redis")]
    RedisDeferred(Arc<Deferred<idempotency_redis::RedisStore>>),
    /// A Redis Cluster that did not answer at start-up: connecting in the background.
    #[cfg(feature = "redis")]
    RedisClusterDeferred(Arc<Deferred<idempotency_redis::RedisClusterStore>>),
}

impl fmt::Debug for AnyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Every inner store's Debug already redacts its secrets.
        let mut out = f.debug_struct("AnyStore");
        out.field("description", &self.description);
        match self.inner {
            #[cfg(feature = "memory")]
            Inner::Memory(ref store) => out.field("store", store),
            #[cfg(feature = "redis")]
            Inner::Redis(ref store) => out.field("store", store),
            #[cfg(feature = "kv-rest")]
            Inner::KvRest(ref store) => out.field("store", store),
            #[cfg(feature = "redis")]
            Inner::RedisDeferred(ref deferred) => out.field("store", deferred),
            #[cfg(feature = "redis")]
            Inner::RedisCluster(ref store) => out.field("store", store),
            #[cfg(feature = "redis")]
            Inner::RedisClusterDeferred(ref deferred) => out.field("store", deferred),
            #[cfg(feature = "sql")]
            Inner::Postgres(ref store) => out.field("store", store),
            #[cfg(feature = "sql")]
            Inner::Sqlite(ref store) => out.field("store", store),
            #[cfg(feature = "sql")]
            Inner::PostgresDeferred(ref deferred) => out.field("store", deferred),
            Inner::Unopened => out.field("store", &"not opened (kill switch)"),
        };
        out.finish()
    }
}

impl AnyStore {
    /// What this store is, safe to log.
    pub fn description(&self) -> &StoreDescription {
        &self.description
    }

    /// The kind of store.
    pub fn kind(&self) -> BackendKind {
        self.description.kind()
    }

    /// Whether the store is connected. `false` only for a server that did not answer at
    /// start-up and has not answered since: it is being connected in the background, and until
    /// then every operation fails with [`StoreError::Unavailable`] (the engine's failure policy
    /// answers requests).
    pub fn is_connected(&self) -> bool {
        match self.inner {
            #[cfg(feature = "redis")]
            Inner::RedisDeferred(ref deferred) => deferred.ready().is_some(),
            #[cfg(feature = "redis")]
            Inner::RedisClusterDeferred(ref deferred) => deferred.ready().is_some(),
            #[cfg(feature = "sql")]
            Inner::PostgresDeferred(ref deferred) => deferred.ready().is_some(),
            Inner::Unopened => false,
            #[allow(unreachable_patterns)]
            _ => true,
        }
    }

    /// The memory store, if that is what this is.
    #[cfg(feature = "memory")]
    pub fn as_memory(&self) -> Option<&idempotency_memory::MemoryStore> {
        match self.inner {
            Inner::Memory(ref store) => Some(store),
            #[allow(unreachable_patterns)]
            _ => None,
        }
    }

    /// The Redis store (for `doctor()`), if that is what this is.
    #[cfg(feature = "redis")]
    pub fn as_redis(&self) -> Option<&idempotency_redis::RedisStore> {
        match self.inner {
            Inner::Redis(ref store) => Some(store),
            Inner::RedisDeferred(ref deferred) => deferred.ready(),
            #[allow(unreachable_patterns)]
            _ => None,
        }
    }

    /// The Redis Cluster store (for `doctor()`), if that is what this is and it is connected.
    #[cfg(feature = "redis")]
    pub fn as_redis_cluster(&self) -> Option<&idempotency_redis::RedisClusterStore> {
        match self.inner {
            Inner::RedisCluster(ref store) => Some(store),
            Inner::RedisClusterDeferred(ref deferred) => deferred.ready(),
            #[allow(unreachable_patterns)]
            _ => None,
        }
    }

    /// The Postgres store, if that is what this is and it is connected: its
    /// [`write_in`](idempotency_sql::PostgresStore::write_in) completes a claim inside the
    /// application's transaction, and [`pool`](idempotency_sql::PostgresStore::pool) is the
    /// pool the facade opened on `DATABASE_URL`.
    #[cfg(feature = "sql")]
    pub fn as_postgres(&self) -> Option<&idempotency_sql::PostgresStore> {
        match self.inner {
            Inner::Postgres(ref store) => Some(store),
            Inner::PostgresDeferred(ref deferred) => deferred.ready(),
            #[allow(unreachable_patterns)]
            _ => None,
        }
    }

    /// The SQLite store, if that is what this is (see [`AnyStore::as_postgres`]).
    #[cfg(feature = "sql")]
    pub fn as_sqlite(&self) -> Option<&idempotency_sql::SqliteStore> {
        match self.inner {
            Inner::Sqlite(ref store) => Some(store),
            #[allow(unreachable_patterns)]
            _ => None,
        }
    }

    /// The KV REST store, if that is what this is.
    #[cfg(feature = "kv-rest")]
    pub fn as_kv_rest(&self) -> Option<&idempotency_kv_rest::KvRestStore> {
        match self.inner {
            Inner::KvRest(ref store) => Some(store),
            #[allow(unreachable_patterns)]
            _ => None,
        }
    }
}

#[cfg(feature = "memory")]
impl From<idempotency_memory::MemoryStore> for AnyStore {
    fn from(store: idempotency_memory::MemoryStore) -> Self {
        Self {
            inner: Inner::Memory(store),
            description: StoreDescription::new(BackendKind::Memory, None, None),
        }
    }
}

#[cfg(feature = "redis")]
impl From<idempotency_redis::RedisStore> for AnyStore {
    fn from(store: idempotency_redis::RedisStore) -> Self {
        Self {
            inner: Inner::Redis(store),
            description: StoreDescription::new(BackendKind::Redis, None, None),
        }
    }
}

#[cfg(feature = "sql")]
impl From<idempotency_sql::PostgresStore> for AnyStore {
    fn from(store: idempotency_sql::PostgresStore) -> Self {
        Self {
            inner: Inner::Postgres(store),
            description: StoreDescription::new(BackendKind::Sql, None, None),
        }
    }
}

#[cfg(feature = "sql")]
impl From<idempotency_sql::SqliteStore> for AnyStore {
    fn from(store: idempotency_sql::SqliteStore) -> Self {
        Self {
            inner: Inner::Sqlite(store),
            description: StoreDescription::new(BackendKind::Sql, None, None),
        }
    }
}

#[cfg(feature = "kv-rest")]
impl From<idempotency_kv_rest::KvRestStore> for AnyStore {
    fn from(store: idempotency_kv_rest::KvRestStore) -> Self {
        let url = store.config().url().to_owned();
        Self {
            inner: Inner::KvRest(store),
            description: StoreDescription::new(BackendKind::KvRest, Some(&url), None),
        }
    }
}

/// A store that is never opened: the kill switch is on, so the engine will not call it.
pub(super) fn unopened(description: StoreDescription) -> AnyStore {
    AnyStore {
        inner: Inner::Unopened,
        description,
    }
}

/// Who opens the store: an application starting up, or an operator's tool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum OpenMode {
    /// [`super::StorePlan::open`]: create the SQLite file and migrate the SQL table; a server
    /// that does not answer is connected in the background (logged loudly).
    App,
    /// [`super::StorePlan::open_existing`]: create and migrate nothing; a server that does not
    /// answer is an error, logged by nobody here.
    Existing,
}

/// Open the store a plan describes. `url` and `token` are what the plan read;
/// `operation_timeout` is the store's time budget of one operation (`None`: the store's
/// default), kept by a store connected in the background too.
#[allow(unused_variables)]
pub(super) async fn open(
    description: StoreDescription,
    url: Option<String>,
    token: Option<String>,
    operation_timeout: Option<Duration>,
    mode: OpenMode,
) -> Result<AnyStore, StoreSelectionError> {
    let failed = |source: idempotency_core::BoxError| StoreSelectionError::Open {
        description: description.clone(),
        source,
    };
    // An operator's tool must not start what an app starts: a background reconnection with
    // its banner, or the records table created in whatever database the URL names.
    #[cfg(feature = "sql")]
    if mode == OpenMode::Existing && description.kind() == BackendKind::Sql {
        let url = url.ok_or_else(|| failed("no database URL".into()))?;
        let inner = if is_sqlite_url(&url) {
            Inner::Sqlite(
                open_existing_sqlite(&url, operation_timeout)
                    .await
                    .map_err(failed)?,
            )
        } else {
            Inner::Postgres(
                open_existing_postgres(&url, operation_timeout)
                    .await
                    .map_err(failed)?,
            )
        };
        return Ok(AnyStore { inner, description });
    }
    let inner = match (description.kind(), url, token) {
        #[cfg(feature = "memory")]
        (BackendKind::Memory, _, _) => Inner::Memory(idempotency_memory::MemoryStore::new()),
        #[cfg(feature = "redis")]
        (BackendKind::Redis, Some(url), _) => {
            match connect_redis(&url, operation_timeout, Attempt::StartUp).await {
                Ok(store) => Inner::Redis(store),
                // The server is down or slow: start anyway and connect in the background, so an
                // outage of the store at deploy time does not keep the service down (the failure
                // policy answers requests until the store is back).
                Err(error) if error.is_transient() && mode == OpenMode::App => {
                    tracing::error!(
                        store = %description, error = %error_chain(&error),
                        "THE IDEMPOTENCY STORE IS NOT REACHABLE: starting without it and connecting \
                         in the background; until it answers, the failure policy answers every \
                         protected request"
                    );
                    Inner::RedisDeferred(Deferred::start(
                        description.clone(),
                        url,
                        operation_timeout,
                        error,
                    ))
                }
                Err(error) => return Err(failed(Box::new(error))),
            }
        }
        #[cfg(feature = "redis")]
        (BackendKind::RedisCluster, Some(urls), _) => {
            match <idempotency_redis::RedisClusterStore as Connect>::connect(
                &urls,
                operation_timeout,
            )
            .await
            {
                Ok(store) => Inner::RedisCluster(store),
                Err(error) if error.is_transient() && mode == OpenMode::App => {
                    tracing::error!(
                        store = %description, error = %error_chain(&error),
                        "THE IDEMPOTENCY STORE IS NOT REACHABLE: starting without it and \
                         connecting in the background; until it answers, the failure policy \
                         answers every protected request"
                    );
                    Inner::RedisClusterDeferred(Deferred::start(
                        description.clone(),
                        urls,
                        operation_timeout,
                        error,
                    ))
                }
                Err(error) => return Err(failed(Box::new(error))),
            }
        }
        #[cfg(feature = "kv-rest")]
        (BackendKind::KvRest, Some(url), Some(token)) => Inner::KvRest(
            open_kv_rest(url, token, operation_timeout).map_err(|e| failed(Box::new(e)))?,
        ),
        #[cfg(feature = "sql")]
        (BackendKind::Sql, Some(url), _) if is_sqlite_url(&url) => Inner::Sqlite(
            open_sqlite(&url, operation_timeout)
                .await
                .map_err(|e| failed(Box::new(e)))?,
        ),
        #[cfg(feature = "sql")]
        (BackendKind::Sql, Some(url), _) => {
            match <idempotency_sql::PostgresStore as Connect>::connect(&url, operation_timeout)
                .await
            {
                Ok(store) => Inner::Postgres(store),
                Err(error) if error.is_transient() => {
                    tracing::error!(
                        store = %description, error = %error_chain(&error),
                        "THE IDEMPOTENCY STORE IS NOT REACHABLE: starting without it and \
                         connecting in the background; until it answers, the failure policy \
                         answers every protected request"
                    );
                    Inner::PostgresDeferred(Deferred::start(
                        description.clone(),
                        url,
                        operation_timeout,
                        error,
                    ))
                }
                Err(error) => return Err(failed(Box::new(error))),
            }
        }
        _ => return Err(failed("this store is not compiled into this build".into())),
    };
    Ok(AnyStore { inner, description })
}

/// The KV REST store for `url` and `token`, with `operation_timeout` if given (else the store's
/// default).
#[cfg(feature = "kv-rest")]
fn open_kv_rest(
    url: String,
    token: String,
    operation_timeout: Option<Duration>,
) -> Result<idempotency_kv_rest::KvRestStore, idempotency_kv_rest::KvRestConfigError> {
    let mut config = idempotency_kv_rest::KvRestConfig::new(url, token)?;
    if let Some(timeout) = operation_timeout {
        config = config.operation_timeout(timeout);
    }
    idempotency_kv_rest::KvRestStore::new(config)
}

/// Redis settings: the defaults, with `operation_timeout` if given.
#[cfg(feature = "redis")]
fn redis_builder(operation_timeout: Option<Duration>) -> idempotency_redis::RedisStoreBuilder {
    let builder = idempotency_redis::RedisStore::builder();
    match operation_timeout {
        Some(timeout) => builder.operation_timeout(timeout),
        None => builder,
    }
}

#[cfg(feature = "redis")]
async fn connect_redis(
    url: &str,
    operation_timeout: Option<Duration>,
    at: Attempt,
) -> Result<idempotency_redis::RedisStore, StoreError> {
    let budget = at.budget(operation_timeout);
    let store = within(budget, redis_builder(operation_timeout).connect(url)).await?;
    // Logs its own warnings (eviction policy, persistence); a failed check is not fatal.
    match tokio::time::timeout(budget, store.doctor()).await {
        Ok(Ok(_)) => {}
        Ok(Err(error)) => tracing::warn!(%error, "could not check the Redis server settings"),
        Err(_) => tracing::warn!(
            after = ?budget,
            "could not check the Redis server settings: no answer within the start-up budget"
        ),
    }
    Ok(store)
}

/// Which attempt at opening a Redis store this is.
#[cfg(feature = "redis")]
#[derive(Debug, Clone, Copy)]
enum Attempt {
    /// At start-up, while the application waits.
    StartUp,
    /// In the background, after the start-up attempt failed (the application serves meanwhile).
    Background,
}

#[cfg(feature = "redis")]
impl Attempt {
    /// How long opening the store (connecting, then checking the server) may take.
    ///
    /// At start-up: what it takes with the store's default settings
    /// (`DEFAULT_CONNECT_TIMEOUT` + `DEFAULT_OPERATION_TIMEOUT`), or less under a shorter
    /// operation timeout. A long `IDEMPOTENCY_STORE_TIMEOUT` (minutes, hours) is the budget of
    /// each store call, not of the application's start: a server that accepts connections but
    /// does not answer must not hold it that long (the store is connected in the background
    /// instead). In the background: the connect timeout plus the operation timeout, so a
    /// healthy server behind a slow link (several hundred ms per reply; opening takes about
    /// ten round trips) connects there under a store timeout long enough for it.
    fn budget(self, operation_timeout: Option<Duration>) -> Duration {
        let connect = idempotency_redis::DEFAULT_CONNECT_TIMEOUT;
        let default = idempotency_redis::DEFAULT_OPERATION_TIMEOUT;
        let operation = operation_timeout.unwrap_or(default);
        match self {
            Attempt::StartUp => connect.saturating_add(operation.min(default)),
            Attempt::Background => connect.saturating_add(operation),
        }
    }
}

/// `connect` within `budget` (see [`Attempt::budget`]): past it, a transient
/// [`StoreError::Timeout`] (at start-up, the application then starts and connects in the
/// background).
#[cfg(feature = "redis")]
async fn within<T>(
    budget: Duration,
    connect: impl std::future::Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    tokio::time::timeout(budget, connect)
        .await
        .unwrap_or(Err(StoreError::Timeout {
            operation: idempotency_core::StoreOperation::Connect,
            after: budget,
        }))
}

#[cfg(feature = "redis")]
impl Connect for idempotency_redis::RedisStore {
    async fn connect(url: &str, operation_timeout: Option<Duration>) -> Result<Self, StoreError> {
        connect_redis(url, operation_timeout, Attempt::StartUp).await
    }

    /// With the background budget ([`Attempt::Background`]).
    async fn reconnect(url: &str, operation_timeout: Option<Duration>) -> Result<Self, StoreError> {
        connect_redis(url, operation_timeout, Attempt::Background).await
    }
}

#[cfg(feature = "redis")]
impl Connect for idempotency_redis::RedisClusterStore {
    /// `urls`: seed node URLs separated by commas.
    async fn connect(urls: &str, operation_timeout: Option<Duration>) -> Result<Self, StoreError> {
        connect_cluster(urls, operation_timeout, Attempt::StartUp).await
    }

    /// The cluster client warns once per seed node per failed attempt, by itself (with
    /// nothing listening, two lines every few seconds forever). So a background attempt first
    /// opens a plain TCP connection to each seed (closed at once) and hands over to the client
    /// only when one accepts; until then the failure is the reconnection loop's to report,
    /// rate-limited, with its cause.
    async fn reconnect(
        urls: &str,
        operation_timeout: Option<Duration>,
    ) -> Result<Self, StoreError> {
        if let Some(error) = no_seed_accepts(urls).await {
            return Err(StoreError::Unavailable {
                source: Box::new(error),
            });
        }
        connect_cluster(urls, operation_timeout, Attempt::Background).await
    }
}

#[cfg(feature = "redis")]
async fn connect_cluster(
    urls: &str,
    operation_timeout: Option<Duration>,
    at: Attempt,
) -> Result<idempotency_redis::RedisClusterStore, StoreError> {
    let nodes: Vec<String> = urls.split(',').map(|n| n.trim().to_owned()).collect();
    let budget = at.budget(operation_timeout);
    let store = within(
        budget,
        redis_builder(operation_timeout).connect_cluster(nodes),
    )
    .await?;
    match tokio::time::timeout(budget, store.doctor()).await {
        Ok(Ok(_)) => {}
        Ok(Err(error)) => tracing::warn!(%error, "could not check the Redis Cluster settings"),
        Err(_) => tracing::warn!(
            after = ?budget,
            "could not check the Redis Cluster settings: no answer within the start-up budget"
        ),
    }
    Ok(store)
}

/// No seed node of a Redis Cluster accepts a TCP connection.
#[cfg(feature = "redis")]
#[derive(Debug, thiserror::Error)]
#[error("no seed node accepts connections (last tried: {node})")]
struct SeedsUnreachable {
    /// `host:port` of the last seed tried (no credentials).
    node: String,
    #[source]
    source: std::io::Error,
}

/// Whether every seed in `urls` refuses (or does not answer within a second) a TCP connection:
/// `None` when one accepts, or when a seed is not a TCP URL (the cluster client then decides).
#[cfg(feature = "redis")]
async fn no_seed_accepts(urls: &str) -> Option<SeedsUnreachable> {
    const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
    let mut last = None;
    for node in urls.split(',').map(str::trim) {
        let parsed = url::Url::parse(node).ok()?;
        // As written in the URL (an IPv6 address keeps its brackets) for the message; without
        // the brackets to connect.
        let shown = parsed.host_str()?;
        let host = shown.trim_matches(['[', ']']).to_owned();
        let port = parsed.port().unwrap_or(6379);
        let attempt = tokio::time::timeout(
            PROBE_TIMEOUT,
            tokio::net::TcpStream::connect((host.as_str(), port)),
        )
        .await;
        let source = match attempt {
            Ok(Ok(_stream)) => return None,
            Ok(Err(error)) => error,
            Err(_) => std::io::Error::new(std::io::ErrorKind::TimedOut, "connection timed out"),
        };
        last = Some(SeedsUnreachable {
            node: format!("{shown}:{port}"),
            source,
        });
    }
    last
}

#[cfg(feature = "sql")]
fn is_sqlite_url(url: &str) -> bool {
    url.get(..7)
        .is_some_and(|s| s.eq_ignore_ascii_case("sqlite:"))
}

/// Open an existing SQLite database from its URL (never created; the journal mode is left as
/// the app set it) and check the records table without changing it (`build()`).
#[cfg(feature = "sql")]
async fn open_existing_sqlite(
    url: &str,
    operation_timeout: Option<Duration>,
) -> Result<idempotency_sql::SqliteStore, idempotency_core::BoxError> {
    use idempotency_sql::sqlx::sqlite::{SqliteConnectOptions, SqlitePool};
    use std::str::FromStr as _;
    let options = SqliteConnectOptions::from_str(url)?
        .create_if_missing(false)
        .busy_timeout(Duration::from_secs(5));
    let pool = SqlitePool::connect_with(options).await?;
    Ok(sqlite_builder(pool, operation_timeout).build().await?)
}

/// Connect to an existing Postgres database and check the records table without changing it
/// (`build()`). A server that does not answer is a transient `StoreError`.
#[cfg(feature = "sql")]
async fn open_existing_postgres(
    url: &str,
    operation_timeout: Option<Duration>,
) -> Result<idempotency_sql::PostgresStore, idempotency_core::BoxError> {
    let pool = postgres_pool(url, operation_timeout)
        .await
        .map_err(sql_start_error)?;
    Ok(postgres_builder(pool, operation_timeout).build().await?)
}

/// Open a SQLite database from its URL (created if missing; WAL and a busy timeout, as
/// [`idempotency_sql::sqlite_connect_options`]) and migrate the records table.
#[cfg(feature = "sql")]
async fn open_sqlite(
    url: &str,
    operation_timeout: Option<Duration>,
) -> Result<idempotency_sql::SqliteStore, idempotency_sql::SqlStoreError> {
    use idempotency_sql::sqlx::sqlite::{
        SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqliteSynchronous,
    };
    use std::str::FromStr as _;
    let options = SqliteConnectOptions::from_str(url)?
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal)
        .busy_timeout(Duration::from_secs(5));
    let pool = SqlitePool::connect_with(options).await?;
    sqlite_builder(pool, operation_timeout).migrate().await
}

/// SQLite store settings: the defaults, with `operation_timeout` if given.
#[cfg(feature = "sql")]
fn sqlite_builder(
    pool: idempotency_sql::sqlx::SqlitePool,
    operation_timeout: Option<Duration>,
) -> idempotency_sql::SqliteStoreBuilder {
    let builder = idempotency_sql::SqliteStore::builder(pool);
    match operation_timeout {
        Some(timeout) => builder.operation_timeout(timeout),
        None => builder,
    }
}

/// How long opening a Postgres store waits for its first connection (at start-up, and in each
/// background attempt), whatever the store's operation timeout: a server that does not answer
/// must not hold an application's start for a long `IDEMPOTENCY_STORE_TIMEOUT` (the store is
/// then connected in the background).
#[cfg(feature = "sql")]
const POSTGRES_CONNECT_BUDGET: Duration = Duration::from_secs(2);

/// The pool's acquire timeout beyond the store's operation timeout: the store bounds every
/// operation, the wait for a pooled connection included, by its operation timeout and answers
/// [`StoreError::Timeout`] past it; the pool's own timeout is only a backstop behind it.
#[cfg(feature = "sql")]
const POSTGRES_ACQUIRE_MARGIN: Duration = Duration::from_secs(1);

/// The longest acquire timeout given to the pool: sqlx adds it to the clock (`Instant + d`,
/// which panics on overflow), and `IDEMPOTENCY_STORE_TIMEOUT` may be up to `Duration::MAX`.
#[cfg(feature = "sql")]
const POSTGRES_ACQUIRE_CAP: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// The acquire timeout of the facade's Postgres pool under the store's `operation_timeout`
/// (`None`: the store's default): never shorter than the operation timeout, so a saturated
/// pool is waited for as long as the operation's budget allows (the store then answers
/// [`StoreError::Timeout`]) and not cut short by the pool (it was 2 s whatever the budget);
/// at least [`POSTGRES_CONNECT_BUDGET`] (what it was), so the application's own use of the
/// pool ([`AnyStore::as_postgres`]) waits no less than before.
#[cfg(feature = "sql")]
fn postgres_acquire_timeout(operation_timeout: Option<Duration>) -> Duration {
    operation_timeout
        .unwrap_or(idempotency_sql::DEFAULT_OPERATION_TIMEOUT)
        .saturating_add(POSTGRES_ACQUIRE_MARGIN)
        .clamp(POSTGRES_CONNECT_BUDGET, POSTGRES_ACQUIRE_CAP)
}

/// The facade's pool on the Postgres database at `url`, its acquire timeout following the
/// store's `operation_timeout` ([`postgres_acquire_timeout`]), with one connection opened and
/// returned to it within [`POSTGRES_CONNECT_BUDGET`] (as sqlx's `connect` does within the
/// acquire timeout): past it, [`sqlx::Error::PoolTimedOut`](idempotency_sql::sqlx::Error),
/// as before (a transient start-up failure).
#[cfg(feature = "sql")]
async fn postgres_pool(
    url: &str,
    operation_timeout: Option<Duration>,
) -> Result<idempotency_sql::sqlx::PgPool, idempotency_sql::sqlx::Error> {
    let pool = idempotency_sql::sqlx::postgres::PgPoolOptions::new()
        .acquire_timeout(postgres_acquire_timeout(operation_timeout))
        .connect_lazy(url)?;
    match tokio::time::timeout(POSTGRES_CONNECT_BUDGET, pool.acquire()).await {
        Ok(Ok(first)) => {
            drop(first);
            Ok(pool)
        }
        Ok(Err(error)) => Err(error),
        Err(_) => Err(idempotency_sql::sqlx::Error::PoolTimedOut),
    }
}

/// Postgres store settings: the defaults, with `operation_timeout` if given.
#[cfg(feature = "sql")]
fn postgres_builder(
    pool: idempotency_sql::sqlx::PgPool,
    operation_timeout: Option<Duration>,
) -> idempotency_sql::PostgresStoreBuilder {
    let builder = idempotency_sql::PostgresStore::builder(pool);
    match operation_timeout {
        Some(timeout) => builder.operation_timeout(timeout),
        None => builder,
    }
}

#[cfg(feature = "sql")]
impl Connect for idempotency_sql::PostgresStore {
    /// Connects a pool to `url` and creates or upgrades the records table.
    async fn connect(url: &str, operation_timeout: Option<Duration>) -> Result<Self, StoreError> {
        let pool = postgres_pool(url, operation_timeout)
            .await
            .map_err(sql_start_error)?;
        postgres_builder(pool, operation_timeout)
            .migrate()
            .await
            .map_err(|e| match e {
                idempotency_sql::SqlStoreError::Database(e) => sql_start_error(e),
                other => StoreError::Other {
                    source: Box::new(other),
                },
            })
    }
}

/// A connection failure at start-up is transient (the server may come back); anything else
/// (a refused password, a bad database name) is not.
#[cfg(feature = "sql")]
fn sql_start_error(error: idempotency_sql::sqlx::Error) -> StoreError {
    use idempotency_sql::sqlx::Error;
    match error {
        Error::Io(_) | Error::PoolTimedOut | Error::PoolClosed | Error::Tls(_) => {
            StoreError::Unavailable {
                source: Box::new(error),
            }
        }
        other => StoreError::Other {
            source: Box::new(other),
        },
    }
}

/// Forward one call to whichever store is inside.
macro_rules! delegate {
    ($self:ident, $store:ident => $call:expr) => {
        match $self.inner {
            #[cfg(feature = "memory")]
            Inner::Memory(ref $store) => $call.await,
            #[cfg(feature = "redis")]
            Inner::Redis(ref $store) => $call.await,
            #[cfg(feature = "kv-rest")]
            Inner::KvRest(ref $store) => $call.await,
            #[cfg(feature = "redis")]
            Inner::RedisDeferred(ref deferred) => match deferred.get() {
                Ok($store) => $call.await,
                Err(error) => Err(error),
            },
            #[cfg(feature = "redis")]
            Inner::RedisCluster(ref $store) => $call.await,
            #[cfg(feature = "redis")]
            Inner::RedisClusterDeferred(ref deferred) => match deferred.get() {
                Ok($store) => $call.await,
                Err(error) => Err(error),
            },
            #[cfg(feature = "sql")]
            Inner::Postgres(ref $store) => $call.await,
            #[cfg(feature = "sql")]
            Inner::Sqlite(ref $store) => $call.await,
            #[cfg(feature = "sql")]
            Inner::PostgresDeferred(ref deferred) => match deferred.get() {
                Ok($store) => $call.await,
                Err(error) => Err(error),
            },
            Inner::Unopened => Err(StoreError::Unavailable {
                source: format!(
                    "the store was not opened: {} was on at start-up",
                    idempotency_core::DISABLE_ENV_VAR
                )
                .into(),
            }),
        }
    };
}

impl IdempotencyStore for AnyStore {
    async fn try_claim(
        &self,
        key: &StoreKey,
        record: &InProgress,
        lease: Duration,
    ) -> Result<Claim, StoreError> {
        delegate!(self, s => s.try_claim(key, record, lease))
    }

    async fn complete(
        &self,
        key: &StoreKey,
        token: &LeaseToken,
        record: &Completed,
        retention: Duration,
    ) -> Result<Fenced, StoreError> {
        delegate!(self, s => s.complete(key, token, record, retention))
    }

    async fn release(&self, key: &StoreKey, token: &LeaseToken) -> Result<Fenced, StoreError> {
        delegate!(self, s => s.release(key, token))
    }

    async fn extend(
        &self,
        key: &StoreKey,
        token: &LeaseToken,
        lease: Duration,
    ) -> Result<Fenced, StoreError> {
        delegate!(self, s => s.extend(key, token, lease))
    }

    async fn get(&self, key: &StoreKey) -> Result<Option<Record>, StoreError> {
        delegate!(self, s => s.get(key))
    }

    async fn delete(&self, key: &StoreKey) -> Result<bool, StoreError> {
        delegate!(self, s => s.delete(key))
    }

    async fn time_to_live(&self, key: &StoreKey) -> Result<Option<Duration>, StoreError> {
        delegate!(self, s => s.time_to_live(key))
    }

    /// Forwarded, so waiting duplicates are woken on the stores that notify (memory, Redis,
    /// Postgres) rather than polled.
    async fn wait_for_change(
        &self,
        key: &StoreKey,
        seen: &LeaseToken,
        timeout: Duration,
    ) -> Result<Waited, StoreError> {
        delegate!(self, s => s.wait_for_change(key, seen, timeout))
    }

    /// Forwarded, so an engine over a store that bounds its own calls (Redis) arms one timer
    /// per store call, not two. A deferred store that is not connected yet answers `None`
    /// (its calls fail at once until it is), so the engine keeps its own timer meanwhile.
    fn operation_bound(&self) -> Option<Duration> {
        match self.inner {
            #[cfg(feature = "memory")]
            Inner::Memory(ref store) => store.operation_bound(),
            #[cfg(feature = "redis")]
            Inner::Redis(ref store) => store.operation_bound(),
            #[cfg(feature = "kv-rest")]
            Inner::KvRest(ref store) => store.operation_bound(),
            #[cfg(feature = "redis")]
            Inner::RedisDeferred(ref deferred) => {
                deferred.ready().and_then(|store| store.operation_bound())
            }
            #[cfg(feature = "redis")]
            Inner::RedisCluster(ref store) => store.operation_bound(),
            #[cfg(feature = "redis")]
            Inner::RedisClusterDeferred(ref deferred) => {
                deferred.ready().and_then(|store| store.operation_bound())
            }
            #[cfg(feature = "sql")]
            Inner::Postgres(ref store) => store.operation_bound(),
            #[cfg(feature = "sql")]
            Inner::Sqlite(ref store) => store.operation_bound(),
            #[cfg(feature = "sql")]
            Inner::PostgresDeferred(ref deferred) => {
                deferred.ready().and_then(|store| store.operation_bound())
            }
            Inner::Unopened => None,
        }
    }

    /// Forwarded to the memory store, which answers a claim at once (no boxed future per
    /// call); every other store answers `None` and the engine makes the async call.
    fn try_claim_now(
        &self,
        key: &StoreKey,
        record: &InProgress,
        lease: Duration,
        now: std::time::Instant,
    ) -> Option<Result<Claim, StoreError>> {
        match self.inner {
            #[cfg(feature = "memory")]
            Inner::Memory(ref store) => store.try_claim_now(key, record, lease, now),
            #[allow(unreachable_patterns)]
            _ => {
                let _ = (key, record, lease, now);
                None
            }
        }
    }

    /// Forwarded to the memory store, as `try_claim_now`.
    fn complete_now(
        &self,
        key: &StoreKey,
        token: &LeaseToken,
        record: &Completed,
        retention: Duration,
        now: std::time::Instant,
    ) -> Option<Result<Fenced, StoreError>> {
        match self.inner {
            #[cfg(feature = "memory")]
            Inner::Memory(ref store) => store.complete_now(key, token, record, retention, now),
            #[allow(unreachable_patterns)]
            _ => {
                let _ = (key, token, record, retention, now);
                None
            }
        }
    }
}

#[cfg(all(test, feature = "redis"))]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// The background probe hands over to the cluster client as soon as one seed accepts, and
    /// otherwise names the last seed and why (host and port only: never a password).
    #[tokio::test]
    async fn the_seed_probe_finds_a_listening_node_and_names_a_refusing_one() {
        let listening = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let open = listening.local_addr().unwrap().port();
        let closed = {
            let gone = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            gone.local_addr().unwrap().port()
        };
        let refused = format!("redis://:hunter2@127.0.0.1:{closed}");
        let error = no_seed_accepts(&refused).await.unwrap();
        assert_eq!(error.node, format!("127.0.0.1:{closed}"));
        assert_eq!(error.source.kind(), std::io::ErrorKind::ConnectionRefused);
        assert!(!error_chain(&error).contains("hunter2"));
        let mixed = format!("{refused}, redis://127.0.0.1:{open}");
        assert!(no_seed_accepts(&mixed).await.is_none());
        // An IPv6 seed is named as written, brackets kept.
        let v6 = no_seed_accepts(&format!("redis://[::1]:{closed}"))
            .await
            .unwrap();
        assert_eq!(v6.node, format!("[::1]:{closed}"));
        // Not a TCP URL: the cluster client decides.
        assert!(no_seed_accepts("unix:///tmp/redis.sock").await.is_none());
    }
}
