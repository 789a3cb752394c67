//! The `Idempotency-Key` layer on an axum app, with keys scoped per bearer principal.
//!
//! ```sh
//! cargo run -p idempotency-examples --example axum_app
//!
//! # first request: the handler runs (201, order o-1)
//! curl -i -X POST localhost:3001/orders -H 'Authorization: Bearer alice' \
//!      -H 'Idempotency-Key: 5b1c0a' -H 'Content-Type: application/json' -d '{"sku":"tea","qty":2}'
//! # the retry: the same 201 and body, `Idempotent-Replayed: true`, no new order
//! curl -i -X POST localhost:3001/orders -H 'Authorization: Bearer alice' \
//!      -H 'Idempotency-Key: 5b1c0a' -H 'Content-Type: application/json' -d '{"sku":"tea","qty":2}'
//! # same key, different body: 422. Another principal, same key: its own order.
//! curl -i localhost:3001/orders -H 'Authorization: Bearer alice'
//! ```
//!
//! The listen address comes from `LISTEN` (default `127.0.0.1:3001`). Swap `MemoryStore` for
//! `idempotency_redis::RedisStore` or `idempotency_kv_rest::KvRestStore` to share keys between
//! instances; nothing else changes.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::extract::State;
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::post;
use axum::{Json, Router};
use idempotency::memory::MemoryStore;
use idempotency::{Idempotency, Scope};
use idempotency_http::{IdempotencyLayer, ScopeRejection};
use serde::{Deserialize, Serialize};

#[derive(Deserialize)]
struct NewOrder {
    sku: String,
    qty: u32,
}

#[derive(Clone, Serialize)]
struct Order {
    id: String,
    sku: String,
    qty: u32,
}

#[derive(Clone, Default)]
struct Orders {
    next: Arc<AtomicU64>,
    all: Arc<tokio::sync::Mutex<Vec<Order>>>,
}

/// The verified principal's id, inserted by [`authenticate`].
#[derive(Clone)]
struct UserId(String);

/// Stand-in authentication: here the bearer token *is* the user name. A real app verifies the
/// credential (session, JWT...) and inserts the principal's id.
async fn authenticate(mut request: axum::extract::Request, next: Next) -> Response {
    let user = request
        .headers()
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .filter(|token| !token.is_empty())
        .map(|token| UserId(format!("user:{token}")));
    if let Some(user) = user {
        request.extensions_mut().insert(user);
    }
    next.run(request).await
}

/// Whose key is it? The authenticated principal's id, never the raw credential: the scope is
/// part of the store key (visible in the store, in tools and logs), and a credential rotates.
fn principal(parts: &http::request::Parts) -> Result<Scope, ScopeRejection> {
    parts
        .extensions
        .get::<UserId>()
        .map(|user| Scope::new(user.0.as_str()))
        .ok_or_else(|| ScopeRejection::unauthorized("send Authorization: Bearer <user>"))
}

/// The side effect: runs once per (principal, key), however often the client retries.
async fn create_order(
    State(orders): State<Orders>,
    Json(new): Json<NewOrder>,
) -> (StatusCode, Json<Order>) {
    let id = format!("o-{}", orders.next.fetch_add(1, Ordering::SeqCst) + 1);
    let order = Order {
        id,
        sku: new.sku,
        qty: new.qty,
    };
    orders.all.lock().await.push(order.clone());
    (StatusCode::CREATED, Json(order))
}

/// Not covered by the layer (GET is not in its default methods: POST, PUT, PATCH, DELETE).
async fn list_orders(State(orders): State<Orders>) -> Json<Vec<Order>> {
    Json(orders.all.lock().await.clone())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt().with_env_filter("info").init();

    // The three lines: an engine on a store, a layer with a scope, the layer on the routes.
    let engine = Idempotency::builder(MemoryStore::new()).build()?;
    let layer = IdempotencyLayer::builder(engine).scope(principal).build();
    let app = Router::new()
        .route("/orders", post(create_order).get(list_orders))
        .with_state(Orders::default())
        // `route_layer`: a 404 or 405 is answered without the layer and records nothing.
        .route_layer(layer)
        .layer(middleware::from_fn(authenticate));

    let listen = std::env::var("LISTEN").unwrap_or_else(|_| "127.0.0.1:3001".into());
    let listener = tokio::net::TcpListener::bind(&listen).await?;
    println!("listening on http://{}", listener.local_addr()?);
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}
