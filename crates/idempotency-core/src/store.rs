//! The store trait: atomic primitives only. The engine owns the policy, so every backend
//! behaves the same.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use thiserror::Error;

use crate::{Completed, CorruptRecord, InProgress, LeaseToken, Record, StoreKey};

/// A boxed error from a backend's client library.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// The result of [`IdempotencyStore::try_claim`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// The key was absent; the in-progress record now holds it.
    Claimed,
    /// The key was held; this is what is there (nothing was written).
    Existing(Record),
}

/// The result of a fenced operation ([`IdempotencyStore::complete`], `release`, `extend`).
///
/// Losing the lease is an expected outcome, not a failure of the store, so it is a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fenced {
    /// The record was held under the token and the operation was applied.
    Applied,
    /// The record is gone, completed, or held under another token; nothing was changed.
    LeaseLost,
}

impl Fenced {
    /// The answer of a fenced primitive whose write did not apply, given a re-read of the key:
    /// [`Fenced::LeaseLost`], unless the key holds something that is not a record, which the
    /// contract reports as [`StoreError::Corrupt`] from every operation (scripts and conditional
    /// updates cannot tell "not ours" from "not a record"; the re-read can). Other read
    /// failures do not hide the lease loss: the write surely did not apply.
    ///
    /// Costs the backend one read, on the rare lease-lost path only. Every backend that can
    /// hold non-records (Redis, KV REST, SQL) answers through this, so the same corrupt key
    /// gives the same error kind everywhere.
    ///
    /// # Errors
    /// [`StoreError::Corrupt`] when the re-read found a value that is not a record.
    pub fn lease_lost_unless_corrupt(
        reread: Result<Option<Record>, StoreError>,
    ) -> Result<Fenced, StoreError> {
        match reread {
            Err(corrupt @ StoreError::Corrupt(_)) => Err(corrupt),
            Ok(_) | Err(_) => Ok(Fenced::LeaseLost),
        }
    }
}

/// The result of [`IdempotencyStore::wait_for_change`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Waited {
    /// The record under the key may have changed (completed, released, deleted, or taken
    /// over), or the lease the wait found has ended (lapsed, or been extended): re-read it. Spurious wake-ups are allowed (e.g. after the store's subscriber
    /// reconnected, when a notification may have been missed).
    Changed,
    /// Nothing was heard within the timeout. The caller re-reads once anyway (the safety
    /// re-check: a lease that expired is not notified, and a notification can be lost).
    TimedOut,
    /// The store cannot notify (the default): the caller polls instead.
    Unsupported,
}

/// A store operation, named the same way by every backend: in [`StoreError::Timeout`], in the
/// `op` label of the engine's store metrics, and in logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum StoreOperation {
    /// [`IdempotencyStore::try_claim`].
    TryClaim,
    /// [`IdempotencyStore::complete`].
    Complete,
    /// [`IdempotencyStore::release`].
    Release,
    /// [`IdempotencyStore::extend`].
    Extend,
    /// [`IdempotencyStore::get`].
    Get,
    /// [`IdempotencyStore::delete`].
    Delete,
    /// [`IdempotencyStore::time_to_live`].
    TimeToLive,
    /// [`IdempotencyStore::wait_for_change`].
    WaitForChange,
    /// Opening a connection to the store.
    Connect,
    /// Operators' inspection outside the record protocol (server checks, key scans).
    Inspect,
    /// Deleting expired records in bulk (maintenance of stores without server-side expiry).
    Purge,
}

impl StoreOperation {
    /// The snake-case name used as metric label and in messages (`try_claim`, `complete`...).
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::TryClaim => "try_claim",
            Self::Complete => "complete",
            Self::Release => "release",
            Self::Extend => "extend",
            Self::Get => "get",
            Self::Delete => "delete",
            Self::TimeToLive => "time_to_live",
            Self::WaitForChange => "wait_for_change",
            Self::Connect => "connect",
            Self::Inspect => "inspect",
            Self::Purge => "purge",
        }
    }
}

