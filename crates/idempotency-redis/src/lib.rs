//! # idempotency-redis
//!
//! A Redis / Valkey / Redis Cluster store for the idempotency toolkit: run a side effect at most
//! once per `(scope, key)` across every instance of a service that shares the database.
//!
//! ```no_run
//! use idempotency_core::{Begin, Fingerprint, Idempotency, IdempotencyKey, Scope, StoredOutcome};
//! use idempotency_redis::RedisStore;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let store = RedisStore::connect("redis://127.0.0.1:6379").await?;
//! let report = store.doctor().await?; // warns about eviction policies and persistence
//! assert!(report.server_version.is_some());
//!
//! let engine = Idempotency::builder(store).build()?;
//! let key = IdempotencyKey::new("pay-7f3a")?;
//! let scope = Scope::new("customer-42");
//! let fingerprint = Fingerprint::builder().part("POST").part("/pay").part("1999").finish();
//! match engine.begin(&scope, &key, fingerprint).await? {
//!     Begin::Run(guard) => {
//!         // ... charge the card, once ...
//!         guard.complete(StoredOutcome::new("charged", None)).await?;
//!     }
//!     Begin::Replay(outcome) => println!("replayed: {:?}", outcome.body),
//! }
//! # Ok(()) }
//! ```
//!
//! # Protocol
//! One key per record, holding the core's record format v1 (`idempotency_core::codec`), so a
//! record written here is readable by the KV REST backend on the same database and vice versa.
//!
//! | primitive | on the server | round trips |
//! |---|---|---|
//! | `try_claim` | `SET key record NX PX lease GET` (Redis >= 7.0; the core's claim script before) | 1 |
//! | `complete` / `release` / `extend` | `EVALSHA` of the core's fenced scripts (`EVAL` after `NOSCRIPT`) | 1 |
//! | `get` / `delete` | `GET` / `DEL` | 1 |
//! | `time_to_live` (only when the engine answers "in progress") | `PTTL` | 1 |
//!
//! A first attempt through the engine therefore costs two commands (claim + complete) and a
//! replay one. The Lua sources live in `idempotency_core::lua` and nowhere else.
//!
//! # Least privilege
//! A Redis ACL user (Redis ACL documentation, `ACL SETUSER`) limited to these rules runs every
//! primitive, waits included, through `SCRIPT FLUSH` and restarts (`SCRIPT` itself is not
//! needed: after `NOSCRIPT` the store resends the command as `EVAL`, which caches the script
//! again); `~*` and `&*` can be narrowed to the store's key prefix and the
//! `idempotency:wake:` channels:
//!
//! ```text
//! ACL SETUSER idempotency on >password ~* &* +set +get +del +pttl +pexpire +evalsha +eval
//!     +publish +subscribe +unsubscribe +ping +hello +info +client
//! ```
//!
//! (`tests/breaker4_scripts.rs` runs the store as exactly this user.)
//!
//! # Waiting duplicates are woken
//! With the engine's `wait_for_in_progress`, a duplicate that finds the key in progress waits
//! for a wake-up instead of polling (`IdempotencyStore::wait_for_change`). The completion and
//! release scripts `PUBLISH` on the key's channel (`idempotency_core::lua::wake_channel`:
//! `idempotency:wake:` + the store key; channels do not share the keyspace). Each store
//! built with [`RedisStoreBuilder::connect`] / `connect_client` has **one** extra connection,
//! a pub/sub subscriber opened by the first wait, multiplexed across every waited key
//! (subscribed while someone in this process waits on it) and reconnecting with back-off;
//! after a reconnection every waiter re-reads once, since messages published meanwhile are
//! lost. A waiter costs `SUBSCRIBE`/`UNSUBSCRIBE` (first/last waiter of a key), one `GET`
//! and `PTTL` (pipelined, one round trip) after subscribing, and one re-read — no command per
//! unit of time waited, except one look (these again) per lease period while the first attempt
//! renews its lease. Lease expiry is not published: the wait ends when the lease it read
//! ends, and the engine re-reads (a duplicate of a crashed owner takes the key over then).
//! [`RedisClusterStore`] and stores over a caller's connection (`with_connection`) have no
//! subscriber and poll every `poll_interval` (sharded pub/sub, `SSUBSCRIBE`, is a follow-up).
//!
//! # Failures
//! Every operation has its own time budget ([`RedisStoreBuilder::operation_timeout`], default
//! 1 s), so a paused or overloaded server cannot hang a request; errors map onto the core's
//! typed [`StoreError`](idempotency_core::StoreError):
//!
//! | condition | error |
//! |---|---|
//! | connection refused, reset, closed; cluster down; loading | `Unavailable` |
//! | no answer within the budget | `Timeout` |
//! | `OOM command not allowed` (full, `noeviction`), `READONLY` (a replica) | `WriteRefused` |
//! | any other error reply from the server (`NOPERM`, ...) | `Backend` |
//! | a value under the key that is not a record, or not a string (`WRONGTYPE`) | `Corrupt` |
//!
//! The connection re-establishes itself after a server restart; the operation that finds it
//! broken retries once on the new one.
//!
//! Each operation arms one tokio timer for its budget. So that arming it does not wake the
//! runtime's I/O driver on every operation (tokio does when the new timer is the runtime's
//! earliest, as it is between requests; on a multi-threaded runtime that can wake a second
//! worker thread for nothing, two context switches), a store keeps one background task
//! sleeping half an operation timeout at a time, whose timer is always due first: one wake-up
//! per half timeout (2 per second by default) instead of one per operation, ended with the
//! store's last clone. Operation timeouts under 10 ms run without it.
//!
//! Tests against a real server should not run on tokio's paused clock
//! (`#[tokio::test(start_paused = true)]`): while the runtime waits for the server's reply it is
//! idle, so auto-advance jumps the clock to the next timer — the connect or operation budget —
//! and the operation fails with `Timeout` although the server is fine. Use real time (and short
//! budgets) for such tests; paused time suits the in-process memory store.
//!
//! # Layout
//! - [`RedisStore`]: the store, generic over the connection; [`RedisClusterStore`] for Redis
//!   Cluster;
//! - [`RedisStoreBuilder`]: timeouts, reconnection, claim strategy; `connect`,
//!   `connect_cluster`, `with_connection`;
//! - [`RedisStore::doctor`] and [`DoctorReport`]: the start-up check of the server settings;
//! - `notify` (private): the wake-up subscriber;
//! - [`idempotency_core`] and [`redis`]: re-exported so versions match (every backend crate
//!   re-exports core and its client crate the same way).
//!
//! # Feature flags
//! - `cluster` (default): [`RedisClusterStore`] on `redis::cluster_async`;
//! - `tls`: `rediss://` URLs with rustls (ring is installed as the crypto provider unless the
//!   application installed one).

