//! Measurement harness for the layer's own cost (issue 15): the loadgen's trivial axum app, bare
//! or behind the layer, served from a process of its own so `perf stat -p` sees only the server.
//!
//! ```text
//! httpperf serve <bare|memory|redis|rawredis> [redis-url] [workers]
//!     serve 127.0.0.1:<free port> (printed as `PORT <n>`) until killed; `rawredis` is bare axum
//!     plus one raw `GET` per request on the same kind of connection the store uses
//! httpperf load <port> <fresh|replay|conflict> <connections> <requests>
//!     a light raw-socket HTTP/1.1 client (keep-alive, one connection per task); prints
//!     requests, seconds and latency percentiles (µs)
//! httpperf inproc <bare|memory> <fresh|replay|conflict> <requests>
//!     the router called through `oneshot` on a current-thread runtime, no sockets: for
//!     `valgrind --tool=callgrind` instructions per request
//! ```
//!
//! A recipe (release build; Redis on 127.0.0.1; repeat 3× interleaved and take medians):
//!
//! ```text
//! httpperf serve redis redis://127.0.0.1:PORT/ &          # prints PORT <p>
//! httpperf load <p> replay 1 2000                          # warm up
//! perf stat -e task-clock,context-switches,cpu-migrations -p <server pid> &
//! httpperf load <p> replay 1 10000; kill -INT <perf pid>   # divide by 10000
//! valgrind --tool=callgrind httpperf inproc memory replay N # (N=2200) − (N=200), / 2000
//! ```
//!
//! Requests carry the loadgen's body and headers. `conflict` first parks one request in the
//! handler (header `x-bench-hold`), so the key stays in progress; every other request is a 409.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::post;
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use idempotency_core::{Idempotency, IdempotencyStore};
use idempotency_http::IdempotencyLayer;
use idempotency_memory::MemoryStore;
use idempotency_redis::redis;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tower::ServiceExt as _;

const BODY: &str = r#"{"sku":"widget","qty":1}"#;
const HOLD: &str = "x-bench-hold";

#[derive(Clone, Default)]
struct AppState {
    redis: Option<redis::aio::ConnectionManager>,
}

async fn create_order(
    State(state): State<AppState>,
    headers: HeaderMap,
    _body: Bytes,
) -> impl IntoResponse {
    if headers.contains_key(HOLD) {
        std::future::pending::<()>().await;
    }
    if let Some(mut conn) = state.redis.clone() {
        let _: Option<Vec<u8>> = redis::cmd("GET")
            .arg("httpperf:raw")
            .query_async(&mut conn)
            .await
            .expect("raw GET");
    }
    (
        StatusCode::CREATED,
        [(header::CONTENT_TYPE, "application/json")],
        r#"{"id":12345,"status":"created"}"#,
    )
}

fn with_layer<S: IdempotencyStore + 'static>(router: Router, store: S) -> Router {
    let engine = Idempotency::builder(store).ignore_env().build().unwrap();
    router.layer(IdempotencyLayer::builder(engine).global_scope().build())
}

fn memory() -> MemoryStore {
    MemoryStore::builder()
        .max_entries(usize::MAX)
        .max_bytes(usize::MAX)
        .build()
}

async fn app(kind: &str, url: Option<&str>) -> Router {
    let mut state = AppState::default();
    if kind == "rawredis" {
        let client = redis::Client::open(url.expect("redis url")).unwrap();
        state.redis = Some(redis::aio::ConnectionManager::new(client).await.unwrap());
    }
    let plain = Router::new()
        .route("/orders", post(create_order))
        .with_state(state);
    match kind {
        "bare" | "rawredis" => plain,
        "memory" => with_layer(plain, memory()),
        "redis" => with_layer(
            plain,
            idempotency_redis::RedisStore::connect(url.expect("redis url"))
                .await
                .unwrap(),
        ),
        other => panic!("unknown app {other}"),
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    match args.as_slice() {
        ["serve", kind, rest @ ..] => serve(kind, rest),
        ["load", port, scenario, conns, requests] => load(
            port.parse().unwrap(),
            scenario,
            conns.parse().unwrap(),
            requests.parse().unwrap(),
        ),
        ["inproc", kind, scenario, requests] => inproc(kind, scenario, requests.parse().unwrap()),
        _ => panic!("usage: see the example's docs"),
    }
}

fn serve(kind: &str, rest: &[&str]) {
    let url = rest.first().copied().filter(|u| u.starts_with("redis"));
    let workers = rest
        .iter()
        .find_map(|a| a.parse::<usize>().ok())
        .unwrap_or(2);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let router = app(kind, url).await;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        println!("PORT {}", listener.local_addr().unwrap().port());
        use axum::serve::ListenerExt as _;
        let listener = listener.tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
        axum::serve(listener, router).await.unwrap();
    });
}

fn request(key: &str, hold: bool) -> Vec<u8> {
    let hold = if hold { "x-bench-hold: 1\r\n" } else { "" };
    format!(
        "POST /orders HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n\
         idempotency-key: {key}\r\n{hold}content-length: {}\r\n\r\n{BODY}",
        BODY.len()
    )
    .into_bytes()
}

