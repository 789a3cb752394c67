//! # idempotency-loadgen
//!
//! The load generator behind `cargo xtask bench [--quick] [--out DIR]`: starts its own servers
//! on 127.0.0.1 (a Redis server, a 3-master Redis Cluster and a Postgres server from the testkit
//! fixtures, a SQLite file, the KV REST gateway in process, axum apps with and without the layer), runs a closed-loop load per
//! backend × scenario × concurrency with HdrHistogram latencies, writes `report.json`,
//! `report.md` and `latency.svg`, and stops every server.
//!
//! ```text
//! cargo run --release -p idempotency-loadgen -- [--quick] [--out DIR]
//!     [--backends a,b] [--scenarios fresh,replay,conflict] [--concurrency 1,16,64]
//!     [--rounds N] [--seconds S] [--warmup S]
//! ```
//!
//! # Method
//! The rows compared in a (scenario, concurrency) group — ours, its baselines, its peers —
//! run in interleaved rounds (full run: 3 rounds of 0.5 s warm-up + 1.7 s measured per row;
//! quick: 1 round), the order reversed every other round, so a burst of load or a drift of
//! the CPU clock falls on both sides of a ratio. A row's figures merge its rounds (see
//! `rounds`), and the report shows how much each ratio moved between single rounds.
//!
//! The options are parsed by `clap` (`--help` lists them with their defaults and choices).
//!
//! # Layout
//! - `scenario`: the scenarios and what every worker shares (lease, retention, request, outcome);
//! - `load`: the closed loop and histograms; `cells`: backends, servers, one slice of a row;
//! - `rounds`: the order of a group's slices, and merging a row's slices into its figures;
//! - `engine`: workers on our engine and memory store; `raw`: the plain `redis` baseline;
//! - `sql`: the Postgres server, the SQLite file and the `raw-postgres` baseline;
//! - `app`: the trivial handler and the child-process protocol of an HTTP app (each app runs
//!   in its own process, this executable re-run with the hidden `--serve <app>`);
//! - `http`: our apps and the hyper client; `servers`: server lifecycles;
//! - `procstat`: CPU time and context switches per operation, from `/proc`;
//! - `duplicates`: what 16 concurrent duplicates do to each HTTP layer;
//! - `machine`: what the run was measured on; `report`: JSON, Markdown and SVG.
//!
//! # Peers
//! `--peers-bin` names the binary of `bench/peers` (a crate outside the workspace, built by
//! `cargo xtask bench`): it runs the `peer-idempotent` cells (the `idempotent` crate's Redis
//! store, on this run's Redis server, in the same closed loop — `load` is compiled into it) and
//! serves `peer-axum-idempotent` (the same handler behind `axum-idempotent`). Without it, or
//! with a Redis older than 7.4 for the HTTP peer, those rows are left out and `report.md` says
//! so at the top.

mod app;
mod cells;
mod duplicates;
mod engine;
mod floor;
mod http;
mod load;
mod machine;
mod procstat;
mod raw;
mod report;
mod rounds;
mod scenario;
mod servers;
mod sql;

use std::io::{IsTerminal as _, Write as _};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use clap::Parser;
use clap::builder::RangedU64ValueParser;

use crate::cells::{Backend, Cell, Env, Stores};
use crate::load::{Counter, Plan};
use crate::report::{Report, Row, ServerVersions};
use crate::rounds::Slice;
use crate::scenario::Scenario;

