//! The HTTP rows: an axum app (a trivial `POST /orders` handler, with or without the
//! `Idempotency-Key` layer) served on 127.0.0.1 from its own runtime, driven over real loopback
//! HTTP/1.1 by hyper clients, one keep-alive connection per task.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::post;
use axum::serve::ListenerExt as _;
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use idempotency_core::{Idempotency, IdempotencyStore};
use idempotency_http::IdempotencyLayer;
use idempotency_redis::RedisStore;
use tokio::sync::Notify;

use crate::load::Worker;
use crate::scenario::{Scenario, unbounded_memory};
use crate::servers::Background;

/// The request body every client sends.
const BODY: &[u8] = br#"{"sku":"widget","qty":1}"#;
/// A request with this header parks in the handler until [`HttpServer::unhold`]: it keeps its
/// key in progress for the `conflict` scenario.
const HOLD_HEADER: &str = "x-bench-hold";

/// Which app to serve.
#[derive(Debug, Clone)]
pub(crate) enum App {
    /// The handler alone: the baseline.
    Bare,
    /// The layer on the memory store.
    Memory,
    /// The layer on a Redis server at this URL.
    Redis(String),
}

/// A running app.
pub(crate) struct HttpServer {
    background: Background,
    state: AppState,
}

#[derive(Clone, Default)]
struct AppState {
    /// Wakes the held request.
    hold: Arc<Notify>,
    /// Signalled by a held request once inside the handler (so its claim is in place).
    entered: Arc<Notify>,
}

async fn create_order(
    State(state): State<AppState>,
    headers: HeaderMap,
    _body: Bytes,
) -> impl IntoResponse {
    if headers.contains_key(HOLD_HEADER) {
        state.entered.notify_one();
        // Bounded, so a lost wake-up cannot stall shutdown for long.
        let _ = tokio::time::timeout(Duration::from_secs(30), state.hold.notified()).await;
    }
    (
        StatusCode::CREATED,
        [(header::CONTENT_TYPE, "application/json")],
        r#"{"id":12345,"status":"created"}"#,
    )
}

fn router(state: AppState) -> Router {
    Router::new()
        .route("/orders", post(create_order))
        .with_state(state)
}

fn with_layer<S: IdempotencyStore + 'static>(router: Router, store: S) -> Result<Router> {
    let engine = Idempotency::builder(store).ignore_env().build()?;
    Ok(router.layer(IdempotencyLayer::builder(engine).global_scope().build()))
}

impl HttpServer {
    /// Serve `app` on 127.0.0.1 (a free port) from a runtime of its own, as a separate server
    /// process would.
    pub(crate) fn start(app: App) -> Result<Self> {
        let state = AppState::default();
        let app_state = state.clone();
        let background = Background::spawn("http", move |listener, stop| async move {
            let plain = router(app_state);
            let router = match app {
                App::Bare => plain,
                App::Memory => with_layer(plain, unbounded_memory())?,
                App::Redis(url) => with_layer(plain, RedisStore::connect(&url).await?)?,
            };
            let listener = listener.tap_io(|tcp| {
                let _ = tcp.set_nodelay(true);
            });
            axum::serve(listener, router)
                .with_graceful_shutdown(async move {
                    let _ = stop.await;
                })
                .await
                .context("http server")
        })?;
        Ok(Self { background, state })
    }

    pub(crate) fn addr(&self) -> SocketAddr {
        self.background.addr
    }

    /// Let the held request finish.
    pub(crate) fn unhold(&self) {
        self.state.hold.notify_one();
    }

    pub(crate) fn stop(self) -> Result<()> {
        self.background.stop()
    }
}

/// A keep-alive HTTP/1.1 connection to `addr`.
pub(crate) async fn connect(addr: SocketAddr) -> Result<SendRequest<Full<Bytes>>> {
    let stream = tokio::net::TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(sender)
}

/// One request with `key`; the answer's status (the body is read to keep the connection).
async fn post_order(
    sender: &mut SendRequest<Full<Bytes>>,
    key: &str,
    hold: bool,
) -> Result<StatusCode> {
    let mut request = http::Request::post("/orders")
        .header(header::HOST, "127.0.0.1")
        .header(header::CONTENT_TYPE, "application/json")
        .header("idempotency-key", key);
    if hold {
        request = request.header(HOLD_HEADER, "1");
    }
    let request = request.body(Full::new(Bytes::from_static(BODY)))?;
    sender.ready().await?;
    let response = sender.send_request(request).await?;
    let status = response.status();
    response.into_body().collect().await?;
    Ok(status)
}

/// One client task.
pub(crate) struct HttpWorker {
    sender: SendRequest<Full<Bytes>>,
    scenario: Scenario,
    /// Whether the app has the layer (the baseline answers 201 to everything).
    layered: bool,
    prefix: String,
    n: u64,
    fixed: String,
}

impl HttpWorker {
    pub(crate) async fn new(
        addr: SocketAddr,
        scenario: Scenario,
        layered: bool,
        prefix: String,
        fixed: String,
    ) -> Result<Self> {
        Ok(Self {
            sender: connect(addr).await?,
            scenario,
            layered,
            prefix,
            n: 0,
            fixed,
        })
    }
}

impl Worker for HttpWorker {
    async fn op(&mut self) -> Result<()> {
        let status = match self.scenario {
            Scenario::Fresh => {
                let key = format!("{}{}", self.prefix, self.n);
                self.n += 1;
                post_order(&mut self.sender, &key, false).await?
            }
            Scenario::Replay | Scenario::Conflict => {
                post_order(&mut self.sender, &self.fixed, false).await?
            }
        };
        let expected = match (self.layered, self.scenario) {
            (true, Scenario::Conflict) => StatusCode::CONFLICT,
            _ => StatusCode::CREATED,
        };
        if status != expected {
            bail!("expected {expected}, got {status}");
        }
        Ok(())
    }
}

/// A request parked in the handler, holding its key in progress; finish with [`Held::finish`].
pub(crate) struct Held {
    request: tokio::task::JoinHandle<Result<StatusCode>>,
}

/// Put `key` in the state the scenario needs on a layered app.
pub(crate) async fn prepare(
    server: &HttpServer,
    scenario: Scenario,
    key: &str,
) -> Result<Option<Held>> {
    match scenario {
        Scenario::Fresh => Ok(None),
        Scenario::Replay => {
            let mut sender = connect(server.addr()).await?;
            let status = post_order(&mut sender, key, false).await?;
            if status != StatusCode::CREATED {
                bail!("preparing a replay: {status}");
            }
            Ok(None)
        }
        Scenario::Conflict => {
            let mut holder = connect(server.addr()).await?;
            let owned = key.to_owned();
            let request = tokio::spawn(async move { post_order(&mut holder, &owned, true).await });
            // Inside the handler means past the layer's claim.
            tokio::time::timeout(Duration::from_secs(10), server.state.entered.notified())
                .await
                .context("the held request never reached the handler")?;
            Ok(Some(Held { request }))
        }
    }
}

impl Held {
    /// Release the parked request and wait for its answer.
    pub(crate) async fn finish(self, server: &HttpServer) -> Result<()> {
        server.unhold();
        let status = tokio::time::timeout(Duration::from_secs(10), self.request)
            .await
            .context("the held request did not finish")???;
        if status != StatusCode::CREATED {
            bail!("the held request answered {status}");
        }
        Ok(())
    }
}