impl std::fmt::Display for StoreOperation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A store failed: it could not say what the state of the key is.
///
/// Expected outcomes (key held, lease lost) are values of [`Claim`] and [`Fenced`]; this type is
/// only for infrastructure trouble, so that a caller can tell "store unavailable" apart.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The operation did not finish within its time budget, or the store's server ended it
    /// for taking too long (a Postgres `statement_timeout` or `lock_timeout`, SQLSTATE 57014 /
    /// 55P03).
    #[error("store operation `{operation}` timed out after {after:?}")]
    Timeout {
        /// The operation that timed out.
        operation: StoreOperation,
        /// How long the operation ran before it was given up: the budget when the budget ran
        /// out; when the server ended it, the time it ran until then (shorter than the budget).
        after: Duration,
    },
    /// The store could not be reached (connection refused, reset, DNS, TLS...).
    #[error("store unreachable")]
    Unavailable {
        /// The client library's error.
        #[source]
        source: BoxError,
    },
    /// The store answered with an error (for Redis: an error reply such as `WRONGTYPE`).
    /// A reply the protocol never produces is one too. The message is the source's, not
    /// repeated here.
    #[error("store replied with an error")]
    Backend {
        /// The server's error reply, or what was unexpected, as the backend's typed error.
        #[source]
        source: BoxError,
    },
    /// The value under the key is not a record this build can read.
    #[error(transparent)]
    Corrupt(#[from] CorruptRecord),
    /// The store is up but refuses writes: Redis `OOM command not allowed when used memory >
    /// 'maxmemory'` (with a `noeviction` policy) or `READONLY You can't write against a read only
    /// replica` (after a failover, or a client pointed at a replica), also when they come through
    /// the KV REST API. Reads still work, so the engine can still replay completed records (see
    /// [`crate::Idempotency::begin`]).
    #[error("store refuses writes")]
    WriteRefused {
        /// The server's refusal (e.g. `OOM command not allowed ...`), as the backend's typed
        /// error.
        #[source]
        source: BoxError,
    },
    /// An embedded store is at capacity and everything in it is still needed.
    #[error("store is full: {entries} records held, all in progress or protected")]
    Full {
        /// Records held when the claim was refused.
        entries: usize,
    },
    /// Anything else, from the client library.
    #[error("store error")]
    Other {
        /// The underlying error.
        #[source]
        source: BoxError,
    },
}

impl StoreError {
    /// Whether retrying the same call later could succeed (timeouts, unreachable, full, writes
    /// refused).
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            StoreError::Timeout { .. }
                | StoreError::Unavailable { .. }
                | StoreError::Full { .. }
                | StoreError::WriteRefused { .. }
        )
    }

    /// Whether a write that failed this way may nevertheless have been applied (the request
    /// may have reached the store and only its reply was lost): timeouts, broken connections
    /// and unclassified client errors. Answers and refusals from the store (`Backend`,
    /// `WriteRefused`, `Full`, `Corrupt`) prove that nothing was written.
    pub fn outcome_unknown(&self) -> bool {
        matches!(
            self,
            StoreError::Timeout { .. } | StoreError::Unavailable { .. } | StoreError::Other { .. }
        )
    }
}

