//! Connecting: [`RedisStoreBuilder`].

use idempotency_core::StoreOperation;
use std::sync::Arc;
use std::time::Duration;

use idempotency_core::StoreError;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::{Client, Value};

use crate::error::{Error, is_refusal};
use crate::info::{info_field, node_texts, parse_version};
use crate::notify::Notifier;
use crate::scripts::SCRIPTS;
use crate::store::{ClaimStrategy, RedisStore, ServerMode};

/// Default time budget of one store operation.
pub const DEFAULT_OPERATION_TIMEOUT: Duration = Duration::from_secs(1);
/// Default time budget of one connection attempt.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// Settings for a [`RedisStore`]; finish with [`connect`](Self::connect),
/// [`connect_cluster`](Self::connect_cluster) or [`with_connection`](Self::with_connection).
///
/// ```no_run
/// # async fn demo() -> Result<(), idempotency_core::StoreError> {
/// use std::time::Duration;
/// use idempotency_redis::RedisStore;
///
/// let store = RedisStore::builder()
///     .operation_timeout(Duration::from_millis(250))
///     .connect("redis://127.0.0.1:6379/0")
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct RedisStoreBuilder {
    operation_timeout: Duration,
    connect_timeout: Duration,
    reconnect_attempts: usize,
    claim_strategy: Option<ClaimStrategy>,
    preload_scripts: bool,
    replica_wait: Option<crate::ReplicaWait>,
}

impl Default for RedisStoreBuilder {
    fn default() -> Self {
        Self {
            operation_timeout: DEFAULT_OPERATION_TIMEOUT,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            reconnect_attempts: 3,
            claim_strategy: None,
            preload_scripts: true,
            replica_wait: None,
        }
    }
}

impl RedisStoreBuilder {
    /// Time budget of each store operation, reconnection included (default 1 s). Past it the
    /// operation fails with [`StoreError::Timeout`]. Keep it at or below the engine's
    /// `store_timeout` so the store's typed error is the one reported.
    #[must_use]
    pub fn operation_timeout(mut self, timeout: Duration) -> Self {
        self.operation_timeout = timeout;
        self
    }

    /// Time budget of each connection attempt (default 1 s).
    #[must_use]
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How many times a lost connection is re-dialled, with exponential back-off, before
    /// operations fail with [`StoreError::Unavailable`] (default 3). The next operation after
    /// that starts over.
    #[must_use]
    pub fn reconnect_attempts(mut self, attempts: usize) -> Self {
        self.reconnect_attempts = attempts;
        self
    }

    /// Force a claim strategy instead of detecting it from the server version (for servers
    /// that hide their version, and for tests of the pre-7.0 path).
    #[must_use]
    pub fn claim_strategy(mut self, strategy: ClaimStrategy) -> Self {
        self.claim_strategy = Some(strategy);
        self
    }

    /// Load the Lua scripts at connect (default on), so the first fenced call is a single
    /// `EVALSHA`. Scripts are loaded on demand (`NOSCRIPT` → `SCRIPT LOAD`) either way.
    #[must_use]
    pub fn preload_scripts(mut self, preload: bool) -> Self {
        self.preload_scripts = preload;
        self
    }

    /// Opt-in failover safety (off by default): after each claim and each completion, send
    /// [`WAIT replicas timeout`](https://redis.io/docs/latest/commands/wait/) on the same
    /// connection so the write has reached `replicas` replicas before the store answers.
    ///
    /// - **Claim**: when fewer replicas acknowledge within `timeout`, the claim is released
    ///   (fenced by its token) and `try_claim` fails with [`StoreError::Unavailable`] whose
    ///   source is [`ReplicasNotAcknowledged`](crate::ReplicasNotAcknowledged): the handler does
    ///   not run and the engine's failure policy answers the request (fail closed by default).
    /// - **Completion**: the outcome is already stored on the primary; `complete` fails the same
    ///   way, the engine retries it (each retry waits again) and reports the outcome as not
    ///   recorded if replicas still lag. Retries on the same primary replay it meanwhile.
    ///
    /// Every claim and completion pays one more round trip plus the replication delay (see the
    /// README's figure); `replicas = 0` makes `WAIT` return at once. On Redis Cluster the client
    /// sends `WAIT` to every primary and keeps the lowest count.
    #[must_use]
    pub fn wait_for_replicas(mut self, replicas: u32, timeout: Duration) -> Self {
        self.replica_wait = Some(crate::ReplicaWait { replicas, timeout });
        self
    }