#![deny(missing_docs)]

mod anchor;
mod builder;
mod doctor;
mod error;
mod info;
mod notify;
mod replicas;
mod scripts;
mod store;
#[cfg(feature = "tls")]
mod tls;

pub use builder::{DEFAULT_CONNECT_TIMEOUT, DEFAULT_OPERATION_TIMEOUT, RedisStoreBuilder};
pub use doctor::{DoctorReport, DoctorWarning};
pub use idempotency_core;
pub use redis;
pub use replicas::{ReplicaWait, ReplicasNotAcknowledged};
pub use store::{ClaimStrategy, RedisStore, ServerMode};

/// A [`RedisStore`] on a Redis Cluster connection; build it with
/// [`RedisStoreBuilder::connect_cluster`].
///
/// ```no_run
/// # async fn demo() -> Result<(), idempotency_core::StoreError> {
/// use idempotency_redis::{RedisClusterStore, RedisStore};
/// let store: RedisClusterStore = RedisStore::builder()
///     .connect_cluster(["redis://10.0.0.1:7000", "redis://10.0.0.2:7000"])
///     .await?;
/// # Ok(()) }
/// ```
#[cfg(feature = "cluster")]
pub type RedisClusterStore = RedisStore<redis::cluster_async::ClusterConnection>;
