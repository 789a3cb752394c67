//! Start-up when the store is down, and under the kill switch (a real redis-server).

#![cfg(feature = "redis")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use idempotency::{
    Begin, Fingerprint, Idempotency, IdempotencyError, IdempotencyKey, IdempotencyStore as _,
    Scope, StoreSelection, StoredOutcome, store_from_lookup,
};
use idempotency_testkit::RefusedPort;
use idempotency_testkit::fixtures::RedisServer;

fn lookup(vars: Vec<(&'static str, String)>) -> impl Fn(&str) -> Option<String> {
    move |name| {
        vars.iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.clone())
    }
}

/// A store that is down at start-up: the service starts at once, the failure policy answers,
/// and once the server is up the same store protects requests without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_down_at_start_up_is_connected_in_the_background() {
    let mut server =
        RedisServer::start_local().expect("redis-server (apt-get install redis-server)");
    let url = server.url().to_owned();
    // Stopped, the server's port stays reserved (refused, and taken by no other test's server)
    // until `restart`.
    server.stop().unwrap();

    let started = std::time::Instant::now();
    let store = store_from_lookup(
        StoreSelection::RequireDistributed,
        lookup(vec![("REDIS_URL", url)]),
    )
    .await
    .expect("a store that is down must not stop start-up");
    assert!(!store.is_connected());
    // Not connected: no bound of its own, so the engine keeps its timer.
    assert_eq!(store.operation_bound(), None);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "start-up waited {:?}",
        started.elapsed()
    );

    let engine = Idempotency::builder(store.clone())
        .ignore_env()
        .build()
        .unwrap();
    let scope = Scope::new("tenant");
    let key = IdempotencyKey::new("down-at-start").unwrap();
    // Fail closed: a retryable refusal, not a hang and not an unprotected run.
    match engine.begin(&scope, &key, Fingerprint::of("a")).await {
        Err(IdempotencyError::StoreUnavailable(_)) => {}
        other => panic!("expected StoreUnavailable, got {other:?}"),
    }

    server.restart().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !store.is_connected() {
        assert!(
            std::time::Instant::now() < deadline,
            "never connected after the server came back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Connected: the Redis store's own bound is forwarded (one timer per store call).
    assert!(store.operation_bound().is_some());
    let Begin::Run(guard) = engine
        .begin(&scope, &key, Fingerprint::of("a"))
        .await
        .unwrap()
    else {
        panic!("first attempt must run");
    };
    guard
        .complete(StoredOutcome::new(b"done".to_vec(), None))
        .await
        .unwrap();
    match engine
        .begin(&scope, &key, Fingerprint::of("a"))
        .await
        .unwrap()
    {
        Begin::Replay(outcome) => assert_eq!(&outcome.body[..], b"done"),
        Begin::Run(_) => panic!("the retry must replay"),
    }
}

/// Under the kill switch the store is never opened (it may be down: that is the emergency),
/// and the engine runs every operation.
#[tokio::test]
async fn the_kill_switch_is_honoured_before_the_store_is_opened() {
    // Nothing listens on this port, and no other server takes it while the test runs.
    let down = RefusedPort::new();
    let store = store_from_lookup(
        StoreSelection::RequireDistributed,
        lookup(vec![
            ("REDIS_URL", format!("redis://{}", down.addr())),
            ("DISABLE_IDEMPOTENCY_CHECKS", "true".to_owned()),
        ]),
    )
    .await
    .unwrap();
    assert!(!store.is_connected());
    let engine = Idempotency::builder(store)
        .ignore_env()
        .disabled(true)
        .build()
        .unwrap();
    let key = IdempotencyKey::new("k").unwrap();
    for _ in 0..2 {
        match engine
            .begin(&Scope::global(), &key, Fingerprint::of("a"))
            .await
            .unwrap()
        {
            Begin::Run(guard) => assert!(guard.unprotected_reason().is_some()),
            Begin::Replay(_) => panic!("disabled engines never replay"),
        }
    }
    // A misconfiguration is still reported under the switch.
    let error = store_from_lookup(
        StoreSelection::AllowMemory,
        lookup(vec![
            ("REDIS_URL", "http://not-redis".to_owned()),
            ("DISABLE_IDEMPOTENCY_CHECKS", "true".to_owned()),
        ]),
    )
    .await
    .unwrap_err();
    assert!(error.to_string().contains("REDIS_URL"));
}

/// `REDIS_CLUSTER_URLS` opens a working store on a real 3-master cluster.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cluster_from_the_environment() {
    let cluster = idempotency_testkit::fixtures::RedisCluster::start(3)
        .expect("redis-server (apt-get install redis-server)");
    let urls = cluster.urls().join(",");
    let store = store_from_lookup(
        StoreSelection::RequireDistributed,
        lookup(vec![("REDIS_CLUSTER_URLS", urls)]),
    )
    .await
    .unwrap();
    assert_eq!(store.kind(), idempotency::BackendKind::RedisCluster);
    assert!(store.as_redis_cluster().is_some());
    round_trip(store).await;
}

