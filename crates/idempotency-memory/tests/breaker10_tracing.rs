//! breaker10: the engine's tracing events and spans are the same whether the store answers
//! claims and completions at once (`try_claim_now` / `complete_now`) or through the async
//! calls. Its own test binary: a scoped `tracing` dispatcher races with tests on other threads
//! over callsite interest, so it runs alone.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod breaker10_common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use breaker10_common::{Counting, Mode, Probe, Seen, key, outcome};
use idempotency_core::{Begin, Fingerprint, Idempotency, Scope};
use idempotency_memory::MemoryStore;

/// Records every event (level, target, fields) and every span's name, in order.
#[derive(Default)]
struct Events {
    seen: Mutex<Vec<String>>,
    next_span: AtomicU64,
}

struct Fields(String);

impl tracing::field::Visit for Fields {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.0.push_str(&format!(" {}={value:?}", field.name()));
    }
}

impl tracing::Subscriber for Events {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, span: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        let mut fields = Fields(String::new());
        span.record(&mut fields);
        self.seen
            .lock()
            .unwrap()
            .push(format!("span {}{}", span.metadata().name(), fields.0));
        tracing::span::Id::from_u64(self.next_span.fetch_add(1, Ordering::Relaxed) + 1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        let mut fields = Fields(String::new());
        event.record(&mut fields);
        let meta = event.metadata();
        self.seen
            .lock()
            .unwrap()
            .push(format!("{} {}{}", meta.level(), meta.target(), fields.0));
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

/// Tracing events, spans, counters and metrics are the same on both paths through a
/// scenario with a full primary store and a fallback store (`FailurePolicy::Fallback`), a
/// completion in the fallback store, a transient completion failure retried, replays,
/// mismatches and "in progress" answers.
#[tokio::test(start_paused = true)]
async fn tracing_events_and_the_fallback_store_are_the_same_on_both_paths() {
    let mut runs = Vec::new();
    for at_once in [true, false] {
        let recorder = Counting::default();
        let _local = metrics::set_default_local_recorder(&recorder);
        let events = Arc::new(Events::default());
        let _tracing =
            tracing::dispatcher::set_default(&tracing::Dispatch::from(Arc::clone(&events)));
        let mode = Mode {
            at_once,
            transient_completions: 1,
            ..Mode::default()
        };
        let primary = Probe::new(MemoryStore::builder().max_entries(1).build(), mode);
        let fallback = Probe::new(
            MemoryStore::new(),
            Mode {
                at_once,
                ..Mode::default()
            },
        );
        let engine = Idempotency::builder(primary)
            .ignore_env()
            .renew_leases(false)
            .failure_policy(idempotency_core::FailurePolicy::Fallback)
            .fallback_store(fallback)
            .build()
            .unwrap();
        let scope = Scope::new("b10");
        let mut t = Vec::new();
        let a = Fingerprint::of("a");
        let b = Fingerprint::of("b");
        let first = engine.begin(&scope, &key("one"), a).await.unwrap();
        let second = engine.begin(&scope, &key("two"), a).await.unwrap();
        for (name, guard) in [("one", first), ("two", second)] {
            let Begin::Run(guard) = guard else {
                panic!("runs")
            };
            t.push(format!("{name} fallback {}", guard.is_fallback()));
            t.push(format!(
                "{:?}",
                engine.begin(&scope, &key(name), a).await.err()
            ));
            t.push(format!("{:?}", guard.complete(outcome(name)).await));
            for fp in [a, b] {
                t.push(match engine.begin(&scope, &key(name), fp).await {
                    Ok(Begin::Replay(o)) => format!("replay {:?}", o.body),
                    Ok(Begin::Run(_)) => "run".to_owned(),
                    Err(e) => format!("{e:?}"),
                });
            }
        }
        let seen = std::mem::take(&mut *events.seen.lock().unwrap());
        runs.push((
            Seen {
                transcript: t,
                stats: format!("{:?}", engine.stats()),
                metrics: recorder.nonzero_totals(),
            },
            seen,
        ));
    }
    let (at_once, events_now) = &runs[0];
    let (through_calls, events_async) = &runs[1];
    assert_eq!(at_once, through_calls);
    assert_eq!(events_now, events_async);
    assert!(
        at_once.transcript.contains(&"two fallback true".to_owned()),
        "{:?}",
        at_once.transcript
    );
    assert!(
        events_now
            .iter()
            .any(|e| e.contains("store operation failed")),
        "{events_now:#?}"
    );
}
