//! breaker20: the gateway's busy handling after 726a9d1 — a recent busy refusal of
//! re-creating the ACL users answers waiting requests without connecting
//! (`recreation_waits`), and a script-carrying request only waits while the killer connection
//! sees Redis busy (`busy_now`).

use std::time::{Duration, Instant};

use serde_json::json;

use crate::busy_kit::{ENDLESS, OtherScript, cli};
use crate::common::TestGateway;
use idempotency_testkit::fixtures::RedisServer;
use kv_rest_gateway::MAIN_RULES;

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
/// Fixed: a refusal that came before anything was sent needs no check.
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

/// The gateway's script time limit in the prepared-user test.
const LIMIT: Duration = Duration::from_millis(500);

/// An operator-prepared main user without `SCRIPT KILL` / `FUNCTION KILL` (breaker17: refused
/// at start, or its runaway scripts still stopped) and, in addition, without `MULTI`. The
/// kill-rights check of 726a9d1 queues the kills inside `MULTI … DISCARD`; when `MULTI` itself
/// is refused (`NOPERM`) it only logs a warning and lets the gateway start — the check is
/// skipped, so the gateway serves with a user that cannot stop a runaway script, which
/// breaker17's fix refused. `MULTI` is not among the rights verified at start (`PING`, `GET`),
/// and the REST API without `/multi-exec` works without it, so such a user is plausible.
/// Either the start must be refused, or the script must still be stopped.
///
/// Fails on 726a9d1 (serves; the endless script is not stopped); 7ca6081 refused the start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prepared_user_without_multi_or_kill_is_refused_or_still_stops_scripts() {
    let redis = RedisServer::start_local_with(&["--busy-reply-threshold", "100"]).unwrap();
    let port = redis.port();
    let _cleanup = OtherScript::guard(port);
    let mut setuser = vec!["ACL", "SETUSER", "prepared", "reset", "on", ">prepared-pw"];
    setuser.extend(MAIN_RULES.split_whitespace());
    setuser.extend(["-script|kill", "-function|kill", "-multi"]);
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
        let started = Instant::now();
        let reply = gw.cmd(json!(["EVAL", ENDLESS, 0])).await;
        let took = started.elapsed();
        let busy_after = cli(port, &["PING"]).await.starts_with("BUSY");
        assert!(
            reply.status == 400 && reply.text.contains("killed") && !busy_after,
            "the gateway serves with a main user that cannot stop scripts (MULTI refused, so \
             the kill-rights check was skipped): the endless script was not stopped \
             (answered after {took:?}, Redis still busy: {busy_after}): {reply:?}"
        );
        gw.shutdown().await;
    } else {
        let error = gw.stopped_error().await.to_string();
        assert!(error.to_lowercase().contains("kill"), "{error}");
    }
}
