//! Break pass on the wire handling: a raw TCP server on 127.0.0.1 writes exact bytes (redirects,
//! repeated fields, replies that never end, hang-ups late in the time budget) and the client
//! must answer as its failure table says.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use idempotency_core::{
    Claim, Fingerprint, IdempotencyStore, InProgress, LeaseToken, StoreError, StoreKey,
};
use idempotency_kv_rest::{KvRestConfig, KvRestError, KvRestStore};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;

const TOKEN: &str = "breakkv-secret-token-0123456789abcdef";

/// What the server does with a request it has read whole.
#[derive(Clone)]
enum Act {
    /// Write these bytes and keep the connection.
    Send(Vec<u8>),
    /// Wait, then hang up without a reply.
    SleepThenClose(Duration),
    /// Write these bytes, then stream body bytes until the client goes away.
    Endless(Vec<u8>),
}

/// A server answering every request with `act`; counts requests.
async fn server(act: Act) -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let seen = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&seen);
    tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            let (counter, act) = (Arc::clone(&counter), act.clone());
            tokio::spawn(async move {
                while common::raw::read_request(&mut socket).await {
                    counter.fetch_add(1, Ordering::SeqCst);
                    match &act {
                        Act::Send(bytes) => {
                            if socket.write_all(bytes).await.is_err() {
                                return;
                            }
                        }
                        Act::SleepThenClose(pause) => {
                            tokio::time::sleep(*pause).await;
                            return;
                        }
                        Act::Endless(head) => {
                            if socket.write_all(head).await.is_err() {
                                return;
                            }
                            let block = vec![b'a'; 64 * 1024];
                            while socket.write_all(&block).await.is_ok() {}
                            return;
                        }
                    }
                }
            });
        }
    });
    (url, seen)
}

