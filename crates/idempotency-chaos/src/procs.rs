//! The processes of a scenario. Every process started here is killed when its handle drops (also
//! while a panic unwinds), and its pid is registered so [`kill_all_registered`] can stop it on
//! Ctrl-C. Redis comes from the testkit's fixture, whose watchdog also kills the server if this
//! process dies first.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::ChaosError;

/// Pids of the demo and gateway processes alive now.
static REGISTERED: Mutex<Vec<u32>> = Mutex::new(Vec::new());

/// `kill -9` every registered process (on Ctrl-C, before exiting without unwinding).
pub fn kill_all_registered() {
    let pids: Vec<u32> = REGISTERED.lock().drain(..).collect();
    for pid in pids {
        let _ = Command::new("kill")
            .args(["-9", &pid.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// A free TCP port on 127.0.0.1 (the kernel's choice; released at once for the child to bind).
///
/// # Errors
/// When no port can be bound.
pub fn free_port() -> Result<u16, ChaosError> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| ChaosError::io("binding 127.0.0.1:0", e))
}

/// How to start one long-running binary, and its current incarnation.
#[derive(Debug)]
pub struct Managed {
    name: String,
    program: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
    /// Where stderr goes (appended across restarts).
    log: PathBuf,
    port: u16,
    /// A path answered by any HTTP status once the server listens.
    ready_path: String,
    child: Option<Child>,
    /// Pids killed with SIGKILL, and when (Unix milliseconds, the clock of the demo's journal).
    killed: Vec<(u32, u64)>,
}

/// Environment variables that select a store or change the demo; removed from every child so
/// the harness alone decides.
const CLEARED_ENV: [&str; 15] = [
    "UPSTASH_REDIS_REST_URL",
    "UPSTASH_REDIS_REST_TOKEN",
    "KV_REST_API_URL",
    "KV_REST_API_TOKEN",
    "REDIS_URL",
    "KV_URL",
    "PORT",
    "DEMO_REQUIRE_DISTRIBUTED",
    "DEMO_WAIT_IN_PROGRESS_MS",
    "DISABLE_IDEMPOTENCY_CHECKS",
    "IDEMPOTENCY_LEASE",
    "IDEMPOTENCY_STORE_TIMEOUT",
    "IDEMPOTENCY_STORE",
    "DATABASE_URL",
    "IDEMPOTENCY_RETENTION",
];

impl Managed {
    /// A binary listening on `port` once started.
    pub fn new(
        name: impl Into<String>,
        program: PathBuf,
        args: Vec<String>,
        env: Vec<(String, String)>,
        log: PathBuf,
        port: u16,
        ready_path: impl Into<String>,
    ) -> Self {
        Self {
            name: name.into(),
            program,
            args,
            env,
            log,
            port,
            ready_path: ready_path.into(),
            child: None,
            killed: Vec::new(),
        }
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The pid of the running incarnation.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Pids killed so far, with the kill time in Unix milliseconds.
    pub fn killed(&self) -> &[(u32, u64)] {
        &self.killed
    }

    /// Start the binary and wait until it answers HTTP (at most 30 s).
    ///
    /// # Errors
    /// When it cannot be spawned, exits, or does not answer in time (with its stderr's tail).
    pub fn start(&mut self) -> Result<(), ChaosError> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .map_err(|e| ChaosError::io(format!("opening {}", self.log.display()), e))?;
        let mut command = Command::new(&self.program);
        for var in CLEARED_ENV {
            command.env_remove(var);
        }
        command
            .args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        let child = command.spawn().map_err(|e| {
            ChaosError::Process(format!(
                "cannot start {} ({}): {e}; build it first (cargo xtask chaos does)",
                self.name,
                self.program.display()
            ))
        })?;
        REGISTERED.lock().push(child.id());
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if http_answers(self.port, &self.ready_path) {
                return Ok(());
            }
            if let Some(child) = &mut self.child
                && let Ok(Some(status)) = child.try_wait()
            {
                self.child = None;
                return Err(ChaosError::Process(format!(
                    "{} exited at start ({status}): {}",
                    self.name,
                    tail(&self.log)
                )));
            }
            if Instant::now() > deadline {
                self.kill();
                return Err(ChaosError::Process(format!(
                    "{} did not answer on port {} within 30 s: {}",
                    self.name,
                    self.port,
                    tail(&self.log)
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `kill -9` the running incarnation and reap it. Nothing when it is not running.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let pid = child.id();
            let _ = child.kill();
            let _ = child.wait();
            self.killed.push((pid, unix_millis()));
            REGISTERED.lock().retain(|p| *p != pid);
        }
    }

    /// Whether the incarnation exited by itself (a crash the harness did not cause).
    pub fn exited(&mut self) -> Option<String> {
        let child = self.child.as_mut()?;
        match child.try_wait() {
            Ok(Some(status)) => Some(format!("{} exited on its own ({status})", self.name)),
            _ => None,
        }
    }
}

impl Drop for Managed {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Whether `GET path` on 127.0.0.1:`port` gets any HTTP status line within a second.
fn http_answers(port: u16, path: &str) -> bool {
    use std::io::{Read as _, Write as _};
    let address = SocketAddr::from(([127, 0, 0, 1], port));
    let Ok(mut stream) = TcpStream::connect_timeout(&address, Duration::from_millis(200)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
    let request = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
    if stream.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).is_ok() && head.starts_with(b"HTTP/1.")
}

fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().rev().take(5).collect();
    lines.into_iter().rev().collect::<Vec<_>>().join(" | ")
}

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub fn unix_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
