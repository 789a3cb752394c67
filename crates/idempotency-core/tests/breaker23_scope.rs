//! breaker23: the escaped-scope bound, and `scope_prefix` (what `purge --scope` deletes by)
//! selecting exactly the keys `derive` makes for that scope, on both sides of the bound.

#![allow(clippy::unwrap_used)]

use idempotency_core::{IdempotencyKey, MAX_ESCAPED_SCOPE_LEN, Scope, StoreKey};
use proptest::prelude::*;

fn derive(scope: &str, key: &str) -> String {
    StoreKey::derive(
        "idem:",
        &Scope::new(scope),
        &IdempotencyKey::new(key).unwrap(),
    )
    .as_str()
    .to_owned()
}

fn prefix(scope: &str) -> String {
    StoreKey::scope_prefix("idem:", &Scope::new(scope))
}

#[test]
fn breaker23_escaped_characters_push_a_short_scope_over_the_bound() {
    // 126 kept bytes + one escaped byte = 129 escaped bytes, 127 raw: digested.
    let over = format!("{}:", "a".repeat(MAX_ESCAPED_SCOPE_LEN - 2));
    assert!(derive(&over, "k").starts_with("idem:#"));
    // 125 kept + one escaped = 128: kept whole.
    let at = format!("{}:", "a".repeat(MAX_ESCAPED_SCOPE_LEN - 3));
    assert_eq!(derive(&at, "k"), format!("idem:{}%3A:k", "a".repeat(125)));
    // Non-ASCII: `é` is two bytes, six escaped; 21 of them = 126, 22 = 132.
    assert!(!derive(&"é".repeat(21), "k").starts_with("idem:#"));
    assert!(derive(&"é".repeat(22), "k").starts_with("idem:#"));
    // A short scope that looks like a digest part is escaped, never taken for one.
    let long = "z".repeat(500);
    let digested = &derive(&long, "k")["idem:".len()..][..65];
    assert!(prefix(digested).starts_with("idem:%23"));
    assert!(!derive(&long, "k").starts_with(&prefix(digested)));
    assert!(!derive(digested, "k").starts_with(&prefix(&long)));
}

fn scope() -> impl Strategy<Value = String> {
    // Around the bound: a run of kept bytes then a few that may be escaped or multibyte.
    (
        prop::sample::select(vec![0usize, 40, 120, 125, 126, 127, 128, 129, 300]),
        "[a:#%é]{0,4}",
    )
        .prop_map(|(n, tail)| format!("{}{tail}", "a".repeat(n)))
}

proptest! {
    #[test]
    fn breaker23_scope_prefix_selects_exactly_its_scope(s in scope(), t in scope(), k in "[a:#]{1,6}") {
        let key = derive(&s, &k);
        prop_assert!(key.starts_with(&prefix(&s)));
        prop_assert_eq!(key.starts_with(&prefix(&t)), s == t, "{} / {}", s, t);
        prop_assert!(key.len() <= "idem:".len() + MAX_ESCAPED_SCOPE_LEN + 1 + 6);
    }
}
