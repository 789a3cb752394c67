//! breaker13: `IdempotencyKey::from_header_value` against an RFC 8941 reading of the value
//! (an Item whose bare item is a String, parameters checked and dropped), plus the bare-key
//! rules: odd whitespace, commas inside quotes, every parameter value type, long parameter
//! lists (time), the 255/256-byte boundary with parameters, non-ASCII.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use idempotency_core::{IdempotencyKey, KeyError};

fn read(value: &str) -> Result<String, KeyError> {
    IdempotencyKey::from_header_value(value.as_bytes()).map(|key| key.as_str().to_owned())
}

/// Values RFC 8941 parses as one String Item: the key is the String, whatever the parameters.
#[test]
fn rfc8941_items_name_their_string() {
    for (value, key) in [
        // Commas inside the string or a parameter's string are not list separators.
        (r#""a,b""#, "a,b"),
        (r#""a, b""#, "a, b"),
        (r#""a";p="x, y""#, "a"),
        (r#""a";p="x\", \"y""#, "a"),
        // Every bare-item type as a parameter value; boolean-true parameters; SP after `;`.
        (r#""a";p=1;q=-1;r=1.5;s=-123456789012.123"#, "a"),
        (r#""a";p=123456789012345;q=-123456789012345"#, "a"),
        (r#""a";p=tok/en:x;q=*t;r=T!#$%&'*+-.^_`|~"#, "a"),
        (r#""a";p=:aGk=:;q=:aGk:;r=::"#, "a"),
        (r#""a";p=?0;q=?1"#, "a"),
        (r#""a";p;q;r"#, "a"),
        (r#""a"; p=1;  q"#, "a"),
        (r#""a";*=1;a.b-c_d*=2"#, "a"),
        (r#""a";p=1;p=2"#, "a"),
        // Optional whitespace around the whole value (HTTP OWS: SP and HTAB).
        ("\t \"a\";p=1 \t", "a"),
        // Escapes.
        (r#""a\\b\"c""#, "a\\b\"c"),
    ] {
        assert_eq!(read(value).as_deref(), Ok(key), "{value}");
    }
}

/// Values RFC 8941 fails to parse as an Item, and lists: never a key.
#[test]
fn rfc8941_failures_are_refused() {
    for value in [
        // Parameter syntax.
        r#""a";"#,
        r#""a";P=1"#,
        r#""a";1p=1"#,
        r#""a";-p=1"#,
        "\"a\";\tp=1",
        r#""a" ;p=1"#,
        r#""a";p =1"#,
        r#""a";p= 1"#,
        r#""a";p="#,
        r#""a";p=?"#,
        r#""a";p=?2"#,
        r#""a";p=-"#,
        r#""a";p=1."#,
        r#""a";p=1.2345"#,
        r#""a";p=1234567890123456"#,
        r#""a";p=1234567890123.1"#,
        r#""a";p=:Y:"#,
        r#""a";p=:a=b=:"#,
        r#""a";p=:a!:"#,
        r#""a";p=:aGk="#,
        r#""a";p="open"#,
        r#""a";p="\x""#,
        r#""a";p=@1659578233"#,
        r#""a";p=%"x""#,
        r#""a";p=(1 2)"#,
        // Non-ASCII in the key, in a parameter string, in a token.
        "\"caf\u{e9}\"",
        "\"a\";p=\"caf\u{e9}\"",
        "\"a\";p=caf\u{e9}",
        // Whitespace that is not OWS.
        "\u{a0}\"a\"",
        "\"a\"\u{a0}",
        "\"a\"\r",
        "\"a\"\n",
        // After the item.
        r#""a"b"#,
        r#""a""b""#,
        r#""a";p=1"b""#,
    ] {
        let read = read(value);
        assert!(read.is_err(), "{value:?} read as {read:?}");
        assert_ne!(read, Err(KeyError::SeveralKeys), "{value:?}");
    }
    for list in [
        r#""a";p="x", "b""#,
        r#""a";p=1,"b""#,
        r#""a";p , "b""#,
        r#""a","#,
        "\"a\"\t,\t\"b\"",
    ] {
        assert_eq!(read(list), Err(KeyError::SeveralKeys), "{list}");
    }
}

/// The bare (Stripe-style) form: `a,b` is one key, `a, b` two; whitespace inside is refused.
#[test]
fn bare_keys_and_lists() {
    for (value, key) in [
        ("a,b", "a,b"),
        ("a,,b", "a,,b"),
        ("a,", "a,"),
        (" a,b\t", "a,b"),
    ] {
        assert_eq!(read(value).as_deref(), Ok(key), "{value:?}");
    }
    for list in ["a, b", "a ,b", "a\t,b", "a,\tb", "a, \"b\""] {
        assert_eq!(read(list), Err(KeyError::SeveralKeys), "{list:?}");
    }
    assert!(matches!(
        read("a b"),
        Err(KeyError::InvalidByte { byte: b' ', .. })
    ));
    assert!(matches!(
        read("a\u{a0}b"),
        Err(KeyError::InvalidByte { .. })
    ));
}

/// The 255-byte bound is on the unquoted key, with or without parameters and escapes.
#[test]
fn the_length_bound_with_parameters_and_escapes() {
    let k255 = "k".repeat(255);
    let k256 = "k".repeat(256);
    assert_eq!(read(&format!("\"{k255}\";p=1;q=\"v\"")).unwrap(), k255);
    assert_eq!(
        read(&format!("\"{k256}\";p=1")),
        Err(KeyError::TooLong { len: 256 })
    );
    // 254 + one escaped quote: 255 unescaped bytes (257 on the wire).
    let escaped = format!("\"{}\\\"\";p", "k".repeat(254));
    assert_eq!(read(&escaped).unwrap().len(), 255);
    let escaped = format!("\"{}\\\"\";p", "k".repeat(255));
    assert_eq!(read(&escaped), Err(KeyError::TooLong { len: 256 }));
    // Bare: parameters are part of the key, so they count.
    let bare = format!("{}{}", "k".repeat(251), ";p=1");
    assert_eq!(read(&bare).unwrap().len(), 255);
    let bare = format!("{}{}", "k".repeat(252), ";p=1");
    assert_eq!(read(&bare), Err(KeyError::TooLong { len: 256 }));
}

/// Very long parameter lists, strings and numbers: linear time (well under a second for 4 MB
/// even in a debug build), never a panic.
#[test]
fn long_values_take_linear_time() {
    let started = Instant::now();
    let params = format!("\"a\"{}", ";p=1".repeat(1 << 20));
    assert_eq!(read(&params).unwrap(), "a");
    let mixed = format!(
        "\"a\"{}",
        ";p=\"x\";q=:aGk=:;r=?1;s=t/k;u=-1.5;v".repeat(1 << 16)
    );
    assert_eq!(read(&mixed).unwrap(), "a");
    let long_param_string = format!("\"a\";p=\"{}\"", "x".repeat(4 << 20));
    assert_eq!(read(&long_param_string).unwrap(), "a");
    let long_bytes = format!("\"a\";p=:{}:", "QUJD".repeat(1 << 20));
    assert_eq!(read(&long_bytes).unwrap(), "a");
    let long_key = format!("\"{}\"", "k".repeat(4 << 20));
    assert!(matches!(read(&long_key), Err(KeyError::TooLong { .. })));
    let long_list = "a, ".repeat(1 << 20);
    assert_eq!(read(&long_list), Err(KeyError::SeveralKeys));
    let took = started.elapsed();
    assert!(took < Duration::from_secs(5), "took {took:?}");
}
