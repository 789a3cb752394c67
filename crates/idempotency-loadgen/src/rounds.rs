//! Interleaved rounds: how the rows of one (scenario, concurrency) group share the machine's
//! noise, and how a row's slices become its figures.
//!
//! Every row of a group (ours, its baselines, its peers) runs in `R` rounds, each round a short
//! slice of every row one after another. Even rounds run the rows in their listed order, odd
//! rounds in the reverse order (serpentine): rotating by one position would keep neighbours such
//! as `raw-redis` and `redis` in the same order in every round, reversing swaps every pair.
//! Over an even number of rounds each row's mean position in time is the same; over an odd
//! number the first-listed row of a pair runs first once more than the other.
//!
//! A row's figures come from its slices together: latencies from the sum of their histograms
//! (HdrHistogram `add`, so the percentiles are those of every operation measured), throughput
//! = total operations / total measured time, CPU and context switches per operation = total
//! over total operations. The figures of each round are kept too, so the report can show how
//! much a ratio moves from one round to the next.

use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::load::Measured;

/// The row indices `0..rows` in the order round `round` runs them: listed order in even
/// rounds, reversed in odd ones.
pub(crate) fn order(rows: usize, round: usize) -> Vec<usize> {
    if round.is_multiple_of(2) {
        (0..rows).collect()
    } else {
        (0..rows).rev().collect()
    }
}

/// The order of the rounds for people (`report.md`'s header).
pub(crate) const ORDER: &str = "rows of a (scenario, concurrency) group interleaved, one slice \
                                each per round, in the listed order in odd-numbered rounds and \
                                reversed in even-numbered ones";

/// One row's run in one round.
#[derive(Debug)]
pub(crate) struct Slice {
    /// 0-based.
    pub(crate) round: usize,
    /// Where the row ran in the round's order (0 = first).
    pub(crate) position: usize,
    pub(crate) measured: Measured,
    /// `(CPU µs, context switches)` of the row's process over the measured window, totals.
    pub(crate) cpu: Option<(f64, f64)>,
}

/// What one round measured of one row (in `report.json`, per row).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub(crate) struct RoundFigures {
    /// 1-based.
    pub(crate) round: usize,
    /// Where the row ran in that round (1 = first).
    pub(crate) position: usize,
    pub(crate) ops: u64,
    pub(crate) measured_seconds: f64,
    pub(crate) ops_per_sec: f64,
    pub(crate) p50_us: f64,
    pub(crate) p99_us: f64,
    pub(crate) cpu_us_per_op: Option<f64>,
}

/// A row's slices merged.
#[derive(Debug)]
pub(crate) struct Merged {
    /// Every slice's operations: merged histogram, total operations, errors and measured time.
    pub(crate) measured: Measured,
    /// `(CPU µs, context switches)` per operation over every slice; `None` when a slice's
    /// process counters could not be read (a partial figure would not be comparable).
    pub(crate) cpu_per_op: Option<(f64, f64)>,
    pub(crate) rounds: Vec<RoundFigures>,
}

/// Latencies from 1 ns to 100 s, 3 significant digits (the bounds of `load`'s histograms, so
/// every slice adds into it).
pub(crate) fn histogram() -> Result<Histogram<u64>> {
    Histogram::new_with_bounds(1, 100_000_000_000, 3).context("histogram bounds")
}

/// A histogram from `(value, count)` pairs as [`recorded`] lists them (the peers binary prints
/// its slice's histogram that way). Exact: each value is its bucket's highest equivalent value,
/// so it lands in the bucket it came from.
///
/// # Errors
/// A value outside the histogram's bounds.
pub(crate) fn from_recorded(pairs: &[(u64, u64)]) -> Result<Histogram<u64>> {
    let mut histogram = histogram()?;
    for &(value, count) in pairs {
        histogram
            .record_n(value, count)
            .with_context(|| format!("recording {count} × {value} ns"))?;
    }
    Ok(histogram)
}

/// The recorded `(value, count)` pairs of `histogram` (see [`from_recorded`]).
#[allow(dead_code, reason = "used by bench/peers, which includes this module")]
pub(crate) fn recorded(histogram: &Histogram<u64>) -> Vec<(u64, u64)> {
    histogram
        .iter_recorded()
        .map(|v| (v.value_iterated_to(), v.count_at_value()))
        .collect()
}

fn round2(value: f64) -> f64 {
    (value * 100.0).round() / 100.0
}

