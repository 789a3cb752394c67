//! The response body of the layer: the inner service's body, untouched; bytes the layer
//! produced (a replay, a problem); or the frames of a handler's body forwarded by the detached
//! task that records it.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::Full;
use pin_project_lite::pin_project;
use tokio::sync::mpsc;

/// One message from the recording task: a frame, the body's error, or (`None`) its clean end.
/// A channel that closes without `None` means the task died (a panic in the body, a runtime
/// shutting down): the body then fails, so the client never takes a cut-off body for a whole one.
pub(crate) type Forwarded = Option<Result<Frame<Bytes>, BoxError>>;

/// Boxed error type of [`ResponseBody`] (the core's, stated once).
pub use idempotency_core::BoxError;

pin_project! {
    /// Body of responses from [`crate::IdempotencyService`]: the inner service's body streamed
    /// untouched (requests the layer does not cover, responses it does not store), or bytes the
    /// layer produced or buffered.
    #[derive(Debug)]
    pub struct ResponseBody<B> {
        #[pin]
        kind: Kind<B>,
    }
}

pin_project! {
    #[project = KindProj]
    #[derive(Debug)]
    enum Kind<B> {
        Inner { #[pin] body: B },
        Full { #[pin] body: Full<Bytes> },
        Detached { frames: mpsc::Receiver<Forwarded>, hint: SizeHint, done: bool },
    }
}

impl<B> ResponseBody<B> {
    pub(crate) fn inner(body: B) -> Self {
        Self {
            kind: Kind::Inner { body },
        }
    }

    /// Frames sent by the recording task; dropping this body (the client went away) tells that
    /// task, which then finishes the record on its own.
    pub(crate) fn detached(frames: mpsc::Receiver<Forwarded>, hint: SizeHint) -> Self {
        Self {
            kind: Kind::Detached {
                frames,
                hint,
                done: false,
            },
        }
    }

    pub(crate) fn full(bytes: Bytes) -> Self {
        Self {
            kind: Kind::Full {
                body: Full::new(bytes),
            },
        }
    }
}

impl<B> Body for ResponseBody<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.project().kind.project() {
            KindProj::Inner { body } => body.poll_frame(cx).map_err(Into::into),
            KindProj::Full { body } => body.poll_frame(cx).map_err(|never| match never {}),
            KindProj::Detached { frames, done, .. } => {
                if *done {
                    return Poll::Ready(None);
                }
                match frames.poll_recv(cx) {
                    Poll::Pending => Poll::Pending,
                    Poll::Ready(Some(Some(Ok(frame)))) => Poll::Ready(Some(Ok(frame))),
                    Poll::Ready(Some(Some(Err(error)))) => {
                        *done = true;
                        Poll::Ready(Some(Err(error)))
                    }
                    Poll::Ready(Some(None)) => {
                        *done = true;
                        Poll::Ready(None)
                    }
                    Poll::Ready(None) => {
                        *done = true;
                        Poll::Ready(Some(Err("the response body was cut off".into())))
                    }
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Inner { body } => body.is_end_stream(),
            Kind::Full { body } => body.is_end_stream(),
            Kind::Detached { done, .. } => *done,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Inner { body } => body.size_hint(),
            Kind::Full { body } => body.size_hint(),
            Kind::Detached { hint, .. } => *hint,
        }
    }
}
