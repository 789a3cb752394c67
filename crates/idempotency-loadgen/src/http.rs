//! The HTTP rows: an app (the trivial `POST /orders` handler of `app`, bare, with our
//! `Idempotency-Key` layer, or with a peer's middleware) served on 127.0.0.1 from a process of
//! its own, driven over real loopback HTTP/1.1 by hyper clients, one keep-alive connection per
//! task. A process per app lets the run read each app's CPU time and context switches from
//! `/proc` (see `procstat`).

use std::io::{BufRead as _, BufReader, Write as _};
use std::net::SocketAddr;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, bail};
use axum::Router;
use axum::http::{StatusCode, header};
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use idempotency_core::{Idempotency, IdempotencyStore};
use idempotency_http::IdempotencyLayer;
use idempotency_redis::RedisStore;
use tokio::sync::Notify;

use crate::app::{self, HOLD_HEADER};
use crate::load::Worker;
use crate::scenario::{Scenario, unbounded_memory};

/// The request body every client sends.
const BODY: &[u8] = br#"{"sku":"widget","qty":1}"#;
/// The header `axum-idempotent` adds to a replayed answer.
const PEER_REPLAY_HEADER: &str = "idempotency-replayed";

/// Which of our apps a child process serves (`--serve <name>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum App {
    /// The handler alone: the baseline.
    Bare,
    /// The least layer that keeps a record per request (`floor`): the reference of `Memory`.
    Floor,
    /// The layer on the memory store.
    Memory,
    /// The layer on the Redis server at `--redis-url`.
    Redis,
}

impl App {
    fn name(self) -> &'static str {
        match self {
            App::Bare => "bare",
            App::Floor => "floor",
            App::Memory => "memory",
            App::Redis => "redis",
        }
    }

    /// The command that serves this app: this executable again, with `--serve`.
    pub(crate) fn command(self, redis_url: &str) -> Result<Command> {
        let mut command = Command::new(std::env::current_exe().context("finding loadgen")?);
        command.args(["--serve", self.name(), "--redis-url", redis_url]);
        Ok(command)
    }

    /// Serve this app in the current process (the child side of `--serve`).
    pub(crate) fn serve(self, redis_url: Option<String>) -> Result<()> {
        app::serve_child(move |state| async move {
            let plain = app::router(state);
            Ok(match self {
                App::Bare => plain,
                App::Floor => crate::floor::layer(plain),
                App::Memory => with_layer(plain, unbounded_memory())?,
                App::Redis => {
                    let url = redis_url.context("--serve redis needs --redis-url")?;
                    with_layer(plain, RedisStore::connect(&url).await?)?
                }
            })
        })
    }
}

fn with_layer<S: IdempotencyStore + 'static>(router: Router, store: S) -> Result<Router> {
    let engine = Idempotency::builder(store).ignore_env().build()?;
    Ok(router.layer(IdempotencyLayer::builder(engine).global_scope().build()))
}

/// An app running in a child process (see `app` for the protocol).
pub(crate) struct HttpServer {
    name: String,
    child: Child,
    stdin: Mutex<Option<ChildStdin>>,
    addr: SocketAddr,
    /// Signalled when the child says a held request is inside the handler.
    entered: Arc<Notify>,
    /// How many times it said so.
    entered_count: Arc<AtomicU32>,
}

