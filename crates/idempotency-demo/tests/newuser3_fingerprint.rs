//! newuser3 (new-user pass): the demo fingerprints JSON bodies canonically (RFC 8785), so
//! `"quantity": 1.0` and `"quantity": 1` are one request to the layer. They must be one to the
//! handler too: it read `1.0` as "not a u32" (400), so a client that corrected its body and
//! retried under the same key got that 400 replayed, and the other way round a body the handler
//! refused got a 201 replay. The handler now reads every whole number alike (`1`, `1.0`, `1e0`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Backend, Demo, send};
use reqwest::Method;

#[tokio::test]
async fn numbers_the_fingerprint_counts_as_one_value_are_one_value_to_the_handler() {
    let demo = Demo::start(Backend::Memory).await;
    let client = reqwest::Client::new();
    let url = format!("{}/api/orders", demo.url);
    let tea = format!("{}/api/products/tea", demo.url);
    // A whole price written as a float is a price.
    let made = send(
        &client,
        Method::PUT,
        &tea,
        Some("alice"),
        Some("p"),
        Some(r#"{"name":"Tea","price":4.5e2}"#),
    )
    .await;
    assert_eq!(made.status, 201, "{}", String::from_utf8_lossy(&made.body));
    assert!(String::from_utf8_lossy(&made.body).contains(r#""price":450"#));

    let first = send(
        &client,
        Method::POST,
        &url,
        Some("alice"),
        Some("n1"),
        Some(r#"{"productId":"tea","quantity":1.0}"#),
    )
    .await;
    assert_eq!(
        first.status,
        201,
        "{}",
        String::from_utf8_lossy(&first.body)
    );
    let again = send(
        &client,
        Method::POST,
        &url,
        Some("alice"),
        Some("n1"),
        Some(r#"{"productId":"tea","quantity":1}"#),
    )
    .await;
    assert_eq!((again.status, again.replayed), (201, true));
    assert_eq!(again.body, first.body);

    // Not whole, negative, or out of range: 400, and nothing ran.
    for (key, quantity) in [
        ("n2", "1.5"),
        ("n3", "-1"),
        ("n4", "4294967296"),
        ("n5", "1e300"),
    ] {
        let body = format!(r#"{{"productId":"tea","quantity":{quantity}}}"#);
        let refused = send(
            &client,
            Method::POST,
            &url,
            Some("alice"),
            Some(key),
            Some(&body),
        )
        .await;
        assert_eq!(
            refused.status,
            400,
            "quantity {quantity}: {}",
            String::from_utf8_lossy(&refused.body)
        );
    }
}
