//! The Redis side: per token, one shared connection for commands and pipelines (a
//! [`Link`], replaced before use once Redis has closed it) and a dedicated connection per
//! transaction, each authenticated as that token's ACL user ([`crate::acl`]); plus a separate
//! connection that stops over-long scripts.
//!
//! A command that was never handed to a connection never fails because of a dead one. A
//! command whose connection failed after it was handed over has an unknown outcome: it is
//! sent again only when it is a read ([`crate::policy::is_resendable`]); otherwise the client
//! gets a 503 that says the outcome is unknown.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{
    AsyncConnectionConfig, Client, Cmd, ConnectionInfo, IntoConnectionInfo, Pipeline, RedisError,
    Value,
};
use tokio::sync::Mutex;

use crate::acl::{self, AclError, Credentials, Role, UserState};
use crate::auth::Access;
use crate::config::GatewayConfig;
use crate::error::{
    GatewayError, from_connect, from_redis, is_busy_refusal, outcome_unknown, server_error_text,
};
use crate::link::{Connection, Link};
use crate::retries::{Report, SetupRetries};

/// Shortest pause between retries of a command that got `BUSY`.
const BUSY_RETRY_DELAY: Duration = Duration::from_millis(20);

/// Longest pause between retries of a command that got `BUSY`.
const BUSY_RETRY_DELAY_MAX: Duration = Duration::from_millis(100);

/// The pause before the next retry of a request that has waited `waited` for a busy Redis: a
/// tenth of that wait, between [`BUSY_RETRY_DELAY`] and [`BUSY_RETRY_DELAY_MAX`], so a long
/// wait costs Redis (and, where a retry connects, the gateway host's sockets) a few attempts
/// per second while a short one ends soon after the script.
fn busy_retry_delay(waited: Duration) -> Duration {
    (waited / 10).clamp(BUSY_RETRY_DELAY, BUSY_RETRY_DELAY_MAX)
}

/// How long past the script time limit a `BUSY` reply is still retried (the kill's round trip).
const BUSY_RETRY_MARGIN: Duration = Duration::from_secs(1);

/// How long the finding that one of the gateway's users is disabled or changed by someone else
/// ([`Refused`]) answers that user's requests without connecting: at most one connection
/// attempt and one `ACL GETUSER` per user per this interval, whatever the request rate, and
/// the gateway serves again within it once the user is fixed.
const REFUSAL_HOLD: Duration = Duration::from_secs(1);

/// Why the gateway leaves one of its users as it is after an authentication failure, instead
/// of setting it again: someone else decided, and the gateway does not override them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Refused {
    /// The user is `off`: an operator disabled it.
    Disabled,
    /// The user is `on`, but none of its passwords is the gateway's: an operator, or a gateway
    /// instance with other tokens, set it.
    PasswordChanged,
}

impl Refused {
    /// The requests' 503 text (after "Redis refused the gateway's credentials: ").
    fn answer(self) -> &'static str {
        match self {
            Self::Disabled => {
                "the gateway's Redis ACL user is disabled (off); the gateway does not turn a user \
                 someone disabled back on"
            }
            Self::PasswordChanged => {
                "the gateway's Redis ACL user has a password the gateway did not set; the \
                 gateway does not overwrite it"
            }
        }
    }
}

/// A [`Refused`] user: since when, and its log reports.
struct Refusal {
    kind: Refused,
    user: String,
    /// When the user was last read and found so.
    checked: tokio::time::Instant,
    /// The refused requests, logged at the first and then once per [`SetupRetries::EVERY`].
    reports: SetupRetries,
}

/// What became of one of the gateway's users after an authentication failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Restored {
    /// It was gone (or could not be read): created again.
    Recreated,
    /// It is on with the gateway's password: nothing to do.
    Intact,
    /// Left as someone else set it.
    Refused(Refused),
}

/// The user serving `access`.
fn role_of(access: Access) -> Role {
    match access {
        Access::ReadWrite => Role::Main,
        Access::ReadOnly => Role::ReadOnly,
    }
}

/// `role`'s place in [`BackendInner::refusals`].
fn slot_of(role: Role) -> usize {
    match role {
        Role::Main => 0,
        Role::ReadOnly => 1,
    }
}

fn log_refusal(role: Role, user: &str, kind: Refused, report: &Report) {
    let (role, refused_requests, since_s) = (role.label(), report.failed, report.waited.as_secs());
    match kind {
        Refused::Disabled => tracing::error!(
            user = %user,
            role = %role,
            refused_requests,
            since_s,
            "the gateway's Redis ACL user is disabled (off): an operator disabled it, and the \
             gateway does not turn it back on; its requests get 503 until it is turned on \
             (`ACL SETUSER <user> on`) or deleted (`ACL DELUSER <user>`: the gateway then \
             creates it again)"
        ),
        Refused::PasswordChanged => tracing::error!(
            user = %user,
            role = %role,
            refused_requests,
            since_s,
            "the gateway's Redis ACL user is on but its password is not the gateway's: someone \
             else set it (an operator, or a gateway instance with other tokens), and the \
             gateway does not overwrite it; its requests get 503 until the user is deleted \
             (`ACL DELUSER <user>`: the gateway then creates it again) or the gateway restarts \
             (a start sets the password from its tokens)"
        ),
    }
}

/// After an authentication failure: reads one of the gateway's users and creates it again only
/// when it is gone (or cannot be read, as before `ACL GETUSER` was asked).
async fn restore(
    admin: &mut MultiplexedConnection,
    role: Role,
    credentials: &Credentials,
    db: i64,
) -> Result<Restored, AclError> {
    Ok(match acl::user_state(admin, credentials).await? {
        UserState::Absent | UserState::Unknown => {
            acl::provision(admin, role, credentials, db).await?;
            Restored::Recreated
        }
        UserState::Enabled { ours: true } => Restored::Intact,
        UserState::Enabled { ours: false } => Restored::Refused(Refused::PasswordChanged),
        UserState::Disabled => Restored::Refused(Refused::Disabled),
    })
}

/// At start: sets one of the gateway's users ([`acl::provision`]) unless it is `off`
/// ([`AclError::Disabled`]: someone disabled it). An enabled user whose password is not the
/// gateway's is set anyway (a start after a token rotation must), with a warning.
async fn set_at_start(
    admin: &mut MultiplexedConnection,
    role: Role,
    credentials: &Credentials,
    db: i64,
) -> Result<(), AclError> {
    match acl::user_state(admin, credentials).await? {
        UserState::Disabled => {
            return Err(AclError::Disabled {
                user: credentials.user.clone(),
            });
        }
        UserState::Enabled { ours: false } => tracing::warn!(
            user = %credentials.user,
            role = %role.label(),
            "the Redis ACL user has a password the gateway did not set (another instance with \
             other tokens, an operator, or a token rotation): the start sets its tokens' password"
        ),
        UserState::Absent | UserState::Enabled { ours: true } | UserState::Unknown => {}
    }
    acl::provision(admin, role, credentials, db).await
}

/// How a transaction ended.
#[derive(Debug)]
pub(crate) enum TransactionOutcome {
    /// EXEC ran: one reply per command, runtime errors inline as `Value::ServerError`.
    Executed(Vec<Value>),
    /// Redis refused the transaction as a whole (EXECABORT); the Redis error text of the cause.
    Refused(String),
}

/// One token's connections.
struct UserConnections {
    client: Client,
    /// Multiplexed and shared by every request of this token. Replaced before the next command
    /// once Redis has closed it, so the gateway recovers when Redis comes back without a
    /// restart, and the first command after a Redis restart does not fail.
    shared: Link,
}

/// The connections, once the ACL users are set up.
struct Ready {
    main: UserConnections,
    read_only: Option<UserConnections>,
    /// Sends `SCRIPT KILL` / `FUNCTION KILL`; never carries client commands, so it is free
    /// while the shared connection waits for a script. Authenticates as the main user.
    killer: UserConnections,
    /// Set when the gateway created the users: they are re-created after an authentication
    /// failure when they are gone (a Redis restart without an ACL file forgets them), never
    /// when someone disabled or changed them ([`Refused`]).
    provisioned: Option<Provisioned>,
}

#[derive(Clone)]
struct Provisioned {
    main: Credentials,
    read_only: Option<Credentials>,
}

/// Connections to the Redis server behind the gateway.
#[derive(Clone)]
pub(crate) struct Backend {
    inner: Arc<BackendInner>,
}

