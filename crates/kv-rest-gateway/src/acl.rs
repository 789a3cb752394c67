//! Least privilege enforced by Redis: one ACL user per token (Redis ≥ 6).
//!
//! The name filter ([`crate::policy`]) is the first line; this is the second. Each token's
//! connections authenticate as an ACL user that can run only what that token may run, and
//! Redis applies a user's rules inside scripts too, so `EVAL` cannot reach what the filter
//! refuses by name.
//!
//! At start the gateway connects with the configured Redis URL and tries `ACL SETUSER`:
//! - **allowed** (a plain local Redis, the compose file's, an admin URL): it creates or updates
//!   its two users with the rules below and serves through them. Passwords are derived from the
//!   tokens (SHA-256), so every instance with the same tokens sets the same passwords and
//!   instances never lock each other out; after a Redis restart that lost the users, the first
//!   authentication failure re-creates them. A user someone else changed is left alone: before
//!   it sets a user the gateway reads it (`ACL GETUSER`, [`user_state`]). A user that is `off`
//!   was disabled by someone (an operator during an incident): the gateway never turns it back
//!   on, at start or later. After an authentication failure it re-creates only a user that is
//!   gone; one whose password is not the gateway's (an operator, or an instance with other
//!   tokens, set it) is not overwritten either. At start an enabled user is set as always (new
//!   rules, the current tokens' password: a restart after a token rotation).
//! - **refused with NOPERM**: the URL's user is taken as the operator-prepared main user (and
//!   `read_only_redis_url` as the read-only one). The gateway probes them with harmless
//!   commands of each forbidden kind and refuses to start when one of them is allowed.
//!
//! The exact rules are [`MAIN_RULES`] and [`READ_ONLY_RULES`]; the README and SECURITY.md show
//! them as `ACL SETUSER` lines.

use redis::aio::MultiplexedConnection;
use redis::{Cmd, Value};
use sha2::{Digest, Sha256};

use crate::config::Secret;
use crate::error::{is_busy_refusal, server_error_text};

/// The rules of the read-write token's user: the data commands of the KV REST API.
///
/// Categories first, then exceptions: `@dangerous` also holds data commands the API offers
/// (`KEYS`, `SORT`, `FLUSHDB`), and `@blocking` holds `XREAD`/`XREADGROUP`, which the name
/// filter lets through without `BLOCK`.
pub const MAIN_RULES: &str = "~* resetchannels -@all +@read +@write +@keyspace +@string \
+@bitmap +@hash +@list +@set +@sortedset +@stream +@geo +@hyperloglog +@scripting -@admin \
-@dangerous -@blocking -@pubsub -@connection +keys +sort +sort_ro +flushdb +xread +xreadgroup \
+multi +exec +discard +ping +echo +time -script|debug -move -swapdb -watch -unwatch";

/// The rules of the read-only token's user: reads of known keys (`%R~*`: read access to keys
/// only), never `KEYS`, `SCAN` or `RANDOMKEY`, and no writes even inside scripts.
pub const READ_ONLY_RULES: &str = "%R~* resetchannels -@all +@read -@write -@admin \
-@dangerous -@blocking -@pubsub -@connection -keys -scan -randomkey +ping +echo +time \
+eval_ro +evalsha_ro +fcall_ro +xread";

/// Which token a user serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Role {
    /// The read-write token.
    Main,
    /// The read-only token.
    ReadOnly,
}

impl Role {
    pub(crate) fn label(self) -> &'static str {
        match self {
            Self::Main => "main",
            Self::ReadOnly => "read-only",
        }
    }

    /// The rule text for `ACL SETUSER`. A database other than 0 needs `+select`: the
    /// connection selects it when it connects (the name filter still refuses `SELECT`).
    pub(crate) fn rules(self, db: i64) -> String {
        let base = match self {
            Self::Main => MAIN_RULES,
            Self::ReadOnly => READ_ONLY_RULES,
        };
        if db == 0 {
            base.to_owned()
        } else {
            format!("{base} +select")
        }
    }
}

