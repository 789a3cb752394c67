//! `idempotency-chaos`: run the fault-injection scenarios and write `report.json` / `report.md`.
//! Normally started by `cargo xtask chaos [--quick]`, which builds the binaries first.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use idempotency_chaos::plan::{self, Backend, Fault, Params, Policy, Schedule};
use idempotency_chaos::report::RunReport;
use idempotency_chaos::scenario::{self, Binaries};
use idempotency_chaos::{ChaosError, procs};

/// Fault injection against real demo instances, Redis, the KV REST gateway and Postgres
/// (loopback only).
#[derive(Debug, Parser)]
#[command(name = "idempotency-chaos", version, about)]
struct Args {
    /// The bounded variant run by `cargo xtask test` (< 60 s): one scenario per kind of fault,
    /// fail-closed, 40 keys each.
    #[arg(long)]
    quick: bool,

    /// Directory holding the `idempotency-demo` and `kv-rest-gateway` binaries.
    #[arg(long)]
    bin_dir: PathBuf,

    /// Where report.json, report.md and the per-scenario journals and logs go.
    #[arg(long, default_value = "target/chaos")]
    out: PathBuf,

    /// Seed of the schedule (launch times, fault times, backoff jitter).
    #[arg(long, default_value_t = 13)]
    seed: u64,

    /// Backends (comma-separated): memory, redis, kv-rest, sql [default: all].
    #[arg(long, value_delimiter = ',')]
    backends: Vec<String>,

    /// Faults (comma-separated): none, store-pause, store-kill, gateway-kill, demo-kill
    /// [default: every one that applies].
    #[arg(long, value_delimiter = ',')]
    faults: Vec<String>,

    /// Failure policies passed as IDEMPOTENCY_FAILURE_POLICY (comma-separated): closed, open,
    /// fallback [default: closed,open,fallback; quick: closed].
    #[arg(long, value_delimiter = ',')]
    policies: Vec<String>,

    /// Keys per scenario (overrides the variant's).
    #[arg(long)]
    keys: Option<usize>,

    /// Scenarios run at the same time (overrides the variant's).
    #[arg(long)]
    parallel: Option<usize>,

    /// Claim lease passed to every demo instance as IDEMPOTENCY_LEASE (e.g. `2s`) [default:
    /// the demo's own]. A lease shorter than the outage lets a retry take over the claim of a
    /// killed handler within the run.
    #[arg(long)]
    lease: Option<String>,
}

fn parse_all<T>(
    names: &[String],
    parse: fn(&str) -> Option<T>,
    what: &str,
) -> Result<Vec<T>, String> {
    names
        .iter()
        .map(|n| parse(n.trim()).ok_or_else(|| format!("unknown {what} `{n}`")))
        .collect()
}

fn machine() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let load = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "?".into());
    format!("{cpus} logical CPUs, load average {load} at the start")
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    tokio::select! {
        code = run(args) => code,
        _ = tokio::signal::ctrl_c() => {
            eprintln!("chaos: interrupted; stopping every process it started");
            procs::kill_all_registered();
            ExitCode::from(130)
        }
    }
}

async fn run(args: Args) -> ExitCode {
    match plan_and_run(args).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(message) => {
            eprintln!("chaos: {message}");
            ExitCode::FAILURE
        }
    }
}

/// `Ok(true)`: every guarantee held.
async fn plan_and_run(args: Args) -> Result<bool, String> {
    let mut params = if args.quick {
        Params::quick()
    } else {
        Params::full()
    };
    if let Some(keys) = args.keys {
        params.keys = keys.max(1);
    }
    if let Some(parallel) = args.parallel {
        params.parallel = parallel.max(1);
    }
    params.lease = args.lease.clone();
    let customised =
        !args.backends.is_empty() || !args.faults.is_empty() || !args.policies.is_empty();
    let specs = if args.quick && !customised {
        plan::quick_matrix()
    } else {
        let backends = if args.backends.is_empty() {
            Backend::ALL.to_vec()
        } else {
            parse_all(&args.backends, Backend::parse, "backend")?
        };
        let faults = if args.faults.is_empty() {
            None
        } else {
            Some(parse_all(&args.faults, Fault::parse, "fault")?)
        };
        let policies = if args.policies.is_empty() {
            if args.quick {
                vec![Policy::Closed]
            } else {
                Policy::ALL.to_vec()
            }
        } else {
            parse_all(&args.policies, Policy::parse, "policy")?
        };
        plan::matrix(&backends, faults.as_deref(), &policies)
    };
    let bins = Binaries::in_dir(&args.bin_dir);
    for bin in [&bins.demo, &bins.gateway] {
        if !bin.is_file() {
            return Err(format!(
                "{} does not exist: build it first (`cargo xtask chaos` does)",
                bin.display()
            ));
        }
    }
    let mut report = RunReport {
        variant: if args.quick { "quick" } else { "full" }.to_owned(),
        seed: args.seed,
        params: params.clone(),
        machine: machine(),
        scenarios: Vec::new(),
        failed_to_run: Vec::new(),
    };
    eprintln!(
        "chaos: {} scenario(s), seed {}, {} keys each, {} at a time; {}",
        specs.len(),
        args.seed,
        params.keys,
        params.parallel,
        report.machine
    );
    let total = specs.len();
    let mut done = 0;
    for chunk in specs
        .iter()
        .copied()
        .enumerate()
        .collect::<Vec<_>>()
        .chunks(params.parallel.max(1))
    {
        let mut running = Vec::new();
        for &(index, spec) in chunk {
            let schedule = Schedule::new(args.seed, index, &params);
            let dir = args.out.join("scenarios").join(format!(
                "{index:02}-{}-{}-{}",
                spec.backend, spec.fault, spec.policy
            ));
            let (params, bins) = (params.clone(), bins.clone());
            eprintln!("chaos: [{}/{total}] {spec}: starting", index + 1);
            running.push((
                spec,
                tokio::spawn(
                    async move { scenario::run(spec, &params, &schedule, &bins, &dir).await },
                ),
            ));
        }
        for (spec, task) in running {
            done += 1;
            let result: Result<_, ChaosError> = task
                .await
                .unwrap_or_else(|e| Err(ChaosError::Process(format!("scenario panicked: {e}"))));
            match result {
                Ok(s) => {
                    eprintln!(
                        "chaos: [{done}/{total}] {spec}: {} requests, {} executions, {} duplicates \
                         (+{} crash window), {} divergent, {} unanswered, p99 {}, {:.1} s{}",
                        s.requests,
                        s.executions,
                        s.duplicates,
                        s.duplicates_crash_window,
                        s.divergent,
                        s.unanswered,
                        s.p99_ms.map_or("–".into(), |v| format!("{v:.0} ms")),
                        Duration::from_millis(s.wall_ms).as_secs_f64(),
                        if s.violations.is_empty() {
                            String::new()
                        } else {
                            format!("; FAILED: {}", s.violations.join("; "))
                        }
                    );
                    report.scenarios.push(s);
                }
                Err(error) => {
                    eprintln!("chaos: [{done}/{total}] {spec}: could not run: {error}");
                    report
                        .failed_to_run
                        .push(format!("{spec}: could not run: {error}"));
                }
            }
        }
    }
    report.write(&args.out).map_err(|e| e.to_string())?;
    print!("{}", report.markdown());
    eprintln!(
        "chaos: wrote {} and {}",
        args.out.join("report.json").display(),
        args.out.join("report.md").display()
    );
    Ok(report.violations().is_empty())
}
