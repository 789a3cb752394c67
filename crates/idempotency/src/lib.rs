//! # idempotency
//!
//! Make retried requests safe: a retried request (a double-clicked "Pay", a client retry after a
//! timeout, a re-invoked serverless function) runs its side effect **once**, and every retry gets
//! the first response back.
//!
//! This facade re-exports [`idempotency_core`] (the engine, keys, fingerprints, the store trait)
//! and, behind features, the stores and the HTTP layer; [`store_from_env`] picks the store from
//! the environment so the same binary runs on the embedded store in development and on Redis or
//! the KV REST API in production.
//!
//! ```
//! use idempotency::{Fingerprint, Idempotency, IdempotencyKey, RunError, Scope};
//! use idempotency::memory::MemoryStore;
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let engine = Idempotency::builder(MemoryStore::new()).build()?;
//! let key = IdempotencyKey::new("charge-order-17")?;
//! let charge = || async { Ok::<_, std::io::Error>(1999u64) }; // the side effect
//! let first: Result<u64, RunError<_, _>> = engine.run(&Scope::global(), &key, Fingerprint::of("order-17"), charge).await;
//! let retry: Result<u64, RunError<_, _>> = engine.run(&Scope::global(), &key, Fingerprint::of("order-17"), charge).await;
//! assert_eq!(first?, retry?); // the retry replayed; the charge ran once
//! # Ok(()) }
//! ```
//!
//! # Axum in three lines
//! With the `http` feature: an engine on a store, a layer with a scope (whose key is it?), the
//! layer on the routes. More in the repository's `docs/axum.md` and `examples/axum_app.rs`.
//!
//! ```
//! # #[cfg(all(feature = "http", feature = "memory"))] {
//! use axum::{Router, routing::post};
//! use idempotency::http::{IdempotencyLayer, ScopeRejection};
//! use idempotency::{Idempotency, Scope, memory::MemoryStore};
//!
//! /// The verified principal's id, inserted by your authentication middleware.
//! #[derive(Clone)]
//! struct UserId(String);
//!
//! /// The authenticated principal owns the key: its id, never the raw credential (the scope is
//! /// part of the store key, visible in the store and in logs; credentials rotate).
//! fn principal(parts: &axum::http::request::Parts) -> Result<Scope, ScopeRejection> {
//!     parts.extensions.get::<UserId>().map(|user| Scope::new(user.0.as_str()))
//!         .ok_or_else(|| ScopeRejection::unauthorized("sign in first"))
//! }
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // In production: `Idempotency::builder(idempotency::store_from_env().await?)`.
//! let engine = Idempotency::builder(MemoryStore::new()).build()?;
//! let layer = IdempotencyLayer::builder(engine).scope(principal).build();
//! let app: Router = Router::new().route("/orders", post(|| async { "created" })).route_layer(layer);
//! # let _ = app; Ok(()) }
//! # main().unwrap() }
//! ```
//!
//! # Store selection
//! [`store_from_env`] returns an [`AnyStore`] (an [`IdempotencyStore`] delegating to whichever
//! store was chosen) following DESIGN §4: `UPSTASH_REDIS_REST_URL` + `_TOKEN` or
//! `KV_REST_API_URL` + `KV_REST_API_TOKEN` → KV REST; `REDIS_URL` or `KV_URL` → Redis; nothing →
//! memory, logged as a warning, or [`StoreSelectionError::DistributedStoreRequired`] under
//! [`StoreSelection::RequireDistributed`]. [`plan_store`] makes the same choice from any lookup
//! function, without I/O (for tests and for config systems other than the environment).
//! [`StoreDescription`] says what was chosen with secrets redacted; log that, never the URL.
//! (Available when at least one store feature is on.)
//!
//! # Feature flags
//! - `memory` (default): [`memory::MemoryStore`], the embedded store for development, tests and
//!   single-instance services.
//! - `redis`: [`redis`], the Redis / Valkey / Redis Cluster store; `redis-tls` adds `rediss://`.
//! - `kv-rest`: [`kv_rest`], the Upstash / Vercel KV REST API store.
//! - `sql`: [`sql`], the Postgres and SQLite store (`sqlx`) whose completions can commit in the
//!   application's own transaction; `IDEMPOTENCY_STORE=sql` selects it on `DATABASE_URL` (the only
//!   way: `DATABASE_URL` alone never moves the records).
//! - `http`: [`http`], the tower / axum `Idempotency-Key` middleware.
//!
//! # Crates
//! | crate | what |
//! |---|---|
//! | `idempotency-core` | traits, record protocol, engine (no I/O) |
//! | `idempotency-memory` | embedded store |
//! | `idempotency-redis` | Redis / Valkey / Redis Cluster store |
//! | `idempotency-kv-rest` | Upstash / Vercel KV REST store |
//! | `idempotency-sql` | Postgres / SQLite store, transactional completion |
//! | `idempotency-http` | tower / axum layer |
//! | `idempotency-testkit` | behaviour suite every store passes |

#![deny(missing_docs)]
// The feature list links each store's module; a build without that feature has no such module
// (docs.rs builds with every feature: `package.metadata.docs.rs`).
#![cfg_attr(
    not(all(
        feature = "memory",
        feature = "redis",
        feature = "kv-rest",
        feature = "sql",
        feature = "http"
    )),
    allow(rustdoc::broken_intra_doc_links)
)]

#[cfg(any(feature = "memory", feature = "redis", feature = "kv-rest"))]
mod select;
mod settings;

pub use idempotency_core::*;
#[cfg(any(feature = "memory", feature = "redis", feature = "kv-rest"))]
pub use select::{
    AnyStore, BackendKind, DATABASE_URL_ENV_VAR, FromEnvError, REDIS_CLUSTER_ENV_VAR,
    REDIS_ENV_VARS, REST_ENV_PAIRS, STORE_ENV_VAR, StoreDescription, StorePlan, StoreSelection,
    StoreSelectionError, engine_from_env, plan_store, redact_url, store_from_env,
    store_from_env_with, store_from_env_with_timeout, store_from_lookup,
    store_from_lookup_with_timeout,
};
pub use settings::{
    EnvSettings, FAILURE_POLICY_ENV, LEASE_ENV, RETENTION_ENV, STORE_TIMEOUT_ENV, SettingsError,
    WAIT_IN_PROGRESS_ENV,
};

/// The embedded in-memory store.
#[cfg(feature = "memory")]
pub mod memory {
    pub use idempotency_memory::{
        Clock, EVICTIONS_METRIC, ManualClock, MemoryStore, MemoryStoreBuilder, SystemClock,
    };
}

/// The Redis / Valkey / Redis Cluster store (`idempotency-redis`).
#[cfg(feature = "redis")]
pub mod redis {
    pub use idempotency_redis::*;
}

/// The Upstash / Vercel KV REST API store (`idempotency-kv-rest`).
#[cfg(feature = "kv-rest")]
pub mod kv_rest {
    pub use idempotency_kv_rest::*;
}

/// The Postgres / SQLite store with completion inside the application's transaction
/// (`idempotency-sql`; feature `sql` enables both databases).
#[cfg(feature = "sql")]
pub mod sql {
    pub use idempotency_sql::*;
}

/// The tower / axum `Idempotency-Key` middleware (`idempotency-http`).
#[cfg(feature = "http")]
pub mod http {
    pub use idempotency_http::*;
}