/// What to run, from the command line (parsed by clap; `--help` lists every option).
#[derive(Debug, Parser)]
#[command(
    name = "idempotency-loadgen",
    about = "Closed-loop latency benchmark (run by `cargo xtask bench`)",
    after_help = "Servers (Redis, a 3-master Redis Cluster, Postgres, the KV REST gateway, the axum \
                  apps) are started on 127.0.0.1 and stopped at the end (SQLite is a file in a \
                  temporary directory). IDEMPOTENCY_TEST_POSTGRES_URL points the SQL rows at an \
                  existing Postgres (its idempotency_records table is created if missing and \
                  truncated before each group of rows). IDEMPOTENCY_TEST_REDIS_URL points the single-server \
                  rows at an existing Redis instead (it is flushed before each group of rows)."
)]
struct Args {
    /// One short round (~1.5 min in all on 2 cores) instead of the full run (3 rounds,
    /// ~13 min).
    #[arg(long)]
    quick: bool,
    /// Where report.json, report.md and latency.svg go [default: target/bench].
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Backends to run (default: all), comma-separated.
    #[arg(long, value_delimiter = ',', num_args = 1..)]
    backends: Vec<Backend>,
    /// Scenarios to run (default: all), comma-separated.
    #[arg(long, value_delimiter = ',', num_args = 1..)]
    scenarios: Vec<Scenario>,
    /// Tasks per cell, comma-separated, 1 to 4096 (each task holds its own connection to an
    /// HTTP app; more would exhaust file descriptors and memory before measuring anything).
    #[arg(
        long,
        value_delimiter = ',',
        num_args = 1..,
        default_values_t = [1_usize, 16, 64],
        value_parser = RangedU64ValueParser::<usize>::new().range(1..=4096)
    )]
    concurrency: Vec<usize>,
    /// Rounds per (scenario, concurrency) group: each row of the group runs one slice per
    /// round, the order reversed every other round (default 3, quick 1; at most 100).
    #[arg(long, value_name = "N", value_parser = RangedU64ValueParser::<usize>::new().range(1..=100))]
    rounds: Option<usize>,
    /// Measured seconds per slice (default 1.7, quick 0.8; in-process rows at most 0.7, quick
    /// 0.5).
    #[arg(long, value_name = "S", value_parser = measured_seconds)]
    seconds: Option<Duration>,
    /// Unrecorded seconds before each slice (default 0.5, quick 0.2; in-process rows at most
    /// 0.3).
    #[arg(long, value_name = "S", value_parser = seconds)]
    warmup: Option<Duration>,
    /// The peers binary (bench/peers), for the peer rows; without it they are left out.
    #[arg(long, value_name = "PATH")]
    peers_bin: Option<PathBuf>,
    /// Serve one HTTP app in this process (the load generator starts each app this way).
    #[arg(long, hide = true, value_name = "APP")]
    serve: Option<crate::http::App>,
    /// The Redis server of `--serve redis`.
    #[arg(long, hide = true, value_name = "URL")]
    redis_url: Option<String>,
}

/// A measured slice's seconds: as [`seconds`], but not zero (a slice of 0 s measures nothing and
/// reported rows of 0 ops/s and p50 0 µs).
fn measured_seconds(text: &str) -> Result<Duration, String> {
    match seconds(text)? {
        Duration::ZERO => Err(format!("a measured slice must last more than 0 s: {text}")),
        measured => Ok(measured),
    }
}

/// A number of seconds, fractions allowed (`0.5`).
fn seconds(text: &str) -> Result<Duration, String> {
    let value: f64 = text
        .parse()
        .map_err(|_| format!("not a number of seconds: {text}"))?;
    Duration::try_from_secs_f64(value).map_err(|error| format!("bad duration {text}: {error}"))
}

/// What to run, resolved: the defaults of the mode, overridden by the options given.
#[derive(Debug)]
struct Options {
    quick: bool,
    out: PathBuf,
    backends: Vec<Backend>,
    scenarios: Vec<Scenario>,
    concurrency: Vec<usize>,
    rounds: usize,
    /// Per slice.
    warmup: Duration,
    /// Per slice.
    measure: Duration,
    /// Per slice, for the in-process rows.
    in_process_measure: Duration,
    peers_bin: Option<PathBuf>,
}

