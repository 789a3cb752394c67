//! Client key parsing and store-key derivation: `from_bytes` never panics, agrees with `new`,
//! accepts exactly 1..=255 visible ASCII bytes, and the derivation is injective over
//! (scope, key) pairs.
#![no_main]

use idempotency_core::{IdempotencyKey, Scope, StoreKey};
use libfuzzer_sys::fuzz_target;

fn valid(bytes: &[u8]) -> bool {
    (1..=255).contains(&bytes.len()) && bytes.iter().all(|b| (0x21..=0x7e).contains(b))
}

fuzz_target!(|data: &[u8]| {
    let parsed = IdempotencyKey::from_bytes(data);
    assert_eq!(parsed.is_ok(), valid(data), "{data:?}");
    if let Ok(text) = std::str::from_utf8(data) {
        assert_eq!(IdempotencyKey::new(text).ok(), parsed.clone().ok());
    }
    if let Ok(key) = &parsed {
        assert_eq!(key.as_str().as_bytes(), data);
    }
    // Injectivity: the input as four NUL-separated parts, scope A, key A, scope B, key B.
    let parts: Vec<&[u8]> = data.splitn(4, |&b| b == 0).collect();
    if let [scope_a, key_a, scope_b, key_b] = parts[..] {
        let (Ok(key_a), Ok(key_b)) = (
            IdempotencyKey::from_bytes(key_a),
            IdempotencyKey::from_bytes(key_b),
        ) else {
            return;
        };
        let scope_a = Scope::new(String::from_utf8_lossy(scope_a));
        let scope_b = Scope::new(String::from_utf8_lossy(scope_b));
        let store_a = StoreKey::derive("idem:", &scope_a, &key_a);
        let store_b = StoreKey::derive("idem:", &scope_b, &key_b);
        let same_pair = scope_a == scope_b && key_a == key_b;
        assert_eq!(
            store_a == store_b,
            same_pair,
            "{scope_a:?}/{key_a:?} and {scope_b:?}/{key_b:?} -> {store_a:?} / {store_b:?}"
        );
    }
});
