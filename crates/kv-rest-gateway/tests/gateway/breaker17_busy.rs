//! breaker17: the script-killer connection after Redis restarted or closed it, the rights it
//! needs, functions (`FCALL`) that run long or answer the busy text, and many requests
//! waiting on one busy script at once.

use std::time::{Duration, Instant};

use idempotency_testkit::fixtures::RedisServer;
use kv_rest_gateway::{DEFAULT_ACL_USER, MAIN_RULES};
use reqwest::Method;
use serde_json::{Value as Json, json};

use crate::busy_kit::{ENDLESS, OtherScript, busy_gateway, cli, until_busy};
use crate::common::{RO_TOKEN, Reply, TestGateway, restart_and_wait};

/// The gateway's script time limit in these tests.
const LIMIT: Duration = Duration::from_millis(500);

/// A gateway on database `db` of a Redis that answers `BUSY` after 100 ms of a script
/// (`extra`: more `redis-server` arguments), with the script time limit [`LIMIT`], ready, and
/// with both users' shared connections open.
async fn gateway(db: u8, extra: &[&str]) -> TestGateway {
    gateway_limited(db, extra, LIMIT).await
}

/// [`gateway`] with another script time limit (the busy bound is the limit + 1 s).
async fn gateway_limited(db: u8, extra: &[&str], limit: Duration) -> TestGateway {
    busy_gateway(db, extra, |config| config.with_script_time_limit(limit)).await
}

/// Whether Redis still runs a script (it answers `BUSY`).
async fn still_busy(port: u16) -> bool {
    cli(port, &["PING"]).await.starts_with("BUSY")
}

/// `EVAL while true do end` through the gateway: it must be stopped at the script time limit
/// (Redis's "killed" error as a 400), and Redis must serve again afterwards.
async fn assert_endless_script_is_killed(gw: &TestGateway, what: &str) {
    let started = Instant::now();
    let reply = gw.cmd(json!(["EVAL", ENDLESS, 0])).await;
    let took = started.elapsed();
    let busy_after = still_busy(gw.redis.port()).await;
    assert_eq!(
        reply.status, 400,
        "{what}: the script was not killed (answered after {took:?}, Redis still busy: \
         {busy_after}): {reply:?}"
    );
    assert!(
        reply.error(400).contains("killed"),
        "{what}: after {took:?}: {reply:?}"
    );
    assert!(
        took < LIMIT + Duration::from_secs(2),
        "{what}: killed only after {took:?}"
    );
    assert!(!busy_after, "{what}: Redis is still busy");
}

/// Database 0: after a Redis restart the killer connection is opened again during the
/// script (`AUTH` is served while Redis is busy), and the script is killed. Pins behaviour.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endless_script_is_killed_after_a_redis_restart_on_database_0() {
    endless_script_killed_after_a_restart(0).await;
}

/// An endless script through the gateway on database `db` is killed before and after a
/// Redis restart.
async fn endless_script_killed_after_a_restart(db: u8) {
    let mut gw = gateway(db, &[]).await;
    let _cleanup = OtherScript::guard(gw.redis.port());
    assert_endless_script_is_killed(&gw, "before the restart").await;
    restart_and_wait(&mut gw);
    // The first request after the restart re-creates the users and opens the shared
    // connection (Redis is not busy yet); the killer connection died with the old server.
    assert_eq!(gw.cmd(json!(["SET", "k", "v"])).await.result(), "OK");
    assert_endless_script_is_killed(&gw, "after the restart").await;
    gw.shutdown().await;
}

/// Fixed (breaker17, high): on a database other than 0 the killer connection, once Redis restarted, is
/// opened again only when a script must be killed — while Redis is busy, when Redis refuses
/// the new connection's `SELECT` with `BUSY`. The kill is never sent: the caller waits for the
/// response timeout (503, outcome unknown) and the endless script keeps Redis busy for every
/// client until someone else kills it. (`SCRIPT KILL` and `PING` need no database: the killer
/// could connect without `SELECT`, or be reconnected as soon as it drops.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endless_script_is_killed_after_a_redis_restart_on_database_1() {
    endless_script_killed_after_a_restart(1).await;
}