struct BackendInner {
    /// The configured URL's client: the admin in provisioning mode, else the main user.
    configured: Client,
    read_only_url: Option<ConnectionInfo>,
    wants_read_only: bool,
    users: (String, String),
    tokens: (crate::config::Secret, Option<crate::config::Secret>),
    connect_timeout: Duration,
    connection_config: AsyncConnectionConfig,
    script_time_limit: Duration,
    ready: OnceLock<Ready>,
    /// Serialises re-provisioning after authentication failures.
    reprovision: Mutex<()>,
    /// When re-creating the users was last refused as busy, and the refusal
    /// ([`Backend::recreation_waits`]).
    recreation_busy: std::sync::Mutex<Option<(tokio::time::Instant, String)>>,
    /// Per user (main, read-only: [`slot_of`]): found disabled or changed by someone else
    /// after an authentication failure ([`Backend::refused_now`]).
    refusals: std::sync::Mutex<[Option<Refusal>; 2]>,
    /// Whether `refusals` holds one: requests skip its lock when it does not.
    any_refusal: std::sync::atomic::AtomicBool,
    /// The last set-up attempt found a user disabled: what requests answer until it succeeds.
    setup_refused: std::sync::atomic::AtomicBool,
    /// The read-only user was `off` at start, so the start left it unset (the main token
    /// serves meanwhile): once it is found on or gone after an authentication failure it is
    /// set as a start sets it ([`set_at_start`]: the gateway's password even when someone
    /// turned it on with another), instead of the run-time rules ([`restore`]).
    read_only_deferred: std::sync::atomic::AtomicBool,
}

