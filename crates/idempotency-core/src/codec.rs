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

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::{Buf as _, Bytes};
use serde::Deserialize;
use std::ops::Range;

pub use crate::corrupt::CorruptRecord;
use crate::hexfmt::{HIGHS, ONES, at_least, from_hex, hex_into};
use crate::{
    Completed, Fingerprint, InProgress, LeaseToken, OutcomeEncoding, Record, StoredOutcome,
};

/// The version this crate writes and reads.
pub const FORMAT_VERSION: u64 = 1;

/// Encode a record as format v1 text.
pub fn encode(record: &Record) -> String {
    let mut out = Vec::new();
    encode_into(record, &mut out);
    // The encoder writes ASCII and the UTF-8 of a `String` (the content type) only.
    String::from_utf8(out).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

/// Append the format v1 text of `record` to `out` (the same bytes [`encode`] returns), without
/// an intermediate `String`: a store that sends the record as a command argument encodes it
/// straight into its buffer.
pub fn encode_into(record: &Record, out: &mut Vec<u8>) {
    match record {
        Record::InProgress(r) => encode_in_progress_into(r, out),
        Record::Completed(r) => encode_completed_into(r, out),
    }
}

/// [`encode_into`] for an in-progress record, without wrapping it in a [`Record`].
pub fn encode_in_progress_into(r: &InProgress, out: &mut Vec<u8>) {
    out.reserve(HEAD_CAPACITY + 1);
    write_head(out, b'p', &r.token, &r.fingerprint, r.created_at_ms);
    out.push(b'}');
}

/// The most bytes of an in-progress record's text: the head, a 20-digit time, the brace.
pub const IN_PROGRESS_MAX: usize = HEAD_CAPACITY + 1;

/// The text of an in-progress record (the same bytes [`encode`] writes) in a buffer on the
/// stack, and how many of its bytes it takes: a store sending it as a command argument copies
/// it once, with no buffer of its own to manage (a reused thread-local `Vec` cost ~40
/// instructions more per claim; `cargo xtask instructions`).
pub fn encode_in_progress_array(r: &InProgress) -> ([u8; IN_PROGRESS_MAX], usize) {
    let mut out = IN_PROGRESS_TEMPLATE;
    out[STATE_AT] = b'p';
    hex_into(r.token.as_bytes(), &mut out[TOKEN_AT..TOKEN_AT + 32]);
    hex_into(
        r.fingerprint.as_bytes(),
        &mut out[FINGERPRINT_AT..FINGERPRINT_AT + 64],
    );
    let mut digits = itoa::Buffer::new();
    let digits = digits.format(r.created_at_ms).as_bytes();
    let end = HEAD_FIXED + digits.len();
    // A `u64` has 20 digits at most: both always fit.
    if let Some(slot) = out.get_mut(HEAD_FIXED..end) {
        slot.copy_from_slice(digits);
    }
    if let Some(brace) = out.get_mut(end) {
        *brace = b'}';
    }
    (out, end + 1)
}

/// [`HEAD_TEMPLATE`] at the start of a buffer of [`IN_PROGRESS_MAX`] bytes.
const IN_PROGRESS_TEMPLATE: [u8; IN_PROGRESS_MAX] = {
    let mut out = [0u8; IN_PROGRESS_MAX];
    let mut i = 0;
    while i < HEAD_FIXED {
        out[i] = HEAD_TEMPLATE[i];
        i += 1;
    }
    out
};

/// [`encode_into`] for a completed record, without wrapping it in a [`Record`] (which would
/// clone the outcome's content type).
pub fn encode_completed_into(r: &Completed, out: &mut Vec<u8>) {
    out.reserve(completed_len(r));
    write_head(out, b'c', &r.token, &r.fingerprint, r.created_at_ms);
    out.extend_from_slice(b",\"d\":");
    push_u64(out, r.completed_at_ms);
    if let Some(ct) = &r.outcome.content_type {
        out.extend_from_slice(b",\"ct\":");
        push_json_string(out, ct);
    }
    if r.outcome.encoding == OutcomeEncoding::Lz4 {
        out.extend_from_slice(b",\"z\":\"lz4\"");
    }
    out.extend_from_slice(b",\"b\":\"");
    let start = out.len();
    out.resize(start + r.outcome.body.len().div_ceil(3) * 4, 0);
    // The slice is sized for padded base64 of the body: this cannot fail.
    let written = BASE64
        .encode_slice(&r.outcome.body, &mut out[start..])
        .unwrap_or(0);
    out.truncate(start + written);
    out.extend_from_slice(b"\"}");
}

/// An upper bound of a completed record's encoded length, so the encoder allocates once (a
/// content type needing escapes may still grow the buffer).
fn completed_len(r: &Completed) -> usize {
    let body_len = r.outcome.body.len().div_ceil(3) * 4;
    let ct_len = r.outcome.content_type.as_ref().map_or(0, |ct| ct.len() + 8);
    HEAD_CAPACITY + 48 + ct_len + body_len
}

/// Bytes of the common head: fixed text, two hex fields and a 20-digit time at most.
const HEAD_CAPACITY: usize = HEAD_FIXED + 20;

// Written piece by piece into bytes rather than with `write!` into a `String`: records are
// encoded on every claim and completion, and the formatting machinery, temporary hex strings and
// a UTF-8 check per piece cost several times more (callgrind, `cargo xtask instructions`).
fn write_head(out: &mut Vec<u8>, state: u8, token: &LeaseToken, fp: &Fingerprint, created: u64) {
    // The fixed part is one constant with the hex fields filled in place, appended with one
    // copy: piece by piece (seven appends, each a capacity check and a `memcpy` call, and the
    // hex through a stack buffer) cost ~1.6× more (`cargo xtask instructions`).
    let mut head = HEAD_TEMPLATE;
    head[STATE_AT] = state;
    hex_into(token.as_bytes(), &mut head[TOKEN_AT..TOKEN_AT + 32]);
    hex_into(
        fp.as_bytes(),
        &mut head[FINGERPRINT_AT..FINGERPRINT_AT + 64],
    );
    out.extend_from_slice(&head);
    push_u64(out, created);
}

/// The head every record starts with, up to the created time, with blanks for the state and
/// the two hex fields.
const HEAD_TEMPLATE: [u8; HEAD_FIXED] = *b"{\"v\":1,\"s\":\"_\",\"t\":\"________________________________\",\"f\":\"________________________________________________________________\",\"c\":";
/// Bytes of [`HEAD_TEMPLATE`].
const HEAD_FIXED: usize = 129;
/// Where the state letter, the token's and the fingerprint's digits go in [`HEAD_TEMPLATE`].
const STATE_AT: usize = 12;
const TOKEN_AT: usize = 20;
const FINGERPRINT_AT: usize = 59;

/// Decimal digits of `n` (the `itoa` crate: two digits per step, no formatting machinery).
fn push_u64(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

fn push_json_string(out: &mut Vec<u8>, s: &str) {
    // What serde_json escapes: quote, backslash and control characters. Usually none of them:
    // plain ASCII is checked eight bytes at a time (a byte at a time cost ~4 instructions a
    // byte, `cargo xtask instructions`); text with other UTF-8 is checked a byte at a time.
    let plain = plain_ascii_run(s.as_bytes()) == s.len()
        || !s.bytes().any(|b| b == b'"' || b == b'\\' || b < 0x20);
    if plain {
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
        return;
    }
    // serde_json never fails to serialise a &str.
    if serde_json::to_writer(&mut *out, s).is_err() {
        out.extend_from_slice(b"\"\"");
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
    match decode_canonical(bytes) {
        Some(record) => Ok(record),
        None => decode_json(bytes),
    }
}

/// [`decode`] of a record the caller owns (a reply's buffer): the same records, errors and
/// values, but a completed record's body is decoded into that buffer and kept there rather than
/// in an allocation of its own (bodies up to 256 decoded bytes; larger ones as [`decode`]).
/// The body then holds the whole buffer (the record's text) until it is dropped.
///
/// A store reading records on every claim that finds its key held uses this: one allocation
/// and one free fewer per replay (`cargo xtask instructions`).
///
/// # Errors
/// As [`decode`].
pub fn decode_owned(bytes: Vec<u8>) -> Result<Record, CorruptRecord> {
    let mut body = 0..0;
    // Shaped as `decode` (the record returned as it was parsed): a tuple return with the
    // body's range, and the record moved once more, cost ~60 instructions per in-progress
    // record (`cargo xtask instructions`, conflict).
    match parse_canonical(&bytes, &mut body) {
        Some(Record::Completed(mut completed)) => match body_in_buffer(bytes, body) {
            Ok(body) => {
                completed.outcome.body = body;
                Ok(Record::Completed(completed))
            }
            // Not canonical base64: the buffer is untouched, the general decoder says why.
            Err(bytes) => decode_json(&bytes),
        },
        Some(record) => Ok(record),
        None => decode_json(&bytes),
    }
}

/// The general decoder: any field order, unknown fields, escapes; and every error message.
fn decode_json(bytes: &[u8]) -> Result<Record, CorruptRecord> {
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

/// Content types read without [`Cursor::plain_string`] and its UTF-8 check (~230
/// instructions per replay for `application/json`; `cargo xtask instructions`). Few: each one
/// not matched costs a length comparison.
const KNOWN_CONTENT_TYPES: [&str; 3] = [
    "application/json",
    "application/problem+json",
    "text/plain; charset=utf-8",
];

/// A forward-only reader for [`decode_canonical`]; a failed step does not advance.
struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn tag(&mut self, tag: &[u8]) -> Option<()> {
        self.0 = self.0.strip_prefix(tag)?;
        Some(())
    }

    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, rest) = self.0.split_at_checked(n)?;
        self.0 = rest;
        Some(head)
    }

    /// A JSON number that fits a `u64`, without sign, fraction or leading zeros.
    fn number(&mut self) -> Option<u64> {
        // Eight digits at a time (`leading_digits`): a time has 13. A digit at a time cost
        // ~155 instructions per time (`cargo xtask instructions`, replay).
        let (high, len) = leading_digits(self.0);
        if len == 0 || (len > 1 && self.0[0] == b'0') {
            return None;
        }
        let (n, len) = if len < 8 {
            (high, len)
        } else {
            let (low, more) = leading_digits(&self.0[8..]);
            if more == 8 {
                // 16 digits or more: the rare long path, checked from the 20th digit on.
                return self.long_number();
            }
            (high * POWERS_OF_TEN[more] + low, 8 + more)
        };
        self.0 = &self.0[len..];
        Some(n)
    }

    /// [`Self::number`] for 16 digits or more: a digit at a time, checked past 19 digits.
    #[cold]
    fn long_number(&mut self) -> Option<u64> {
        let len = self.0.iter().take_while(|b| b.is_ascii_digit()).count();
        let digits = self.take(len)?;
        digits.iter().try_fold(0u64, |n, &d| {
            n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
        })
    }

    /// One of [`KNOWN_CONTENT_TYPES`] when the rest of the JSON string (up to its closing
    /// quote, not taken) is exactly that text: no scan for the quote and no UTF-8 check.
    fn known_content_type(&mut self) -> Option<&'static str> {
        let known = KNOWN_CONTENT_TYPES
            .into_iter()
            .find(|ct| self.0.get(ct.len()) == Some(&b'"') && self.0.starts_with(ct.as_bytes()))?;
        self.0 = self.0.get(known.len()..)?;
        Some(known)
    }

    /// The rest of a JSON string up to its closing quote, when it holds no escape or control
    /// character (one pass).
    fn plain_string(&mut self) -> Option<&'a [u8]> {
        let mut len = plain_ascii_run(self.0);
        if self.0.get(len).is_some_and(|&b| b >= 0x80) {
            // Not ASCII (`from_utf8` checks it afterwards): the rest a byte at a time.
            len += self.0.get(len..)?.iter().position(|&b| is_string_stop(b))?;
        }
        if self.0.get(len) != Some(&b'"') {
            return None;
        }
        self.take(len)
    }
}

