//! `purge`, `stats` and `doctor`: commands over many keys or the whole server.

use std::io::{IsTerminal as _, Write as _};

use futures::{StreamExt as _, TryStreamExt as _};
use idempotency::{IdempotencyStore, Record, StoreError, StoreKey};
use serde_json::json;

use crate::error::CliError;
use crate::keyspace::Keyspace;
use crate::keyspace::glob_escape;
use crate::open::Opened;
use crate::sql::SqlNode;

/// Progress on stderr, only when it is a terminal (overwriting one line).
struct Progress {
    on: bool,
}

impl Progress {
    fn new() -> Self {
        Self {
            on: std::io::stderr().is_terminal(),
        }
    }

    fn show(&self, line: std::fmt::Arguments<'_>) {
        if self.on {
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "\r\x1b[2K{line}");
            let _ = err.flush();
        }
    }

    fn done(&self) {
        if self.on {
            let _ = writeln!(std::io::stderr());
        }
    }
}

/// `purge`: every key starting with `prefix` (a literal, glob-escaped for `MATCH`), walked
/// with `SCAN` on every server in steps of about `batch` keys; counted only (dry run) unless
/// `yes`, then each step's keys are deleted with `UNLINK` before the next step.
///
/// # Errors
/// Scanning or deleting failed (the count of what was deleted so far is printed first).
pub(crate) async fn purge(
    opened: &Opened,
    prefix: &str,
    yes: bool,
    batch: usize,
) -> Result<(), CliError> {
    let pattern = format!("{}*", glob_escape(prefix));
    let progress = Progress::new();
    let (mut matched, mut deleted) = (0u64, 0u64);
    let mut nodes = opened.nodes().await?;
    for node in &mut nodes {
        let mut cursor = "0".to_owned();
        loop {
            let (next, keys) = node.scan(&cursor, &pattern, batch).await?;
            matched += keys.len() as u64;
            if yes {
                match node.unlink(&keys).await {
                    Ok(n) => deleted += n,
                    Err(error) => {
                        progress.done();
                        println!("deleted {deleted} records before the error");
                        return Err(error);
                    }
                }
                progress.show(format_args!(
                    "{}: {matched} matched, {deleted} deleted",
                    node.name()
                ));
            } else {
                progress.show(format_args!("{}: {matched} matched", node.name()));
            }
            if next == "0" {
                break;
            }
            cursor = next;
        }
    }
    progress.done();
    if yes {
        tracing::info!(prefix, deleted, "records purged by an operator");
        println!("deleted {deleted} records under `{prefix}`");
        // SQL rows past their expiry stay until deleted (Redis expires keys by itself): collect
        // them too, with the store's own `purge_expired` (every scope: they are dead records).
        if let Some(node) = SqlNode::of(&opened.store) {
            let batch = u32::try_from(batch).unwrap_or(u32::MAX);
            let expired = node.purge_expired(batch).await?;
            println!("deleted {expired} expired rows (of every scope) with purge_expired");
        }
    } else {
        println!(
            "{matched} records under `{prefix}` would be deleted (dry run: pass --yes to delete)"
        );
    }
    Ok(())
}

#[derive(Default)]
struct Counts {
    in_progress: u64,
    completed: u64,
    not_a_record: u64,
    gone: u64,
}

/// `stats`: walk every key under `prefix` and read each record to count them by state.
/// Reads every record, so it costs one `GET` per key: run it against a replica or off-peak on
/// big stores.
///
/// # Errors
/// Scanning or reading failed.
pub(crate) async fn stats(
    opened: &Opened,
    prefix: &str,
    batch: usize,
    as_json: bool,
) -> Result<(), CliError> {
    let pattern = format!("{}*", glob_escape(prefix));
    let progress = Progress::new();
    let mut counts = Counts::default();
    let mut nodes = opened.nodes().await?;
    let store = &opened.store;
    for node in &mut nodes {
        let mut cursor = "0".to_owned();
        loop {
            let (next, keys) = node.scan(&cursor, &pattern, batch).await?;
            let states: Vec<Option<Result<bool, ()>>> = futures::stream::iter(keys)
                .map(|key| async move {
                    match store.get(&StoreKey::from_raw(key)).await {
                        Ok(Some(Record::InProgress(_))) => Ok(Some(Ok(true))),
                        Ok(Some(Record::Completed(_))) => Ok(Some(Ok(false))),
                        // Expired or deleted between SCAN and GET.
                        Ok(None) => Ok(None),
                        Err(StoreError::Corrupt(_)) => Ok(Some(Err(()))),
                        Err(other) => Err(other),
                    }
                })
                .buffer_unordered(16)
                .try_collect()
                .await?;
            for state in states {
                match state {
                    Some(Ok(true)) => counts.in_progress += 1,
                    Some(Ok(false)) => counts.completed += 1,
                    Some(Err(())) => counts.not_a_record += 1,
                    None => counts.gone += 1,
                }
            }
            progress.show(format_args!(
                "{}: {} in progress, {} completed",
                node.name(),
                counts.in_progress,
                counts.completed
            ));
            if next == "0" {
                break;
            }
            cursor = next;
        }
    }
    progress.done();
    if as_json {
        println!(
            "{}",
            json!({
                "prefix": prefix,
                "in_progress": counts.in_progress,
                "completed": counts.completed,
                "not_a_record": counts.not_a_record,
                "expired_during_scan": counts.gone,
            })
        );
    } else {
        println!(
            "records under `{prefix}`:\n  in progress   {}\n  completed     {}\n  \
             not a record  {}\n  expired while counting  {}",
            counts.in_progress, counts.completed, counts.not_a_record, counts.gone
        );
    }
    Ok(())
}

/// `doctor`: the store's own start-up checks (Redis: eviction policy, persistence, version);
/// for the KV REST API, a round trip and the key count. Returns whether it is healthy.
///
/// # Errors
/// The store does not answer.
pub(crate) async fn doctor(opened: &Opened) -> Result<bool, CliError> {
    println!("store: {}", opened.store.description());
    let report = if let Some(redis) = opened.store.as_redis() {
        Some(redis.doctor().await?)
    } else if let Some(cluster) = opened.store.as_redis_cluster() {
        Some(cluster.doctor().await?)
    } else {
        None
    };
    match report {
        Some(report) => {
            println!("{report}");
            Ok(report.is_healthy())
        }
        None if matches!(opened.keyspace, Keyspace::Sql) => {
            let rows = match SqlNode::of(&opened.store) {
                Some(node) => node.rows().await?,
                None => return Err(CliError::Keyspace("the SQL store is not connected".into())),
            };
            println!(
                "the SQL store answers and its table has the expected shape (checked when \
                 opened); {rows} rows, expired ones included: they stay until purged \
                 (`idempotency purge --yes`, or the app's PurgeTask)"
            );
            Ok(true)
        }
        None => {
            let mut nodes = opened.nodes().await?;
            let mut keys = 0;
            for node in &mut nodes {
                keys += node.dbsize().await?;
            }
            println!(
                "the KV REST API answers ({keys} keys in its database); the provider manages \
                 eviction and persistence: check its console for a no-eviction setting"
            );
            Ok(true)
        }
    }
}
