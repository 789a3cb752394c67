//! breaker11 (issue 15): `decode_owned(v) == decode(&v)` on hostile input around the stack body
//! bound (256 decoded bytes): every body length 0..=300, every padding variant (canonical,
//! stripped, extra, non-zero trailing bits), bytes after `"}`, content types that are prefixes
//! or extensions of the known three, escapes, invalid UTF-8, and a `Vec` whose capacity
//! exceeds its length.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
use idempotency_core::codec::{decode, decode_owned, encode};
use idempotency_core::{Completed, Fingerprint, LeaseToken, Record, StoredOutcome};

fn head(ct: Option<&[u8]>) -> Vec<u8> {
    let mut t = format!(
        r#"{{"v":1,"s":"c","t":"{}","f":"{}","c":1,"d":2"#,
        "0".repeat(32),
        "1".repeat(64)
    )
    .into_bytes();
    if let Some(ct) = ct {
        t.extend_from_slice(b",\"ct\":\"");
        t.extend_from_slice(ct);
        t.push(b'"');
    }
    t.extend_from_slice(b",\"b\":\"");
    t
}

fn same(text: Vec<u8>) {
    let general = decode(&text);
    // Exact capacity, and a capacity larger than the length (the body must not read past it).
    assert_eq!(
        decode_owned(text.clone()),
        general,
        "{:?}",
        String::from_utf8_lossy(&text)
    );
    let mut roomy = Vec::with_capacity(text.len() * 2 + 7);
    roomy.extend_from_slice(&text);
    roomy.extend_from_slice(b"garbage");
    roomy.truncate(text.len());
    assert_eq!(
        decode_owned(roomy),
        general,
        "{:?}",
        String::from_utf8_lossy(&text)
    );
}

fn bodies(len: usize) -> Vec<Vec<u8>> {
    let pattern: Vec<u8> = (0..len).map(|i| (i * 37 + 11) as u8).collect();
    let canonical = STANDARD.encode(&pattern);
    let mut out = vec![
        canonical.clone().into_bytes(),
        STANDARD_NO_PAD.encode(&pattern).into_bytes(),
        format!("{canonical}=").into_bytes(),
        format!("{canonical}====").into_bytes(),
        format!("{canonical}AAAA").into_bytes(),
    ];
    // Non-zero trailing bits in the last symbol before the padding.
    if canonical.ends_with('=') {
        let mut b = canonical.clone().into_bytes();
        let at = b.iter().position(|&c| c == b'=').unwrap() - 1;
        b[at] = if b[at] == b'B' { b'C' } else { b'B' };
        out.push(b);
    }
    // A quote, backslash, invalid UTF-8 inside the body.
    for odd in [b'"', b'\\', 0xff, b'\n'] {
        let mut b = canonical.clone().into_bytes();
        if !b.is_empty() {
            let mid = b.len() / 2;
            b[mid] = odd;
        } else {
            b.push(odd);
        }
        out.push(b);
    }
    out
}

#[test]
fn breaker11_every_body_length_and_variant_decodes_alike() {
    for len in 0..=300 {
        for body in bodies(len) {
            for tail in [
                &b"\"}"[..],
                b"\"} ",
                b"\"}\"}",
                b"\"}x",
                b"\"",
                b"",
                b" \"}",
            ] {
                let mut text = head(Some(b"application/json"));
                text.extend_from_slice(&body);
                text.extend_from_slice(tail);
                same(text);
            }
        }
    }
}

#[test]
fn breaker11_content_types_near_the_known_ones_decode_alike() {
    let mut cts: Vec<Vec<u8>> = Vec::new();
    for known in [
        "application/json",
        "application/problem+json",
        "text/plain; charset=utf-8",
    ] {
        let k = known.as_bytes();
        for cut in 0..=k.len() {
            cts.push(k[..cut].to_vec());
        }
        for ext in [
            &b"x"[..],
            b"\\\"",
            b"\\\\",
            b"\\u0041",
            b"\xff",
            b"\xc3\xa9",
            b" ",
            b"\"",
            b"\n",
        ] {
            let mut c = k.to_vec();
            c.extend_from_slice(ext);
            cts.push(c);
            let mut c = ext.to_vec();
            c.extend_from_slice(k);
            cts.push(c);
        }
        cts.push(known.to_uppercase().into_bytes());
    }
    for ct in cts {
        for len in [0usize, 1, 2, 3, 255, 256, 257, 258] {
            let pattern: Vec<u8> = (0..len).map(|i| i as u8).collect();
            for with_ct in [true, false] {
                let mut text = head(with_ct.then_some(&ct[..]));
                text.extend_from_slice(STANDARD.encode(&pattern).as_bytes());
                text.extend_from_slice(b"\"}");
                same(text);
            }
        }
    }
}

#[test]
fn breaker11_round_trips_keep_exact_bytes_and_outlive_their_source() {
    for len in (0..=300).chain([4096, 65_537]) {
        let body: Vec<u8> = (0..len).map(|i| (255 - i % 256) as u8).collect();
        let r = Record::Completed(Completed {
            token: LeaseToken::generate(),
            fingerprint: Fingerprint::of("x"),
            created_at_ms: 1,
            completed_at_ms: 2,
            outcome: StoredOutcome::new(body.clone(), Some("application/octet-stream".into())),
        });
        let text = encode(&r).into_bytes();
        let decoded = decode_owned(text).unwrap();
        assert_eq!(decoded, r, "len {len}");
        let Record::Completed(done) = decoded else {
            panic!("completed")
        };
        assert_eq!(&done.outcome.body[..], &body[..], "len {len}");
        // Clones and slices of the body stay valid after the record is dropped.
        let kept = done.outcome.body.clone();
        drop(done);
        assert_eq!(&kept[..], &body[..], "len {len}");
    }
}
