//! The HTTP server: routing, limits, auth and the request forms.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::header::CONTENT_LENGTH;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Router, middleware};
use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use serde_json::Value as Json;
use tokio::net::TcpListener;

use crate::acl::AclError;
use crate::auth::{Access, Tokens, presented_token};
use crate::backend::{Backend, TransactionOutcome};
use crate::body::{parse_batch, parse_command};
use crate::command::{Command, command_from_path};
use crate::config::GatewayConfig;
use crate::error::{GatewayError, json_bytes_response, json_response};
use crate::listen::{ConnectionCounter, ServerLimits, serve_with_limits};
use crate::policy::{check_allowed, is_resendable};
use crate::resp::{Encoding, item, result_body};
use crate::retries::{Report, SetupRetries};
use crate::scripts::{ReplyFix, ScriptRegistry};

/// The unauthenticated health endpoint: `GET` or `HEAD`, 200 `{"result":"OK"}` when Redis
/// answers `PING`, else 503.
///
/// A command path's first segment is a Redis command name, and no Redis command contains `~`,
/// so this path can never shadow a path-form command.
pub const HEALTH_PATH: &str = "/~health";

/// Response header carrying a fresh read-your-writes token on every answer to an authenticated
/// request that was read in full (a command's result or error). Early answers (401, 405, 408,
/// 413, an unreadable body, a refused `Upstash-Response-Format`, the health route) carry none:
/// the token is a counter that grows with each answer, which a client that never authenticated
/// must not see.
pub const SYNC_TOKEN_HEADER: &str = "upstash-sync-token";

