//! breaker23: the environment's duration floors at their boundaries, and durations too long for
//! the monotonic clock (which used to start and then panic on the request path).

#![cfg(feature = "memory")]

use std::time::Duration;

use idempotency::memory::MemoryStore;
use idempotency::{EnvSettings, Fingerprint, Idempotency, IdempotencyKey, Scope, SettingsError};

const VARIABLES: [&str; 4] = [
    "IDEMPOTENCY_STORE_TIMEOUT",
    "IDEMPOTENCY_LEASE",
    "IDEMPOTENCY_RETENTION",
    "IDEMPOTENCY_WAIT_IN_PROGRESS",
];

fn read(vars: &[(&str, &str)]) -> Result<EnvSettings, SettingsError> {
    let vars: Vec<(String, String)> = vars
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    EnvSettings::from_lookup(move |name| {
        vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
    })
}

#[test]
fn breaker23_boundaries_of_each_floor() {
    let ok = |vars: &[(&str, &str)]| read(vars).unwrap();
    // Exactly at the floor, with whitespace around it.
    let at = ok(&[
        ("IDEMPOTENCY_STORE_TIMEOUT", " 1ms "),
        ("IDEMPOTENCY_LEASE", "\t1s\n"),
        ("IDEMPOTENCY_RETENTION", "1000ms"),
        ("IDEMPOTENCY_WAIT_IN_PROGRESS", "1000us"),
    ]);
    assert_eq!(at.store_timeout, Some(Duration::from_millis(1)));
    assert_eq!(at.lease, Some(Duration::from_secs(1)));
    assert_eq!(at.retention, Some(Duration::from_secs(1)));
    assert_eq!(at.wait_in_progress, Some(Duration::from_millis(1)));
    // `0` and `0s` switch the wait off; whitespace-only is unset.
    for off in ["0", "0s", " 0 ", "0ms"] {
        let s = ok(&[("IDEMPOTENCY_WAIT_IN_PROGRESS", off)]);
        assert_eq!(s.wait_in_progress, Some(Duration::ZERO), "{off:?}");
    }
    assert!(ok(&[("IDEMPOTENCY_LEASE", "   ")]).is_empty());
    // Just under, zero, and junk: refused, naming the variable.
    let under = [
        ("IDEMPOTENCY_STORE_TIMEOUT", "999us"),
        ("IDEMPOTENCY_LEASE", "999ms"),
        ("IDEMPOTENCY_RETENTION", "999999999ns"),
        ("IDEMPOTENCY_WAIT_IN_PROGRESS", "999999ns"),
    ];
    for (variable, value) in under {
        let error = read(&[(variable, value)]).unwrap_err();
        assert_eq!(error.variable, variable);
        assert!(error.to_string().contains(variable), "{error}");
    }
    for variable in &VARIABLES[..3] {
        for value in ["0", "0s", "-1s", "1 fortnight"] {
            let error = read(&[(variable, value)]).unwrap_err();
            assert_eq!(error.variable, *variable, "{value}");
            assert!(error.to_string().contains(variable), "{error}");
        }
    }
    // A value humantime itself cannot hold: an error, not a panic.
    for variable in VARIABLES {
        let error = read(&[(variable, "99999999999999999999y")]).unwrap_err();
        assert_eq!(error.variable, variable);
    }
}

/// Durations humantime reads but the monotonic clock cannot add (`Instant + d` panics when the
/// sum does not fit): refused at start-up, naming the variable, instead of panicking later.
#[test]
fn breaker23_durations_past_the_clock_are_refused() {
    for huge in ["300000000000y", "18446744073709551615s"] {
        for variable in VARIABLES {
            let error = read(&[(variable, huge)]).unwrap_err();
            assert_eq!(error.variable, variable, "{huge}");
            assert!(error.to_string().contains(variable), "{error}");
        }
    }
    // Long but usable values still start (10000 years fits the clock).
    let s = read(&[
        ("IDEMPOTENCY_RETENTION", "10000y"),
        ("IDEMPOTENCY_LEASE", "10000y"),
        ("IDEMPOTENCY_WAIT_IN_PROGRESS", "10000y"),
        ("IDEMPOTENCY_STORE_TIMEOUT", "10000y"),
    ])
    .unwrap();
    assert!(s.lease.is_some());
}

/// What the refusal prevents: with the longest wait humantime reads, every protected request
/// (not only duplicates) panicked in `begin` (`created_at + max_wait`).
#[tokio::test]
async fn breaker23_a_long_wait_does_not_panic_a_request() {
    let Ok(settings) = read(&[("IDEMPOTENCY_WAIT_IN_PROGRESS", "10000y")]) else {
        panic!("10000y is a usable wait");
    };
    let engine = settings
        .apply(Idempotency::builder(MemoryStore::new()).ignore_env())
        .build()
        .unwrap();
    let key = IdempotencyKey::new("k").unwrap();
    let begun = engine
        .begin(&Scope::global(), &key, Fingerprint::of("k"))
        .await;
    assert!(begun.is_ok());
}

/// The programmatic builder has no ceiling: `Duration::MAX` as the wait made every `begin`
/// panic (`created_at + max_wait` overflows the clock); it now waits "for ever" instead.
#[tokio::test]
async fn breaker23_the_longest_wait_from_the_builder_does_not_panic() {
    let engine = Idempotency::builder(MemoryStore::new())
        .ignore_env()
        .wait_for_in_progress(Duration::MAX, Duration::from_millis(20))
        .build()
        .unwrap();
    let key = IdempotencyKey::new("k").unwrap();
    let begun = engine
        .begin(&Scope::global(), &key, Fingerprint::of("k"))
        .await;
    assert!(matches!(begun, Ok(idempotency::Begin::Run(_))));
}

/// The longest lease: a guard dropped without an answer is released in the background, whose
/// give-up time (`now + lease`) overflowed the clock, a panic in `Drop`.
#[tokio::test]
async fn breaker23_the_longest_lease_releases_a_dropped_guard() {
    let store = MemoryStore::new();
    let engine = Idempotency::builder(store.clone())
        .ignore_env()
        .retention(Duration::MAX)
        .lease(Duration::MAX)
        .build()
        .unwrap();
    let key = IdempotencyKey::new("k").unwrap();
    let Ok(idempotency::Begin::Run(guard)) = engine
        .begin(&Scope::global(), &key, Fingerprint::of("k"))
        .await
    else {
        panic!("the first attempt runs");
    };
    drop(guard);
    // The release happens in the background: the key is free again soon.
    for _ in 0..200 {
        if let Ok(idempotency::Begin::Run(_)) = engine
            .begin(&Scope::global(), &key, Fingerprint::of("k"))
            .await
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the dropped guard's claim was never released");
}
