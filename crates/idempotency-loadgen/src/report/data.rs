//! What a run measured: the rows, the machine and server versions, and the units shown to
//! people. The renderers (`markdown`, `svg`) and the writer (`super`) read it.

use serde::{Deserialize, Serialize};

use crate::load::Measured;
use crate::machine::Machine;

/// The p95 budget the product promises for cache lookups.
pub(crate) const BUDGET_US: f64 = 10_000.0;

/// One cell's figures.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Row {
    pub(crate) backend: &'static str,
    pub(crate) scenario: &'static str,
    pub(crate) concurrency: usize,
    pub(crate) ops: u64,
    pub(crate) p50_us: f64,
    pub(crate) p95_us: f64,
    pub(crate) p99_us: f64,
    pub(crate) p999_us: f64,
    pub(crate) ops_per_sec: f64,
    /// Operations that got an unexpected answer (should be 0; counted in `ops`).
    pub(crate) errors: u64,
    /// The first unexpected answer, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) first_error: Option<String>,
    /// CPU time (user + system) per measured operation, in µs, over the measured window:
    /// of the app's process for HTTP rows, of the client's process (the load generator, or the
    /// peers binary for `peer-idempotent`) otherwise. 10 ms resolution (`/proc/<pid>/stat`).
    pub(crate) cpu_us_per_op: Option<f64>,
    /// Context switches (voluntary + involuntary, every thread) per measured operation, of the
    /// same process.
    pub(crate) context_switches_per_op: Option<f64>,
}

/// What the peers binary prints for one `peer-idempotent` cell (one JSON line), measured by
/// the same closed loop (`load`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub(crate) struct PeerFigures {
    pub(crate) ops: u64,
    pub(crate) errors: u64,
    pub(crate) p50_us: f64,
    pub(crate) p95_us: f64,
    pub(crate) p99_us: f64,
    pub(crate) p999_us: f64,
    pub(crate) ops_per_sec: f64,
    pub(crate) first_error: Option<String>,
    pub(crate) cpu_us_per_op: Option<f64>,
    pub(crate) context_switches_per_op: Option<f64>,
}

fn round2(value: f64) -> f64 {
    (value * 100.0).round() / 100.0
}

impl Row {
    pub(crate) fn new(
        backend: &'static str,
        scenario: &'static str,
        concurrency: usize,
        measured: &Measured,
    ) -> Self {
        Self {
            backend,
            scenario,
            concurrency,
            ops: measured.ops,
            p50_us: round2(measured.quantile_us(0.50)),
            p95_us: round2(measured.quantile_us(0.95)),
            p99_us: round2(measured.quantile_us(0.99)),
            p999_us: round2(measured.quantile_us(0.999)),
            ops_per_sec: measured.ops_per_sec().round(),
            errors: measured.errors,
            first_error: measured.first_error.clone(),
            cpu_us_per_op: None,
            context_switches_per_op: None,
        }
    }

    /// With the `(CPU µs, context switches)` per operation of the row's process.
    pub(crate) fn with_cpu(mut self, per_op: Option<(f64, f64)>) -> Self {
        if let Some((cpu, switches)) = per_op {
            self.cpu_us_per_op = Some(round2(cpu));
            self.context_switches_per_op = Some(round2(switches));
        }
        self
    }

    /// A row from the peers binary's figures.
    pub(crate) fn from_peer(
        backend: &'static str,
        scenario: &'static str,
        concurrency: usize,
        figures: PeerFigures,
    ) -> Self {
        Self {
            backend,
            scenario,
            concurrency,
            ops: figures.ops,
            p50_us: round2(figures.p50_us),
            p95_us: round2(figures.p95_us),
            p99_us: round2(figures.p99_us),
            p999_us: round2(figures.p999_us),
            ops_per_sec: figures.ops_per_sec.round(),
            errors: figures.errors,
            first_error: figures.first_error,
            cpu_us_per_op: figures.cpu_us_per_op.map(round2),
            context_switches_per_op: figures.context_switches_per_op.map(round2),
        }
    }
}

/// Server and library versions.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct ServerVersions {
    pub(crate) redis: String,
    pub(crate) redis_cluster: String,
    pub(crate) postgres: String,
    pub(crate) kv_rest_gateway: String,
    pub(crate) http_server: String,
    /// The `redis-server` binary the fixtures started (the first on `PATH`).
    pub(crate) redis_binary: String,
    /// The peers measured (crate and version), empty when they were left out.
    pub(crate) peers: Vec<String>,
}

/// Everything `report.json` holds.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Report {
    pub(crate) machine: Machine,
    pub(crate) date: String,
    pub(crate) git_commit: String,
    pub(crate) servers: ServerVersions,
    /// `quick` or `full`.
    pub(crate) mode: &'static str,
    pub(crate) warmup_seconds: f64,
    pub(crate) measure_seconds: f64,
    pub(crate) in_process_measure_seconds: f64,
    pub(crate) duration_seconds: f64,
    /// What the run left out or could not do, shown at the top of `report.md`.
    pub(crate) notes: Vec<String>,
    /// What 16 concurrent duplicates did to each idempotent layer (see `duplicates`).
    pub(crate) duplicates: Vec<DuplicateCheck>,
    pub(crate) rows: Vec<Row>,
}

/// 16 requests with one key sent at once while the handler is held: how many ran it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub(crate) struct DuplicateCheck {
    /// `http-redis`, `peer-axum-idempotent`, `peer-idempotent`...
    pub(crate) backend: String,
    pub(crate) sent: u32,
    /// Requests that reached the handler (claims granted, for a store).
    pub(crate) handler_runs: u32,
    /// What the others got, e.g. `15 × 409`.
    pub(crate) others: String,
}

impl Report {
    pub(crate) fn find(&self, backend: &str, scenario: &str, concurrency: usize) -> Option<&Row> {
        self.rows.iter().find(|r| {
            r.backend == backend && r.scenario == scenario && r.concurrency == concurrency
        })
    }

    /// The concurrencies measured, in order.
    pub(crate) fn concurrencies(&self) -> Vec<usize> {
        let mut all: Vec<usize> = self.rows.iter().map(|r| r.concurrency).collect();
        all.sort_unstable();
        all.dedup();
        all
    }
}

/// A latency for people: `0.61 µs`, `154 µs`, `1.18 ms`.
pub(crate) fn human_us(us: f64) -> String {
    if us >= 1000.0 {
        format!("{:.2} ms", us / 1000.0)
    } else if us >= 100.0 {
        format!("{us:.0} µs")
    } else if us >= 10.0 {
        format!("{us:.1} µs")
    } else {
        format!("{us:.2} µs")
    }
}

/// A rate for people: `6.2 k`, `1.45 M`.
pub(crate) fn human_rate(per_sec: f64) -> String {
    if per_sec >= 1e6 {
        format!("{:.2} M", per_sec / 1e6)
    } else if per_sec >= 1e3 {
        format!("{:.1} k", per_sec / 1e3)
    } else {
        format!("{per_sec:.0}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_units() {
        assert_eq!(human_us(0.614), "0.61 µs");
        assert_eq!(human_us(154.2), "154 µs");
        assert_eq!(human_us(1180.0), "1.18 ms");
        assert_eq!(human_rate(6200.0), "6.2 k");
        assert_eq!(human_rate(1_450_000.0), "1.45 M");
    }
}
