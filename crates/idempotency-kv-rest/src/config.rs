//! Where the REST endpoint is and how to talk to it.

use std::fmt;
use std::time::Duration;

use idempotency_core::KV_REST_ENV_PAIRS;
use thiserror::Error;

/// Default time budget of one store operation (one HTTP request).
pub const DEFAULT_OPERATION_TIMEOUT: Duration = Duration::from_secs(1);
/// Default time budget to open a connection.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
/// Default largest reply body read (64 MiB): far above a record of the engine's default
/// `max_outcome_size` (1 MiB), far below what a broken or hostile endpoint could stream.
pub const DEFAULT_MAX_REPLY_SIZE: usize = 64 * 1024 * 1024;

/// Environment variable pairs read by [`crate::KvRestStore::from_env`], in order (the core's
/// [`KV_REST_ENV_PAIRS`]: Upstash names first, then the deprecated Vercel KV names).
pub const ENV_PAIRS: [(&str, &str); 2] = KV_REST_ENV_PAIRS;

/// Why a store could not be configured.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum KvRestConfigError {
    /// A needed environment variable is not set (or is empty).
    #[error("environment variable {0} is not set")]
    MissingVariable(&'static str),
    /// The URL is not an `http://` or `https://` URL.
    #[error("KV REST URL {url:?} is not an http(s) URL")]
    InvalidUrl {
        /// The refused URL.
        url: String,
    },
    /// The token is empty.
    #[error("KV REST token is empty")]
    EmptyToken,
    /// The token holds characters an HTTP header cannot carry (a line break, a control
    /// character).
    #[error("KV REST token cannot be sent in an HTTP header")]
    InvalidToken,
    /// The HTTP client could not be built (TLS backend missing?).
    #[error("cannot build the HTTP client")]
    Client(#[source] reqwest::Error),
}

/// A bearer token that never shows in `Debug` output or logs.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Token(pub(crate) String);

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

/// Settings for a [`crate::KvRestStore`].
#[derive(Debug, Clone)]
pub struct KvRestConfig {
    pub(crate) url: String,
    pub(crate) token: Token,
    pub(crate) operation_timeout: Duration,
    pub(crate) connect_timeout: Duration,
    pub(crate) reconnect_attempts: usize,
    pub(crate) key_locking_scripts: bool,
    pub(crate) max_reply_size: usize,
}

impl KvRestConfig {
    /// Endpoint and token; defaults: 1 s per operation, 2 reconnect attempts on connection failures (or a
    /// request cut off before any reply), scripts
    /// sent with Upstash's per-key locking flag.
    ///
    /// # Errors
    /// [`KvRestConfigError::InvalidUrl`] or [`KvRestConfigError::EmptyToken`].
    pub fn new(
        url: impl Into<String>,
        token: impl Into<String>,
    ) -> Result<Self, KvRestConfigError> {
        let url = url.into().trim_end_matches('/').to_owned();
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(KvRestConfigError::InvalidUrl { url });
        }
        let token = token.into();
        if token.is_empty() {
            return Err(KvRestConfigError::EmptyToken);
        }
        Ok(Self {
            url,
            token: Token(token),
            operation_timeout: DEFAULT_OPERATION_TIMEOUT,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            reconnect_attempts: 2,
            key_locking_scripts: true,
            max_reply_size: DEFAULT_MAX_REPLY_SIZE,
        })
    }

    /// Read the endpoint from a variable lookup (`std::env::var` in [`crate::KvRestStore::from_env`]).
    ///
    /// # Errors
    /// [`KvRestConfigError::MissingVariable`] naming the variable to set.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, KvRestConfigError> {
        let present = |name: &str| lookup(name).filter(|v| !v.trim().is_empty());
        for (url_var, token_var) in ENV_PAIRS {
            if let Some(url) = present(url_var) {
                let token =
                    present(token_var).ok_or(KvRestConfigError::MissingVariable(token_var))?;
                return Self::new(url, token);
            }
        }
        Err(KvRestConfigError::MissingVariable(
            "UPSTASH_REDIS_REST_URL (or KV_REST_API_URL)",
        ))
    }

    /// Time budget of each store operation, i.e. one HTTP request (default 1 s), resends after
    /// a connection failure included. Past it the operation fails with
    /// [`StoreError::Timeout`](idempotency_core::StoreError::Timeout).
    /// Keep it at or below the engine's `store_timeout` so the store's typed error is the one
    /// reported. Same name and meaning as the Redis store's option.
    #[must_use]
    pub fn operation_timeout(mut self, timeout: Duration) -> Self {
        self.operation_timeout = timeout;
        self
    }

    /// Time budget to open a connection (default 500 ms).
    #[must_use]
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How many times a request is sent again after a connection failure or a request cut off
    /// before any reply (default 2; never after an HTTP answer or a timeout), with exponential
    /// back-off, all within the one [`operation_timeout`](Self::operation_timeout). Safe because every command the store sends is idempotent under the record
    /// protocol. Same name as the Redis store's option.
    #[must_use]
    pub fn reconnect_attempts(mut self, attempts: usize) -> Self {
        self.reconnect_attempts = attempts;
        self
    }

    /// Send scripts with `#!lua flags=allow-key-locking` (default true): on Upstash, scripts on
    /// different keys then run in parallel instead of under a global lock. Turn off for a server
    /// that refuses the flag and does not strip it.
    #[must_use]
    pub fn key_locking_scripts(mut self, enabled: bool) -> Self {
        self.key_locking_scripts = enabled;
        self
    }

    /// Largest reply body read, in bytes (default [`DEFAULT_MAX_REPLY_SIZE`]). A longer reply
    /// (announced by its `Content-Length` or streamed) is not read further and the operation
    /// fails with `StoreError::Backend`. Raise it with the engine's `max_outcome_size` when
    /// outcomes of tens of MiB are stored.
    #[must_use]
    pub fn max_reply_size(mut self, bytes: usize) -> Self {
        self.max_reply_size = bytes;
        self
    }

    /// The endpoint.
    pub fn url(&self) -> &str {
        &self.url
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn lookup(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name| map.get(name).cloned()
    }

    #[test]
    fn upstash_names_win_over_vercel_names() {
        let c = KvRestConfig::from_lookup(lookup(&[
            ("UPSTASH_REDIS_REST_URL", "https://a.upstash.io/"),
            ("UPSTASH_REDIS_REST_TOKEN", "t1"),
            ("KV_REST_API_URL", "https://b.vercel"),
            ("KV_REST_API_TOKEN", "t2"),
        ]))
        .unwrap();
        assert_eq!(c.url(), "https://a.upstash.io");
        assert_eq!(c.token.0, "t1");
    }

    #[test]
    fn vercel_names_are_the_fallback() {
        let c = KvRestConfig::from_lookup(lookup(&[
            ("KV_REST_API_URL", "https://b.vercel"),
            ("KV_REST_API_TOKEN", "t2"),
        ]))
        .unwrap();
        assert_eq!(c.url(), "https://b.vercel");
    }

    #[test]
    fn missing_variables_are_named() {
        let err =
            KvRestConfig::from_lookup(lookup(&[("KV_REST_API_URL", "https://b")])).unwrap_err();
        assert!(matches!(
            err,
            KvRestConfigError::MissingVariable("KV_REST_API_TOKEN")
        ));
        let err = KvRestConfig::from_lookup(lookup(&[])).unwrap_err();
        assert!(err.to_string().contains("UPSTASH_REDIS_REST_URL"));
        assert!(matches!(
            KvRestConfig::new("redis://x", "t"),
            Err(KvRestConfigError::InvalidUrl { .. })
        ));
        assert!(matches!(
            KvRestConfig::new("http://x", ""),
            Err(KvRestConfigError::EmptyToken)
        ));
    }

    #[test]
    fn token_is_redacted() {
        let c = KvRestConfig::new("http://127.0.0.1:1", "super-secret").unwrap();
        assert!(!format!("{c:?}").contains("super-secret"));
    }
}
