//! breaker13: attacks on the gateway's own Redis connections (`src/link.rs`): is a write ever
//! sent twice, and does every request end within the timeouts when Redis misbehaves?
//!
//! A fault proxy sits between the gateway and a real `redis-server`: it can lose the reply to
//! the command that carries a marker (the command ran, the gateway never hears back), drop every
//! open connection at once (what a restart looks like from the gateway), close each new
//! connection at once, or accept connections and never answer (a Redis hanging on `AUTH`).

// Test helpers outside #[test] functions may panic on setup failures: that is the failure report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[allow(dead_code)]
#[path = "gateway/common.rs"]
mod common;

use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use idempotency_testkit::fixtures::RedisServer;
use kv_rest_gateway::GatewayConfig;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use common::{Reply, TestGateway};

/// The connect timeout the tests configure (the response timeout is 5 s).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// The marker that arms a reply cut: it occurs in the keys of the command whose reply is lost.
const MARKER: &[u8] = b"cutme";

const RELAY: u8 = 0;
const CLOSE_AT_ONCE: u8 = 1;
const NEVER_ANSWER: u8 = 2;
/// Relay the first reply of each new connection (its `AUTH`), then close it.
const CLOSE_AFTER_FIRST_REPLY: u8 = 3;

/// A TCP proxy in front of Redis with switchable faults (see the module docs).
struct FaultProxy {
    port: u16,
    mode: Arc<AtomicU8>,
    /// Set: the next connection that sends a command containing [`MARKER`] loses its reply.
    armed: Arc<Mutex<bool>>,
    cuts: Arc<AtomicUsize>,
    accepted: Arc<AtomicUsize>,
    drop_all: tokio::sync::watch::Sender<u64>,
    task: tokio::task::JoinHandle<()>,
}

impl FaultProxy {
    async fn start(upstream: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let mode = Arc::new(AtomicU8::new(RELAY));
        let armed = Arc::new(Mutex::new(false));
        let cuts = Arc::new(AtomicUsize::new(0));
        let accepted = Arc::new(AtomicUsize::new(0));
        let (drop_all, generation) = tokio::sync::watch::channel(0_u64);
        let task = tokio::spawn({
            let (mode, armed, cuts, accepted) = (
                Arc::clone(&mode),
                Arc::clone(&armed),
                Arc::clone(&cuts),
                Arc::clone(&accepted),
            );
            async move {
                while let Ok((client, _)) = listener.accept().await {
                    accepted.fetch_add(1, Ordering::SeqCst);
                    match mode.load(Ordering::SeqCst) {
                        CLOSE_AT_ONCE => drop(client),
                        NEVER_ANSWER => {
                            let mut generation = generation.clone();
                            generation.borrow_and_update();
                            tokio::spawn(async move {
                                let mut client = client;
                                let mut sink = [0_u8; 1024];
                                loop {
                                    tokio::select! {
                                        read = client.read(&mut sink) => {
                                            if matches!(read, Ok(0) | Err(_)) { return; }
                                        }
                                        _ = generation.changed() => return,
                                    }
                                }
                            });
                        }
                        current => {
                            let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)).await
                            else {
                                continue;
                            };
                            tokio::spawn(Self::relay(
                                client,
                                server,
                                Arc::clone(&armed),
                                Arc::clone(&cuts),
                                generation.clone(),
                                current == CLOSE_AFTER_FIRST_REPLY,
                            ));
                        }
                    }
                }
            }
        });
        Self {
            port,
            mode,
            armed,
            cuts,
            accepted,
            drop_all,
            task,
        }
    }

    async fn relay(
        client: TcpStream,
        server: TcpStream,
        armed: Arc<Mutex<bool>>,
        cuts: Arc<AtomicUsize>,
        mut generation: tokio::sync::watch::Receiver<u64>,
        close_after_first_reply: bool,
    ) {
        // Only a drop_all after this connection was accepted ends it.
        generation.borrow_and_update();
        let (mut client_read, mut client_write) = client.into_split();
        let (mut server_read, mut server_write) = server.into_split();
        let cut_next = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let up = {
            let cut_next = Arc::clone(&cut_next);
            async move {
                let mut buffer = vec![0_u8; 64 * 1024];
                loop {
                    let read = client_read.read(&mut buffer).await?;
                    if read == 0 {
                        return Ok::<_, std::io::Error>(());
                    }
                    let chunk = &buffer[..read];
                    if chunk.windows(MARKER.len()).any(|w| w == MARKER) {
                        let mut armed = armed.lock().unwrap();
                        if *armed {
                            *armed = false;
                            cut_next.store(true, Ordering::SeqCst);
                        }
                    }
                    server_write.write_all(chunk).await?;
                }
            }
        };
        let down = async {
            let mut buffer = vec![0_u8; 64 * 1024];
            loop {
                let read = server_read.read(&mut buffer).await?;
                if read == 0 {
                    return Ok::<_, std::io::Error>(());
                }
                if cut_next.load(Ordering::SeqCst) {
                    cuts.fetch_add(1, Ordering::SeqCst);
                    return Ok(());
                }
                client_write.write_all(&buffer[..read]).await?;
                if close_after_first_reply {
                    return Ok(());
                }
            }
        };
        tokio::select! {
            _ = up => {}
            _ = down => {}
            _ = generation.changed() => {}
        }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Loses the reply to the next command containing [`MARKER`]; returns the cuts so far.
    fn arm(&self) -> usize {
        *self.armed.lock().unwrap() = true;
        self.cuts.load(Ordering::SeqCst)
    }

    fn cuts(&self) -> usize {
        self.cuts.load(Ordering::SeqCst)
    }

    fn set_mode(&self, mode: u8) {
        self.mode.store(mode, Ordering::SeqCst);
    }

    /// Closes every open connection, as a Redis restart does.
    fn drop_all(&self) {
        self.drop_all.send_modify(|generation| *generation += 1);
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
        self.drop_all();
    }
}

