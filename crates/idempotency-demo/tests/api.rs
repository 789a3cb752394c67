//! The shop API over real sockets on the memory store: routes, envelope, status codes, the
//! idempotency answers, metrics access, and tenancy (two principals, one key).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{ADMIN, Backend, Demo, send};
use reqwest::Method;
use serde_json::json;

const TEA: &str = r#"{"name":"Tea","price":450}"#;

#[tokio::test]
async fn put_product_runs_once_per_key_and_replays_byte_for_byte() {
    let demo = Demo::start(Backend::Memory).await;
    let client = reqwest::Client::new();
    let url = format!("{}/api/products/tea", demo.url);
    let first = send(
        &client,
        Method::PUT,
        &url,
        Some("alice"),
        Some("k1"),
        Some(TEA),
    )
    .await;
    assert_eq!(first.status, 201, "{:?}", first.json());
    assert!(!first.replayed);
    let data = &first.json()["data"];
    assert_eq!(data["version"], 1);
    assert_eq!(data["updatedBy"], "alice");
    assert_eq!(first.json()["error"], serde_json::Value::Null);
    assert!(first.json()["meta"]["timestamp"].is_u64());

    let retry = send(
        &client,
        Method::PUT,
        &url,
        Some("alice"),
        Some("k1"),
        Some(TEA),
    )
    .await;
    assert!(retry.replayed);
    assert_eq!(retry.status, first.status);
    assert_eq!(retry.body, first.body);
    assert_eq!(retry.content_type, first.content_type);

    let again = send(
        &client,
        Method::PUT,
        &url,
        Some("alice"),
        Some("k2"),
        Some(TEA),
    )
    .await;
    assert_eq!(again.status, 200);
    assert!(!again.replayed);
    assert_eq!(again.json()["data"]["version"], 2);

    let got = send(&client, Method::GET, &url, Some("alice"), None, None).await;
    assert_eq!(got.status, 200);
    assert_eq!(got.json()["data"]["version"], 2);
    assert_eq!(demo.state.handler_runs(), 2);
}

#[tokio::test]
async fn the_idempotency_answers_missing_key_mismatch_and_no_auth() {
    let demo = Demo::start(Backend::Memory).await;
    let client = reqwest::Client::new();
    let url = format!("{}/api/products/mug", demo.url);

    let missing = send(&client, Method::PUT, &url, Some("alice"), None, Some(TEA)).await;
    assert_eq!(missing.status, 400);
    assert_eq!(
        missing.content_type.as_deref(),
        Some("application/problem+json")
    );

    send(
        &client,
        Method::PUT,
        &url,
        Some("alice"),
        Some("m1"),
        Some(TEA),
    )
    .await;
    let other = r#"{"name":"Tea","price":999}"#;
    let mismatch = send(
        &client,
        Method::PUT,
        &url,
        Some("alice"),
        Some("m1"),
        Some(other),
    )
    .await;
    assert_eq!(mismatch.status, 422);

    // A malformed key (over 255 bytes) is a 400 too.
    let long_key = "k".repeat(300);
    let too_long = send(
        &client,
        Method::PUT,
        &url,
        Some("alice"),
        Some(&long_key),
        Some(TEA),
    )
    .await;
    assert_eq!(too_long.status, 400);

    for method in [Method::PUT, Method::GET] {
        let anonymous = send(&client, method, &url, None, Some("m2"), Some(TEA)).await;
        assert_eq!(anonymous.status, 401);
        assert_eq!(anonymous.json()["error"]["code"], "UNAUTHORIZED");
        assert_eq!(anonymous.json()["data"], serde_json::Value::Null);
    }
    assert_eq!(demo.state.handler_runs(), 1);
}