/// Why the gateway could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The Redis URL could not be parsed.
    #[error("invalid Redis URL")]
    InvalidRedisUrl(#[source] redis::RedisError),
    /// The HTTP server failed.
    #[error("HTTP server error")]
    Io(#[source] std::io::Error),
    /// A token is empty (or only white space): it would let anyone in.
    #[error("the {0} is empty: set a long random value, e.g. from `openssl rand -hex 32`")]
    EmptyToken(&'static str),
    /// The read-only token equals the read-write token.
    #[error("the read-only token equals the read-write token")]
    SameTokens,
    /// The Redis ACL users could not be set up, or an operator-prepared user may do more than
    /// it should (see SECURITY.md).
    #[error("Redis ACL users: {0}")]
    RedisUsers(String),
}

/// A configured gateway: the shared state behind [`router`]. Cheap to clone.
#[derive(Clone)]
pub struct Gateway {
    inner: Arc<Inner>,
}

struct Inner {
    backend: Backend,
    tokens: Tokens,
    scripts: ScriptRegistry,
    max_body_bytes: usize,
    max_pipeline: usize,
    limits: ServerLimits,
    connections: Arc<ConnectionCounter>,
    /// Bodies held in memory at once, in KiB: [`BODY_BUDGET_BODIES`] × `max_body_bytes`.
    body_budget: Arc<tokio::sync::Semaphore>,
    body_budget_kib: u32,
    sync_prefix: u64,
    sync_counter: AtomicU64,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("redis", &self.inner.backend.address())
            .field("max_body_bytes", &self.inner.max_body_bytes)
            .field("max_pipeline", &self.inner.max_pipeline)
            .finish_non_exhaustive()
    }
}

impl Gateway {
    /// Builds the gateway state. Does not connect: Redis may come up later (requests get 503
    /// until [`Gateway::serve`] has set up the Redis users).
    ///
    /// # Errors
    /// [`Error::InvalidRedisUrl`] when a Redis URL does not parse, [`Error::EmptyToken`] /
    /// [`Error::SameTokens`] for unusable tokens (see [`GatewayConfig::validate`]). Short tokens
    /// are logged as warnings.
    pub fn new(config: &GatewayConfig) -> Result<Self, Error> {
        for warning in config.validate()? {
            tracing::warn!("{warning}");
        }
        let backend = Backend::new(config).map_err(Error::InvalidRedisUrl)?;
        let budget_kib = u32::try_from(
            config
                .max_body_bytes
                .saturating_mul(BODY_BUDGET_BODIES)
                .div_ceil(1024)
                .max(1),
        )
        .unwrap_or(u32::MAX >> 3);
        let sync_prefix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.as_nanos() as u64);
        Ok(Self {
            inner: Arc::new(Inner {
                backend,
                tokens: Tokens::new(&config.token, config.read_only_token.as_ref()),
                scripts: ScriptRegistry::default(),
                max_body_bytes: config.max_body_bytes,
                max_pipeline: config.max_pipeline,
                limits: config.limits,
                connections: Arc::new(ConnectionCounter::default()),
                body_budget: Arc::new(tokio::sync::Semaphore::new(budget_kib as usize)),
                body_budget_kib: budget_kib,
                sync_prefix,
                sync_counter: AtomicU64::new(0),
            }),
        })
    }

    /// The router serving the protocol with this state.
    pub fn router(&self) -> Router {
        router(self.clone())
    }

    /// HTTP connections open now, and the most that were open at once (served by
    /// [`Gateway::serve`]).
    pub fn connections(&self) -> (usize, usize) {
        (self.inner.connections.open(), self.inner.connections.peak())
    }

    /// Serves the protocol on `listener` with the configured limits until `shutdown`
    /// completes, then finishes the requests in flight and returns.
    ///
    /// Meanwhile it sets up the Redis ACL users (retrying while Redis is unreachable or busy with
    /// another client's script; requests get 503 until then, and the wait is logged at `warn` at
    /// its first failure and then every 30 s, with the attempts and the time waited). When the users cannot be set up or are too permissive, the server
    /// stops and this returns [`Error::RedisUsers`].
    ///
    /// # Errors
    /// [`Error::RedisUsers`], [`Error::Io`].
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), Error> {
        if let Ok(address) = listener.local_addr() {
            tracing::info!(%address, redis = %self.inner.backend.address(), "kv-rest-gateway listening");
        }
        // One attempt before accepting, so a gateway whose Redis is up serves from its first
        // request; later attempts run in the background.
        match self.inner.backend.setup().await {
            Err(error) if !error.is_transient() => {
                tracing::error!(%error, "refusing to serve");
                return Err(Error::RedisUsers(error.to_string()));
            }
            _ => {}
        }
        let (fatal_tx, fatal_rx) = tokio::sync::oneshot::channel::<String>();
        let backend = self.inner.backend.clone();
        let setup = tokio::spawn(async move {
            let mut delay = std::time::Duration::from_millis(50);
            let mut retries = SetupRetries::new(tokio::time::Instant::now());
            let mut disabled = SetupRetries::new(tokio::time::Instant::now());
            loop {
                match backend.setup().await {
                    Ok(()) => {
                        let failed = retries.failed() + disabled.failed();
                        if failed > 0 {
                            tracing::info!(attempts = failed + 1, "Redis ACL setup done; serving");
                        }
                        return;
                    }
                    // A user someone disabled: reported on its own, not hidden behind an
                    // earlier "not ready" report.
                    Err(error @ AclError::Disabled { .. }) => {
                        if let Some(Report { failed, waited }) =
                            disabled.failure(tokio::time::Instant::now())
                        {
                            tracing::warn!(
                                %error,
                                failed_attempts = failed,
                                waited_s = waited.as_secs(),
                                "the Redis ACL setup waits for a user someone disabled: retried, \
                                 requests get 503 meanwhile"
                            );
                        }
                        tokio::time::sleep(delay).await;
                        delay = (delay * 2).min(std::time::Duration::from_secs(1));
                    }
                    Err(error) if error.is_transient() => {
                        match retries.failure(tokio::time::Instant::now()) {
                            Some(Report { failed, waited }) => tracing::warn!(
                                %error,
                                failed_attempts = failed,
                                waited_s = waited.as_secs(),
                                "Redis not ready: the ACL setup is retried, requests get 503 meanwhile"
                            ),
                            None => {
                                tracing::debug!(%error, "Redis not ready; retrying the ACL setup");
                            }
                        }
                        tokio::time::sleep(delay).await;
                        delay = (delay * 2).min(std::time::Duration::from_secs(1));
                    }
                    Err(error) => {
                        let _ = fatal_tx.send(error.to_string());
                        return;
                    }
                }
            }
        });
        let fatal = Arc::new(std::sync::Mutex::new(None::<String>));
        let fatal_seen = fatal.clone();
        let stop = async move {
            let mut shutdown = std::pin::pin!(shutdown);
            tokio::select! {
                () = &mut shutdown => return,
                message = fatal_rx => {
                    if let Ok(message) = message {
                        tracing::error!(error = %message, "refusing to serve");
                        *fatal_seen.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(message);
                        return;
                    }
                }
            }
            // The setup finished without a fatal error: wait for the real shutdown.
            shutdown.await;
        };
        let result = serve_with_limits(
            listener,
            router(self.clone()),
            self.inner.limits,
            self.inner.connections.clone(),
            stop,
        )
        .await;
        setup.abort();
        if let Some(message) = fatal
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
        {
            return Err(Error::RedisUsers(message));
        }
        result.map_err(Error::Io)
    }
}

