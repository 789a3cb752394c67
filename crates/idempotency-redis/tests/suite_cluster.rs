//! The behaviour suite and the reference-model proptest on a local 3-master Redis Cluster.

mod common;

idempotency_testkit::behaviour_suite!(common::cluster_harness());
