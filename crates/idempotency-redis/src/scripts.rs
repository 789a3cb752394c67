//! The core's Lua scripts as `redis::Script` values, built once per process.
//!
//! The Lua source lives only in `idempotency-core` (`idempotency_core::lua`), shared with the KV
//! REST backend; this module only hashes it. The store builds each `EVALSHA` command itself
//! (arguments written straight into the command buffer) and, when the server answers
//! `NOSCRIPT` (after a restart or a `SCRIPT FLUSH`), resends it once as `EVAL` of the source
//! ([`eval_of`]), which caches the script again.

use std::sync::LazyLock;

use idempotency_core::lua;
use redis::{Cmd, Script};

/// The four scripts of the record protocol.
pub(crate) struct Scripts {
    /// Claim for servers without `SET ... NX GET` (Redis < 7.0).
    pub(crate) claim: Script,
    /// Fenced completion.
    pub(crate) complete: Script,
    /// Fenced release.
    pub(crate) release: Script,
    /// Fenced lease extension.
    pub(crate) extend: Script,
}

impl Scripts {
    /// Every script, for preloading at connect.
    pub(crate) fn all(&self) -> [&Script; 4] {
        [&self.claim, &self.complete, &self.release, &self.extend]
    }
}

/// Hashing the sources is cheap but not free; do it once.
pub(crate) static SCRIPTS: LazyLock<Scripts> = LazyLock::new(|| Scripts {
    claim: Script::new(lua::CLAIM),
    complete: Script::new(lua::COMPLETE),
    release: Script::new(lua::RELEASE),
    extend: Script::new(lua::EXTEND),
});

/// The Lua source of one of [`SCRIPTS`] (matched by hash), or `None` for another script.
fn source(script: &Script) -> Option<&'static str> {
    let scripts = &*SCRIPTS;
    [
        (&scripts.claim, lua::CLAIM),
        (&scripts.complete, lua::COMPLETE),
        (&scripts.release, lua::RELEASE),
        (&scripts.extend, lua::EXTEND),
    ]
    .into_iter()
    .find(|(known, _)| known.get_hash() == script.get_hash())
    .map(|(_, source)| source)
}

/// The `EVAL` form of an `EVALSHA <sha> <numkeys> <keys/args...>` command of `script`: the
/// source instead of the hash, the same arguments. Sent after `NOSCRIPT`: it cannot answer
/// `NOSCRIPT` again (a `SCRIPT FLUSH` between a `SCRIPT LOAD` and a resent `EVALSHA` could),
/// needs no `SCRIPT` permission (ACL users granted `EVAL`/`EVALSHA` only), and the server
/// caches the script for the next `EVALSHA` (Redis docs, "Scripting with Lua": script cache).
/// `None` for a script that is not one of [`SCRIPTS`].
pub(crate) fn eval_of(script: &Script, evalsha: &Cmd) -> Option<Cmd> {
    let source = source(script)?;
    let mut cmd = redis::cmd("EVAL");
    cmd.arg(source);
    for arg in evalsha.args_iter().skip(2) {
        match arg {
            redis::Arg::Simple(bytes) => {
                cmd.arg(bytes);
            }
            _ => return None,
        }
    }
    Some(cmd)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scripts_are_the_core_sources() {
        let hashes: Vec<&str> = SCRIPTS.all().iter().map(|s| s.get_hash()).collect();
        assert_eq!(hashes.len(), 4);
        assert!(hashes.iter().all(|h| h.len() == 40));
        assert_eq!(
            SCRIPTS.complete.get_hash(),
            Script::new(lua::COMPLETE).get_hash()
        );
        let mut unique = hashes.clone();
        unique.dedup();
        assert_eq!(unique.len(), 4);
    }
}