/// The user names of the connections Redis has (without the asking `redis-cli`).
async fn connection_users(port: u16) -> Vec<String> {
    cli(port, &["CLIENT", "LIST"])
        .await
        .lines()
        .filter(|line| !line.contains("cmd=client|list"))
        .filter_map(|line| {
            line.split(' ')
                .find_map(|pair| pair.strip_prefix("user="))
                .map(str::to_owned)
        })
        .collect()
}

/// Fixed (breaker17, high), without any restart: Redis's `timeout` setting (close idle clients, common
/// in production) closes the killer connection, which never carries traffic. On database 1
/// it cannot be opened again while the script runs (`SELECT` refused with `BUSY`), so an
/// endless script is never stopped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endless_script_is_killed_after_redis_closed_the_idle_killer_connection() {
    // Database 0 as the control (`AUTH` is served while busy), then database 1.
    for db in [0, 1] {
        idle_killer_connection_closed(db).await;
    }
}

async fn idle_killer_connection_closed(db: u8) {
    let gw = gateway(db, &["--timeout", "1"]).await;
    let port = gw.redis.port();
    let _cleanup = OtherScript::guard(port);
    // Wait until Redis has closed every idle gateway connection (the killer's included).
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let users = connection_users(port).await;
        if !users.iter().any(|user| user == DEFAULT_ACL_USER) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "idle connections stay open: {users:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_endless_script_is_killed(&gw, &format!("db {db}: after the idle timeout")).await;
    gw.shutdown().await;
}

/// Fixed (breaker17, medium): a Redis restart (users lost) while another client's script already runs:
/// the first request's connection is refused (`WRONGPASS`, the user is gone), and re-creating
/// the users with `ACL SETUSER` is refused with `BUSY`. The request answers 503 "Redis refused
/// the gateway's credentials" at once instead of waiting the script out like any other busy
/// refusal (nothing was sent, so waiting is safe).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_request_after_a_restart_waits_out_another_clients_script() {
    let mut gw = gateway(0, &[]).await;
    restart_and_wait(&mut gw);
    let port = gw.redis.port();
    let script = OtherScript::start(port).await;
    let request = gw.cmd(json!(["INCR", "n"]));
    let mut request = Box::pin(request);
    let early = tokio::select! {
        reply = &mut request => Some(reply),
        () = tokio::time::sleep(Duration::from_millis(300)) => None,
    };
    script.kill().await;
    let reply = match early {
        Some(reply) => {
            drop(request);
            reply
        }
        None => request.await,
    };
    assert_eq!(
        reply.status, 200,
        "answered during the script instead of waiting: {reply:?}"
    );
    assert_eq!(reply.result(), &json!(1));
    assert_eq!(cli(port, &["GET", "n"]).await.trim(), "1");
    gw.shutdown().await;
}

/// A function library: `spin` loops forever without writing; `busy_text` counts its runs and
/// returns an error with the very text of Redis's busy refusal (`FUNCTION KILL` form).
const LIBRARY: &str = "#!lua name=breaker17\n\
redis.register_function('spin', function(keys, args) while true do end end)\n\
redis.register_function('busy_text', function(keys, args) \
redis.call('INCR', keys[1]) \
return redis.error_reply('BUSY Redis is busy running a script. You can only call FUNCTION KILL or SHUTDOWN NOSAVE.') end)\n\
redis.register_function{function_name='ro', callback=function(keys, args) return 'ro' end, flags={'no-writes'}}";

