//! The shared behaviour suite and reference model on Postgres (a real server: see
//! `idempotency_testkit::fixtures::PostgresServer` for where it comes from).
#![cfg(all(feature = "postgres", feature = "sqlite"))]
mod common;

idempotency_testkit::behaviour_suite!(common::pg_harness());
