//! What a handler tells the layer about its side effects, for the answers the status policy
//! cannot judge alone (a 5xx after a write, a panic after a commit).

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

/// Whether the operation changed anything, as the handler knows it.
///
/// Put it into the **response** extensions (axum: `(Extension(SideEffects::Committed), status,
/// body)`) or flip the request's [`SideEffectsMarker`]; either overrides the stored-status policy
/// for that response:
///
/// | handler says | response | what the layer does |
/// |---|---|---|
/// | nothing (default) | status the policy stores (default: < 500 but 408/409/425/429) | stores it; retries replay it |
/// | nothing (default) | any other status, error, panic | releases the claim; a retry runs again |
/// | [`SideEffects::Committed`] | any status | stores it; retries replay it, the operation never runs again |
/// | [`SideEffects::Committed`] | handler error or panic | stores a 500 problem (`response-lost`); retries replay it |
/// | [`SideEffects::None`] | any status | releases the claim; a retry runs again |
///
/// The default (release on 5xx) suits handlers whose failures leave nothing behind — the common
/// case when the write is the last step or sits in a transaction that rolled back. Stripe instead
/// stores a 500 once execution began, so a retry can never repeat a half-done operation, at the
/// price of never retrying one that changed nothing. The marker lets each handler say which case
/// it is in: mark `Committed` right after the write that must not happen twice, and a later
/// failure (a follow-up call, a panic) is replayed rather than re-run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SideEffects {
    /// Nothing changed: a retry may run the operation again (the claim is released).
    None,
    /// A side effect happened: keep this outcome, a retry must not run the operation again.
    Committed,
}

// 0: nothing said yet (the default).
const NONE: u8 = 1;
const COMMITTED: u8 = 2;

/// A handle the layer puts into every protected request's extensions; the handler flips it
/// **before** the point it cares about (typically right after its write commits), so the layer
/// knows even if the handler then panics or returns an error and cannot return a marker.
///
/// ```
/// use axum::Extension;
/// use idempotency_http::SideEffectsMarker;
///
/// async fn pay(Extension(effects): Extension<SideEffectsMarker>) -> &'static str {
///     // charge the card ...
///     effects.committed(); // from here on, a failure is replayed, never re-run
///     // notify, render ... (may fail)
///     "paid"
/// }
/// # let _ = pay;
/// ```
///
/// Clones share one state. The last call wins; a [`SideEffects`] response extension wins over
/// the marker.
#[derive(Clone)]
pub struct SideEffectsMarker(Arc<dyn EffectsCell>);

/// Where a marker's state lives: its own atomic, or (in a protected request) a field of the
/// request's shared state, so that the layer pays one allocation for the claim slot, the
/// marker and the response head together (see `record::Shared`).
pub(crate) trait EffectsCell: Send + Sync {
    fn effects(&self) -> &AtomicU8;
}

impl EffectsCell for AtomicU8 {
    fn effects(&self) -> &AtomicU8 {
        self
    }
}

impl Default for SideEffectsMarker {
    fn default() -> Self {
        Self(Arc::new(AtomicU8::new(0)))
    }
}

impl std::fmt::Debug for SideEffectsMarker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("SideEffectsMarker")
            .field(&self.get())
            .finish()
    }
}

impl SideEffectsMarker {
    /// A marker whose state is `cell`'s.
    pub(crate) fn in_cell(cell: Arc<dyn EffectsCell>) -> Self {
        Self(cell)
    }

    /// Record that a side effect happened (see [`SideEffects::Committed`]).
    pub fn committed(&self) {
        self.0.effects().store(COMMITTED, Ordering::Release);
    }

    /// Record that nothing changed (see [`SideEffects::None`]).
    pub fn none(&self) {
        self.0.effects().store(NONE, Ordering::Release);
    }

    /// What was recorded so far, if anything.
    pub fn get(&self) -> Option<SideEffects> {
        read(self.0.effects())
    }
}

/// What a marker's state says.
pub(crate) fn read(cell: &AtomicU8) -> Option<SideEffects> {
    match cell.load(Ordering::Acquire) {
        NONE => Some(SideEffects::None),
        COMMITTED => Some(SideEffects::Committed),
        _ => Option::None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_call_wins_and_clones_share() {
        let marker = SideEffectsMarker::default();
        assert_eq!(marker.get(), Option::None);
        let clone = marker.clone();
        clone.none();
        assert_eq!(marker.get(), Some(SideEffects::None));
        clone.committed();
        assert_eq!(marker.get(), Some(SideEffects::Committed));
    }
}
