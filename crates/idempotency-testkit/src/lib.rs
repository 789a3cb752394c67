//! # idempotency-testkit
//!
//! One behaviour contract for every idempotency store: the suite of behaviours
//! ([`suite`]), a proptest comparison with a reference model ([`model`]), and real-server
//! fixtures for the network backends.
//!
//! A backend runs all of it with one line in its tests, given an async factory that returns a
//! fresh [`StoreHarness`] (with its own key prefix) per test:
//!
//! ```ignore
//! async fn harness() -> MyHarness { /* ... */ }
//! idempotency_testkit::behaviour_suite!(harness());
//! ```
//!
//! The macro expands to one `#[test]` per behaviour plus `model_matches_reference`, so a new
//! behaviour added here runs on every backend automatically. A backend that cannot be tested
//! (no server) must fail with an instruction, never skip silently.
//!
//! This crate writes to the stores it is given and panics on broken expectations: it is test
//! code, not a stable API.

#![deny(missing_docs)]
#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod faults;
pub mod fixtures;
mod harness;
pub mod model;
pub mod suite;

pub use harness::{RawValue, StoreHarness, TimeControl};

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

/// Expand to one `#[test]` per behaviour in [`suite`] plus the model comparison, each building
/// a fresh harness by evaluating `$factory` (an expression producing a future of a
/// [`StoreHarness`]).
#[macro_export]
macro_rules! behaviour_suite {
    ($factory:expr) => {
        $crate::__behaviours!($factory;
            claim_on_empty,
            second_claim_sees_in_progress,
            complete_then_replay,
            complete_is_idempotent_for_its_token,
            stale_token_complete_is_lease_lost,
            release_then_reclaim,
            lease_expiry_then_takeover,
            expired_claim_cannot_complete,
            retention_expiry,
            extend_keeps_claim,
            delete_any_state,
            concurrent_claimers_one_winner,
            outcomes_round_trip,
            corrupt_data_is_typed_error,
            key_injectivity,
            engine_semantics,
            engine_runs_once_under_duplicates,
            expired_records_are_absent
        );

        #[test]
        fn model_matches_reference() {
            $crate::model::check_against_model(|| $factory);
        }
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __behaviours {
    ($factory:expr; $($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                $crate::runtime().block_on(async {
                    let harness = $factory.await;
                    $crate::suite::$name(&harness).await;
                });
            }
        )*
    };
}