/// A user name and its password.
#[derive(Clone, Debug)]
pub(crate) struct Credentials {
    pub(crate) user: String,
    pub(crate) password: Secret,
}

/// The credentials the gateway creates for `role`: the configured user name, and a password
/// derived from the token (`hex(SHA-256("kv-rest-gateway acl v1" 0 role 0 token))`).
pub(crate) fn derived_credentials(role: Role, user: &str, token: &Secret) -> Credentials {
    let mut hasher = Sha256::new();
    hasher.update(b"kv-rest-gateway acl v1\0");
    hasher.update(role.label().as_bytes());
    hasher.update(b"\0");
    hasher.update(token.expose().as_bytes());
    let password = hex(&hasher.finalize());
    Credentials {
        user: user.to_owned(),
        password: Secret::new(password),
    }
}

/// Why the ACL setup failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum AclError {
    /// The configured user may not run `ACL SETUSER` (verify mode applies).
    #[error("the Redis user may not manage ACL users")]
    NotPermitted,
    /// Redis has no ACL (Redis < 6).
    #[error("Redis refused ACL SETUSER ({0}): Redis 6 or newer is required")]
    NoAcl(String),
    /// A user can run commands it must not.
    #[error(
        "the {role} Redis user can run commands it must not: {allowed}; prepare it with the \
         ACL SETUSER line in SECURITY.md"
    )]
    TooPermissive {
        /// Which user.
        role: &'static str,
        /// The probes that were allowed.
        allowed: String,
    },
    /// A user cannot run what it must (`PING`, `GET`; the main user `SCRIPT KILL` and
    /// `FUNCTION KILL` too).
    #[error("the {role} Redis user cannot run {command}: {reply}")]
    TooRestricted {
        /// Which user.
        role: &'static str,
        /// The probe.
        command: &'static str,
        /// Redis's reply.
        reply: String,
    },
    /// Transport trouble: retry later. The message carries the cause (connection refused, a
    /// name that does not resolve, a timeout): the setup's warnings print only this message.
    #[error("Redis is unavailable: {0}")]
    Unavailable(redis::RedisError),
    /// Redis refused a set-up command because another client's script (or module command)
    /// keeps it busy: retry later. The refusal's text.
    #[error("Redis is busy with another client's script: {0}")]
    Busy(String),
    /// The user exists and is `off`: someone disabled it, and the gateway does not turn it
    /// back on. Retried (the gateway serves once the user is on again, or gone).
    #[error(
        "the Redis ACL user {user} is disabled (off), by an operator or another tool: the \
         gateway does not turn it back on; requests get 503 until someone runs `ACL SETUSER \
         {user} on` (or `ACL DELUSER {user}`, and the gateway creates it again)"
    )]
    Disabled {
        /// The user's name.
        user: String,
    },
}

impl AclError {
    /// Whether retrying later may succeed (Redis down, busy, or a user someone disabled), as
    /// opposed to a configuration error.
    pub(crate) fn is_transient(&self) -> bool {
        matches!(
            self,
            Self::Unavailable(_) | Self::Busy(_) | Self::Disabled { .. }
        )
    }
}

/// What `ACL GETUSER` says about one of the gateway's users.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum UserState {
    /// No such user: a Redis restart without an ACL file forgot it, or it was deleted.
    Absent,
    /// The user exists and is `off`: someone disabled it.
    Disabled,
    /// The user exists and is `on`; `ours`: one of its passwords is the gateway's.
    Enabled {
        /// Whether the gateway's password is among the user's passwords.
        ours: bool,
    },
    /// `ACL GETUSER` answered an error (not permitted, no ACL) or a reply without the flags:
    /// the state is unknown, and the caller goes on as before it could ask.
    Unknown,
}