impl Backend {
    /// Prepares the backend without connecting: the gateway starts (and answers 503) while
    /// Redis is still down; [`Backend::setup`] connects.
    pub(crate) fn new(config: &GatewayConfig) -> Result<Self, redis::RedisError> {
        let configured = Client::open(config.redis_url.as_str())?;
        let read_only_url = config
            .read_only_redis_url
            .as_deref()
            .map(IntoConnectionInfo::into_connection_info)
            .transpose()?;
        let connection_config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(config.connect_timeout))
            .set_response_timeout(Some(config.response_timeout));
        Ok(Self {
            inner: Arc::new(BackendInner {
                configured,
                read_only_url,
                wants_read_only: config.read_only_token.is_some(),
                users: (config.acl_user.clone(), config.read_only_acl_user.clone()),
                tokens: (config.token.clone(), config.read_only_token.clone()),
                connect_timeout: config.connect_timeout,
                connection_config,
                script_time_limit: config.script_time_limit,
                ready: OnceLock::new(),
                reprovision: Mutex::new(()),
                recreation_busy: std::sync::Mutex::new(None),
                refusals: std::sync::Mutex::new([None, None]),
                any_refusal: std::sync::atomic::AtomicBool::new(false),
                setup_refused: std::sync::atomic::AtomicBool::new(false),
                read_only_deferred: std::sync::atomic::AtomicBool::new(false),
            }),
        })
    }

    /// The Redis address for logs (never the password).
    pub(crate) fn address(&self) -> String {
        self.inner
            .configured
            .get_connection_info()
            .addr()
            .to_string()
    }

    /// Sets up the ACL users (or verifies the prepared ones) and opens the connections.
    ///
    /// A user that is `off` is not turned back on. The main user so fails the start
    /// ([`AclError::Disabled`]: retried, and requests answer [`GatewayError::Refused`]
    /// meanwhile); the read-only user so is left for later (recorded as refused, as at run
    /// time, and set once it is on or gone) while the main token serves.
    ///
    /// # Errors
    /// [`AclError::Unavailable`] while Redis cannot be reached, [`AclError::Busy`],
    /// [`AclError::Disabled`] (retry), any other [`AclError`] for a configuration the gateway
    /// refuses to serve with.
    pub(crate) async fn setup(&self) -> Result<(), AclError> {
        let result = self.set_up().await;
        self.inner.setup_refused.store(
            matches!(result, Err(AclError::Disabled { .. })),
            Ordering::Relaxed,
        );
        result
    }

    async fn set_up(&self) -> Result<(), AclError> {
        if self.inner.ready.get().is_some() {
            return Ok(());
        }
        let inner = &self.inner;
        let db = inner.configured.get_connection_info().redis_settings().db();
        let mut configured = self.connect(&inner.configured).await?;
        let main_creds = acl::derived_credentials(Role::Main, &inner.users.0, &inner.tokens.0);
        let ready = match set_at_start(&mut configured, Role::Main, &main_creds, db).await {
            Ok(()) => {
                // A read-only user that is `off` does not hold the main token: it is recorded as
                // refused, as at run time, and set once it is on or gone (`read_only_deferred`).
                let mut deferred = false;
                let read_only_creds = match &inner.tokens.1 {
                    Some(token) if inner.wants_read_only => {
                        let creds = acl::derived_credentials(Role::ReadOnly, &inner.users.1, token);
                        match set_at_start(&mut configured, Role::ReadOnly, &creds, db).await {
                            Ok(()) => {}
                            Err(AclError::Disabled { .. }) => deferred = true,
                            Err(error) => return Err(error),
                        }
                        Some(creds)
                    }
                    _ => None,
                };
                let main_info =
                    with_credentials(inner.configured.get_connection_info(), &main_creds);
                let main = self
                    .user_connections(main_info.clone(), Role::Main, db)
                    .await?;
                let read_only = match &read_only_creds {
                    Some(creds) if deferred => {
                        // Its connection opens on its first request once the user is set.
                        let info = skip_lib_name(with_credentials(
                            inner.configured.get_connection_info(),
                            creds,
                        ));
                        let client = Client::open(info).map_err(AclError::Unavailable)?;
                        Some(UserConnections {
                            shared: self.link(&client),
                            client,
                        })
                    }
                    Some(creds) => {
                        let info = with_credentials(inner.configured.get_connection_info(), creds);
                        Some(self.user_connections(info, Role::ReadOnly, db).await?)
                    }
                    None => None,
                };
                if let Some(creds) = read_only_creds.as_ref().filter(|_| deferred) {
                    inner.read_only_deferred.store(true, Ordering::Relaxed);
                    self.record_refusal(Role::ReadOnly, &creds.user, Some(Refused::Disabled));
                }
                tracing::info!("serving through the gateway's own Redis ACL users");
                Ready {
                    killer: self.killer(main_info).await?,
                    main,
                    read_only,
                    provisioned: Some(Provisioned {
                        main: main_creds,
                        read_only: read_only_creds,
                    }),
                }
            }
            Err(AclError::NotPermitted) => {
                // Operator-prepared users: the configured URL is the main user.
                let main_info = inner.configured.get_connection_info().clone();
                let main = self
                    .user_connections(main_info.clone(), Role::Main, db)
                    .await?;
                let read_only = if inner.wants_read_only {
                    let Some(info) = inner.read_only_url.clone() else {
                        return Err(AclError::TooRestricted {
                            role: "main",
                            command: "ACL SETUSER",
                            reply: "NOPERM; with a read-only token, give the read-only user's \
                                    URL too (--read-only-redis-url)"
                                .into(),
                        });
                    };
                    let ro_db = info.redis_settings().db();
                    Some(self.user_connections(info, Role::ReadOnly, ro_db).await?)
                } else {
                    None
                };
                tracing::info!("serving through operator-prepared Redis ACL users (verified)");
                Ready {
                    killer: self.killer(main_info).await?,
                    main,
                    read_only,
                    provisioned: None,
                }
            }
            Err(error) => return Err(error),
        };
        let _ = inner.ready.set(ready);
        Ok(())
    }

    async fn connect(&self, client: &Client) -> Result<MultiplexedConnection, AclError> {
        client
            .get_multiplexed_async_connection_with_config(&self.inner.connection_config)
            .await
            .map_err(|error| match error.code() {
                // A `SELECT` refused while another client's script runs.
                Some(_)
                    if let GatewayError::BadRequest(text) = from_connect(&error)
                        && is_busy_refusal(&text) =>
                {
                    AclError::Busy(text)
                }
                Some(_) => AclError::TooRestricted {
                    role: "configured",
                    command: "AUTH",
                    reply: error.to_string(),
                },
                None => AclError::Unavailable(error),
            })
    }

    /// Verifies a user with probes, then opens its shared connection.
    async fn user_connections(
        &self,
        info: ConnectionInfo,
        role: Role,
        db: i64,
    ) -> Result<UserConnections, AclError> {
        let info = skip_lib_name(info);
        let client = Client::open(info).map_err(AclError::Unavailable)?;
        let mut probe = self.connect(&client).await?;
        acl::verify(&mut probe, role, db).await?;
        drop(probe);
        Ok(UserConnections {
            shared: self.link(&client),
            client,
        })
    }

    fn link(&self, client: &Client) -> Link {
        Link::new(
            client.clone(),
            self.inner.connection_config.clone(),
            self.inner.connect_timeout,
        )
    }

    /// The killer connection, as the main user on database 0, checked to be allowed to stop
    /// scripts and functions.
    ///
    /// Database 0: `SCRIPT KILL`, `FUNCTION KILL` and `PING` name no key, and a new
    /// connection's `SELECT` of another database is refused while a script runs past the busy
    /// threshold — just when the killer must reconnect after Redis closed it (a restart, an
    /// idle `timeout`). `AUTH` and `HELLO` are served during a busy script.
    ///
    /// The check queues both kills in a transaction and discards it (`MULTI`, `SCRIPT KILL`,
    /// `FUNCTION KILL`, `DISCARD`): Redis checks the user's rights when it queues a command, and
    /// a discarded kill stops nobody's script. `NOPERM` (an operator-prepared user without
    /// `+script|kill` / `+function|kill`) refuses the start ([`AclError::TooRestricted`]),
    /// since a runaway script could not be stopped.
    async fn killer(&self, info: ConnectionInfo) -> Result<UserConnections, AclError> {
        let settings = info.redis_settings().clone().set_db(0);
        let info = skip_lib_name(info.set_redis_settings(settings));
        let client = Client::open(info).map_err(AclError::Unavailable)?;
        let shared = self.link(&client);
        let connection = shared
            .connection()
            .await
            .map_err(|error| match from_connect(&error) {
                GatewayError::BadRequest(text) if is_busy_refusal(&text) => AclError::Busy(text),
                _ => AclError::Unavailable(error),
            })?;
        let mut multiplexed = connection.multiplexed.clone();
        if let Err(reply) = acl::send(&mut multiplexed, &redis::cmd("MULTI")).await? {
            // Without MULTI the kills cannot be checked without running them (and
            // `/multi-exec` could not work either): refused, as a user without the kills.
            return Err(AclError::TooRestricted {
                role: "main",
                command: "MULTI (needed to check SCRIPT KILL without running it)",
                reply,
            });
        }
        let mut refused = None;
        for (name, kill) in [("SCRIPT KILL", "SCRIPT"), ("FUNCTION KILL", "FUNCTION")] {
            let mut cmd = Cmd::new();
            cmd.arg(kill).arg("KILL");
            match acl::send(&mut multiplexed, &cmd).await {
                Ok(Err(reply)) if reply.starts_with("NOPERM") => {
                    refused.get_or_insert((name, reply));
                }
                Ok(_) => {}
                Err(error) => {
                    connection.discard();
                    return Err(error);
                }
            }
        }
        if let Err(error) = acl::send(&mut multiplexed, &redis::cmd("DISCARD")).await {
            connection.discard();
            return Err(error);
        }
        if let Some((command, reply)) = refused {
            return Err(AclError::TooRestricted {
                role: "main",
                command,
                reply,
            });
        }
        Ok(UserConnections { client, shared })
    }

    fn ready(&self) -> Result<&Ready, GatewayError> {
        self.inner.ready.get().ok_or_else(|| {
            if self.inner.setup_refused.load(Ordering::Relaxed) {
                GatewayError::Refused(Refused::Disabled.answer())
            } else {
                GatewayError::Unavailable(
                    "Redis is unavailable: the gateway is still connecting".into(),
                )
            }
        })
    }

    fn user(&self, access: Access) -> Result<&UserConnections, GatewayError> {
        let ready = self.ready()?;
        match access {
            Access::ReadWrite => Ok(&ready.main),
            Access::ReadOnly => ready.read_only.as_ref().ok_or_else(|| {
                GatewayError::Internal("no read-only Redis user is configured".into())
            }),
        }
    }

    /// Runs one command as `access`'s user. A Redis error reply becomes
    /// [`GatewayError::BadRequest`] with its text.
    ///
    /// `resendable`: the command only reads ([`crate::policy::is_resendable`]), so when the
    /// connection fails after it was sent, it is sent once more on a new connection. Any other
    /// command then answers [`GatewayError::Unavailable`] saying that its outcome is unknown.
    pub(crate) async fn command(
        &self,
        access: Access,
        cmd: &Cmd,
        script: bool,
        resendable: bool,
    ) -> Result<Value, GatewayError> {
        let started = tokio::time::Instant::now();
        loop {
            // `sent`: the command reached Redis. Not after a refused login or when no attempt
            // was made (the users' re-creation waits for a busy script): a busy refusal then is
            // the re-creation's, never a script's own reply, and needs no check.
            let (mut result, mut sent, held) = match self.held(access) {
                Some(held) => (Err(held), false, true),
                None => {
                    let result = self.command_once(access, cmd, script, resendable).await;
                    let sent = !matches!(result, Err(GatewayError::Unauthenticated(_)));
                    (result, sent, false)
                }
            };
            if !held && self.reprovision_if_needed(access, &mut result).await {
                result = self.command_once(access, cmd, script, resendable).await;
                sent = true;
            }
            match &result {
                Err(GatewayError::BadRequest(text)) if self.retry_busy(text, started) => {
                    if script && sent {
                        // A script may have run and returned the refusal's text itself: resent
                        // only while Redis is seen busy, as a pipeline checked in-band.
                        if !self.busy_now().await || !self.busy_pause(started).await {
                            return result;
                        }
                        let replies = self
                            .pipeline_checked(access, vec![cmd.clone()], script, resendable, 0)
                            .await?;
                        return match expect_len(replies, 1)?.pop() {
                            Some(Value::ServerError(error)) => {
                                Err(GatewayError::BadRequest(server_error_text(&error)))
                            }
                            Some(value) => Ok(value),
                            None => Err(GatewayError::Internal("no reply".into())),
                        };
                    }
                    tokio::time::sleep(busy_retry_delay(started.elapsed())).await;
                }
                _ => return result,
            }
        }
    }

    /// Whether a `BUSY` reply (another client's script runs past Redis's
    /// `busy-reply-threshold`) should be retried: Redis did not run the command, and the
    /// script is stopped within the script time limit, so the caller waits instead of seeing
    /// the error — up to the limit plus a margin.
    fn retry_busy(&self, text: &str, started: tokio::time::Instant) -> bool {
        is_busy_refusal(text) && self.within_busy_bound(started)
    }

    /// Whether a request that began at `started` may still wait for a busy Redis: the script
    /// time limit plus [`BUSY_RETRY_MARGIN`].
    fn within_busy_bound(&self, started: tokio::time::Instant) -> bool {
        started.elapsed() < self.inner.script_time_limit + BUSY_RETRY_MARGIN
    }

    /// Whether Redis is busy with a script or module command right now: a `PING` on the killer
    /// connection is refused with the busy refusal ([`is_busy_refusal`]).
    ///
    /// Corroborates a busy refusal that answered a command carrying a script before the
    /// command is sent again: a script that ran can return an error with the very text of the
    /// refusal (`redis.error_reply`), so that reply alone does not prove it did not run. Only
    /// the busy path pays this round trip. When Redis is not busy any more the refusal is not
    /// resent but answered as it is (the client may retry): a genuine refusal whose script
    /// ended meanwhile costs the client one answer, never a second run.
    ///
    /// The killer connection never carries a client's command. A shared connection would not
    /// do: the script that makes Redis busy may be a client's own command on it (a long `EVAL`
    /// sent through the gateway), and a `PING` queued behind it answers only once it ended.
    async fn busy_now(&self) -> bool {
        let Ok(ready) = self.ready() else {
            return false;
        };
        let connection = match ready.killer.shared.connection().await {
            Ok(connection) => connection,
            // A new connection's set-up refused as busy (`from_connect`).
            Err(error) => {
                return matches!(from_connect(&error), GatewayError::BadRequest(text) if is_busy_refusal(&text));
            }
        };
        let reply = connection
            .multiplexed
            .clone()
            .send_packed_command(&redis::cmd("PING"))
            .await;
        match reply {
            Ok(Value::ServerError(error)) => is_busy_refusal(&server_error_text(&error)),
            Err(error) => {
                if error.code().is_none() && error.is_io_error() {
                    connection.discard();
                }
                matches!(from_redis(&error), GatewayError::BadRequest(text) if is_busy_refusal(&text))
            }
            Ok(_) => false,
        }
    }

    /// Pauses ([`busy_retry_delay`]) and returns `true` while a request that began at `started`
    /// may still wait for a busy Redis ([`Backend::within_busy_bound`]); `false` at once after.
    async fn busy_pause(&self, started: tokio::time::Instant) -> bool {
        if !self.within_busy_bound(started) {
            return false;
        }
        tokio::time::sleep(busy_retry_delay(started.elapsed())).await;
        true
    }

    async fn command_once(
        &self,
        access: Access,
        cmd: &Cmd,
        script: bool,
        resendable: bool,
    ) -> Result<Value, GatewayError> {
        let reply = self
            .on_shared(access, script, resendable, |mut connection| async move {
                connection.send_packed_command(cmd).await
            })
            .await?;
        match reply {
            Value::ServerError(error) => Err(GatewayError::BadRequest(server_error_text(&error))),
            value => Ok(value),
        }
    }

    /// Runs `send` on `access`'s shared connection. A failure to connect is the error (nothing
    /// was sent). A transport failure after `send` started is [`outcome_unknown`]; when
    /// `resendable` and the connection broke (not a response timeout), `send` runs once more
    /// on a new connection instead.
    async fn on_shared<T, F, Fut>(
        &self,
        access: Access,
        script: bool,
        resendable: bool,
        send: F,
    ) -> Result<T, GatewayError>
    where
        F: Fn(MultiplexedConnection) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        let link = &self.user(access)?.shared;
        let mut resends = usize::from(resendable);
        loop {
            let connection = link
                .connection()
                .await
                .map_err(|error| from_connect(&error))?;
            let sent = self
                .script_limited(script, send(connection.multiplexed.clone()))
                .await;
            let error = match sent {
                Ok(value) => return Ok(value),
                Err(error) => error,
            };
            let Some(unknown) = in_flight_failure(&connection, &error) else {
                return Err(from_redis(&error));
            };
            metrics::counter!("kv_rest_gateway_in_flight_failures_total").increment(1);
            // After a response timeout Redis may still be running it: do not add load.
            if resends == 0 || !connection.is_closed() {
                return Err(unknown);
            }
            resends -= 1;
            tracing::debug!(%error, "connection lost under a read; sending it again");
        }
    }

    /// Runs commands as one pipeline (not atomic). Returns one value per command; errors of
    /// single commands are inline `Value::ServerError`s.
    ///
    /// Commands that Redis refused because another client's script is running (its busy
    /// refusal: they did not run) are sent again while the busy bound lasts (the script time
    /// limit plus [`BUSY_RETRY_MARGIN`]), when they end the pipeline; see
    /// [`resend_refused_suffix`]. After the bound their busy refusals are their replies.
    ///
    /// `resendable`: every command only reads (see [`Backend::command`]).
    pub(crate) async fn pipeline(
        &self,
        access: Access,
        cmds: Vec<Cmd>,
        script: bool,
        resendable: bool,
    ) -> Result<Vec<Value>, GatewayError> {
        self.pipeline_checked(access, cmds, script, resendable, 1)
            .await
    }

    /// [`Backend::pipeline`]. When the pipeline carries a script, a busy refusal of a script
    /// command is resent only when Redis is seen busy right after it: a script that ran can
    /// return an error with the very text of the refusal (`redis.error_reply`). From round
    /// `checked_from` on, each script command is followed by a `PING` (its reply taken off):
    /// a busy refusal of that `PING` shows that Redis was still busy once the script command
    /// was answered. A refusal not shown so is the command's reply (the client may retry): a
    /// genuine refusal whose script ended meanwhile costs one answer, never a second run. Round
    /// 0 of a pipeline carries no check (the common path pays nothing); its refused script
    /// commands are checked by [`Backend::busy_now`] after it.
    async fn pipeline_checked(
        &self,
        access: Access,
        cmds: Vec<Cmd>,
        script: bool,
        resendable: bool,
        checked_from: usize,
    ) -> Result<Vec<Value>, GatewayError> {
        if cmds.is_empty() {
            return Ok(Vec::new());
        }
        let started = tokio::time::Instant::now();
        let total = cmds.len();
        let is_script: Vec<bool> = if script {
            cmds.iter().map(carries_script).collect()
        } else {
            Vec::new()
        };
        let whole = &pipeline_of(cmds);
        let is_script = &is_script;
        // Atomic, not a cell: the request's future must be `Send`.
        let round = AtomicUsize::new(0);
        let round = &round;
        resend_refused_suffix(
            total,
            |from| async move {
                let checked = script && round.fetch_add(1, Ordering::Relaxed) >= checked_from;
                // The first round sends the whole pipeline; later rounds only its refused end,
                // with the checks.
                let pending;
                let (pipeline, count) = if from == 0 && !checked {
                    (whole, total)
                } else {
                    let mut cmds = Vec::with_capacity(total - from);
                    for (index, cmd) in whole.cmd_iter().enumerate().skip(from) {
                        cmds.push(cmd.clone());
                        if checked && is_script[index] {
                            cmds.push(redis::cmd("PING"));
                        }
                    }
                    let count = cmds.len();
                    pending = pipeline_of(cmds);
                    (&pending, count)
                };
                let (mut result, held) = match self.held(access) {
                    Some(held) => (Err(held), true),
                    None => (
                        self.pipeline_once(access, pipeline, count, script, resendable)
                            .await,
                        false,
                    ),
                };
                if !held && self.reprovision_if_needed(access, &mut result).await {
                    result = self
                        .pipeline_once(access, pipeline, count, script, resendable)
                        .await;
                }
                let replies = expect_len(result?, count)?;
                if checked {
                    return Ok(take_checks(replies, &is_script[from..]));
                }
                // Round 0: a refused script command in the refused end is checked now.
                let answered = if script
                    && refused_scripts(&replies, &is_script[from..])
                    && !self.busy_now().await
                {
                    last_refused_script(&replies, &is_script[from..]).map_or(0, |i| i + 1)
                } else {
                    0
                };
                Ok((replies, answered))
            },
            || self.busy_pause(started),
        )
        .await
    }

    async fn pipeline_once(
        &self,
        access: Access,
        pipeline: &Pipeline,
        count: usize,
        script: bool,
        resendable: bool,
    ) -> Result<Vec<Value>, GatewayError> {
        self.on_shared(access, script, resendable, |mut connection| async move {
            connection.send_packed_commands(pipeline, 0, count).await
        })
        .await
    }

    /// Runs commands as `MULTI` … `EXEC` on a connection of its own.
    ///
    /// A fresh connection per transaction means no other request's commands can ever be queued
    /// inside it, and a transaction left open by a failure dies with its connection.
    pub(crate) async fn transaction(
        &self,
        access: Access,
        cmds: Vec<Cmd>,
        script: bool,
    ) -> Result<TransactionOutcome, GatewayError> {
        let count = cmds.len();
        // Sent as a plain pipeline (MULTI, the commands, EXEC) so every reply comes back,
        // including the queueing errors that explain an EXECABORT.
        let mut all = Vec::with_capacity(count + 2);
        all.push(redis::cmd("MULTI"));
        all.extend(cmds);
        all.push(redis::cmd("EXEC"));
        let pipeline = pipeline_of(all);
        let started = tokio::time::Instant::now();
        // The connection of an attempt that Redis refused as busy and left outside MULTI:
        // the next attempt reuses it instead of connecting again.
        let mut kept = None;
        let mut replies = loop {
            let (mut result, held) = match self.held(access) {
                Some(held) => (Err(held), true),
                None => (
                    self.transaction_once(access, &pipeline, count, script, &mut kept)
                        .await,
                    false,
                ),
            };
            if !held && self.reprovision_if_needed(access, &mut result).await {
                result = self
                    .transaction_once(access, &pipeline, count, script, &mut kept)
                    .await;
            }
            // Nothing ran because Redis is busy with another client's script: a new
            // connection's set-up refused (nothing was sent), or the transaction refused (see
            // `transaction_refused_as_busy`). Retried like a single command.
            let busy = match &result {
                Err(GatewayError::BadRequest(text)) => is_busy_refusal(text),
                Ok(replies) => transaction_refused_as_busy(replies),
                Err(_) => false,
            };
            if busy && self.busy_pause(started).await {
                continue;
            }
            break result?;
        };
        let replies_len = replies.len();
        let exec = replies.pop();
        match exec {
            Some(Value::Array(values)) if replies_len == count + 2 => {
                expect_len(values, count).map(TransactionOutcome::Executed)
            }
            Some(Value::ServerError(exec_error)) => {
                // The first queueing error (an unknown command, a wrong arity) is the cause;
                // EXECABORT itself only says that there was one.
                let cause = replies.iter().find_map(|reply| match reply {
                    Value::ServerError(error) => Some(server_error_text(error)),
                    _ => None,
                });
                Ok(TransactionOutcome::Refused(
                    cause.unwrap_or_else(|| server_error_text(&exec_error)),
                ))
            }
            Some(Value::Nil) => Ok(TransactionOutcome::Refused(
                "EXECABORT Transaction discarded".into(),
            )),
            other => Err(GatewayError::Internal(format!(
                "unexpected reply to EXEC: {other:?}"
            ))),
        }
    }

    /// One attempt of a transaction on a connection of its own: `kept` (left by the previous
    /// attempt) or a new one. Leaves the connection in `kept` when Redis refused the whole
    /// transaction as busy and the connection is outside MULTI ([`left_outside_multi`]).
    async fn transaction_once(
        &self,
        access: Access,
        pipeline: &Pipeline,
        count: usize,
        script: bool,
        kept: &mut Option<MultiplexedConnection>,
    ) -> Result<Vec<Value>, GatewayError> {
        let mut connection = match kept.take() {
            Some(connection) => connection,
            None => {
                let client = self.user(access)?.client.clone();
                // A failure to connect: nothing was sent.
                client
                    .get_multiplexed_async_connection_with_config(&self.inner.connection_config)
                    .await
                    .map_err(|error| from_connect(&error))?
            }
        };
        let sent = self
            .script_limited(
                script,
                connection.send_packed_commands(pipeline, 0, count + 2),
            )
            .await;
        if let Ok(replies) = &sent
            && transaction_refused_as_busy(replies)
            && left_outside_multi(replies)
        {
            *kept = Some(connection);
        }
        sent.map_err(|error| {
            if error.code().is_none() && (error.is_io_error() || error.is_timeout()) {
                // EXEC may have run.
                metrics::counter!("kv_rest_gateway_in_flight_failures_total").increment(1);
                outcome_unknown(&error)
            } else {
                from_redis(&error)
            }
        })
    }

    /// `PING` on the main user's shared connection.
    pub(crate) async fn ping(&self) -> Result<(), GatewayError> {
        self.command(Access::ReadWrite, &redis::cmd("PING"), false, true)
            .await
            .map(|_| ())
    }

    /// Awaits `reply`; when it carries a script and takes longer than the script time limit,
    /// stops the running script over the killer connection and keeps waiting for the reply
    /// (Redis then answers the caller with a "script killed" error).
    ///
    /// Redis handles the kill only after the script has run for its `busy-reply-threshold`;
    /// before that it serves no connection at all. A script that already wrote cannot be
    /// killed (Redis answers `UNKILLABLE`); the caller then waits for the response timeout.
    async fn script_limited<T>(
        &self,
        script: bool,
        reply: impl std::future::Future<Output = T>,
    ) -> T {
        if !script {
            return reply.await;
        }
        let mut reply = std::pin::pin!(reply);
        tokio::select! {
            result = &mut reply => return result,
            () = tokio::time::sleep(self.inner.script_time_limit) => {}
        }
        self.kill_scripts().await;
        reply.await
    }

    async fn kill_scripts(&self) {
        let Ok(ready) = self.ready() else { return };
        let killer = match ready.killer.shared.connection().await {
            Ok(connection) => connection,
            Err(error) => {
                tracing::warn!(%error, "cannot stop a script over the time limit: no connection");
                return;
            }
        };
        metrics::counter!("kv_rest_gateway_scripts_killed_total").increment(1);
        for kill in [["SCRIPT", "KILL"], ["FUNCTION", "KILL"]] {
            let mut cmd = Cmd::new();
            cmd.arg(kill[0]).arg(kill[1]);
            match killer.multiplexed.clone().send_packed_command(&cmd).await {
                Ok(Value::ServerError(error)) => {
                    tracing::debug!(reply = %server_error_text(&error), "{} {}", kill[0], kill[1]);
                }
                Ok(_) => {
                    tracing::warn!(
                        limit_ms = self.inner.script_time_limit.as_millis() as u64,
                        "stopped a script over the time limit ({} {})",
                        kill[0],
                        kill[1]
                    );
                    return;
                }
                Err(error) => {
                    let text = error.to_string();
                    if text.contains("UNKILLABLE") {
                        tracing::error!(
                            "a script over the time limit has written and cannot be killed; \
                             Redis stays busy until it ends"
                        );
                        return;
                    }
                    if error.code().is_none() && error.is_io_error() {
                        killer.discard();
                    }
                    tracing::debug!(%error, "{} {}", kill[0], kill[1]);
                }
            }
        }
    }

    /// Redis's busy refusal of the last attempt to re-create the users, while it is recent
    /// (within [`BUSY_RETRY_DELAY_MAX`]): a request then waits as for any busy refusal without
    /// connecting at all. Without it every waiting request opened two connections per retry
    /// (its user's, refused, and an administrator's for `ACL SETUSER`, refused as busy); with
    /// it, a few attempts per second are made whatever the number of waiting requests.
    fn recreation_waits(&self) -> Option<GatewayError> {
        let busy = self
            .inner
            .recreation_busy
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match &*busy {
            Some((at, text)) if at.elapsed() < BUSY_RETRY_DELAY_MAX => {
                Some(GatewayError::BadRequest(text.clone()))
            }
            _ => None,
        }
    }

    /// What a request of `access` answers without connecting: the users' re-creation waiting
    /// for a busy script ([`Backend::recreation_waits`]), or its user found disabled or changed
    /// by someone else less than [`REFUSAL_HOLD`] ago ([`Backend::refused_now`], counted for
    /// the log).
    fn held(&self, access: Access) -> Option<GatewayError> {
        self.recreation_waits()
            .or_else(|| self.refused_now(role_of(access), true))
    }

    /// [`GatewayError::Unauthenticated`] while `role`'s user was found [`Refused`] less than
    /// [`REFUSAL_HOLD`] ago. `count`: a refused request, logged when due.
    fn refused_now(&self, role: Role, count: bool) -> Option<GatewayError> {
        if !self.inner.any_refusal.load(Ordering::Relaxed) {
            return None;
        }
        let mut refusals = self
            .inner
            .refusals
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = tokio::time::Instant::now();
        let since = now.saturating_duration_since(refusals[slot_of(role)].as_ref()?.checked);
        if since >= REFUSAL_HOLD {
            // Not found refused for a report interval (the user serves again): the episode is
            // over (`record_refusal` would start a new one), so the entry goes, and requests
            // skip this lock again once no user is refused.
            if since >= SetupRetries::EVERY {
                refusals[slot_of(role)] = None;
                self.inner
                    .any_refusal
                    .store(refusals.iter().any(Option::is_some), Ordering::Relaxed);
            }
            return None;
        }
        let refusal = refusals[slot_of(role)].as_mut()?;
        if count && let Some(report) = refusal.reports.failure(now) {
            log_refusal(role, &refusal.user, refusal.kind, &report);
        }
        Some(GatewayError::Refused(refusal.kind.answer()))
    }

    /// Records what reading `role`'s user found after an authentication failure: `None`, it
    /// serves (created again, or intact); else why it is left alone, logged at the first
    /// finding and then once per [`SetupRetries::EVERY`] while it lasts.
    fn record_refusal(&self, role: Role, user: &str, kind: Option<Refused>) {
        let mut refusals = self
            .inner
            .refusals
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let Some(kind) = kind else {
            refusals[slot_of(role)] = None;
            self.inner
                .any_refusal
                .store(refusals.iter().any(Option::is_some), Ordering::Relaxed);
            return;
        };
        self.inner.any_refusal.store(true, Ordering::Relaxed);
        let slot = &mut refusals[slot_of(role)];
        let now = tokio::time::Instant::now();
        // The same finding again, without a long pause in between: the same episode.
        let continues = slot.as_ref().is_some_and(|refusal| {
            refusal.kind == kind
                && refusal.user == user
                && now.saturating_duration_since(refusal.checked) < SetupRetries::EVERY
        });
        let refusal = match slot {
            Some(refusal) if continues => refusal,
            _ => slot.insert(Refusal {
                kind,
                user: user.to_owned(),
                checked: now,
                reports: SetupRetries::new(now),
            }),
        };
        refusal.checked = now;
        if let Some(report) = refusal.reports.failure(now) {
            log_refusal(role, user, kind, &report);
        }
    }

    /// The read-only user the start left unset because it was `off` ([`set_at_start`]'s rules,
    /// `read_only_deferred`): still `off`, refused; else set now (created, or given the
    /// gateway's password and rules), after which the run-time rules apply.
    async fn set_deferred(
        &self,
        admin: &mut MultiplexedConnection,
        credentials: &Credentials,
        db: i64,
    ) -> Result<Restored, AclError> {
        match set_at_start(admin, Role::ReadOnly, credentials, db).await {
            Ok(()) => {
                self.inner
                    .read_only_deferred
                    .store(false, Ordering::Relaxed);
                Ok(Restored::Recreated)
            }
            Err(AclError::Disabled { .. }) => Ok(Restored::Refused(Refused::Disabled)),
            Err(error) => Err(error),
        }
    }

    fn set_recreation_busy(&self, refusal: Option<String>) {
        *self
            .inner
            .recreation_busy
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) =
            refusal.map(|text| (tokio::time::Instant::now(), text));
    }

    /// After Redis refused the users' credentials while a connection was being opened
    /// ([`GatewayError::Unauthenticated`]: nothing was sent) in provisioning mode, reads the
    /// users (`ACL GETUSER`) and creates again those that are gone (Redis restarted without
    /// its ACL users, or they were deleted). Returns whether the caller should retry. A command's
    /// reply never triggers this, whatever its text: a script's own `error('authentication …')`
    /// must not re-run the script or make the gateway reconnect.
    ///
    /// A user someone else changed is left as it is ([`Refused`]): one that is `off` (an
    /// operator disabled it) or whose password is not the gateway's. When it is `access`'s
    /// user, `result` becomes [`GatewayError::Unauthenticated`] saying so, and that user's
    /// requests answer it without connecting for [`REFUSAL_HOLD`] ([`Backend::held`]).
    ///
    /// When Redis refuses the re-creation because another client's script keeps it busy,
    /// `result` becomes that busy refusal: nothing was sent, so the caller waits it out as any
    /// busy refusal ([`Backend::retry_busy`]) and comes back here after it.
    async fn reprovision_if_needed<T>(
        &self,
        access: Access,
        result: &mut Result<T, GatewayError>,
    ) -> bool {
        let Err(GatewayError::Unauthenticated(_)) = result else {
            return false;
        };
        let Ok(ready) = self.ready() else {
            return false;
        };
        let Some(provisioned) = ready.provisioned.clone() else {
            return false;
        };
        let _guard = self.inner.reprovision.lock().await;
        // Another request was just refused as busy, or found this user left alone, while this
        // one waited for the lock.
        if let Some(held) = self
            .recreation_waits()
            .or_else(|| self.refused_now(role_of(access), false))
        {
            *result = Err(held);
            return false;
        }
        let configured = self.inner.configured.get_connection_info();
        let db = configured.redis_settings().db();
        // Database 0: `ACL SETUSER` names no key, and a `SELECT` is refused while Redis is busy.
        let settings = configured.redis_settings().clone().set_db(0);
        let admin = Client::open(configured.clone().set_redis_settings(settings));
        let mut admin = match admin {
            Ok(client) => match client
                .get_multiplexed_async_connection_with_config(&self.inner.connection_config)
                .await
            {
                Ok(connection) => connection,
                Err(error) => {
                    if let GatewayError::BadRequest(text) = from_connect(&error)
                        && is_busy_refusal(&text)
                    {
                        self.set_recreation_busy(Some(text.clone()));
                        *result = Err(GatewayError::BadRequest(text));
                    }
                    return false;
                }
            },
            Err(_) => return false,
        };
        let mut users = vec![(Role::Main, &provisioned.main)];
        if let Some(read_only) = &provisioned.read_only {
            users.push((Role::ReadOnly, read_only));
        }
        let mut outcomes = Vec::with_capacity(users.len());
        for (role, credentials) in users {
            let outcome = if role == Role::ReadOnly
                && self.inner.read_only_deferred.load(Ordering::Relaxed)
            {
                self.set_deferred(&mut admin, credentials, db).await
            } else {
                restore(&mut admin, role, credentials, db).await
            };
            outcomes.push((role, credentials, outcome));
        }
        let busy = outcomes.iter().find_map(|(_, _, outcome)| match outcome {
            Err(AclError::Busy(text)) => Some(text.clone()),
            _ => None,
        });
        if let Some(text) = busy {
            tracing::debug!("re-creating the Redis ACL users waits for a busy script");
            self.set_recreation_busy(Some(text.clone()));
            *result = Err(GatewayError::BadRequest(text));
            return false;
        }
        self.set_recreation_busy(None);
        let mut ok = true;
        let mut recreated = false;
        for (role, credentials, outcome) in &outcomes {
            match outcome {
                Ok(restored) => {
                    recreated |= *restored == Restored::Recreated;
                    let refused = match restored {
                        Restored::Refused(kind) => Some(*kind),
                        Restored::Recreated | Restored::Intact => None,
                    };
                    self.record_refusal(*role, &credentials.user, refused);
                }
                Err(_) => ok = false,
            }
        }
        if recreated || !ok {
            tracing::warn!(
                ok,
                "set the gateway's Redis ACL users again after an authentication failure: a \
                 user was gone (Redis restarted without them, or deleted), or a read-only user \
                 left unset at start while it was off is on again"
            );
        }
        // Connections opened before the users were re-created are useless: connect again. A
        // user found intact keeps its connections unless it is this request's (its failed
        // attempt is replaced): renewing them too reconnected the other token's user, and the
        // script killer, once a second while a user stayed refused (breaker22).
        let renew = |role: Role| {
            role == role_of(access)
                || !outcomes
                    .iter()
                    .any(|(of, _, outcome)| *of == role && matches!(outcome, Ok(Restored::Intact)))
        };
        if renew(Role::Main) {
            ready.main.shared.renew();
            ready.killer.shared.renew();
        }
        if let Some(read_only) = &ready.read_only
            && renew(Role::ReadOnly)
        {
            read_only.shared.renew();
        }
        if let Some(refused) = self.refused_now(role_of(access), false) {
            *result = Err(refused);
            return false;
        }
        ok
    }
}

