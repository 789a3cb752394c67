//! The two states of a record and the stored outcome.

use bytes::Bytes;

use crate::{Fingerprint, LeaseToken};

/// How the bytes of a [`StoredOutcome`] are encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum OutcomeEncoding {
    /// Stored as produced.
    #[default]
    Identity,
    /// LZ4 block format with the uncompressed size prepended (`lz4_flex::compress_prepend_size`).
    Lz4,
}

/// The result of the first completed attempt: opaque bytes plus a content type.
///
/// The engine compresses bodies above its threshold before storing and decompresses on replay;
/// callers of [`crate::Idempotency`] always see the identity encoding.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StoredOutcome {
    /// The bytes, in [`StoredOutcome::encoding`].
    pub body: Bytes,
    /// A media type describing `body` (for HTTP, the layer's own envelope type).
    pub content_type: Option<String>,
    /// Whether `body` is compressed.
    pub encoding: OutcomeEncoding,
}

impl StoredOutcome {
    /// An uncompressed outcome.
    pub fn new(body: impl Into<Bytes>, content_type: Option<String>) -> Self {
        Self {
            body: body.into(),
            content_type,
            encoding: OutcomeEncoding::Identity,
        }
    }

    /// Compress the body when it is at least `threshold` bytes and compression saves space.
    pub fn compressed_above(self, threshold: usize) -> Self {
        if self.encoding != OutcomeEncoding::Identity || self.body.len() < threshold {
            return self;
        }
        let packed = lz4_flex::compress_prepend_size(&self.body);
        if packed.len() >= self.body.len() {
            return self;
        }
        Self {
            body: Bytes::from(packed),
            content_type: self.content_type,
            encoding: OutcomeEncoding::Lz4,
        }
    }

    /// Return the outcome with an identity-encoded body.
    ///
    /// # Errors
    /// [`crate::CorruptRecord`] when a compressed body does not decompress.
    pub fn decompressed(self) -> Result<Self, crate::CorruptRecord> {
        match self.encoding {
            OutcomeEncoding::Identity => Ok(self),
            OutcomeEncoding::Lz4 => {
                let body = decompress_lz4(&self.body)?;
                Ok(Self {
                    body: Bytes::from(body),
                    content_type: self.content_type,
                    encoding: OutcomeEncoding::Identity,
                })
            }
        }
    }
}

/// Decompress a size-prepended LZ4 block, refusing a size header that no real block could have
/// (LZ4 expands at most ~255:1) so a corrupt record cannot make us allocate gigabytes.
fn decompress_lz4(packed: &[u8]) -> Result<Vec<u8>, crate::CorruptRecord> {
    let (size, block) = match packed {
        [a, b, c, d, rest @ ..] => (u32::from_le_bytes([*a, *b, *c, *d]) as usize, rest),
        _ => {
            return Err(crate::CorruptRecord::new(
                "lz4 body shorter than its size header",
            ));
        }
    };
    if size > block.len().saturating_mul(255).saturating_add(16) {
        return Err(crate::CorruptRecord::new(format!(
            "lz4 body claims {size} bytes from a {} byte block",
            block.len()
        )));
    }
    lz4_flex::decompress(block, size)
        .map_err(|e| crate::CorruptRecord::new(format!("lz4 body: {e}")))
}

/// A claim that is running: written by `try_claim`, expires after the lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InProgress {
    /// The claimer's fencing token.
    pub token: LeaseToken,
    /// The fingerprint of the claiming request.
    pub fingerprint: Fingerprint,
    /// When the claim was made (milliseconds since the Unix epoch; informative only).
    pub created_at_ms: u64,
}

/// A finished operation: written by `complete`, expires after the retention.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Completed {
    /// The token of the claim that completed (a retried `complete` with it is accepted).
    pub token: LeaseToken,
    /// The fingerprint of the request that ran (later retries must match it).
    pub fingerprint: Fingerprint,
    /// When the claim was made (ms since the Unix epoch).
    pub created_at_ms: u64,
    /// When the operation completed (ms since the Unix epoch).
    pub completed_at_ms: u64,
    /// What every retry gets back.
    pub outcome: StoredOutcome,
}

/// A record in one of its two states.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    /// Claimed and running.
    InProgress(InProgress),
    /// Finished; retries replay its outcome.
    Completed(Completed),
}

impl Record {
    /// The fingerprint, whatever the state.
    pub fn fingerprint(&self) -> &Fingerprint {
        match self {
            Record::InProgress(r) => &r.fingerprint,
            Record::Completed(r) => &r.fingerprint,
        }
    }

    /// The lease token, whatever the state.
    pub fn token(&self) -> &LeaseToken {
        match self {
            Record::InProgress(r) => &r.token,
            Record::Completed(r) => &r.token,
        }
    }

    /// Whether the record is a running claim.
    pub fn is_in_progress(&self) -> bool {
        matches!(self, Record::InProgress(_))
    }

    /// Approximate memory held by the record (for capacity accounting in embedded stores).
    pub fn approximate_size(&self) -> usize {
        let base = std::mem::size_of::<Record>();
        match self {
            Record::InProgress(_) => base,
            Record::Completed(c) => {
                base + c.outcome.body.len() + c.outcome.content_type.as_ref().map_or(0, String::len)
            }
        }
    }
}

/// Milliseconds since the Unix epoch, for the informative timestamps in records.
pub fn unix_millis_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compression_round_trips_and_skips_small_or_incompressible() {
        let big = StoredOutcome::new(vec![b'a'; 10_000], None);
        let packed = big.clone().compressed_above(4096);
        assert_eq!(packed.encoding, OutcomeEncoding::Lz4);
        assert!(packed.body.len() < 1000);
        assert_eq!(packed.decompressed().unwrap(), big);

        let small = StoredOutcome::new(vec![b'a'; 100], None);
        assert_eq!(small.clone().compressed_above(4096), small);

        // xorshift64: incompressible enough for LZ4.
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let noise: Vec<u8> = (0..8192)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state >> 24) as u8
            })
            .collect();
        let random = StoredOutcome::new(noise, None);
        assert_eq!(
            random.clone().compressed_above(16).encoding,
            OutcomeEncoding::Identity
        );
    }

    #[test]
    fn corrupt_compressed_body_is_an_error() {
        let bad = StoredOutcome {
            body: Bytes::from_static(b"\xff\xff\xff\x7fgarbage"),
            content_type: None,
            encoding: OutcomeEncoding::Lz4,
        };
        assert!(bad.decompressed().is_err());
    }
}
