//! Shared helpers: one Redis server and one in-process KV REST gateway per test binary, and the
//! behaviour-suite harness for `KvRestStore`.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use idempotency_core::{IdempotencyStore, StoreKey, async_trait};
use idempotency_kv_rest::{KvRestConfig, KvRestStore};
use idempotency_testkit::fixtures::RedisServer;
use idempotency_testkit::{RawValue, StoreHarness, TimeControl, unique_prefix};
use kv_rest_gateway::GatewayConfig;

pub const TOKEN: &str = "test-token-0123456789";

/// A gateway on 127.0.0.1 in front of a Redis server, serving from its own runtime thread so it
/// outlives the runtime of any single test.
pub struct GatewayServer {
    pub url: String,
    pub redis: &'static RedisServer,
}

pub fn shared_redis() -> &'static RedisServer {
    static SERVER: OnceLock<RedisServer> = OnceLock::new();
    SERVER.get_or_init(|| RedisServer::start().expect("starting the shared redis server"))
}

/// Start a gateway for `redis_url` on a free port; it serves until the process exits.
pub fn start_gateway(redis_url: &str) -> String {
    let config = GatewayConfig::new(redis_url, TOKEN);
    let (tx, rx) = std::sync::mpsc::channel::<SocketAddr>();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("gateway runtime");
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            tx.send(listener.local_addr().expect("addr"))
                .expect("send addr");
            kv_rest_gateway::serve(listener, config, std::future::pending())
                .await
                .expect("gateway");
        });
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("gateway started");
    format!("http://{addr}")
}

pub fn shared_gateway() -> &'static GatewayServer {
    static GATEWAY: OnceLock<GatewayServer> = OnceLock::new();
    GATEWAY.get_or_init(|| {
        let redis = shared_redis();
        GatewayServer {
            url: start_gateway(redis.url()),
            redis,
        }
    })
}

pub fn rest_store(url: &str) -> KvRestStore {
    KvRestStore::new(
        KvRestConfig::new(url, TOKEN)
            .unwrap()
            .timeout(Duration::from_secs(2)),
    )
    .unwrap()
}

pub struct RestHarness {
    pub store: Arc<KvRestStore>,
    pub gateway_url: String,
    pub prefix: String,
}

pub async fn rest_harness() -> RestHarness {
    let gateway = shared_gateway();
    RestHarness {
        store: Arc::new(rest_store(&gateway.url)),
        gateway_url: gateway.url.clone(),
        prefix: unique_prefix(),
    }
}

/// Send one raw command through the gateway (JSON form).
pub async fn raw_command(gateway_url: &str, command: serde_json::Value) -> serde_json::Value {
    reqwest::Client::new()
        .post(gateway_url)
        .bearer_auth(TOKEN)
        .json(&command)
        .send()
        .await
        .expect("raw command")
        .json()
        .await
        .expect("json reply")
}

#[async_trait]
impl StoreHarness for RestHarness {
    fn store(&self) -> Arc<dyn IdempotencyStore> {
        self.store.clone()
    }
    fn time_control(&self) -> TimeControl {
        TimeControl::Real
    }
    async fn advance(&self, by: Duration) {
        tokio::time::sleep(by).await;
    }
    fn short_lease(&self) -> Duration {
        Duration::from_millis(300)
    }
    async fn put_raw(&self, key: &StoreKey, value: RawValue) -> bool {
        raw_command(&self.gateway_url, serde_json::json!(["DEL", key.as_str()])).await;
        let command = match value {
            RawValue::String(bytes) => {
                serde_json::json!([
                    "SET",
                    key.as_str(),
                    String::from_utf8(bytes).expect("utf-8 raw value")
                ])
            }
            RawValue::Hash => serde_json::json!(["HSET", key.as_str(), "field", "value"]),
        };
        let reply = raw_command(&self.gateway_url, command).await;
        assert!(reply.get("result").is_some(), "raw write failed: {reply}");
        true
    }
    fn key_prefix(&self) -> &str {
        &self.prefix
    }
}
