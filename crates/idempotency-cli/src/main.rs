//! `idempotency`: the operators' command-line tool for the idempotency store.
//!
//! It selects the store exactly as the application does, from the same environment variables
//! (`REDIS_URL` / `KV_URL`, `REDIS_CLUSTER_URLS`, `UPSTASH_REDIS_REST_URL` +
//! `UPSTASH_REDIS_REST_TOKEN` or `KV_REST_API_URL` + `KV_REST_API_TOKEN`, `IDEMPOTENCY_STORE`;
//! `IDEMPOTENCY_STORE=sql` + `DATABASE_URL` for the SQL store on Postgres or SQLite; see
//! `idempotency::plan_store`). The memory store is refused: it lives inside the app's process
//! and no other process can see it.
//!
//! Unlike the app, it opens only what exists (`StorePlan::open_existing`): it creates no SQLite
//! file and runs no migration or other DDL (a database without the records table of the
//! expected shape is refused, exit 2, naming the database and the table), and a store that does
//! not answer is an error at once (exit 1), not a background reconnection.
//!
//! # Commands
//! - `inspect <scope> <key> [--json]`: state, lease or retention time left, fingerprint,
//!   fencing token, created and completed times, stored outcome size and content type, and the
//!   argument that names the key again;
//! - `release <scope> <key> [--yes]`: free a stuck claim (fenced by its own token);
//! - `delete <scope> <key> [--yes]`: remove a record whatever its state;
//! - these three take `--key-form stored|header` (below);
//! - `purge (--scope S | --prefix P) [--yes] [--batch N]`: cursor-based deletion (`SCAN` +
//!   `UNLINK`, on every primary of a Cluster, through the REST API's `SCAN` on KV REST; on the
//!   SQL store the table's rows in store-key order, one bounded `SELECT` per step, each deleted
//!   with the store's `delete`, then the expired rows of every scope with its `purge_expired`);
//!   a dry run that counts unless `--yes`;
//! - `stats [--json]`: records by state; `doctor [--strict]`: the store's checks (SQL: the
//!   table's shape, checked when opened, and its row count).
//!
//! A scope is written exactly as the app's scope extractor produces it (the demo's user name,
//! a tenant id; an empty string for the global scope); the tool escapes it as the engine does.
//! `--key-prefix` is the engine's prefix (default `idempotency:`).
//!
//! A key (`inspect`, `release`, `delete`) is given in one of two forms, chosen with
//! `--key-form stored|header`:
//! - `stored`: the key text as the store holds it (after `prefix + scope + ":"` in the store
//!   key), one shell argument: 1..=255 bytes of printable ASCII, spaces and quotes kept as typed
//!   (`'a b'`, `'"a"'` is the key with the quotes);
//! - `header`: the `Idempotency-Key` field value as the client sent it, parsed as the HTTP layer
//!   parses it: an RFC 8941 sf-string (`'"a b"'` is the key `a b`) or a bare token.
//!
//! Without `--key-form`, a key that does not start with `"` is the stored text (for a key
//! without spaces also its bare header form); one that starts with `"` is valid both ways and
//! names two different keys (stored `"a"` vs header `"a"`, the key `a`), so it is refused with
//! exit code 2 naming both readings, never guessed (unless only the header reading is valid:
//! longer than 255 bytes with its quotes). `inspect` prints a `key argument` line: the words
//! that name the record again, shell-quoted, with `--key-form stored` when needed and `--`
//! before a key starting with `-` (paste it last). Anything else (a tab, a control or
//! non-ASCII byte, a malformed sf-string) is refused with exit code 2.
//!
//! # Exit codes
//! 0 success; 1 the store failed; 2 bad input or configuration (also clap's usage errors, and
//! a confirmation that cannot be asked on a non-terminal stdin without `--yes`); 3 no record
//! under the key; for `doctor --strict`, 1 when it warns.
//!
//! Tokens and passwords are never printed: the store is shown through its redacted
//! description.

#![deny(missing_docs)]

mod bulk;
mod error;
mod key;
mod keyspace;
mod open;
mod record;
mod sql;

use std::fmt::Write as _;
use std::io::IsTerminal as _;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use idempotency::{Scope, StoreKey};

use crate::error::CliError;

/// Inspect and repair idempotency records in the store the app uses (from the same variables).
#[derive(Debug, Parser)]
#[command(name = "idempotency", version, about, long_about = None)]
struct Cli {
    /// The engine's key prefix (`Idempotency::builder(..).prefix(..)`).
    #[arg(long, global = true, default_value = "idempotency:")]
    key_prefix: String,
    #[command(subcommand)]
    command: Command,
}

