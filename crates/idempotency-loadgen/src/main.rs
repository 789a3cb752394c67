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
//! # Layout
//! - `scenario`: the scenarios and what every worker shares (lease, retention, request, outcome);
//! - `load`: the closed loop and histograms; `cells`: backends, servers, one cell;
//! - `engine`: workers on our engine and memory store; `raw`: the plain `redis` baseline;
//! - `sql`: the Postgres server, the SQLite file and the `raw-postgres` baseline;
//! - `http`: the axum apps and the hyper client; `servers`: server lifecycles;
//! - `machine`: what the run was measured on; `report`: JSON, Markdown and SVG.

mod cells;
mod engine;
mod http;
mod load;
mod machine;
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

use anyhow::{Context as _, Result, bail};

use crate::cells::{Backend, Cell, Env};
use crate::load::{Counter, Plan};
use crate::report::{Report, Row, ServerVersions};
use crate::scenario::Scenario;

/// What to run, from the command line.
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
}

fn list<T>(text: &str, parse: impl Fn(&str) -> Option<T>, what: &str) -> Result<Vec<T>> {
    text.split(',')
        .map(|s| parse(s.trim()).with_context(|| format!("unknown {what} `{s}`")))
        .collect()
}

fn seconds(text: &str) -> Result<Duration> {
    let value: f64 = text
        .parse()
        .with_context(|| format!("not a number of seconds: {text}"))?;
    Duration::try_from_secs_f64(value).with_context(|| format!("bad duration {text}"))
}

impl Options {
    fn parse(args: impl Iterator<Item = String>) -> Result<Self> {
        let default_out = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/bench");
        let mut options = Self {
            quick: false,
            out: default_out,
            backends: Backend::ALL.to_vec(),
            scenarios: Scenario::ALL.to_vec(),
            concurrency: vec![1, 16, 64],
            warmup: Duration::from_millis(1000),
            measure: Duration::from_secs(5),
            in_process_measure: Duration::from_secs(2),
        };
        let (mut warmup, mut measure) = (None, None);
        let mut args = args.peekable();
        while let Some(arg) = args.next() {
            let mut value = || args.next().with_context(|| format!("{arg} needs a value"));
            match arg.as_str() {
                "--quick" => options.quick = true,
                "--out" => options.out = PathBuf::from(value()?),
                "--backends" => options.backends = list(&value()?, Backend::parse, "backend")?,
                "--scenarios" => {
                    let parse = |s: &str| Scenario::ALL.into_iter().find(|x| x.name() == s);
                    options.scenarios = list(&value()?, parse, "scenario")?;
                }
                "--concurrency" => {
                    options.concurrency = list(&value()?, |s| s.parse().ok(), "concurrency")?;
                }
                "--seconds" => measure = Some(seconds(&value()?)?),
                "--warmup" => warmup = Some(seconds(&value()?)?),
                "-h" | "--help" => {
                    println!("{}", include_str!("usage.txt"));
                    std::process::exit(0);
                }
                other => bail!("unknown argument `{other}` (try --help)"),
            }
        }
        if options.quick {
            options.warmup = Duration::from_millis(200);
            options.measure = Duration::from_millis(800);
            options.in_process_measure = Duration::from_millis(500);
        }
        if let Some(w) = warmup {
            options.warmup = w;
        }
        if let Some(m) = measure {
            options.measure = m;
            options.in_process_measure = options.in_process_measure.min(m);
        }
        if options.concurrency.contains(&0) {
            bail!("concurrency must be at least 1");
        }
        Ok(options)
    }

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

fn run() -> Result<()> {
    let options = Options::parse(std::env::args().skip(1))?;
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
    let mut env = Env::start()?;
    let outcome = net.block_on(env.connect()).and_then(|versions| {
        run_cells(&options, &cells, &env, &net, &local).map(|rows| (versions, rows))
    });
    // Stop every server whatever happened.
    drop(local);
    let stop_result = env.stop();
    drop(net);
    let (versions, rows) = outcome?;
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
            http_server: "axum 0.8 / hyper 1 (HTTP/1.1, keep-alive)".to_owned(),
        },
        mode: if options.quick { "quick" } else { "full" },
        warmup_seconds: options.warmup.as_secs_f64(),
        measure_seconds: options.measure.as_secs_f64(),
        in_process_measure_seconds: options.in_process_measure.as_secs_f64(),
        duration_seconds: started.elapsed().as_secs_f64().round(),
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
        let label = format!(
            "[{:>2}/{}] {:<13} {:<8} {:>2} tasks",
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
        let measured = runtime
            .block_on(cells::run(env, *cell, plan, counter))
            .with_context(|| {
                format!(
                    "{} {} {}",
                    cell.backend.name(),
                    cell.scenario.name(),
                    cell.concurrency
                )
            })?;
        let row = Row::new(
            cell.backend.name(),
            cell.scenario.name(),
            cell.concurrency,
            &measured,
        );
        let errors = match &measured.first_error {
            Some(first) => format!("  {} errors, first: {first}", measured.errors),
            None => String::new(),
        };
        progress.done(format!(
            "{label}  p50 {:>9}  p99 {:>9}  {:>9} ops/s{errors}",
            report::human_us(row.p50_us),
            report::human_us(row.p99_us),
            report::human_rate(row.ops_per_sec),
        ));
        rows.push(row);
    }
    progress.stop.store(true, Ordering::Relaxed);
    Ok(rows)
}