/// The axum router serving the KV REST protocol (every path; see the crate docs).
///
/// axum's method routing answers a method an endpoint does not take with 405 and its `Allow`
/// header; our fallback only gives that answer the protocol's `{"error": …}` body.
pub fn router(gateway: Gateway) -> Router {
    Router::new()
        .route("/", post(json_command))
        .route("/pipeline", post(pipeline_batch))
        .route("/pipeline/", post(pipeline_batch))
        .route("/multi-exec", post(transaction_batch))
        .route("/multi-exec/", post(transaction_batch))
        // GET and HEAD check health; POST and PUT stay path-form commands as on any path.
        .route(
            HEALTH_PATH,
            get(health).post(path_command).put(path_command),
        )
        .route(
            "/{*command}",
            get(path_command).post(path_command).put(path_command),
        )
        .method_not_allowed_fallback(|| async { GatewayError::MethodNotAllowed })
        .layer(middleware::map_response_with_state(
            gateway.clone(),
            sync_token,
        ))
        .with_state(gateway)
}

/// Serves the protocol on `listener` until `shutdown` completes, then finishes the requests in
/// flight and returns.
///
/// # Errors
/// As [`Gateway::new`] and [`Gateway::serve`].
pub async fn serve(
    listener: TcpListener,
    config: GatewayConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    Gateway::new(&config)?.serve(listener, shutdown).await
}

/// Marks a response as the answer to an admitted request (see [`admit`]): only those get an
/// `upstash-sync-token`. A response extension, removed again by [`sync_token`].
#[derive(Clone, Copy)]
struct Authenticated;

/// Adds a fresh `upstash-sync-token` to the answers of admitted requests (errors included);
/// early answers carry none (see [`SYNC_TOKEN_HEADER`]).
async fn sync_token(State(gateway): State<Gateway>, mut response: Response) -> Response {
    if response
        .extensions_mut()
        .remove::<Authenticated>()
        .is_none()
    {
        return response;
    }
    let sequence = gateway.inner.sync_counter.fetch_add(1, Ordering::Relaxed);
    let token = format!("{:x}-{sequence:x}", gateway.inner.sync_prefix);
    if let Ok(value) = HeaderValue::from_str(&token) {
        response.headers_mut().insert(SYNC_TOKEN_HEADER, value);
    }
    response
}

/// The response of a handler's result; server-side failures are logged.
fn respond(result: Result<Response, GatewayError>) -> Response {
    result.unwrap_or_else(|error| {
        if matches!(error, GatewayError::Refused(_)) {
            // Reported by the backend, once per 30 s per user.
            tracing::debug!(%error, "request failed");
        } else if error.status().is_server_error() {
            tracing::warn!(%error, "request failed");
        }
        error.into_response()
    })
}