/// The KEY argument and how to read it (`inspect`, `release`, `delete`).
#[derive(Debug, clap::Args)]
struct KeyArg {
    /// The client's idempotency key, as `inspect` shows it on its `key argument` line: the
    /// stored key text (`'a b'`: one shell argument, spaces kept), or with --key-form header the
    /// Idempotency-Key header value (`'"a b"'`). A key starting with `-` goes last, after `--`.
    key: String,
    /// How to read KEY. Needed only for a KEY starting with `"`, valid both ways and naming two
    /// different keys (`'"a"'`: stored, the key `"a"`; header, the key `a`): without it such a
    /// KEY is refused (exit 2), never guessed. Any other KEY is read the one way it can be.
    #[arg(long, value_enum, value_name = "FORM")]
    key_form: Option<key::KeyForm>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Show one record: state, time left, fingerprint, times, outcome size and content type.
    Inspect {
        /// The scope, as the app's scope extractor produces it ("" for the global scope).
        scope: String,
        #[command(flatten)]
        key: KeyArg,
        /// One JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Free a stuck claim, so the next retry runs the operation (asks unless --yes).
    Release {
        /// The scope.
        scope: String,
        #[command(flatten)]
        key: KeyArg,
        /// Do not ask for confirmation.
        #[arg(long)]
        yes: bool,
    },
    /// Delete a record, in progress or completed (asks unless --yes).
    Delete {
        /// The scope.
        scope: String,
        #[command(flatten)]
        key: KeyArg,
        /// Do not ask for confirmation.
        #[arg(long)]
        yes: bool,
    },
    /// Delete every record of a scope or under a store-key prefix; a counting dry run unless --yes.
    Purge {
        /// Every record of this scope (as the app's scope extractor produces it).
        #[arg(long, conflicts_with = "prefix", required_unless_present = "prefix")]
        scope: Option<String>,
        /// Every record whose store key starts with this (it must start with --key-prefix).
        #[arg(long)]
        prefix: Option<String>,
        /// Delete (without it, only count).
        #[arg(long)]
        yes: bool,
        /// Keys per SCAN step (and per UNLINK), 1..=10000.
        #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u16).range(1..=10000))]
        batch: u16,
    },
    /// Count the records by state (reads every record: mind big stores).
    Stats {
        /// One JSON object instead of text.
        #[arg(long)]
        json: bool,
        /// Keys per SCAN step, 1..=10000.
        #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u16).range(1..=10000))]
        batch: u16,
    },
    /// Check the store's settings (eviction policy, persistence, server version).
    Doctor {
        /// Exit with 1 when there is a warning.
        #[arg(long)]
        strict: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        // Colour codes only for a person at a terminal, not in a log file or a pipe.
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_log_filter(&cli))),
        )
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(error) => {
            eprint!("{}", error_report(&error));
            ExitCode::from(error.exit_code())
        }
    }
}

/// The log filter without `RUST_LOG`: warnings. `doctor` prints the store's configuration
/// warnings in its report, so the same warnings logged by the store (once when it connects, once
/// more when `doctor` reads the settings again) would only repeat them on stderr.
fn default_log_filter(cli: &Cli) -> &'static str {
    match cli.command {
        Command::Doctor { .. } => "warn,idempotency_redis::doctor=error",
        _ => "warn",
    }
}

/// The error and its source chain, one line each. Most variants already show their source in
/// their own message (`invalid key: {0}`), so a cause whose text the line above already holds
/// is skipped rather than repeated (its own sources are still shown).
fn error_report(error: &CliError) -> String {
    let mut out = format!("error: {error}\n");
    let mut shown = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        let text = cause.to_string();
        if !shown.contains(&text) {
            let _ = writeln!(out, "  caused by: {text}");
        }
        shown = text;
        source = cause.source();
    }
    out
}

async fn run(cli: Cli) -> Result<ExitCode, CliError> {
    let prefix = cli.key_prefix;
    idempotency::validate_prefix(&prefix)?;
    // Check the arguments before connecting, so bad input fails fast and the same way
    // whatever the store.
    let single_key = match &cli.command {
        Command::Inspect { scope, key, .. }
        | Command::Release { scope, key, .. }
        | Command::Delete { scope, key, .. } => {
            Some(record::store_key(&prefix, scope, &key.key, key.key_form)?)
        }
        _ => None,
    };
    let purge_prefix = match &cli.command {
        Command::Purge {
            scope: Some(scope), ..
        } => Some(StoreKey::scope_prefix(&prefix, &Scope::new(scope.as_str()))),
        Command::Purge {
            prefix: Some(raw), ..
        } => {
            if !raw.starts_with(&prefix) {
                return Err(CliError::Usage(format!(
                    "--prefix `{raw}` does not start with the key prefix `{prefix}`: purge only \
                     deletes idempotency records (set --key-prefix if the app uses another)"
                )));
            }
            Some(raw.clone())
        }
        _ => None,
    };
    let opened = open::open(|name| std::env::var(name).ok()).await?;
    let key = || {
        single_key
            .clone()
            .ok_or_else(|| CliError::Usage("no key".into()))
    };
    match cli.command {
        Command::Inspect { json, .. } => {
            let (store_key, client_key) = key()?;
            record::inspect(&opened.store, &store_key, &client_key, json).await?;
        }
        Command::Release { yes, .. } => record::release(&opened.store, &key()?.0, yes).await?,
        Command::Delete { yes, .. } => record::delete(&opened.store, &key()?.0, yes).await?,
        Command::Purge { yes, batch, .. } => {
            let target =
                purge_prefix.ok_or_else(|| CliError::Usage("give --scope or --prefix".into()))?;
            bulk::purge(&opened, &target, yes, usize::from(batch)).await?;
        }
        Command::Stats { json, batch } => {
            bulk::stats(&opened, &prefix, usize::from(batch), json).await?;
        }
        Command::Doctor { strict } => {
            let healthy = bulk::doctor(&opened).await?;
            if strict && !healthy {
                return Ok(ExitCode::from(1));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use idempotency::{KeyError, StoreError};

    use super::*;

    #[test]
    fn the_report_does_not_repeat_a_message_but_keeps_deeper_causes() {
        let key = error_report(&CliError::Key(KeyError::Empty));
        assert_eq!(key.lines().count(), 1, "{key}");
        assert_eq!(key.matches("idempotency key is empty").count(), 1, "{key}");

        let inner = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused here");
        let store = error_report(&CliError::Store(StoreError::Unavailable {
            source: Box::new(inner),
        }));
        assert_eq!(
            store, "error: store error: store unreachable\n  caused by: refused here\n",
            "{store}"
        );
    }
}
