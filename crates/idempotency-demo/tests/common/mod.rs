//! Shared helpers: the demo served in-process on 127.0.0.1:0, on each backend; one Redis server
//! and one KV REST gateway per test binary.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used)]

use std::sync::OnceLock;
use std::time::Duration;

use idempotency::memory::MemoryStore;
use idempotency::{AnyStore, BackendKind, Idempotency, StoreSelection, store_from_lookup};
use idempotency_demo::{AppState, app, serve};
use idempotency_testkit::fixtures::{GatewayServer, RedisServer};

pub const GATEWAY_TOKEN: &str = "demo-test-gateway-token";
pub const ADMIN: &str = "admin-secret";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Memory,
    Redis,
    Rest,
}

pub fn shared_redis() -> &'static RedisServer {
    static SERVER: OnceLock<RedisServer> = OnceLock::new();
    SERVER.get_or_init(|| RedisServer::start().expect("starting the shared redis server"))
}

/// A KV REST gateway in front of the shared Redis (served from its own runtime thread, so it
/// outlives every test's runtime); returns its URL.
pub fn shared_gateway() -> &'static str {
    static GATEWAY: OnceLock<GatewayServer> = OnceLock::new();
    GATEWAY
        .get_or_init(|| {
            GatewayServer::start(shared_redis().url(), GATEWAY_TOKEN).expect("starting the gateway")
        })
        .url()
}

/// The store for `backend`, chosen the way the demo binary chooses it: through the facade's
/// environment selection (with a lookup instead of the process environment).
pub async fn store(backend: Backend) -> AnyStore {
    let vars: Vec<(&str, String)> = match backend {
        Backend::Memory => return AnyStore::from(MemoryStore::new()),
        Backend::Redis => vec![("REDIS_URL", shared_redis().url().to_owned())],
        Backend::Rest => vec![
            ("KV_REST_API_URL", shared_gateway().to_owned()),
            ("KV_REST_API_TOKEN", GATEWAY_TOKEN.to_owned()),
        ],
    };
    let store = store_from_lookup(StoreSelection::RequireDistributed, move |name| {
        vars.iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.clone())
    })
    .await
    .expect("opening the store");
    let expected = match backend {
        Backend::Memory => BackendKind::Memory,
        Backend::Redis => BackendKind::Redis,
        Backend::Rest => BackendKind::KvRest,
    };
    assert_eq!(store.kind(), expected);
    if backend == Backend::Rest {
        // The same store with the engine's budget (`STORE_TIMEOUT`) per operation: the
        // selection builds it with the REST store's default, 1 s, which is the bound that
        // counts (the engine's is the outer one). Every operation is a request to the
        // debug-built gateway and then a Redis command; with 256 requests in flight (the
        // storm) on a loaded 2-core CI machine one took longer than 1 s now and then (a 503,
        // "`try_claim` timed out after 1s": `storm_rest_via_gateway`, 3 runs in 13 under load).
        use idempotency::kv_rest::{KvRestConfig, KvRestStore};
        let config = KvRestConfig::new(shared_gateway(), GATEWAY_TOKEN)
            .expect("gateway URL")
            .operation_timeout(STORE_TIMEOUT);
        return AnyStore::from(KvRestStore::new(config).expect("KV REST store"));
    }
    store
}

/// The engine's budget per store operation (`store_timeout`), and the REST store's.
pub const STORE_TIMEOUT: Duration = Duration::from_secs(5);

/// An engine with a fresh key prefix; duplicates that arrive while the first attempt runs wait
/// for its replay (so a storm sees replays rather than 409s).
pub fn engine(store: AnyStore) -> Idempotency<AnyStore> {
    Idempotency::builder(store)
        .ignore_env()
        .prefix(idempotency_testkit::unique_prefix())
        .store_timeout(STORE_TIMEOUT)
        .wait_for_in_progress(Duration::from_secs(20), Duration::from_millis(15))
        .build()
        .expect("engine")
}

/// A demo server on 127.0.0.1:0 in the current runtime; stops when dropped.
pub struct Demo {
    pub url: String,
    pub state: AppState,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl Demo {
    pub async fn start(backend: Backend) -> Self {
        let state = AppState::new(engine(store(backend).await), Some(ADMIN.to_owned()));
        Self::serve(state.clone(), app(state)).await
    }

    /// The same routes without the idempotency layer.
    pub async fn start_unprotected() -> Self {
        let state = AppState::new(
            engine(AnyStore::from(MemoryStore::new())),
            Some(ADMIN.to_owned()),
        );
        Self::serve(state.clone(), idempotency_demo::unprotected_app(state)).await
    }

    /// The protected app over a state built by the test (slow work, an execution log).
    pub async fn start_with_state(state: AppState) -> Self {
        Self::serve(state.clone(), app(state)).await
    }

    async fn serve(state: AppState, router: axum::Router) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(serve(listener, router, async move {
            let _ = stopped.await;
        }));
        Self {
            url,
            state,
            _stop: stop,
        }
    }
}

/// One response as the tests compare them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub status: u16,
    pub replayed: bool,
    pub content_type: Option<String>,
    pub body: bytes::Bytes,
}

impl Answer {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
}

/// Send one request: `user` as the bearer (none when `None`), `key` as the Idempotency-Key.
pub async fn send(
    client: &reqwest::Client,
    method: reqwest::Method,
    url: &str,
    user: Option<&str>,
    key: Option<&str>,
    body: Option<&str>,
) -> Answer {
    let mut request = client.request(method, url);
    if let Some(user) = user {
        request = request.bearer_auth(user);
    }
    if let Some(key) = key {
        request = request.header("idempotency-key", key);
    }
    if let Some(body) = body {
        request = request
            .header("content-type", "application/json")
            .body(body.to_owned());
    }
    let response = request.send().await.expect("request");
    let status = response.status().as_u16();
    let replayed = response
        .headers()
        .get("idempotent-replayed")
        .is_some_and(|v| v == "true");
    let content_type = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned());
    let body = response.bytes().await.expect("body");
    Answer {
        status,
        replayed,
        content_type,
        body,
    }
}
