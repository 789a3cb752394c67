//! Secrets out of URLs before they reach a log line.

/// Query parameters whose values are secrets (redis-rs reads `pass` / `password` on unix-socket
/// URLs; the KV REST API accepts `_token`).
const SECRET_PARAMS: [&str; 6] = ["pass", "password", "token", "_token", "auth", "secret"];

/// What replaces a secret.
pub(crate) const REDACTED: &str = "<redacted>";

/// `url` with every secret replaced by `<redacted>`: the password of the user-info part (the
/// whole user-info when it has no `:`, since a lone name can be a token), and the values of
/// secret-bearing query parameters. A value without `scheme://` is not shown at all: it cannot
/// be told apart from a pasted secret.
///
/// ```
/// use idempotency::redact_url;
/// assert_eq!(redact_url("rediss://default:hunter2@eu1.upstash.io:6379"),
///            "rediss://default:<redacted>@eu1.upstash.io:6379");
/// assert_eq!(redact_url("redis://127.0.0.1:6379/0"), "redis://127.0.0.1:6379/0");
/// ```
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return REDACTED.to_owned();
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let authority = match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _password)) => format!("{user}:{REDACTED}@{host}"),
            None => format!("{REDACTED}@{host}"),
        },
        None => authority.to_owned(),
    };
    let (path, query_and_fragment) = match tail.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (tail, None),
    };
    let Some(query_and_fragment) = query_and_fragment else {
        return format!("{scheme}://{authority}{path}");
    };
    let (query, fragment) = match query_and_fragment.split_once('#') {
        Some((query, fragment)) => (query, Some(fragment)),
        None => (query_and_fragment, None),
    };
    let query: Vec<String> = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((name, _)) if is_secret_param(name) => format!("{name}={REDACTED}"),
            _ => pair.to_owned(),
        })
        .collect();
    let mut out = format!("{scheme}://{authority}{path}?{}", query.join("&"));
    if let Some(fragment) = fragment {
        out.push('#');
        out.push_str(fragment);
    }
    out
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
    }
}
