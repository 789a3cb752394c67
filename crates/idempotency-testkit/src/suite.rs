//! The behaviour suite: one `pub async fn` per behaviour of the [`IdempotencyStore`] contract.
//!
//! These functions write to the store under test (under the harness's unique prefix). They are
//! test code, not a stable API: they panic on the first broken expectation. Run them all through
//! [`crate::behaviour_suite!`] rather than one by one, so a new behaviour reaches every backend.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures::future::LocalBoxFuture;
use idempotency_core::{
    Begin, Claim, Completed, DynIdempotencyStore, Fenced, Fingerprint, Idempotency,
    IdempotencyError, IdempotencyKey, IdempotencyStore, InProgress, LeaseToken, Record, RunError,
    Scope, StoreError, StoreKey, StoredOutcome, codec,
};

use crate::{RawValue, StoreHarness};

/// A long lease for tests that must not see expiry.
pub const LONG: Duration = Duration::from_secs(120);
/// A retention for tests that must not see expiry.
pub const RETAIN: Duration = Duration::from_secs(600);

fn key(h: &dyn StoreHarness, name: &str) -> StoreKey {
    StoreKey::from_raw(format!("{}{name}", h.key_prefix()))
}

fn in_progress(seed: &str) -> InProgress {
    InProgress {
        token: LeaseToken::generate(),
        fingerprint: Fingerprint::of(seed),
        created_at_ms: 1_764_000_000_000,
    }
}

fn completed(claim: &InProgress, body: impl Into<Bytes>) -> Completed {
    Completed {
        token: claim.token,
        fingerprint: claim.fingerprint,
        created_at_ms: claim.created_at_ms,
        completed_at_ms: claim.created_at_ms + 5,
        outcome: StoredOutcome::new(body, Some("application/octet-stream".into())),
    }
}

async fn claim(
    store: &dyn DynIdempotencyStore,
    k: &StoreKey,
    r: &InProgress,
    lease: Duration,
) -> Claim {
    store.try_claim(k, r, lease).await.expect("try_claim")
}

/// Panics unless `result` is [`StoreError::Corrupt`].
fn assert_corrupt<T: std::fmt::Debug>(value: &str, operation: &str, result: Result<T, StoreError>) {
    assert!(
        matches!(result, Err(StoreError::Corrupt(_))),
        "`{operation}` on a {value} that is not a record must be StoreError::Corrupt, got {result:?}"
    );
}

fn engine_over(h: &dyn StoreHarness) -> Idempotency<Arc<dyn DynIdempotencyStore>> {
    Idempotency::builder(h.store())
        .prefix(h.key_prefix())
        .ignore_env()
        .build()
        .expect("engine")
}

/// One behaviour of the suite: its name and a runner, as listed in [`ALL`].
#[derive(Clone, Copy)]
pub struct Behaviour {
    /// The behaviour's function name (also its test name).
    pub name: &'static str,
    /// Run the behaviour against a harness; panics on the first broken expectation.
    pub run: for<'a> fn(&'a dyn StoreHarness) -> LocalBoxFuture<'a, ()>,
}

impl std::fmt::Debug for Behaviour {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name)
    }
}

