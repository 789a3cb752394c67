//! newuser3 (new-user pass): requests that match no route, or a route without that method.
//!
//! The demo put the idempotency layer on the whole router with `Router::layer`, which also wraps
//! axum's 404 fallback and each route's 405 answer. The layer covers POST, PUT, PATCH and DELETE
//! by default, so a mistyped URL or an unsupported method is answered "Idempotency key missing"
//! (400) instead of 404 / 405, and with a key the 404 / 405 is stored for the retention (24 h)
//! and replayed. These tests state what a client should see (they failed then; the demo now puts
//! the layer on each route's handlers with `MethodRouter::route_layer`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Backend, Demo, send};
use reqwest::Method;

const ORDER: &str = r#"{"productId":"tea","quantity":1}"#;

#[tokio::test]
async fn a_post_to_an_unknown_route_is_404_not_missing_key() {
    let demo = Demo::start(Backend::Memory).await;
    let client = reqwest::Client::new();
    let url = format!("{}/api/ordrs", demo.url);
    let answer = send(
        &client,
        Method::POST,
        &url,
        Some("alice"),
        None,
        Some(ORDER),
    )
    .await;
    assert_eq!(
        answer.status,
        404,
        "a typo in the path should say so, got {} {}",
        answer.status,
        String::from_utf8_lossy(&answer.body)
    );
}

#[tokio::test]
async fn an_unsupported_method_on_a_route_is_405_not_missing_key() {
    let demo = Demo::start(Backend::Memory).await;
    let client = reqwest::Client::new();
    let url = format!("{}/api/orders", demo.url);
    let answer = send(&client, Method::DELETE, &url, Some("alice"), None, None).await;
    assert_eq!(
        answer.status,
        405,
        "DELETE /api/orders is not a route, got {} {}",
        answer.status,
        String::from_utf8_lossy(&answer.body)
    );
}

#[tokio::test]
async fn a_404_for_an_unknown_route_is_not_recorded_under_the_key() {
    let demo = Demo::start(Backend::Memory).await;
    let client = reqwest::Client::new();
    let url = format!("{}/api/nothing", demo.url);
    let first = send(
        &client,
        Method::POST,
        &url,
        Some("alice"),
        Some("nf-1"),
        None,
    )
    .await;
    assert_eq!(first.status, 404);
    let again = send(
        &client,
        Method::POST,
        &url,
        Some("alice"),
        Some("nf-1"),
        None,
    )
    .await;
    assert_eq!(again.status, 404);
    assert!(
        !again.replayed,
        "a request that matched no route ran nothing: it should not occupy a record for 24 h"
    );
}
