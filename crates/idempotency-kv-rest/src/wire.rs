//! The JSON on the wire, without a `serde_json::Value` tree on either side.
//!
//! A command is written straight from its arguments into the request body (`["SET","k",…]`),
//! and a reply body (`{"result": …}` or `{"error": …}`) is decoded in one pass into the answer
//! the store needs (null, an integer or a string). Before, a `Value` was built for each
//! command and each reply: about 12 k of the client's 92 k instructions per request (callgrind,
//! `examples/kv_ops.rs`).

use std::fmt;

use serde::de::{self, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

/// One argument of a command: a string, or a number (sent as a JSON number, as before).
#[derive(Clone, Copy, Debug)]
pub(crate) enum Arg<'a> {
    Str(&'a str),
    Int(u64),
}

impl Serialize for Arg<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Arg::Str(text) => serializer.serialize_str(text),
            Arg::Int(number) => serializer.serialize_u64(*number),
        }
    }
}

/// The JSON body of one command.
///
/// # Errors
/// Never for these argument types; the `Result` is serde_json's signature.
pub(crate) fn body(args: &[Arg<'_>]) -> Result<bytes::Bytes, serde_json::Error> {
    let size: usize = args
        .iter()
        .map(|arg| match arg {
            // Quotes and a comma; a record's text escapes its own quotes, hence the margin.
            Arg::Str(text) => text.len() + text.len() / 4 + 3,
            Arg::Int(_) => 21,
        })
        .sum();
    let mut out = Vec::with_capacity(size + 2);
    serde_json::to_writer(&mut out, args)?;
    Ok(out.into())
}

/// The `result` of a reply, in the shapes the store's commands produce.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Answer {
    /// `null`.
    Null,
    /// An integer that fits in an `i64`.
    Int(i64),
    /// A string.
    Text(String),
    /// Anything else (arrays, objects, floats, booleans): its JSON text, for error messages.
    Other(String),
}

impl Answer {
    /// The integer, if the answer is one.
    pub(crate) fn as_i64(&self) -> Option<i64> {
        match self {
            Answer::Int(number) => Some(*number),
            _ => None,
        }
    }

    fn from_value(value: Value) -> Self {
        match value {
            Value::Null => Answer::Null,
            Value::String(text) => Answer::Text(text),
            Value::Number(ref number) => number
                .as_i64()
                .map_or_else(|| Answer::Other(value.to_string()), Answer::Int),
            other => Answer::Other(other.to_string()),
        }
    }
}

/// Decoded in one pass over the body: strings and integers directly, anything else through a
/// `Value` for its text. (Capturing raw text first and decoding it again scanned a record
/// twice: 7 k instructions per reply.)
impl<'de> Deserialize<'de> for Answer {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(AnswerVisitor)
    }
}

struct AnswerVisitor;

impl<'de> Visitor<'de> for AnswerVisitor {
    type Value = Answer;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_unit<E: de::Error>(self) -> Result<Answer, E> {
        Ok(Answer::Null)
    }

    fn visit_none<E: de::Error>(self) -> Result<Answer, E> {
        Ok(Answer::Null)
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<Answer, E> {
        Ok(Answer::Text(text.to_owned()))
    }

    fn visit_string<E: de::Error>(self, text: String) -> Result<Answer, E> {
        Ok(Answer::Text(text))
    }

    fn visit_i64<E: de::Error>(self, number: i64) -> Result<Answer, E> {
        Ok(Answer::Int(number))
    }

    fn visit_u64<E: de::Error>(self, number: u64) -> Result<Answer, E> {
        Ok(i64::try_from(number).map_or_else(|_| Answer::Other(number.to_string()), Answer::Int))
    }

    fn visit_f64<E: de::Error>(self, number: f64) -> Result<Answer, E> {
        Ok(Answer::Other(Value::from(number).to_string()))
    }

    fn visit_bool<E: de::Error>(self, value: bool) -> Result<Answer, E> {
        Ok(Answer::Other(value.to_string()))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Answer, A::Error> {
        let value = Value::deserialize(de::value::SeqAccessDeserializer::new(seq))?;
        Ok(Answer::Other(value.to_string()))
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Answer, A::Error> {
        let value = Value::deserialize(de::value::MapAccessDeserializer::new(map))?;
        Ok(Answer::Other(value.to_string()))
    }
}

/// As JSON text (what error messages show).
impl fmt::Display for Answer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Answer::Null => f.write_str("null"),
            Answer::Int(number) => write!(f, "{number}"),
            Answer::Text(text) => write!(f, "{}", Value::from(text.as_str())),
            Answer::Other(json) => f.write_str(json),
        }
    }
}

