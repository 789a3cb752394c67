//! Slow and greedy clients: slowloris headers and bodies, idle keep-alive connections, and
//! connection floods, against the server's timeouts and connection limit.

use std::time::Duration;

use kv_rest_gateway::{Gateway, GatewayConfig, ServerLimits};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::TOKEN;

/// A gateway with `limits` in front of a fresh Redis, plus its state handle (for the
/// connection counts) and its address.
async fn gateway_with(
    limits: ServerLimits,
) -> (
    idempotency_testkit::fixtures::RedisServer,
    Gateway,
    std::net::SocketAddr,
    tokio::sync::oneshot::Sender<()>,
) {
    let redis = idempotency_testkit::fixtures::RedisServer::start_local().unwrap();
    let config = GatewayConfig::new(redis.url(), TOKEN).with_limits(limits);
    let gateway = Gateway::new(&config).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(gateway.clone().serve(listener, async move {
        let _ = stopped.await;
    }));
    (redis, gateway, address, stop)
}

/// Reads until EOF or a reset; `None` when the guard time passes first (still open).
async fn read_until_closed(stream: &mut TcpStream, guard: Duration) -> Option<Vec<u8>> {
    let mut received = Vec::new();
    let mut buffer = [0_u8; 4096];
    let read_all = async {
        loop {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(n) => received.extend_from_slice(&buffer[..n]),
            }
        }
    };
    tokio::time::timeout(guard, read_all).await.ok()?;
    Some(received)
}

