//! `DISABLE_IDEMPOTENCY_CHECKS` read from the real process environment by
//! `IdempotencyBuilder::build` and `Idempotency::new`: each accepted spelling switches the
//! checks off or keeps them on; any other value is refused by `build()` and, by the infallible
//! `new()`, logged as a warning naming the variable, the value and the accepted spellings, with
//! the checks kept **on**.
//!
//! The environment is process-wide (and `set_var` is unsafe under edition 2024), so each value
//! runs this test binary again as a child process with the variable set; the parent checks that
//! the child ran exactly this test and passed.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::{Arc, Mutex};

use idempotency_core::{ConfigError, DISABLE_ENV_VAR, Idempotency};
use idempotency_memory::MemoryStore;

/// Set in the child: what the value must do (`off`, `on` or `refused`).
const EXPECT: &str = "KILL_SWITCH_TEST_EXPECT";

#[test]
fn the_kill_switch_from_the_environment() {
    match std::env::var(EXPECT) {
        Ok(expect) => child(&expect),
        Err(_) => {
            for (value, expect) in [
                ("true", "off"),
                (" Yes ", "off"),
                ("1", "off"),
                ("false", "on"),
                ("NO", "on"),
                ("0", "on"),
                ("", "on"),
                ("flase", "refused"),
                ("ture", "refused"),
                ("TRUE!", "refused"),
                ("2", "refused"),
                ("on", "refused"),
                ("off", "refused"),
            ] {
                parent(value, expect);
            }
        }
    }
}

/// Run this test in a child process with the variable set to `value`.
fn parent(value: &str, expect: &str) {
    let output = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "the_kill_switch_from_the_environment",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(DISABLE_ENV_VAR, value)
        .env(EXPECT, expect)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && stdout.contains("1 passed"),
        "{DISABLE_ENV_VAR}={value:?} (expected {expect}):\n{stdout}\n{stderr}"
    );
}

/// The child: build and new under the inherited variable.
fn child(expect: &str) {
    let value = std::env::var(DISABLE_ENV_VAR).unwrap();
    let built = Idempotency::builder(MemoryStore::new()).build();
    let events = Arc::new(Events::default());
    let engine =
        tracing::subscriber::with_default(events.clone(), || Idempotency::new(MemoryStore::new()));
    let warnings = events.0.lock().unwrap().clone();
    match expect {
        "off" => {
            assert!(built.unwrap().config().disabled());
            assert!(engine.config().disabled());
            // The loud start-up warning of a switched-off engine.
            assert!(
                warnings.iter().any(|w| w.contains("DISABLED")),
                "{warnings:?}"
            );
        }
        "on" => {
            assert!(!built.unwrap().config().disabled());
            assert!(!engine.config().disabled());
            assert!(warnings.is_empty(), "{warnings:?}");
        }
        "refused" => {
            match built {
                Err(ConfigError::KillSwitchValue { value: reported }) => {
                    assert_eq!(reported, value);
                }
                other => panic!("build() with {value:?}: {other:?}"),
            }
            // `new()` cannot refuse: the checks stay on, and it says why.
            assert!(!engine.config().disabled());
            let warning = warnings.concat();
            for needle in [
                DISABLE_ENV_VAR,
                &format!("{value:?}"),
                "`true`",
                "`false`",
                "stay ON",
            ] {
                assert!(warning.contains(needle), "{needle}: {warnings:?}");
            }
            // `ignore_env` does not read the variable at all.
            let ignored = Idempotency::builder(MemoryStore::new())
                .ignore_env()
                .build()
                .unwrap();
            assert!(!ignored.config().disabled());
        }
        other => panic!("unknown expectation {other}"),
    }
}

/// Records WARN and ERROR events with their fields.
#[derive(Default)]
struct Events(Mutex<Vec<String>>);

struct Fields(String);

impl tracing::field::Visit for Fields {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.0.push_str(&format!(" {}={value:?}", field.name()));
    }
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        self.0.push_str(&format!(" {}={value}", field.name()));
    }
}

impl tracing::Subscriber for Events {
    fn enabled(&self, metadata: &tracing::Metadata<'_>) -> bool {
        *metadata.level() <= tracing::Level::WARN
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        let mut fields = Fields(String::new());
        event.record(&mut fields);
        self.0
            .lock()
            .unwrap()
            .push(format!("{}{}", event.metadata().level(), fields.0));
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}
