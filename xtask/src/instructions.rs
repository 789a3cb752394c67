//! `cargo xtask instructions`: client-side instructions per operation under
//! `valgrind --tool=callgrind`, for the store backends and their baselines.
//!
//! Wall-clock figures are noisy on a shared machine; instruction counts repeat exactly, so they
//! are the before/after of a change to the engine or a store. The harness
//! (`crates/idempotency-loadgen/examples/instructions.rs`) runs N operations of one backend ×
//! scenario on one current-thread runtime with the load generator's own workers; it runs at N
//! and 2N operations, and `(I(2N) − I(N)) / N` is the cost of one operation with every one-off
//! cost (start-up, connecting, preparing the scenario) cancelled out. Only the client process is
//! counted: the Redis server runs outside valgrind.

use std::io::{Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{cargo, step, target_dir};

/// Backends in the order printed; each baseline comes right before what it is the baseline of.
const BACKENDS: [&str; 4] = ["raw-redis", "redis", "memory-store", "memory"];
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
}

fn parse(args: &[String]) -> Result<Options, String> {
    let mut options = Options {
        ops: 2000,
        backends: BACKENDS.iter().map(|b| (*b).to_owned()).collect(),
        scenarios: SCENARIOS.iter().map(|s| (*s).to_owned()).collect(),
        redis: None,
        harness: None,
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
            other => return Err(format!("unknown argument `{other}`")),
        }
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

/// Build the harness in release mode, then count every backend × scenario asked for. Starts its
/// own `redis-server` on 127.0.0.1 (a free port, no persistence) unless `--redis` names one,
/// and stops it at the end.
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
    let target = PathBuf::from(target_dir());
    let harness = match &options.harness {
        Some(harness) => harness.clone(),
        None => {
            step(
                "cargo build --release --example instructions",
                cargo(&[
                    "build",
                    "--release",
                    "-p",
                    "idempotency-loadgen",
                    "--example",
                    "instructions",
                ]),
            )?;
            target.join("release/examples/instructions")
        }
    };
    let out = target.join("instructions");
    std::fs::create_dir_all(&out).map_err(|e| format!("creating {}: {e}", out.display()))?;
    let needs_redis = options.backends.iter().any(|b| b.contains("redis"));
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
        for backend in &options.backends {
            let mut totals = [0u64; 2];
            for (total, ops) in totals.iter_mut().zip([options.ops, 2 * options.ops]) {
                *total = count(&harness, &out, backend, scenario, ops, redis.as_deref())?;
            }
            let cost = per_op(totals[0], totals[1], options.ops);
            eprintln!("    {backend} {scenario}: {cost:.0} instructions/op");
            rows.push((backend.clone(), scenario.clone(), cost));
        }
    }
    drop(server);
    println!("{}", table(&rows, options.ops));
    Ok(())
}

/// The report: one line per backend × scenario, with the ratio to its baseline when measured.
fn table(rows: &[(String, String, f64)], ops: u64) -> String {
    let mut text = format!(
        "client-side instructions per operation (callgrind, (I({}) - I({})) / {ops})\n\n\
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

/// One run of the harness under callgrind: its total instruction count.
fn count(
    harness: &Path,
    out: &Path,
    backend: &str,
    scenario: &str,
    ops: u64,
    redis: Option<&str>,
) -> Result<u64, String> {
    let file = out.join(format!("callgrind.{backend}.{scenario}.{ops}.out"));
    let mut command = Command::new("valgrind");
    command
        .arg("--tool=callgrind")
        .arg(format!("--callgrind-out-file={}", file.display()))
        .arg(harness)
        .args(["--backend", backend, "--scenario", scenario])
        .args(["--ops", &ops.to_string()]);
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
    }

    #[test]
    fn the_table_gives_ratios_to_the_baseline() {
        let rows = vec![
            ("raw-redis".to_owned(), "replay".to_owned(), 10_000.0),
            ("redis".to_owned(), "replay".to_owned(), 12_000.0),
            ("memory".to_owned(), "replay".to_owned(), 3_000.0),
        ];
        let text = table(&rows, 2000);
        assert!(
            text.contains("| redis | replay | 12000 | 1.20× raw-redis |"),
            "{text}"
        );
        assert!(text.contains("| raw-redis | replay | 10000 |  |"), "{text}");
        // No baseline measured: no ratio.
        assert!(text.contains("| memory | replay | 3000 |  |"), "{text}");
    }
}
