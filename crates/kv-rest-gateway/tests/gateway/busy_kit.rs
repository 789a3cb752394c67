//! Helpers of the busy tests (`busy.rs`, `breaker15_busy.rs`, `breaker16_busy.rs`,
//! `breaker17_busy.rs`): a gateway on a Redis that answers `BUSY` after 100 ms of a script,
//! another client's endless script, and `redis-cli` reads.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use idempotency_testkit::fixtures::RedisServer;
use kv_rest_gateway::GatewayConfig;
use reqwest::Method;
use serde_json::json;

use crate::common::{RO_TOKEN, TestGateway, redis_cli};

/// An endless Lua loop: it never writes, so `SCRIPT KILL` can stop it.
pub(crate) const ENDLESS: &str = "while true do end";

/// A gateway on database `db` of a Redis started with `--busy-reply-threshold 100` (it
/// answers `BUSY` after 100 ms of a script) and `redis_args`, its configuration set by
/// `adjust` (the script time limit, …); ready (the read-only token is served) and with the
/// main user's shared connection open (a `PING` answered).
pub(crate) async fn busy_gateway(
    db: u8,
    redis_args: &[&str],
    adjust: impl FnOnce(GatewayConfig) -> GatewayConfig,
) -> TestGateway {
    let gw = busy_gateway_unopened(db, redis_args, adjust).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let ping = gw.cmd(json!(["PING"])).await;
        if ping.status == 200 {
            assert_eq!(ping.result(), "PONG");
            return gw;
        }
        assert!(Instant::now() < deadline, "not ready: {ping:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// [`busy_gateway`] without opening the main user's shared connection: the first request
/// with the read-write token connects it (so during a script when the test sends it then).
pub(crate) async fn busy_gateway_unopened(
    db: u8,
    redis_args: &[&str],
    adjust: impl FnOnce(GatewayConfig) -> GatewayConfig,
) -> TestGateway {
    let mut args = vec!["--busy-reply-threshold", "100"];
    args.extend_from_slice(redis_args);
    let redis = RedisServer::start_local_with(&args).unwrap();
    let gw = TestGateway::start_on_unready(redis, |mut config| {
        config.redis_url = format!("{}/{db}", config.redis_url);
        adjust(config)
    })
    .await;
    // Ready once a read-only request answers (the health route would connect the main user).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let reply = gw
            .request(Method::GET, "/get/nothing", Some(RO_TOKEN), &[], None)
            .await;
        if reply.status == 200 {
            return gw;
        }
        assert!(Instant::now() < deadline, "not ready: {reply:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Async `redis-cli` as the administrator: stdout and stderr.
pub(crate) async fn cli(port: u16, args: &[&str]) -> String {
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        redis_cli(port, &args)
    })
    .await
    .unwrap()
}

/// Waits until Redis answers `BUSY` to a new connection (at most 10 s).
pub(crate) async fn until_busy(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let reply = cli(port, &["PING"]).await;
        if reply.starts_with("BUSY") {
            return;
        }
        assert!(Instant::now() < deadline, "never busy: {reply}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// `GET key` on database `db`, straight from Redis (trimmed; empty when there is none).
pub(crate) fn cli_get(gw: &TestGateway, db: u8, key: &str) -> String {
    gw.redis_cli(&["-n", &db.to_string(), "GET", key])
        .trim()
        .to_owned()
}

/// Another client's endless script (`redis-cli EVAL "while true do end" 0`), and the guard that
/// stops whatever script still runs when a test ends (a failed test must not leave Redis busy
/// and its shutdown hanging) and reaps that `redis-cli`.
pub(crate) struct OtherScript {
    port: u16,
    child: Option<Child>,
}

impl OtherScript {
    /// No script: only the guard (a test whose scripts go through the gateway).
    pub(crate) fn guard(port: u16) -> Self {
        Self { port, child: None }
    }

    /// Starts the script without waiting for Redis to be busy.
    pub(crate) fn spawn(port: u16) -> Self {
        let child = Command::new("redis-cli")
            .args(["-p", &port.to_string(), "EVAL", ENDLESS, "0"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("redis-cli");
        Self {
            port,
            child: Some(child),
        }
    }

    /// Starts the script and waits until Redis answers `BUSY`.
    pub(crate) async fn start(port: u16) -> Self {
        let script = Self::spawn(port);
        until_busy(port).await;
        script
    }

    /// Ends the script with `SCRIPT KILL`; asserts that it was still running (the kill answers
    /// `OK`, the script's reply says it was killed).
    pub(crate) async fn kill(mut self) {
        let port = self.port;
        let child = self.child.take().expect("a script");
        let output = tokio::task::spawn_blocking(move || {
            let kill = redis_cli(port, &["SCRIPT", "KILL"]);
            assert_eq!(kill.trim(), "OK", "SCRIPT KILL");
            child.wait_with_output().unwrap()
        })
        .await
        .unwrap();
        let text = String::from_utf8_lossy(&output.stdout).into_owned()
            + &String::from_utf8_lossy(&output.stderr);
        assert!(text.contains("killed"), "the script's reply: {text}");
    }

    /// Ends the script with `SCRIPT KILL` as soon as it runs (it may not have started yet:
    /// the kill is sent again until it answers `OK`, at most 10 s).
    pub(crate) async fn kill_once_running(mut self) {
        let port = self.port;
        let child = self.child.take().expect("a script");
        tokio::task::spawn_blocking(move || {
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                let kill = redis_cli(port, &["SCRIPT", "KILL"]);
                if kill.trim() == "OK" {
                    break;
                }
                assert!(Instant::now() < deadline, "SCRIPT KILL: {kill}");
                std::thread::sleep(Duration::from_millis(10));
            }
            child.wait_with_output().unwrap()
        })
        .await
        .unwrap();
    }
}

impl Drop for OtherScript {
    fn drop(&mut self) {
        for _ in 0..50 {
            if !redis_cli(self.port, &["PING"]).starts_with("BUSY") {
                break;
            }
            let _ = redis_cli(self.port, &["SCRIPT", "KILL"]);
            let _ = redis_cli(self.port, &["FUNCTION", "KILL"]);
            std::thread::sleep(Duration::from_millis(20));
        }
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
