//! Auth, malformed requests, limits, refused commands, the health endpoint.

use reqwest::Method;
use serde_json::json;

use crate::common::{RO_TOKEN, TOKEN, TestGateway};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_failures_and_token_forms() {
    let gw = TestGateway::start().await;
    let ping = Some(br#"["PING"]"#.to_vec());
    let missing = gw.request(Method::POST, "/", None, &[], ping.clone()).await;
    assert_eq!(missing.error(401), "Unauthorized");
    let wrong = gw
        .request(Method::POST, "/", Some("wrong-token"), &[], ping.clone())
        .await;
    assert_eq!(wrong.error(401), "Unauthorized");
    let prefix = gw
        .request(Method::POST, "/", Some(&TOKEN[..4]), &[], ping.clone())
        .await;
    prefix.error(401);
    let not_bearer = gw
        .request(
            Method::POST,
            "/",
            None,
            &[("Authorization", &format!("Basic {TOKEN}"))],
            ping.clone(),
        )
        .await;
    not_bearer.error(401);
    let wrong_query = gw
        .request(Method::GET, "/ping?_token=nope", None, &[], None)
        .await;
    wrong_query.error(401);

    // `_token` query parameter, in the JSON and the path forms
    let query = gw
        .request(
            Method::POST,
            &format!("/?_token={TOKEN}"),
            None,
            &[],
            ping.clone(),
        )
        .await;
    assert_eq!(query.result(), "PONG");
    let path = gw
        .request(
            Method::GET,
            &format!("/echo/hi?_token={TOKEN}"),
            None,
            &[],
            None,
        )
        .await;
    assert_eq!(
        path.result(),
        "hi",
        "_token is not passed on as an argument"
    );
    // pipelines need auth too
    let pipeline = gw
        .request(
            Method::POST,
            "/pipeline",
            None,
            &[],
            Some(br#"[["PING"]]"#.to_vec()),
        )
        .await;
    pipeline.error(401);
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_token() {
    let gw = TestGateway::start().await;
    assert_eq!(gw.cmd(json!(["SET", "k", "v"])).await.result(), "OK");
    let ro = |path: &'static str, body: serde_json::Value| {
        let gw = &gw;
        async move {
            gw.request(
                Method::POST,
                path,
                Some(RO_TOKEN),
                &[],
                Some(serde_json::to_vec(&body).unwrap()),
            )
            .await
        }
    };
    assert_eq!(ro("/", json!(["GET", "k"])).await.result(), "v");
    assert_eq!(ro("/", json!(["TTL", "k"])).await.result(), -1);
    let write = ro("/", json!(["SET", "k", "other"])).await;
    assert!(write.error(400).starts_with("NOPERM"), "{write:?}");
    let scan = ro("/", json!(["SCAN", 0])).await;
    assert!(scan.error(400).starts_with("NOPERM"));
    let keys = ro("/", json!(["KEYS", "*"])).await;
    assert!(keys.error(400).starts_with("NOPERM"));
    let eval = ro(
        "/",
        json!(["EVAL", "return redis.call('SET', KEYS[1], 'x')", 1, "k"]),
    )
    .await;
    assert!(eval.error(400).starts_with("NOPERM"));
    // the path form and pipelines obey the same rules
    let path = gw
        .request(Method::GET, "/del/k", Some(RO_TOKEN), &[], None)
        .await;
    assert!(path.error(400).starts_with("NOPERM"));
    let pipeline = ro("/pipeline", json!([["GET", "k"], ["DEL", "k"]])).await;
    assert_eq!(pipeline.json[0], json!({"result": "v"}));
    assert!(
        pipeline.json[1]["error"]
            .as_str()
            .unwrap()
            .starts_with("NOPERM")
    );
    let multi = ro("/multi-exec", json!([["GET", "k"], ["DEL", "k"]])).await;
    assert!(multi.error(400).starts_with("NOPERM"));
    // nothing was written
    assert_eq!(gw.cmd(json!(["GET", "k"])).await.result(), "v");
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests() {
    let gw = TestGateway::start().await;
    let raw = |path: &'static str, body: &'static str| {
        let gw = &gw;
        async move {
            gw.request(
                Method::POST,
                path,
                Some(TOKEN),
                &[],
                Some(body.as_bytes().to_vec()),
            )
            .await
        }
    };
    let broken = raw("/", r#"["SET", "k""#).await;
    assert!(broken.error(400).contains("JSON"), "{broken:?}");
    raw("/", r#"{"command":"GET"}"#).await.error(400);
    raw("/", "[]").await.error(400);
    raw("/", r#"[1, "k"]"#).await.error(400);
    raw("/", r#"["SET", "k", null]"#).await.error(400);
    raw("/", r#"["SET", "k", {"a":1}]"#).await.error(400);
    raw("/", "").await.error(400);
    raw("/pipeline", r#"["GET", "k"]"#).await.error(400);
    raw("/pipeline", "[]").await.error(400);
    raw("/multi-exec", "not json").await.error(400);
    gw.request(Method::GET, "/", Some(TOKEN), &[], None)
        .await
        .error(405);
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_and_pipeline_limits() {
    let gw = TestGateway::start_with(|c| c.with_max_body_bytes(1024).with_max_pipeline(3)).await;
    let big = format!(r#"["SET","k","{}"]"#, "x".repeat(2000));
    let too_big = gw
        .request(Method::POST, "/", Some(TOKEN), &[], Some(big.into_bytes()))
        .await;
    assert!(too_big.error(413).contains("1024"), "{too_big:?}");
    // An early answer: no sync token (only answers to requests read in full carry one).
    assert!(!too_big.headers.contains_key("upstash-sync-token"));
    let path_big = gw
        .request(
            Method::POST,
            "/set/k",
            Some(TOKEN),
            &[],
            Some(vec![b'y'; 1025]),
        )
        .await;
    path_big.error(413);
    let just_fits = gw
        .request(
            Method::POST,
            "/set/k",
            Some(TOKEN),
            &[],
            Some(vec![b'y'; 1024]),
        )
        .await;
    assert_eq!(just_fits.result(), "OK");

    let three = json!([["PING"], ["PING"], ["PING"]]);
    assert_eq!(gw.post("/pipeline", &three, &[]).await.status, 200);
    let four = json!([["PING"], ["PING"], ["PING"], ["PING"]]);
    let too_long = gw.post("/pipeline", &four, &[]).await;
    assert!(too_long.error(400).contains("too many commands"));
    gw.post("/multi-exec", &four, &[]).await.error(400);
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_body_limit_takes_a_3_mib_value() {
    let gw = TestGateway::start().await;
    let value = "v".repeat(3 * 1024 * 1024);
    let set = gw.cmd(json!(["SET", "big", value])).await;
    assert_eq!(set.result(), "OK");
    let strlen = gw.cmd(json!(["STRLEN", "big"])).await;
    assert_eq!(strlen.result(), 3 * 1024 * 1024);
    let over = gw
        .request(
            Method::POST,
            "/set/big",
            Some(TOKEN),
            &[],
            Some(vec![b'v'; kv_rest_gateway::DEFAULT_MAX_BODY_BYTES + 1]),
        )
        .await;
    over.error(413);
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_commands() {
    let gw = TestGateway::start().await;
    for command in [
        json!(["WATCH", "k"]),
        json!(["UNWATCH"]),
        json!(["MULTI"]),
        json!(["EXEC"]),
        json!(["DISCARD"]),
        json!(["BLPOP", "k", 1]),
        json!(["BRPOP", "k", 1]),
        json!(["BLMOVE", "a", "b", "LEFT", "LEFT", 1]),
        json!(["BZPOPMIN", "z", 1]),
        json!(["XREAD", "BLOCK", 100, "STREAMS", "s", "$"]),
        json!(["SUBSCRIBE", "c"]),
        json!(["PSUBSCRIBE", "c*"]),
        json!(["MONITOR"]),
        json!(["SELECT", 1]),
        json!(["QUIT"]),
        json!(["CLIENT", "KILL", "TYPE", "normal"]),
        json!(["SHUTDOWN"]),
    ] {
        let reply = gw.cmd(command.clone()).await;
        let error = reply.error(400);
        assert!(
            error.starts_with("ERR Command is not available"),
            "{command}: {error}"
        );
    }
    // a non-blocking XREAD is fine
    gw.cmd(json!(["XADD", "s", "*", "f", "v"])).await.result();
    let xread = gw
        .cmd(json!(["XREAD", "COUNT", 1, "STREAMS", "s", "0"]))
        .await;
    assert_eq!(xread.status, 200, "{xread:?}");
    // the shared connection is still in a sane state
    assert_eq!(gw.cmd(json!(["PING"])).await.result(), "PONG");
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_endpoint() {
    let mut gw = TestGateway::start().await;
    let health = gw.request(Method::GET, "/~health", None, &[], None).await;
    assert_eq!(health.result(), "OK");
    let head = gw.request(Method::HEAD, "/~health", None, &[], None).await;
    assert_eq!(head.status, 200);
    gw.redis.stop().unwrap();
    let down = gw.request(Method::GET, "/~health", None, &[], None).await;
    assert_eq!(down.status, 503, "{down:?}");
    gw.shutdown().await;
}
