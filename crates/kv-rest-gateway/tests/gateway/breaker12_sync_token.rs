//! breaker12: `upstash-sync-token` only on answers to authenticated requests read in full,
//! on every route: pipeline, multi-exec (with and without the trailing slash), the path form
//! (GET, HEAD, POST, PUT), a token given as `?_token=`, and `/~health`'s POST (a path command).

use reqwest::Method;
use serde_json::json;

use crate::common::{RO_TOKEN, TOKEN, TestGateway};

const HEADER: &str = "upstash-sync-token";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_marks_authenticated_answers_only() {
    let gw = TestGateway::start().await;
    let batch = serde_json::to_vec(&json!([["SET", "k", "v"], ["GET", "k"]])).unwrap();
    let ct = [("content-type", "application/json")];
    // Authenticated and read in full: a token, results and errors alike.
    for path in ["/pipeline", "/pipeline/", "/multi-exec", "/multi-exec/"] {
        let ok = gw
            .request(Method::POST, path, Some(TOKEN), &ct, Some(batch.clone()))
            .await;
        assert_eq!(ok.status, 200, "{path}: {ok:?}");
        assert!(ok.headers.contains_key(HEADER), "{path}: {ok:?}");
        let bad = gw
            .request(Method::POST, path, Some(TOKEN), &ct, Some(b"[".to_vec()))
            .await;
        assert_eq!(bad.status, 400, "{path}: {bad:?}");
        assert!(bad.headers.contains_key(HEADER), "{path}: {bad:?}");
        // Not authenticated, wrong token, refused format, wrong method: none.
        for early in [
            gw.request(Method::POST, path, None, &ct, Some(batch.clone()))
                .await,
            gw.request(Method::POST, path, Some("wrong"), &ct, Some(batch.clone()))
                .await,
            gw.request(
                Method::POST,
                path,
                Some(TOKEN),
                &[("upstash-response-format", "resp2")],
                Some(batch.clone()),
            )
            .await,
            gw.request(Method::GET, path, Some(TOKEN), &[], None).await,
            gw.request(Method::PUT, path, Some(TOKEN), &[], None).await,
        ] {
            assert!((400..500).contains(&early.status), "{path}: {early:?}");
            assert!(!early.headers.contains_key(HEADER), "{path}: {early:?}");
        }
    }
    // The path form, every method it takes, and the query-string token.
    for method in [Method::GET, Method::HEAD, Method::POST, Method::PUT] {
        let ok = gw
            .request(method.clone(), "/get/k", Some(TOKEN), &[], None)
            .await;
        assert_eq!(ok.status, 200, "{method}: {ok:?}");
        assert!(ok.headers.contains_key(HEADER), "{method}: {ok:?}");
        let none = gw.request(method.clone(), "/get/k", None, &[], None).await;
        assert_eq!(none.status, 401, "{method}: {none:?}");
        assert!(!none.headers.contains_key(HEADER), "{method}: {none:?}");
    }
    let query = gw
        .request(
            Method::GET,
            &format!("/get/k?_token={TOKEN}"),
            None,
            &[],
            None,
        )
        .await;
    assert_eq!(query.status, 200, "{query:?}");
    assert!(query.headers.contains_key(HEADER), "{query:?}");
    // A read-only token refused a write is an authenticated answer (an error): a token.
    let ro = gw
        .request(Method::POST, "/set/k/v", Some(RO_TOKEN), &[], None)
        .await;
    assert!(ro.status >= 400, "{ro:?}");
    assert!(ro.headers.contains_key(HEADER), "{ro:?}");
    // `/~health`: GET and HEAD unauthenticated (none); POST is a path command (401, none).
    for method in [Method::GET, Method::HEAD] {
        let health = gw
            .request(method.clone(), "/~health", None, &[], None)
            .await;
        assert_eq!(health.status, 200, "{method}: {health:?}");
        assert!(!health.headers.contains_key(HEADER), "{method}: {health:?}");
    }
    let health_post = gw.request(Method::POST, "/~health", None, &[], None).await;
    assert_eq!(health_post.status, 401, "{health_post:?}");
    assert!(!health_post.headers.contains_key(HEADER), "{health_post:?}");
    gw.shutdown().await;
}
