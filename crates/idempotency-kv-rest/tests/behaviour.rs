//! The shared behaviour suite and model against `KvRestStore` → kv-rest-gateway → real Redis.

mod common;

idempotency_testkit::behaviour_suite!(common::rest_harness());