/// Merge one row's slices (any order; the rounds are listed in round order).
///
/// # Errors
/// No slice, or histograms that cannot be added.
pub(crate) fn merge(mut slices: Vec<Slice>) -> Result<Merged> {
    if slices.is_empty() {
        bail!("a row without slices");
    }
    slices.sort_by_key(|s| s.round);
    let mut histogram = histogram()?;
    let (mut ops, mut errors, mut elapsed) = (0, 0, Duration::ZERO);
    let mut first_error = None;
    let mut cpu = Some((0.0, 0.0));
    let mut rounds = Vec::with_capacity(slices.len());
    for slice in slices {
        let m = slice.measured;
        histogram.add(&m.histogram).context("merging histograms")?;
        ops += m.ops;
        errors += m.errors;
        elapsed += m.elapsed;
        first_error = first_error.or(m.first_error.clone());
        cpu = cpu
            .zip(slice.cpu)
            .map(|((c, s), (dc, ds))| (c + dc, s + ds));
        rounds.push(RoundFigures {
            round: slice.round + 1,
            position: slice.position + 1,
            ops: m.ops,
            measured_seconds: (m.elapsed.as_secs_f64() * 1e3).round() / 1e3,
            ops_per_sec: m.ops_per_sec().round(),
            p50_us: round2(m.quantile_us(0.50)),
            p99_us: round2(m.quantile_us(0.99)),
            cpu_us_per_op: slice
                .cpu
                .filter(|_| m.ops > 0)
                .map(|(c, _)| round2(c / m.ops as f64)),
        });
    }
    let cpu_per_op = cpu
        .filter(|_| ops > 0)
        .map(|(c, s)| (c / ops as f64, s / ops as f64));
    Ok(Merged {
        measured: Measured {
            histogram,
            ops,
            errors,
            elapsed,
            first_error,
        },
        cpu_per_op,
        rounds,
    })
}

/// `ours` against `other` in each round both ran, with `ratio(ours, other)`.
pub(crate) fn per_round(
    ours: &[RoundFigures],
    other: &[RoundFigures],
    ratio: impl Fn(&RoundFigures, &RoundFigures) -> f64,
) -> Vec<f64> {
    ours.iter()
        .filter_map(|o| {
            other
                .iter()
                .find(|b| b.round == o.round)
                .map(|b| ratio(o, b))
        })
        .collect()
}

