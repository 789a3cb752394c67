//! Simulated slow work and the execution journal: what fault-injection runs (`cargo xtask
//! chaos`) need from the shop.
//!
//! A real mutating handler calls a payment provider before it writes and often does more work
//! after the write (a follow-up call, rendering, an audit log). [`SlowWork`] reproduces both
//! delays so a kill or a store outage can be landed in the window **between the side effect and
//! the completion of the idempotency record**, the one window no cache store can close.
//!
//! The [`ExecutionLog`] is the shop's own, durable count of side effects: one JSON line per
//! execution of a mutating handler, appended with a single `write` the moment the write happens.
//! The kernel keeps what was written when the process is killed with SIGKILL, so a harness can
//! count executions per idempotency key across kills and restarts (in-memory counters die with
//! the process).

use std::fs::File;
use std::io::Write as _;
use std::path::Path;
use std::time::Duration;

use idempotency::unix_millis_now;
use parking_lot::Mutex;
use serde_json::json;

/// Delays inside every mutating handler. Zero (the default) adds no await point.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SlowWork {
    /// Before the write: the time a payment-provider call takes (`DEMO_WORK_MS`).
    pub before_write: Duration,
    /// After the write and before the response: follow-up work (`DEMO_AFTER_WRITE_MS`).
    pub after_write: Duration,
}

impl SlowWork {
    /// From the two delays in milliseconds.
    pub fn from_millis(before_write_ms: u64, after_write_ms: u64) -> Self {
        Self {
            before_write: Duration::from_millis(before_write_ms),
            after_write: Duration::from_millis(after_write_ms),
        }
    }

    pub(crate) async fn before_write(&self) {
        if !self.before_write.is_zero() {
            tokio::time::sleep(self.before_write).await;
        }
    }

    pub(crate) async fn after_write(&self) {
        if !self.after_write.is_zero() {
            tokio::time::sleep(self.after_write).await;
        }
    }
}

/// An append-only file with one JSON line per handler execution:
///
/// ```text
/// {"pid":4242,"key":"k-1","principal":"alice","route":"PUT /api/products/{id}","resource":"tea","at":1764000000000}
/// ```
///
/// `key` is the `Idempotency-Key` header as sent (`null` without one), `resource` what was
/// written (a product or order id), `at` Unix milliseconds. Several processes may append to one
/// file: each line is one `write(2)` on a file opened with `O_APPEND`.
#[derive(Debug)]
pub struct ExecutionLog {
    file: Mutex<File>,
    pid: u32,
}

impl ExecutionLog {
    /// Open (create or append to) the journal at `path`.
    ///
    /// # Errors
    /// The I/O error from opening the file.
    pub fn open(path: &Path) -> std::io::Result<Self> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        Ok(Self {
            file: Mutex::new(file),
            pid: std::process::id(),
        })
    }

    /// Append one execution. A failed write is logged, never fails the request: the journal
    /// observes the shop, it is not part of it.
    pub(crate) fn record(&self, key: Option<&str>, principal: &str, route: &str, resource: &str) {
        let mut line = json!({
            "pid": self.pid,
            "key": key,
            "principal": principal,
            "route": route,
            "resource": resource,
            "at": unix_millis_now(),
        })
        .to_string();
        line.push('\n');
        // One write of the whole line (no BufWriter), so a kill never leaves half a line behind
        // a complete one and concurrent appenders do not interleave.
        if let Err(error) = self.file.lock().write_all(line.as_bytes()) {
            tracing::warn!(%error, "cannot append to the execution log");
        }
    }
}
