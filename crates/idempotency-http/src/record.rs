//! The detached half of a protected request: it runs the handler, forwards the response as it is
//! produced, keeps a bounded copy of it, and ends the claim.
//!
//! It runs inside the request's own future while that future lives ([`Detachable`]); if the
//! request future is dropped first (a client timeout, a server timeout layer, or the head went
//! out while a streamed body is still forwarded), the rest becomes a tokio task of its own. So
//! the connection going away cancels neither the handler nor the recording: once the handler may
//! have run, the retry gets the replay, never a second execution.

use std::any::Any;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::{Pin, pin};
use std::sync::atomic::AtomicU8;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use futures_util::FutureExt as _;
use http::Response;
use http_body::{Body, Frame};
use idempotency_core::{Guard, IdempotencyStore, StoredOutcome};
use tokio::sync::mpsc;

use crate::body::{BoxError, Forwarded, ResponseBody};
use crate::effects::{self, EffectsCell, SideEffects, SideEffectsMarker};
use crate::policy::OversizePolicy;
use crate::problem::Problem;
use crate::settings::Settings;
use crate::stored::{self, StoredResponse};
use crate::transactional::{self, ClaimCell, CompletedByHandler, Slot};

/// Metric: responses recorded (or released) after their client had gone.
pub(crate) const CLIENT_GONE: &str = "idempotency_http_client_gone_total";
/// Metric: stream responses passed through without a copy.
pub(crate) const STREAMS: &str = "idempotency_http_streams_not_recorded_total";
/// Metric: responses recorded without their body because they outgrew the maximum size.
pub(crate) const BODY_OMITTED: &str = "idempotency_http_body_omitted_total";

/// A shared handle on the layer's [`Settings`] (the layer's state, whatever its engine and scope
/// types).
pub(crate) type SettingsHandle = Arc<dyn AsRef<Settings> + Send + Sync>;

/// Frames in flight between the recording task and the connection: small, so a slow client
/// slows the handler's body down (backpressure) instead of growing a queue.
const FRAMES_IN_FLIGHT: usize = 2;

/// Why the handler produced no response.
pub(crate) enum Failure<E> {
    /// The inner service returned an error.
    Error(E),
    /// The handler panicked (the payload, to resume the panic on the connection's side).
    Panic(Box<dyn Any + Send>),
}

/// What the connection side receives: the response head (with a body that forwards frames), or
/// the failure.
pub(crate) type Head<B, E> = Result<Response<ResponseBody<B>>, Failure<E>>;

/// A claim and what is needed to end it.
pub(crate) struct Recording<S: IdempotencyStore + 'static, B, E> {
    /// The claim (unless the handler takes it, [`crate::TransactionalClaim`]), the marker's
    /// state, and where the head goes.
    pub(crate) shared: Arc<Shared<S, B, E>>,
    /// The layer's settings (the request's handle on the layer's shared state).
    pub(crate) settings: SettingsHandle,
    pub(crate) max_outcome: usize,
}

/// What a protected request's parts share, in one allocation: the claim until the layer (or the
/// handler, [`crate::TransactionalClaim`]) takes it, the state of the request's
/// [`SideEffectsMarker`], and the response head on its way from [`drive`] to the connection
/// side (a one-shot hand-off: `Empty`, then `Sent`, then `Closed` once taken or abandoned).
pub(crate) struct Shared<S: IdempotencyStore + 'static, B, E> {
    claim: Mutex<Option<Guard<S>>>,
    effects: AtomicU8,
    head: Mutex<HeadSlot<B, E>>,
}

enum HeadSlot<B, E> {
    Empty,
    Sent(Head<B, E>),
    /// Taken, or the connection side went away: a head sent now is dropped.
    Closed,
}

