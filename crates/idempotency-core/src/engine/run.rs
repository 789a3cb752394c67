//! `run`: at-most-once execution of any async closure whose result is a serde value (job
//! consumers, message handlers), in the manner of Powertools' `makeIdempotent`.

use std::future::Future;

use serde::Serialize;
use serde::de::DeserializeOwned;
use thiserror::Error;

use crate::{
    Fingerprint, IdempotencyError, IdempotencyKey, IdempotencyStore, Scope, StoredOutcome,
};

use super::begin::Begin;
use super::handle::Idempotency;

/// Media type of outcomes stored by [`Idempotency::run`].
pub const RUN_CONTENT_TYPE: &str = "application/json";

/// Why [`Idempotency::run`] did not return a value.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum RunError<E, T> {
    /// The engine refused to run the closure (in progress, mismatch, store down, bad key...).
    #[error(transparent)]
    Idempotency(IdempotencyError),
    /// The closure ran and failed; the claim was released so a retry runs it again.
    #[error("operation failed")]
    Operation(#[source] E),
    /// The closure ran and succeeded, but its result could not be recorded (lease lost, store
    /// failure, too large). The value is here so that nothing is lost; a retry may run the
    /// operation again.
    #[error("operation succeeded but its outcome was not recorded")]
    NotRecorded {
        /// The closure's result.
        value: T,
        /// Why it was not recorded.
        #[source]
        error: IdempotencyError,
    },
    /// The closure ran and succeeded, but its result does not serialise to JSON (a map with
    /// non-string keys, a failing `Serialize` impl), so nothing was recorded and the claim was
    /// released: a retry runs the operation again. A bug in `T`, not a store failure.
    #[error("operation succeeded but its result does not serialize to JSON")]
    Serialize {
        /// The closure's result.
        value: T,
        /// Why it did not serialise.
        #[source]
        error: serde_json::Error,
    },
    /// A stored outcome could not be turned back into `T` (the type changed between deploys?).
    #[error("stored outcome does not deserialize into the expected type")]
    Deserialize(#[source] serde_json::Error),
}

impl<S: IdempotencyStore + 'static> Idempotency<S> {
    /// Run `operation` at most once for `(scope, key)`; retries get the first result back.
    ///
    /// The result is stored as JSON. An `Err` from the closure releases the claim so the next
    /// attempt runs again.
    ///
    /// ```
    /// # use idempotency_core::*;
    /// # async fn demo<S: IdempotencyStore + 'static>(engine: Idempotency<S>) {
    /// let key = IdempotencyKey::new("msg-42").unwrap();
    /// let charged: Result<u64, RunError<std::io::Error, u64>> = engine
    ///     .run(&Scope::global(), &key, Fingerprint::of("charge:42:1999"), || async { Ok(1999) })
    ///     .await;
    /// # let _ = charged;
    /// # }
    /// ```
    ///
    /// # Errors
    /// See [`RunError`].
    pub async fn run<T, E, F, Fut>(
        &self,
        scope: &Scope,
        key: &IdempotencyKey,
        fingerprint: Fingerprint,
        operation: F,
    ) -> Result<T, RunError<E, T>>
    where
        T: Serialize + DeserializeOwned,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let guard = match self.begin(scope, key, fingerprint).await {
            Ok(Begin::Run(guard)) => guard,
            Ok(Begin::Replay(outcome)) => {
                return serde_json::from_slice(&outcome.body).map_err(RunError::Deserialize);
            }
            Err(error) => return Err(RunError::Idempotency(error)),
        };
        match operation().await {
            Ok(value) => {
                let body = match serde_json::to_vec(&value) {
                    Ok(body) => body,
                    Err(error) => {
                        // Dropping the guard releases the claim.
                        drop(guard);
                        return Err(RunError::Serialize { value, error });
                    }
                };
                let outcome = StoredOutcome::new(body, Some(RUN_CONTENT_TYPE.to_owned()));
                match guard.complete(outcome).await {
                    Ok(()) => Ok(value),
                    Err(error) => Err(RunError::NotRecorded { value, error }),
                }
            }
            Err(error) => {
                if let Err(release) = guard.release().await {
                    tracing::debug!(%release, "release after a failed operation did not apply");
                }
                Err(RunError::Operation(error))
            }
        }
    }
}
