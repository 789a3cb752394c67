//! breaker8: the store-call timeout's timer, boxed and armed only when the call's first poll is
//! pending (`timed_since`): it still fires with `StoreError::Timeout` at exactly
//! `store_timeout` (paused clock) for a claim and for a completion; a call that waits a few polls
//! or less than the timeout answers normally; a call that answers on its first poll answers even
//! with the smallest timeout.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::Poll;
use std::time::Duration;

use idempotency_core::{
    Begin, Claim, Completed, Fenced, Fingerprint, Idempotency, IdempotencyError, IdempotencyKey,
    IdempotencyStore, InProgress, LeaseToken, Record, Scope, StoreError, StoreKey, StoreOperation,
    StoredOutcome,
};

/// How a call answers: `u64::MAX` never, `1_000_000 + n` after `n` pending polls (waking itself),
/// else after that many milliseconds (0: on the first poll).
const NEVER: u64 = u64::MAX;
const POLLS: u64 = 1_000_000;

#[derive(Debug, Clone, Default)]
struct Scripted {
    claim: Arc<AtomicU64>,
    complete: Arc<AtomicU64>,
    claim_polls: Arc<AtomicUsize>,
}

async fn behave(how: u64, polls: &AtomicUsize) {
    if how == NEVER {
        std::future::pending::<()>().await;
    } else if how >= POLLS {
        let mut left = how - POLLS;
        std::future::poll_fn(|cx| {
            polls.fetch_add(1, Ordering::SeqCst);
            if left == 0 {
                Poll::Ready(())
            } else {
                left -= 1;
                cx.waker().wake_by_ref();
                Poll::Pending
            }
        })
        .await;
    } else if how > 0 {
        tokio::time::sleep(Duration::from_millis(how)).await;
    } else {
        polls.fetch_add(1, Ordering::SeqCst);
    }
}

impl IdempotencyStore for Scripted {
    async fn try_claim(
        &self,
        _key: &StoreKey,
        _record: &InProgress,
        _lease: Duration,
    ) -> Result<Claim, StoreError> {
        behave(self.claim.load(Ordering::SeqCst), &self.claim_polls).await;
        Ok(Claim::Claimed)
    }
    async fn complete(
        &self,
        _key: &StoreKey,
        _token: &LeaseToken,
        _record: &Completed,
        _retention: Duration,
    ) -> Result<Fenced, StoreError> {
        behave(self.complete.load(Ordering::SeqCst), &AtomicUsize::new(0)).await;
        Ok(Fenced::Applied)
    }
    async fn release(&self, _key: &StoreKey, _token: &LeaseToken) -> Result<Fenced, StoreError> {
        Ok(Fenced::Applied)
    }
    async fn extend(
        &self,
        _key: &StoreKey,
        _token: &LeaseToken,
        _lease: Duration,
    ) -> Result<Fenced, StoreError> {
        Ok(Fenced::Applied)
    }
    async fn get(&self, _key: &StoreKey) -> Result<Option<Record>, StoreError> {
        Ok(None)
    }
    async fn delete(&self, _key: &StoreKey) -> Result<bool, StoreError> {
        Ok(false)
    }
}

fn engine(store: Scripted, timeout: Duration) -> Idempotency<Scripted> {
    Idempotency::builder(store)
        .store_timeout(timeout)
        // One attempt per completion: the timer is what is measured.
        .completion_retry(Duration::ZERO)
        .ignore_env()
        .build()
        .unwrap()
}

async fn begin(
    engine: &Idempotency<Scripted>,
    key: &str,
) -> Result<Begin<Scripted>, IdempotencyError> {
    engine
        .begin(
            &Scope::global(),
            &IdempotencyKey::new(key).unwrap(),
            Fingerprint::of(key),
        )
        .await
}

fn is_timeout(error: &IdempotencyError, operation: StoreOperation, after: Duration) -> bool {
    matches!(
        error,
        IdempotencyError::StoreUnavailable(StoreError::Timeout { operation: o, after: a })
            if *o == operation && *a == after
    )
}

