//! breaker22: attacks on "the gateway never turns back on a user an operator disabled"
//! (commits cf9f503, 7c47310), against real `redis-server`s on 127.0.0.1 (testkit fixture).
//! Each test names its own users, so the log lines (this binary's global subscriber) tell the
//! tests apart.

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
use kv_rest_gateway::{GatewayConfig, serve};
use serde_json::{Value as Json, json};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use common::{RO_TOKEN, TOKEN, redis_cli};

fn log_len() -> usize {
    LOG.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .len()
}

/// The captured lines since byte `from`.
fn log_since(from: usize) -> Vec<String> {
    let log = LOG
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    String::from_utf8_lossy(&log[from..])
        .lines()
        .map(str::to_owned)
        .collect()
}

/// A gateway started in-process on 127.0.0.1:0 in front of `url`.
struct Gw {
    base: String,
    client: reqwest::Client,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), kv_rest_gateway::Error>>,
}

impl Gw {
    async fn start(url: &str, user: &str) -> Self {
        capture_logs();
        let config = GatewayConfig::new(url.to_owned(), TOKEN)
            .with_read_only_token(RO_TOKEN)
            .with_timeouts(Duration::from_secs(1), Duration::from_secs(5))
            .with_acl_users(user.to_owned(), format!("{user}-ro"));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(serve(listener, config, async move {
            let _ = stopped.await;
        }));
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(20))
            .build()
            .unwrap();
        Self {
            base,
            client,
            stop: Some(stop),
            task,
        }
    }

    async fn request(&self, token: &str, path: &str, body: Option<Json>) -> (u16, Json) {
        let request = match body {
            Some(body) => self
                .client
                .post(format!("{}{path}", self.base))
                .header("content-type", "application/json")
                .body(serde_json::to_vec(&body).unwrap()),
            None => self.client.get(format!("{}{path}", self.base)),
        };
        let response = request.bearer_auth(token).send().await.expect("HTTP");
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Json::Null))
    }

    async fn set(&self, value: &str) -> (u16, Json) {
        self.request(TOKEN, "/", Some(json!(["SET", "k", value])))
            .await
    }

    async fn read(&self) -> (u16, Json) {
        self.request(RO_TOKEN, "/get/k", None).await
    }

    async fn until_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            assert!(!self.task.is_finished(), "the gateway stopped");
            if let Ok(response) = self
                .client
                .get(format!("{}/~health", self.base))
                .send()
                .await
                && response.status() == 200
            {
                return;
            }
            assert!(Instant::now() < deadline, "not ready after 10 s");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// `SET k value` until served (within 10 s); how long it took.
    async fn until_served(&self, value: &str) -> Duration {
        let started = Instant::now();
        loop {
            let (status, body) = self.set(value).await;
            if status == 200 {
                return started.elapsed();
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "not serving again: {status} {body}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = tokio::time::timeout(Duration::from_secs(10), self.task).await;
    }
}

fn connections_received(port: u16) -> u64 {
    redis_cli(port, &["INFO", "stats"])
        .lines()
        .find_map(|line| line.strip_prefix("total_connections_received:"))
        .and_then(|n| n.trim().parse().ok())
        .expect("total_connections_received")
}

/// The ids of the client connections authenticated as `user` (`CLIENT LIST`).
fn client_ids(port: u16, user: &str) -> Vec<String> {
    let needle = format!(" user={user} ");
    redis_cli(port, &["CLIENT", "LIST"])
        .lines()
        .filter(|line| line.contains(&needle))
        .filter_map(|line| {
            line.split(' ')
                .next()?
                .strip_prefix("id=")
                .map(str::to_owned)
        })
        .collect()
}

fn flags(port: u16, user: &str) -> Vec<String> {
    redis_cli(port, &["ACL", "GETUSER", user])
        .lines()
        .skip_while(|line| *line != "flags")
        .skip(1)
        .take_while(|line| *line != "passwords")
        .map(str::to_owned)
        .collect()
}

fn disable(port: u16, user: &str) {
    assert!(redis_cli(port, &["ACL", "SETUSER", user, "off"]).contains("OK"));
    redis_cli(port, &["CLIENT", "KILL", "USER", user]);
}

/// Under RESP3 (`?protocol=resp3`: `ACL GETUSER` answers a map, the flags a set) a disabled
/// user stays off as under RESP2, and comes back when turned on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn breaker22_resp3_disabled_user_stays_off_and_recovers() {
    const USER: &str = "b22-resp3";
    let redis = RedisServer::start_local().unwrap();
    let port = redis.port();
    let gw = Gw::start(&format!("{}?protocol=resp3", redis.url()), USER).await;
    gw.until_ready().await;
    assert_eq!(gw.set("a").await.0, 200);
    disable(port, USER);
    let (status, body) = gw.set("b").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.to_string().contains("disabled (off)"), "{body}");
    assert_eq!(flags(port, USER)[0], "off", "turned on under RESP3");
    assert_eq!(gw.read().await.0, 200, "the read-only user serves on");
    // Refused traffic for a while (the hold is renewed), then turned on while requests flow.
    for _ in 0..30 {
        assert_eq!(gw.set("b").await.0, 503);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(redis_cli(port, &["ACL", "SETUSER", USER, "on"]).contains("OK"));
    let took = gw.until_served("c").await;
    eprintln!("breaker22: served {took:?} after `ACL SETUSER on` (RESP3)");
    disable(port, USER);
    assert_eq!(gw.set("d").await.0, 503);
    assert_eq!(redis_cli(port, &["ACL", "DELUSER", USER]).trim(), "1");
    let took = gw.until_served("e").await;
    eprintln!("breaker22: served {took:?} after `ACL DELUSER` (RESP3)");
    assert_eq!(flags(port, USER)[0], "on");
    gw.shutdown().await;
}

