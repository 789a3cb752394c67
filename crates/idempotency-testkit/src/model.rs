//! A reference model of the store contract and a proptest that compares a real store with it
//! under random sequences of operations (and, for stores with a manual clock, time advances).

use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;

use idempotency_core::{
    Claim, Completed, Fenced, Fingerprint, IdempotencyStore, InProgress, LeaseToken, Record,
    StoreKey, StoredOutcome,
};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};

use crate::{StoreHarness, TimeControl};

/// Which token an operation presents.
#[derive(Debug, Clone)]
pub enum TokenChoice {
    /// One issued by an earlier claim (index modulo the number issued).
    Issued(usize),
    /// One nobody was ever given.
    Stranger,
}

/// One step of a generated scenario.
#[derive(Debug, Clone)]
pub enum Op {
    /// `try_claim` with one of two fingerprints.
    Claim {
        /// Key index.
        key: u8,
        /// Fingerprint index.
        fingerprint: u8,
        /// Lease in milliseconds.
        lease_ms: u64,
    },
    /// `complete` with a small body.
    Complete {
        /// Key index.
        key: u8,
        /// Token presented.
        token: TokenChoice,
        /// Outcome body.
        body: Vec<u8>,
        /// Retention in milliseconds.
        retention_ms: u64,
    },
    /// `release`.
    Release {
        /// Key index.
        key: u8,
        /// Token presented.
        token: TokenChoice,
    },
    /// `extend`.
    Extend {
        /// Key index.
        key: u8,
        /// Token presented.
        token: TokenChoice,
        /// New lease in milliseconds.
        lease_ms: u64,
    },
    /// `get`.
    Get {
        /// Key index.
        key: u8,
    },
    /// `delete`.
    Delete {
        /// Key index.
        key: u8,
    },
    /// Let time pass (manual clocks only).
    Advance {
        /// Milliseconds.
        ms: u64,
    },
}

fn token_choice() -> impl Strategy<Value = TokenChoice> {
    prop_oneof![4 => (0usize..8).prop_map(TokenChoice::Issued), 1 => Just(TokenChoice::Stranger)]
}

/// Scenarios for a store with the given time control. Real-time stores get long leases and no
/// advances, so no expiry happens mid-scenario (expiry is covered by the suite's timed tests).
pub fn scenario(time: TimeControl) -> impl Strategy<Value = Vec<Op>> {
    let manual = time == TimeControl::Manual;
    let lease = if manual {
        (100u64..2_000).boxed()
    } else {
        Just(120_000u64).boxed()
    };
    let retention = if manual {
        (500u64..5_000).boxed()
    } else {
        Just(600_000u64).boxed()
    };
    let advance_weight = if manual { 2 } else { 0 };
    let op = prop_oneof![
        4 => (0u8..3, 0u8..2, lease.clone()).prop_map(|(key, fingerprint, lease_ms)| Op::Claim { key, fingerprint, lease_ms }),
        3 => (0u8..3, token_choice(), proptest::collection::vec(any::<u8>(), 0..16), retention)
            .prop_map(|(key, token, body, retention_ms)| Op::Complete { key, token, body, retention_ms }),
        2 => (0u8..3, token_choice()).prop_map(|(key, token)| Op::Release { key, token }),
        1 => (0u8..3, token_choice(), lease).prop_map(|(key, token, lease_ms)| Op::Extend { key, token, lease_ms }),
        2 => (0u8..3).prop_map(|key| Op::Get { key }),
        1 => (0u8..3).prop_map(|key| Op::Delete { key }),
        advance_weight => (0u64..3_000).prop_map(|ms| Op::Advance { ms }),
    ];
    proptest::collection::vec(op, 1..40)
}

#[derive(Debug, Default)]
struct Model {
    now: u64,
    records: HashMap<u8, (Record, u64)>,
}

impl Model {
    fn live(&self, key: u8) -> Option<&Record> {
        self.records
            .get(&key)
            .filter(|(_, expires)| *expires > self.now)
            .map(|(r, _)| r)
    }

    fn held_by(&self, key: u8, token: &LeaseToken) -> bool {
        matches!(self.live(key), Some(Record::InProgress(r)) if r.token == *token)
    }
}

