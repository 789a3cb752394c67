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
        }
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
            IdempotencyError::InFlight { retry_after } => Self::new(
                StatusCode::CONFLICT,
                "in-flight",
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
            .retry_after(error.retry_after().unwrap_or(Duration::from_secs(1))),
            _ => Self::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "Idempotency check failed",
                "the stored result of this idempotency key could not be read",
            ),
        }
    }

    pub(crate) fn into_response(self) -> Response<Bytes> {
        let body = serde_json::json!({
            "type": format!("{PROBLEM_TYPE_BASE}{}", self.slug),
            "title": self.title,
            "status": self.status.as_u16(),
            "detail": self.detail,
        });
        let mut response = Response::new(Bytes::from(body.to_string()));
        *response.status_mut() = self.status;
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if let Some(after) = self.retry_after {
            let seconds = after.as_secs() + u64::from(after.subsec_nanos() > 0);
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds.max(1)));
        }
        response
    }
}
