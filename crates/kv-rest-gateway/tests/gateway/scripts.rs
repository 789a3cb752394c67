//! EVAL / EVALSHA / SCRIPT LOAD, with and without the Upstash-only `allow-key-locking` flag.

use serde_json::json;

use crate::common::TestGateway;

const FLAGGED: &str =
    "#!lua flags=allow-key-locking\nreturn redis.call('INCRBY', KEYS[1], ARGV[1])";

/// The SHA-1 a client computes for the text it sends (lower-case hex, like Redis).
fn sha1_hex(text: &str) -> String {
    sha1_smol::Sha1::from(text.as_bytes()).digest().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_scripts_pass_through() {
    let gw = TestGateway::start().await;
    let script = "return ARGV[1]";
    let sha = sha1_hex(script);
    let missing = gw.cmd(json!(["EVALSHA", sha, 0, "x"])).await;
    assert!(missing.error(400).starts_with("NOSCRIPT"), "{missing:?}");
    assert_eq!(
        gw.cmd(json!(["SCRIPT", "LOAD", script])).await.result(),
        &json!(sha)
    );
    assert_eq!(gw.cmd(json!(["EVALSHA", sha, 0, "x"])).await.result(), "x");
    assert_eq!(gw.cmd(json!(["EVAL", script, 0, "y"])).await.result(), "y");
    let error = gw
        .cmd(json!(["EVAL", "return redis.call('NOPE')", 0]))
        .await;
    assert!(error.error(400).starts_with("ERR"), "{error:?}");
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flagged_script_eval_then_evalsha_by_flagged_sha() {
    let gw = TestGateway::start().await;
    let flagged_sha = sha1_hex(FLAGGED);
    // Unknown yet: NOSCRIPT, so a client falls back to EVAL.
    let first = gw
        .cmd(json!(["EVALSHA", flagged_sha, 1, "counter", 1]))
        .await;
    assert!(first.error(400).starts_with("NOSCRIPT"), "{first:?}");
    // EVAL of the flagged text runs on stock Redis (the flag is stripped).
    assert_eq!(
        gw.cmd(json!(["EVAL", FLAGGED, 1, "counter", 2]))
            .await
            .result(),
        2
    );
    // Now EVALSHA with the SHA of the flagged text finds it (upper-case SHA too).
    assert_eq!(
        gw.cmd(json!(["EVALSHA", flagged_sha, 1, "counter", 3]))
            .await
            .result(),
        5
    );
    assert_eq!(
        gw.cmd(json!([
            "evalsha",
            flagged_sha.to_uppercase(),
            1,
            "counter",
            1
        ]))
        .await
        .result(),
        6
    );
    // and inside pipelines and transactions
    let pipeline = gw
        .post(
            "/pipeline",
            &json!([
                ["EVALSHA", flagged_sha, 1, "counter", 10],
                ["GET", "counter"]
            ]),
            &[],
        )
        .await;
    assert_eq!(pipeline.json, json!([{"result": 16}, {"result": "16"}]));
    let multi = gw
        .post(
            "/multi-exec",
            &json!([["EVALSHA", flagged_sha, 1, "counter", 4]]),
            &[],
        )
        .await;
    assert_eq!(multi.json, json!([{"result": 20}]));
    let exists = gw
        .cmd(json!([
            "SCRIPT",
            "EXISTS",
            flagged_sha,
            "0000000000000000000000000000000000000000"
        ]))
        .await;
    assert_eq!(exists.result(), &json!([1, 0]));
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flagged_script_load_returns_the_flagged_sha() {
    let gw = TestGateway::start().await;
    let flagged_sha = sha1_hex(FLAGGED);
    let loaded = gw.cmd(json!(["SCRIPT", "LOAD", FLAGGED])).await;
    assert_eq!(loaded.result(), &json!(flagged_sha));
    // base64 encoding applies to the replaced SHA like to any string
    let encoded = gw
        .post(
            "/",
            &json!(["script", "load", FLAGGED]),
            &[("Upstash-Encoding", "base64")],
        )
        .await;
    let expected = base64_of(&flagged_sha);
    assert_eq!(encoded.result(), &json!(expected));
    assert_eq!(
        gw.cmd(json!(["EVALSHA", flagged_sha, 1, "c", 7]))
            .await
            .result(),
        7
    );
    // After SCRIPT FLUSH the mapping is stale: NOSCRIPT, then EVAL recovers.
    gw.cmd(json!(["SCRIPT", "FLUSH"])).await.result();
    let stale = gw.cmd(json!(["EVALSHA", flagged_sha, 1, "c", 1])).await;
    assert!(stale.error(400).starts_with("NOSCRIPT"), "{stale:?}");
    assert_eq!(
        gw.cmd(json!(["EVAL", FLAGGED, 1, "c", 1])).await.result(),
        8
    );
    // Stock Redis itself rejects the flag: proof that the gateway strips it.
    let mut direct = redis_cli_eval(&gw, FLAGGED);
    direct.make_ascii_lowercase();
    assert!(
        direct.contains("unexpected") || direct.contains("flag"),
        "{direct}"
    );
    gw.shutdown().await;
}

fn base64_of(text: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(text)
}

/// Runs EVAL of `script` with `redis-cli` directly against the Redis behind the gateway.
fn redis_cli_eval(gw: &TestGateway, script: &str) -> String {
    let output = std::process::Command::new("redis-cli")
        .args([
            "-p",
            &gw.redis.port().to_string(),
            "EVAL",
            script,
            "1",
            "c",
            "1",
        ])
        .output()
        .expect("redis-cli");
    String::from_utf8_lossy(&output.stdout).into_owned() + &String::from_utf8_lossy(&output.stderr)
}
