//! Client keys, scopes and the store keys derived from them.
//!
//! The store key is `prefix + scope_part + ":" + key`, where `scope_part` is `escape(scope)`, or,
//! when that is longer than [`MAX_ESCAPED_SCOPE_LEN`] bytes, `"#" + hex(sha256(scope))` (65
//! bytes). The scope is escaped so that it can never contain `:`; the first `:` after the prefix
//! therefore ends the scope, and the client key (which may contain anything visible) is the rest.
//! That makes the derivation injective: two different `(scope, key)` pairs never share a store
//! key, whatever bytes a client sends.
//!
//! **Why the digest, and why it keeps the derivation injective.** A scope is any string (a
//! bearer token used as one was 60 KB); escaped whole it made a store key as long, which Postgres
//! cannot index (a btree entry is limited to about 2.7 KB: the insert fails, so every request of
//! that principal is a store error) and Redis holds per record. Past the bound, the scope part is
//! a fixed-length digest instead. Proof of injectivity, for a fixed prefix:
//! 1. Neither form of `scope_part` contains `:` (escaping turns `:` into `%3A`; the digest form
//!    is `#` and hex digits), so the store key splits back into exactly one
//!    `(scope_part, key)`: equal store keys have equal scope parts and equal client keys.
//! 2. An escaped scope consists only of `A-Z a-z 0-9 - _ . ~ @` and `%XX`: it never contains
//!    `#`. So a scope part starting with `#` is always the digest form and one that does not is
//!    always the escaped form: a long scope never derives the scope part of a short one.
//! 3. Two short scopes with equal escaped forms are equal (percent-escaping is injective: every
//!    byte maps to itself or to its own `%XX`, and `%` itself is escaped).
//! 4. Two long scopes with equal digest forms have equal SHA-256 digests, so they are equal
//!    unless SHA-256 has a collision (none is known; finding one is computationally infeasible).
//!
//! Scopes whose escaped form is at most [`MAX_ESCAPED_SCOPE_LEN`] bytes (every tenant id, user id
//! or UUID in practice) derive the same keys as before the bound existed.

use std::fmt;

use thiserror::Error;

mod header;

/// Longest accepted client key, in bytes (Stripe's limit, 255; the IETF draft sets none).
pub const MAX_KEY_LEN: usize = 255;

/// Longest escaped scope kept whole in a store key, in bytes. A scope whose escaped form is
/// longer is replaced in the store key by `#` and the 64 lowercase hex digits of the SHA-256 of
/// its UTF-8 bytes (65 bytes), so a store key is at most `prefix + 128 + 1 + 255` bytes (449 with
/// the longest prefix) however long the scope (see the module docs for why this stays injective).
pub const MAX_ESCAPED_SCOPE_LEN: usize = 128;

/// The first byte of a digested scope part: a byte the escaping never produces.
const DIGEST_MARKER: char = '#';

/// Why a client-supplied idempotency key was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum KeyError {
    /// The key was empty.
    #[error("idempotency key is empty")]
    Empty,
    /// The key was longer than [`MAX_KEY_LEN`] bytes.
    #[error("idempotency key is {len} bytes long; at most {max} are allowed", max = MAX_KEY_LEN)]
    TooLong {
        /// Length of the refused key in bytes.
        len: usize,
    },
    /// The key held a byte outside visible ASCII (`0x21..=0x7E`).
    #[error(
        "idempotency key has a byte outside visible ASCII (0x{byte:02x} at position {position}); \
         use letters, digits and punctuation only (a UUID is a good key)"
    )]
    InvalidByte {
        /// The first offending byte.
        byte: u8,
        /// Its position in the key.
        position: usize,
    },
    /// A quoted key (RFC 8941 sf-string) had no closing quote.
    #[error("quoted idempotency key has no closing `\"`")]
    Unterminated,
    /// A quoted key had a `\\` that was not followed by `"` or `\\` (the only escapes RFC 8941
    /// allows), or ended right after it.
    #[error(
        "quoted idempotency key has an invalid escape at position {position}; \
         only `\\\"` and `\\\\` are allowed inside quotes"
    )]
    InvalidEscape {
        /// Position of the backslash in the header value.
        position: usize,
    },
    /// Something that is neither a parameter nor a second key followed the closing quote of a
    /// quoted key (`"a" b`, `"a" ;x`).
    #[error(
        "quoted idempotency key has unexpected text at position {position}, after its closing \
         quote (only `;name=value` parameters may follow it)"
    )]
    AfterClosingQuote {
        /// Position of the first unexpected byte in the header value.
        position: usize,
    },
    /// The value holds several keys: a list (`"a", "b"` or `a, b`), or several header lines
    /// that HTTP joined with `, `. The draft allows one key per request.
    #[error(
        "the idempotency key header holds several keys (a list, or several header lines joined \
         with `,`); send exactly one"
    )]
    SeveralKeys,
    /// A parameter after a quoted key (`"k";name=value`, RFC 8941 §3.1.2) is malformed: its
    /// name does not start with a lowercase letter or `*`, or its value is not an RFC 8941
    /// bare item. (Well-formed parameters are accepted and ignored.)
    #[error(
        "quoted idempotency key has a malformed parameter at position {position}; parameters \
         are `;name` or `;name=value` (RFC 8941 structured field syntax)"
    )]
    InvalidParameter {
        /// Position in the header value of the byte where the parameter stopped parsing.
        position: usize,
    },
}

