//! The middleware service: the DESIGN §5 table, request by request.
//!
//! [`Service::call`] is a pure decision step ([`crate::decide`]: pass through, answer at once,
//! or protect) followed by one async path for protected requests ([`protect`]): read the body,
//! fingerprint, begin, then run the handler and its recording ([`crate::record`]) in this
//! request's future, detached into a task of its own only if the request goes away first.

use std::future::Future;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Buf as _, Bytes, BytesMut};
use http::request::Parts;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, header};
use http_body::Body;
use http_body_util::BodyExt;
use idempotency_core::{
    Begin, Idempotency, IdempotencyError, IdempotencyKey, IdempotencyStore, Scope, StoredOutcome,
};
use tower_service::Service;
use tracing::Instrument as _;

use crate::body::{BoxError, ResponseBody};
use crate::decide::{Decision, decide};
use crate::encoding;
use crate::fingerprint::fingerprint;
use crate::problem::Problem;
use crate::record::{self, Failure, HeadReceiver, Recording, Shared};
use crate::scope::ScopeExtractor;
use crate::settings::Settings;
use crate::stored::{self, StoredResponse};
use crate::transactional::TransactionalClaim;

/// Metric: replays refused because the retry does not accept the stored `Content-Encoding`.
const ENCODING_REFUSED: &str = "idempotency_http_replay_encoding_refused_total";

/// Header set on every replayed response.
pub const REPLAYED_HEADER: &str = "idempotent-replayed";
/// Header set on a replay whose original body was too large to store.
pub const BODY_OMITTED_HEADER: &str = "idempotent-body-omitted";

/// What every service of one layer shares, behind one `Arc`: the engine, the scope extractor and
/// the settings. A service is cloned per request (axum clones a route's service for each call)
/// and a protected request keeps its own handle: one reference count to move instead of one per
/// part (issue 15: each is an atomic read-modify-write on a line both worker threads write).
/// Aligned to 128 bytes (as `crossbeam_utils::CachePadded`), so that in its `Arc` the state
/// starts on a cache line of its own: the reference count, written by every request on every
/// thread, then shares no line with the settings and the engine handle every request reads.
#[derive(Debug)]
#[repr(align(128))]
pub(crate) struct LayerState<S, E> {
    pub(crate) engine: Idempotency<S>,
    pub(crate) scope: E,
    pub(crate) settings: Settings,
}

impl<S, E> AsRef<Settings> for LayerState<S, E> {
    fn as_ref(&self) -> &Settings {
        &self.settings
    }
}

/// The service built by [`crate::IdempotencyLayer`].
#[derive(Debug)]
pub struct IdempotencyService<Svc, S, E> {
    inner: Svc,
    state: Arc<LayerState<S, E>>,
}

impl<Svc: Clone, S, E> Clone for IdempotencyService<Svc, S, E> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            state: Arc::clone(&self.state),
        }
    }
}

impl<Svc, S, E> IdempotencyService<Svc, S, E> {
    pub(crate) fn new(inner: Svc, state: Arc<LayerState<S, E>>) -> Self {
        Self { inner, state }
    }

    /// The wrapped service.
    pub fn get_ref(&self) -> &Svc {
        &self.inner
    }