/// Reads `credentials.user` with `ACL GETUSER` on `admin`.
///
/// Redis answers nil for an absent user, else `flags` (with `on` or `off`), `passwords` (the
/// hex SHA-256 of each), `commands`, `keys`, `channels`, `selectors`: a flat array under RESP2,
/// a map under RESP3.
///
/// # Errors
/// [`AclError::Unavailable`] for transport trouble, [`AclError::Busy`] when another client's
/// script keeps Redis busy. A Redis error reply is [`UserState::Unknown`].
pub(crate) async fn user_state(
    admin: &mut MultiplexedConnection,
    credentials: &Credentials,
) -> Result<UserState, AclError> {
    let mut cmd = redis::cmd("ACL");
    cmd.arg("GETUSER").arg(&credentials.user);
    Ok(match send(admin, &cmd).await? {
        Ok(Value::Nil) => UserState::Absent,
        Ok(reply) => state_of(&reply, &password_digest(&credentials.password)),
        Err(_) => UserState::Unknown,
    })
}

/// The hex SHA-256 of `password`: how `ACL GETUSER` lists a user's passwords.
fn password_digest(password: &Secret) -> String {
    hex(&Sha256::digest(password.expose().as_bytes()))
}

/// Lower-case hex of `bytes` (a SHA-256: derived passwords, and how Redis lists passwords).
fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// A user's state from its `ACL GETUSER` reply (see [`user_state`]); `digest`: the gateway's
/// password as Redis lists it.
fn state_of(reply: &Value, digest: &str) -> UserState {
    let mut flags = None;
    let mut passwords = None;
    let mut field = |name: &Value, value: &Value| match text_of(name).as_deref() {
        Some("flags") => flags = Some(texts_of(value)),
        Some("passwords") => passwords = Some(texts_of(value)),
        _ => {}
    };
    match reply {
        Value::Array(items) => {
            for pair in items.chunks_exact(2) {
                field(&pair[0], &pair[1]);
            }
        }
        Value::Map(pairs) => {
            for (name, value) in pairs {
                field(name, value);
            }
        }
        _ => return UserState::Unknown,
    }
    let Some(flags) = flags else {
        return UserState::Unknown;
    };
    if flags.iter().any(|flag| flag == "off") {
        UserState::Disabled
    } else if flags.iter().any(|flag| flag == "on") {
        let ours = passwords
            .unwrap_or_default()
            .iter()
            .any(|password| password.eq_ignore_ascii_case(digest));
        UserState::Enabled { ours }
    } else {
        UserState::Unknown
    }
}

fn text_of(value: &Value) -> Option<String> {
    match value {
        Value::BulkString(bytes) => Some(String::from_utf8_lossy(bytes).into_owned()),
        Value::SimpleString(text) => Some(text.clone()),
        _ => None,
    }
}

fn texts_of(value: &Value) -> Vec<String> {
    match value {
        Value::Array(items) | Value::Set(items) => items.iter().filter_map(text_of).collect(),
        _ => Vec::new(),
    }
}

/// Runs `ACL SETUSER <user> reset on ><password> <rules>` on `admin`.
pub(crate) async fn provision(
    admin: &mut MultiplexedConnection,
    role: Role,
    credentials: &Credentials,
    db: i64,
) -> Result<(), AclError> {
    let mut cmd = redis::cmd("ACL");
    cmd.arg("SETUSER")
        .arg(&credentials.user)
        .arg("reset")
        .arg("on")
        .arg(format!(">{}", credentials.password.expose()));
    for rule in role.rules(db).split_whitespace() {
        cmd.arg(rule);
    }
    match send(admin, &cmd).await? {
        Ok(_) => {
            tracing::info!(user = %credentials.user, role = role.label(), "Redis ACL user set");
            Ok(())
        }
        Err(text) if text.starts_with("NOPERM") => Err(AclError::NotPermitted),
        Err(text) => Err(AclError::NoAcl(text)),
    }
}