/// A validated client idempotency key: 1..=255 bytes of visible ASCII (plus space, for a key
/// that arrived quoted: see [`IdempotencyKey::from_header_value`]).
///
/// ```
/// use idempotency_core::IdempotencyKey;
/// let key = IdempotencyKey::new("8e03978e-40d5-43e8-bc93-6894a57f9324").unwrap();
/// assert_eq!(key.as_str().len(), 36);
/// assert!(IdempotencyKey::new("has space").is_err());
/// ```
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    /// Validate and wrap a client key.
    ///
    /// # Errors
    /// [`KeyError`] when the key is empty, longer than 255 bytes, or holds anything but visible
    /// ASCII.
    pub fn new(key: impl AsRef<str>) -> Result<Self, KeyError> {
        let key = key.as_ref();
        Self::validate(key.as_bytes())?;
        Ok(Self(key.to_owned()))
    }

    /// Validate a key given as raw bytes (for example an HTTP header value).
    ///
    /// # Errors
    /// As [`IdempotencyKey::new`].
    pub fn from_bytes(key: &[u8]) -> Result<Self, KeyError> {
        Self::validate(key)?;
        Ok(Self(ascii_text(key)))
    }

    /// Parse an HTTP header value: either an RFC 8941 sf-string (`"abc"`, the form of
    /// draft-ietf-httpapi-idempotency-key-header) or the bare form Stripe-style clients send
    /// (`abc`). Both mean the key `abc`, so a client that quotes and a retry that does not share
    /// one record.
    ///
    /// Surrounding spaces and tabs (HTTP optional whitespace) are ignored. A value starting with
    /// `"` is parsed as an sf-string (RFC 8941 §4.2.5): `\"` and `\\` are the only escapes, and
    /// every other character must be printable ASCII, **including space** (so `"a b"` is the key
    /// `a b`). Any other value is a bare key and follows [`IdempotencyKey::new`] (visible ASCII,
    /// no space); so a bare key cannot start with `"` (send it quoted: `"\"k"`).
    ///
    /// **Parameters.** The draft defines the field as an Item whose value is a String, and
    /// RFC 8941 Items may carry parameters (`"k";a=1`). They are parsed by the RFC's grammar
    /// (§4.2.3.2; their values by §4.2.3.1: Integer, Decimal, String, Token, Byte Sequence,
    /// Boolean) and **ignored**: the key is exactly the string's value, so `"k";a=1`, `"k"` and
    /// `k` name the same record. RFC 9651 §2 (the successor of RFC 8941, same rule): "Both
    /// Items and Inner Lists allow parameters as an extensibility mechanism [...] To preserve
    /// forward compatibility, field specifications are discouraged from defining the presence
    /// of an unrecognized parameter as an error condition", and the draft defines none. A
    /// malformed parameter fails the whole value ([`KeyError::InvalidParameter`]), as RFC 8941
    /// parsing fails. A bare key is not an sf-string and has no parameters: `k;a=1` is the key
    /// `k;a=1`, as before.
    ///
    /// **Several keys.** The draft: "Clients MUST NOT include more than one `Idempotency-Key`
    /// header field in the same request". A list (`"a", "b"`, `a, b`), which is also what two
    /// header lines become when a proxy joins them (RFC 9110 §5.3), is refused as
    /// [`KeyError::SeveralKeys`] rather than as a bad byte. A bare value is recognised as a list
    /// by a `,` next to a space or tab (a bare key holds neither space nor tab, so nothing
    /// accepted before is refused now); `a,b` without whitespace stays the one bare key `a,b`.
    ///
    /// Parsing is one pass over the value, linear in its length, and never panics.
    ///
    /// ```
    /// use idempotency_core::{IdempotencyKey, KeyError};
    /// let quoted = IdempotencyKey::from_header_value(br#""8e03978e-40d5""#).unwrap();
    /// let bare = IdempotencyKey::from_header_value(b"8e03978e-40d5").unwrap();
    /// assert_eq!(quoted, bare);
    /// assert_eq!(IdempotencyKey::from_header_value(br#""a \"b\"""#).unwrap().as_str(), r#"a "b""#);
    /// assert!(IdempotencyKey::from_header_value(br#""open"#).is_err());
    /// // Parameters are ignored: the same key.
    /// assert_eq!(IdempotencyKey::from_header_value(br#""8e03978e-40d5";v=1"#).unwrap(), bare);
    /// // A list is not one key.
    /// assert_eq!(IdempotencyKey::from_header_value(b"t-1, t-2"), Err(KeyError::SeveralKeys));
    /// ```
    ///
    /// # Errors
    /// [`KeyError::SeveralKeys`] for a list of keys; [`KeyError::Unterminated`],
    /// [`KeyError::InvalidEscape`], [`KeyError::InvalidParameter`] or
    /// [`KeyError::AfterClosingQuote`] for a malformed quoted value; [`KeyError::InvalidByte`]
    /// for a control or non-ASCII byte (position in the header value); [`KeyError::Empty`] and
    /// [`KeyError::TooLong`] as for [`IdempotencyKey::new`] (measured on the unquoted key).
    pub fn from_header_value(value: &[u8]) -> Result<Self, KeyError> {
        header::parse(value).map(Self)
    }

    fn validate(bytes: &[u8]) -> Result<(), KeyError> {
        if bytes.is_empty() {
            return Err(KeyError::Empty);
        }
        if bytes.len() > MAX_KEY_LEN {
            return Err(KeyError::TooLong { len: bytes.len() });
        }
        if let Some(position) = bytes.iter().position(|b| !(0x21..=0x7e).contains(b)) {
            return Err(KeyError::InvalidByte {
                byte: bytes[position],
                position,
            });
        }
        Ok(())
    }

    /// The key as given by the client.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for IdempotencyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "IdempotencyKey({:?})", self.0)
    }
}