    /// Unwrap the inner service.
    pub fn into_inner(self) -> Svc {
        self.inner
    }
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

impl<Svc, S, E, ReqB, ResB> Service<Request<ReqB>> for IdempotencyService<Svc, S, E>
where
    Svc: Service<Request<ReqB>, Response = Response<ResB>> + Clone + Send + 'static,
    Svc::Future: Send + 'static,
    Svc::Error: Send + 'static,
    ReqB: Body + From<Bytes> + Send + 'static,
    ReqB::Data: Send,
    ReqB::Error: Into<BoxError>,
    ResB: Body<Data = Bytes> + Send + 'static,
    ResB::Error: Into<BoxError> + Send,
    S: IdempotencyStore + 'static,
    E: ScopeExtractor,
{
    type Response = Response<ResponseBody<ResB>>;
    type Error = Svc::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqB>) -> Self::Future {
        // The clone is the one that was not driven to readiness: keep the ready one.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let (parts, body) = request.into_parts();
        let state = &self.state;
        match decide(&parts, &state.settings, &state.scope) {
            Decision::PassThrough => {
                let request = Request::from_parts(parts, body);
                Box::pin(async move { Ok(inner.call(request).await?.map(ResponseBody::inner)) })
            }
            Decision::Answer(answer) => Box::pin(async move { Ok(problem(answer)) }),
            Decision::Protect { key, scope } => {
                let protected = Protected {
                    state: Arc::clone(state),
                    key,
                    scope,
                };
                if !idempotency_core::debug_spans_can_be_seen() {
                    // Building a span nobody can see is not free (with tracing's `log` feature a
                    // disabled span still asks `log` when it is built, recorded and dropped).
                    return Box::pin(protect(protected, inner, parts, body));
                }
                let span = tracing::debug_span!("idempotency.http", method = %parts.method, path = parts.uri.path(), key = protected.key.as_str());
                if span.is_disabled() {
                    // No subscriber wants it: skip entering and leaving a disabled span on every
                    // poll (with tracing's `log` feature each of those still asks `log`).
                    Box::pin(protect(protected, inner, parts, body))
                } else {
                    Box::pin(protect(protected, inner, parts, body).instrument(span))
                }
            }
        }
    }
}

struct Protected<S, E> {
    state: Arc<LayerState<S, E>>,
    key: IdempotencyKey,
    scope: Scope,
}

/// The one async path: body, fingerprint, claim, then the handler and its recording (detached
/// if this future is dropped before they end).
async fn protect<Svc, S, E, ReqB, ResB>(
    protected: Protected<S, E>,
    mut inner: Svc,
    parts: Parts,
    body: ReqB,
) -> Result<Response<ResponseBody<ResB>>, Svc::Error>
where
    Svc: Service<Request<ReqB>, Response = Response<ResB>> + Send + 'static,
    Svc::Future: Send + 'static,
    Svc::Error: Send + 'static,
    ReqB: Body + From<Bytes> + Send + 'static,
    ReqB::Error: Into<BoxError>,
    ResB: Body<Data = Bytes> + Send + 'static,
    ResB::Error: Into<BoxError> + Send,
    S: IdempotencyStore + 'static,
    E: ScopeExtractor,
{
    let Protected { state, key, scope } = protected;
    let settings = &state.settings;
    let engine = &state.engine;
    let body = match read_body(body, &parts.headers, settings).await {
        Ok(body) => body,
        Err(answer) => return Ok(problem(answer)),
    };
    let fingerprint = fingerprint(&parts, &body, settings);
    // Boxed: the engine's claim (~1 KB of future state) would otherwise sit inline in this
    // future, which `call` boxes per request; two boxes under glibc's per-thread cache limit
    // (1032 bytes) are reused request after request, one box over it goes through the shared
    // bins, which a memory store growing by thousands of records a second fragments (issue 15:
    // `_int_malloc`, `malloc_consolidate` and page faults in the fresh path's profile).
    let guard = match Box::pin(engine.begin(&scope, &key, fingerprint)).await {
        Ok(Begin::Run(guard)) => guard,
        Ok(Begin::Replay(outcome)) => return Ok(replay(outcome, &parts.headers)),
        Err(error) => return Ok(problem(Problem::from_engine(&error))),
    };
    // From here to the spawn there is no await: a request dropped before it never reached the
    // handler, and its guard (dropped with it) releases the claim at once.
    // Asked of the runtime itself: a tokio task id alone does not mean a runtime is current (a
    // `LocalSet` driven by another executor runs tasks outside any runtime), and without one a
    // recording left unfinished could not be detached (see `record::Detachable`).
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        Box::pin(record::release(guard)).await;
        return Ok(problem(Problem::no_runtime()));
    };
    // One allocation for the claim slot, the marker's state and the head's hand-off.
    let shared = Shared::<S, ResB, Svc::Error>::new(guard);
    let mut request = Request::from_parts(parts, ReqB::from(body));
    request.extensions_mut().insert(shared.marker());
    request.extensions_mut().insert(TransactionalClaim::new(
        shared.claim_slot(),
        settings.keep_set_cookie,
    ));
    let max_outcome = engine.config().max_outcome_size();
    let recording = Recording {
        shared: Arc::clone(&shared),
        // The request's handle on the layer's state, moved (no second reference count).
        settings: state,
        max_outcome,
    };
    let handler = inner.call(request);
    let answer = HeadReceiver::new(shared);
    // Driven here, inside this request's own future (no task, no wake-up, no hand-off to
    // another worker thread), and detached only if this future is dropped before the recording
    // ends: the client left or a timeout layer fired mid-handler, or the head went out while a
    // streamed body is still being forwarded. Then the rest runs as a task of its own, so
    // dropping the request cancels neither the handler nor the recording and the retry gets the
    // replay.
    // The recording keeps the request's span if it is detached (`Span::none()`, which costs
    // nothing to enter, when that span is disabled).
    let span = if idempotency_core::debug_spans_can_be_seen() {
        let current = tracing::Span::current();
        if current.is_disabled() {
            tracing::Span::none()
        } else {
            current
        }
    } else {
        tracing::Span::none()
    };
    let mut drive =
        record::Detachable::new(runtime, record::drive(recording, handler).instrument(span));
    let answer = std::future::poll_fn(|cx| {
        drive.poll_here(cx);
        // Only `drive` sends the head, and only while it is polled just above: no waker is
        // needed (one would make that send wake this very task, a spurious reschedule — and
        // often a wake-up of another worker — per request).
        match answer.try_take() {
            Some(head) => Poll::Ready(Some(head)),
            None if drive.is_running() => Poll::Pending,
            None => Poll::Ready(None),
        }
    })
    .await;
    // Dropped here: a recording still under way (a streamed body) continues as its own task.
    drop(drive);
    match answer {
        Some(Ok(response)) => Ok(response),
        Some(Err(Failure::Error(error))) => Err(error),
        Some(Err(Failure::Panic(panic))) => std::panic::resume_unwind(panic),
        // The recording ended without answering (it cannot, short of a runtime shutdown).
        None => Ok(problem(Problem::shutting_down())),
    }
}

