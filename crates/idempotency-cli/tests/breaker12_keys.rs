//! breaker12: every key the HTTP layer can store (`IdempotencyKey::from_header_value` on a
//! header value) must be reachable by a CLI argument, and the argument an operator copies from
//! the CLI's own output (the store key's key part) must never reach another key's record.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{PREFIX, json, run};
use idempotency::redis::RedisStore;
use idempotency::{
    Fingerprint, IdempotencyKey, IdempotencyStore, InProgress, LeaseToken, Scope, StoreKey,
    unix_millis_now,
};
use idempotency_testkit::fixtures::RedisServer;

async fn claim(store: &RedisStore, key: &IdempotencyKey) -> (StoreKey, LeaseToken) {
    let store_key = StoreKey::derive(PREFIX, &Scope::new("alice"), key);
    let token = LeaseToken::generate();
    let claim = InProgress {
        token,
        fingerprint: Fingerprint::of("request"),
        created_at_ms: unix_millis_now(),
    };
    store
        .try_claim(&store_key, &claim, Duration::from_secs(600))
        .await
        .unwrap();
    (store_key, token)
}

/// Passing: header values at the edges (escapes, quotes at one end, spaces at the ends, 255
/// bytes) reach their record through the header form and, where the docs promise it, the
/// stored text; 256 bytes is refused both ways.
#[tokio::test(flavor = "multi_thread")]
async fn edge_keys_round_trip_header_to_cli() {
    let server = RedisServer::start_local().expect("local redis-server");
    let store = RedisStore::connect(server.url()).await.unwrap();
    let env = [("REDIS_URL", server.url())];
    let long_bare = "k".repeat(255);
    let long_quoted = format!("\"{}\\\\\"", "k".repeat(254)); // 254 k + one backslash
    let headers: Vec<String> = vec![
        r#"a""#.into(),
        r#""\\""#.into(),
        r#""\"""#.into(),
        r#"" ""#.into(),
        r#""  a  ""#.into(),
        r#""a\\\"b""#.into(),
        long_bare.clone(),
        long_quoted,
        format!("\"{}\"", "x ".repeat(127).trim_end()),
    ];
    for header in &headers {
        let key = IdempotencyKey::from_header_value(header.as_bytes())
            .unwrap_or_else(|e| panic!("{header}: {e}"));
        let (store_key, token) = claim(&store, &key).await;
        let mut args = vec![header.clone()];
        if !key.as_str().starts_with('"') {
            args.push(key.as_str().to_owned());
        }
        for arg in &args {
            let found = run(&env, &["inspect", "alice", arg, "--json"]);
            assert_eq!(found.code, 0, "{header} via {arg:?}: {}", found.all());
            let value = json(&found);
            assert_eq!(value["key"], store_key.as_str(), "{header} via {arg:?}");
            assert_eq!(
                value["fencing_token"],
                token.to_hex(),
                "{header} via {arg:?}"
            );
        }
    }
    for too_long in ["k".repeat(256), format!("\"{}\"", "k".repeat(256))] {
        assert!(IdempotencyKey::from_header_value(too_long.as_bytes()).is_err());
        let refused = run(&env, &["inspect", "alice", &too_long]);
        assert_eq!(refused.code, 2, "{}", refused.all());
    }
    for bad in [r#""a"#, r#""""#, ""] {
        let refused = run(&env, &["inspect", "alice", bad]);
        assert_eq!(refused.code, 2, "{bad:?}: {}", refused.all());
    }
}
