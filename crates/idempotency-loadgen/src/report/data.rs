//! What a run measured: the rows, the machine and server versions, and the units shown to
//! people. The renderers (`markdown`, `svg`) and the writer (`super`) read it.

use std::time::Duration;

use anyhow::{Result, bail};
use serde::{Deserialize, Serialize};

use crate::load::Measured;
use crate::machine::Machine;
use crate::rounds::{self, Merged, RoundFigures};

/// The p95 budget the product promises for cache lookups.
pub(crate) const BUDGET_US: f64 = 10_000.0;

/// One row's figures (a backend in one scenario at one concurrency), over all its rounds:
/// percentiles of the merged histogram, `ops_per_sec` = total ops / total measured time, CPU and
/// context switches per op = totals / total ops.
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
    /// Measured seconds, all rounds together.
    pub(crate) measured_seconds: f64,
    /// Each round's own figures, in round order.
    pub(crate) rounds: Vec<RoundFigures>,
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
    /// The measured window, in seconds (absent from a peers binary older than the rounds).
    #[serde(default)]
    pub(crate) measured_seconds: Option<f64>,
    /// The slice's histogram as `(value ns, count)` pairs (`rounds::recorded`), so its rounds
    /// merge like ours (absent from a peers binary older than the rounds).
    #[serde(default)]
    pub(crate) histogram: Option<Vec<(u64, u64)>>,
}

impl PeerFigures {
    /// The slice these figures describe: histogram, operations, measured time and the peers
    /// binary's CPU and context switch totals.
    ///
    /// # Errors
    /// Figures without a histogram or measured time (a peers binary built before the rounds:
    /// `cargo xtask bench` rebuilds it), or a histogram value out of bounds.
    pub(crate) fn into_slice(self) -> Result<(Measured, Option<(f64, f64)>)> {
        let (Some(pairs), Some(seconds)) = (self.histogram, self.measured_seconds) else {
            bail!(
                "the peers binary printed no histogram or measured time: it predates the \
                 interleaved rounds, rebuild bench/peers"
            );
        };
        let histogram = rounds::from_recorded(&pairs)?;
        if histogram.len() != self.ops {
            bail!(
                "the peer's histogram holds {} operations, its figures {}",
                histogram.len(),
                self.ops
            );
        }
        let ops = self.ops as f64;
        let totals = self
            .cpu_us_per_op
            .zip(self.context_switches_per_op)
            .map(|(cpu, switches)| (cpu * ops, switches * ops));
        let elapsed = Duration::try_from_secs_f64(seconds)
            .map_err(|e| anyhow::anyhow!("the peer's measured time {seconds}: {e}"))?;
        Ok((
            Measured {
                histogram,
                ops: self.ops,
                errors: self.errors,
                elapsed,
                first_error: self.first_error,
            },
            totals,
        ))
    }
}

fn round2(value: f64) -> f64 {
    (value * 100.0).round() / 100.0
}

