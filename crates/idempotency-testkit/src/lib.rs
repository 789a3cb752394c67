//! # idempotency-testkit
//!
//! One behaviour contract for every idempotency store: the suite of behaviours
//! ([`suite`]), a proptest comparison with a reference model ([`model`]), and real-server
//! fixtures for the network backends (Redis, Redis Cluster, Postgres).
//!
//! A backend runs all of it with one line in its tests, given an async factory that returns a
//! fresh [`StoreHarness`] (with its own key prefix) per test. The harness says what the store can
//! do as one [`Capabilities`] value; its defaults fit a store behind a server:
//!
//! ```ignore
//! // tests/behaviour.rs of a backend crate
//! async fn harness() -> MyHarness { /* a fresh store view with its own key prefix */ }
//! idempotency_testkit::behaviour_suite!(harness());
//! ```
//!
//! The macro expands to one `#[test]` per behaviour plus `model_matches_reference`. The tests
//! are generated from the behaviours' own definitions (as is [`suite::ALL`], the list to run
//! them in a loop, e.g. through a wrapper store): there is no second list, so a new behaviour
//! added here runs on every backend automatically. Each behaviour is also a plain
//! `async fn` in [`suite`], callable on its own:
//!
//! ```
//! use std::{sync::Arc, time::Duration};
//! use idempotency_core::{DynIdempotencyStore, IdempotencyStore, StoreKey};
//! use idempotency_testkit::{Capabilities, StoreHarness, async_trait};
//! # use idempotency_core::*;
//! # #[derive(Debug, Default)] struct MyStore(std::sync::Mutex<std::collections::HashMap<StoreKey, Record>>);
//! # impl IdempotencyStore for MyStore {
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
//!
//! struct MyHarness {
//!     store: Arc<MyStore>,
//!     prefix: String,
//! }
//!
//! #[async_trait]
//! impl StoreHarness for MyHarness {
//!     fn store(&self) -> Arc<dyn DynIdempotencyStore> { self.store.clone() }
//!     // Typed records only (the suite then checks the codec instead of raw corrupt values);
//!     // expiry on the real clock, so the defaults of `advance` (sleep) and `short_lease` fit.
//!     fn capabilities(&self) -> Capabilities {
//!         Capabilities::SERVER.with_raw_values(false)
//!     }
//!     fn key_prefix(&self) -> &str { &self.prefix }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let harness = MyHarness {
//!     store: Arc::new(MyStore::default()),
//!     prefix: idempotency_testkit::unique_prefix(),
//! };
//! idempotency_testkit::suite::claim_on_empty(&harness).await;
//! idempotency_testkit::suite::second_claim_sees_in_progress(&harness).await;
//! # }
//! ```
//!
//! A backend that cannot be tested (no server) must fail with an instruction, never skip
//! silently.
//!
//! For "a store (or endpoint) that is down", [`RefusedPort`] holds a port where nothing listens
//! and that no other server can take while the test runs (binding port 0 and dropping the
//! listener frees the port for any server started meanwhile). The fixtures' `stop` / `kill`
//! hold their server's port the same way until `restart`.
//!
//! This crate writes to the stores it is given and panics on broken expectations: it is test
//! code, not a stable API.
//!
//! # Feature flags
//! - `testcontainers` (off by default): [`fixtures::RedisServer::start`] runs Redis in Docker
//!   (a pinned `redis:7.x` image) and [`fixtures::PostgresServer::start`] Postgres
//!   (`postgres:16-alpine`) when a Docker engine answers, before falling back to a local
//!   `redis-server` / `initdb` + `postgres`. It adds ~100 crates to the build; `cargo xtask test --testcontainers`
//!   turns it on (CI on GitHub does).
//! - `gateway` (off by default): `fixtures::GatewayServer`, the KV REST gateway in-process in
//!   front of a Redis fixture, for testing REST clients against a real server.

#![deny(missing_docs)]
#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod faults;
pub mod fixtures;
mod harness;
pub mod lapse;
pub mod model;
mod port;
pub mod suite;

/// The attribute [`StoreHarness`] implementations need (`#[async_trait]`); stores implement
/// `IdempotencyStore` without it.
pub use async_trait::async_trait;
pub use harness::{Capabilities, RawValue, StoreHarness, TimeControl};
pub use port::{RefusedPort, retry_while_in_use, start_on_free_port};

/// A fresh key prefix for one harness: `t<random hex>:`.
pub fn unique_prefix() -> String {
    format!("t{:016x}:", rand::random::<u64>())
}

/// The runtime the generated tests run on (multi-threaded, so races are real).
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// Expand to one `#[test]` per behaviour in [`suite`] (generated from the same definitions as
/// [`suite::ALL`], so a new behaviour reaches every backend) plus the model comparison, each
/// building a fresh harness by evaluating `$factory` (an expression producing a future of a
/// [`StoreHarness`]).
#[macro_export]
macro_rules! behaviour_suite {
    ($factory:expr) => {
        $crate::__behaviour_tests!($factory);

        #[test]
        fn model_matches_reference() {
            $crate::model::check_against_model(|| $factory);
        }
    };
}
