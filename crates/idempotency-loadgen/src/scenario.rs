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

/// The keys of one fresh worker: `prefix` followed by the decimal digits of 0, 1, 2... (one
/// distinct key per operation). The text is kept between operations and only its last digits
/// change (a carry rewrites the digits it crosses): writing the whole number again cost ~200
/// instructions per operation, this ~30 (`cargo xtask instructions`).
#[derive(Debug)]
pub(crate) struct Keys {
    text: String,
    /// Where the digits start in `text`.
    digits: usize,
    /// Whether `text` holds the number to hand out next (`false` only before the first).
    started: bool,
}

impl Keys {
    pub(crate) fn new(prefix: &str) -> Self {
        let mut text = String::with_capacity(prefix.len() + 20);
        text.push_str(prefix);
        text.push('0');
        Self {
            text,
            digits: prefix.len(),
            started: false,
        }
    }

    /// The next key: `prefix0` first, then each number once, in order.
    pub(crate) fn next_key(&mut self) -> &str {
        if self.started {
            self.advance();
        }
        self.started = true;
        &self.text
    }

    /// Add one to the number at the end of `text`.
    fn advance(&mut self) {
        let mut nines = 0;
        loop {
            if self.text.len() == self.digits {
                // Every digit was a 9: one more digit.
                self.text.push('1');
                break;
            }
            match self.text.pop() {
                Some('9') => nines += 1,
                Some(digit) => {
                    self.text.push(char::from(digit as u8 + 1));
                    break;
                }
                None => break,
            }
        }
        for _ in 0..nines {
            self.text.push('0');
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_count_up_from_zero_like_format() {
        for prefix in ["c1-t0-", ""] {
            let mut keys = Keys::new(prefix);
            for n in 0..=100_500u64 {
                assert_eq!(keys.next_key(), format!("{prefix}{n}"));
            }
        }
        // Far carries: past every power of ten up to u64's 20 digits.
        let mut keys = Keys::new("k-");
        keys.next_key();
        keys.text = "k-99999999999999999999".to_owned();
        assert_eq!(keys.next_key(), "k-100000000000000000000");
        assert_eq!(keys.next_key(), "k-100000000000000000001");
        keys.text = "k-1999".to_owned();
        assert_eq!(keys.next_key(), "k-2000");
    }
}
