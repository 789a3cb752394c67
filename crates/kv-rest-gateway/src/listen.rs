//! Accepting HTTP/1 connections with bounds: a connection limit, a header read timeout and an
//! idle keep-alive timeout (the request body timeout is applied where bodies are read).
//!
//! - **Connection limit**: a semaphore permit is taken *before* `accept`, so at most
//!   `max_connections` connections are open at once; further clients wait in the kernel's
//!   listen backlog until one closes (nothing is accepted that cannot be served, and no file
//!   descriptor is spent on them).
//! - **Header read timeout**: hyper's `header_read_timeout` (with a Tokio timer). hyper starts it
//!   as soon as a connection can read a request head, so it also bounds the wait for the next
//!   request on a kept-alive connection; a slowloris client sending a header byte a second is
//!   cut off when it expires.
//! - **Idle timeout**: a kept-alive connection with no request in flight for this long is shut
//!   down gracefully (a request in flight is never cut).

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::Request;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio::time::Instant;
use tower::ServiceExt as _;

/// Default [`ServerLimits::header_read_timeout`]: 10 s.
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Default [`ServerLimits::body_read_timeout`]: 30 s.
pub const DEFAULT_BODY_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Default [`ServerLimits::idle_timeout`]: 5 s.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(5);
/// Default [`ServerLimits::max_connections`]: 1024.
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;

/// Timeouts and limits of the HTTP server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServerLimits {
    /// Time a client has to send a complete request head (request line and headers), counted
    /// from when the connection can read one — also between requests on a kept-alive
    /// connection. On expiry the connection is closed.
    pub header_read_timeout: Duration,
    /// Time a client has to send a complete request body, counted from when the handler starts
    /// reading it. On expiry: HTTP 408 and the connection is closed.
    pub body_read_timeout: Duration,
    /// A kept-alive connection with no request in flight for this long is closed.
    pub idle_timeout: Duration,
    /// Maximum connections open at once; more wait in the listen backlog.
    pub max_connections: usize,
}

impl Default for ServerLimits {
    fn default() -> Self {
        Self {
            header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
            body_read_timeout: DEFAULT_BODY_READ_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            max_connections: DEFAULT_MAX_CONNECTIONS,
        }
    }
}

/// Counts of connections, for tests and metrics.
#[derive(Debug, Default)]
pub(crate) struct ConnectionCounter {
    open: AtomicUsize,
    peak: AtomicUsize,
}

impl ConnectionCounter {
    fn opened(&self) {
        let open = self.open.fetch_add(1, Ordering::SeqCst) + 1;
        self.peak.fetch_max(open, Ordering::SeqCst);
        metrics::gauge!("kv_rest_gateway_connections_open").set(open as f64);
    }

    fn closed(&self) {
        let open = self.open.fetch_sub(1, Ordering::SeqCst).saturating_sub(1);
        metrics::gauge!("kv_rest_gateway_connections_open").set(open as f64);
    }

    /// Connections open now.
    pub(crate) fn open(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }

    /// The most connections that were open at once.
    pub(crate) fn peak(&self) -> usize {
        self.peak.load(Ordering::SeqCst)
    }
}

/// Per-connection activity: requests in flight and when the last one ended.
struct Activity {
    in_flight: AtomicUsize,
    last_end: std::sync::Mutex<Instant>,
}

impl Activity {
    fn idle_since(&self) -> Option<Instant> {
        if self.in_flight.load(Ordering::SeqCst) > 0 {
            return None;
        }
        Some(
            *self
                .last_end
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }
}

/// Decrements the in-flight count when a request's handling ends (also when it is dropped).
struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        *self
            .0
            .last_end
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Instant::now();
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Serves `router` on `listener` with `limits` until `shutdown` completes, then lets the
/// connections finish their requests in flight and returns.
pub(crate) async fn serve_with_limits(
    listener: TcpListener,
    router: Router,
    limits: ServerLimits,
    counter: Arc<ConnectionCounter>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let permits = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut shutdown = std::pin::pin!(shutdown);
    let mut warned_full = false;
    loop {
        let permit = tokio::select! {
            () = &mut shutdown => break,
            permit = permits.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break, // the semaphore is never closed
            },
        };
        if permits.available_permits() == 0 && !warned_full {
            tracing::warn!(
                max_connections = limits.max_connections,
                "connection limit reached: new clients wait in the listen backlog"
            );
            warned_full = true;
        }
        let (stream, _peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let router = router.clone();
        let counter = counter.clone();
        let mut stop = stop_rx.clone();
        counter.opened();
        tokio::spawn(async move {
            serve_connection(stream, router, limits, &mut stop).await;
            counter.closed();
            drop(permit);
        });
        if permits.available_permits() > 0 {
            warned_full = false;
        }
    }
    drop(listener);
    let _ = stop_tx.send(true);
    // Wait for the connections to finish (each closes after its request in flight).
    let all = u32::try_from(limits.max_connections.max(1)).unwrap_or(u32::MAX);
    let _ = permits.acquire_many(all).await;
    Ok(())
}

async fn serve_connection(
    stream: tokio::net::TcpStream,
    router: Router,
    limits: ServerLimits,
    stop: &mut watch::Receiver<bool>,
) {
    let activity = Arc::new(Activity {
        in_flight: AtomicUsize::new(0),
        last_end: std::sync::Mutex::new(Instant::now()),
    });
    let service_activity = activity.clone();
    let service = hyper::service::service_fn(move |request: Request<Incoming>| {
        service_activity.in_flight.fetch_add(1, Ordering::SeqCst);
        let guard = InFlight(service_activity.clone());
        let router = router.clone();
        async move {
            let response = router
                .oneshot(request.map(axum::body::Body::new))
                .await
                .unwrap_or_else(|never: Infallible| match never {});
            drop(guard);
            Ok::<_, Infallible>(response)
        }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .keep_alive(true);
    let connection = builder.serve_connection(TokioIo::new(stream), service);
    let mut connection = std::pin::pin!(connection);
    let mut shutting_down = false;
    loop {
        let idle_deadline = activity
            .idle_since()
            .map(|since| since + limits.idle_timeout);
        tokio::select! {
            result = connection.as_mut() => {
                if let Err(error) = result {
                    tracing::debug!(%error, "connection ended with an error");
                }
                return;
            }
            () = sleep_until_some(idle_deadline), if !shutting_down => {
                if activity
                    .idle_since()
                    .is_some_and(|since| since + limits.idle_timeout <= Instant::now())
                {
                    tracing::debug!("closing an idle connection");
                    connection.as_mut().graceful_shutdown();
                    shutting_down = true;
                }
            }
            changed = stop.changed(), if !shutting_down => {
                if changed.is_err() || *stop.borrow() {
                    connection.as_mut().graceful_shutdown();
                    shutting_down = true;
                }
            }
            // While a request is in flight there is no idle deadline: re-check now and then.
            () = tokio::time::sleep(limits.idle_timeout), if idle_deadline.is_none() && !shutting_down => {}
        }
    }
}

async fn sleep_until_some(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}
