//! newuser3 (new-user pass): the HTTP layer accepts the IETF draft's sf-string form, in which a
//! key may contain spaces (`Idempotency-Key: "a b"` is the key `a b`), but the CLI parses its
//! KEY argument with `IdempotencyKey::new` (visible ASCII only), bare or quoted. So a claim
//! taken through HTTP under such a key can be neither inspected, released nor deleted by the
//! operators' tool (only `purge --scope` of the whole scope reaches it). Fails today.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{PREFIX, run};
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

    // The operator copies the header value from a log, quotes included.
    let quoted = run(&env, &["inspect", "alice", r#""a b""#, "--json"]);
    assert_eq!(quoted.code, 0, "quoted form: {}", quoted.all());
    let bare = run(&env, &["inspect", "alice", "a b", "--json"]);
    assert_eq!(bare.code, 0, "bare form: {}", bare.all());
    let released = run(&env, &["release", "alice", r#""a b""#, "--yes"]);
    assert_eq!(released.code, 0, "{}", released.all());
}
