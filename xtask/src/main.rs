//! Project automation. `cargo xtask test` runs every check CI runs; `cargo xtask help` lists
//! the commands.

use std::process::{Command, ExitCode};

mod provision;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("test") => test(&args[1..]),
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
         test [-- <cargo test args>]  fmt check, clippy (-D warnings), provision Redis, cargo test --workspace\n  \
         help                         this text"
    );
}

/// fmt, clippy, provisioning, then the whole test suite (doc tests included). Stops at the first
/// failing step; the last lines printed are the test runner's summary.
fn test(extra: &[String]) -> Result<(), String> {
    step(
        "cargo fmt --check",
        cargo(&["fmt", "--all", "--", "--check"]),
    )?;
    step(
        "cargo clippy",
        cargo(&[
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ]),
    )?;
    provision::ensure_test_servers()?;
    let mut args = vec!["test", "--workspace"];
    args.extend(extra.iter().map(String::as_str));
    step("cargo test --workspace", cargo(&args))
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
