//! The `idempotency.begin` span still reaches a `tracing` subscriber (the engine skips building
//! it only while no dispatcher has ever been set and `log` is below debug).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use idempotency_core::{Begin, Fingerprint, Idempotency, IdempotencyKey, Scope, StoredOutcome};
use idempotency_memory::MemoryStore;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Metadata, Subscriber};

/// Records the name and the `key` field of every span created.
#[derive(Default, Clone)]
struct Spans {
    seen: Arc<Mutex<Vec<(String, String)>>>,
    next: Arc<AtomicU64>,
}

struct KeyField(String);

impl Visit for KeyField {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "key" {
            self.0 = format!("{value:?}");
        }
    }
}

impl Subscriber for Spans {
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, span: &Attributes<'_>) -> Id {
        let mut key = KeyField(String::new());
        span.record(&mut key);
        let name = span.metadata().name().to_owned();
        self.seen.lock().unwrap().push((name, key.0));
        Id::from_u64(self.next.fetch_add(1, Ordering::Relaxed) + 1)
    }
    fn record(&self, _: &Id, _: &Record<'_>) {}
    fn record_follows_from(&self, _: &Id, _: &Id) {}
    fn event(&self, _: &Event<'_>) {}
    fn enter(&self, _: &Id) {}
    fn exit(&self, _: &Id) {}
}

#[test]
fn a_subscriber_sees_the_begin_span_with_its_store_key() {
    let spans = Spans::default();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    tracing::subscriber::with_default(spans.clone(), || {
        runtime.block_on(async {
            let engine = Idempotency::builder(MemoryStore::new())
                .ignore_env()
                .build()
                .unwrap();
            let key = IdempotencyKey::new("order-1").unwrap();
            let Begin::Run(guard) = engine
                .begin(&Scope::new("tenant:a"), &key, Fingerprint::of("a"))
                .await
                .unwrap()
            else {
                panic!("a new key runs");
            };
            guard.complete(StoredOutcome::new("x", None)).await.unwrap();
        });
    });
    let seen = spans.seen.lock().unwrap();
    let begins: Vec<_> = seen
        .iter()
        .filter(|(name, _)| name == "idempotency.begin")
        .collect();
    assert_eq!(begins.len(), 1, "{seen:?}");
    assert!(begins[0].1.ends_with("tenant%3Aa:order-1"), "{seen:?}");
}
