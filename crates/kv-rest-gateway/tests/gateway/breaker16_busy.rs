//! breaker16: the check that Redis is still busy before a script's busy refusal is resent
//! must not queue behind the script that makes Redis busy. A long script sent through the
//! gateway itself (`POST /` with the main token) travels on the main user's shared
//! connection; a check sent on that connection answers only after the script ends, so a
//! genuine refusal of another client's script was answered as 400 instead of waited out.

use std::time::Duration;

use reqwest::Method;
use serde_json::{Value as Json, json};

use crate::busy_kit::{busy_gateway, until_busy};
use crate::common::{RO_TOKEN, TestGateway};

/// A script that keeps Redis busy for `ms` milliseconds (it reads the server's clock) and
/// then returns `"done"`.
fn long_script(ms: u64) -> String {
    format!(
        "local s = redis.call('TIME') local t0 = s[1] * 1000000 + s[2] \
         while true do local n = redis.call('TIME') \
         if n[1] * 1000000 + n[2] - t0 > {} then break end end return 'done'",
        ms * 1000
    )
}

/// A gateway with a read-only token on a Redis that answers `BUSY` after 100 ms of a script,
/// ready, and with its main user's shared connection open.
async fn gateway() -> TestGateway {
    busy_gateway(0, &[], |config| {
        config.with_script_time_limit(Duration::from_secs(5))
    })
    .await
}

/// Sends `body` to `path` with the read-only token once Redis is busy with the main token's
/// 1.5 s script, and returns both replies.
async fn during_gateway_script(gw: &TestGateway, path: &str, body: &Json) -> (Json, Json, u16) {
    let long = gw.cmd(json!(["EVAL", long_script(1500), 0]));
    let other = async {
        until_busy(gw.redis.port()).await;
        gw.request(
            Method::POST,
            path,
            Some(RO_TOKEN),
            &[("content-type", "application/json")],
            Some(serde_json::to_vec(body).unwrap()),
        )
        .await
    };
    let (long, other) = tokio::join!(long, other);
    assert_eq!(long.status, 200, "{long:?}");
    (long.json, other.json, other.status)
}

/// `POST /` with `EVAL_RO` and the read-only token while the main token's script runs: the
/// refusal is waited out and the script's own reply comes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_script_waits_out_a_long_script_sent_through_the_gateway() {
    let gw = gateway().await;
    let (long, other, status) =
        during_gateway_script(&gw, "/", &json!(["EVAL_RO", "return 'ro'", 0])).await;
    assert_eq!(long["result"], "done");
    assert_eq!(status, 200, "answered the busy refusal: {other}");
    assert_eq!(other["result"], "ro");
    gw.shutdown().await;
}

/// The same through `/pipeline` (its first round is checked the same way).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_pipeline_script_waits_out_a_long_script_sent_through_the_gateway() {
    let gw = gateway().await;
    let (long, other, status) = during_gateway_script(
        &gw,
        "/pipeline",
        &json!([["EVAL_RO", "return 'ro'", 0], ["ECHO", "after"]]),
    )
    .await;
    assert_eq!(long["result"], "done");
    assert_eq!(status, 200, "{other}");
    assert_eq!(
        other,
        json!([{"result": "ro"}, {"result": "after"}]),
        "the refusal was answered instead of waited out"
    );
    gw.shutdown().await;
}
