//! `cargo xtask instructions`: instructions per operation under `valgrind --tool=callgrind` —
//! client-side for the store backends and their baselines, server-side per request for the
//! HTTP apps.
//!
//! Wall-clock figures are noisy on a shared machine; instruction counts repeat exactly, so they
//! are the before/after of a change to the engine or a store. The harness
//! (`crates/idempotency-loadgen/examples/instructions.rs`) runs N operations of one backend ×
//! scenario on one current-thread runtime with the load generator's own workers; it runs at N
//! and 2N operations, and `(I(2N) − I(N)) / N` is the cost of one operation with every one-off
//! cost (start-up, connecting, preparing the scenario) cancelled out. Only the client process is
//! counted: the Redis server runs outside valgrind.
//!
//! The `http-*` backends count the other side: one of the load generator's apps
//! (`idempotency-loadgen --serve bare|floor|memory`) runs under callgrind, a plain HTTP/1.1
//! client outside valgrind sends it N (then, in a second run, 2N) requests over C keep-alive
//! connections, and the same difference gives the server-side instructions per request. They
//! are reported with and without the inclusive cost of `sha2::sha256::compress256`: valgrind
//! hides the CPU's SHA extensions, so `sha2` takes its software path there (~3.5 k instructions
//! per 64-byte block) where the machine itself spends a few hundred.

mod callgrind;
mod http;

use std::io::{Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{cargo, step, target_dir};

/// Backends in the order printed; each baseline comes right before what it is the baseline of.
const BACKENDS: [&str; 7] = [
    "raw-redis",
    "redis",
    "memory-store",
    "memory",
    "http-bare",
    "http-floor",
    "http-memory",
];
const SCENARIOS: [&str; 3] = ["fresh", "replay", "conflict"];

/// The baseline a backend is compared with.
fn baseline_of(backend: &str) -> Option<&'static str> {
    match backend {
        "redis" => Some("raw-redis"),
        "memory" => Some("memory-store"),
        _ => None,
    }
}

/// What the command line asked for.
#[derive(Debug, PartialEq, Eq)]
struct Options {
    ops: u64,
    backends: Vec<String>,
    scenarios: Vec<String>,
    redis: Option<String>,
    /// A harness binary built before (a "before" build kept aside): not rebuilt.
    harness: Option<PathBuf>,
    /// Keep-alive connections the HTTP rows' requests are spread over.
    connections: u64,
    /// A load generator binary built before, serving the HTTP rows' apps: not rebuilt.
    loadgen: Option<PathBuf>,
    /// Concurrent tasks the store rows' operations are split between, on the harness's one
    /// runtime thread (the bench's in-process cells run so too; its Redis cells use two
    /// threads); 1: one after another.
    tasks: u64,
}

fn parse(args: &[String]) -> Result<Options, String> {
    let mut options = Options {
        ops: 2000,
        backends: BACKENDS.iter().map(|b| (*b).to_owned()).collect(),
        scenarios: SCENARIOS.iter().map(|s| (*s).to_owned()).collect(),
        redis: None,
        harness: None,
        connections: 1,
        loadgen: None,
        tasks: 1,
    };
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        let mut value = |name: &str| {
            args.next()
                .cloned()
                .ok_or_else(|| format!("{name} needs a value"))
        };
        match arg.as_str() {
            "--ops" => {
                options.ops = value("--ops")?.parse().map_err(|e| format!("--ops: {e}"))?;
                if options.ops == 0 {
                    return Err("--ops must be at least 1".to_owned());
                }
            }
            "--backends" => options.backends = list(&value("--backends")?, &BACKENDS)?,
            "--scenarios" => options.scenarios = list(&value("--scenarios")?, &SCENARIOS)?,
            "--redis" => options.redis = Some(value("--redis")?),
            "--harness" => options.harness = Some(PathBuf::from(value("--harness")?)),
            "--connections" => {
                options.connections = value("--connections")?
                    .parse()
                    .map_err(|e| format!("--connections: {e}"))?;
                if !(1..=1024).contains(&options.connections) {
                    return Err("--connections must be 1 to 1024".to_owned());
                }
            }
            "--loadgen" => options.loadgen = Some(PathBuf::from(value("--loadgen")?)),
            "--tasks" => {
                options.tasks = value("--tasks")?
                    .parse()
                    .map_err(|e| format!("--tasks: {e}"))?;
                if !(1..=1024).contains(&options.tasks) {
                    return Err("--tasks must be 1 to 1024".to_owned());
                }
            }
            other => return Err(format!("unknown argument `{other}`")),
        }
    }
    if !options.ops.is_multiple_of(options.tasks) {
        return Err(format!(
            "--ops ({}) must be a multiple of --tasks ({}): each task runs as many",
            options.ops, options.tasks
        ));
    }
    Ok(options)
}

