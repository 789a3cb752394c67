//! Start-up check of the server settings that decide whether at-most-once holds.

use idempotency_core::StoreOperation;
use std::fmt;

use idempotency_core::StoreError;
use redis::aio::ConnectionLike;

use crate::error::{Error, is_refusal};
use crate::info::{config_value, info_field, node_texts, parse_version};
use crate::store::{ClaimStrategy, RedisStore, ServerMode};

/// Something about the server that can break the idempotency guarantees.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum DoctorWarning {
    /// `maxmemory-policy` may evict records. Under `allkeys-*` any key can go; under
    /// `volatile-*` any key with a TTL, which is every record. An evicted claim or outcome lets
    /// a retry run the side effect again. Use `noeviction` (writes then fail instead, and the
    /// engine's failure policy decides).
    EvictionPolicy {
        /// The policy in force.
        policy: String,
    },
    /// Neither RDB snapshots nor the AOF are on: a restart forgets every record, and retries
    /// after it run their side effect again.
    PersistenceOff,
    /// The server is older than 7.0 (no `SET ... NX GET`); claims use a Lua script, which is
    /// still one round trip but a little slower.
    OldServer {
        /// The version reported.
        version: String,
    },
}

impl fmt::Display for DoctorWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::EvictionPolicy { policy } => write!(
                f,
                "maxmemory-policy is `{policy}`: Redis may evict live idempotency records under \
                 memory pressure, and a retry would then run its side effect again; \
                 use `noeviction`"
            ),
            Self::PersistenceOff => f.write_str(
                "persistence is off (no RDB save points, no AOF): a restart forgets every \
                 idempotency record, and retries after it run their side effect again",
            ),
            Self::OldServer { version } => write!(
                f,
                "server {version} is older than 7.0: claims use a Lua script instead of SET NX GET"
            ),
        }
    }
}

/// What [`RedisStore::doctor`] found. Settings the server would not reveal (managed services
/// often refuse `CONFIG GET`) are `None` and print as `unknown`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct DoctorReport {
    /// The server product: `redis`, or `valkey` (from `INFO server`'s `server_name`, which
    /// Valkey sets and Redis does not).
    pub server_name: String,
    /// The product's own version (the lowest across a cluster's nodes): `redis_version` on
    /// Redis, `valkey_version` on Valkey (whose `redis_version` is a fixed compatibility
    /// number, 7.2.4 on Valkey 8).
    pub server_version: Option<String>,
    /// On Valkey, the Redis version it declares compatibility with (`redis_version`); `None`
    /// on Redis.
    pub redis_compatible_version: Option<String>,
    /// Standalone or cluster.
    pub mode: ServerMode,
    /// How the store claims keys on this server.
    pub claim_strategy: ClaimStrategy,
    /// The eviction policy (`CONFIG GET maxmemory-policy`, else `INFO memory`).
    pub maxmemory_policy: Option<String>,
    /// Whether RDB save points are configured (`CONFIG GET save` is not empty).
    pub rdb_enabled: Option<bool>,
    /// Whether the append-only file is on (`CONFIG GET appendonly`, else `INFO persistence`).
    pub aof_enabled: Option<bool>,
    /// Everything worth an operator's attention; also logged at warn level.
    pub warnings: Vec<DoctorWarning>,
}

impl DoctorReport {
    /// Whether nothing needs attention.
    pub fn is_healthy(&self) -> bool {
        self.warnings.is_empty()
    }
}

struct Unknown<'a, T>(&'a Option<T>);

impl<T: fmt::Display> fmt::Display for Unknown<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(value) => value.fmt(f),
            None => f.write_str("unknown"),
        }
    }
}

impl fmt::Display for DoctorReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.server_name, Unknown(&self.server_version))?;
        if let Some(compatible) = &self.redis_compatible_version {
            write!(f, " (redis {compatible} compatible)")?;
        }
        write!(
            f,
            " ({}), claims via {:?}, maxmemory-policy {}, rdb {}, aof {}",
            self.mode,
            self.claim_strategy,
            Unknown(&self.maxmemory_policy),
            Unknown(&self.rdb_enabled),
            Unknown(&self.aof_enabled),
        )?;
        for warning in &self.warnings {
            write!(f, "\n  warning: {warning}")?;
        }
        Ok(())
    }
}

