//! # idempotency-kv-rest
//!
//! An idempotency store over the Upstash Redis REST API (also what Vercel KV was): plain HTTPS,
//! no TCP connection to Redis, so it works from serverless and edge functions.
//!
//! It speaks the same protocol as the `redis` crate store — claim with `SET key record NX PX
//! lease GET`, fenced `complete` / `release` / `extend` with the Lua scripts of
//! [`idempotency_core::lua`] via `EVALSHA` (falling back to `EVAL` on `NOSCRIPT`) — over the same
//! record format, so both stores can share one database.
//!
//! ```no_run
//! use idempotency_core::Idempotency;
//! use idempotency_kv_rest::KvRestStore;
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // Reads UPSTASH_REDIS_REST_URL / _TOKEN, else KV_REST_API_URL / KV_REST_API_TOKEN.
//! let engine = Idempotency::builder(KvRestStore::from_env()?).build()?;
//! # let _ = engine; Ok(()) }
//! ```
//!
//! # Retries
//! A request that fails to connect is retried (default twice), within the operation's
//! [`KvRestConfig::operation_timeout`]. Every primitive is safe to send twice: a claim whose
//! first reply was lost finds its own token and the engine treats it as claimed; a repeated
//! completion under the same token is accepted. A request that got an HTTP answer is never
//! retried, and redirects are not followed (a `3xx` is an answer: the command is not sent
//! elsewhere, and no other server answers for the store).
//!
//! # Failures
//! Errors map onto the core's typed `StoreError` exactly as the Redis store maps them, so the
//! same database gives the same answer through either store:
//!
//! | condition | error |
//! |---|---|
//! | connection refused or cut off (after the resends), HTTP 5xx | `Unavailable` |
//! | no answer within [`KvRestConfig::operation_timeout`] (one budget per primitive: resends, the `EVAL` after `NOSCRIPT` and the re-read below included) | `Timeout` |
//! | `OOM command not allowed`, `READONLY` | `WriteRefused` |
//! | any other Redis error reply (`NOPERM`, ...), HTTP 3xx or 4xx, a reply the protocol never produces (a repeated `result` or `error` field included), a reply longer than [`KvRestConfig::max_reply_size`] | `Backend` |
//! | a value under the key that is not a record, or not a string (`WRONGTYPE`) | `Corrupt` |
//!
//! Error messages quote at most [`REPLY_EXCERPT`] bytes of a reply.
//!
//! A fenced script that did not apply (`complete`, `release`, `extend` answering 0) re-reads the
//! key, so a value that is not a record is reported `Corrupt` rather than "lease lost" (a
//! re-read that fails or runs out of the budget leaves the answer "lease lost").
//!
//! Each primitive thus answers within the operation timeout, which the store announces as its
//! [`IdempotencyStore::operation_bound`]: an engine whose `store_timeout` is at least as long
//! arms no timer of its own around the store's calls.
//!
//! # Waiting duplicates poll
//! This store does not implement `IdempotencyStore::wait_for_change`: the REST API is plain
//! request/response and this client holds no subscription (the KV REST gateway also refuses
//! pub/sub commands), so a duplicate waiting with the engine's `wait_for_in_progress` re-claims
//! every `poll_interval`. The shared completion and release scripts publish only when given a
//! channel, which this store never passes.
//!
//! # Performance
//! One request per store primitive (a fresh operation is a claim and a completion, a replay one
//! claim), on kept-alive HTTP/1.1 connections with `TCP_NODELAY` (HTTP/2 where TLS negotiates it
//! by ALPN, as on Upstash; never forced on a plain-HTTP endpoint). The endpoint URL and the
//! `Authorization` header are prepared once; commands are written straight into the request
//! body and replies decoded in one pass, without a `serde_json::Value` tree. The client's
//! instructions per request are measured with `examples/kv_ops.rs` under callgrind (see its
//! header): 80.9 k per replayed claim (from 91.5 k) and 154 k per fresh operation (from 178 k),
//! most of the rest in `reqwest` and `hyper`; 78.1 k and 150.0 k since replies are read with a
//! size bound (2026-12, from 78.5 k and 150.7 k on the same machine).
//!
//! # Re-exports
//! [`idempotency_core`] and [`reqwest`], so versions match (every backend crate re-exports core
//! and its client crate the same way).
//!
//! # Feature flags
//! - `rustls` (default): HTTPS through rustls, needed for the hosted service.

