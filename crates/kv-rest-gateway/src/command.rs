//! Turning requests into Redis commands, and the policy on which commands may run.
//!
//! Two request forms carry a command: a JSON array (`["SET","k","v"]`) and a URL path
//! (`/set/k/v`, with an optional raw body and query-string arguments). Both become a
//! [`Command`], a list of binary-safe arguments, which then passes [`check_allowed`].

use percent_encoding::percent_decode;
use serde_json::Value as Json;

use crate::auth::Access;
use crate::error::GatewayError;

/// One Redis command: the name followed by its arguments, each binary safe.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Command {
    args: Vec<Vec<u8>>,
}

impl Command {
    /// A command from its arguments; the first is the name. Fails when empty.
    pub(crate) fn new(args: Vec<Vec<u8>>) -> Result<Self, GatewayError> {
        if args.is_empty() {
            return Err(GatewayError::BadRequest("ERR empty command".into()));
        }
        Ok(Self { args })
    }

    /// The command name in upper case (lossy for non-UTF-8 names).
    pub(crate) fn name(&self) -> String {
        self.args
            .first()
            .map(|name| String::from_utf8_lossy(name).to_ascii_uppercase())
            .unwrap_or_default()
    }

    /// Every argument, the name first.
    pub(crate) fn args(&self) -> &[Vec<u8>] {
        &self.args
    }

    /// Mutable access for the script translation.
    pub(crate) fn args_mut(&mut self) -> &mut Vec<Vec<u8>> {
        &mut self.args
    }

    /// The argument at `index` upper-cased (for sub-command and option matching).
    pub(crate) fn arg_upper(&self, index: usize) -> Option<String> {
        self.args
            .get(index)
            .map(|arg| String::from_utf8_lossy(arg).to_ascii_uppercase())
    }

    /// The command as a `redis` crate command.
    pub(crate) fn to_redis(&self) -> redis::Cmd {
        let mut cmd = redis::Cmd::new();
        for arg in &self.args {
            cmd.arg(arg.as_slice());
        }
        cmd
    }
}

/// A JSON command array (`["SET","k","v",1,true]`) as a [`Command`].
///
/// Strings pass as they are; integers and floats as their decimal text; booleans as `true` /
/// `false`. `null`, objects and nested arrays are refused.
pub(crate) fn command_from_json(value: &Json) -> Result<Command, GatewayError> {
    let Json::Array(items) = value else {
        return Err(GatewayError::BadRequest(
            "ERR a command must be a JSON array, e.g. [\"GET\",\"key\"]".into(),
        ));
    };
    let mut args = Vec::with_capacity(items.len());
    for (index, item) in items.iter().enumerate() {
        let arg = match item {
            Json::String(s) => s.as_bytes().to_vec(),
            Json::Number(n) => n.to_string().into_bytes(),
            Json::Bool(b) => b.to_string().into_bytes(),
            Json::Null | Json::Array(_) | Json::Object(_) => {
                return Err(GatewayError::BadRequest(format!(
                    "ERR argument {index} must be a string, a number or a boolean"
                )));
            }
        };
        if index == 0 && !matches!(item, Json::String(_)) {
            return Err(GatewayError::BadRequest(
                "ERR the command name must be a string".into(),
            ));
        }
        args.push(arg);
    }
    Command::new(args)
}

/// A path-form command: URL-decoded path segments, then the raw body (if any, non-empty),
/// then the query-string arguments (`_token` excluded).
///
/// A trailing slash is ignored. A query pair `key=value` adds `key` and `value`; a bare `key`
/// (or `key=`) adds only `key`.
pub(crate) fn command_from_path(
    path: &str,
    body: Option<&[u8]>,
    query: Option<&str>,
) -> Result<Command, GatewayError> {
    let trimmed = path.strip_prefix('/').unwrap_or(path);
    let trimmed = trimmed.strip_suffix('/').unwrap_or(trimmed);
    let mut args: Vec<Vec<u8>> = if trimmed.is_empty() {
        Vec::new()
    } else {
        trimmed
            .split('/')
            .map(|segment| percent_decode(segment.as_bytes()).collect())
            .collect()
    };
    if let Some(body) = body.filter(|body| !body.is_empty()) {
        args.push(body.to_vec());
    }
    if let Some(query) = query {
        for (key, value) in query_pairs(query) {
            if key.as_slice() == b"_token" {
                continue;
            }
            args.push(key);
            if let Some(value) = value.filter(|value| !value.is_empty()) {
                args.push(value);
            }
        }
    }
    Command::new(args)
}

