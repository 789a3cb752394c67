//! A gateway started in-process on 127.0.0.1:0 in front of a fresh local `redis-server`
//! (the testkit's `RedisServer` fixture), and a small HTTP client for it.

use std::time::Duration;

use idempotency_testkit::fixtures::RedisServer;
use kv_rest_gateway::{GatewayConfig, serve};
use reqwest::Method;
use reqwest::header::HeaderMap;
use serde_json::Value as Json;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub(crate) const TOKEN: &str = "test-rw-token-0123456789abcdef0123456789abcdef";
pub(crate) const RO_TOKEN: &str = "test-ro-token-0123456789abcdef0123456789abcdef";

pub(crate) struct TestGateway {
    pub(crate) redis: RedisServer,
    pub(crate) base: String,
    client: reqwest::Client,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), kv_rest_gateway::Error>>>,
}

/// One HTTP response: status, headers and the body (parsed as JSON when it is JSON).
#[derive(Debug)]
pub(crate) struct Reply {
    pub(crate) status: u16,
    pub(crate) headers: HeaderMap,
    pub(crate) text: String,
    pub(crate) json: Json,
}

impl Reply {
    /// The `result` of a `{"result": …}` body; panics (with the body) if it is something else.
    #[track_caller]
    pub(crate) fn result(&self) -> &Json {
        assert_eq!(self.status, 200, "expected 200, got {self:?}");
        self.json
            .as_object()
            .and_then(|o| o.get("result"))
            .unwrap_or_else(|| panic!("no result key in {self:?}"))
    }

    /// The `error` text of an `{"error": …}` body, asserting the status.
    #[track_caller]
    pub(crate) fn error(&self, status: u16) -> &str {
        assert_eq!(self.status, status, "unexpected status: {self:?}");
        self.json["error"]
            .as_str()
            .unwrap_or_else(|| panic!("no error string in {self:?}"))
    }
}

impl TestGateway {
    pub(crate) async fn start() -> Self {
        Self::start_with(|config| config).await
    }

    /// Starts a gateway and waits until it serves (its Redis users are set up).
    pub(crate) async fn start_with(adjust: impl FnOnce(GatewayConfig) -> GatewayConfig) -> Self {
        let gateway = Self::start_unready_with(adjust).await;
        gateway.wait_ready().await;
        gateway
    }

    /// Waits until the health route answers 200; panics with the server's error if it stopped.
    pub(crate) async fn wait_ready(&self) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            if self.task.as_ref().is_some_and(JoinHandle::is_finished) {
                panic!("the gateway stopped while starting (see its error in the test output)");
            }
            if let Ok(response) = self
                .client
                .get(format!("{}/~health", self.base))
                .send()
                .await
                && response.status() == 200
            {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the gateway is not ready after 10 s"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Whether the server task has stopped (a refused start ends it).
    pub(crate) fn stopped(&self) -> bool {
        self.task.as_ref().is_none_or(JoinHandle::is_finished)
    }

    /// The server task's result once it stopped by itself (a refused start).
    pub(crate) async fn stopped_error(mut self) -> kv_rest_gateway::Error {
        let task = self.task.take().expect("server task");
        match tokio::time::timeout(Duration::from_secs(10), task).await {
            Ok(Ok(Err(error))) => error,
            other => panic!("expected the gateway to refuse to serve, got {other:?}"),
        }
    }

    /// Starts a gateway without waiting for it to be ready.
    pub(crate) async fn start_unready_with(
        adjust: impl FnOnce(GatewayConfig) -> GatewayConfig,
    ) -> Self {
        let redis = RedisServer::start_local().expect("redis-server fixture");
        Self::start_on_unready(redis, adjust).await
    }

    /// Starts a gateway in front of `redis` and waits until it serves.
    pub(crate) async fn start_on(
        redis: RedisServer,
        adjust: impl FnOnce(GatewayConfig) -> GatewayConfig,
    ) -> Self {
        let gateway = Self::start_on_unready(redis, adjust).await;
        gateway.wait_ready().await;
        gateway
    }

    /// Starts a gateway in front of `redis` without waiting.
    pub(crate) async fn start_on_unready(
        redis: RedisServer,
        adjust: impl FnOnce(GatewayConfig) -> GatewayConfig,
    ) -> Self {
        let config = adjust(
            GatewayConfig::new(redis.url(), TOKEN)
                .with_read_only_token(RO_TOKEN)
                .with_timeouts(Duration::from_secs(1), Duration::from_secs(5)),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(serve(listener, config, async move {
            let _ = stopped.await;
        }));
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(20))
            .build()
            .unwrap();
        Self {
            redis,
            base,
            client,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Any request; `token` goes into `Authorization: Bearer` when given.
    pub(crate) async fn request(
        &self,
        method: Method,
        path_and_query: &str,
        token: Option<&str>,
        headers: &[(&str, &str)],
        body: Option<Vec<u8>>,
    ) -> Reply {
        let mut request = self
            .client
            .request(method, format!("{}{path_and_query}", self.base));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        if let Some(body) = body {
            request = request.body(body);
        }
        let response = request.send().await.expect("HTTP request");
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let text = response.text().await.expect("response body");
        let json = serde_json::from_str(&text).unwrap_or(Json::Null);
        Reply {
            status,
            headers,
            text,
            json,
        }
    }

    /// `POST path` with a JSON body and the read-write token, plus extra headers.
    pub(crate) async fn post(&self, path: &str, body: &Json, headers: &[(&str, &str)]) -> Reply {
        let mut all = vec![("content-type", "application/json")];
        all.extend_from_slice(headers);
        self.request(
            Method::POST,
            path,
            Some(TOKEN),
            &all,
            Some(serde_json::to_vec(body).unwrap()),
        )
        .await
    }

    /// One command in the JSON form with the read-write token.
    pub(crate) async fn cmd(&self, command: Json) -> Reply {
        self.post("/", &command, &[]).await
    }

    /// `redis-cli` against the Redis behind the gateway as its default (administrator) user:
    /// stdout and stderr.
    pub(crate) fn redis_cli(&self, args: &[&str]) -> String {
        redis_cli(self.redis.port(), args)
    }

    /// `total_connections_received` from the Redis server's `INFO stats`.
    #[allow(dead_code)] // Not every test binary that includes this module counts connections.
    pub(crate) fn connections_received(&self) -> u64 {
        self.redis_cli(&["INFO", "stats"])
            .lines()
            .find_map(|line| line.strip_prefix("total_connections_received:"))
            .and_then(|n| n.trim().parse().ok())
            .expect("total_connections_received in INFO stats")
    }

    /// Stops the HTTP server and waits for it.
    pub(crate) async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.unwrap().unwrap();
        }
    }
}

impl Drop for TestGateway {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// Restarts Redis (SIGKILL, then the same port, empty, without the gateway's ACL users) and
/// waits until it accepts connections and answers `PING` — without sending anything through
/// the gateway.
pub(crate) fn restart_and_wait(gw: &mut TestGateway) {
    gw.redis.restart().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !redis_cli(gw.redis.port(), &["PING"]).contains("PONG") {
        assert!(
            std::time::Instant::now() < deadline,
            "redis-server did not come back"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// `redis-cli -p port args…` as the default user: stdout and stderr.
pub(crate) fn redis_cli(port: u16, args: &[&str]) -> String {
    let output = std::process::Command::new("redis-cli")
        .arg("-p")
        .arg(port.to_string())
        .args(args)
        .output()
        .expect("redis-cli (installed with redis-server)");
    String::from_utf8_lossy(&output.stdout).into_owned() + &String::from_utf8_lossy(&output.stderr)
}
