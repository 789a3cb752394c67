//! Issue 14's findings, each as a test against a real Redis: filter bypass by name, case,
//! bytes and scripts; read-only writes and enumeration; administration; connection hijack;
//! script time limit; empty tokens; ACL users (created and operator-prepared).

use std::time::{Duration, Instant};

use idempotency_testkit::fixtures::RedisServer;
use reqwest::Method;
use serde_json::{Value as Json, json};

use crate::common::{RO_TOKEN, TOKEN, TestGateway, redis_cli};

/// The state of the shared connections is intact: plain commands answer normally, health is
/// OK, and Redis sees no gateway client in another database, in MONITOR, or in a subscription.
async fn assert_connections_intact(gw: &TestGateway) {
    assert_eq!(gw.cmd(json!(["SET", "intact", "yes"])).await.result(), "OK");
    assert_eq!(gw.cmd(json!(["GET", "intact"])).await.result(), "yes");
    let ro = gw
        .request(
            Method::POST,
            "/",
            Some(RO_TOKEN),
            &[],
            Some(br#"["GET","intact"]"#.to_vec()),
        )
        .await;
    assert_eq!(ro.result(), "yes");
    let health = gw.request(Method::GET, "/~health", None, &[], None).await;
    assert_eq!(health.result(), "OK");
    let clients = gw.redis_cli(&["CLIENT", "LIST"]);
    for line in clients
        .lines()
        .filter(|l| l.contains("user=kv-rest-gateway"))
    {
        assert!(
            line.contains(" db=0 "),
            "a gateway connection changed database: {line}"
        );
        assert!(!line.contains("cmd=monitor"), "{line}");
        assert!(
            line.contains(" sub=0 ") && line.contains(" psub=0 "),
            "{line}"
        );
        assert!(!line.contains("flags=O"), "MONITOR: {line}");
    }
    assert!(
        clients.contains("user=kv-rest-gateway "),
        "no gateway user connection: {clients}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filter_bypass_by_name_case_and_bytes_is_refused() {
    let gw = TestGateway::start().await;
    let names = [
        "SELECT\u{0}x",
        "MONITOR\u{0}",
        "CLIENT\u{0}ID",
        "HELLO\u{0}",
        "SWAPDB\u{0}1",
        "GET ",
        " GET",
        "G\tET",
        "GÉT",
        "SELECT\r\n",
        "\u{0}",
        "",
        "1GET",
    ];
    for name in names {
        let single = gw.cmd(json!([name, "1", "0"])).await;
        assert!(
            single.error(400).starts_with("ERR invalid command name"),
            "{name:?}: {single:?}"
        );
        let pipeline = gw
            .post("/pipeline", &json!([[name, "1"], ["PING"]]), &[])
            .await;
        assert_eq!(pipeline.status, 200, "{pipeline:?}");
        assert!(
            pipeline.json[0]["error"]
                .as_str()
                .is_some_and(|e| e.contains("invalid command"))
        );
        assert_eq!(pipeline.json[1]["result"], "PONG");
        let multi = gw
            .post("/multi-exec", &json!([["PING"], [name, "1"]]), &[])
            .await;
        multi.error(400);
    }
    // Path form: percent-encoded NUL and space.
    for path in ["/select%00x/1", "/monitor%00", "/get%20/k", "/client%00/id"] {
        let reply = gw.request(Method::GET, path, Some(TOKEN), &[], None).await;
        assert!(
            reply.error(400).starts_with("ERR invalid command name"),
            "{path}: {reply:?}"
        );
    }
    // Any letter case of a refused command, and sub-commands with bytes appended.
    for (args, expected) in [
        (json!(["sElEcT", "1"]), "not available"),
        (json!(["Monitor"]), "not available"),
        (json!(["script", "DEBUG", "yes"]), "not available"),
        (
            json!(["SCRIPT", "debug\u{0}", "yes"]),
            "invalid sub-command",
        ),
        (
            json!(["SCRIPT", "LOAD\u{0}x", "return 1"]),
            "invalid sub-command",
        ),
        (json!(["object", "help"]), "not available"),
        (
            json!(["XREAD", "block\u{0}", "0", "STREAMS", "s", "$"]),
            "invalid option",
        ),
        (json!(["XREAD", "Block", "0", "STREAMS", "s", "$"]), "BLOCK"),
    ] {
        let reply = gw.cmd(args.clone()).await;
        assert!(reply.error(400).contains(expected), "{args}: {reply:?}");
    }
    assert_connections_intact(&gw).await;
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn main_token_cannot_reach_administration() {
    let gw = TestGateway::start().await;
    for args in [
        json!(["CONFIG", "GET", "requirepass"]),
        json!(["CONFIG", "SET", "maxmemory", "1"]),
        json!(["ACL", "SETUSER", "evil", "on", ">x", "+@all", "~*"]),
        json!(["MIGRATE", "10.0.0.1", "6379", "k", "0", "1000"]),
        json!(["SAVE"]),
        json!(["SLOWLOG", "GET"]),
        json!(["MODULE", "LIST"]),
        json!(["DEBUG", "SLEEP", "0"]),
        json!(["FLUSHALL"]),
        json!(["SWAPDB", "0", "1"]),
        json!(["SHUTDOWN", "NOSAVE"]),
        json!(["INFO"]),
        json!(["REPLICAOF", "127.0.0.1", "1"]),
    ] {
        let reply = gw.cmd(args.clone()).await;
        assert!(
            reply.error(400).contains("not available"),
            "{args}: {reply:?}"
        );
    }
    // The same through scripts: Redis's ACL refuses them inside EVAL.
    assert_eq!(gw.cmd(json!(["SET", "keep", "me"])).await.result(), "OK");
    for script in [
        "return redis.call('FLUSHALL')",
        "return redis.call('SWAPDB', 0, 1)",
        "return redis.call('INFO')",
        "return redis.call('SELECT', 1)",
        "return redis.call('LASTSAVE')",
        "return redis.call('PUBLISH', 'c', 'm')",
        "return redis.call('CLIENT', 'ID')",
    ] {
        let reply = gw.cmd(json!(["EVAL", script, "0"])).await;
        let error = reply.error(400);
        assert!(
            error.contains("can't run this command") || error.contains("not allowed from script"),
            "{script}: {reply:?}"
        );
    }
    assert_eq!(gw.cmd(json!(["GET", "keep"])).await.result(), "me");
    assert!(
        gw.redis_cli(&["ACL", "LIST"])
            .lines()
            .all(|l| !l.contains("evil"))
    );
    assert_connections_intact(&gw).await;
    gw.shutdown().await;
}

async fn ro(gw: &TestGateway, command: Json) -> crate::common::Reply {
    gw.request(
        Method::POST,
        "/",
        Some(RO_TOKEN),
        &[],
        Some(serde_json::to_vec(&command).unwrap()),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_token_cannot_write_or_enumerate() {
    let gw = TestGateway::start().await;
    assert_eq!(gw.cmd(json!(["SET", "secret:1", "v"])).await.result(), "OK");
    assert_eq!(ro(&gw, json!(["GET", "secret:1"])).await.result(), "v");
    for args in [
        json!(["SET", "k", "v"]),
        json!(["DEL", "secret:1"]),
        json!(["KEYS", "*"]),
        json!(["SCAN", "0"]),
        json!(["RANDOMKEY"]),
        json!(["EVAL", "return 1", "0"]),
        json!(["SCRIPT", "LOAD", "return 1"]),
    ] {
        let reply = ro(&gw, args.clone()).await;
        assert!(
            reply.error(400).starts_with("NOPERM") || reply.error(400).contains("not available"),
            "{args}: {reply:?}"
        );
    }
    // Scripts run with the read-only user's rights: no enumeration, no writes.
    for script in [
        "return redis.call('KEYS', '*')",
        "return redis.call('SCAN', '0')",
        "return redis.call('RANDOMKEY')",
        "return redis.call('SET', 'k', 'v')",
        "return redis.call('DEL', 'secret:1')",
    ] {
        let reply = ro(&gw, json!(["EVAL_RO", script, "0"])).await;
        assert_eq!(reply.status, 400, "{script}: {reply:?}");
        assert!(
            !reply.text.contains("secret:1"),
            "{script} listed a key: {reply:?}"
        );
    }
    let piped = gw
        .request(
            Method::POST,
            "/pipeline",
            Some(RO_TOKEN),
            &[],
            Some(br#"[["KEYS","*"],["GET","secret:1"]]"#.to_vec()),
        )
        .await;
    assert!(piped.json[0]["error"].is_string(), "{piped:?}");
    assert_eq!(piped.json[1]["result"], "v");
    assert_eq!(gw.cmd(json!(["GET", "secret:1"])).await.result(), "v");
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_hijack_attempts_are_refused() {
    let gw = TestGateway::start().await;
    let attempts = [
        json!(["SCRIPT", "DEBUG", "YES"]),
        json!(["SCRIPT", "DEBUG", "SYNC"]),
        json!(["MONITOR"]),
        json!(["SELECT", "1"]),
        json!(["CLIENT", "REPLY", "OFF"]),
        json!(["CLIENT", "KILL", "TYPE", "normal"]),
        json!(["HELLO", "3"]),
        json!(["RESET"]),
        json!(["AUTH", "default", "x"]),
        json!(["SUBSCRIBE", "c"]),
        json!(["PSUBSCRIBE", "*"]),
        json!(["BLPOP", "list", "0"]),
        json!(["BLMOVE", "a", "b", "LEFT", "LEFT", "0"]),
        json!(["WAIT", "1", "0"]),
        json!(["XREAD", "BLOCK", "0", "STREAMS", "s", "$"]),
        json!([
            "XREADGROUP",
            "GROUP",
            "g",
            "c",
            "BLOCK",
            "0",
            "STREAMS",
            "s",
            ">"
        ]),
        json!(["QUIT"]),
    ];
    for args in &attempts {
        for token in [TOKEN, RO_TOKEN] {
            let reply = gw
                .request(
                    Method::POST,
                    "/",
                    Some(token),
                    &[],
                    Some(serde_json::to_vec(args).unwrap()),
                )
                .await;
            reply.error(400);
        }
        let piped = gw.post("/pipeline", &json!([args, ["PING"]]), &[]).await;
        assert!(piped.json[0]["error"].is_string(), "{args}: {piped:?}");
        let multi = gw.post("/multi-exec", &json!([args]), &[]).await;
        multi.error(400);
    }
    // A read-only blocking read through the path form with a NUL-suffixed option.
    let blocked = gw
        .request(
            Method::GET,
            "/xread/BLOCK%00/0/STREAMS/s/$",
            Some(RO_TOKEN),
            &[],
            None,
        )
        .await;
    blocked.error(400);
    assert_connections_intact(&gw).await;
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endless_script_is_killed_and_others_are_served_again() {
    // Redis answers BUSY (and takes SCRIPT KILL) after 100 ms; the gateway's limit is 200 ms.
    let redis = RedisServer::start_local_with(&["--busy-reply-threshold", "100"]).unwrap();
    let gw = TestGateway::start_on(redis, |config| {
        config.with_script_time_limit(Duration::from_millis(200))
    })
    .await;
    assert_eq!(gw.cmd(json!(["SET", "k", "v"])).await.result(), "OK");
    let endless = {
        let base = gw.base.clone();
        tokio::spawn(async move {
            reqwest::Client::new()
                .post(format!("{base}/"))
                .bearer_auth(RO_TOKEN)
                .body(r#"["EVAL_RO","while true do end","0"]"#)
                .send()
                .await
                .unwrap()
        })
    };
    // Gate: the script is running once Redis answers BUSY to a direct client.
    let port = gw.redis.port();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let reply = tokio::task::spawn_blocking(move || redis_cli(port, &["PING"]))
            .await
            .unwrap();
        if reply.contains("BUSY") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the script never made Redis busy: {reply}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Another client through the gateway is served again (no 503 from the response timeout).
    assert_eq!(gw.cmd(json!(["GET", "k"])).await.result(), "v");
    let killed = endless.await.unwrap();
    assert_eq!(killed.status(), 400);
    let text = killed.text().await.unwrap();
    assert!(text.contains("killed"), "{text}");
    let health = gw.request(Method::GET, "/~health", None, &[], None).await;
    assert_eq!(health.result(), "OK");
    // The same for a script inside a pipeline.
    let piped = gw
        .post(
            "/pipeline",
            &json!([["EVAL", "while true do end", "0"], ["GET", "k"]]),
            &[],
        )
        .await;
    assert!(
        piped.json[0]["error"]
            .as_str()
            .is_some_and(|e| e.contains("killed")),
        "{piped:?}"
    );
    assert_eq!(piped.json[1]["result"], "v");
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_tokens_refuse_to_start() {
    for (token, read_only) in [("", None), ("  ", None), (TOKEN, Some(""))] {
        let mut config = kv_rest_gateway::GatewayConfig::new("redis://127.0.0.1:1", token);
        if let Some(read_only) = read_only {
            config = config.with_read_only_token(read_only);
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let result = kv_rest_gateway::serve(listener, config, std::future::pending()).await;
        assert!(
            matches!(result, Err(kv_rest_gateway::Error::EmptyToken(_))),
            "{token:?}/{read_only:?}: {result:?}"
        );
    }
    // The binary, with the token from the environment and from the flag.
    let binary = env!("CARGO_BIN_EXE_kv-rest-gateway");
    for (env, args) in [
        (vec![("KV_REST_GATEWAY_TOKEN", "")], vec![]),
        (vec![], vec!["--token", ""]),
        (
            vec![
                ("KV_REST_GATEWAY_TOKEN", TOKEN),
                ("KV_REST_GATEWAY_READ_ONLY_TOKEN", ""),
            ],
            vec![],
        ),
    ] {
        let mut command = std::process::Command::new(binary);
        command
            .env_clear()
            .args([
                "--listen",
                "127.0.0.1:0",
                "--redis-url",
                "redis://127.0.0.1:1",
            ])
            .args(&args)
            .envs(env.iter().copied());
        let output = command.output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{env:?} {args:?}: started");
        assert!(
            stderr.contains("empty") || stderr.contains("a value is required"),
            "{env:?} {args:?}: {stderr}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_creates_its_acl_users_and_recreates_them_after_a_restart() {
    let mut gw = TestGateway::start().await;
    let users = gw.redis_cli(&["ACL", "LIST"]);
    let main = users
        .lines()
        .find(|l| l.starts_with("user kv-rest-gateway "))
        .expect(&users);
    // Redis normalises the rules: check what matters in its rendering.
    assert!(
        main.contains("-@all") && !main.contains("+@all") && !main.contains("+config"),
        "{main}"
    );
    assert!(
        !main.contains("+@admin")
            && !main.contains("+@dangerous")
            && main.contains("-script|debug"),
        "{main}"
    );
    let read_only = users
        .lines()
        .find(|l| l.starts_with("user kv-rest-gateway-ro "))
        .expect(&users);
    assert!(
        read_only.contains("%R~*") && !read_only.contains("+keys") && !read_only.contains("+scan"),
        "{read_only}"
    );
    assert!(
        !read_only.contains("+@write") && !read_only.contains("+set "),
        "{read_only}"
    );
    // Redis forgets the users on a restart (no ACL file): the gateway re-creates them.
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
    assert_eq!(ro(&gw, json!(["GET", "k"])).await.result(), "back");
    gw.shutdown().await;
}

/// Runs `ACL SETUSER <user> reset on ><password> <rules>` as the default user, then takes the
/// default user's rights away (`nopass` off) so the gateway cannot create users itself.
fn prepare_users(redis: &RedisServer, main_rules: &str) {
    let mut args = vec!["ACL", "SETUSER", "app", "reset", "on", ">app-password"];
    args.extend(main_rules.split_whitespace());
    assert!(redis_cli(redis.port(), &args).contains("OK"));
    let mut args = vec!["ACL", "SETUSER", "app-ro", "reset", "on", ">ro-password"];
    args.extend(kv_rest_gateway::READ_ONLY_RULES.split_whitespace());
    assert!(redis_cli(redis.port(), &args).contains("OK"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_prepared_users_are_verified() {
    let redis = RedisServer::start_local().unwrap();
    prepare_users(&redis, kv_rest_gateway::MAIN_RULES);
    let port = redis.port();
    let main_url = format!("redis://app:app-password@127.0.0.1:{port}");
    let ro_url = format!("redis://app-ro:ro-password@127.0.0.1:{port}");
    let gw = TestGateway::start_on(redis, {
        let (main_url, ro_url) = (main_url.clone(), ro_url.clone());
        move |config| {
            kv_rest_gateway::GatewayConfig {
                redis_url: main_url,
                ..config
            }
            .with_read_only_redis_url(ro_url)
        }
    })
    .await;
    assert_eq!(gw.cmd(json!(["SET", "k", "v"])).await.result(), "OK");
    assert_eq!(ro(&gw, json!(["GET", "k"])).await.result(), "v");
    assert_eq!(
        ro(
            &gw,
            json!(["EVAL_RO", "return redis.call('KEYS','*')", "0"])
        )
        .await
        .status,
        400
    );
    let users = gw.redis_cli(&["ACL", "USERS"]);
    assert!(
        !users.contains("kv-rest-gateway"),
        "created users in verify mode: {users}"
    );
    gw.shutdown().await;

    // Too permissive: the main user may run administration and scripts with it.
    let redis = RedisServer::start_local().unwrap();
    prepare_users(&redis, "~* &* +@all -acl");
    let port = redis.port();
    let gw = TestGateway::start_on_unready(redis, move |config| {
        kv_rest_gateway::GatewayConfig {
            redis_url: format!("redis://app:app-password@127.0.0.1:{port}"),
            ..config
        }
        .with_read_only_redis_url(format!("redis://app-ro:ro-password@127.0.0.1:{port}"))
    })
    .await;
    let error = gw.stopped_error().await.to_string();
    assert!(
        error.contains("can run commands it must not") && error.contains("CONFIG GET"),
        "{error}"
    );

    // A read-only token without a read-only user.
    let redis = RedisServer::start_local().unwrap();
    prepare_users(&redis, kv_rest_gateway::MAIN_RULES);
    let port = redis.port();
    let gw = TestGateway::start_on_unready(redis, move |config| kv_rest_gateway::GatewayConfig {
        redis_url: format!("redis://app:app-password@127.0.0.1:{port}"),
        ..config
    })
    .await;
    let error = gw.stopped_error().await.to_string();
    assert!(error.contains("read-only"), "{error}");
}