fn list(text: &str, allowed: &[&str]) -> Result<Vec<String>, String> {
    text.split(',')
        .map(str::trim)
        .filter(|item| !item.is_empty())
        .map(|item| {
            if allowed.contains(&item) {
                Ok(item.to_owned())
            } else {
                Err(format!("unknown `{item}`; one of {}", allowed.join(", ")))
            }
        })
        .collect()
}

/// The total callgrind prints on stderr: `==PID== Collected : 123456789`.
fn collected(stderr: &str) -> Option<u64> {
    stderr.lines().rev().find_map(|line| {
        let (_, rest) = line.split_once("Collected :")?;
        rest.trim().parse().ok()
    })
}

/// Instructions per operation from totals at `ops` and `2 * ops` operations.
fn per_op(at_n: u64, at_2n: u64, ops: u64) -> f64 {
    (at_2n as f64 - at_n as f64) / ops as f64
}

/// Build what the rows asked for need in release mode (the harness, the load generator), then
/// count every backend × scenario asked for. Starts its own `redis-server` on 127.0.0.1 (a free
/// port, no persistence) for the Redis rows unless `--redis` names one, and stops it at the end.
pub(crate) fn instructions(args: &[String]) -> Result<(), String> {
    let options = parse(args)?;
    if Command::new("valgrind")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_err()
    {
        return Err("valgrind not found: install it (`apt-get install valgrind`)".to_owned());
    }
    let (http_backends, store_backends): (Vec<&String>, Vec<&String>) = options
        .backends
        .iter()
        .partition(|b| http::app(b).is_some());
    let target = PathBuf::from(target_dir());
    // One build for both whatever the rows ask for: once the crate is built, the other target
    // costs seconds.
    let built_before = (options.harness.is_some() || store_backends.is_empty())
        && (options.loadgen.is_some() || http_backends.is_empty());
    if !built_before {
        step(
            "cargo build --release (the harness and the load generator)",
            cargo(&[
                "build",
                "--release",
                "-p",
                "idempotency-loadgen",
                "--example",
                "instructions",
                "--bin",
                "idempotency-loadgen",
            ]),
        )?;
    }
    let harness = options
        .harness
        .clone()
        .unwrap_or_else(|| target.join("release/examples/instructions"));
    let loadgen = options
        .loadgen
        .clone()
        .unwrap_or_else(|| target.join("release/idempotency-loadgen"));
    let out = target.join("instructions");
    std::fs::create_dir_all(&out).map_err(|e| format!("creating {}: {e}", out.display()))?;
    let needs_redis = store_backends.iter().any(|b| b.contains("redis"));
    let server = match (&options.redis, needs_redis) {
        (None, true) => Some(RedisChild::start()?),
        _ => None,
    };
    let redis = options
        .redis
        .clone()
        .or_else(|| server.as_ref().map(RedisChild::url));
    let mut rows: Vec<(String, String, f64)> = Vec::new();
    for scenario in &options.scenarios {
        for backend in &store_backends {
            let mut totals = [0u64; 2];
            for (total, ops) in totals.iter_mut().zip([options.ops, 2 * options.ops]) {
                let run = Run {
                    backend,
                    scenario,
                    ops,
                    tasks: options.tasks,
                    redis: redis.as_deref(),
                };
                *total = count(&harness, &out, &run)?;
            }
            let cost = per_op(totals[0], totals[1], options.ops);
            eprintln!("    {backend} {scenario}: {cost:.0} instructions/op");
            rows.push(((*backend).clone(), scenario.clone(), cost));
        }
    }
    drop(server);
    let mut http_rows: Vec<HttpRow> = Vec::new();
    for scenario in &options.scenarios {
        for backend in &http_backends {
            let row = count_http(&loadgen, &out, backend, scenario, &options)?;
            eprintln!(
                "    {backend} {scenario}: {:.0} instructions/request ({:.0} without SHA-256)",
                row.total,
                row.total - row.sha256
            );
            http_rows.push(row);
        }
    }
    if !rows.is_empty() {
        println!("{}", table(&rows, options.ops, options.tasks));
    }
    if !http_rows.is_empty() {
        println!(
            "{}",
            http_table(&http_rows, options.ops, options.connections)
        );
    }
    Ok(())
}