/// Defines the behaviours and, from the same tokens, [`ALL`] and the test generator used by
/// [`crate::behaviour_suite!`] — so there is no second list of names to drift (opendal generates
/// its list of behaviours next to them the same way). `$d` is a literal `$`, for the inner macro.
macro_rules! behaviours {
    ($d:tt $($(#[$meta:meta])* pub async fn $name:ident($h:ident: &dyn StoreHarness) $body:block)*) => {
        $($(#[$meta])* pub async fn $name($h: &dyn StoreHarness) $body)*

        /// Every behaviour, in definition order.
        pub const ALL: &[Behaviour] = &[$(Behaviour {
            name: stringify!($name),
            run: |h| Box::pin($name(h)),
        }),*];

        /// One `#[test]` per behaviour, each on a fresh harness from `$factory`.
        #[doc(hidden)]
        #[macro_export]
        macro_rules! __behaviour_tests {
            ($d factory:expr) => {$(
                #[test]
                fn $name() {
                    $d crate::runtime().block_on(async {
                        let harness = $d factory.await;
                        $d crate::suite::$name(&harness).await;
                    });
                }
            )*};
        }
    };
}

behaviours! { $

/// A claim on an absent key wins, and the record reads back as in progress.
pub async fn claim_on_empty(h: &dyn StoreHarness) {
    let store = h.store();
    let k = key(h, "empty");
    let r = in_progress("a");
    assert_eq!(claim(&*store, &k, &r, LONG).await, Claim::Claimed);
    assert_eq!(
        store.get(&k).await.expect("get"),
        Some(Record::InProgress(r))
    );
}

/// A second claim on a held key writes nothing and sees the first claim's record.
pub async fn second_claim_sees_in_progress(h: &dyn StoreHarness) {
    let store = h.store();
    let k = key(h, "second");
    let first = in_progress("a");
    let second = in_progress("b");
    assert_eq!(claim(&*store, &k, &first, LONG).await, Claim::Claimed);
    assert_eq!(
        claim(&*store, &k, &second, LONG).await,
        Claim::Existing(Record::InProgress(first.clone()))
    );
    assert_eq!(
        store.get(&k).await.expect("get"),
        Some(Record::InProgress(first))
    );
}

/// A completed record is what later claims and reads see.
pub async fn complete_then_replay(h: &dyn StoreHarness) {
    let store = h.store();
    let k = key(h, "replay");
    let r = in_progress("a");
    claim(&*store, &k, &r, LONG).await;
    let done = completed(&r, &b"{\"ok\":true}"[..]);
    let applied = store
        .complete(&k, &r.token, &done, RETAIN)
        .await
        .expect("complete");
    assert_eq!(applied, Fenced::Applied);
    let expected = Record::Completed(done);
    assert_eq!(
        claim(&*store, &k, &in_progress("a"), LONG).await,
        Claim::Existing(expected.clone())
    );
    assert_eq!(store.get(&k).await.expect("get"), Some(expected));
}

/// A completion retried with the same token (its first reply lost) is accepted and changes
/// nothing; a different token is refused.
pub async fn complete_is_idempotent_for_its_token(h: &dyn StoreHarness) {
    let store = h.store();
    let k = key(h, "complete-twice");
    let r = in_progress("a");
    claim(&*store, &k, &r, LONG).await;
    let done = completed(&r, &b"first"[..]);
    assert_eq!(
        store
            .complete(&k, &r.token, &done, RETAIN)
            .await
            .expect("complete"),
        Fenced::Applied
    );
    let again = completed(&r, &b"second"[..]);
    assert_eq!(
        store
            .complete(&k, &r.token, &again, RETAIN)
            .await
            .expect("complete"),
        Fenced::Applied
    );
    assert_eq!(
        store.get(&k).await.expect("get"),
        Some(Record::Completed(done.clone()))
    );
    let stranger = in_progress("a");
    let refused = store
        .complete(
            &k,
            &stranger.token,
            &completed(&stranger, &b"x"[..]),
            RETAIN,
        )
        .await;
    assert_eq!(refused.expect("complete"), Fenced::LeaseLost);
    assert_eq!(
        store.get(&k).await.expect("get"),
        Some(Record::Completed(done))
    );
}

/// Completing with a token that does not hold the claim is refused and changes nothing.
pub async fn stale_token_complete_is_lease_lost(h: &dyn StoreHarness) {
    let store = h.store();
    let k = key(h, "stale");
    let owner = in_progress("a");
    claim(&*store, &k, &owner, LONG).await;
    let stale = in_progress("a");
    let result = store
        .complete(&k, &stale.token, &completed(&stale, &b"x"[..]), RETAIN)
        .await;
    assert_eq!(result.expect("complete"), Fenced::LeaseLost);
    assert_eq!(
        store.get(&k).await.expect("get"),
        Some(Record::InProgress(owner))
    );
    // Completing an absent key is refused too, and does not create it.
    let absent = key(h, "stale-absent");
    let result = store
        .complete(&absent, &stale.token, &completed(&stale, &b"x"[..]), RETAIN)
        .await;
    assert_eq!(result.expect("complete"), Fenced::LeaseLost);
    assert_eq!(store.get(&absent).await.expect("get"), None);
}

/// Release frees the key for a new claim; a wrong token or a completed record is not released.
pub async fn release_then_reclaim(h: &dyn StoreHarness) {
    let store = h.store();
    let k = key(h, "release");
    let r = in_progress("a");
    claim(&*store, &k, &r, LONG).await;
    let wrong = LeaseToken::generate();
    assert_eq!(
        store.release(&k, &wrong).await.expect("release"),
        Fenced::LeaseLost
    );
    assert_eq!(
        store.release(&k, &r.token).await.expect("release"),
        Fenced::Applied
    );
    assert_eq!(store.get(&k).await.expect("get"), None);
    assert_eq!(
        store.release(&k, &r.token).await.expect("release"),
        Fenced::LeaseLost
    );
    let next = in_progress("a");
    assert_eq!(claim(&*store, &k, &next, LONG).await, Claim::Claimed);
    store
        .complete(&k, &next.token, &completed(&next, &b"x"[..]), RETAIN)
        .await
        .expect("complete");
    assert_eq!(
        store.release(&k, &next.token).await.expect("release"),
        Fenced::LeaseLost
    );
    assert!(matches!(
        store.get(&k).await.expect("get"),
        Some(Record::Completed(_))
    ));
}

/// After the lease lapses the key is free; the new owner wins and the old owner's completion,
/// release and extension are refused (fencing).
pub async fn lease_expiry_then_takeover(h: &dyn StoreHarness) {
    let store = h.store();
    let k = key(h, "takeover");
    let lease = h.short_lease();
    let old = in_progress("a");
    claim(&*store, &k, &old, lease).await;
    h.advance(lease + lease / 2 + Duration::from_millis(50))
        .await;
    assert_eq!(
        store.get(&k).await.expect("get"),
        None,
        "an expired claim is absent"
    );
    let new = in_progress("a");
    assert_eq!(claim(&*store, &k, &new, LONG).await, Claim::Claimed);
    let late = store
        .complete(&k, &old.token, &completed(&old, &b"late"[..]), RETAIN)
        .await;
    assert_eq!(late.expect("complete"), Fenced::LeaseLost);
    assert_eq!(
        store.release(&k, &old.token).await.expect("release"),
        Fenced::LeaseLost
    );
    assert_eq!(
        store.extend(&k, &old.token, LONG).await.expect("extend"),
        Fenced::LeaseLost
    );
    assert_eq!(
        store.get(&k).await.expect("get"),
        Some(Record::InProgress(new.clone()))
    );
    let done = store
        .complete(&k, &new.token, &completed(&new, &b"new"[..]), RETAIN)
        .await;
    assert_eq!(done.expect("complete"), Fenced::Applied);
}

/// A lapsed claim cannot be completed even when nobody took the key over.
pub async fn expired_claim_cannot_complete(h: &dyn StoreHarness) {
    let store = h.store();
    let k = key(h, "expired-complete");
    let lease = h.short_lease();
    let r = in_progress("a");
    claim(&*store, &k, &r, lease).await;
    h.advance(lease + lease / 2 + Duration::from_millis(50))
        .await;
    let late = store
        .complete(&k, &r.token, &completed(&r, &b"late"[..]), RETAIN)
        .await;
    assert_eq!(late.expect("complete"), Fenced::LeaseLost);
    assert_eq!(store.get(&k).await.expect("get"), None);
}

/// A completed record vanishes after its retention, and the key can be claimed again.
pub async fn retention_expiry(h: &dyn StoreHarness) {
    let store = h.store();
    let k = key(h, "retention");
    let retention = h.short_lease();
    let r = in_progress("a");
    claim(&*store, &k, &r, LONG).await;
    store
        .complete(&k, &r.token, &completed(&r, &b"x"[..]), retention)
        .await
        .expect("complete");
    assert!(store.get(&k).await.expect("get").is_some());
    h.advance(retention + retention / 2 + Duration::from_millis(50))
        .await;
    assert_eq!(store.get(&k).await.expect("get"), None);
    assert_eq!(
        claim(&*store, &k, &in_progress("b"), LONG).await,
        Claim::Claimed
    );
}

/// Extending keeps a claim alive past its first lease; only the owner can extend.
pub async fn extend_keeps_claim(h: &dyn StoreHarness) {
    let store = h.store();
    let k = key(h, "extend");
    let lease = h.short_lease();
    let r = in_progress("a");
    claim(&*store, &k, &r, lease).await;
    assert_eq!(
        store
            .extend(&k, &LeaseToken::generate(), LONG)
            .await
            .expect("extend"),
        Fenced::LeaseLost
    );
    assert_eq!(
        store
            .extend(&k, &r.token, lease * 10)
            .await
            .expect("extend"),
        Fenced::Applied
    );
    h.advance(lease + lease / 2 + Duration::from_millis(50))
        .await;
    assert_eq!(
        store.get(&k).await.expect("get"),
        Some(Record::InProgress(r.clone()))
    );
    assert_eq!(
        claim(&*store, &k, &in_progress("b"), LONG).await,
        Claim::Existing(Record::InProgress(r.clone()))
    );
    store
        .complete(&k, &r.token, &completed(&r, &b"x"[..]), RETAIN)
        .await
        .expect("complete");
    assert_eq!(
        store.extend(&k, &r.token, LONG).await.expect("extend"),
        Fenced::LeaseLost
    );
    assert_eq!(
        store
            .extend(&key(h, "extend-absent"), &r.token, LONG)
            .await
            .expect("extend"),
        Fenced::LeaseLost
    );
}

/// Delete removes a record in either state and reports whether one existed.
pub async fn delete_any_state(h: &dyn StoreHarness) {
    let store = h.store();
    let k = key(h, "delete");
    assert!(!store.delete(&k).await.expect("delete"));
    let r = in_progress("a");
    claim(&*store, &k, &r, LONG).await;
    assert!(store.delete(&k).await.expect("delete"));
    assert_eq!(store.get(&k).await.expect("get"), None);
    let r = in_progress("a");
    claim(&*store, &k, &r, LONG).await;
    store
        .complete(&k, &r.token, &completed(&r, &b"x"[..]), RETAIN)
        .await
        .expect("complete");
    assert!(store.delete(&k).await.expect("delete"));
    assert_eq!(
        claim(&*store, &k, &in_progress("a"), LONG).await,
        Claim::Claimed
    );
}

/// 64 concurrent claimers on one key: exactly one wins, all others see its record. Repeated over
/// many keys.
pub async fn concurrent_claimers_one_winner(h: &dyn StoreHarness) {
    const KEYS: usize = 40;
    const CLAIMERS: usize = 64;
    let store = h.store();
    for n in 0..KEYS {
        let k = key(h, &format!("race-{n}"));
        let mut tasks = Vec::with_capacity(CLAIMERS);
        for _ in 0..CLAIMERS {
            let store = Arc::clone(&store);
            let k = k.clone();
            tasks.push(tokio::spawn(async move {
                let r = in_progress("same");
                (store.try_claim(&k, &r, LONG).await.expect("try_claim"), r)
            }));
        }
        let mut winners = Vec::new();
        let mut seen = Vec::new();
        for task in tasks {
            match task.await.expect("task") {
                (Claim::Claimed, r) => winners.push(r),
                (Claim::Existing(record), _) => seen.push(record),
            }
        }
        assert_eq!(winners.len(), 1, "key {n}: exactly one claimer wins");
        let winner = Record::InProgress(winners.remove(0));
        assert!(
            seen.iter().all(|r| *r == winner),
            "losers see the winner's record"
        );
    }
}

/// Binary, empty and 1 MiB outcomes come back byte for byte.
pub async fn outcomes_round_trip(h: &dyn StoreHarness) {
    let store = h.store();
    let binary: Vec<u8> = (0..=255u8).cycle().take(4096).collect();
    let big: Vec<u8> = (0..1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8)
        .collect();
    for (name, body) in [("binary", binary), ("empty", Vec::new()), ("mib", big)] {
        let k = key(h, &format!("outcome-{name}"));
        let r = in_progress(name);
        claim(&*store, &k, &r, LONG).await;
        let done = completed(&r, body);
        store
            .complete(&k, &r.token, &done, RETAIN)
            .await
            .expect("complete");
        assert_eq!(
            store.get(&k).await.expect("get"),
            Some(Record::Completed(done)),
            "{name}"
        );
    }
}

/// Data under a record key that is not a record (undecodable bytes, a value of another type)
/// is [`StoreError::Corrupt`] from every primitive that meets it — never absent, never
/// overwritten, never another error kind — and [`IdempotencyError::CorruptRecord`] through the
/// engine (HTTP 500 on every backend, not 503 on some).
pub async fn corrupt_data_is_typed_error(h: &dyn StoreHarness) {
    let store = h.store();
    let r = in_progress("a");
    let values = [
        (
            "string",
            RawValue::String(b"definitely not a record".to_vec()),
        ),
        ("hash", RawValue::Hash),
    ];
    if !h.capabilities().raw_values {
        // Typed in-memory records cannot be corrupt; the codec is what decodes bytes.
        assert!(codec::decode(b"definitely not a record").is_err());
        return;
    }
    for (name, value) in values {
        let k = key(h, &format!("corrupt-{name}"));
        h.put_raw(&k, value.clone()).await;
        let done = completed(&r, &b"x"[..]);
        assert_corrupt(name, "try_claim", store.try_claim(&k, &r, LONG).await);
        assert_corrupt(name, "get", store.get(&k).await);
        assert_corrupt(
            name,
            "complete",
            store.complete(&k, &r.token, &done, RETAIN).await,
        );
        assert_corrupt(name, "release", store.release(&k, &r.token).await);
        assert_corrupt(name, "extend", store.extend(&k, &r.token, LONG).await);
        assert_corrupt(name, "get (still there)", store.get(&k).await);

        // Through the engine: a typed error, not a run.
        let engine = engine_over(h);
        let client_key = IdempotencyKey::new(format!("corrupt-{name}")).expect("key");
        let scope_key = engine.store_key(&Scope::global(), &client_key);
        h.put_raw(&scope_key, value).await;
        let begun = engine
            .begin(&Scope::global(), &client_key, Fingerprint::of("a"))
            .await;
        assert!(
            matches!(begun, Err(IdempotencyError::CorruptRecord(_))),
            "{name}: begin over a value that is not a record must be CorruptRecord, got {begun:?}"
        );
    }
}

/// Different `(scope, key)` pairs never share a record, however the bytes line up.
pub async fn key_injectivity(h: &dyn StoreHarness) {
    let store = h.store();
    let pairs = [
        ("a", "b:c"),
        ("a:b", "c"),
        ("a%3Ab", "c"),
        ("", "a:b:c"),
        ("a:b:c", "x"),
        ("tenant{1}", "k"),
        ("tenant", "{1}k"),
        ("é", "k"),
        ("%C3%A9", "k"),
    ];
    let mut derived = HashSet::new();
    for (scope, k) in pairs {
        let sk = StoreKey::derive(
            h.key_prefix(),
            &Scope::new(scope),
            &IdempotencyKey::new(k).expect("key"),
        );
        assert!(derived.insert(sk.clone()), "{scope:?}/{k:?} collided");
        assert_eq!(
            claim(&*store, &sk, &in_progress(scope), LONG).await,
            Claim::Claimed,
            "{scope:?}/{k:?}"
        );
    }
}

/// The engine over the store (as `Box<dyn DynIdempotencyStore>`): run, replay, mismatch, in progress.
pub async fn engine_semantics(h: &dyn StoreHarness) {
    let boxed: Box<dyn DynIdempotencyStore> = Box::new(h.store());
    let engine = Idempotency::builder(boxed)
        .prefix(h.key_prefix())
        .ignore_env()
        .build()
        .expect("engine");
    let scope = Scope::new("tenant-a");
    let k = IdempotencyKey::new("order-1").expect("key");
    let fp = Fingerprint::of("body-1");
    let Begin::Run(guard) = engine.begin(&scope, &k, fp).await.expect("begin") else {
        panic!("first attempt must run");
    };
    let conflict = engine.begin(&scope, &k, fp).await;
    assert!(
        matches!(conflict, Err(IdempotencyError::InProgress { .. })),
        "{conflict:?}"
    );
    let big = vec![b'x'; 20_000];
    guard
        .complete(StoredOutcome::new(big.clone(), Some("text/plain".into())))
        .await
        .expect("complete");
    match engine.begin(&scope, &k, fp).await.expect("begin") {
        Begin::Replay(outcome) => {
            assert_eq!(
                outcome.body,
                Bytes::from(big),
                "compressed outcomes replay decompressed"
            );
            assert_eq!(outcome.content_type.as_deref(), Some("text/plain"));
        }
        Begin::Run(_) => panic!("a retry must replay"),
    }
    let mismatch = engine.begin(&scope, &k, Fingerprint::of("body-2")).await;
    assert!(
        matches!(mismatch, Err(IdempotencyError::FingerprintMismatch)),
        "{mismatch:?}"
    );
    let other_tenant = engine
        .begin(&Scope::new("tenant-b"), &k, fp)
        .await
        .expect("begin");
    assert!(
        matches!(other_tenant, Begin::Run(_)),
        "scopes never share records"
    );
}

/// Many duplicate callers through the engine's `run`: each operation runs exactly once and
/// every caller gets the same value.
pub async fn engine_runs_once_under_duplicates(h: &dyn StoreHarness) {
    const KEYS: usize = 100;
    const CALLERS: usize = 16;
    const BATCH: usize = 10;
    let engine = Idempotency::builder(h.store())
        .prefix(h.key_prefix())
        .store_timeout(Duration::from_secs(10))
        .wait_for_in_progress(Duration::from_secs(20), Duration::from_millis(10))
        .ignore_env()
        .build()
        .expect("engine");
    let runs = Arc::new(AtomicUsize::new(0));
    let mut per_key: Vec<HashSet<u64>> = vec![HashSet::new(); KEYS];
    // Keys go in batches so a network store sees 16 racing duplicates per key without the
    // machine drowning in thousands of simultaneous requests.
    for batch in (0..KEYS).collect::<Vec<_>>().chunks(BATCH) {
        let mut tasks = Vec::new();
        for &n in batch {
            for _ in 0..CALLERS {
                let engine = engine.clone();
                let runs = Arc::clone(&runs);
                tasks.push(tokio::spawn(async move {
                    let k = IdempotencyKey::new(format!("dup-{n}")).expect("key");
                    let value: Result<(usize, u64), RunError<std::io::Error, _>> = engine
                        .run(&Scope::global(), &k, Fingerprint::of("same"), || async {
                            let id = runs.fetch_add(1, Ordering::SeqCst);
                            Ok((n, id as u64))
                        })
                        .await;
                    value.map_err(|e| format!("{e:?}"))
                }));
            }
        }
        for task in tasks {
            let (n, id) = task.await.expect("task").expect("run");
            per_key[n].insert(id);
        }
    }
    assert_eq!(
        runs.load(Ordering::SeqCst),
        KEYS,
        "each key ran exactly once"
    );
    assert!(
        per_key.iter().all(|ids| ids.len() == 1),
        "every caller saw the same outcome"
    );
}

/// An expired claim is absent on every read path, and a claim over it wins.
pub async fn expired_records_are_absent(h: &dyn StoreHarness) {
    let store = h.store();
    let k = key(h, "expired-absent");
    let lease = h.short_lease();
    claim(&*store, &k, &in_progress("a"), lease).await;
    h.advance(lease + lease / 2 + Duration::from_millis(50))
        .await;
    assert_eq!(store.get(&k).await.expect("get"), None);
    assert!(
        !store.delete(&k).await.expect("delete"),
        "deleting an expired record finds nothing"
    );
    assert_eq!(
        claim(&*store, &k, &in_progress("b"), LONG).await,
        Claim::Claimed
    );
}

/// `time_to_live` (optional: `None` from stores that cannot tell) never reports a key that is
/// absent, and what it reports lies within the lease of an in-progress record and the retention
/// of a completed one.
pub async fn time_to_live_is_bounded(h: &dyn StoreHarness) {
    let store = h.store();
    let k = key(h, "ttl");
    assert_eq!(store.time_to_live(&k).await.expect("time_to_live"), None);
    let r = in_progress("a");
    claim(&*store, &k, &r, LONG).await;
    if let Some(left) = store.time_to_live(&k).await.expect("time_to_live") {
        assert!(left <= LONG && left > LONG / 2, "in progress: {left:?}");
    }
    store
        .complete(&k, &r.token, &completed(&r, &b"x"[..]), RETAIN)
        .await
        .expect("complete");
    if let Some(left) = store.time_to_live(&k).await.expect("time_to_live") {
        assert!(left <= RETAIN && left > RETAIN / 2, "completed: {left:?}");
    }
    assert!(store.delete(&k).await.expect("delete"));
    assert_eq!(store.time_to_live(&k).await.expect("time_to_live"), None);
}

}