impl<S, B, E> Shared<S, B, E>
where
    S: IdempotencyStore + 'static,
    B: Send + 'static,
    E: Send + 'static,
{
    pub(crate) fn new(guard: Guard<S>) -> Arc<Self> {
        Arc::new(Self {
            claim: Mutex::new(Some(guard)),
            effects: AtomicU8::new(0),
            head: Mutex::new(HeadSlot::Empty),
        })
    }

    /// The request's marker (its state is this allocation's).
    pub(crate) fn marker(self: &Arc<Self>) -> SideEffectsMarker {
        SideEffectsMarker::in_cell(Arc::clone(self) as Arc<dyn EffectsCell>)
    }

    /// The claim slot for the request's [`crate::TransactionalClaim`].
    pub(crate) fn claim_slot(self: &Arc<Self>) -> Slot<S> {
        Arc::clone(self) as Slot<S>
    }

    /// Hand the head to the connection side; `false` (the head dropped: its body, if it
    /// forwards frames, then tells the pump that the client left) if that side is gone.
    fn send_head(&self, head: Head<B, E>) -> bool {
        let mut slot = self.lock_head();
        if matches!(*slot, HeadSlot::Closed) {
            drop(slot);
            drop(head);
            return false;
        }
        *slot = HeadSlot::Sent(head);
        true
    }

    /// The head, if it was sent (once).
    pub(crate) fn take_head(&self) -> Option<Head<B, E>> {
        let mut slot = self.lock_head();
        match std::mem::replace(&mut *slot, HeadSlot::Closed) {
            HeadSlot::Sent(head) => Some(head),
            HeadSlot::Empty => {
                *slot = HeadSlot::Empty;
                None
            }
            HeadSlot::Closed => None,
        }
    }

    /// The connection side is gone: a head sent later (or one sent and never taken) is
    /// dropped, which tells a body pump that the client left.
    pub(crate) fn close_head(&self) {
        let unread = std::mem::replace(&mut *self.lock_head(), HeadSlot::Closed);
        // Dropped outside the lock.
        drop(unread);
    }

    fn lock_head(&self) -> std::sync::MutexGuard<'_, HeadSlot<B, E>> {
        // The critical sections only move a value: a poisoned lock holds a consistent one.
        self.head
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl<S, B, E> EffectsCell for Shared<S, B, E>
where
    S: IdempotencyStore + 'static,
    B: Send,
    E: Send,
{
    fn effects(&self) -> &AtomicU8 {
        &self.effects
    }
}

impl<S, B, E> ClaimCell<S> for Shared<S, B, E>
where
    S: IdempotencyStore + 'static,
    B: Send,
    E: Send,
{
    fn claim(&self) -> &Mutex<Option<Guard<S>>> {
        &self.claim
    }
}

/// The connection side's end of the head hand-off: dropping it closes the hand-off.
pub(crate) struct HeadReceiver<S, B, E>(Arc<Shared<S, B, E>>)
where
    S: IdempotencyStore + 'static,
    B: Send + 'static,
    E: Send + 'static;

impl<S, B, E> HeadReceiver<S, B, E>
where
    S: IdempotencyStore + 'static,
    B: Send + 'static,
    E: Send + 'static,
{
    pub(crate) fn new(shared: Arc<Shared<S, B, E>>) -> Self {
        Self(shared)
    }

    /// The head, if [`drive`] has sent it.
    pub(crate) fn try_take(&self) -> Option<Head<B, E>> {
        self.0.take_head()
    }
}

impl<S, B, E> Drop for HeadReceiver<S, B, E>
where
    S: IdempotencyStore + 'static,
    B: Send + 'static,
    E: Send + 'static,
{
    fn drop(&mut self) {
        self.0.close_head();
    }
}

/// The next frame of a body pinned in an `Option` (`None` once dropped: the end).
fn next_frame<'a, B: Body>(
    body: &'a mut Pin<&mut Option<B>>,
) -> impl Future<Output = Option<Result<Frame<B::Data>, B::Error>>> + 'a {
    std::future::poll_fn(move |cx| match body.as_mut().as_pin_mut() {
        Some(body) => body.poll_frame(cx),
        None => Poll::Ready(None),
    })
}

fn is_end<B: Body>(body: &Pin<&mut Option<B>>) -> bool {
    body.as_ref()
        .get_ref()
        .as_ref()
        .is_none_or(Body::is_end_stream)
}

/// A future polled in place by its owner, and spawned on `runtime` to run to its end if the
/// owner drops it before it finished.
///
/// Why not always spawn: a task per protected request costs an allocation, a wake-up of the
/// request's own task when the head is ready, and on a multi-threaded runtime often a hand-off
/// to (and the wake-up of) another worker thread. Most recordings end within the request
/// future's lifetime (the response is recorded before its head goes out), so they never pay it.
///
/// The runtime is the one the request found current when it started (the layer refuses a
/// request outside any runtime before its handler runs): a drop from anywhere (another thread,
/// outside the runtime) can still spawn the rest.
pub(crate) struct Detachable<F: Future<Output = ()> + Send + 'static> {
    /// `None` once finished, or while being polled (so a panic in it is never polled again,
    /// nor spawned: the unwinding drops it, and a dropped claim guard releases its claim).
    future: Option<Pin<Box<F>>>,
    runtime: tokio::runtime::Handle,
}