/// Collect the request body up to the limit. An oversize body is still read (and discarded) up
/// to the drain bounds so that the client sees the 413 rather than a broken pipe.
async fn read_body<B>(body: B, headers: &HeaderMap, settings: &Settings) -> Result<Bytes, Problem>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    let limit = settings.max_request_body;
    let drain_to = limit.saturating_add(settings.oversize_drain);
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > drain_to as u64) {
        // It cannot be drained within the bound anyway: answer now and close.
        return Err(Problem::body_too_large(limit).close_connection(true));
    }
    let mut body = pin!(body);
    // Most bodies arrive as one frame: that frame is the body, kept without a copy (`Bytes`
    // data is shared, not copied, by `copy_to_bytes`). A second frame starts a buffer.
    let mut first: Option<Bytes> = None;
    let mut collected: Option<BytesMut> = None;
    let mut seen = 0_usize;
    loop {
        match body.frame().await {
            None => {
                return Ok(match (collected, first) {
                    (Some(all), _) => all.freeze(),
                    (None, Some(one)) => one,
                    (None, None) => Bytes::new(),
                });
            }
            Some(Err(error)) => return Err(unreadable(error.into())),
            Some(Ok(frame)) => {
                if let Ok(mut data) = frame.into_data() {
                    let len = data.remaining();
                    seen = seen.saturating_add(len);
                    if seen > limit {
                        break;
                    }
                    let chunk = data.copy_to_bytes(len);
                    match (&mut collected, first.take()) {
                        (Some(all), _) => all.extend_from_slice(&chunk),
                        (None, None) => first = Some(chunk),
                        (None, Some(one)) => {
                            let mut all = BytesMut::with_capacity(one.len() + chunk.len());
                            all.extend_from_slice(&one);
                            all.extend_from_slice(&chunk);
                            collected = Some(all);
                        }
                    }
                }
            }
        }
    }
    drop((first, collected));
    // Rare: boxed, so its timer stays out of every protected request's future.
    Err(Box::pin(drain_oversize(body, seen, settings)).await)
}

