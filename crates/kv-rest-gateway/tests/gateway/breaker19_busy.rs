//! breaker19: the gateway meeting a Redis that is busy with another client's script — at its
//! start (the ACL set-up, the killer's `SCRIPT KILL` / `FUNCTION KILL` check) and in
//! `/multi-exec` retries that keep their connection (49278f8).

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use idempotency_testkit::fixtures::RedisServer;
use serde_json::json;

use crate::common::{RO_TOKEN, TestGateway, redis_cli};

/// An endless Lua loop: it never writes, so `SCRIPT KILL` can stop it.
const ENDLESS: &str = "while true do end";

/// A Redis that answers `BUSY` after 100 ms of a script.
fn busy_redis() -> RedisServer {
    RedisServer::start_local_with(&["--busy-reply-threshold", "100"]).unwrap()
}

/// Async `redis-cli` as the administrator.
async fn cli(port: u16, args: &[&str]) -> String {
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        redis_cli(port, &args)
    })
    .await
    .unwrap()
}

/// Waits until Redis answers `BUSY` to a new connection.
async fn until_busy(port: u16) {
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

/// Another client's endless script, stopped by [`OtherScript::kill`] or when dropped (a
/// failed test must not leave Redis busy and its shutdown hanging).
struct OtherScript {
    port: u16,
    child: Option<Child>,
}

impl OtherScript {
    /// `redis-cli EVAL "while true do end" 0`, running once Redis answers `BUSY`.
    async fn start(port: u16) -> Self {
        let child = Command::new("redis-cli")
            .args(["-p", &port.to_string(), "EVAL", ENDLESS, "0"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("redis-cli");
        let script = Self {
            port,
            child: Some(child),
        };
        until_busy(port).await;
        script
    }

    /// Ends the script with `SCRIPT KILL` (as the administrator) and asserts that it was still
    /// running until then (nobody else killed it).
    async fn kill(mut self) {
        let port = self.port;
        let child = self.child.take().expect("a script");
        let (kill, output) = tokio::task::spawn_blocking(move || {
            let kill = redis_cli(port, &["SCRIPT", "KILL"]);
            (kill, child.wait_with_output().unwrap())
        })
        .await
        .unwrap();
        assert_eq!(
            kill.trim(),
            "OK",
            "the other client's script was still running"
        );
        let text = String::from_utf8_lossy(&output.stdout).into_owned()
            + &String::from_utf8_lossy(&output.stderr);
        assert!(text.contains("killed"), "the script's reply: {text}");
    }
}

impl Drop for OtherScript {
    fn drop(&mut self) {
        for _ in 0..50 {
            if !redis_cli(self.port, &["PING"]).starts_with("BUSY") {
                break;
            }
            let _ = redis_cli(self.port, &["SCRIPT", "KILL"]);
            std::thread::sleep(Duration::from_millis(20));
        }
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Whether both tokens are served within 10 s; `Err` with the gateway's error when it stopped.
async fn served_within_10s(gw: &TestGateway) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if gw.stopped() {
            return Err("the gateway stopped".into());
        }
        let read = gw
            .request(
                reqwest::Method::GET,
                "/get/nothing",
                Some(RO_TOKEN),
                &[],
                None,
            )
            .await;
        let ping = gw.cmd(json!(["PING"])).await;
        if read.status == 200 && ping.status == 200 {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("not serving after 10 s: {read:?} {ping:?}"));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A gateway on database `db` starts while another client's script keeps Redis busy (a
/// restart or a new instance during a long script: a rolling deploy). Its first set-up attempt
/// (before it accepts) sends `ACL SETUSER`, which Redis refuses with `BUSY`; the set-up reads
/// that refusal as `AclError::NoAcl` ("Redis 6 or newer is required"), a configuration error,
/// so the gateway refuses to serve and stops (the process exits; under an orchestrator it
/// crash-loops until the script ends). On database 1 the first refusal is earlier: the
/// configured connection's `SELECT` (`TooRestricted`, "cannot run AUTH"). 49278f8 made the
/// same refusal wait in the re-provisioning path, not at the start. The start should treat
/// `BUSY` as transient (retry in the background), then serve once the script has ended.
///
/// Found by breaker19: the gateway stops on 49278f8 (both databases). Fixed: busy refusals during set-up are retried (`AclError::Busy`).
async fn starts_while_another_clients_script_runs(db: u8) {
    let redis = busy_redis();
    let port = redis.port();
    let script = OtherScript::start(port).await;
    let gw = TestGateway::start_on_unready(redis, move |mut config| {
        config.redis_url = format!("{}/{db}", config.redis_url);
        config.with_script_time_limit(Duration::from_secs(30))
    })
    .await;
    // The gateway accepts only after its first set-up attempt: a health request is answered
    // (or refused) once that attempt is over.
    let health = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
        .get(format!("{}/~health", gw.base))
        .send()
        .await
        .map(|response| response.status());
    script.kill().await;
    match served_within_10s(&gw).await {
        Ok(()) => gw.shutdown().await,
        Err(why) => {
            let error = if gw.stopped() {
                gw.stopped_error().await.to_string()
            } else {
                String::new()
            };
            panic!(
                "database {db}: a gateway started during another client's script must serve \
                 once it ended: {why}: {error} (health during the script: {health:?})"
            );
        }
    }
}

/// See [`starts_while_another_clients_script_runs`]. Found by breaker19; fixed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_started_during_another_clients_script_serves_after_it_on_database_0() {
    starts_while_another_clients_script_runs(0).await;
}

/// See [`starts_while_another_clients_script_runs`]. Found by breaker19; fixed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_started_during_another_clients_script_serves_after_it_on_database_1() {
    starts_while_another_clients_script_runs(1).await;
}

/// `/multi-exec` on database 1 while another client's script keeps Redis busy: Redis serves
/// `MULTI`, refuses the queued commands with `BUSY` and answers `EXEC` with `EXECABORT`, so the
/// connection is outside MULTI and kept for the next attempt (49278f8). Whenever the script
/// ends, the transaction runs exactly once, on database 1 (the kept connection is still on the
/// gateway's database), and nothing lands on database 0. Pins behaviour.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_transaction_on_database_1_reuses_its_connection_and_runs_once_there() {
    let redis = busy_redis();
    let gw = TestGateway::start_on_unready(redis, |mut config| {
        config.redis_url = format!("{}/1", config.redis_url);
        config.with_script_time_limit(Duration::from_secs(5))
    })
    .await;
    served_within_10s(&gw).await.unwrap();
    let port = gw.redis.port();
    let script = OtherScript::start(port).await;
    let body = json!([["SET", "b19:k", "v"], ["INCR", "b19:n"], ["GET", "b19:k"]]);
    let transaction = gw.post("/multi-exec", &body, &[]);
    let mut transaction = Box::pin(transaction);
    // Whether the transaction is refused once or many times before the kill does not change
    // what is asserted; it must not be answered while the script runs.
    tokio::select! {
        reply = &mut transaction => panic!("answered while Redis was busy: {reply:?}"),
        () = tokio::time::sleep(Duration::from_millis(500)) => {}
    }
    script.kill().await;
    let reply = transaction.await;
    assert_eq!(
        reply.json,
        json!([{"result": "OK"}, {"result": 1}, {"result": "v"}]),
        "{reply:?}"
    );
    assert_eq!(cli(port, &["-n", "1", "GET", "b19:n"]).await.trim(), "1");
    assert_eq!(cli(port, &["-n", "0", "EXISTS", "b19:k"]).await.trim(), "0");
    assert_eq!(cli(port, &["-n", "0", "EXISTS", "b19:n"]).await.trim(), "0");
    let again = gw.post("/multi-exec", &body, &[]).await;
    assert_eq!(
        again.json,
        json!([{"result": "OK"}, {"result": 2}, {"result": "v"}]),
        "{again:?}"
    );
    gw.shutdown().await;
}

/// `INFO stats` field `total_connections_received` (answered only when no script runs).
async fn connections_received(port: u16) -> u64 {
    cli(port, &["INFO", "stats"])
        .await
        .lines()
        .find_map(|line| line.strip_prefix("total_connections_received:"))
        .and_then(|n| n.trim().parse().ok())
        .expect("total_connections_received")
}

/// How many requests wait on one busy script at once.
const WAITING: usize = 20;

/// A Redis restart (the gateway's ACL users are gone) and then another client's script: every
/// waiting request's attempt is refused (`WRONGPASS`), and re-creating the users is refused as
/// busy — which 49278f8 turned into a busy wait. Each retry of each request opens Redis
/// connections again (the user's connection, which fails to authenticate, and a fresh admin
/// connection for `ACL SETUSER` under the re-provisioning lock), every 20–100 ms: the storm of
/// connection set-ups breaker17 removed from `/multi-exec`, back on every command after a
/// restart. 20 requests waiting 1 s should not need more than a few connections each, and
/// each must write exactly once after the script. Fixed: a recent busy refusal of the
/// re-creation answers waiting requests without connecting (523–889 connections, now ~70).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_waiting_after_a_restart_do_not_connect_on_every_retry() {
    let mut gw = TestGateway::start_on_unready(busy_redis(), |config| {
        config.with_script_time_limit(Duration::from_secs(5))
    })
    .await;
    served_within_10s(&gw).await.unwrap();
    gw.redis.restart().unwrap();
    let port = gw.redis.port();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cli(port, &["PING"]).await.contains("PONG") {
        assert!(Instant::now() < deadline, "redis-server did not come back");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let before = connections_received(port).await;
    let script = OtherScript::start(port).await;
    let requests: Vec<_> = (0..WAITING)
        .map(|i| gw.cmd(json!(["INCR", format!("b19:after-restart:{i}")])))
        .collect();
    let mut requests = Box::pin(futures_join_all(requests));
    tokio::select! {
        replies = &mut requests => panic!("answered while Redis was busy: {replies:?}"),
        () = tokio::time::sleep(Duration::from_secs(1)) => {}
    }
    script.kill().await;
    for reply in requests.await {
        assert_eq!(reply.status, 200, "{reply:?}");
        assert_eq!(reply.result(), &json!(1), "{reply:?}");
    }
    let opened = connections_received(port).await - before;
    // Generous: the test's own connections (a few dozen at most) and 10 per request.
    let bound = 50 + 10 * WAITING as u64;
    assert!(
        opened <= bound,
        "{opened} connections opened while {WAITING} requests waited 1 s after a restart \
         (bound {bound})"
    );
    gw.shutdown().await;
}

/// Runs `futures` concurrently and returns their outputs in order.
async fn futures_join_all<F: std::future::Future>(futures: Vec<F>) -> Vec<F::Output> {
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

/// The bytes of `EXEC` as a client sends it.
const EXEC: &[u8] = b"*1\r\n$4\r\nEXEC\r\n";

/// The bytes of `SCRIPT KILL` as a client sends it.
const SCRIPT_KILL: &[u8] = b"*2\r\n$6\r\nSCRIPT\r\n$4\r\nKILL\r\n";

/// A TCP proxy in front of Redis that, once armed, holds back the first `pattern` sent to
/// Redis until released: the rest of a chunk that ends with it goes on at once (with
/// [`EXEC`], Redis then sees the queued commands and `EXEC` in two reads, as it does for a
/// transaction whose last argument is large: Redis reads a bulk argument of 32 KiB or more
/// exactly up to its end), a chunk that holds it elsewhere is held whole.
struct HoldingProxy {
    port: u16,
    state: std::sync::Arc<(std::sync::Mutex<Hold>, std::sync::Condvar)>,
}

#[derive(Default, PartialEq)]
enum Hold {
    #[default]
    Off,
    Armed,
    Holding,
    Released,
}

impl HoldingProxy {
    fn start(redis_port: u16, pattern: &'static [u8]) -> Self {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let state =
            std::sync::Arc::new((std::sync::Mutex::new(Hold::Off), std::sync::Condvar::new()));
        let shared = state.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(mut client) = client else { return };
                let Ok(mut server) = std::net::TcpStream::connect(("127.0.0.1", redis_port)) else {
                    return;
                };
                let (mut client_r, mut server_r) =
                    (client.try_clone().unwrap(), server.try_clone().unwrap());
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut server_r, &mut client);
                });
                let state = shared.clone();
                std::thread::spawn(move || {
                    let mut buffer = vec![0u8; 1 << 16];
                    loop {
                        let n = match client_r.read(&mut buffer) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => n,
                        };
                        let chunk = &buffer[..n];
                        let (lock, changed) = &*state;
                        let mut hold = lock.lock().unwrap();
                        let held = *hold == Hold::Armed
                            && chunk.windows(pattern.len()).any(|w| w == pattern);
                        if held {
                            let split = if chunk.ends_with(pattern) {
                                n - pattern.len()
                            } else {
                                0
                            };
                            let (head, exec) = chunk.split_at(split);
                            if server.write_all(head).is_err() {
                                return;
                            }
                            *hold = Hold::Holding;
                            changed.notify_all();
                            while *hold == Hold::Holding {
                                hold = changed.wait(hold).unwrap();
                            }
                            drop(hold);
                            if server.write_all(exec).is_err() {
                                return;
                            }
                        } else {
                            drop(hold);
                            if server.write_all(chunk).is_err() {
                                return;
                            }
                        }
                    }
                });
            }
        });
        Self { port, state }
    }

    fn set(&self, to: Hold) {
        let (lock, changed) = &*self.state;
        *lock.lock().unwrap() = to;
        changed.notify_all();
    }

    /// Waits (at most 10 s) until the pattern is held back.
    async fn until_holding(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if *self.state.0.lock().unwrap() == Hold::Holding {
                return;
            }
            assert!(Instant::now() < deadline, "nothing held back");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// A transaction whose `EXEC` reaches Redis in a read of its own (its last argument is large:
/// Redis reads a bulk argument of 32 KiB or more exactly up to its end; here a proxy holds
/// `EXEC` back) meets another client's script that starts between the queued commands and
/// `EXEC`. Redis 7 answers `EXEC` with `EXECABORT Transaction discarded because of: BUSY …`
/// and discards the transaction: nothing ran, only because Redis was busy. The gateway does
/// not recognise that reply as a busy refusal (`transaction_refused_as_busy` looks for `BUSY`
/// at the start of `EXEC`'s reply or among the queued replies, which are all `QUEUED`), so it
/// answers 400 "EXECABORT … BUSY" — a permanent-looking refusal of a valid transaction —
/// instead of waiting the script out as for every other busy refusal. (The comment of
/// `left_outside_multi` also says that an `EXEC` refused as busy leaves the connection inside
/// MULTI; Redis 7.0 discards the transaction.) Straight against Redis 7.0.15, a transaction
/// with a 256 KiB last argument racing a 60 ms script got this reply 17 times in 60.
///
/// Found by breaker19: 400 on 49278f8. Fixed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_whose_exec_meets_a_new_script_waits_instead_of_400() {
    let redis = busy_redis();
    let redis_port = redis.port();
    let proxy = HoldingProxy::start(redis_port, EXEC);
    let proxy_port = proxy.port;
    let gw = TestGateway::start_on_unready(redis, move |mut config| {
        config.redis_url = format!("redis://127.0.0.1:{proxy_port}");
        config.with_script_time_limit(Duration::from_secs(5))
    })
    .await;
    served_within_10s(&gw).await.unwrap();
    proxy.set(Hold::Armed);
    let body = json!([["INCR", "b19:held-n"], ["SET", "b19:held", "v"]]);
    let transaction = gw.post("/multi-exec", &body, &[]);
    let mut transaction = Box::pin(transaction);
    tokio::select! {
        reply = &mut transaction => panic!("answered before EXEC was sent: {reply:?}"),
        () = proxy.until_holding() => {}
    }
    let script = OtherScript::start(redis_port).await;
    proxy.set(Hold::Released);
    // The EXEC reaches Redis during the script; whatever the gateway does, it must not answer
    // before the script ends.
    let early = tokio::select! {
        reply = &mut transaction => Some(reply),
        () = tokio::time::sleep(Duration::from_millis(500)) => None,
    };
    script.kill().await;
    let reply = match early {
        Some(reply) => reply,
        None => (&mut transaction).await,
    };
    drop(transaction);
    assert_eq!(
        (reply.status, &reply.json),
        (200, &json!([{"result": 1}, {"result": "OK"}])),
        "a transaction refused only because Redis was busy must wait, not be refused: {reply:?}"
    );
    assert_eq!(cli(redis_port, &["GET", "b19:held-n"]).await.trim(), "1");
    proxy.set(Hold::Off);
    gw.shutdown().await;
}