fn limits(header_ms: u64, body_ms: u64, idle_ms: u64, max_connections: usize) -> ServerLimits {
    ServerLimits {
        header_read_timeout: Duration::from_millis(header_ms),
        body_read_timeout: Duration::from_millis(body_ms),
        idle_timeout: Duration::from_millis(idle_ms),
        max_connections,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_headers_are_cut_off() {
    let (_redis, _gateway, address, stop) = gateway_with(limits(300, 10_000, 10_000, 16)).await;
    let mut stream = TcpStream::connect(address).await.unwrap();
    stream
        .write_all(b"GET /~health HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    // One header byte every 100 ms, forever: the server must close before we finish.
    let writer = async {
        for _ in 0..200 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if stream.write_all(b"X").await.is_err() {
                return true;
            }
        }
        false
    };
    let cut_off = tokio::time::timeout(Duration::from_secs(10), writer).await;
    assert!(
        matches!(cut_off, Ok(true)),
        "the slow header was not cut off"
    );
    let _ = stop.send(());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_bodies_get_408_and_the_connection_closes() {
    let (_redis, _gateway, address, stop) = gateway_with(limits(10_000, 300, 10_000, 16)).await;
    let mut stream = TcpStream::connect(address).await.unwrap();
    let head = format!(
        "POST / HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nContent-Length: 100\r\n\r\n[\"PI"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    // Trickle a byte every 100 ms; the reply arrives while we are still "sending".
    let (mut reader, mut writer) = stream.into_split();
    let trickle = tokio::spawn(async move {
        for _ in 0..100 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if writer.write_all(b" ").await.is_err() {
                return;
            }
        }
    });
    let mut received = Vec::new();
    let read =
        tokio::time::timeout(Duration::from_secs(10), reader.read_to_end(&mut received)).await;
    trickle.abort();
    assert!(read.is_ok(), "the connection stayed open");
    let text = String::from_utf8_lossy(&received);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(
        !text.to_ascii_lowercase().contains("upstash-sync-token"),
        "an early answer carries no sync token: {text}"
    );
    assert!(
        text.to_ascii_lowercase().contains("connection: close"),
        "{text}"
    );
    let _ = stop.send(());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_keep_alive_connections_are_closed() {
    let (_redis, gateway, address, stop) = gateway_with(limits(10_000, 10_000, 300, 16)).await;
    let mut stream = TcpStream::connect(address).await.unwrap();
    stream
        .write_all(b"GET /~health HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut first = [0_u8; 12];
    stream.read_exact(&mut first).await.unwrap();
    assert_eq!(&first, b"HTTP/1.1 200");
    // Kept alive after the response, then closed by the server once idle.
    let closed = read_until_closed(&mut stream, Duration::from_secs(10)).await;
    assert!(closed.is_some(), "the idle connection stayed open");
    // The server counts the connection closed once its task has ended, just after the close
    // the client saw: wait for that (bounded), rather than guess how long it takes.
    let counted_closed = tokio::time::timeout(Duration::from_secs(10), async {
        while gateway.connections().0 != 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    assert!(counted_closed.is_ok(), "{:?}", gateway.connections());
    let _ = stop.send(());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_flood_stays_within_the_limit() {
    const LIMIT: usize = 32;
    const ATTEMPTS: usize = 200;
    let (_redis, gateway, address, stop) = gateway_with(limits(300, 1_000, 300, LIMIT)).await;
    // 200 clients connect and send nothing (the kernel queues those beyond the limit).
    let mut idle = Vec::with_capacity(ATTEMPTS);
    for _ in 0..ATTEMPTS {
        idle.push(TcpStream::connect(address).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (open, _) = gateway.connections();
    assert!(open <= LIMIT, "{open} connections open, limit {LIMIT}");
    // Each batch is cut off by the header timeout and the next is accepted: every idle client
    // sees its connection closed, and a real request is served in the end.
    let closed = futures_like_join(idle).await;
    assert_eq!(closed, ATTEMPTS, "connections never closed by the server");
    let client = reqwest::Client::new();
    let health = client
        .get(format!("http://{address}/~health"))
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    let (_, peak) = gateway.connections();
    assert!(peak <= LIMIT, "peak {peak} connections, limit {LIMIT}");
    assert!(
        peak >= LIMIT / 2,
        "the flood never reached the limit (peak {peak})"
    );
    let _ = stop.send(());
}

/// Waits (bounded) for every stream to be closed by the server; returns how many were.
async fn futures_like_join(streams: Vec<TcpStream>) -> usize {
    let tasks: Vec<_> = streams
        .into_iter()
        .map(|mut stream| {
            tokio::spawn(async move {
                read_until_closed(&mut stream, Duration::from_secs(30))
                    .await
                    .is_some()
            })
        })
        .collect();
    let mut closed = 0;
    for task in tasks {
        if task.await.unwrap_or(false) {
            closed += 1;
        }
    }
    closed
}

/// Sends `request` on a fresh connection and returns everything the server answers before it
/// closes (bounded).
async fn raw_exchange(address: std::net::SocketAddr, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(address).await.unwrap();
    stream.write_all(request).await.unwrap();
    let received = read_until_closed(&mut stream, Duration::from_secs(10))
        .await
        .expect("the server closed the connection");
    String::from_utf8_lossy(&received).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn early_answers_carry_no_sync_token() {
    let (_redis, _gateway, address, stop) = gateway_with(limits(10_000, 10_000, 300, 16)).await;
    // Authenticated, but the chunked body is malformed: 400 while reading the body.
    let bad_chunk = format!(
        "POST / HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n\
         Transfer-Encoding: chunked\r\n\r\nzz\r\n[\"PING\"]\r\n0\r\n\r\n"
    );
    // A request head hyper refuses before the router sees it.
    let bad_head = b"GET /ping HTTP/1.1\r\nHost x\r\n\r\n".to_vec();
    // Authenticated, with a refused response format.
    let resp2 = format!(
        "GET /ping HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n\
         Upstash-Response-Format: resp2\r\nConnection: close\r\n\r\n"
    );
    for (request, status) in [
        (bad_chunk.into_bytes(), "400"),
        (bad_head, "400"),
        (resp2.into_bytes(), "400"),
    ] {
        let text = raw_exchange(address, &request).await;
        assert!(text.starts_with(&format!("HTTP/1.1 {status}")), "{text}");
        assert!(
            !text.to_ascii_lowercase().contains("upstash-sync-token"),
            "{text}"
        );
    }
    // The same connection kind, authenticated and well-formed, still gets one.
    let fine = format!(
        "GET /ping HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n\
         Connection: close\r\n\r\n"
    );
    let text = raw_exchange(address, fine.as_bytes()).await;
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(
        text.to_ascii_lowercase().contains("upstash-sync-token"),
        "{text}"
    );
    let _ = stop.send(());
}
