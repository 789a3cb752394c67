//! (f) The latency budget: N fresh requests (each under a new key: the claim, the handler and
//! the completion) and N replays (one key, answered from the store), one at a time on a
//! kept-alive connection, with p50 / p95 / p99 of each checked against a budget (the production
//! guide's 10 ms at p95 by default).

use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::check::{KeyUse, random_key};
use crate::{CheckResult, Probe};

/// Percentiles of one kind of request, in milliseconds.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Percentiles {
    /// Requests measured.
    pub count: u64,
    /// Median, ms.
    pub p50_ms: f64,
    /// 95th percentile, ms.
    pub p95_ms: f64,
    /// 99th percentile, ms.
    pub p99_ms: f64,
    /// Slowest, ms.
    pub max_ms: f64,
}

/// What the latency check measured.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LatencyReport {
    /// Requests under a new key each.
    pub fresh: Percentiles,
    /// Duplicates of one completed request.
    pub replay: Percentiles,
    /// The p95 budget, ms.
    pub budget_p95_ms: f64,
}

impl Percentiles {
    fn of(histogram: &Histogram<u64>) -> Self {
        let ms = |micros: u64| micros as f64 / 1000.0;
        Self {
            count: histogram.len(),
            p50_ms: ms(histogram.value_at_quantile(0.50)),
            p95_ms: ms(histogram.value_at_quantile(0.95)),
            p99_ms: ms(histogram.value_at_quantile(0.99)),
            max_ms: ms(histogram.max()),
        }
    }

    fn brief(&self) -> String {
        format!(
            "p50 {:.2} / p95 {:.2} / p99 {:.2} ms",
            self.p50_ms, self.p95_ms, self.p99_ms
        )
    }
}

/// A histogram of microseconds up to one minute, 3 significant figures.
fn histogram() -> Result<Histogram<u64>, String> {
    Histogram::new_with_bounds(1, 60_000_000, 3).map_err(|e| format!("histogram: {e}"))
}

fn record(histogram: &mut Histogram<u64>, elapsed: Duration) {
    let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
    histogram.saturating_record(micros.max(1));
}

/// Run check (f): `n` fresh requests and `n` replays.
pub(crate) async fn check(
    probe: &Probe,
    n: usize,
    budget: Duration,
) -> (CheckResult, Option<LatencyReport>) {
    const ID: &str = "f";
    const NAME: &str = "latency within budget";
    let fail = |detail: String| CheckResult {
        id: ID,
        name: NAME,
        passed: false,
        detail,
    };
    let (mut fresh, mut replay) = match (histogram(), histogram()) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(e), _) | (_, Err(e)) => return (fail(e), None),
    };
    for _ in 0..n {
        let key = random_key();
        let started = Instant::now();
        match probe.send(KeyUse::Key(&key), &probe.config.body).await {
            Ok(answer) if answer.status.is_success() && !answer.replayed => {
                record(&mut fresh, started.elapsed());
            }
            Ok(answer) => {
                return (
                    fail(format!(
                        "a fresh request answered {}{}",
                        answer.status.as_u16(),
                        if answer.replayed { " (a replay)" } else { "" }
                    )),
                    None,
                );
            }
            Err(error) => return (fail(error), None),
        }
    }
    let key = random_key();
    if let Err(error) = probe.send(KeyUse::Key(&key), &probe.config.body).await {
        return (fail(error), None);
    }
    for _ in 0..n {
        let started = Instant::now();
        match probe.send(KeyUse::Key(&key), &probe.config.body).await {
            Ok(answer) if answer.replayed => record(&mut replay, started.elapsed()),
            Ok(answer) => {
                return (
                    fail(format!(
                        "a duplicate answered {} without Idempotent-Replayed",
                        answer.status.as_u16()
                    )),
                    None,
                );
            }
            Err(error) => return (fail(error), None),
        }
    }
    let report = LatencyReport {
        fresh: Percentiles::of(&fresh),
        replay: Percentiles::of(&replay),
        budget_p95_ms: budget.as_secs_f64() * 1000.0,
    };
    let over: Vec<String> = [("fresh", &report.fresh), ("replay", &report.replay)]
        .into_iter()
        .filter(|(_, p)| p.p95_ms > report.budget_p95_ms)
        .map(|(what, p)| {
            format!(
                "{what} p95 {:.2} ms is over the {:.2} ms budget",
                p.p95_ms, report.budget_p95_ms
            )
        })
        .collect();
    let detail = format!(
        "{n} fresh: {}; {n} replays: {}; budget p95 ≤ {:.2} ms",
        report.fresh.brief(),
        report.replay.brief(),
        report.budget_p95_ms
    );
    let result = CheckResult {
        id: ID,
        name: NAME,
        passed: over.is_empty(),
        detail: if over.is_empty() {
            detail
        } else {
            format!("{}; {detail}", over.join("; "))
        },
    };
    (result, Some(report))
}
