//! Choosing the store from the environment (DESIGN §4): the same binary runs on the embedded
//! store on a laptop and on Redis or the KV REST API in production, without code changes.
//!
//! | variables (first match wins) | store |
//! |---|---|
//! | `UPSTASH_REDIS_REST_URL` + `UPSTASH_REDIS_REST_TOKEN` | KV REST (feature `kv-rest`) |
//! | `KV_REST_API_URL` + `KV_REST_API_TOKEN` | KV REST (feature `kv-rest`) |
//! | `REDIS_CLUSTER_URLS` | Redis Cluster (feature `redis`): seed node URLs separated by commas |
//! | `REDIS_URL` | Redis (feature `redis`; also `rediss://` with `redis-tls`, `unix:///path`) |
//! | `KV_URL` | Redis (feature `redis`; Vercel's `rediss://` URL needs `redis-tls`) |
//! | none | memory (feature `memory`), **logged as a warning**; an error under [`StoreSelection::RequireDistributed`] |
//!
//! `IDEMPOTENCY_STORE=memory|redis|kv-rest|sql` overrides the detection: the named store is used
//! and its variables must be set (`memory` is still refused under
//! [`StoreSelection::RequireDistributed`]).
//!
//! `IDEMPOTENCY_STORE=sql` (feature `sql`) keeps the records in the application's own database,
//! `DATABASE_URL` (`postgres://…` or `sqlite://…`), in the `idempotency_records` table (created
//! or upgraded at start-up by `migrate()`; [`StorePlan::open_existing`], for operators' tools,
//! creates and migrates nothing). It is only ever an explicit choice: `DATABASE_URL`
//! alone never moves the records out of the store detection chooses (memory when nothing else is
//! set), because most applications set `DATABASE_URL` for their own data.
//!
//! Empty values count as unset. A variable that selects a store this build cannot open (its
//! feature is off), a REST URL without its token and an unusable URL are errors, never a silent
//! fall back to another store.
//!
//! The choice is made in two steps so it can be tested without touching the process
//! environment: [`plan_store`] reads variables through a lookup function and does no I/O;
//! [`StorePlan::open`] connects. [`store_from_env`] does both with `std::env::var`.
//!
//! Each store bounds its own operations (its `operation_timeout`). [`store_from_env`],
//! [`store_from_env_with`] and [`store_from_lookup`] leave each store's default (1 s);
//! [`store_from_env_with_timeout`], [`store_from_lookup_with_timeout`] and
//! [`StorePlan::operation_timeout`] set it. [`engine_from_env`] sets it to the engine's store
//! timeout (`IDEMPOTENCY_STORE_TIMEOUT`, or the engine's default), so that one setting is the
//! budget of every store call.

mod any;
#[cfg(any(feature = "redis", feature = "sql"))]
mod deferred;
mod description;
mod redact;

use std::fmt;
use std::time::Duration;

use thiserror::Error;

pub use any::AnyStore;
pub use description::{BackendKind, StoreDescription, StoreSelection, StoreSelectionError};
pub use redact::redact_url;

/// The REST variable pairs, in the order they are tried (the official Upstash names first):
/// the core's [`KV_REST_ENV_PAIRS`](idempotency_core::KV_REST_ENV_PAIRS), stated once.
pub const REST_ENV_PAIRS: [(&str, &str); 2] = idempotency_core::KV_REST_ENV_PAIRS;

/// The Redis URL variables, in the order they are tried.
pub const REDIS_ENV_VARS: [&str; 2] = ["REDIS_URL", "KV_URL"];

/// The Redis Cluster variable: seed node URLs separated by commas
/// (`redis://10.0.0.1:7000,redis://10.0.0.2:7000`); the client discovers the other nodes. A
/// comma inside a password must be percent-encoded (`%2C`).
pub const REDIS_CLUSTER_ENV_VAR: &str = "REDIS_CLUSTER_URLS";