impl Row {
    /// The row of `merged`, a backend's slices in every round.
    pub(crate) fn new(
        backend: &'static str,
        scenario: &'static str,
        concurrency: usize,
        merged: Merged,
    ) -> Self {
        let measured = &merged.measured;
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
            cpu_us_per_op: merged.cpu_per_op.map(|(cpu, _)| round2(cpu)),
            context_switches_per_op: merged.cpu_per_op.map(|(_, switches)| round2(switches)),
            measured_seconds: (measured.elapsed.as_secs_f64() * 1e3).round() / 1e3,
            rounds: merged.rounds,
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
    /// Unrecorded seconds before each slice (each row's run in one round).
    pub(crate) warmup_seconds: f64,
    /// Measured seconds per slice; a row measures `rounds` times this.
    pub(crate) measure_seconds: f64,
    /// The same for the in-process rows.
    pub(crate) in_process_measure_seconds: f64,
    /// Rounds per (scenario, concurrency) group: every row of the group runs one slice per
    /// round.
    pub(crate) rounds: usize,
    /// The order of the slices in a round (`rounds::ORDER`).
    pub(crate) order: &'static str,
    pub(crate) duration_seconds: f64,
    /// What the run left out or could not do, shown at the top of `report.md`.
    pub(crate) notes: Vec<String>,
    /// What 16 concurrent duplicates did to each idempotent layer (see `duplicates`).
    pub(crate) duplicates: Vec<DuplicateCheck>,
    pub(crate) rows: Vec<Row>,
    /// The ratios of the compared pairs in each round ([`round_ratios`]).
    pub(crate) round_ratios: Vec<RoundRatios>,
}

/// `(ours, baseline, target)`: the ratio tables of `report.md`, each against a baseline that
/// sends the same work without our code (`INFINITY`: for information, no target).
pub(crate) const BASELINE_PAIRS: [(&str, &str, f64); 9] = [
    ("redis", "raw-redis", 1.05),
    ("redis-cluster", "raw-redis", f64::INFINITY),
    ("kv-rest", "raw-redis", f64::INFINITY),
    ("postgres", "raw-postgres", 1.10),
    ("sqlite", "raw-postgres", f64::INFINITY),
    ("http-memory", "bare-axum", 1.15),
    // What keeping a record per request costs whoever writes the layer (`floor`), and ours
    // against that least layer.
    ("http-floor", "bare-axum", f64::INFINITY),
    ("http-memory", "http-floor", f64::INFINITY),
    ("http-redis", "bare-axum", f64::INFINITY),
];

/// `(ours, peer)`: the pairs the peer section compares.
pub(crate) const PEER_PAIRS: [(&str, &str); 2] = [
    ("redis", "peer-idempotent"),
    ("http-redis", "peer-axum-idempotent"),
];

/// A compared pair's ratios in each round both rows ran, in round order: how much a ratio
/// moves from one round to the next on this machine.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub(crate) struct RoundRatios {
    pub(crate) ours: &'static str,
    /// The baseline or the peer.
    pub(crate) against: &'static str,
    pub(crate) scenario: &'static str,
    pub(crate) concurrency: usize,
    /// `baseline`: `throughput` is the baseline's ops/s ÷ ours (above 1 = ours is slower, as
    /// the ratio tables); `peer`: ours ÷ the peer's (above 1 = ours is faster, as the peer
    /// tables).
    pub(crate) kind: &'static str,
    /// p50 ours ÷ theirs, per round.
    pub(crate) p50: Vec<f64>,
    /// Throughput ratio per round (see `kind`).
    pub(crate) throughput: Vec<f64>,
}

/// The per-round ratios of every pair of [`BASELINE_PAIRS`] and [`PEER_PAIRS`] found in `rows`.
pub(crate) fn round_ratios(rows: &[Row]) -> Vec<RoundRatios> {
    let pairs = BASELINE_PAIRS
        .iter()
        .map(|(ours, base, _)| (*ours, *base, "baseline"))
        .chain(PEER_PAIRS.iter().map(|(ours, peer)| (*ours, *peer, "peer")));
    let mut found = Vec::new();
    for (ours, against, kind) in pairs {
        for o in rows.iter().filter(|r| r.backend == ours) {
            let Some(a) = rows.iter().find(|r| {
                r.backend == against && r.scenario == o.scenario && r.concurrency == o.concurrency
            }) else {
                continue;
            };
            let p50 = rounds::per_round(&o.rounds, &a.rounds, |o, a| {
                round3(o.p50_us / a.p50_us.max(0.001))
            });
            let throughput = rounds::per_round(&o.rounds, &a.rounds, |o, a| {
                round3(if kind == "baseline" {
                    a.ops_per_sec / o.ops_per_sec.max(1.0)
                } else {
                    o.ops_per_sec / a.ops_per_sec.max(1.0)
                })
            });
            found.push(RoundRatios {
                ours,
                against,
                scenario: o.scenario,
                concurrency: o.concurrency,
                kind,
                p50,
                throughput,
            });
        }
    }
    found
}

fn round3(value: f64) -> f64 {
    (value * 1000.0).round() / 1000.0
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
    /// The per-round ratios of `ours` against `against` in one cell, if both ran.
    pub(crate) fn round_ratio(
        &self,
        ours: &str,
        against: &str,
        scenario: &str,
        concurrency: usize,
    ) -> Option<&RoundRatios> {
        self.round_ratios.iter().find(|r| {
            r.ours == ours
                && r.against == against
                && r.scenario == scenario
                && r.concurrency == concurrency
        })
    }

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
