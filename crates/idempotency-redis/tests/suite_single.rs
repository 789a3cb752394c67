//! The behaviour suite and the reference-model proptest on one real Redis server, claiming with
//! `SET NX PX GET`.

mod common;

idempotency_testkit::behaviour_suite!(common::single_harness());
