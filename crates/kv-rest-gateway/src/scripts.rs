//! The Upstash-only script flag `allow-key-locking`, made to work on stock Redis.
//!
//! On the hosted service a script whose first line is `#!lua flags=allow-key-locking` locks only
//! its KEYS instead of the whole database. Stock Redis rejects the unknown flag, so the gateway
//! removes it before the script reaches Redis. That changes the script text and so its SHA-1,
//! while clients keep using the SHA-1 of the text they sent. The [`ScriptRegistry`] therefore
//! remembers `sha1(flagged text) → sha1(text sent to Redis)`:
//!
//! - `EVAL` / `EVAL_RO` of a flagged script: strip, remember the pair, run the stripped text
//!   (Redis caches it, so a later `EVALSHA` of the stripped SHA finds it).
//! - `SCRIPT LOAD` of a flagged script: strip, remember, load; reply with the **flagged** SHA,
//!   which is what the client computed.
//! - `EVALSHA` / `EVALSHA_RO` / `SCRIPT EXISTS`: translate known flagged SHAs. An unknown SHA
//!   passes unchanged, so Redis answers `NOSCRIPT` and the client falls back to `EVAL` — also
//!   after a gateway restart or a `SCRIPT FLUSH`, when the map and Redis's cache disagree.
//!
//! The flag line is replaced by an empty line rather than removed, so line numbers in Lua error
//! messages match the text the client sent. Other flags on the same line are kept
//! (`#!lua flags=allow-key-locking,no-writes` → `#!lua flags=no-writes`).

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use redis::Value;

use crate::command::Command;

/// The Upstash-only flag removed from script shebangs.
pub(crate) const ALLOW_KEY_LOCKING: &str = "allow-key-locking";

/// The map is a cache of a pure function of the script text; cap it so a client that sends
/// endless distinct scripts cannot grow it without bound.
const MAX_ENTRIES: usize = 10_000;

/// What to do with a command's reply after it ran.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum ReplyFix {
    /// Pass the reply through.
    None,
    /// Replace a successful reply by this SHA (the flagged text's, for `SCRIPT LOAD`).
    Sha(String),
}

impl ReplyFix {
    pub(crate) fn apply(&self, value: Value) -> Value {
        match (self, value) {
            (_, error @ Value::ServerError(_)) => error,
            (Self::Sha(sha), _) => Value::BulkString(sha.clone().into_bytes()),
            (Self::None, value) => value,
        }
    }
}

/// Flagged-script SHA → SHA of the text actually loaded into Redis.
#[derive(Debug, Default)]
pub(crate) struct ScriptRegistry {
    translations: Mutex<HashMap<String, String>>,
}

impl ScriptRegistry {
    /// Rewrites scripting commands in place (see the module docs) and says how to fix the reply.
    pub(crate) fn translate(&self, command: &mut Command) -> ReplyFix {
        match command.name().as_str() {
            "EVAL" | "EVAL_RO" => {
                self.strip_arg(command, 1);
                ReplyFix::None
            }
            "EVALSHA" | "EVALSHA_RO" => {
                self.translate_sha_args(command, 1..2);
                ReplyFix::None
            }
            "SCRIPT" => match command.arg_upper(1).as_deref() {
                Some("LOAD") => match self.strip_arg(command, 2) {
                    Some(flagged_sha) => ReplyFix::Sha(flagged_sha),
                    None => ReplyFix::None,
                },
                Some("EXISTS") => {
                    let len = command.len();
                    self.translate_sha_args(command, 2..len);
                    ReplyFix::None
                }
                _ => ReplyFix::None,
            },
            _ => ReplyFix::None,
        }
    }

    /// Strips the flag from the script at `index`; returns the flagged text's SHA if it was
    /// flagged.
    fn strip_arg(&self, command: &mut Command, index: usize) -> Option<String> {
        let script = command.arg(index)?;
        let stripped = strip_flag(script)?;
        let flagged_sha = sha1_hex(script);
        self.remember(flagged_sha.clone(), sha1_hex(&stripped));
        command.set_arg(index, &stripped);
        Some(flagged_sha)
    }

    fn translate_sha_args(&self, command: &mut Command, range: std::ops::Range<usize>) {
        let translations = self.lock();
        for index in range {
            let Some(arg) = command.arg(index) else {
                continue;
            };
            let sha = String::from_utf8_lossy(arg).to_ascii_lowercase();
            if let Some(actual) = translations.get(&sha) {
                command.set_arg(index, actual.as_bytes());
            }
        }
    }