/// Atomic primitives of the record protocol.
///
/// # Contract
/// Every implementation must guarantee, and the behaviour suite in `idempotency-testkit` checks:
/// - `try_claim` is one atomic step: of any number of concurrent claims on an absent key exactly
///   one returns [`Claim::Claimed`]; the others see the winner's record. An expired record is
///   absent.
/// - The in-progress record expires after `lease`, the completed one after `retention`, measured
///   by the store (no clock comparisons between machines).
/// - `complete`, `release` and `extend` apply only when the record is in progress under `token`;
///   otherwise they change nothing and return [`Fenced::LeaseLost`]. `complete` is also
///   [`Fenced::Applied`] when the record is already completed under the same token (a retried
///   call whose first reply was lost), without changing it.
/// - Anything stored under a key that is not a record (undecodable bytes, or a value of another
///   type such as a Redis hash) is reported as [`StoreError::Corrupt`] — not `Backend`, not
///   absent — by `try_claim`, `get`, and by `complete`, `release` and `extend`, which never
///   apply to it (a fenced write that did not apply re-reads the key:
///   [`Fenced::lease_lost_unless_corrupt`]). `delete` removes it.
/// - Only infrastructure trouble is an `Err`. A store that is up but refuses writes (out of
///   memory, read-only replica) reports [`StoreError::WriteRefused`] from the writing
///   primitives, so that the engine can still serve replays from `get`.
/// - [`IdempotencyStore::time_to_live`] is optional (the default knows nothing); when
///   implemented it reports the time the record under a key has left, as the store measures it.
/// - [`IdempotencyStore::wait_for_change`] is optional (the default answers
///   [`Waited::Unsupported`] at once, and the engine polls); when implemented it must not miss a
///   completion or release that happens after the caller's read (see its docs).
/// - [`IdempotencyStore::try_claim_now`] and [`IdempotencyStore::complete_now`] are optional
///   (the default answers `None`: not available); when implemented, an answer is exactly that
///   of the async primitive, made without I/O.
///
/// # Implementing a store
/// Write the primitives as plain `async fn`s (no `#[async_trait]`): each one's future must be
/// `Send`, so hold no `std::sync::MutexGuard`, `Rc` or other `!Send` value across an
/// `.await` (the compiler says "future cannot be sent between threads safely" at the method).
/// A leftover `#[async_trait]` on the impl fails with E0195, "lifetime parameters or bounds on
/// method `try_claim` do not match the trait declaration": remove the attribute. A wrapper
/// around another store forwards the provided methods it should keep (`operation_bound`,
/// `try_claim_now`, ...): one it does not write answers the default.
///
/// ```
/// use std::collections::HashMap;
/// use std::sync::Mutex;
/// use std::time::Duration;
/// use idempotency_core::{
///     Claim, Completed, Fenced, IdempotencyStore, InProgress, LeaseToken, Record, StoreError,
///     StoreKey,
/// };
///
/// /// Records in a map, without expiry or fencing (a sketch: see the contract above).
/// #[derive(Debug, Default)]
/// struct MapStore(Mutex<HashMap<StoreKey, Record>>);
///
/// impl IdempotencyStore for MapStore {
///     async fn try_claim(
///         &self,
///         key: &StoreKey,
///         record: &InProgress,
///         _lease: Duration,
///     ) -> Result<Claim, StoreError> {
///         // The guard is dropped before the function ends: no `.await` while it is held.
///         let mut map = self.0.lock().unwrap();
///         Ok(match map.get(key) {
///             Some(existing) => Claim::Existing(existing.clone()),
///             None => {
///                 map.insert(key.clone(), Record::InProgress(record.clone()));
///                 Claim::Claimed
///             }
///         })
///     }
///     async fn complete(
///         &self,
///         key: &StoreKey,
///         _token: &LeaseToken,
///         record: &Completed,
///         _retention: Duration,
///     ) -> Result<Fenced, StoreError> {
///         self.0.lock().unwrap().insert(key.clone(), Record::Completed(record.clone()));
///         Ok(Fenced::Applied)
///     }
///     async fn release(&self, key: &StoreKey, _token: &LeaseToken) -> Result<Fenced, StoreError> {
///         self.0.lock().unwrap().remove(key);
///         Ok(Fenced::Applied)
///     }
///     async fn extend(
///         &self,
///         _key: &StoreKey,
///         _token: &LeaseToken,
///         _lease: Duration,
///     ) -> Result<Fenced, StoreError> {
///         Ok(Fenced::Applied)
///     }
///     async fn get(&self, key: &StoreKey) -> Result<Option<Record>, StoreError> {
///         Ok(self.0.lock().unwrap().get(key).cloned())
///     }
///     async fn delete(&self, key: &StoreKey) -> Result<bool, StoreError> {
///         Ok(self.0.lock().unwrap().remove(key).is_some())
///     }
/// }
///
/// // Generic code takes `S: IdempotencyStore`; a store chosen at run time goes behind
/// // `Arc<dyn DynIdempotencyStore>` (this trait is not dyn-compatible), which is a store too.
/// # use std::sync::Arc;
/// # use idempotency_core::{DynIdempotencyStore, Idempotency};
/// let store: Arc<dyn DynIdempotencyStore> = Arc::new(MapStore::default());
/// let engine = Idempotency::builder(store).ignore_env().build()?;
/// # let _ = engine;
/// # Ok::<(), idempotency_core::ConfigError>(())
/// ```
pub trait IdempotencyStore: Send + Sync + std::fmt::Debug {
    /// Create the in-progress record if the key is absent, else return what is there.
    fn try_claim(
        &self,
        key: &StoreKey,
        record: &InProgress,
        lease: Duration,
    ) -> impl Future<Output = Result<Claim, StoreError>> + Send;