#![deny(missing_docs)]

mod config;
mod wire;

use std::fmt;
use std::time::Duration;

use idempotency_core::{
    Claim, Completed, CorruptRecord, Fenced, IdempotencyStore, InProgress, LeaseToken, Record,
    StoreError, StoreKey, StoreOperation, codec, expiry_millis, lua,
};
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue};

use crate::wire::{Answer, Arg, Reply};

pub use config::{
    DEFAULT_CONNECT_TIMEOUT, DEFAULT_MAX_REPLY_SIZE, DEFAULT_OPERATION_TIMEOUT, ENV_PAIRS,
    KvRestConfig, KvRestConfigError,
};
pub use idempotency_core;
pub use reqwest;

/// Most bytes of a reply quoted in an error message (the rest is counted, not copied).
pub const REPLY_EXCERPT: usize = 1024;

/// At most [`REPLY_EXCERPT`] bytes of `text` (cut at a character boundary), with the size of
/// the whole when cut.
fn excerpt(text: &str) -> String {
    if text.len() <= REPLY_EXCERPT {
        return text.to_owned();
    }
    let mut end = REPLY_EXCERPT;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}... ({} bytes in all)", &text[..end], text.len())
}

/// A script as sent: its text (with the optional Upstash flag line) and the SHA-1 of that text.
#[derive(Debug, Clone)]
struct Script {
    text: String,
    sha: String,
}

impl Script {
    fn new(body: &str, key_locking: bool) -> Self {
        let text = if key_locking {
            format!("{}{body}", lua::UPSTASH_KEY_LOCKING_SHEBANG)
        } else {
            body.to_owned()
        };
        let sha = sha1_smol::Sha1::from(text.as_bytes()).digest().to_string();
        Self { text, sha }
    }
}

#[derive(Debug, Clone)]
struct Scripts {
    complete: Script,
    release: Script,
    extend: Script,
}

/// The KV REST store. Cheap to clone (the HTTP client pools connections).
#[derive(Clone)]
pub struct KvRestStore {
    client: reqwest::Client,
    config: KvRestConfig,
    /// The endpoint, parsed once (parsing it per request was 6 k instructions of 92 k).
    url: reqwest::Url,
    /// `Bearer <token>`, built once and marked sensitive (never logged by the HTTP stack).
    authorization: HeaderValue,
    scripts: std::sync::Arc<Scripts>,
}

impl fmt::Debug for KvRestStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KvRestStore")
            .field("url", &self.config.url)
            .field("token", &"<redacted>")
            .finish_non_exhaustive()
    }
}

/// What went wrong in a KV REST call, as the typed `source` of the core's [`StoreError`]
/// (`Backend`, `WriteRefused` or `Unavailable`), so callers can downcast instead of parsing text.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KvRestError {
    /// Redis answered with an error reply, relayed by the REST API (`NOPERM ...`, `OOM ...`;
    /// at most [`REPLY_EXCERPT`] bytes of it).
    #[error("Redis error reply: {0}")]
    ErrorReply(String),
    /// The REST API answered with an HTTP error status (its JSON `error`, or the body), or
    /// a redirect (never followed).
    #[error("HTTP {status}: {message}")]
    Http {
        /// The HTTP status code.
        status: u16,
        /// The `error` field of the reply, or the body (at most [`REPLY_EXCERPT`] bytes).
        message: String,
    },
    /// The reply body is longer than [`KvRestConfig::max_reply_size`]; it was not read
    /// further.
    #[error("HTTP {status}: the reply is longer than {limit} bytes")]
    TooLarge {
        /// The HTTP status code.
        status: u16,
        /// The limit in force.
        limit: usize,
    },
    /// The reply body is not JSON.
    #[error("HTTP {status}: the reply is not JSON")]
    NotJson {
        /// The HTTP status code.
        status: u16,
        /// The decoding error.
        #[source]
        source: serde_json::Error,
    },
    /// A command could not be written as JSON (never expected: its arguments are strings and
    /// integers).
    #[error("cannot write the command as JSON")]
    Encode(#[source] serde_json::Error),
    /// A reply the record protocol never produces (no `result`, a repeated field, a wrong
    /// type, an unknown script answer).
    #[error("unexpected reply to `{operation}`: {reply}")]
    UnexpectedReply {
        /// The store operation.
        operation: StoreOperation,
        /// The reply, as JSON text (at most [`REPLY_EXCERPT`] bytes).
        reply: String,
    },
}