impl From<Args> for Options {
    fn from(args: Args) -> Self {
        // Full: 3 rounds of 0.5 s + 1.7 s per row (6.6 s a row, ~2 s for the in-process
        // rows): 108 network rows and 18 in-process ones come to ~12.8 min of slices.
        let (rounds, warmup, measure, in_process_measure) = if args.quick {
            (
                1,
                Duration::from_millis(200),
                Duration::from_millis(800),
                Duration::from_millis(500),
            )
        } else {
            (
                3,
                Duration::from_millis(500),
                Duration::from_millis(1700),
                Duration::from_millis(700),
            )
        };
        let measure_given = args.seconds;
        Self {
            quick: args.quick,
            out: args.out.unwrap_or_else(|| {
                PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/bench")
            }),
            backends: if args.backends.is_empty() {
                Backend::ALL.to_vec()
            } else {
                args.backends
            },
            scenarios: if args.scenarios.is_empty() {
                Scenario::ALL.to_vec()
            } else {
                args.scenarios
            },
            concurrency: args.concurrency,
            rounds: args.rounds.unwrap_or(rounds),
            warmup: args.warmup.unwrap_or(warmup),
            measure: measure_given.unwrap_or(measure),
            in_process_measure: measure_given
                .map_or(in_process_measure, |m| in_process_measure.min(m)),
            peers_bin: args.peers_bin,
        }
    }
}

impl Options {
    fn plan(&self, cell: &Cell) -> Plan {
        if cell.backend.in_process() {
            Plan {
                warmup: self.warmup.min(Duration::from_millis(300)),
                measure: self.in_process_measure,
                // A fresh row keeps every record of all its rounds in one store: bound the
                // memory it takes (~3 M records in all).
                max_ops_per_task: (cell.scenario == Scenario::Fresh)
                    .then(|| 3_000_000 / (cell.concurrency * self.rounds) as u64),
                yield_every: Some(32),
            }
        } else {
            Plan {
                warmup: self.warmup,
                measure: self.measure,
                max_ops_per_task: None,
                yield_every: None,
            }
        }
    }

    /// The (scenario, concurrency) groups, in run order.
    fn groups(&self) -> Vec<(Scenario, usize)> {
        self.scenarios
            .iter()
            .flat_map(|&s| self.concurrency.iter().map(move |&c| (s, c)))
            .collect()
    }
}

/// The progress line on stderr: redrawn in place on a terminal, one line per cell otherwise.
struct Progress {
    label: Mutex<String>,
    counter: Arc<Counter>,
    stop: AtomicBool,
    tty: bool,
}

impl Progress {
    fn start() -> Arc<Self> {
        let progress = Arc::new(Self {
            label: Mutex::new(String::new()),
            counter: Arc::new(Counter::default()),
            stop: AtomicBool::new(false),
            tty: std::io::stderr().is_terminal(),
        });
        if progress.tty {
            let shown = Arc::clone(&progress);
            std::thread::spawn(move || {
                while !shown.stop.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(250));
                    let label = shown.label.lock().map(|l| l.clone()).unwrap_or_default();
                    if !label.is_empty() {
                        eprint!("\r\x1b[K{label}  {} ops", shown.counter.get());
                        let _ = std::io::stderr().flush();
                    }
                }
            });
        }
        progress
    }

    fn begin(&self, label: String) {
        self.counter.reset();
        if let Ok(mut l) = self.label.lock() {
            *l = label;
        }
    }

    fn done(&self, line: String) {
        if let Ok(mut l) = self.label.lock() {
            l.clear();
        }
        if self.tty {
            eprintln!("\r\x1b[K{line}");
        } else {
            eprintln!("{line}");
        }
    }
}

fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("loadgen: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// The peers the peers binary measures (its Cargo.toml pins these versions).
const PEERS: [&str; 2] = [
    "idempotent 2.0.0 (ValkeyStore on this run's Redis)",
    "axum-idempotent 0.6.0 (header mode, ruts 0.13 Redis session store, same handler)",
];

/// The first `redis-server` on `PATH` (the one the fixtures start).
fn redis_binary() -> String {
    std::env::var_os("PATH")
        .and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|dir| dir.join("redis-server"))
                .find(|path| path.is_file())
        })
        .map_or_else(|| "not found".to_owned(), |p| p.display().to_string())
}

fn run() -> Result<()> {
    let args = Args::parse();
    if let Some(app) = args.serve {
        return app.serve(args.redis_url);
    }
    let options = Options::from(args);
    let started = Instant::now();
    let mut machine = machine::Machine::probe();
    eprintln!(
        "loadgen: {} rows ({} backends × {} scenarios × {} concurrencies) × {} round{} of {:.1} s \
         + {:.1} s, {} mode; load average {}",
        options.backends.len() * options.groups().len(),
        options.backends.len(),
        options.scenarios.len(),
        options.concurrency.len(),
        options.rounds,
        if options.rounds == 1 { "" } else { "s" },
        options.warmup.as_secs_f64(),
        options.measure.as_secs_f64(),
        if options.quick { "quick" } else { "full" },
        machine
            .load_average_start
            .map_or_else(|| "?".into(), |l| format!("{l:.2}")),
    );
    let net = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    // In-process rows run on one thread: "ops/s on one core".
    let local = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut env = Env::start(options.peers_bin.clone())?;
    let outcome = net
        .block_on(env.connect())
        .and_then(|(versions, mut notes)| {
            let duplicates = net.block_on(duplicates::check(&env, &mut notes));
            run_groups(&options, &env, &net, &local).map(|rows| (versions, notes, duplicates, rows))
        });
    // Stop every server whatever happened.
    drop(local);
    let stop_result = env.stop();
    drop(net);
    let (versions, notes, duplicates, rows) = outcome?;
    for note in &notes {
        eprintln!("loadgen: NOTE: {note}");
    }
    stop_result?;
    machine.load_average_end = machine::load_average();
    let report = Report {
        machine,
        date: machine::utc_now(),
        git_commit: machine::git_commit(),
        servers: ServerVersions {
            redis: versions.redis,
            redis_cluster: versions.cluster,
            postgres: versions.postgres,
            kv_rest_gateway: format!("kv-rest-gateway {} (in process)", env!("CARGO_PKG_VERSION")),
            http_server: "axum 0.8 / hyper 1 (HTTP/1.1, keep-alive), one process per app"
                .to_owned(),
            redis_binary: redis_binary(),
            peers: if options.peers_bin.is_some() {
                PEERS.iter().map(|p| (*p).to_owned()).collect()
            } else {
                Vec::new()
            },
        },
        mode: if options.quick { "quick" } else { "full" },
        warmup_seconds: options.warmup.as_secs_f64(),
        measure_seconds: options.measure.as_secs_f64(),
        in_process_measure_seconds: options.in_process_measure.as_secs_f64(),
        rounds: options.rounds,
        order: rounds::ORDER,
        duration_seconds: started.elapsed().as_secs_f64().round(),
        notes,
        duplicates,
        round_ratios: report::round_ratios(&rows),
        rows,
    };
    report.write(&options.out)?;
    eprintln!(
        "loadgen: done in {:.0} s; wrote report.json, report.md, latency.svg to {}",
        started.elapsed().as_secs_f64(),
        options.out.display()
    );
    Ok(())
}