    /// Replace the in-progress record held under `token` by `record`, kept for `retention`.
    fn complete(
        &self,
        key: &StoreKey,
        token: &LeaseToken,
        record: &Completed,
        retention: Duration,
    ) -> impl Future<Output = Result<Fenced, StoreError>> + Send;

    /// Delete the in-progress record held under `token`.
    fn release(
        &self,
        key: &StoreKey,
        token: &LeaseToken,
    ) -> impl Future<Output = Result<Fenced, StoreError>> + Send;

    /// Reset the lease of the in-progress record held under `token` to `lease` from now.
    fn extend(
        &self,
        key: &StoreKey,
        token: &LeaseToken,
        lease: Duration,
    ) -> impl Future<Output = Result<Fenced, StoreError>> + Send;

    /// Read the record, if any (inspection and polling while in progress).
    fn get(
        &self,
        key: &StoreKey,
    ) -> impl Future<Output = Result<Option<Record>, StoreError>> + Send;

    /// Delete the record whatever its state (explicit invalidation). Returns whether one existed.
    fn delete(&self, key: &StoreKey) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// How long the record under `key` has left before it expires (for an in-progress record:
    /// the rest of its lease), or `None` when the key is absent, has no expiry, or the store
    /// cannot tell.
    ///
    /// Optional: the default answers `None` without a round trip. The engine asks only when it
    /// answers "in progress" to a retry, to derive `Retry-After` from the lease (see
    /// [`crate::IdempotencyError::InProgress`]); Redis answers it with `PTTL`.
    ///
    /// # Errors
    /// Infrastructure trouble, as for the other primitives (the engine then falls back to its
    /// fixed `Retry-After`).
    fn time_to_live(
        &self,
        key: &StoreKey,
    ) -> impl Future<Output = Result<Option<Duration>, StoreError>> + Send {
        let _ = key;
        std::future::ready(Ok(None))
    }

    /// Wait until the in-progress record held under `seen` (the lease token a claim just found)
    /// may have changed, for at most `timeout` (tokio's clock), so that a waiting duplicate is
    /// woken instead of polling.
    ///
    /// Optional: the default answers [`Waited::Unsupported`] without waiting, and the engine
    /// then polls `get`/`try_claim` every `poll_interval` as before.
    ///
    /// # Contract
    /// - Returns [`Waited::Changed`] when the record under `key` is no longer in progress under
    ///   `seen` — including when that happened between the caller's read and this call (the
    ///   implementation subscribes first, then checks once), or may have (spurious wake-ups are
    ///   allowed). Completions and releases must not be missed; deletes need not be notified
    ///   (the caller's re-read at the end of the wait catches them).
    /// - Returns [`Waited::Changed`] by the time the lease found under `seen` ends, if that is
    ///   before `timeout` (nothing announces a lapse): a duplicate of a claim whose owner is
    ///   gone must take the key over when its lease lapses, not when its own wait runs out.
    ///   The lease's end as read with the check (an extension since then only costs the
    ///   caller one more look and wait). The memory, Redis and Postgres stores do; the shared
    ///   check is `idempotency_testkit::lapse`.
    /// - Returns [`Waited::TimedOut`] after `timeout` otherwise; the caller then re-reads once.
    /// - Costs no store round trips per unit of time waited: one subscription per waited key
    ///   at most, shared by every waiter of the key in this process. (The caller's wait ends
    ///   at each lease end it read, so a first attempt that keeps renewing its lease costs a
    ///   waiter one look, the check and the caller's claim, per lease period.)
    /// - Cancel-safe: dropping the future unregisters the waiter.
    ///
    /// # Errors
    /// Infrastructure trouble while subscribing or checking (the engine then falls back to
    /// polling for this wait).
    fn wait_for_change(
        &self,
        key: &StoreKey,
        seen: &LeaseToken,
        timeout: Duration,
    ) -> impl Future<Output = Result<Waited, StoreError>> + Send {
        let _ = (key, seen, timeout);
        std::future::ready(Ok(Waited::Unsupported))
    }

