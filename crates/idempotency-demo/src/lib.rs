//! # idempotency-demo
//!
//! A small shop API protected by the `Idempotency-Key` layer, on whichever store the environment
//! selects (memory by default; Redis with `REDIS_URL`; the Upstash / Vercel KV REST API with
//! `UPSTASH_REDIS_REST_URL` + `_TOKEN` or `KV_REST_API_URL` + `_TOKEN`). Run it with
//! `cargo run -p idempotency-demo`; see the README for curl lines.
//!
//! # The shop's data
//! In memory by default: a restart forgets the products and orders, while a shared store
//! (`REDIS_URL`, KV REST) keeps the recorded answers for the retention (24 h). After a restart a
//! retry of an earlier request is still replayed — `201`, `"version":1` — for a product the new
//! process does not have (`GET` answers 404), and an order on it is refused (404). That is the
//! store doing its job for a shop that lost its data; keep the shop in a database to keep both.
//! With `DATABASE_URL=postgres://…` or `sqlite://…` the products and
//! orders live in that database ([`Database`]: tables `demo_products`, `demo_orders`), one
//! transaction per mutating request. The idempotency records stay in the store the environment
//! selects (`DATABASE_URL` alone does not move them); with `IDEMPOTENCY_STORE=sql` they are in the
//! same database and every idempotent request **completes in the same transaction as its write**
//! (`TransactionalClaim`), so a crash anywhere leaves the order and its recorded answer together
//! or neither (`tests/crash.rs` proves it with SIGKILL storms). `DEMO_AFTER_WRITE_MS` then runs
//! inside the transaction; on other stores it runs after the commit, before the layer records.
//!
//! # Routes
//! Every route needs `Authorization: Bearer <user>` (the token *is* the user id; missing → 401).
//! The `PUT` and `POST` routes need an `Idempotency-Key`, scoped to that user. A path that
//! matches no route is a plain 404 and a method a route does not have a plain 405: neither needs
//! a key nor leaves a record (the layer is on each route's handlers, `MethodRouter::route_layer`).
//!
//! | route | body | answer |
//! |---|---|---|
//! | `PUT /api/products/{id}` | `{"name": str, "price": int}` | 201 created / 200 replaced; `version` +1 on every execution |
//! | `GET /api/products/{id}` | | 200, or 404 |
//! | `POST /api/orders` | `{"productId": str, "quantity": int}` | 201, a new `id` and `Location`; 404 for an unknown product |
//! | `PUT /api/orders/{id}/status` | `{"status": "PENDING" \| "PROCESSING" \| "SHIPPED" \| "DELIVERED" \| "CANCELLED"}` | 200, or 404 |
//! | `GET /api/orders` | | 200, all orders |
//! | `GET /api/internal/metrics/idempotency` | | 200 `{cacheHits, cacheMisses, cacheWrites, hitRate, ...}` for the `DEMO_ADMIN_TOKEN` bearer, else 403 |
//!
//! Answers use the envelope `{ "data": ..., "error": null | {"code", "message"}, "meta": {...} }`;
//! invalid JSON or fields get 400 with `error` set. The idempotency layer's own answers (missing
//! or malformed key 400, reused key 422, in progress 409, store down 503) are RFC 9457
//! `application/problem+json`, as DESIGN §5 says; replays carry `Idempotent-Replayed: true`.
//! So is the shop's own 503 when its database (`DATABASE_URL`) fails or is down (with
//! `Retry-After` and `"code": "DATABASE_UNAVAILABLE"`): every 5xx a client sees is problem+json.
//!
//! # Layout
//! - [`app`]: the router with authentication outside and the idempotency layer inside;
//!   [`unprotected_app`]: the same routes without the layer (what `idempotency-probe` must
//!   catch);
//! - [`AppState`]: the engine, the shop and the admin token; [`serve`]: serve a router until a
//!   shutdown future completes; [`shutdown_signal`]: Ctrl-C or SIGTERM.
//! - [`SlowWork`] (`DEMO_WORK_MS`, `DEMO_AFTER_WRITE_MS`): simulated time inside each mutating
//!   handler before and after its write; [`ExecutionLog`] (`DEMO_EXECUTION_LOG`): one durable
//!   line per handler execution. Both exist for fault-injection runs (`cargo xtask chaos`),
//!   which land kills and store outages between the side effect and the completion.

#![deny(missing_docs)]

mod auth;
mod db;
mod envelope;
mod limits;
mod model;
mod shop;
mod work;

pub use limits::{BodyTimeout, LimitArgs, ServerLimits, serve_with_limits};

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::Router;
use axum::middleware;
use axum::routing::{MethodRouter, get, post, put};
use idempotency::http::{IdempotencyLayer, JsonFingerprint};
use idempotency::{AnyStore, Idempotency};
use parking_lot::Mutex;

pub use auth::{Principal, authenticate, principal_scope};
pub use db::Database;
pub use envelope::ApiError;
pub use model::{Order, OrderStatus, Product};
pub use work::{ExecutionLog, SlowWork};

/// Everything the handlers share. Cheap to clone.
#[derive(Clone, Debug)]
pub struct AppState {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    engine: Idempotency<AnyStore>,
    shop: Mutex<shop::Shop>,
    admin_token: Option<String>,
    handler_runs: AtomicU64,
    work: SlowWork,
    execution_log: Option<ExecutionLog>,
    db: Option<Database>,
}

impl AppState {
    /// State over `engine`; `admin_token` (from `DEMO_ADMIN_TOKEN`) unlocks the metrics route,
    /// which is closed to everyone when it is `None`.
    pub fn new(engine: Idempotency<AnyStore>, admin_token: Option<String>) -> Self {
        Self::with_work(engine, admin_token, SlowWork::default(), None)
    }

