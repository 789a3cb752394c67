//! `IDEMPOTENCY_STORE_TIMEOUT` is each store's own operation timeout when the facade opens the
//! store: a long value (an hour) must not hold a service's start-up against a Redis that hangs
//! or stalls after the handshake (start-up keeps the default stores' budget, then connects in
//! the background), and no value the API accepts (up to `Duration::MAX`) may panic. Found by a
//! break pass: the open waited the whole setting (30 s), and `Duration::MAX` panicked in the KV
//! REST store's first operation and in the Redis builder.
#![cfg(all(feature = "redis", feature = "kv-rest"))]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use idempotency::{StoreSelection, store_from_lookup_with_timeout};
use idempotency_core::{IdempotencyStore, StoreKey};
use idempotency_testkit::fixtures::RedisServer;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// A TCP server that accepts and never answers (a hung Redis: SIGSTOPped, or a black hole).
async fn black_hole() -> (String, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    (format!("redis://127.0.0.1:{port}"), task)
}

async fn open_redis(timeout: Duration) -> (Duration, Option<String>) {
    let (url, _task) = black_hole().await;
    let started = Instant::now();
    let opened = tokio::time::timeout(
        Duration::from_secs(20),
        store_from_lookup_with_timeout(StoreSelection::AllowMemory, timeout, |name| {
            (name == "REDIS_URL").then(|| url.clone())
        }),
    )
    .await;
    let took = started.elapsed();
    let what = opened.ok().map(|r| {
        r.map(|s| s.description().to_string())
            .unwrap_or_else(|e| e.to_string())
    });
    (took, what)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_startup_against_a_hung_server() {
    let (short, short_what) = open_redis(Duration::from_secs(1)).await;
    eprintln!("store timeout 1s: open took {short:?}: {short_what:?}");
    let (long, long_what) = open_redis(Duration::from_secs(3600)).await;
    eprintln!("store timeout 1h: open took {long:?}: {long_what:?}");
    assert!(
        short_what.is_some() && long_what.is_some(),
        "with IDEMPOTENCY_STORE_TIMEOUT=1h the open did not return within 20 s (1 s: {short:?})"
    );
}

/// Values the settings accept (up to 10 000 years) and values the new API accepts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_timeouts_do_not_panic() {
    let mut panics = Vec::new();
    for timeout in [
        Duration::from_secs(10_000 * 31_557_600),
        Duration::from_secs(u64::MAX / 2),
        Duration::MAX,
    ] {
        // KV REST: open, then one operation against a port nobody listens on.
        let r = tokio::spawn(async move {
            let store =
                store_from_lookup_with_timeout(StoreSelection::AllowMemory, timeout, |name| {
                    match name {
                        "UPSTASH_REDIS_REST_URL" => Some("http://127.0.0.1:9".to_owned()),
                        "UPSTASH_REDIS_REST_TOKEN" => Some("t".repeat(40)),
                        _ => None,
                    }
                })
                .await
                .unwrap();
            let _ =
                tokio::time::timeout(Duration::from_secs(3), store.get(&StoreKey::from_raw("x")))
                    .await;
        })
        .await;
        eprintln!(
            "kv-rest {timeout:?}: {}",
            if r.is_err() { "PANIC" } else { "ok" }
        );
        if r.is_err() {
            panics.push(format!("kv-rest {timeout:?}"));
        }
        // Redis: open against a hung server (bounded by the test).
        let r = tokio::spawn(async move {
            let (url, _task) = black_hole().await;
            let _ = tokio::time::timeout(
                Duration::from_secs(3),
                store_from_lookup_with_timeout(StoreSelection::AllowMemory, timeout, |name| {
                    (name == "REDIS_URL").then(|| url.clone())
                }),
            )
            .await;
        })
        .await;
        eprintln!(
            "redis {timeout:?}: {}",
            if r.is_err() { "PANIC" } else { "ok" }
        );
        if r.is_err() {
            panics.push(format!("redis {timeout:?}"));
        }
    }
    assert!(panics.is_empty(), "panicked: {panics:?}");
}

