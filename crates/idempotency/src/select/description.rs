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

/// Every way to configure a store shared by the instances of a service, as the messages that
/// ask for one list them.
pub(crate) const SHARED_STORE_CHOICES: &str = "REDIS_URL (or KV_URL) for Redis, \
     REDIS_CLUSTER_URLS for a Redis Cluster, UPSTASH_REDIS_REST_URL + UPSTASH_REDIS_REST_TOKEN (or \
     KV_REST_API_URL + KV_REST_API_TOKEN) for the KV REST API, or IDEMPOTENCY_STORE=sql with \
     DATABASE_URL for the application's Postgres or SQLite database";

/// The start-up warning for the memory store: chosen by `IDEMPOTENCY_STORE=memory`
/// (`explicit`), or because nothing else is configured.
pub(crate) fn memory_store_warning(explicit: bool) -> String {
    if explicit {
        "IDEMPOTENCY_STORE=memory: using the per-process memory store as configured (any Redis, \
         KV REST or database variables are ignored); it does NOT deduplicate requests across \
         instances"
            .to_owned()
    } else {
        format!(
            "no distributed idempotency store configured: using the per-process memory store, \
             which does NOT deduplicate requests across instances; to share one, set \
             {SHARED_STORE_CHOICES}"
        )
    }
}

/// Why no store could be chosen or opened. Messages name variables, never their secret values.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum StoreSelectionError {
    /// [`StoreSelection::RequireDistributed`] was asked for and no distributed store is
    /// configured.
    #[error(
        "a distributed idempotency store is required but none is configured (nothing set, or \
         IDEMPOTENCY_STORE=memory): set {SHARED_STORE_CHOICES}"
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
        "no idempotency store is configured and the `memory` feature is off: set \
         {SHARED_STORE_CHOICES}; or enable the feature"
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_explicit_memory_store_is_not_called_unconfigured() {
        let explicit = memory_store_warning(true);
        assert!(explicit.contains("IDEMPOTENCY_STORE=memory"), "{explicit}");
        assert!(explicit.contains("as configured"), "{explicit}");
        assert!(!explicit.contains("no distributed"), "{explicit}");
        assert!(explicit.contains("NOT deduplicate"), "{explicit}");
        let detected = memory_store_warning(false);
        assert!(detected.contains("no distributed"), "{detected}");
    }

    #[test]
    fn every_list_of_shared_stores_names_them_all() {
        let texts = [
            memory_store_warning(false),
            StoreSelectionError::DistributedStoreRequired.to_string(),
            StoreSelectionError::MemoryUnavailable.to_string(),
        ];
        for text in texts {
            for name in [
                "REDIS_URL",
                "KV_URL",
                "REDIS_CLUSTER_URLS",
                "UPSTASH_REDIS_REST_URL",
                "KV_REST_API_URL",
                "IDEMPOTENCY_STORE=sql",
                "DATABASE_URL",
            ] {
                assert!(text.contains(name), "{name} missing from: {text}");
            }
        }
    }
}