/// The report: one line per backend × scenario, with the ratio to its baseline when measured.
fn table(rows: &[(String, String, f64)], ops: u64, tasks: u64) -> String {
    let split = if tasks > 1 {
        format!(", split between {tasks} concurrent tasks on one thread")
    } else {
        String::new()
    };
    let mut text = format!(
        "client-side instructions per operation (callgrind, (I({}) - I({})) / {ops}{split})\n\n\
         | backend | scenario | instructions/op | vs baseline |\n|---|---|---:|---:|\n",
        2 * ops,
        ops
    );
    for (backend, scenario, cost) in rows {
        let ratio = baseline_of(backend)
            .and_then(|base| {
                rows.iter()
                    .find(|(b, s, _)| b == base && s == scenario)
                    .map(|(_, _, base_cost)| (base, cost / base_cost))
            })
            .map_or_else(String::new, |(base, r)| format!("{r:.2}× {base}"));
        text.push_str(&format!(
            "| {backend} | {scenario} | {cost:.0} | {ratio} |\n"
        ));
    }
    text
}

/// One HTTP row: server-side instructions per request, in all and in SHA-256.
#[derive(Debug, Clone, PartialEq)]
struct HttpRow {
    backend: String,
    scenario: String,
    total: f64,
    /// The inclusive cost of [`http::SHA256`] per request.
    sha256: f64,
}

/// Serve `backend`'s app under callgrind twice (N, then 2N requests): its row.
fn count_http(
    loadgen: &Path,
    out: &Path,
    backend: &str,
    scenario: &str,
    options: &Options,
) -> Result<HttpRow, String> {
    let (app, stores) = http::app(backend).ok_or_else(|| format!("`{backend}` is not HTTP"))?;
    let mut counts = Vec::with_capacity(2);
    for requests in [options.ops, 2 * options.ops] {
        let load = http::Load {
            scenario,
            requests,
            connections: options.connections,
            stores,
        };
        let file = out.join(format!(
            "callgrind.{backend}.{scenario}.c{}.{requests}.out",
            options.connections
        ));
        counts.push(
            http::count(loadgen, app, &load, &file)
                .map_err(|e| format!("{backend} {scenario}, {requests} requests: {e}"))?,
        );
    }
    Ok(HttpRow {
        backend: backend.to_owned(),
        scenario: scenario.to_owned(),
        total: per_op(counts[0].total, counts[1].total, options.ops),
        sha256: per_op(counts[0].inclusive, counts[1].inclusive, options.ops),
    })
}

/// The HTTP report: per app × scenario, instructions per request with and without SHA-256,
/// and the ratios to `http-bare` and `http-floor` (`total× (without SHA-256×)`).
fn http_table(rows: &[HttpRow], requests: u64, connections: u64) -> String {
    let mut text = format!(
        "server-side instructions per request (callgrind on the app, {connections} keep-alive \
         connection{}, (I({}) - I({requests})) / {requests}; \"without SHA-256\" leaves out the \
         inclusive cost of {}, software SHA-256 under valgrind)\n\n\
         | app | scenario | instructions/request | SHA-256 | without SHA-256 | vs http-bare | \
         vs http-floor |\n|---|---|---:|---:|---:|---:|---:|\n",
        if connections == 1 { "" } else { "s" },
        2 * requests,
        http::SHA256,
    );
    for row in rows {
        let ratio = |base: &str| {
            rows.iter()
                .find(|r| {
                    r.backend == base && r.scenario == row.scenario && r.backend != row.backend
                })
                .map_or_else(String::new, |base| {
                    format!(
                        "{:.2}× ({:.2}×)",
                        row.total / base.total,
                        (row.total - row.sha256) / (base.total - base.sha256)
                    )
                })
        };
        let vs_floor = if row.backend == "http-bare" {
            String::new()
        } else {
            ratio("http-floor")
        };
        text.push_str(&format!(
            "| {} | {} | {:.0} | {:.0} | {:.0} | {} | {} |\n",
            row.backend,
            row.scenario,
            row.total,
            row.sha256,
            row.total - row.sha256,
            ratio("http-bare"),
            vs_floor,
        ));
    }
    text
}