async fn gateway_behind_proxy(
    adjust: impl FnOnce(GatewayConfig) -> GatewayConfig,
) -> (TestGateway, FaultProxy) {
    let redis = RedisServer::start_local().unwrap();
    let proxy = FaultProxy::start(redis.port()).await;
    let url = proxy.url();
    let gw = TestGateway::start_on(redis, move |config| {
        adjust(GatewayConfig {
            redis_url: url,
            ..config
        })
        .with_timeouts(CONNECT_TIMEOUT, Duration::from_secs(5))
    })
    .await;
    (gw, proxy)
}

/// Sends `send` with the reply to its marked command lost; asserts the cut happened.
async fn with_lost_reply<F, Fut>(proxy: &FaultProxy, what: &str, send: F) -> Reply
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = Reply>,
{
    let before = proxy.arm();
    let reply = send().await;
    assert_eq!(
        proxy.cuts(),
        before + 1,
        "{what}: the reply was not cut: {reply:?}"
    );
    reply
}

#[track_caller]
fn assert_outcome_unknown(what: &str, reply: &Reply) {
    assert_eq!(reply.status, 503, "{what}: {reply:?}");
    assert!(
        reply.text.contains("outcome is unknown"),
        "{what}: {reply:?}"
    );
}

/// Writes in odd case, pipelines mixing reads and writes, `GETDEL`, `GETEX`, `SORT … STORE`,
/// scripts, `SCRIPT LOAD` and transactions: a lost reply is a 503 "outcome unknown" and the
/// write ran exactly once. Reads in odd case (`SRANDMEMBER`, `OBJECT ENCODING`) are resent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_replies_never_run_a_write_twice() {
    let (gw, proxy) = gateway_behind_proxy(|config| config).await;
    let cli = |args: &[&str]| gw.redis_cli(args).trim().to_owned();

    let reply = with_lost_reply(&proxy, "iNcR", || gw.cmd(json!(["iNcR", "cutme:a"]))).await;
    assert_outcome_unknown("iNcR", &reply);
    assert_eq!(cli(&["GET", "cutme:a"]), "1");

    for (n, batch) in [
        json!([["get", "x"], ["incr", "cutme:b0"]]),
        json!([["Incr", "cutme:b1"], ["GET", "x"]]),
        json!([
            ["exists", "x"],
            ["SRANDMEMBER", "s"],
            ["hincrby", "cutme:b2", "f", "1"]
        ]),
    ]
    .into_iter()
    .enumerate()
    {
        let what = format!("pipeline {batch}");
        let reply = with_lost_reply(&proxy, &what, || gw.post("/pipeline", &batch, &[])).await;
        assert_outcome_unknown(&what, &reply);
        let key = format!("cutme:b{n}");
        let ran = if n == 2 {
            cli(&["HGET", &key, "f"])
        } else {
            cli(&["GET", &key])
        };
        assert_eq!(ran, "1", "{what}");
    }

    cli(&["SET", "cutme:d", "v"]);
    let reply = with_lost_reply(&proxy, "GETDEL", || gw.cmd(json!(["getdel", "cutme:d"]))).await;
    assert_outcome_unknown("GETDEL", &reply);
    cli(&["SET", "cutme:e", "v"]);
    let reply = with_lost_reply(&proxy, "GETEX", || {
        gw.cmd(json!(["GetEx", "cutme:e", "EX", "100"]))
    })
    .await;
    assert_outcome_unknown("GETEX", &reply);
    cli(&["RPUSH", "cutme:l", "3", "1", "2"]);
    let reply = with_lost_reply(&proxy, "SORT STORE", || {
        gw.cmd(json!(["sort", "cutme:l", "STORE", "cutme:sorted"]))
    })
    .await;
    assert_outcome_unknown("SORT STORE", &reply);

    let reply = with_lost_reply(&proxy, "EVAL", || {
        gw.cmd(json!([
            "eval",
            "return redis.call('INCR', KEYS[1])",
            "1",
            "cutme:f"
        ]))
    })
    .await;
    assert_outcome_unknown("EVAL", &reply);
    assert_eq!(cli(&["GET", "cutme:f"]), "1");
    let reply = with_lost_reply(&proxy, "SCRIPT LOAD", || {
        gw.cmd(json!(["script", "load", "return 'cutme'"]))
    })
    .await;
    assert_outcome_unknown("SCRIPT LOAD", &reply);

    let transaction = json!([["incr", "cutme:g"], ["get", "cutme:g"]]);
    let reply = with_lost_reply(&proxy, "MULTI/EXEC", || {
        gw.post("/multi-exec", &transaction, &[])
    })
    .await;
    assert_outcome_unknown("MULTI/EXEC", &reply);
    assert_eq!(cli(&["GET", "cutme:g"]), "1");

    // Reads, in odd case, are resent and answer.
    cli(&["SADD", "cutme:s", "m"]);
    for read in [
        json!(["srandmember", "cutme:s"]),
        json!(["Object", "encoding", "cutme:s"]),
        json!(["sCaRd", "cutme:s"]),
    ] {
        let what = read.to_string();
        let reply = with_lost_reply(&proxy, &what, || gw.cmd(read.clone())).await;
        assert_eq!(reply.status, 200, "{what}: {reply:?}");
    }
    gw.shutdown().await;
}

