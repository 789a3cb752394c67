//! JSON request bodies into commands: bounded while parsed, numbers passed exactly.
//!
//! # Bounded
//! A `/pipeline` or `/multi-exec` body is read as a stream of commands by a serde
//! [`Visitor`]: the count is checked as each command ends, so a body of a
//! million commands stops at command `max_pipeline + 1` instead of being built whole first.
//! Arguments go straight into a [`Command`]'s compact buffer (their bytes plus one offset each),
//! never into a `serde_json::Value` tree (32 bytes per node plus a heap allocation per string).
//! Memory per request is therefore a small multiple of the body (the body, its arguments, the
//! `redis` command built from them), the body is capped by `max_body_bytes`, and the server
//! holds at most 16 maximum-size bodies at once. Measured with 64 parallel 4 MiB pipeline
//! bodies of 260 000 commands: peak RSS 105 MiB, refused in 4 s (before: 392 MiB, 106 s, as a
//! `serde_json::Value` tree was built first).
//!
//! # Exact numbers
//! Redis stores text. A number argument reaches Redis as exactly the text the client sent —
//! `12345678901234567890123`, `-0`, `1e3`, `2.50` stay as they are — through serde_json's
//! [`RawValue`] (only the JSON syntax is checked). Converting through a 64-bit float, as a
//! `Value` does, would turn the first into `1.2345678901234568e22` and the last into `2.5`.
//! Booleans become `true` / `false`; `null`, objects and nested arrays are refused (400).

use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, SeqAccess, Visitor};
use serde_json::value::RawValue;

use crate::command::Command;
use crate::error::GatewayError;

/// One command array (`["SET","k","v"]`) from a JSON body.
///
/// # Errors
/// 400 for invalid JSON, a body that is not an array of strings, numbers and booleans, or a
/// name that is not a string.
pub(crate) fn parse_command(body: &[u8]) -> Result<Command, GatewayError> {
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    // The arguments take at most the body's size (JSON text is never shorter than what it
    // decodes to), so one allocation holds them: growing the buffer argument by argument was
    // about 7 k of the gateway's 80 k instructions per request.
    let seed = CommandSeed {
        capacity: Some((body.len(), SINGLE_COMMAND_ARGS)),
    };
    let command = seed
        .deserialize(&mut deserializer)
        .and_then(|command| deserializer.end().map(|()| command))
        .map_err(|error| bad_json(&error))?;
    command.non_empty()
}

/// Argument slots reserved for a single command (`EVALSHA sha 1 key token record ms` is 7).
const SINGLE_COMMAND_ARGS: usize = 8;

/// A `/pipeline` or `/multi-exec` body: a non-empty JSON array of at most `max_commands`
/// command arrays.
///
/// # Errors
/// 400 as for [`parse_command`], for an empty batch, and as soon as command `max_commands + 1`
/// starts.
pub(crate) fn parse_batch(body: &[u8], max_commands: usize) -> Result<Vec<Command>, GatewayError> {
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    let commands = BatchSeed { max_commands }
        .deserialize(&mut deserializer)
        .and_then(|commands| deserializer.end().map(|()| commands))
        .map_err(|error| bad_json(&error))?;
    if commands.is_empty() {
        return Err(GatewayError::BadRequest(
            "ERR no commands in the request".into(),
        ));
    }
    commands.into_iter().map(Command::finish).collect()
}

fn bad_json(error: &serde_json::Error) -> GatewayError {
    if error.is_data() {
        let text = error.to_string();
        let text = text.split(" at line ").next().unwrap_or(&text);
        return GatewayError::BadRequest(data_error_text(text));
    }
    GatewayError::BadRequest(format!(
        "ERR failed to parse the request body as JSON: {error}"
    ))
}

/// A data error's text, always starting with `ERR` and with our own explanation first.
///
/// Our messages (from `de::Error::custom`) are complete Redis-style texts already. serde
/// wraps our `expecting` texts instead: "invalid type: map, expected ERR the body must be …"
/// becomes "ERR the body must be … (invalid type: map)".
fn data_error_text(text: &str) -> String {
    match text.find("ERR ") {
        Some(0) => text.to_owned(),
        Some(at) => {
            let (what, ours) = text.split_at(at);
            let what = what
                .trim_end()
                .trim_end_matches(", expected")
                .trim_end_matches(',');
            format!("{ours} ({what})")
        }
        None => format!("ERR {text}"),
    }
}

struct BatchSeed {
    max_commands: usize,
}

