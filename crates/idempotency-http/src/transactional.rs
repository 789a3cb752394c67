//! Completion inside the handler's own database transaction: the handler takes its claim from
//! the request, records the exact response it returns in its transaction (with a backend that
//! can write there, such as `idempotency_sql`'s `write_in`), and the layer then writes no second
//! completion.
//!
//! See [`TransactionalClaim`] for the flow.

use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use http::Response;
use http_body::Body;
use http_body_util::{BodyExt as _, Full};
use idempotency_core::{
    Guard, IdempotencyError, IdempotencyStore, PendingCompletion, StoredOutcome,
};

use crate::body::BoxError;
use crate::stored::{self, StoredResponse};

/// The claim slot shared by the layer and the handler: a field of the request's shared state
/// (`record::Shared`, one allocation with the side-effects marker and the response head).
pub(crate) type Slot<S> = Arc<dyn ClaimCell<S>>;

/// Where a protected request's claim waits until the layer (or the handler) takes it.
pub(crate) trait ClaimCell<S: IdempotencyStore + 'static>: Send + Sync {
    fn claim(&self) -> &Mutex<Option<Guard<S>>>;
}

pub(crate) fn lock<S: IdempotencyStore + 'static>(
    claim: &Mutex<Option<Guard<S>>>,
) -> MutexGuard<'_, Option<Guard<S>>> {
    // The critical sections only move an `Option`: a poisoned lock holds a consistent value.
    claim
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Response extension set by [`TransactionalClaim::prepare`]: the response's completion was
/// written by the handler (in its transaction), so the layer records nothing for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CompletedByHandler;

/// The claim of a protected request, handed to the handler in the request's extensions (axum:
/// `Extension<TransactionalClaim<S>>`, with `S` the engine's store type) so that it can
/// **complete inside its own database transaction**: side effect and recorded response commit
/// together or not at all (Stripe's and Brandur Leach's "atomic phases").
///
/// The flow, in the handler:
/// 1. open the transaction and write the side effect;
/// 2. build the response, then [`prepare`](Self::prepare) it: the body is collected, the exact
///    response is encoded as the layer stores it, and the claim becomes a
///    [`PendingCompletion`] (the engine's size limit and compression apply);
/// 3. write the pending completion in the transaction (`idempotency_sql`: `store.write_in(&mut
///    *tx, pending)`; `Err(LeaseLost)` means roll back), commit, then
///    [`PendingCompletion::committed`];
/// 4. return the response `prepare` gave back (the same status, headers and body bytes,
///    marked): the layer forwards it and writes no second completion. Retries replay those
///    bytes exactly (plus `Idempotent-Replayed: true`).
///
/// If the handler never calls `prepare`, the layer records the response as usual. Once it has
/// taken the claim, ending it is the handler's: a returned error, a panic or a rolled-back
/// transaction drops the guard or the pending completion, which releases the claim in the
/// background, so a retry runs again (no side effect was committed).
///
/// The handle is backend-neutral: the HTTP layer depends on no database crate.
pub struct TransactionalClaim<S: IdempotencyStore + 'static> {
    slot: Slot<S>,
    keep_set_cookie: bool,
}

impl<S: IdempotencyStore + 'static> Clone for TransactionalClaim<S> {
    fn clone(&self) -> Self {
        Self {
            slot: Arc::clone(&self.slot),
            keep_set_cookie: self.keep_set_cookie,
        }
    }
}

impl<S: IdempotencyStore + 'static> std::fmt::Debug for TransactionalClaim<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TransactionalClaim")
            .field("available", &lock(self.slot.claim()).is_some())
            .finish()
    }
}

/// Why [`TransactionalClaim::prepare`] gave no pending completion. In every case the claim has
/// been given up (released in the background) unless stated otherwise, so a retry runs again:
/// roll the transaction back.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TransactionalError {
    /// The claim was already taken (a second `prepare` for the same request).
    #[error("the claim was already taken for this request")]
    AlreadyTaken,
    /// The response body failed while being collected.
    #[error("the response body failed: {0}")]
    Body(#[source] BoxError),
    /// The engine refused the completion (for example the response is larger than the maximum
    /// outcome size).
    #[error(transparent)]
    Engine(#[from] IdempotencyError),
}

impl<S: IdempotencyStore + 'static> TransactionalClaim<S> {
    pub(crate) fn new(slot: Slot<S>, keep_set_cookie: bool) -> Self {
        Self {
            slot,
            keep_set_cookie,
        }
    }

    /// Whether the claim is still available (not taken by [`prepare`](Self::prepare) or
    /// [`take_guard`](Self::take_guard)).
    pub fn is_available(&self) -> bool {
        lock(self.slot.claim()).is_some()
    }

    /// Take the engine's guard itself, to complete it some other way (for example
    /// `idempotency_sql`'s `complete_in` with an outcome of your own). The layer then records
    /// nothing for this request: the handler owns the claim. Prefer
    /// [`prepare`](Self::prepare), which stores the exact HTTP response so retries replay it.
    pub fn take_guard(&self) -> Option<Guard<S>> {
        lock(self.slot.claim()).take()
    }

    /// Collect `response`'s body, encode the response exactly as the layer stores it (status,
    /// replayable headers, body bytes) and prepare the claim's completion with it
    /// ([`Guard::prepare`]). Returns the pending completion, to be written in the handler's
    /// transaction and settled, and the same response (same status, headers, body bytes) marked
    /// so the layer writes no second completion: return that one.
    ///
    /// # Errors
    /// [`TransactionalError`]; the claim is released in the background (except for
    /// [`TransactionalError::AlreadyTaken`]): roll the transaction back and answer with an
    /// error.
    pub async fn prepare<B>(
        &self,
        response: Response<B>,
    ) -> Result<(PendingCompletion<S>, Response<Full<Bytes>>), TransactionalError>
    where
        B: Body<Data = Bytes>,
        B::Error: Into<BoxError>,
    {
        let guard = self.take_guard().ok_or(TransactionalError::AlreadyTaken)?;
        let (mut parts, body) = response.into_parts();
        let body = match body.collect().await {
            Ok(collected) => collected.to_bytes(),
            // Dropping the guard releases the claim in the background.
            Err(error) => return Err(TransactionalError::Body(error.into())),
        };
        let stored = StoredResponse {
            status: parts.status,
            headers: StoredResponse::replayable_headers(&parts.headers, self.keep_set_cookie),
            body: body.clone(),
            body_omitted: false,
        };
        let outcome = StoredOutcome::new(stored.encode(), Some(stored::CONTENT_TYPE.to_owned()));
        let pending = guard.prepare(outcome).await?;
        parts.extensions.insert(CompletedByHandler);
        Ok((pending, Response::from_parts(parts, Full::new(body))))
    }
}
