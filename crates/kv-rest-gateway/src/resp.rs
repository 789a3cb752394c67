//! Redis replies as JSON, optionally with every string base64-encoded
//! (`Upstash-Encoding: base64`).
//!
//! The mapping follows RESP2 as the hosted service returns it: nil → `null`, integers →
//! numbers, simple and bulk strings → strings, arrays → arrays (recursively). RESP3-only types,
//! which appear only if the Redis URL asks for RESP3, are folded into their RESP2 shapes: maps
//! into flat `[k1, v1, k2, v2, …]` arrays, sets into arrays, doubles and big numbers into
//! strings (big numbers in their debug form), booleans into `1` / `0`.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use redis::Value;
use serde_json::Value as Json;

use crate::error::server_error_text;

/// How strings in a reply are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Encoding {
    /// As UTF-8 text; invalid UTF-8 becomes U+FFFD.
    Text,
    /// Base64 (standard alphabet, padded) — except the status reply `OK`.
    Base64,
}

impl Encoding {
    fn string(self, bytes: &[u8]) -> Json {
        match self {
            Self::Text => Json::String(String::from_utf8_lossy(bytes).into_owned()),
            Self::Base64 => Json::String(STANDARD.encode(bytes)),
        }
    }
}

/// One reply item as the protocol wants it: `{"result": …}` or `{"error": …}`.
pub(crate) fn item(value: &Value, encoding: Encoding) -> Json {
    match value {
        Value::ServerError(error) => serde_json::json!({ "error": server_error_text(error) }),
        other => serde_json::json!({ "result": to_json(other, encoding) }),
    }
}

/// The body `{"result": …}` of one reply, written without building a `serde_json::Value`
/// for the common shapes (null, integers, `OK`, text strings: a record is written from the
/// reply's own bytes when they are UTF-8); other shapes go through [`to_json`].
///
/// # Errors
/// Never expected (serde_json's signature: writing into a `Vec` does not fail).
pub(crate) fn result_body(value: &Value, encoding: Encoding) -> Result<Vec<u8>, serde_json::Error> {
    let mut out = Vec::with_capacity(match value {
        Value::BulkString(bytes) => bytes.len() + bytes.len() / 4 + 16,
        _ => 32,
    });
    out.extend_from_slice(b"{\"result\":");
    match (value, encoding) {
        (Value::Nil, _) => out.extend_from_slice(b"null"),
        (Value::Int(n), _) => serde_json::to_writer(&mut out, n)?,
        (Value::Okay, _) => out.extend_from_slice(b"\"OK\""),
        (Value::BulkString(bytes), Encoding::Text) => {
            serde_json::to_writer(&mut out, &*String::from_utf8_lossy(bytes))?;
        }
        (other, _) => serde_json::to_writer(&mut out, &to_json(other, encoding))?,
    }
    out.push(b'}');
    Ok(out)
}

/// A reply value as JSON.
pub(crate) fn to_json(value: &Value, encoding: Encoding) -> Json {
    match value {
        Value::Nil => Json::Null,
        Value::Int(n) => Json::from(*n),
        Value::BulkString(bytes) => encoding.string(bytes),
        // The status reply OK stays readable in both encodings: the official clients keep
        // exactly "OK" and decode every other string.
        Value::Okay => Json::String("OK".into()),
        Value::SimpleString(text) => encoding.string(text.as_bytes()),
        Value::Array(items) | Value::Set(items) => array(items, encoding),
        Value::Push { data, .. } => array(data, encoding),
        Value::Map(pairs) => Json::Array(
            pairs
                .iter()
                .flat_map(|(k, v)| [to_json(k, encoding), to_json(v, encoding)])
                .collect(),
        ),
        Value::Attribute { data, .. } => to_json(data, encoding),
        Value::Double(d) => encoding.string(d.to_string().as_bytes()),
        Value::Boolean(b) => Json::from(i64::from(*b)),
        Value::VerbatimString { text, .. } => encoding.string(text.as_bytes()),
        // An error nested inside an array (e.g. a Lua table holding an error reply): errors are
        // never encoded.
        Value::ServerError(error) => Json::String(server_error_text(error)),
        // Big numbers (RESP3 only; their payload type depends on a `redis` feature) and any
        // variant added later (`Value` is non-exhaustive): render the debug form, never fail.
        other => encoding.string(format!("{other:?}").as_bytes()),
    }
}

fn array(items: &[Value], encoding: Encoding) -> Json {
    Json::Array(items.iter().map(|v| to_json(v, encoding)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn text_mapping() {
        let value = Value::Array(vec![
            Value::Nil,
            Value::Int(-4),
            Value::BulkString(b"hi".to_vec()),
            Value::BulkString(vec![0xff, b'a']),
            Value::Array(vec![Value::Okay, Value::SimpleString("PONG".into())]),
        ]);
        assert_eq!(
            to_json(&value, Encoding::Text),
            json!([null, -4, "hi", "\u{fffd}a", ["OK", "PONG"]])
        );
    }

    #[test]
    fn base64_mapping() {
        let value = Value::Array(vec![
            Value::Nil,
            Value::Int(7),
            Value::BulkString(b"OK".to_vec()),
            Value::Okay,
            Value::SimpleString("PONG".into()),
            Value::Array(vec![Value::BulkString(vec![0xff])]),
        ]);
        assert_eq!(
            to_json(&value, Encoding::Base64),
            json!([null, 7, "T0s=", "OK", "UE9ORw==", ["/w=="]])
        );
    }

    #[test]
    fn result_bodies_match_the_value_form() {
        let values = [
            Value::Nil,
            Value::Int(-7),
            Value::Okay,
            Value::BulkString(br#"{"v":1,"t":"a\"b"}"#.to_vec()),
            Value::BulkString(vec![0xff, b'a', b'\n']),
            Value::SimpleString("PONG".into()),
            Value::Array(vec![Value::Int(1), Value::BulkString(b"x".to_vec())]),
        ];
        for encoding in [Encoding::Text, Encoding::Base64] {
            for value in &values {
                let written: Json =
                    serde_json::from_slice(&result_body(value, encoding).unwrap()).unwrap();
                assert_eq!(
                    written,
                    json!({ "result": to_json(value, encoding) }),
                    "{value:?}"
                );
            }
        }
    }

    #[test]
    fn resp3_shapes() {
        let map = Value::Map(vec![(Value::BulkString(b"a".to_vec()), Value::Int(1))]);
        assert_eq!(to_json(&map, Encoding::Text), json!(["a", 1]));
        assert_eq!(to_json(&Value::Double(1.5), Encoding::Text), json!("1.5"));
        assert_eq!(to_json(&Value::Boolean(true), Encoding::Text), json!(1));
    }
}