/// Whether `cmd` runs a script or a function (as `Command::is_script`).
fn carries_script(cmd: &Cmd) -> bool {
    let Some(redis::Arg::Simple(name)) = cmd.args_iter().next() else {
        return false;
    };
    [
        &b"EVAL"[..],
        b"EVAL_RO",
        b"EVALSHA",
        b"EVALSHA_RO",
        b"FCALL",
        b"FCALL_RO",
    ]
    .iter()
    .any(|script| name.eq_ignore_ascii_case(script))
}

/// A checked round's replies without its `PING`s (one after each script command of
/// `is_script`), and how many of them are answers whatever they say: up to the last script
/// command refused as busy whose `PING` was not refused too (Redis was not busy after it, so
/// the script may have run and returned the refusal's text).
fn take_checks(replies: Vec<Value>, is_script: &[bool]) -> (Vec<Value>, usize) {
    let mut kept = Vec::with_capacity(is_script.len());
    let mut answered = 0;
    let mut replies = replies.into_iter();
    for &script in is_script {
        let Some(reply) = replies.next() else { break };
        let busy = is_busy_reply(&reply);
        kept.push(reply);
        if script {
            let ping = replies.next();
            if busy && !ping.as_ref().is_some_and(is_busy_reply) {
                answered = kept.len();
            }
        }
    }
    (kept, answered)
}

