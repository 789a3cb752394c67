//! Client key parsing and store-key derivation.
//!
//! - `from_bytes` never panics, agrees with `new`, and accepts exactly 1..=255 visible ASCII
//!   bytes.
//! - `from_header_value` (RFC 8941 sf-string Item with optional parameters, or bare key,
//!   optional whitespace around) never panics and agrees with an independent model of that
//!   grammar; what it accepts is 1..=255 bytes of printable ASCII; a key written back as an
//!   sf-string parses to itself (with parameters appended too), a bare key quoted means the same
//!   key, and two keys joined as HTTP joins two header lines are `KeyError::SeveralKeys`.
//! - The store-key derivation is injective over (scope, key) pairs, for bare and quoted keys.
#![no_main]

use idempotency_core::{IdempotencyKey, KeyError, Scope, StoreKey};
use libfuzzer_sys::fuzz_target;

fn valid_bare(bytes: &[u8]) -> bool {
    (1..=255).contains(&bytes.len()) && bytes.iter().all(|b| (0x21..=0x7e).contains(b))
}

/// RFC 8941 §4.2.5 sf-string or a bare key, written from the RFC text, not from the crate.
fn model(value: &[u8]) -> Option<String> {
    let ows = |b: &u8| *b == b' ' || *b == b'\t';
    let start = value.iter().take_while(|b| ows(b)).count();
    let rest = &value[start..];
    let end = rest.len() - rest.iter().rev().take_while(|b| ows(b)).count();
    let trimmed = &rest[..end];
    if trimmed.first() != Some(&b'"') {
        return valid_bare(trimmed).then(|| String::from_utf8_lossy(trimmed).into_owned());
    }
    let mut out = String::new();
    let mut bytes = trimmed[1..].iter();
    loop {
        match *bytes.next()? {
            b'\\' => match *bytes.next()? {
                e @ (b'"' | b'\\') => out.push(char::from(e)),
                _ => return None,
            },
            b'"' => break,
            b @ 0x20..=0x7e => out.push(char::from(b)),
            _ => return None,
        }
    }
    let rest = bytes.as_slice();
    (params(rest).is_some_and(<[u8]>::is_empty) && (1..=255).contains(&out.len())).then_some(out)
}

/// RFC 8941 §3.1.2 `parameters = *( ";" *SP key [ "=" bare-item ] )`, with the bare items of
/// §3.3 (RFC 8941's, not RFC 9651's Date or Display String): what is left after them, or
/// `None` when a parameter is malformed.
fn params(mut s: &[u8]) -> Option<&[u8]> {
    while let [b';', rest @ ..] = s {
        s = rest;
        while let [b' ', rest @ ..] = s {
            s = rest;
        }
        let [b'a'..=b'z' | b'*', rest @ ..] = s else {
            return None;
        };
        s = skip(rest, |b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || b"_-.*".contains(&b)
        });
        if let [b'=', rest @ ..] = s {
            s = bare_item(rest)?;
        }
    }
    Some(s)
}

fn skip(s: &[u8], keep: impl Fn(u8) -> bool) -> &[u8] {
    let n = s.iter().take_while(|&&b| keep(b)).count();
    &s[n..]
}

/// One bare item (§3.3.1 to §3.3.6): what follows it, or `None`.
fn bare_item(s: &[u8]) -> Option<&[u8]> {
    match s.first()? {
        b'-' | b'0'..=b'9' => {
            let unsigned = s.strip_prefix(b"-").unwrap_or(s);
            let int = unsigned.iter().take_while(|b| b.is_ascii_digit()).count();
            let after = &unsigned[int..];
            if let [b'.', frac @ ..] = after {
                let f = frac.iter().take_while(|b| b.is_ascii_digit()).count();
                ((1..=12).contains(&int) && (1..=3).contains(&f)).then(|| &frac[f..])
            } else {
                (1..=15).contains(&int).then_some(after)
            }
        }
        b'"' => {
            let mut i = 1;
            loop {
                match *s.get(i)? {
                    b'\\' if matches!(s.get(i + 1), Some(b'"' | b'\\')) => i += 2,
                    b'"' => return Some(&s[i + 1..]),
                    b'\\' => return None,
                    0x20..=0x7e => i += 1,
                    _ => return None,
                }
            }
        }
        b'A'..=b'Z' | b'a'..=b'z' | b'*' => Some(skip(&s[1..], |b| {
            b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~:/".contains(&b)
        })),
        b':' => {
            let end = s[1..].iter().position(|&b| b == b':')? + 1;
            let b64 = &s[1..end];
            let data = b64.iter().take_while(|b| b.is_ascii_alphanumeric() || **b == b'+' || **b == b'/').count();
            let pad = b64.len() - data;
            let ok = b64[data..].iter().all(|&b| b == b'=')
                && pad <= 2
                && data % 4 != 1
                && (pad == 0 || b64.len() % 4 == 0);
            ok.then(|| &s[end + 1..])
        }
        b'?' => match s.get(1)? {
            b'0' | b'1' => Some(&s[2..]),
            _ => None,
        },
        _ => None,
    }
}