    /// The bound this store puts on each of its primitives by itself (`wait_for_change`
    /// aside): every call of `try_claim`, `complete`, `release`, `extend`, `get`, `delete` and
    /// `time_to_live` answers, or fails with [`StoreError::Timeout`], within this duration,
    /// even when the server hangs.
    ///
    /// Optional: the default, `None`, promises nothing, and the engine bounds every call that
    /// does not answer at once with its own `store_timeout`. When a store answers
    /// `Some(bound)` with `bound` at or below the engine's `store_timeout`, the engine arms no
    /// timer of its own for that store (one timer per store call instead of two nested ones);
    /// a longer bound leaves the engine's timer in place, so the engine's budget always holds.
    fn operation_bound(&self) -> Option<Duration> {
        None
    }

    /// [`IdempotencyStore::try_claim`], answered at once by a store that needs no I/O for it
    /// (an embedded store), without building a future; `None`: not available here, nothing was
    /// done, call `try_claim`.
    ///
    /// Optional: the default answers `None`, and every caller then makes the async call. The
    /// engine asks this first on its request path and falls back to `try_claim`: an embedded
    /// store answers a claim without building and polling the call's future (and, behind
    /// `dyn`, without boxing it), on the hottest path of the memory store.
    ///
    /// # Contract
    /// When it answers `Some`, the answer and its effect on the store are exactly those of
    /// one `try_claim` call with the same arguments (same atomicity, same expiry, same wake-ups),
    /// and the caller makes no `try_claim` call for it. When it answers `None`, nothing was
    /// done. An implementation either always answers `Some` or always `None`, and never blocks
    /// on I/O.
    ///
    /// `now` is the caller's monotonic clock read, made before this call (the engine passes
    /// the clock read that also times the call: `tokio::time::Instant::now()`, which is
    /// [`Instant::now`] outside a runtime whose clock tokio's `test-util` paused; for a
    /// completion it is read before the outcome is compressed). A store that keeps time on that
    /// clock may take it as the time of the call on its key instead of reading the clock again
    /// (a clock read costs ~20-25 ns, a good part of an in-process claim): the answer is then
    /// that of the async primitive called at `now`. It should not take an instant ahead of its
    /// clock as the time of other keys (the memory store on `TokioClock` sweeps the whole map at
    /// its own clock when that is earlier). A store on the system's clock (the memory store's
    /// default, which keeps real time when a test pauses tokio's clock) or on a clock of its own
    /// (a test's manual clock) ignores it.
    ///
    /// # Errors
    /// As [`IdempotencyStore::try_claim`] (inside the `Some`).
    fn try_claim_now(
        &self,
        key: &StoreKey,
        record: &InProgress,
        lease: Duration,
        now: Instant,
    ) -> Option<Result<Claim, StoreError>> {
        let _ = (key, record, lease, now);
        None
    }

    /// [`IdempotencyStore::complete`], answered at once by a store that needs no I/O for it;
    /// `None`: not available here, nothing was done, call `complete`. Same contract as
    /// [`IdempotencyStore::try_claim_now`]. Fastest when a store answers always or never:
    /// once a store has answered a completion at once, the engine ends a claim's lease renewal
    /// just before asking it to store the claim's outcome, and starts it again when the answer
    /// is `None` or a transient failure.
    ///
    /// `now`: as for [`IdempotencyStore::try_claim_now`].
    ///
    /// # Errors
    /// As [`IdempotencyStore::complete`] (inside the `Some`).
    fn complete_now(
        &self,
        key: &StoreKey,
        token: &LeaseToken,
        record: &Completed,
        retention: Duration,
        now: Instant,
    ) -> Option<Result<Fenced, StoreError>> {
        let _ = (key, token, record, retention, now);
        None
    }
}