/// A finite script of another client, `millis` long by Redis's clock, that never writes (so
/// `SCRIPT KILL` can stop it): `redis-cli EVAL`, running once Redis answers `BUSY`.
async fn other_clients_finite_script(port: u16, millis: u64) -> Child {
    let script = format!(
        "local t = redis.call('TIME') while true do local n = redis.call('TIME') \
         if (n[1] - t[1]) * 1000000 + (n[2] - t[2]) >= {} then break end end return 'done'",
        millis * 1000
    );
    let child = Command::new("redis-cli")
        .args(["-p", &port.to_string(), "EVAL", &script, "0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("redis-cli");
    until_busy(port).await;
    child
}

/// The killer check at the start (49278f8) sends `SCRIPT KILL` and `FUNCTION KILL` to learn
/// whether the main user may: with no script running Redis answers `NOTBUSY`. But when another
/// client's script runs at that moment (past Redis's `busy-reply-threshold`, the only time
/// Redis serves the kill), the probe kills it — a script the gateway's own policy allows (here
/// a 1.5 s read-only script under a 30 s `script_time_limit`; in a rolling deploy, a long
/// script a client runs through another gateway instance). The check should not run a kill
/// (`ACL DRYRUN`, say). A proxy holds the probe back until the other client's script runs, so
/// the moment is exact here; in production it is any script that starts during a gateway's
/// set-up, after its ACL commands.
///
/// Found by breaker19: the other client's script is killed on 49278f8. Fixed: the check queues the kills in MULTI and discards them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_start_up_kill_check_does_not_kill_another_clients_script() {
    let redis = busy_redis();
    let redis_port = redis.port();
    let _cleanup = OtherScript {
        port: redis_port,
        child: None,
    };
    let proxy = HoldingProxy::start(redis_port, SCRIPT_KILL);
    proxy.set(Hold::Armed);
    let proxy_port = proxy.port;
    let gw = TestGateway::start_on_unready(redis, move |mut config| {
        config.redis_url = format!("redis://127.0.0.1:{proxy_port}");
        config.with_script_time_limit(Duration::from_secs(30))
    })
    .await;
    proxy.until_holding().await;
    let script = other_clients_finite_script(redis_port, 1500).await;
    proxy.set(Hold::Released);
    let output = tokio::task::spawn_blocking(move || script.wait_with_output().unwrap())
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    served_within_10s(&gw).await.unwrap();
    assert_eq!(
        text.trim(),
        "done",
        "another client's 1.5 s script, allowed by the 30 s limit, was stopped by the \
         gateway's start-up check"
    );
    proxy.set(Hold::Off);
    gw.shutdown().await;
}
