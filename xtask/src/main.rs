//! Project automation. `cargo xtask test` runs every check CI runs; `cargo xtask help` lists
//! the commands.

use std::process::{Command, ExitCode};

mod provision;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("test") => test(&args[1..]),
        Some("bench") => bench(&args[1..]),
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
         fmt check, clippy (-D warnings), provision Redis, cargo test --workspace.\n    \
         --testcontainers (or {TESTCONTAINERS_ENV}=1): build the testkit's `testcontainers`\n    \
         feature, so Redis fixtures start in Docker when an engine answers (CI on GitHub)\n  \
         bench [--quick] [--out DIR] [-- <loadgen args>]\n    \
         latency percentiles per backend, scenario and concurrency against same-run baselines\n    \
         (crates/idempotency-loadgen, built in release); writes report.json, report.md and\n    \
         latency.svg to DIR (default target/bench). --quick: ~2 min instead of ~10\n  \
         help  this text"
    );
}

/// fmt, clippy, provisioning, then the whole test suite (doc tests included). Stops at the first
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
    provision::ensure_test_servers(testcontainers)?;
    provision::ensure_valkey()?;
    let mut args = vec!["test", "--workspace"];
    args.extend_from_slice(features);
    args.extend(extra.iter().map(String::as_str));
    step("cargo test --workspace", cargo(&args))
}

/// Provision Redis, then run the load generator in release mode. Its servers live on 127.0.0.1
/// and stop when it ends. Everything but `--out` is passed through (see its `--help`).
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
    let out = out.unwrap_or_else(|| {
        let target = std::env::var("CARGO_TARGET_DIR")
            .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/../target").to_owned());
        format!("{target}/bench")
    });
    provision::ensure_test_servers(false)?;
    let mut command = vec![
        "run",
        "--release",
        "-p",
        "idempotency-loadgen",
        "--",
        "--out",
    ];
    command.push(&out);
    command.extend(forwarded.iter().map(String::as_str));
    step("idempotency-loadgen", cargo(&command))
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
    command
}

fn step(name: &str, mut command: Command) -> Result<(), String> {
    eprintln!("==> {name}");
    let status = command
        .status()
        .map_err(|e| format!("could not start `{name}`: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("`{name}` failed ({status})"))
    }
}
