//! The demo's "authentication": the bearer token is the user id. Nothing else is checked; a
//! real service puts its verified principal into the request extensions the same way.

use axum::extract::Request;
use axum::http::header;
use axum::http::request::Parts;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use idempotency::Scope;
use idempotency::http::ScopeRejection;

use crate::envelope::ApiError;

/// The authenticated principal, put into the request extensions by [`authenticate`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal(pub String);

/// Middleware: `Authorization: Bearer <user>` → a [`Principal`] extension; anything else → 401.
/// Runs outside the idempotency layer, so an unauthenticated request never touches the store.
pub async fn authenticate(mut request: Request, next: Next) -> Response {
    match bearer(&request) {
        Some(user) => {
            request.extensions_mut().insert(Principal(user));
            next.run(request).await
        }
        None => ApiError::unauthorized("send `Authorization: Bearer <user>`").into_response(),
    }
}

fn bearer(request: &Request) -> Option<String> {
    let value = request
        .headers()
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then(|| token.to_owned())
}

/// The idempotency scope: the principal, so one user's key never replays another's response.
pub fn principal_scope(parts: &Parts) -> Result<Scope, ScopeRejection> {
    parts
        .extensions
        .get::<Principal>()
        .map(|principal| Scope::new(principal.0.as_str()))
        .ok_or_else(|| ScopeRejection::unauthorized("send `Authorization: Bearer <user>`"))
}
