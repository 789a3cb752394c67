//! Record format v1: the text every network backend stores.
//!
//! A record is one line of UTF-8 JSON. Text (rather than binary) because the KV REST API carries
//! values inside JSON strings, and one format for both Redis-protocol backends means a record
//! written through one is read by the other on the same database.
//!
//! ```text
//! {"v":1,"s":"p","t":"<token: 32 hex>","f":"<fingerprint: 64 hex>","c":<created ms>}
//! {"v":1,"s":"c","t":"<token>","f":"<fingerprint>","c":<created ms>,"d":<completed ms>,
//!  "ct":"<content type, optional>","z":"lz4 (optional)","b":"<body, standard base64>"}
//! ```
//!
//! | field | meaning |
//! |---|---|
//! | `v` | format version, always `1` |
//! | `s` | state: `p` in progress, `c` completed |
//! | `t` | lease token of the claim (hex); kept when completed so a retried `complete` is accepted |
//! | `f` | request fingerprint (hex) |
//! | `c`, `d` | created / completed time, milliseconds since the Unix epoch (informative) |
//! | `ct` | content type of the outcome, omitted when none |
//! | `z` | `"lz4"` when the body is compressed, omitted otherwise |
//! | `b` | outcome body, base64 (standard alphabet, padded) |
//!
//! The encoder always writes `v`, `s`, `t` first and in this order: the Lua scripts in
//! [`crate::lua`] fence on the textual prefix `{"v":1,"s":"p","t":"<token>"` (no `cjson` needed,
//! and a base64 body cannot contain a quote, so the prefix cannot be forged by a body). The
//! decoder accepts any field order and ignores unknown fields.
//!
//! ```
//! use idempotency_core::{codec, Completed, Fingerprint, LeaseToken, Record, StoredOutcome};
//! let record = Record::Completed(Completed {
//!     token: LeaseToken::from_bytes([7; 16]),
//!     fingerprint: Fingerprint::from_bytes([1; 32]),
//!     created_at_ms: 1_764_000_000_000,
//!     completed_at_ms: 1_764_000_000_042,
//!     outcome: StoredOutcome::new(&b"{\"id\":1}"[..], Some("application/json".into())),
//! });
//! let text = codec::encode(&record);
//! assert_eq!(
//!     text,
//!     r#"{"v":1,"s":"c","t":"07070707070707070707070707070707","f":"0101010101010101010101010101010101010101010101010101010101010101","c":1764000000000,"d":1764000000042,"ct":"application/json","b":"eyJpZCI6MX0="}"#
//! );
//! assert_eq!(codec::decode(text.as_bytes()).unwrap(), record);
//! assert!(codec::decode(b"not a record").is_err());
//! ```

use std::fmt::Write as _;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use serde::Deserialize;
use thiserror::Error;

use crate::{
    Completed, Fingerprint, InProgress, LeaseToken, OutcomeEncoding, Record, StoredOutcome,
};

/// The version this crate writes and reads.
pub const FORMAT_VERSION: u64 = 1;

/// Bytes under a record key that are not a record this crate can read. Never treated as absent:
/// silently overwriting unknown data could run an operation twice.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("corrupt idempotency record: {reason}")]
pub struct CorruptRecord {
    reason: String,
}

impl CorruptRecord {
    /// A corrupt-record error with a reason.
    pub fn new(reason: impl Into<String>) -> Self {
        Self {
            reason: reason.into(),
        }
    }

    /// What was wrong.
    pub fn reason(&self) -> &str {
        &self.reason
    }
}

/// Encode a record as format v1 text.
pub fn encode(record: &Record) -> String {
    match record {
        Record::InProgress(r) => {
            let mut out = String::with_capacity(140);
            write_head(&mut out, 'p', &r.token, &r.fingerprint, r.created_at_ms);
            out.push('}');
            out
        }
        Record::Completed(r) => {
            let body_len = r.outcome.body.len().div_ceil(3) * 4;
            let mut out = String::with_capacity(200 + body_len);
            write_head(&mut out, 'c', &r.token, &r.fingerprint, r.created_at_ms);
            let _ = write!(out, ",\"d\":{}", r.completed_at_ms);
            if let Some(ct) = &r.outcome.content_type {
                out.push_str(",\"ct\":");
                push_json_string(&mut out, ct);
            }
            if r.outcome.encoding == OutcomeEncoding::Lz4 {
                out.push_str(",\"z\":\"lz4\"");
            }
            out.push_str(",\"b\":\"");
            BASE64.encode_string(&r.outcome.body, &mut out);
            out.push_str("\"}");
            out
        }
    }
}

fn write_head(out: &mut String, state: char, token: &LeaseToken, fp: &Fingerprint, created: u64) {
    let _ = write!(
        out,
        "{{\"v\":1,\"s\":\"{state}\",\"t\":\"{}\",\"f\":\"{}\",\"c\":{created}",
        token.to_hex(),
        fp.to_hex()
    );
}

fn push_json_string(out: &mut String, s: &str) {
    // serde_json never fails to serialise a &str.
    match serde_json::to_string(s) {
        Ok(quoted) => out.push_str(&quoted),
        Err(_) => out.push_str("\"\""),
    }
}

#[derive(Deserialize)]
struct Wire<'a> {
    v: u64,
    s: &'a str,
    t: &'a str,
    f: &'a str,
    c: u64,
    #[serde(default)]
    d: Option<u64>,
    #[serde(default, borrow)]
    ct: Option<std::borrow::Cow<'a, str>>,
    #[serde(default)]
    z: Option<&'a str>,
    #[serde(default)]
    b: Option<&'a str>,
}