/// Whether the refused end of `replies` holds a script command (`is_script`).
fn refused_scripts(replies: &[Value], is_script: &[bool]) -> bool {
    last_refused_script(replies, is_script).is_some()
}

/// The last script command in the refused end of `replies`.
fn last_refused_script(replies: &[Value], is_script: &[bool]) -> Option<usize> {
    let start = refused_suffix_start(replies);
    (start..replies.len())
        .rev()
        .find(|&i| is_script.get(i) == Some(&true))
}

/// Runs a pipeline of `count` commands and sends again the commands that Redis refused with
/// its busy refusal ([`is_busy_refusal`]: another client's script or module command is
/// running; those commands did not run). `send(from)` sends commands `from..count` (in order)
/// and returns their replies, with how many of them (from the first) are answers whatever they say (a busy refusal that may be a script's own reply); `wait()` pauses between rounds and returns `false` once the busy
/// bound is over. The replies of the commands sent again take their places among the others.
///
/// Only refused commands *at the end* of the pipeline are sent again. Redis can run the first
/// commands of a pipeline before a script starts and refuse the rest, which is safe to finish
/// later: sending the refused end after everything that ran keeps the pipeline's order. But it
/// can also refuse commands and then run later ones (the script ended while the pipeline was
/// being read): sending a refused command again then would run it after a later command of the
/// same pipeline — writes out of order — so a refused command followed by any command that ran
/// (or answered anything else, an error included) is never sent again: its reply is the busy
/// refusal. A command whose reply is anything else is never sent again either.
///
/// A `send` that fails with a busy refusal as a whole (a new connection's set-up refused:
/// nothing was sent) is retried the same way; after the bound it is the error when no round got
/// replies, else the commands keep the busy refusals of the last round that got them.
///
/// # Errors
/// `send`'s other errors (the outcome of a failed round's commands is unknown; the replies of
/// earlier rounds are lost with them), and [`GatewayError::Internal`] when a round's reply count
/// does not match.
async fn resend_refused_suffix<S, SF, W, WF>(
    count: usize,
    mut send: S,
    mut wait: W,
) -> Result<Vec<Value>, GatewayError>
where
    S: FnMut(usize) -> SF,
    SF: std::future::Future<Output = Result<(Vec<Value>, usize), GatewayError>>,
    W: FnMut() -> WF,
    WF: std::future::Future<Output = bool>,
{
    let mut replies: Vec<Value> = Vec::with_capacity(count);
    // The first command to send: everything after it is refused (or not sent yet).
    let mut from = 0;
    loop {
        let refused_connect = match send(from).await {
            Ok((sent, answered)) => {
                let sent = expect_len(sent, count - from)?;
                let answered = from + answered;
                replies.truncate(from);
                replies.extend(sent);
                from = refused_suffix_start(&replies).max(answered);
                if from == count {
                    return Ok(replies);
                }
                None
            }
            Err(GatewayError::BadRequest(text)) if is_busy_refusal(&text) => Some(text),
            Err(error) => return Err(error),
        };
        if !wait().await {
            return match refused_connect {
                Some(text) if replies.is_empty() => Err(GatewayError::BadRequest(text)),
                _ => Ok(replies),
            };
        }
    }
}

