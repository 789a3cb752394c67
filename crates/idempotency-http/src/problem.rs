//! RFC 9457 `application/problem+json` responses for the answers the layer gives itself.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use idempotency_core::IdempotencyError;

/// Base of the `type` URIs of our problems (documentation anchors, stable across versions).
pub const PROBLEM_TYPE_BASE: &str = "https://docs.rs/idempotency-http/latest/idempotency_http/#";

/// A problem answer: status, a `type` slug, a title and a detail.
#[derive(Debug, Clone)]
pub(crate) struct Problem {
    pub(crate) status: StatusCode,
    pub(crate) slug: &'static str,
    pub(crate) title: &'static str,
    pub(crate) detail: String,
    pub(crate) retry_after: Option<Duration>,
    pub(crate) close: bool,
}

impl Problem {
    pub(crate) fn new(
        status: StatusCode,
        slug: &'static str,
        title: &'static str,
        detail: impl Into<String>,
    ) -> Self {
        Self {
            status,
            slug,
            title,
            detail: detail.into(),
            retry_after: None,
            close: false,
        }
    }

    /// Ask the server to close the connection after this answer (`Connection: close`).
    pub(crate) fn close_connection(mut self, close: bool) -> Self {
        self.close = close;
        self
    }

    pub(crate) fn multiple_keys(header: &str, count: usize) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "multiple-keys",
            "Idempotency key ambiguous",
            format!("the request carries {count} `{header}` headers; send exactly one key"),
        )
    }

    pub(crate) fn body_too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body-too-large",
            "Request body too large",
            format!("idempotent requests may carry at most {limit} bytes"),
        )
    }

    pub(crate) fn encoding_not_acceptable(coding: &str) -> Self {
        Self::new(
            StatusCode::NOT_ACCEPTABLE,
            "encoding-not-acceptable",
            "Stored response encoding not acceptable",
            format!(
                "the stored response for this idempotency key is `{coding}`-encoded and this \
                 request's Accept-Encoding does not allow it; retry accepting `{coding}` (the \
                 server should compress outside the idempotency layer)"
            ),
        )
    }

    /// The response body failed before anything was sent.
    pub(crate) fn response_failed() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "response-failed",
            "Response failed",
            "the response could not be produced; retry with the same key",
        )
    }

    /// Recorded for retries when a handler failed after marking a committed side effect.
    pub(crate) fn response_lost() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "response-lost",
            "Operation ran, response lost",
            "the operation for this idempotency key ran and changed state, but its response \
             failed; it will not run again under this key",
        )
    }

    pub(crate) fn shutting_down() -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting-down",
            "Server shutting down",
            "the server stopped before this request was answered; retry with the same key",
        )
        .retry_after(idempotency_core::DEFAULT_RETRY_AFTER)
    }

    pub(crate) fn no_runtime() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "Idempotency layer misconfigured",
            "the idempotency layer needs a tokio runtime; the request was not processed",
        )
    }

    pub(crate) fn retry_after(mut self, after: Duration) -> Self {
        self.retry_after = Some(after);
        self
    }

    pub(crate) fn missing_key(header: &str) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "missing-key",
            "Idempotency key missing",
            format!("this endpoint requires an `{header}` header (e.g. a UUID) on every request"),
        )
    }

    pub(crate) fn from_engine(error: &IdempotencyError) -> Self {
        match error {
            IdempotencyError::InvalidKey(e) => {
                Self::new(StatusCode::BAD_REQUEST, "invalid-key", "Idempotency key invalid", e.to_string())
            }
            IdempotencyError::InProgress { retry_after } => Self::new(
                StatusCode::CONFLICT,
                "in-progress",
                "Request in progress",
                "a request with this idempotency key is still being processed; retry later",
            )
            .retry_after(*retry_after),
            IdempotencyError::FingerprintMismatch => Self::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "key-reused",
                "Idempotency key reused",
                "this idempotency key was already used with a different request; use a new key",
            ),
            IdempotencyError::StoreUnavailable(_) => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "store-unavailable",
                "Idempotency store unavailable",
                "the request was not processed because its idempotency could not be guaranteed; retry later",
            )
            .retry_after(error.retry_after().unwrap_or(idempotency_core::DEFAULT_RETRY_AFTER)),
            _ => Self::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "Idempotency check failed",
                "the stored result of this idempotency key could not be read",
            ),
        }
    }

    /// The RFC 9457 JSON object, members in name order (`detail`, `status`, `title`, `type`),
    /// written straight into one buffer: no intermediate `serde_json::Value` map (a 409 or 422
    /// is a hot path under duplicate storms).
    fn body(&self) -> Bytes {
        let mut out = Vec::with_capacity(
            PROBLEM_TYPE_BASE.len() + self.slug.len() + self.title.len() + self.detail.len() + 64,
        );
        out.extend_from_slice(b"{\"detail\":");
        json_string(&mut out, &self.detail);
        out.extend_from_slice(b",\"status\":");
        out.extend_from_slice(self.status.as_str().as_bytes());
        out.extend_from_slice(b",\"title\":");
        json_string(&mut out, self.title);
        out.extend_from_slice(b",\"type\":\"");
        // Both parts are fixed ASCII without quotes or backslashes (tested).
        out.extend_from_slice(PROBLEM_TYPE_BASE.as_bytes());
        out.extend_from_slice(self.slug.as_bytes());
        out.extend_from_slice(b"\"}");
        Bytes::from(out)
    }

    pub(crate) fn into_response(self) -> Response<Bytes> {
        let mut response = Response::new(self.body());
        *response.status_mut() = self.status;
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if self.close {
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        if let Some(after) = self.retry_after {
            let seconds = after.as_secs() + u64::from(after.subsec_nanos() > 0);
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds.max(1)));
        }
        response
    }
}

/// Append `text` as a JSON string (quoted and escaped, RFC 8259 §7).
fn json_string(out: &mut Vec<u8>, text: &str) {
    // Writing a `str` into a `Vec` cannot fail.
    let _ = serde_json::to_writer(&mut *out, text);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The hand-written body is the JSON object `serde_json` would write for the same members.
    #[test]
    fn body_is_the_rfc_9457_object() {
        let problems = [
            Problem::from_engine(&IdempotencyError::InProgress {
                retry_after: Duration::from_secs(2),
            }),
            Problem::from_engine(&IdempotencyError::FingerprintMismatch),
            Problem::missing_key("Idempotency-Key"),
            Problem::new(
                StatusCode::UNAUTHORIZED,
                "scope-rejected",
                "Request not accepted",
                "quote \" backslash \\ newline \n control \u{1} unicode é",
            ),
        ];
        for problem in problems {
            let body = problem.body();
            let expected = serde_json::json!({
                "type": format!("{PROBLEM_TYPE_BASE}{}", problem.slug),
                "title": problem.title,
                "status": problem.status.as_u16(),
                "detail": problem.detail,
            });
            let parsed: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
            assert_eq!(parsed, expected);
            assert_eq!(body, expected.to_string().into_bytes());
        }
        for c in ['"', '\\'] {
            assert!(!PROBLEM_TYPE_BASE.contains(c));
        }
    }
}
