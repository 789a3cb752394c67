//! The request forms, pipelines, transactions and the reply encodings.

use reqwest::Method;
use serde_json::json;

use crate::common::{Reply, TOKEN, TestGateway};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_form_with_every_argument_type() {
    let gw = TestGateway::start().await;
    assert_eq!(
        gw.cmd(json!(["SET", "k", "v", "PX", 60_000]))
            .await
            .result(),
        "OK"
    );
    assert_eq!(gw.cmd(json!(["get", "k"])).await.result(), "v");
    // null stays under the result key
    let missing = gw.cmd(json!(["GET", "missing"])).await;
    assert_eq!(missing.text, r#"{"result":null}"#);
    assert_eq!(gw.cmd(json!(["SET", "n", 41])).await.result(), "OK");
    assert_eq!(gw.cmd(json!(["INCR", "n"])).await.result(), 42);
    assert_eq!(
        gw.cmd(json!(["INCRBYFLOAT", "n", 0.5])).await.result(),
        "42.5"
    );
    assert_eq!(gw.cmd(json!(["SET", "b", true])).await.result(), "OK");
    assert_eq!(gw.cmd(json!(["GET", "b"])).await.result(), "true");
    assert_eq!(
        gw.cmd(json!(["RPUSH", "list", "a", "b", 3])).await.result(),
        3
    );
    assert_eq!(
        gw.cmd(json!(["LRANGE", "list", 0, -1])).await.result(),
        &json!(["a", "b", "3"])
    );
    // Redis errors keep their text and code prefix, HTTP 400
    let wrong_type = gw.cmd(json!(["INCR", "list"])).await;
    assert!(
        wrong_type.error(400).starts_with("WRONGTYPE"),
        "{wrong_type:?}"
    );
    // Unknown names never reach Redis: the allow-list refuses them.
    let unknown = gw.cmd(json!(["NOSUCHCOMMAND", "x"])).await;
    assert!(
        unknown
            .error(400)
            .starts_with("ERR Command is not available"),
        "{unknown:?}"
    );
    let arity = gw.cmd(json!(["GET"])).await;
    assert!(
        arity
            .error(400)
            .starts_with("ERR wrong number of arguments"),
        "{arity:?}"
    );
    // invalid UTF-8 from Redis becomes U+FFFD without base64
    gw.cmd(json!(["SET", "bin", "x"])).await;
    gw.cmd(json!(["SETRANGE", "bin", 0, "\u{00e9}"])).await; // 0xC3 0xA9
    let partial = gw.cmd(json!(["GETRANGE", "bin", 0, 0])).await; // just 0xC3
    assert_eq!(partial.result(), "\u{fffd}");
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn path_form_get_post_put_head() {
    let gw = TestGateway::start().await;
    let auth = Some(TOKEN);
    // URL-encoded segments: a slash and a space inside arguments
    let set = gw
        .request(Method::GET, "/set/a%2Fb/hello%20world", auth, &[], None)
        .await;
    assert_eq!(set.result(), "OK");
    let get = gw.request(Method::GET, "/get/a%2Fb", auth, &[], None).await;
    assert_eq!(get.result(), "hello world");

    // POST body is the last path argument, query args come after it
    let post = gw
        .request(
            Method::POST,
            "/set/posted?EX=100&NX",
            auth,
            &[],
            Some(b"raw body / with \"quotes\"".to_vec()),
        )
        .await;
    assert_eq!(post.result(), "OK");
    assert_eq!(
        gw.cmd(json!(["GET", "posted"])).await.result(),
        "raw body / with \"quotes\""
    );
    let ttl = gw.cmd(json!(["TTL", "posted"])).await;
    assert!(
        (1..=100).contains(&ttl.result().as_i64().unwrap()),
        "{ttl:?}"
    );
    // NX took effect: a second NX set does nothing
    let again = gw
        .request(
            Method::POST,
            "/set/posted?NX",
            auth,
            &[],
            Some(b"x".to_vec()),
        )
        .await;
    assert_eq!(again.text, r#"{"result":null}"#);

    let put = gw
        .request(Method::PUT, "/set/put", auth, &[], Some(b"p".to_vec()))
        .await;
    assert_eq!(put.result(), "OK");
    let head = gw.request(Method::HEAD, "/get/put", auth, &[], None).await;
    assert_eq!(head.status, 200);
    assert!(head.text.is_empty());

    let delete = gw
        .request(Method::DELETE, "/get/put", auth, &[], None)
        .await;
    assert_eq!(delete.status, 405);
    assert_eq!(allowed(&delete), ["GET", "HEAD", "POST", "PUT"]);
    assert_eq!(delete.text, r#"{"error":"Method not allowed"}"#);
    // Answered before any token check: no sync token, even with a valid token.
    assert!(!delete.headers.contains_key("upstash-sync-token"));
    let get_root = gw.request(Method::GET, "/", auth, &[], None).await;
    assert_eq!(get_root.status, 405);
    assert_eq!(allowed(&get_root), ["POST"]);
    for path in ["/pipeline", "/pipeline/", "/multi-exec", "/multi-exec/"] {
        let get = gw.request(Method::GET, path, auth, &[], None).await;
        assert_eq!(get.status, 405, "{path}");
        assert_eq!(allowed(&get), ["POST"], "{path}");
    }
    // The health path checks health on GET and HEAD only; other methods are the path form's.
    let delete_health = gw
        .request(Method::DELETE, "/~health", None, &[], None)
        .await;
    assert_eq!(delete_health.status, 405);
    assert_eq!(allowed(&delete_health), ["GET", "HEAD", "POST", "PUT"]);
    let post_health = gw.request(Method::POST, "/~health", None, &[], None).await;
    assert_eq!(post_health.status, 401, "a command path needs the token");
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipeline_with_a_failing_command_in_the_middle() {
    let gw = TestGateway::start().await;
    let reply = gw
        .post(
            "/pipeline",
            &json!([
                ["SET", "p", "text"],
                ["INCR", "p"],
                ["WATCH", "p"],
                ["GET", "p"],
                ["GET", "none"],
                ["ECHO", 5]
            ]),
            &[],
        )
        .await;
    assert_eq!(reply.status, 200, "{reply:?}");
    let items = reply.json.as_array().unwrap();
    assert_eq!(items.len(), 6);
    assert_eq!(items[0], json!({"result": "OK"}));
    assert!(
        items[1]["error"]
            .as_str()
            .unwrap()
            .starts_with("ERR value is not an integer")
    );
    assert!(
        items[2]["error"]
            .as_str()
            .unwrap()
            .contains("not available")
    );
    assert_eq!(items[3], json!({"result": "text"}));
    assert_eq!(items[4], json!({"result": null}));
    assert_eq!(items[5], json!({"result": "5"}));
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_exec_inline_errors_and_refusal() {
    let gw = TestGateway::start().await;
    // runtime error inline, the rest of the transaction still applied
    let reply = gw
        .post(
            "/multi-exec",
            &json!([
                ["SET", "t", "text"],
                ["INCR", "t"],
                ["APPEND", "t", "!"],
                ["GET", "t"]
            ]),
            &[],
        )
        .await;
    assert_eq!(reply.status, 200, "{reply:?}");
    let items = reply.json.as_array().unwrap();
    assert_eq!(items[0], json!({"result": "OK"}));
    assert!(
        items[1]["error"].as_str().unwrap().starts_with("ERR"),
        "{reply:?}"
    );
    assert_eq!(items[2], json!({"result": 5}));
    assert_eq!(items[3], json!({"result": "text!"}));

    // refused as a whole: unknown command → EXECABORT; nothing applied
    let refused = gw
        .post(
            "/multi-exec",
            &json!([["SET", "refused", "1"], ["GET"], ["GET", "refused"]]),
            &[],
        )
        .await;
    assert!(
        refused
            .error(400)
            .starts_with("ERR wrong number of arguments"),
        "{refused:?}"
    );
    assert_eq!(gw.cmd(json!(["EXISTS", "refused"])).await.result(), 0);

    // wrong arity is refused at queue time, too
    let arity = gw
        .post("/multi-exec", &json!([["SET", "x"], ["GET", "x"]]), &[])
        .await;
    assert!(
        arity.error(400).starts_with("ERR wrong number"),
        "{arity:?}"
    );

    // commands the gateway refuses refuse the whole transaction
    let watch = gw
        .post(
            "/multi-exec",
            &json!([["SET", "w", "1"], ["WATCH", "w"]]),
            &[],
        )
        .await;
    assert!(watch.error(400).contains("WATCH"), "{watch:?}");
    assert_eq!(gw.cmd(json!(["EXISTS", "w"])).await.result(), 0);
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn base64_encoding_of_every_reply_shape() {
    let gw = TestGateway::start().await;
    let b64 = [("Upstash-Encoding", "base64")];
    let single = |command| {
        let gw = &gw;
        async move { gw.post("/", &command, &b64).await }
    };
    // status OK stays readable; PONG (a status too) is encoded
    assert_eq!(single(json!(["SET", "k", "v"])).await.result(), "OK");
    assert_eq!(single(json!(["PING"])).await.result(), "UE9ORw==");
    // a bulk string "OK" is encoded
    single(json!(["SET", "ok", "OK"])).await;
    assert_eq!(single(json!(["GET", "ok"])).await.result(), "T0s=");
    // integers and null untouched; TYPE's status reply encoded
    assert_eq!(single(json!(["INCR", "n"])).await.result(), 1);
    assert_eq!(
        single(json!(["GET", "missing"])).await.text,
        r#"{"result":null}"#
    );
    assert_eq!(single(json!(["TYPE", "k"])).await.result(), "c3RyaW5n");
    // nested arrays with nil inside
    single(json!(["HSET", "h", "f", "v"])).await;
    single(json!(["RPUSH", "l", "a"])).await;
    let nested = single(json!([
        "EVAL",
        "return {KEYS[1], {1, 'x'}, redis.call('GET', 'missing')}",
        1,
        "key"
    ]))
    .await;
    assert_eq!(nested.result(), &json!(["a2V5", [1, "eA=="], null]));
    let mget = single(json!(["MGET", "k", "missing", "ok"])).await;
    assert_eq!(mget.result(), &json!(["dg==", null, "T0s="]));
    // errors are never encoded
    let error = single(json!(["INCR", "k"])).await;
    assert!(error.error(400).starts_with("ERR value is not an integer"));

    // each pipeline and transaction item
    let batch = json!([
        ["PING"],
        ["SET", "a", "b"],
        ["GET", "a"],
        ["INCR", "a"],
        ["LRANGE", "l", 0, -1]
    ]);
    for path in ["/pipeline", "/multi-exec"] {
        let reply = gw.post(path, &batch, &b64).await;
        assert_eq!(reply.status, 200, "{reply:?}");
        let items = reply.json.as_array().unwrap();
        assert_eq!(items[0], json!({"result": "UE9ORw=="}), "{path}");
        assert_eq!(items[1], json!({"result": "OK"}), "{path}");
        assert_eq!(items[2], json!({"result": "Yg=="}), "{path}");
        assert!(
            items[3]["error"].as_str().unwrap().starts_with("ERR"),
            "{path}"
        );
        assert_eq!(items[4], json!({"result": ["YQ=="]}), "{path}");
    }
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_sync_token_telemetry_and_response_format() {
    let gw = TestGateway::start().await;
    let telemetry = [
        ("upstash-sync-token", ""),
        ("Upstash-Telemetry-Sdk", "upstash-redis@v1"),
        ("Upstash-Telemetry-Platform", "unknown"),
        ("Upstash-Telemetry-Runtime", "node@v20"),
    ];
    let first = gw.post("/", &json!(["PING"]), &telemetry).await;
    assert_eq!(first.result(), "PONG");
    let token1 = first.headers["upstash-sync-token"]
        .to_str()
        .unwrap()
        .to_owned();
    let second = gw
        .post(
            "/",
            &json!(["PING"]),
            &[("upstash-sync-token", "anything-at-all")],
        )
        .await;
    let token2 = second.headers["upstash-sync-token"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(!token1.is_empty());
    assert_ne!(token1, token2, "a fresh token every response");
    // also on the errors of authenticated requests
    let bad_json = gw
        .request(Method::POST, "/", Some(TOKEN), &[], Some(b"[".to_vec()))
        .await;
    bad_json.error(400);
    assert!(bad_json.headers.contains_key("upstash-sync-token"));
    let redis_error = gw.cmd(json!(["INCR", "no-such-command-here", "x"])).await;
    redis_error.error(400);
    assert!(redis_error.headers.contains_key("upstash-sync-token"));
    // but never to a client that did not authenticate (the token is a growing counter)
    let unauthorized = gw.request(Method::POST, "/", None, &[], None).await;
    unauthorized.error(401);
    let wrong = gw
        .request(Method::GET, "/ping", Some("wrong"), &[], None)
        .await;
    wrong.error(401);
    let not_allowed = gw.request(Method::DELETE, "/", None, &[], None).await;
    not_allowed.error(405);
    let health = gw.request(Method::GET, "/~health", None, &[], None).await;
    assert_eq!(health.status, 200);
    for early in [&unauthorized, &wrong, &not_allowed, &health] {
        assert!(
            !early.headers.contains_key("upstash-sync-token"),
            "{early:?}"
        );
    }

    let json_format = gw
        .post(
            "/",
            &json!(["PING"]),
            &[("Upstash-Response-Format", "json")],
        )
        .await;
    assert_eq!(json_format.result(), "PONG");
    let resp2 = gw
        .post(
            "/",
            &json!(["PING"]),
            &[("Upstash-Response-Format", "resp2")],
        )
        .await;
    assert!(resp2.error(400).contains("resp2"));
    let unknown = gw
        .post("/", &json!(["PING"]), &[("Upstash-Response-Format", "xml")])
        .await;
    unknown.error(400);
    gw.shutdown().await;
}

/// The methods of an `Allow` header (RFC 9110 §10.2.1: a list, spaces optional).
fn allowed(response: &Reply) -> Vec<String> {
    response.headers["allow"]
        .to_str()
        .unwrap()
        .split(',')
        .map(|method| method.trim().to_owned())
        .collect()
}