/// What ends the plain part of a JSON string: its closing quote, an escape, or a control
/// character (which JSON requires escaped).
fn is_string_stop(b: u8) -> bool {
    b == b'"' || b == b'\\' || b < 0x20
}

/// The length of the run of ASCII bytes `bytes` starts with that are not [`is_string_stop`],
/// eight bytes at a time (a byte at a time, a content type such as `application/json` cost
/// ~175 instructions per replay; `cargo xtask instructions`).
fn plain_ascii_run(bytes: &[u8]) -> usize {
    let mut done = 0;
    let mut rest = bytes;
    while let Some(chunk) = rest.first_chunk::<8>() {
        let word = u64::from_le_bytes(*chunk);
        // Per byte, 0x80 where it stops the run. `at_least` is exact per byte here: with the
        // high bits set first, no subtraction borrows across bytes.
        let stop = (!at_least(word ^ (ONES * u64::from(b'"')), 1)
            | !at_least(word ^ (ONES * u64::from(b'\\')), 1)
            | !at_least(word, 0x20)
            | word)
            & HIGHS;
        if stop != 0 {
            return done + (stop.trailing_zeros() / 8) as usize;
        }
        done += 8;
        rest = &rest[8..];
    }
    done + rest
        .iter()
        .position(|&b| b >= 0x80 || is_string_stop(b))
        .unwrap_or(rest.len())
}

