//! [`RedisStore`]: the record protocol on the `redis` crate.

use idempotency_core::StoreOperation;
use std::cell::RefCell;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt as _;
use idempotency_core::{
    Claim, Completed, Fenced, IdempotencyStore, InProgress, LeaseToken, Record, StoreError,
    StoreKey, Waited, codec, lua,
};
use redis::aio::{ConnectionLike, ConnectionManager};
use redis::{
    Cmd, ErrorKind, RedisError as ClientError, RedisResult, RedisWrite, Script, ServerErrorKind,
    ToRedisArgs, Value,
};

use crate::anchor::TimerAnchor;
use crate::error::{Error, is_reconnectable};
use crate::notify::Notifier;
use crate::scripts::SCRIPTS;

/// How [`RedisStore::try_claim`](IdempotencyStore::try_claim) claims a key; chosen once at
/// connect from the server version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ClaimStrategy {
    /// `SET key record NX PX lease GET` (Redis / Valkey >= 7.0): one command, one round trip.
    SetNxGet,
    /// The core's claim script (`idempotency_core::lua::CLAIM`) for servers older than 7.0, or
    /// servers whose version could not be read: also one round trip, via `EVALSHA`.
    Script,
}

/// How the server runs, as reported by `INFO server` (`redis_mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ServerMode {
    /// A single server (possibly with replicas).
    Standalone,
    /// Redis Cluster.
    Cluster,
    /// A Sentinel process (not a data server).
    Sentinel,
    /// `INFO` could not be read or did not say.
    Unknown,
}

impl ServerMode {
    pub(crate) fn parse(text: Option<&str>) -> Self {
        match text {
            Some("standalone") => Self::Standalone,
            Some("cluster") => Self::Cluster,
            Some("sentinel") => Self::Sentinel,
            _ => Self::Unknown,
        }
    }
}

impl fmt::Display for ServerMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Standalone => "standalone",
            Self::Cluster => "cluster",
            Self::Sentinel => "sentinel",
            Self::Unknown => "unknown",
        })
    }
}

/// An [`IdempotencyStore`] on Redis, Valkey or Redis Cluster.
///
/// Generic over the connection: [`ConnectionManager`] (the default: multiplexed, reconnects by
/// itself), [`redis::cluster_async::ClusterConnection`] (see [`RedisClusterStore`]), or any
/// other [`redis::aio::ConnectionLike`] a caller supplies through
/// [`RedisStoreBuilder::with_connection`](crate::RedisStoreBuilder::with_connection).
///
/// Each record lives under exactly one key, and every command and script touches only that key,
/// so the store works unchanged on Redis Cluster (no hash tags, no cross-slot operations).
///
/// | primitive | commands (one round trip each) |
/// |---|---|
/// | `try_claim` | `SET key record NX PX lease GET` (or the claim script before Redis 7.0) |
/// | `complete` / `release` / `extend` | `EVALSHA` of the core's fenced scripts |
/// | `get` / `delete` | `GET` / `DEL` |
/// | `time_to_live` | `PTTL` (asked only on the "in progress" path, for `Retry-After`) |
///
/// Every operation is bounded by the store's own operation timeout (default 1 s) and fails with
/// [`StoreError::Timeout`] past it, even when the server hangs (for example when it is paused).
/// An operation that finds its connection broken retries once on the re-established
/// connection, inside the same budget; every primitive tolerates that (a repeated claim sees its
/// own record, a repeated completion under the same token is accepted).
///
/// Cheap to clone: the connection is shared.
///
/// [`RedisClusterStore`]: crate::RedisClusterStore
#[derive(Clone)]
pub struct RedisStore<C = ConnectionManager> {
    pub(crate) conn: C,
    pub(crate) claim: ClaimStrategy,
    pub(crate) mode: ServerMode,
    pub(crate) version: Option<String>,
    pub(crate) timeout: Duration,
    /// Opt-in `WAIT` after claims and completions (see [`crate::ReplicaWait`]).
    pub(crate) replica_wait: Option<crate::ReplicaWait>,
    /// Wake-ups for waiting duplicates; `None`: the store cannot notify (waiters poll).
    pub(crate) notifier: Option<Arc<Notifier>>,
    /// Keeps arming an operation's timer from waking the runtime's I/O driver (see
    /// `anchor`); `None` outside a tokio runtime.
    pub(crate) anchor: Option<Arc<TimerAnchor>>,
}

