//! The suite is only worth something if it fails on stores that break the contract. A small
//! reference store of bytes (records encoded with the core's codec, expiry on a manual clock,
//! non-records storable) passes every behaviour; each deliberately broken variant of it must make
//! the behaviours that guard its part of the contract fail — and every behaviour in
//! [`suite::ALL`] must be failed by at least one of them, so no behaviour asserts nothing.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use idempotency_testkit::async_trait;
use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::FutureExt as _;
use idempotency_core::{
    Claim, Completed, CorruptRecord, DynIdempotencyStore, Fenced, IdempotencyStore, InProgress,
    LeaseToken, Record, StoreError, StoreKey, codec,
};
use idempotency_testkit::suite::{self, Behaviour};
use idempotency_testkit::{Capabilities, RawValue, StoreHarness, TimeControl, unique_prefix};

/// How the store breaks the contract (`None`: it keeps it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Break {
    None,
    /// `complete`, `release` and `extend` ignore the lease token.
    NoFencing,
    /// Leases and retention never end.
    NoExpiry,
    /// A value that is not a record is reported as `Backend`, not `Corrupt`.
    WrongErrorKind,
    /// `try_claim` overwrites a held key (not atomic "set if absent").
    ClaimOverwrites,
    /// `complete` stores the outcome without its body.
    LosesBodies,
    /// `get` never finds anything.
    ForgetfulGet,
    /// `delete` deletes nothing.
    DeleteIgnored,
    /// Keys are stored lowercased without punctuation, so distinct keys share a record.
    CollapsedKeys,
    /// `time_to_live` reports four times what is left.
    TimeToLiveLies,
}

const BREAKS: [Break; 9] = [
    Break::NoFencing,
    Break::NoExpiry,
    Break::WrongErrorKind,
    Break::ClaimOverwrites,
    Break::LosesBodies,
    Break::ForgetfulGet,
    Break::DeleteIgnored,
    Break::CollapsedKeys,
    Break::TimeToLiveLies,
];

#[derive(Debug, Clone)]
enum Value {
    Bytes(Vec<u8>),
    Hash,
}

#[derive(Debug)]
struct Entry {
    value: Value,
    /// Milliseconds on the store's clock.
    expires_at: u64,
}

/// The reference byte store, optionally broken.
#[derive(Debug)]
struct ByteStore {
    entries: Mutex<HashMap<String, Entry>>,
    now_ms: AtomicU64,
    broken: Break,
}

impl ByteStore {
    fn new(broken: Break) -> Self {
        Self {
            entries: Mutex::new(HashMap::new()),
            now_ms: AtomicU64::new(1_000_000),
            broken,
        }
    }

    fn slot(&self, key: &StoreKey) -> String {
        if self.broken == Break::CollapsedKeys {
            return key
                .as_str()
                .chars()
                .filter(char::is_ascii_alphanumeric)
                .map(|c| c.to_ascii_lowercase())
                .collect();
        }
        key.as_str().to_owned()
    }

    fn expiry(&self, after: Duration) -> u64 {
        if self.broken == Break::NoExpiry {
            return u64::MAX;
        }
        let ms = u64::try_from(after.as_millis()).unwrap_or(u64::MAX).max(1);
        self.now_ms.load(Ordering::SeqCst).saturating_add(ms)
    }