/// The exact layout [`encode`] writes, read without a JSON parser (records are decoded on every
/// claim that finds a key held, so on every replay). `None` for anything else — reordered or
/// unknown fields, escapes, whitespace, invalid values — which then goes to the general decoder,
/// so both accept the same records, decode them alike, and every error comes from one place.
/// `10^k` for `k` in `0..8`.
const POWERS_OF_TEN: [u64; 8] = [1, 10, 100, 1_000, 10_000, 100_000, 1_000_000, 10_000_000];

/// The value and count of the decimal digits `bytes` starts with, eight at most, read as one
/// word (no sign, no check of leading zeros: [`Cursor::number`] does that).
fn leading_digits(bytes: &[u8]) -> (u64, usize) {
    let word = match bytes.first_chunk::<8>() {
        Some(chunk) => u64::from_le_bytes(*chunk),
        // Padded with a non-digit when fewer than eight bytes are left (a copy of variable
        // length: a `memcpy` call, kept off the usual path).
        None => {
            let mut buf = [b'/'; 8];
            buf[..bytes.len()].copy_from_slice(bytes);
            u64::from_le_bytes(buf)
        }
    };
    // 0x80 in each byte that is an ASCII digit (bytes from 0x80 up are not).
    let digits = at_least(word, b'0') & !at_least(word, b'9' + 1) & !word & HIGHS;
    // The first byte that is not a digit (8 when all are): the run's length.
    let count = ((!digits & HIGHS).trailing_zeros() / 8) as usize;
    if count == 0 {
        return (0, 0);
    }
    // The run's digit values, moved to the top of the word so that missing digits read as
    // leading zeros (what follows the run is shifted out, along with any borrow it caused).
    let values = word.wrapping_sub(ONES * u64::from(b'0')) << (8 * (8 - count));
    // Eight digits (the first in the lowest byte) to their value in three multiplications:
    // pairs, then quads, then the whole (the SWAR parse of simdjson / Lemire).
    let pairs = ((values & (ONES * 0x0f)).wrapping_mul(10 * 256 + 1) >> 8) & 0x00ff_00ff_00ff_00ff;
    let quads = (pairs.wrapping_mul(100 * 65_536 + 1) >> 16) & 0x0000_ffff_0000_ffff;
    let value = quads.wrapping_mul(10_000 * (1 << 32) + 1) >> 32;
    (value, count)
}