/// Run every (scenario, concurrency) group: its rows in interleaved rounds (see `rounds`),
/// then one row per backend from its slices.
fn run_groups(
    options: &Options,
    env: &Env,
    net: &tokio::runtime::Runtime,
    local: &tokio::runtime::Runtime,
) -> Result<Vec<Row>> {
    // The rows left out are said in the report's notes.
    let backends: Vec<Backend> = options
        .backends
        .iter()
        .copied()
        .filter(|b| env.can_run(*b))
        .collect();
    let groups = options.groups();
    let total = groups.len() * backends.len() * options.rounds;
    let progress = Progress::start();
    let mut rows = Vec::with_capacity(groups.len() * backends.len());
    let mut next_id = 0;
    let mut measured_cells = 0;
    // A warm-up pass first, not reported: the first group once, all its rounds. Whichever
    // group ran first used to pay what only a process's first minute pays — the load
    // generator's and each app's heap faulted in page by page from the kernel (a `fresh`
    // group's records take ~1 GB), connection pools and caches filled — while every later group
    // reused that memory: the in-process `memory` row measured 8–30 % fewer fresh operations per
    // second at whichever concurrency came first (1 task in the default order, 64 when the order
    // was reversed). A service in production runs warm.
    let warm_up = groups.first().map(|group| (*group, false));
    let passes = warm_up
        .into_iter()
        .chain(groups.iter().map(|group| (*group, true)));
    for ((scenario, concurrency), reported) in passes {
        net.block_on(env.reset())
            .context("emptying the stores before a group")?;
        let stores = Stores::new();
        let mut slices: Vec<Vec<Slice>> = backends.iter().map(|_| Vec::new()).collect();
        for round in 0..options.rounds {
            for (position, index) in rounds::order(backends.len(), round).into_iter().enumerate() {
                let cell = Cell {
                    id: next_id,
                    backend: backends[index],
                    scenario,
                    concurrency,
                };
                next_id += 1;
                let step = if reported {
                    measured_cells += 1;
                    format!("[{measured_cells:>3}/{total}]")
                } else {
                    "[warm-up]".to_owned()
                };
                let label = format!(
                    "{step} {:<20} {:<8} {:>2} tasks  round {}/{}",
                    cell.backend.name(),
                    scenario.name(),
                    concurrency,
                    round + 1,
                    options.rounds,
                );
                progress.begin(label.clone());
                let plan = options.plan(&cell);
                let counter = Arc::clone(&progress.counter);
                let runtime = if cell.backend.in_process() {
                    local
                } else {
                    net
                };
                let (measured, cpu) = runtime
                    .block_on(cells::run(env, cell, plan, counter, &stores))
                    .with_context(|| format!("{label}: {}", cell.backend.name()))?;
                progress.done(format!(
                    "{label}  p50 {:>9}  p99 {:>9}  {:>9} ops/s",
                    report::human_us(measured.quantile_us(0.50)),
                    report::human_us(measured.quantile_us(0.99)),
                    report::human_rate(measured.ops_per_sec()),
                ));
                slices[index].push(Slice {
                    round,
                    position,
                    measured,
                    cpu,
                });
            }
        }
        if !reported {
            continue;
        }
        let group_start = rows.len();
        for (backend, slices) in backends.iter().zip(slices) {
            let row = Row::new(
                backend.name(),
                scenario.name(),
                concurrency,
                rounds::merge(slices)?,
            );
            eprintln!("{}", row_line(&row, backend.is_http()));
            rows.push(row);
        }
        for ratios in report::round_ratios(&rows[group_start..]) {
            eprintln!("{}", ratio_line(&ratios));
        }
    }
    progress.stop.store(true, Ordering::Relaxed);
    Ok(rows)
}

/// A row's merged figures on stderr.
fn row_line(row: &Row, http: bool) -> String {
    let errors = match &row.first_error {
        Some(first) => format!("  {} errors, first: {first}", row.errors),
        None => String::new(),
    };
    let cpu = match (row.cpu_us_per_op, row.context_switches_per_op) {
        (Some(cpu), Some(switches)) if http => {
            format!("  app {cpu:.1} µs CPU, {switches:.2} ctx sw /req")
        }
        _ => String::new(),
    };
    format!(
        "  = {:<20} {:<8} {:>2} tasks, {} round{}: p50 {:>9}  p99 {:>9}  {:>9} ops/s{cpu}{errors}",
        row.backend,
        row.scenario,
        row.concurrency,
        row.rounds.len(),
        if row.rounds.len() == 1 { "" } else { "s" },
        report::human_us(row.p50_us),
        report::human_us(row.p99_us),
        report::human_rate(row.ops_per_sec),
    )
}

