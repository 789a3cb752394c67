//! The HTTP layer's stored response form (`IH1`): never panics, and what decodes re-encodes to
//! the same response.
#![no_main]

use idempotency_http::fuzzing::stored_response_round_trip;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(same) = stored_response_round_trip(data) {
        assert!(
            same,
            "decode → encode → decode changed the response: {data:?}"
        );
    }
});
