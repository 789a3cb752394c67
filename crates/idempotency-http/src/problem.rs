//! RFC 9457 `application/problem+json` responses for the answers the layer gives itself.

use std::borrow::Cow;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use idempotency_core::{IdempotencyError, KeyError};

/// [`PROBLEM_TYPE_BASE`] as a literal, for `concat!` (the fixed bodies below).
macro_rules! problem_type_base {
    () => {
        "https://docs.rs/idempotency-http/latest/idempotency_http/#"
    };
}

/// Base of the `type` URIs of our problems (documentation anchors, stable across versions).
pub const PROBLEM_TYPE_BASE: &str = problem_type_base!();

/// The body [`Problem::body`] writes for a problem whose parts are all fixed, spelled out at
/// compile time: the frequent answers (`409` in progress, `422` key reused) then cost no
/// allocation. The parts must need no JSON escaping (tested against the general writer).
macro_rules! fixed_body {
    ($status:literal, $slug:literal, $title:literal, $detail:literal) => {
        concat!(
            "{\"detail\":\"",
            $detail,
            "\",\"status\":",
            $status,
            ",\"title\":\"",
            $title,
            "\",\"type\":\"",
            problem_type_base!(),
            $slug,
            "\"}"
        )
    };
}

/// A [`Problem`] of fixed parts, with its body written at compile time.
macro_rules! fixed_problem {
    ($status:ident, $code:literal, $slug:literal, $title:literal, $detail:literal) => {
        Problem {
            status: StatusCode::$status,
            slug: $slug,
            title: $title,
            detail: Cow::Borrowed($detail),
            fixed: Some(fixed_body!($code, $slug, $title, $detail)),
            retry_after: None,
            close: false,
        }
    };
}

/// `Retry-After` values for 0..=60 s, so the usual hints need no formatting.
const SECONDS: [&str; 61] = [
    "0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12", "13", "14", "15", "16",
    "17", "18", "19", "20", "21", "22", "23", "24", "25", "26", "27", "28", "29", "30", "31", "32",
    "33", "34", "35", "36", "37", "38", "39", "40", "41", "42", "43", "44", "45", "46", "47", "48",
    "49", "50", "51", "52", "53", "54", "55", "56", "57", "58", "59", "60",
];

/// A problem answer: status, a `type` slug, a title and a detail.
#[derive(Debug, Clone)]
pub(crate) struct Problem {
    pub(crate) status: StatusCode,
    pub(crate) slug: &'static str,
    pub(crate) title: &'static str,
    pub(crate) detail: Cow<'static, str>,
    /// The whole body, when it is fixed (see `fixed_body!`).
    fixed: Option<&'static str>,
    pub(crate) retry_after: Option<Duration>,
    pub(crate) close: bool,
}

impl Problem {
    pub(crate) fn new(
        status: StatusCode,
        slug: &'static str,
        title: &'static str,
        detail: impl Into<Cow<'static, str>>,
    ) -> Self {
        Self {
            status,
            slug,
            title,
            detail: detail.into(),
            fixed: None,
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
            // A list in one header value (`a, b`, or two header lines a proxy joined) is the
            // same mistake as two header lines: the same problem type, so clients match one.
            IdempotencyError::InvalidKey(e @ KeyError::SeveralKeys) => Self::new(
                StatusCode::BAD_REQUEST,
                "multiple-keys",
                "Idempotency key ambiguous",
                e.to_string(),
            ),
            IdempotencyError::InvalidKey(e) => {
                Self::new(StatusCode::BAD_REQUEST, "invalid-key", "Idempotency key invalid", e.to_string())
            }
            IdempotencyError::InProgress { retry_after } => fixed_problem!(
                CONFLICT,
                "409",
                "in-progress",
                "Request in progress",
                "a request with this idempotency key is still being processed; retry later"
            )
            .retry_after(*retry_after),
            IdempotencyError::FingerprintMismatch => fixed_problem!(
                UNPROCESSABLE_ENTITY,
                "422",
                "key-reused",
                "Idempotency key reused",
                "this idempotency key was already used with a different request; use a new key"
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
        match self.fixed {
            Some(fixed) => Bytes::from_static(fixed.as_bytes()),
            None => self.written_body(),
        }
    }

    /// The body, written from the parts.
    fn written_body(&self) -> Bytes {
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
            // Rounded up, saturating: a huge hint (`Duration::MAX`) must not overflow.
            let seconds = after
                .as_secs()
                .saturating_add(u64::from(after.subsec_nanos() > 0));
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, seconds_value(seconds.max(1)));
        }
        response
    }
}

/// A `Retry-After` value: the usual small ones from [`SECONDS`], without formatting.
fn seconds_value(seconds: u64) -> HeaderValue {
    usize::try_from(seconds)
        .ok()
        .and_then(|i| SECONDS.get(i))
        .map_or_else(
            || HeaderValue::from(seconds),
            |s| HeaderValue::from_static(s),
        )
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
            // A fixed body is what the general writer writes.
            assert_eq!(body, problem.written_body(), "{}", problem.slug);
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
        let fixed = [
            IdempotencyError::InProgress {
                retry_after: Duration::from_secs(2),
            },
            IdempotencyError::FingerprintMismatch,
        ];
        for error in fixed {
            assert!(Problem::from_engine(&error).fixed.is_some(), "{error}");
        }
        for c in ['"', '\\'] {
            assert!(!PROBLEM_TYPE_BASE.contains(c));
        }
    }

    /// breaker4: Retry-After at the boundaries, from the engine's in-progress answer: 0 s and
    /// sub-second hints round up to 1, 60 and 61 straddle the static table, and a huge hint
    /// (an `in_progress_retry_after(Duration::MAX)` setting) must not overflow the rounding.
    #[test]
    fn retry_after_boundaries_from_in_progress_answers() {
        let cases = [
            (Duration::ZERO, "1"),
            (Duration::from_millis(1), "1"),
            (Duration::from_millis(60_000), "60"),
            (Duration::from_millis(60_001), "61"),
            (Duration::from_secs(61), "61"),
            (Duration::from_secs(u64::MAX), "18446744073709551615"),
            (Duration::MAX, "18446744073709551615"),
        ];
        for (retry_after, expected) in cases {
            let response =
                Problem::from_engine(&IdempotencyError::InProgress { retry_after }).into_response();
            assert_eq!(response.status(), StatusCode::CONFLICT);
            assert_eq!(
                response.headers()[header::RETRY_AFTER],
                expected,
                "{retry_after:?}"
            );
        }
    }

    #[test]
    fn retry_after_values_are_the_decimal_seconds() {
        for seconds in (0..=70).chain([3600, u64::MAX]) {
            assert_eq!(
                seconds_value(seconds),
                HeaderValue::from(seconds),
                "{seconds}"
            );
        }
    }
}
