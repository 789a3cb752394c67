//! Redis going away and coming back, without restarting the gateway.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::common::TestGateway;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_gives_5xx_then_recovers() {
    let mut gw = TestGateway::start().await;
    assert_eq!(gw.cmd(json!(["SET", "k", "v"])).await.result(), "OK");

    gw.redis.stop().unwrap();
    for _ in 0..3 {
        let down = gw.cmd(json!(["GET", "k"])).await;
        assert!((500..600).contains(&down.status), "{down:?}");
        assert!(down.json["error"].is_string(), "{down:?}");
        let pipeline = gw.post("/pipeline", &json!([["GET", "k"]]), &[]).await;
        assert!((500..600).contains(&pipeline.status), "{pipeline:?}");
        let multi = gw.post("/multi-exec", &json!([["GET", "k"]]), &[]).await;
        assert!((500..600).contains(&multi.status), "{multi:?}");
    }

    // Same port, empty database (persistence is off).
    gw.redis.restart().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let reply = gw.cmd(json!(["SET", "k", "back"])).await;
        if reply.status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "no recovery: {reply:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(gw.cmd(json!(["GET", "k"])).await.result(), "back");
    let pipeline = gw.post("/pipeline", &json!([["GET", "k"]]), &[]).await;
    assert_eq!(pipeline.json, json!([{"result": "back"}]));
    let multi = gw.post("/multi-exec", &json!([["GET", "k"]]), &[]).await;
    assert_eq!(multi.json, json!([{"result": "back"}]));
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_starts_before_redis() {
    let mut gw = TestGateway::start().await;
    gw.redis.stop().unwrap();
    // a fresh gateway whose Redis is down from the start: 5xx, no panic, no exit
    let late = TestGateway::start_unready_with({
        let url = gw.redis.url().to_owned();
        move |config| kv_rest_gateway::GatewayConfig {
            redis_url: url,
            ..config
        }
    })
    .await;
    let down = late.cmd(json!(["PING"])).await;
    assert!((500..600).contains(&down.status), "{down:?}");
    gw.redis.restart().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let reply = late.cmd(json!(["PING"])).await;
        if reply.status == 200 {
            assert_eq!(reply.result(), "PONG");
            break;
        }
        assert!(Instant::now() < deadline, "no recovery: {reply:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    late.shutdown().await;
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hung_redis_times_out_with_5xx_then_recovers() {
    let mut gw = TestGateway::start_with(|config| {
        config.with_timeouts(Duration::from_millis(500), Duration::from_millis(500))
    })
    .await;
    assert_eq!(gw.cmd(json!(["SET", "k", "v"])).await.result(), "OK");
    gw.redis.pause().unwrap();
    let started = Instant::now();
    let hung = gw.cmd(json!(["GET", "k"])).await;
    let waited = started.elapsed();
    gw.redis.resume().unwrap();
    assert!((500..600).contains(&hung.status), "{hung:?}");
    assert!(waited < Duration::from_secs(5), "waited {waited:?}");
    // Replies to the timed-out request arrive late; later requests must still get their own.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let reply = gw.cmd(json!(["GET", "k"])).await;
        if reply.status == 200 {
            assert_eq!(reply.result(), "v");
            break;
        }
        assert!(Instant::now() < deadline, "no recovery: {reply:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(gw.cmd(json!(["ECHO", "mine"])).await.result(), "mine");
    gw.shutdown().await;
}
