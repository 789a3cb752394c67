//! breaker13: `parse_kill_switch` with whitespace and Unicode tricks. `str::trim` removes
//! Unicode white space (NBSP, NEL, ideographic space), so those around an accepted spelling
//! are read as that spelling; look-alikes, zero-width characters and a BOM are refused.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use idempotency_core::{ConfigError, parse_kill_switch};

#[derive(Debug, PartialEq)]
enum Reading {
    ChecksOff,
    ChecksOn,
    Refused,
}

fn reading(value: &str) -> Reading {
    match parse_kill_switch(value) {
        Ok(true) => Reading::ChecksOff,
        Ok(false) => Reading::ChecksOn,
        Err(ConfigError::KillSwitchValue { value: reported }) => {
            assert_eq!(reported, value, "the refusal carries the value as given");
            Reading::Refused
        }
        Err(other) => panic!("{value:?}: {other:?}"),
    }
}

#[test]
fn unicode_and_whitespace_tricks() {
    use Reading::*;
    for (value, expected) in [
        // A CRLF .env file, tabs, Unicode white space: trimmed.
        ("true\r", ChecksOff),
        ("\ttrue\r\n", ChecksOff),
        ("\u{a0}yes\u{a0}", ChecksOff),
        ("1\u{3000}", ChecksOff),
        ("\u{85}false", ChecksOn),
        // Only white space: as empty, checks on.
        ("\u{a0}", ChecksOn),
        ("\r\n", ChecksOn),
        // Not white space, or not ASCII: refused, never read as either.
        ("true\u{200b}", Refused),
        ("\u{feff}true", Refused),
        ("\u{ff54}rue", Refused),
        ("TRU\u{0395}", Refused),
        ("ye\u{17f}", Refused),
        ("t r u e", Refused),
        ("tr\u{0}ue", Refused),
        ("'true'", Refused),
        ("true;", Refused),
        ("yes please", Refused),
        ("no!", Refused),
        ("00", Refused),
        ("+1", Refused),
        ("1.0", Refused),
        ("0x1", Refused),
        ("nope", Refused),
        ("none", Refused),
        ("null", Refused),
        ("disable", Refused),
        ("checks_off", Refused),
        ("t", Refused),
        ("f", Refused),
    ] {
        assert_eq!(reading(value), expected, "{value:?}");
    }
}

/// A refused value with control bytes and quotes is shown escaped in the message: it cannot
/// forge log lines.
#[test]
fn the_refusal_escapes_the_value() {
    let message = parse_kill_switch("x\nINFO checks \"off\"\u{1b}[2J")
        .unwrap_err()
        .to_string();
    assert!(!message.contains('\n'), "{message}");
    assert!(!message.contains('\u{1b}'), "{message}");
}