/// The smallest and largest of `values` (`None` when empty).
pub(crate) fn spread(values: &[f64]) -> Option<(f64, f64)> {
    let mut values = values.iter().copied().filter(|v| v.is_finite());
    let first = values.next()?;
    Some(values.fold((first, first), |(lo, hi), v| (lo.min(v), hi.max(v))))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn measured(values_ns: &[u64], elapsed_ms: u64, errors: u64) -> Measured {
        let mut histogram = histogram().unwrap();
        for &v in values_ns {
            histogram.record(v).unwrap();
        }
        Measured {
            histogram,
            ops: values_ns.len() as u64,
            errors,
            elapsed: Duration::from_millis(elapsed_ms),
            first_error: (errors > 0).then(|| format!("error after {elapsed_ms} ms")),
        }
    }

    #[test]
    fn odd_rounds_reverse_the_order_so_every_pair_alternates() {
        assert_eq!(order(3, 0), [0, 1, 2]);
        assert_eq!(order(3, 1), [2, 1, 0]);
        assert_eq!(order(3, 2), [0, 1, 2]);
        assert_eq!(order(1, 1), [0]);
        assert!(order(0, 0).is_empty());
        // Every pair of rows swaps who runs first from one round to the next.
        let n = 5;
        for a in 0..n {
            for b in a + 1..n {
                let first = |round| {
                    let o = order(n, round);
                    o.iter().position(|&x| x == a) < o.iter().position(|&x| x == b)
                };
                assert!(first(0) && !first(1) && first(2) && !first(3));
            }
        }
        // Over an even number of rounds every row has the same mean position in time.
        let rounds = 4;
        let mean: Vec<usize> = (0..n)
            .map(|row| {
                (0..rounds)
                    .map(|r| r * n + order(n, r).iter().position(|&x| x == row).unwrap())
                    .sum()
            })
            .collect();
        assert!(mean.iter().all(|&m| m == mean[0]), "{mean:?}");
    }

    #[test]
    fn a_row_merges_its_rounds_histograms_operations_time_and_cpu() {
        // Round 1: 100 ops at 10 µs in 100 ms; round 2: 100 ops at 30 µs in 300 ms (a slower
        // slice); round 3: 200 ops, half at 10 µs, half at 1 ms, in 200 ms.
        let mut third: Vec<u64> = vec![10_000; 100];
        third.extend([1_000_000; 100]);
        let slices = vec![
            // Out of order on purpose: the merge lists rounds in order.
            Slice {
                round: 2,
                position: 0,
                measured: measured(&third, 200, 1),
                cpu: Some((4_000.0, 40.0)),
            },
            Slice {
                round: 0,
                position: 0,
                measured: measured(&[10_000; 100], 100, 0),
                cpu: Some((1_000.0, 10.0)),
            },
            Slice {
                round: 1,
                position: 1,
                measured: measured(&[30_000; 100], 300, 0),
                cpu: Some((3_000.0, 30.0)),
            },
        ];
        let merged = merge(slices).unwrap();
        let m = &merged.measured;
        assert_eq!((m.ops, m.errors), (400, 1));
        assert_eq!(m.elapsed, Duration::from_millis(600));
        assert_eq!(m.first_error.as_deref(), Some("error after 200 ms"));
        // 400 ops: 200 at 10 µs, 100 at 30 µs, 100 at 1 ms.
        assert_eq!(m.histogram.len(), 400);
        assert!(
            (m.quantile_us(0.50) - 10.0).abs() < 0.01,
            "{}",
            m.quantile_us(0.5)
        );
        assert!((m.quantile_us(0.70) - 30.0).abs() < 0.03);
        assert!(
            (m.quantile_us(0.99) - 1000.0).abs() < 1.0,
            "{}",
            m.quantile_us(0.99)
        );
        // Throughput = total ops / total measured time, not the mean of the rounds' rates
        // (1000, 333, 1000 ops/s: mean 778).
        assert!((m.ops_per_sec() - 400.0 / 0.6).abs() < 1e-6);
        // CPU per op = total CPU / total ops.
        let (cpu, switches) = merged.cpu_per_op.unwrap();
        assert!((cpu - 8_000.0 / 400.0).abs() < 1e-9);
        assert!((switches - 80.0 / 400.0).abs() < 1e-9);
        let rounds: Vec<(usize, usize, u64, f64)> = merged
            .rounds
            .iter()
            .map(|r| (r.round, r.position, r.ops, r.ops_per_sec))
            .collect();
        assert_eq!(
            rounds,
            [(1, 1, 100, 1000.0), (2, 2, 100, 333.0), (3, 1, 200, 1000.0)]
        );
        // 3 significant digits: 30 µs is recorded as its bucket's highest value, 30.02 µs.
        assert!((merged.rounds[1].p50_us - 30.0).abs() < 0.03);
        assert_eq!(merged.rounds[2].cpu_us_per_op, Some(20.0));
        assert_eq!(merged.rounds[0].measured_seconds, 0.1);
    }

    #[test]
    fn cpu_is_left_out_when_a_round_could_not_read_it() {
        let slices = vec![
            Slice {
                round: 0,
                position: 0,
                measured: measured(&[1_000; 10], 10, 0),
                cpu: Some((100.0, 1.0)),
            },
            Slice {
                round: 1,
                position: 0,
                measured: measured(&[1_000; 10], 10, 0),
                cpu: None,
            },
        ];
        let merged = merge(slices).unwrap();
        assert_eq!(merged.cpu_per_op, None);
        assert_eq!(merged.rounds[0].cpu_us_per_op, Some(10.0));
        assert_eq!(merged.rounds[1].cpu_us_per_op, None);
        assert!(merge(Vec::new()).is_err());
    }

    #[test]
    fn a_histogram_round_trips_through_its_recorded_values() {
        let mut original = histogram().unwrap();
        for v in [1, 999, 1_000, 1_234_567, 99_999_999_999, 1_234_567] {
            original.record(v).unwrap();
        }
        let copy = from_recorded(&recorded(&original)).unwrap();
        assert_eq!(copy, original);
        for q in [0.0, 0.5, 0.99, 1.0] {
            assert_eq!(copy.value_at_quantile(q), original.value_at_quantile(q));
        }
        assert!(from_recorded(&[(u64::MAX, 1)]).is_err());
    }

    #[test]
    fn per_round_ratios_pair_the_same_round_and_spread_is_min_to_max() {
        let figures = |round, ops_per_sec| RoundFigures {
            round,
            position: 1,
            ops: 0,
            measured_seconds: 1.0,
            ops_per_sec,
            p50_us: 100.0,
            p99_us: 200.0,
            cpu_us_per_op: None,
        };
        let ours = [figures(1, 900.0), figures(2, 1000.0), figures(3, 800.0)];
        // The baseline missed round 3 (say): only rounds 1 and 2 pair up.
        let base = [figures(2, 1100.0), figures(1, 990.0)];
        let ratios = per_round(&ours, &base, |o, b| b.ops_per_sec / o.ops_per_sec);
        assert_eq!(ratios.len(), 2);
        assert!((ratios[0] - 1.1).abs() < 1e-9 && (ratios[1] - 1.1).abs() < 1e-9);
        let (lo, hi) = spread(&[1.17, 0.9, 1.02, f64::INFINITY]).unwrap();
        assert_eq!((lo, hi), (0.9, 1.17));
        assert_eq!(spread(&[]), None);
        assert_eq!(spread(&[1.0]), Some((1.0, 1.0)));
    }
}
