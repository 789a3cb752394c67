//! breaker12: attacks on the demo's `whole_number` (price/quantity) and on the routing with the
//! layer on each route's handlers (`MethodRouter::route_layer`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Backend, Demo, send};
use reqwest::Method;

async fn put_price(
    demo: &Demo,
    client: &reqwest::Client,
    key: &str,
    price: &str,
) -> common::Answer {
    let url = format!("{}/api/products/p-{key}", demo.url);
    let body = format!(r#"{{"name":"Tea","price":{price}}}"#);
    send(
        client,
        Method::PUT,
        &url,
        Some("alice"),
        Some(key),
        Some(&body),
    )
    .await
}

/// Passing: the forms that are whole numbers in range are read as that number; the rest 400.
#[tokio::test]
async fn whole_number_forms_in_range_are_read_and_the_rest_refused() {
    let demo = Demo::start(Backend::Memory).await;
    let client = reqwest::Client::new();
    for (i, (price, read)) in [
        ("1e0", 1u64),
        ("-0", 0),
        ("0.0", 0),
        ("-0.0", 0),
        ("4294967295.0", 4_294_967_295),
        ("1E2", 100),
        ("18446744073709551615", u64::MAX),
    ]
    .into_iter()
    .enumerate()
    {
        let answer = put_price(&demo, &client, &format!("ok{i}"), price).await;
        assert_eq!(answer.status, 201, "price {price}: {:?}", answer);
        assert_eq!(answer.json()["data"]["price"], read, "price {price}");
    }
    for (i, price) in [
        "1e400",
        "-1e400",
        "\"1\"",
        "null",
        "true",
        "[]",
        "{}",
        "-1",
        "0.5",
        "18446744073709551616",
        "1.8446744073709552e19",
    ]
    .into_iter()
    .enumerate()
    {
        let answer = put_price(&demo, &client, &format!("bad{i}"), price).await;
        assert_eq!(answer.status, 400, "price {price}: {:?}", answer);
    }
    // quantity is u32: 4294967295.0 fits, 4294967296.0 does not.
    let _ = put_price(&demo, &client, "tea", "1").await;
    for (key, quantity, status) in [("q1", "4294967295.0", 201), ("q2", "4294967296.0", 400)] {
        let body = format!(r#"{{"productId":"p-tea","quantity":{quantity}}}"#);
        let url = format!("{}/api/orders", demo.url);
        let answer = send(
            &client,
            Method::POST,
            &url,
            Some("alice"),
            Some(key),
            Some(&body),
        )
        .await;
        assert_eq!(answer.status, status, "quantity {quantity}: {:?}", answer);
    }
}
