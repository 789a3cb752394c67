//! The core's Lua scripts as `redis::Script` values, built once per process.
//!
//! The Lua source lives only in `idempotency-core` (`idempotency_core::lua`), shared with the KV
//! REST backend; this module only hashes it. The store builds each `EVALSHA` command itself
//! (arguments written straight into the command buffer) and, as `Script::invoke_async` does,
//! falls back to `SCRIPT LOAD` + `EVALSHA` when the server answers `NOSCRIPT` (after a restart
//! or a `SCRIPT FLUSH`).

use std::sync::LazyLock;

use idempotency_core::lua;
use redis::Script;

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
