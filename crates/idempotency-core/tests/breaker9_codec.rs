//! breaker9 (issue 15): the content type's JSON escape check, eight bytes at a time, on the
//! writing side. The encoded record's `ct` value must be exactly serde_json's string encoding
//! for content types of every length 0..=40 with every stop byte (0x00–0x1f, `"`, `\`), 0x7f,
//! and non-ASCII UTF-8 at every position mod 8 — alone, in pairs, and with the escape in the
//! tail after a full word or after a non-ASCII character (where the word scan stops early and
//! the byte scan must still see the escape) — and the record must decode back to it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use idempotency_core::codec::{decode, encode};
use idempotency_core::{Completed, Fingerprint, LeaseToken, Record, StoredOutcome};
use proptest::prelude::*;

fn record(ct: &str) -> Record {
    Record::Completed(Completed {
        token: LeaseToken::generate(),
        fingerprint: Fingerprint::of("x"),
        created_at_ms: 1_764_000_000_000,
        completed_at_ms: 1_764_000_000_042,
        outcome: StoredOutcome::new("{\"id\":1}", Some(ct.to_owned())),
    })
}

fn check(ct: &str) {
    let r = record(ct);
    let text = encode(&r);
    let start = text.find(",\"ct\":").expect("a ct field") + ",\"ct\":".len();
    // The body is base64 (no quote): the last `,"b":"` ends the content type.
    let end = text.rfind(",\"b\":\"").expect("a body field");
    assert_eq!(
        &text[start..end],
        serde_json::to_string(ct).unwrap(),
        "content type {ct:?}"
    );
    // And the whole record is valid JSON that a general parser reads the same content type from.
    let value: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(value["ct"].as_str(), Some(ct));
    assert_eq!(decode(text.as_bytes()).unwrap(), r, "{ct:?}");
}

/// Every single character that matters to the scan.
fn odd_chars() -> Vec<char> {
    let mut odd: Vec<char> = (0u8..0x20).map(char::from).collect();
    odd.extend([
        '"', '\\', '\u{7f}', ' ', '/', '\u{80}', '\u{e9}', '\u{7ff}', '\u{800}',
    ]);
    odd.extend([
        '\u{2028}',
        '\u{2029}',
        '\u{20ac}',
        '\u{fffd}',
        '\u{ffff}',
        '\u{10000}',
    ]);
    odd.push('\u{1f511}');
    odd.push('\u{10ffff}');
    odd
}

#[test]
fn breaker9_every_odd_character_at_every_position_encodes_like_serde() {
    let odd = odd_chars();
    let mut checked = 0usize;
    for len in 0..=40usize {
        check(&"a".repeat(len));
        for at in 0..=len {
            for &c in &odd {
                let mut ct: String = "a".repeat(len);
                ct.insert(at, c);
                check(&ct);
                checked += 1;
            }
        }
    }
    assert!(checked > 30 * 41 * 20, "{checked}");
}

#[test]
fn breaker9_an_escape_after_a_non_ascii_character_or_a_plain_word_is_seen() {
    let odd = odd_chars();
    let stops = ['"', '\\', '\n', '\u{0}', '\u{1f}'];
    for lead in 0..=24usize {
        for gap in 0..=17usize {
            for &first in &odd {
                for &stop in &stops {
                    // `first` somewhere early, a stop byte `gap` plain bytes later, more text.
                    let mut ct = "a".repeat(lead);
                    ct.push(first);
                    ct.push_str(&"b".repeat(gap));
                    ct.push(stop);
                    ct.push_str("cd");
                    check(&ct);
                }
            }
        }
    }
}

#[test]
fn breaker9_two_escapes_in_one_word_and_across_words() {
    let stops = ['"', '\\', '\n', '\u{0}', '\u{7f}', '\u{e9}'];
    for len in 0..=24usize {
        for a in 0..=len {
            for b in a..=len {
                for &x in &stops {
                    for &y in &stops {
                        let mut ct: String = "a".repeat(len);
                        ct.insert(b, y);
                        ct.insert(a, x);
                        check(&ct);
                    }
                }
            }
        }
    }
}

proptest! {
    /// Strings of plain ASCII with a few odd characters mixed in anywhere (`any::<String>()`
    /// rarely gives long plain runs with one escape in the tail).
    #[test]
    fn breaker9_mostly_plain_content_types_encode_like_serde(
        parts in proptest::collection::vec(
            prop_oneof![
                8 => "[a-z/;=+. -]{0,12}",
                1 => "[\\x00-\\x1f\"\\\\\\x7f]",
                1 => "\\PC",
            ],
            0..8,
        )
    ) {
        let ct: String = parts.concat();
        let text = encode(&record(&ct));
        let value: serde_json::Value = serde_json::from_str(&text).unwrap();
        prop_assert_eq!(value["ct"].as_str(), Some(ct.as_str()));
        let start = text.find(",\"ct\":").unwrap() + ",\"ct\":".len();
        let end = text.rfind(",\"b\":\"").unwrap();
        prop_assert_eq!(&text[start..end], serde_json::to_string(&ct).unwrap());
    }
}