impl fmt::Display for IdempotencyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::str::FromStr for IdempotencyKey {
    type Err = KeyError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

/// The owner of a key: a tenant, an authenticated principal, or [`Scope::global`].
///
/// Tenant A's key `abc` must never replay tenant B's response, so every key lives inside a
/// scope. Any string is accepted; it is escaped when the store key is derived.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Scope(String);

impl Scope {
    /// A scope for one tenant or principal.
    pub fn new(scope: impl Into<String>) -> Self {
        Self(scope.into())
    }

    /// The single shared scope, for services without tenants (every client shares keys).
    pub fn global() -> Self {
        Self(String::new())
    }

    /// The scope as given.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Scope({:?})", self.0)
    }
}

impl From<&str> for Scope {
    fn from(value: &str) -> Self {
        Self::new(value)
    }
}

impl From<String> for Scope {
    fn from(value: String) -> Self {
        Self::new(value)
    }
}

/// Why a key prefix was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("key prefix {prefix:?} is not allowed: use 1..=64 bytes of visible ASCII")]
pub struct PrefixError {
    /// The refused prefix.
    pub prefix: String,
}

/// Check a store key prefix chosen by the operator.
///
/// # Errors
/// [`PrefixError`] when the prefix is empty, longer than 64 bytes or not visible ASCII.
pub fn validate_prefix(prefix: &str) -> Result<(), PrefixError> {
    let ok = !prefix.is_empty()
        && prefix.len() <= 64
        && prefix.bytes().all(|b| (0x21..=0x7e).contains(&b));
    if ok {
        Ok(())
    } else {
        Err(PrefixError {
            prefix: prefix.to_owned(),
        })
    }
}

