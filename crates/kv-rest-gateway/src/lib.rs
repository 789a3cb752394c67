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
//! reconnects by itself when Redis is back).
//!
//! - **Auth**: `Authorization: Bearer <token>` or `?_token=<token>`, compared in constant time.
//!   The optional read-only token runs an explicit allow-list of read commands (never `SCAN` or
//!   `KEYS`); anything else gets `NOPERM …` (400). Tokens never appear in logs or `Debug`.
//! - **`Upstash-Encoding: base64`**: every string in the result is base64-encoded except the
//!   status reply `OK`; integers and null stay; arrays recursively; errors never.
//! - **`upstash-sync-token`**: any request value is accepted; every response carries a fresh one.
//!   Telemetry headers are ignored. `Upstash-Response-Format: resp2` (or anything but `json`)
//!   gets 400.
//! - **Scripts**: `EVAL`, `EVALSHA`, `SCRIPT LOAD` pass through, except that the Upstash-only
//!   shebang `#!lua flags=allow-key-locking` is removed before Redis sees the script while
//!   SHA-1s stay those of the text the client sent (see [`scripts`](crate#scripts) below).
//! - **Refused** (400, `ERR Command is not available: …`): `MULTI`/`EXEC`/`DISCARD`/`WATCH`/
//!   `UNWATCH` as commands, blocking commands (`BLPOP`, `BZPOPMIN`, `XREAD … BLOCK`, `WAIT`…),
//!   subscriptions and `MONITOR`, connection commands (`SELECT`, `QUIT`, `AUTH`, `HELLO`,
//!   `CLIENT`…), replication and `SHUTDOWN`/`DEBUG`.
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
//! `KV_REST_GATEWAY_MAX_BODY_BYTES`, `KV_REST_GATEWAY_MAX_PIPELINE` (see `--help`). Logs go to
//! stderr, filtered by `RUST_LOG` (default `info`). It stops gracefully on SIGINT / SIGTERM.
//!
//! # Layout
//! - `config`: [`GatewayConfig`], [`Secret`] and the defaults.
//! - `server`: the router, limits, auth and request forms ([`router`], [`serve`]).
//! - `command`: JSON and path forms into commands; refused and read-only command lists.
//! - `resp`: Redis replies as JSON, base64 encoding.
//! - `scripts`: the `allow-key-locking` flag and the SHA map.
//! - `backend`: the Redis connections.
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
mod listen;
mod policy;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
mod resp;
mod scripts;
mod server;

pub use acl::{MAIN_RULES, READ_ONLY_RULES};
pub use config::{
    DEFAULT_ACL_USER, DEFAULT_CONNECT_TIMEOUT, DEFAULT_MAX_BODY_BYTES, DEFAULT_MAX_PIPELINE,
    DEFAULT_READ_ONLY_ACL_USER, DEFAULT_RESPONSE_TIMEOUT, DEFAULT_SCRIPT_TIME_LIMIT,
    GatewayConfig, MIN_TOKEN_LEN, Secret,
};
pub use listen::{
    DEFAULT_BODY_READ_TIMEOUT, DEFAULT_HEADER_READ_TIMEOUT, DEFAULT_IDLE_TIMEOUT,
    DEFAULT_MAX_CONNECTIONS, ServerLimits,
};
pub use server::{Error, Gateway, HEALTH_PATH, SYNC_TOKEN_HEADER, router, serve};
