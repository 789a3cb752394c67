//! The name filter: which commands a token may run, checked before anything reaches Redis.
//!
//! It is the first of two lines. The second is Redis itself: every token's connection
//! authenticates as a restricted ACL user ([`crate::acl`]), so a command this filter lets
//! through by mistake — or one a script runs — is still refused by Redis.
//!
//! The filter is strict on the bytes that select what Redis does:
//! - the **command name** must be 1..=[`MAX_NAME_LEN`] bytes of ASCII letters, digits, `_`, `.`
//!   or `-`, starting with a letter. Anything else (a NUL byte, a space, a control byte,
//!   non-ASCII) is a 400 before any lookup: Redis compares some names and options as C strings,
//!   so `"SELECT\0x"` could otherwise pass a byte-wise filter and still run as `SELECT`;
//! - **sub-commands** (`SCRIPT LOAD`, `XINFO STREAM`, …) obey the same rule and come from a
//!   per-command allow-list;
//! - **options that change behaviour** (`XREAD`'s `BLOCK`) are parsed positionally: each option
//!   word must be ASCII letters and known, and `BLOCK` is refused, because a blocking read would
//!   hold the shared connection for everyone.
//!
//! Both lists are allow-lists: a command added to Redis later is refused until reviewed.

use crate::auth::Access;
use crate::command::Command;

/// The longest command name accepted (Redis's longest is 20 bytes).
pub(crate) const MAX_NAME_LEN: usize = 64;

/// Commands the read-write token may run: the data commands of the KV REST API.
///
/// No administration (`CONFIG`, `ACL`, `DEBUG`, `MODULE`, `SAVE`, `MIGRATE`, …), nothing that
/// changes or takes over the shared connection (`SELECT`, `CLIENT`, `HELLO`, `RESET`, `AUTH`,
/// `MONITOR`, `SUBSCRIBE`, blocking commands), no `FLUSHALL` / `SWAPDB` / `MOVE` (they reach
/// beyond the database the gateway serves).
fn is_read_write(name: &str) -> bool {
    is_read_only(name)
        || matches!(
            name,
            // strings and bits
            "APPEND" | "DECR" | "DECRBY" | "GETDEL" | "GETEX" | "GETSET" | "INCR" | "INCRBY"
                | "INCRBYFLOAT" | "MSET" | "MSETNX" | "PSETEX" | "SET" | "SETEX" | "SETNX"
                | "SETRANGE" | "BITFIELD" | "BITOP" | "SETBIT"
                // keyspace
                | "COPY" | "DEL" | "EXPIRE" | "EXPIREAT" | "KEYS" | "PERSIST" | "PEXPIRE"
                | "PEXPIREAT" | "RANDOMKEY" | "RENAME" | "RENAMENX" | "SCAN" | "SORT" | "UNLINK"
                | "FLUSHDB"
                // hashes
                | "HDEL" | "HINCRBY" | "HINCRBYFLOAT" | "HMSET" | "HSET" | "HSETNX"
                // lists
                | "LINSERT" | "LMOVE" | "LMPOP" | "LPOP" | "LPUSH" | "LPUSHX" | "LREM" | "LSET"
                | "LTRIM" | "RPOP" | "RPOPLPUSH" | "RPUSH" | "RPUSHX"
                // sets
                | "SADD" | "SDIFFSTORE" | "SINTERSTORE" | "SMOVE" | "SPOP" | "SREM"
                | "SUNIONSTORE"
                // sorted sets
                | "ZADD" | "ZDIFFSTORE" | "ZINCRBY" | "ZINTERSTORE" | "ZMPOP" | "ZPOPMAX"
                | "ZPOPMIN" | "ZRANGESTORE" | "ZREM" | "ZREMRANGEBYLEX" | "ZREMRANGEBYRANK"
                | "ZREMRANGEBYSCORE" | "ZUNIONSTORE"
                // streams, geo, hyperloglog
                | "XACK" | "XADD" | "XAUTOCLAIM" | "XCLAIM" | "XDEL" | "XGROUP" | "XREADGROUP"
                | "XSETID" | "XTRIM" | "GEOADD" | "GEORADIUS" | "GEORADIUSBYMEMBER"
                | "GEOSEARCHSTORE" | "PFADD" | "PFMERGE"
                // scripting (Redis applies the ACL user's rules inside scripts)
                | "EVAL" | "EVALSHA" | "FCALL" | "SCRIPT" | "FUNCTION"
        )
}