macro_rules! forward_store {
    ($ty:ty) => {
        /// Forwards every call to the store it points to (the same future: no box added).
        impl<T: IdempotencyStore + ?Sized> IdempotencyStore for $ty {
            fn try_claim(
                &self,
                key: &StoreKey,
                record: &InProgress,
                lease: Duration,
            ) -> impl Future<Output = Result<Claim, StoreError>> + Send {
                (**self).try_claim(key, record, lease)
            }
            fn complete(
                &self,
                key: &StoreKey,
                token: &LeaseToken,
                record: &Completed,
                retention: Duration,
            ) -> impl Future<Output = Result<Fenced, StoreError>> + Send {
                (**self).complete(key, token, record, retention)
            }
            fn release(
                &self,
                key: &StoreKey,
                token: &LeaseToken,
            ) -> impl Future<Output = Result<Fenced, StoreError>> + Send {
                (**self).release(key, token)
            }
            fn extend(
                &self,
                key: &StoreKey,
                token: &LeaseToken,
                lease: Duration,
            ) -> impl Future<Output = Result<Fenced, StoreError>> + Send {
                (**self).extend(key, token, lease)
            }
            fn get(
                &self,
                key: &StoreKey,
            ) -> impl Future<Output = Result<Option<Record>, StoreError>> + Send {
                (**self).get(key)
            }
            fn delete(
                &self,
                key: &StoreKey,
            ) -> impl Future<Output = Result<bool, StoreError>> + Send {
                (**self).delete(key)
            }
            fn time_to_live(
                &self,
                key: &StoreKey,
            ) -> impl Future<Output = Result<Option<Duration>, StoreError>> + Send {
                (**self).time_to_live(key)
            }
            fn wait_for_change(
                &self,
                key: &StoreKey,
                seen: &LeaseToken,
                timeout: Duration,
            ) -> impl Future<Output = Result<Waited, StoreError>> + Send {
                (**self).wait_for_change(key, seen, timeout)
            }
            fn operation_bound(&self) -> Option<Duration> {
                (**self).operation_bound()
            }
            fn try_claim_now(
                &self,
                key: &StoreKey,
                record: &InProgress,
                lease: Duration,
                now: Instant,
            ) -> Option<Result<Claim, StoreError>> {
                (**self).try_claim_now(key, record, lease, now)
            }
            fn complete_now(
                &self,
                key: &StoreKey,
                token: &LeaseToken,
                record: &Completed,
                retention: Duration,
                now: Instant,
            ) -> Option<Result<Fenced, StoreError>> {
                (**self).complete_now(key, token, record, retention, now)
            }
        }
    };
}

forward_store!(&T);
forward_store!(Arc<T>);
forward_store!(Box<T>);

/// The future of a [`DynIdempotencyStore`] call: boxed, so that the trait can be used as
/// `dyn DynIdempotencyStore`.
pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'a>>;

