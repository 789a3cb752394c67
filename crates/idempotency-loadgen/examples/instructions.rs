//! The instruction-count harness behind `cargo xtask instructions`: runs `--ops` operations of
//! one backend × scenario, one after another, on one current-thread runtime, with the load
//! generator's own workers (the modules are compiled in from `src/`), so that
//! `valgrind --tool=callgrind` counts the client side of exactly what `cargo xtask bench`
//! measures. Set-up (connecting, preparing the scenario key, the runtime) costs the same at
//! every `--ops`, so the difference between two runs divided by the difference in operations is
//! the cost of one operation.
//!
//! ```text
//! cargo run --release -p idempotency-loadgen --example instructions -- \
//!     --backend redis --scenario replay --ops 2000 --redis redis://127.0.0.1:6379
//! ```
//!
//! Backends: `raw-redis`, `redis`, `memory-store`, `memory`. The Redis ones need `--redis`
//! (the database is flushed first: give it a scratch server).

#![allow(dead_code, unreachable_pub)]

#[path = "../src/engine.rs"]
mod engine;
#[path = "../src/load.rs"]
mod load;
#[path = "../src/raw.rs"]
mod raw;
#[path = "../src/scenario.rs"]
mod scenario;

use anyhow::{Context as _, Result, bail};
use clap::Parser;
use idempotency_core::{Idempotency, IdempotencyKey, IdempotencyStore};
use idempotency_redis::RedisStore;
use redis::aio::ConnectionManager;

use crate::engine::{EngineWorker, MemoryStoreWorker, prepare, prepare_store};
use crate::load::Worker;
use crate::raw::{RawWorker, Templates};
use crate::scenario::{Scenario, unbounded_memory};

/// One backend × scenario, `--ops` operations in a row.
#[derive(Debug, Parser)]
struct Args {
    /// `raw-redis`, `redis`, `memory-store` or `memory`.
    #[arg(long)]
    backend: String,
    /// `fresh`, `replay` or `conflict`.
    #[arg(long, value_enum)]
    scenario: Scenario,
    /// Operations to run (after one unmeasured warm-up operation).
    #[arg(long, default_value_t = 2000)]
    ops: u64,
    /// A scratch Redis server (flushed), for `raw-redis` and `redis`.
    #[arg(long)]
    redis: Option<String>,
    /// Concurrent tasks on the runtime, each with a worker of its own (keys of its own), as
    /// the load generator's cells at 16 or 64 tasks: `--ops` is split between them (it must be
    /// a multiple of `--tasks`).
    #[arg(long, default_value_t = 1)]
    tasks: u64,
}

const PREFIX: &str = "idempotency:bench:";

fn main() -> Result<()> {
    let args = Args::parse();
    if args.tasks == 0 || !args.ops.is_multiple_of(args.tasks) {
        bail!(
            "--ops ({}) must be a multiple of --tasks ({})",
            args.ops,
            args.tasks
        );
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("building the runtime")?;
    runtime.block_on(run(args))
}

async fn run(args: Args) -> Result<()> {
    match args.backend.as_str() {
        "memory-store" => {
            let store = unbounded_memory();
            let fixed = format!("{PREFIX}fixed");
            prepare_store(&store, args.scenario, &fixed).await?;
            let workers = (0..args.tasks).map(|t| {
                MemoryStoreWorker::new(
                    store.clone(),
                    args.scenario,
                    format!("{PREFIX}t{t}-"),
                    &fixed,
                )
            });
            drive_all(workers, args.ops).await
        }
        "memory" => engine(unbounded_memory(), &args).await,
        "redis" => {
            let url = redis_url(&args)?;
            flush(url).await?;
            let store = RedisStore::connect(url).await?;
            engine(store, &args).await
        }
        "raw-redis" => {
            let url = redis_url(&args)?;
            flush(url).await?;
            let conn = ConnectionManager::new(redis::Client::open(url)?).await?;
            let templates = Templates::new();
            let fixed = format!("{PREFIX}fixed");
            raw::prepare(&conn, &templates, args.scenario, &fixed).await?;
            let workers = (0..args.tasks).map(|t| {
                RawWorker::new(
                    conn.clone(),
                    templates.clone(),
                    args.scenario,
                    format!("{PREFIX}t{t}-"),
                    t,
                    fixed.clone(),
                )
            });
            drive_all(workers, args.ops).await
        }
        other => bail!("unknown backend {other}: raw-redis, redis, memory-store or memory"),
    }
}

fn redis_url(args: &Args) -> Result<&str> {
    args.redis
        .as_deref()
        .context("this backend needs --redis URL (a scratch server: it is flushed)")
}

async fn flush(url: &str) -> Result<()> {
    let mut conn = redis::Client::open(url)?
        .get_multiplexed_async_connection()
        .await?;
    redis::cmd("FLUSHALL").query_async::<()>(&mut conn).await?;
    Ok(())
}

/// The engine over `store`, as the load generator's `engine_cell` builds it.
async fn engine<S: IdempotencyStore + 'static>(store: S, args: &Args) -> Result<()> {
    let engine = Idempotency::builder(store).ignore_env().build()?;
    let fixed = IdempotencyKey::new("fixed")?;
    let held = prepare(&engine, args.scenario, &fixed).await?;
    let workers = (0..args.tasks).map(|t| {
        EngineWorker::new(
            engine.clone(),
            args.scenario,
            format!("t{t}-"),
            fixed.clone(),
        )
    });
    let result = drive_all(workers, args.ops).await;
    if let Some(guard) = held {
        guard.release().await?;
    }
    result
}

/// `ops` operations split between `workers`, each on a task of its own (one worker: on this
/// task, as before).
async fn drive_all<W: Worker>(workers: impl Iterator<Item = W>, ops: u64) -> Result<()> {
    let mut workers: Vec<W> = workers.collect();
    if workers.len() == 1
        && let Some(worker) = workers.pop()
    {
        return drive(worker, ops).await;
    }
    let each = ops / workers.len() as u64;
    let tasks: Vec<_> = workers
        .into_iter()
        .map(|worker| tokio::spawn(drive(worker, each)))
        .collect();
    for task in tasks {
        task.await.context("a worker task panicked")??;
    }
    Ok(())
}

/// One warm-up operation, then `ops` more; any unexpected answer fails the run.
async fn drive<W: Worker>(mut worker: W, ops: u64) -> Result<()> {
    for i in 0..=ops {
        worker
            .op()
            .await
            .with_context(|| format!("operation {i}"))?;
    }
    Ok(())
}