/// Where the run of busy refusals that ends `replies` starts (`replies.len()` when the last
/// reply is not one).
fn refused_suffix_start(replies: &[Value]) -> usize {
    replies
        .iter()
        .rposition(|reply| !is_busy_reply(reply))
        .map_or(0, |last_other| last_other + 1)
}

fn is_busy_reply(value: &Value) -> bool {
    matches!(value, Value::ServerError(error) if is_busy_refusal(&server_error_text(error)))
}

/// Whether `exec` is Redis 7's answer to an `EXEC` refused because another client's script
/// started after the commands were queued: `EXECABORT Transaction discarded because of: ` and
/// the busy refusal (`execCommandAbort`: the transaction is discarded, none of it ran).
fn exec_refused_as_busy(exec: &Value) -> bool {
    let Value::ServerError(error) = exec else {
        return false;
    };
    server_error_text(error)
        .strip_prefix("EXECABORT Transaction discarded because of: ")
        .is_some_and(is_busy_refusal)
}

/// Whether a transaction's connection is outside MULTI after `replies` (MULTI, the commands,
/// EXEC) that Redis refused as busy: MULTI itself was refused, or EXEC ran and discarded the
/// transaction (`EXECABORT`, also `EXECABORT … because of: BUSY …`, Redis 7 refusing the
/// `EXEC` itself). A bare busy refusal of `EXEC` (not seen from Redis 7.0, which discards the
/// transaction) would leave the connection inside MULTI, so that connection is not reused.
fn left_outside_multi(replies: &[Value]) -> bool {
    match (replies.first(), replies.last()) {
        (Some(multi), _) if is_busy_reply(multi) => true,
        (Some(Value::Okay), Some(exec @ Value::ServerError(_))) => !is_busy_reply(exec),
        _ => false,
    }
}