/// The response of an admitted request's result: as [`respond`], marked [`Authenticated`].
fn respond_admitted(result: Result<Response, GatewayError>) -> Response {
    let mut response = respond(result);
    response.extensions_mut().insert(Authenticated);
    response
}

/// `POST /` with `["SET","k","v"]`.
async fn json_command(State(gateway): State<Gateway>, request: Request) -> Response {
    let state = &gateway.inner;
    // An early answer (401, 408, 413, …) goes out unmarked: no sync token.
    let admitted = match admit(state, request).await {
        Ok(admitted) => admitted,
        Err(error) => return respond(Err(error)),
    };
    respond_admitted(
        async {
            let command = parse_command(&admitted.body)?;
            single(state, command, admitted.access, admitted.encoding).await
        }
        .await,
    )
}

/// `GET|HEAD|POST|PUT /set/k/v?EX=100`: the path form.
async fn path_command(State(gateway): State<Gateway>, request: Request) -> Response {
    let state = &gateway.inner;
    let path = request.uri().path().to_owned();
    let query = request.uri().query().map(str::to_owned);
    // An early answer (401, 408, 413, …) goes out unmarked: no sync token.
    let admitted = match admit(state, request).await {
        Ok(admitted) => admitted,
        Err(error) => return respond(Err(error)),
    };
    respond_admitted(
        async {
            let body = admitted.has_body.then_some(&admitted.body[..]);
            let command = command_from_path(&path, body, query.as_deref())?;
            single(state, command, admitted.access, admitted.encoding).await
        }
        .await,
    )
}

/// `POST /pipeline` with `[[…],[…]]`.
async fn pipeline_batch(State(gateway): State<Gateway>, request: Request) -> Response {
    let state = &gateway.inner;
    // An early answer (401, 408, 413, …) goes out unmarked: no sync token.
    let admitted = match admit(state, request).await {
        Ok(admitted) => admitted,
        Err(error) => return respond(Err(error)),
    };
    respond_admitted(
        async {
            let commands = parse_batch(&admitted.body, state.max_pipeline)?;
            pipeline(state, commands, admitted.access, admitted.encoding).await
        }
        .await,
    )
}

/// `POST /multi-exec` with `[[…],[…]]`.
async fn transaction_batch(State(gateway): State<Gateway>, request: Request) -> Response {
    let state = &gateway.inner;
    // An early answer (401, 408, 413, …) goes out unmarked: no sync token.
    let admitted = match admit(state, request).await {
        Ok(admitted) => admitted,
        Err(error) => return respond(Err(error)),
    };
    respond_admitted(
        async {
            let commands = parse_batch(&admitted.body, state.max_pipeline)?;
            transaction(state, commands, admitted.access, admitted.encoding).await
        }
        .await,
    )
}

/// `GET|HEAD /~health`: unauthenticated.
async fn health(State(gateway): State<Gateway>) -> Response {
    respond(match gateway.inner.backend.ping().await {
        Ok(_) => Ok(ok(&serde_json::json!({ "result": "OK" }))),
        Err(error) => Err(GatewayError::Unavailable(error.to_string())),
    })
}

/// A request that passed auth, with its reply encoding and its body (empty without one).
struct Admitted {
    access: Access,
    encoding: Encoding,
    has_body: bool,
    body: Bytes,
    /// Held until the response is built: bodies in memory stay within the budget.
    _budget: Option<tokio::sync::OwnedSemaphorePermit>,
}