/// The key a record is stored under, derived injectively from `(prefix, scope, key)`.
///
/// ```
/// use idempotency_core::{IdempotencyKey, Scope, StoreKey};
/// let key = IdempotencyKey::new("order-1").unwrap();
/// let a = StoreKey::derive("idem:", &Scope::new("tenant:a"), &key);
/// assert_eq!(a.as_str(), "idem:tenant%3Aa:order-1");
/// ```
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StoreKey(String);

impl StoreKey {
    /// Derive the store key. The prefix is used verbatim (it is the operator's choice and should
    /// be validated with [`validate_prefix`]); the scope is escaped so it cannot contain `:`.
    pub fn derive(prefix: &str, scope: &Scope, key: &IdempotencyKey) -> Self {
        let scope = scope.0.as_str();
        // One pass over the scope: its escaped length says both whether it is digested and
        // whether every byte stands for itself (escaped length = length).
        let escaped = escaped_len(scope);
        if escaped > MAX_ESCAPED_SCOPE_LEN {
            let mut out = spare::take(prefix.len() + DIGESTED_SCOPE_LEN + 1 + key.0.len());
            out.push_str(prefix);
            digest_scope_into(scope, &mut out);
            out.push(':');
            out.push_str(&key.0);
            return Self(out);
        }
        // A scope of unreserved characters only (most tenant names, and the global scope) is
        // copied whole: three copies into one buffer, not a check per byte. The buffer is the
        // one this thread's last finished operation gave back ([`StoreKey::recycle`]) when
        // there is one: no allocation (and no free at the end) per engine operation.
        let mut out = if escaped == scope.len() {
            let mut out = spare::take(prefix.len() + scope.len() + 1 + key.0.len());
            out.push_str(prefix);
            out.push_str(scope);
            out
        } else {
            let mut out = spare::take(prefix.len() + scope.len() + key.0.len() + 8);
            out.push_str(prefix);
            escape_scope_into(scope, &mut out);
            out
        };
        out.push(':');
        out.push_str(&key.0);
        Self(out)
    }

    /// Give the key's buffer back for the next [`StoreKey::derive`] on this thread (the engine
    /// calls this when it is done with a key). Only a buffer of ordinary size is kept, and at
    /// most one per thread; otherwise this is a drop.
    pub(crate) fn recycle(self) {
        spare::give(self.0);
    }

    /// The beginning every store key of `scope` shares: `prefix + escape(scope) + ":"`. Since
    /// the escaped scope never contains `:`, a store key starts with it exactly when it was
    /// derived from this scope (and prefix), so operators' tools can select one tenant's records
    /// by prefix (the `idempotency purge --scope` command does).
    ///
    /// ```
    /// use idempotency_core::{IdempotencyKey, Scope, StoreKey};
    /// let prefix = StoreKey::scope_prefix("idem:", &Scope::new("tenant:a"));
    /// assert_eq!(prefix, "idem:tenant%3Aa:");
    /// let key = StoreKey::derive("idem:", &Scope::new("tenant:a"), &IdempotencyKey::new("k").unwrap());
    /// assert!(key.as_str().starts_with(&prefix));
    /// ```
    pub fn scope_prefix(prefix: &str, scope: &Scope) -> String {
        let mut out = String::with_capacity(prefix.len() + scope.0.len().min(256) + 8);
        out.push_str(prefix);
        scope_part_into(&scope.0, &mut out);
        out.push(':');
        out
    }

    /// Wrap a raw store key (for inspection tools and tests). No escaping is applied.
    pub fn from_raw(raw: impl Into<String>) -> Self {
        Self(raw.into())
    }

    /// The key as sent to the store.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for StoreKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StoreKey({:?})", self.0)
    }
}

impl fmt::Display for StoreKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One spare store-key buffer per thread: what [`StoreKey::recycle`] gave back, taken by the
/// next [`StoreKey::derive`]. An engine operation derives a key, uses it, and is done with it;
/// with the buffer handed back, the next operation on the thread writes its key into the same
/// bytes instead of allocating (an allocation and a free per operation, ~190 instructions of a
/// fresh operation on the memory store, `cargo xtask instructions`). A thread keeps at most one
/// buffer of at most [`spare::KEPT`] bytes.
mod spare {
    use std::cell::Cell;

