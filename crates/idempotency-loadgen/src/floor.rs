//! `http-floor`: the least an `Idempotency-Key` layer that keeps a record of every request can
//! do, as a reference row for `http-memory` (issue 15's "HTTP on memory within 1.15× of bare
//! axum").
//!
//! Per request: read the key header, read the whole body, SHA-256 over method, path and body
//! (the fingerprint), look the key up in a sharded in-memory map (a stored answer is replayed, a
//! key in progress is a 409, a different fingerprint a 422), insert an in-progress entry, run the
//! handler, collect its body and store status, headers and body under the key. Written as an
//! axum user would write a minimal middleware (`axum::middleware::from_fn_with_state`), applied
//! with `Router::layer` like ours.
//!
//! What it does **not** do, so the row is a floor and not a competitor: no lease (a request
//! that dies mid-handler leaves its key in progress for ever), no fencing, no retention or
//! expiry (records are never removed), no size limits on what it stores, no scope or tenant,
//! no timeouts, no metrics or tracing, no failure policy. What it costs over `bare-axum` is
//! what keeping a record per request costs on the machine of the run, whoever writes the layer.

use std::collections::HashMap;
use std::hash::{BuildHasher as _, RandomState};
use std::sync::{Arc, Mutex, PoisonError};

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{Next, from_fn_with_state};
use axum::response::{IntoResponse as _, Response};
use bytes::Bytes;
use http_body_util::BodyExt as _;
use sha2::{Digest as _, Sha256};

/// Largest request body read (as the layer's default).
const MAX_BODY: usize = 1 << 20;
/// Shards of the map (the memory store's count on 2 cores is 8; a few more costs nothing).
const SHARDS: usize = 16;

/// What the map keeps under a key.
enum Entry {
    /// The handler is running.
    InProgress,
    /// The stored answer and the fingerprint of the request that produced it.
    Done {
        fingerprint: [u8; 32],
        status: StatusCode,
        headers: HeaderMap,
        body: Bytes,
    },
}

type Shard = Mutex<HashMap<Box<[u8]>, Entry>>;

/// The map: shards of std's `HashMap` behind std's `Mutex`.
struct Records {
    shards: Box<[Shard]>,
    hasher: RandomState,
}

impl Records {
    fn new() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            hasher: RandomState::new(),
        }
    }

    fn shard(&self, key: &[u8]) -> &Shard {
        // `SHARDS` is a power of two: the low bits pick the shard.
        let index = usize::try_from(self.hasher.hash_one(key) % SHARDS as u64).unwrap_or(0);
        &self.shards[index]
    }
}

/// `router` with the floor layer around each of its routes.
pub(crate) fn layer(router: Router) -> Router {
    router.layer(from_fn_with_state(Arc::new(Records::new()), floor))
}

