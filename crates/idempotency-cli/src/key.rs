//! The KEY argument of `inspect`, `release` and `delete`: which client key it names, and the
//! argument that names a key again (what `inspect` prints).
//!
//! An operator has a key at hand in one of two forms:
//!
//! - the **stored** key text: the key as the store holds it after the store key's
//!   `prefix + scope + ":"` (what `inspect` shows), 1..=255 bytes of printable ASCII, spaces
//!   included and kept as typed;
//! - the **header** value: the `Idempotency-Key` field value as the client sent it on the wire,
//!   an RFC 8941 sf-string (`"a b"`) or a bare token, parsed exactly as the HTTP layer parses it
//!   (`IdempotencyKey::from_header_value`).
//!
//! The two forms differ only for an argument that starts with `"` (spaces before it aside): the
//! stored key `"a"` (quotes included; the layer stores it for the header `"\"a\""`) and the
//! header value `"a"` (the key `a`) are different records. Such an argument is never guessed:
//! when both readings are valid and differ it is refused until `--key-form` says which one is
//! meant. Every other argument is read the one way it can be read.

use clap::ValueEnum;
use idempotency::{IdempotencyKey, KeyError, MAX_KEY_LEN};

use crate::error::CliError;

/// How to read the KEY argument (`--key-form`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum KeyForm {
    /// The key text as stored and as `inspect` shows it (spaces and quotes are part of the key).
    Stored,
    /// The `Idempotency-Key` header value as sent on the wire: `"a b"` (an RFC 8941 sf-string,
    /// `\"` and `\\` its only escapes) or a bare token.
    Header,
}

/// The client key named by `arg`, read in `form`, or without `--key-form` (`None`) in the one
/// form it can be read in.
///
/// Without `--key-form`: an argument that does not start with `"` (spaces before it aside) is
/// the stored key text (for a key without spaces this is also its bare header form); one that
/// does is read as a header value when that is its only valid reading (a stored text cannot be
/// longer than 255 bytes), and refused when it is also valid stored text naming another key.
///
/// # Errors
/// - [`CliError::AmbiguousKey`] (exit 2): both readings are valid and name different keys;
/// - [`CliError::QuotedKey`]: without `--key-form`, an argument starting with `"` that is not a
///   valid header value;
/// - [`CliError::Key`] and [`CliError::KeyByte`]: the argument is not valid in the form asked
///   for (empty, too long, a byte outside printable ASCII, a malformed sf-string).
pub(crate) fn parse_key(arg: &str, form: Option<KeyForm>) -> Result<IdempotencyKey, CliError> {
    match form {
        Some(KeyForm::Stored) => stored(arg),
        Some(KeyForm::Header) => {
            IdempotencyKey::from_header_value(arg.as_bytes()).map_err(CliError::Key)
        }
        None if !looks_quoted(arg) => stored(arg),
        None => {
            let header = IdempotencyKey::from_header_value(arg.as_bytes()).map_err(|source| {
                CliError::QuotedKey {
                    argument: arg.to_owned(),
                    source,
                }
            })?;
            match stored(arg) {
                Ok(text) if text != header => Err(CliError::AmbiguousKey {
                    argument: arg.to_owned(),
                    stored: text.as_str().to_owned(),
                    header: header.as_str().to_owned(),
                }),
                _ => Ok(header),
            }
        }
    }
}

/// Whether a header parser reads `arg` as an sf-string: its first byte after optional
/// whitespace (space, tab) is `"`.
fn looks_quoted(arg: &str) -> bool {
    arg.trim_start_matches([' ', '\t']).starts_with('"')
}

/// `arg` as the stored key text: 1..=255 bytes of printable ASCII (space included), kept
/// exactly.
fn stored(arg: &str) -> Result<IdempotencyKey, CliError> {
    if arg.is_empty() {
        return Err(CliError::Key(KeyError::Empty));
    }
    if arg.len() > MAX_KEY_LEN {
        return Err(CliError::Key(KeyError::TooLong { len: arg.len() }));
    }
    if let Some(position) = arg.bytes().position(|b| !(0x20..=0x7e).contains(&b)) {
        return Err(CliError::KeyByte {
            byte: arg.as_bytes()[position],
            position,
        });
    }
    // A key with spaces only comes from the quoted header form (`IdempotencyKey::new` refuses
    // spaces), so quote the text (escaping `\` and `"`, RFC 8941's only escapes) and parse it as
    // the layer does: the key is exactly the one the layer stored.
    IdempotencyKey::from_header_value(header_value(arg).as_bytes()).map_err(CliError::Key)
}