/// A script that wrote and then answered an error whose text starts with `BUSY` is sent again
/// and again (every 20 ms, for the script time limit plus 1 s): `Backend::command` retries any
/// error reply starting with "BUSY", not only Redis's own "BUSY Redis is busy running a script".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_script_error_starting_with_busy_is_not_sent_again() {
    let gw =
        TestGateway::start_with(|config| config.with_script_time_limit(Duration::from_secs(1)))
            .await;
    let reply = gw
        .cmd(json!([
            "EVAL",
            "redis.call('INCR', KEYS[1]); return redis.error_reply('BUSY not the server, the app')",
            "1",
            "n"
        ]))
        .await;
    assert_eq!(reply.status, 400, "{reply:?}");
    assert_eq!(
        gw.redis_cli(&["GET", "n"]).trim(),
        "1",
        "the script ran more than once"
    );
    gw.shutdown().await;
}

/// `XGROUP CREATE` of a group that exists answers `BUSYGROUP`: nothing to wait for, but the
/// gateway takes it for Redis's `BUSY` and retries it for the script time limit plus 1 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busygroup_answers_at_once() {
    let gw =
        TestGateway::start_with(|config| config.with_script_time_limit(Duration::from_secs(2)))
            .await;
    let create = json!(["XGROUP", "CREATE", "s", "g", "$", "MKSTREAM"]);
    assert_eq!(gw.cmd(create.clone()).await.result(), "OK");
    let started = Instant::now();
    let again = gw.cmd(create).await;
    let took = started.elapsed();
    assert!(again.error(400).starts_with("BUSYGROUP"), "{again:?}");
    assert!(took < Duration::from_millis(500), "BUSYGROUP took {took:?}");
    gw.shutdown().await;
}

