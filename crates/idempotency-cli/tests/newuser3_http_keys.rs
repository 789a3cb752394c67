//! newuser3 (new-user pass): the HTTP layer accepts the IETF draft's sf-string form, in which a
//! key may contain spaces (`Idempotency-Key: "a b"` is the key `a b`); the CLI once parsed its
//! KEY argument with `IdempotencyKey::new` (visible ASCII only), so a claim taken through HTTP
//! under such a key could be neither inspected, released nor deleted by the operators' tool.
//! Fixed: the stored text (`a b`) and the header value (`--key-form header '"a b"'`) reach it.

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

#[tokio::test(flavor = "multi_thread")]
async fn a_key_the_http_layer_accepted_can_be_inspected_and_released() {
    let server = RedisServer::start_local().expect("local redis-server");
    let store = RedisStore::connect(server.url()).await.unwrap();
    let env = [("REDIS_URL", server.url())];
    // What the layer derives from the header value `"a b"`.
    let key = IdempotencyKey::from_header_value(br#""a b""#).expect("the layer accepts it");
    let store_key = StoreKey::derive(PREFIX, &Scope::new("alice"), &key);
    let claim = InProgress {
        token: LeaseToken::generate(),
        fingerprint: Fingerprint::of("request"),
        created_at_ms: unix_millis_now(),
    };
    store
        .try_claim(&store_key, &claim, Duration::from_secs(600))
        .await
        .unwrap();

    // The operator copies the header value from a log, quotes included, and says so: as stored
    // text `"a b"` is another key (keyform), so without --key-form it is refused, not guessed.
    let quoted = run(
        &env,
        &[
            "inspect",
            "alice",
            "--key-form",
            "header",
            r#""a b""#,
            "--json",
        ],
    );
    assert_eq!(quoted.code, 0, "quoted form: {}", quoted.all());
    let unsaid = run(&env, &["inspect", "alice", r#""a b""#, "--json"]);
    assert_eq!(
        unsaid.code,
        2,
        "quoted form without --key-form: {}",
        unsaid.all()
    );
    assert!(unsaid.stderr.contains("--key-form"), "{}", unsaid.stderr);
    let bare = run(&env, &["inspect", "alice", "a b", "--json"]);
    assert_eq!(bare.code, 0, "bare form: {}", bare.all());
    let released = run(
        &env,
        &[
            "release",
            "alice",
            "--key-form",
            "header",
            r#""a b""#,
            "--yes",
        ],
    );
    assert_eq!(released.code, 0, "{}", released.all());
}

#[tokio::test(flavor = "multi_thread")]
async fn stored_text_and_header_forms_reach_the_same_record_and_logs_are_plain() {
    let server = RedisServer::start_local().expect("local redis-server");
    let store = RedisStore::connect(server.url()).await.unwrap();
    // A key with a quote, a backslash and spaces at both ends: header `" x \"y\" \\ "`.
    let header = br#"" x \"y\" \\ ""#;
    let key = IdempotencyKey::from_header_value(header).expect("the layer accepts it");
    assert_eq!(key.as_str(), r#" x "y" \ "#);
    let store_key = StoreKey::derive(PREFIX, &Scope::new("alice"), &key);
    let claim = InProgress {
        token: LeaseToken::generate(),
        fingerprint: Fingerprint::of("request"),
        created_at_ms: unix_millis_now(),
    };
    store
        .try_claim(&store_key, &claim, Duration::from_secs(600))
        .await
        .unwrap();
    let env = [("REDIS_URL", server.url()), ("RUST_LOG", "info")];

    let header_form = std::str::from_utf8(header).unwrap();
    let inspected = run(
        &env,
        &[
            "inspect",
            "alice",
            "--key-form",
            "header",
            header_form,
            "--json",
        ],
    );
    assert_eq!(inspected.code, 0, "{}", inspected.all());
    let stored = run(&env, &["inspect", "alice", key.as_str(), "--json"]);
    assert_eq!(stored.code, 0, "{}", stored.all());
    for found in [&inspected, &stored] {
        let value = json(found);
        assert_eq!(value["key"], store_key.as_str(), "{}", found.stdout);
        assert_eq!(
            value["fencing_token"],
            claim.token.to_hex(),
            "{}",
            found.stdout
        );
    }

    // The operator's log line goes to stderr, a pipe here: no colour codes in it.
    let deleted = run(&env, &["delete", "alice", key.as_str(), "--yes"]);
    assert_eq!(deleted.code, 0, "{}", deleted.all());
    assert!(
        deleted.stderr.contains("deleted by an operator"),
        "{}",
        deleted.stderr
    );
    assert!(!deleted.stderr.contains('\x1b'), "{:?}", deleted.stderr);
    assert!(store.get(&store_key).await.unwrap().is_none());
}
