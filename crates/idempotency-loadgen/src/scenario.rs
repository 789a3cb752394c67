//! What every worker shares, whatever it runs on: the scenarios, the engine's lease and
//! retention, the request every operation presents and the outcome it stores. The workers
//! (`engine`, `raw`, `sql`, `http`) and the cells that start them all import this module; it
//! imports none of them.

use std::time::Duration;

use idempotency_core::{Fingerprint, Scope, StoredOutcome};
use idempotency_memory::MemoryStore;

/// `--scenarios` values: the names of [`Scenario::name`].
impl clap::ValueEnum for Scenario {
    fn value_variants<'a>() -> &'a [Self] {
        &Self::ALL
    }

    fn to_possible_value(&self) -> Option<clap::builder::PossibleValue> {
        Some(clap::builder::PossibleValue::new(self.name()))
    }
}

/// The engine's default lease and retention, used by the raw baseline too.
pub(crate) const LEASE: Duration = Duration::from_secs(60);
pub(crate) const RETENTION: Duration = Duration::from_secs(24 * 60 * 60);

/// What each operation does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scenario {
    /// Begin + complete on a new key.
    Fresh,
    /// Begin on a completed key (the stored outcome comes back).
    Replay,
    /// Begin on a key whose first attempt is in progress.
    Conflict,
}

impl Scenario {
    pub(crate) const ALL: [Scenario; 3] = [Scenario::Fresh, Scenario::Replay, Scenario::Conflict];

    pub(crate) fn name(self) -> &'static str {
        match self {
            Scenario::Fresh => "fresh",
            Scenario::Replay => "replay",
            Scenario::Conflict => "conflict",
        }
    }
}

/// The stored outcome of every fresh operation: a small JSON answer.
pub(crate) fn outcome() -> StoredOutcome {
    StoredOutcome::new(
        &br#"{"id":12345,"status":"created"}"#[..],
        Some("application/json".into()),
    )
}

/// The fingerprint every operation presents (a caller computes it from its request).
pub(crate) fn fingerprint() -> Fingerprint {
    Fingerprint::builder()
        .part("POST")
        .part("/orders")
        .part("application/json")
        .part(r#"{"sku":"widget","qty":1}"#)
        .finish()
}

pub(crate) fn scope() -> Scope {
    Scope::new("bench")
}

/// A memory store without the default 1 M record bound: a fresh cell writes millions of
/// records, and evictions (an O(n) scan when the bound is hit) would measure the bound rather
/// than the store.
///
/// The map grows as records arrive (no `initial_capacity`, the default users get). Growth was
/// the rare long operation of a fresh cell while slots held records inline (~170 bytes moved
/// per record per doubling); since slots are a hash and a pointer (16 bytes) it costs little,
/// so the rows measure the store as configured by default.
pub(crate) fn unbounded_memory() -> MemoryStore {
    MemoryStore::builder()
        .max_entries(usize::MAX)
        .max_bytes(usize::MAX)
        .build()
}

/// `prefix` followed by the decimal digits of `n`, written into `buf` (reused across
/// operations: no formatting machinery on the worker's path).
pub(crate) fn numbered<'a>(buf: &'a mut String, prefix: &str, n: u64) -> &'a str {
    buf.clear();
    buf.push_str(prefix);
    let mut digits = [0u8; 20];
    let mut start = digits.len();
    let mut rest = n;
    loop {
        start -= 1;
        digits[start] = b'0' + (rest % 10) as u8;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    for &digit in &digits[start..] {
        buf.push(char::from(digit));
    }
    buf
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbered_keys_match_format() {
        let mut buf = String::new();
        for n in [0, 7, 10, 12_345, u64::MAX] {
            assert_eq!(numbered(&mut buf, "c1-t0-", n), format!("c1-t0-{n}"));
        }
        assert_eq!(numbered(&mut buf, "", 42), "42");
    }
}