/// A script that wrote and then failed with a message mentioning authentication (an app's own
/// "authentication" wording, or `NOAUTH`/`WRONGPASS` in an error reply) makes the gateway
/// re-create its ACL users and send the script a second time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_script_error_mentioning_authentication_is_not_sent_again() {
    let gw = TestGateway::start().await;
    for (n, script) in [
        "redis.call('INCR', KEYS[1]); error('authentication of the customer failed')",
        "redis.call('INCR', KEYS[1]); return redis.error_reply('NOAUTH customer not logged in')",
        "redis.call('INCR', KEYS[1]); return redis.error_reply('WRONGPASS customer pin')",
    ]
    .into_iter()
    .enumerate()
    {
        let key = format!("n{n}");
        let reply = gw.cmd(json!(["EVAL", script, "1", key])).await;
        assert_eq!(reply.status, 400, "{script}: {reply:?}");
        assert_eq!(
            gw.redis_cli(&["GET", &key]).trim(),
            "1",
            "{script}: the script ran more than once"
        );
    }
    gw.shutdown().await;
}

/// 64 concurrent writes (distinct keys) while every Redis connection is dropped at once: each
/// answers 200 (it ran once) or 503 "outcome unknown" (it ran at most once), none runs twice,
/// and all answer within the connect + response timeouts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_across_dropped_connections_run_at_most_once() {
    let (gw, proxy) = gateway_behind_proxy(|config| config).await;
    let gw = Arc::new(gw);
    for round in 0..3 {
        let mut tasks = Vec::new();
        for i in 0..64 {
            let gw = Arc::clone(&gw);
            tasks.push(tokio::spawn(async move {
                let started = Instant::now();
                let reply = if i % 2 == 0 {
                    gw.cmd(json!(["INCR", format!("r{round}:k{i}")])).await
                } else {
                    gw.post(
                        "/pipeline",
                        &json!([["GET", "x"], ["INCR", format!("r{round}:k{i}")]]),
                        &[],
                    )
                    .await
                };
                (i, reply, started.elapsed())
            }));
            if i == 20 {
                proxy.drop_all();
            }
        }
        for task in tasks {
            let (i, reply, took) = task.await.unwrap();
            assert!(
                took < CONNECT_TIMEOUT + Duration::from_secs(5) + Duration::from_secs(2),
                "request {i} took {took:?}"
            );
            let value = gw.redis_cli(&["GET", &format!("r{round}:k{i}")]);
            match reply.status {
                200 => assert_eq!(value.trim(), "1", "request {i}: {reply:?}"),
                503 => assert!(
                    reply.text.contains("outcome is unknown") && value.trim() != "2",
                    "request {i}: {reply:?}, value {value:?}"
                ),
                _ => panic!("request {i}: {reply:?}"),
            }
        }
    }
    Arc::into_inner(gw).unwrap().shutdown().await;
}

/// 64 concurrent requests across a real restart (SIGKILL, same port): every request answers
/// within the timeouts, and the gateway serves again afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_across_a_restart_end_within_the_timeouts() {
    let mut gw = TestGateway::start_with(|config| {
        config.with_timeouts(CONNECT_TIMEOUT, Duration::from_secs(5))
    })
    .await;
    let mut tasks = Vec::new();
    for i in 0..64 {
        let request = gw_request(&gw, i);
        tasks.push(tokio::spawn(async move {
            let started = Instant::now();
            let reply = request.await;
            (i, reply, started.elapsed())
        }));
    }
    gw.redis.restart().unwrap();
    for task in tasks {
        let (i, status, took) = task.await.unwrap();
        assert!(
            took < CONNECT_TIMEOUT + Duration::from_secs(5) + Duration::from_secs(3),
            "request {i} took {took:?}"
        );
        assert!(matches!(status, 200 | 503), "request {i}: {status}");
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let reply = gw.cmd(json!(["SET", "after", "1"])).await;
        if reply.status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "not serving again: {reply:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    gw.shutdown().await;
}

