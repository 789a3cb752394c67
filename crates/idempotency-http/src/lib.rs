//! # idempotency-http
//!
//! Tower middleware for the `Idempotency-Key` header, following
//! [draft-ietf-httpapi-idempotency-key-header](https://datatracker.ietf.org/doc/draft-ietf-httpapi-idempotency-key-header/)
//! and Stripe's conventions, on the engine of [`idempotency_core`]. Works as axum middleware, on
//! hyper, or on any tower stack (on a tokio runtime).
//!
//! ```
//! use axum::{Router, routing::post};
//! use idempotency_core::{Idempotency, Scope};
//! use idempotency_http::{IdempotencyLayer, JsonFingerprint, ScopeRejection};
//! use idempotency_memory::MemoryStore;
//!
//! /// The verified principal, put into the request extensions by your authentication layer
//! /// (which runs outside this one).
//! #[derive(Clone)]
//! struct UserId(String);
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let engine = Idempotency::builder(MemoryStore::new()).build()?;
//! let layer = IdempotencyLayer::builder(engine)
//!     // Whose key is it? The authenticated principal's id — never the raw credential.
//!     .scope(|parts: &http::request::Parts| {
//!         parts.extensions.get::<UserId>()
//!             .map(|user| Scope::new(user.0.as_str()))
//!             .ok_or_else(|| ScopeRejection::unauthorized("sign in first"))
//!     })
//!     // Retries that re-serialise the same JSON (another key order, spacing) still match.
//!     .fingerprint_json(JsonFingerprint::Canonical)
//!     .build();
//! let app: Router = Router::new().route("/orders", post(|| async { "created" })).route_layer(layer);
//! # let _ = app; Ok(()) }
//! ```
//!
//! **Scope by the principal's id, not by its credential.** The scope is part of the store key:
//! it shows in the store, in `idempotency-cli inspect`, in traces and debug logs, so a bearer
//! token used as the scope leaks the token to anyone who reads those. A credential also changes
//! when it is refreshed (a retry after the refresh would run the operation again) and one
//! principal may hold several. And only a *verified* identity may choose whose records a request
//! can replay: read it from what your authentication layer established, not from a header.
//!
//! # What clients see
//! | situation | response |
//! |---|---|
//! | key missing on a covered method (when required) | 400, `application/problem+json` (`missing-key`) |
//! | key malformed (length, charset, bad sf-string or parameter) | 400 (`invalid-key`, the detail says what is wrong) |
//! | more than one `Idempotency-Key` header, or several keys in one (`a, b`, `"a", "b"`) | 400 (`multiple-keys`) |
//! | same key, different request | 422 (`key-reused`) |
//! | same key, first attempt in progress | 409 + `Retry-After` (or the engine waits, if configured) |
//! | same key, completed | the stored response + `Idempotent-Replayed: true` |
//! | same key, completed, stored `Content-Encoding` not in the retry's `Accept-Encoding` | 406 (`encoding-not-acceptable`) |
//! | store unavailable, fail closed | 503 + `Retry-After` |
//! | request body over the limit | 413 (after draining the body, bounded: the client sees the 413, not a broken pipe) |
//! | request body cut or malformed | 400 (`body-unreadable`); no claim is made |
//! | request body timed out (the body's error is, or is caused by, an `std::io::Error` of kind `TimedOut`: how a server's body read timeout should fail it) | 408 (`body-timeout`) and `Connection: close`; no claim is made |
//! | scope extractor refuses | its status (e.g. 401) |
//!
//! Problem `type` URIs are [`PROBLEM_TYPE_BASE`] followed by `missing-key`, `invalid-key`,
//! `multiple-keys`, `key-reused`, `in-progress`, `store-unavailable`, `body-too-large`,
//! `body-unreadable`, `body-timeout`, `encoding-not-acceptable`, `scope-rejected`, `response-lost`,
//! `shutting-down` or `internal`.
//!
//! # The key
//! The header carries the key as an RFC 8941 sf-string (`"8e03978e-40d5"`, the IETF draft's
//! form: printable ASCII including space, `\"` and `\\` escapes) or bare (`8e03978e-40d5`,
//! Stripe's form: visible ASCII); both mean the same key, so a client that quotes and a retry
//! that does not share one record. RFC 8941 parameters after a quoted key are accepted and
//! ignored (`"8e03978e-40d5";v=1` is the key `8e03978e-40d5`, the same record as without them);
//! a list of keys is refused (`multiple-keys`). See [`IdempotencyKey::from_header_value`].
//!
//! # What is stored
//! Responses whose status passes the policy ([`default_store_status`]: below 500 except 408,
//! 409, 425, 429) are stored with their status, headers (never hop-by-hop ones, nor `Set-Cookie`
//! unless [`LayerBuilder::store_set_cookie`]) and body. Other responses and handler errors
//! release the claim so a retry runs again; a panic too (the panic is resumed on the request's
//! side: put a panic-catching layer such as tower-http's `CatchPanicLayer` outside this one to
//! answer 500). A handler overrides that per response with [`SideEffects`] (a response
//! extension) or the request's [`SideEffectsMarker`]: `Committed` keeps even a 5xx (and turns a
//! later panic or error into a stored 500 `response-lost`), `None` releases even a 2xx. See
//! [`SideEffects`] for the trade-off against Stripe's "store the 500 once execution began".
//!
//! # Streaming and memory
//! The response head and every body chunk reach the client as the handler produces them; the
//! layer keeps a copy of at most the engine's maximum outcome size (memory per request is bounded
//! by that cap, whatever the body's size). A body that outgrows the cap stops being copied and is
//! recorded by the [`OversizePolicy`] (default: without its body — retries get the status and
//! headers plus `Idempotent-Body-Omitted: true`, and the operation does not run again).
//! Responses that are streams by nature ([`default_is_stream`]: `text/event-stream`, or your
//! predicate in [`LayerBuilder::stream_responses`]) are never copied: they are recorded the same
//! way when their head is ready, so a retry gets the head without the events.
//!
//! The record is written when the body ends, before its end reaches the client: a body of known
//! length within the cap that arrives as one frame (axum's `Json`, `String`...) is recorded before
//! the head is sent; otherwise the last chunk of a body of known length, or the end of a chunked
//! one, is held until the record is written. A client that has the whole answer and retries at
//! once gets the replay, not "in progress". If the body fails midway,
//! the client's connection is aborted and the claim is released (or, after
//! `SideEffects::Committed`, a 500 `response-lost` is recorded).
//!
//! # Completion in the handler's own transaction
//! Every protected request carries its claim as a [`TransactionalClaim`] extension. A handler
//! whose side effect is a database write can complete **in that write's transaction** (with a
//! store that can write there: `idempotency_sql`'s `write_in`):
//! [`TransactionalClaim::prepare`] encodes the exact response it will return and gives a
//! [`PendingCompletion`](idempotency_core::PendingCompletion) to write in the transaction; the
//! response it gives back is marked, and the layer then writes no second completion. Retries
//! replay those bytes. A handler that took its claim and then fails, panics or rolls back
//! releases it (the guard or pending completion is dropped), so the retry runs again. See
//! `docs/axum.md`.
//!
//! # Cancellation
//! Once the claim is taken, the handler and the recording run inside the request's own future
//! (no task per request, no hand-off to another worker thread), and become a tokio task of their
//! own the moment that future is dropped before they end. A client that disconnects (or a
//! timeout layer that drops the request future) during the handler or mid-body cancels neither: the handler finishes, the response
//! body is drained into the bounded copy and recorded, and the client's retry gets the replay
//! (with waiting for in-progress attempts on, it waits for it; else it gets 409 until then). If the copy has
//! already outgrown the cap when the client leaves, the rest of the body is not read and the
//! record follows the [`OversizePolicy`]; a stream response is dropped at once. Only a request
//! that never reached the handler leaves no claim behind: the client left while its body was
//! being read, or while the claim was on its way to the store (that claim is released in the
//! background once the store answers).
//!
//! # Fingerprints
//! The fingerprint covers the method, path and query, `Content-Type` and body; add headers with
//! [`LayerBuilder::fingerprint_headers`]. By default the body counts byte for byte;
//! [`JsonFingerprint::Canonical`] uses its RFC 8785 form instead (and normalises JSON media
//! types) where that form is lossless, a body that is not UTF-8 JSON, repeats a member name or
//! has a number JCS would change (beyond 2^53, past 17 digits) still counting by its bytes;
//! [`LayerBuilder::fingerprint_body_with`]
//! takes your own canonical form. The request body is buffered (up to
//! [`LayerBuilder::max_request_body`]) and handed on to the inner service, whose request body
//! type must be buildable from `Bytes` (axum's `Body`, `Full<Bytes>`...).
//!
//! # Metrics
//! Besides the engine's: `idempotency_http_client_gone_total` (responses recorded after their
//! client left), `idempotency_http_streams_not_recorded_total`,
//! `idempotency_http_body_omitted_total`, `idempotency_http_replay_encoding_refused_total` and
//! `idempotency_http_fingerprint_bytes_fallback_total{reason}` (canonical-mode JSON bodies
//! fingerprinted by their bytes).
//!
//! # Layout
//! - `layer`: [`IdempotencyLayer`] and its [`LayerBuilder`]; `settings`: what the builder sets,
//!   shared by every service; `policy`: the policy types and defaults ([`OversizePolicy`],
//!   [`JsonFingerprint`], [`default_store_status`], [`default_is_stream`]); `scope`: the
//!   [`ScopeExtractor`] and its refusal.
//! - `service`: [`IdempotencyService`]: `decide` (pure: pass through, answer at once, or protect)
//!   then one async path (body, fingerprint, claim, then the handler and its recording in
//!   `record`, detached into a task if the request future is dropped first).
//! - `fingerprint`, `problem` (RFC 9457 answers), `stored` (the stored-response codec),
//!   `encoding` (`Accept-Encoding` on replay), `effects` ([`SideEffects`]), `transactional`
//!   ([`TransactionalClaim`]), `body` ([`ResponseBody`]).
//!
//! # Feature flags
//! None: the layer depends on `http`, `http-body`, `tower-layer`/`tower-service` and tokio (to
//! detach a recording whose request went away), so it fits any tower-based server without pulling in a framework.
//!
//! [`IdempotencyKey::from_header_value`]: idempotency_core::IdempotencyKey::from_header_value

#![deny(missing_docs)]

mod body;
mod decide;
mod effects;
mod encoding;
mod fingerprint;
mod layer;
mod policy;
mod problem;
mod record;
mod scope;
mod service;
mod settings;
mod stored;
mod transactional;

pub use body::{BoxError, ResponseBody};
pub use effects::{SideEffects, SideEffectsMarker};
pub use fingerprint::canonical_json;
pub use layer::{IdempotencyLayer, LayerBuilder};
pub use policy::{
    DEFAULT_HEADER, JsonFingerprint, OversizePolicy, default_is_stream, default_store_status,
};
pub use problem::PROBLEM_TYPE_BASE;
pub use scope::{GlobalScope, NoScope, ScopeExtractor, ScopeRejection};
pub use service::{BODY_OMITTED_HEADER, IdempotencyService, REPLAYED_HEADER};
pub use stored::is_hop_by_hop;
pub use transactional::{TransactionalClaim, TransactionalError};

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