/// Commands a read-only token may run: reads of known keys, never anything that enumerates
/// the keyspace (`SCAN`, `KEYS`, `RANDOMKEY`).
pub(crate) fn is_read_only(name: &str) -> bool {
    matches!(
        name,
        "PING" | "ECHO" | "TIME" | "DBSIZE"
            // keyspace
            | "EXISTS" | "TYPE" | "TTL" | "PTTL" | "EXPIRETIME" | "PEXPIRETIME" | "TOUCH"
            | "DUMP" | "OBJECT" | "MEMORY"
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
            // read-only scripting: Redis refuses writes inside these, and the read-only ACL
            // user refuses KEYS / SCAN / RANDOMKEY inside them
            | "EVAL_RO" | "EVALSHA_RO" | "FCALL_RO"
    )
}

/// Whether `command` may be sent a second time when its connection failed after it was sent
/// (whether it ran is then unknown): it only reads, so running it twice changes nothing but
/// Redis's own bookkeeping (access times, LFU counters). The read-only token's commands
/// ([`is_read_only`]) except the read-only scripts — a script is never sent twice — plus
/// `SCRIPT EXISTS` and the reading `FUNCTION` sub-commands.
pub(crate) fn is_resendable(command: &Command) -> bool {
    let name = command.name();
    match name.as_str() {
        "EVAL_RO" | "EVALSHA_RO" | "FCALL_RO" => false,
        "SCRIPT" => command.arg_upper(1).as_deref() == Some("EXISTS"),
        "FUNCTION" => matches!(
            command.arg_upper(1).as_deref(),
            Some("LIST" | "DUMP" | "STATS")
        ),
        other => is_read_only(other),
    }
}

/// The sub-commands allowed for container commands; `None` when `name` takes none.
fn allowed_subcommands(name: &str, access: Access) -> Option<&'static [&'static str]> {
    Some(match (name, access) {
        ("SCRIPT", _) => &["LOAD", "EXISTS", "FLUSH", "KILL"],
        ("FUNCTION", _) => &[
            "LOAD", "DELETE", "FLUSH", "LIST", "DUMP", "RESTORE", "STATS", "KILL",
        ],
        ("XGROUP", _) => &[
            "CREATE",
            "CREATECONSUMER",
            "DELCONSUMER",
            "DESTROY",
            "SETID",
        ],
        ("XINFO", _) => &["CONSUMERS", "GROUPS", "STREAM"],
        ("OBJECT", _) => &["ENCODING", "FREQ", "IDLETIME", "REFCOUNT"],
        ("MEMORY", _) => &["USAGE"],
        _ => return None,
    })
}

/// Why a well-formed name is refused for everyone, for a helpful message.
fn refusal_reason(name: &str) -> &'static str {
    match name {
        "MULTI" | "EXEC" | "DISCARD" => "use the /multi-exec endpoint for transactions",
        "WATCH" | "UNWATCH" => "optimistic locking is not supported over REST",
        "BLPOP" | "BRPOP" | "BRPOPLPUSH" | "BLMOVE" | "BLMPOP" | "BZPOPMIN" | "BZPOPMAX"
        | "BZMPOP" | "WAIT" | "WAITAOF" => "blocking commands are not supported over REST",
        "SUBSCRIBE" | "PSUBSCRIBE" | "SSUBSCRIBE" | "UNSUBSCRIBE" | "PUNSUBSCRIBE"
        | "SUNSUBSCRIBE" | "PUBLISH" | "SPUBLISH" | "PUBSUB" | "MONITOR" => {
            "subscriptions are not supported over REST"
        }
        "SELECT" | "SWAPDB" | "MOVE" | "QUIT" | "RESET" | "HELLO" | "AUTH" | "CLIENT"
        | "READONLY" | "READWRITE" | "ASKING" => "connection commands are not supported over REST",
        _ => "not part of the KV REST API (administration, or unknown)",
    }
}

/// Whether `bytes` is a well-formed command name: ASCII letters, digits, `_`, `.`, `-`,
/// starting with a letter, at most [`MAX_NAME_LEN`] bytes.
fn is_strict_name(bytes: &[u8]) -> bool {
    !bytes.is_empty()
        && bytes.len() <= MAX_NAME_LEN
        && bytes[0].is_ascii_alphabetic()
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// Whether `bytes` is a well-formed option or sub-command word: ASCII letters, digits, `-`,
/// `_`, at most [`MAX_NAME_LEN`] bytes.
fn is_strict_word(bytes: &[u8]) -> bool {
    !bytes.is_empty()
        && bytes.len() <= MAX_NAME_LEN
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-'))
}

/// What the filter decided.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// The name, a sub-command or an option word has bytes a Redis keyword cannot have.
    Malformed(String),
    /// Well formed but not available to this token: a Redis-style error text.
    Refused(String),
}