    /// The live value under `slot` (expired entries are absent, and removed).
    fn live<'a>(&self, entries: &'a mut HashMap<String, Entry>, slot: &str) -> Option<&'a Value> {
        let now = self.now_ms.load(Ordering::SeqCst);
        if entries.get(slot).is_some_and(|e| e.expires_at <= now) {
            entries.remove(slot);
        }
        entries.get(slot).map(|e| &e.value)
    }

    fn decode(&self, value: &Value) -> Result<Record, StoreError> {
        let corrupt = match value {
            Value::Bytes(bytes) => match codec::decode(bytes) {
                Ok(record) => return Ok(record),
                Err(corrupt) => corrupt,
            },
            Value::Hash => CorruptRecord::new("a hash, not a string"),
        };
        if self.broken == Break::WrongErrorKind {
            return Err(StoreError::Backend {
                source: Box::new(corrupt),
            });
        }
        Err(StoreError::Corrupt(corrupt))
    }

    /// Apply `change` when the record under `key` is in progress under `token`; else lease lost
    /// (or the decode error for a value that is not a record).
    fn fenced(
        &self,
        key: &StoreKey,
        token: &LeaseToken,
        allow_completed: bool,
        change: impl FnOnce(&mut HashMap<String, Entry>, String),
    ) -> Result<Fenced, StoreError> {
        let mut entries = self.entries.lock().unwrap();
        let slot = self.slot(key);
        let Some(value) = self.live(&mut entries, &slot) else {
            return Ok(Fenced::LeaseLost);
        };
        let record = self.decode(value)?;
        let ours = self.broken == Break::NoFencing
            || match &record {
                Record::InProgress(r) => r.token == *token,
                Record::Completed(r) => allow_completed && r.token == *token,
            };
        if !ours {
            return Ok(Fenced::LeaseLost);
        }
        if matches!(record, Record::Completed(_)) && self.broken != Break::NoFencing {
            // A retried completion under the same token: accepted, nothing changes.
            return Ok(Fenced::Applied);
        }
        change(&mut entries, slot);
        Ok(Fenced::Applied)
    }
}

impl IdempotencyStore for ByteStore {
    async fn try_claim(
        &self,
        key: &StoreKey,
        record: &InProgress,
        lease: Duration,
    ) -> Result<Claim, StoreError> {
        let mut entries = self.entries.lock().unwrap();
        let slot = self.slot(key);
        if self.broken != Break::ClaimOverwrites
            && let Some(value) = self.live(&mut entries, &slot)
        {
            return Ok(Claim::Existing(self.decode(value)?));
        }
        let bytes = codec::encode(&Record::InProgress(record.clone())).into_bytes();
        let expires_at = self.expiry(lease);
        entries.insert(
            slot,
            Entry {
                value: Value::Bytes(bytes),
                expires_at,
            },
        );
        Ok(Claim::Claimed)
    }

    async fn complete(
        &self,
        key: &StoreKey,
        token: &LeaseToken,
        record: &Completed,
        retention: Duration,
    ) -> Result<Fenced, StoreError> {
        let mut record = record.clone();
        if self.broken == Break::LosesBodies {
            record.outcome.body = Default::default();
        }
        let bytes = codec::encode(&Record::Completed(record)).into_bytes();
        let expires_at = self.expiry(retention);
        self.fenced(key, token, true, |entries, slot| {
            entries.insert(
                slot,
                Entry {
                    value: Value::Bytes(bytes),
                    expires_at,
                },
            );
        })
    }

    async fn release(&self, key: &StoreKey, token: &LeaseToken) -> Result<Fenced, StoreError> {
        self.fenced(key, token, false, |entries, slot| {
            entries.remove(&slot);
        })
    }

    async fn extend(
        &self,
        key: &StoreKey,
        token: &LeaseToken,
        lease: Duration,
    ) -> Result<Fenced, StoreError> {
        let expires_at = self.expiry(lease);
        self.fenced(key, token, false, |entries, slot| {
            if let Some(entry) = entries.get_mut(&slot) {
                entry.expires_at = expires_at;
            }
        })
    }

    async fn get(&self, key: &StoreKey) -> Result<Option<Record>, StoreError> {
        if self.broken == Break::ForgetfulGet {
            return Ok(None);
        }
        let mut entries = self.entries.lock().unwrap();
        let slot = self.slot(key);
        self.live(&mut entries, &slot)
            .map(|value| self.decode(value))
            .transpose()
    }

    async fn delete(&self, key: &StoreKey) -> Result<bool, StoreError> {
        let mut entries = self.entries.lock().unwrap();
        let slot = self.slot(key);
        let existed = self.live(&mut entries, &slot).is_some();
        if self.broken != Break::DeleteIgnored {
            entries.remove(&slot);
        }
        Ok(existed)
    }

