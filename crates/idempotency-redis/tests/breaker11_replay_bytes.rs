//! breaker11 (issue 15): replies decoded into their own buffer (`codec::decode_owned`) and the
//! in-progress record from a stack array (`codec::encode_in_progress_array`), end to end through
//! a real redis-server: bodies of 0..=3, 254..=258, 4096 and 65 537 bytes, every byte value,
//! under each content type kind (none, known, prefix of a known one, other), claimed by `SET NX
//! GET` and by the script, replay the exact bytes from both `try_claim` and `get`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use idempotency_core::{Claim, Fenced, IdempotencyStore, Record, StoredOutcome};

mod common;
use common::{claim_record, completed, unique_key};

async fn check<S: IdempotencyStore>(store: &S, name: &str) {
    let cts = [
        None,
        Some("application/json"),
        Some("application/jso"),
        Some("application/json; charset=utf-8"),
        Some("text/plain; charset=utf-8"),
        Some("application/octet-stream"),
    ];
    for len in [0usize, 1, 2, 3, 254, 255, 256, 257, 258, 4096, 65_537] {
        for ct in cts {
            let body: Vec<u8> = (0..len).map(|i| (i * 131 + 7) as u8).collect();
            let key = unique_key("breaker11", name);
            let claim = claim_record();
            let lease = Duration::from_secs(30);
            // The in-progress record as stored is read back alike.
            assert!(matches!(
                store.try_claim(&key, &claim, lease).await.unwrap(),
                Claim::Claimed
            ));
            match store.get(&key).await.unwrap() {
                Some(Record::InProgress(p)) => assert_eq!(p, claim),
                other => panic!("{name} {len}: {other:?}"),
            }
            let done = completed(
                &claim,
                StoredOutcome::new(body.clone(), ct.map(str::to_owned)),
            );
            assert_eq!(
                store
                    .complete(&key, &claim.token, &done, Duration::from_secs(60))
                    .await
                    .unwrap(),
                Fenced::Applied
            );
            let again = claim_record();
            let existing = match store.try_claim(&key, &again, lease).await.unwrap() {
                Claim::Existing(r) => r,
                Claim::Claimed => panic!("{name} {len}: claimed a completed key"),
            };
            let got = store.get(&key).await.unwrap().unwrap();
            for r in [existing, got] {
                let Record::Completed(c) = r else {
                    panic!("{name} {len}: not completed")
                };
                assert_eq!(&c.outcome.body[..], &body[..], "{name} len {len} ct {ct:?}");
                assert_eq!(c.outcome.content_type.as_deref(), ct, "{name} len {len}");
                assert_eq!(c, done, "{name} len {len} ct {ct:?}");
            }
        }
    }
}

#[tokio::test]
async fn breaker11_replayed_bodies_are_byte_identical_set_nx_get() {
    let h = common::single_harness().await;
    check(h.store.as_ref(), "setnx").await;
}

#[tokio::test]
async fn breaker11_replayed_bodies_are_byte_identical_script_claim() {
    let h = common::script_claim_harness().await;
    check(h.store.as_ref(), "script").await;
}
