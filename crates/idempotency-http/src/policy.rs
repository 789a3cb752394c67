//! The policy types and defaults of the layer: which responses are stored, what happens to
//! bodies that cannot be kept, how JSON bodies are fingerprinted.

use http::{StatusCode, response};

/// Default header name (IETF draft-ietf-httpapi-idempotency-key-header).
pub const DEFAULT_HEADER: &str = "idempotency-key";

/// How a JSON request body is fingerprinted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum JsonFingerprint {
    /// The body's bytes as sent (the default): a retry must send the very same bytes, so a
    /// client that re-serialises a map with another key order gets `422`. Nothing is parsed.
    #[default]
    Bytes,
    /// The RFC 8785 JSON Canonicalization Scheme (JCS) form of the body, for requests whose
    /// media type is JSON (`application/json`, any `+json` type): object keys sorted, no
    /// insignificant whitespace, numbers in their shortest ECMAScript form (so `450`, `450.0`
    /// and `4.5e2` are one value).
    ///
    /// Only where that form is **lossless** for the body; otherwise the body counts by its
    /// bytes, as in [`JsonFingerprint::Bytes`] (so a changed request is never taken for the
    /// first one, at worst a re-serialised one gets `422`):
    /// - every number must denote exactly the value JCS writes for it: `9007199254740993`
    ///   (beyond 2^53), `12345678901234567890` or `0.10000000000000001` (more than 17
    ///   significant digits) would be written as another value, so such a body counts by its
    ///   bytes (`-0` is the value `0`, written `0`);
    /// - no object may have a member name twice (RFC 8785 requires I-JSON, RFC 7493 §2.3; a
    ///   parser keeps one of the two values, so `{"name":"Bronze","name":"Silver"}` would
    ///   fingerprint like `{"name":"Silver"}`);
    /// - the body must be JSON (RFC 8259) at all, in UTF-8.
    ///
    /// Each fallback is logged at debug level and counted in
    /// `idempotency_http_fingerprint_bytes_fallback_total` (label `reason`: `not_json`,
    /// `duplicate_name`, `inexact_number`).
    ///
    /// The media type counts by its essence in lower case plus its parameters other than
    /// `charset`, so `application/json`, `application/json; charset=utf-8` and
    /// `Application/JSON` fingerprint the same. JSON is UTF-8 (RFC 8259 §8.1): a JSON media
    /// type with another `charset` (`latin1`, `utf-16`...) is not canonicalised; its header
    /// and body count byte for byte. A non-JSON media type is fingerprinted exactly as in
    /// [`JsonFingerprint::Bytes`].
    Canonical,
}

/// What the layer records when a response body cannot be kept whole: it grew past the engine's
/// maximum outcome size, or it is a stream by nature (see [`LayerBuilder::stream_responses`](crate::LayerBuilder::stream_responses)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum OversizePolicy {
    /// Record the status and headers without the body (the default): the operation never runs
    /// again; retries get the status and headers, an empty body and
    /// `Idempotent-Body-Omitted: true`.
    #[default]
    OmitBody,
    /// Release the claim: a retry runs the operation again (for reads dressed as `POST`, or
    /// operations that are idempotent by themselves).
    Release,
}

/// The default stream predicate: `text/event-stream` (server-sent events), whose body is
/// endless or long-lived by nature and is never worth replaying.
pub fn default_is_stream(parts: &response::Parts) -> bool {
    parts
        .headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|essence| essence.trim().eq_ignore_ascii_case("text/event-stream"))
}

/// The default stored-status policy: keep every answer below 500 except the transient ones a
/// retry should re-run (408, 409, 425, 429). 5xx answers release the claim.
pub fn default_store_status(status: StatusCode) -> bool {
    status.as_u16() < 500 && !matches!(status.as_u16(), 408 | 409 | 425 | 429)
}