impl<C> fmt::Debug for RedisStore<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore")
            .field("connection", &std::any::type_name::<C>())
            .field("mode", &self.mode)
            .field("version", &self.version)
            .field("claim", &self.claim)
            .field("timeout", &self.timeout)
            .field("replica_wait", &self.replica_wait)
            .field("notifier", &self.notifier)
            .field("timer_anchor", &self.anchor.is_some())
            .finish()
    }
}

impl<C> RedisStore<C> {
    /// The connection the store uses (clone it to run your own commands on it). On a store
    /// from [`RedisStoreBuilder::connect`](crate::RedisStoreBuilder::connect) the connection
    /// has no response timeout of its own (the store bounds each of its operations): bound your
    /// own commands, e.g. with `tokio::time::timeout`.
    pub fn connection(&self) -> &C {
        &self.conn
    }

    /// How keys are claimed on this server.
    pub fn claim_strategy(&self) -> ClaimStrategy {
        self.claim
    }

    /// The server mode seen at connect.
    pub fn mode(&self) -> ServerMode {
        self.mode
    }

    /// The server version seen at connect (the lowest one across a cluster), if it was readable.
    pub fn server_version(&self) -> Option<&str> {
        self.version.as_deref()
    }

    /// The time budget of each operation.
    pub fn operation_timeout(&self) -> Duration {
        self.timeout
    }

    /// The replicas each claim and completion waits for, if that was asked for.
    pub fn replica_wait(&self) -> Option<crate::ReplicaWait> {
        self.replica_wait
    }

    /// Whether waiting duplicates are woken by pub/sub (stores built with
    /// [`RedisStoreBuilder::connect`](crate::RedisStoreBuilder::connect) or `connect_client`)
    /// rather than polling (cluster stores and caller-made connections; see the crate docs).
    pub fn notifies_waiters(&self) -> bool {
        self.notifier.is_some()
    }

    /// Whether the wake-up subscriber connection is up (`false` before the first wait: it is
    /// opened lazily), and how many subscriber connections were opened (1 + reconnections).
    pub fn wake_up_subscriber(&self) -> (bool, u64) {
        self.notifier
            .as_ref()
            .map_or((false, 0), |n| (n.is_connected(), n.connections()))
    }

    /// Keys on which a duplicate in this process currently waits for a wake-up.
    pub fn waited_keys(&self) -> usize {
        self.notifier.as_ref().map_or(0, |n| n.waited_channels())
    }
}

/// Milliseconds for `PX` / `PEXPIRE`: the core's saturating, at-least-1 conversion.
use idempotency_core::expiry_millis as millis;

thread_local! {
    /// Where records are encoded on their way into a command buffer: reused, so encoding a
    /// record allocates nothing once the buffer has grown to the usual record size.
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// A scratch buffer kept for reuse is shrunk back past this capacity, in bytes (a large outcome
/// must not stay allocated per thread).
const SCRATCH_KEPT: usize = 16 * 1024;

/// A record as one command argument, encoded by the core's codec straight into the command
/// (through [`SCRATCH`]) instead of through a `String` per command.
enum RecordArg<'a> {
    InProgress(&'a InProgress),
    Completed(&'a Completed),
}

impl RecordArg<'_> {
    fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Self::InProgress(r) => codec::encode_in_progress_into(r, out),
            Self::Completed(r) => codec::encode_completed_into(r, out),
        }
    }
}

impl ToRedisArgs for RecordArg<'_> {
    fn write_redis_args<W: ?Sized + RedisWrite>(&self, out: &mut W) {
        // An in-progress record (every claim) has a small bound: encoded on the stack.
        if let Self::InProgress(r) = self {
            let (text, len) = codec::encode_in_progress_array(r);
            out.write_arg(text.get(..len).unwrap_or(&text));
            return;
        }
        SCRATCH.with(|scratch| match scratch.try_borrow_mut() {
            Ok(mut buf) => {
                buf.clear();
                self.encode(&mut buf);
                out.write_arg(&buf);
                if buf.capacity() > SCRATCH_KEPT {
                    *buf = Vec::new();
                }
            }
            // Not reachable (nothing here re-enters), but never a panic on a request path.
            Err(_) => {
                let mut buf = Vec::new();
                self.encode(&mut buf);
                out.write_arg(&buf);
            }
        });
    }
}

