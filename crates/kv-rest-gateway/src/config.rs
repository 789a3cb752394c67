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

/// Tokens shorter than this many characters are accepted with a warning at start.
///
/// 32 characters of hex are 128 bits; generate tokens with `openssl rand -hex 32` (64
/// characters, 256 bits).
pub const MIN_TOKEN_LEN: usize = 32;

/// Default [`GatewayConfig::script_time_limit`]: 5 s, Redis's default `busy-reply-threshold`.
pub const DEFAULT_SCRIPT_TIME_LIMIT: Duration = Duration::from_secs(5);

/// Default name of the read-write token's Redis ACL user.
pub const DEFAULT_ACL_USER: &str = "kv-rest-gateway";

/// Default name of the read-only token's Redis ACL user.
pub const DEFAULT_READ_ONLY_ACL_USER: &str = "kv-rest-gateway-ro";

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
    /// build of the `redis` crate, which this crate does not enable). When its user may run
    /// `ACL SETUSER`, the gateway creates its restricted users with it; otherwise it is the
    /// operator-prepared user of the read-write token (see [`crate#redis-acl-users`]).
    pub redis_url: String,
    /// The operator-prepared Redis user of the read-only token (a URL with its credentials);
    /// needed with a read-only token when `redis_url`'s user may not run `ACL SETUSER`.
    pub read_only_redis_url: Option<String>,
    /// Name of the ACL user the gateway creates for the read-write token.
    pub acl_user: String,
    /// Name of the ACL user the gateway creates for the read-only token.
    pub read_only_acl_user: String,
    /// A script (`EVAL*`, `FCALL*`) running longer than this is stopped with `SCRIPT KILL` /
    /// `FUNCTION KILL` over a separate connection; its caller gets an error. Redis processes
    /// the kill only once the script has run for its `busy-reply-threshold`, so keep that at
    /// or below this limit.
    pub script_time_limit: Duration,
    /// Timeouts and limits of the HTTP server.
    pub limits: crate::ServerLimits,
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
            .field(
                "read_only_redis_url",
                &self.read_only_redis_url.as_deref().map(redact_url),
            )
            .field("acl_user", &self.acl_user)
            .field("read_only_acl_user", &self.read_only_acl_user)
            .field("script_time_limit", &self.script_time_limit)
            .field("limits", &self.limits)
            .field("token", &self.token)
            .field("read_only_token", &self.read_only_token)
            .field("max_body_bytes", &self.max_body_bytes)
            .field("max_pipeline", &self.max_pipeline)
            .field("connect_timeout", &self.connect_timeout)
            .field("response_timeout", &self.response_timeout)
            .finish()
    }
}

/// The URL with its user-info part (`user:password@`) replaced by `<redacted>`, parsed by the
/// `url` crate (WHATWG URL rules, the same the `redis` crate applies). A value that does not
/// parse as a URL is not shown at all: it cannot be told apart from a pasted secret.
fn redact_url(url: &str) -> String {
    let Ok(mut parsed) = url::Url::parse(url) else {
        return "<redacted>".to_owned();
    };
    if parsed.username().is_empty() && parsed.password().is_none() {
        return url.to_owned();
    }
    // Removing the user info cannot fail on a URL that had one (it has a host).
    if parsed.set_password(None).is_err() || parsed.set_username("").is_err() {
        return "<redacted>".to_owned();
    }
    let shown = parsed.to_string();
    match shown.split_once("://") {
        Some((scheme, rest)) => format!("{scheme}://<redacted>@{rest}"),
        None => "<redacted>".to_owned(),
    }
}

impl GatewayConfig {
    /// A configuration with the given Redis URL and read-write token, and defaults for the rest.
    pub fn new(redis_url: impl Into<String>, token: impl Into<Secret>) -> Self {
        Self {
            redis_url: redis_url.into(),
            read_only_redis_url: None,
            acl_user: DEFAULT_ACL_USER.to_owned(),
            read_only_acl_user: DEFAULT_READ_ONLY_ACL_USER.to_owned(),
            script_time_limit: DEFAULT_SCRIPT_TIME_LIMIT,
            limits: crate::ServerLimits::default(),
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

    /// Sets the operator-prepared Redis user of the read-only token (a URL with credentials).
    #[must_use]
    pub fn with_read_only_redis_url(mut self, url: impl Into<String>) -> Self {
        self.read_only_redis_url = Some(url.into());
        self
    }

    /// Sets the names of the ACL users the gateway creates (read-write, read-only).
    #[must_use]
    pub fn with_acl_users(mut self, main: impl Into<String>, read_only: impl Into<String>) -> Self {
        self.acl_user = main.into();
        self.read_only_acl_user = read_only.into();
        self
    }

    /// Sets the script time limit.
    #[must_use]
    pub fn with_script_time_limit(mut self, limit: Duration) -> Self {
        self.script_time_limit = limit;
        self
    }

    /// Sets the HTTP server's timeouts and limits.
    #[must_use]
    pub fn with_limits(mut self, limits: crate::ServerLimits) -> Self {
        self.limits = limits;
        self
    }

    /// Checks the tokens: an empty token (or one of only white space) is refused, and the two
    /// tokens must differ. Returns warnings (short tokens) to log.
    ///
    /// # Errors
    /// [`crate::Error::EmptyToken`], [`crate::Error::SameTokens`].
    pub fn validate(&self) -> Result<Vec<String>, crate::Error> {
        let mut warnings = Vec::new();
        let tokens = [
            ("token", Some(&self.token)),
            ("read-only token", self.read_only_token.as_ref()),
        ];
        for (which, token) in tokens {
            let Some(token) = token else { continue };
            if token.expose().trim().is_empty() {
                return Err(crate::Error::EmptyToken(which));
            }
            if token.expose().chars().count() < MIN_TOKEN_LEN {
                warnings.push(format!(
                    "the {which} is shorter than {MIN_TOKEN_LEN} characters: generate one with \
                     `openssl rand -hex 32`"
                ));
            }
        }
        if self.read_only_token.as_ref() == Some(&self.token) {
            return Err(crate::Error::SameTokens);
        }
        Ok(warnings)
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
    fn empty_short_and_equal_tokens() {
        assert!(matches!(
            GatewayConfig::new("redis://h", "").validate(),
            Err(crate::Error::EmptyToken("token"))
        ));
        assert!(matches!(
            GatewayConfig::new("redis://h", " \t").validate(),
            Err(crate::Error::EmptyToken("token"))
        ));
        assert!(matches!(
            GatewayConfig::new("redis://h", "a".repeat(40))
                .with_read_only_token("")
                .validate(),
            Err(crate::Error::EmptyToken("read-only token"))
        ));
        assert!(matches!(
            GatewayConfig::new("redis://h", "a".repeat(40))
                .with_read_only_token("a".repeat(40))
                .validate(),
            Err(crate::Error::SameTokens)
        ));
        let warnings = GatewayConfig::new("redis://h", "short")
            .validate()
            .unwrap_or_default();
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        let none = GatewayConfig::new("redis://h", "a".repeat(64)).validate();
        assert!(none.is_ok_and(|w| w.is_empty()));
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
        assert_eq!(
            redact_url("rediss://user:p%40ss@[::1]:6380/2?protocol=resp3"),
            "rediss://<redacted>@[::1]:6380/2?protocol=resp3"
        );
        // An `@` in the password does not leak its first part.
        assert!(!redact_url("redis://u:se@cret@h").contains("se"));
        assert_eq!(redact_url("not a url: s3cr3t"), "<redacted>");
    }
}