/// `REDIS_URL=unix:///path` opens a working store over a unix socket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_over_a_unix_socket_from_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("redis.sock");
    let socket = socket.to_str().unwrap().to_owned();
    let _server =
        RedisServer::start_local_with(&["--unixsocket", &socket, "--unixsocketperm", "700"])
            .expect("redis-server (apt-get install redis-server)");
    let store = store_from_lookup(
        StoreSelection::RequireDistributed,
        lookup(vec![("REDIS_URL", format!("unix://{socket}"))]),
    )
    .await
    .unwrap();
    assert!(store.is_connected());
    assert!(store.as_redis().is_some());
    round_trip(store).await;
}

/// Claim, complete and replay one key.
async fn round_trip(store: idempotency::AnyStore) {
    let engine = Idempotency::builder(store).ignore_env().build().unwrap();
    let key = IdempotencyKey::new(format!("rt-{}", std::process::id())).unwrap();
    let scope = Scope::new("t");
    let Begin::Run(guard) = engine
        .begin(&scope, &key, Fingerprint::of("x"))
        .await
        .unwrap()
    else {
        panic!("first attempt must run");
    };
    guard
        .complete(StoredOutcome::new(b"ok".to_vec(), None))
        .await
        .unwrap();
    match engine
        .begin(&scope, &key, Fingerprint::of("x"))
        .await
        .unwrap()
    {
        Begin::Replay(outcome) => assert_eq!(&outcome.body[..], b"ok"),
        Begin::Run(_) => panic!("the retry must replay"),
    }
}

/// `REDIS_URL=rediss://…` (feature `redis-tls`) opens a working store on a local TLS server
/// (a self-signed certificate made with the `openssl` command; `#insecure` skips verification,
/// as redis-rs documents, because the test has no CA).
#[cfg(feature = "redis-tls")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_over_tls_from_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let cert = dir.path().join("cert.pem");
    let key = dir.path().join("key.pem");
    let made = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("the `openssl` command (apt-get install openssl)");
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let (cert, key) = (cert.to_str().unwrap(), key.to_str().unwrap());
    // The TLS port is free from its reservation's release to the server's bind (the fixture's
    // start: the server process must bind it itself), and another socket can take it then:
    // the server exits with "Address already in use" (the fixture's own retries keep this
    // port), and it is started again on another.
    let mut tls_port = 0;
    let _server = idempotency_testkit::start_on_free_port(3, |port| {
        tls_port = port;
        let port = port.to_string();
        match RedisServer::start_local_with(&[
            "--tls-port",
            &port,
            "--tls-cert-file",
            cert,
            "--tls-key-file",
            key,
            "--tls-ca-cert-file",
            cert,
            "--tls-auth-clients",
            "no",
        ]) {
            Err(error) if error.to_string().contains("in use") => Err(error),
            started => Ok(started.expect("redis-server with TLS (Debian's redis-server has it)")),
        }
    })
    .expect("redis-server with TLS: its TLS port taken at each attempt");
    let store = store_from_lookup(
        StoreSelection::RequireDistributed,
        lookup(vec![(
            "REDIS_URL",
            format!("rediss://127.0.0.1:{tls_port}/#insecure"),
        )]),
    )
    .await
    .unwrap();
    assert!(store.is_connected(), "{store:?}");
    round_trip(store).await;
}