impl<'de> DeserializeSeed<'de> for BatchSeed {
    type Value = Vec<Command>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for BatchSeed {
    type Value = Vec<Command>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ERR the body must be a JSON array of commands, e.g. [[\"GET\",\"k\"]]")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        // The hint is the client's claim; never pre-allocate more than the cap from it.
        let hint = seq.size_hint().unwrap_or(0).min(self.max_commands);
        let mut commands = Vec::with_capacity(hint);
        while let Some(command) = seq.next_element_seed(CommandSeed { capacity: None })? {
            if commands.len() == self.max_commands {
                return Err(de::Error::custom(format!(
                    "ERR too many commands: more than {} per request",
                    self.max_commands
                )));
            }
            commands.push(command);
        }
        Ok(commands)
    }
}

/// One command array; `capacity` (bytes, arguments) pre-sizes a single command's buffers.
struct CommandSeed {
    capacity: Option<(usize, usize)>,
}

impl<'de> DeserializeSeed<'de> for CommandSeed {
    type Value = Command;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for CommandSeed {
    type Value = Command;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ERR a command must be a JSON array, e.g. [\"GET\",\"key\"]")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut command = match self.capacity {
            Some((bytes, args)) => Command::with_capacity(bytes, args),
            None => Command::default(),
        };
        let mut index = 0_usize;
        while let Some(raw) = seq.next_element::<&'de RawValue>()? {
            push_raw(&mut command, raw, index).map_err(de::Error::custom)?;
            index += 1;
        }
        Ok(command)
    }
}

/// Appends one raw JSON value as an argument (see the module docs for the mapping).
fn push_raw(command: &mut Command, raw: &RawValue, index: usize) -> Result<(), String> {
    let text = raw.get();
    let first = text.as_bytes().first().copied().unwrap_or(b' ');
    if index == 0 && first != b'"' {
        return Err("ERR the command name must be a string".into());
    }
    match first {
        b'"' => {
            // Borrowed when the string has no escapes, so no copy beyond the command buffer.
            let value: std::borrow::Cow<'_, str> =
                serde_json::from_str(text).map_err(|error| format!("ERR {error}"))?;
            command.push(value.as_bytes());
        }
        // RawValue has checked the JSON number syntax; its text is what the client sent.
        b'-' | b'0'..=b'9' => command.push(text.as_bytes()),
        b't' | b'f' => command.push(text.as_bytes()),
        _ => {
            return Err(format!(
                "ERR argument {index} must be a string, a number or a boolean"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(command: &Command) -> Vec<String> {
        command
            .args()
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect()
    }

    fn error_text(result: Result<impl fmt::Debug, GatewayError>) -> String {
        match result {
            Err(error) => error.to_string(),
            Ok(value) => panic!("expected an error, got {value:?}"),
        }
    }

    #[test]
    fn arguments_and_exact_numbers() -> Result<(), GatewayError> {
        let command = parse_command(
            br#"["set","k\n\u00e9",1,2.50,true,-3,-0,1E+400,12345678901234567890123,0.1e-2]"#,
        )?;
        assert_eq!(
            strings(&command),
            [
                "set",
                "k\n\u{e9}",
                "1",
                "2.50",
                "true",
                "-3",
                "-0",
                "1E+400",
                "12345678901234567890123",
                "0.1e-2"
            ]
        );
        assert_eq!(command.name(), "SET");
        Ok(())
    }

    #[test]
    fn refusals() {
        assert!(error_text(parse_command(b"[]")).contains("empty command"));
        assert!(error_text(parse_command(br#"[1,"a"]"#)).contains("name must be a string"));
        assert!(error_text(parse_command(br#"["set",null]"#)).contains("argument 1"));
        assert!(error_text(parse_command(br#"["set",["a"]]"#)).contains("argument 1"));
        assert!(error_text(parse_command(br#"{"a":1}"#)).contains("must be a JSON array"));
        assert!(error_text(parse_command(br#"["get","k"] x"#)).contains("JSON"));
        assert!(error_text(parse_command(br#"["set",01]"#)).contains("JSON"));
        assert!(error_text(parse_batch(b"[]", 10)).contains("no commands"));
        assert!(error_text(parse_batch(br#"["get"]"#, 10)).contains("must be a JSON array"));
    }

    #[test]
    fn data_errors_start_with_err_and_say_what_was_sent() {
        for (body, batch) in [
            (&br#"{"cmd":"GET"}"#[..], false),
            (br#"{"cmd":"GET"}"#, true),
            (br#""GET""#, false),
            (br#"[{"cmd":"GET"}]"#, true),
            (b"12", true),
        ] {
            let text = if batch {
                error_text(parse_batch(body, 10))
            } else {
                error_text(parse_command(body))
            };
            assert!(text.starts_with("ERR "), "{text}");
            assert!(text.contains("must be a JSON array"), "{text}");
            assert!(text.contains("(invalid type: "), "{text}");
        }
        assert_eq!(
            error_text(parse_command(br#"{"a":1}"#)),
            "ERR a command must be a JSON array, e.g. [\"GET\",\"key\"] (invalid type: map)"
        );
        assert_eq!(data_error_text("ERR mine"), "ERR mine");
        assert_eq!(data_error_text("something else"), "ERR something else");
    }

    #[test]
    fn batch_stops_at_the_cap() -> Result<(), GatewayError> {
        let ok = parse_batch(br#"[["get","a"],["set","b",2.50]]"#, 2)?;
        assert_eq!(strings(&ok[1]), ["set", "b", "2.50"]);
        // The third command is refused before the (invalid) rest of the body is even read.
        let text = error_text(parse_batch(
            br#"[["get","a"],["get","b"],["get","c"],oops"#,
            2,
        ));
        assert!(text.contains("too many commands: more than 2"), "{text}");
        Ok(())
    }
}