    fn remember(&self, flagged_sha: String, actual_sha: String) {
        let mut translations = self.lock();
        if translations.len() >= MAX_ENTRIES && !translations.contains_key(&flagged_sha) {
            // Dropping the cache is safe: a forgotten SHA only costs the client one NOSCRIPT
            // round trip and an EVAL, which re-creates the entry.
            translations.clear();
        }
        translations.insert(flagged_sha, actual_sha);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, String>> {
        // The map holds plain strings; a panic while holding the lock cannot leave it
        // inconsistent, so a poisoned lock is still usable.
        self.translations
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// Lower-case hex SHA-1, as Redis computes script SHAs.
pub(crate) fn sha1_hex(bytes: &[u8]) -> String {
    sha1_smol::Sha1::from(bytes).digest().to_string()
}

/// The script with `allow-key-locking` removed from its shebang line, or `None` when the script
/// does not carry the flag.
pub(crate) fn strip_flag(script: &[u8]) -> Option<Vec<u8>> {
    let line_end = script
        .iter()
        .position(|&b| b == b'\n')
        .unwrap_or(script.len());
    let (first_line, rest) = script.split_at(line_end);
    let first_line = std::str::from_utf8(first_line).ok()?;
    let first_line = first_line.strip_suffix('\r').unwrap_or(first_line);
    let options = first_line.strip_prefix("#!lua")?;
    if !options.is_empty() && !options.starts_with([' ', '\t']) {
        return None;
    }

    let mut found = false;
    let mut kept_tokens = Vec::new();
    for token in options.split_whitespace() {
        match token.strip_prefix("flags=") {
            Some(flags) => {
                let kept: Vec<&str> = flags
                    .split(',')
                    .filter(|flag| {
                        let is_ours = *flag == ALLOW_KEY_LOCKING;
                        found |= is_ours;
                        !is_ours && !flag.is_empty()
                    })
                    .collect();
                if !kept.is_empty() {
                    kept_tokens.push(format!("flags={}", kept.join(",")));
                }
            }
            None => kept_tokens.push(token.to_owned()),
        }
    }
    if !found {
        return None;
    }
    // With no other option left, drop the shebang entirely: the hosted service runs such a
    // script like any ordinary (shebang-less) script.
    let mut stripped = if kept_tokens.is_empty() {
        Vec::new()
    } else {
        format!("#!lua {}", kept_tokens.join(" ")).into_bytes()
    };
    stripped.extend_from_slice(rest);
    Some(stripped)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_only_the_flag() {
        assert_eq!(
            strip_flag(b"#!lua flags=allow-key-locking\nreturn 1").as_deref(),
            Some(&b"\nreturn 1"[..])
        );
        assert_eq!(
            strip_flag(b"#!lua flags=allow-key-locking\r\nreturn 1").as_deref(),
            Some(&b"\nreturn 1"[..])
        );
        assert_eq!(
            strip_flag(b"#!lua flags=no-writes,allow-key-locking\nreturn 1").as_deref(),
            Some(&b"#!lua flags=no-writes\nreturn 1"[..])
        );
        assert_eq!(
            strip_flag(b"#!lua flags=allow-key-locking").as_deref(),
            Some(&b""[..])
        );
        assert_eq!(strip_flag(b"#!lua flags=no-writes\nreturn 1"), None);
        assert_eq!(strip_flag(b"return 1"), None);
        assert_eq!(strip_flag(b"#!luax flags=allow-key-locking\n"), None);
        assert_eq!(
            strip_flag(b"return 1 -- #!lua flags=allow-key-locking"),
            None
        );
    }

    #[test]
    fn sha_matches_redis() {
        // SHA-1 of "return 1" as Redis reports it for SCRIPT LOAD.
        assert_eq!(
            sha1_hex(b"return 1"),
            "e0e1f9fabfc9d4800c877a703b823ac0578ff8db"
        );
    }

    #[test]
    fn translates_evalsha_after_eval() -> Result<(), crate::error::GatewayError> {
        let registry = ScriptRegistry::default();
        let flagged = "#!lua flags=allow-key-locking\nreturn 1";
        let mut eval = Command::new(vec![b"eval".to_vec(), flagged.into(), b"0".to_vec()])?;
        assert_eq!(registry.translate(&mut eval), ReplyFix::None);
        assert_eq!(eval.arg(1), Some(&b"\nreturn 1"[..]));

        let flagged_sha = sha1_hex(flagged.as_bytes()).to_ascii_uppercase();
        let mut evalsha = Command::new(vec![b"EVALSHA".to_vec(), flagged_sha.into(), b"0".into()])?;
        registry.translate(&mut evalsha);
        assert_eq!(evalsha.arg(1), Some(sha1_hex(b"\nreturn 1").as_bytes()));

        let mut load = Command::new(vec![b"script".to_vec(), b"load".to_vec(), flagged.into()])?;
        let fix = registry.translate(&mut load);
        assert_eq!(fix, ReplyFix::Sha(sha1_hex(flagged.as_bytes())));
        let fixed = fix.apply(Value::BulkString(b"x".to_vec()));
        assert_eq!(
            fixed,
            Value::BulkString(sha1_hex(flagged.as_bytes()).into_bytes())
        );
        Ok(())
    }
}
