//! Replaying a stored `Content-Encoding` only to a retry that can read it.
//!
//! A compression layer placed *under* this one (closer to the handler) compresses the first
//! response for the first client's `Accept-Encoding`; the record keeps those bytes. A retry that
//! does not accept that coding must not receive them: the layer answers `406` with a problem body
//! instead (it cannot re-encode without carrying every codec). Put compression **outside** the
//! layer and this never happens.

use http::{HeaderMap, HeaderName, HeaderValue, header};

/// The first content coding of a stored response that the request does not accept, if any.
///
/// `identity` is always acceptable. A request without `Accept-Encoding` is treated as accepting
/// `identity` only: RFC 9110 §12.5.3 would let a server send any coding then, but clients that
/// send no `Accept-Encoding` (curl without `--compressed`, most SDKs) rarely decode one, and
/// compression layers do not compress for them either.
pub(crate) fn unacceptable_coding(
    stored: &[(HeaderName, HeaderValue)],
    request: &HeaderMap,
) -> Option<String> {
    // The common replay (no stored coding) parses nothing.
    if !stored
        .iter()
        .any(|(name, _)| name == header::CONTENT_ENCODING)
    {
        return None;
    }
    let accepted: Vec<(String, bool)> = request
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .flat_map(|v| {
            String::from_utf8_lossy(v.as_bytes())
                .split(',')
                .filter_map(parse_accept)
                .collect::<Vec<_>>()
        })
        .collect();
    stored
        .iter()
        .filter(|(name, _)| name == header::CONTENT_ENCODING)
        .flat_map(|(_, value)| {
            String::from_utf8_lossy(value.as_bytes())
                .split(',')
                .map(|c| c.trim().to_ascii_lowercase())
                .collect::<Vec<_>>()
        })
        .filter(|coding| !coding.is_empty() && coding != "identity")
        .find(|coding| !acceptable(coding, &accepted))
}

/// One `Accept-Encoding` element: the coding in lower case and whether its weight is above 0.
fn parse_accept(element: &str) -> Option<(String, bool)> {
    let mut parts = element.split(';');
    let coding = parts.next()?.trim().to_ascii_lowercase();
    if coding.is_empty() {
        return None;
    }
    let mut allowed = true;
    for param in parts {
        if let Some((name, value)) = param.split_once('=')
            && name.trim().eq_ignore_ascii_case("q")
        {
            allowed = value.trim().parse::<f32>().is_ok_and(|q| q > 0.0);
        }
    }
    Some((coding, allowed))
}

fn acceptable(coding: &str, accepted: &[(String, bool)]) -> bool {
    // RFC 9110 §8.4.1.3: a recipient should treat `x-gzip` as `gzip`.
    let alias = match coding {
        "gzip" => "x-gzip",
        "x-gzip" => "gzip",
        other => other,
    };
    if let Some((_, allowed)) = accepted
        .iter()
        .find(|(name, _)| name == coding || name == alias)
    {
        return *allowed;
    }
    accepted
        .iter()
        .find(|(name, _)| name == "*")
        .is_some_and(|(_, allowed)| *allowed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(stored: &'static str, accept: Option<&'static str>) -> Option<String> {
        let stored = vec![(header::CONTENT_ENCODING, HeaderValue::from_static(stored))];
        let mut request = HeaderMap::new();
        if let Some(accept) = accept {
            request.insert(header::ACCEPT_ENCODING, HeaderValue::from_static(accept));
        }
        unacceptable_coding(&stored, &request)
    }

    #[test]
    fn accept_encoding_rules() {
        assert_eq!(check("gzip", Some("gzip, br")), None);
        assert_eq!(check("gzip", Some("GZIP;q=0.5")), None);
        assert_eq!(check("gzip", Some("x-gzip")), None);
        assert_eq!(check("gzip", Some("*")), None);
        assert_eq!(check("gzip", Some("*, gzip;q=0")).as_deref(), Some("gzip"));
        assert_eq!(check("gzip", Some("br")).as_deref(), Some("gzip"));
        assert_eq!(check("gzip", Some("identity")).as_deref(), Some("gzip"));
        assert_eq!(check("gzip", None).as_deref(), Some("gzip"));
        assert_eq!(check("gzip, br", Some("gzip")).as_deref(), Some("br"));
        assert_eq!(check("identity", None), None);
        assert_eq!(check("br", Some("gzip;q=1, br;q=0.1")), None);
        assert_eq!(check("br", Some("br;q=0")).as_deref(), Some("br"));
        assert_eq!(unacceptable_coding(&[], &HeaderMap::new()), None);
    }
}