/// A long `FCALL` is stopped with `FUNCTION KILL` (`SCRIPT KILL` refuses a function) at the
/// time limit, and Redis serves again. Pins behaviour.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endless_function_is_killed() {
    let gw = gateway(0, &[]).await;
    let _cleanup = OtherScript::guard(gw.redis.port());
    let load = gw.cmd(json!(["FUNCTION", "LOAD", LIBRARY])).await;
    assert_eq!(load.result(), "breaker17", "{load:?}");
    let started = Instant::now();
    let reply = gw.cmd(json!(["FCALL", "spin", 0])).await;
    let took = started.elapsed();
    assert!(reply.error(400).contains("killed"), "{took:?}: {reply:?}");
    assert!(
        took < LIMIT + Duration::from_secs(2),
        "killed after {took:?}"
    );
    assert!(!still_busy(gw.redis.port()).await);
    assert_eq!(gw.cmd(json!(["PING"])).await.result(), "PONG");
    gw.shutdown().await;
}

/// A function that answers the busy refusal's text (after a write) runs once, through `/`,
/// `/pipeline` and `/multi-exec`; while the main token's endless function runs, the
/// read-only token's `FCALL_RO` waits it out (the check is on the killer connection, not
/// behind the function). Pins behaviour.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn functions_answering_the_busy_text_run_once_and_fcall_ro_waits() {
    let gw = gateway(0, &[]).await;
    let port = gw.redis.port();
    let _cleanup = OtherScript::guard(port);
    let load = gw.cmd(json!(["FUNCTION", "LOAD", LIBRARY])).await;
    assert_eq!(load.result(), "breaker17", "{load:?}");
    let single = gw.cmd(json!(["FCALL", "busy_text", 1, "runs"])).await;
    assert!(
        single.error(400).starts_with("BUSY "),
        "the function's own reply: {single:?}"
    );
    let pipeline = gw
        .post(
            "/pipeline",
            &json!([["FCALL", "busy_text", 1, "runs"], ["GET", "runs"]]),
            &[],
        )
        .await;
    assert_eq!(pipeline.status, 200, "{pipeline:?}");
    assert_eq!(pipeline.json[1]["result"], "2", "{pipeline:?}");
    let multi = gw
        .post(
            "/multi-exec",
            &json!([["FCALL", "busy_text", 1, "runs"]]),
            &[],
        )
        .await;
    assert_eq!(multi.status, 200, "{multi:?}");
    assert_eq!(
        cli(port, &["GET", "runs"]).await.trim(),
        "3",
        "each call ran once"
    );

    let long = gw.cmd(json!(["FCALL", "spin", 0]));
    let other = async {
        until_busy(port).await;
        gw.request(
            Method::POST,
            "/",
            Some(RO_TOKEN),
            &[("content-type", "application/json")],
            Some(serde_json::to_vec(&json!(["FCALL_RO", "ro", 0])).unwrap()),
        )
        .await
    };
    let (long, other) = tokio::join!(long, other);
    assert!(long.error(400).contains("killed"), "{long:?}");
    assert_eq!(other.result(), "ro", "{other:?}");
    gw.shutdown().await;
}

/// `POST path` with an owned JSON body and the read-write token.
async fn post(gw: &TestGateway, path: &str, body: Json) -> Reply {
    gw.post(path, &body, &[]).await
}