/// `IDEMPOTENCY_STORE`: names the store explicitly (`memory`, `redis`, `redis-cluster`, `kv-rest`) instead of
/// detecting it from which variables are set. The named store's own variables must then be set;
/// the others are ignored.
pub const STORE_ENV_VAR: &str = "IDEMPOTENCY_STORE";

/// The application's database URL, read only when [`STORE_ENV_VAR`] is `sql`
/// (`postgres://`, `postgresql://` or `sqlite:`).
pub const DATABASE_URL_ENV_VAR: &str = "DATABASE_URL";

const REDIS_SCHEMES: [&str; 7] = [
    "redis",
    "rediss",
    "valkey",
    "valkeys",
    "unix",
    "redis+unix",
    "valkey+unix",
];

/// A store chosen from the environment but not opened yet (no I/O has happened). `Debug` and
/// [`StorePlan::description`] never show the token or a password.
#[derive(Clone, PartialEq, Eq)]
pub struct StorePlan {
    description: StoreDescription,
    url: Option<String>,
    token: Option<String>,
    /// The stores' per-operation budget; `None`: each store's own default.
    operation_timeout: Option<Duration>,
}

impl fmt::Debug for StorePlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StorePlan")
            .field("description", &self.description)
            .field("token", &self.token.as_ref().map(|_| redact::REDACTED))
            .field("operation_timeout", &self.operation_timeout)
            .finish_non_exhaustive()
    }
}

impl StorePlan {
    /// The chosen store, safe to log.
    pub fn description(&self) -> &StoreDescription {
        &self.description
    }

    /// The kind of store chosen.
    pub fn kind(&self) -> BackendKind {
        self.description.kind()
    }

    /// Open the store with `timeout` as its time budget of one operation (the store's
    /// `operation_timeout`: Redis, Redis Cluster, KV REST, Postgres and SQLite; the memory
    /// store needs none), instead of the store's own default (1 s). Give it the engine's
    /// `store_timeout`, so that the engine's budget is the one store calls get:
    /// [`engine_from_env`] does.
    ///
    /// Connection timeouts keep their defaults.
    #[must_use]
    pub fn operation_timeout(mut self, timeout: Duration) -> Self {
        self.operation_timeout = Some(timeout);
        self
    }

    /// Open the store: connect to Redis (and check the server), build the REST client, or
    /// create the memory store with a warning that it does not deduplicate across instances.
    /// Logs the choice at info level.
    ///
    /// A Redis server that does not answer (refused, timed out) does not stop start-up: the
    /// store is returned unconnected, an error is logged loudly, and it connects in the
    /// background (retrying with backoff up to every 5 s); until then every operation fails
    /// with `StoreError::Unavailable`, so the engine's failure policy answers requests, as it
    /// does for an outage that begins later. [`AnyStore::is_connected`] tells which. (The KV
    /// REST store makes no connection at start-up; its first request finds out.) Needs a tokio
    /// runtime.
    ///
    /// # Errors
    /// [`StoreSelectionError::Open`] when the store cannot be built (an unusable URL, a
    /// refused password, TLS without its feature...).
    pub async fn open(self) -> Result<AnyStore, StoreSelectionError> {
        let description = self.description.clone();
        match description.kind() {
            BackendKind::Memory => {
                let explicit = description.source() == Some(STORE_ENV_VAR);
                tracing::warn!("{}", description::memory_store_warning(explicit));
            }
            _ => tracing::info!(store = %description, "opening the idempotency store"),
        }
        any::open(
            self.description,
            self.url,
            self.token,
            self.operation_timeout,
            any::OpenMode::App,
        )
        .await
    }

