//! Gateway configuration and the redacting [`Secret`] wrapper for tokens.

use std::fmt;
use std::time::Duration;

/// Default maximum request body: 4 MiB.
///
/// Large enough for the toolkit's biggest record (a 1 MiB stored outcome grows by a third in
/// base64, plus JSON framing), small enough to refuse accidental uploads.
pub const DEFAULT_MAX_BODY_BYTES: usize = 4 * 1024 * 1024;

/// Default maximum number of commands in one `/pipeline` or `/multi-exec` request.
///
/// The official JS client auto-pipelines up to 1000 commands per request.
pub const DEFAULT_MAX_PIPELINE: usize = 1000;

/// Default timeout for establishing a connection to Redis.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Default timeout for one Redis reply (a command, a pipeline or a transaction).
pub const DEFAULT_RESPONSE_TIMEOUT: Duration = Duration::from_secs(10);

/// A secret string (an API token) whose `Debug` and `Display` never show the value.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret value. Never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Self(value)
    }
}

impl From<&str> for Secret {
    fn from(value: &str) -> Self {
        Self(value.to_owned())
    }
}

/// Everything the gateway needs to run (the listening socket is passed separately to
/// [`serve`](crate::serve)).
///
/// `Debug` redacts both tokens and any password in the Redis URL.
#[derive(Clone)]
pub struct GatewayConfig {
    /// Redis connection URL, e.g. `redis://127.0.0.1:6379` (`rediss://` needs a TLS-enabled
    /// build of the `redis` crate, which this crate does not enable).
    pub redis_url: String,
    /// The read-write API token (`Authorization: Bearer <token>` or `?_token=`).
    pub token: Secret,
    /// An optional read-only API token: read commands only, and not `SCAN` / `KEYS`.
    pub read_only_token: Option<Secret>,
    /// Maximum request body in bytes; larger bodies get HTTP 413.
    pub max_body_bytes: usize,
    /// Maximum number of commands in one pipeline or transaction; more get HTTP 400.
    pub max_pipeline: usize,
    /// Timeout for establishing a Redis connection.
    pub connect_timeout: Duration,
    /// Timeout for one Redis reply.
    pub response_timeout: Duration,
}

impl fmt::Debug for GatewayConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GatewayConfig")
            .field("redis_url", &redact_url(&self.redis_url))
            .field("token", &self.token)
            .field("read_only_token", &self.read_only_token)
            .field("max_body_bytes", &self.max_body_bytes)
            .field("max_pipeline", &self.max_pipeline)
            .field("connect_timeout", &self.connect_timeout)
            .field("response_timeout", &self.response_timeout)
            .finish()
    }
}

/// The URL with its user-info part (`user:password@`) replaced.
fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{scheme}://<redacted>@{}", &rest[at + 1..]),
        None => url.to_owned(),
    }
}

impl GatewayConfig {
    /// A configuration with the given Redis URL and read-write token, and defaults for the rest.
    pub fn new(redis_url: impl Into<String>, token: impl Into<Secret>) -> Self {
        Self {
            redis_url: redis_url.into(),
            token: token.into(),
            read_only_token: None,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            max_pipeline: DEFAULT_MAX_PIPELINE,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            response_timeout: DEFAULT_RESPONSE_TIMEOUT,
        }
    }

    /// Sets the read-only token.
    #[must_use]
    pub fn with_read_only_token(mut self, token: impl Into<Secret>) -> Self {
        self.read_only_token = Some(token.into());
        self
    }

    /// Sets the maximum request body size in bytes.
    #[must_use]
    pub fn with_max_body_bytes(mut self, bytes: usize) -> Self {
        self.max_body_bytes = bytes;
        self
    }

    /// Sets the maximum number of commands per pipeline or transaction.
    #[must_use]
    pub fn with_max_pipeline(mut self, commands: usize) -> Self {
        self.max_pipeline = commands;
        self
    }

    /// Sets the Redis connect and response timeouts.
    #[must_use]
    pub fn with_timeouts(mut self, connect: Duration, response: Duration) -> Self {
        self.connect_timeout = connect;
        self.response_timeout = response;
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_redacts_tokens() {
        let config = GatewayConfig::new("redis://127.0.0.1:6379", "super-secret-rw")
            .with_read_only_token("super-secret-ro");
        let shown = format!("{config:?}");
        assert!(!shown.contains("super-secret"), "{shown}");
        assert!(shown.contains("redacted"));
        assert_eq!(Secret::new("x").to_string(), "<redacted>");
    }

    #[test]
    fn debug_redacts_the_redis_password() {
        let config = GatewayConfig::new("redis://user:hunter2@db:6379/0", "t");
        let shown = format!("{config:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("redis://<redacted>@db:6379/0"), "{shown}");
        assert_eq!(
            redact_url("redis://127.0.0.1:6379"),
            "redis://127.0.0.1:6379"
        );
        assert_eq!(redact_url("redis://:pw@h/0"), "redis://<redacted>@h/0");
    }
}
