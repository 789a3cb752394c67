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
    // A port where nothing listens, held so no other server takes it while the test runs.
    let down = idempotency_testkit::RefusedPort::new();
    let url = format!("http://{}", down.addr());
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

/// A KV REST endpoint that refuses the token (401, or 403) is configuration, exit 2 (README:
/// "2 bad input or configuration"), one line naming the store and the token variables, for
/// every command; it was exit 1, "store failure", with the command's own wording.
#[test]
fn a_kv_rest_endpoint_that_refuses_the_token_is_exit_2() {
    for status in ["401 Unauthorized", "403 Forbidden"] {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let answer = format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
        let server = std::thread::spawn(move || {
            listener.set_nonblocking(false).unwrap();
            // One connection per command (each run opens the store once); stop when asked.
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { break };
                let mut buf = [0u8; 4096];
                let _ = std::io::Read::read(&mut stream, &mut buf);
                if buf.starts_with(b"STOP") {
                    break;
                }
                let _ = std::io::Write::write_all(&mut stream, answer.as_bytes());
            }
        });
        let env = [
            ("KV_REST_API_URL", url.as_str()),
            ("KV_REST_API_TOKEN", "wrong-token"),
        ];
        for args in [
            &["inspect", "alice", "k-1"][..],
            &["stats"],
            &["purge", "--scope", "alice"],
        ] {
            let run = common::run(&env, args);
            assert_eq!(run.code, 2, "{status} {args:?}: {}", run.all());
            assert!(
                run.stderr.contains("refuses the token")
                    && run.stderr.contains(&status[..3])
                    && run.stderr.contains("KV_REST_API_TOKEN"),
                "{status} {args:?}: {}",
                run.all()
            );
            assert_eq!(
                run.stderr.lines().count(),
                1,
                "{status} {args:?}: {}",
                run.all()
            );
        }
        let mut stop = std::net::TcpStream::connect(url.trim_start_matches("http://")).unwrap();
        std::io::Write::write_all(&mut stop, b"STOP").unwrap();
        server.join().unwrap();
    }
}