fn decode_canonical(bytes: &[u8]) -> Option<Record> {
    let mut body = 0..0;
    let mut record = parse_canonical(bytes, &mut body)?;
    if let Record::Completed(completed) = &mut record {
        completed.outcome.body = decode_body(bytes.get(body)?)?;
    }
    Some(record)
}

/// [`decode_canonical`] up to the body: the record, a completed one with an empty body and
/// `body` set to where its base64 lies in `bytes` (not yet checked).
// Inlined: called apart, returning the record through memory and moving it again cost ~15
// instructions per in-progress record, ~30 per completed one (`cargo xtask instructions`).
#[inline(always)]
fn parse_canonical(bytes: &[u8], body: &mut Range<usize>) -> Option<Record> {
    let mut r = Cursor(bytes);
    r.tag(b"{\"v\":1,\"s\":\"")?;
    let state = r.take(1)?[0];
    r.tag(b"\",\"t\":\"")?;
    let token = LeaseToken::from_bytes(from_hex(r.take(32)?)?);
    r.tag(b"\",\"f\":\"")?;
    let fingerprint = Fingerprint::from_bytes(from_hex(r.take(64)?)?);
    r.tag(b"\",\"c\":")?;
    let created_at_ms = r.number()?;
    match state {
        b'p' => {
            r.tag(b"}")?;
            r.0.is_empty().then_some(Record::InProgress(InProgress {
                token,
                fingerprint,
                created_at_ms,
            }))
        }
        b'c' => {
            r.tag(b",\"d\":")?;
            let completed_at_ms = r.number()?;
            let content_type = match r.tag(b",\"ct\":\"") {
                Some(()) => {
                    let text = match r.known_content_type() {
                        Some(known) => known.to_owned(),
                        None => std::str::from_utf8(r.plain_string()?).ok()?.to_owned(),
                    };
                    r.tag(b"\"")?;
                    Some(text)
                }
                None => None,
            };
            let encoding = match r.tag(b",\"z\":\"lz4\"") {
                Some(()) => OutcomeEncoding::Lz4,
                None => OutcomeEncoding::Identity,
            };
            r.tag(b",\"b\":\"")?;
            // The body runs to the closing `"}` at the very end; no scan for its quote needed:
            // a quote, backslash or anything else inside is not base64, so decoding refuses it.
            let text = r.0.strip_suffix(b"\"}")?;
            let start = bytes.len() - r.0.len();
            *body = start..start + text.len();
            Some(Record::Completed(Completed {
                token,
                fingerprint,
                created_at_ms,
                completed_at_ms,
                outcome: StoredOutcome {
                    body: Bytes::new(),
                    content_type,
                    encoding,
                },
            }))
        }
        _ => None,
    }
}

/// The decoded length of a canonical (padded) base64 body; `None` when its length is not a
/// multiple of 4.
fn body_len(text: &[u8]) -> Option<usize> {
    if !text.len().is_multiple_of(4) {
        return None;
    }
    let padding = match text {
        [.., b'=', b'='] => 2,
        [.., b'='] => 1,
        _ => 0,
    };
    Some(text.len() / 4 * 3 - padding)
}

