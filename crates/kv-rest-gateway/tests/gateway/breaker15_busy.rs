//! breaker15: attacks on the busy retries of `/pipeline` (refused suffix resent) and
//! `/multi-exec`: exactly-once of writes when another client's script starts in the middle of a
//! long pipeline, replies that only look like Redis's busy refusal, and a client that leaves
//! while its request waits.

use std::time::Duration;

use reqwest::Method;
use serde_json::{Value as Json, json};

use crate::busy_kit::{OtherScript, busy_gateway, cli_get};
use crate::common::{RO_TOKEN, TOKEN, TestGateway};

/// Redis's own busy refusal text (Redis 7).
const BUSY_TEXT: &str =
    "BUSY Redis is busy running a script. You can only call SCRIPT KILL or SHUTDOWN NOSAVE.";

/// A gateway on database `db` of a Redis that answers `BUSY` after 100 ms of a script, ready,
/// and with its main user's shared connection open.
async fn gateway(db: u8, script_time_limit: Duration, max_pipeline: usize) -> TestGateway {
    busy_gateway(db, &[], |config| {
        config
            .with_script_time_limit(script_time_limit)
            .with_max_pipeline(max_pipeline)
            .with_max_body_bytes(16 * 1024 * 1024)
    })
    .await
}

/// How many busy refusals Redis answered since the last `CONFIG RESETSTAT`.
fn busy_refusals(gw: &TestGateway) -> u64 {
    gw.redis_cli(&["INFO", "errorstats"])
        .lines()
        .find_map(|line| line.trim().strip_prefix("errorstat_BUSY:count="))
        .map_or(0, |n| n.parse().unwrap())
}

/// Checks the exactly-once invariant of a pipeline of `INCR n`: every integer reply ran once
/// and in order (1, 2, … k), every other reply is Redis's busy refusal (did not run), and the
/// counter holds k. Returns (k, busy replies).
fn incr_invariant(replies: &[Json], counter: &str) -> (usize, usize) {
    let mut ran = 0;
    let mut busy = 0;
    for (at, item) in replies.iter().enumerate() {
        if let Some(n) = item["result"].as_i64() {
            ran += 1;
            assert_eq!(
                n,
                i64::try_from(ran).unwrap(),
                "reply {at}: INCR out of order or run twice"
            );
        } else {
            let error = item["error"].as_str().unwrap_or_default();
            assert!(error.starts_with("BUSY "), "reply {at}: {item}");
            busy += 1;
        }
    }
    let counter: usize = if counter.is_empty() {
        0
    } else {
        counter.parse().unwrap()
    };
    assert_eq!(counter, ran, "the counter counts the INCRs that answered");
    (ran, busy)
}

/// Another client's script starts while a long pipeline of `INCR n` is being executed, and is
/// killed 400 ms later: the refused end is resent after the script, no INCR runs twice or out
/// of order, and the last one always runs (refusals followed by a command that ran stay
/// refusals: resending them would reorder writes). The pipeline opens with a script of its own that
/// spins 80 ms (under the 100 ms busy threshold), and the other script is sent at a different
/// moment each round, so on some rounds it runs between two chunks of the pipeline (Redis reads
/// a long pipeline in chunks): Redis ran the first INCRs and refuses the rest. Databases 0
/// and 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_incr_pipeline_with_a_script_starting_mid_way_runs_each_write_once() {
    const N: usize = 20_000;
    const SPIN: &str = "local t = redis.call('TIME') local s = t[1] * 1000000 + t[2] \
        while true do local n = redis.call('TIME') \
        if n[1] * 1000000 + n[2] - s > 80000 then break end end return 0";
    for db in [0u8, 1] {
        let gw = gateway(db, Duration::from_secs(5), N + 1).await;
        let mut body = vec![json!(["EVAL", SPIN, 0])];
        body.extend((0..N).map(|_| json!(["INCR", "n"])));
        let body = Json::Array(body);
        let mut mid_way = 0;
        for round in 0..10u64 {
            gw.redis_cli(&["-n", &db.to_string(), "DEL", "n"]);
            gw.redis_cli(&["CONFIG", "RESETSTAT"]);
            let port = gw.redis.port();
            let request = gw.post("/pipeline", &body, &[]);
            let script = async {
                tokio::time::sleep(Duration::from_millis(20 * round)).await;
                let script = OtherScript::spawn(port);
                tokio::time::sleep(Duration::from_millis(400)).await;
                script.kill_once_running().await;
            };
            let (reply, ()) = tokio::join!(request, script);
            assert_eq!(reply.status, 200, "db {db}: {}", reply.text);
            let items = reply.json.as_array().expect("array");
            assert_eq!(items.len(), N + 1);
            let (ran, busy) = incr_invariant(&items[1..], &cli_get(&gw, db, "n"));
            // The refused end is always sent again, so the last reply ran. A refusal followed
            // by a command that ran (the script was killed while Redis read the pipeline) is
            // never sent again: that would run it after a later command. So the spin and the
            // INCRs before the last one that ran may stay refused, and only those.
            assert!(
                items[N]["result"].is_i64(),
                "db {db} round {round}: the refused end is sent again: {}",
                items[N]
            );
            assert!(
                items[0] == json!({"result": 0})
                    || items[0]["error"]
                        .as_str()
                        .is_some_and(|e| e.starts_with("BUSY ")),
                "db {db}: the spin: {}",
                items[0]
            );
            assert_eq!(ran + busy, N);
            eprintln!("db {db} round {round}: {ran} INCRs ran, {busy} refused before one that ran");
            let refused = busy_refusals(&gw);
            if refused > 0 && !refused.is_multiple_of(u64::try_from(N).unwrap()) {
                mid_way += 1;
            }
            eprintln!("db {db} round {round}: {refused} busy refusals");
        }
        eprintln!("db {db}: the script started mid-way on {mid_way} rounds of 10");
        assert!(mid_way > 0, "db {db}: the script never started mid-way");
        gw.shutdown().await;
    }
}

