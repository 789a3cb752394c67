//! On `TokioClock`, the caller's instant of `try_claim_now`/`complete_now` is the time of that call on its own
//! key, not the time the store sweeps the whole map at: an instant ahead of the store's clock
//! (a caller's mistake, or far in the future) swept every other key's live lease and retained
//! outcome (their duplicates then ran again), and one far enough ahead overflowed the next
//! sweep time (a panic in a debug build, which left the sweep flag set: no amortised sweep
//! ever ran again).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use idempotency_core::{
    Claim, Completed, Fenced, Fingerprint, IdempotencyStore, InProgress, LeaseToken, Record,
    StoreKey, StoredOutcome,
};
use idempotency_memory::{MemoryStore, TokioClock};

fn claim_record() -> InProgress {
    InProgress {
        token: LeaseToken::generate(),
        fingerprint: Fingerprint::of("x"),
        created_at_ms: 1,
    }
}

fn done(claim: &InProgress) -> Completed {
    Completed {
        token: claim.token,
        fingerprint: claim.fingerprint,
        created_at_ms: 1,
        completed_at_ms: 2,
        outcome: StoredOutcome::new("done", None),
    }
}

#[test]
fn an_instant_ahead_of_the_store_clock_sweeps_no_other_key() {
    let lease = Duration::from_secs(60);
    let an_hour = Instant::now() + Duration::from_secs(3600);
    let far = Instant::now()
        .checked_add(Duration::from_millis(u64::MAX))
        .expect("the monotonic clock holds it");
    for ahead in [an_hour, far] {
        // A store that sweeps at every claim, whose clock has moved past its first sweep; on
        // the clock that takes the caller's instant.
        let store = MemoryStore::builder()
            .clock(TokioClock::new())
            .sweep_interval(Duration::from_millis(1))
            .build();
        std::thread::sleep(Duration::from_millis(3));
        let (running, completed) = (StoreKey::from_raw("running"), StoreKey::from_raw("done"));
        let held = claim_record();
        let claimed = store.try_claim_now(&running, &held, lease, Instant::now());
        assert_eq!(claimed.unwrap().unwrap(), Claim::Claimed);
        let first = claim_record();
        let claimed = store.try_claim_now(&completed, &first, lease, Instant::now());
        assert_eq!(claimed.unwrap().unwrap(), Claim::Claimed);
        let retention = Duration::from_secs(600);
        let fenced = store.complete_now(
            &completed,
            &first.token,
            &done(&first),
            retention,
            Instant::now(),
        );
        assert_eq!(fenced.unwrap().unwrap(), Fenced::Applied);

        // A claim of another key "at" an instant ahead.
        let stray = StoreKey::from_raw("stray");
        let claimed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            store.try_claim_now(&stray, &claim_record(), lease, ahead)
        }));
        let claimed = claimed.unwrap_or_else(|_| panic!("{ahead:?}: the claim panicked"));
        assert_eq!(claimed.unwrap().unwrap(), Claim::Claimed);

        // The other keys are as they were: the lease still held, the outcome still replayed.
        for (key, expected) in [
            (&running, Record::InProgress(held.clone())),
            (&completed, Record::Completed(done(&first))),
        ] {
            let again = store.try_claim_now(key, &claim_record(), lease, Instant::now());
            assert_eq!(
                again.unwrap().unwrap(),
                Claim::Existing(expected),
                "{ahead:?}: {key} was swept by a claim of another key"
            );
        }

        // The amortised sweep still runs: a lapsed claim goes at the next claim.
        let short = StoreKey::from_raw("short");
        let claimed = store.try_claim_now(
            &short,
            &claim_record(),
            Duration::from_millis(1),
            Instant::now(),
        );
        assert_eq!(claimed.unwrap().unwrap(), Claim::Claimed);
        let before = store.len();
        std::thread::sleep(Duration::from_millis(5));
        let next = StoreKey::from_raw("next");
        let claimed = store.try_claim_now(&next, &claim_record(), lease, Instant::now());
        assert_eq!(claimed.unwrap().unwrap(), Claim::Claimed);
        assert_eq!(
            store.len(),
            before,
            "{ahead:?}: the lapsed claim was swept (one in, one out)"
        );
    }
}