/// A Redis look-alike that answers every command `+OK` (so the client's connection handshake
/// succeeds) but never answers `INFO` (the store's first command), as a Redis whose replies
/// stall after the connection is made.
async fn stalls_after_handshake() -> String {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 65536];
                loop {
                    let Ok(n) = socket.read(&mut buf).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    let text = String::from_utf8_lossy(&buf[..n]).to_ascii_uppercase();
                    if text.contains("$4\r\nINFO\r\n") {
                        tokio::time::sleep(Duration::from_secs(3600)).await;
                        return;
                    }
                    // One +OK per command in the read (each starts with '*').
                    let count = text.matches("\r\n*").count() + 1;
                    for _ in 0..count {
                        let _ = socket.write_all(b"+OK\r\n").await;
                    }
                }
            });
        }
    });
    format!("redis://127.0.0.1:{port}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_startup_stalled_after_handshake() {
    for timeout in [Duration::from_secs(1), Duration::from_secs(30)] {
        let url = stalls_after_handshake().await;
        let started = Instant::now();
        let opened = tokio::time::timeout(
            Duration::from_secs(60),
            store_from_lookup_with_timeout(StoreSelection::AllowMemory, timeout, |name| {
                (name == "REDIS_URL").then(|| url.clone())
            }),
        )
        .await;
        let took = started.elapsed();
        eprintln!(
            "stall-after-handshake, store timeout {timeout:?}: open took {took:?} returned={}",
            opened.is_ok()
        );
        // Before 5a02e0a the store's own 1 s default bounded this open under any setting.
        assert!(
            took < Duration::from_secs(10),
            "open waited {took:?} under {timeout:?}"
        );
    }
}

#[cfg(feature = "sql")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_tiny_and_huge() {
    let dir = tempfile::tempdir().unwrap();
    for (i, timeout) in [
        Duration::from_millis(1),
        Duration::from_nanos(1),
        Duration::from_secs(10_000 * 31_557_600),
        Duration::MAX,
    ]
    .into_iter()
    .enumerate()
    {
        let url = format!("sqlite://{}/db{i}.sqlite", dir.path().display());
        let r = tokio::spawn(async move {
            let store =
                store_from_lookup_with_timeout(StoreSelection::AllowMemory, timeout, |name| {
                    match name {
                        "DATABASE_URL" => Some(url.clone()),
                        "IDEMPOTENCY_STORE" => Some("sql".to_owned()),
                        _ => None,
                    }
                })
                .await;
            match store {
                Ok(s) => format!(
                    "open ok; get: {:?}",
                    s.get(&StoreKey::from_raw("x")).await.map(|_| ())
                ),
                Err(e) => format!("open failed: {e}"),
            }
        })
        .await;
        let line = r.expect("no panic");
        eprintln!("sqlite {timeout:?}: {line}");
        assert!(line.starts_with("open ok"), "{line}");
    }
}

/// Postgres start-up while another session holds the records table locked (a migration or a
/// DBA's `LOCK TABLE` elsewhere): how long does the app's start wait?
#[cfg(feature = "sql")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_startup_behind_a_table_lock() {
    use idempotency::sql::sqlx;
    let Ok(server) = idempotency_testkit::fixtures::PostgresServer::start_local() else {
        eprintln!("no postgres");
        return;
    };
    let url = server.url().to_owned();
    // Create the table once.
    let lookup = |u: String| {
        move |name: &str| match name {
            "DATABASE_URL" => Some(u.clone()),
            "IDEMPOTENCY_STORE" => Some("sql".to_owned()),
            _ => None,
        }
    };
    let first = store_from_lookup_with_timeout(
        StoreSelection::AllowMemory,
        Duration::from_secs(5),
        lookup(url.clone()),
    )
    .await
    .unwrap();
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    let tables: Vec<(String,)> = sqlx::query_as(
        "SELECT schemaname || '.' || tablename FROM pg_tables WHERE tablename LIKE 'idem%'",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    eprintln!(
        "first open: {} {:?} tables {tables:?}",
        first.description(),
        first.get(&StoreKey::from_raw("x")).await.map(|_| ())
    );
    drop(first);
    let mut tx = pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE idempotency_records IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *tx)
        .await
        .unwrap();
    for timeout in [Duration::from_secs(1), Duration::from_secs(20)] {
        let started = Instant::now();
        let opened = tokio::time::timeout(
            Duration::from_secs(60),
            store_from_lookup_with_timeout(
                StoreSelection::AllowMemory,
                timeout,
                lookup(url.clone()),
            ),
        )
        .await;
        let took = started.elapsed();
        let opened = opened.map(|r| {
            r.map(|s| s.description().to_string())
                .map_err(|e| e.to_string())
        });
        eprintln!(
            "postgres behind a lock, store timeout {timeout:?}: open took {took:?}: {opened:?}"
        );
        assert!(
            matches!(opened, Ok(Ok(_))) && took < Duration::from_secs(10),
            "{opened:?} {took:?}"
        );
    }
    tx.rollback().await.unwrap();
    for timeout in [
        Duration::from_millis(1),
        Duration::from_secs(10_000 * 31_557_600),
    ] {
        let store = store_from_lookup_with_timeout(
            StoreSelection::AllowMemory,
            timeout,
            lookup(url.clone()),
        )
        .await
        .unwrap();
        tokio::time::sleep(Duration::from_secs(2)).await;
        eprintln!(
            "postgres, store timeout {timeout:?}: {} get after 2 s: {:?}",
            store.description(),
            store.get(&StoreKey::from_raw("x")).await.map(|_| ())
        );
        assert!(store.description().to_string().starts_with("sql"));
    }
}