/// One request of the restart test: its status only (the gateway is not moved into the task).
fn gw_request(gw: &TestGateway, i: usize) -> impl std::future::Future<Output = u16> + use<> {
    let url = format!("{}/", gw.base);
    async move {
        let body = if i.is_multiple_of(3) {
            json!(["GET", format!("k{i}")])
        } else {
            json!(["INCR", format!("k{i}")])
        };
        reqwest::Client::new()
            .post(url)
            .bearer_auth(common::TOKEN)
            .header("content-type", "application/json")
            .body(serde_json::to_vec(&body).unwrap())
            .timeout(Duration::from_secs(30))
            .send()
            .await
            .map(|response| response.status().as_u16())
            .unwrap_or(0)
    }
}

/// A Redis that accepts each new connection and closes it at once: one request opens a
/// bounded number of connections (`MAX_OPENS` = 3) and answers 503 quickly; 64 concurrent
/// requests do not open hundreds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_closing_every_new_connection_costs_few_opens() {
    let (gw, proxy) = gateway_behind_proxy(|config| config).await;
    proxy.set_mode(CLOSE_AT_ONCE);
    proxy.drop_all();
    tokio::time::sleep(Duration::from_millis(100)).await;

    let before = proxy.accepted();
    let started = Instant::now();
    let reply = gw.cmd(json!(["SET", "k", "v"])).await;
    let took = started.elapsed();
    let opened = proxy.accepted() - before;
    assert_eq!(reply.status, 503, "{reply:?}");
    assert!(opened <= 3, "one request opened {opened} connections");
    assert!(took < Duration::from_secs(2), "took {took:?}");

    let gw = Arc::new(gw);
    let before = proxy.accepted();
    let tasks: Vec<_> = (0..64)
        .map(|i| {
            let gw = Arc::clone(&gw);
            tokio::spawn(async move { gw.cmd(json!(["GET", format!("k{i}")])).await.status })
        })
        .collect();
    for task in tasks {
        assert_eq!(task.await.unwrap(), 503);
    }
    let opened = proxy.accepted() - before;
    eprintln!("64 concurrent requests opened {opened} connections");
    assert!(opened <= 64 * 3, "64 requests opened {opened} connections");

    // Redis back: the next request is served.
    proxy.set_mode(RELAY);
    let reply = gw.cmd(json!(["SET", "k", "v"])).await;
    assert_eq!(reply.result(), "OK");
    Arc::into_inner(gw).unwrap().shutdown().await;
}

/// A Redis that accepts connections and never answers (hangs on `AUTH`): 64 concurrent
/// requests each answer 503 within the connect timeout plus a margin, and share attempts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_hanging_on_auth_answers_within_the_connect_timeout() {
    let (gw, proxy) = gateway_behind_proxy(|config| config).await;
    proxy.set_mode(NEVER_ANSWER);
    proxy.drop_all();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let gw = Arc::new(gw);
    let before = proxy.accepted();
    let tasks: Vec<_> = (0..64)
        .map(|i| {
            let gw = Arc::clone(&gw);
            tokio::spawn(async move {
                let started = Instant::now();
                let reply = if i % 2 == 0 {
                    gw.cmd(json!(["INCR", format!("k{i}")])).await
                } else {
                    gw.post("/multi-exec", &json!([["INCR", format!("k{i}")]]), &[])
                        .await
                };
                (i, reply, started.elapsed())
            })
        })
        .collect();
    for task in tasks {
        let (i, reply, took) = task.await.unwrap();
        assert_eq!(reply.status, 503, "request {i}: {reply:?}");
        assert!(
            took < CONNECT_TIMEOUT * 2 + Duration::from_secs(1),
            "request {i} took {took:?}: {reply:?}"
        );
    }
    let opened = proxy.accepted() - before;
    eprintln!("64 concurrent requests against a hanging Redis opened {opened} connections");
    proxy.set_mode(RELAY);
    proxy.drop_all();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let reply = gw.cmd(json!(["SET", "after", "1"])).await;
        if reply.status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "not serving again: {reply:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Arc::into_inner(gw).unwrap().shutdown().await;
}

