//! The closed loop: `concurrency` tasks, each running one operation after another for a fixed
//! time, recording every operation's latency in its own HdrHistogram; merged at the end.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use hdrhistogram::Histogram;

/// One task's state: a connection, a key counter... `op` runs one operation and says whether
/// it got the expected answer (an unexpected answer is an error, counted and reported).
pub(crate) trait Worker: Send + 'static {
    fn op(&mut self) -> impl Future<Output = Result<()>> + Send;
}

/// How long a cell runs.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Plan {
    /// Operations before this are not recorded (connections warm, caches filled).
    pub(crate) warmup: Duration,
    /// Recorded time.
    pub(crate) measure: Duration,
    /// Stop a task after this many recorded operations (bounds memory for in-process stores).
    pub(crate) max_ops_per_task: Option<u64>,
    /// In-process operations never wait, so a task would hold its thread for the whole cell:
    /// yield to the other tasks every this many operations.
    pub(crate) yield_every: Option<u32>,
}

/// A cell's merged figures.
#[derive(Debug)]
pub(crate) struct Measured {
    /// Latencies in nanoseconds.
    pub(crate) histogram: Histogram<u64>,
    pub(crate) ops: u64,
    pub(crate) errors: u64,
    pub(crate) elapsed: Duration,
    pub(crate) first_error: Option<String>,
}

impl Measured {
    pub(crate) fn ops_per_sec(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 {
            self.ops as f64 / secs
        } else {
            0.0
        }
    }

    /// The latency at `quantile`, in microseconds.
    pub(crate) fn quantile_us(&self, quantile: f64) -> f64 {
        self.histogram.value_at_quantile(quantile) as f64 / 1000.0
    }
}

/// Operations done so far in the running cell, for the progress line.
#[derive(Debug, Default)]
pub(crate) struct Counter(AtomicU64);

impl Counter {
    pub(crate) fn reset(&self) {
        self.0.store(0, Ordering::Relaxed);
    }
    pub(crate) fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
    fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
}

struct TaskResult {
    histogram: Histogram<u64>,
    ops: u64,
    errors: u64,
    last_done: Instant,
    first_error: Option<String>,
}

/// Latencies from 1 ns to 100 s, 3 significant digits.
fn histogram() -> Result<Histogram<u64>> {
    Histogram::new_with_bounds(1, 100_000_000_000, 3).context("histogram bounds")
}

/// Run `workers` concurrently (one task each) on the current runtime under `plan`.
pub(crate) async fn run<W: Worker>(
    workers: Vec<W>,
    plan: Plan,
    counter: Arc<Counter>,
) -> Result<Measured> {
    let measure_start = Instant::now() + plan.warmup;
    let end = measure_start + plan.measure;
    let mut handles = Vec::with_capacity(workers.len());
    for worker in workers {
        let counter = Arc::clone(&counter);
        handles.push(tokio::spawn(task(
            worker,
            plan,
            measure_start,
            end,
            counter,
        )));
    }
    let mut merged = histogram()?;
    let (mut ops, mut errors, mut first_error) = (0, 0, None);
    let mut last_done = measure_start;
    for handle in handles {
        let result = handle.await.context("load task panicked")??;
        merged
            .add(&result.histogram)
            .context("merging histograms")?;
        ops += result.ops;
        errors += result.errors;
        last_done = last_done.max(result.last_done);
        first_error = first_error.or(result.first_error);
    }
    Ok(Measured {
        histogram: merged,
        ops,
        errors,
        elapsed: last_done.saturating_duration_since(measure_start),
        first_error,
    })
}

async fn task<W: Worker>(
    mut worker: W,
    plan: Plan,
    measure_start: Instant,
    end: Instant,
    counter: Arc<Counter>,
) -> Result<TaskResult> {
    let mut histogram = histogram()?;
    let (mut ops, mut errors, mut first_error) = (0u64, 0u64, None);
    let mut unreported = 0u64;
    let mut since_yield = 0u32;
    let mut last_done = measure_start;
    // Network operations take ~100 µs: report each. In-process ones take ~1 µs: batch.
    let report_every = if plan.yield_every.is_some() { 1024 } else { 1 };
    // An operation starts when the one before it ended (one clock read per operation, not two:
    // ~10 % of an in-process operation on this class of machine). Its latency then includes
    // recording the one before (tens of ns): conservative, never flattering. After a yield the
    // clock is read again, so other tasks' turns never count.
    let mut started = Instant::now();
    loop {
        if started >= end || plan.max_ops_per_task.is_some_and(|max| ops >= max) {
            break;
        }
        let outcome = worker.op().await;
        let done = Instant::now();
        let began = std::mem::replace(&mut started, done);
        if began >= measure_start {
            let nanos = u64::try_from((done - began).as_nanos()).unwrap_or(u64::MAX);
            histogram.saturating_record(nanos.max(1));
            last_done = done;
            ops += 1;
            if let Err(error) = outcome {
                errors += 1;
                if first_error.is_none() {
                    first_error = Some(format!("{error:#}"));
                }
            }
        }
        unreported += 1;
        if unreported >= report_every {
            counter.add(unreported);
            unreported = 0;
        }
        if let Some(every) = plan.yield_every {
            since_yield += 1;
            if since_yield >= every {
                since_yield = 0;
                tokio::task::yield_now().await;
                started = Instant::now();
            }
        }
    }
    counter.add(unreported);
    Ok(TaskResult {
        histogram,
        ops,
        errors,
        last_done,
        first_error,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An operation that takes at least `each` (busy: no await inside).
    struct Busy {
        each: Duration,
    }

    impl Worker for Busy {
        async fn op(&mut self) -> Result<()> {
            let start = Instant::now();
            while start.elapsed() < self.each {
                std::hint::spin_loop();
            }
            Ok(())
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn every_recorded_latency_covers_its_whole_operation() {
        // An operation's start is the end of the one before (or a read after a yield): never
        // later than the operation really began, so no latency is shorter than the operation.
        let plan = Plan {
            warmup: Duration::ZERO,
            measure: Duration::from_secs(30),
            max_ops_per_task: Some(20),
            yield_every: Some(3),
        };
        let each = Duration::from_micros(200);
        let workers = vec![Busy { each }, Busy { each }];
        let measured = run(workers, plan, Arc::new(Counter::default()))
            .await
            .unwrap();
        assert_eq!(measured.ops, 40);
        assert_eq!(measured.errors, 0);
        assert_eq!(measured.histogram.len(), 40);
        // `min()` is the lowest value of the bucket the shortest latency fell in (3 significant
        // digits: 128 ns wide here), so a latency of 200.0x µs reads as 199 936 ns: compare with
        // the lowest value of 200 µs's own bucket.
        let floor = measured.histogram.lowest_equivalent(200_000);
        assert!(floor <= 200_000 && 200_000 - floor < 200);
        assert!(
            measured.histogram.min() >= floor,
            "{} ns",
            measured.histogram.min()
        );
    }
}
