//! Memory per request is bounded by the maximum outcome size, not by the response: a 64 MiB
//! streamed response through the layer (1 MiB cap) over a real socket, with every allocation of
//! this test binary counted (`peak_alloc` is the global allocator here, hence its own binary).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::post;
use bytes::Bytes;
use idempotency_core::Idempotency;
use idempotency_http::IdempotencyLayer;
use idempotency_memory::MemoryStore;
use peak_alloc::PeakAlloc;

#[global_allocator]
static ALLOCATOR: PeakAlloc = PeakAlloc;

const MIB: usize = 1024 * 1024;
const CHUNK: usize = 64 * 1024;
const TOTAL: usize = 64 * MIB;

async fn big(State(runs): State<Arc<AtomicUsize>>) -> impl IntoResponse {
    runs.fetch_add(1, Ordering::SeqCst);
    // Produced lazily, chunk by chunk, with no length known in advance.
    let chunk = Bytes::from(vec![b'z'; CHUNK]);
    let chunks = futures::stream::iter((0..TOTAL / CHUNK).map(move |_| {
        // A fresh copy per chunk, as a real producer would allocate.
        Ok::<_, std::io::Error>(Bytes::copy_from_slice(&chunk))
    }));
    (
        [("content-type", "application/octet-stream")],
        Body::from_stream(chunks),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_64_mib_stream_with_a_1_mib_cap_stays_within_a_few_mib() {
    let engine = Idempotency::builder(MemoryStore::new())
        .ignore_env()
        .max_outcome_size(MIB)
        .build()
        .unwrap();
    let runs = Arc::new(AtomicUsize::new(0));
    let router = Router::new()
        .route("/big", post(big))
        .layer(IdempotencyLayer::builder(engine).global_scope().build())
        .with_state(runs.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    // Warm up connections and runtime structures so that they do not count as growth.
    let warm = client
        .post(format!("http://{addr}/none"))
        .header("idempotency-key", "warm")
        .send()
        .await
        .unwrap();
    assert_eq!(warm.status(), StatusCode::NOT_FOUND);

    let baseline = ALLOCATOR.current_usage();
    ALLOCATOR.reset_peak_usage();
    let started = Instant::now();
    let mut response = client
        .post(format!("http://{addr}/big"))
        .header("idempotency-key", "big-1")
        .send()
        .await
        .unwrap();
    let head_after = started.elapsed();
    assert_eq!(response.status(), StatusCode::OK);
    let mut received = 0;
    while let Some(chunk) = response.chunk().await.unwrap() {
        received += chunk.len();
    }
    assert_eq!(received, TOTAL);
    let peak_growth = ALLOCATOR.peak_usage().saturating_sub(baseline);
    eprintln!(
        "64 MiB stream, 1 MiB cap: head after {head_after:?}, all after {:?}, peak heap growth \
         {:.2} MiB",
        started.elapsed(),
        peak_growth as f64 / MIB as f64
    );
    // The cap (1 MiB, perhaps held twice while it grows), a few chunks in flight, socket
    // buffers: far below the body, and independent of it.
    assert!(
        peak_growth < 8 * MIB,
        "peak heap growth {peak_growth} bytes for a 64 MiB body with a 1 MiB cap"
    );

    // Too large to keep: recorded without its body; the retry does not run the handler again.
    let retry = client
        .post(format!("http://{addr}/big"))
        .header("idempotency-key", "big-1")
        .send()
        .await
        .unwrap();
    assert_eq!(retry.status(), StatusCode::OK);
    assert_eq!(retry.headers()["idempotent-replayed"], "true");
    assert_eq!(retry.headers()["idempotent-body-omitted"], "true");
    assert_eq!(retry.bytes().await.unwrap().len(), 0);
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}