impl Refusal {
    /// The error text sent to the client.
    pub(crate) fn message(&self) -> &str {
        match self {
            Self::Malformed(text) | Self::Refused(text) => text,
        }
    }

    /// The reason as a metric label.
    pub(crate) fn label(&self) -> &'static str {
        match self {
            Self::Malformed(_) => "malformed",
            Self::Refused(_) => "refused",
        }
    }
}

/// Refuses what the gateway does not run for this token (see the module docs).
pub(crate) fn check_allowed(command: &Command, access: Access) -> Result<(), Refusal> {
    let raw_name = command.arg(0).unwrap_or_default();
    if !is_strict_name(raw_name) {
        return Err(Refusal::Malformed(
            "ERR invalid command name: 1 to 64 ASCII letters, digits, '_', '.' or '-', \
             starting with a letter"
                .into(),
        ));
    }
    let name = command.name();
    let allowed = match access {
        Access::ReadWrite => is_read_write(&name),
        Access::ReadOnly => is_read_only(&name),
    };
    if !allowed {
        if access == Access::ReadOnly && is_read_write(&name) {
            return Err(Refusal::Refused(format!(
                "NOPERM this user has no permissions to run the '{}' command",
                name.to_ascii_lowercase()
            )));
        }
        return Err(Refusal::Refused(format!(
            "ERR Command is not available: '{name}' ({})",
            refusal_reason(&name)
        )));
    }
    if let Some(subcommands) = allowed_subcommands(&name, access) {
        let Some(sub) = command.arg(1) else {
            return Ok(()); // Redis answers the arity error
        };
        if !is_strict_word(sub) {
            return Err(Refusal::Malformed(format!(
                "ERR invalid sub-command for '{name}': ASCII letters, digits, '_' or '-' only"
            )));
        }
        let sub = String::from_utf8_lossy(sub).to_ascii_uppercase();
        if !subcommands.contains(&sub.as_str()) {
            return Err(Refusal::Refused(format!(
                "ERR Command is not available: '{name} {sub}' (not part of the KV REST API)"
            )));
        }
    }
    if matches!(name.as_str(), "XREAD" | "XREADGROUP") {
        check_stream_read_options(command, &name)?;
    }
    Ok(())
}