fn quote(key: &str) -> Vec<u8> {
    let mut out = vec![b'"'];
    for b in key.bytes() {
        if b == b'"' || b == b'\\' {
            out.push(b'\\');
        }
        out.push(b);
    }
    out.push(b'"');
    out
}

fuzz_target!(|data: &[u8]| {
    let parsed = IdempotencyKey::from_bytes(data);
    assert_eq!(parsed.is_ok(), valid_bare(data), "{data:?}");
    if let Ok(text) = std::str::from_utf8(data) {
        assert_eq!(IdempotencyKey::new(text).ok(), parsed.clone().ok());
    }
    if let Ok(key) = &parsed {
        assert_eq!(key.as_str().as_bytes(), data);
        // A bare key and the same key quoted are one key.
        assert_eq!(
            IdempotencyKey::from_header_value(&quote(key.as_str())).as_ref(),
            Ok(key)
        );
    }

    let header = IdempotencyKey::from_header_value(data);
    assert_eq!(
        header.as_ref().ok().map(IdempotencyKey::as_str),
        model(data).as_deref(),
        "header value {data:?}: {header:?}"
    );
    if let Ok(key) = &header {
        let text = key.as_str();
        assert!((1..=255).contains(&text.len()), "{text:?}");
        assert!(text.bytes().all(|b| (0x20..=0x7e).contains(&b)), "{text:?}");
        assert_eq!(
            IdempotencyKey::from_header_value(&quote(text)).as_ref(),
            Ok(key)
        );
        // Parameters name no other record.
        let mut with_params = quote(text);
        with_params.extend_from_slice(b";v=1;x");
        assert_eq!(
            IdempotencyKey::from_header_value(&with_params).as_ref(),
            Ok(key)
        );
        // Two header lines joined by HTTP are several keys, never one of them.
        let mut joined = quote(text);
        joined.extend_from_slice(b", ");
        joined.extend_from_slice(data);
        assert_eq!(
            IdempotencyKey::from_header_value(&joined),
            Err(KeyError::SeveralKeys),
            "{joined:?}"
        );
    }

    // Injectivity: the input as four NUL-separated parts, scope A, key A, scope B, key B, the
    // keys read as header values (so quoted keys with spaces and escapes take part).
    let parts: Vec<&[u8]> = data.splitn(4, |&b| b == 0).collect();
    if let [scope_a, key_a, scope_b, key_b] = parts[..] {
        let (Ok(key_a), Ok(key_b)) = (
            IdempotencyKey::from_header_value(key_a),
            IdempotencyKey::from_header_value(key_b),
        ) else {
            return;
        };
        let scope_a = Scope::new(String::from_utf8_lossy(scope_a));
        let scope_b = Scope::new(String::from_utf8_lossy(scope_b));
        let store_a = StoreKey::derive("idem:", &scope_a, &key_a);
        let store_b = StoreKey::derive("idem:", &scope_b, &key_b);
        let same_pair = scope_a == scope_b && key_a == key_b;
        assert_eq!(
            store_a == store_b,
            same_pair,
            "{scope_a:?}/{key_a:?} and {scope_b:?}/{key_b:?} -> {store_a:?} / {store_b:?}"
        );
    }
});