/// Query-string pairs, decoded (`+` is a space, `%XX` escapes), in order; empty pieces skipped.
pub(crate) fn query_pairs(query: &str) -> Vec<(Vec<u8>, Option<Vec<u8>>)> {
    fn decode(text: &str) -> Vec<u8> {
        let spaced = text.replace('+', " ");
        percent_decode(spaced.as_bytes()).collect()
    }
    query
        .split('&')
        .filter(|piece| !piece.is_empty())
        .map(|piece| match piece.split_once('=') {
            Some((key, value)) => (decode(key), Some(decode(value))),
            None => (decode(piece), None),
        })
        .collect()
}

/// Commands the hosted service refuses over REST, and why.
///
/// Transactions go through `/multi-exec`; anything that blocks, subscribes or changes the
/// state of the shared connection would stall or corrupt it for every other client.
fn refusal_reason(name: &str) -> Option<&'static str> {
    Some(match name {
        "MULTI" | "EXEC" | "DISCARD" => "use the /multi-exec endpoint for transactions",
        "WATCH" | "UNWATCH" => "optimistic locking is not supported over REST",
        "BLPOP" | "BRPOP" | "BRPOPLPUSH" | "BLMOVE" | "BLMPOP" | "BZPOPMIN" | "BZPOPMAX"
        | "BZMPOP" | "WAIT" | "WAITAOF" => "blocking commands are not supported over REST",
        "SUBSCRIBE" | "PSUBSCRIBE" | "SSUBSCRIBE" | "UNSUBSCRIBE" | "PUNSUBSCRIBE"
        | "SUNSUBSCRIBE" | "MONITOR" => "subscriptions are not supported over REST",
        "SELECT" | "SWAPDB" | "QUIT" | "RESET" | "HELLO" | "AUTH" | "CLIENT" | "READONLY"
        | "READWRITE" | "ASKING" => "connection commands are not supported over REST",
        "SYNC" | "PSYNC" | "REPLCONF" | "REPLICAOF" | "SLAVEOF" | "FAILOVER" | "SHUTDOWN"
        | "DEBUG" => "server administration commands are not supported over REST",
        _ => return None,
    })
}

/// Whether `XREAD` / `XREADGROUP` asks to block (a `BLOCK` option before `STREAMS`).
fn is_blocking_stream_read(command: &Command) -> bool {
    command
        .args()
        .iter()
        .skip(1)
        .map(|arg| arg.to_ascii_uppercase())
        .take_while(|arg| arg.as_slice() != b"STREAMS")
        .any(|arg| arg.as_slice() == b"BLOCK")
}

/// Commands a read-only token may run: reads of known keys, never `SCAN` or `KEYS`.
///
/// An explicit allow-list, so a command added to Redis later is refused until reviewed.
pub(crate) fn is_read_only(name: &str) -> bool {
    matches!(
        name,
        "PING" | "ECHO" | "TIME" | "DBSIZE" | "RANDOMKEY"
            // keyspace
            | "EXISTS" | "TYPE" | "TTL" | "PTTL" | "EXPIRETIME" | "PEXPIRETIME" | "TOUCH"
            | "DUMP" | "OBJECT" | "SORT_RO"
            // strings and bits
            | "GET" | "MGET" | "GETRANGE" | "SUBSTR" | "STRLEN" | "LCS" | "GETBIT" | "BITCOUNT"
            | "BITPOS" | "BITFIELD_RO"
            // hashes
            | "HGET" | "HMGET" | "HGETALL" | "HKEYS" | "HVALS" | "HLEN" | "HEXISTS" | "HSTRLEN"
            | "HRANDFIELD" | "HSCAN"
            // lists
            | "LINDEX" | "LLEN" | "LRANGE" | "LPOS"
            // sets
            | "SCARD" | "SISMEMBER" | "SMISMEMBER" | "SMEMBERS" | "SRANDMEMBER" | "SINTER"
            | "SINTERCARD" | "SUNION" | "SDIFF" | "SSCAN"
            // sorted sets
            | "ZCARD" | "ZCOUNT" | "ZLEXCOUNT" | "ZRANGE" | "ZRANGEBYSCORE" | "ZRANGEBYLEX"
            | "ZREVRANGE" | "ZREVRANGEBYSCORE" | "ZREVRANGEBYLEX" | "ZRANK" | "ZREVRANK"
            | "ZSCORE" | "ZMSCORE" | "ZRANDMEMBER" | "ZSCAN" | "ZINTER" | "ZINTERCARD"
            | "ZUNION" | "ZDIFF"
            // streams, geo, hyperloglog
            | "XRANGE" | "XREVRANGE" | "XLEN" | "XREAD" | "XINFO" | "XPENDING"
            | "GEOPOS" | "GEODIST" | "GEOHASH" | "GEORADIUS_RO" | "GEORADIUSBYMEMBER_RO"
            | "GEOSEARCH" | "PFCOUNT"
            // read-only scripting (Redis itself refuses writes inside these)
            | "EVAL_RO" | "EVALSHA_RO" | "FCALL_RO"
    )
}

