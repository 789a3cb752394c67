//! Opt-in `WAIT` for replicas after a claim and after a completion (issue 11 item 5).
//!
//! Redis replicates asynchronously: a write the primary acknowledged can be missing from the
//! replica promoted after the primary fails (<https://redis.io/docs/latest/operate/oss_and_stack/management/replication/>).
//! For a claim that means a retry on the new primary finds no record and runs the side effect a
//! second time. [`WAIT numreplicas timeout`](https://redis.io/docs/latest/commands/wait/) blocks
//! until that many replicas have acknowledged every earlier write of the connection, or the
//! timeout passes, and returns how many did. It does not make Redis strongly consistent (a
//! replica that acknowledged can still lose the write in some failure sequences), but it closes
//! the common window: primary crashes right after answering, replica promoted.

use idempotency_core::StoreOperation;
use std::time::Duration;

use idempotency_core::StoreError;
use redis::Value;
use redis::aio::ConnectionLike;
use thiserror::Error;

use crate::error::Error;

/// How many replicas must acknowledge a claim or a completion, and how long to wait for them;
/// set with [`RedisStoreBuilder::wait_for_replicas`](crate::RedisStoreBuilder::wait_for_replicas).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplicaWait {
    /// Replicas that must acknowledge (`numreplicas` of `WAIT`).
    pub replicas: u32,
    /// How long the server waits for them (`timeout` of `WAIT`, sent in milliseconds, at least 1
    /// so that it never means "forever").
    pub timeout: Duration,
}

/// Too few replicas acknowledged a write within the [`ReplicaWait`] timeout.
///
/// Reported as the source of a [`StoreError::Unavailable`] (a transient condition: the engine's
/// failure policy decides what the request gets, fail closed by default); find it with
/// `std::error::Error::source` and `downcast_ref`.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error(
    "`{operation}`: {acknowledged} of {wanted} replicas acknowledged the write within {timeout:?} (WAIT)"
)]
pub struct ReplicasNotAcknowledged {
    /// The primitive whose write was not replicated enough (`try_claim` or `complete`).
    pub operation: StoreOperation,
    /// Replicas asked for.
    pub wanted: u32,
    /// Replicas that acknowledged (on Redis Cluster: the lowest count across the primaries).
    pub acknowledged: u32,
    /// The `WAIT` timeout.
    pub timeout: Duration,
}

impl ReplicaWait {
    fn timeout_millis(self) -> u64 {
        u64::try_from(self.timeout.as_millis())
            .unwrap_or(u64::MAX)
            .max(1)
    }
}

/// Run `WAIT` when the store was built with a [`ReplicaWait`] (`wait`); `Ok` when enough
/// replicas acknowledged (or none were asked for). `operation_timeout` is the store's budget
/// per operation, to which the `WAIT` timeout is added.
///
/// `WAIT` counts the replicas that acknowledged every write the connection sent so far, so it
/// must run on the connection that wrote: the store's multiplexed connection (on Redis Cluster
/// the client routes `WAIT` to every primary and keeps the lowest count, so it waits for the
/// busiest shard as well).
pub(crate) async fn wait_for_replicas<C>(
    conn: &C,
    wait: Option<ReplicaWait>,
    operation_timeout: Duration,
    operation: StoreOperation,
) -> Result<(), StoreError>
where
    C: ConnectionLike + Clone + Send + Sync + 'static,
{
    let Some(wait) = wait else {
        return Ok(());
    };
    let mut cmd = redis::cmd("WAIT");
    cmd.arg(wait.replicas).arg(wait.timeout_millis());
    // The server holds the reply for up to the WAIT timeout: the budget is that plus the
    // operation timeout, not the operation timeout alone.
    let budget = operation_timeout.saturating_add(wait.timeout);
    let mut conn = conn.clone();
    let reply = match tokio::time::timeout(budget, cmd.query_async::<Value>(&mut conn)).await {
        Ok(Ok(reply)) => reply,
        Ok(Err(error)) => return Err(Error::client(operation, budget, error).into()),
        Err(_) => {
            return Err(StoreError::Timeout {
                operation,
                after: budget,
            });
        }
    };
    let acknowledged = match reply {
        Value::Int(n) => u32::try_from(n.max(0)).unwrap_or(u32::MAX),
        other => {
            return Err(Error::UnexpectedReply {
                operation,
                reply: format!("WAIT: {other:?}"),
            }
            .into());
        }
    };
    if acknowledged >= wait.replicas {
        return Ok(());
    }
    tracing::warn!(
        %operation,
        acknowledged,
        wanted = wait.replicas,
        timeout = ?wait.timeout,
        "too few replicas acknowledged the write (WAIT)"
    );
    Err(StoreError::Unavailable {
        source: Box::new(ReplicasNotAcknowledged {
            operation,
            wanted: wait.replicas,
            acknowledged,
            timeout: wait.timeout,
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wait_timeout_is_never_zero_milliseconds() {
        let wait = ReplicaWait {
            replicas: 1,
            timeout: Duration::ZERO,
        };
        assert_eq!(wait.timeout_millis(), 1);
        let wait = ReplicaWait {
            replicas: 1,
            timeout: Duration::from_millis(250),
        };
        assert_eq!(wait.timeout_millis(), 250);
    }

    #[test]
    fn the_error_is_found_under_unavailable() {
        let error = StoreError::Unavailable {
            source: Box::new(ReplicasNotAcknowledged {
                operation: StoreOperation::TryClaim,
                wanted: 1,
                acknowledged: 0,
                timeout: Duration::from_millis(100),
            }),
        };
        assert!(error.is_transient());
        let source = std::error::Error::source(&error)
            .and_then(|s| s.downcast_ref::<ReplicasNotAcknowledged>());
        assert_eq!(source.map(|s| s.acknowledged), Some(0));
    }
}
