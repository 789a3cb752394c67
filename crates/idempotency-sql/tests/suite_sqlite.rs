//! The shared behaviour suite and reference model on SQLite (a fresh database file per test).
#![cfg(all(feature = "postgres", feature = "sqlite"))]
mod common;

idempotency_testkit::behaviour_suite!(common::sqlite_harness());
