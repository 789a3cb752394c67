//! What a run measured: the rows, the machine and server versions, and the units shown to
//! people. The renderers (`markdown`, `svg`) and the writer (`super`) read it.

use serde::Serialize;

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
    pub(crate) rows: Vec<Row>,
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
