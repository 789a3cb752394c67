//! probe401: "cannot run" (exit 2) for want of credentials needs real evidence, not one refusal.
//! Check (a) stops at its first refused request, so a single 401 (a flaky auth proxy, an
//! endpoint that refuses once) used to make "every answer so far" a 401 and the probe said it
//! could not run while the endpoint worked. Now a refused first answer is confirmed by one more
//! request; only answers that are all the same refusal (401, 403 or 407) are "cannot run"; a
//! mix of 401 and 403 is reported as checks (exit 1); 407 on every request names the proxy.
//! Local axum servers on 127.0.0.1, stopped at the end of each test.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Command, Output};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderName, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use idempotency::memory::MemoryStore;
use idempotency::{AnyStore, Idempotency};
use idempotency_demo::{AppState, app, serve};
use tokio::sync::oneshot;

const BODY: &str = r#"{"name":"Tea","price":450}"#;

/// A server on an ephemeral port, counting the requests it got; dropping it stops it.
struct Server {
    url: String,
    hits: Arc<AtomicUsize>,
    _stop: oneshot::Sender<()>,
}

impl Server {
    async fn start(router: Router, hits: Arc<AtomicUsize>) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!(
            "http://{}/api/products/p401",
            listener.local_addr().unwrap()
        );
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(serve(listener, router, async move {
            let _ = stopped.await;
        }));
        Self {
            url,
            hits,
            _stop: stop,
        }
    }

    /// Answers the `n`th request (0-based) with `status(n)`, a refusal carrying its challenge.
    async fn refusing(status: fn(usize) -> u16) -> Self {
        #[derive(Clone)]
        struct Refuse {
            hits: Arc<AtomicUsize>,
            status: fn(usize) -> u16,
        }
        async fn answer(State(refuse): State<Refuse>) -> Response {
            let n = refuse.hits.fetch_add(1, Ordering::SeqCst);
            refusal(StatusCode::from_u16((refuse.status)(n)).unwrap())
        }
        let hits = Arc::new(AtomicUsize::new(0));
        let router = Router::new().fallback(answer).with_state(Refuse {
            hits: hits.clone(),
            status,
        });
        Self::start(router, hits).await
    }

    /// The demo shop (idempotency layer and all), except that its very first request is answered
    /// 401 before reaching it.
    async fn demo_refusing_once() -> Self {
        async fn first_refused(
            State(hits): State<Arc<AtomicUsize>>,
            request: Request,
            next: Next,
        ) -> Response {
            if hits.fetch_add(1, Ordering::SeqCst) == 0 {
                return refusal(StatusCode::UNAUTHORIZED);
            }
            next.run(request).await
        }
        let engine = Idempotency::builder(AnyStore::from(MemoryStore::new()))
            .ignore_env()
            .build()
            .unwrap();
        let hits = Arc::new(AtomicUsize::new(0));
        let router = app(AppState::new(engine, None))
            .layer(middleware::from_fn_with_state(hits.clone(), first_refused));
        Self::start(router, hits).await
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

fn refusal(status: StatusCode) -> Response {
    let challenge: (HeaderName, &str) = if status == StatusCode::PROXY_AUTHENTICATION_REQUIRED {
        (header::PROXY_AUTHENTICATE, r#"Basic realm="proxy""#)
    } else {
        (header::WWW_AUTHENTICATE, "Bearer")
    };
    (status, [challenge], format!("refused: {status}")).into_response()
}

/// The binary, with credentials the demo accepts (the refusing servers ignore them).
async fn probe(url: &str) -> Output {
    let args: Vec<String> = [
        "--url",
        url,
        "--method",
        "PUT",
        "--body",
        BODY,
        "-H",
        "Authorization: Bearer p401",
        "--concurrency",
        "4",
        "--timeout-ms",
        "5000",
        "--json",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_idempotency-probe"))
            .args(args)
            .output()
            .unwrap()
    })
    .await
    .unwrap()
}

fn show(output: &Output) -> String {
    format!(
        "code {:?}\nstdout: {}\nstderr: {}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn check<'a>(report: &'a serde_json::Value, id: &str) -> &'a serde_json::Value {
    report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == id)
        .unwrap_or_else(|| panic!("no check {id} in {report}"))
}

/// One 401, then an endpoint that works: the checks run and are reported (exit 1, since (a)
/// saw the 401), never "cannot run".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_401_then_answers_is_not_cannot_run() {
    let server = Server::demo_refusing_once().await;
    let output = probe(&server.url).await;
    assert_eq!(output.status.code(), Some(1), "{}", show(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains("cannot run"), "{}", show(&output));
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["passed"], false);
    assert_eq!(report["checks"].as_array().unwrap().len(), 5, "{report}");
    let a = check(&report, "a");
    assert_eq!(a["passed"], false, "{report}");
    assert!(
        a["detail"].as_str().unwrap().contains("answered 401"),
        "{report}"
    );
    // The endpoint behind the one refusal was probed: a new key runs, a missing key gets 400,
    // concurrent duplicates run once. ((d) reuses (a)'s key, which the 401 kept from the
    // endpoint, so it is not asserted here.)
    for id in ["b", "c", "e"] {
        assert_eq!(check(&report, id)["passed"], true, "{id}: {report}");
    }
}

