//! The error for bytes that are not a readable record (shared by the codec, the record types and
//! the engine's errors, so none of them imports another for it).

use thiserror::Error;

/// Bytes under a record key that are not a record this crate can read. Never treated as absent:
/// silently overwriting unknown data could run an operation twice.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("corrupt idempotency record: {reason}")]
pub struct CorruptRecord {
    reason: String,
}

impl CorruptRecord {
    /// A corrupt-record error with a reason.
    pub fn new(reason: impl Into<String>) -> Self {
        Self {
            reason: reason.into(),
        }
    }

    /// What was wrong.
    pub fn reason(&self) -> &str {
        &self.reason
    }
}