/// Run one scenario against the store and the model, failing at the first difference.
///
/// # Errors
/// A [`TestCaseError`] naming the step where the store and the model disagree.
pub async fn run_scenario(h: &dyn StoreHarness, ops: &[Op]) -> Result<(), TestCaseError> {
    let store = h.store();
    let mut model = Model::default();
    let mut issued: Vec<InProgress> = Vec::new();
    let key_of = |k: u8| StoreKey::from_raw(format!("{}m{k}", h.key_prefix()));
    let pick = |issued: &[InProgress], choice: &TokenChoice| -> InProgress {
        match choice {
            TokenChoice::Issued(i) if !issued.is_empty() => issued[i % issued.len()].clone(),
            _ => InProgress {
                token: LeaseToken::generate(),
                fingerprint: Fingerprint::of("stranger"),
                created_at_ms: 1,
            },
        }
    };
    for (step, op) in ops.iter().enumerate() {
        // The store's answer must equal the model's, naming the step on failure.
        macro_rules! check {
            ($got:expr, $expected:expr) => {
                prop_assert_eq!(
                    $got.map_err(|e| e.to_string()),
                    Ok($expected),
                    "step {}: {:?}",
                    step,
                    op
                )
            };
        }
        match op {
            Op::Claim {
                key,
                fingerprint,
                lease_ms,
            } => {
                let record = InProgress {
                    token: LeaseToken::generate(),
                    fingerprint: Fingerprint::of([*fingerprint]),
                    created_at_ms: 1_000 + step as u64,
                };
                issued.push(record.clone());
                let got = store.try_claim(&key_of(*key), &record, ms(*lease_ms)).await;
                let expected = match model.live(*key) {
                    Some(existing) => Claim::Existing(existing.clone()),
                    None => {
                        model
                            .records
                            .insert(*key, (Record::InProgress(record), model.now + lease_ms));
                        Claim::Claimed
                    }
                };
                check!(got, expected);
            }
            Op::Complete {
                key,
                token,
                body,
                retention_ms,
            } => {
                let claim = pick(&issued, token);
                let record = Completed {
                    token: claim.token,
                    fingerprint: claim.fingerprint,
                    created_at_ms: claim.created_at_ms,
                    completed_at_ms: claim.created_at_ms + 1,
                    outcome: StoredOutcome::new(body.clone(), None),
                };
                let got = store
                    .complete(&key_of(*key), &claim.token, &record, ms(*retention_ms))
                    .await;
                let expected = if model.held_by(*key, &claim.token) {
                    model
                        .records
                        .insert(*key, (Record::Completed(record), model.now + retention_ms));
                    Fenced::Applied
                } else if matches!(model.live(*key), Some(Record::Completed(c)) if c.token == claim.token)
                {
                    Fenced::Applied
                } else {
                    Fenced::LeaseLost
                };
                check!(got, expected);
            }
            Op::Release { key, token } => {
                let claim = pick(&issued, token);
                let got = store.release(&key_of(*key), &claim.token).await;
                let expected = if model.held_by(*key, &claim.token) {
                    model.records.remove(key);
                    Fenced::Applied
                } else {
                    Fenced::LeaseLost
                };
                check!(got, expected);
            }
            Op::Extend {
                key,
                token,
                lease_ms,
            } => {
                let claim = pick(&issued, token);
                let got = store
                    .extend(&key_of(*key), &claim.token, ms(*lease_ms))
                    .await;
                let expected = if model.held_by(*key, &claim.token) {
                    let now = model.now;
                    if let Some(entry) = model.records.get_mut(key) {
                        entry.1 = now + lease_ms;
                    }
                    Fenced::Applied
                } else {
                    Fenced::LeaseLost
                };
                check!(got, expected);
            }
            Op::Get { key } => {
                let got = store.get(&key_of(*key)).await;
                let expected = model.live(*key).cloned();
                check!(got, expected);
            }
            Op::Delete { key } => {
                let got = store.delete(&key_of(*key)).await;
                let expected = model.live(*key).is_some();
                model.records.remove(key);
                check!(got, expected);
            }
            Op::Advance { ms: by } => {
                h.advance(ms(*by)).await;
                model.now += by;
            }
        }
    }
    Ok(())
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Compare stores built by `make` (one fresh harness per case) with the model.
///
/// Cases: `IDEMPOTENCY_PROPTEST_CASES` if set, else 256 for manual clocks and 48 for real servers.
///
/// # Panics
/// On the first (shrunk) scenario where the store and the model disagree.
pub fn check_against_model<H, F, Fut>(make: F)
where
    H: StoreHarness,
    F: Fn() -> Fut,
    Fut: Future<Output = H>,
{
    let runtime = crate::runtime();
    let time = runtime.block_on(make()).capabilities().time;
    let default_cases = if time == TimeControl::Manual { 256 } else { 48 };
    let cases = std::env::var("IDEMPOTENCY_PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default_cases);
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    let result = runner.run(&scenario(time), |ops| {
        runtime.block_on(async {
            let harness = make().await;
            run_scenario(&harness, &ops).await
        })
    });
    if let Err(failure) = result {
        panic!("store disagrees with the reference model: {failure}");
    }
}
