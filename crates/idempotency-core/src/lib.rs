//! # idempotency-core
//!
//! The protocol and engine of the idempotency toolkit: run a side effect **at most once** per
//! `(scope, key)` and give every retry the first outcome back, on any store that implements the
//! small atomic [`IdempotencyStore`] trait. No network code lives here; backends are separate
//! crates (`idempotency-memory`, `idempotency-redis`, `idempotency-kv-rest`).
//!
//! ```
//! use idempotency_core::{Begin, Fingerprint, Idempotency, IdempotencyKey, Scope, StoredOutcome};
//! # use idempotency_core::*;
//! # use std::time::Duration;
//! # #[derive(Debug, Default)] struct Tiny(std::sync::Mutex<std::collections::HashMap<StoreKey, Record>>);
//! # impl IdempotencyStore for Tiny {
//! #   async fn try_claim(&self, k: &StoreKey, r: &InProgress, _: Duration) -> Result<Claim, StoreError> {
//! #     let mut m = self.0.lock().unwrap();
//! #     Ok(match m.get(k) { Some(e) => Claim::Existing(e.clone()), None => { m.insert(k.clone(), Record::InProgress(r.clone())); Claim::Claimed } }) }
//! #   async fn complete(&self, k: &StoreKey, _: &LeaseToken, r: &Completed, _: Duration) -> Result<Fenced, StoreError> {
//! #     self.0.lock().unwrap().insert(k.clone(), Record::Completed(r.clone())); Ok(Fenced::Applied) }
//! #   async fn release(&self, k: &StoreKey, _: &LeaseToken) -> Result<Fenced, StoreError> { self.0.lock().unwrap().remove(k); Ok(Fenced::Applied) }
//! #   async fn extend(&self, _: &StoreKey, _: &LeaseToken, _: Duration) -> Result<Fenced, StoreError> { Ok(Fenced::Applied) }
//! #   async fn get(&self, k: &StoreKey) -> Result<Option<Record>, StoreError> { Ok(self.0.lock().unwrap().get(k).cloned()) }
//! #   async fn delete(&self, k: &StoreKey) -> Result<bool, StoreError> { Ok(self.0.lock().unwrap().remove(k).is_some()) }
//! # }
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let store = Tiny::default();
//! // `store` is any IdempotencyStore, e.g. idempotency_memory::MemoryStore::new().
//! let engine = Idempotency::builder(store).ignore_env().build()?;
//! let key = IdempotencyKey::new("pay-7f3a")?;
//! let scope = Scope::new("customer-42");
//! let fingerprint = Fingerprint::builder().part("POST").part("/pay").part(r#"{"cents":1999}"#).finish();
//!
//! match engine.begin(&scope, &key, fingerprint).await? {
//!     Begin::Run(guard) => {
//!         let receipt = "charged 19.99"; // the side effect runs here, once
//!         guard.complete(StoredOutcome::new(receipt, Some("text/plain".into()))).await?;
//!     }
//!     Begin::Replay(_) => unreachable!("first attempt"),
//! }
//! // A retry with the same key and request gets the stored outcome back.
//! let Begin::Replay(outcome) = engine.begin(&scope, &key, fingerprint).await? else { panic!() };
//! assert_eq!(&outcome.body[..], b"charged 19.99");
//! # Ok(()) }
//! ```
//!
//! # Layout
//! - [`IdempotencyStore`]: the atomic primitives a backend implements (`try_claim`, `complete`,
//!   `release`, `extend`, `get`, `delete`) and their contract;
//! - [`Idempotency`]: the engine (policy, timeouts, failure policy, metrics), with
//!   [`Idempotency::begin`] / [`Guard`] and the generic [`Idempotency::run`];
//! - [`IdempotencyKey`], [`Scope`], [`StoreKey`]: validated client keys and injective store keys;
//! - [`Fingerprint`]: what identifies a request; [`LeaseToken`]: the fencing token;
//! - [`Record`], [`StoredOutcome`] and the [`codec`] (record format v1, documented there);
//! - [`lua`]: the scripts shared by the Redis-protocol backends.
//!
//! # Under faults
//! A live [`Guard`] renews its lease about every third of the lease (so the lease bounds how long
//! a crashed attempt blocks its key, not how long a live one may run); claims orphaned by a store
//! failure and failed releases are released in the background with bounded retries; a
//! completion rides out a short outage (bounded retries); `Retry-After` follows the remaining
//! lease of an abandoned claim; [`FailurePolicy`] offers fail-closed, fail-open and a
//! per-process fallback store; a store that refuses writes ([`StoreError::WriteRefused`]) still
//! replays completed records. See the guide's "Failure policy" section.
//!
//! # Observability
//! `tracing` spans (`idempotency.begin`, built only once a `tracing` dispatcher has been set or
//! when `log` is at debug level, so it costs nothing otherwise) and events at debug level
//! (warnings for fail-open,
//! fallback claims, lost leases, abandoned completions and the kill switch); `metrics` counters
//! and a latency histogram named in [`metric_names`] (no-ops without a recorder); and
//! [`Idempotency::stats`] for a cheap snapshot.
//!
//! # Feature flags
//! The crate is always the whole protocol and engine. It needs a tokio runtime (timers) but no
//! I/O driver. Off by default:
//! - `signal`: `shutdown_signal()`, which completes on SIGINT or SIGTERM, for the workspace's
//!   servers (the demo, the KV REST gateway), so they share one copy;
//! - `fuzzing`: the record decoders on their own, for the `fuzz/` targets (not a stable API).

#![deny(missing_docs)]

pub mod codec;
mod corrupt;
mod engine;
mod error;
mod fingerprint;
mod hexfmt;
mod key;
pub mod lua;
mod record;
mod repeated;
mod shared;
#[cfg(feature = "signal")]
mod signal;
mod store;
mod token;

pub use bytes::Bytes;
pub use corrupt::CorruptRecord;
#[allow(deprecated)]
pub use engine::kill_switch_value;
pub use engine::{
    Begin, CompletionParts, Config, DISABLE_ENV_VAR, FailurePolicy, Guard, Idempotency,
    IdempotencyBuilder, InProgressWait, KILL_SWITCH_ACCEPTED, PendingCompletion, RUN_CONTENT_TYPE,
    RunError, StatsSnapshot, Unprotected, metric_names, parse_kill_switch,
};
pub use error::{ConfigError, IdempotencyError, error_chain};
pub use fingerprint::{Fingerprint, FingerprintBuilder};
pub use key::{
    IdempotencyKey, KeyError, MAX_ESCAPED_SCOPE_LEN, MAX_KEY_LEN, PrefixError, Scope, StoreKey,
    validate_prefix,
};
pub use record::{Completed, InProgress, OutcomeEncoding, Record, StoredOutcome, unix_millis_now};
pub use repeated::{FailureReport, RepeatedFailure};
pub use shared::{
    DEFAULT_RETRY_AFTER, KV_REST_ENV_PAIRS, debug_spans_can_be_seen, expiry_millis, instant_after,
};
#[cfg(feature = "signal")]
pub use signal::shutdown_signal;
pub use store::{
    BoxError, Claim, DynIdempotencyStore, Fenced, IdempotencyStore, StoreError, StoreFuture,
    StoreOperation, Waited,
};
pub use token::LeaseToken;