/// An administrator that may `ACL SETUSER` but not `ACL GETUSER` (the `Unknown` path): as
/// before the change, an authentication failure re-creates the user (turned on) and the
/// request is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn breaker22_admin_without_getuser_behaves_as_before() {
    const USER: &str = "b22-nogetuser";
    let redis = RedisServer::start_local().unwrap();
    let port = redis.port();
    let created = redis_cli(
        port,
        &[
            "ACL",
            "SETUSER",
            "b22-admin",
            "on",
            ">admin-pw",
            "~*",
            "&*",
            "+@all",
            "-acl|getuser",
        ],
    );
    assert!(created.contains("OK"), "{created}");
    let url = redis
        .url()
        .replacen("redis://", "redis://b22-admin:admin-pw@", 1);
    let gw = Gw::start(&url, USER).await;
    gw.until_ready().await;
    assert_eq!(gw.set("a").await.0, 200);
    disable(port, USER);
    let (status, body) = gw.set("b").await;
    assert_eq!(status, 200, "as before: re-created and served: {body}");
    assert_eq!(flags(port, USER)[0], "on");
    gw.shutdown().await;
}

/// Two instances with the same tokens, one operator action: both refuse while the user is
/// off (neither turns it on), both serve again once it is on; an instance restarted meanwhile
/// waits at start and serves too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn breaker22_two_instances_one_operator() {
    const USER: &str = "b22-two";
    let redis = RedisServer::start_local().unwrap();
    let port = redis.port();
    let a = Gw::start(redis.url(), USER).await;
    a.until_ready().await;
    let b = Gw::start(redis.url(), USER).await;
    b.until_ready().await;
    assert_eq!(a.set("a").await.0, 200);
    assert_eq!(b.set("b").await.0, 200);
    disable(port, USER);
    for _ in 0..10 {
        assert_eq!(a.set("x").await.0, 503);
        assert_eq!(b.set("x").await.0, 503);
    }
    assert_eq!(flags(port, USER)[0], "off");
    b.shutdown().await;
    let b = Gw::start(redis.url(), USER).await;
    let (status, _) = b.set("x").await;
    assert_eq!(status, 503);
    assert_eq!(flags(port, USER)[0], "off", "a restart turned it on");
    assert!(redis_cli(port, &["ACL", "SETUSER", USER, "on"]).contains("OK"));
    a.until_served("a2").await;
    b.until_served("b2").await;
    a.shutdown().await;
    b.shutdown().await;
}