/// Read (and discard) the rest of an oversize body within the drain bounds, then the 413.
async fn drain_oversize<B>(mut body: Pin<&mut B>, mut seen: usize, settings: &Settings) -> Problem
where
    B: Body,
{
    let limit = settings.max_request_body;
    let drain_to = limit.saturating_add(settings.oversize_drain);
    let drained = tokio::time::timeout(settings.oversize_drain_time, async {
        loop {
            match body.frame().await {
                None => return true,
                Some(Err(_)) => return false,
                Some(Ok(frame)) => {
                    if let Some(data) = frame.data_ref() {
                        seen = seen.saturating_add(data.remaining());
                        if seen > drain_to {
                            return false;
                        }
                    }
                }
            }
        }
    })
    .await;
    let drained = matches!(drained, Ok(true));
    tracing::debug!(limit, seen, drained, "request body too large");
    Problem::body_too_large(limit).close_connection(!drained)
}

/// The answer to a request body that failed while it was read: 408 `body-timeout` when the
/// failure is (or is caused by) an `std::io::Error` of kind `TimedOut` — the convention for a
/// server's body read timeout to tell the layer so; RFC 9110 §15.5.9: the server "SHOULD send the
/// `close` connection option", and the rest of the body is not read, so the connection closes —
/// else 400 `body-unreadable` (a cut or malformed body).
fn unreadable(error: BoxError) -> Problem {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(error.as_ref());
    while let Some(current) = cause {
        if current
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut)
        {
            return Problem::new(
                StatusCode::REQUEST_TIMEOUT,
                "body-timeout",
                "Request body timed out",
                error.to_string(),
            )
            .close_connection(true);
        }
        cause = current.source();
    }
    Problem::new(
        StatusCode::BAD_REQUEST,
        "body-unreadable",
        "Request body unreadable",
        error.to_string(),
    )
}

fn problem<B>(answer: Problem) -> Response<ResponseBody<B>> {
    answer.into_response().map(ResponseBody::full)
}