    /// Open the store as an operator's tool does (the `idempotency` CLI): use what exists,
    /// create and change nothing, and fail rather than wait for a store that does not answer.
    ///
    /// Unlike [`open`](Self::open), which starts an application:
    /// - the SQL store runs **no migration and no DDL**: the records table must exist with the
    ///   shape this version needs (the store's `build()` check, read-only), and a SQLite database
    ///   file is never created (a mistyped path is an error, not a new empty database);
    /// - a server that does not answer (refused, timed out) is an error, not a store connecting
    ///   in the background, and nothing is logged about it (the caller reports the error);
    /// - nothing is logged about the choice either.
    ///
    /// # Errors
    /// [`StoreSelectionError::Open`] when the store cannot be opened. Its source is a
    /// `StoreError` for which `is_transient()` holds when the server did not answer, an
    /// `idempotency_sql::SqlStoreError` (`MissingTable`, `WrongShape`...) when the SQL records
    /// table is missing or has another shape, and otherwise the backend's own error (a SQLite
    /// file that does not exist, a refused password, an unusable URL...).
    pub async fn open_existing(self) -> Result<AnyStore, StoreSelectionError> {
        any::open(
            self.description,
            self.url,
            self.token,
            self.operation_timeout,
            any::OpenMode::Existing,
        )
        .await
    }
}

