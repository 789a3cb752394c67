//! The `{ "data", "error", "meta" }` response envelope and the API's errors.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use idempotency::unix_millis_now;
use serde_json::{Map, Value, json};

/// A successful answer: `status` with `{ "data": data, "error": null, "meta": meta }`.
pub(crate) fn ok(status: StatusCode, data: Value, mut meta: Map<String, Value>) -> Response {
    meta.insert("timestamp".to_owned(), json!(unix_millis_now()));
    let body = json!({ "data": data, "error": null, "meta": meta });
    (status, Json(body)).into_response()
}

/// A refusal from the API itself (the idempotency layer answers with `problem+json` instead).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// A stable, machine-readable code (`VALIDATION_FAILED`, `NOT_FOUND`...).
    pub code: &'static str,
    /// What went wrong, for people.
    pub message: String,
}

impl ApiError {
    /// 400: the body is not JSON, or a field is missing or wrong.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "VALIDATION_FAILED", message)
    }

    /// 401: no `Authorization: Bearer <user>`.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "UNAUTHORIZED", message)
    }

    /// 403: authenticated, but not allowed.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "FORBIDDEN", message)
    }

    /// 404: no such resource.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "NOT_FOUND", message)
    }

    /// 503: the shop's database failed or is down (the write was rolled back; retry). Answered
    /// as `application/problem+json` with `Retry-After`, like the idempotency layer's 503.
    pub fn database(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "DATABASE_UNAVAILABLE",
            message,
        )
    }

    /// 409: the request's claim was lost before its transaction committed (rolled back; retry).
    pub fn claim_lost(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "CLAIM_LOST", message)
    }

    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }
}

/// Seconds a client should wait before retrying after the shop's database failed.
const DATABASE_RETRY_AFTER_SECS: u32 = 1;

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.code == "DATABASE_UNAVAILABLE" {
            // Unavailable, like the idempotency layer's own 503s: RFC 9457 problem+json with
            // `Retry-After`, so a client handles both the same way.
            let body = json!({
                "type": "about:blank",
                "title": "Service Unavailable",
                "status": self.status.as_u16(),
                "detail": self.message,
                "code": self.code,
            });
            let mut response = (self.status, body.to_string()).into_response();
            let headers = response.headers_mut();
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/problem+json"),
            );
            headers.insert(
                header::RETRY_AFTER,
                HeaderValue::from(DATABASE_RETRY_AFTER_SECS),
            );
            return response;
        }
        let body = json!({
            "data": null,
            "error": { "code": self.code, "message": self.message },
            "meta": { "timestamp": unix_millis_now() },
        });
        let mut response = (self.status, Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"idempotency-demo\""),
            );
        }
        response
    }
}
