//! breaker11 (issue 15): the runtime handle is taken lazily (first poll that leaves the
//! recording unfinished, else at drop). A pending handler whose request future is dropped from
//! another thread, another runtime, a current_thread runtime, a LocalSet task, a timeout
//! outside the layer: the handler runs once and the retry gets the replay. Polled outside any
//! runtime: refused with the `no_runtime` problem before the handler runs.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use idempotency_core::Idempotency;
use idempotency_http::IdempotencyLayer;
use idempotency_memory::MemoryStore;
use tokio::sync::Semaphore;
use tower::{Layer, ServiceExt};

type Req = Request<Full<Bytes>>;
type Inner = tower::util::BoxCloneService<Req, Response<Full<Bytes>>, Infallible>;
type Svc = idempotency_http::IdempotencyService<Inner, MemoryStore, idempotency_http::GlobalScope>;

struct Fixture {
    runs: Arc<AtomicUsize>,
    gate: Arc<Semaphore>,
    service: Svc,
}

fn fixture() -> Fixture {
    let engine = Idempotency::builder(MemoryStore::new())
        .ignore_env()
        .build()
        .unwrap();
    let runs = Arc::new(AtomicUsize::new(0));
    let gate = Arc::new(Semaphore::new(0));
    let (r, g) = (Arc::clone(&runs), Arc::clone(&gate));
    let inner = Inner::new(tower::service_fn(move |_req: Req| {
        let (r, g) = (Arc::clone(&r), Arc::clone(&g));
        async move {
            let n = r.fetch_add(1, Ordering::SeqCst) + 1;
            drop(g.acquire().await.unwrap());
            Ok::<_, Infallible>(
                Response::builder()
                    .status(201)
                    .header("content-type", "text/plain")
                    .body(Full::new(Bytes::from(format!("run {n}"))))
                    .unwrap(),
            )
        }
    }));
    let service = IdempotencyLayer::builder(engine)
        .global_scope()
        .build()
        .layer(inner);
    Fixture {
        runs,
        gate,
        service,
    }
}

fn post(key: &str) -> Req {
    Request::post("/orders")
        .header("content-type", "application/json")
        .header("idempotency-key", key)
        .body(Full::new(Bytes::from_static(b"{}")))
        .unwrap()
}

/// Retries until the key's recording is there: it must be a replay of run 1, and the handler
/// must have run exactly once.
async fn assert_replay_of_first_run(f: &Fixture, key: &str) {
    for _ in 0..500 {
        let retry = f.service.clone().oneshot(post(key)).await.unwrap();
        if retry.status() == StatusCode::CONFLICT {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        }
        let replayed = retry.headers().get("idempotent-replayed").is_some();
        let status = retry.status();
        let body = retry.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(status, StatusCode::CREATED, "{key}: {body:?}");
        assert!(replayed, "{key}: not a replay: {body:?}");
        assert_eq!(body, "run 1", "{key}");
        assert_eq!(f.runs.load(Ordering::SeqCst), 1, "{key}: handler runs");
        return;
    }
    panic!("{key}: still in progress");
}

type Pending = std::pin::Pin<
    Box<
        dyn std::future::Future<
                Output = Result<Response<idempotency_http::ResponseBody<Full<Bytes>>>, Infallible>,
            > + Send,
    >,
>;

/// The request future, polled once (the handler entered and waits on the gate).
async fn started(f: &Fixture, key: &str) -> Pending {
    started_with(f.service.clone(), Arc::clone(&f.runs), key.to_owned()).await
}

