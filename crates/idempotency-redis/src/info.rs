//! Reading `INFO` and `CONFIG GET` replies, from one server or (as a map of node → reply) from
//! every node of a cluster.

use redis::Value;

/// The text of every node's reply: one element for a single server, one per node for a
/// cluster (whose client answers multi-node commands with a map of address → reply).
pub(crate) fn node_texts(value: Value) -> Vec<String> {
    let mut out = Vec::new();
    collect_texts(value, &mut out);
    out
}

fn collect_texts(value: Value, out: &mut Vec<String>) {
    match value {
        Value::BulkString(bytes) => out.push(String::from_utf8_lossy(&bytes).into_owned()),
        Value::SimpleString(text) | Value::VerbatimString { text, .. } => out.push(text),
        Value::Map(entries) => entries.into_iter().for_each(|(_, v)| collect_texts(v, out)),
        Value::Array(items) | Value::Set(items) => {
            items.into_iter().for_each(|v| collect_texts(v, out));
        }
        Value::Attribute { data, .. } => collect_texts(*data, out),
        _ => {}
    }
}

/// The value of `name` in an `INFO` text (`name:value` lines).
pub(crate) fn info_field<'a>(info: &'a str, name: &str) -> Option<&'a str> {
    info.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        (key == name).then(|| value.trim())
    })
}

/// The value of `name` in a `CONFIG GET name` reply: a flat `[name, value]` array (RESP2), a map
/// (RESP3), or either nested under node addresses (cluster).
pub(crate) fn config_value(value: &Value, name: &str) -> Option<String> {
    match value {
        Value::Array(items) => {
            let mut pairs = items.chunks_exact(2);
            let found = pairs.find_map(|pair| match pair {
                [k, v] if text(k).is_some_and(|k| k.eq_ignore_ascii_case(name)) => text(v),
                _ => None,
            });
            found.or_else(|| items.iter().find_map(|item| config_value(item, name)))
        }
        Value::Map(entries) => entries.iter().find_map(|(k, v)| {
            if text(k).is_some_and(|k| k.eq_ignore_ascii_case(name)) {
                text(v)
            } else {
                config_value(v, name)
            }
        }),
        _ => None,
    }
}

fn text(value: &Value) -> Option<String> {
    match value {
        Value::BulkString(bytes) => Some(String::from_utf8_lossy(bytes).into_owned()),
        Value::SimpleString(text) | Value::VerbatimString { text, .. } => Some(text.clone()),
        _ => None,
    }
}

/// `major.minor.patch` of a version string such as `7.0.15`; missing parts are 0.
pub(crate) fn parse_version(version: &str) -> Option<(u32, u32, u32)> {
    let mut parts = version.trim().split('.').map(|p| p.parse::<u32>());
    let major = parts.next()?.ok()?;
    let minor = parts.next().and_then(Result::ok).unwrap_or(0);
    let patch = parts.next().and_then(Result::ok).unwrap_or(0);
    Some((major, minor, patch))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn info_fields_and_versions() {
        let info = "# Server\r\nredis_version:7.0.15\r\nredis_mode:standalone\r\n";
        assert_eq!(info_field(info, "redis_version"), Some("7.0.15"));
        assert_eq!(info_field(info, "redis_mode"), Some("standalone"));
        assert_eq!(info_field(info, "nope"), None);
        assert_eq!(parse_version("7.0.15"), Some((7, 0, 15)));
        assert_eq!(parse_version("6.2"), Some((6, 2, 0)));
        assert_eq!(parse_version("x"), None);
    }

    #[test]
    fn config_replies_in_every_shape() {
        let bulk = |s: &str| Value::BulkString(s.as_bytes().to_vec());
        let resp2 = Value::Array(vec![bulk("maxmemory-policy"), bulk("allkeys-lru")]);
        assert_eq!(
            config_value(&resp2, "maxmemory-policy").as_deref(),
            Some("allkeys-lru")
        );
        let resp3 = Value::Map(vec![(bulk("save"), bulk(""))]);
        assert_eq!(config_value(&resp3, "save").as_deref(), Some(""));
        let cluster = Value::Map(vec![(bulk("127.0.0.1:7000"), resp2.clone())]);
        assert_eq!(
            config_value(&cluster, "maxmemory-policy").as_deref(),
            Some("allkeys-lru")
        );
        assert_eq!(config_value(&Value::Array(vec![]), "save"), None);
        let texts = node_texts(Value::Map(vec![
            (bulk("a"), bulk("x")),
            (bulk("b"), bulk("y")),
        ]));
        assert_eq!(texts, vec!["x".to_owned(), "y".to_owned()]);
    }
}