fn reply(status: &str, extra_headers: &str, body: &[u8]) -> Vec<u8> {
    let mut bytes = format!(
        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\n{extra_headers}content-length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

fn config(url: &str) -> KvRestConfig {
    KvRestConfig::new(url, TOKEN)
        .unwrap()
        .operation_timeout(Duration::from_secs(1))
}

fn in_progress() -> InProgress {
    InProgress {
        token: LeaseToken::generate(),
        fingerprint: Fingerprint::of("request"),
        created_at_ms: 1,
    }
}

fn source(error: &StoreError) -> &KvRestError {
    let StoreError::Backend { source } = error else {
        panic!("not Backend: {error:?}")
    };
    source.downcast_ref::<KvRestError>().expect("a KvRestError")
}

/// A `3xx` from the endpoint is an answer: the command is not sent on to the `Location` (a
/// 307/308 would resend it, a 301/302 would turn it into a body-less GET), and the other
/// server's reply is never taken for the store's (it made an unapplied claim `Claimed`).
#[tokio::test]
async fn a_redirect_is_not_followed_and_is_backend() {
    let (elsewhere, elsewhere_seen) =
        server(Act::Send(reply("200 OK", "", br#"{"result":null}"#))).await;
    for status in [
        "301 Moved Permanently",
        "302 Found",
        "303 See Other",
        "307 Temporary Redirect",
        "308 Permanent Redirect",
    ] {
        let location = format!("location: {elsewhere}/\r\n");
        let (url, seen) = server(Act::Send(reply(status, &location, b""))).await;
        let store = KvRestStore::new(config(&url)).unwrap();
        let answer = store
            .try_claim(
                &StoreKey::from_raw("breakkv:redirect"),
                &in_progress(),
                Duration::from_secs(5),
            )
            .await;
        let error = match answer {
            Err(error) => error,
            Ok(claim) => panic!("{status}: answered {claim:?} from the redirect target"),
        };
        assert!(
            matches!(error, StoreError::Backend { .. }),
            "{status}: {error:?}"
        );
        assert_eq!(seen.load(Ordering::SeqCst), 1, "{status}: sent once");
        assert_eq!(
            elsewhere_seen.load(Ordering::SeqCst),
            0,
            "{status}: nothing sent to the Location"
        );
    }
}

/// `{"result": null, "result": "<record>"}` is no answer the protocol produces: which one did
/// the server mean? (The last one won: a claim read `Claimed`.) Same for two `error` fields.
#[tokio::test]
async fn a_repeated_result_or_error_field_is_backend() {
    for (status, body) in [
        ("200 OK", &br#"{"result":"not a record","result":null}"#[..]),
        ("200 OK", &br#"{"result":null,"result":null}"#[..]),
        (
            "400 Bad Request",
            &br#"{"error":"WRONGTYPE Operation against a key","error":"NOPERM"}"#[..],
        ),
    ] {
        let (url, _) = server(Act::Send(reply(status, "", body))).await;
        let store = KvRestStore::new(config(&url)).unwrap();
        let answer = store
            .try_claim(
                &StoreKey::from_raw("breakkv:repeated"),
                &in_progress(),
                Duration::from_secs(5),
            )
            .await;
        let text = String::from_utf8_lossy(body);
        match answer {
            Err(error @ StoreError::Backend { .. }) => {
                assert!(error.to_string().len() < 4096, "{error}");
            }
            Err(error) => panic!("{text}: {error:?}"),
            Ok(Claim::Claimed) => panic!("{text}: answered Claimed"),
            Ok(other) => panic!("{text}: answered {other:?}"),
        }
    }
}

/// A server that reads each request and hangs up without a reply 0.6 s later: the resends
/// (safe: no answer came) must stay within the 1 s `operation_timeout`, which then reports
/// `Timeout`. They took three times 0.6 s and reported `Unavailable`.
#[tokio::test]
async fn resends_stay_within_the_operation_timeout() {
    let (url, seen) = server(Act::SleepThenClose(Duration::from_millis(600))).await;
    let store = KvRestStore::new(config(&url)).unwrap();
    let error = store
        .get(&StoreKey::from_raw("breakkv:late-hang-up"))
        .await
        .unwrap_err();
    assert!(
        matches!(error, StoreError::Timeout { after, .. } if after == Duration::from_secs(1)),
        "{error:?}"
    );
    assert!(
        seen.load(Ordering::SeqCst) <= 2,
        "{}",
        seen.load(Ordering::SeqCst)
    );
}

/// A reply body larger than `max_reply_size`, announced or streamed without end, is not read
/// into memory: `Backend` (too large) as soon as the limit is passed. It was read until the
/// time budget ran out (gigabytes a second on loopback) and reported `Timeout`.
#[tokio::test]
async fn a_reply_past_the_size_limit_is_not_read() {
    let chunked = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
    let announced =
        b"HTTP/1.1 200 OK\r\ncontent-length: 1099511627776\r\n\r\n{\"result\":\"".to_vec();
    let unannounced = b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\n{\"result\":\"".to_vec();
    for (name, head) in [
        ("announced", announced),
        ("until close", unannounced),
        ("chunked", chunked),
    ] {
        let act = if name == "chunked" {
            // One endless chunk.
            let mut head = head;
            head.extend_from_slice(b"fffffffffff\r\n{\"result\":\"");
            Act::Endless(head)
        } else {
            Act::Endless(head)
        };
        let (url, _) = server(act).await;
        let store = KvRestStore::new(
            config(&url)
                .operation_timeout(Duration::from_secs(2))
                .max_reply_size(1024 * 1024),
        )
        .unwrap();
        let error = store
            .get(&StoreKey::from_raw("breakkv:endless"))
            .await
            .unwrap_err();
        assert!(
            matches!(
                source(&error),
                KvRestError::TooLarge {
                    status: 200,
                    limit: 1_048_576
                }
            ),
            "{name}: {error:?}"
        );
    }
}

/// Error messages quote a bounded excerpt of the reply: a 1 MiB error page or reply is not
/// copied into every error (and log line) whole.
#[tokio::test]
async fn error_messages_quote_a_bounded_excerpt_of_the_reply() {
    let big = "x".repeat(1024 * 1024);
    for (status, body) in [
        ("404 Not Found", format!(r#"{{"message":"{big}"}}"#)),
        ("400 Bad Request", format!(r#"{{"error":"ERR {big}"}}"#)),
        ("200 OK", format!(r#"{{"result":["{big}"]}}"#)),
        ("200 OK", format!(r#"{{"other":"{big}"}}"#)),
    ] {
        let (url, _) = server(Act::Send(reply(status, "", body.as_bytes()))).await;
        let store = KvRestStore::new(config(&url)).unwrap();
        let error = store
            .get(&StoreKey::from_raw("breakkv:big-error"))
            .await
            .unwrap_err();
        let shown = format!("{error} {error:?} {}", source(&error));
        assert!(shown.len() < 16 * 1024, "{status}: {} bytes", shown.len());
        assert!(
            shown.contains("bytes in all"),
            "{status}: {}",
            &shown[..200]
        );
    }
}
