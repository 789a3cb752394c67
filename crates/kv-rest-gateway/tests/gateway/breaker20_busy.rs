//! breaker20: the gateway's busy handling after 726a9d1 — a recent busy refusal of
//! re-creating the ACL users answers waiting requests without connecting
//! (`recreation_waits`), and a script-carrying request only waits while the killer connection
//! sees Redis busy (`busy_now`).

use std::time::{Duration, Instant};

use serde_json::json;

use crate::busy_kit::{OtherScript, cli};
use crate::common::TestGateway;
use idempotency_testkit::fixtures::RedisServer;

/// A Redis restart (the gateway's ACL users are gone), then another client's script. A plain
/// command sent meanwhile (`INCR`) waits for the script and runs after it (breaker19's test).
/// A command carrying a script (`EVAL` of a harmless script) should wait the same way: Redis
/// never ran it (the gateway could not even authenticate). Instead it is answered at once with
/// `400 BUSY …`: the refusal came from re-creating the users (or, since 726a9d1, from
/// `recreation_waits`, without sending anything), and the script path resends only while
/// `busy_now()` sees Redis busy — over the killer connection, which authenticates as the main
/// user, who is gone, so `busy_now()` answers `false` and the refusal is passed to the client
/// as if the client's own script might have produced it.
///
/// Fails on 726a9d1 and already on 7ca6081 (before it): not introduced by the newest fix, but
/// in the path it changed (`busy_now` cannot see a busy Redis while the users are missing).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_script_sent_while_users_are_recreated_during_a_busy_script_waits_and_runs() {
    let redis = RedisServer::start_local_with(&["--busy-reply-threshold", "100"]).unwrap();
    let mut gw = TestGateway::start_on_unready(redis, |config| {
        config.with_script_time_limit(Duration::from_secs(5))
    })
    .await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let ping = gw.cmd(json!(["PING"])).await;
        if ping.status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "not ready: {ping:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    gw.redis.restart().unwrap();
    let port = gw.redis.port();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cli(port, &["PING"]).await.contains("PONG") {
        assert!(Instant::now() < deadline, "redis-server did not come back");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let script = OtherScript::start(port).await;
    let reply = {
        let mut eval = Box::pin(gw.cmd(json!(["EVAL", "return 'ran'", 0])));
        let early = tokio::select! {
            reply = &mut eval => Some(reply),
            () = tokio::time::sleep(Duration::from_millis(800)) => None,
        };
        script.kill().await;
        match early {
            Some(reply) => reply,
            None => eval.await,
        }
    };
    assert_eq!(
        (reply.status, &reply.json),
        (200, &json!({"result": "ran"})),
        "an EVAL that Redis never ran (the users were being re-created during another client's \
         script) should wait for the script like any command: {reply:?}"
    );
    gw.shutdown().await;
}
