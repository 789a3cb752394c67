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
}

const PREFIX: &str = "idempotency:bench:";

fn main() -> Result<()> {
    let args = Args::parse();
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
            let worker =
                MemoryStoreWorker::new(store, args.scenario, format!("{PREFIX}t0-"), &fixed);
            drive(worker, args.ops).await
        }
        "memory" => engine(unbounded_memory(), args.scenario, args.ops).await,
        "redis" => {
            let url = redis_url(&args)?;
            flush(url).await?;
            let store = RedisStore::connect(url).await?;
            engine(store, args.scenario, args.ops).await
        }
        "raw-redis" => {
            let url = redis_url(&args)?;
            flush(url).await?;
            let conn = ConnectionManager::new(redis::Client::open(url)?).await?;
            let templates = Templates::new();
            let fixed = format!("{PREFIX}fixed");
            raw::prepare(&conn, &templates, args.scenario, &fixed).await?;
            let worker = RawWorker::new(
                conn,
                templates,
                args.scenario,
                format!("{PREFIX}t0-"),
                0,
                fixed,
            );
            drive(worker, args.ops).await
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
async fn engine<S: IdempotencyStore + 'static>(
    store: S,
    scenario: Scenario,
    ops: u64,
) -> Result<()> {
    let engine = Idempotency::builder(store).ignore_env().build()?;
    let fixed = IdempotencyKey::new("fixed")?;
    let held = prepare(&engine, scenario, &fixed).await?;
    let worker = EngineWorker::new(engine, scenario, "t0-".to_owned(), fixed);
    let result = drive(worker, ops).await;
    if let Some(guard) = held {
        guard.release().await?;
    }
    result
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