    /// The largest buffer a thread keeps (a key of [`super::MAX_KEY_LEN`] bytes with a prefix
    /// and scope of ordinary length fits).
    pub(super) const KEPT: usize = 512;

    thread_local! {
        static SPARE: Cell<Option<String>> = const { Cell::new(None) };
    }

    /// An empty buffer with room for `capacity` bytes: the thread's spare if it has one (grown
    /// if needed), else a new one.
    pub(super) fn take(capacity: usize) -> String {
        // `try_with`: a key derived from another thread-local's destructor at thread exit
        // (where `with` would panic) gets a buffer of its own.
        match SPARE.try_with(Cell::take) {
            Ok(Some(mut spare)) => {
                spare.clear();
                spare.reserve(capacity);
                spare
            }
            Ok(None) | Err(_) => String::with_capacity(capacity),
        }
    }

    /// Keep `buffer` as the thread's spare (dropped if too large, or if the thread has one).
    pub(super) fn give(buffer: String) {
        if buffer.capacity() > KEPT {
            return;
        }
        let _ = SPARE.try_with(|spare| {
            // A thread that already has one keeps it (this one is dropped).
            let kept = spare.take();
            spare.set(Some(kept.unwrap_or(buffer)));
        });
    }
}

/// Whether `b` stands for itself in an escaped scope (RFC 3986 unreserved characters and `@`).
fn kept_in_scope(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b'@')
}

/// Length of a digested scope part: the marker and 64 hex digits.
const DIGESTED_SCOPE_LEN: usize = 1 + 64;

/// The length of `escape(scope)` without building it.
fn escaped_len(scope: &str) -> usize {
    scope
        .bytes()
        .map(|b| if kept_in_scope(b) { 1 } else { 3 })
        .sum()
}

/// The scope's part of a store key: escaped, or digested when the escaped form is longer than
/// [`MAX_ESCAPED_SCOPE_LEN`].
fn scope_part_into(scope: &str, out: &mut String) {
    if escaped_len(scope) > MAX_ESCAPED_SCOPE_LEN {
        digest_scope_into(scope, out);
    } else {
        escape_scope_into(scope, out);
    }
}

/// `#` and the lowercase hex SHA-256 of the scope's bytes.
fn digest_scope_into(scope: &str, out: &mut String) {
    use sha2::{Digest, Sha256};
    out.push(DIGEST_MARKER);
    crate::hexfmt::push_hex(out, &Sha256::digest(scope.as_bytes()));
}

/// Percent-escape everything but unreserved characters. `%` and `:` are always escaped (so the
/// scope cannot forge a separator), and so are `{`/`}` (so a tenant cannot pick a Redis Cluster
/// hash tag and pile every key into one slot) and all non-ASCII or control bytes.
fn escape_scope_into(scope: &str, out: &mut String) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for &b in scope.as_bytes() {
        if kept_in_scope(b) {
            out.push(b as char);
        } else {
            out.push('%');
            out.push(HEX[(b >> 4) as usize] as char);
            out.push(HEX[(b & 0x0f) as usize] as char);
        }
    }
}

/// `bytes`, which [`IdempotencyKey::validate`] accepted, as a `String`: one check (a word at a
/// time for ASCII) and one copy, not a push per character.
pub(crate) fn ascii_text(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(text) => text.to_owned(),
        // Not reached: visible ASCII is valid UTF-8.
        Err(_) => String::from_utf8_lossy(bytes).into_owned(),
    }
}