/// One run of the harness under callgrind: its total instruction count.
/// One run of the harness under callgrind.
struct Run<'a> {
    backend: &'a str,
    scenario: &'a str,
    ops: u64,
    tasks: u64,
    redis: Option<&'a str>,
}

fn count(harness: &Path, out: &Path, run: &Run<'_>) -> Result<u64, String> {
    let Run {
        backend,
        scenario,
        ops,
        tasks,
        redis,
    } = *run;
    // Named as before for one task, so that files of earlier runs compare.
    let file = if tasks > 1 {
        out.join(format!("callgrind.{backend}.{scenario}.t{tasks}.{ops}.out"))
    } else {
        out.join(format!("callgrind.{backend}.{scenario}.{ops}.out"))
    };
    let mut command = Command::new("valgrind");
    command
        .arg("--tool=callgrind")
        .arg(format!("--callgrind-out-file={}", file.display()))
        .arg(harness)
        .args(["--backend", backend, "--scenario", scenario])
        .args(["--ops", &ops.to_string()]);
    if tasks > 1 {
        // Only then: a `--harness` built before this option still runs one task.
        command.args(["--tasks", &tasks.to_string()]);
    }
    if let Some(url) = redis {
        command.args(["--redis", url]);
    }
    let output = command
        .output()
        .map_err(|e| format!("could not start valgrind: {e}"))?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !output.status.success() {
        return Err(format!(
            "the harness failed for {backend} {scenario} ({}):\n{stderr}",
            output.status
        ));
    }
    collected(&stderr).ok_or_else(|| format!("no `Collected :` line from callgrind:\n{stderr}"))
}

/// A scratch `redis-server` on 127.0.0.1, without persistence, stopped on drop.
struct RedisChild {
    child: Child,
    port: u16,
}

