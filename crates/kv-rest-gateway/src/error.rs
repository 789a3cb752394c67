//! Request-level failures and how they map onto HTTP (`{"error": …}` bodies).

use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::Value as Json;

/// Why a request failed as a whole (per-command errors inside a pipeline are not these).
#[derive(Debug, thiserror::Error)]
pub(crate) enum GatewayError {
    /// Malformed request, refused command or a Redis error reply: HTTP 400.
    #[error("{0}")]
    BadRequest(String),
    /// Missing or wrong token: HTTP 401.
    #[error("Unauthorized")]
    Unauthorized,
    /// A method the endpoint does not accept: HTTP 405 (axum's method routing adds `Allow`).
    #[error("Method not allowed")]
    MethodNotAllowed,
    /// The body did not arrive within the body read timeout: HTTP 408, connection closed.
    #[error("ERR the request body did not arrive within {} ms", .0.as_millis())]
    BodyTimeout(std::time::Duration),
    /// The body exceeds the configured limit: HTTP 413.
    #[error("request body exceeds the limit of {0} bytes")]
    PayloadTooLarge(usize),
    /// Redis cannot be reached (connection refused, timeout, dropped connection): HTTP 503.
    #[error("{0}")]
    Unavailable(String),
    /// Redis refused the gateway's own credentials while a connection was being opened
    /// (a refused `AUTH`, `WRONGPASS`, `NOAUTH`): nothing was sent. In provisioning mode the
    /// users that are gone are re-created and the command is tried once more; otherwise a 503
    /// (the gateway is misconfigured, Redis lost its users, or someone disabled the gateway's
    /// user or changed its password: not the client's fault). The text says which.
    #[error("Redis refused the gateway's credentials: {0}")]
    Unauthenticated(String),
    /// As [`GatewayError::Unauthenticated`] (same text, HTTP 503), answered because one of the
    /// gateway's users was found disabled or changed by someone else (see
    /// `backend::Refused`): the backend reports those once per 30 s, so a request answered so
    /// is not logged again at `warn` (a line per refused request flooded the log).
    #[error("Redis refused the gateway's credentials: {0}")]
    Refused(&'static str),
    /// Anything else on the Redis client side (an unexpected reply shape): HTTP 500.
    #[error("{0}")]
    Internal(String),
}

impl GatewayError {
    pub(crate) fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::BodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            Self::Unavailable(_) | Self::Unauthenticated(_) | Self::Refused(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl IntoResponse for GatewayError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "error": self.to_string() });
        let mut response = json_response(self.status(), &body);
        if matches!(self, Self::BodyTimeout(_)) {
            // The client may still be sending: do not keep reading from it.
            response.headers_mut().insert(
                axum::http::header::CONNECTION,
                HeaderValue::from_static("close"),
            );
        }
        response
    }
}

/// A JSON response with the given status.
pub(crate) fn json_response(status: StatusCode, body: &Json) -> Response {
    let bytes =
        serde_json::to_vec(body).unwrap_or_else(|_| b"{\"error\":\"ERR internal\"}".to_vec());
    json_bytes_response(status, bytes)
}

/// A response with a body that is already JSON text.
pub(crate) fn json_bytes_response(status: StatusCode, bytes: Vec<u8>) -> Response {
    (
        status,
        [(CONTENT_TYPE, HeaderValue::from_static("application/json"))],
        bytes,
    )
        .into_response()
}

/// Maps a `redis` crate error: replies from the server keep their text (`ERR …`,
/// `WRONGTYPE …`, `NOSCRIPT …`) as a 400; transport trouble becomes a 503.
pub(crate) fn from_redis(error: &redis::RedisError) -> GatewayError {
    if let Some(code) = error.code() {
        let text = match error.detail() {
            Some(detail) => format!("{code} {detail}"),
            None => code.to_owned(),
        };
        return GatewayError::BadRequest(text);
    }
    if error.is_io_error()
        || error.is_timeout()
        || error.is_connection_dropped()
        || error.is_connection_refusal()
        || error.is_unrecoverable_error()
    {
        return GatewayError::Unavailable(format!("Redis is unavailable: {error}"));
    }
    GatewayError::Internal(format!("Redis client error: {error}"))
}