impl<F: Future<Output = ()> + Send + 'static> Detachable<F> {
    pub(crate) fn new(runtime: tokio::runtime::Handle, future: F) -> Self {
        Self {
            future: Some(Box::pin(future)),
            runtime,
        }
    }

    /// Whether the future has not finished yet.
    pub(crate) fn is_running(&self) -> bool {
        self.future.is_some()
    }

    /// Poll the future here, in the owner's task, unless it already finished.
    pub(crate) fn poll_here(&mut self, cx: &mut Context<'_>) {
        if let Some(mut future) = self.future.take()
            && future.as_mut().poll(cx).is_pending()
        {
            self.future = Some(future);
        }
    }
}

impl<F: Future<Output = ()> + Send + 'static> Drop for Detachable<F> {
    fn drop(&mut self) {
        if let Some(future) = self.future.take() {
            // A runtime shutting down drops the task unrun: its guard's drop releases the claim
            // (best effort), as for any task cut off by a shutdown.
            drop(self.runtime.spawn(future));
        }
    }
}

/// What a handler's future gives: its response or error, or the payload of its panic.
pub(crate) type HandlerOutput<B, E> = Result<Result<Response<B>, E>, Box<dyn Any + Send>>;

pin_project_lite::pin_project! {
    /// The handler's future, then the recording of what it gave ([`record`]), one after the
    /// other in the same place: an `async fn` awaiting both keeps the handler's future (and a
    /// second copy of it, moved out of its arguments) beside the recording's state. This future
    /// is boxed per protected request ([`Detachable`]); kept under glibc's per-thread cache
    /// limit (1032 bytes) the box is reused request after request instead of going through the
    /// allocator's shared bins, where a store growing by thousands of records a second
    /// fragments the heap.
    #[project = DriveProj]
    #[project_replace = DriveOwn]
    pub(crate) enum Drive<H, M, G> {
        Handler { #[pin] handler: H, then: M },
        Recording { #[pin] recording: G },
        Done,
    }
}

impl<H, M, G> Drive<H, M, G> {
    /// Run `handler`, then `then(its output)`.
    pub(crate) fn new(handler: H, then: M) -> Self {
        Self::Handler { handler, then }
    }
}

impl<H, M, G> Future for Drive<H, M, G>
where
    H: Future,
    M: FnOnce(H::Output) -> G,
    G: Future<Output = ()>,
{
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            match self.as_mut().project() {
                DriveProj::Handler { handler, .. } => {
                    let Poll::Ready(output) = handler.poll(cx) else {
                        return Poll::Pending;
                    };
                    // The handler's future is dropped in place; the recording takes its room.
                    if let DriveOwn::Handler { then, .. } =
                        self.as_mut().project_replace(Self::Done)
                    {
                        self.set(Self::Recording {
                            recording: then(output),
                        });
                    }
                }
                DriveProj::Recording { recording } => {
                    if recording.poll(cx).is_pending() {
                        return Poll::Pending;
                    }
                    self.set(Self::Done);
                    return Poll::Ready(());
                }
                DriveProj::Done => return Poll::Ready(()),
            }
        }
    }
}

/// Run `handler` (caught: its panic is an output like another), then [`record`] what it gave.
pub(crate) fn drive<S, F, B, E>(
    recording: Recording<S, B, E>,
    handler: F,
) -> impl Future<Output = ()>
where
    S: IdempotencyStore + 'static,
    F: Future<Output = Result<Response<B>, E>>,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
    E: Send + 'static,
{
    Drive::new(AssertUnwindSafe(handler).catch_unwind(), move |output| {
        record(recording, output)
    })
}