/// A pipeline whose last command, a script (the client's own `EVAL`, which ran: it incremented `n`) returns an
/// error with the exact text of Redis's busy refusal. The gateway takes it for a refusal and
/// sends the script again every 20 ms until the busy bound (script time limit + 1 s): the
/// write runs ~100 times for one request. A reply is not proof that a command did not run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_script_that_ran_and_answers_the_busy_text_is_not_sent_again() {
    let gw = gateway(0, Duration::from_secs(1), 1000).await;
    let script = format!("redis.call('INCR', KEYS[1]) return redis.error_reply('{BUSY_TEXT}')");
    let reply = gw
        .post(
            "/pipeline",
            &json!([["SET", "m", "1"], ["EVAL", script, 1, "n"]]),
            &[],
        )
        .await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(cli_get(&gw, 0, "n"), "1", "the script ran once: {reply:?}");
    gw.shutdown().await;
}

/// The same script as one command (`POST /`): retried the same way (that path predates the
/// pipeline change).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_script_that_ran_and_answers_the_busy_text_is_not_sent_again() {
    let gw = gateway(0, Duration::from_secs(1), 1000).await;
    let script = format!("redis.call('INCR', KEYS[1]) return redis.error_reply('{BUSY_TEXT}')");
    let _ = gw.cmd(json!(["EVAL", script, 1, "n"])).await;
    assert_eq!(cli_get(&gw, 0, "n"), "1", "the script ran once");
    gw.shutdown().await;
}

/// A client sends `/pipeline [INCR n]` during another client's script and gives up after
/// 300 ms (closes its connection). The script is killed afterwards: the gateway must not send
/// the write after its client left (the client saw no answer and will retry it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_left_during_the_wait_gets_no_write_later() {
    for path in ["/pipeline", "/multi-exec"] {
        let gw = gateway(0, Duration::from_secs(5), 1000).await;
        let script = OtherScript::start(gw.redis.port()).await;
        let client = reqwest::Client::new();
        let sent = client
            .post(format!("{}{path}", gw.base))
            .bearer_auth(TOKEN)
            .header("content-type", "application/json")
            .body(serde_json::to_vec(&json!([["INCR", "n"]])).unwrap())
            .send();
        let left = tokio::time::timeout(Duration::from_millis(300), sent).await;
        assert!(
            left.is_err(),
            "{path}: answered during the script: {left:?}"
        );
        drop(client);
        tokio::time::sleep(Duration::from_millis(100)).await;
        script.kill_once_running().await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(
            cli_get(&gw, 0, "n"),
            "",
            "{path}: the write was sent after the client left"
        );
        gw.shutdown().await;
    }
}

/// A pipeline mixing reads and writes, on database 1 with the read-only token for a read-only
/// pipeline, during a script: every command answers after the kill, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_pipeline_on_db1_waits_out_the_script() {
    let gw = gateway(1, Duration::from_secs(5), 1000).await;
    gw.redis_cli(&["-n", "1", "SET", "k", "v"]);
    let script = OtherScript::start(gw.redis.port()).await;
    let body =
        serde_json::to_vec(&json!([["GET", "k"], ["EXISTS", "k"], ["STRLEN", "k"]])).unwrap();
    let reply = {
        let request = gw.request(
            Method::POST,
            "/pipeline",
            Some(RO_TOKEN),
            &[("content-type", "application/json")],
            Some(body),
        );
        let mut request = std::pin::pin!(request);
        tokio::select! {
            reply = &mut request => panic!("answered during the script: {reply:?}"),
            () = tokio::time::sleep(Duration::from_millis(400)) => {}
        }
        script.kill_once_running().await;
        request.await
    };
    assert_eq!(
        reply.json,
        json!([{"result": "v"}, {"result": 1}, {"result": 1}]),
        "{reply:?}"
    );
    gw.shutdown().await;
}
