//! Shared helpers: one Redis server and one in-process KV REST gateway per test binary, and the
//! behaviour-suite harness for `KvRestStore`.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used)]

use idempotency_testkit::async_trait;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use idempotency_core::{DynIdempotencyStore, StoreKey};
use idempotency_kv_rest::{KvRestConfig, KvRestStore};
use idempotency_testkit::fixtures::{GatewayServer, RedisServer};
use idempotency_testkit::{RawValue, StoreHarness, unique_prefix};

pub mod raw;

pub const TOKEN: &str = "test-token-0123456789";

/// One Redis server per test binary.
pub fn shared_redis() -> &'static RedisServer {
    static SERVER: OnceLock<RedisServer> = OnceLock::new();
    SERVER.get_or_init(|| RedisServer::start().expect("starting the shared redis server"))
}

/// One gateway in front of [`shared_redis`] per test binary.
pub fn shared_gateway() -> &'static GatewayServer {
    static GATEWAY: OnceLock<GatewayServer> = OnceLock::new();
    GATEWAY.get_or_init(|| {
        GatewayServer::start(shared_redis().url(), TOKEN).expect("starting the gateway")
    })
}

pub fn rest_store(url: &str) -> KvRestStore {
    KvRestStore::new(
        KvRestConfig::new(url, TOKEN)
            .unwrap()
            .operation_timeout(Duration::from_secs(2)),
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
        store: Arc::new(rest_store(gateway.url())),
        gateway_url: gateway.url().to_owned(),
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
    fn store(&self) -> Arc<dyn DynIdempotencyStore> {
        self.store.clone()
    }
    async fn put_raw(&self, key: &StoreKey, value: RawValue) {
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
    }
    fn key_prefix(&self) -> &str {
        &self.prefix
    }
}