/// Send the head of what the handler gave to the connection side (through
/// `recording.shared`), forward and record its body, end the claim.
///
/// The common path (a body of known length within the cap, recorded, then answered) runs
/// inline; the other paths (a failure, a release, an oversize or streamed body) are boxed, so
/// this future stays small: it is moved into a box per protected request ([`Detachable`]).
async fn record<S, B, E>(recording: Recording<S, B, E>, result: HandlerOutput<B, E>)
where
    S: IdempotencyStore + 'static,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
    E: Send + 'static,
{
    let Recording {
        shared,
        settings,
        max_outcome,
    } = recording;
    let settings: &Settings = (*settings).as_ref();
    let head = &*shared;
    let marker = &shared.effects;
    // The guard lives outside the unwinding handler: a panicking handler still gets its claim
    // ended by the rules below, not by the guard's drop.
    let Some(guard) = transactional::lock(&shared.claim).take() else {
        // The handler took its claim (`TransactionalClaim`): it completed it in its own
        // transaction (the response is marked), or its guard / pending completion was dropped
        // and released the claim. Nothing to record: forward what it gave.
        head.send_head(match result {
            Ok(Ok(response)) => {
                if response.extensions().get::<CompletedByHandler>().is_none() {
                    tracing::debug!("handler took its claim and answered without completing it");
                }
                Ok(response.map(ResponseBody::inner))
            }
            Ok(Err(error)) => Err(Failure::Error(error)),
            Err(panic) => Err(Failure::Panic(panic)),
        });
        return;
    };
    let response = match result {
        Ok(Ok(response)) => response,
        Ok(Err(error)) => {
            Box::pin(handler_failed(guard, None, marker, max_outcome)).await;
            head.send_head(Err(Failure::Error(error)));
            return;
        }
        Err(panic) => {
            tracing::warn!("handler panicked");
            Box::pin(handler_failed(guard, None, marker, max_outcome)).await;
            head.send_head(Err(Failure::Panic(panic)));
            return;
        }
    };
    let (parts, body) = response.into_parts();
    // What the response itself says wins over the marker, also if its body fails later.
    let extension = parts.extensions.get::<SideEffects>().copied();
    let said = extension.or_else(|| effects::read(marker));
    let store = match said {
        Some(SideEffects::Committed) => true,
        Some(SideEffects::None) => false,
        None => (settings.store_status)(parts.status),
    };
    if !store {
        Box::pin(release(guard)).await;
        head.send_head(Ok(Response::from_parts(parts, ResponseBody::inner(body))));
        return;
    }
    let keep_set_cookie = settings.keep_set_cookie;
    // The record's head, copied out of the response head only off the common path (below, the
    // common path encodes the record straight from the response head).
    let head_only = |parts: &http::response::Parts| StoredResponse {
        status: parts.status,
        headers: StoredResponse::replayable_headers(&parts.headers, keep_set_cookie),
        body: Bytes::new(),
        body_omitted: false,
    };
    if (settings.is_stream)(&parts) {
        // Recorded before the head goes out, so a retry that follows the first byte finds it.
        metrics::counter!(STREAMS).increment(1);
        tracing::debug!("stream response: passed through, not recorded");
        Box::pin(without_body(guard, head_only(&parts), settings.oversize)).await;
        head.send_head(Ok(Response::from_parts(parts, ResponseBody::inner(body))));
        return;
    }
    let budget = max_outcome.saturating_sub(stored::encoded_len(
        stored::replayable_in(&parts.headers, keep_set_cookie),
        0,
    ));
    let hint = body.size_hint();
    // Pinned in an `Option` so that dropping it in place (`set(None)`) really ends the handler's
    // body when it is done with (no box per request).
    let mut body = pin!(Some(body));
    let mut first = None;
    if hint.exact().is_some_and(|n| n <= budget as u64) {
        // Most answers (axum's `Json`, `String`, `Bytes`) are one frame of known length within
        // the cap: read it, record it, then answer with it. The record exists before the head
        // goes out, and no channel is needed.
        if !is_end(&body) {
            let failed = match AssertUnwindSafe(next_frame(&mut body)).catch_unwind().await {
                Ok(Some(Ok(frame))) => {
                    first = Some(frame);
                    false
                }
                Ok(None) => false,
                Ok(Some(Err(error))) => {
                    let error: BoxError = error.into();
                    tracing::warn!(%error, "response body failed");
                    true
                }
                Err(_) => {
                    tracing::warn!("response body panicked");
                    true
                }
            };
            if failed {
                return Box::pin(failed_before_head(
                    guard,
                    extension,
                    marker,
                    max_outcome,
                    head,
                ))
                .await;
            }
        }
        let whole = match &first {
            None => Some(Bytes::new()),
            Some(frame) if is_end(&body) => frame.data_ref().cloned(),
            Some(_) => None,
        };
        if let Some(data) = whole {
            let encoded = stored::encode(
                parts.status,
                || stored::replayable_in(&parts.headers, keep_set_cookie),
                &data,
                false,
            );
            if encoded.len() > max_outcome {
                Box::pin(without_body(guard, head_only(&parts), settings.oversize)).await;
            } else {
                complete(guard, encoded).await;
            }
            head.send_head(Ok(Response::from_parts(parts, ResponseBody::full(data))));
            return;
        }
    }
    let stored = head_only(&parts);
    let (frames, receiver) = mpsc::channel(FRAMES_IN_FLIGHT);
    let client = head.send_head(Ok(Response::from_parts(
        parts,
        ResponseBody::detached(receiver, hint),
    )));
    let pump = Pump {
        frames,
        client,
        exact: hint.exact(),
        copy: Recorder::new(budget, hint.exact()),
        first,
    };
    Box::pin(pump.run(
        guard,
        stored,
        body.as_mut(),
        (extension, marker),
        settings,
        max_outcome,
    ))
    .await;
}

