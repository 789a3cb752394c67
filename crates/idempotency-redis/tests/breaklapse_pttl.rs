//! The check a waiting duplicate makes once subscribed is a pipeline of `GET` and `PTTL`, not
//! atomic: the key can lapse between the two (its time is past when `PTTL` runs, so Redis
//! answers `-2`, no key). That is a change (the lease the `GET` found is over), not "no
//! expiry": the wait must end then, not sleep until its own timeout.
//!
//! Made deterministic with a proxy in front of the server that holds the `PTTL` of the
//! pipeline back until the lease has lapsed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use idempotency_core::{IdempotencyStore, StoreKey, Waited};
use idempotency_redis::RedisStore;
use idempotency_redis::redis;
use idempotency_testkit::fixtures::RedisServer;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

/// How long the proxy holds a pipelined `PTTL` back (once, when armed).
const HOLD: Duration = Duration::from_millis(600);

/// A TCP proxy to `upstream` that, when `armed`, writes a client's bytes up to a `PTTL`
/// command, waits [`HOLD`], then writes the rest (and disarms). Returns its URL.
async fn splitting_proxy(upstream: u16, armed: Arc<AtomicBool>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((client, _)) = listener.accept().await else {
                return;
            };
            let server = TcpStream::connect(("127.0.0.1", upstream)).await.unwrap();
            let (mut client_read, mut client_write) = client.into_split();
            let (mut server_read, mut server_write) = server.into_split();
            tokio::spawn(async move {
                let _ = tokio::io::copy(&mut server_read, &mut client_write).await;
            });
            let armed = armed.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    let n = match client_read.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    let chunk = &buf[..n];
                    let pttl = b"*2\r\n$4\r\nPTTL\r\n";
                    let at = chunk.windows(pttl.len()).position(|w| w == pttl);
                    match at {
                        Some(at) if armed.swap(false, Ordering::SeqCst) => {
                            if server_write.write_all(&chunk[..at]).await.is_err() {
                                return;
                            }
                            tokio::time::sleep(HOLD).await;
                            if server_write.write_all(&chunk[at..]).await.is_err() {
                                return;
                            }
                        }
                        _ => {
                            if server_write.write_all(chunk).await.is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
    });
    format!("redis://127.0.0.1:{port}")
}

/// A claim whose 200 ms lease lapses between the check's `GET` (which finds it held) and its
/// `PTTL` (which finds no key): the wait ends as a change, not at its 10 s timeout. Before the
/// fix the `-2` was read as "no expiry" and the waiter slept the whole wait: a duplicate of a
/// crashed owner took the key over only at its `max_wait`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_that_lapses_between_get_and_pttl_ends_the_wait() {
    let server = RedisServer::start_local().expect("local redis-server (apt install redis-server)");
    let armed = Arc::new(AtomicBool::new(false));
    let url = splitting_proxy(server.port(), armed.clone()).await;
    let store = RedisStore::builder()
        .operation_timeout(Duration::from_secs(5))
        .connect(&url)
        .await
        .expect("connect");
    assert!(store.notifies_waiters());
    let mut admin = redis::Client::open(server.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let k = StoreKey::from_raw("lapses-between-get-and-pttl");
    let record = common::put_in_progress(&mut admin, &k, 200).await;
    armed.store(true, Ordering::SeqCst);
    let started = Instant::now();
    let waited = store
        .wait_for_change(&k, &record.token, Duration::from_secs(10))
        .await
        .expect("the wait");
    let after = started.elapsed();
    assert!(!armed.load(Ordering::SeqCst), "the proxy held a PTTL back");
    assert_eq!(
        waited,
        Waited::Changed,
        "the lease lapsed before PTTL ({after:?})"
    );
    assert!(
        after < Duration::from_secs(5),
        "ended at the lapse, not at the 10 s timeout: {after:?}"
    );
}
