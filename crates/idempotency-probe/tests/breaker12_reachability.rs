//! breaker12: servers that can be connected to but misbehave are check failures (exit 1), never
//! "unreachable" (exit 2): one that accepts then closes, one that answers only the first request
//! and then goes away, one that answers slower than `--timeout-ms`, one whose port accepts
//! TCP (kernel backlog) but never reads.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read as _, Write as _};
use std::net::TcpListener;
use std::process::{Command, Output};
use std::time::Duration;

use idempotency_testkit::{RefusedPort, retry_while_in_use};

fn probe(port: u16, timeout_ms: &str) -> Output {
    Command::new(env!("CARGO_BIN_EXE_idempotency-probe"))
        .args([
            "--url",
            &format!("http://127.0.0.1:{port}/x"),
            "--timeout-ms",
            timeout_ms,
            "--concurrency",
            "2",
        ])
        .output()
        .expect("run the probe")
}

fn show(output: &Output) -> String {
    format!(
        "code {:?}\nstdout: {}\nstderr: {}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Read one request's head (and ignore any body: the answer closes the connection).
fn read_head(stream: &mut std::net::TcpStream) {
    let mut buf = [0u8; 4096];
    let mut seen = Vec::new();
    stream
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => seen.extend_from_slice(&buf[..n]),
        }
    }
}

#[test]
fn accept_then_close_is_a_check_failure_not_unreachable() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            drop(stream);
        }
    });
    let output = probe(port, "2000");
    assert_eq!(output.status.code(), Some(1), "{}", show(&output));
}

#[test]
fn a_server_that_answers_once_then_goes_away_is_a_check_failure() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (reserved_tx, reserved_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        if let Ok((mut stream, _)) = listener.accept() {
            read_head(&mut stream);
            let _ = stream.write_all(
                b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
            );
        }
        // Gone: every later connection is refused. The port stays reserved until the probe
        // is done, so no other test's server takes it and answers instead. The reservation
        // retries while the port is busy: another test of this binary spawning its probe at
        // the listener's drop holds a copy of the listener until that child execs
        // (`reserve_after_stop` alone then failed with `AddrInUse`, and the port was left
        // free).
        drop(listener);
        let _ = reserved_tx.send(retry_while_in_use(|| RefusedPort::reserve_after_stop(port)));
    });
    let output = probe(port, "2000");
    assert_eq!(output.status.code(), Some(1), "{}", show(&output));
    // The channel held the reservation until here. Not a join: a probe that never connected
    // would leave the thread waiting in accept (the exit code above fails the test first).
    let reserved = reserved_rx
        .recv_timeout(Duration::from_secs(10))
        .expect("the server thread reserves its port once it answered");
    reserved.expect("the stopped server's port reserved");
}

#[test]
fn a_server_slower_than_the_timeout_is_a_check_failure() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming().flatten() {
            held.push(stream); // read nothing, answer nothing
        }
    });
    let output = probe(port, "300");
    assert_eq!(output.status.code(), Some(1), "{}", show(&output));
}

#[test]
fn a_port_that_never_accepts_is_a_check_failure() {
    // Bound and listening, accept() never called: the kernel completes the handshakes.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let output = probe(port, "300");
    drop(listener);
    assert_eq!(output.status.code(), Some(1), "{}", show(&output));
}