/// A lease token as one argument: its 32 hex digits, without a `String`.
struct TokenArg<'a>(&'a LeaseToken);

impl ToRedisArgs for TokenArg<'_> {
    fn write_redis_args<W: ?Sized + RedisWrite>(&self, out: &mut W) {
        out.write_arg(&self.0.to_hex_bytes());
    }
}

/// The wake-up channel of a key ([`lua::wake_channel`]) as one argument, without a `String`.
struct WakeChannelArg<'a>(&'a StoreKey);

impl ToRedisArgs for WakeChannelArg<'_> {
    fn write_redis_args<W: ?Sized + RedisWrite>(&self, out: &mut W) {
        use std::io::Write as _;
        let mut arg = out.writer_for_next_arg();
        // Writing into a command buffer cannot fail.
        let _ = arg.write_all(lua::WAKE_CHANNEL_PREFIX.as_bytes());
        let _ = arg.write_all(self.0.as_str().as_bytes());
    }
}

/// `EVALSHA <script> 1 <key>`: the head of a fenced script's command, with room for `args`
/// more arguments of about `bytes` bytes in all.
fn evalsha(script: &Script, key: &StoreKey, args: usize, bytes: usize) -> Cmd {
    let mut cmd = Cmd::with_capacity(4 + args, 64 + key.as_str().len() + bytes);
    cmd.arg("EVALSHA")
        .arg(script.get_hash())
        .arg(1)
        .arg(key.as_str());
    cmd
}

/// A record read from the server, or `None` for nil.
fn record_from(operation: StoreOperation, value: Value) -> Result<Option<Record>, Error> {
    let bytes = match value {
        Value::Nil => return Ok(None),
        Value::BulkString(bytes) => bytes,
        Value::SimpleString(text) | Value::VerbatimString { text, .. } => text.into_bytes(),
        other => {
            return Err(Error::UnexpectedReply {
                operation,
                reply: format!("{other:?}"),
            });
        }
    };
    // The reply's own buffer: a completed record's body is decoded into it and kept there
    // (`codec::decode_owned`), one allocation and one free fewer per replay.
    codec::decode_owned(bytes).map(Some).map_err(Error::Corrupt)
}

/// The reply of a fenced script: 1 applied, 0 lease lost.
fn fenced_from(operation: StoreOperation, value: Value) -> Result<Fenced, Error> {
    match value {
        Value::Int(1) | Value::Boolean(true) => Ok(Fenced::Applied),
        Value::Int(0) | Value::Boolean(false) | Value::Nil => Ok(Fenced::LeaseLost),
        other => Err(Error::UnexpectedReply {
            operation,
            reply: format!("{other:?}"),
        }),
    }
}

/// Whether the server answered `NOSCRIPT` (the script is not in its cache).
fn is_noscript(error: &ClientError) -> bool {
    error.kind() == ErrorKind::Server(ServerErrorKind::NoScript)
}

/// `cmd` (an `EVALSHA` of `script`) after the server answered `NOSCRIPT`: sent once as `EVAL`
/// of the source (`scripts::eval_of`), which caches the script again; for a script that is not
/// one of ours, `SCRIPT LOAD` and the same `EVALSHA` again.
async fn resend_after_noscript<C: ConnectionLike>(
    script: &Script,
    cmd: &Cmd,
    mut conn: C,
) -> RedisResult<Value> {
    match crate::scripts::eval_of(script, cmd) {
        // `EVAL` cannot answer `NOSCRIPT` (see `eval_of`).
        Some(eval) => eval.query_async(&mut conn).await,
        None => {
            script.load_async(&mut conn).await?;
            cmd.query_async(&mut conn).await
        }
    }
}