/// A decoded reply body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Reply {
    /// `{"error": …}`: the error as text (a non-string error as its JSON text). Checked first,
    /// as before: a body with both fields is an error.
    Error(String),
    /// `{"result": …}` (also `"result": null`).
    Result(Answer),
    /// JSON, but neither of the two, or an object with a repeated `result` or `error` (which
    /// of the two is the answer is anyone's guess): its text.
    Neither(String),
}

/// The two fields of a reply object (other fields are skipped). Only an object decodes (a
/// derived `Deserialize` would also take an array as the fields in order).
struct Fields {
    result: Option<Answer>,
    error: Option<Answer>,
    /// `result` or `error` came more than once.
    repeated: bool,
}

impl<'de> Deserialize<'de> for Fields {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(FieldsVisitor)
    }
}

struct FieldsVisitor;

impl<'de> Visitor<'de> for FieldsVisitor {
    type Value = Fields;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Fields, A::Error> {
        let mut fields = Fields {
            result: None,
            error: None,
            repeated: false,
        };
        while let Some(key) = map.next_key::<Key>()? {
            let slot = match key {
                Key::Result => &mut fields.result,
                Key::Error => &mut fields.error,
                Key::Other => {
                    // Decoded, not skipped: serde_json checks a string's escapes and UTF-8
                    // only when it decodes it, and a reply that is not valid JSON text must
                    // fail as it always did (extra fields are rare: no cost on the usual path).
                    map.next_value::<Value>()?;
                    continue;
                }
            };
            if slot.is_some() {
                // Still decoded to the end: a body that is not JSON text is reported as such.
                fields.repeated = true;
                map.next_value::<Value>()?;
                continue;
            }
            // `Some` also for a `null` value, so `"result": null` differs from no `result`.
            *slot = Some(map.next_value::<Answer>()?);
        }
        Ok(fields)
    }
}

/// A key of the reply object, matched without allocating.
enum Key {
    Result,
    Error,
    Other,
}

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_str(KeyVisitor)
    }
}

struct KeyVisitor;

impl Visitor<'_> for KeyVisitor {
    type Value = Key;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a field name")
    }

    fn visit_str<E: de::Error>(self, key: &str) -> Result<Key, E> {
        Ok(match key {
            "result" => Key::Result,
            "error" => Key::Error,
            _ => Key::Other,
        })
    }
}

/// Decodes a reply body.
///
/// # Errors
/// The body is not JSON (or a string in it is not valid JSON text).
pub(crate) fn parse_reply(body: &[u8]) -> Result<Reply, serde_json::Error> {
    let fields = match serde_json::from_slice::<Fields>(body) {
        Ok(fields) => fields,
        // Not an object: decode it whole, as before.
        Err(_) => return serde_json::from_slice::<Value>(body).map(reply_from_value),
    };
    if fields.repeated {
        return Ok(Reply::Neither(String::from_utf8_lossy(body).into_owned()));
    }
    if let Some(error) = fields.error {
        return Ok(Reply::Error(match error {
            Answer::Text(text) => text,
            other => other.to_string(),
        }));
    }
    Ok(match fields.result {
        Some(result) => Reply::Result(result),
        None => Reply::Neither(String::from_utf8_lossy(body).into_owned()),
    })
}

