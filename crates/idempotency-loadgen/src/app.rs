//! The app every HTTP row serves — a trivial `POST /orders` handler — and how it runs in a
//! process of its own, so its CPU time and context switches can be read from `/proc`. Shared
//! with the peers binary (`bench/peers`) by `#[path]`, so the peer wraps the very same handler.
//!
//! The child process protocol, on its standard streams:
//! - stdout: `listening <addr>` once the socket is bound, then `entered` each time a held
//!   request (header [`HOLD_HEADER`]) is inside the handler;
//! - stdin: `unhold` lets the held request finish; end of input stops the server (graceful
//!   shutdown), then the process exits.

use std::future::Future;
use std::io::{BufRead as _, Write as _};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context as _, Result};
use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::post;
use axum::serve::ListenerExt as _;
use bytes::Bytes;
use tokio::sync::{Notify, oneshot};

/// A request with this header parks in the handler until `unhold`: it keeps its key in
/// progress for the `conflict` scenario.
pub(crate) const HOLD_HEADER: &str = "x-bench-hold";

/// The handler's answer (status 201).
pub(crate) const ANSWER: &str = r#"{"id":12345,"status":"created"}"#;

/// What the handler shares with the control loop.
#[derive(Clone, Default)]
pub(crate) struct AppState {
    /// Wakes the held request.
    pub(crate) hold: Arc<Notify>,
    /// Signalled by a held request once inside the handler (so any claim is in place).
    pub(crate) entered: Arc<Notify>,
    /// Held requests that entered and were not reported yet (a `Notify` keeps one permit, so
    /// entries close together would otherwise be reported as one).
    pub(crate) unreported: Arc<AtomicUsize>,
}

async fn create_order(
    State(state): State<AppState>,
    headers: HeaderMap,
    _body: Bytes,
) -> impl IntoResponse {
    if headers.contains_key(HOLD_HEADER) {
        // Registered as a waiter before anyone can know we entered, so an `unhold` that follows
        // the report cannot miss us (`unhold` wakes the waiters of the moment and leaves no
        // permit behind: a spare permit would let the next held request straight through, its
        // key completed instead of in progress).
        let release = state.hold.notified();
        tokio::pin!(release);
        release.as_mut().enable();
        state.unreported.fetch_add(1, Ordering::SeqCst);
        state.entered.notify_one();
        // Bounded, so a lost wake-up cannot stall shutdown for long.
        let _ = tokio::time::timeout(Duration::from_secs(30), release).await;
    }
    (
        StatusCode::CREATED,
        [(header::CONTENT_TYPE, "application/json")],
        ANSWER,
    )
}

/// The bare router: `POST /orders`, no middleware.
pub(crate) fn router(state: AppState) -> Router {
    Router::new()
        .route("/orders", post(create_order))
        .with_state(state)
}

/// Serve the router `make` builds on 127.0.0.1 (a free port) from a two-thread runtime, under
/// the protocol of this module; returns when stdin ends and the server has stopped.
///
/// # Errors
/// When the runtime cannot start, `make` fails, the port cannot be bound or the server fails.
pub(crate) fn serve_child<F, Fut>(make: F) -> Result<()>
where
    F: FnOnce(AppState) -> Fut,
    Fut: Future<Output = Result<Router>>,
{
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let state = AppState::default();
        let router = make(state.clone()).await?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        say(&format!("listening {addr}"))?;
        let entered = Arc::clone(&state.entered);
        let unreported = Arc::clone(&state.unreported);
        tokio::spawn(async move {
            loop {
                entered.notified().await;
                // Counted before the notification: none is lost, one line per request.
                for _ in 0..unreported.swap(0, Ordering::SeqCst) {
                    if say("entered").is_err() {
                        return;
                    }
                }
            }
        });
        let (stop, stopped) = oneshot::channel::<()>();
        let hold = Arc::clone(&state.hold);
        std::thread::Builder::new()
            .name("bench-control".into())
            .spawn(move || {
                for line in std::io::stdin().lock().lines() {
                    match line {
                        Ok(line) if line.trim() == "unhold" => hold.notify_waiters(),
                        Ok(_) => {}
                        Err(_) => break,
                    }
                }
                // End of input: the load generator is done with this server.
                hold.notify_waiters();
                let _ = stop.send(());
            })?;
        let listener = listener.tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
        axum::serve(listener, router)
            .with_graceful_shutdown(async move {
                let _ = stopped.await;
            })
            .await
            .context("http server")
    })
}

/// One protocol line on stdout, flushed.
fn say(line: &str) -> Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}")?;
    out.flush()?;
    Ok(())
}
