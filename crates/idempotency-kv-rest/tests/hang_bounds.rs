//! Every KV REST primitive answers within its `operation_timeout` through the engine, which
//! arms no timer of its own for a store that announces that bound (`operation_bound`), however
//! the server hangs: no answer, headers then a stalled body, a body dribbled (sized or
//! chunked), every connection cut, `NOSCRIPT` then a stalled `EVAL`, "lease lost" then a
//! stalled `GET`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use idempotency_core::{Begin, Fingerprint, Idempotency, IdempotencyKey, Scope, StoredOutcome};
use idempotency_kv_rest::{KvRestConfig, KvRestStore};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;

#[derive(Clone, Copy, Debug)]
enum Act {
    Silent,
    HeadersThenStall,
    DribbleContentLength,
    DribbleChunked,
    CutConnection,
    NoScriptLateThenDribble,
    LeaseLostLateThenDribble,
}

/// Request 1 (the claim) is answered `{"result":null}` when `claim_ok`; later requests meet `act`.
async fn server(act: Act, claim_ok: bool) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let n = Arc::new(AtomicUsize::new(0));
    tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            let n = Arc::clone(&n);
            tokio::spawn(async move {
                while common::raw::read_request(&mut socket).await {
                    let i = n.fetch_add(1, Ordering::SeqCst);
                    let ok = |body: &str| {
                        format!(
                            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                            body.len()
                        )
                    };
                    if i == 0 && claim_ok {
                        socket
                            .write_all(ok(r#"{"result":null}"#).as_bytes())
                            .await
                            .unwrap();
                        continue;
                    }
                    let first_later = i == usize::from(claim_ok);
                    match act {
                        Act::Silent => tokio::time::sleep(Duration::from_secs(60)).await,
                        Act::HeadersThenStall => {
                            let _ = socket
                                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n{\"res")
                                .await;
                            tokio::time::sleep(Duration::from_secs(60)).await;
                        }
                        Act::DribbleContentLength => dribble(&mut socket, false).await,
                        Act::DribbleChunked => dribble(&mut socket, true).await,
                        Act::CutConnection => {
                            return; // drop: cut before any reply (resendable)
                        }
                        Act::NoScriptLateThenDribble | Act::LeaseLostLateThenDribble
                            if first_later =>
                        {
                            tokio::time::sleep(Duration::from_millis(700)).await;
                            let reply = match act {
                                Act::NoScriptLateThenDribble => {
                                    let b = r#"{"error":"NOSCRIPT No matching script."}"#;
                                    format!(
                                        "HTTP/1.1 400 X\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{b}",
                                        b.len()
                                    )
                                }
                                _ => ok(r#"{"result":0}"#),
                            };
                            socket.write_all(reply.as_bytes()).await.unwrap();
                            continue;
                        }
                        _ => dribble(&mut socket, false).await,
                    }
                    return;
                }
            });
        }
    });
    url
}

async fn dribble(socket: &mut tokio::net::TcpStream, chunked: bool) {
    let head: &[u8] = if chunked {
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
    } else {
        b"HTTP/1.1 200 OK\r\ncontent-length: 5000\r\n\r\n"
    };
    if socket.write_all(head).await.is_err() {
        return;
    }
    for _ in 0..60 {
        let piece: &[u8] = if chunked { b"1\r\n \r\n" } else { b" " };
        if socket.write_all(piece).await.is_err() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn engine(url: &str, op: Duration, engine_timeout: Duration) -> Idempotency<KvRestStore> {
    let config = KvRestConfig::new(url, "a-token-of-at-least-32-characters-long")
        .unwrap()
        .operation_timeout(op);
    Idempotency::builder(KvRestStore::new(config).unwrap())
        .store_timeout(engine_timeout)
        .completion_retry(Duration::ZERO)
        .ignore_env()
        .build()
        .unwrap()
}

/// One case: the claim (`complete == false`) or the completion meets the fault `act`; how
/// long that call took, and a line for the log.
async fn case(
    act: Act,
    complete: bool,
    op: Duration,
    engine_timeout: Duration,
) -> (Duration, String) {
    let url = server(act, complete).await;
    let e = engine(&url, op, engine_timeout);
    let key = IdempotencyKey::new("k").unwrap();
    if !complete {
        let t = Instant::now();
        let r = e.begin(&Scope::global(), &key, Fingerprint::of(b"x")).await;
        let took = t.elapsed();
        return (
            took,
            format!(
                "engine {engine_timeout:?} {act:?} begin: {took:?} ok={}",
                r.is_ok()
            ),
        );
    }
    let guard = match e.begin(&Scope::global(), &key, Fingerprint::of(b"x")).await {
        Ok(Begin::Run(g)) => g,
        other => panic!("claim: {:?}", other.is_ok()),
    };
    let t = Instant::now();
    let r = guard
        .complete(StoredOutcome::new(b"a".to_vec(), None))
        .await;
    let took = t.elapsed();
    (
        took,
        format!("engine {engine_timeout:?} {act:?} complete: {took:?} {r:?}"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_hang_is_cut_at_the_operation_timeout() {
    let op = Duration::from_secs(1);
    let mut cases = Vec::new();
    for engine_timeout in [Duration::from_secs(1), Duration::from_secs(5)] {
        for act in [
            Act::Silent,
            Act::HeadersThenStall,
            Act::DribbleContentLength,
            Act::DribbleChunked,
            Act::CutConnection,
        ] {
            // begin: the claim itself meets the fault.
            cases.push(tokio::spawn(case(act, false, op, engine_timeout)));
        }
        for act in [
            Act::Silent,
            Act::HeadersThenStall,
            Act::DribbleContentLength,
            Act::CutConnection,
            Act::NoScriptLateThenDribble,
            Act::LeaseLostLateThenDribble,
        ] {
            // complete: the claim is granted; the completion meets the fault.
            cases.push(tokio::spawn(case(act, true, op, engine_timeout)));
        }
    }
    // All at once (each waits about the operation timeout): one second, not twenty.
    let mut worst = Duration::ZERO;
    for case in cases {
        let (took, line) = case.await.unwrap();
        eprintln!("{line}");
        worst = worst.max(took);
    }
    // Without the store's bound the engine's own 5 s timer would be the only one left.
    assert!(
        worst < op * 3,
        "worst {worst:?} for an operation timeout of {op:?}"
    );
}