/// The body failed before anything was sent: end the claim, answer with a 500 problem.
async fn failed_before_head<S, B, E>(
    guard: Guard<S>,
    extension: Option<SideEffects>,
    marker: &AtomicU8,
    max_outcome: usize,
    head: &Shared<S, B, E>,
) where
    S: IdempotencyStore + 'static,
    B: Send + 'static,
    E: Send + 'static,
{
    handler_failed(guard, extension, marker, max_outcome).await;
    let answer = Problem::response_failed().into_response();
    head.send_head(Ok(answer.map(ResponseBody::full)));
}

/// Forwards frames to the connection and copies them, within the budget.
struct Pump {
    frames: mpsc::Sender<Forwarded>,
    /// Whether the connection still takes frames.
    client: bool,
    /// The body's exact length, when known (its last frame is held until the record is written).
    exact: Option<u64>,
    copy: Recorder,
    /// A frame already read (while checking for a single-frame body), forwarded first.
    first: Option<Frame<Bytes>>,
}

enum Ending {
    /// The body ended normally.
    Done,
    /// The client left and the copy overflowed: nothing more is worth reading.
    Abandoned,
    /// The body failed.
    Failed(BoxError),
}

impl Pump {
    async fn run<S, B>(
        mut self,
        guard: Guard<S>,
        mut stored: StoredResponse,
        mut body: Pin<&mut Option<B>>,
        (extension, marker): (Option<SideEffects>, &AtomicU8),
        settings: &Settings,
        max_outcome: usize,
    ) where
        S: IdempotencyStore + 'static,
        B: Body<Data = Bytes>,
        B::Error: Into<BoxError>,
    {
        let mut first = self.first.take();
        let mut forwarded = 0_u64;
        // Once the body's exact length has arrived, what remains (its last data frame, trailers)
        // waits until the record is written: a client that has the whole answer and retries at
        // once then finds the replay, not "in progress". Bodies of unknown length are sent as they
        // come; their end (the last chunk marker) waits the same way.
        let mut held: Vec<Frame<Bytes>> = Vec::new();
        let ending = loop {
            // A panic while producing the body is a failed body, not a dead task.
            let next = match first.take() {
                Some(frame) => Ok(Some(Ok(frame))),
                None => AssertUnwindSafe(next_frame(&mut body)).catch_unwind().await,
            };
            let frame = match next {
                Ok(None) => break Ending::Done,
                Ok(Some(Err(error))) => break Ending::Failed(error.into()),
                Err(_) => break Ending::Failed("the response body panicked".into()),
                Ok(Some(Ok(frame))) => frame,
            };
            if let Some(data) = frame.data_ref() {
                self.copy.push(data);
                forwarded = forwarded.saturating_add(data.len() as u64);
            }
            if self.exact.is_some_and(|exact| forwarded >= exact) {
                held.push(frame);
                continue;
            }
            if self.client && self.frames.send(Some(Ok(frame))).await.is_err() {
                self.client = false;
                tracing::debug!("client went away mid-body; recording continues");
            }
            if !self.client && self.copy.overflowed {
                break Ending::Abandoned;
            }
        };
        // Ends the handler's body now, not when the recording ends.
        body.set(None);
        if !self.client {
            metrics::counter!(CLIENT_GONE).increment(1);
        }
        match ending {
            Ending::Failed(error) => {
                tracing::warn!(%error, "response body failed");
                handler_failed(guard, extension, marker, max_outcome).await;
                if self.client {
                    let _ = self.frames.send(Some(Err(error))).await;
                }
                return;
            }
            Ending::Abandoned => without_body(guard, stored, settings.oversize).await,
            Ending::Done if self.copy.overflowed => {
                without_body(guard, stored, settings.oversize).await;
            }
            Ending::Done => {
                stored.body = self.copy.buffer.freeze();
                let encoded = stored.encode();
                if encoded.len() > max_outcome {
                    stored.body = Bytes::new();
                    without_body(guard, stored, settings.oversize).await;
                } else {
                    complete(guard, encoded).await;
                }
            }
        }
        for frame in held {
            if !self.client || self.frames.send(Some(Ok(frame))).await.is_err() {
                return;
            }
        }
        if self.client {
            let _ = self.frames.send(None).await;
        }
    }
}