/// A TCP proxy to `upstream` that delays every chunk from the server by `delay`.
async fn slow_link(upstream: u16, delay: Duration) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let Ok(server) = tokio::net::TcpStream::connect(("127.0.0.1", upstream)).await else {
                continue;
            };
            let (mut cr, mut cw) = client.into_split();
            let (mut sr, mut sw) = server.into_split();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 65536];
                while let Ok(n) = cr.read(&mut buf).await {
                    if n == 0 || sw.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            });
            tokio::spawn(async move {
                let mut buf = vec![0u8; 65536];
                while let Ok(n) = sr.read(&mut buf).await {
                    if n == 0 {
                        return;
                    }
                    tokio::time::sleep(delay).await;
                    if cw.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    format!("redis://127.0.0.1:{port}")
}

/// A healthy Redis behind a slow link (every reply 400 ms late: a far region, a loaded proxy)
/// under `IDEMPOTENCY_STORE_TIMEOUT=5s`: every command answers well inside 5 s, but opening
/// the store takes about ten round trips (handshake, `INFO`, the scripts), more than the
/// start-up budget, so the application starts with the store deferred; the background attempts
/// have the whole store budget and connect it. (A break pass found the first version of the
/// start-up bound applied to background attempts too: it never connected.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healthy_redis_behind_a_slow_link_connects_in_the_background() {
    let server = RedisServer::start().unwrap();
    let url = slow_link(server.port(), Duration::from_millis(400)).await;
    let started = Instant::now();
    let store = store_from_lookup_with_timeout(
        StoreSelection::AllowMemory,
        Duration::from_secs(5),
        |name| (name == "REDIS_URL").then(|| url.clone()),
    )
    .await
    .unwrap();
    eprintln!(
        "open took {:?}; connected: {}",
        started.elapsed(),
        store.is_connected()
    );
    // Give the background connection plenty of time (many attempts' worth).
    let deadline = Instant::now() + Duration::from_secs(20);
    while !store.is_connected() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "after {:?}: connected: {}",
        started.elapsed(),
        store.is_connected()
    );
    // Report only: connections the failed background attempts left open on the server.
    let direct = redis::Client::open(server.url()).unwrap();
    let mut conn = direct.get_multiplexed_async_connection().await.unwrap();
    let info: String = redis::cmd("INFO")
        .arg("clients")
        .query_async(&mut conn)
        .await
        .unwrap();
    let clients = info
        .lines()
        .find(|l| l.starts_with("connected_clients"))
        .map(str::to_owned);
    eprintln!("server side after the attempts: {clients:?} (one is this check)");
    let got = store.get(&StoreKey::from_raw("slow-link".to_owned())).await;
    assert!(
        store.is_connected() && got.is_ok(),
        "a Redis answering every command in 0.4 s (store timeout 5 s) never connected in 20 s: {got:?}"
    );
}