/// Choose a store from variables read through `lookup` (no I/O; see [store selection](crate#store-selection) for the variables).
///
/// ```
/// use idempotency::{StoreSelection, StoreSelectionError, plan_store};
/// // A service with several instances must not fall back to a per-process store.
/// let nothing_set = |_: &str| None;
/// let refused = plan_store(StoreSelection::RequireDistributed, nothing_set);
/// assert!(matches!(refused, Err(StoreSelectionError::DistributedStoreRequired)));
///
/// # #[cfg(feature = "redis")] {
/// let plan = plan_store(StoreSelection::RequireDistributed, |name| {
///     (name == "REDIS_URL").then(|| "redis://:hunter2@10.0.0.5:6379".to_owned())
/// })?;
/// assert_eq!(plan.description().to_string(), "redis at redis://:<redacted>@10.0.0.5:6379 (from REDIS_URL)");
/// # }
/// # Ok::<(), idempotency::StoreSelectionError>(())
/// ```
///
/// # Errors
/// See [`StoreSelectionError`]: a distributed store required but not configured, a REST URL
/// without its token, an unusable URL, a store whose feature is off.
pub fn plan_store(
    selection: StoreSelection,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<StorePlan, StoreSelectionError> {
    plan_for(Compiled::THIS_BUILD, selection, lookup)
}

/// Which stores a build has (a parameter so the tests can check every feature combination from
/// any one build).
#[derive(Debug, Clone, Copy)]
struct Compiled {
    memory: bool,
    redis: bool,
    redis_tls: bool,
    kv_rest: bool,
    sql: bool,
}

impl Compiled {
    const THIS_BUILD: Self = Self {
        memory: cfg!(feature = "memory"),
        redis: cfg!(feature = "redis"),
        redis_tls: cfg!(feature = "redis-tls"),
        kv_rest: cfg!(feature = "kv-rest"),
        sql: cfg!(feature = "sql"),
    };
}

fn plan_for(
    compiled: Compiled,
    selection: StoreSelection,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<StorePlan, StoreSelectionError> {
    let present = |name: &str| lookup(name).filter(|v| !v.trim().is_empty());
    let explicit = match present(STORE_ENV_VAR) {
        None => None,
        Some(name) => Some(match name.trim().to_ascii_lowercase().as_str() {
            "memory" => BackendKind::Memory,
            "redis" | "valkey" => BackendKind::Redis,
            "redis-cluster" | "cluster" | "valkey-cluster" => BackendKind::RedisCluster,
            "kv-rest" | "rest" | "upstash" => BackendKind::KvRest,
            "sql" | "postgres" | "postgresql" | "sqlite" | "database" => BackendKind::Sql,
            _ => {
                return Err(StoreSelectionError::InvalidVariable {
                    variable: STORE_ENV_VAR,
                    reason: format!(
                        "`{}` is not a store; expected `memory`, `redis`, `redis-cluster`, \
                         `kv-rest` or `sql`",
                        name.trim()
                    ),
                });
            }
        }),
    };
    if explicit == Some(BackendKind::Sql) {
        return sql_plan(compiled, present(DATABASE_URL_ENV_VAR));
    }
    if matches!(explicit, None | Some(BackendKind::KvRest)) {
        for (url_var, token_var) in REST_ENV_PAIRS {
            match (present(url_var), present(token_var)) {
                (Some(url), Some(token)) => {
                    return rest_plan(compiled, url_var, url.trim(), token);
                }
                (Some(_), None) => {
                    return Err(StoreSelectionError::IncompleteRestConfig {
                        present: url_var,
                        missing: token_var,
                    });
                }
                (None, Some(_)) => {
                    return Err(StoreSelectionError::IncompleteRestConfig {
                        present: token_var,
                        missing: url_var,
                    });
                }
                (None, None) => {}
            }
        }
    }
    if matches!(explicit, None | Some(BackendKind::RedisCluster))
        && let Some(urls) = present(REDIS_CLUSTER_ENV_VAR)
    {
        return redis_cluster_plan(compiled, &urls);
    }
    if matches!(explicit, None | Some(BackendKind::Redis)) {
        for variable in REDIS_ENV_VARS {
            if let Some(url) = present(variable) {
                return redis_plan(compiled, variable, url.trim());
            }
        }
    }
    match explicit {
        Some(BackendKind::KvRest) => {
            return Err(StoreSelectionError::InvalidVariable {
                variable: STORE_ENV_VAR,
                reason: "selects the KV REST store, but neither UPSTASH_REDIS_REST_URL + \
                         UPSTASH_REDIS_REST_TOKEN nor KV_REST_API_URL + KV_REST_API_TOKEN is set"
                    .to_owned(),
            });
        }
        Some(BackendKind::RedisCluster) => {
            return Err(StoreSelectionError::InvalidVariable {
                variable: STORE_ENV_VAR,
                reason: format!(
                    "selects the Redis Cluster store, but {REDIS_CLUSTER_ENV_VAR} is not set"
                ),
            });
        }
        Some(BackendKind::Redis) => {
            return Err(StoreSelectionError::InvalidVariable {
                variable: STORE_ENV_VAR,
                reason: "selects the Redis store, but neither REDIS_URL nor KV_URL is set"
                    .to_owned(),
            });
        }
        _ => {}
    }
    match selection {
        StoreSelection::RequireDistributed => Err(StoreSelectionError::DistributedStoreRequired),
        StoreSelection::AllowMemory if compiled.memory => Ok(StorePlan {
            // Named by `IDEMPOTENCY_STORE=memory`, or chosen because nothing else is set.
            description: StoreDescription::new(
                BackendKind::Memory,
                None,
                (explicit == Some(BackendKind::Memory)).then_some(STORE_ENV_VAR),
            ),
            url: None,
            token: None,
            operation_timeout: None,
        }),
        StoreSelection::AllowMemory => Err(StoreSelectionError::MemoryUnavailable),
    }
}

fn sql_plan(compiled: Compiled, url: Option<String>) -> Result<StorePlan, StoreSelectionError> {
    let variable = DATABASE_URL_ENV_VAR;
    let Some(url) = url else {
        return Err(StoreSelectionError::InvalidVariable {
            variable: STORE_ENV_VAR,
            reason: format!("selects the SQL store, but {variable} is not set"),
        });
    };
    let url = url.trim();
    let scheme = url
        .split_once(':')
        .map(|(scheme, _)| scheme.to_ascii_lowercase());
    if !matches!(
        scheme.as_deref(),
        Some("postgres" | "postgresql" | "sqlite")
    ) {
        return Err(StoreSelectionError::InvalidVariable {
            variable,
            reason: format!(
                "`{}` is neither a postgres:// nor a sqlite: URL",
                redact_url(url)
            ),
        });
    }
    if !compiled.sql {
        return Err(feature_disabled(variable, BackendKind::Sql));
    }
    Ok(StorePlan {
        description: StoreDescription::new(BackendKind::Sql, Some(url), Some(variable)),
        url: Some(url.to_owned()),
        token: None,
        operation_timeout: None,
    })
}

fn rest_plan(
    compiled: Compiled,
    variable: &'static str,
    url: &str,
    token: String,
) -> Result<StorePlan, StoreSelectionError> {
    if !(url.starts_with("https://") || url.starts_with("http://")) {
        return Err(StoreSelectionError::InvalidVariable {
            variable,
            reason: format!("`{}` is not an http(s) URL", redact_url(url)),
        });
    }
    if !compiled.kv_rest {
        return Err(feature_disabled(variable, BackendKind::KvRest));
    }
    Ok(StorePlan {
        description: StoreDescription::new(BackendKind::KvRest, Some(url), Some(variable)),
        url: Some(url.to_owned()),
        token: Some(token),
        operation_timeout: None,
    })
}

fn redis_cluster_plan(compiled: Compiled, urls: &str) -> Result<StorePlan, StoreSelectionError> {
    let variable = REDIS_CLUSTER_ENV_VAR;
    let nodes: Vec<&str> = urls
        .split(',')
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .collect();
    if nodes.is_empty() {
        return Err(StoreSelectionError::InvalidVariable {
            variable,
            reason: "no node URL (expected `redis://host:port,redis://host:port`)".to_owned(),
        });
    }
    for node in &nodes {
        let checked = redis_plan(compiled, variable, node)?;
        if node
            .split_once("://")
            .is_some_and(|(scheme, _)| scheme.ends_with("unix"))
        {
            return Err(StoreSelectionError::InvalidVariable {
                variable,
                reason: format!(
                    "`{}`: cluster nodes are reached over TCP, not a unix socket",
                    redact_url(node)
                ),
            });
        }
        drop(checked);
    }
    let url = nodes.join(",");
    Ok(StorePlan {
        description: StoreDescription::new(BackendKind::RedisCluster, Some(&url), Some(variable)),
        url: Some(url),
        token: None,
        operation_timeout: None,
    })
}

fn redis_plan(
    compiled: Compiled,
    variable: &'static str,
    url: &str,
) -> Result<StorePlan, StoreSelectionError> {
    let scheme = url.split_once("://").map(|(scheme, _)| scheme);
    let Some(scheme) = scheme.filter(|s| REDIS_SCHEMES.contains(&s.to_ascii_lowercase().as_str()))
    else {
        return Err(StoreSelectionError::InvalidVariable {
            variable,
            reason: format!(
                "`{}` is not a redis://, rediss://, valkey:// or unix:// URL",
                redact_url(url)
            ),
        });
    };
    if !compiled.redis {
        return Err(feature_disabled(variable, BackendKind::Redis));
    }
    let tls = matches!(scheme.to_ascii_lowercase().as_str(), "rediss" | "valkeys");
    if tls && !compiled.redis_tls {
        return Err(StoreSelectionError::FeatureDisabled {
            variable,
            backend: BackendKind::Redis,
            feature: "redis-tls",
        });
    }
    Ok(StorePlan {
        description: StoreDescription::new(BackendKind::Redis, Some(url), Some(variable)),
        url: Some(url.to_owned()),
        token: None,
        operation_timeout: None,
    })
}

fn feature_disabled(variable: &'static str, backend: BackendKind) -> StoreSelectionError {
    StoreSelectionError::FeatureDisabled {
        variable,
        backend,
        feature: backend.feature(),
    }
}

/// [`plan_store`] then [`StorePlan::open`], except under the kill switch.
///
/// When `DISABLE_IDEMPOTENCY_CHECKS` is on (as `lookup` reads it), the store is planned (so a
/// misconfiguration is still reported) but **not opened**: an operator turns the checks off in
/// exactly the emergency where the store may be down, and the engine built with the switch on
/// never calls the store. Every operation on the returned store fails with
/// `StoreError::Unavailable`.
///
/// A kill-switch value that is not one of the accepted spellings
/// ([`idempotency_core::parse_kill_switch`]) is refused with
/// [`StoreSelectionError::InvalidVariable`] naming `DISABLE_IDEMPOTENCY_CHECKS`.
///
/// A store that is configured correctly but does not answer (connection refused, timeout) does
/// not fail either: see [`StorePlan::open`].
///
/// The store keeps its own default time budget per operation (1 s), whatever
/// `IDEMPOTENCY_STORE_TIMEOUT` says: [`store_from_lookup_with_timeout`] sets it.
///
/// # Errors
/// As both.
pub async fn store_from_lookup(
    selection: StoreSelection,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<AnyStore, StoreSelectionError> {
    store_from(selection, None, lookup).await
}

/// [`store_from_lookup`], with `timeout` as the store's time budget of one operation (see
/// [`StorePlan::operation_timeout`]); usually the engine's `store_timeout`.
///
/// ```
/// # #[cfg(feature = "memory")]
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// use std::time::Duration;
/// use idempotency::{Idempotency, StoreSelection, store_from_lookup_with_timeout};
/// let timeout = Duration::from_secs(3);
/// let store =
///     store_from_lookup_with_timeout(StoreSelection::AllowMemory, timeout, |_| None).await?;
/// let engine = Idempotency::builder(store).store_timeout(timeout).build()?;
/// # let _ = engine;
/// # Ok::<(), Box<dyn std::error::Error>>(()) }).unwrap();
/// ```
///
/// # Errors
/// As [`store_from_lookup`].
pub async fn store_from_lookup_with_timeout(
    selection: StoreSelection,
    timeout: Duration,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<AnyStore, StoreSelectionError> {
    store_from(selection, Some(timeout), lookup).await
}

async fn store_from(
    selection: StoreSelection,
    operation_timeout: Option<Duration>,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<AnyStore, StoreSelectionError> {
    // An unrecognised value is refused, as a typo in `IDEMPOTENCY_STORE` is: the operator who
    // typed `flase` or `ture` must learn it now, not believe the switch is set.
    let disabled = match lookup(idempotency_core::DISABLE_ENV_VAR) {
        None => false,
        Some(value) => idempotency_core::parse_kill_switch(&value).map_err(|_| {
            StoreSelectionError::InvalidVariable {
                variable: idempotency_core::DISABLE_ENV_VAR,
                reason: format!(
                    "{value:?} is not recognised: {}",
                    idempotency_core::KILL_SWITCH_ACCEPTED
                ),
            }
        })?,
    };
    let mut plan = plan_store(selection, lookup)?;
    if let Some(timeout) = operation_timeout {
        plan = plan.operation_timeout(timeout);
    }
    if disabled {
        tracing::warn!(
            store = %plan.description(),
            "{} is on: the idempotency store is not opened and every request runs unprotected",
            idempotency_core::DISABLE_ENV_VAR
        );
        return Ok(any::unopened(plan.description));
    }
    plan.open().await
}

/// The store the process environment selects (memory, with a warning, when none is configured).
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// let store = idempotency::store_from_env().await?;
/// tracing::info!(store = %store.description(), "idempotency store ready");
/// let engine = idempotency::Idempotency::builder(store).build()?;
/// # let _ = engine; Ok(()) }
/// ```
///
/// # Errors
/// As [`plan_store`] and [`StorePlan::open`].
pub async fn store_from_env() -> Result<AnyStore, StoreSelectionError> {
    store_from_env_with(StoreSelection::AllowMemory).await
}

/// The store the process environment selects, under `selection`.
///
/// The store keeps its own default time budget per operation (1 s): it does not read
/// `IDEMPOTENCY_STORE_TIMEOUT`. To give it the engine's, use [`store_from_env_with_timeout`]
/// or [`engine_from_env`].
///
/// # Errors
/// As [`plan_store`] and [`StorePlan::open`].
pub async fn store_from_env_with(
    selection: StoreSelection,
) -> Result<AnyStore, StoreSelectionError> {
    store_from_lookup(selection, |name| std::env::var(name).ok()).await
}

/// The store the process environment selects, under `selection`, with `timeout` as its time
/// budget of one operation (see [`StorePlan::operation_timeout`]): give it the engine's
/// `store_timeout`, so that a slow store is cut where the engine's budget says.
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use idempotency::{EnvSettings, Idempotency, StoreSelection, store_from_env_with_timeout};
/// let settings = EnvSettings::from_env()?;
/// let timeout = settings.store_timeout_or_default();
/// let store = store_from_env_with_timeout(StoreSelection::AllowMemory, timeout).await?;
/// let engine = settings.apply(Idempotency::builder(store)).build()?;
/// # let _ = engine; Ok(()) }
/// ```
///
/// # Errors
/// As [`plan_store`] and [`StorePlan::open`].
pub async fn store_from_env_with_timeout(
    selection: StoreSelection,
    timeout: Duration,
) -> Result<AnyStore, StoreSelectionError> {
    store_from_lookup_with_timeout(selection, timeout, |name| std::env::var(name).ok()).await
}

/// Why [`engine_from_env`] could not build an engine. Each message names the variable to fix.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum FromEnvError {
    /// An engine setting variable (`IDEMPOTENCY_LEASE`...) holds an unusable value.
    #[error(transparent)]
    Settings(#[from] crate::SettingsError),
    /// No store could be chosen or built.
    #[error(transparent)]
    Store(#[from] StoreSelectionError),
    /// The settings are individually valid but not together (e.g. a retention shorter than the
    /// lease).
    #[error("invalid idempotency settings: {0}")]
    Config(#[from] idempotency_core::ConfigError),
}

/// The whole set-up from the process environment: engine settings ([`crate::EnvSettings`]:
/// `IDEMPOTENCY_RETENTION`, `_LEASE`, `_STORE_TIMEOUT`, `_FAILURE_POLICY`,
/// `_WAIT_IN_PROGRESS`), the kill switch, and the store ([`store_from_env_with_timeout`]). Logs
/// the settings and the store at start-up.
///
/// The store's own time budget of one operation (its `operation_timeout`) is the engine's store
/// timeout: `IDEMPOTENCY_STORE_TIMEOUT`, or the engine's default (1.5 s) when it is unset. So
/// `IDEMPOTENCY_STORE_TIMEOUT=5s` gives every store call 5 s, not the store's default 1 s.
/// It is also how long a call may wait while its server is unreachable: the Postgres pool
/// retries refused connections until its acquire timeout (the store timeout + 1 s), so under
/// `5s` a Postgres outage is answered (by the failure policy) after about 5 s, not 2 s as
/// before the pool followed the store timeout. Keep it short (the default, or a few seconds).
///
/// The service starts even when the store is down (it connects in the background and the
/// failure policy answers meanwhile) and, under `DISABLE_IDEMPOTENCY_CHECKS=true`, without
/// opening the store at all.
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use idempotency::{StoreSelection, engine_from_env};
/// let engine = engine_from_env(StoreSelection::AllowMemory).await?;
/// # let _ = engine; Ok(()) }
/// ```
///
/// # Errors
/// [`FromEnvError`], naming the variable at fault.
pub async fn engine_from_env(
    selection: StoreSelection,
) -> Result<idempotency_core::Idempotency<AnyStore>, FromEnvError> {
    engine_from_lookup(selection, |name| std::env::var(name).ok()).await
}

/// [`engine_from_env`] with the variables read through `lookup` (the engine's builder still
/// reads the kill switch from the process environment, as there).
async fn engine_from_lookup(
    selection: StoreSelection,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<idempotency_core::Idempotency<AnyStore>, FromEnvError> {
    let settings = crate::EnvSettings::from_lookup(&lookup)?;
    let store =
        store_from_lookup_with_timeout(selection, settings.store_timeout_or_default(), lookup)
            .await?;
    tracing::info!(store = %store.description(), settings = %settings, "idempotency configured");
    let builder = settings.apply(idempotency_core::Idempotency::builder(store));
    Ok(builder.build()?)
}

#[cfg(test)]
mod tests;
