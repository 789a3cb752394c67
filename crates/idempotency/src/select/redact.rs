//! Secrets out of URLs before they reach a log line.

/// Query parameters whose values are secrets (redis-rs reads `pass` / `password` on unix-socket
/// URLs; the KV REST API accepts `_token`).
const SECRET_PARAMS: [&str; 6] = ["pass", "password", "token", "_token", "auth", "secret"];

use url::{Position, Url, form_urlencoded};

/// What replaces a secret.
pub(crate) const REDACTED: &str = "<redacted>";

/// `url` with every secret replaced by `<redacted>`: the password of the user-info part (the
/// whole user-info when it has no password, since a lone name can be a token), and the values
/// of secret-bearing query parameters. Something that does not parse as an absolute URL (WHATWG
/// URL Standard, the `url` crate) is not shown at all: it cannot be told apart from a pasted
/// secret.
///
/// The URL is parsed by the `url` crate; the output keeps the text as written (a URL without
/// secrets comes back unchanged, and `<redacted>` is not percent-encoded), so log lines stay
/// readable.
///
/// ```
/// use idempotency::redact_url;
/// assert_eq!(redact_url("rediss://default:hunter2@eu1.upstash.io:6379"),
///            "rediss://default:<redacted>@eu1.upstash.io:6379");
/// assert_eq!(redact_url("redis://127.0.0.1:6379/0"), "redis://127.0.0.1:6379/0");
/// ```
pub fn redact_url(url: &str) -> String {
    let Ok(parsed) = Url::parse(url) else {
        return REDACTED.to_owned();
    };
    let secret_user_info = !parsed.username().is_empty() || parsed.password().is_some();
    let query = parsed.query().unwrap_or_default();
    if !secret_user_info && !query.split('&').any(is_secret_pair) {
        return url.to_owned();
    }
    // Rebuilt from the parsed parts, sliced out of the parser's serialisation: the scheme up
    // to `//`, then the user-info (redacted), then host, port and path as parsed.
    let mut out = parsed[..Position::BeforeUsername].to_owned();
    if secret_user_info {
        if parsed.password().is_some() {
            out.push_str(parsed.username());
            out.push(':');
        }
        out.push_str(REDACTED);
        out.push('@');
    }
    out.push_str(&parsed[Position::BeforeHost..Position::AfterPath]);
    if let Some(query) = parsed.query() {
        out.push('?');
        for (i, pair) in query.split('&').enumerate() {
            if i > 0 {
                out.push('&');
            }
            match pair.split_once('=') {
                Some((name, _)) if is_secret_pair(pair) => {
                    out.push_str(name);
                    out.push('=');
                    out.push_str(REDACTED);
                }
                _ => out.push_str(pair),
            }
        }
    }
    if let Some(fragment) = parsed.fragment() {
        out.push('#');
        out.push_str(fragment);
    }
    out
}

/// Whether a raw `name=value` query pair carries a secret (its name decoded first, so
/// `pa%73s=...` is caught too).
fn is_secret_pair(pair: &str) -> bool {
    form_urlencoded::parse(pair.as_bytes())
        .next()
        .is_some_and(|(name, _)| is_secret_param(&name))
}

fn is_secret_param(name: &str) -> bool {
    SECRET_PARAMS.iter().any(|p| name.eq_ignore_ascii_case(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_in_user_info_are_redacted() {
        assert_eq!(
            redact_url("redis://user:hunter2@db:6379/0"),
            "redis://user:<redacted>@db:6379/0"
        );
        assert_eq!(redact_url("redis://:pw@h/0"), "redis://:<redacted>@h/0");
        assert_eq!(
            redact_url("rediss://lonetoken@h:6380"),
            "rediss://<redacted>@h:6380"
        );
        // An `@` inside the password: the host is what follows the last one.
        assert_eq!(
            redact_url("redis://u:p@ss@host:1"),
            "redis://u:<redacted>@host:1"
        );
    }

    #[test]
    fn secret_query_parameters_are_redacted() {
        assert_eq!(
            redact_url("redis+unix:///run/redis.sock?db=2&pass=hunter2"),
            "redis+unix:///run/redis.sock?db=2&pass=<redacted>"
        );
        assert_eq!(
            redact_url("https://kv.example/?_token=abc#x"),
            "https://kv.example/?_token=<redacted>#x"
        );
        assert_eq!(
            redact_url("https://h/?Password=abc"),
            "https://h/?Password=<redacted>"
        );
    }

    #[test]
    fn urls_without_secrets_are_unchanged() {
        for url in [
            "redis://127.0.0.1:6379",
            "https://eu1-x.upstash.io",
            "unix:///tmp/redis.sock?db=1",
            "http://127.0.0.1:8079/path?a=b",
        ] {
            assert_eq!(redact_url(url), url);
        }
    }

    #[test]
    fn something_that_is_not_a_url_is_not_shown() {
        assert_eq!(redact_url("hunter2"), REDACTED);
        assert_eq!(redact_url("redis://[::1"), REDACTED, "unparseable");
    }

    #[test]
    fn encoded_secret_names_and_encoded_passwords_are_redacted_readably() {
        assert_eq!(
            redact_url("redis+unix:///s.sock?pa%73s=x"),
            "redis+unix:///s.sock?pa%73s=<redacted>"
        );
        assert_eq!(
            redact_url("redis://u:p%40ss@h:1/0"),
            "redis://u:<redacted>@h:1/0"
        );
    }
}
