//! breaker7: the canonical record reader's content type scan (eight bytes at a time) against
//! a general JSON parser (serde_json, the reference for what a stored JSON string means):
//! every byte class at every offset mod 8, lengths 0..=40, truncations, the previous
//! format's golden record.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use idempotency_core::codec::{decode, encode};
use idempotency_core::{
    Completed, Fingerprint, LeaseToken, OutcomeEncoding, Record, StoredOutcome,
};
use proptest::prelude::*;

const T: &str = "07070707070707070707070707070707";
const F: &str = "0101010101010101010101010101010101010101010101010101010101010101";

/// A completed record in the exact canonical layout, its `ct` string's raw bytes `ct` (no
/// escaping: whatever the bytes are), the body `x`.
fn canonical_with_raw_ct(ct: &[u8]) -> Vec<u8> {
    let mut out = format!(r#"{{"v":1,"s":"c","t":"{T}","f":"{F}","c":1,"d":2,"ct":""#).into_bytes();
    out.extend_from_slice(ct);
    out.extend_from_slice(br#"","b":"eA=="}"#);
    out
}

/// What a general JSON parser makes of the same text: the content type, or `None` when the
/// text is not valid JSON (then `decode` must refuse it too).
fn reference_ct(text: &[u8]) -> Option<String> {
    let value: serde_json::Value = serde_json::from_slice(text).ok()?;
    Some(value.get("ct")?.as_str()?.to_owned())
}

fn check(ct: &[u8]) {
    let text = canonical_with_raw_ct(ct);
    let got = decode(&text);
    match reference_ct(&text) {
        Some(expected) => {
            let Ok(Record::Completed(done)) = got else {
                panic!("{ct:?}: refused, serde reads {expected:?}: {got:?}");
            };
            assert_eq!(
                done.outcome.content_type.as_deref(),
                Some(&*expected),
                "{ct:?}"
            );
            assert_eq!(&done.outcome.body[..], b"x", "{ct:?}");
            assert_eq!(done.completed_at_ms, 2);
        }
        None => assert!(got.is_err(), "{ct:?}: accepted {got:?}, serde refuses"),
    }
}

/// Byte classes that matter to the scan.
const SPECIAL: &[&[u8]] = &[
    b"\"",
    b"\\",
    b"\\\"",
    b"\\n",
    b"\\u00e9",
    b"\x00",
    b"\x01",
    b"\x1f",
    b"\x20",
    b"\x7f",
    b"\x80",
    b"\xff",
    "\u{e9}".as_bytes(),
    "\u{20ac}".as_bytes(),
    "\u{1f511}".as_bytes(),
    b"\xc3",     // a lone UTF-8 lead byte
    b"\xe2\x82", // a truncated three-byte sequence
];

#[test]
fn breaker7_every_special_byte_at_every_offset_decodes_like_serde() {
    let mut checked = 0;
    for len in 0..=40usize {
        // Plain only.
        check(&vec![b'a'; len]);
        checked += 1;
        for at in 0..=len {
            for special in SPECIAL {
                let mut ct = vec![b'a'; len];
                ct.splice(at..at, special.iter().copied());
                check(&ct);
                // Two specials in one word / a special and a non-ASCII byte later.
                let mut twice = ct.clone();
                twice.extend_from_slice(b"bc\xc3\xa9d\"");
                check(&twice);
                checked += 2;
            }
        }
    }
    assert!(checked > 10_000, "{checked}");
}

#[test]
fn breaker7_every_byte_value_at_every_offset_mod_8() {
    for prefix in 0..16usize {
        for b in 0..=255u8 {
            let mut ct = vec![b'/'; prefix];
            ct.push(b);
            ct.extend_from_slice(b"json; charset=x");
            check(&ct);
        }
    }
}

#[test]
fn breaker7_truncated_records_are_refused_at_every_length() {
    for ct in [
        "application/json",
        "t\u{e9}xt/\u{fc}ber; q=1",
        "",
        "a\"b\\c\n",
        "abcdefgh",
        "abcdefghijklmnop",
    ] {
        let record = Record::Completed(Completed {
            token: LeaseToken::generate(),
            fingerprint: Fingerprint::of("x"),
            created_at_ms: 1_764_000_000_000,
            completed_at_ms: 1_764_000_000_042,
            outcome: StoredOutcome::new("{\"id\":1}", Some(ct.to_owned())),
        });
        let text = encode(&record);
        assert_eq!(decode(text.as_bytes()).unwrap(), record, "{ct:?}");
        for cut in 0..text.len() {
            assert!(
                decode(&text.as_bytes()[..cut]).is_err(),
                "{ct:?} cut at {cut}"
            );
        }
    }
}

#[test]
fn breaker7_golden_record_of_the_previous_format_decodes_alike() {
    // From the crate docs at 6455f93 (before the eight-byte scan).
    let golden = r#"{"v":1,"s":"c","t":"07070707070707070707070707070707","f":"0101010101010101010101010101010101010101010101010101010101010101","c":1764000000000,"d":1764000000042,"ct":"application/json","b":"eyJpZCI6MX0="}"#;
    let Record::Completed(done) = decode(golden.as_bytes()).unwrap() else {
        panic!("completed");
    };
    assert_eq!(done.token.to_hex(), T);
    assert_eq!(done.fingerprint.to_hex(), F);
    assert_eq!(done.created_at_ms, 1_764_000_000_000);
    assert_eq!(done.completed_at_ms, 1_764_000_000_042);
    assert_eq!(
        done.outcome.content_type.as_deref(),
        Some("application/json")
    );
    assert_eq!(&done.outcome.body[..], b"{\"id\":1}");
    assert_eq!(done.outcome.encoding, OutcomeEncoding::Identity);
    assert_eq!(encode(&Record::Completed(done)), golden);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// Raw bytes as a stored content type: `decode` agrees with serde_json.
    #[test]
    fn breaker7_raw_content_type_bytes_decode_like_serde(
        ct in proptest::collection::vec(
            prop_oneof![
                4 => 0x20u8..0x7f,
                1 => Just(b'"'),
                1 => Just(b'\\'),
                1 => 0u8..0x20,
                2 => 0x80u8..=0xff,
            ],
            0..48,
        )
    ) {
        check(&ct);
    }

    /// Any text as a content type round-trips byte for byte.
    #[test]
    fn breaker7_any_content_type_round_trips(ct in proptest::option::of(".{0,40}"),
                                             body in proptest::collection::vec(any::<u8>(), 0..64)) {
        let record = Record::Completed(Completed {
            token: LeaseToken::generate(),
            fingerprint: Fingerprint::of("x"),
            created_at_ms: 3,
            completed_at_ms: 4,
            outcome: StoredOutcome::new(body, ct),
        });
        prop_assert_eq!(decode(encode(&record).as_bytes()).unwrap(), record);
    }
}

/// The fast path itself (feature `fuzzing`: `cargo test -p idempotency-core --features
/// fuzzing --test breaker7_codec`): it takes every content type without escapes or control
/// bytes, at every length and offset, and answers exactly what the general decoder does.
#[cfg(feature = "fuzzing")]
#[test]
fn breaker7_fast_path_takes_plain_content_types_and_agrees_with_the_general_decoder() {
    use idempotency_core::codec::fuzzing::{decode_canonical, decode_json};
    let mut taken = 0;
    for len in 0..=40usize {
        for at in 0..=len {
            for insert in ["", "\u{e9}", "\u{1f511}", "\x7f", " "] {
                let mut ct = "a".repeat(len);
                ct.insert_str(at, insert);
                let text = canonical_with_raw_ct(ct.as_bytes());
                let fast = decode_canonical(&text).expect("plain: the fast path takes it");
                assert_eq!(fast, decode_json(&text).unwrap(), "{ct:?}");
                taken += 1;
            }
        }
        for special in SPECIAL {
            let mut ct = vec![b'a'; len];
            ct.extend_from_slice(special);
            let text = canonical_with_raw_ct(&ct);
            if let Some(fast) = decode_canonical(&text) {
                assert_eq!(
                    Ok(fast),
                    decode_json(&text).map_err(|e| e.to_string()),
                    "{ct:?}"
                );
            }
        }
    }
    assert_eq!(taken, (0..=40).map(|len| (len + 1) * 5).sum::<usize>());
}
