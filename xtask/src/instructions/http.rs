//! The HTTP rows of `cargo xtask instructions`: one of the load generator's apps
//! (`idempotency-loadgen --serve bare|floor|memory`, the protocol of its `app` module) runs
//! under `valgrind --tool=callgrind` on 127.0.0.1, and a plain HTTP/1.1 client in this process,
//! outside valgrind, sends it exactly the requests of the scenario over keep-alive connections.
//! Closing the app's standard input stops it gracefully, so callgrind writes its output.

use std::fs::File;
use std::io::{BufRead, BufReader, Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::time::{Duration, Instant};

use super::callgrind::{self, Counts};

/// The function whose inclusive cost is the SHA-256 of a request.
pub(crate) const SHA256: &str = "sha2::sha256::compress256";
/// The request body every request carries (as the load generator's).
const BODY: &str = r#"{"sku":"widget","qty":1}"#;
/// The header of a request the app parks in its handler until `unhold`.
const HOLD_HEADER: &str = "x-bench-hold";
/// The header our layer and the floor set on a replayed answer.
const REPLAYED_HEADER: &str = "idempotent-replayed";
/// How long the app under valgrind may take to start, or to stop and write its output.
const PATIENCE: Duration = Duration::from_secs(120);
/// How long one answer may take under valgrind.
const READ_TIMEOUT: Duration = Duration::from_secs(60);

/// The app behind an `http-*` backend: its `--serve` name, and whether it keeps a record per
/// key (then a replay is answered from it and a key in progress is a 409).
pub(crate) fn app(backend: &str) -> Option<(&'static str, bool)> {
    match backend {
        "http-bare" => Some(("bare", false)),
        "http-floor" => Some(("floor", true)),
        "http-memory" => Some(("memory", true)),
        _ => None,
    }
}

/// What one run sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Load<'a> {
    pub(crate) scenario: &'a str,
    /// Requests counted (the preparing request of `replay` and the held one of `conflict` come
    /// on top, in every run alike).
    pub(crate) requests: u64,
    /// Keep-alive connections, each sending its share of the requests one after the other.
    pub(crate) connections: u64,
    /// Whether the app keeps records (see [`app`]).
    pub(crate) stores: bool,
}

/// One run: `loadgen --serve <app>` under callgrind (output in `file`, valgrind's messages in
/// `file` + `.log`), `load` sent to it, the app stopped; the counts of its output.
pub(crate) fn count(
    loadgen: &Path,
    app: &str,
    load: &Load<'_>,
    file: &Path,
) -> Result<Counts, String> {
    let log_path = file.with_extension("log");
    let log = File::create(&log_path).map_err(|e| format!("{}: {e}", log_path.display()))?;
    let mut child = Command::new("valgrind")
        .arg("--tool=callgrind")
        .arg(format!("--callgrind-out-file={}", file.display()))
        .arg(loadgen)
        .args(["--serve", app])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .map_err(|e| format!("could not start valgrind: {e}"))?;
    let failed = |what: String| {
        let log = std::fs::read_to_string(&log_path).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(20).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        format!(
            "{what} (the {app} app under valgrind; its log ends):\n{}",
            tail.join("\n")
        )
    };
    let stdin = child.stdin.take();
    let lines = child.stdout.take().map(lines_of);
    let outcome = match (stdin, lines) {
        (Some(stdin), Some(lines)) => run(stdin, &lines, load),
        _ => Err("no pipe to the app".to_owned()),
    };
    // The input is closed by now (`run` owns it): the app stops.
    let stopped = wait(&mut child);
    outcome.map_err(&failed)?;
    stopped.map_err(&failed)?;
    let output = File::open(file).map_err(|e| format!("{}: {e}", file.display()))?;
    callgrind::read(BufReader::new(output), SHA256).map_err(|e| format!("{}: {e}", file.display()))
}

/// The app's stdout, line by line, on a channel (a thread reads it).
fn lines_of(stdout: impl std::io::Read + Send + 'static) -> Receiver<String> {
    let (sender, receiver) = channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if sender.send(line.trim().to_owned()).is_err() {
                break;
            }
        }
    });
    receiver
}

/// The next line from the app that starts with `prefix`: the rest of it.
fn expect_line(lines: &Receiver<String>, prefix: &str) -> Result<String, String> {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) => {
                if let Some(rest) = line.strip_prefix(prefix) {
                    return Ok(rest.trim().to_owned());
                }
            }
            Err(RecvTimeoutError::Timeout) => {
                return Err(format!("no `{prefix}` line from the app in {PATIENCE:?}"));
            }
            Err(RecvTimeoutError::Disconnected) => {
                return Err(format!("the app ended before saying `{prefix}`"));
            }
        }
    }
}