    /// [`AppState::new`] plus simulated slow work in every mutating handler and, when given, a
    /// journal of every handler execution (see [`SlowWork`] and [`ExecutionLog`]).
    pub fn with_work(
        engine: Idempotency<AnyStore>,
        admin_token: Option<String>,
        work: SlowWork,
        execution_log: Option<ExecutionLog>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                engine,
                shop: Mutex::new(shop::Shop::default()),
                admin_token: admin_token.filter(|t| !t.is_empty()),
                handler_runs: AtomicU64::new(0),
                work,
                execution_log,
                db: None,
            }),
        }
    }

    /// [`AppState::with_work`] with the shop kept in `db` (`DATABASE_URL`) instead of memory.
    /// When the engine's store is the SQL store on that database, every idempotent request
    /// completes in the same transaction as its write.
    pub fn with_database(
        engine: Idempotency<AnyStore>,
        admin_token: Option<String>,
        work: SlowWork,
        execution_log: Option<ExecutionLog>,
        db: Database,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                engine,
                shop: Mutex::new(shop::Shop::default()),
                admin_token: admin_token.filter(|t| !t.is_empty()),
                handler_runs: AtomicU64::new(0),
                work,
                execution_log,
                db: Some(db),
            }),
        }
    }

    /// The shop's database, when it is not kept in memory.
    pub fn db(&self) -> Option<&Database> {
        self.inner.db.as_ref()
    }

    /// The idempotency engine.
    pub fn engine(&self) -> &Idempotency<AnyStore> {
        &self.inner.engine
    }

    /// How many times a mutating handler ran its side effect (replays do not count).
    pub fn handler_runs(&self) -> u64 {
        self.inner.handler_runs.load(Ordering::Relaxed)
    }

    /// A product, as the shop holds it now.
    pub fn product(&self, id: &str) -> Option<Product> {
        self.inner.shop.lock().products.get(id).cloned()
    }

    pub(crate) fn shop(&self) -> &Mutex<shop::Shop> {
        &self.inner.shop
    }

    /// The simulated slow work.
    pub fn work(&self) -> SlowWork {
        self.inner.work
    }

    /// Count one execution of a mutating handler's side effect and journal it (when an
    /// [`ExecutionLog`] is configured).
    pub(crate) fn count_run(&self, run: &shop::Run<'_>, resource: &str) {
        self.inner.handler_runs.fetch_add(1, Ordering::Relaxed);
        if let Some(log) = &self.inner.execution_log {
            log.record(run.key, run.principal, run.route, resource);
        }
    }

    pub(crate) fn is_admin(&self, token: &str) -> bool {
        self.inner
            .admin_token
            .as_deref()
            .is_some_and(|admin| constant_time_eq(admin.as_bytes(), token.as_bytes()))
    }
}

/// Compare without an early exit on the first differing byte (the length still shows).
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The routes; `protect` is applied to each route's own handlers (`MethodRouter::route_layer`),
/// so neither a path that matches no route (the 404 fallback) nor a method a route does not
/// have (its 405) goes through it. `Router::route_layer` would still wrap the 405s: it layers
/// each route's whole method router, fallback included.
fn routes(protect: impl Fn(MethodRouter<AppState>) -> MethodRouter<AppState>) -> Router<AppState> {
    Router::new()
        .route(
            "/api/products/{id}",
            protect(put(shop::put_product).get(shop::get_product)),
        )
        .route(
            "/api/orders",
            protect(post(shop::create_order).get(shop::list_orders)),
        )
        .route(
            "/api/orders/{id}/status",
            protect(put(shop::set_order_status)),
        )
        .route("/api/internal/metrics/idempotency", get(shop::metrics))
        .fallback(shop::not_found)
}

/// The shop API: authentication (outermost), then the idempotency layer on the routes' `POST`,
/// `PUT`, `PATCH` and `DELETE` handlers (the layer's default methods; key required, scoped per
/// principal), then the handlers. The layer is on each route's handlers only: a path that
/// matches no route (404) or a method a route does not have (405) is answered without it and
/// records nothing.
pub fn app(state: AppState) -> Router {
    let layer = IdempotencyLayer::builder(state.engine().clone())
        .scope(principal_scope)
        // A retry that re-serialises the same JSON (key order, spacing) is the same request.
        .fingerprint_json(JsonFingerprint::Canonical)
        .build();
    routes(|handlers| handlers.route_layer(layer.clone()))
        .layer(middleware::from_fn(authenticate))
        .with_state(state)
}

/// The same routes and authentication **without** the idempotency layer: a deliberately broken
/// service on which every retry runs again. It exists to show what `idempotency-probe` reports
/// for such a service (and to test that it does); never deploy it.
pub fn unprotected_app(state: AppState) -> Router {
    routes(|handlers| handlers)
        .layer(middleware::from_fn(authenticate))
        .with_state(state)
}

/// Serve `router` on `listener` with the default [`ServerLimits`] (header read timeout 10 s,
/// body read timeout 30 s, idle keep-alive timeout 5 s, at most 1024 connections) until
/// `shutdown` completes, then finish the requests in flight. See [`serve_with_limits`].
///
/// # Errors
/// An I/O error from the listener.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_with_limits(listener, router, ServerLimits::default(), shutdown).await
}

/// Completes on SIGINT (Ctrl-C) or SIGTERM: core's helper, shared with the KV REST gateway.
pub use idempotency_core::shutdown_signal;