    /// Connect to one server: `redis://[user:password@]host[:port][/db]`,
    /// `rediss://...` (TLS, with the `tls` feature) or `unix:///path/to.sock`
    /// (`redis+unix://` also works).
    ///
    /// The connection is a [`ConnectionManager`]: multiplexed (one socket shared by every
    /// operation) and re-established in the background when it breaks.
    ///
    /// # Errors
    /// [`StoreError::Other`] for an unusable URL; [`StoreError::Unavailable`] or
    /// [`StoreError::Timeout`] when the server cannot be reached.
    pub async fn connect(self, url: &str) -> Result<RedisStore, StoreError> {
        #[cfg(feature = "tls")]
        crate::tls::ensure_crypto_provider(url);
        let client = Client::open(url)
            .map_err(|e| client_error(StoreOperation::Connect, self.connect_timeout, e))?;
        self.connect_client(client).await
    }

    /// Connect with a prepared [`redis::Client`] (for settings the URL cannot carry).
    ///
    /// # Errors
    /// As [`Self::connect`].
    pub async fn connect_client(self, client: Client) -> Result<RedisStore, StoreError> {
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.connect_timeout))
            // Every store command runs under the store's own operation timeout: a response
            // timeout in the client too would arm a second timer per command for nothing (and
            // must not cut the store's budget shorter). Commands a caller sends on
            // `RedisStore::connection` are bounded by the caller.
            .set_response_timeout(None)
            .set_number_of_retries(self.reconnect_attempts)
            .set_max_delay(Duration::from_secs(1));
        let budget = self.connect_timeout.saturating_add(self.operation_timeout);
        // Kept for the wake-up subscriber, a connection of its own (opened on first wait).
        let subscriber = client.clone();
        let subscriber_timeout = self.connect_timeout.max(self.operation_timeout);
        let manager =
            tokio::time::timeout(budget, ConnectionManager::new_with_config(client, config))
                .await
                .map_err(|_| StoreError::Timeout {
                    operation: StoreOperation::Connect,
                    after: budget,
                })?
                .map_err(|e| client_error(StoreOperation::Connect, budget, e))?;
        let mut store = self.with_connection(manager).await?;
        if store.mode != ServerMode::Cluster {
            store.notifier = Some(Arc::new(Notifier::new(subscriber, subscriber_timeout)));
        }
        Ok(store)
    }

    /// Connect to a Redis Cluster through any of its nodes (`redis://host:port` each); the
    /// client discovers the rest and follows `MOVED` / `ASK` redirections.
    ///
    /// # Errors
    /// As [`Self::connect`].
    #[cfg(feature = "cluster")]
    pub async fn connect_cluster<I, T>(
        self,
        nodes: I,
    ) -> Result<crate::RedisClusterStore, StoreError>
    where
        I: IntoIterator<Item = T>,
        T: redis::IntoConnectionInfo,
    {
        let client = redis::cluster::ClusterClient::builder(nodes)
            .connection_timeout(self.connect_timeout)
            .response_timeout(self.operation_timeout)
            .retries(self.reconnect_attempts as u32)
            .build()
            .map_err(|e| client_error(StoreOperation::Connect, self.connect_timeout, e))?;
        let budget = self.connect_timeout.saturating_add(self.operation_timeout);
        let connection = tokio::time::timeout(budget, client.get_async_connection())
            .await
            .map_err(|_| StoreError::Timeout {
                operation: StoreOperation::Connect,
                after: budget,
            })?
            .map_err(|e| client_error(StoreOperation::Connect, budget, e))?;
        self.with_connection(connection).await
    }

    /// Build the store over a connection the caller made (a `MultiplexedConnection`, a
    /// `ConnectionManager` with custom settings, a cluster connection...).
    ///
    /// Reads the server version once (`INFO server`) to choose the claim strategy, unless one
    /// was forced, and loads the scripts unless told not to.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] or [`StoreError::Timeout`] when the server does not answer.
    /// A server that refuses `INFO` is not an error: the store then claims with the script.
    pub async fn with_connection<C>(self, conn: C) -> Result<RedisStore<C>, StoreError>
    where
        C: ConnectionLike + Clone + Send + Sync + 'static,
    {
        let mut store = RedisStore {
            conn,
            claim: ClaimStrategy::Script,
            mode: ServerMode::Unknown,
            version: None,
            timeout: self.operation_timeout,
            replica_wait: self.replica_wait,
            notifier: None,
            anchor: crate::anchor::TimerAnchor::start(self.operation_timeout).map(Arc::new),
        };
        match store
            .command(StoreOperation::Connect, redis::cmd("INFO").arg("server"))
            .await
        {
            Ok(reply) => {
                let texts = node_texts(reply);
                store.version = lowest_version(&texts);
                store.mode =
                    ServerMode::parse(texts.first().and_then(|t| info_field(t, "redis_mode")));
            }
            Err(Error::Client { source, .. }) if is_refusal(&source) => {
                tracing::warn!(error = %source, "the server refused INFO; claiming with the Lua script");
            }
            Err(other) => return Err(other.into()),
        }
        let new_enough = store
            .version
            .as_deref()
            .and_then(parse_version)
            .is_some_and(|(major, _, _)| major >= 7);
        store.claim = self.claim_strategy.unwrap_or(if new_enough {
            ClaimStrategy::SetNxGet
        } else {
            ClaimStrategy::Script
        });
        if self.preload_scripts {
            for script in SCRIPTS.all() {
                let loaded = store
                    .exec(StoreOperation::Connect, |mut conn| async move {
                        script.load_async(&mut conn).await.map(Value::SimpleString)
                    })
                    .await;
                if let Err(error) = loaded {
                    let error = StoreError::from(error);
                    tracing::debug!(%error, "could not preload a script; it will load on first use");
                }
            }
        }
        tracing::debug!(?store, "redis idempotency store ready");
        Ok(store)
    }
}