/// Whether a transaction's replies (`MULTI`, one per command, `EXEC`) show that none of its
/// commands ran, and only because Redis was busy with another client's script:
/// - `MULTI` served (Redis serves `MULTI` and `EXEC` during a script) and `EXEC` refused with
///   the busy refusal (the queued commands die with the connection), or `EXEC` refused with
///   `EXECABORT` because commands were refused while being queued, every one with the busy
///   refusal (after another queueing error the transaction fails whenever it is sent);
/// - `MULTI` refused with the busy refusal and every command and `EXEC` too. When `MULTI` was
///   refused but a later command was not (the script ended meanwhile), that command ran outside
///   a transaction: sending the transaction again would run it twice.
fn transaction_refused_as_busy(replies: &[Value]) -> bool {
    let Some((multi, rest)) = replies.split_first() else {
        return false;
    };
    if is_busy_reply(multi) {
        return rest.iter().all(is_busy_reply);
    }
    let (Value::Okay, Some((exec, queued))) = (multi, rest.split_last()) else {
        return false;
    };
    if is_busy_reply(exec) || exec_refused_as_busy(exec) {
        return true;
    }
    let Value::ServerError(_) = exec else {
        return false;
    };
    let mut errors = queued
        .iter()
        .filter(|reply| matches!(reply, Value::ServerError(_)))
        .peekable();
    errors.peek().is_some() && errors.all(is_busy_reply)
}

/// A transport failure of a command already handed to `connection`: the 503 that says the
/// outcome is unknown, and the connection discarded when the failure broke it (not after a
/// response timeout, which leaves it usable). `None` for other errors (a Redis error reply).
fn in_flight_failure(connection: &Connection, error: &RedisError) -> Option<GatewayError> {
    if error.code().is_some() {
        return None;
    }
    if error.is_timeout() {
        return Some(outcome_unknown(error));
    }
    if error.is_io_error() || error.is_connection_dropped() || error.is_unrecoverable_error() {
        connection.discard();
        return Some(outcome_unknown(error));
    }
    None
}

fn with_credentials(info: &ConnectionInfo, credentials: &Credentials) -> ConnectionInfo {
    let settings = info
        .redis_settings()
        .clone()
        .set_username(&credentials.user)
        .set_password(credentials.password.expose());
    info.clone().set_redis_settings(settings)
}

/// `CLIENT SETINFO` is a connection command the users may not run; skip it.
fn skip_lib_name(info: ConnectionInfo) -> ConnectionInfo {
    let settings = info.redis_settings().clone().set_skip_set_lib_name();
    info.set_redis_settings(settings)
}

fn pipeline_of(cmds: Vec<Cmd>) -> Pipeline {
    let mut pipeline = Pipeline::with_capacity(cmds.len());
    for cmd in cmds {
        pipeline.add_command(cmd);
    }
    pipeline
}