/// Helpers shared by this module's tests and `header`'s.
#[cfg(test)]
pub(crate) mod test_support {
    /// RFC 8941 §4.1.6 serialisation of an sf-string.
    pub(crate) fn quote(key: &str) -> String {
        let mut out = String::from("\"");
        for c in key.chars() {
            if c == '"' || c == '\\' {
                out.push('\\');
            }
            out.push(c);
        }
        out.push('"');
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn key_validation_reports_what_is_wrong() {
        assert_eq!(IdempotencyKey::new(""), Err(KeyError::Empty));
        assert_eq!(
            IdempotencyKey::new("a".repeat(256)),
            Err(KeyError::TooLong { len: 256 })
        );
        assert!(IdempotencyKey::new("a".repeat(255)).is_ok());
        assert_eq!(
            IdempotencyKey::new("ab c"),
            Err(KeyError::InvalidByte {
                byte: b' ',
                position: 2
            })
        );
        assert_eq!(
            IdempotencyKey::new("é"),
            Err(KeyError::InvalidByte {
                byte: 0xc3,
                position: 0
            })
        );
        assert!(IdempotencyKey::from_bytes(b"k\x7f").is_err());
        assert!(IdempotencyKey::new("!~{}:%").is_ok());
    }

    #[test]
    fn prefix_validation() {
        assert!(validate_prefix("idem:").is_ok());
        assert!(validate_prefix("").is_err());
        assert!(validate_prefix("a b").is_err());
    }

    #[test]
    fn scope_cannot_forge_separator() {
        let k1 = IdempotencyKey::new("b:c").unwrap();
        let k2 = IdempotencyKey::new("c").unwrap();
        let a = StoreKey::derive("p:", &Scope::new("a"), &k1);
        let b = StoreKey::derive("p:", &Scope::new("a:b"), &k2);
        assert_ne!(a, b);
        let g = StoreKey::derive("p:", &Scope::global(), &k2);
        assert_eq!(g.as_str(), "p::c");
    }

    #[test]
    fn header_values_quoted_and_bare() {
        let k = |v: &[u8]| IdempotencyKey::from_header_value(v);
        assert_eq!(k(b"abc").unwrap().as_str(), "abc");
        assert_eq!(k(b"\"abc\"").unwrap().as_str(), "abc");
        assert_eq!(k(b"  \"abc\"\t").unwrap().as_str(), "abc");
        assert_eq!(k(b"\"a b\"").unwrap().as_str(), "a b");
        assert_eq!(k(br#""a\"b\\c""#).unwrap().as_str(), r#"a"b\c"#);
        assert_eq!(k(b"\"abc"), Err(KeyError::Unterminated));
        assert_eq!(k(b"\"abc\\"), Err(KeyError::InvalidEscape { position: 4 }));
        assert_eq!(
            k(br#""a\nb""#),
            Err(KeyError::InvalidEscape { position: 2 })
        );
        assert_eq!(k(b"\"a\", \"b\""), Err(KeyError::SeveralKeys));
        assert_eq!(
            k(b"\"a\" b"),
            Err(KeyError::AfterClosingQuote { position: 4 })
        );
        assert_eq!(
            k(b"\"a\x01b\""),
            Err(KeyError::InvalidByte {
                byte: 1,
                position: 2
            })
        );
        assert_eq!(
            k("\"é\"".as_bytes()),
            Err(KeyError::InvalidByte {
                byte: 0xc3,
                position: 1
            })
        );
        assert_eq!(k(b"\"\""), Err(KeyError::Empty));
        assert_eq!(k(b"   "), Err(KeyError::Empty));
        assert!(matches!(
            k(b"a b"),
            Err(KeyError::InvalidByte { byte: b' ', .. })
        ));
        let long = format!("\"{}\"", "a".repeat(256));
        assert_eq!(k(long.as_bytes()), Err(KeyError::TooLong { len: 256 }));
        // 255 characters, each escaped: the header is longer, the key is not.
        let escaped = format!("\"{}\"", "\\\\".repeat(255));
        assert_eq!(k(escaped.as_bytes()).unwrap().as_str().len(), 255);
    }

    /// Store keys are persisted: a derivation must give these exact bytes forever.
    #[test]
    fn derived_store_keys_are_byte_identical_to_golden_values() {
        let cases: [(&str, &str, &str, &str); 9] = [
            ("idem:", "", "k", "idem::k"),
            ("idem:", "bench", "c1-t0-12345", "idem:bench:c1-t0-12345"),
            ("idem:", "tenant:a", "order-1", "idem:tenant%3Aa:order-1"),
            ("p", "A-z_0.9~@", "x:y", "pA-z_0.9~@:x:y"),
            ("p:", "{slot}", "k", "p:%7Bslot%7D:k"),
            ("p:", "50%", "%", "p:50%25:%"),
            ("p:", "a b/c", "!~", "p:a%20b%2Fc:!~"),
            ("p:", "é\u{7f}\n", "k", "p:%C3%A9%7F%0A:k"),
            ("x", "日本", "k", "x%E6%97%A5%E6%9C%AC:k"),
        ];
        for (prefix, scope, key, expected) in cases {
            let derived = StoreKey::derive(
                prefix,
                &Scope::new(scope),
                &IdempotencyKey::new(key).unwrap(),
            );
            assert_eq!(derived.as_str(), expected, "{prefix:?} {scope:?} {key:?}");
            assert_eq!(derived.as_str(), reference_derivation(prefix, scope, key));
        }
    }

    /// The derivation as first written (a check per scope byte): what every store key ever
    /// persisted was derived with.
    /// Scopes whose escaped form is longer than the bound are digested (see the module docs).
    fn reference_derivation(prefix: &str, scope: &str, key: &str) -> String {
        let mut escaped = String::new();
        for &b in scope.as_bytes() {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b'@') {
                escaped.push(b as char);
            } else {
                escaped.push_str(&format!("%{b:02X}"));
            }
        }
        let mut out = String::from(prefix);
        if escaped.len() > 128 {
            use sha2::{Digest, Sha256};
            out.push('#');
            for b in Sha256::digest(scope.as_bytes()) {
                out.push_str(&format!("{b:02x}"));
            }
        } else {
            out.push_str(&escaped);
        }
        out.push(':');
        out.push_str(key);
        out
    }

    #[test]
    fn a_60_kb_scope_derives_a_bounded_key() {
        let key = IdempotencyKey::new("k".repeat(MAX_KEY_LEN)).unwrap();
        let token = "eyJhbGciOiJSUzI1NiJ9.".repeat(3_000); // ~63 KB, a bearer token
        let derived = StoreKey::derive("idempotency:", &Scope::new(token.clone()), &key);
        assert_eq!(
            derived.as_str().len(),
            "idempotency:".len() + 65 + 1 + MAX_KEY_LEN
        );
        let scope_part = &derived.as_str()["idempotency:".len()..][..65];
        assert!(scope_part.starts_with('#'), "{scope_part}");
        assert!(scope_part[1..].bytes().all(|b| b.is_ascii_hexdigit()));
        // Its records are found by the scope prefix, as a short scope's are.
        let prefix = StoreKey::scope_prefix("idempotency:", &Scope::new(token.clone()));
        assert!(derived.as_str().starts_with(&prefix));
        assert_eq!(prefix.len(), "idempotency:".len() + 65 + 1);
        // Different long scopes differ (here by their last byte only).
        let other = StoreKey::derive("idempotency:", &Scope::new(format!("{token}x")), &key);
        assert_ne!(derived, other);
    }

    #[test]
    fn the_bound_is_on_the_escaped_form() {
        let key = IdempotencyKey::new("k").unwrap();
        // 128 escaped bytes: kept whole (as before the bound); 129: digested.
        let at = "a".repeat(MAX_ESCAPED_SCOPE_LEN);
        let derived = StoreKey::derive("p:", &Scope::new(at.clone()), &key);
        assert_eq!(derived.as_str(), format!("p:{at}:k"));
        let over = "a".repeat(MAX_ESCAPED_SCOPE_LEN + 1);
        let derived = StoreKey::derive("p:", &Scope::new(over), &key);
        assert!(derived.as_str().starts_with("p:#"), "{derived}");
        // 43 colons escape to 129 bytes: digested although the scope is 43 bytes.
        let colons = ":".repeat(43);
        let derived = StoreKey::derive("p:", &Scope::new(colons), &key);
        assert!(derived.as_str().starts_with("p:#"), "{derived}");
        let colons = ":".repeat(42);
        let derived = StoreKey::derive("p:", &Scope::new(colons), &key);
        assert_eq!(derived.as_str(), format!("p:{}:k", "%3A".repeat(42)));
    }

    #[test]
    fn a_long_scope_never_derives_a_short_scopes_key() {
        // The scope `#<64 hex>` itself is short but escapes `#` to `%23`: never the digest form.
        let key = IdempotencyKey::new("k").unwrap();
        let long = "x".repeat(200);
        let digested = StoreKey::derive("p:", &Scope::new(long), &key);
        let part = &digested.as_str()[2..67];
        let mimic = StoreKey::derive("p:", &Scope::new(part), &key);
        assert_ne!(digested, mimic);
        assert!(mimic.as_str().starts_with("p:%23"));
    }

    use super::test_support::quote;

    proptest! {
        #[test]
        // A bare key is any visible-ASCII key that does not start with `"` (such a value is an
        // sf-string by definition).
        fn quoted_and_bare_keys_share_a_store_key(k in "[!#-~][!-~]{0,254}", scope in ".{0,8}") {
            let bare = IdempotencyKey::from_header_value(k.as_bytes()).unwrap();
            let quoted = IdempotencyKey::from_header_value(quote(&k).as_bytes()).unwrap();
            let scope = Scope::new(scope);
            prop_assert_eq!(
                StoreKey::derive("idem:", &scope, &bare),
                StoreKey::derive("idem:", &scope, &quoted)
            );
            prop_assert_eq!(bare.as_str(), k.as_str());
        }

        #[test]
        fn every_printable_key_round_trips_through_quotes(k in "[ -~]{1,255}") {
            let quoted = IdempotencyKey::from_header_value(quote(&k).as_bytes()).unwrap();
            prop_assert_eq!(quoted.as_str(), k.as_str());
        }

        #[test]
        fn header_parsing_never_panics(v in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = IdempotencyKey::from_header_value(&v);
        }

        #[test]
        fn derivation_is_injective(
            s1 in ".{0,12}", k1 in "[!-~]{1,12}",
            s2 in ".{0,12}", k2 in "[!-~]{1,12}",
        ) {
            let key1 = IdempotencyKey::new(&k1).unwrap();
            let key2 = IdempotencyKey::new(&k2).unwrap();
            let d1 = StoreKey::derive("idem:", &Scope::new(s1.clone()), &key1);
            let d2 = StoreKey::derive("idem:", &Scope::new(s2.clone()), &key2);
            prop_assert_eq!(d1 == d2, s1 == s2 && k1 == k2);
        }

        #[test]
        fn derivation_is_injective_near_collisions(
            s in "[a:%{}]{0,6}", k in "[a:%{}]{1,6}", t in "[a:%{}]{0,6}", j in "[a:%{}]{1,6}",
        ) {
            let d1 = StoreKey::derive("x", &Scope::new(s.clone()), &IdempotencyKey::new(&k).unwrap());
            let d2 = StoreKey::derive("x", &Scope::new(t.clone()), &IdempotencyKey::new(&j).unwrap());
            prop_assert_eq!(d1 == d2, s == t && k == j);
        }

        #[test]
        // Scopes on both sides of the bound (short, near 128 escaped bytes, long), with a few
        // distinct bytes so that near-equal pairs are common: distinct pairs never collide.
        fn derivation_is_injective_across_the_bound(
            s1 in "[a:#%]{0,8}", n1 in 0usize..3, k1 in "[a:]{1,4}",
            s2 in "[a:#%]{0,8}", n2 in 0usize..3, k2 in "[a:]{1,4}",
        ) {
            let lengths = [0, 110, 300];
            let scope1 = format!("{}{s1}", "b".repeat(lengths[n1]));
            let scope2 = format!("{}{s2}", "b".repeat(lengths[n2]));
            let d1 = StoreKey::derive("idem:", &Scope::new(scope1.clone()), &IdempotencyKey::new(&k1).unwrap());
            let d2 = StoreKey::derive("idem:", &Scope::new(scope2.clone()), &IdempotencyKey::new(&k2).unwrap());
            prop_assert_eq!(d1 == d2, scope1 == scope2 && k1 == k2);
            prop_assert!(d1.as_str().len() <= "idem:".len() + 128 + 1 + 4);
        }

        #[test]
        fn derivation_matches_the_reference(prefix in "[!-~]{1,8}", s in any::<String>(), k in "[!-~]{1,40}") {
            let d = StoreKey::derive(&prefix, &Scope::new(s.clone()), &IdempotencyKey::new(&k).unwrap());
            prop_assert_eq!(d.as_str(), reference_derivation(&prefix, &s, &k));
        }

        #[test]
        fn store_keys_are_printable(s in any::<String>(), k in "[!-~]{1,40}") {
            let d = StoreKey::derive("idem:", &Scope::new(s), &IdempotencyKey::new(&k).unwrap());
            prop_assert!(d.as_str().bytes().all(|b| (0x21..=0x7e).contains(&b)));
        }
    }
}
