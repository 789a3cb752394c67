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

pub(crate) const TOKEN: &str = "test-rw-token";
pub(crate) const RO_TOKEN: &str = "test-ro-token";

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

    pub(crate) async fn start_with(adjust: impl FnOnce(GatewayConfig) -> GatewayConfig) -> Self {
        let redis = RedisServer::start_local().expect("redis-server fixture");
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
