//! Mapping of `redis` crate errors onto the core's typed [`StoreError`].
//!
//! The store keeps this private error so every call site converts the same way; only
//! [`StoreError`] crosses the crate boundary.

use idempotency_core::StoreOperation;
use std::time::Duration;

use idempotency_core::{CorruptRecord, StoreError};
use redis::{ErrorKind, RedisError as ClientError, ServerErrorKind};

/// A failure inside the Redis store, before it is mapped onto [`StoreError`].
#[derive(Debug)]
pub(crate) enum Error {
    /// The client library failed (I/O, server error reply, parse...).
    Client {
        operation: StoreOperation,
        budget: Duration,
        source: ClientError,
    },
    /// The operation did not finish within the store's own budget.
    Timeout {
        operation: StoreOperation,
        after: Duration,
    },
    /// The server answered with a reply of a type the protocol never produces.
    UnexpectedReply {
        operation: StoreOperation,
        reply: String,
    },
    /// The value under the key is not a record.
    Corrupt(CorruptRecord),
}

impl Error {
    pub(crate) fn client(operation: StoreOperation, budget: Duration, source: ClientError) -> Self {
        Self::Client {
            operation,
            budget,
            source,
        }
    }
}

/// A reply of a type the protocol never produces (the source of a [`StoreError::Backend`]).
#[derive(Debug, thiserror::Error)]
#[error("unexpected reply to `{operation}`: {reply}")]
pub(crate) struct UnexpectedReply {
    operation: StoreOperation,
    reply: String,
}

/// Whether a server error is `WRONGTYPE`. Inside a Lua script Redis 7 keeps the original code;
/// older servers wrap it into an `ERR Error running script ...` message, so look at the text too.
pub(crate) fn is_wrong_type(error: &ClientError) -> bool {
    error.code() == Some("WRONGTYPE")
        || error.detail().is_some_and(|d| d.contains("WRONGTYPE"))
        || error.to_string().contains("WRONGTYPE")
}

/// Whether the server refuses writes but still serves reads: `OOM command not allowed when used
/// memory > 'maxmemory'` (a full server with a `noeviction` policy) or `READONLY You can't write
/// against a read only replica`. Inside a Lua script Redis 7 keeps the code; older servers wrap
/// it into `ERR Error running script ...`, so look at the text too.
pub(crate) fn is_write_refused(error: &ClientError) -> bool {
    const CODES: [&str; 2] = ["OOM", "READONLY"];
    if matches!(error.kind(), ErrorKind::Server(ServerErrorKind::ReadOnly)) {
        return true;
    }
    if error.code().is_some_and(|code| CODES.contains(&code)) {
        return true;
    }
    let text = error.to_string();
    text.contains("OOM command not allowed") || text.contains("READONLY You can't write")
}

/// Whether the connection itself broke, so one retry on the (automatically re-established)
/// connection can succeed.
pub(crate) fn is_reconnectable(error: &ClientError) -> bool {
    error.is_connection_dropped() || error.is_unrecoverable_error()
}

/// Whether the server answered with an error reply ("not allowed", "unknown command"...) as
/// opposed to not answering at all.
pub(crate) fn is_refusal(error: &ClientError) -> bool {
    matches!(error.kind(), ErrorKind::Server(_) | ErrorKind::Extension)
}

impl From<Error> for StoreError {
    fn from(error: Error) -> Self {
        match error {
            Error::Timeout { operation, after } => StoreError::Timeout { operation, after },
            Error::Corrupt(corrupt) => StoreError::Corrupt(corrupt),
            Error::UnexpectedReply { operation, reply } => StoreError::Backend {
                source: Box::new(UnexpectedReply { operation, reply }),
            },
            Error::Client {
                operation,
                budget,
                source,
            } => map_client_error(operation, budget, source),
        }
    }
}

fn map_client_error(operation: StoreOperation, budget: Duration, error: ClientError) -> StoreError {
    if is_wrong_type(&error) {
        // Something that is not a string lives under a record key. It is not a record, and
        // retrying will not change that, so it is corrupt data (per the store contract), not an
        // outage.
        return StoreError::Corrupt(CorruptRecord::new(format!(
            "the key holds a value that is not a string (a hash, list, set...): {error}"
        )));
    }
    if is_write_refused(&error) {
        return StoreError::WriteRefused {
            source: Box::new(error),
        };
    }
    if error.is_timeout() {
        return StoreError::Timeout {
            operation,
            after: budget,
        };
    }
    let unavailable = error.is_io_error()
        || error.is_connection_refusal()
        || error.is_connection_dropped()
        || matches!(
            error.kind(),
            ErrorKind::ClusterConnectionNotFound
                | ErrorKind::Server(
                    ServerErrorKind::BusyLoading
                        | ServerErrorKind::ClusterDown
                        | ServerErrorKind::MasterDown
                        | ServerErrorKind::TryAgain
                )
        );
    if unavailable {
        return StoreError::Unavailable {
            source: Box::new(error),
        };
    }
    match error.kind() {
        ErrorKind::Server(_) | ErrorKind::Extension | ErrorKind::AuthenticationFailed => {
            StoreError::Backend {
                source: Box::new(error),
            }
        }
        _ => StoreError::Other {
            source: Box::new(error),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(error: ClientError) -> StoreError {
        Error::client(StoreOperation::Get, Duration::from_secs(1), error).into()
    }

    #[test]
    fn io_errors_are_unavailable_and_timeouts_are_timeouts() {
        let refused =
            ClientError::from(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        assert!(matches!(map(refused), StoreError::Unavailable { .. }));
        let reset = ClientError::from(std::io::Error::from(std::io::ErrorKind::ConnectionReset));
        assert!(matches!(map(reset), StoreError::Unavailable { .. }));
        let timed_out = ClientError::from(std::io::Error::from(std::io::ErrorKind::TimedOut));
        assert!(matches!(
            map(timed_out),
            StoreError::Timeout {
                operation: StoreOperation::Get,
                ..
            }
        ));
    }

    #[test]
    fn own_timeout_and_unexpected_reply_map_to_typed_errors() {
        let e: StoreError = Error::Timeout {
            operation: StoreOperation::Complete,
            after: Duration::from_millis(5),
        }
        .into();
        assert!(
            matches!(e, StoreError::Timeout { operation: StoreOperation::Complete, after } if after == Duration::from_millis(5))
        );
        let e: StoreError = Error::UnexpectedReply {
            operation: StoreOperation::Release,
            reply: "Double(1.0)".into(),
        }
        .into();
        assert!(
            matches!(e, StoreError::Backend { source } if source.to_string().contains("release"))
        );
    }

    #[test]
    fn oom_and_readonly_replies_are_write_refused() {
        let oom = ClientError::from((
            ErrorKind::Server(ServerErrorKind::ResponseError),
            "OOM command not allowed when used memory > 'maxmemory'.",
        ));
        assert!(matches!(map(oom), StoreError::WriteRefused { .. }));
        let readonly = ClientError::from((
            ErrorKind::Server(ServerErrorKind::ReadOnly),
            "You can't write against a read only replica.",
        ));
        assert!(matches!(map(readonly), StoreError::WriteRefused { .. }));
        let noperm = ClientError::from((
            ErrorKind::Server(ServerErrorKind::ResponseError),
            "NOPERM this user has no permissions",
        ));
        assert!(matches!(map(noperm), StoreError::Backend { .. }));
    }

    #[test]
    fn client_side_errors_are_other() {
        let e = ClientError::from((ErrorKind::InvalidClientConfig, "bad url"));
        assert!(matches!(map(e), StoreError::Other { .. }));
    }
}
