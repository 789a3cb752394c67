//! Shared test helpers: the `StoreHarness` for Redis and one server / cluster per test binary.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used)]

use idempotency_testkit::async_trait;
use std::sync::{Arc, OnceLock};

use idempotency_core::{DynIdempotencyStore, StoreKey};
use idempotency_redis::redis::aio::ConnectionLike;
use idempotency_redis::{ClaimStrategy, RedisClusterStore, RedisStore};
use idempotency_testkit::fixtures::{RedisCluster, RedisServer};
use idempotency_testkit::{RawValue, StoreHarness, unique_prefix};

/// One server for every test of the binary. Statics are never dropped: the fixture's watchdog
/// kills the process when the test binary exits.
pub fn shared_server() -> &'static RedisServer {
    static SERVER: OnceLock<RedisServer> = OnceLock::new();
    SERVER.get_or_init(|| RedisServer::start().expect("starting the shared redis server"))
}

/// One 3-master cluster for every test of the binary.
pub fn shared_cluster() -> &'static RedisCluster {
    static CLUSTER: OnceLock<RedisCluster> = OnceLock::new();
    CLUSTER.get_or_init(|| RedisCluster::start(3).expect("starting the shared redis cluster"))
}

/// The behaviour-suite harness over any `RedisStore<C>`.
pub struct RedisHarness<C> {
    pub store: Arc<RedisStore<C>>,
    pub prefix: String,
}

impl<C> RedisHarness<C> {
    pub fn new(store: RedisStore<C>) -> Self {
        Self {
            store: Arc::new(store),
            prefix: unique_prefix(),
        }
    }
}

#[async_trait]
impl<C> StoreHarness for RedisHarness<C>
where
    C: ConnectionLike + Clone + Send + Sync + 'static,
{
    fn store(&self) -> Arc<dyn DynIdempotencyStore> {
        self.store.clone()
    }

    async fn put_raw(&self, key: &StoreKey, value: RawValue) {
        let mut conn = self.store.connection().clone();
        let _: () = idempotency_redis::redis::cmd("DEL")
            .arg(key.as_str())
            .query_async(&mut conn)
            .await
            .map(|_: i64| ())
            .expect("DEL");
        match value {
            RawValue::String(bytes) => idempotency_redis::redis::cmd("SET")
                .arg(key.as_str())
                .arg(bytes)
                .query_async::<()>(&mut conn)
                .await
                .expect("SET raw"),
            RawValue::Hash => idempotency_redis::redis::cmd("HSET")
                .arg(key.as_str())
                .arg("field")
                .arg("value")
                .query_async::<()>(&mut conn)
                .await
                .expect("HSET"),
        }
    }

    fn key_prefix(&self) -> &str {
        &self.prefix
    }
}

/// One Valkey server for every test of the binary (Valkey tests only).
pub fn shared_valkey() -> &'static RedisServer {
    static SERVER: OnceLock<RedisServer> = OnceLock::new();
    SERVER.get_or_init(|| RedisServer::start_valkey().expect("starting the shared valkey server"))
}

/// A harness on the shared Valkey server.
pub async fn valkey_harness() -> RedisHarness<idempotency_redis::redis::aio::ConnectionManager> {
    let store = RedisStore::connect(shared_valkey().url())
        .await
        .expect("connecting to the shared valkey server");
    RedisHarness::new(store)
}

/// A store on the shared server.
pub async fn single_store() -> RedisStore {
    RedisStore::connect(shared_server().url())
        .await
        .expect("connecting to the shared redis server")
}

/// A harness on the shared server (SET NX GET claims).
pub async fn single_harness() -> RedisHarness<idempotency_redis::redis::aio::ConnectionManager> {
    RedisHarness::new(single_store().await)
}

/// A harness on the shared server that claims with the pre-7.0 Lua script.
pub async fn script_claim_harness() -> RedisHarness<idempotency_redis::redis::aio::ConnectionManager>
{
    let store = RedisStore::builder()
        .claim_strategy(ClaimStrategy::Script)
        .connect(shared_server().url())
        .await
        .expect("connecting to the shared redis server");
    RedisHarness::new(store)
}

/// A cluster store on the shared 3-master cluster.
pub async fn cluster_store() -> RedisClusterStore {
    RedisStore::builder()
        .connect_cluster(shared_cluster().urls())
        .await
        .expect("connecting to the shared redis cluster")
}

/// A harness on the shared cluster.
pub async fn cluster_harness()
-> RedisHarness<idempotency_redis::redis::cluster_async::ClusterConnection> {
    RedisHarness::new(cluster_store().await)
}

/// A fresh in-progress record: a new lease token, the fingerprint of `"req"`, created now.
pub fn claim_record() -> idempotency_core::InProgress {
    idempotency_core::InProgress {
        token: idempotency_core::LeaseToken::generate(),
        fingerprint: idempotency_core::Fingerprint::of("req"),
        created_at_ms: idempotency_core::unix_millis_now(),
    }
}

/// A key no other test uses: `{prefix}:{name}:{random hex}`.
pub fn unique_key(prefix: &str, name: &str) -> StoreKey {
    StoreKey::from_raw(format!("{prefix}:{name}:{:x}", rand::random::<u64>()))
}

/// The completed record of `claim`, completed now with `outcome`.
pub fn completed(
    claim: &idempotency_core::InProgress,
    outcome: idempotency_core::StoredOutcome,
) -> idempotency_core::Completed {
    idempotency_core::Completed {
        token: claim.token,
        fingerprint: claim.fingerprint,
        created_at_ms: claim.created_at_ms,
        completed_at_ms: idempotency_core::unix_millis_now(),
        outcome,
    }
}

/// Write an in-progress record (a fresh token) under `key` by hand, with `PX px_ms`: a claim
/// whose owner is gone, for the wait tests. Returns the record written.
pub async fn put_in_progress(
    conn: &mut impl ConnectionLike,
    key: &StoreKey,
    px_ms: i64,
) -> idempotency_core::InProgress {
    use idempotency_core::{Fingerprint, InProgress, LeaseToken, Record, codec, unix_millis_now};
    let record = InProgress {
        token: LeaseToken::generate(),
        fingerprint: Fingerprint::of("a"),
        created_at_ms: unix_millis_now(),
    };
    let () = idempotency_redis::redis::cmd("SET")
        .arg(key.as_str())
        .arg(codec::encode(&Record::InProgress(record.clone())))
        .arg("PX")
        .arg(px_ms)
        .query_async(conn)
        .await
        .unwrap();
    record
}
