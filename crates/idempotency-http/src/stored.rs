//! The stored form of an HTTP response: status, the headers worth replaying, and the body (or a
//! mark that it was too large to keep).
//!
//! Binary and length-prefixed (the record codec base64s it once; JSON inside would double the
//! cost):
//!
//! ```text
//! "IH1" | status: u16 BE | flags: u8 (bit 0: body omitted) | header count: u16 BE
//!       | per header: name len u16 BE, name, value len u32 BE, value
//!       | body (the rest)
//! ```

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use idempotency_core::CorruptRecord;

/// Content type marking an outcome written by this layer.
pub(crate) const CONTENT_TYPE: &str = "application/vnd.idempotency.http-response.v1";
const MAGIC: &[u8; 3] = b"IH1";
const BODY_OMITTED: u8 = 1;

/// A response as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StoredResponse {
    pub(crate) status: StatusCode,
    pub(crate) headers: Vec<(HeaderName, HeaderValue)>,
    pub(crate) body: Bytes,
    pub(crate) body_omitted: bool,
}

impl StoredResponse {
    /// Length of [`encode`](Self::encode)'s output.
    #[cfg(test)]
    pub(crate) fn encoded_len(&self) -> usize {
        encoded_len(self.headers.iter().map(|(n, v)| (n, v)), self.body.len())
    }

    pub(crate) fn encode(&self) -> Bytes {
        encode(
            self.status,
            || self.headers.iter().map(|(n, v)| (n, v)),
            &self.body,
            self.body_omitted,
        )
    }

    pub(crate) fn decode(bytes: &Bytes) -> Result<Self, CorruptRecord> {
        // `Bytes` is a `Buf`: every read below advances it, `split_to` hands out the header
        // bytes without copying, and what remains at the end is the body.
        let mut buf = bytes.clone();
        if take(&mut buf, MAGIC.len())? != MAGIC[..] {
            return Err(CorruptRecord::new("stored HTTP response has no IH1 header"));
        }
        let status = StatusCode::from_u16(buf.try_get_u16().map_err(truncated)?)
            .map_err(|_| CorruptRecord::new("stored HTTP status is invalid"))?;
        let flags = buf.try_get_u8().map_err(truncated)?;
        let count = buf.try_get_u16().map_err(truncated)?;
        let mut headers = Vec::with_capacity(usize::from(count));
        for _ in 0..count {
            let name_len = usize::from(buf.try_get_u16().map_err(truncated)?);
            let name = HeaderName::from_bytes(&take(&mut buf, name_len)?)
                .map_err(|_| CorruptRecord::new("stored header name is invalid"))?;
            let value_len = buf.try_get_u32().map_err(truncated)? as usize;
            let value = HeaderValue::from_maybe_shared(take(&mut buf, value_len)?)
                .map_err(|_| CorruptRecord::new("stored header value is invalid"))?;
            headers.push((name, value));
        }
        Ok(Self {
            status,
            headers,
            body: buf,
            body_omitted: flags & BODY_OMITTED != 0,
        })
    }

    /// Keep the headers worth replaying: never hop-by-hop ones or `content-length` (recomputed);
    /// `set-cookie` only when asked (a session cookie replayed to a retry is rarely wanted).
    pub(crate) fn replayable_headers(
        headers: &HeaderMap,
        keep_set_cookie: bool,
    ) -> Vec<(HeaderName, HeaderValue)> {
        headers
            .iter()
            .filter(|(name, _)| replayable(name, keep_set_cookie))
            .map(|(n, v)| (n.clone(), v.clone()))
            .collect()
    }
}

/// Whether a response header is kept in the record (see
/// [`StoredResponse::replayable_headers`]).
pub(crate) fn replayable(name: &HeaderName, keep_set_cookie: bool) -> bool {
    !is_hop_by_hop(name)
        && *name != http::header::CONTENT_LENGTH
        && (keep_set_cookie || *name != http::header::SET_COOKIE)
}

/// The replayable headers of a response head, read in place (no copy of the values).
pub(crate) fn replayable_in(
    headers: &HeaderMap,
    keep_set_cookie: bool,
) -> impl Iterator<Item = (&HeaderName, &HeaderValue)> {
    headers
        .iter()
        .filter(move |(name, _)| replayable(name, keep_set_cookie))
}

/// Length of [`encode`]'s output for these headers and a body of `body_len` bytes.
pub(crate) fn encoded_len<'a>(
    headers: impl Iterator<Item = (&'a HeaderName, &'a HeaderValue)>,
    body_len: usize,
) -> usize {
    let header_bytes: usize = headers.map(|(n, v)| 6 + n.as_str().len() + v.len()).sum();
    8 + header_bytes + body_len
}