/// Harmless commands of each kind a user must not run. `{probe}` keys and channels belong to
/// no one; a probe that is wrongly allowed changes nothing (`SET … XX` of an absent key, a
/// 10 ms `BLPOP`, `SCRIPT DEBUG NO`).
fn probes(role: Role, db: i64) -> Vec<(&'static str, Vec<&'static str>)> {
    const KEY: &str = "kv-rest-gateway:acl-probe";
    let mut probes = vec![
        ("CONFIG GET (@admin)", vec!["CONFIG", "GET", KEY]),
        ("ACL LIST (@admin)", vec!["ACL", "LIST"]),
        ("INFO (@dangerous)", vec!["INFO", "server"]),
        ("CLIENT ID (connection state)", vec!["CLIENT", "ID"]),
        ("PUBLISH (@pubsub)", vec!["PUBLISH", KEY, "x"]),
        ("BLPOP (@blocking)", vec!["BLPOP", KEY, "0.01"]),
        ("SCRIPT DEBUG (debugging)", vec!["SCRIPT", "DEBUG", "NO"]),
        (
            "LASTSAVE inside EVAL (@dangerous in a script)",
            vec!["EVAL", "return redis.call('LASTSAVE')", "0"],
        ),
    ];
    if db == 0 {
        probes.push(("SELECT (connection state)", vec!["SELECT", "0"]));
    }
    if role == Role::ReadOnly {
        probes.extend([
            (
                "KEYS (enumeration)",
                vec!["KEYS", "kv-rest-gateway:acl-probe:*"],
            ),
            ("SCAN (enumeration)", vec!["SCAN", "0", "COUNT", "1"]),
            ("RANDOMKEY (enumeration)", vec!["RANDOMKEY"]),
            ("SET (write)", vec!["SET", KEY, "x", "XX"]),
            (
                "KEYS inside EVAL_RO",
                vec![
                    "EVAL_RO",
                    "return redis.call('KEYS','kv-rest-gateway:acl-probe:*')",
                    "0",
                ],
            ),
        ]);
    }
    probes
}

/// Checks a user's effective rights with probes (see [`probes`]), plus that it can run what
/// it must.
pub(crate) async fn verify(
    connection: &mut MultiplexedConnection,
    role: Role,
    db: i64,
) -> Result<(), AclError> {
    for (command, args) in [
        ("PING", vec!["PING"]),
        ("GET", vec!["GET", "kv-rest-gateway:acl-probe"]),
    ] {
        if let Err(reply) = send(connection, &cmd_of(&args)).await? {
            return Err(AclError::TooRestricted {
                role: role.label(),
                command,
                reply,
            });
        }
    }
    let mut allowed = Vec::new();
    for (label, args) in probes(role, db) {
        let refused = match send(connection, &cmd_of(&args)).await? {
            Err(text) => {
                // Redis 7.0 and Valkey refuse `noscript` commands inside scripts before the
                // ACL check ("ERR This Redis command is not allowed from script"): refused too.
                // Redis 8 words an ACL refusal inside a script "ERR ACL failure in script:
                // User … has no permissions to run the '…' command".
                text.starts_with("NOPERM")
                    || text.contains("can't run this command")
                    || text.contains("not allowed from script")
                    || text.contains("ACL failure in script")
            }
            Ok(_) => false,
        };
        if !refused {
            allowed.push(label);
        }
    }
    if allowed.is_empty() {
        Ok(())
    } else {
        Err(AclError::TooPermissive {
            role: role.label(),
            allowed: allowed.join(", "),
        })
    }
}

fn cmd_of(args: &[&str]) -> Cmd {
    let mut cmd = Cmd::new();
    for arg in args {
        cmd.arg(*arg);
    }
    cmd
}