/// What every command endpoint does first: the token, the encoding headers, then the body
/// (POST and PUT), within the memory budget and the body read timeout.
async fn admit(state: &Inner, request: Request) -> Result<Admitted, GatewayError> {
    let (parts, body) = request.into_parts();
    let access = state
        .tokens
        .check(presented_token(&parts.headers, parts.uri.query()).as_deref())
        .ok_or(GatewayError::Unauthorized)?;
    let encoding = encoding(&parts.headers)?;
    let has_body = matches!(parts.method, Method::POST | Method::PUT);
    let mut budget = None;
    let body = if has_body {
        let limit = state.limits.body_read_timeout;
        let read = async {
            budget = Some(reserve_body_memory(state, &parts.headers).await?);
            read_body(&parts.headers, body, state.max_body_bytes).await
        };
        tokio::time::timeout(limit, read)
            .await
            .map_err(|_| GatewayError::BodyTimeout(limit))??
    } else {
        Bytes::new()
    };
    Ok(Admitted {
        access,
        encoding,
        has_body,
        body,
        _budget: budget,
    })
}

/// `Upstash-Encoding` and `Upstash-Response-Format`.
fn encoding(headers: &HeaderMap) -> Result<Encoding, GatewayError> {
    if let Some(format) = headers.get("upstash-response-format") {
        let format = format.to_str().unwrap_or_default();
        if !format.eq_ignore_ascii_case("json") {
            let reason = if format.eq_ignore_ascii_case("resp2") {
                "is not supported by this gateway (use JSON)".to_owned()
            } else {
                "is unknown (expected json or resp2)".to_owned()
            };
            return Err(GatewayError::BadRequest(format!(
                "ERR Upstash-Response-Format '{format}' {reason}"
            )));
        }
    }
    let base64 = headers
        .get("upstash-encoding")
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.trim().eq_ignore_ascii_case("base64"));
    Ok(if base64 {
        Encoding::Base64
    } else {
        Encoding::Text
    })
}

/// How many maximum-size bodies the gateway holds in memory at once (64 MiB with the default
/// 4 MiB limit). Requests beyond wait for room (within the body read timeout) instead of
/// growing memory: 64 parallel 4 MiB bodies otherwise need 256 MiB for the bodies alone.
pub(crate) const BODY_BUDGET_BODIES: usize = 16;

/// Reserves memory for a request body from the budget: its declared `Content-Length` (capped at
/// the body limit), or the limit when it is not declared.
async fn reserve_body_memory(
    state: &Inner,
    headers: &HeaderMap,
) -> Result<tokio::sync::OwnedSemaphorePermit, GatewayError> {
    let declared = headers
        .get(CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    let bytes = declared.map_or(state.max_body_bytes as u64, |length| {
        length.min(state.max_body_bytes as u64)
    });
    let kib = u32::try_from(bytes.div_ceil(1024))
        .unwrap_or(u32::MAX)
        .clamp(1, state.body_budget_kib);
    state
        .body_budget
        .clone()
        .acquire_many_owned(kib)
        .await
        .map_err(|_| GatewayError::Internal("the body budget is closed".into()))
}

/// How much of an oversize body is still read (and discarded) so the client gets the 413.
///
/// A server that answers without reading the body closes a connection the client is still
/// writing to; the client then sees a broken pipe instead of the 413, and the official JS client
/// retries network errors (five times, re-sending the whole body). Past this cap the connection
/// is dropped after all.
const OVERSIZE_DRAIN_BYTES: usize = 64 * 1024 * 1024;

async fn read_body(headers: &HeaderMap, body: Body, limit: usize) -> Result<Bytes, GatewayError> {
    let declared = headers
        .get(CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    let mut oversize = declared.is_some_and(|length| length > limit as u64);
    let mut collected = BytesMut::new();
    let mut seen = 0_usize;
    let mut body = body;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|error| {
            GatewayError::BadRequest(format!("ERR failed to read the request body: {error}"))
        })?;
        let Ok(data) = frame.into_data() else {
            continue; // trailers
        };
        seen = seen.saturating_add(data.len());
        if seen > limit {
            oversize = true;
        }
        if oversize {
            if seen > limit.saturating_add(OVERSIZE_DRAIN_BYTES) {
                break;
            }
        } else {
            collected.extend_from_slice(&data);
        }
    }
    if oversize {
        return Err(GatewayError::PayloadTooLarge(limit));
    }
    Ok(collected.freeze())
}