/// The record of a response (the format [`StoredResponse::decode`] reads), written straight
/// from its parts: a recorded response's headers are not copied out of its head first.
/// `headers` gives the same headers each time it is called (they are walked three times).
pub(crate) fn encode<'a, I>(
    status: StatusCode,
    headers: impl Fn() -> I,
    body: &[u8],
    body_omitted: bool,
) -> Bytes
where
    I: Iterator<Item = (&'a HeaderName, &'a HeaderValue)>,
{
    let mut out = BytesMut::with_capacity(encoded_len(headers(), body.len()));
    out.put_slice(MAGIC);
    out.put_u16(status.as_u16());
    out.put_u8(if body_omitted { BODY_OMITTED } else { 0 });
    out.put_u16(u16::try_from(headers().count()).unwrap_or(u16::MAX));
    for (name, value) in headers().take(u16::MAX as usize) {
        out.put_u16(name.as_str().len() as u16);
        out.put_slice(name.as_str().as_bytes());
        out.put_u32(value.len() as u32);
        out.put_slice(value.as_bytes());
    }
    out.put_slice(body);
    out.freeze()
}

/// RFC 9110 §7.6.1 connection-specific headers, plus the legacy ones proxies still send.
/// Whether a header is connection-specific (never stored or replayed).
pub fn is_hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "proxy-connection"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
    )
}

/// The next `len` bytes of `buf`, without copying; a short buffer is a truncated record.
fn take(buf: &mut Bytes, len: usize) -> Result<Bytes, CorruptRecord> {
    if buf.remaining() < len {
        return Err(truncated(bytes::TryGetError {
            requested: len,
            available: buf.remaining(),
        }));
    }
    Ok(buf.split_to(len))
}

fn truncated(_: bytes::TryGetError) -> CorruptRecord {
    CorruptRecord::new("stored HTTP response is truncated")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_head_encoded_in_place_is_the_record_of_its_replayable_headers() {
        let mut headers = HeaderMap::new();
        for (name, value) in [
            ("content-type", "application/json"),
            ("connection", "keep-alive"),
            ("content-length", "8"),
            ("set-cookie", "a=1"),
            ("x-request-id", "abc"),
            ("set-cookie", "b=2"),
            ("transfer-encoding", "chunked"),
        ] {
            headers.append(
                HeaderName::from_static(name),
                HeaderValue::from_static(value),
            );
        }
        for keep_set_cookie in [false, true] {
            let stored = StoredResponse {
                status: StatusCode::CREATED,
                headers: StoredResponse::replayable_headers(&headers, keep_set_cookie),
                body: Bytes::from_static(b"{\"id\":1}"),
                body_omitted: false,
            };
            let in_place = encode(
                StatusCode::CREATED,
                || replayable_in(&headers, keep_set_cookie),
                b"{\"id\":1}",
                false,
            );
            assert_eq!(in_place, stored.encode());
            assert_eq!(
                encoded_len(replayable_in(&headers, keep_set_cookie), 0) + stored.body.len(),
                stored.encoded_len()
            );
            let cookies = usize::from(keep_set_cookie) * 2;
            assert_eq!(stored.headers.len(), 2 + cookies);
        }
    }

    #[test]
    fn round_trip() {
        let stored = StoredResponse {
            status: StatusCode::CREATED,
            headers: vec![
                (
                    http::header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                ),
                (
                    HeaderName::from_static("x-request-id"),
                    HeaderValue::from_static("abc"),
                ),
            ],
            body: Bytes::from_static(b"{\"id\":1}"),
            body_omitted: false,
        };
        assert_eq!(StoredResponse::decode(&stored.encode()).unwrap(), stored);
        assert_eq!(stored.encode().len(), stored.encoded_len());
    }

    #[test]
    fn every_truncation_is_corrupt() {
        let stored = StoredResponse {
            status: StatusCode::OK,
            headers: vec![(
                HeaderName::from_static("x-a"),
                HeaderValue::from_static("1"),
            )],
            body: Bytes::new(),
            body_omitted: true,
        };
        let encoded = stored.encode();
        for len in 0..encoded.len() {
            assert!(
                StoredResponse::decode(&encoded.slice(..len)).is_err(),
                "{len} of {} bytes decoded",
                encoded.len()
            );
        }
        assert_eq!(StoredResponse::decode(&encoded).unwrap(), stored);
    }

    #[test]
    fn garbage_is_corrupt_not_a_panic() {
        for bytes in [
            &b""[..],
            b"IH1",
            b"IH1\x00\xc9\x00\x00\x05",
            b"XX1\x00\xc8\x00\x00\x00",
            b"IH1\x03\xe8\x00\x00\x00",
        ] {
            assert!(
                StoredResponse::decode(&Bytes::copy_from_slice(bytes)).is_err(),
                "{bytes:?}"
            );
        }
        let many = b"IH1\x00\xc8\x00\xff\xff\x00\x05".to_vec();
        assert!(StoredResponse::decode(&Bytes::from(many)).is_err());
    }

    #[test]
    fn hop_by_hop_and_cookies_are_dropped() {
        let mut headers = HeaderMap::new();
        headers.insert("connection", HeaderValue::from_static("close"));
        headers.insert("transfer-encoding", HeaderValue::from_static("chunked"));
        headers.insert("content-length", HeaderValue::from_static("5"));
        headers.insert("set-cookie", HeaderValue::from_static("s=1"));
        headers.insert("location", HeaderValue::from_static("/orders/1"));
        let kept = StoredResponse::replayable_headers(&headers, false);
        assert_eq!(kept.len(), 1);
        assert_eq!(kept[0].0, http::header::LOCATION);
        assert_eq!(StoredResponse::replayable_headers(&headers, true).len(), 2);
    }
}