fn reply_from_value(value: Value) -> Reply {
    match value {
        Value::Object(mut map) => {
            if let Some(error) = map.remove("error") {
                return Reply::Error(match error {
                    Value::String(text) => text,
                    other => other.to_string(),
                });
            }
            match map.remove("result") {
                Some(result) => Reply::Result(Answer::from_value(result)),
                None => Reply::Neither(Value::Object(map).to_string()),
            }
        }
        other => Reply::Neither(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_are_the_json_arrays_they_were() {
        let record = r#"{"v":1,"s":"p","t":"ab\"c"}"#;
        let sent = body(&[
            Arg::Str("SET"),
            Arg::Str("k\u{e9}\n"),
            Arg::Str(record),
            Arg::Str("PX"),
            Arg::Int(60_000),
        ])
        .unwrap();
        let expected = serde_json::json!(["SET", "k\u{e9}\n", record, "PX", 60_000]);
        assert_eq!(serde_json::from_slice::<Value>(&sent).unwrap(), expected);
    }

    #[test]
    fn replies_decode_to_the_same_answers() {
        let cases: &[(&str, Reply)] = &[
            (r#"{"result":null}"#, Reply::Result(Answer::Null)),
            (r#"{ "result" : 1 }"#, Reply::Result(Answer::Int(1))),
            (r#"{"result":-2}"#, Reply::Result(Answer::Int(-2))),
            (
                r#"{"result":"a\"b\u00e9"}"#,
                Reply::Result(Answer::Text("a\"b\u{e9}".into())),
            ),
            (
                r#"{"result":[1,"x"]}"#,
                Reply::Result(Answer::Other(r#"[1,"x"]"#.into())),
            ),
            (
                r#"{"result":1.5}"#,
                Reply::Result(Answer::Other("1.5".into())),
            ),
            (
                r#"{"result":18446744073709551615}"#,
                Reply::Result(Answer::Other("18446744073709551615".into())),
            ),
            (
                r#"{"error":"NOSCRIPT x"}"#,
                Reply::Error("NOSCRIPT x".into()),
            ),
            (
                r#"{"result":1,"error":{"code":7}}"#,
                Reply::Error(r#"{"code":7}"#.into()),
            ),
            (r#"{"other":1}"#, Reply::Neither(r#"{"other":1}"#.into())),
            ("[1,2]", Reply::Neither("[1,2]".into())),
            ("3", Reply::Neither("3".into())),
            // A repeated field: not an answer (the last one won before, silently).
            (
                r#"{"result":1,"result":2}"#,
                Reply::Neither(r#"{"result":1,"result":2}"#.into()),
            ),
            (
                r#"{"error":"a","result":1,"error":"b"}"#,
                Reply::Neither(r#"{"error":"a","result":1,"error":"b"}"#.into()),
            ),
        ];
        for (body, expected) in cases {
            assert_eq!(&parse_reply(body.as_bytes()).unwrap(), expected, "{body}");
        }
        assert!(parse_reply(b"<html>bad gateway</html>").is_err());
        assert!(parse_reply(b"").is_err());
        // Not JSON text anywhere in the body, extra fields included (as with a `Value`): a
        // lone surrogate escape, invalid UTF-8.
        for body in [
            &br#"{"result":1,"x":"\udc00"}"#[..],
            &br#"{"x":"\ud800","result":1}"#[..],
            &b"{\"result\":1,\"x\":\"\xff\"}"[..],
        ] {
            assert!(
                parse_reply(body).is_err(),
                "{}",
                String::from_utf8_lossy(body)
            );
            assert!(serde_json::from_slice::<Value>(body).is_err());
        }
    }

    #[test]
    fn answers_display_as_json() {
        assert_eq!(Answer::Text("a\"b".into()).to_string(), r#""a\"b""#);
        assert_eq!(Answer::Null.to_string(), "null");
        assert_eq!(Answer::Int(-3).to_string(), "-3");
    }
}