/// A copy of the body of at most `budget` bytes; past that it lets go of what it held.
struct Recorder {
    buffer: BytesMut,
    budget: usize,
    overflowed: bool,
}

impl Recorder {
    fn new(budget: usize, exact: Option<u64>) -> Self {
        let capacity = exact.map_or(0, |n| usize::try_from(n).unwrap_or(usize::MAX).min(budget));
        Self {
            buffer: BytesMut::with_capacity(capacity),
            budget,
            overflowed: false,
        }
    }

    fn push(&mut self, data: &Bytes) {
        if self.overflowed {
            return;
        }
        if self.buffer.len().saturating_add(data.len()) > self.budget {
            tracing::debug!(
                budget = self.budget,
                "response outgrew the maximum outcome size; no longer copied"
            );
            self.overflowed = true;
            self.buffer = BytesMut::new();
            return;
        }
        self.buffer.extend_from_slice(data);
    }
}

/// The body cannot be kept: record the head alone, or release, by the policy.
async fn without_body<S: IdempotencyStore + 'static>(
    guard: Guard<S>,
    mut stored: StoredResponse,
    policy: OversizePolicy,
) {
    match policy {
        OversizePolicy::OmitBody => {
            metrics::counter!(BODY_OMITTED).increment(1);
            stored.body = Bytes::new();
            stored.body_omitted = true;
            complete(guard, stored.encode()).await;
        }
        OversizePolicy::Release => release(guard).await,
    }
}

/// No response (an error, a panic, a failed body): release, unless the handler said a side
/// effect happened (the response's [`SideEffects`] extension, when there was a response, else
/// the marker); then a 500 problem is recorded so that no retry runs it again.
async fn handler_failed<S: IdempotencyStore + 'static>(
    guard: Guard<S>,
    extension: Option<SideEffects>,
    marker: &AtomicU8,
    max_outcome: usize,
) {
    if extension.or_else(|| effects::read(marker)) != Some(SideEffects::Committed) {
        release(guard).await;
        return;
    }
    tracing::warn!("handler failed after committing a side effect; recording a 500 for retries");
    let answer = Problem::response_lost().into_response();
    let (parts, body) = answer.into_parts();
    let stored = StoredResponse {
        status: parts.status,
        headers: StoredResponse::replayable_headers(&parts.headers, false),
        body,
        body_omitted: false,
    };
    let encoded = stored.encode();
    if encoded.len() > max_outcome {
        release(guard).await;
    } else {
        complete(guard, encoded).await;
    }
}

pub(crate) async fn release<S: IdempotencyStore + 'static>(guard: Guard<S>) {
    if let Err(error) = guard.release().await {
        tracing::debug!(%error, "releasing the claim did not apply; it lapses with its lease");
    }
}