/// Send `req`, read one whole response (content-length framed), return its status.
async fn exchange(stream: &mut tokio::net::TcpStream, buf: &mut Vec<u8>, req: &[u8]) -> u16 {
    stream.write_all(req).await.unwrap();
    buf.clear();
    let mut chunk = [0_u8; 4096];
    loop {
        let n = stream.read(&mut chunk).await.unwrap();
        assert!(n > 0, "server closed the connection");
        buf.extend_from_slice(&chunk[..n]);
        let Some(end) = memchr::memmem::find(buf, b"\r\n\r\n") else {
            continue;
        };
        let head = std::str::from_utf8(&buf[..end])
            .unwrap()
            .to_ascii_lowercase();
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .map(|v| v.trim().parse().unwrap())
            .expect("content-length framed response");
        if buf.len() >= end + 4 + length {
            return head[9..12].parse().unwrap();
        }
    }
}

fn load(port: u16, scenario: &str, conns: usize, requests: usize) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        let run = format!(
            "{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        );
        let fixed = format!("fixed-{run}");
        let mut buf = Vec::new();
        let mut _held = None;
        let expected = match scenario {
            "replay" => {
                let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
                s.set_nodelay(true).unwrap();
                assert_eq!(
                    exchange(&mut s, &mut buf, &request(&fixed, false)).await,
                    201
                );
                201
            }
            "conflict" => {
                let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
                s.set_nodelay(true).unwrap();
                s.write_all(&request(&fixed, true)).await.unwrap();
                _held = Some(s);
                // Until the held request holds the key (a bare app answers 201 at once: there
                // the parked request does not matter).
                let mut probe = tokio::net::TcpStream::connect(addr).await.unwrap();
                probe.set_nodelay(true).unwrap();
                tokio::time::sleep(Duration::from_millis(100)).await;
                exchange(&mut probe, &mut buf, &request(&fixed, false)).await
            }
            _ => 201,
        };
        let started = Instant::now();
        let per = requests / conns;
        let mut tasks = Vec::new();
        for c in 0..conns {
            let fixed = fixed.clone();
            let prefix = format!("fresh-{run}-{c}-");
            let scenario = scenario.to_owned();
            tasks.push(tokio::spawn(async move {
                let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
                s.set_nodelay(true).unwrap();
                let mut buf = Vec::with_capacity(1024);
                let mut lat = Vec::with_capacity(per);
                let fixed_req = request(&fixed, false);
                for i in 0..per {
                    let fresh;
                    let req = if scenario == "fresh" {
                        fresh = request(&format!("{prefix}{i}"), false);
                        &fresh
                    } else {
                        &fixed_req
                    };
                    let t = Instant::now();
                    let status = exchange(&mut s, &mut buf, req).await;
                    lat.push(t.elapsed());
                    assert_eq!(status, expected, "unexpected status");
                }
                lat
            }));
        }
        let mut all = Vec::with_capacity(requests);
        for t in tasks {
            all.extend(t.await.unwrap());
        }
        let secs = started.elapsed().as_secs_f64();
        all.sort();
        let pct =
            |p: f64| all[((all.len() as f64 * p) as usize).min(all.len() - 1)].as_secs_f64() * 1e6;
        println!(
            "requests {} seconds {:.3} rps {:.0} p50_us {:.1} p95_us {:.1} p99_us {:.1}",
            all.len(),
            secs,
            all.len() as f64 / secs,
            pct(0.5),
            pct(0.95),
            pct(0.99)
        );
    });
}

fn inproc(kind: &str, scenario: &str, requests: usize) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let router = app(kind, None).await;
        let build = |key: &str, hold: bool| {
            let mut r = http::Request::post("/orders")
                .header(header::CONTENT_TYPE, "application/json")
                .header("idempotency-key", key);
            if hold {
                r = r.header(HOLD, "1");
            }
            r.body(axum::body::Body::new(Full::new(Bytes::from_static(
                BODY.as_bytes(),
            ))))
            .unwrap()
        };
        let call = |req: http::Request<axum::body::Body>| {
            let router = router.clone();
            async move {
                let response = router.oneshot(req).await.unwrap();
                let status = response.status();
                response.into_body().collect().await.unwrap();
                status.as_u16()
            }
        };
        let expected = match scenario {
            "replay" => {
                assert_eq!(call(build("fixed", false)).await, 201);
                201
            }
            "conflict" => {
                let held = call(build("fixed", true));
                tokio::spawn(held);
                tokio::task::yield_now().await;
                tokio::task::yield_now().await;
                call(build("fixed", false)).await
            }
            _ => 201,
        };
        let keys: Vec<String> = (0..requests).map(|i| format!("fresh-{i}")).collect();
        let started = Instant::now();
        for key in &keys {
            let key = if scenario == "fresh" { key } else { "fixed" };
            assert_eq!(call(build(key, false)).await, expected);
        }
        println!(
            "requests {requests} us_per_request {:.2}",
            started.elapsed().as_secs_f64() * 1e6 / requests as f64
        );
    });
}
