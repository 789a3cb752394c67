//! newuser5 (new-user pass): the README says a store server that does not answer is
//! "`cannot reach the store …` (exit 1), and only that line". On the KV REST store (which keeps
//! no connection, so opening it asks nothing of the server) every command said something else:
//! `inspect` four lines from `store error: store unreachable` down to the OS error, `stats` and
//! `purge` `KV REST API: error sending request` (no store named), `doctor` its `store: …` line
//! first, then that error.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

#[test]
fn a_kv_rest_endpoint_that_does_not_answer_is_cannot_reach_the_store() {
    // A port that was free a moment ago: nothing listens there.
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let url = format!("http://127.0.0.1:{port}");
    let env = [
        ("KV_REST_API_URL", url.as_str()),
        ("KV_REST_API_TOKEN", "some-token"),
    ];
    let expected = format!(
        "error: cannot reach the store kv-rest at {url} (from KV_REST_API_URL): is it running, \
         and is the URL right?\n"
    );
    for args in [
        &["inspect", "alice", "k-1"][..],
        &["stats"],
        &["doctor"],
        &["purge", "--scope", "alice"],
    ] {
        let run = common::run(&env, args);
        assert_eq!(run.code, 1, "{args:?}: {}", run.all());
        assert_eq!(run.stderr, expected, "{args:?}: {}", run.all());
        assert!(run.stdout.is_empty(), "{args:?}: {}", run.all());
    }
}