/// While the main user is refused (off) and the read-only token's traffic flows, the
/// gateway must not reconnect the read-only user (nor anything else) every second: SECURITY.md
/// says "at most one connection as that user and one administrator connection per second".
/// Measured on the merged code: each refusal check also renews the read-only user's and the
/// script killer's connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn breaker22_a_refused_user_does_not_churn_the_other_users_connections() {
    the_other_users_connection_stays("b22-churn", Role::Main).await;
}

/// The reverse: the read-only user is off while the main token's writes flow; the main user's
/// connection must not be renewed once a second either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn breaker22_a_refused_read_only_user_does_not_churn_the_main_connection() {
    the_other_users_connection_stays("b22-churn-ro", Role::ReadOnly).await;
}

/// Which of the gateway's two users an operator turns off.
#[derive(Clone, Copy, Debug)]
enum Role {
    Main,
    ReadOnly,
}

/// The gateway's users are `user` and `user-ro`; `off` is turned off, then for 4 s that token's
/// requests are refused while the other token's are served: the other user's connection is the
/// same one throughout, and at most two connections a second are opened.
async fn the_other_users_connection_stays(user: &str, off: Role) {
    let read_only = format!("{user}-ro");
    let (refused_user, other_user) = match off {
        Role::Main => (user, read_only.as_str()),
        Role::ReadOnly => (read_only.as_str(), user),
    };
    let redis = RedisServer::start_local().unwrap();
    let port = redis.port();
    let gw = Gw::start(redis.url(), user).await;
    gw.until_ready().await;
    assert_eq!(gw.set("v").await.0, 200);
    assert_eq!(gw.read().await.0, 200);
    disable(port, refused_user);
    let other_before = client_ids(port, other_user);
    assert!(!other_before.is_empty(), "{other_user}: no connection");
    let before = connections_received(port);
    let started = Instant::now();
    let mut rounds = 0;
    while started.elapsed() < Duration::from_secs(4) {
        let (write, read) = (gw.set("w").await.0, gw.read().await.0);
        match off {
            Role::Main => assert_eq!((write, read), (503, 200)),
            Role::ReadOnly => assert_eq!((write, read), (200, 503)),
        }
        rounds += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let took = started.elapsed();
    let opened = connections_received(port) - before - 1; // this INFO
    assert_eq!(
        client_ids(port, other_user),
        other_before,
        "{other_user}'s connection was replaced ({opened} connections in {took:?})"
    );
    let most = 2 * (took.as_secs() + 1);
    assert!(
        opened <= most,
        "{rounds} rounds in {took:?} opened {opened} connections (most {most}: one as the \
         refused user and one administrator's per second)"
    );
    gw.shutdown().await;
}

/// Ten seconds of refused traffic on the main token (and read-only traffic that is served):
/// the log stays quiet, one `error` line per 30 s names the user; no other warn/error line
/// per refused second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn breaker22_ten_seconds_of_refused_traffic_log_one_line() {
    const USER: &str = "b22-flood";
    let redis = RedisServer::start_local().unwrap();
    let port = redis.port();
    let gw = Gw::start(redis.url(), USER).await;
    gw.until_ready().await;
    assert_eq!(gw.set("v").await.0, 200);
    disable(port, USER);
    let from = log_len();
    let started = Instant::now();
    let mut refused = 0;
    while started.elapsed() < Duration::from_secs(10) {
        let (status, _) = gw.set("w").await;
        assert_eq!(status, 503);
        refused += 1;
        let (status, _) = gw
            .request(TOKEN, "/multi-exec", Some(json!([["SET", "k", "m"]])))
            .await;
        assert_eq!(status, 503);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The subscriber is the binary's: the other tests, running meanwhile, log too. Their
    // lines that name a user are left out by the name; some name none (users set again after
    // their Redis restarted, a request cut off by that restart), so those are bounded loosely:
    // a refusal logged per request would be hundreds of lines here, one per second ten or more.
    let lines: Vec<String> = log_since(from);
    let ours: Vec<&String> = lines.iter().filter(|line| line.contains(USER)).collect();
    let unnamed: Vec<&String> = lines.iter().filter(|line| !line.contains("b22-")).collect();
    assert!(
        ours.len() <= 2 && unnamed.len() <= 5,
        "{refused} refused requests in 10 s logged {} lines naming {USER} and {} naming no \
         user: {ours:#?} {unnamed:#?}",
        ours.len(),
        unnamed.len()
    );
    gw.shutdown().await;
}

/// Read-only requests until one is served (within 10 s); how long it took.
async fn until_read(gw: &Gw) -> Duration {
    let started = Instant::now();
    loop {
        let (status, body) = gw.read().await;
        if status == 200 {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the read-only token is not served: {status} {body}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The read-only token's user is off at start (with an operator's password), the main user is
/// fine. As at run time, the other token serves on: the main token's writes are served, the
/// read-only token's requests get 503 "disabled (off)", and the user stays off. Turned on by
/// the operator, the start's rule applies (it is set with the gateway's password): the
/// read-only token is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn breaker22_read_only_user_off_at_start_takes_writes_down() {
    const USER: &str = "b22-ro-off-start";
    let redis = RedisServer::start_local().unwrap();
    let port = redis.port();
    let ro = format!("{USER}-ro");
    assert!(redis_cli(port, &["ACL", "SETUSER", &ro, "off", ">operator"]).contains("OK"));
    capture_logs();
    let from = log_len();
    let gw = Gw::start(redis.url(), USER).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (status, body) = gw.set("v").await;
    assert_eq!(flags(port, &ro)[0], "off");
    assert_eq!(
        status, 200,
        "the main token's writes are refused because the read-only user is off: {body}"
    );
    for _ in 0..30 {
        let (status, body) = gw.read().await;
        assert_eq!(status, 503, "{body}");
        assert!(body.to_string().contains("disabled (off)"), "{body}");
        assert_eq!(gw.set("v").await.0, 200);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(flags(port, &ro)[0], "off", "turned on by the gateway");
    // The run-time refusal's reports: one line for the episode, not one per request.
    let lines: Vec<String> = log_since(from)
        .into_iter()
        .filter(|line| line.contains(&ro))
        .collect();
    assert!(lines.len() <= 2, "{} lines: {lines:#?}", lines.len());
    assert!(redis_cli(port, &["ACL", "SETUSER", &ro, "on"]).contains("OK"));
    let took = until_read(&gw).await;
    eprintln!("breaker22: read-only served {took:?} after `ACL SETUSER on` (off at start)");
    assert_eq!(gw.read().await.1, json!({"result": "v"}));
    assert_eq!(gw.set("w").await.0, 200);
    gw.shutdown().await;
}

/// The read-only user is off at start and then deleted: the gateway creates it, and the
/// read-only token is served; the main token is served throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn breaker22_read_only_user_off_at_start_then_deleted_is_created() {
    const USER: &str = "b22-ro-off-del";
    let redis = RedisServer::start_local().unwrap();
    let port = redis.port();
    let ro = format!("{USER}-ro");
    assert!(redis_cli(port, &["ACL", "SETUSER", &ro, "off", ">operator"]).contains("OK"));
    let gw = Gw::start(redis.url(), USER).await;
    gw.until_served("v").await;
    let (status, body) = gw.read().await;
    assert_eq!(status, 503, "{body}");
    assert!(body.to_string().contains("disabled (off)"), "{body}");
    assert_eq!(redis_cli(port, &["ACL", "DELUSER", &ro]).trim(), "1");
    let took = until_read(&gw).await;
    eprintln!("breaker22: read-only served {took:?} after `ACL DELUSER` (off at start)");
    assert_eq!(flags(port, &ro)[0], "on");
    assert_eq!(gw.set("w").await.0, 200);
    gw.shutdown().await;
}