/// A transport failure after the command was handed to the connection (the connection broke,
/// or no reply came within the response timeout): Redis may or may not have run it, so the
/// 503 says so, and the client must not assume either.
/// A failure to open a connection (nothing was sent on it): as [`from_redis`], except that
/// Redis refusing the gateway's credentials during the handshake is
/// [`GatewayError::Unauthenticated`], told apart by the error's kind and code, never by text
/// a command's reply could carry.
pub(crate) fn from_connect(error: &redis::RedisError) -> GatewayError {
    // The `redis` crate reports a refused `AUTH` as `AuthenticationFailed` (no code);
    // `WRONGPASS` / `NOAUTH` codes come from the handshake's other commands.
    if error.kind() == redis::ErrorKind::AuthenticationFailed
        || matches!(error.code(), Some("WRONGPASS" | "NOAUTH"))
    {
        return GatewayError::Unauthenticated(error.to_string());
    }
    if let Some(refusal) = busy_connect_refusal(error) {
        return GatewayError::BadRequest(refusal);
    }
    from_redis(error)
}

/// Redis's busy refusal (`BUSY Redis is busy running a script…`, see [`is_busy_refusal`]) of one
/// of a new connection's set-up commands (`SELECT` of a database other than 0; `AUTH` and
/// `HELLO` are served during a busy script): nothing of the caller's was sent. The `redis` crate
/// reports a refused `SELECT` as a response error that keeps only the text after the code, so
/// the refusal is rebuilt with its `BUSY` code, for the busy retries and for the client.
fn busy_connect_refusal(error: &redis::RedisError) -> Option<String> {
    error.code()?;
    let detail = error.detail()?;
    let text = match detail.strip_prefix("BUSY ") {
        Some(_) => detail.to_owned(),
        None => format!("BUSY {detail}"),
    };
    is_busy_refusal(&text).then_some(text)
}

/// Whether `text` (a Redis error reply, `CODE detail`) is Redis's own refusal to run a command
/// while a script, function or module command runs past the busy threshold: `BUSY Redis is
/// busy running a script. You can only call SCRIPT KILL or SHUTDOWN NOSAVE.` and its
/// `FUNCTION KILL` and module forms (`server.c`, `shared.slowevalerr` / `slowscripterr` /
/// `slowmoduleerr`; Valkey says `Valkey is busy …`). Only then was the command not run. Any
/// other reply starting with `BUSY` — `BUSYGROUP`, `BUSYKEY`, or a script's own
/// `redis.error_reply('BUSY …')` after it wrote — is the command's answer. A script that
/// returns the refusal word for word cannot be told from it by its reply: the backend resends
/// a script's refusal only while Redis is seen busy right after it (`Backend::busy_now`, a
/// `PING` in the resent round), so such a script runs again only if another client's script
/// happens to make Redis busy at that moment, and never past the busy bound.
pub(crate) fn is_busy_refusal(text: &str) -> bool {
    let Some(rest) = text.strip_prefix("BUSY ") else {
        return false;
    };
    let Some((_server, rest)) = rest.split_once(' ') else {
        return false;
    };
    rest.starts_with("is busy running a script. You can only call ")
        || rest == "is busy running a module command."
}

pub(crate) fn outcome_unknown(error: &redis::RedisError) -> GatewayError {
    let what = if error.is_timeout() {
        "no reply from Redis within the response timeout"
    } else {
        "the connection to Redis failed while the command was in flight"
    };
    GatewayError::Unavailable(format!(
        "Redis is unavailable: {what} ({error}); the outcome is unknown: the command may or \
         may not have run"
    ))
}

/// The text of a server error reply, with its code prefix (`ERR …`, `WRONGTYPE …`).
pub(crate) fn server_error_text(error: &redis::ServerError) -> String {
    match error.details() {
        Some(detail) => format!("{} {detail}", error.code()),
        None => error.code().to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::is_busy_refusal;

    #[test]
    fn only_the_servers_own_busy_refusals_are_busy() {
        for text in [
            "BUSY Redis is busy running a script. You can only call SCRIPT KILL or SHUTDOWN NOSAVE.",
            "BUSY Redis is busy running a script. You can only call FUNCTION KILL or SHUTDOWN NOSAVE.",
            "BUSY Valkey is busy running a script. You can only call SCRIPT KILL or SHUTDOWN NOSAVE.",
            "BUSY Redis is busy running a module command.",
        ] {
            assert!(is_busy_refusal(text), "{text}");
        }
        for text in [
            "BUSYGROUP Consumer Group name already exists",
            "BUSYKEY Target key name already exists.",
            "BUSY",
            "BUSY lock held by another worker",
            "BUSY Redis is busy",
            "BUSY Redis is busy running a module command. and more",
            "ERR BUSY Redis is busy running a script. You can only call SCRIPT KILL or SHUTDOWN NOSAVE.",
            "busy Redis is busy running a script. You can only call SCRIPT KILL or SHUTDOWN NOSAVE.",
            "",
        ] {
            assert!(!is_busy_refusal(text), "{text}");
        }
    }
}