async fn started_with(service: Svc, runs: Arc<AtomicUsize>, key: String) -> Pending {
    let mut fut: Pending = Box::pin(service.oneshot(post(&key)));
    assert!(futures::poll!(&mut fut).is_pending());
    assert_eq!(runs.load(Ordering::SeqCst), 1, "handler entered");
    fut
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn breaker11_dropped_on_a_plain_thread() {
    let f = fixture();
    let fut = started(&f, "plain-thread").await;
    std::thread::spawn(move || drop(fut)).join().unwrap();
    f.gate.add_permits(1000);
    assert_replay_of_first_run(&f, "plain-thread").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn breaker11_polled_in_a_task_dropped_on_a_plain_thread() {
    let f = fixture();
    let (service, runs) = (f.service.clone(), Arc::clone(&f.runs));
    // Polled from a task (the `task::try_id` path), not the runtime's `block_on`.
    let fut = tokio::spawn(started_with(service, runs, "task".to_owned()))
        .await
        .unwrap();
    std::thread::spawn(move || drop(fut)).join().unwrap();
    f.gate.add_permits(1000);
    assert_replay_of_first_run(&f, "task").await;
}

#[test]
fn breaker11_current_thread_runtime_dropped_inside_another_runtime() {
    let a = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let b = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let f = fixture();
    let fut = a.block_on(started(&f, "other-rt"));
    // Dropped while runtime `b` is current: the rest must still run on `a`, which polled it.
    b.block_on(async move { drop(fut) });
    f.gate.add_permits(1000);
    a.block_on(assert_replay_of_first_run(&f, "other-rt"));
}

#[test]
fn breaker11_local_set_task() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let f = std::rc::Rc::new(fixture());
    let local = tokio::task::LocalSet::new();
    let g = std::rc::Rc::clone(&f);
    local.block_on(&rt, async move {
        let h = std::rc::Rc::clone(&g);
        tokio::task::spawn_local(async move {
            let fut = started(&h, "local").await;
            drop(fut);
        })
        .await
        .unwrap();
        g.gate.add_permits(1000);
        assert_replay_of_first_run(&g, "local").await;
    });
    assert_eq!(f.runs.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn breaker11_timeout_outside_the_layer() {
    let f = fixture();
    let timed = tokio::time::timeout(
        Duration::from_millis(20),
        f.service.clone().oneshot(post("timeout")),
    )
    .await;
    assert!(timed.is_err(), "the handler waits on the gate");
    f.gate.add_permits(1000);
    assert_replay_of_first_run(&f, "timeout").await;
}

#[test]
fn breaker11_outside_any_runtime_is_refused_before_the_handler() {
    let f = fixture();
    f.gate.add_permits(1000);
    let response = futures::executor::block_on(f.service.clone().oneshot(post("no-rt"))).unwrap();
    assert_ne!(response.status(), StatusCode::CREATED);
    assert_eq!(f.runs.load(Ordering::SeqCst), 0, "handler not run");
    // The claim was released: a retry inside a runtime runs the handler (first run).
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let retry = f.service.clone().oneshot(post("no-rt")).await.unwrap();
        assert_eq!(retry.status(), StatusCode::CREATED);
        assert!(retry.headers().get("idempotent-replayed").is_none());
    });
    assert_eq!(f.runs.load(Ordering::SeqCst), 1);
}

/// Started in a runtime that is then shut down; dropped on a plain thread. The recording is
/// lost (documented: a shut-down runtime drops the task), but the key must not be left
/// claimed for good: a retry in a new runtime is answered (run or conflict until lease end).
#[test]
fn breaker11_runtime_shut_down_mid_request() {
    let a = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let f = fixture();
    let fut = a.block_on(started(&f, "shutdown"));
    a.shutdown_timeout(Duration::from_secs(1));
    std::thread::spawn(move || drop(fut)).join().unwrap();
    f.gate.add_permits(1000);
    let b = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let status = b.block_on(async {
        let retry = f.service.clone().oneshot(post("shutdown")).await.unwrap();
        retry.status()
    });
    eprintln!(
        "after shutdown: retry {status}, runs {}",
        f.runs.load(Ordering::SeqCst)
    );
    assert!(status == StatusCode::CREATED || status == StatusCode::CONFLICT);
}

/// Started in a runtime (the handler waits), then finished by `futures::executor::block_on`
/// on a thread in no runtime: the answer comes, the handler ran once, and a retry replays it.
#[test]
fn breaker11_finished_by_a_foreign_executor_on_a_plain_thread() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let f = fixture();
    let fut = rt.block_on(started(&f, "foreign"));
    f.gate.add_permits(1000);
    let answer = std::thread::spawn(move || {
        let response = futures::executor::block_on(fut).unwrap();
        let status = response.status();
        let body = futures::executor::block_on(response.into_body().collect())
            .unwrap()
            .to_bytes();
        (status, body)
    })
    .join();
    let (status, body) = answer.expect("no panic outside the runtime");
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(body, "run 1");
    rt.block_on(assert_replay_of_first_run(&f, "foreign"));
}

/// Dropped from inside a `futures::executor::block_on` nested in another runtime's
/// `spawn_blocking` thread.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn breaker11_dropped_in_a_blocking_thread() {
    let f = fixture();
    let fut = started(&f, "blocking").await;
    tokio::task::spawn_blocking(move || futures::executor::block_on(async move { drop(fut) }))
        .await
        .unwrap();
    f.gate.add_permits(1000);
    assert_replay_of_first_run(&f, "blocking").await;
}

/// A `LocalSet` driven by `futures::executor::block_on` on a thread in no runtime: its tasks
/// have tokio task ids (`task::try_id()` is `Some`) but no runtime is current. The request
/// must be refused with `no_runtime` before the handler runs (as before the handle was taken
/// lazily); otherwise a pending handler is cancelled when the request is dropped, and the
/// retry runs it a second time.
#[test]
fn breaker11_local_set_outside_any_runtime_is_refused_before_the_handler() {
    let f = std::rc::Rc::new(fixture());
    let g = std::rc::Rc::clone(&f);
    let local = tokio::task::LocalSet::new();
    let polled = futures::executor::block_on(local.run_until(async move {
        tokio::task::spawn_local(async move {
            assert!(tokio::runtime::Handle::try_current().is_err());
            let mut fut: Pending = Box::pin(g.service.clone().oneshot(post("local-no-rt")));
            let first = futures::poll!(&mut fut);
            let ran = g.runs.load(Ordering::SeqCst);
            // The client goes away (pending handler, if it ran).
            drop(fut);
            (first.is_ready(), ran)
        })
        .await
        .unwrap()
    }));
    let (answered, ran) = polled;
    assert_eq!(ran, 0, "the handler ran outside any runtime");
    assert!(answered, "refused at once with the no_runtime problem");
    // The claim was released: in a runtime, the request runs (first execution).
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    f.gate.add_permits(1000);
    rt.block_on(async {
        let retry = f
            .service
            .clone()
            .oneshot(post("local-no-rt"))
            .await
            .unwrap();
        assert_eq!(retry.status(), StatusCode::CREATED);
    });
    assert_eq!(f.runs.load(Ordering::SeqCst), 1);
}