fn ok(body: &Json) -> Response {
    json_response(StatusCode::OK, body)
}

async fn single(
    state: &Inner,
    mut command: Command,
    access: Access,
    encoding: Encoding,
) -> Result<Response, GatewayError> {
    allowed(&command, access)?;
    let fix = state.scripts.translate(&mut command);
    tracing::debug!(command = %command.name(), "command");
    let value = fix.apply(
        state
            .backend
            .command(
                access,
                &command.to_redis(),
                command.is_script(),
                is_resendable(&command),
            )
            .await?,
    );
    let body = result_body(&value, encoding)
        .map_err(|error| GatewayError::Internal(format!("writing the reply: {error}")))?;
    Ok(json_bytes_response(StatusCode::OK, body))
}

async fn pipeline(
    state: &Inner,
    commands: Vec<Command>,
    access: Access,
    encoding: Encoding,
) -> Result<Response, GatewayError> {
    tracing::debug!(commands = commands.len(), "pipeline");
    // Refused commands answer inline and are not sent; the others run in order.
    let mut slots: Vec<Result<ReplyFix, String>> = Vec::with_capacity(commands.len());
    let mut to_send = Vec::with_capacity(commands.len());
    let mut script = false;
    let mut resendable = true;
    for mut command in commands {
        match allowed(&command, access) {
            Ok(()) => {
                script |= command.is_script();
                resendable &= is_resendable(&command);
                slots.push(Ok(state.scripts.translate(&mut command)));
                to_send.push(command.to_redis());
            }
            Err(error) => slots.push(Err(error.to_string())),
        }
    }
    let mut replies = state
        .backend
        .pipeline(access, to_send, script, resendable)
        .await?
        .into_iter();
    let mut items = Vec::with_capacity(slots.len());
    for slot in slots {
        items.push(match slot {
            Err(message) => serde_json::json!({ "error": message }),
            Ok(fix) => match replies.next() {
                Some(value) => item(&fix.apply(value), encoding),
                None => {
                    return Err(GatewayError::Internal("missing pipeline reply".into()));
                }
            },
        });
    }
    Ok(ok(&Json::Array(items)))
}

async fn transaction(
    state: &Inner,
    commands: Vec<Command>,
    access: Access,
    encoding: Encoding,
) -> Result<Response, GatewayError> {
    tracing::debug!(commands = commands.len(), "transaction");
    // One refused command refuses the whole transaction: it must run entirely or not at all.
    let mut fixes = Vec::with_capacity(commands.len());
    let mut to_send = Vec::with_capacity(commands.len());
    let mut script = false;
    for mut command in commands {
        allowed(&command, access)?;
        script |= command.is_script();
        fixes.push(state.scripts.translate(&mut command));
        to_send.push(command.to_redis());
    }
    match state.backend.transaction(access, to_send, script).await? {
        TransactionOutcome::Refused(message) => Err(GatewayError::BadRequest(message)),
        TransactionOutcome::Executed(values) => {
            let items = values
                .into_iter()
                .zip(&fixes)
                .map(|(value, fix)| item(&fix.apply(value), encoding))
                .collect();
            Ok(ok(&Json::Array(items)))
        }
    }
}

/// The name filter, counted in `kv_rest_gateway_refused_total{reason}`.
fn allowed(command: &Command, access: Access) -> Result<(), GatewayError> {
    check_allowed(command, access).map_err(|refusal| {
        metrics::counter!("kv_rest_gateway_refused_total", "reason" => refusal.label())
            .increment(1);
        tracing::debug!(
            reason = refusal.label(),
            "command refused by the name filter"
        );
        GatewayError::BadRequest(refusal.message().to_owned())
    })
}