/// Sends one command: `Ok(Ok(value))`, `Ok(Err(error text))` for a Redis error reply, `Err`
/// for transport trouble, and [`AclError::Busy`] for Redis's busy refusal (another client's
/// script runs: the command did not, and says nothing about the user's rights).
pub(crate) async fn send(
    connection: &mut MultiplexedConnection,
    cmd: &Cmd,
) -> Result<Result<Value, String>, AclError> {
    let reply = match connection.send_packed_command(cmd).await {
        Ok(Value::ServerError(error)) => server_error_text(&error),
        Ok(value) => return Ok(Ok(value)),
        Err(error) => match error.code() {
            Some(code) => match error.detail() {
                Some(detail) => format!("{code} {detail}"),
                None => code.to_owned(),
            },
            None => return Err(AclError::Unavailable(error)),
        },
    };
    if is_busy_refusal(&reply) {
        return Err(AclError::Busy(reply));
    }
    Ok(Err(reply))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(text: &str) -> Value {
        Value::BulkString(text.as_bytes().to_vec())
    }

    /// `ACL GETUSER` as Redis 7.0 answers it under RESP2 (flags as simple strings; the
    /// passwords' hex SHA-256, here of "pw") and RESP3 (a map, flags as a set).
    #[test]
    fn getuser_replies_tell_absent_off_on_and_whose_password() {
        let digest = password_digest(&Secret::new("pw"));
        assert_eq!(
            digest,
            "30c952fab122c3f9759f02a6d95c3758b246b4fee239957b2d4fee46e26170c4"
        );
        let resp2 = |flag: &str, password: &str| {
            Value::Array(vec![
                bulk("flags"),
                Value::Array(vec![
                    Value::SimpleString(flag.into()),
                    Value::SimpleString("sanitize-payload".into()),
                ]),
                bulk("passwords"),
                Value::Array(vec![bulk(password)]),
                bulk("commands"),
                bulk("+@all"),
                bulk("keys"),
                bulk("~*"),
                bulk("channels"),
                bulk(""),
                bulk("selectors"),
                Value::Array(vec![]),
            ])
        };
        assert_eq!(
            state_of(&resp2("on", &digest), &digest),
            UserState::Enabled { ours: true }
        );
        assert_eq!(
            state_of(&resp2("on", &"0".repeat(64)), &digest),
            UserState::Enabled { ours: false }
        );
        assert_eq!(
            state_of(&resp2("off", &digest), &digest),
            UserState::Disabled
        );
        let resp3 = Value::Map(vec![
            (bulk("flags"), Value::Set(vec![bulk("off")])),
            (bulk("passwords"), Value::Array(vec![])),
        ]);
        assert_eq!(state_of(&resp3, &digest), UserState::Disabled);
        let resp3 = Value::Map(vec![(bulk("flags"), Value::Set(vec![bulk("on")]))]);
        assert_eq!(
            state_of(&resp3, &digest),
            UserState::Enabled { ours: false }
        );
        for odd in [
            Value::Okay,
            Value::Array(vec![bulk("passwords"), Value::Array(vec![])]),
            Value::Array(vec![bulk("flags"), Value::Array(vec![])]),
        ] {
            assert_eq!(state_of(&odd, &digest), UserState::Unknown, "{odd:?}");
        }
    }

    #[test]
    fn unavailable_says_why() {
        let refused = redis::RedisError::from(std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "Connection refused (os error 111)",
        ));
        let text = AclError::Unavailable(refused).to_string();
        assert!(text.starts_with("Redis is unavailable: "), "{text}");
        assert!(text.contains("Connection refused"), "{text}");
    }

    #[test]
    fn derived_passwords_depend_on_role_and_token() {
        let a = derived_credentials(Role::Main, "u", &Secret::new("t1"));
        let b = derived_credentials(Role::ReadOnly, "u", &Secret::new("t1"));
        let c = derived_credentials(Role::Main, "u", &Secret::new("t2"));
        let again = derived_credentials(Role::Main, "u", &Secret::new("t1"));
        assert_eq!(a.password, again.password);
        assert_ne!(a.password, b.password);
        assert_ne!(a.password, c.password);
        assert_eq!(a.password.expose().len(), 64);
    }
}
