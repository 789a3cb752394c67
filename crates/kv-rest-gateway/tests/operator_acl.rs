//! The gateway's ACL users as an operator changed them (provisioning mode): a user turned `off`
//! stays off, at start and while the gateway runs, and so does a password someone else set; a
//! deleted user is created again. Each test names its own users, so their log lines (captured
//! by this binary's global subscriber) tell the tests apart.

// Test helpers outside #[test] functions may panic on setup failures: that is the failure report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[allow(dead_code)]
#[path = "gateway/common.rs"]
mod common;

#[path = "gateway/log_capture.rs"]
mod log_capture;

use log_capture::{LOG, capture_logs};

use std::time::{Duration, Instant};

use idempotency_testkit::fixtures::RedisServer;
use serde_json::json;
use sha2::Digest;

use common::{RO_TOKEN, Reply, TestGateway, redis_cli};

/// The captured lines that mention `user` (as `user=<name>` or in an error's text).
fn log_lines(user: &str) -> Vec<String> {
    let log = LOG
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    String::from_utf8_lossy(&log)
        .lines()
        .filter(|line| {
            line.contains(&format!("user={user} ")) || line.contains(&format!(" {user} "))
        })
        .map(str::to_owned)
        .collect()
}

/// A gateway in front of a fresh Redis whose ACL users are `<name>` and `<name>-ro`.
async fn gateway(name: &str) -> TestGateway {
    capture_logs();
    let (main, read_only) = (name.to_owned(), format!("{name}-ro"));
    TestGateway::start_with(move |config| config.with_acl_users(main, read_only)).await
}

async fn read(gw: &TestGateway, key: &str) -> Reply {
    gw.request(
        reqwest::Method::GET,
        &format!("/get/{key}"),
        Some(RO_TOKEN),
        &[],
        None,
    )
    .await
}

/// The `flags` of `ACL GETUSER user` (empty when the user is absent).
fn flags(gw: &TestGateway, user: &str) -> Vec<String> {
    let reply = gw.redis_cli(&["ACL", "GETUSER", user]);
    reply
        .lines()
        .skip_while(|line| *line != "flags")
        .skip(1)
        .take_while(|line| *line != "passwords")
        .map(str::to_owned)
        .collect()
}

/// Sends `SET k <value>` until it is served (within 10 s).
async fn until_served(gw: &TestGateway, value: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let reply = gw.cmd(json!(["SET", "k", value])).await;
        if reply.status == 200 {
            return;
        }
        assert!(Instant::now() < deadline, "not serving again: {reply:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Fixed: an operator disables the gateway's main user during an incident (`ACL SETUSER … off`,
/// and `CLIENT KILL USER …`: Redis keeps connections authenticated before `off`). The gateway
/// used to re-create the user at the next authentication failure — `reset on` with its rules:
/// the write was served and the user was on again. Now the user stays off, the token's
/// requests get the 503 "Redis refused the gateway's credentials", without a connection per
/// request, one error line says why; the read-only user is not touched and serves. Turned on
/// again by the operator, the gateway serves within a second; deleted, it is created again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_the_operator_disabled_stays_off() {
    const USER: &str = "gw-disabled-at-run";
    let gw = gateway(USER).await;
    assert_eq!(gw.cmd(json!(["SET", "k", "before"])).await.result(), "OK");
    assert_eq!(read(&gw, "k").await.result(), "before");

    assert!(
        gw.redis_cli(&["ACL", "SETUSER", USER, "off"])
            .contains("OK")
    );
    gw.redis_cli(&["CLIENT", "KILL", "USER", USER]);
    let before = gw.connections_received();
    let started = Instant::now();
    for _ in 0..20 {
        let reply = gw.cmd(json!(["SET", "k", "during"])).await;
        let error = reply.error(503);
        assert!(
            error.starts_with("Redis refused the gateway's credentials")
                && error.contains("disabled (off)"),
            "{reply:?}"
        );
        let reply = gw
            .post("/multi-exec", &json!([["SET", "k", "during"]]), &[])
            .await;
        assert_eq!(reply.status, 503, "{reply:?}");
    }
    let took = started.elapsed();
    let opened = gw.connections_received() - before;
    // Per hold (1 s): one attempt as the user (refused) and one administrator's connection for
    // `ACL GETUSER`; plus this test's `INFO` (measured: 3 for the 40 requests).
    let most = 2 * (took.as_secs() + 1) + 1;
    assert!(
        opened <= most,
        "40 refused requests in {took:?} opened {opened} connections (most {most})"
    );
    assert_eq!(flags(&gw, USER)[0], "off", "the gateway turned the user on");
    assert_eq!(gw.redis_cli(&["GET", "k"]).trim(), "before");
    // The read-only token's user is its own: it serves.
    assert_eq!(read(&gw, "k").await.result(), "before");
    let lines = log_lines(USER);
    assert_eq!(lines.len(), 1, "one line per 30 s: {lines:#?}");
    assert!(
        lines[0].contains("ERROR")
            && lines[0].contains("disabled (off): an operator disabled it")
            && lines[0].contains("role=main"),
        "{lines:#?}"
    );

    // The operator turns it on again: served.
    assert!(gw.redis_cli(&["ACL", "SETUSER", USER, "on"]).contains("OK"));
    until_served(&gw, "on again").await;
    // Disabled again, then deleted: the gateway creates it again, on.
    gw.redis_cli(&["ACL", "SETUSER", USER, "off"]);
    gw.redis_cli(&["CLIENT", "KILL", "USER", USER]);
    assert_eq!(gw.cmd(json!(["SET", "k", "x"])).await.status, 503);
    assert_eq!(gw.redis_cli(&["ACL", "DELUSER", USER]).trim(), "1");
    until_served(&gw, "re-created").await;
    assert_eq!(flags(&gw, USER)[0], "on");
    assert_eq!(gw.redis_cli(&["GET", "k"]).trim(), "re-created");
    gw.shutdown().await;
}

/// Unchanged: users deleted while the gateway runs (what a Redis restart without an ACL file
/// looks like) are created again at the next authentication failure, and the request is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleted_users_are_created_again() {
    const USER: &str = "gw-deleted";
    let gw = gateway(USER).await;
    assert_eq!(gw.cmd(json!(["SET", "k", "v1"])).await.result(), "OK");
    let read_only = format!("{USER}-ro");
    assert_eq!(
        gw.redis_cli(&["ACL", "DELUSER", USER, &read_only]).trim(),
        "2"
    );
    assert_eq!(gw.cmd(json!(["SET", "k", "v2"])).await.result(), "OK");
    assert_eq!(read(&gw, "k").await.result(), "v2");
    assert_eq!(flags(&gw, USER)[0], "on");
    assert_eq!(flags(&gw, &read_only)[0], "on");
    gw.shutdown().await;
}

