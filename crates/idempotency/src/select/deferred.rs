//! A store whose server did not answer at start-up, connected in the background.
//!
//! A store outage at deploy time must not keep the service down: the service starts, says so
//! loudly, and until the store answers every operation fails with
//! [`StoreError::Unavailable`], so the engine's failure policy (fail closed: 503 with
//! `Retry-After`; fail open: run unprotected) answers requests exactly as it does for an outage
//! that starts later.

use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use idempotency_core::{RepeatedFailure, StoreError, error_chain};
use thiserror::Error;

use super::description::StoreDescription;

/// First pause between connection attempts; doubled after each failure up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
/// Longest pause between connection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// A store that can be opened from its URL, with its time budget of one operation
/// (`None`: the store's default).
pub(super) trait Connect: Sized + Send + Sync + 'static {
    fn connect(
        url: &str,
        operation_timeout: Option<Duration>,
    ) -> impl Future<Output = Result<Self, StoreError>> + Send;

    /// A background attempt after the first failed: as [`Connect::connect`], but a store whose
    /// client logs every failure itself (the Redis Cluster client: one warning per seed node
    /// per attempt) keeps it quiet, since [`reconnect`] reports the failures, rate-limited.
    fn reconnect(
        url: &str,
        operation_timeout: Option<Duration>,
    ) -> impl Future<Output = Result<Self, StoreError>> + Send {
        Self::connect(url, operation_timeout)
    }
}

/// Why an operation on a store that is not connected yet failed.
#[derive(Debug, Error)]
#[error("the idempotency store has not answered since start-up ({last_error})")]
pub(crate) struct NotConnected {
    last_error: String,
}

/// The store once connected; until then, the last connection error.
pub(super) struct Deferred<T> {
    ready: OnceLock<T>,
    last_error: Mutex<String>,
    description: StoreDescription,
}

impl<T> fmt::Debug for Deferred<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Deferred")
            .field("description", &self.description)
            .field("connected", &self.ready.get().is_some())
            .finish()
    }
}

impl<T: Connect> Deferred<T> {
    /// Start connecting to `url` in the background on the current tokio runtime, the store
    /// opened with `operation_timeout` as [`Connect::connect`] takes it. The task stops when it
    /// connects or when the last handle to the store is dropped.
    pub(super) fn start(
        description: StoreDescription,
        url: String,
        operation_timeout: Option<Duration>,
        first_error: StoreError,
    ) -> Arc<Self> {
        let this = Arc::new(Self {
            ready: OnceLock::new(),
            last_error: Mutex::new(error_chain(&first_error)),
            description,
        });
        tokio::spawn(reconnect(Arc::downgrade(&this), url, operation_timeout));
        this
    }

    /// The store, if connected.
    pub(super) fn ready(&self) -> Option<&T> {
        self.ready.get()
    }

    /// The store, or [`StoreError::Unavailable`] while it is not connected.
    pub(super) fn get(&self) -> Result<&T, StoreError> {
        self.ready.get().ok_or_else(|| {
            let last_error = self
                .last_error
                .lock()
                .map(|e| e.clone())
                .unwrap_or_else(|poisoned| poisoned.into_inner().clone());
            StoreError::Unavailable {
                source: Box::new(NotConnected { last_error }),
            }
        })
    }
}

async fn reconnect<T: Connect>(
    this: Weak<Deferred<T>>,
    url: String,
    operation_timeout: Option<Duration>,
) {
    let mut backoff = FIRST_BACKOFF;
    let mut retries = RepeatedFailure::new(tokio::time::Instant::now());
    loop {
        tokio::time::sleep(backoff).await;
        let result = T::reconnect(&url, operation_timeout).await;
        let Some(deferred) = this.upgrade() else {
            return; // nobody holds the store any more
        };
        match result {
            Ok(store) => {
                let _ = deferred.ready.set(store);
                tracing::warn!(store = %deferred.description, "the idempotency store answers again: requests are protected from now on");
                return;
            }
            Err(error) => {
                let cause = error_chain(&error);
                tracing::debug!(store = %deferred.description, error = %cause, "idempotency store still not reachable");
                if let Some(report) = retries.failure(tokio::time::Instant::now()) {
                    tracing::warn!(
                        store = %deferred.description,
                        error = %cause,
                        attempts = report.failed,
                        waited_s = report.waited.as_secs(),
                        "idempotency store still not reachable; retrying in the background \
                         (reported at most every {}s)",
                        RepeatedFailure::EVERY.as_secs()
                    );
                }
                if let Ok(mut last) = deferred.last_error.lock() {
                    *last = error_chain(&error);
                }
            }
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}
