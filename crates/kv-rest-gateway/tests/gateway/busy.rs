//! Another client's long script (not the gateway's): requests that meet Redis's busy refusal
//! meanwhile wait it out within the busy bound (script time limit + 1 s) and then run once.
//!
//! The script is an endless Lua loop run with `redis-cli` straight against Redis (Redis answers
//! `BUSY` after `--busy-reply-threshold 100` ms); the test ends it with `SCRIPT KILL` once the
//! request has waited, so the request must not answer before the kill, and must succeed after.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::busy_kit::{OtherScript, busy_gateway_unopened, cli_get};
use crate::common::{Reply, TestGateway};

/// How long a request must have waited before the test kills the script.
const WAITED: Duration = Duration::from_millis(400);

/// A gateway on database `db` of a Redis that answers `BUSY` after 100 ms of a script. Ready
/// (its users set up) but its main user's shared connection not opened yet: the first request
/// with the read-write token connects it, so during a script when the test sends it then.
async fn gateway(db: u8, script_time_limit: Duration) -> TestGateway {
    busy_gateway_unopened(db, &[], |config| {
        config.with_script_time_limit(script_time_limit)
    })
    .await
}

/// Sends `request` while another client's script runs: asserts it is still waiting after
/// [`WAITED`], kills the script, and returns the request's reply.
async fn during_busy_script(
    gw: &TestGateway,
    request: impl std::future::Future<Output = Reply>,
) -> Reply {
    let script = OtherScript::start(gw.redis.port()).await;
    let mut request = std::pin::pin!(request);
    tokio::select! {
        reply = &mut request => panic!("answered while Redis was busy: {reply:?}"),
        () = tokio::time::sleep(WAITED) => {}
    }
    script.kill().await;
    request.await
}

/// `/multi-exec` opens a connection of its own: during a script Redis refuses its `SELECT`
/// (database 1) or queues nothing and aborts `EXEC` (database 0). Both were errors at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_exec_waits_out_another_clients_busy_script() {
    for db in [0, 1] {
        let gw = gateway(db, Duration::from_secs(5)).await;
        let body = json!([
            ["INCR", "n"],
            ["INCR", "n"],
            ["SET", "k", "v"],
            ["GET", "n"]
        ]);
        let reply = during_busy_script(&gw, gw.post("/multi-exec", &body, &[])).await;
        assert_eq!(
            reply.json,
            json!([{"result": 1}, {"result": 2}, {"result": "OK"}, {"result": "2"}]),
            "db {db}: {reply:?}"
        );
        assert_eq!(cli_get(&gw, db, "n"), "2", "db {db}: ran once");
        assert_eq!(cli_get(&gw, db, "k"), "v", "db {db}");
        gw.shutdown().await;
    }
}

/// `/pipeline` during a script: every command refused, then sent again once; on database 1
/// the shared connection is opened during the script, and Redis refuses its `SELECT`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipeline_waits_out_another_clients_busy_script() {
    for db in [0, 1] {
        let gw = gateway(db, Duration::from_secs(5)).await;
        let body = json!([
            ["INCR", "n"],
            ["INCR", "n"],
            ["SET", "k", "v"],
            ["GET", "k"],
            ["INCRBY", "m", 5],
            ["HSET", "k", "f", "v"],
        ]);
        let reply = during_busy_script(&gw, gw.post("/pipeline", &body, &[])).await;
        assert_eq!(reply.status, 200, "db {db}: {reply:?}");
        let items = reply.json.as_array().expect("array");
        assert_eq!(items.len(), 6, "db {db}: {reply:?}");
        assert_eq!(
            items[..5],
            [
                json!({"result": 1}),
                json!({"result": 2}),
                json!({"result": "OK"}),
                json!({"result": "v"}),
                json!({"result": 5}),
            ],
            "db {db}: {reply:?}"
        );
        // A command's own error is its reply (not a busy refusal, not sent again).
        assert!(
            items[5]["error"]
                .as_str()
                .is_some_and(|e| e.starts_with("WRONGTYPE")),
            "db {db}: {reply:?}"
        );
        assert_eq!(cli_get(&gw, db, "n"), "2", "db {db}: INCR ran once each");
        assert_eq!(cli_get(&gw, db, "m"), "5", "db {db}: INCRBY ran once");
        gw.shutdown().await;
    }
}

/// A single command on a shared connection opened during a script (database 1: Redis refuses
/// its `SELECT`) waits too; it was a 400 `ERR Redis is busy…` at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn command_waits_out_a_busy_script_while_connecting() {
    let gw = gateway(1, Duration::from_secs(5)).await;
    let reply = during_busy_script(&gw, gw.cmd(json!(["INCR", "n"]))).await;
    assert_eq!(reply.result(), &json!(1), "{reply:?}");
    assert_eq!(cli_get(&gw, 1, "n"), "1");
    gw.shutdown().await;
}

/// Past the bound (script time limit + 1 s) the busy refusals are the replies, as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipeline_and_multi_exec_answer_busy_after_the_bound() {
    let limit = Duration::from_millis(200);
    let gw = gateway(0, limit).await;
    let script = OtherScript::start(gw.redis.port()).await;
    let started = Instant::now();
    let pipeline = gw
        .post("/pipeline", &json!([["INCR", "n"], ["GET", "n"]]), &[])
        .await;
    let took = started.elapsed();
    let started = Instant::now();
    let multi = gw.post("/multi-exec", &json!([["INCR", "n"]]), &[]).await;
    let multi_took = started.elapsed();
    script.kill().await;
    for (what, took) in [("pipeline", took), ("multi-exec", multi_took)] {
        assert!(
            took >= limit + Duration::from_secs(1) && took < Duration::from_secs(5),
            "{what} answered after {took:?}"
        );
    }
    assert_eq!(pipeline.status, 200, "{pipeline:?}");
    for item in pipeline.json.as_array().expect("array") {
        assert!(
            item["error"]
                .as_str()
                .is_some_and(|e| e.starts_with("BUSY ")),
            "{pipeline:?}"
        );
    }
    assert!(multi.error(400).starts_with("BUSY "), "{multi:?}");
    assert_eq!(cli_get(&gw, 0, "n"), "", "nothing ran");
    assert_eq!(gw.cmd(json!(["INCR", "n"])).await.result(), &json!(1));
    gw.shutdown().await;
}