/// Decode format v1 text.
///
/// # Errors
/// [`CorruptRecord`] for anything that is not a complete, valid v1 record (wrong JSON, unknown
/// version or state, bad hex or base64, missing fields).
pub fn decode(bytes: &[u8]) -> Result<Record, CorruptRecord> {
    let wire: Wire<'_> = serde_json::from_slice(bytes).map_err(|e| {
        CorruptRecord::new(format!(
            "not a v1 record ({e}); starts with {:?}",
            preview(bytes)
        ))
    })?;
    if wire.v != FORMAT_VERSION {
        return Err(CorruptRecord::new(format!(
            "record format version {} is not supported (this build reads {FORMAT_VERSION})",
            wire.v
        )));
    }
    let token = LeaseToken::from_hex(wire.t)
        .ok_or_else(|| CorruptRecord::new("lease token is not 32 hex digits"))?;
    let fingerprint = Fingerprint::from_hex(wire.f)
        .ok_or_else(|| CorruptRecord::new("fingerprint is not 64 hex digits"))?;
    match wire.s {
        "p" => Ok(Record::InProgress(InProgress {
            token,
            fingerprint,
            created_at_ms: wire.c,
        })),
        "c" => {
            let completed_at_ms = wire
                .d
                .ok_or_else(|| CorruptRecord::new("completed record without completion time"))?;
            let body = wire
                .b
                .ok_or_else(|| CorruptRecord::new("completed record without body"))?;
            let body = BASE64
                .decode(body)
                .map_err(|e| CorruptRecord::new(format!("body is not base64: {e}")))?;
            let encoding = match wire.z {
                None => OutcomeEncoding::Identity,
                Some("lz4") => OutcomeEncoding::Lz4,
                Some(other) => {
                    return Err(CorruptRecord::new(format!(
                        "unknown body encoding {other:?}"
                    )));
                }
            };
            Ok(Record::Completed(Completed {
                token,
                fingerprint,
                created_at_ms: wire.c,
                completed_at_ms,
                outcome: StoredOutcome {
                    body: Bytes::from(body),
                    content_type: wire.ct.map(|c| c.into_owned()),
                    encoding,
                },
            }))
        }
        other => Err(CorruptRecord::new(format!(
            "unknown record state {other:?}"
        ))),
    }
}

fn preview(bytes: &[u8]) -> String {
    String::from_utf8_lossy(&bytes[..bytes.len().min(24)]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn completed(body: Vec<u8>, ct: Option<String>, enc: OutcomeEncoding) -> Record {
        Record::Completed(Completed {
            token: LeaseToken::generate(),
            fingerprint: Fingerprint::of("r"),
            created_at_ms: 5,
            completed_at_ms: 9,
            outcome: StoredOutcome {
                body: body.into(),
                content_type: ct,
                encoding: enc,
            },
        })
    }

    #[test]
    fn in_progress_round_trip() {
        let r = Record::InProgress(InProgress {
            token: LeaseToken::generate(),
            fingerprint: Fingerprint::of("x"),
            created_at_ms: 42,
        });
        assert_eq!(decode(encode(&r).as_bytes()).unwrap(), r);
    }

    #[test]
    fn corrupt_inputs_are_typed_errors() {
        let good = encode(&completed(b"hi".to_vec(), None, OutcomeEncoding::Identity));
        let cases: Vec<Vec<u8>> = vec![
            b"".to_vec(),
            b"null".to_vec(),
            b"\xff\xfe".to_vec(),
            b"{}".to_vec(),
            good.replace("\"v\":1", "\"v\":2").into_bytes(),
            good.replace("\"s\":\"c\"", "\"s\":\"x\"").into_bytes(),
            good.replace("\"b\":\"aGk=\"", "\"b\":\"!!\"").into_bytes(),
            good.replace("\"b\":\"aGk=\"", "\"b\":\"aGk=\",\"z\":\"gzip\"")
                .into_bytes(),
            good.replace(",\"d\":9", "").into_bytes(),
            good.as_bytes()[..good.len() - 1].to_vec(),
            good.replacen("\"t\":\"", "\"t\":\"zz", 1).into_bytes(),
        ];
        for case in cases {
            assert!(
                decode(&case).is_err(),
                "{:?}",
                String::from_utf8_lossy(&case)
            );
        }
        assert!(decode(good.as_bytes()).is_ok());
    }

    #[test]
    fn decoder_accepts_reordered_and_unknown_fields() {
        let text = r#"{"f":"0101010101010101010101010101010101010101010101010101010101010101","x":[1],"c":3,"t":"07070707070707070707070707070707","s":"p","v":1}"#;
        assert!(matches!(decode(text.as_bytes()), Ok(Record::InProgress(_))));
    }

    #[test]
    fn content_type_is_escaped() {
        let r = completed(vec![], Some("a\"b\\c\n".into()), OutcomeEncoding::Identity);
        assert_eq!(decode(encode(&r).as_bytes()).unwrap(), r);
    }

    proptest! {
        #[test]
        fn completed_round_trip(body in proptest::collection::vec(any::<u8>(), 0..2048),
                                ct in proptest::option::of(any::<String>()),
                                lz4 in any::<bool>()) {
            let enc = if lz4 { OutcomeEncoding::Lz4 } else { OutcomeEncoding::Identity };
            let r = completed(body, ct, enc);
            let text = encode(&r);
            prop_assert!(text.is_ascii() || r.fingerprint() == &Fingerprint::of("r"));
            prop_assert_eq!(decode(text.as_bytes()).unwrap(), r);
        }

        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = decode(&bytes);
        }
    }
}