/// [`IdempotencyStore`] behind a pointer to `dyn`: the same primitives, their futures boxed.
///
/// [`IdempotencyStore`] returns each primitive's own future type (no allocation per call), so
/// it cannot be made into a trait object. Where the store is chosen at run time, use
/// `Arc<dyn DynIdempotencyStore>` (or `Box<..>`, `&dyn ..`) instead: every `IdempotencyStore`
/// is a `DynIdempotencyStore` (blanket impl, nothing to write), and `dyn DynIdempotencyStore`
/// is an `IdempotencyStore` again, so that `Idempotency<Arc<dyn DynIdempotencyStore>>` works
/// (also written `dyn DynIdempotencyStore + Send + Sync`, as `dyn IdempotencyStore + Send +
/// Sync` used to be).
/// Calls through `dyn` box their future, one allocation per call; calls on a concrete store
/// do not.
///
/// ```
/// # use std::sync::Arc;
/// # use idempotency_core::{DynIdempotencyStore, IdempotencyStore};
/// fn erase<S: IdempotencyStore + 'static>(store: S) -> Arc<dyn DynIdempotencyStore> {
///     Arc::new(store)
/// }
/// ```
///
/// Implement [`IdempotencyStore`], not this trait, and call the primitives through
/// `IdempotencyStore` (implemented by `dyn DynIdempotencyStore`). The methods here are those
/// of `IdempotencyStore`, documented there, prefixed with `dyn_` so that a call such as
/// `store.try_claim(..)` on an `Arc<dyn DynIdempotencyStore>` has one meaning with both traits
/// in scope.
pub trait DynIdempotencyStore: Send + Sync + std::fmt::Debug {
    /// [`IdempotencyStore::try_claim`], its future boxed.
    fn dyn_try_claim<'a>(
        &'a self,
        key: &'a StoreKey,
        record: &'a InProgress,
        lease: Duration,
    ) -> StoreFuture<'a, Claim>;
    /// [`IdempotencyStore::complete`], its future boxed.
    fn dyn_complete<'a>(
        &'a self,
        key: &'a StoreKey,
        token: &'a LeaseToken,
        record: &'a Completed,
        retention: Duration,
    ) -> StoreFuture<'a, Fenced>;
    /// [`IdempotencyStore::release`], its future boxed.
    fn dyn_release<'a>(
        &'a self,
        key: &'a StoreKey,
        token: &'a LeaseToken,
    ) -> StoreFuture<'a, Fenced>;
    /// [`IdempotencyStore::extend`], its future boxed.
    fn dyn_extend<'a>(
        &'a self,
        key: &'a StoreKey,
        token: &'a LeaseToken,
        lease: Duration,
    ) -> StoreFuture<'a, Fenced>;
    /// [`IdempotencyStore::get`], its future boxed.
    fn dyn_get<'a>(&'a self, key: &'a StoreKey) -> StoreFuture<'a, Option<Record>>;
    /// [`IdempotencyStore::delete`], its future boxed.
    fn dyn_delete<'a>(&'a self, key: &'a StoreKey) -> StoreFuture<'a, bool>;
    /// [`IdempotencyStore::time_to_live`], its future boxed.
    fn dyn_time_to_live<'a>(&'a self, key: &'a StoreKey) -> StoreFuture<'a, Option<Duration>>;
    /// [`IdempotencyStore::wait_for_change`], its future boxed.
    fn dyn_wait_for_change<'a>(
        &'a self,
        key: &'a StoreKey,
        seen: &'a LeaseToken,
        timeout: Duration,
    ) -> StoreFuture<'a, Waited>;
    /// [`IdempotencyStore::operation_bound`].
    fn dyn_operation_bound(&self) -> Option<Duration>;
    /// [`IdempotencyStore::try_claim_now`].
    fn dyn_try_claim_now(
        &self,
        key: &StoreKey,
        record: &InProgress,
        lease: Duration,
        now: Instant,
    ) -> Option<Result<Claim, StoreError>>;
    /// [`IdempotencyStore::complete_now`].
    fn dyn_complete_now(
        &self,
        key: &StoreKey,
        token: &LeaseToken,
        record: &Completed,
        retention: Duration,
        now: Instant,
    ) -> Option<Result<Fenced, StoreError>>;
}

impl<T: IdempotencyStore> DynIdempotencyStore for T {
    fn dyn_try_claim<'a>(
        &'a self,
        key: &'a StoreKey,
        record: &'a InProgress,
        lease: Duration,
    ) -> StoreFuture<'a, Claim> {
        Box::pin(IdempotencyStore::try_claim(self, key, record, lease))
    }
    fn dyn_complete<'a>(
        &'a self,
        key: &'a StoreKey,
        token: &'a LeaseToken,
        record: &'a Completed,
        retention: Duration,
    ) -> StoreFuture<'a, Fenced> {
        Box::pin(IdempotencyStore::complete(
            self, key, token, record, retention,
        ))
    }
    fn dyn_release<'a>(
        &'a self,
        key: &'a StoreKey,
        token: &'a LeaseToken,
    ) -> StoreFuture<'a, Fenced> {
        Box::pin(IdempotencyStore::release(self, key, token))
    }
    fn dyn_extend<'a>(
        &'a self,
        key: &'a StoreKey,
        token: &'a LeaseToken,
        lease: Duration,
    ) -> StoreFuture<'a, Fenced> {
        Box::pin(IdempotencyStore::extend(self, key, token, lease))
    }
    fn dyn_get<'a>(&'a self, key: &'a StoreKey) -> StoreFuture<'a, Option<Record>> {
        Box::pin(IdempotencyStore::get(self, key))
    }
    fn dyn_delete<'a>(&'a self, key: &'a StoreKey) -> StoreFuture<'a, bool> {
        Box::pin(IdempotencyStore::delete(self, key))
    }
    fn dyn_time_to_live<'a>(&'a self, key: &'a StoreKey) -> StoreFuture<'a, Option<Duration>> {
        Box::pin(IdempotencyStore::time_to_live(self, key))
    }
    fn dyn_wait_for_change<'a>(
        &'a self,
        key: &'a StoreKey,
        seen: &'a LeaseToken,
        timeout: Duration,
    ) -> StoreFuture<'a, Waited> {
        Box::pin(IdempotencyStore::wait_for_change(self, key, seen, timeout))
    }
    fn dyn_operation_bound(&self) -> Option<Duration> {
        IdempotencyStore::operation_bound(self)
    }
    fn dyn_try_claim_now(
        &self,
        key: &StoreKey,
        record: &InProgress,
        lease: Duration,
        now: Instant,
    ) -> Option<Result<Claim, StoreError>> {
        IdempotencyStore::try_claim_now(self, key, record, lease, now)
    }
    fn dyn_complete_now(
        &self,
        key: &StoreKey,
        token: &LeaseToken,
        record: &Completed,
        retention: Duration,
        now: Instant,
    ) -> Option<Result<Fenced, StoreError>> {
        IdempotencyStore::complete_now(self, key, token, record, retention, now)
    }
}

