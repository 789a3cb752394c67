//! breaker12 (defects found, fixed: `whole_number` reads the decimal text): attacks on the demo's `whole_number` (price/quantity) and on the routing with the
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

/// Was a defect (fixed): a float form of an integer above 2^53 is silently rounded to another value.
/// `9007199254740993` is read exactly, `9007199254740993.0` (the same whole number) is read as
/// `9007199254740992`: the product is stored with a price the client never sent. (The layer's
/// lossless fingerprint refuses that body's canonical form, so no replay is confused; the
/// handler alone stores the wrong value instead of refusing it.)
#[tokio::test]
async fn a_float_form_above_2_pow_53_is_not_rounded_to_another_price() {
    let demo = Demo::start(Backend::Memory).await;
    let client = reqwest::Client::new();
    let exact = put_price(&demo, &client, "int", "9007199254740993").await;
    assert_eq!(exact.json()["data"]["price"], 9_007_199_254_740_993u64);
    let float = put_price(&demo, &client, "float", "9007199254740993.0").await;
    assert!(
        float.status == 400 || float.json()["data"]["price"] == 9_007_199_254_740_993u64,
        "9007199254740993.0 stored as {:?} (status {})",
        float.json()["data"]["price"],
        float.status
    );
}

/// Was a defect (fixed): a number that is not whole is accepted as the neighbouring whole number
/// because it rounds to it as an f64: `0.99999999999999999` becomes quantity/price 1,
/// `4294967295.0000001` becomes 4294967295, `1e-400` (underflow) becomes price 0. The doc
/// says "not whole ... 400".
#[tokio::test]
async fn a_number_that_is_not_whole_is_refused_even_when_its_f64_is_whole() {
    let demo = Demo::start(Backend::Memory).await;
    let client = reqwest::Client::new();
    let mut accepted = Vec::new();
    for (i, price) in [
        "0.99999999999999999",
        "1.0000000000000001",
        "4294967295.0000001",
        "1e-400",
    ]
    .into_iter()
    .enumerate()
    {
        let answer = put_price(&demo, &client, &format!("nw{i}"), price).await;
        if answer.status != 400 {
            accepted.push(format!(
                "{price} -> {} {}",
                answer.status,
                answer.json()["data"]["price"]
            ));
        }
    }
    assert!(accepted.is_empty(), "not whole, yet accepted: {accepted:?}");
}
