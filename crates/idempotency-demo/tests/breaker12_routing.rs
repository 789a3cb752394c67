//! breaker12: methods a route lacks, HEAD/OPTIONS, trailing slashes and encoded paths must be
//! answered without the idempotency layer (no key needed, nothing recorded), and the layer must
//! still guard every mutating handler.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Backend, Demo, send};
use reqwest::Method;

/// Passing: no key needed, and no replay, for anything that is not a mutating handler.
#[tokio::test]
async fn unrouted_paths_and_missing_methods_need_no_key() {
    let demo = Demo::start(Backend::Memory).await;
    let client = reqwest::Client::new();
    let u = &demo.url;
    let cases: Vec<(Method, String, &[u16])> = vec![
        (Method::HEAD, format!("{u}/api/orders"), &[200]),
        (Method::HEAD, format!("{u}/api/products/tea"), &[404]),
        (Method::OPTIONS, format!("{u}/api/orders"), &[405]),
        (Method::PATCH, format!("{u}/api/orders"), &[405]),
        (Method::PATCH, format!("{u}/api/products/tea"), &[405]),
        (Method::DELETE, format!("{u}/api/products/tea"), &[405]),
        (Method::GET, format!("{u}/api/orders/1/status"), &[405]),
        (Method::POST, format!("{u}/api/orders/"), &[404]),
        (Method::PUT, format!("{u}/api/products/tea/"), &[404]),
        (Method::POST, format!("{u}/api/%6Frders"), &[404]),
        (
            Method::PUT,
            format!("{u}/api/internal/metrics/idempotency"),
            &[405],
        ),
    ];
    for (method, url, want) in cases {
        let answer = send(
            &client,
            method.clone(),
            &url,
            Some("alice"),
            None,
            Some("{}"),
        )
        .await;
        assert!(
            want.contains(&answer.status),
            "{method} {url}: {} {}",
            answer.status,
            String::from_utf8_lossy(&answer.body)
        );
        assert!(!answer.replayed, "{method} {url}");
    }
}

/// Passing: every mutating route still needs a key (400 without one), an encoded product id
/// included.
#[tokio::test]
async fn every_mutating_handler_still_needs_a_key() {
    let demo = Demo::start(Backend::Memory).await;
    let client = reqwest::Client::new();
    let u = &demo.url;
    for (method, url, body) in [
        (
            Method::PUT,
            format!("{u}/api/products/tea"),
            r#"{"name":"T","price":1}"#,
        ),
        (
            Method::PUT,
            format!("{u}/api/products/t%20ea"),
            r#"{"name":"T","price":1}"#,
        ),
        (
            Method::POST,
            format!("{u}/api/orders"),
            r#"{"productId":"tea","quantity":1}"#,
        ),
        (
            Method::PUT,
            format!("{u}/api/orders/1/status"),
            r#"{"status":"paid"}"#,
        ),
    ] {
        let answer = send(
            &client,
            method.clone(),
            &url,
            Some("alice"),
            None,
            Some(body),
        )
        .await;
        assert_eq!(
            answer.status,
            400,
            "{method} {url}: {}",
            String::from_utf8_lossy(&answer.body)
        );
    }
}
