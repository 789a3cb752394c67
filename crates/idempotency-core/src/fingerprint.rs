//! Request fingerprints: 32 bytes (SHA-256) over a canonical, length-prefixed encoding.

use std::fmt;

use sha2::{Digest, Sha256};

/// Domain-separation tag so our fingerprints never equal a plain hash of the same bytes.
const DOMAIN: &[u8] = b"idempotency-fingerprint-v1";

/// What identifies a request: a retry with the same key but a different fingerprint is refused
/// with [`crate::IdempotencyError::FingerprintMismatch`].
///
/// Built from parts; every part is written with its length first, so `["ab", "c"]` and
/// `["a", "bc"]` give different fingerprints.
///
/// ```
/// use idempotency_core::Fingerprint;
/// let a = Fingerprint::builder().part("POST").part("/orders").part(br#"{"qty":1}"#).finish();
/// let b = Fingerprint::builder().part("POST").part("/orders").part(br#"{"qty":2}"#).finish();
/// assert_ne!(a, b);
/// assert_eq!(Fingerprint::from_hex(&a.to_hex()).unwrap(), a);
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Fingerprint([u8; 32]);

impl Fingerprint {
    /// Start building a fingerprint.
    pub fn builder() -> FingerprintBuilder {
        let mut hasher = Sha256::new();
        hasher.update(DOMAIN);
        FingerprintBuilder { hasher, parts: 0 }
    }

    /// Fingerprint of a single byte string (shorthand for a builder with one part).
    pub fn of(bytes: impl AsRef<[u8]>) -> Self {
        Self::builder().part(bytes).finish()
    }

    /// Wrap 32 raw bytes.
    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The raw 32 bytes.
    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Lower-case hex, as stored in records.
    pub fn to_hex(&self) -> String {
        crate::hexfmt::to_hex(&self.0)
    }

    /// Parse 64 hex digits.
    pub fn from_hex(text: &str) -> Option<Self> {
        crate::hexfmt::from_hex(text.as_bytes()).map(Self)
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({})", &self.to_hex()[..16])
    }
}

/// Incremental builder for a [`Fingerprint`].
#[derive(Clone)]
pub struct FingerprintBuilder {
    hasher: Sha256,
    parts: u64,
}

impl FingerprintBuilder {
    /// Add one part, length-prefixed.
    #[must_use]
    pub fn part(mut self, bytes: impl AsRef<[u8]>) -> Self {
        self.push(bytes.as_ref());
        self
    }

    /// Add one part in place (for loops).
    pub fn push(&mut self, bytes: &[u8]) {
        self.hasher.update((bytes.len() as u64).to_le_bytes());
        self.hasher.update(bytes);
        self.parts += 1;
    }

    /// Finish. The number of parts is hashed too, so a trailing empty part is significant.
    pub fn finish(mut self) -> Fingerprint {
        self.hasher.update(self.parts.to_le_bytes());
        Fingerprint(self.hasher.finalize().into())
    }
}

impl fmt::Debug for FingerprintBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FingerprintBuilder")
            .field("parts", &self.parts)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parts_are_unambiguous() {
        let a = Fingerprint::builder().part("ab").part("c").finish();
        let b = Fingerprint::builder().part("a").part("bc").finish();
        let c = Fingerprint::builder().part("abc").finish();
        let d = Fingerprint::builder().part("abc").part("").finish();
        assert_ne!(a, b);
        assert_ne!(a, c);
        assert_ne!(c, d);
        assert_eq!(c, Fingerprint::of("abc"));
    }

    #[test]
    fn hex_round_trip_and_rejects_garbage() {
        let f = Fingerprint::of("x");
        assert_eq!(Fingerprint::from_hex(&f.to_hex()), Some(f));
        assert_eq!(Fingerprint::from_hex("zz"), None);
        assert_eq!(Fingerprint::from_hex(&"0".repeat(63)), None);
    }

    proptest! {
        #[test]
        fn different_part_lists_differ(a in proptest::collection::vec(any::<Vec<u8>>(), 0..4),
                                       b in proptest::collection::vec(any::<Vec<u8>>(), 0..4)) {
            let fa = a.iter().fold(Fingerprint::builder(), |bld, p| bld.part(p)).finish();
            let fb = b.iter().fold(Fingerprint::builder(), |bld, p| bld.part(p)).finish();
            prop_assert_eq!(fa == fb, a == b);
        }
    }
}