#[tokio::test]
async fn invalid_bodies_get_400_in_the_envelope_and_unknown_ids_404() {
    let demo = Demo::start(Backend::Memory).await;
    let client = reqwest::Client::new();
    let product = format!("{}/api/products/p1", demo.url);
    for (i, body) in [
        "{not json",
        r#"{"name":"Tea"}"#,
        r#"{"name":"Tea","price":"cheap"}"#,
        r#"{"name":"Tea","price":-1}"#,
        r#"{"name":"","price":1}"#,
    ]
    .into_iter()
    .enumerate()
    {
        let key = format!("bad-{i}");
        let answer = send(
            &client,
            Method::PUT,
            &product,
            Some("u"),
            Some(&key),
            Some(body),
        )
        .await;
        assert_eq!(answer.status, 400, "{body}: {:?}", answer.json());
        assert_eq!(
            answer.json()["error"]["code"],
            "VALIDATION_FAILED",
            "{body}"
        );
        assert_eq!(answer.json()["data"], serde_json::Value::Null);
    }
    let bad_id = format!("{}/api/products/no%20spaces", demo.url);
    let answer = send(
        &client,
        Method::PUT,
        &bad_id,
        Some("u"),
        Some("bad-id"),
        Some(TEA),
    )
    .await;
    assert_eq!(answer.status, 400);

    let unknown = send(&client, Method::GET, &product, Some("u"), None, None).await;
    assert_eq!(unknown.status, 404);
    assert_eq!(unknown.json()["error"]["code"], "NOT_FOUND");
    let order_status = format!("{}/api/orders/ord_999999/status", demo.url);
    let body = r#"{"status":"SHIPPED"}"#;
    let unknown = send(
        &client,
        Method::PUT,
        &order_status,
        Some("u"),
        Some("s1"),
        Some(body),
    )
    .await;
    assert_eq!(unknown.status, 404);
    let orders = format!("{}/api/orders", demo.url);
    let body = r#"{"productId":"nope","quantity":1}"#;
    let unknown = send(
        &client,
        Method::POST,
        &orders,
        Some("u"),
        Some("o1"),
        Some(body),
    )
    .await;
    assert_eq!(unknown.status, 404);
    let nowhere = send(
        &client,
        Method::GET,
        &format!("{}/nowhere", demo.url),
        Some("u"),
        None,
        None,
    )
    .await;
    assert_eq!(nowhere.status, 404);
    assert_eq!(demo.state.handler_runs(), 0);
}

#[tokio::test]
async fn orders_are_created_once_per_key_and_their_status_changes() {
    let demo = Demo::start(Backend::Memory).await;
    let client = reqwest::Client::new();
    let product = format!("{}/api/products/tea", demo.url);
    send(
        &client,
        Method::PUT,
        &product,
        Some("alice"),
        Some("p"),
        Some(TEA),
    )
    .await;
    let orders = format!("{}/api/orders", demo.url);
    let body = r#"{"productId":"tea","quantity":2}"#;
    let first = send(
        &client,
        Method::POST,
        &orders,
        Some("alice"),
        Some("o1"),
        Some(body),
    )
    .await;
    assert_eq!(first.status, 201);
    let id = first.json()["data"]["id"].as_str().unwrap().to_owned();
    assert_eq!(first.json()["data"]["status"], "PENDING");
    let retry = send(
        &client,
        Method::POST,
        &orders,
        Some("alice"),
        Some("o1"),
        Some(body),
    )
    .await;
    assert!(retry.replayed);
    assert_eq!(retry.body, first.body);
    let second = send(
        &client,
        Method::POST,
        &orders,
        Some("alice"),
        Some("o2"),
        Some(body),
    )
    .await;
    assert_ne!(second.json()["data"]["id"], json!(id));

    let list = send(&client, Method::GET, &orders, Some("bob"), None, None).await;
    assert_eq!(list.status, 200);
    assert_eq!(list.json()["data"].as_array().unwrap().len(), 2);
    assert_eq!(list.json()["meta"]["count"], 2);

    let status = format!("{}/api/orders/{id}/status", demo.url);
    let shipped = r#"{"status":"SHIPPED"}"#;
    let moved = send(
        &client,
        Method::PUT,
        &status,
        Some("alice"),
        Some("s1"),
        Some(shipped),
    )
    .await;
    assert_eq!(moved.status, 200);
    assert_eq!(moved.json()["data"]["status"], "SHIPPED");
    assert_eq!(moved.json()["data"]["version"], 2);
    let bogus = r#"{"status":"TELEPORTED"}"#;
    let refused = send(
        &client,
        Method::PUT,
        &status,
        Some("alice"),
        Some("s2"),
        Some(bogus),
    )
    .await;
    assert_eq!(refused.status, 400);
}