/// A compared pair's per-round ratios on stderr.
fn ratio_line(r: &report::RoundRatios) -> String {
    let list = |values: &[f64]| {
        values
            .iter()
            .map(|v| format!("{v:.2}"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let spread = |values: &[f64]| {
        rounds::spread(values)
            .filter(|_| values.len() > 1)
            .map_or_else(String::new, |(lo, hi)| format!(" (spread {lo:.2}–{hi:.2})"))
    };
    format!(
        "  ~ {} / {} {} {}: per round p50 × [{}]{}, throughput × [{}]{} ({})",
        r.ours,
        r.against,
        r.scenario,
        r.concurrency,
        list(&r.p50),
        spread(&r.p50),
        list(&r.throughput),
        spread(&r.throughput),
        if r.kind == "baseline" {
            "baseline ops/s ÷ ours"
        } else {
            "ours ÷ peer"
        },
    )
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    use super::*;

    fn options(args: &[&str]) -> Result<Options, clap::Error> {
        let argv = std::iter::once("idempotency-loadgen").chain(args.iter().copied());
        Args::try_parse_from(argv).map(Options::from)
    }

    #[test]
    fn the_command_line_is_well_formed() {
        Args::command().debug_assert();
    }

    #[test]
    fn defaults_then_the_quick_mode_then_explicit_values() {
        let full = options(&[]).unwrap();
        assert_eq!(full.backends, Backend::ALL);
        assert_eq!(full.scenarios, Scenario::ALL);
        assert_eq!(full.concurrency, [1, 16, 64]);
        assert_eq!(
            (full.rounds, full.warmup, full.measure),
            (3, Duration::from_millis(500), Duration::from_millis(1700))
        );
        assert_eq!(full.in_process_measure, Duration::from_millis(700));
        assert!(full.out.ends_with("target/bench"));

        let quick = options(&["--quick", "--seconds", "0.3"]).unwrap();
        assert_eq!(quick.rounds, 1);
        assert_eq!(quick.warmup, Duration::from_millis(200));
        assert_eq!(quick.measure, Duration::from_millis(300));
        assert_eq!(quick.in_process_measure, Duration::from_millis(300));

        let some = options(&[
            "--backends",
            "memory,kv-rest",
            "--scenarios",
            "replay",
            "--concurrency",
            "2,4",
            "--out",
            "/tmp/x",
            "--rounds",
            "5",
        ])
        .unwrap();
        assert_eq!(some.rounds, 5);
        assert_eq!(
            some.groups(),
            [(Scenario::Replay, 2), (Scenario::Replay, 4)]
        );
        assert_eq!(some.backends, [Backend::Memory, Backend::KvRest]);
        assert_eq!(some.scenarios, [Scenario::Replay]);
        assert_eq!(some.concurrency, [2, 4]);
        assert_eq!(some.out, PathBuf::from("/tmp/x"));
    }

    #[test]
    fn bad_values_are_refused() {
        for args in [
            &["--backends", "mongo"][..],
            &["--scenarios", "fresh,later"],
            &["--concurrency", "0"],
            &["--concurrency", "4097"],
            &["--concurrency", "5000000"],
            &["--rounds", "101"],
            &["--rounds", "0"],
            &["--rounds", "two"],
            &["--seconds", "soon"],
            &["--seconds", "0"],
            &["--seconds", "0.0"],
            &["--seconds", "nan"],
            &["--seconds", "1e30"],
            &["--warmup", "-1"],
            &["--frobnicate"],
        ] {
            assert!(options(args).is_err(), "{args:?} was accepted");
        }
    }
}