impl<C> RedisStore<C>
where
    C: ConnectionLike + Clone + Send + Sync + 'static,
{
    /// Run one request under the operation timeout; retry once if the connection was broken
    /// (the connection manager reconnects in the background as soon as it sees that).
    pub(crate) async fn exec<F, Fut>(
        &self,
        operation: StoreOperation,
        request: F,
    ) -> Result<Value, Error>
    where
        F: Fn(C) -> Fut,
        Fut: Future<Output = RedisResult<Value>>,
    {
        self.bounded(operation, self.attempts(operation, request))
            .await
    }

    /// `work` under the operation timeout: one timer for the whole primitive.
    ///
    /// A plain function returning the timeout's future with its error mapped, not an `async
    /// fn`: one future level less around every operation (`cargo xtask instructions`).
    fn bounded<T>(
        &self,
        operation: StoreOperation,
        work: impl Future<Output = Result<T, Error>>,
    ) -> impl Future<Output = Result<T, Error>> {
        let timed_out = self.timed_out(operation);
        tokio::time::timeout(self.timeout, work)
            .map(move |result| result.unwrap_or_else(|_elapsed| Err(timed_out)))
    }

    /// One request, retried once if the connection was broken, without a timer of its own
    /// (callers run it under [`Self::bounded`]).
    ///
    /// The retry is boxed: it is rare, and inline its future would enlarge the future of every
    /// operation (moved several times per operation: `cargo xtask instructions`).
    async fn attempts<F, Fut>(&self, operation: StoreOperation, request: F) -> Result<Value, Error>
    where
        F: Fn(C) -> Fut,
        Fut: Future<Output = RedisResult<Value>>,
    {
        let reply = match request(self.conn.clone()).await {
            Err(error) if is_reconnectable(&error) => {
                tracing::debug!(%error, %operation, "connection broken; retrying once");
                Box::pin(request(self.conn.clone())).await
            }
            other => other,
        };
        reply.map_err(|error| Error::client(operation, self.timeout, error))
    }

    /// `cmd` under the operation timeout, retried once on a broken connection.
    pub(crate) async fn command(
        &self,
        operation: StoreOperation,
        cmd: &Cmd,
    ) -> Result<Value, Error> {
        tokio::time::timeout(self.timeout, self.attempt(operation, cmd, None))
            .await
            .unwrap_or_else(|_elapsed| Err(self.timed_out(operation)))
    }

    /// The error of an operation that ran out of its operation timeout.
    fn timed_out(&self, operation: StoreOperation) -> Error {
        Error::Timeout {
            operation,
            after: self.timeout,
        }
    }

    /// The hot path of every primitive: `cmd` once on the store's connection, without a timer
    /// of its own (callers await it under the operation timeout, which bounds [`Self::recover`]
    /// too); `script`: the script `cmd` is an
    /// `EVALSHA` of. Every failure goes to [`Self::recover`], boxed: a retry inline made every
    /// operation's future larger and one level deeper (`cargo xtask instructions`).
    async fn attempt(
        &self,
        operation: StoreOperation,
        cmd: &Cmd,
        script: Option<&Script>,
    ) -> Result<Value, Error> {
        let mut conn = self.conn.clone();
        // What `cmd.query_async::<Value>` does (a server error reply becomes an error), one
        // future level less.
        match conn
            .req_packed_command(cmd)
            .await
            .and_then(Value::extract_error)
        {
            Ok(value) => Ok(value),
            Err(error) => Box::pin(self.recover(operation, cmd, script, conn, error)).await,
        }
    }

    /// After [`Self::attempt`] failed with `error` on `conn`: `NOSCRIPT` (after a restart or
    /// `SCRIPT FLUSH`) is answered by sending the command once as `EVAL` of the source
    /// ([`resend_after_noscript`]), which caches it again; a broken connection by one more
    /// attempt on the re-established connection (the connection manager reconnects in the
    /// background as soon as it sees that; it may answer `NOSCRIPT` too); anything else is
    /// mapped as it is.
    async fn recover(
        &self,
        operation: StoreOperation,
        cmd: &Cmd,
        script: Option<&Script>,
        conn: C,
        error: ClientError,
    ) -> Result<Value, Error> {
        let reply = match script {
            Some(script) if is_noscript(&error) => resend_after_noscript(script, cmd, conn).await,
            _ => Err(error),
        };
        let reply = match reply {
            Err(error) if is_reconnectable(&error) => {
                tracing::debug!(%error, %operation, "connection broken; retrying once");
                let mut conn = self.conn.clone();
                match (cmd.query_async::<Value>(&mut conn).await, script) {
                    (Err(error), Some(script)) if is_noscript(&error) => {
                        resend_after_noscript(script, cmd, conn).await
                    }
                    (other, _) => other,
                }
            }
            other => other,
        };
        reply.map_err(|error| Error::client(operation, self.timeout, error))
    }

    /// Run a fenced script; on "lease lost", make sure the key does not hold something that is
    /// not a record (the contract reports that as corrupt, and the scripts cannot tell).
    ///
    /// The script and that check share one operation timeout, so the primitive as a whole is
    /// bounded by it ([`IdempotencyStore::operation_bound`]).
    async fn fenced(
        &self,
        operation: StoreOperation,
        key: &StoreKey,
        script: &Script,
        cmd: &Cmd,
    ) -> Result<Fenced, StoreError> {
        let work = async {
            let reply = self.attempt(operation, cmd, Some(script)).await?;
            Ok(match fenced_from(operation, reply)? {
                Fenced::Applied => Ok(Fenced::Applied),
                // Boxed: the check is the rare path, and inline it would enlarge the future of
                // every completion, release and extension.
                Fenced::LeaseLost => Box::pin(self.lease_lost_check(key)).await,
            })
        };
        tokio::time::timeout(self.timeout, work)
            .await
            .unwrap_or_else(|_elapsed| Err(self.timed_out(operation)))?
    }

    /// After "lease lost": `LeaseLost`, unless the key holds something that is not a record
    /// (reported as corrupt). Runs inside the fenced primitive's operation timeout.
    async fn lease_lost_check(&self, key: &StoreKey) -> Result<Fenced, StoreError> {
        let check = self
            .attempts(StoreOperation::Get, |mut conn| async move {
                redis::cmd("GET")
                    .arg(key.as_str())
                    .query_async::<Value>(&mut conn)
                    .await
            })
            .await
            .and_then(|reply| record_from(StoreOperation::Get, reply))
            .map_err(StoreError::from);
        Fenced::lease_lost_unless_corrupt(check)
    }

    pub(crate) async fn read(&self, key: &StoreKey) -> Result<Option<Record>, StoreError> {
        let reply = self
            .command(StoreOperation::Get, redis::cmd("GET").arg(key.as_str()))
            .await?;
        Ok(record_from(StoreOperation::Get, reply)?)
    }

    /// The record under `key` and how long it has left (`PTTL`), in one round trip (a
    /// pipeline of `GET` and `PTTL`, under the operation timeout, retried once on a broken
    /// connection): what a waiting duplicate reads once subscribed, so that it also stops
    /// waiting when the lease it found ends (nothing is published when a lease lapses).
    ///
    /// Not atomic: a change between the two replies pairs the record with its successor's
    /// time to live. A waiter then wakes early or relies on the successor's publication
    /// (completion, release), which its subscription hears: never later than before. A key
    /// gone by the `PTTL` (`-2`) answers no record, whatever the `GET` found.
    pub(crate) async fn read_with_time_to_live(
        &self,
        key: &StoreKey,
    ) -> Result<(Option<Record>, Option<Duration>), StoreError> {
        const OPERATION: StoreOperation = StoreOperation::WaitForChange;
        let work = self.attempts(OPERATION, |mut conn| async move {
            redis::pipe()
                .cmd("GET")
                .arg(key.as_str())
                .cmd("PTTL")
                .arg(key.as_str())
                .query_async::<Value>(&mut conn)
                .await
        });
        let reply = tokio::time::timeout(self.timeout, work)
            .await
            .unwrap_or_else(|_elapsed| Err(self.timed_out(OPERATION)))?;
        let Value::Array(replies) = reply else {
            return Err(unexpected(OPERATION, &reply).into());
        };
        let [record, ttl] = <[Value; 2]>::try_from(replies)
            .map_err(|replies| unexpected(OPERATION, &Value::Array(replies)))?;
        // `-2`: the key is gone by the `PTTL` (its lease lapsed, or it was deleted, after the
        // `GET`): a change, not "no expiry" (which would leave the wait to its timeout).
        if ttl == Value::Int(-2) {
            return Ok((None, None));
        }
        Ok((record_from(OPERATION, record)?, ttl_from(OPERATION, ttl)?))
    }

    /// `WAIT` for the replicas this store was built to wait for (see [`crate::ReplicaWait`]);
    /// `None` when it was built to wait for none.
    ///
    /// Boxed, and no future at all without a [`crate::ReplicaWait`]: opt-in, and inline it
    /// would enlarge (and add a level to) every claim's and completion's future.
    fn wait_for_replicas(
        &self,
        operation: StoreOperation,
    ) -> Option<Pin<Box<impl Future<Output = Result<(), StoreError>> + '_>>> {
        let wait = self.replica_wait?;
        Some(Box::pin(crate::replicas::wait_for_replicas(
            &self.conn,
            Some(wait),
            self.timeout,
            operation,
        )))
    }
}