macro_rules! dyn_store {
    ($($dyn:ty),*) => {$(
        /// A store behind `dyn` is a store (each call boxes its future), so that
        /// `Arc<dyn DynIdempotencyStore>`, `Box<..>` and `&dyn ..` are stores too, also
        /// written with `+ Send`, `+ Sync` or `+ Send + Sync` (as `dyn IdempotencyStore + Send
        /// + Sync` was before the trait was native): each is a type of its own.
        impl IdempotencyStore for $dyn {
            async fn try_claim(
                &self,
                key: &StoreKey,
                record: &InProgress,
                lease: Duration,
            ) -> Result<Claim, StoreError> {
                DynIdempotencyStore::dyn_try_claim(self, key, record, lease).await
            }
            async fn complete(
                &self,
                key: &StoreKey,
                token: &LeaseToken,
                record: &Completed,
                retention: Duration,
            ) -> Result<Fenced, StoreError> {
                DynIdempotencyStore::dyn_complete(self, key, token, record, retention).await
            }
            async fn release(&self, key: &StoreKey, token: &LeaseToken) -> Result<Fenced, StoreError> {
                DynIdempotencyStore::dyn_release(self, key, token).await
            }
            async fn extend(
                &self,
                key: &StoreKey,
                token: &LeaseToken,
                lease: Duration,
            ) -> Result<Fenced, StoreError> {
                DynIdempotencyStore::dyn_extend(self, key, token, lease).await
            }
            async fn get(&self, key: &StoreKey) -> Result<Option<Record>, StoreError> {
                DynIdempotencyStore::dyn_get(self, key).await
            }
            async fn delete(&self, key: &StoreKey) -> Result<bool, StoreError> {
                DynIdempotencyStore::dyn_delete(self, key).await
            }
            async fn time_to_live(&self, key: &StoreKey) -> Result<Option<Duration>, StoreError> {
                DynIdempotencyStore::dyn_time_to_live(self, key).await
            }
            async fn wait_for_change(
                &self,
                key: &StoreKey,
                seen: &LeaseToken,
                timeout: Duration,
            ) -> Result<Waited, StoreError> {
                DynIdempotencyStore::dyn_wait_for_change(self, key, seen, timeout).await
            }
            fn operation_bound(&self) -> Option<Duration> {
                DynIdempotencyStore::dyn_operation_bound(self)
            }
            fn try_claim_now(
                &self,
                key: &StoreKey,
                record: &InProgress,
                lease: Duration,
                now: Instant,
            ) -> Option<Result<Claim, StoreError>> {
                DynIdempotencyStore::dyn_try_claim_now(self, key, record, lease, now)
            }
            fn complete_now(
                &self,
                key: &StoreKey,
                token: &LeaseToken,
                record: &Completed,
                retention: Duration,
                now: Instant,
            ) -> Option<Result<Fenced, StoreError>> {
                DynIdempotencyStore::dyn_complete_now(self, key, token, record, retention, now)
            }
        }
    )*};
}

dyn_store!(
    dyn DynIdempotencyStore + '_,
    dyn DynIdempotencyStore + Send + '_,
    dyn DynIdempotencyStore + Sync + '_,
    dyn DynIdempotencyStore + Send + Sync + '_
);