/// Wait for the app to start, send `load`, and close its input.
fn run(mut stdin: ChildStdin, lines: &Receiver<String>, load: &Load<'_>) -> Result<(), String> {
    let said = expect_line(lines, "listening")?;
    let addr: SocketAddr = said
        .parse()
        .map_err(|e| format!("the app said `listening {said}`: {e}"))?;
    if !addr.ip().is_loopback() {
        return Err(format!("the app listens on {addr}, not on 127.0.0.1"));
    }
    let mut streams = (0..load.connections)
        .map(|_| Connection::open(addr))
        .collect::<Result<Vec<_>, _>>()?;
    let held = match load.scenario {
        "replay" => {
            let answer = streams[0].request("replay", false)?;
            expect(&answer, 201, false).map_err(|e| format!("preparing the replay: {e}"))?;
            None
        }
        "conflict" => {
            let mut holder = Connection::open(addr)?;
            holder.send("conflict", true)?;
            expect_line(lines, "entered")?;
            Some(holder)
        }
        _ => None,
    };
    let (status, replayed) = expected(load.scenario, load.stores);
    let shares = shares(load.requests, load.connections);
    std::thread::scope(|scope| {
        let workers: Vec<_> = streams
            .iter_mut()
            .zip(shares)
            .enumerate()
            .map(|(index, (stream, share))| {
                scope.spawn(move || -> Result<(), String> {
                    for n in 0..share {
                        let key = match load.scenario {
                            "fresh" => format!("fresh-{index:04}-{n:010}"),
                            other => other.to_owned(),
                        };
                        let answer = stream.request(&key, false)?;
                        expect(&answer, status, replayed)
                            .map_err(|e| format!("{} request {n}: {e}", load.scenario))?;
                    }
                    Ok(())
                })
            })
            .collect();
        workers.into_iter().try_for_each(|worker| {
            worker
                .join()
                .map_err(|_| "a client thread panicked".to_owned())?
        })
    })?;
    if let Some(mut holder) = held {
        stdin
            .write_all(b"unhold\n")
            .and_then(|()| stdin.flush())
            .map_err(|e| format!("telling the app to unhold: {e}"))?;
        let answer = holder.receive()?;
        expect(&answer, 201, false).map_err(|e| format!("the held request: {e}"))?;
    }
    drop(streams);
    drop(stdin);
    Ok(())
}

/// Wait for the app to exit (it stops when its input closes); kill it after [`PATIENCE`].
fn wait(child: &mut Child) -> Result<(), String> {
    let deadline = Instant::now() + PATIENCE;
    loop {
        match child.try_wait() {
            Ok(Some(status)) if status.success() => return Ok(()),
            Ok(Some(status)) => return Err(format!("the app exited with {status}")),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("the app did not stop within {PATIENCE:?}: killed"));
            }
            Err(e) => return Err(format!("waiting for the app: {e}")),
        }
    }
}

/// `requests` split over `connections`, the first ones taking one more when it does not divide.
fn shares(requests: u64, connections: u64) -> Vec<u64> {
    (0..connections)
        .map(|i| requests / connections + u64::from(i < requests % connections))
        .collect()
}

/// The status every counted request of `scenario` must get, and whether it must say it was
/// replayed.
fn expected(scenario: &str, stores: bool) -> (u16, bool) {
    match (scenario, stores) {
        ("replay", true) => (201, true),
        ("conflict", true) => (409, false),
        _ => (201, false),
    }
}

fn expect(answer: &Answer, status: u16, replayed: bool) -> Result<(), String> {
    if answer.status != status {
        return Err(format!("expected {status}, got {}", answer.status));
    }
    if answer.replayed != replayed {
        return Err(format!(
            "expected {} `{REPLAYED_HEADER}: true`",
            if replayed { "a" } else { "no" }
        ));
    }
    Ok(())
}

/// What the client reads of an answer.
#[derive(Debug, PartialEq, Eq)]
struct Answer {
    status: u16,
    /// `Idempotent-Replayed: true` was among its headers.
    replayed: bool,
}

/// One keep-alive HTTP/1.1 connection.
struct Connection {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Connection {
    fn open(addr: SocketAddr) -> Result<Self, String> {
        let stream = TcpStream::connect(addr).map_err(|e| format!("connecting to {addr}: {e}"))?;
        stream
            .set_nodelay(true)
            .and_then(|()| stream.set_read_timeout(Some(READ_TIMEOUT)))
            .map_err(|e| format!("setting up the connection: {e}"))?;
        let writer = stream
            .try_clone()
            .map_err(|e| format!("cloning the connection: {e}"))?;
        Ok(Self {
            reader: BufReader::new(stream),
            writer,
        })
    }

    fn request(&mut self, key: &str, hold: bool) -> Result<Answer, String> {
        self.send(key, hold)?;
        self.receive()
    }

    fn send(&mut self, key: &str, hold: bool) -> Result<(), String> {
        let hold = if hold {
            format!("{HOLD_HEADER}: 1\r\n")
        } else {
            String::new()
        };
        let request = format!(
            "POST /orders HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n\
             idempotency-key: {key}\r\n{hold}content-length: {}\r\n\r\n{BODY}",
            BODY.len()
        );
        self.writer
            .write_all(request.as_bytes())
            .map_err(|e| format!("sending a request: {e}"))
    }