impl RedisChild {
    fn start() -> Result<Self, String> {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .map_err(|e| format!("finding a free port: {e}"))?
            .port();
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .spawn()
            .map_err(|e| format!("could not start redis-server (install redis-server): {e}"))?;
        let server = Self { child, port };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !server.answers() {
            if Instant::now() > deadline {
                return Err(format!("redis-server on port {port} did not answer PING"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(server)
    }

    fn answers(&self) -> bool {
        let Ok(mut stream) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let mut reply = [0u8; 7];
        stream.write_all(b"PING\r\n").is_ok()
            && stream.read_exact(&mut reply).is_ok()
            && &reply == b"+PONG\r\n"
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

impl Drop for RedisChild {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn reads_callgrinds_total() {
        let stderr = "==12== Callgrind, a call-graph generating cache profiler\n\
                      ==12== Events    : Ir\n==12== Collected : 123456789\n==12==\n\
                      ==12== I   refs:      123,456,789\n";
        assert_eq!(collected(stderr), Some(123_456_789));
        assert_eq!(collected("nothing here"), None);
    }

    #[test]
    fn per_operation_cost_cancels_the_one_off_costs() {
        // 5 M of set-up, 10 k per operation.
        let at = |ops: u64| 5_000_000 + 10_000 * ops;
        assert_eq!(per_op(at(2000), at(4000), 2000), 10_000.0);
    }

    #[test]
    fn parses_selections_and_rejects_unknown_names() {
        let options = parse(&strings(&[
            "--ops",
            "500",
            "--backends",
            "redis,raw-redis",
            "--scenarios",
            "replay",
        ]))
        .unwrap();
        assert_eq!(options.ops, 500);
        assert_eq!(options.backends, strings(&["redis", "raw-redis"]));
        assert_eq!(options.scenarios, strings(&["replay"]));
        assert_eq!(options.redis, None);
        assert!(parse(&strings(&["--backends", "mongo"])).is_err());
        assert!(parse(&strings(&["--ops", "0"])).is_err());
        assert!(parse(&strings(&["--bogus"])).is_err());
        let split = parse(&strings(&["--ops", "6400", "--tasks", "64"])).unwrap();
        assert_eq!((split.ops, split.tasks), (6400, 64));
        assert_eq!(parse(&[]).unwrap().tasks, 1);
        for bad in [
            &["--ops", "100", "--tasks", "64"][..],
            &["--tasks", "0"],
            &["--tasks", "1025"],
            &["--tasks", "many"],
        ] {
            assert!(parse(&strings(bad)).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn parses_the_http_rows_options() {
        let defaults = parse(&[]).unwrap();
        assert_eq!(defaults.backends, strings(&BACKENDS));
        assert_eq!((defaults.connections, defaults.loadgen), (1, None));
        let options = parse(&strings(&[
            "--backends",
            "http-bare,http-floor,http-memory",
            "--connections",
            "16",
            "--loadgen",
            "/tmp/before",
        ]))
        .unwrap();
        assert_eq!(
            options.backends,
            strings(&["http-bare", "http-floor", "http-memory"])
        );
        assert_eq!(options.connections, 16);
        assert_eq!(options.loadgen, Some(PathBuf::from("/tmp/before")));
        for bad in [
            &["--connections", "0"][..],
            &["--connections", "1025"],
            &["--connections", "many"],
            &["--connections"],
            &["--backends", "http-redis"],
        ] {
            assert!(parse(&strings(bad)).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn the_http_table_gives_ratios_with_and_without_sha256() {
        let row = |backend: &str, total: f64, sha256: f64| HttpRow {
            backend: backend.to_owned(),
            scenario: "fresh".to_owned(),
            total,
            sha256,
        };
        // 20 k bare; the floor 30 k of which 4 k SHA-256; ours 33 k of which 8 k.
        let at = |ops: u64, per: u64| 9_000_000 + per * ops;
        let ours = row(
            "http-memory",
            per_op(at(1000, 33_000), at(2000, 33_000), 1000),
            per_op(at(1000, 8_000), at(2000, 8_000), 1000),
        );
        let rows = vec![
            row("http-bare", 20_000.0, 0.0),
            row("http-floor", 30_000.0, 4_000.0),
            ours,
        ];
        let text = http_table(&rows, 1000, 16);
        assert!(text.contains("16 keep-alive connections"), "{text}");
        assert!(
            text.contains("| http-bare | fresh | 20000 | 0 | 20000 |  |  |"),
            "{text}"
        );
        assert!(
            text.contains("| http-floor | fresh | 30000 | 4000 | 26000 | 1.50× (1.30×) |  |"),
            "{text}"
        );
        assert!(
            text.contains(
                "| http-memory | fresh | 33000 | 8000 | 25000 | 1.65× (1.25×) | 1.10× (0.96×) |"
            ),
            "{text}"
        );
    }

    #[test]
    fn the_table_gives_ratios_to_the_baseline() {
        let rows = vec![
            ("raw-redis".to_owned(), "replay".to_owned(), 10_000.0),
            ("redis".to_owned(), "replay".to_owned(), 12_000.0),
            ("memory".to_owned(), "replay".to_owned(), 3_000.0),
        ];
        let text = table(&rows, 2000, 1);
        assert!(!text.contains("concurrent tasks"), "{text}");
        assert!(
            table(&rows, 2000, 64).contains("split between 64 concurrent tasks on one thread"),
            "{text}"
        );
        assert!(
            text.contains("| redis | replay | 12000 | 1.20× raw-redis |"),
            "{text}"
        );
        assert!(text.contains("| raw-redis | replay | 10000 |  |"), "{text}");
        // No baseline measured: no ratio.
        assert!(text.contains("| memory | replay | 3000 |  |"), "{text}");
    }
}
