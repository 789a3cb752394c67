//! The vocabulary of store selection: the kinds of store, the policy on the memory store, a
//! loggable description of the choice and the errors. Kept apart from the selection logic so
//! the stores ([`super::AnyStore`], the deferred connection) can name them without importing
//! the module that builds them.

use std::fmt;

use thiserror::Error;

use super::redact::redact_url;

/// Whether falling back to the per-process memory store is acceptable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StoreSelection {
    /// Use the memory store when no distributed store is configured, with a warning (the
    /// default: right for development and single-instance services).
    #[default]
    AllowMemory,
    /// Fail with [`StoreSelectionError::DistributedStoreRequired`] instead: for services that
    /// run more than one instance, where a per-process store would let duplicates through.
    RequireDistributed,
}

/// The kinds of store [`plan_store`](super::plan_store) can choose.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum BackendKind {
    /// The embedded per-process store.
    Memory,
    /// Redis, Valkey or a Redis-protocol service over TCP (or a unix socket).
    Redis,
    /// A Redis (or Valkey) Cluster.
    RedisCluster,
    /// The Upstash Redis REST API (also what Vercel KV was).
    KvRest,
    /// The application's own Postgres or SQLite database (`idempotency-sql`), chosen only by
    /// `IDEMPOTENCY_STORE=sql`.
    Sql,
}

impl BackendKind {
    /// Whether instances of a service sharing this store deduplicate each other's requests.
    pub fn is_distributed(self) -> bool {
        !matches!(self, Self::Memory)
    }

    /// The facade feature that compiles this store in.
    pub fn feature(self) -> &'static str {
        match self {
            Self::Memory => "memory",
            Self::Redis | Self::RedisCluster => "redis",
            Self::KvRest => "kv-rest",
            Self::Sql => "sql",
        }
    }
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Memory => "memory",
            Self::Redis => "redis",
            Self::RedisCluster => "redis-cluster",
            Self::KvRest => "kv-rest",
            Self::Sql => "sql",
        })
    }
}

/// What was chosen, safe to log: the kind, the endpoint with its secrets redacted, and the
/// variable it came from. Never holds a token or a password.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreDescription {
    kind: BackendKind,
    location: Option<String>,
    source: Option<&'static str>,
}

impl StoreDescription {
    /// A description of a store of `kind` at `url` (redacted here), named by variable `source`.
    pub fn new(kind: BackendKind, url: Option<&str>, source: Option<&'static str>) -> Self {
        let location = url.map(|url| match kind {
            // A list of node URLs: each is redacted on its own.
            BackendKind::RedisCluster => url
                .split(',')
                .map(|node| redact_url(node.trim()))
                .collect::<Vec<_>>()
                .join(","),
            _ => redact_url(url),
        });
        Self {
            kind,
            location,
            source,
        }
    }

    /// The kind of store.
    pub fn kind(&self) -> BackendKind {
        self.kind
    }

    /// The endpoint, secrets redacted (`None` for the memory store).
    pub fn location(&self) -> Option<&str> {
        self.location.as_deref()
    }

    /// The environment variable the endpoint came from, if any.
    pub fn source(&self) -> Option<&'static str> {
        self.source
    }
}

impl fmt::Display for StoreDescription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.location, self.kind) {
            (None, BackendKind::Memory) => {
                f.write_str("memory (per process: no deduplication across instances)")?;
            }
            (None, kind) => write!(f, "{kind}")?,
            (Some(location), kind) => write!(f, "{kind} at {location}")?,
        }
        if let Some(source) = self.source {
            write!(f, " (from {source})")?;
        }
        Ok(())
    }
}

/// Why no store could be chosen or opened. Messages name variables, never their secret values.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum StoreSelectionError {
    /// [`StoreSelection::RequireDistributed`] was asked for and no distributed store is
    /// configured.
    #[error(
        "a distributed idempotency store is required but none is configured: set \
         UPSTASH_REDIS_REST_URL and UPSTASH_REDIS_REST_TOKEN (or KV_REST_API_URL and \
         KV_REST_API_TOKEN) for the KV REST API, or REDIS_URL (or KV_URL) for Redis"
    )]
    DistributedStoreRequired,
    /// A REST URL variable is set without its token (or the other way round).
    #[error("{present} is set but {missing} is not; the KV REST store needs both")]
    IncompleteRestConfig {
        /// The variable that is set.
        present: &'static str,
        /// The variable to set.
        missing: &'static str,
    },
    /// A variable holds something that cannot work (the reason never quotes a secret).
    #[error("{variable} is not usable: {reason}")]
    InvalidVariable {
        /// The variable.
        variable: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The environment selects a store whose feature is not compiled in.
    #[error(
        "{variable} selects the {backend} store, but this build of `idempotency` lacks its \
         `{feature}` feature"
    )]
    FeatureDisabled {
        /// The variable that selected it.
        variable: &'static str,
        /// The store it selects.
        backend: BackendKind,
        /// The feature to enable.
        feature: &'static str,
    },
    /// Nothing is configured and the `memory` feature is off.
    #[error(
        "no idempotency store is configured and the `memory` feature is off: configure \
         Redis or the KV REST API, or enable the feature"
    )]
    MemoryUnavailable,
    /// The chosen store could not be opened (connection refused, TLS, ...).
    #[error("cannot open the idempotency store {description}")]
    Open {
        /// The store (secrets redacted).
        description: StoreDescription,
        /// Why.
        #[source]
        source: idempotency_core::BoxError,
    },
}