impl<C> IdempotencyStore for RedisStore<C>
where
    C: ConnectionLike + Clone + Send + Sync + 'static,
{
    async fn try_claim(
        &self,
        key: &StoreKey,
        record: &InProgress,
        lease: Duration,
    ) -> Result<Claim, StoreError> {
        let text = RecordArg::InProgress(record);
        let (cmd, script) = match self.claim {
            ClaimStrategy::SetNxGet => {
                // Sized up front: growing the command buffer argument by argument reallocates
                // several times per claim (`cargo xtask instructions`). 150: the in-progress
                // record's at most (`codec`), plus the other arguments.
                let mut cmd = Cmd::with_capacity(7, key.as_str().len() + 150 + 40);
                cmd.arg("SET")
                    .arg(key.as_str())
                    .arg(&text)
                    .arg("NX")
                    .arg("PX")
                    .arg(millis(lease))
                    .arg("GET");
                (cmd, None)
            }
            ClaimStrategy::Script => {
                let script = &SCRIPTS.claim;
                let mut cmd = evalsha(script, key, 2, 150 + 20);
                cmd.arg(&text).arg(millis(lease));
                (cmd, Some(script))
            }
        };
        let operation = StoreOperation::TryClaim;
        // The timeout awaited here rather than through `command`: one future level less.
        let reply = tokio::time::timeout(self.timeout, self.attempt(operation, &cmd, script))
            .await
            .unwrap_or_else(|_elapsed| Err(self.timed_out(operation)))?;
        match record_from(StoreOperation::TryClaim, reply)? {
            None => {
                if let Some(wait) = self.wait_for_replicas(StoreOperation::TryClaim)
                    && let Err(error) = wait.await
                {
                    // Fail closed: the handler must not run on a claim a failover can lose.
                    // Take the claim back (fenced by our token) so a retry is not told "in
                    // progress" for a whole lease; if that fails too the claim lapses.
                    if let Err(release) = self.release(key, &record.token).await {
                        tracing::debug!(%release, "could not release an unreplicated claim");
                    }
                    return Err(error);
                }
                Ok(Claim::Claimed)
            }
            Some(existing) => Ok(Claim::Existing(existing)),
        }
    }

    async fn complete(
        &self,
        key: &StoreKey,
        token: &LeaseToken,
        record: &Completed,
        retention: Duration,
    ) -> Result<Fenced, StoreError> {
        // About the record's length: the head, the base64 body, the content type.
        let record_len = 240
            + record.outcome.body.len().div_ceil(3) * 4
            + record.outcome.content_type.as_ref().map_or(0, String::len);
        let script = &SCRIPTS.complete;
        let mut cmd = evalsha(
            script,
            key,
            4,
            32 + record_len + 20 + 20 + key.as_str().len(),
        );
        cmd.arg(TokenArg(token))
            .arg(RecordArg::Completed(record))
            .arg(millis(retention));
        if self.notifier.is_some() {
            cmd.arg(WakeChannelArg(key));
        }
        let fenced = self
            .fenced(StoreOperation::Complete, key, script, &cmd)
            .await?;
        if fenced == Fenced::Applied {
            // The outcome is stored on the primary whatever WAIT says; the error tells the
            // engine (which retries the completion, waiting again) that it may not survive a
            // failover.
            if let Some(wait) = self.wait_for_replicas(StoreOperation::Complete) {
                wait.await?;
            }
        }
        Ok(fenced)
    }

    async fn release(&self, key: &StoreKey, token: &LeaseToken) -> Result<Fenced, StoreError> {
        let script = &SCRIPTS.release;
        let mut cmd = evalsha(script, key, 2, 32 + 20 + key.as_str().len());
        cmd.arg(TokenArg(token));
        if self.notifier.is_some() {
            cmd.arg(WakeChannelArg(key));
        }
        self.fenced(StoreOperation::Release, key, script, &cmd)
            .await
    }

    async fn extend(
        &self,
        key: &StoreKey,
        token: &LeaseToken,
        lease: Duration,
    ) -> Result<Fenced, StoreError> {
        let script = &SCRIPTS.extend;
        let mut cmd = evalsha(script, key, 2, 32 + 20);
        cmd.arg(TokenArg(token)).arg(millis(lease));
        self.fenced(StoreOperation::Extend, key, script, &cmd).await
    }

    async fn get(&self, key: &StoreKey) -> Result<Option<Record>, StoreError> {
        self.read(key).await
    }

    async fn delete(&self, key: &StoreKey) -> Result<bool, StoreError> {
        let reply = self
            .command(StoreOperation::Delete, redis::cmd("DEL").arg(key.as_str()))
            .await?;
        match reply {
            Value::Int(n) => Ok(n > 0),
            other => Err(Error::UnexpectedReply {
                operation: StoreOperation::Delete,
                reply: format!("{other:?}"),
            }
            .into()),
        }
    }

    /// One pub/sub subscriber connection per store, multiplexed across keys (see the module
    /// `notify`); `Unsupported` (the engine polls) when the store has no subscriber.
    async fn wait_for_change(
        &self,
        key: &StoreKey,
        seen: &LeaseToken,
        timeout: Duration,
    ) -> Result<Waited, StoreError> {
        match &self.notifier {
            Some(notifier) => {
                let read = self.read_with_time_to_live(key);
                notifier.wait(key, seen, timeout, read).await
            }
            None => Ok(Waited::Unsupported),
        }
    }

    /// The operation timeout, unless the store waits for replicas (a `WAIT` adds its own
    /// timeout to claims and completions; the engine's timer then stays in place).
    fn operation_bound(&self) -> Option<Duration> {
        self.replica_wait.is_none().then_some(self.timeout)
    }

    async fn time_to_live(&self, key: &StoreKey) -> Result<Option<Duration>, StoreError> {
        let reply = self
            .command(
                StoreOperation::TimeToLive,
                redis::cmd("PTTL").arg(key.as_str()),
            )
            .await?;
        Ok(ttl_from(StoreOperation::TimeToLive, reply)?)
    }
}