/// A failure of one REST call, before it is mapped to [`StoreError`].
#[derive(Debug)]
enum CallError {
    Transport(reqwest::Error),
    /// The operation's time budget ran out before a resend could go out.
    Timeout,
    /// An error reply from Redis (HTTP 400 with an `error` field).
    Redis(String),
    /// Any other answer that is not a `result`: HTTP errors, non-JSON, unexpected shapes.
    Reply(KvRestError),
}

impl CallError {
    fn into_store_error(self, operation: StoreOperation, timeout: Duration) -> StoreError {
        match self {
            CallError::Transport(e) if e.is_timeout() => StoreError::Timeout {
                operation,
                after: timeout,
            },
            CallError::Timeout => StoreError::Timeout {
                operation,
                after: timeout,
            },
            CallError::Transport(e) => StoreError::Unavailable {
                source: Box::new(e),
            },
            // Something that is not a string lives under a record key: not a record, and
            // retrying will not change that, so it is corrupt data per the store contract (as
            // the Redis store reports it), not a server failure.
            CallError::Redis(message) if is_wrong_type(&message) => {
                StoreError::Corrupt(CorruptRecord::new(format!(
                    "the key holds a value that is not a string (a hash, list, set...): {}",
                    excerpt(&message)
                )))
            }
            CallError::Redis(message) if is_write_refused(&message) => StoreError::WriteRefused {
                source: Box::new(KvRestError::ErrorReply(excerpt(&message))),
            },
            CallError::Redis(message) => StoreError::Backend {
                source: Box::new(KvRestError::ErrorReply(excerpt(&message))),
            },
            CallError::Reply(
                reply @ (KvRestError::Http { status, .. } | KvRestError::NotJson { status, .. }),
            ) if status >= 500 => StoreError::Unavailable {
                source: Box::new(reply),
            },
            CallError::Reply(reply) => StoreError::Backend {
                source: Box::new(reply),
            },
        }
    }
}

/// `StoreError::Backend` for a reply the protocol never produces (as the Redis store maps it).
fn unexpected(operation: StoreOperation, reply: &Answer) -> StoreError {
    StoreError::Backend {
        source: Box::new(KvRestError::UnexpectedReply {
            operation,
            reply: excerpt(&reply.to_string()),
        }),
    }
}

/// Whether a transport error may be retried: the connection failed, or the request was cut off
/// before any reply (never a timeout: the server may still be running the command, and the
/// caller's budget is spent).
fn is_resendable(error: &reqwest::Error) -> bool {
    !error.is_timeout() && (error.is_connect() || error.is_request())
}

impl KvRestStore {
    /// A store for `config`.
    ///
    /// # Errors
    /// [`KvRestConfigError::Client`] when the HTTP client cannot be built,
    /// [`KvRestConfigError::InvalidUrl`] when the URL does not parse (e.g. no host),
    /// [`KvRestConfigError::InvalidToken`] when the token cannot be sent in a header.
    pub fn new(config: KvRestConfig) -> Result<Self, KvRestConfigError> {
        let url = reqwest::Url::parse(&config.url).map_err(|_| KvRestConfigError::InvalidUrl {
            url: config.url.clone(),
        })?;
        let mut authorization = HeaderValue::try_from(format!("Bearer {}", config.token.0))
            .map_err(|_| KvRestConfigError::InvalidToken)?;
        authorization.set_sensitive(true);
        let client = reqwest::Client::builder()
            .timeout(config.operation_timeout)
            .connect_timeout(config.connect_timeout)
            .pool_idle_timeout(Duration::from_secs(60))
            .tcp_nodelay(true)
            // A redirect is an answer: following it would send the command again, elsewhere,
            // and take that server's reply (a 301/302 even as a body-less GET) for the store's.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(KvRestConfigError::Client)?;
        let locking = config.key_locking_scripts;
        let scripts = Scripts {
            complete: Script::new(lua::COMPLETE, locking),
            release: Script::new(lua::RELEASE, locking),
            extend: Script::new(lua::EXTEND, locking),
        };
        Ok(Self {
            client,
            config,
            url,
            authorization,
            scripts: std::sync::Arc::new(scripts),
        })
    }