impl<C> RedisStore<C>
where
    C: ConnectionLike + Clone + Send + Sync + 'static,
{
    /// Check the server settings that decide whether at-most-once holds: version, mode,
    /// eviction policy and persistence. Logs each warning with `tracing` and returns the report.
    /// Run it at start-up; it costs a few commands.
    ///
    /// On a cluster, `INFO` is read from every primary (any node's warning counts) and
    /// `CONFIG GET` from one node.
    ///
    /// # Errors
    /// [`StoreError`] only when `INFO` fails for lack of a server (unreachable, timeout). A
    /// server that refuses `INFO` or `CONFIG GET` yields `unknown` fields instead.
    pub async fn doctor(&self) -> Result<DoctorReport, StoreError> {
        let infos = match self
            .command(StoreOperation::Inspect, &redis::cmd("INFO"))
            .await
        {
            Ok(reply) => node_texts(reply),
            Err(Error::Client { source, .. }) if is_refusal(&source) => Vec::new(),
            Err(other) => return Err(other.into()),
        };
        let field = |name: &str| -> Vec<&str> {
            infos.iter().filter_map(|t| info_field(t, name)).collect()
        };
        let lowest = |name: &str| {
            field(name)
                .into_iter()
                .filter_map(|v| parse_version(v).map(|p| (p, v)))
                .min_by_key(|(p, _)| *p)
                .map(|(_, v)| v.to_owned())
        };
        let redis_version = lowest("redis_version").or_else(|| self.version.clone());
        let valkey_version = lowest("valkey_version");
        let valkey = valkey_version.is_some()
            || field("server_name")
                .iter()
                .any(|n| n.eq_ignore_ascii_case("valkey"));
        let (server_name, server_version, redis_compatible_version) = if valkey {
            ("valkey", valkey_version, redis_version.clone())
        } else {
            ("redis", redis_version.clone(), None)
        };
        let mode = match field("redis_mode").first() {
            Some(mode) => ServerMode::parse(Some(mode)),
            None => self.mode,
        };

        let policies = field("maxmemory_policy");
        let maxmemory_policy = match self.config_get("maxmemory-policy").await {
            Some(policy) => Some(policy),
            // Prefer an evicting node's policy so a mixed cluster is not reported healthy.
            None => policies
                .iter()
                .find(|p| **p != "noeviction")
                .or(policies.first())
                .map(|p| (*p).to_owned()),
        };
        let rdb_enabled = self
            .config_get("save")
            .await
            .map(|save| !save.trim().is_empty());
        let aof_enabled = match self.config_get("appendonly").await {
            Some(value) => Some(value.eq_ignore_ascii_case("yes")),
            None => {
                let flags = field("aof_enabled");
                (!flags.is_empty()).then(|| flags.iter().all(|f| *f == "1"))
            }
        };

        let mut warnings = Vec::new();
        if let Some(policy) = &maxmemory_policy
            && (policy.starts_with("allkeys-") || policy.starts_with("volatile-"))
        {
            warnings.push(DoctorWarning::EvictionPolicy {
                policy: policy.clone(),
            });
        }
        if rdb_enabled == Some(false) && aof_enabled == Some(false) {
            warnings.push(DoctorWarning::PersistenceOff);
        }
        // The claim strategy follows the Redis-protocol version (Valkey's compatibility one).
        if let Some(version) = &redis_version
            && parse_version(version).is_some_and(|(major, _, _)| major < 7)
        {
            warnings.push(DoctorWarning::OldServer {
                version: version.clone(),
            });
        }
        let report = DoctorReport {
            server_name: server_name.to_owned(),
            server_version,
            redis_compatible_version,
            mode,
            claim_strategy: self.claim,
            maxmemory_policy,
            rdb_enabled,
            aof_enabled,
            warnings,
        };
        for warning in &report.warnings {
            tracing::warn!(%warning, "idempotency store: redis configuration");
        }
        tracing::info!(%report, "idempotency store: redis doctor");
        Ok(report)
    }

    /// One setting via `CONFIG GET`, or `None` when refused (managed services) or absent.
    async fn config_get(&self, name: &str) -> Option<String> {
        let mut cmd = redis::cmd("CONFIG");
        cmd.arg("GET").arg(name);
        match self.command(StoreOperation::Inspect, &cmd).await {
            Ok(reply) => config_value(&reply, name),
            Err(error) => {
                let error = StoreError::from(error);
                tracing::debug!(%error, setting = name, "CONFIG GET refused; reporting unknown");
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_prints_unknown_and_warnings() {
        let report = DoctorReport {
            server_name: "redis".into(),
            server_version: Some("7.0.15".into()),
            redis_compatible_version: None,
            mode: ServerMode::Standalone,
            claim_strategy: ClaimStrategy::SetNxGet,
            maxmemory_policy: None,
            rdb_enabled: Some(false),
            aof_enabled: None,
            warnings: vec![DoctorWarning::PersistenceOff],
        };
        let text = report.to_string();
        assert!(text.contains("maxmemory-policy unknown"), "{text}");
        assert!(text.contains("aof unknown"), "{text}");
        assert!(text.contains("restart forgets"), "{text}");
        assert!(!report.is_healthy());
    }
}