    async fn time_to_live(&self, key: &StoreKey) -> Result<Option<Duration>, StoreError> {
        let mut entries = self.entries.lock().unwrap();
        let slot = self.slot(key);
        if self.live(&mut entries, &slot).is_none() {
            return Ok(None);
        }
        let now = self.now_ms.load(Ordering::SeqCst);
        let left = entries
            .get(&slot)
            .map_or(0, |e| e.expires_at.saturating_sub(now));
        let left = if self.broken == Break::TimeToLiveLies {
            left.saturating_mul(4)
        } else {
            left
        };
        Ok(Some(Duration::from_millis(left)))
    }
}

struct ByteHarness {
    store: Arc<ByteStore>,
    prefix: String,
}

impl ByteHarness {
    fn new(broken: Break) -> Self {
        Self {
            store: Arc::new(ByteStore::new(broken)),
            prefix: unique_prefix(),
        }
    }
}

#[async_trait]
impl StoreHarness for ByteHarness {
    fn store(&self) -> Arc<dyn DynIdempotencyStore> {
        self.store.clone()
    }
    fn capabilities(&self) -> Capabilities {
        Capabilities::SERVER.with_time(TimeControl::Manual)
    }
    async fn advance(&self, by: Duration) {
        let ms = u64::try_from(by.as_millis()).unwrap_or(u64::MAX);
        self.store.now_ms.fetch_add(ms, Ordering::SeqCst);
    }
    fn short_lease(&self) -> Duration {
        Duration::from_secs(30)
    }
    async fn put_raw(&self, key: &StoreKey, value: RawValue) {
        let value = match value {
            RawValue::String(bytes) => Value::Bytes(bytes),
            RawValue::Hash => Value::Hash,
        };
        let slot = self.store.slot(key);
        self.store.entries.lock().unwrap().insert(
            slot,
            Entry {
                value,
                expires_at: u64::MAX,
            },
        );
    }
    fn key_prefix(&self) -> &str {
        &self.prefix
    }
}

/// Whether `behaviour` passes against a fresh store broken as `broken`.
fn passes(behaviour: &Behaviour, broken: Break) -> bool {
    idempotency_testkit::runtime().block_on(async {
        let harness = ByteHarness::new(broken);
        AssertUnwindSafe((behaviour.run)(&harness))
            .catch_unwind()
            .await
            .is_ok()
    })
}

fn behaviour(name: &str) -> &'static Behaviour {
    suite::ALL
        .iter()
        .find(|b| b.name == name)
        .unwrap_or_else(|| panic!("no behaviour named {name}"))
}

#[test]
fn the_reference_byte_store_passes_every_behaviour() {
    for behaviour in suite::ALL {
        assert!(
            passes(behaviour, Break::None),
            "{} failed on the reference store",
            behaviour.name
        );
    }
}

/// The three classes the issue names, with the behaviours that must catch each.
#[test]
fn each_class_of_broken_store_fails_the_suite() {
    let classes = [
        (
            Break::NoFencing,
            &[
                "stale_token_complete_is_lease_lost",
                "release_then_reclaim",
                "complete_is_idempotent_for_its_token",
                "extend_keeps_claim",
            ][..],
        ),
        (
            Break::NoExpiry,
            &[
                "lease_expiry_then_takeover",
                "expired_claim_cannot_complete",
                "retention_expiry",
                "expired_records_are_absent",
            ][..],
        ),
        (Break::WrongErrorKind, &["corrupt_data_is_typed_error"][..]),
    ];
    for (broken, names) in classes {
        for name in names {
            assert!(
                !passes(behaviour(name), broken),
                "{name} passed against a store with {broken:?}"
            );
        }
    }
}

/// No behaviour is a no-op: each fails against at least one broken store.
#[test]
fn every_behaviour_fails_against_some_broken_store() {
    let mut survivors = Vec::new();
    for behaviour in suite::ALL {
        if BREAKS.iter().all(|&broken| passes(behaviour, broken)) {
            survivors.push(behaviour.name);
        }
    }
    assert!(
        survivors.is_empty(),
        "behaviours no broken store fails: {survivors:?}"
    );
}