/// Walks `XREAD` / `XREADGROUP` options up to `STREAMS`: each option word must be strict and
/// known, and `BLOCK` is refused (it would block the shared connection).
fn check_stream_read_options(command: &Command, name: &str) -> Result<(), Refusal> {
    let mut index = 1;
    while let Some(word) = command.arg(index) {
        if !is_strict_word(word) {
            return Err(Refusal::Malformed(format!(
                "ERR invalid option for '{name}': ASCII letters only"
            )));
        }
        let word = String::from_utf8_lossy(word).to_ascii_uppercase();
        index += match (word.as_str(), name) {
            ("STREAMS", _) => return Ok(()),
            ("COUNT", _) => 2,
            ("NOACK", "XREADGROUP") => 1,
            ("GROUP", "XREADGROUP") => 3,
            ("BLOCK", _) => {
                return Err(Refusal::Refused(format!(
                    "ERR Command is not available: '{name}' with BLOCK (blocking commands are \
                     not supported over REST)"
                )));
            }
            _ => {
                return Err(Refusal::Malformed(format!(
                    "ERR unknown option '{word}' for '{name}'"
                )));
            }
        };
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmd(args: &[&[u8]]) -> Command {
        Command::new(args.iter().map(|a| a.to_vec()).collect()).unwrap_or_default()
    }

    #[test]
    fn only_reads_are_resendable() {
        for read in [
            &[&b"get"[..], b"k"][..],
            &[b"EXISTS", b"a", b"b"],
            &[b"ttl", b"k"],
            &[b"PTTL", b"k"],
            &[b"mget", b"a", b"b"],
            &[b"script", b"exists", b"abc"],
            &[b"FUNCTION", b"LIST"],
        ] {
            assert!(is_resendable(&cmd(read)), "{read:?}");
        }
        for not_read in [
            &[&b"set"[..], b"k", b"v"][..],
            &[b"INCR", b"k"],
            &[b"getdel", b"k"],
            &[b"GETEX", b"k", b"EX", b"1"],
            &[b"xreadgroup", b"GROUP", b"g", b"c", b"STREAMS", b"s", b">"],
            &[b"eval", b"return 1", b"0"],
            &[b"EVAL_RO", b"return 1", b"0"],
            &[b"evalsha_ro", b"abc", b"0"],
            &[b"fcall_ro", b"f", b"0"],
            &[b"SCRIPT", b"LOAD", b"return 1"],
            &[b"SCRIPT", b"FLUSH"],
            &[b"function", b"delete", b"lib"],
            &[b"flushdb"],
            &[b"unknown"],
        ] {
            assert!(!is_resendable(&cmd(not_read)), "{not_read:?}");
        }
    }

    #[test]
    fn allow_lists_and_strict_names() {
        let rw = Access::ReadWrite;
        let ro = Access::ReadOnly;
        assert!(check_allowed(&cmd(&[b"get", b"k"]), ro).is_ok());
        assert!(check_allowed(&cmd(&[b"set", b"k", b"v"]), rw).is_ok());
        assert!(
            matches!(check_allowed(&cmd(&[b"set", b"k", b"v"]), ro), Err(Refusal::Refused(m)) if m.starts_with("NOPERM"))
        );
        for refused in [&b"scan"[..], b"keys", b"randomkey", b"config", b"flushall"] {
            assert!(check_allowed(&cmd(&[refused, b"0"]), ro).is_err());
        }
        for refused in [
            &b"select"[..],
            b"client",
            b"hello",
            b"monitor",
            b"config",
            b"acl",
            b"migrate",
            b"debug",
            b"swapdb",
            b"reset",
            b"watch",
            b"blpop",
        ] {
            assert!(
                matches!(
                    check_allowed(&cmd(&[refused, b"x"]), rw),
                    Err(Refusal::Refused(_))
                ),
                "{}",
                String::from_utf8_lossy(refused)
            );
        }
        for malformed in [
            &b"SELECT\0x"[..],
            b"GET ",
            b" GET",
            b"GE\tT",
            b"G\xc3\x89T",
            b"",
            b"1GET",
            b"GET\r\n",
        ] {
            assert!(
                matches!(
                    check_allowed(&cmd(&[malformed, b"k"]), rw),
                    Err(Refusal::Malformed(_))
                ),
                "{malformed:?}"
            );
        }
    }

    #[test]
    fn subcommands_and_blocking_options() {
        let rw = Access::ReadWrite;
        assert!(check_allowed(&cmd(&[b"SCRIPT", b"load", b"return 1"]), rw).is_ok());
        assert!(check_allowed(&cmd(&[b"script", b"debug", b"yes"]), rw).is_err());
        assert!(matches!(
            check_allowed(&cmd(&[b"script", b"debug\0", b"yes"]), rw),
            Err(Refusal::Malformed(_))
        ));
        assert!(
            check_allowed(
                &cmd(&[b"XREAD", b"COUNT", b"1", b"STREAMS", b"s", b"0"]),
                rw
            )
            .is_ok()
        );
        assert!(check_allowed(&cmd(&[b"XREAD", b"STREAMS", b"block", b"0"]), rw).is_ok());
        assert!(matches!(
            check_allowed(
                &cmd(&[b"XREAD", b"block", b"0", b"STREAMS", b"s", b"$"]),
                rw
            ),
            Err(Refusal::Refused(_))
        ));
        assert!(matches!(
            check_allowed(
                &cmd(&[b"XREAD", b"BLOCK\0x", b"0", b"STREAMS", b"s", b"$"]),
                rw
            ),
            Err(Refusal::Malformed(_))
        ));
        assert!(
            check_allowed(
                &cmd(&[
                    b"XREADGROUP",
                    b"GROUP",
                    b"g\0 x",
                    b"c",
                    b"NOACK",
                    b"STREAMS",
                    b"s",
                    b">"
                ]),
                rw
            )
            .is_ok()
        );
        assert!(check_allowed(&cmd(&[b"XREADGROUP", b"BLOCK", b"0"]), rw).is_err());
        assert!(check_allowed(&cmd(&[b"XREAD", b"NOACK", b"STREAMS"]), rw).is_err());
    }
}