/// Runs `futures` concurrently and returns their outputs in order.
async fn join_all<F: std::future::Future>(futures: Vec<F>) -> Vec<F::Output> {
    let mut futures: Vec<_> = futures.into_iter().map(Box::pin).collect();
    let mut outputs: Vec<Option<F::Output>> = futures.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (future, output) in futures.iter_mut().zip(outputs.iter_mut()) {
            if output.is_none() {
                match future.as_mut().poll(cx) {
                    std::task::Poll::Ready(value) => *output = Some(value),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    outputs.into_iter().flatten().collect()
}

/// `INFO stats` field `total_connections_received`.
async fn connections_received(port: u16) -> u64 {
    cli(port, &["INFO", "stats"])
        .await
        .lines()
        .find_map(|line| line.strip_prefix("total_connections_received:"))
        .and_then(|n| n.trim().parse().ok())
        .expect("total_connections_received")
}

/// How many requests of each kind wait on one busy script at once.
const EACH: usize = 20;

/// 60 requests (20 `INCR`, 20 pipelines, 20 transactions, each on its own keys) wait on
/// another client's script at once: every write runs exactly once after the kill, and the
/// gateway keeps its connections within bounds: afterwards no more than its four long-lived
/// ones (two shared, the killer, none left from transactions).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_requests_waiting_on_one_script_write_once_and_leave_no_connections() {
    for db in [0u8, 1] {
        // A long bound: the requests must still be waiting when the test kills the script.
        let gw = gateway_limited(db, &[], Duration::from_secs(5)).await;
        let port = gw.redis.port();
        let script = OtherScript::start(port).await;
        let mut requests = Vec::new();
        for i in 0..EACH {
            requests.push(gw.cmd(json!(["INCR", format!("single:{i}")])));
        }
        let pipelines = (0..EACH).map(|i| {
            post(
                &gw,
                "/pipeline",
                json!([
                    ["INCR", format!("pipe:{i}")],
                    ["INCR", format!("pipe2:{i}")]
                ]),
            )
        });
        let transactions = (0..EACH).map(|i| {
            post(
                &gw,
                "/multi-exec",
                json!([
                    ["INCR", format!("multi:{i}")],
                    ["INCR", format!("multi2:{i}")]
                ]),
            )
        });
        let all = async {
            tokio::join!(
                join_all(requests),
                join_all(pipelines.collect()),
                join_all(transactions.collect()),
            )
        };
        let mut all = Box::pin(all);
        tokio::select! {
            _ = &mut all => panic!("db {db}: answered while Redis was busy"),
            () = tokio::time::sleep(Duration::from_millis(400)) => {}
        }
        script.kill().await;
        let (singles, pipes, multis): (Vec<Reply>, Vec<Reply>, Vec<Reply>) = all.await;
        for reply in &singles {
            assert_eq!(reply.result(), &json!(1), "db {db}: {reply:?}");
        }
        for reply in pipes.iter().chain(&multis) {
            assert_eq!(
                reply.json,
                json!([{"result": 1}, {"result": 1}]),
                "db {db}: {reply:?}"
            );
        }
        for prefix in ["single", "pipe", "pipe2", "multi", "multi2"] {
            for i in 0..EACH {
                let key = format!("{prefix}:{i}");
                let value = cli(port, &["-n", &db.to_string(), "GET", &key]).await;
                assert_eq!(value.trim(), "1", "db {db}: {key} ran once");
            }
        }
        let users = connection_users(port).await;
        let gateway_connections = users.iter().filter(|u| *u != "default").count();
        assert!(
            gateway_connections <= 3,
            "db {db}: connections left open: {users:?}"
        );
        gw.shutdown().await;
    }
}

/// Fixed (breaker17, medium): a waiting `/multi-exec` opens a new Redis connection (`AUTH`, `SELECT`)
/// for every retry, every 20 ms, with no backoff, for up to the script time limit + 1 s: N
/// waiting transactions make ~50·N connection set-ups per second on a Redis that is already
/// stalled by a script (each one served between the script's steps), and leave N·50 sockets
/// per second in TIME_WAIT on the gateway host. 20 transactions waiting 1 s should not need
/// more than a few connections each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_transactions_do_not_open_a_connection_every_20_ms() {
    let gw = gateway_limited(0, &[], Duration::from_secs(5)).await;
    let port = gw.redis.port();
    // Redis answers `INFO` only when no script runs: counted before and after the script,
    // with this test's own `redis-cli` connections (the script, the `BUSY` polls, the kill).
    let before = connections_received(port).await;
    let script = OtherScript::start(port).await;
    let transactions = join_all(
        (0..EACH)
            .map(|i| post(&gw, "/multi-exec", json!([["INCR", format!("multi:{i}")]])))
            .collect(),
    );
    let mut transactions = Box::pin(transactions);
    tokio::select! {
        _ = &mut transactions => panic!("answered while Redis was busy"),
        () = tokio::time::sleep(Duration::from_secs(1)) => {}
    }
    script.kill().await;
    for reply in transactions.await {
        assert_eq!(reply.json, json!([{"result": 1}]), "{reply:?}");
    }
    let opened = connections_received(port).await - before;
    // Generous: the test's own connections (a few dozen at most) and 10 per transaction.
    let bound = 50 + 10 * EACH as u64;
    assert!(
        opened <= bound,
        "{opened} connections opened while {EACH} transactions waited 1 s (bound {bound})"
    );
    gw.shutdown().await;
}

/// Fixed (breaker17, medium): an operator-prepared main user without `SCRIPT KILL` / `FUNCTION KILL`
/// passes the start-up checks (only `PING` and `GET` are required), and the gateway then
/// cannot stop a runaway script: the kill's `NOPERM` is logged at debug level only, the caller
/// waits for the response timeout (503) and Redis stays busy. Either the start must be refused
/// (as for a user missing `PING`), or the script must still be stopped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prepared_user_that_cannot_kill_scripts_is_refused_or_still_stops_them() {
    let redis = RedisServer::start_local_with(&["--busy-reply-threshold", "100"]).unwrap();
    let port = redis.port();
    let _cleanup = OtherScript::guard(port);
    let mut setuser = vec!["ACL", "SETUSER", "prepared", "reset", "on", ">prepared-pw"];
    setuser.extend(MAIN_RULES.split_whitespace());
    setuser.extend(["-script|kill", "-function|kill"]);
    assert_eq!(cli(port, &setuser).await.trim(), "OK");
    let url = format!("redis://prepared:prepared-pw@127.0.0.1:{port}");
    let gw = TestGateway::start_on_unready(redis, move |mut config| {
        config.redis_url = url;
        config.read_only_token = None;
        config.with_script_time_limit(LIMIT)
    })
    .await;
    // Serving, or refused to start.
    let deadline = Instant::now() + Duration::from_secs(10);
    let serving = loop {
        if gw.stopped() {
            break false;
        }
        // The server may stop at any moment: a failed request is no answer.
        let health = reqwest::get(format!("{}/~health", gw.base)).await;
        if health.is_ok_and(|response| response.status() == 200) {
            break true;
        }
        if Instant::now() > deadline {
            break false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    if serving {
        assert_endless_script_is_killed(&gw, "a prepared user without SCRIPT KILL").await;
        gw.shutdown().await;
    } else {
        let error = gw.stopped_error().await.to_string();
        assert!(error.to_lowercase().contains("kill"), "{error}");
    }
}

/// Reading `MAIN_RULES` as the README shows it: the main user may run `SCRIPT KILL` and
/// `FUNCTION KILL` (the killer authenticates as it), `PING`, and not `CLIENT KILL`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_provisioned_main_user_may_kill_scripts_and_ping_only() {
    let gw = gateway(0, &[]).await;
    let port = gw.redis.port();
    for (cmd, allowed) in [
        ("script|kill", true),
        ("function|kill", true),
        ("ping", true),
        ("client|kill", false),
        ("shutdown", false),
    ] {
        let parts: Vec<&str> = cmd.split('|').collect();
        let mut args = vec!["ACL", "DRYRUN", DEFAULT_ACL_USER];
        args.extend(&parts);
        if parts.len() == 1 && cmd != "ping" {
            args.push("NOSAVE");
        }
        if cmd == "client|kill" {
            args.extend(["ID", "1"]);
        }
        let reply = cli(port, &args).await;
        assert_eq!(reply.trim() == "OK", allowed, "{cmd}: {reply}");
    }
    let _: Json = gw.cmd(json!(["PING"])).await.json;
    gw.shutdown().await;
}