/// Store the encoded response under the claim. The store call's future is boxed here, before
/// anything is awaited: the guard moves into the box at once, so the caller's future holds
/// neither the guard nor the engine's completion state (~1 KB) inline.
fn complete<S: IdempotencyStore + 'static>(
    guard: Guard<S>,
    encoded: Bytes,
) -> impl Future<Output = ()> {
    let outcome = StoredOutcome::new(encoded, Some(stored::CONTENT_TYPE.to_owned()));
    let completion = Box::pin(guard.complete(outcome));
    async move {
        if let Err(error) = completion.await {
            // The handler ran: its response went (or goes) out anyway; a retry may run it again.
            tracing::warn!(%error, "response could not be recorded");
        }
    }
}
#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use tokio::sync::oneshot;

    use super::*;

    /// Poll once in place, as the request future does before it is dropped.
    async fn poll_once<F: Future<Output = ()> + Send + 'static>(detachable: &mut Detachable<F>) {
        std::future::poll_fn(|cx| {
            detachable.poll_here(cx);
            Poll::Ready(())
        })
        .await;
    }

    #[tokio::test]
    async fn dropped_unfinished_it_runs_to_its_end_as_a_task() {
        let (go, wait) = oneshot::channel::<()>();
        let (done, finished) = oneshot::channel::<()>();
        let mut detachable = Detachable::new(tokio::runtime::Handle::current(), async move {
            let _ = wait.await;
            let _ = done.send(());
        });
        poll_once(&mut detachable).await;
        drop(detachable);
        let _ = go.send(());
        assert_eq!(finished.await, Ok(()));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn dropped_unfinished_outside_the_runtime_it_still_runs_to_its_end() {
        let (go, wait) = oneshot::channel::<()>();
        let (done, finished) = oneshot::channel::<()>();
        let mut detachable = Detachable::new(tokio::runtime::Handle::current(), async move {
            let _ = wait.await;
            let _ = done.send(());
        });
        poll_once(&mut detachable).await;
        // Dropped on a thread that is in no runtime: the runtime it was made in runs the rest.
        let dropped = std::thread::spawn(move || {
            assert!(tokio::runtime::Handle::try_current().is_err());
            drop(detachable);
        });
        assert!(dropped.join().is_ok());
        let _ = go.send(());
        assert_eq!(finished.await, Ok(()));
    }

    #[tokio::test]
    async fn dropped_before_its_first_poll_it_runs_as_a_task() {
        let (done, finished) = oneshot::channel::<()>();
        let detachable = Detachable::new(tokio::runtime::Handle::current(), async move {
            let _ = done.send(());
        });
        drop(detachable);
        assert_eq!(finished.await, Ok(()));
    }

    type TestShared = Shared<idempotency_memory::MemoryStore, String, ()>;

    async fn shared() -> Arc<TestShared> {
        let engine = idempotency_core::Idempotency::builder(idempotency_memory::MemoryStore::new())
            .ignore_env()
            .build()
            .unwrap();
        let key = idempotency_core::IdempotencyKey::new("k").unwrap();
        let begin = engine
            .begin(
                &idempotency_core::Scope::global(),
                &key,
                idempotency_core::Fingerprint::builder().finish(),
            )
            .await;
        match begin {
            Ok(idempotency_core::Begin::Run(guard)) => Shared::new(guard),
            _ => panic!("a fresh key is claimed"),
        }
    }

    /// A head told apart by its status.
    fn head(status: u16) -> Head<String, ()> {
        let mut response = Response::new(ResponseBody::inner(String::new()));
        *response.status_mut() = http::StatusCode::from_u16(status).unwrap();
        Ok(response)
    }

    fn status(head: Option<Head<String, ()>>) -> Option<u16> {
        head?.ok().map(|response| response.status().as_u16())
    }

    #[tokio::test]
    async fn the_head_is_handed_over_once() {
        let shared = shared().await;
        let receiver = HeadReceiver::new(Arc::clone(&shared));
        assert_eq!(status(receiver.try_take()), None, "nothing sent yet");
        assert!(shared.send_head(head(201)));
        assert_eq!(status(receiver.try_take()), Some(201));
        assert_eq!(status(receiver.try_take()), None, "taken once");
        // Once taken, a second head has no one to go to.
        assert!(!shared.send_head(head(202)));
    }

    #[tokio::test]
    async fn a_head_sent_after_the_connection_side_left_is_refused() {
        let shared = shared().await;
        drop(HeadReceiver::new(Arc::clone(&shared)));
        assert!(!shared.send_head(head(203)));
        assert!(matches!(*shared.lock_head(), HeadSlot::Closed));
    }

    #[tokio::test]
    async fn a_head_left_unread_is_dropped_when_the_connection_side_leaves() {
        let shared = shared().await;
        let receiver = HeadReceiver::new(Arc::clone(&shared));
        assert!(shared.send_head(head(204)));
        drop(receiver);
        assert!(matches!(*shared.lock_head(), HeadSlot::Closed));
    }

    #[tokio::test]
    async fn the_marker_and_the_claim_slot_are_the_shared_state() {
        let shared = shared().await;
        let marker = shared.marker();
        assert_eq!(effects::read(&shared.effects), None);
        marker.committed();
        assert_eq!(effects::read(&shared.effects), Some(SideEffects::Committed));
        assert_eq!(shared.marker().get(), Some(SideEffects::Committed));
        let claim = crate::TransactionalClaim::new(shared.claim_slot(), false);
        assert!(claim.is_available());
        let guard = claim.take_guard();
        assert!(guard.is_some());
        assert!(transactional::lock(&shared.claim).is_none());
        assert!(!claim.is_available());
        drop(guard);
    }

    #[tokio::test]
    async fn drive_gives_the_handler_output_to_the_recording_once_the_handler_ends() {
        let (go, wait) = oneshot::channel::<u32>();
        let (done, recorded) = oneshot::channel::<u32>();
        let handler = async move { wait.await.unwrap_or(0) };
        let mut drive = pin!(Drive::new(handler, move |output: u32| async move {
            let _ = done.send(output + 1);
        }));
        let polled = std::future::poll_fn(|cx| Poll::Ready(drive.as_mut().poll(cx))).await;
        assert!(polled.is_pending(), "the handler has not answered yet");
        assert!(matches!(*drive, Drive::Handler { .. }));
        let _ = go.send(41);
        drive.as_mut().await;
        assert_eq!(recorded.await, Ok(42));
        assert!(matches!(*drive, Drive::Done));
        // Done stays done.
        let again = std::future::poll_fn(|cx| Poll::Ready(drive.as_mut().poll(cx))).await;
        assert!(again.is_ready());
    }

    #[tokio::test]
    async fn drive_drops_the_handler_before_the_recording_runs() {
        struct Flag(Arc<AtomicUsize>);
        impl Drop for Flag {
            fn drop(&mut self) {
                self.0.fetch_add(1, Ordering::SeqCst);
            }
        }
        let dropped = Arc::new(AtomicUsize::new(0));
        let flag = Flag(Arc::clone(&dropped));
        let seen = Arc::clone(&dropped);
        let handler = async move {
            let _flag = flag;
            tokio::task::yield_now().await;
            7_u8
        };
        let (done, recorded) = oneshot::channel::<(u8, usize)>();
        let (go, wait) = oneshot::channel::<()>();
        let drive = Drive::new(handler, move |output: u8| async move {
            // The handler's future (and what it held) is gone by the time the recording runs.
            let at_start = seen.load(Ordering::SeqCst);
            let _ = wait.await;
            let _ = done.send((output, at_start));
        });
        let task = tokio::spawn(drive);
        let _ = go.send(());
        assert_eq!(recorded.await, Ok((7, 1)));
        assert!(task.await.is_ok());
    }

    #[tokio::test]
    async fn a_panicking_handler_is_the_recording_input_not_a_dead_task() {
        let (done, recorded) = oneshot::channel::<bool>();
        let handler = async {
            if std::hint::black_box(true) {
                panic!("handler failed");
            }
            Ok::<Response<String>, ()>(Response::new(String::new()))
        };
        let drive = Drive::new(
            AssertUnwindSafe(handler).catch_unwind(),
            move |output: HandlerOutput<String, ()>| async move {
                let _ = done.send(output.is_err());
            },
        );
        tokio::spawn(drive).await.unwrap();
        assert_eq!(recorded.await, Ok(true), "the panic reached the recording");
    }

    #[tokio::test]
    async fn finished_in_place_it_is_neither_polled_again_nor_spawned() {
        let polls = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&polls);
        let mut detachable = Detachable::new(tokio::runtime::Handle::current(), async move {
            counted.fetch_add(1, Ordering::SeqCst);
        });
        poll_once(&mut detachable).await;
        poll_once(&mut detachable).await;
        drop(detachable);
        tokio::task::yield_now().await;
        assert_eq!(polls.load(Ordering::SeqCst), 1);
    }
}