#[tokio::test]
async fn metrics_are_for_the_admin_token_only() {
    let demo = Demo::start(Backend::Memory).await;
    let client = reqwest::Client::new();
    let product = format!("{}/api/products/tea", demo.url);
    send(
        &client,
        Method::PUT,
        &product,
        Some("alice"),
        Some("k"),
        Some(TEA),
    )
    .await;
    send(
        &client,
        Method::PUT,
        &product,
        Some("alice"),
        Some("k"),
        Some(TEA),
    )
    .await;
    let metrics = format!("{}/api/internal/metrics/idempotency", demo.url);
    let refused = send(&client, Method::GET, &metrics, Some("alice"), None, None).await;
    assert_eq!(refused.status, 403);
    assert_eq!(refused.json()["error"]["code"], "FORBIDDEN");
    let anonymous = send(&client, Method::GET, &metrics, None, None, None).await;
    assert_eq!(anonymous.status, 401);
    let answer = send(&client, Method::GET, &metrics, Some(ADMIN), None, None).await;
    assert_eq!(answer.status, 200);
    let data = &answer.json()["data"];
    assert_eq!(data["cacheHits"], 1);
    assert_eq!(data["cacheMisses"], 1);
    assert_eq!(data["cacheWrites"], 1);
    assert_eq!(data["hitRate"], 0.5);
    assert_eq!(data["backend"], "memory");
    assert_eq!(data["handlerRuns"], 1);
}

/// Tenancy: one key, two principals, two executions, and neither ever sees the other's answer.
async fn principals_are_isolated(backend: Backend) {
    let demo = Demo::start(backend).await;
    let client = reqwest::Client::new();
    let url = format!("{}/api/products/shared", demo.url);
    let key = "same-key-for-everyone";
    let alice = send(
        &client,
        Method::PUT,
        &url,
        Some("alice"),
        Some(key),
        Some(TEA),
    )
    .await;
    let bob = send(
        &client,
        Method::PUT,
        &url,
        Some("bob"),
        Some(key),
        Some(TEA),
    )
    .await;
    assert!(
        !alice.replayed && !bob.replayed,
        "bob must not get alice's replay"
    );
    assert_eq!(alice.json()["data"]["updatedBy"], "alice");
    assert_eq!(bob.json()["data"]["updatedBy"], "bob");
    assert_eq!(alice.json()["data"]["version"], 1);
    assert_eq!(bob.json()["data"]["version"], 2);
    for _ in 0..3 {
        let a = send(
            &client,
            Method::PUT,
            &url,
            Some("alice"),
            Some(key),
            Some(TEA),
        )
        .await;
        let b = send(
            &client,
            Method::PUT,
            &url,
            Some("bob"),
            Some(key),
            Some(TEA),
        )
        .await;
        assert!(a.replayed && b.replayed);
        assert_eq!(a.body, alice.body);
        assert_eq!(b.body, bob.body);
    }
    // A different body under the other principal's key is that principal's first use.
    let carol_body = r#"{"name":"Coffee","price":300}"#;
    let carol = send(
        &client,
        Method::PUT,
        &url,
        Some("carol"),
        Some(key),
        Some(carol_body),
    )
    .await;
    assert!(!carol.replayed);
    assert_eq!(carol.json()["data"]["version"], 3);
    assert_eq!(demo.state.handler_runs(), 3);
}

#[tokio::test]
async fn two_principals_with_one_key_never_see_each_other_memory() {
    principals_are_isolated(Backend::Memory).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_principals_with_one_key_never_see_each_other_redis() {
    principals_are_isolated(Backend::Redis).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_principals_with_one_key_never_see_each_other_rest() {
    principals_are_isolated(Backend::Rest).await;
}
