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
//!     [--seconds S] [--warmup S]
//! ```
//!
//! The options are parsed by `clap` (`--help` lists them with their defaults and choices).
//!
//! # Layout
//! - `scenario`: the scenarios and what every worker shares (lease, retention, request, outcome);
//! - `load`: the closed loop and histograms; `cells`: backends, servers, one cell;
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
mod http;
mod load;
mod machine;
mod procstat;
mod raw;
mod report;
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

use crate::cells::{Backend, Cell, Env};
use crate::load::{Counter, Plan};
use crate::report::{Report, Row, ServerVersions};
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
                  truncated between cells). IDEMPOTENCY_TEST_REDIS_URL points the single-server \
                  rows at an existing Redis instead (it is flushed between cells)."
)]
struct Args {
    /// Short cells (~1.5 min in all on 2 cores) instead of the full run (~8 min).
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
    /// Tasks per cell, comma-separated.
    #[arg(
        long,
        value_delimiter = ',',
        num_args = 1..,
        default_values_t = [1_usize, 16, 64],
        value_parser = RangedU64ValueParser::<usize>::new().range(1..)
    )]
    concurrency: Vec<usize>,
    /// Measured seconds per cell (default 5, quick 0.8; in-process rows at most 2).
    #[arg(long, value_name = "S", value_parser = seconds)]
    seconds: Option<Duration>,
    /// Unrecorded seconds before each cell (default 1, quick 0.2).
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
    warmup: Duration,
    measure: Duration,
    in_process_measure: Duration,
    peers_bin: Option<PathBuf>,
}

impl From<Args> for Options {
    fn from(args: Args) -> Self {
        let (warmup, measure, in_process_measure) = if args.quick {
            (
                Duration::from_millis(200),
                Duration::from_millis(800),
                Duration::from_millis(500),
            )
        } else {
            (
                Duration::from_millis(1000),
                Duration::from_secs(5),
                Duration::from_secs(2),
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
                // A fresh cell keeps every record: bound the memory it takes (~3 M records).
                max_ops_per_task: (cell.scenario == Scenario::Fresh)
                    .then(|| 3_000_000 / cell.concurrency as u64),
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

    fn cells(&self) -> Vec<Cell> {
        let mut cells = Vec::new();
        for &scenario in &self.scenarios {
            for &concurrency in &self.concurrency {
                for &backend in &self.backends {
                    cells.push(Cell {
                        id: cells.len(),
                        backend,
                        scenario,
                        concurrency,
                    });
                }
            }
        }
        cells
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
    let cells = options.cells();
    eprintln!(
        "loadgen: {} cells ({} backends × {} scenarios × {} concurrencies), {} mode; load average {}",
        cells.len(),
        options.backends.len(),
        options.scenarios.len(),
        options.concurrency.len(),
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
            run_cells(&options, &cells, &env, &net, &local)
                .map(|rows| (versions, notes, duplicates, rows))
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
        duration_seconds: started.elapsed().as_secs_f64().round(),
        notes,
        duplicates,
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

fn run_cells(
    options: &Options,
    cells: &[Cell],
    env: &Env,
    net: &tokio::runtime::Runtime,
    local: &tokio::runtime::Runtime,
) -> Result<Vec<Row>> {
    let progress = Progress::start();
    let mut rows = Vec::with_capacity(cells.len());
    for (i, cell) in cells.iter().enumerate() {
        if !env.can_run(cell.backend) {
            // Said in the report's notes.
            continue;
        }
        let label = format!(
            "[{:>2}/{}] {:<20} {:<8} {:>2} tasks",
            i + 1,
            cells.len(),
            cell.backend.name(),
            cell.scenario.name(),
            cell.concurrency
        );
        progress.begin(label.clone());
        let plan = options.plan(cell);
        let counter = Arc::clone(&progress.counter);
        let runtime = if cell.backend.in_process() {
            local
        } else {
            net
        };
        let row = runtime
            .block_on(cells::run(env, *cell, plan, counter))
            .with_context(|| {
                format!(
                    "{} {} {}",
                    cell.backend.name(),
                    cell.scenario.name(),
                    cell.concurrency
                )
            })?;
        let errors = match &row.first_error {
            Some(first) => format!("  {} errors, first: {first}", row.errors),
            None => String::new(),
        };
        let cpu = match (row.cpu_us_per_op, row.context_switches_per_op) {
            (Some(cpu), Some(switches)) if cell.backend.is_http() => {
                format!("  app {cpu:.1} µs CPU, {switches:.2} ctx sw /req")
            }
            _ => String::new(),
        };
        progress.done(format!(
            "{label}  p50 {:>9}  p99 {:>9}  {:>9} ops/s{cpu}{errors}",
            report::human_us(row.p50_us),
            report::human_us(row.p99_us),
            report::human_rate(row.ops_per_sec),
        ));
        rows.push(row);
    }
    progress.stop.store(true, Ordering::Relaxed);
    Ok(rows)
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
            (full.warmup, full.measure),
            (Duration::from_secs(1), Duration::from_secs(5))
        );
        assert_eq!(full.in_process_measure, Duration::from_secs(2));
        assert!(full.out.ends_with("target/bench"));

        let quick = options(&["--quick", "--seconds", "0.3"]).unwrap();
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
        ])
        .unwrap();
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
            &["--seconds", "soon"],
            &["--warmup", "-1"],
            &["--frobnicate"],
        ] {
            assert!(options(args).is_err(), "{args:?} was accepted");
        }
    }
}
