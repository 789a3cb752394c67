//! The shared behaviour suite and reference model on SQLite (a fresh database file per test).
mod common;

idempotency_testkit::behaviour_suite!(common::sqlite_harness());