/// The canonical body at `body` in `bytes`, decoded into `bytes` itself (see [`decode_owned`]);
/// `bytes` back, untouched, when the body is not canonical base64.
///
/// The decoded body is written at the very end of the buffer: `Bytes` takes a `Vec` whose
/// length is its capacity (a reply's bulk string is) without allocating, and skipping its start
/// costs nothing, whereas ending before its end would allocate `Bytes`' shared representation
/// (`Bytes::truncate` does). Decoded on the stack first: base64 cannot be decoded in place
/// with the `base64` crate, and a failed decode must leave the text for the general decoder.
fn body_in_buffer(mut bytes: Vec<u8>, body: Range<usize>) -> Result<Bytes, Vec<u8>> {
    let Some(text) = bytes.get(body) else {
        return Err(bytes);
    };
    let Some(exact) = body_len(text) else {
        return Err(bytes);
    };
    if exact > STACK_BODY {
        return match decode_body(text) {
            Some(body) => Ok(body),
            None => Err(bytes),
        };
    }
    let mut buf = [0u8; STACK_BODY];
    let Some(decoded) = BASE64
        .decode_slice(text, &mut buf[..exact])
        .ok()
        .and_then(|written| buf.get(..written))
    else {
        return Err(bytes);
    };
    if decoded.is_empty() {
        // Nothing to keep the buffer for.
        return Ok(Bytes::new());
    }
    // The decoded body is shorter than its base64 text, which lies inside `bytes`.
    let start = bytes.len() - decoded.len();
    bytes[start..].copy_from_slice(decoded);
    let mut body = Bytes::from(bytes);
    body.advance(start);
    Ok(body)
}

/// Bodies up to this many decoded bytes are decoded on the stack, then copied once.
const STACK_BODY: usize = 256;

/// The canonical body: padded standard base64 (what `encode` writes), decoded into a buffer of
/// its exact length. `BASE64.decode` allocates a zeroed buffer sized by a conservative estimate
/// (up to 2 bytes too long), and a `Vec` whose length is not its capacity makes `Bytes::from`
/// allocate a second time (its shared representation): ~500 instructions per replay
/// (`cargo xtask instructions`). `None` for anything not canonical (the general decoder then
/// reports why).
fn decode_body(text: &[u8]) -> Option<Bytes> {
    let exact = body_len(text)?;
    if exact <= STACK_BODY {
        let mut buf = [0u8; STACK_BODY];
        let written = BASE64.decode_slice(text, &mut buf[..exact]).ok()?;
        // `copy_from_slice` allocates exactly `written` bytes: `Bytes` keeps them as they are.
        Some(Bytes::copy_from_slice(buf.get(..written)?))
    } else {
        let mut body = vec![0u8; exact];
        let written = BASE64.decode_slice(text, &mut body).ok()?;
        body.truncate(written);
        Some(Bytes::from(body))
    }
}

