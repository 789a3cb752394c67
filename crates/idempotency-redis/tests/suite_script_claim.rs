//! The behaviour suite on one real Redis server with the claim done by the Lua script (the path
//! servers older than 7.0 take).

mod common;

idempotency_testkit::behaviour_suite!(common::script_claim_harness());