    /// A store for `url` and `token` with default settings.
    ///
    /// # Errors
    /// As [`KvRestConfig::new`] and [`KvRestStore::new`].
    pub fn connect(
        url: impl Into<String>,
        token: impl Into<String>,
    ) -> Result<Self, KvRestConfigError> {
        Self::new(KvRestConfig::new(url, token)?)
    }

    /// A store from `UPSTASH_REDIS_REST_URL` + `UPSTASH_REDIS_REST_TOKEN`, else `KV_REST_API_URL` +
    /// `KV_REST_API_TOKEN`.
    ///
    /// # Errors
    /// [`KvRestConfigError::MissingVariable`] naming what to set.
    pub fn from_env() -> Result<Self, KvRestConfigError> {
        Self::new(KvRestConfig::from_lookup(|name| std::env::var(name).ok())?)
    }

    /// The settings in force.
    pub fn config(&self) -> &KvRestConfig {
        &self.config
    }

    /// Run one command for `operation` and map failures to store errors.
    async fn command(
        &self,
        operation: StoreOperation,
        args: &[Arg<'_>],
    ) -> Result<Answer, StoreError> {
        self.command_within(operation, args, self.budget()).await
    }

    /// [`Self::command`] within what is left of `budget`.
    async fn command_within(
        &self,
        operation: StoreOperation,
        args: &[Arg<'_>],
        budget: Budget,
    ) -> Result<Answer, StoreError> {
        self.call(operation, args, budget)
            .await
            .map_err(|e| e.into_store_error(operation, self.config.operation_timeout))
    }

    /// The whole operation timeout, starting now: one per primitive, shared by every request
    /// the primitive makes (resends, the `EVAL` after `NOSCRIPT`, the read after "lease
    /// lost"), so the primitive answers within it ([`IdempotencyStore::operation_bound`]).
    fn budget(&self) -> Budget {
        Budget {
            deadline: idempotency_core::instant_after(
                tokio::time::Instant::now(),
                self.config.operation_timeout,
            ),
            whole: true,
        }
    }

    /// Run one command (JSON form, `POST /`) within `budget` and return its `result`.
    async fn call(
        &self,
        operation: StoreOperation,
        args: &[Arg<'_>],
        budget: Budget,
    ) -> Result<Answer, CallError> {
        let body = wire::body(args).map_err(|e| CallError::Reply(KvRestError::Encode(e)))?;
        let deadline = budget.deadline;
        let mut attempt = 0;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return Err(CallError::Timeout);
            }
            let mut request = self.client.post(self.url.clone());
            if attempt > 0 || !budget.whole {
                // A resend, or a later request of the primitive, gets only what is left of
                // the budget. The first request has the client's own timeout (the whole
                // budget): a per-request timeout is stored in the request's extensions, a map
                // allocated per request (~540 instructions per request under callgrind,
                // `examples/kv_ops.rs`).
                request = request.timeout(left);
            }
            let sent = request
                .header(AUTHORIZATION, self.authorization.clone())
                .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
                // A reference count, not a copy: a resend sends the same bytes.
                .body(body.clone())
                .send()
                .await;
            let response = match sent {
                Ok(response) => response,
                // Safe to send again: every command this store sends is idempotent under the
                // record protocol (a claim resent after it was applied finds the claimer's own
                // token, which the engine recognises; completion is idempotent for its token;
                // release and extend are fenced; reads are reads). Besides refused connections,
                // this covers a kept-alive connection the server closed just as the request was
                // sent ("connection closed before message completed"), which servers with an
                // idle timeout shorter than the pool's cause now and then.
                Err(e) if is_resendable(&e) && attempt < self.config.reconnect_attempts => {
                    attempt += 1;
                    tracing::debug!(attempt, error = %e, "KV REST request did not get through; retrying");
                    // 20, 40, 80 ms ... capped at about 10 s.
                    let pause = Duration::from_millis(10 << attempt.min(10));
                    if tokio::time::Instant::now() + pause >= deadline {
                        // No time left to send again: the failure itself is the answer.
                        return Err(CallError::Transport(e));
                    }
                    tokio::time::sleep(pause).await;
                    continue;
                }
                Err(e) => return Err(CallError::Transport(e)),
            };
            let status = response.status().as_u16();
            // A body cut off (or too slow) after the status line is a transport failure: the
            // timeout maps to `Timeout`, the rest to `Unavailable`; never resent.
            let bytes = read_body(response, self.config.max_reply_size)
                .await
                .map_err(|e| match e {
                    Some(e) => CallError::Transport(e),
                    None => CallError::Reply(KvRestError::TooLarge {
                        status,
                        limit: self.config.max_reply_size,
                    }),
                })?;
            let reply = wire::parse_reply(&bytes)
                .map_err(|source| CallError::Reply(KvRestError::NotJson { status, source }))?;
            return match reply {
                Reply::Error(message) if status == 400 => Err(CallError::Redis(message)),
                Reply::Error(message) => Err(CallError::Reply(KvRestError::Http {
                    status,
                    message: excerpt(&message),
                })),
                _ if !(200..300).contains(&status) => Err(CallError::Reply(KvRestError::Http {
                    status,
                    message: excerpt(&String::from_utf8_lossy(&bytes)),
                })),
                Reply::Result(answer) => Ok(answer),
                Reply::Neither(text) => Err(CallError::Reply(KvRestError::UnexpectedReply {
                    operation,
                    reply: excerpt(&text),
                })),
            };
        }
    }

    /// Run a fenced script by SHA, loading it with EVAL when the server does not know it.
    async fn eval(
        &self,
        operation: StoreOperation,
        script: &Script,
        key: &StoreKey,
        args: &[Arg<'_>],
    ) -> Result<Fenced, StoreError> {
        // One budget for the whole primitive: `EVALSHA`, the `EVAL` after `NOSCRIPT` and the
        // read after "lease lost" share it.
        let budget = self.budget();
        let by_sha = script_command("EVALSHA", &script.sha, key, args);
        let reply = match self.call(operation, &by_sha, budget).await {
            Err(CallError::Redis(message)) if message.starts_with("NOSCRIPT") => {
                tracing::debug!("script not cached on the server; sending it with EVAL");
                let by_text = script_command("EVAL", &script.text, key, args);
                self.command_within(operation, &by_text, budget.rest())
                    .await?
            }
            other => {
                other.map_err(|e| e.into_store_error(operation, self.config.operation_timeout))?
            }
        };
        match reply.as_i64() {
            Some(1) => Ok(Fenced::Applied),
            // As the Redis store: the scripts cannot tell "not ours" from "not a record". The
            // script's answer stands whatever the read meets (a timeout too): only a key
            // that holds something else than a record changes it.
            Some(0) => Fenced::lease_lost_unless_corrupt(self.get_within(key, budget.rest()).await),
            _ => Err(unexpected(operation, &reply)),
        }
    }

    /// `GET` of `key` within what is left of `budget`.
    async fn get_within(
        &self,
        key: &StoreKey,
        budget: Budget,
    ) -> Result<Option<Record>, StoreError> {
        let command = [Arg::Str("GET"), Arg::Str(key.as_str())];
        decode_reply(
            StoreOperation::Get,
            self.command_within(StoreOperation::Get, &command, budget)
                .await?,
        )
    }
}

/// The time a primitive has for its requests: until `deadline`.
#[derive(Debug, Clone, Copy)]
struct Budget {
    deadline: tokio::time::Instant,
    /// The whole operation timeout, starting with this request: the client's own timeout
    /// bounds it, without a per-request one.
    whole: bool,
}

impl Budget {
    /// What is left of this budget, for a later request of the same primitive.
    fn rest(self) -> Self {
        Self {
            deadline: self.deadline,
            whole: false,
        }
    }
}

/// The body of `response`, at most `limit` bytes: `Err(None)` past the limit (announced by
/// `Content-Length` or streamed; the rest is not read), `Err(Some(_))` when reading fails.
async fn read_body(
    mut response: reqwest::Response,
    limit: usize,
) -> Result<bytes::Bytes, Option<reqwest::Error>> {
    let announced = response.content_length();
    if announced.is_some_and(|length| length > limit as u64) {
        return Err(None);
    }
    let Some(first) = response.chunk().await? else {
        return Ok(bytes::Bytes::new());
    };
    if first.len() > limit {
        return Err(None);
    }
    let Some(second) = response.chunk().await? else {
        // The usual case (one chunk): no copy.
        return Ok(first);
    };
    let capacity = announced.map_or(first.len() + second.len(), |length| {
        usize::try_from(length).unwrap_or(limit)
    });
    // Not more than 1 MiB ahead of what arrived, whatever the announced length.
    let mut body = bytes::BytesMut::with_capacity(capacity.min(limit).min(1 << 20));
    for chunk in [first, second] {
        if body.len() + chunk.len() > limit {
            return Err(None);
        }
        body.extend_from_slice(&chunk);
    }
    while let Some(chunk) = response.chunk().await? {
        if body.len() + chunk.len() > limit {
            return Err(None);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

/// `EVALSHA sha 1 key args…` or `EVAL text 1 key args…`.
fn script_command<'a>(
    name: &'static str,
    script: &'a str,
    key: &'a StoreKey,
    args: &[Arg<'a>],
) -> Vec<Arg<'a>> {
    let mut command = Vec::with_capacity(4 + args.len());
    command.extend([
        Arg::Str(name),
        Arg::Str(script),
        Arg::Int(1),
        Arg::Str(key.as_str()),
    ]);
    command.extend_from_slice(args);
    command
}

/// Whether a Redis error relayed by the REST API is `WRONGTYPE` (the key holds a hash, list...),
/// also when wrapped by a script error (`ERR Error running script ... WRONGTYPE ...`).
fn is_wrong_type(message: &str) -> bool {
    message.starts_with("WRONGTYPE") || message.contains("WRONGTYPE Operation against a key")
}

/// Whether a Redis error relayed by the REST API says the server refuses writes but still
/// serves reads: `OOM command not allowed ...` (full, `noeviction`) or `READONLY ...` (a
/// replica), also when wrapped by a script error (`ERR Error running script ... OOM ...`).
fn is_write_refused(message: &str) -> bool {
    message.starts_with("OOM ")
        || message.starts_with("READONLY ")
        || message.contains("OOM command not allowed")
        || message.contains("READONLY You can't write")
}

fn millis(d: Duration) -> Arg<'static> {
    Arg::Int(expiry_millis(d))
}

fn decode_reply(operation: StoreOperation, reply: Answer) -> Result<Option<Record>, StoreError> {
    match reply {
        Answer::Null => Ok(None),
        Answer::Text(text) => Ok(Some(codec::decode(text.as_bytes())?)),
        other => Err(unexpected(operation, &other)),
    }
}

impl IdempotencyStore for KvRestStore {
    async fn try_claim(
        &self,
        key: &StoreKey,
        record: &InProgress,
        lease: Duration,
    ) -> Result<Claim, StoreError> {
        let text = codec::encode(&Record::InProgress(record.clone()));
        let command = [
            Arg::Str("SET"),
            Arg::Str(key.as_str()),
            Arg::Str(&text),
            Arg::Str("NX"),
            Arg::Str("PX"),
            millis(lease),
            Arg::Str("GET"),
        ];
        let reply = self.command(StoreOperation::TryClaim, &command).await?;
        match decode_reply(StoreOperation::TryClaim, reply)? {
            None => Ok(Claim::Claimed),
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
        let text = codec::encode(&Record::Completed(record.clone()));
        let token = token.to_hex();
        let args = [Arg::Str(&token), Arg::Str(&text), millis(retention)];
        self.eval(StoreOperation::Complete, &self.scripts.complete, key, &args)
            .await
    }

    async fn release(&self, key: &StoreKey, token: &LeaseToken) -> Result<Fenced, StoreError> {
        let token = token.to_hex();
        self.eval(
            StoreOperation::Release,
            &self.scripts.release,
            key,
            &[Arg::Str(&token)],
        )
        .await
    }

    async fn extend(
        &self,
        key: &StoreKey,
        token: &LeaseToken,
        lease: Duration,
    ) -> Result<Fenced, StoreError> {
        let token = token.to_hex();
        let args = [Arg::Str(&token), millis(lease)];
        self.eval(StoreOperation::Extend, &self.scripts.extend, key, &args)
            .await
    }

    async fn get(&self, key: &StoreKey) -> Result<Option<Record>, StoreError> {
        self.get_within(key, self.budget()).await
    }

    async fn delete(&self, key: &StoreKey) -> Result<bool, StoreError> {
        let reply = self
            .command(
                StoreOperation::Delete,
                &[Arg::Str("DEL"), Arg::Str(key.as_str())],
            )
            .await?;
        match reply.as_i64() {
            Some(deleted) => Ok(deleted > 0),
            None => Err(unexpected(StoreOperation::Delete, &reply)),
        }
    }

    /// Every primitive answers within [`KvRestConfig::operation_timeout`]: its requests
    /// (resends, the `EVAL` after `NOSCRIPT`, the read after "lease lost") share that one
    /// budget, so the engine arms no timer of its own when its `store_timeout` is at least as
    /// long.
    fn operation_bound(&self) -> Option<Duration> {
        Some(self.config.operation_timeout)
    }

    /// `PTTL` (one more request, made only when the engine answers "in progress").
    async fn time_to_live(&self, key: &StoreKey) -> Result<Option<Duration>, StoreError> {
        let reply = self
            .command(
                StoreOperation::TimeToLive,
                &[Arg::Str("PTTL"), Arg::Str(key.as_str())],
            )
            .await?;
        match reply.as_i64() {
            Some(ms) if ms >= 0 => Ok(Some(Duration::from_millis(ms.unsigned_abs()))),
            Some(-1 | -2) => Ok(None),
            _ => Err(unexpected(StoreOperation::TimeToLive, &reply)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flagged_scripts_hash_their_sent_text() {
        let plain = Script::new(lua::RELEASE, false);
        let flagged = Script::new(lua::RELEASE, true);
        assert!(flagged.text.starts_with("#!lua flags=allow-key-locking\n"));
        assert_ne!(plain.sha, flagged.sha);
        assert_eq!(plain.sha.len(), 40);
    }

    #[test]
    fn write_refusals_are_typed() {
        let oom =
            CallError::Redis("OOM command not allowed when used memory > 'maxmemory'.".into());
        assert!(matches!(
            oom.into_store_error(StoreOperation::Get, Duration::from_secs(1)),
            StoreError::WriteRefused { .. }
        ));
        let readonly =
            CallError::Redis("READONLY You can't write against a read only replica.".into());
        assert!(matches!(
            readonly.into_store_error(StoreOperation::Get, Duration::from_secs(1)),
            StoreError::WriteRefused { .. }
        ));
        let other = CallError::Redis("NOPERM nope".into());
        assert!(matches!(
            other.into_store_error(StoreOperation::Get, Duration::from_secs(1)),
            StoreError::Backend { .. }
        ));
    }

    #[test]
    fn wrong_type_is_corrupt_as_on_redis() {
        for message in [
            "WRONGTYPE Operation against a key holding the wrong kind of value",
            "ERR Error running script (call to f_0123): @user_script:1: WRONGTYPE Operation \
             against a key holding the wrong kind of value",
        ] {
            let error = CallError::Redis(message.into())
                .into_store_error(StoreOperation::Get, Duration::from_secs(1));
            assert!(matches!(error, StoreError::Corrupt(_)), "{error:?}");
        }
    }

    #[test]
    fn unusable_urls_and_tokens_fail_at_construction() {
        assert!(matches!(
            KvRestStore::connect("http://", "token"),
            Err(KvRestConfigError::InvalidUrl { .. })
        ));
        assert!(matches!(
            KvRestStore::connect("http://127.0.0.1:9", "line\nbreak"),
            Err(KvRestConfigError::InvalidToken)
        ));
        let store = KvRestStore::connect("https://example.upstash.io/", "token").unwrap();
        assert!(store.authorization.is_sensitive());
        assert_eq!(store.authorization.to_str().unwrap(), "Bearer token");
        assert_eq!(store.url.as_str(), "https://example.upstash.io/");
    }

    #[test]
    fn debug_hides_the_token() {
        let store = KvRestStore::connect("http://127.0.0.1:9", "hunter2").unwrap();
        assert!(!format!("{store:?}").contains("hunter2"));
    }
}