/// Refuses what the gateway does not run for this token: unsupported commands for everyone,
/// and non-read commands for the read-only token. The error is a Redis-style message.
pub(crate) fn check_allowed(command: &Command, access: Access) -> Result<(), String> {
    let name = command.name();
    if let Some(reason) = refusal_reason(&name) {
        return Err(format!("ERR Command is not available: '{name}' ({reason})"));
    }
    if matches!(name.as_str(), "XREAD" | "XREADGROUP") && is_blocking_stream_read(command) {
        return Err(format!(
            "ERR Command is not available: '{name}' with BLOCK (blocking commands are not \
             supported over REST)"
        ));
    }
    if access == Access::ReadOnly && !is_read_only(&name) {
        return Err(format!(
            "NOPERM this user has no permissions to run the '{}' command",
            name.to_ascii_lowercase()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn strings(command: &Command) -> Vec<String> {
        command
            .args()
            .iter()
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect()
    }

    #[test]
    fn json_arguments() -> Result<(), GatewayError> {
        let command = command_from_json(&json!(["set", "k", 1, 2.5, true, -3]))?;
        assert_eq!(strings(&command), ["set", "k", "1", "2.5", "true", "-3"]);
        assert_eq!(command.name(), "SET");
        assert!(command_from_json(&json!([])).is_err());
        assert!(command_from_json(&json!([1, "a"])).is_err());
        assert!(command_from_json(&json!(["set", null])).is_err());
        assert!(command_from_json(&json!({"a": 1})).is_err());
        Ok(())
    }

    #[test]
    fn path_arguments() -> Result<(), GatewayError> {
        let command = command_from_path(
            "/set/a%2Fb/x%20y",
            Some(b"body"),
            Some("EX=100&NX&_token=t&k=a+b%2B"),
        )?;
        assert_eq!(
            strings(&command),
            ["set", "a/b", "x y", "body", "EX", "100", "NX", "k", "a b+"]
        );
        assert_eq!(
            strings(&command_from_path("/ping/", Some(b""), None)?),
            ["ping"]
        );
        assert!(command_from_path("/", None, None).is_err());
        Ok(())
    }

    #[test]
    fn policy() -> Result<(), GatewayError> {
        let rw = Access::ReadWrite;
        let ro = Access::ReadOnly;
        let get = command_from_json(&json!(["get", "k"]))?;
        let set = command_from_json(&json!(["set", "k", "v"]))?;
        let scan = command_from_json(&json!(["scan", "0"]))?;
        let watch = command_from_json(&json!(["watch", "k"]))?;
        let xread = command_from_json(&json!(["XREAD", "block", "0", "STREAMS", "s", "$"]))?;
        let xread_ok = command_from_json(&json!(["XREAD", "STREAMS", "block", "0"]))?;
        assert!(check_allowed(&get, ro).is_ok());
        assert!(check_allowed(&set, rw).is_ok());
        assert!(check_allowed(&set, ro).is_err_and(|e| e.starts_with("NOPERM")));
        assert!(check_allowed(&scan, ro).is_err());
        assert!(check_allowed(&watch, rw).is_err_and(|e| e.starts_with("ERR")));
        assert!(check_allowed(&xread, rw).is_err());
        assert!(check_allowed(&xread_ok, rw).is_ok());
        Ok(())
    }
}