fn expect_len(values: Vec<Value>, count: usize) -> Result<Vec<Value>, GatewayError> {
    if values.len() == count {
        Ok(values)
    } else {
        Err(GatewayError::Internal(format!(
            "Redis returned {} replies for {count} commands",
            values.len()
        )))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use std::cell::RefCell;
    use std::collections::VecDeque;

    use redis::Value;

    use std::time::Duration;

    use super::{
        GatewayError, busy_retry_delay, last_refused_script, left_outside_multi,
        resend_refused_suffix, take_checks, transaction_refused_as_busy,
    };

    /// breaker22: a refusal that ended (the user served again) must not keep every request
    /// on the refusals' lock forever: once a report interval has passed without a new
    /// finding, the entry goes and `any_refusal` is false again (it stayed true).
    #[tokio::test]
    async fn breaker22_an_ended_refusal_lets_requests_skip_the_lock_again() {
        use super::{Backend, Refused, Role, SetupRetries};
        use std::sync::atomic::Ordering;
        let config = crate::GatewayConfig::new("redis://127.0.0.1:1", "token");
        let backend = Backend::new(&config).unwrap();
        backend.record_refusal(Role::Main, "u", Some(Refused::Disabled));
        assert!(backend.refused_now(Role::Main, false).is_some(), "held");
        assert!(backend.refused_now(Role::ReadOnly, false).is_none());
        let past = tokio::time::Instant::now()
            .checked_sub(SetupRetries::EVERY + Duration::from_secs(1))
            .unwrap();
        backend.inner.refusals.lock().unwrap()[0]
            .as_mut()
            .unwrap()
            .checked = past;
        assert!(backend.refused_now(Role::Main, true).is_none(), "hold over");
        assert!(
            !backend.inner.any_refusal.load(Ordering::Relaxed),
            "requests still take the refusals' lock"
        );
        // A refusal found again is held and reported as a new episode.
        backend.record_refusal(Role::Main, "u", Some(Refused::Disabled));
        assert!(backend.refused_now(Role::Main, false).is_some());
    }

    const BUSY: &str =
        "BUSY Redis is busy running a script. You can only call SCRIPT KILL or SHUTDOWN NOSAVE.";

    fn error(text: &str) -> Value {
        redis::parse_redis_value(format!("-{text}\r\n").as_bytes()).unwrap()
    }

    fn busy() -> Value {
        error(BUSY)
    }

    fn int(n: i64) -> Value {
        Value::Int(n)
    }

    /// Runs [`resend_refused_suffix`] over `count` commands with scripted rounds (one result
    /// per `send`) and scripted waits (`true`: the bound lasts; `true` when not scripted).
    /// Returns the result and the `from` of every round.
    async fn run(
        count: usize,
        rounds: Vec<Result<Vec<Value>, GatewayError>>,
        waits: Vec<bool>,
    ) -> (Result<Vec<Value>, GatewayError>, Vec<usize>) {
        let rounds = RefCell::new(VecDeque::from(rounds));
        let waits = RefCell::new(VecDeque::from(waits));
        let sent = RefCell::new(Vec::new());
        let result = resend_refused_suffix(
            count,
            |from| {
                sent.borrow_mut().push(from);
                let round = rounds
                    .borrow_mut()
                    .pop_front()
                    .expect("an unscripted round");
                async move { round.map(|replies| (replies, 0)) }
            },
            || {
                let more = waits.borrow_mut().pop_front().unwrap_or(true);
                async move { more }
            },
        )
        .await;
        assert!(rounds.borrow().is_empty(), "rounds left over");
        (result, sent.into_inner())
    }

    /// breaker15: a script that ran can answer with the refusal's text. A checked round's
    /// `PING` after each script command tells: refused too → Redis was busy, the script's
    /// refusal is genuine; served → the script's reply is an answer, and nothing before it
    /// is sent again.
    #[test]
    fn checks_after_scripts_tell_a_refusal_from_a_scripts_own_reply() {
        let pong = Value::SimpleString("PONG".into());
        // [script, INCR, script] with a PING after each script.
        let is_script = [true, false, true];
        let (kept, answered) =
            take_checks(vec![busy(), busy(), busy(), busy(), busy()], &is_script);
        assert_eq!((kept.len(), answered), (3, 0), "all genuine refusals");
        let (kept, answered) = take_checks(
            vec![busy(), pong.clone(), busy(), busy(), busy()],
            &is_script,
        );
        assert_eq!(
            (kept.len(), answered),
            (3, 1),
            "the first script's BUSY is its own"
        );
        let (kept, answered) =
            take_checks(vec![int(1), pong.clone(), int(2), busy(), pong], &is_script);
        assert_eq!(kept, vec![int(1), int(2), busy()]);
        assert_eq!(answered, 3, "the last script's BUSY is its own");
        assert_eq!(
            last_refused_script(&[int(1), busy(), busy()], &[true, true, false]),
            Some(1)
        );
        assert_eq!(
            last_refused_script(&[busy(), int(1), busy()], &[true, false, false]),
            None
        );
    }

    #[tokio::test]
    async fn an_answered_refusal_is_not_sent_again() {
        let rounds = RefCell::new(VecDeque::from(vec![
            (vec![busy(), busy(), busy()], 0),
            (vec![busy(), busy(), busy()], 2),
            (vec![int(3)], 0),
        ]));
        let sent = RefCell::new(Vec::new());
        let result = resend_refused_suffix(
            3,
            |from| {
                sent.borrow_mut().push(from);
                let round = rounds.borrow_mut().pop_front().expect("a round");
                async move { Ok(round) }
            },
            || async { true },
        )
        .await;
        assert_eq!(result.unwrap(), vec![busy(), busy(), int(3)]);
        assert_eq!(sent.into_inner(), vec![0, 0, 2]);
    }

    #[tokio::test]
    async fn a_refused_end_is_sent_again_and_merged_in_place() {
        let (result, sent) = run(
            4,
            vec![
                Ok(vec![Value::Okay, int(1), busy(), busy()]),
                Ok(vec![int(2), int(3)]),
            ],
            vec![],
        )
        .await;
        assert_eq!(result.unwrap(), vec![Value::Okay, int(1), int(2), int(3)]);
        assert_eq!(sent, vec![0, 2]);
    }

    #[tokio::test]
    async fn a_refused_command_followed_by_one_that_ran_is_not_sent_again() {
        // The script ended between commands 0 and 1: command 0 must not run after command 1.
        let (result, sent) = run(2, vec![Ok(vec![busy(), int(1)])], vec![]).await;
        assert_eq!(result.unwrap(), vec![busy(), int(1)]);
        assert_eq!(sent, vec![0]);
        // Only the refused end after the last command that ran is sent again.
        let (result, sent) = run(
            4,
            vec![
                Ok(vec![busy(), int(1), busy(), busy()]),
                Ok(vec![int(2), int(3)]),
            ],
            vec![],
        )
        .await;
        assert_eq!(result.unwrap(), vec![busy(), int(1), int(2), int(3)]);
        assert_eq!(sent, vec![0, 2]);
        // An error reply is an answer too (the command ran or was judged): nothing after it is
        // an end to send, and nothing before it either.
        let (result, sent) = run(
            2,
            vec![Ok(vec![busy(), error("ERR wrong number of arguments")])],
            vec![],
        )
        .await;
        assert_eq!(
            result.unwrap(),
            vec![busy(), error("ERR wrong number of arguments")]
        );
        assert_eq!(sent, vec![0]);
    }

    #[tokio::test]
    async fn other_busy_words_are_answers() {
        for text in [
            "BUSYGROUP Consumer Group name already exists",
            "BUSYKEY Target key name already exists.",
            "BUSY lock held by another worker",
        ] {
            let (result, sent) = run(2, vec![Ok(vec![int(1), error(text)])], vec![]).await;
            assert_eq!(result.unwrap(), vec![int(1), error(text)], "{text}");
            assert_eq!(sent, vec![0], "{text}");
        }
    }

    #[tokio::test]
    async fn a_resent_end_may_be_refused_again_in_part() {
        let (result, sent) = run(
            3,
            vec![
                Ok(vec![busy(), busy(), busy()]),
                Ok(vec![busy(), busy(), busy()]),
                Ok(vec![int(1), busy(), busy()]),
                Ok(vec![int(2), int(3)]),
            ],
            vec![],
        )
        .await;
        assert_eq!(result.unwrap(), vec![int(1), int(2), int(3)]);
        assert_eq!(sent, vec![0, 0, 0, 1]);
    }

    #[tokio::test]
    async fn after_the_bound_the_refusals_are_the_replies() {
        let (result, sent) = run(
            2,
            vec![Ok(vec![int(1), busy()]), Ok(vec![busy()])],
            vec![true, false],
        )
        .await;
        assert_eq!(result.unwrap(), vec![int(1), busy()]);
        assert_eq!(sent, vec![0, 1]);
    }

    #[tokio::test]
    async fn a_connection_refused_as_busy_is_retried() {
        let refused = || Err(GatewayError::BadRequest(BUSY.into()));
        // Before anything was sent: retried, then the pipeline runs.
        let (result, sent) = run(2, vec![refused(), Ok(vec![int(1), int(2)])], vec![]).await;
        assert_eq!(result.unwrap(), vec![int(1), int(2)]);
        assert_eq!(sent, vec![0, 0]);
        // Never connected within the bound: the refusal is the error.
        let (result, sent) = run(2, vec![refused(), refused()], vec![true, false]).await;
        assert!(
            matches!(&result, Err(GatewayError::BadRequest(text)) if text == BUSY),
            "{result:?}"
        );
        assert_eq!(sent, vec![0, 0]);
        // Refused while reconnecting for the refused end: the known replies stay.
        let (result, sent) = run(
            2,
            vec![Ok(vec![int(1), busy()]), refused()],
            vec![true, false],
        )
        .await;
        assert_eq!(result.unwrap(), vec![int(1), busy()]);
        assert_eq!(sent, vec![0, 1]);
    }

    #[tokio::test]
    async fn other_failures_and_wrong_reply_counts_are_errors() {
        let (result, _) = run(
            2,
            vec![Err(GatewayError::BadRequest("ERR other".into()))],
            vec![],
        )
        .await;
        assert!(
            matches!(&result, Err(GatewayError::BadRequest(text)) if text == "ERR other"),
            "{result:?}"
        );
        let (result, _) = run(2, vec![Ok(vec![int(1), busy()]), Ok(vec![])], vec![]).await;
        assert!(
            matches!(result, Err(GatewayError::Internal(_))),
            "{result:?}"
        );
    }

    #[test]
    fn busy_retries_slow_down_to_a_tenth_of_the_wait() {
        let ms = Duration::from_millis;
        assert_eq!(busy_retry_delay(ms(0)), ms(20));
        assert_eq!(busy_retry_delay(ms(200)), ms(20));
        assert_eq!(busy_retry_delay(ms(500)), ms(50));
        assert_eq!(busy_retry_delay(ms(1000)), ms(100));
        assert_eq!(busy_retry_delay(Duration::from_secs(60)), ms(100));
    }

    #[test]
    fn a_busy_transactions_connection_is_reused_only_outside_multi() {
        let execabort = || error("EXECABORT Transaction discarded because of previous errors.");
        let queued = || Value::SimpleString("QUEUED".into());
        // EXEC ran and discarded the transaction.
        assert!(left_outside_multi(&[Value::Okay, busy(), execabort()]));
        // MULTI refused: never inside.
        assert!(left_outside_multi(&[busy(), busy(), busy()]));
        // EXEC refused: still inside MULTI (flagged, not ended).
        assert!(!left_outside_multi(&[Value::Okay, queued(), busy()]));
        assert!(!left_outside_multi(&[]));
    }

    #[test]
    fn transactions_refused_as_busy() {
        let execabort = || error("EXECABORT Transaction discarded because of previous errors.");
        let queued = || Value::SimpleString("QUEUED".into());
        // Redis 7: MULTI served, commands refused while queued, EXEC aborted.
        assert!(transaction_refused_as_busy(&[
            Value::Okay,
            busy(),
            busy(),
            execabort()
        ]));
        // EXEC refused: nothing ran.
        assert!(transaction_refused_as_busy(&[
            Value::Okay,
            queued(),
            busy()
        ]));
        // MULTI refused, and everything after it.
        assert!(transaction_refused_as_busy(&[busy(), busy(), busy()]));
        // MULTI refused but a command ran (outside the transaction): never again.
        assert!(!transaction_refused_as_busy(&[
            busy(),
            int(1),
            error("ERR EXEC without MULTI")
        ]));
        // Aborted because of another queueing error too: sending it again cannot help.
        assert!(!transaction_refused_as_busy(&[
            Value::Okay,
            busy(),
            error("ERR unknown command 'NOPE'"),
            execabort()
        ]));
        // EXEC itself refused (Redis 7: the transaction is discarded, nothing ran).
        assert!(transaction_refused_as_busy(&[
            Value::Okay,
            queued(),
            error(&format!(
                "EXECABORT Transaction discarded because of: {BUSY}"
            ))
        ]));
        assert!(!transaction_refused_as_busy(&[
            Value::Okay,
            queued(),
            error("EXECABORT Transaction discarded because of: BUSYKEY Target key name exists")
        ]));
        // Executed, or aborted for another reason.
        assert!(!transaction_refused_as_busy(&[
            Value::Okay,
            queued(),
            Value::Array(vec![busy()])
        ]));
        assert!(!transaction_refused_as_busy(&[
            Value::Okay,
            error("ERR unknown command 'NOPE'"),
            execabort()
        ]));
        assert!(!transaction_refused_as_busy(&[]));
        assert!(!transaction_refused_as_busy(&[Value::Okay]));
    }
}