    fn receive(&mut self) -> Result<Answer, String> {
        read_answer(&mut self.reader)
    }
}

/// Read one HTTP/1.1 answer (status line, headers, a `content-length` or chunked body).
fn read_answer(reader: &mut impl BufRead) -> Result<Answer, String> {
    let mut line = String::new();
    next_line(reader, &mut line)?;
    let status = line
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| format!("not an HTTP/1.1 status line: {line:?}"))?;
    let mut length: Option<usize> = None;
    let mut chunked = false;
    let mut replayed = false;
    loop {
        next_line(reader, &mut line)?;
        let header = line.trim_end();
        if header.is_empty() {
            break;
        }
        let (name, value) = header
            .split_once(':')
            .ok_or_else(|| format!("not a header: {header:?}"))?;
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            length = Some(value.parse().map_err(|_| format!("bad {header:?}"))?);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.eq_ignore_ascii_case("chunked");
        } else if name.eq_ignore_ascii_case(REPLAYED_HEADER) {
            replayed = value == "true";
        }
    }
    match (length, chunked) {
        (_, true) => loop {
            next_line(reader, &mut line)?;
            let size = line.trim_end().split(';').next().unwrap_or_default();
            let size =
                usize::from_str_radix(size, 16).map_err(|_| format!("bad chunk {line:?}"))?;
            skip(reader, size)?;
            next_line(reader, &mut line)?;
            if size == 0 {
                break;
            }
        },
        (Some(length), false) => skip(reader, length)?,
        (None, false) => return Err("an answer without a length (not keep-alive)".to_owned()),
    }
    Ok(Answer { status, replayed })
}

/// The next line of an answer into `line`.
fn next_line(reader: &mut impl BufRead, line: &mut String) -> Result<(), String> {
    line.clear();
    match reader.read_line(line) {
        Ok(0) => Err("the app closed the connection".to_owned()),
        Ok(_) => Ok(()),
        Err(e) => Err(format!("reading an answer: {e}")),
    }
}

/// Read and drop `bytes` bytes of a body.
fn skip(reader: &mut impl BufRead, bytes: usize) -> Result<(), String> {
    let mut body = Vec::with_capacity(bytes);
    reader
        .take(bytes as u64)
        .read_to_end(&mut body)
        .map_err(|e| format!("reading a body: {e}"))?;
    if body.len() == bytes {
        Ok(())
    } else {
        Err("the app closed the connection inside a body".to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_answers_one_after_the_other() {
        let wire = "HTTP/1.1 201 Created\r\ncontent-type: application/json\r\n\
                    content-length: 5\r\n\r\nhello\
                    HTTP/1.1 201 Created\r\nIdempotent-Replayed: true\r\n\
                    transfer-encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n\
                    HTTP/1.1 409 Conflict\r\ncontent-length: 0\r\n\r\n";
        let mut reader = BufReader::new(wire.as_bytes());
        let mut next = || read_answer(&mut reader);
        assert_eq!(
            next(),
            Ok(Answer {
                status: 201,
                replayed: false
            })
        );
        assert_eq!(
            next(),
            Ok(Answer {
                status: 201,
                replayed: true
            })
        );
        assert_eq!(
            next(),
            Ok(Answer {
                status: 409,
                replayed: false
            })
        );
        assert!(next().is_err(), "nothing left");
    }

    #[test]
    fn refuses_what_it_cannot_count() {
        for wire in [
            "HTTP/1.0 200 OK\r\n\r\n",
            "HTTP/1.1 201 Created\r\n\r\n",
            "HTTP/1.1 201 Created\r\ncontent-length: 9\r\n\r\nshort",
            "garbage",
        ] {
            assert!(
                read_answer(&mut BufReader::new(wire.as_bytes())).is_err(),
                "{wire:?}"
            );
        }
    }

    #[test]
    fn every_counted_request_must_get_the_scenarios_answer() {
        assert_eq!(expected("fresh", true), (201, false));
        assert_eq!(expected("replay", true), (201, true));
        assert_eq!(expected("replay", false), (201, false));
        assert_eq!(expected("conflict", true), (409, false));
        assert_eq!(expected("conflict", false), (201, false));
        let replayed = Answer {
            status: 201,
            replayed: true,
        };
        assert!(expect(&replayed, 201, true).is_ok());
        assert!(expect(&replayed, 201, false).is_err());
        assert!(expect(&replayed, 409, true).is_err());
    }

    #[test]
    fn requests_are_shared_over_the_connections() {
        assert_eq!(shares(10, 1), [10]);
        assert_eq!(shares(10, 4), [3, 3, 2, 2]);
        assert_eq!(shares(2000, 16).iter().sum::<u64>(), 2000);
        assert_eq!(app("http-memory"), Some(("memory", true)));
        assert_eq!(app("http-bare"), Some(("bare", false)));
        assert_eq!(app("memory"), None);
    }
}