fn replay<B>(outcome: StoredOutcome, request: &HeaderMap) -> Response<ResponseBody<B>> {
    if outcome.content_type.as_deref() != Some(stored::CONTENT_TYPE) {
        tracing::error!("stored outcome was not written by the HTTP layer (shared prefix?)");
        return problem(Problem::from_engine(&IdempotencyError::CorruptRecord(
            idempotency_core::CorruptRecord::new("not an HTTP response"),
        )));
    }
    let stored = match StoredResponse::decode(&outcome.body) {
        Ok(stored) => stored,
        Err(error) => {
            tracing::error!(%error, "stored HTTP response is corrupt");
            return problem(Problem::from_engine(&IdempotencyError::CorruptRecord(
                error,
            )));
        }
    };
    if let Some(coding) = encoding::unacceptable_coding(&stored.headers, request) {
        metrics::counter!(ENCODING_REFUSED).increment(1);
        tracing::warn!(
            coding,
            "stored response is encoded in a way this retry does not accept (compression runs \
             inside the idempotency layer; move it outside)"
        );
        return problem(Problem::encoding_not_acceptable(&coding));
    }
    let mut response = Response::new(ResponseBody::full(stored.body));
    *response.status_mut() = stored.status;
    let headers = response.headers_mut();
    // One allocation for the stored headers and ours, instead of growing as they come.
    headers.reserve(stored.headers.len() + 2);
    for (name, value) in stored.headers {
        headers.append(name, value);
    }
    headers.insert(REPLAYED_HEADER, HeaderValue::from_static("true"));
    if stored.body_omitted {
        headers.insert(BODY_OMITTED_HEADER, HeaderValue::from_static("true"));
    }
    response
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use http_body::Frame;
    use http_body_util::{Full, StreamBody};

    use super::*;

    fn frames(parts: &[&'static [u8]]) -> impl Body<Data = Bytes, Error = Infallible> + use<> {
        let frames: Vec<Result<Frame<Bytes>, Infallible>> = parts
            .iter()
            .map(|p| Ok(Frame::data(Bytes::from_static(p))))
            .collect();
        StreamBody::new(futures_util::stream::iter(frames))
    }

    #[tokio::test]
    async fn a_one_frame_body_is_kept_without_a_copy() {
        let sent = Bytes::from_static(br#"{"sku":"widget"}"#);
        let read = read_body(
            Full::new(sent.clone()),
            &HeaderMap::new(),
            &Settings::default(),
        )
        .await
        .map_err(|p| p.slug);
        assert_eq!(read.as_ref().map(|b| b.as_ptr()), Ok(sent.as_ptr()));
        assert_eq!(read, Ok(sent));
    }

    #[tokio::test]
    async fn frames_are_joined_and_an_empty_body_is_empty() {
        let settings = Settings::default();
        let joined = read_body(
            frames(&[b"ab", b"", b"cd", b"e"]),
            &HeaderMap::new(),
            &settings,
        )
        .await
        .map_err(|p| p.slug);
        assert_eq!(joined, Ok(Bytes::from_static(b"abcde")));
        let empty = read_body(frames(&[]), &HeaderMap::new(), &settings)
            .await
            .map_err(|p| p.slug);
        assert_eq!(empty, Ok(Bytes::new()));
    }

    /// A body whose second frame fails with `error`.
    fn failing(error: fn() -> BoxError) -> impl Body<Data = Bytes, Error = BoxError> + use<> {
        let frames: Vec<Result<Frame<Bytes>, BoxError>> =
            vec![Ok(Frame::data(Bytes::from_static(b"ab"))), Err(error())];
        StreamBody::new(futures_util::stream::iter(frames))
    }

    #[tokio::test]
    async fn a_body_that_timed_out_is_408_and_closes_any_other_failure_is_400() {
        #[derive(Debug)]
        struct Late;
        impl std::fmt::Display for Late {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("the body did not arrive in time")
            }
        }
        impl std::error::Error for Late {}
        /// An error whose cause is the timeout (as a server's own error type would wrap it).
        #[derive(Debug)]
        struct Wrapped(std::io::Error);
        impl std::fmt::Display for Wrapped {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("reading the body")
            }
        }
        impl std::error::Error for Wrapped {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        let settings = Settings::default();
        let answer = |error: fn() -> BoxError| {
            let settings = &settings;
            async move {
                read_body(failing(error), &HeaderMap::new(), settings)
                    .await
                    .err()
                    .map(|p| (p.status, p.slug, p.close))
            }
        };
        let timed_out =
            || -> BoxError { Box::new(std::io::Error::new(std::io::ErrorKind::TimedOut, Late)) };
        assert_eq!(
            answer(timed_out).await,
            Some((StatusCode::REQUEST_TIMEOUT, "body-timeout", true))
        );
        let wrapped = || -> BoxError {
            Box::new(Wrapped(std::io::Error::from(std::io::ErrorKind::TimedOut)))
        };
        assert_eq!(
            answer(wrapped).await,
            Some((StatusCode::REQUEST_TIMEOUT, "body-timeout", true))
        );
        let cut =
            || -> BoxError { Box::new(std::io::Error::from(std::io::ErrorKind::UnexpectedEof)) };
        assert_eq!(
            answer(cut).await,
            Some((StatusCode::BAD_REQUEST, "body-unreadable", false))
        );
        let other = || -> BoxError { Box::new(Late) };
        assert_eq!(
            answer(other).await,
            Some((StatusCode::BAD_REQUEST, "body-unreadable", false))
        );
    }

    #[tokio::test]
    async fn a_body_over_the_limit_in_any_frame_is_413_after_draining() {
        let settings = Settings {
            max_request_body: 4,
            ..Settings::default()
        };
        let problem = read_body(
            frames(&[b"ab", b"cd", b"e", b"f"]),
            &HeaderMap::new(),
            &settings,
        )
        .await
        .err();
        let problem = problem.map(|p| (p.status, p.close));
        // Drained within the bounds: the connection can stay open.
        assert_eq!(problem, Some((StatusCode::PAYLOAD_TOO_LARGE, false)));
    }
}