fn client_error(
    operation: StoreOperation,
    budget: Duration,
    error: redis::RedisError,
) -> StoreError {
    Error::client(operation, budget, error).into()
}

/// The lowest `redis_version` across the nodes' `INFO` texts (a cluster is as capable as its
/// oldest node).
fn lowest_version(texts: &[String]) -> Option<String> {
    texts
        .iter()
        .filter_map(|t| info_field(t, "redis_version"))
        .filter_map(|v| parse_version(v).map(|parsed| (parsed, v)))
        .min_by_key(|(parsed, _)| *parsed)
        .map(|(_, v)| v.to_owned())
}

impl RedisStore {
    /// Settings for a store; see [`RedisStoreBuilder`].
    pub fn builder() -> RedisStoreBuilder {
        RedisStoreBuilder::default()
    }

    /// Connect to one server with default settings (see [`RedisStoreBuilder::connect`]).
    ///
    /// # Errors
    /// As [`RedisStoreBuilder::connect`].
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        Self::builder().connect(url).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lowest_version_across_nodes() {
        let texts = vec![
            "redis_version:7.2.4\r\n".to_owned(),
            "redis_version:6.2.14\r\n".to_owned(),
            "redis_version:7.0.15\r\n".to_owned(),
        ];
        assert_eq!(lowest_version(&texts).as_deref(), Some("6.2.14"));
        assert_eq!(lowest_version(&[]), None);
    }
}