impl HttpServer {
    /// Start `command` (which speaks the protocol of `app`) and wait for its address.
    pub(crate) fn spawn(name: &str, mut command: Command) -> Result<Self> {
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("starting the {name} app"))?;
        let stdout = child.stdout.take().context("child stdout")?;
        let stdin = child.stdin.take();
        let entered = Arc::new(Notify::new());
        let (addr_tx, addr_rx) = std::sync::mpsc::channel::<String>();
        let signal = Arc::clone(&entered);
        let entered_count = Arc::new(AtomicU32::new(0));
        let count = Arc::clone(&entered_count);
        std::thread::Builder::new()
            .name(format!("bench-{name}-out"))
            .spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    if let Some(addr) = line.strip_prefix("listening ") {
                        let _ = addr_tx.send(addr.trim().to_owned());
                    } else if line.trim() == "entered" {
                        count.fetch_add(1, Ordering::SeqCst);
                        signal.notify_one();
                    }
                }
            })?;
        let mut server = Self {
            name: name.to_owned(),
            child,
            stdin: Mutex::new(stdin),
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            entered,
            entered_count,
        };
        match addr_rx.recv_timeout(Duration::from_secs(20)) {
            Ok(addr) => {
                server.addr = addr
                    .parse()
                    .with_context(|| format!("the {name} app said `listening {addr}`"))?;
                Ok(server)
            }
            Err(_) => {
                let _ = server.child.kill();
                let status = server.child.wait().ok();
                Err(anyhow!(
                    "the {name} app did not start (exit: {status:?}; its stderr is above)"
                ))
            }
        }
    }

    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// How many held requests have entered the handler so far.
    pub(crate) fn entered_count(&self) -> u32 {
        self.entered_count.load(Ordering::SeqCst)
    }

    /// The app's process id (for `/proc/<pid>`).
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Let the held request finish.
    pub(crate) fn unhold(&self) -> Result<()> {
        let mut stdin = self
            .stdin
            .lock()
            .map_err(|_| anyhow!("{} app: control lock poisoned", self.name))?;
        let pipe = stdin
            .as_mut()
            .ok_or_else(|| anyhow!("{} app already stopped", self.name))?;
        pipe.write_all(b"unhold\n")?;
        pipe.flush()?;
        Ok(())
    }

    /// Close its input (a graceful stop), wait up to 10 s, then kill it.
    pub(crate) fn stop(mut self) -> Result<()> {
        if let Ok(mut stdin) = self.stdin.lock() {
            drop(stdin.take());
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.try_wait()? {
                return if status.success() {
                    Ok(())
                } else {
                    Err(anyhow!("the {} app exited with {status}", self.name))
                };
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                bail!("the {} app did not stop within 10 s: killed", self.name);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A keep-alive HTTP/1.1 connection to `addr`.
pub(crate) async fn connect(addr: SocketAddr) -> Result<SendRequest<Full<Bytes>>> {
    let stream = tokio::net::TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(sender)
}

/// Who answers a cell's requests, and so what it must answer.
#[derive(Debug, Clone)]
pub(crate) enum Kind {
    /// The handler alone: 201 to everything.
    Bare,
    /// Our layer: 201, a replayed 201, or 409 while the key is in progress.
    Ours,
    /// `axum-idempotent` in header mode: every request carries this session cookie (the
    /// middleware only caches for a request that has a session); a replay must carry its
    /// replay header.
    Peer {
        /// `Cookie` header value.
        cookie: String,
    },
}

impl Kind {
    /// The session cookie of `axum-idempotent` for cell `cell`: a ruts session id is 22
    /// base64url characters (128 bits; the last one's low bits zero).
    pub(crate) fn peer(cell: usize) -> Self {
        Kind::Peer {
            cookie: format!("session=bench{cell:016}A"),
        }
    }

    pub(crate) fn cookie(&self) -> Option<&str> {
        match self {
            Kind::Peer { cookie } => Some(cookie),
            _ => None,
        }
    }

    /// Whether a new key is claimed before the handler runs (only then do the `replay` and
    /// `conflict` cells need the key prepared).
    fn stores(&self) -> bool {
        !matches!(self, Kind::Bare)
    }
}

/// One answer: its status and whether it says it was replayed by the peer.
pub(crate) struct Answer {
    pub(crate) status: StatusCode,
    peer_replayed: bool,
}

/// One request with `key`; the answer's status (the body is read to keep the connection).
pub(crate) async fn post_order(
    sender: &mut SendRequest<Full<Bytes>>,
    key: &str,
    cookie: Option<&str>,
    hold: bool,
) -> Result<Answer> {
    let mut request = http::Request::post("/orders")
        .header(header::HOST, "127.0.0.1")
        .header(header::CONTENT_TYPE, "application/json")
        .header("idempotency-key", key);
    if let Some(cookie) = cookie {
        request = request.header(header::COOKIE, cookie);
    }
    if hold {
        request = request.header(HOLD_HEADER, "1");
    }
    let request = request.body(Full::new(Bytes::from_static(BODY)))?;
    sender.ready().await?;
    let response = sender.send_request(request).await?;
    let status = response.status();
    let peer_replayed = response.headers().contains_key(PEER_REPLAY_HEADER);
    response.into_body().collect().await?;
    Ok(Answer {
        status,
        peer_replayed,
    })
}

/// One client task.
pub(crate) struct HttpWorker {
    sender: SendRequest<Full<Bytes>>,
    scenario: Scenario,
    kind: Kind,
    prefix: String,
    n: u64,
    fixed: String,
}

impl HttpWorker {
    pub(crate) async fn new(
        addr: SocketAddr,
        scenario: Scenario,
        kind: Kind,
        prefix: String,
        fixed: String,
    ) -> Result<Self> {
        Ok(Self {
            sender: connect(addr).await?,
            scenario,
            kind,
            prefix,
            n: 0,
            fixed,
        })
    }
}

impl Worker for HttpWorker {
    async fn op(&mut self) -> Result<()> {
        let cookie = self.kind.cookie();
        let answer = match self.scenario {
            Scenario::Fresh => {
                let key = format!("{}{}", self.prefix, self.n);
                self.n += 1;
                post_order(&mut self.sender, &key, cookie, false).await?
            }
            Scenario::Replay | Scenario::Conflict => {
                post_order(&mut self.sender, &self.fixed, cookie, false).await?
            }
        };
        let expected = match (&self.kind, self.scenario) {
            (Kind::Ours, Scenario::Conflict) => StatusCode::CONFLICT,
            _ => StatusCode::CREATED,
        };
        if answer.status != expected {
            bail!("expected {expected}, got {}", answer.status);
        }
        if matches!(self.kind, Kind::Peer { .. })
            && self.scenario == Scenario::Replay
            && !answer.peer_replayed
        {
            bail!("the peer ran the handler instead of replaying (no {PEER_REPLAY_HEADER})");
        }
        Ok(())
    }
}

/// A request parked in the handler, holding its key in progress; finish with [`Held::finish`].
pub(crate) struct Held {
    request: tokio::task::JoinHandle<Result<Answer>>,
}

/// Put `key` in the state the scenario needs on an app that stores (none on the bare one).
pub(crate) async fn prepare(
    server: &HttpServer,
    kind: &Kind,
    scenario: Scenario,
    key: &str,
) -> Result<Option<Held>> {
    if !kind.stores() {
        return Ok(None);
    }
    let cookie = kind.cookie().map(str::to_owned);
    match scenario {
        Scenario::Fresh => Ok(None),
        Scenario::Replay => {
            let mut sender = connect(server.addr()).await?;
            let answer = post_order(&mut sender, key, cookie.as_deref(), false).await?;
            if answer.status != StatusCode::CREATED {
                bail!("preparing a replay: {}", answer.status);
            }
            Ok(None)
        }
        Scenario::Conflict => {
            let mut holder = connect(server.addr()).await?;
            let owned = key.to_owned();
            // Counted, not only signalled: a `Notify` permit left by an earlier entry (the
            // duplicates check's) must not pass for this request's entry, or the workers would
            // race the holder for the key and replay its answer instead of meeting a 409.
            let before = server.entered_count();
            let request = tokio::spawn(async move {
                post_order(&mut holder, &owned, cookie.as_deref(), true).await
            });
            // Inside the handler means past the layer's claim.
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            while server.entered_count() == before {
                let entered = server.entered.notified();
                tokio::pin!(entered);
                entered.as_mut().enable();
                if server.entered_count() != before {
                    break;
                }
                tokio::time::timeout_at(deadline, entered)
                    .await
                    .context("the held request never reached the handler")?;
            }
            Ok(Some(Held { request }))
        }
    }
}

impl Held {
    /// Release the parked request and wait for its answer.
    pub(crate) async fn finish(self, server: &HttpServer) -> Result<()> {
        server.unhold()?;
        let answer = tokio::time::timeout(Duration::from_secs(10), self.request)
            .await
            .context("the held request did not finish")???;
        if answer.status != StatusCode::CREATED {
            bail!("the held request answered {}", answer.status);
        }
        Ok(())
    }
}