async fn floor(State(records): State<Arc<Records>>, request: Request, next: Next) -> Response {
    let Some(key) = request
        .headers()
        .get("idempotency-key")
        .map(|value| Box::<[u8]>::from(value.as_bytes()))
    else {
        return StatusCode::BAD_REQUEST.into_response();
    };
    let (parts, body) = request.into_parts();
    let Ok(body) = axum::body::to_bytes(body, MAX_BODY).await else {
        return StatusCode::PAYLOAD_TOO_LARGE.into_response();
    };
    let mut hash = Sha256::new();
    hash.update(parts.method.as_str());
    hash.update(parts.uri.path());
    hash.update(&body);
    let fingerprint: [u8; 32] = hash.finalize().into();
    {
        let mut shard = records
            .shard(&key)
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match shard.get(&key) {
            Some(Entry::InProgress) => return StatusCode::CONFLICT.into_response(),
            Some(Entry::Done {
                fingerprint: stored,
                status,
                headers,
                body,
            }) => {
                if *stored != fingerprint {
                    return StatusCode::UNPROCESSABLE_ENTITY.into_response();
                }
                let mut replay = Response::new(Body::from(body.clone()));
                *replay.status_mut() = *status;
                *replay.headers_mut() = headers.clone();
                replay
                    .headers_mut()
                    .insert("idempotent-replayed", HeaderValue::from_static("true"));
                return replay;
            }
            None => {
                shard.insert(key.clone(), Entry::InProgress);
            }
        }
    }
    let response = next.run(Request::from_parts(parts, Body::from(body))).await;
    let (parts, body) = response.into_parts();
    let Ok(body) = body
        .collect()
        .await
        .map(http_body_util::Collected::to_bytes)
    else {
        records
            .shard(&key)
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&key);
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    };
    records
        .shard(&key)
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .insert(
            key,
            Entry::Done {
                fingerprint,
                status: parts.status,
                headers: parts.headers.clone(),
                body: body.clone(),
            },
        );
    Response::from_parts(parts, Body::from(body))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use axum::routing::post;
    use tokio::sync::Notify;
    use tower::ServiceExt as _;

    /// A router counting its runs; a body of `hold` parks the handler until `release`.
    fn app() -> (Router, Arc<AtomicUsize>, Arc<Notify>) {
        let runs = Arc::new(AtomicUsize::new(0));
        let release = Arc::new(Notify::new());
        let (counted, held) = (Arc::clone(&runs), Arc::clone(&release));
        let router = Router::new().route(
            "/orders",
            post(move |body: Bytes| async move {
                let n = counted.fetch_add(1, Ordering::SeqCst) + 1;
                if body == "hold" {
                    held.notified().await;
                }
                (
                    StatusCode::CREATED,
                    format!("run {n}: {} bytes", body.len()),
                )
            }),
        );
        (layer(router), runs, release)
    }

    async fn send(
        app: &Router,
        key: Option<&str>,
        body: &'static str,
    ) -> (StatusCode, bool, Bytes) {
        let mut request = Request::post("/orders");
        if let Some(key) = key {
            request = request.header("idempotency-key", key);
        }
        let request = request.body(Body::from(body)).expect("request");
        let response = app.clone().oneshot(request).await.expect("infallible");
        let replayed = response.headers().contains_key("idempotent-replayed");
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        (status, replayed, body)
    }

    #[tokio::test]
    async fn the_floor_runs_once_replays_and_refuses_as_the_layer_does() {
        let (app, runs, release) = app();
        let first = send(&app, Some("k"), "abc").await;
        assert_eq!(
            first,
            (StatusCode::CREATED, false, Bytes::from("run 1: 3 bytes"))
        );
        let again = send(&app, Some("k"), "abc").await;
        assert_eq!(
            again,
            (StatusCode::CREATED, true, Bytes::from("run 1: 3 bytes"))
        );
        let other = send(&app, Some("k"), "abcd").await;
        assert_eq!(other.0, StatusCode::UNPROCESSABLE_ENTITY);
        let none = send(&app, None, "abc").await;
        assert_eq!(none.0, StatusCode::BAD_REQUEST);
        let next = send(&app, Some("k2"), "abc").await;
        assert_eq!(
            next,
            (StatusCode::CREATED, false, Bytes::from("run 2: 3 bytes"))
        );
        // A key whose handler is still running is a 409; once it answers, a replay.
        let held = tokio::spawn({
            let app = app.clone();
            async move { send(&app, Some("h"), "hold").await }
        });
        while runs.load(Ordering::SeqCst) < 3 {
            tokio::task::yield_now().await;
        }
        assert_eq!(send(&app, Some("h"), "hold").await.0, StatusCode::CONFLICT);
        release.notify_one();
        let first = held.await.expect("held request");
        assert_eq!(
            first,
            (StatusCode::CREATED, false, Bytes::from("run 3: 4 bytes"))
        );
        let again = send(&app, Some("h"), "hold").await;
        assert_eq!(
            again,
            (StatusCode::CREATED, true, Bytes::from("run 3: 4 bytes"))
        );
        assert_eq!(runs.load(Ordering::SeqCst), 3);
    }
}