/// The error of a reply of an unexpected shape.
fn unexpected(operation: StoreOperation, reply: &Value) -> Error {
    Error::UnexpectedReply {
        operation,
        reply: format!("{reply:?}"),
    }
}

/// A `PTTL` reply: milliseconds left, `-2` absent, `-1` no expiry (<https://redis.io/docs/latest/commands/pttl/>).
fn ttl_from(operation: StoreOperation, value: Value) -> Result<Option<Duration>, Error> {
    match value {
        Value::Int(ms) if ms >= 0 => Ok(Some(Duration::from_millis(ms.unsigned_abs()))),
        Value::Int(-1 | -2) => Ok(None),
        other => Err(Error::UnexpectedReply {
            operation,
            reply: format!("{other:?}"),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn millis_is_never_zero() {
        assert_eq!(millis(Duration::ZERO), 1);
        assert_eq!(millis(Duration::from_micros(10)), 1);
        assert_eq!(millis(Duration::from_secs(2)), 2000);
        assert_eq!(millis(Duration::MAX), u64::MAX);
    }

    #[test]
    fn replies_map_to_values_or_typed_errors() {
        assert!(matches!(
            record_from(StoreOperation::Get, Value::Nil),
            Ok(None)
        ));
        assert!(matches!(
            record_from(StoreOperation::Get, Value::BulkString(b"nope".to_vec())),
            Err(Error::Corrupt(_))
        ));
        assert!(matches!(
            record_from(StoreOperation::Get, Value::Int(3)),
            Err(Error::UnexpectedReply { .. })
        ));
        assert!(matches!(
            fenced_from(StoreOperation::Get, Value::Int(1)),
            Ok(Fenced::Applied)
        ));
        assert!(matches!(
            fenced_from(StoreOperation::Get, Value::Int(0)),
            Ok(Fenced::LeaseLost)
        ));
        assert!(fenced_from(StoreOperation::Get, Value::Okay).is_err());
        assert_eq!(
            ttl_from(StoreOperation::Get, Value::Int(1500)).unwrap(),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(ttl_from(StoreOperation::Get, Value::Int(-2)).unwrap(), None);
        assert_eq!(ttl_from(StoreOperation::Get, Value::Int(-1)).unwrap(), None);
        assert!(ttl_from(StoreOperation::Get, Value::Okay).is_err());
    }
}