#[tokio::test(start_paused = true)]
async fn breaker8_a_claim_that_never_answers_times_out_at_store_timeout() {
    let store = Scripted::default();
    let timeout = Duration::from_millis(750);
    let engine = engine(store.clone(), timeout);
    store.claim.store(NEVER, Ordering::SeqCst);
    for i in 0..5 {
        let start = tokio::time::Instant::now();
        let error = match begin(&engine, &format!("never-{i}")).await {
            Err(error) => error,
            Ok(_) => panic!("a claim that never answers must time out"),
        };
        assert_eq!(start.elapsed(), timeout, "the boxed timer fires on time");
        assert!(
            is_timeout(&error, StoreOperation::TryClaim, timeout),
            "{error:?}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn breaker8_a_claim_that_waits_polls_or_less_than_the_timeout_answers() {
    let store = Scripted::default();
    let timeout = Duration::from_millis(750);
    let engine = engine(store.clone(), timeout);
    // A few pending polls, no time passing: answered, nothing elapsed.
    store.claim.store(POLLS + 3, Ordering::SeqCst);
    let start = tokio::time::Instant::now();
    assert!(matches!(begin(&engine, "polls").await, Ok(Begin::Run(_))));
    assert_eq!(start.elapsed(), Duration::ZERO);
    assert_eq!(store.claim_polls.load(Ordering::SeqCst), 4);
    // Just under the timeout.
    store.claim.store(749, Ordering::SeqCst);
    let start = tokio::time::Instant::now();
    assert!(matches!(begin(&engine, "under").await, Ok(Begin::Run(_))));
    assert_eq!(start.elapsed(), Duration::from_millis(749));
    // Exactly at the timeout: the call is polled before the timer (tokio::time::timeout), and
    // both are due at the same instant.
    store.claim.store(750, Ordering::SeqCst);
    let at = begin(&engine, "at").await;
    eprintln!(
        "a claim answering exactly at store_timeout: ok = {}",
        at.is_ok()
    );
}

#[tokio::test(start_paused = true)]
async fn breaker8_a_claim_answering_on_its_first_poll_needs_no_time() {
    let store = Scripted::default();
    // The smallest timeout the builder accepts: an answer on the first poll never meets a timer.
    let timeout = Duration::from_millis(1);
    let engine = engine(store.clone(), timeout);
    store.claim_polls.store(0, Ordering::SeqCst);
    for i in 0..100 {
        let start = tokio::time::Instant::now();
        let Ok(Begin::Run(guard)) = begin(&engine, &format!("first-{i}")).await else {
            panic!("claimed on the first poll");
        };
        assert_eq!(start.elapsed(), Duration::ZERO);
        guard
            .complete(StoredOutcome::new(bytes::Bytes::from_static(b"x"), None))
            .await
            .unwrap();
    }
    assert_eq!(store.claim_polls.load(Ordering::SeqCst), 100);
}

#[tokio::test(start_paused = true)]
async fn breaker8_a_completion_that_never_answers_times_out_at_store_timeout() {
    let store = Scripted::default();
    let timeout = Duration::from_millis(400);
    let engine = engine(store.clone(), timeout);
    store.complete.store(NEVER, Ordering::SeqCst);
    let Ok(Begin::Run(guard)) = begin(&engine, "complete-never").await else {
        panic!("claimed");
    };
    let start = tokio::time::Instant::now();
    let error = guard
        .complete(StoredOutcome::new(bytes::Bytes::from_static(b"x"), None))
        .await
        .unwrap_err();
    assert_eq!(start.elapsed(), timeout, "the boxed timer fires on time");
    assert!(
        is_timeout(&error, StoreOperation::Complete, timeout),
        "{error:?}"
    );
    // A completion waiting a few polls answers.
    store.complete.store(POLLS + 2, Ordering::SeqCst);
    let Ok(Begin::Run(guard)) = begin(&engine, "complete-polls").await else {
        panic!("claimed");
    };
    guard
        .complete(StoredOutcome::new(bytes::Bytes::from_static(b"x"), None))
        .await
        .unwrap();
}