/// Both decoders on their own, for the fuzz targets in `fuzz/` (feature `fuzzing`). Not a
/// stable API.
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing {
    use super::{CorruptRecord, Record};

    /// The canonical fast path alone (`None`: not the exact layout `encode` writes).
    pub fn decode_canonical(bytes: &[u8]) -> Option<Record> {
        super::decode_canonical(bytes)
    }

    /// The general serde decoder alone.
    ///
    /// # Errors
    /// As [`super::decode`].
    pub fn decode_json(bytes: &[u8]) -> Result<Record, CorruptRecord> {
        super::decode_json(bytes)
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
    fn body_decoder_matches_the_base64_crate() {
        // Every padding, both sides of the stack buffer's limit, and refusals.
        for len in (0..10).chain(250..262).chain([1000]) {
            let body: Vec<u8> = (0..len).map(|i| (i * 37 % 251) as u8).collect();
            let text = BASE64.encode(&body);
            let decoded = decode_body(text.as_bytes()).unwrap();
            assert_eq!(&decoded[..], &body[..], "length {len}");
            assert_eq!(decoded.len(), len);
        }
        for bad in ["abc", "ab=c", "a===", "====", "ab\"c", "YQ==YQ==", "YR=="] {
            assert!(decode_body(bad.as_bytes()).is_none(), "{bad:?}");
            assert!(BASE64.decode(bad).is_err(), "{bad:?}");
        }
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
    fn times_round_trip_at_every_width() {
        // 1 to 20 digits: the canonical reader's unchecked path (< 20 digits) and checked one.
        for created_at_ms in [
            0,
            9,
            10,
            1_700_000_000_000,
            9_999_999_999_999_999_999,
            u64::MAX,
        ] {
            let r = Record::InProgress(InProgress {
                token: LeaseToken::generate(),
                fingerprint: Fingerprint::of("x"),
                created_at_ms,
            });
            let text = encode(&r);
            assert!(text.contains(&format!("\"c\":{created_at_ms}}}")), "{text}");
            assert_eq!(decode_canonical(text.as_bytes()), Some(r.clone()));
            assert_eq!(decode(text.as_bytes()).unwrap(), r);
        }
        // One past u64::MAX is refused, not wrapped.
        let r = Record::InProgress(InProgress {
            token: LeaseToken::generate(),
            fingerprint: Fingerprint::of("x"),
            created_at_ms: u64::MAX,
        });
        let over = encode(&r).replace("18446744073709551615", "18446744073709551616");
        assert_eq!(decode_canonical(over.as_bytes()), None);
        assert!(decode(over.as_bytes()).is_err());
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
    fn plain_ascii_run_matches_a_byte_at_a_time_scan() {
        let reference = |bytes: &[u8]| {
            bytes
                .iter()
                .position(|&b| b >= 0x80 || is_string_stop(b))
                .unwrap_or(bytes.len())
        };
        // Every byte value at every position of runs up to 20 bytes long (across two words and
        // the byte-at-a-time tail), after plain filler.
        for len in 0..=20 {
            for at in 0..len {
                for b in 0..=255u8 {
                    let mut bytes = vec![b'a'; len];
                    bytes[at] = b;
                    assert_eq!(plain_ascii_run(&bytes), reference(&bytes), "{bytes:?}");
                    // A stop byte after it must not change the answer.
                    bytes.push(b'"');
                    assert_eq!(plain_ascii_run(&bytes), reference(&bytes), "{bytes:?}");
                }
            }
        }
        // Two stop candidates in one word: the first one counts.
        assert_eq!(plain_ascii_run(b"ab\\c\"defgh"), 2);
        assert_eq!(plain_ascii_run(b"abc\x01\"efghij"), 3);
        assert_eq!(plain_ascii_run("ab\u{e9}\"cdefgh".as_bytes()), 2);
    }

    #[test]
    fn plain_strings_with_non_ascii_text_are_read_to_their_quote() {
        let mut r = Cursor("t\u{e9}xt/\u{fc}ber\"rest".as_bytes());
        assert_eq!(r.plain_string(), Some("t\u{e9}xt/\u{fc}ber".as_bytes()));
        assert_eq!(r.0, b"\"rest");
        let mut r = Cursor("application/json\"".as_bytes());
        assert_eq!(r.plain_string(), Some(&b"application/json"[..]));
        for refused in ["abc", "a\\\"b\"", "t\u{e9}\u{1}\"", "application/json"] {
            assert_eq!(Cursor(refused.as_bytes()).plain_string(), None, "{refused}");
        }
    }

    #[test]
    fn known_content_types_read_as_any_other() {
        let texts = KNOWN_CONTENT_TYPES.iter().flat_map(|known| {
            let (cut, _) = known.split_at(known.len() - 1);
            [
                (*known).to_owned(),
                format!("{known}x"),
                format!("{known}\\u0041"),
                format!("{known}\\u00e9"),
                format!("{known}\\\"x"),
                cut.to_owned(),
                format!("{cut}\\u0041"),
                String::new(),
            ]
        });
        for ct in texts {
            for body in ["", "e30=", "e3"] {
                let text = format!(
                    r#"{{"v":1,"s":"c","t":"{}","f":"{}","c":1,"d":2,"ct":"{ct}","b":"{body}"}}"#,
                    "0".repeat(32),
                    "1".repeat(64)
                );
                let general = decode_json(text.as_bytes());
                if let Some(fast) = decode_canonical(text.as_bytes()) {
                    assert_eq!(general.as_ref(), Ok(&fast), "{text}");
                }
                assert_eq!(decode(text.as_bytes()), general, "{text}");
                assert_eq!(decode_owned(text.clone().into_bytes()), general, "{text}");
            }
        }
    }

    #[test]
    fn in_progress_array_is_the_encoded_text() {
        for created_at_ms in [0, 7, 1_764_000_000_000, u64::MAX] {
            let r = InProgress {
                token: LeaseToken::generate(),
                fingerprint: Fingerprint::of("r"),
                created_at_ms,
            };
            let (buf, len) = encode_in_progress_array(&r);
            assert_eq!(&buf[..len], encode(&Record::InProgress(r)).as_bytes());
        }
    }

    #[test]
    fn owned_bodies_are_kept_in_the_reply_buffer() {
        let r = completed(
            b"{\"id\":1}".to_vec(),
            Some("application/json".into()),
            OutcomeEncoding::Identity,
        );
        let text = encode(&r).into_bytes();
        let end = text.as_ptr().wrapping_add(text.len());
        let decoded = decode_owned(text).unwrap();
        assert_eq!(decoded, r);
        let Record::Completed(done) = decoded else {
            unreachable!("completed")
        };
        // The body is the tail of the buffer it came in.
        assert_eq!(
            done.outcome
                .body
                .as_ptr()
                .wrapping_add(done.outcome.body.len()),
            end
        );
    }

    #[test]
    fn content_type_is_escaped() {
        let r = completed(vec![], Some("a\"b\\c\n".into()), OutcomeEncoding::Identity);
        assert_eq!(decode(encode(&r).as_bytes()).unwrap(), r);
    }

    #[test]
    fn json_strings_are_written_as_serde_json_writes_them() {
        // Every stop byte and a non-ASCII character at every position of short strings, on
        // both sides of the eight-byte scan.
        for len in 0..20 {
            for at in 0..len {
                for odd in [
                    "\"", "\\", "\n", "\u{1}", "\u{1f}", "\u{7f}", " ", "\u{e9}", "\u{2028}",
                ] {
                    let mut text = "a".repeat(len);
                    text.replace_range(at..=at, odd);
                    let mut ours = Vec::new();
                    push_json_string(&mut ours, &text);
                    assert_eq!(ours, serde_json::to_vec(&text).unwrap(), "{text:?}");
                }
            }
        }
    }

    proptest! {
        /// The JSON string writer (content types) writes exactly what serde_json writes.
        #[test]
        fn json_strings_match_serde_json(text in any::<String>()) {
            let mut ours = Vec::new();
            push_json_string(&mut ours, &text);
            prop_assert_eq!(ours, serde_json::to_vec(&text).unwrap());
        }
    }

    proptest! {
        /// The word-at-a-time number reader agrees with a digit-at-a-time reference on any
        /// text: every width from 0 to 22 digits, leading zeros, overflow, any byte after.
        #[test]
        fn numbers_match_a_digit_at_a_time_reader(
            text in "[0-9]{0,22}[}, a/:\\x7f\\u{e9}]?[0-9]{0,3}",
        ) {
            let len = text.bytes().take_while(u8::is_ascii_digit).count();
            let digits = &text[..len];
            let expected = if len == 0 || (len > 1 && digits.starts_with('0')) {
                None
            } else {
                digits.parse::<u64>().ok().map(|n| (n, len))
            };
            let mut cursor = Cursor(text.as_bytes());
            let got = cursor.number().map(|n| (n, text.len() - cursor.0.len()));
            prop_assert_eq!(got, expected);
        }
    }

    proptest! {
        #[test]
        fn completed_round_trip(body in proptest::collection::vec(any::<u8>(), 0..2048),
                                ct in proptest::option::of(any::<String>()),
                                lz4 in any::<bool>()) {
            let enc = if lz4 { OutcomeEncoding::Lz4 } else { OutcomeEncoding::Identity };
            let ascii_ct = ct.as_deref().is_none_or(str::is_ascii);
            let r = completed(body, ct, enc);
            let text = encode(&r);
            // The fenced Lua scripts match this head textually (`lua::COMPLETE` and friends):
            // it must open every completed record, whatever the outcome.
            let Record::Completed(done) = &r else { unreachable!("built as completed") };
            let head = format!("{{\"v\":1,\"s\":\"c\",\"t\":\"{}\"", done.token.to_hex());
            prop_assert!(text.starts_with(&head), "{text}");
            // Base64 bodies and escaped fields are ASCII: only a non-ASCII content type (kept
            // as UTF-8, as serde_json writes it) makes the text non-ASCII.
            prop_assert_eq!(text.is_ascii(), ascii_ct);
            prop_assert_eq!(decode(text.as_bytes()).unwrap(), r.clone());
            // Bodies on both sides of `STACK_BODY`: in the buffer, and in their own.
            prop_assert_eq!(decode_owned(text.into_bytes()).unwrap(), r);
        }

        /// The canonical reader decodes what the encoder writes, and on any damaged record it
        /// either steps aside or agrees with the general decoder.
        #[test]
        fn canonical_reader_agrees_with_the_json_decoder(
            body in proptest::collection::vec(any::<u8>(), 0..64),
            ct in proptest::option::of("[ -~]{0,12}|\\PC{0,4}"),
            lz4 in any::<bool>(),
            completed_state in any::<bool>(),
            damage in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..3),
        ) {
            let enc = if lz4 { OutcomeEncoding::Lz4 } else { OutcomeEncoding::Identity };
            let record = if completed_state {
                completed(body, ct, enc)
            } else {
                Record::InProgress(InProgress {
                    token: LeaseToken::generate(),
                    fingerprint: Fingerprint::of("r"),
                    created_at_ms: 42,
                })
            };
            let text = encode(&record);
            // Content types with JSON escapes are left to the general decoder.
            let plain = match &record {
                Record::Completed(c) => c.outcome.content_type.as_deref().is_none_or(|ct| {
                    !ct.bytes().any(|b| b == b'"' || b == b'\\' || b < 0x20)
                }),
                Record::InProgress(_) => true,
            };
            let fast = decode_canonical(text.as_bytes());
            prop_assert!(fast.is_some() || !plain);
            prop_assert!(fast.is_none_or(|fast| fast == record));
            prop_assert_eq!(decode_json(text.as_bytes()), Ok(record));
            let mut damaged = text.into_bytes();
            for (at, byte) in damage {
                let i = at.index(damaged.len());
                damaged[i] = byte;
            }
            if let Some(fast) = decode_canonical(&damaged) {
                prop_assert_eq!(decode_json(&damaged), Ok(fast));
            }
            prop_assert_eq!(decode_owned(damaged.clone()), decode(&damaged));
        }

        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            prop_assert_eq!(decode_owned(bytes.clone()), decode(&bytes));
        }
    }
}

/// breaker6: record numbers at the width and overflow boundaries of the word-at-a-time reader,
/// through the whole decoder; the canonical and general decoders must agree on every text.
#[cfg(test)]
mod breaker6 {
    use super::*;

    const T: &str = "0123456789abcdef0123456789abcdef";
    const F: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

    fn numbers() -> Vec<String> {
        let mut out = vec![
            String::new(),
            "0".into(),
            "00".into(),
            "01".into(),
            "-1".into(),
        ];
        for width in 1..=25 {
            out.push("9".repeat(width));
            out.push(format!("1{}", "0".repeat(width - 1)));
            out.push(format!("0{}", "1".repeat(width - 1)));
            out.push(
                (1..=width)
                    .map(|d| char::from(b'0' + (d % 10) as u8))
                    .collect(),
            );
        }
        for n in [
            u64::MAX,
            u64::MAX - 1,
            10_000_000_000_000_000_000,
            9_999_999_999_999_999_999,
        ] {
            out.push(n.to_string());
        }
        out.push("18446744073709551616".into());
        out.push("18446744073709551625".into());
        out.push("28446744073709551615".into());
        out.push("1e3".into());
        out.push("1.0".into());
        out
    }

    fn expected(text: &str) -> Option<u64> {
        let leading_zero = text.len() > 1 && text.starts_with('0');
        (!text.is_empty() && !leading_zero && text.bytes().all(|b| b.is_ascii_digit()))
            .then(|| text.parse().ok())
            .flatten()
    }

    #[test]
    fn created_and_completed_times_at_every_width() {
        for n in numbers() {
            let in_progress = format!(r#"{{"v":1,"s":"p","t":"{T}","f":"{F}","c":{n}}}"#);
            let completed =
                format!(r#"{{"v":1,"s":"c","t":"{T}","f":"{F}","c":5,"d":{n},"b":"eA=="}}"#);
            for text in [in_progress, completed] {
                let got = decode(text.as_bytes());
                let json = decode_json(text.as_bytes());
                match expected(&n) {
                    Some(value) => {
                        let record = got.unwrap_or_else(|e| panic!("{text}: {e}"));
                        assert_eq!(json.as_ref(), Ok(&record), "{text}");
                        let time = match &record {
                            Record::InProgress(r) => r.created_at_ms,
                            Record::Completed(c) => c.completed_at_ms,
                        };
                        assert_eq!(time, value, "{text}");
                        assert_eq!(encode(&record), text, "re-encoded identically");
                    }
                    None => {
                        assert!(decode_canonical(text.as_bytes()).is_none(), "{text}");
                        assert!(got.is_err(), "{text} decoded as {got:?}");
                    }
                }
            }
        }
    }

    /// The head written from the template is the layout the old piece-by-piece writer made
    /// (`{"v":1,"s":"p","t":"<hex>","f":"<hex>","c":<n>}`), for any token, fingerprint, time.
    #[test]
    fn template_head_matches_the_old_layout() {
        let mut seed = 0x243f_6a88_85a3_08d3_u64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for round in 0..2000 {
            let mut token = [0u8; 16];
            let mut fp = [0u8; 32];
            token.iter_mut().for_each(|b| *b = next() as u8);
            fp.iter_mut().for_each(|b| *b = next() as u8);
            let created = match round % 4 {
                0 => next(),
                1 => u64::MAX,
                2 => 0,
                _ => next() % 10_000_000_000_000,
            };
            let record = InProgress {
                token: LeaseToken::from_bytes(token),
                fingerprint: Fingerprint::from_bytes(fp),
                created_at_ms: created,
            };
            let old = format!(
                r#"{{"v":1,"s":"p","t":"{}","f":"{}","c":{created}}}"#,
                hex::encode(token),
                hex::encode(fp)
            );
            let record = Record::InProgress(record);
            assert_eq!(encode(&record), old);
            assert_eq!(decode(old.as_bytes()), Ok(record));
        }
    }
}
