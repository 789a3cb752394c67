//! # idempotency-chaos
//!
//! The fault-injection harness behind `cargo xtask chaos [--quick]` (DESIGN §6, layer 5): real
//! processes only — demo instances (the `idempotency-demo` binary), `redis-server` with AOF and
//! `appendfsync always`, the `kv-rest-gateway` binary, and Postgres (`initdb` + `postgres`,
//! `synchronous_commit=on`) — all on 127.0.0.1, ephemeral ports.
//! Retrying clients storm them while the harness injects faults on a fixed, seeded schedule.
//!
//! # What one scenario does
//! A scenario is one (backend, fault, failure policy):
//! 1. start the store (none for `memory`; Redis; Redis + the gateway for `kv-rest`; for `sql`,
//!    Postgres holding both the shop's data, `DATABASE_URL`, and the idempotency records,
//!    `IDEMPOTENCY_STORE=sql`, so each handler commits its write and its recorded answer in one
//!    transaction) and the demo instances (1 on the per-process memory store, 2 otherwise), each
//!    with simulated slow work
//!    (`DEMO_WORK_MS` before its write, `DEMO_AFTER_WRITE_MS` after it) and an execution journal
//!    (`DEMO_EXECUTION_LOG`, one line per side effect, which survives `kill -9`);
//! 2. launch the logical requests over the traffic window, each sent by **two** retrying clients
//!    at once (a double click landing on two instances): same key and body on every attempt,
//!    `Retry-After` honoured on 409 / 429 / 503, another instance after a connection error, a
//!    timeout or a 5xx; a client gives up at `outage + 5 s + grace`;
//! 3. meanwhile inject the fault at a seeded time: store `SIGSTOP` … `SIGCONT` (for Postgres,
//!    every process: the postmaster and its backends — stopping the postmaster alone pauses
//!    nothing); store `kill -9` and restart (Redis from its AOF; Postgres, the postmaster and its
//!    children, on the same data directory, recovering from its WAL); gateway `kill -9` and
//!    restart; demo instance `kill -9`
//!    right after one of its handlers wrote (so that request is between its side effect and its
//!    completion) and restart;
//! 4. once every client is done and the fault healed, send every key once more (what a late
//!    retry would get), read the journals — and for `sql` the committed rows — and count.
//!
//! # What it reports, per scenario ([`report::ScenarioReport`])
//! Requests (client requests, two per key) and attempts; handler executions (from the shop's
//! journals; for `sql` also the **committed** executions read from the database, which are the
//! side effects that count: a handler rolled back or killed before its commit left nothing);
//! duplicate executions, split into the **crash window** (an execution by an
//! instance killed within `DEMO_AFTER_WRITE_MS` + 1 s after it wrote, or any execution on the
//! per-process memory store by an instance that was killed: by design no cache store can close
//! that window) and the rest; divergent 2xx answers (a key whose 2xx answers differ, same split);
//! requests without a final answer within outage + 5 s; p50 / p99 time to a final answer; 5xx
//! answers without an `application/problem+json` body; attempts that hung (no answer within the
//! attempt timeout although their instance was not killed).
//!
//! # What fails the run ([`report::ScenarioReport::violations`])
//! Only the guarantees that must hold today, on fail-closed rows: 0 divergent 2xx answers
//! outside the crash window, 0 duplicate executions outside the crash window (committed ones on
//! `sql`), no 2xx answer for a key with nothing committed (`sql`), 0 5xx answers without a
//! machine-readable body (`application/problem+json`, or the API's JSON error envelope), 0
//! hung attempts, and no final answer other than 2xx (a 4xx would mean the retry was refused
//! as a different request).
//! Unanswered requests are reported, not asserted (a demo killed in the crash window blocks its
//! key for the lease by design).
//!
//! # Layout
//! - [`plan`]: backends, faults, policies, the scenario matrix and the seeded schedule;
//! - [`procs`]: the processes (demo instances, the gateway; Redis and Postgres come from the
//!   testkit's fixtures) — every one is killed on drop;
//! - [`client`]: the retrying client;
//! - [`scenario`]: one scenario end to end;
//! - [`report`]: the figures, `report.json` and `report.md`.

#![deny(missing_docs)]

pub mod client;
pub mod plan;
pub mod procs;
pub mod report;
pub mod scenario;

/// Why the harness could not run (distinct from a guarantee that failed, which is a figure).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ChaosError {
    /// A process did not start or could not be controlled.
    #[error("process: {0}")]
    Process(String),
    /// Reading a journal or writing a report failed.
    #[error("{what}")]
    Io {
        /// What was being done.
        what: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A Redis fixture failed (the testkit's message says how to get `redis-server`).
    #[error("redis: {0}")]
    Redis(String),
    /// A Postgres fixture failed (the testkit's message says how to get the binaries).
    #[error("postgres: {0}")]
    Postgres(String),
}

impl ChaosError {
    pub(crate) fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            what: what.into(),
            source,
        }
    }
}
