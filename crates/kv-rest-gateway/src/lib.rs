//! # kv-rest-gateway
//!
//! An HTTP server that speaks the KV REST protocol — the Upstash Redis REST API, which Vercel KV
//! also used — in front of a real Redis. Point the official clients (`@upstash/redis`, the
//! Python `upstash-redis`) or this toolkit's `idempotency-kv-rest` store at it for dev/prod
//! parity on a laptop or in CI.
//!
//! ```no_run
//! use kv_rest_gateway::{GatewayConfig, serve};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! let address = listener.local_addr()?;
//! let config = GatewayConfig::new("redis://127.0.0.1:6379", "dev-token");
//! let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
//! let server = tokio::spawn(serve(listener, config, async move { let _ = stopped.await; }));
//! // … send requests to http://{address}/ with `Authorization: Bearer dev-token` …
//! # let _ = address;
//! let _ = stop.send(());
//! server.await??;
//! # Ok(()) }
//! ```
//!
//! # Protocol
//! | request | meaning |
//! |---|---|
//! | `POST /` with `["SET","k","v"]` | one command; arguments may be strings, numbers, booleans |
//! | `GET\|POST\|PUT\|HEAD /set/k/v` | path form: URL-decoded segments; a POST/PUT body is the last argument, then query-string arguments (`?EX=100&NX`) |
//! | `POST /pipeline` with `[[…],[…]]` | not atomic; HTTP 200 with `[{"result":…}\|{"error":…}, …]` |
//! | `POST /multi-exec` with `[[…],[…]]` | `MULTI`/`EXEC` on a dedicated connection; runtime errors inline; HTTP 400 `{"error":…}` when Redis refuses the transaction as a whole |
//! | `GET\|HEAD` [`HEALTH_PATH`] (`/~health`) | unauthenticated; 200 when Redis answers `PING`, else 503 |
//!
//! Replies are `{"result": …}` (the key is present also for `null`), `{"error":"ERR …"}` with
//! HTTP 400 for Redis errors and refused commands, 401 for a missing or wrong token, 405 for a
//! wrong method, 413 for a body over the limit, 503 while Redis is unreachable (the gateway
//! reconnects by itself when Redis is back; after a restart the first request succeeds). A 503
//! whose error says "the outcome is unknown" means the connection failed after the command was
//! sent: it may or may not have run. Reads are sent again on a new connection instead.
//!
//! - **Auth**: `Authorization: Bearer <token>` or `?_token=<token>`, compared in constant time.
//!   Empty tokens refuse to start; tokens under [`MIN_TOKEN_LEN`] characters log a warning.
//!   The optional read-only token runs an explicit allow-list of read commands (never `SCAN`,
//!   `KEYS` or `RANDOMKEY`); anything else gets `NOPERM …` (400). Tokens never appear in logs
//!   or `Debug`.
//! - **`Upstash-Encoding: base64`**: every string in the result is base64-encoded except the
//!   status reply `OK`; integers and null stay; arrays recursively; errors never.
//! - **`upstash-sync-token`**: any request value is accepted; every answer to an authenticated
//!   request read in full carries a fresh one, errors included (early answers — 401, 405, 408,
//!   413, an unreadable body, a refused `Upstash-Response-Format` — and the health route carry
//!   none: the token is a counter a client that never authenticated must not see).
//!   Telemetry headers are ignored. `Upstash-Response-Format: resp2` (or anything but `json`)
//!   gets 400.
//! - **Scripts**: `EVAL`, `EVALSHA`, `SCRIPT LOAD` pass through, except that the Upstash-only
//!   shebang `#!lua flags=allow-key-locking` is removed before Redis sees the script while
//!   SHA-1s stay those of the text the client sent (see [`scripts`](crate#scripts) below).
//! - **Refused** (400, `ERR Command is not available: …`): everything outside an allow-list of
//!   the KV REST API's data commands — `MULTI`/`EXEC`/`DISCARD`/`WATCH`/`UNWATCH` as commands,
//!   blocking commands (`BLPOP`, `BZPOPMIN`, `XREAD … BLOCK`, `WAIT`…), subscriptions and
//!   `MONITOR`, connection commands (`SELECT`, `QUIT`, `AUTH`, `HELLO`, `CLIENT`, `RESET`…),
//!   `SCRIPT DEBUG`, administration (`CONFIG`, `ACL`, `INFO`, `DEBUG`, `MODULE`, `MIGRATE`,
//!   `SHUTDOWN`, replication…), `FLUSHALL`, `SWAPDB`, `MOVE`. Names, sub-commands and
//!   `XREAD` options with bytes a Redis keyword cannot have (NUL, space, control, non-ASCII)
//!   get 400 `ERR invalid command name` before any lookup.
//! - **Numbers** in JSON bodies reach Redis as exactly the text the client sent (serde_json's
//!   `RawValue`): `12345678901234567890123`, `-0`, `1E+400`, `2.50` are not re-formatted.
//!
//! # Redis ACL users
//! The name filter is the first line of defence; Redis is the second. Each token's connections
//! authenticate as an ACL user that may run only that token's commands ([`MAIN_RULES`],
//! [`READ_ONLY_RULES`]); Redis applies those rules inside scripts too. When the configured
//! Redis URL's user may run `ACL SETUSER`, the gateway creates or updates the users at start
//! (passwords derived from the tokens, names [`DEFAULT_ACL_USER`] / [`DEFAULT_READ_ONLY_ACL_USER`])
//! and re-creates them after a Redis restart forgot them. A user someone else changed is left
//! alone: one that is `off` (an operator disabled it) is never turned back on, at start or
//! later, and after an authentication failure one whose password is not the gateway's is not
//! overwritten; its token's requests get 503 and the log says why. Otherwise the URL's user is the
//! operator-prepared main user ([`GatewayConfig::read_only_redis_url`] the read-only one): the
//! gateway probes both and refuses to start ([`Error::RedisUsers`]) when one may do more than
//! it should. Until the users are ready, requests get 503.
//!
//! # Limits
//! [`ServerLimits`]: header read timeout, body read timeout (408), idle keep-alive timeout and a
//! connection limit; request bodies up to [`DEFAULT_MAX_BODY_BYTES`], batches up to
//! [`DEFAULT_MAX_PIPELINE`] commands, counted while parsed. Scripts running longer than
//! [`GatewayConfig::script_time_limit`] are stopped with `SCRIPT KILL` over a separate
//! connection (keep Redis's `busy-reply-threshold` at or below it), and Redis's own `BUSY`
//! refusals meanwhile (`BUSY Redis is busy running a script…`: the command did not run) are
//! retried within that bound (plus 1 s): single commands, transactions that did not run
//! (including a new connection whose `SELECT` Redis refused), and the refused commands that end
//! a pipeline — never a refused pipeline command followed by one that ran, which would reorder
//! writes (its reply stays the refusal). Any other reply is the command's answer and is never
//! sent again — `BUSYGROUP`, or a script's own error text (`BUSY lock held`, `NOAUTH …`); only a
//! script that returns Redis's refusal word for word is taken for it (and retried within the
//! bound). The ACL users are re-created (provisioning mode) only when Redis refuses their
//! credentials while a connection is opened, never because of a reply's text.
//!
//! # Scripts
//! The gateway keeps a map `sha1(flagged text) → sha1(text sent to Redis)`, filled by `EVAL` and
//! `SCRIPT LOAD` of flagged scripts (`SCRIPT LOAD` replies with the flagged SHA); `EVALSHA` and
//! `SCRIPT EXISTS` translate through it. A SHA it does not know passes unchanged, so Redis
//! answers `NOSCRIPT` and clients fall back to `EVAL`. The flag line is replaced by an empty line
//! so Lua error line numbers still match.
//!
//! # Command line
//! The `kv-rest-gateway` binary: `kv-rest-gateway --listen 127.0.0.1:8079 --redis-url
//! redis://127.0.0.1:6379 --token T [--read-only-token R] [--max-body-bytes N]
//! [--max-pipeline N]`, or the environment variables `KV_REST_GATEWAY_LISTEN`,
//! `KV_REST_GATEWAY_REDIS_URL`, `KV_REST_GATEWAY_TOKEN`, `KV_REST_GATEWAY_READ_ONLY_TOKEN`,
//! `KV_REST_GATEWAY_MAX_BODY_BYTES`, `KV_REST_GATEWAY_MAX_PIPELINE` and the limits and ACL
//! options in the README (see `--help`). Logs go to
//! stderr, filtered by `RUST_LOG` (default `info`). It stops gracefully on SIGINT / SIGTERM.
//!
//! # Layout
//! - `config`: [`GatewayConfig`], [`Secret`] and the defaults.
//! - `error`: request failures and the JSON responses they become.
//! - `server`: the router, auth and request forms ([`router`], [`serve`], [`Gateway::serve`]).
//! - `listen`: the HTTP/1 server with [`ServerLimits`].
//! - `command`: the compact [`Command`](crate) and the path form; `query`: query-string pairs.
//! - `body`: JSON bodies into commands, bounded, numbers exact.
//! - `policy`: the allow-lists and strict names.
//! - `acl`: the Redis ACL users: rules, creation, verification.
//! - `resp`: Redis replies as JSON, base64 encoding.
//! - `scripts`: the `allow-key-locking` flag and the SHA map.
//! - `backend`: the Redis connections per ACL user, the script killer.
//!
//! # Feature flags
//! None. A container image: `crates/kv-rest-gateway/Dockerfile` (multi-stage, distroless,
//! non-root); the workspace's `docker-compose.yml` runs it next to Redis.
#![deny(missing_docs)]

mod acl;
mod auth;
mod backend;
mod body;
mod command;
mod config;
mod error;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
mod link;
mod listen;
mod policy;
mod query;
mod resp;
mod retries;
mod scripts;
mod server;

pub use acl::{MAIN_RULES, READ_ONLY_RULES};
pub use config::{
    DEFAULT_ACL_USER, DEFAULT_CONNECT_TIMEOUT, DEFAULT_MAX_BODY_BYTES, DEFAULT_MAX_PIPELINE,
    DEFAULT_READ_ONLY_ACL_USER, DEFAULT_RESPONSE_TIMEOUT, DEFAULT_SCRIPT_TIME_LIMIT, GatewayConfig,
    MIN_TOKEN_LEN, Secret,
};
pub use listen::{
    DEFAULT_BODY_READ_TIMEOUT, DEFAULT_HEADER_READ_TIMEOUT, DEFAULT_IDLE_TIMEOUT,
    DEFAULT_MAX_CONNECTIONS, ServerLimits,
};
pub use server::{Error, Gateway, HEALTH_PATH, SYNC_TOKEN_HEADER, router, serve};
