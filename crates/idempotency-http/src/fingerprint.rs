//! The request fingerprint: what makes "the same request" for the `422` check.

mod lossless;

use bytes::Bytes;
use http::{HeaderValue, header};
use idempotency_core::Fingerprint;

use crate::policy::JsonFingerprint;
use crate::settings::Settings;

/// Method, path and query, content type, configured headers, then the (canonical) body; each a
/// length-prefixed part, so nothing can shift between them.
pub(crate) fn fingerprint(
    parts: &http::request::Parts,
    body: &Bytes,
    settings: &Settings,
) -> Fingerprint {
    let mut builder = Fingerprint::builder();
    builder.push(parts.method.as_str().as_bytes());
    builder.push(
        parts
            .uri
            .path_and_query()
            .map_or("/", |pq| pq.as_str())
            .as_bytes(),
    );
    let content_type = parts.headers.get(header::CONTENT_TYPE);
    let json_type = match settings.json {
        JsonFingerprint::Canonical => content_type.and_then(json_media_type),
        JsonFingerprint::Bytes => None,
    };
    match &json_type {
        // A distinct first byte: a canonical part can never equal a raw header value (`{` is
        // not a valid media-type start).
        Some(normalised) => builder.push(format!("{{json}}{normalised}").as_bytes()),
        None => builder.push(content_type.map_or(&b""[..], HeaderValue::as_bytes)),
    }
    for name in &settings.fingerprint_headers {
        builder.push(name.as_str().as_bytes());
        for value in parts.headers.get_all(name) {
            builder.push(value.as_bytes());
        }
    }
    match (&settings.canonical_body, json_type) {
        (Some(canonical), _) => builder.push(&canonical(body)),
        (None, Some(_)) => match lossless::canonical(body) {
            // The tag keeps canonical and raw parts apart: a body that falls back (e.g. with a
            // duplicate name) can be valid JSON, even the canonical text of another body.
            Ok(canonical) => {
                builder.push(b"jcs");
                builder.push(&canonical);
            }
            Err(refusal) => {
                tracing::debug!(
                    reason = refusal.as_str(),
                    "JSON body has no lossless RFC 8785 form; fingerprinting its bytes"
                );
                metrics::counter!(BYTES_FALLBACK, "reason" => refusal.as_str()).increment(1);
                builder.push(b"raw");
                builder.push(body);
            }
        },
        (None, None) => builder.push(body),
    }
    builder.finish()
}

/// The RFC 8785 (JCS) canonical form of a JSON document, or `None` when `body` has no
/// lossless one: it is not JSON (RFC 8259, UTF-8), an object has a member name twice, or a
/// number would be written as another value (beyond 2^53, more than 17 significant digits);
/// see [`JsonFingerprint::Canonical`].
///
/// What [`JsonFingerprint::Canonical`] fingerprints; useful inside a
/// [`fingerprint_body_with`](crate::LayerBuilder::fingerprint_body_with) closure that first
/// drops a field (a client timestamp) and then canonicalises the rest.
///
/// ```
/// let a = idempotency_http::canonical_json(br#"{"b": 1.0, "a": [true, null]}"#).unwrap();
/// assert_eq!(a, br#"{"a":[true,null],"b":1}"#);
/// assert_eq!(idempotency_http::canonical_json(b"not json"), None);
/// // Lossy: one double for both integers, or a repeated name.
/// assert_eq!(idempotency_http::canonical_json(b"9007199254740993"), None);
/// assert_eq!(idempotency_http::canonical_json(br#"{"a":1,"a":2}"#), None);
/// ```
pub fn canonical_json(body: &[u8]) -> Option<Vec<u8>> {
    lossless::canonical(body).ok()
}

/// Metric: JSON bodies fingerprinted by their bytes in canonical mode (label `reason`).
const BYTES_FALLBACK: &str = "idempotency_http_fingerprint_bytes_fallback_total";

/// For a JSON media type in UTF-8, its normalised form (`type/subtype` in lower case, then the
/// parameters other than `charset`, names in lower case, sorted); `None` otherwise, including
/// a JSON type that names another charset (JSON is UTF-8 only, RFC 8259 §8.1).
fn json_media_type(value: &HeaderValue) -> Option<String> {
    let media: mime::Mime = value.to_str().ok()?.parse().ok()?;
    let is_json = media.subtype() == mime::JSON || media.suffix() == Some(mime::JSON);
    if !is_json {
        return None;
    }
    if media
        .get_param(mime::CHARSET)
        .is_some_and(|charset| !charset.as_str().eq_ignore_ascii_case("utf-8"))
    {
        return None;
    }
    let mut params: Vec<(String, String)> = media
        .params()
        .filter(|(name, _)| *name != mime::CHARSET)
        .map(|(name, value)| (name.as_str().to_ascii_lowercase(), value.to_string()))
        .collect();
    params.sort();
    let mut out = media.essence_str().to_ascii_lowercase();
    for (name, value) in params {
        out.push(';');
        out.push_str(&name);
        out.push('=');
        out.push_str(&value);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn media(v: &'static str) -> Option<String> {
        json_media_type(&HeaderValue::from_static(v))
    }

    #[test]
    fn json_media_types_normalise() {
        let plain = media("application/json");
        assert_eq!(plain.as_deref(), Some("application/json"));
        assert_eq!(media("application/json; charset=utf-8"), plain);
        assert_eq!(media("Application/JSON;Charset=\"UTF-8\""), plain);
        assert_eq!(
            media("application/merge-patch+json").as_deref(),
            Some("application/merge-patch+json")
        );
        assert_eq!(
            media("application/json; b=2; a=1").as_deref(),
            Some("application/json;a=1;b=2")
        );
        assert_eq!(media("application/json; charset=\"utf-8\"  "), plain);
        // Not UTF-8: not JSON as RFC 8259 defines it, so bytes.
        assert_eq!(media("application/json; charset=latin1"), None);
        assert_eq!(media("application/json; charset=ISO-8859-1"), None);
        assert_eq!(media("application/problem+json; charset=utf-16"), None);
        assert_eq!(media("text/plain"), None);
        assert_eq!(media("not a media type"), None);
    }

    #[test]
    fn canonical_json_is_rfc_8785() {
        let a = canonical_json(br#"{"b": false, "c": 12e1, "a": "Hello!"}"#).unwrap();
        assert_eq!(a, br#"{"a":"Hello!","b":false,"c":120}"#);
        let b = canonical_json(br#"{"price":450,"name":"Tea"}"#).unwrap();
        let c = canonical_json(b"{ \"name\" : \"Tea\",\n \"price\" : 450.0 }").unwrap();
        assert_eq!(b, c);
        assert_eq!(canonical_json(b"{\"name\":"), None);
        assert_eq!(canonical_json(b"plain text"), None);
    }
}

#[cfg(test)]
mod props;
