//! Record format v1: the canonical fast path and the general serde decoder never panic, agree
//! whenever the fast path accepts, `decode_owned` answers as `decode`, and every decoded record
//! survives encode → decode.
#![no_main]

use idempotency_core::Record;
use idempotency_core::codec::{self, fuzzing};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let general = fuzzing::decode_json(data);
    let canonical = fuzzing::decode_canonical(data);
    if let Some(fast) = &canonical {
        // The fast path reads a subset of what the general decoder reads, identically.
        assert_eq!(
            general.as_ref().ok(),
            Some(fast),
            "decoders disagree on {data:?}"
        );
    }
    let decoded = codec::decode(data);
    match (&canonical, &general) {
        (Some(fast), _) => assert_eq!(decoded.as_ref().ok(), Some(fast)),
        (None, Ok(record)) => assert_eq!(decoded.as_ref().ok(), Some(record)),
        (None, Err(error)) => assert_eq!(decoded.as_ref().err(), Some(error)),
    }
    // The owned decoder (the body decoded into the input's buffer) answers exactly as `decode`.
    assert_eq!(codec::decode_owned(data.to_vec()), decoded, "decode_owned on {data:?}");
    if let Ok(record) = decoded {
        let text = codec::encode(&record);
        // The encoder's output decodes to the same record; the fast path takes it unless it
        // holds an escape (a content type with a quote, say), and then agrees.
        assert_eq!(codec::decode(text.as_bytes()).as_ref(), Ok(&record));
        if let Some(fast) = fuzzing::decode_canonical(text.as_bytes()) {
            assert_eq!(fast, record);
        }
        if let Record::Completed(completed) = record {
            // A compressed body that does not decompress is a typed error, never a panic.
            let _ = completed.outcome.decompressed();
        }
    }
});
