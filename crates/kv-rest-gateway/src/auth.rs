//! Token authentication: `Authorization: Bearer <token>` or the `_token` query parameter,
//! compared in constant time.

use axum::http::HeaderMap;
use axum::http::header::AUTHORIZATION;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::Secret;
use crate::query::query_pairs;

/// What a request's token allows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Access {
    /// Every command the gateway supports.
    ReadWrite,
    /// Read commands only (see [`crate::policy::is_read_only`]).
    ReadOnly,
}

/// The configured tokens, kept only as SHA-256 digests.
///
/// Comparing fixed-size digests in constant time hides both the content and the length of the
/// configured token from timing; the plain tokens are not kept in the server state at all.
pub(crate) struct Tokens {
    read_write: [u8; 32],
    read_only: Option<[u8; 32]>,
}

impl Tokens {
    pub(crate) fn new(read_write: &Secret, read_only: Option<&Secret>) -> Self {
        Self {
            read_write: digest(read_write.expose()),
            read_only: read_only.map(|token| digest(token.expose())),
        }
    }

    /// The access a presented token grants, or `None` when it is missing or wrong.
    pub(crate) fn check(&self, presented: Option<&str>) -> Option<Access> {
        let presented = digest(presented?);
        // Evaluate both comparisons unconditionally so the timing does not tell which token
        // (if any) matched.
        let rw: bool = presented.ct_eq(&self.read_write).into();
        let ro: bool = match &self.read_only {
            Some(read_only) => presented.ct_eq(read_only).into(),
            None => false,
        };
        if rw {
            Some(Access::ReadWrite)
        } else if ro {
            Some(Access::ReadOnly)
        } else {
            None
        }
    }
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// The token a request presents: the bearer token, else the `_token` query parameter.
pub(crate) fn presented_token(headers: &HeaderMap, query: Option<&str>) -> Option<String> {
    if let Some(value) = headers.get(AUTHORIZATION).and_then(|v| v.to_str().ok()) {
        let value = value.trim();
        if let Some((scheme, token)) = value.split_once(' ')
            && scheme.eq_ignore_ascii_case("bearer")
        {
            return Some(token.trim().to_owned());
        }
    }
    query_pairs(query?)
        .into_iter()
        .find(|(key, _)| key.as_slice() == b"_token")
        .and_then(|(_, value)| value)
        .map(|value| String::from_utf8_lossy(&value).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn bearer_and_query_tokens() {
        let tokens = Tokens::new(&Secret::new("rw"), Some(&Secret::new("ro")));
        assert_eq!(tokens.check(Some("rw")), Some(Access::ReadWrite));
        assert_eq!(tokens.check(Some("ro")), Some(Access::ReadOnly));
        assert_eq!(tokens.check(Some("r")), None);
        assert_eq!(tokens.check(None), None);

        let mut headers = HeaderMap::new();
        assert_eq!(
            presented_token(&headers, Some("a=1&_token=x%20y")),
            Some("x y".into())
        );
        headers.insert(AUTHORIZATION, HeaderValue::from_static("bearer abc"));
        assert_eq!(
            presented_token(&headers, Some("_token=other")),
            Some("abc".into())
        );
        assert_eq!(presented_token(&HeaderMap::new(), None), None);
    }
}
