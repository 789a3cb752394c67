//! # idempotency-http
//!
//! Tower middleware for the `Idempotency-Key` header, following
//! [draft-ietf-httpapi-idempotency-key-header](https://datatracker.ietf.org/doc/draft-ietf-httpapi-idempotency-key-header/)
//! and Stripe's conventions, on the engine of [`idempotency_core`]. Works as axum middleware, on
//! hyper, or on any tower stack.
//!
//! ```
//! use axum::{Router, routing::post};
//! use idempotency_core::{Idempotency, Scope};
//! use idempotency_http::{IdempotencyLayer, ScopeRejection};
//! use idempotency_memory::MemoryStore;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let engine = Idempotency::builder(MemoryStore::new()).build()?;
//! let layer = IdempotencyLayer::builder(engine)
//!     // Whose key is it? Here: the bearer token's principal (use your auth's extension).
//!     .scope(|parts: &http::request::Parts| {
//!         parts.headers.get("authorization")
//!             .and_then(|v| v.to_str().ok())
//!             .map(|v| Scope::new(v.trim_start_matches("Bearer ")))
//!             .ok_or_else(|| ScopeRejection::unauthorized("sign in first"))
//!     })
//!     .build();
//! let app: Router = Router::new().route("/orders", post(|| async { "created" })).layer(layer);
//! # let _ = app; Ok(()) }
//! ```
//!
//! # What clients see
//! | situation | response |
//! |---|---|
//! | key missing on a covered method (when required) | 400, `application/problem+json` |
//! | key malformed (length, charset) | 400 |
//! | same key, different request | 422 |
//! | same key, first attempt in flight | 409 + `Retry-After` (or the engine waits, if configured) |
//! | same key, completed | the stored response + `Idempotent-Replayed: true` |
//! | store unavailable, fail closed | 503 + `Retry-After` |
//! | request body over the limit | 413 |
//! | scope extractor refuses | its status (e.g. 401) |
//!
//! Problem `type` URIs are [`PROBLEM_TYPE_BASE`] followed by `missing-key`, `invalid-key`,
//! `key-reused`, `in-flight`, `store-unavailable`, `body-too-large`, `scope-rejected`,
//! `response-failed` or `internal`.
//!
//! # What is stored
//! Responses whose status passes the policy ([`default_store_status`]: below 500 except 408,
//! 409, 425, 429) are stored with their status, headers (never hop-by-hop ones, nor `Set-Cookie`
//! unless [`LayerBuilder::store_set_cookie`]) and body. Other responses, handler errors and
//! panics release the claim so a retry runs again (put a panic-catching layer such as
//! tower-http's `CatchPanicLayer` outside this one to answer 500). A response too large for the
//! engine's maximum outcome size is recorded without its body: retries get the status and
//! headers plus `Idempotent-Body-Omitted: true`, and the operation does not run again.
//!
//! The fingerprint covers the method, path and query, `Content-Type` and body; add headers with
//! [`LayerBuilder::fingerprint_headers`] or canonicalise the body with
//! [`LayerBuilder::fingerprint_body_with`]. The request body is buffered (up to
//! [`LayerBuilder::max_request_body`]) and handed on to the inner service, whose request body
//! type must be buildable from `Bytes` (axum's `Body`, `Full<Bytes>`...).
//!
//! # Feature flags
//! None: the layer depends only on `http`, `http-body` and `tower-layer`/`tower-service`, so it
//! fits any tower-based server without pulling in a framework.

#![deny(missing_docs)]

mod body;
mod layer;
mod problem;
mod service;
mod stored;

pub use body::{BoxError, ResponseBody};
pub use layer::{
    DEFAULT_HEADER, GlobalScope, IdempotencyLayer, LayerBuilder, NoScope, ScopeExtractor,
    ScopeRejection, default_store_status,
};
pub use problem::PROBLEM_TYPE_BASE;
pub use service::{BODY_OMITTED_HEADER, IdempotencyService, REPLAYED_HEADER};
pub use stored::is_hop_by_hop;

/// The stored-response decoder, for the fuzz targets in `fuzz/` (feature `fuzzing`). Not a
/// stable API.
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing {
    use bytes::Bytes;
    use idempotency_core::CorruptRecord;

    use crate::stored::StoredResponse;

    /// Decode `bytes` as a stored response; when that succeeds, encode what was decoded and
    /// decode it again. `Ok(true)` when the second decode equals the first.
    ///
    /// # Errors
    /// The first decode's [`CorruptRecord`].
    pub fn stored_response_round_trip(bytes: &[u8]) -> Result<bool, CorruptRecord> {
        let decoded = StoredResponse::decode(&Bytes::copy_from_slice(bytes))?;
        Ok(StoredResponse::decode(&decoded.encode()).as_ref() == Ok(&decoded))
    }
}