/// The gateway's ACL users deleted while it runs (Redis closes their connections): the next
/// write is served after re-provisioning, and runs once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleted_acl_users_are_recreated_and_the_write_runs_once() {
    let gw = TestGateway::start().await;
    assert_eq!(gw.cmd(json!(["INCR", "n"])).await.result(), 1);
    for round in 2..=4 {
        let deleted = gw.redis_cli(&[
            "ACL",
            "DELUSER",
            kv_rest_gateway::DEFAULT_ACL_USER,
            kv_rest_gateway::DEFAULT_READ_ONLY_ACL_USER,
        ]);
        assert_eq!(deleted.trim(), "2", "{deleted}");
        tokio::time::sleep(Duration::from_millis(100)).await;
        let reply = gw.cmd(json!(["INCR", "n"])).await;
        assert_eq!(reply.result(), round, "round {round}: {reply:?}");
        assert_eq!(gw.redis_cli(&["GET", "n"]).trim(), round.to_string());
        let read = gw
            .request(
                reqwest::Method::GET,
                "/get/n",
                Some(common::RO_TOKEN),
                &[],
                None,
            )
            .await;
        assert_eq!(read.result(), round.to_string().as_str(), "{read:?}");
    }
    gw.shutdown().await;
}

/// Any error reply mentioning authentication makes the gateway re-create its ACL users over a
/// new admin connection and renew every user's connection: even the read-only token, with a
/// read-only script (or a `NOGROUP` error echoing a key name), can make it do so per request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_texts_cannot_force_reprovisioning() {
    let gw = TestGateway::start().await;
    // A stream without the group: NOGROUP's text echoes the key name.
    gw.redis_cli(&["XADD", "authentication", "*", "f", "v"]);
    // Warm up: every connection the gateway keeps is open.
    assert_eq!(gw.cmd(json!(["PING"])).await.result(), "PONG");
    let before = gw.connections_received();
    for _ in 0..10 {
        let reply = gw
            .request(
                reqwest::Method::POST,
                "/",
                Some(common::RO_TOKEN),
                &[("content-type", "application/json")],
                Some(
                    serde_json::to_vec(&json!([
                        "EVAL_RO",
                        "return redis.error_reply('NOAUTH not really')",
                        "0"
                    ]))
                    .unwrap(),
                ),
            )
            .await;
        assert_eq!(reply.status, 400, "{reply:?}");
        let reply = gw
            .cmd(json!([
                "XGROUP",
                "CREATECONSUMER",
                "authentication",
                "g",
                "c"
            ]))
            .await;
        assert!(reply.error(400).starts_with("NOGROUP"), "{reply:?}");
    }
    let opened = gw.connections_received() - before;
    assert!(
        opened <= 2,
        "20 refused requests made the gateway open {opened} Redis connections"
    );
    gw.shutdown().await;
}

/// A Redis that answers `AUTH` on each new connection and then closes it: a request opens a
/// bounded number of connections (`MAX_OPENS` per attempt, one resend for a read), answers 503
/// within a second, and a write is never reported as done.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_closing_each_connection_after_auth_costs_few_opens() {
    let (gw, proxy) = gateway_behind_proxy(|config| config).await;
    proxy.set_mode(CLOSE_AFTER_FIRST_REPLY);
    proxy.drop_all();
    tokio::time::sleep(Duration::from_millis(100)).await;
    for (what, command, most) in [
        ("write", json!(["INCR", "n"]), 3),
        ("read", json!(["GET", "n"]), 6),
    ] {
        let before = proxy.accepted();
        let started = Instant::now();
        let reply = gw.cmd(command).await;
        let took = started.elapsed();
        let opened = proxy.accepted() - before;
        assert_eq!(reply.status, 503, "{what}: {reply:?}");
        assert!(opened <= most, "{what}: opened {opened} connections");
        assert!(took < Duration::from_secs(1), "{what}: took {took:?}");
    }
    assert_eq!(gw.redis_cli(&["GET", "n"]).trim(), "", "nothing ran");
    proxy.set_mode(RELAY);
    assert_eq!(gw.cmd(json!(["INCR", "n"])).await.result(), 1);
    gw.shutdown().await;
}