/// 401 and 403 alternating: all refusals, but not one status. Reported as checks (exit 1),
/// every one failing, the details naming what was answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_401_and_403_is_reported_as_checks() {
    let server = Server::refusing(|n| if n % 2 == 0 { 401 } else { 403 }).await;
    let output = probe(&server.url).await;
    assert_eq!(output.status.code(), Some(1), "{}", show(&output));
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let checks = report["checks"].as_array().unwrap();
    assert_eq!(checks.len(), 5, "{report}");
    assert!(checks.iter().all(|c| c["passed"] == false), "{report}");
    let details: String = checks
        .iter()
        .map(|c| c["detail"].as_str().unwrap())
        .collect::<Vec<_>>()
        .join("\n");
    assert!(details.contains("401"), "{details}");
    assert!(details.contains("403"), "{details}");

    // 403 first, then 401s: the confirming request disagrees, so the same verdict.
    let server = Server::refusing(|n| if n == 0 { 403 } else { 401 }).await;
    let output = probe(&server.url).await;
    assert_eq!(output.status.code(), Some(1), "{}", show(&output));
}

/// 407 on every request: the requests never reach the endpoint. Cannot run (exit 2), the
/// message naming the proxy, no table; decided after (a)'s request and one confirming request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_407_is_cannot_run() {
    let server = Server::refusing(|_| 407).await;
    let output = probe(&server.url).await;
    assert_eq!(output.status.code(), Some(2), "{}", show(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("cannot run: every request got 407 Proxy Authentication Required"),
        "{stderr}"
    );
    assert!(stderr.contains("proxy"), "{stderr}");
    assert!(stderr.contains("(2 sent)"), "{stderr}");
    assert!(output.stdout.is_empty(), "{}", show(&output));
    assert_eq!(server.hits(), 2);
}

/// Every request 401 (or every one 403): still "cannot run", exit 2, after exactly two
/// requests ((a)'s first and the confirming one), no table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_401_or_403_is_cannot_run_after_one_confirming_request() {
    for (status, text) in [(401, "401 Unauthorized"), (403, "403 Forbidden")] {
        let server = Server::refusing(match status {
            401 => |_| 401,
            _ => |_| 403,
        })
        .await;
        let output = probe(&server.url).await;
        assert_eq!(output.status.code(), Some(2), "{}", show(&output));
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains(&format!("cannot run: every request got {text}")),
            "{stderr}"
        );
        assert!(stderr.contains("(2 sent)"), "{stderr}");
        assert!(stderr.contains("-H"), "{stderr}");
        assert!(output.stdout.is_empty(), "{}", show(&output));
        assert_eq!(server.hits(), 2, "{status}");
    }
}
