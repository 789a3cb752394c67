//! The first request after a Redis restart: the gateway's shared connection died with the old
//! server, and a command that was never sent on it must not fail because of that.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use idempotency_testkit::fixtures::RedisServer;
use kv_rest_gateway::{DEFAULT_ACL_USER, DEFAULT_READ_ONLY_ACL_USER, GatewayConfig};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::common::{RO_TOKEN, TestGateway, restart_and_wait};

/// Restarts per test: each one kills the server (SIGKILL) and starts it again on the same port.
const RESTARTS: usize = 5;

/// The user and last command of each connection Redis has, without the `redis-cli`
/// connection that asks.
fn connection_users(gw: &TestGateway) -> Vec<(String, String)> {
    gw.redis_cli(&["CLIENT", "LIST"])
        .lines()
        .filter_map(|line| {
            let field = |name: &str| {
                line.split(' ')
                    .find_map(|pair| pair.strip_prefix(name)?.strip_prefix('='))
                    .map(str::to_owned)
            };
            Some((field("user")?, field("cmd")?))
        })
        .filter(|(_, cmd)| cmd != "client|list")
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_request_after_each_restart_succeeds() {
    let mut gw = TestGateway::start().await;
    assert_eq!(gw.cmd(json!(["SET", "k", "v0"])).await.result(), "OK");
    for round in 1..=RESTARTS {
        restart_and_wait(&mut gw);
        // The very first request after the restart, a write: the dead connection is known
        // dead, so the gateway connects again before sending it.
        let value = format!("v{round}");
        let set = gw.cmd(json!(["SET", "k", value])).await;
        assert_eq!(
            set.status, 200,
            "round {round}: first request failed: {set:?}"
        );
        assert_eq!(set.result(), "OK");
        assert_eq!(gw.cmd(json!(["GET", "k"])).await.result(), value.as_str());
        let pipeline = gw.post("/pipeline", &json!([["GET", "k"]]), &[]).await;
        assert_eq!(pipeline.json, json!([{"result": value}]), "round {round}");
    }
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_read_after_each_restart_succeeds_for_both_tokens() {
    let mut gw = TestGateway::start().await;
    for round in 1..=RESTARTS {
        restart_and_wait(&mut gw);
        let read = gw
            .request(reqwest::Method::GET, "/get/k", Some(RO_TOKEN), &[], None)
            .await;
        assert_eq!(read.status, 200, "round {round}: read-only token: {read:?}");
        assert!(read.result().is_null(), "{read:?}");
        restart_and_wait(&mut gw);
        let read = gw.cmd(json!(["EXISTS", "k"])).await;
        assert_eq!(
            read.status, 200,
            "round {round}: read-write token: {read:?}"
        );
        assert_eq!(read.result(), 0);
    }
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewed_connections_authenticate_as_the_restricted_users() {
    let mut gw = TestGateway::start().await;
    restart_and_wait(&mut gw);
    assert_eq!(gw.cmd(json!(["SET", "k", "v"])).await.result(), "OK");
    let read = gw
        .request(reqwest::Method::GET, "/get/k", Some(RO_TOKEN), &[], None)
        .await;
    assert_eq!(read.result(), "v");
    // The connections that ran the two commands: the restricted users', not the admin's.
    let users = connection_users(&gw);
    let ran = |cmd: &str| {
        users
            .iter()
            .filter(|(_, last)| last == cmd)
            .map(|(user, _)| user.as_str())
            .collect::<Vec<_>>()
    };
    assert_eq!(ran("set"), [DEFAULT_ACL_USER], "{users:?}");
    assert_eq!(ran("get"), [DEFAULT_READ_ONLY_ACL_USER], "{users:?}");
    // Redis still refuses what the user may not run, inside a script too.
    let refused = gw
        .cmd(json!([
            "EVAL",
            "return redis.call('CONFIG','GET','maxmemory')",
            "0"
        ]))
        .await;
    assert_eq!(refused.status, 400, "{refused:?}");
    gw.shutdown().await;
}

/// A TCP proxy in front of Redis that can lose a reply: once armed, it swallows the next bytes
/// Redis sends on any connection and closes that connection — the command ran, its client
/// never learns it. Deterministic, unlike killing the server between command and reply.
struct ReplyCutter {
    port: u16,
    armed: Arc<AtomicBool>,
    cuts: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl ReplyCutter {
    async fn start(upstream: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let armed = Arc::new(AtomicBool::new(false));
        let cuts = Arc::new(AtomicUsize::new(0));
        let task = tokio::spawn({
            let (armed, cuts) = (Arc::clone(&armed), Arc::clone(&cuts));
            async move {
                while let Ok((client, _)) = listener.accept().await {
                    let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)).await else {
                        continue;
                    };
                    tokio::spawn(Self::relay(
                        client,
                        server,
                        Arc::clone(&armed),
                        Arc::clone(&cuts),
                    ));
                }
            }
        });
        Self {
            port,
            armed,
            cuts,
            task,
        }
    }

    async fn relay(
        client: TcpStream,
        server: TcpStream,
        armed: Arc<AtomicBool>,
        cuts: Arc<AtomicUsize>,
    ) {
        let (mut client_read, mut client_write) = client.into_split();
        let (mut server_read, mut server_write) = server.into_split();
        let up = tokio::io::copy(&mut client_read, &mut server_write);
        let down = async {
            let mut buffer = vec![0_u8; 16 * 1024];
            loop {
                let read = server_read.read(&mut buffer).await?;
                if read == 0 {
                    return Ok::<_, std::io::Error>(());
                }
                if armed.swap(false, Ordering::SeqCst) {
                    cuts.fetch_add(1, Ordering::SeqCst);
                    return Ok(());
                }
                client_write.write_all(&buffer[..read]).await?;
            }
        };
        // Either side ending drops both connections.
        tokio::select! {
            _ = up => {}
            _ = down => {}
        }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Loses the next reply; returns how many were lost so far, for the caller to compare.
    fn arm(&self) -> usize {
        self.armed.store(true, Ordering::SeqCst);
        self.cuts.load(Ordering::SeqCst)
    }

    fn cuts(&self) -> usize {
        self.cuts.load(Ordering::SeqCst)
    }
}

impl Drop for ReplyCutter {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn gateway_behind_cutter() -> (TestGateway, ReplyCutter) {
    let redis = RedisServer::start_local().unwrap();
    let cutter = ReplyCutter::start(redis.port()).await;
    let url = cutter.url();
    let gw = TestGateway::start_on(redis, move |config| GatewayConfig {
        redis_url: url,
        ..config
    })
    .await;
    (gw, cutter)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_whose_reply_was_lost_is_an_error_and_is_not_sent_again() {
    let (gw, cutter) = gateway_behind_cutter().await;
    assert_eq!(gw.cmd(json!(["INCR", "counter"])).await.result(), 1);

    let before = cutter.arm();
    let lost = gw.cmd(json!(["INCR", "counter"])).await;
    assert_eq!(cutter.cuts(), before + 1, "the reply was not cut: {lost:?}");
    let error = lost.error(503);
    assert!(error.contains("outcome is unknown"), "{error}");
    // It ran once (Redis got it), and only once: no silent resend.
    assert_eq!(gw.redis_cli(&["GET", "counter"]).trim(), "2");

    // Connected again first: armed, the cutter would cut the new connection's AUTH reply.
    assert_eq!(gw.cmd(json!(["PING"])).await.result(), "PONG");
    let before = cutter.arm();
    let lost = gw
        .post("/pipeline", &json!([["INCR", "counter"]]), &[])
        .await;
    assert_eq!(cutter.cuts(), before + 1, "the reply was not cut: {lost:?}");
    assert!(lost.error(503).contains("outcome is unknown"), "{lost:?}");
    assert_eq!(gw.redis_cli(&["GET", "counter"]).trim(), "3");

    // The next write gets a new connection.
    assert_eq!(gw.cmd(json!(["INCR", "counter"])).await.result(), 4);
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_whose_reply_was_lost_is_sent_again() {
    let (gw, cutter) = gateway_behind_cutter().await;
    assert_eq!(gw.cmd(json!(["SET", "k", "v"])).await.result(), "OK");

    let before = cutter.arm();
    let read = gw.cmd(json!(["GET", "k"])).await;
    assert_eq!(cutter.cuts(), before + 1, "the reply was not cut: {read:?}");
    assert_eq!(read.result(), "v");

    assert_eq!(gw.cmd(json!(["PING"])).await.result(), "PONG");
    let before = cutter.arm();
    let read = gw
        .post("/pipeline", &json!([["GET", "k"], ["EXISTS", "k"]]), &[])
        .await;
    assert_eq!(cutter.cuts(), before + 1, "the reply was not cut: {read:?}");
    assert_eq!(read.json, json!([{"result": "v"}, {"result": 1}]));

    // A script is never sent twice, even a read-only one.
    assert_eq!(gw.cmd(json!(["PING"])).await.result(), "PONG");
    let before = cutter.arm();
    let script = gw
        .cmd(json!([
            "EVAL_RO",
            "return redis.call('GET', KEYS[1])",
            "1",
            "k"
        ]))
        .await;
    assert_eq!(
        cutter.cuts(),
        before + 1,
        "the reply was not cut: {script:?}"
    );
    assert!(
        script.error(503).contains("outcome is unknown"),
        "{script:?}"
    );
    gw.shutdown().await;
}