/// Fixed: someone else set the main user's password (an operator, or a gateway instance with
/// other tokens). The gateway used to set its own again at the next authentication failure
/// (two instances with different tokens took turns locking each other out). Now the password
/// stays, requests get the 503 saying so, and an error line names the user.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_someone_else_set_is_not_overwritten() {
    const USER: &str = "gw-other-password";
    let gw = gateway(USER).await;
    assert_eq!(gw.cmd(json!(["SET", "k", "v"])).await.result(), "OK");
    assert!(
        gw.redis_cli(&["ACL", "SETUSER", USER, "resetpass", ">someone-elses"])
            .contains("OK")
    );
    gw.redis_cli(&["CLIENT", "KILL", "USER", USER]);
    let reply = gw.cmd(json!(["SET", "k", "w"])).await;
    assert!(
        reply
            .error(503)
            .contains("has a password the gateway did not set"),
        "{reply:?}"
    );
    let passwords = gw.redis_cli(&["ACL", "GETUSER", USER]);
    // SHA-256 of "someone-elses", as Redis lists it.
    let theirs: String = sha2::Sha256::digest(b"someone-elses")
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect();
    assert!(passwords.contains(&theirs), "{theirs} not in {passwords}");
    assert_eq!(gw.redis_cli(&["GET", "k"]).trim(), "v");
    let lines = log_lines(USER);
    assert!(
        lines.len() == 1 && lines[0].contains("its password is not the gateway's"),
        "{lines:#?}"
    );
    gw.shutdown().await;
}

/// Fixed: the gateway starts while its main user exists and is `off`. It used to run `ACL
/// SETUSER … reset on` at start and serve. Now it leaves the user off, answers 503 with the
/// credentials error, logs a warning naming the user, and retries: once the operator turns the
/// user on, the start completes and it serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disabled_user_is_not_turned_on_at_start() {
    const USER: &str = "gw-disabled-at-start";
    capture_logs();
    let redis = RedisServer::start_local().unwrap();
    assert!(
        redis_cli(
            redis.port(),
            &["ACL", "SETUSER", USER, "off", ">operator-pw"]
        )
        .contains("OK")
    );
    let gw = TestGateway::start_on_unready(redis, |config| {
        config.with_acl_users(USER, format!("{USER}-ro"))
    })
    .await;
    // The start's first attempt runs before the listener accepts: a request sees its outcome.
    let reply = gw.cmd(json!(["SET", "k", "v"])).await;
    let error = reply.error(503);
    assert!(
        error.starts_with("Redis refused the gateway's credentials")
            && error.contains("disabled (off)"),
        "{reply:?}"
    );
    assert!(!gw.stopped(), "a disabled user is retried, not fatal");
    assert_eq!(flags(&gw, USER)[0], "off", "the start turned the user on");
    let deadline = Instant::now() + Duration::from_secs(10);
    while log_lines(USER).is_empty() {
        assert!(Instant::now() < deadline, "no log line about {USER}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let lines = log_lines(USER);
    assert!(
        lines[0].contains("WARN") && lines[0].contains("is disabled (off)"),
        "{lines:#?}"
    );
    assert!(gw.redis_cli(&["ACL", "SETUSER", USER, "on"]).contains("OK"));
    gw.wait_ready().await;
    until_served(&gw, "served").await;
    assert_eq!(flags(&gw, USER)[0], "on");
    gw.shutdown().await;
}