/// The `Idempotency-Key` sf-string that carries the key text `text` (`a "b"` → `"a \"b\""`).
fn header_value(text: &str) -> String {
    let mut quoted = String::with_capacity(text.len() + 8);
    quoted.push('"');
    for c in text.chars() {
        if matches!(c, '"' | '\\') {
            quoted.push('\\');
        }
        quoted.push(c);
    }
    quoted.push('"');
    quoted
}

/// The command-line words that name `key` again, ready to paste into a POSIX shell at the end
/// of `idempotency inspect|release|delete SCOPE`: the stored key text, shell-quoted when it
/// holds anything but `A-Z a-z 0-9 - _ . / : @ % + = ,`; preceded by `--key-form stored` when
/// the text alone would be refused as ambiguous, and by `--` when it starts with `-` (so it is
/// not read as an option: paste it last).
pub(crate) fn key_argument(key: &IdempotencyKey) -> String {
    let text = key.as_str();
    let mut out = String::with_capacity(text.len() + 24);
    if parse_key(text, None).ok().as_ref() != Some(key) {
        out.push_str("--key-form stored ");
    }
    if text.starts_with('-') {
        out.push_str("-- ");
    }
    out.push_str(&shell_quote(text));
    out
}

/// `word` as one POSIX shell word: bare when every byte is plainly literal to the shell,
/// otherwise in single quotes (inside which nothing is special), each `'` written `'\''`.
pub(crate) fn shell_quote(word: &str) -> String {
    let plain = |b: u8| b.is_ascii_alphanumeric() || b"-_./:@%+=,".contains(&b);
    if !word.is_empty() && word.bytes().all(plain) {
        return word.to_owned();
    }
    format!("'{}'", word.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auto(arg: &str) -> Result<String, CliError> {
        parse_key(arg, None).map(|k| k.as_str().to_owned())
    }

    fn read(arg: &str, form: KeyForm) -> Result<String, CliError> {
        parse_key(arg, Some(form)).map(|k| k.as_str().to_owned())
    }

    fn header(value: &[u8]) -> IdempotencyKey {
        IdempotencyKey::from_header_value(value).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn every_key_the_layer_accepts_is_reachable_in_header_and_stored_form() {
        // (header value the client sent, stored key text)
        let cases: &[(&[u8], &str)] = &[
            (b"8e03978e-40d5", "8e03978e-40d5"),
            (br#""8e03978e-40d5""#, "8e03978e-40d5"),
            (br#""a b""#, "a b"),
            (br#"" lead and trail ""#, " lead and trail "),
            (br#""a \"b\" \\ c""#, r#"a "b" \ c"#),
            (br#""\"k""#, r#""k"#),
            (br#""\"a\"""#, r#""a""#),
            (b"k\"", "k\""),
        ];
        for &(value, text) in cases {
            assert_eq!(header(value).as_str(), text);
            let as_header = std::str::from_utf8(value).unwrap_or_default();
            assert_eq!(
                read(as_header, KeyForm::Header).ok().as_deref(),
                Some(text),
                "{as_header}"
            );
            assert_eq!(
                read(text, KeyForm::Stored).ok().as_deref(),
                Some(text),
                "{text}"
            );
        }
    }

    #[test]
    fn without_the_flag_an_argument_is_read_the_one_way_it_can_be() {
        // Not starting with `"`: the stored text, spaces and inner quotes kept.
        for text in ["order-1", "a b", "  a  ", r#"a "b""#, r#"k""#, r"\", " "] {
            assert_eq!(auto(text).ok().as_deref(), Some(text), "{text:?}");
        }
        // Starting with `"` but too long for a stored text (257 bytes with its quotes): only the
        // header reading is valid.
        let long = format!("\"{}\"", "k".repeat(MAX_KEY_LEN));
        assert_eq!(auto(&long).ok(), Some("k".repeat(MAX_KEY_LEN)));
    }

    #[test]
    fn an_argument_valid_in_both_forms_is_refused_naming_both_readings() {
        for (arg, as_stored, as_header) in [
            (r#""a""#, r#""a""#, "a"),
            (r#""a b""#, r#""a b""#, "a b"),
            (r#""\"a\"""#, r#""\"a\"""#, r#""a""#),
            (r#" "a""#, r#" "a""#, "a"),
        ] {
            match parse_key(arg, None) {
                Err(
                    ref error @ CliError::AmbiguousKey {
                        ref argument,
                        ref stored,
                        ref header,
                    },
                ) => {
                    assert_eq!(
                        (argument.as_str(), stored.as_str(), header.as_str()),
                        (arg, as_stored, as_header)
                    );
                    assert_eq!(error.exit_code(), 2);
                    let text = error.to_string();
                    for part in [
                        format!("`{as_stored}`"),
                        format!("`{as_header}`"),
                        "--key-form stored".into(),
                        "--key-form header".into(),
                    ] {
                        assert!(text.contains(&part), "{part} not in: {text}");
                    }
                }
                other => panic!("{arg:?}: {other:?}"),
            }
            assert_eq!(read(arg, KeyForm::Stored).ok().as_deref(), Some(as_stored));
            assert_eq!(read(arg, KeyForm::Header).ok().as_deref(), Some(as_header));
        }
    }

    #[test]
    fn anything_else_is_refused_with_exit_code_2() {
        let long = "k".repeat(MAX_KEY_LEN + 1);
        for bad in [
            "",
            "a\tb",
            "caf\u{e9}",
            "line\nbreak",
            long.as_str(),
            r#""open"#,
            r#""a" "b""#,
            r#""bad \x escape""#,
            r#""""#,
        ] {
            match parse_key(bad, None) {
                Err(error) => assert_eq!(error.exit_code(), 2, "{bad:?}: {error}"),
                Ok(k) => panic!("{bad:?} accepted as {k:?}"),
            }
        }
        for (bad, form) in [
            ("a b", KeyForm::Header),
            ("caf\u{e9}", KeyForm::Stored),
            ("caf\u{e9}", KeyForm::Header),
            ("", KeyForm::Stored),
            (long.as_str(), KeyForm::Stored),
        ] {
            match parse_key(bad, Some(form)) {
                Err(error) => assert_eq!(error.exit_code(), 2, "{bad:?} {form:?}: {error}"),
                Ok(k) => panic!("{bad:?} {form:?} accepted as {k:?}"),
            }
        }
        let tab = auto("a\tb")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(tab.contains("0x09 at position 1"), "{tab}");
        // A malformed quoted value says how to give it as stored text instead.
        let open = auto(r#""open"#)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(open.contains("--key-form stored"), "{open}");
        assert!(auto(&"k".repeat(MAX_KEY_LEN)).is_ok());
    }

    #[test]
    fn shell_words_are_quoted_only_when_needed() {
        assert_eq!(shell_quote("order-1"), "order-1");
        assert_eq!(
            shell_quote("8e03978e-40d5/a:b@c%d+e=f,g"),
            "8e03978e-40d5/a:b@c%d+e=f,g"
        );
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote(r#""a""#), r#"'"a"'"#);
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote("$HOME"), "'$HOME'");
        assert_eq!(shell_quote("~x"), "'~x'");
        assert_eq!(shell_quote(""), "''");
    }

    #[test]
    fn the_key_argument_names_the_same_key_without_guessing() {
        let case = |text: &str, shown: &str| {
            let key = parse_key(text, Some(KeyForm::Stored)).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(key_argument(&key), shown, "{text:?}");
        };
        case("order-1", "order-1");
        case("a b", "'a b'");
        case(r#""a""#, r#"--key-form stored '"a"'"#);
        case(r#" "a""#, r#"--key-form stored ' "a"'"#);
        case(r#"a"b"#, r#"'a"b'"#);
        case("-k", "-- -k");
        case("--yes", "-- --yes");
        case("it's", r"'it'\''s'");
        // Refused without the flag (a malformed header value), so the flag is shown.
        case(r#""open"#, r#"--key-form stored '"open'"#);
    }
}
