//! Whose key a request's `Idempotency-Key` is: the [`ScopeExtractor`] policy, its refusal and
//! the built-in choices.

use http::StatusCode;
use http::request::Parts;
use idempotency_core::Scope;

/// Refusal from a [`ScopeExtractor`]: the request gets this status and a problem body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScopeRejection {
    /// Status to answer with.
    pub status: StatusCode,
    /// Human-readable reason (sent in the problem body).
    pub detail: String,
}

impl ScopeRejection {
    /// A rejection with any status.
    pub fn new(status: StatusCode, detail: impl Into<String>) -> Self {
        Self {
            status,
            detail: detail.into(),
        }
    }

    /// 401: no principal could be identified.
    pub fn unauthorized(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, detail)
    }
}

/// Decides whose key a request's `Idempotency-Key` is (the tenant or principal), so one tenant's
/// key never replays another's response. A required choice of the builder.
pub trait ScopeExtractor: Clone + Send + Sync + 'static {
    /// The scope of this request, or why it cannot be served.
    ///
    /// # Errors
    /// A [`ScopeRejection`] that becomes the response.
    fn extract(&self, parts: &Parts) -> Result<Scope, ScopeRejection>;
}

impl<F> ScopeExtractor for F
where
    F: Fn(&Parts) -> Result<Scope, ScopeRejection> + Clone + Send + Sync + 'static,
{
    fn extract(&self, parts: &Parts) -> Result<Scope, ScopeRejection> {
        self(parts)
    }
}

/// Every client shares one key space (only for services without users or tenants).
#[derive(Debug, Clone, Copy, Default)]
pub struct GlobalScope;

impl ScopeExtractor for GlobalScope {
    fn extract(&self, _: &Parts) -> Result<Scope, ScopeRejection> {
        Ok(Scope::global())
    }
}

/// Builder state before a scope was chosen: [`LayerBuilder::build`](crate::LayerBuilder::build)
/// is not available yet.
#[derive(Debug, Clone, Copy)]
pub struct NoScope;
