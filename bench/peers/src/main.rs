//! # idempotency-bench-peers
//!
//! The peer rows of `cargo xtask bench`, in a crate outside the workspace (the `idempotent`
//! crate declares a newer rustc than the workspace's MSRV; this crate is built with
//! `--ignore-rust-version` and never by `cargo xtask test` or CI). The load generator
//! (`crates/idempotency-loadgen`) runs it:
//!
//! - `store`: one `peer-idempotent` cell — the `idempotent` crate's `ValkeyStore` on the run's
//!   Redis server, driven by the load generator's own closed loop (its `load` module is
//!   compiled in here by `#[path]`: same histogram, same warm-up and measure plan); prints one
//!   JSON line of figures;
//! - `serve`: `axum-idempotent` around the load generator's own handler (its `app` module,
//!   also by `#[path]`), on ruts' Redis session store, under the same child-process protocol
//!   as the load generator's own apps;
//! - `duplicates`: 16 concurrent claims of one key on the `idempotent` store: how many win.
//!
//! The scenarios mean what they mean for our rows: `fresh` claims a new key and completes it
//! with the same small answer; `replay` presents a completed key (the stored answer comes
//! back); `conflict` presents a key whose first attempt is in progress.

#[allow(dead_code)]
#[path = "../../../crates/idempotency-loadgen/src/app.rs"]
mod app;
#[allow(dead_code)]
#[path = "../../../crates/idempotency-loadgen/src/load.rs"]
mod load;
#[allow(dead_code)]
#[path = "../../../crates/idempotency-loadgen/src/procstat.rs"]
mod procstat;
#[allow(dead_code)]
#[path = "../../../crates/idempotency-loadgen/src/rounds.rs"]
mod rounds;

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, bail};
use axum_idempotent::{IdempotentLayer, IdempotentOptions};
use bytes::Bytes;
use clap::{Parser, Subcommand, ValueEnum};
use fred::prelude::{ClientLike as _, Config};
use idempotent::valkey::ValkeyStore;
use idempotent::{
    CachedResponse, ClaimOutcome, FencedOutcome, IdempotencyKey, IdempotencyStore as _, Metadata,
    ReplayOutcome,
};
use ruts::store::redis::RedisStore as SessionRedisStore;
use ruts::{CookieOptions, SessionLayer};
use serde::Serialize;
use tower_cookies::CookieManagerLayer;

use crate::load::{Counter, Plan, Worker};
use crate::procstat::Sample;

/// The engine's default lease and retention (the load generator's `scenario::LEASE` and
/// `RETENTION`).
const LEASE: Duration = Duration::from_secs(60);
const RETENTION: Duration = Duration::from_secs(24 * 60 * 60);
/// What the load generator's HTTP clients send, as the peer fingerprints it.
const OPERATION: &str = "POST /orders";
const BODY: &[u8] = br#"{"sku":"widget","qty":1}"#;
/// The key prefix of the peer's store (its `prefix`, separator `:`).
const PREFIX: &str = "bench";

#[derive(Debug, Parser)]
#[command(
    name = "idempotency-bench-peers",
    about = "Peer rows of `cargo xtask bench`"
)]
struct Args {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// One `peer-idempotent` cell; prints its figures as one JSON line.
    Store {
        #[arg(long)]
        redis_url: String,
        #[arg(long)]
        scenario: Scenario,
        #[arg(long)]
        concurrency: usize,
        /// The cell's number (keys are `c<cell>-t<task>-<n>`, as in the load generator).
        #[arg(long)]
        cell: usize,
        #[arg(long)]
        warmup_ms: u64,
        #[arg(long)]
        measure_ms: u64,
    },
    /// Serve `axum-idempotent` around the handler (protocol: the load generator's `app`).
    Serve {
        #[arg(long)]
        redis_url: String,
    },
    /// 16 concurrent claims of one key on the `idempotent` store; prints the count as JSON.
    Duplicates {
        #[arg(long)]
        redis_url: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Scenario {
    Fresh,
    Replay,
    Conflict,
}

fn main() -> std::process::ExitCode {
    match run(Args::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("idempotency-bench-peers: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> Result<()> {
    match args.command {
        Cmd::Serve { redis_url } => app::serve_child(move |state| async move {
            let config = Config::from_url(&redis_url)?;
            let pool = fred::prelude::Builder::from_config(config).build_pool(2)?;
            pool.init().await?;
            let sessions = Arc::new(SessionRedisStore::new(Arc::new(pool)).await?);
            // Header mode (the client's key, no hashing), retention as ours (24 h).
            let options = IdempotentOptions::default()
                .use_idempotency_key_header(Some("idempotency-key"), true)
                .expire_after(RETENTION.as_secs() as i64);
            Ok(app::router(state)
                .layer(IdempotentLayer::<SessionRedisStore<fred::prelude::Pool>>::new(options))
                .layer(
                    SessionLayer::new(sessions)
                        .with_cookie_options(CookieOptions::build().name("session")),
                )
                .layer(CookieManagerLayer::new()))
        }),
        Cmd::Store {
            redis_url,
            scenario,
            concurrency,
            cell,
            warmup_ms,
            measure_ms,
        } => {
            let runtime = net_runtime()?;
            let plan = Plan {
                warmup: Duration::from_millis(warmup_ms),
                measure: Duration::from_millis(measure_ms),
                max_ops_per_task: None,
                yield_every: None,
            };
            let figures = runtime.block_on(store_cell(
                &redis_url,
                scenario,
                concurrency.max(1),
                cell,
                plan,
            ))?;
            println!("{}", serde_json::to_string(&figures)?);
            Ok(())
        }
        Cmd::Duplicates { redis_url } => {
            let runtime = net_runtime()?;
            let check = runtime.block_on(duplicates(&redis_url))?;
            println!("{}", serde_json::to_string(&check)?);
            Ok(())
        }
    }
}

/// Two worker threads, as the load generator's network runtime.
fn net_runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?)
}

async fn connect(redis_url: &str) -> Result<ValkeyStore> {
    ValkeyStore::with_url(redis_url)
        .prefix(PREFIX)
        .try_build()
        .await
        .context("connecting the idempotent store")
}

/// The answer every fresh operation stores (the load generator's `scenario::outcome`).
fn answer() -> CachedResponse {
    let mut metadata = Metadata::new();
    metadata.append("content-type", Bytes::from_static(b"application/json"));
    CachedResponse::new(201, metadata, Bytes::from_static(app::ANSWER.as_bytes()))
}

/// Claim `key` (fingerprinting the request as the peer does) and, when `complete`, store the
/// answer. Claim must win.
async fn claim_new(store: &ValkeyStore, key: &IdempotencyKey, complete: bool) -> Result<()> {
    let outcome = store
        .claim(key, LEASE)
        .fingerprint(OPERATION, BODY)
        .try_insert()
        .await?;
    let ClaimOutcome::Claimed(guard) = outcome else {
        bail!("a new key was already taken");
    };
    if complete {
        match guard.complete(answer(), RETENTION).await? {
            FencedOutcome::Applied => {}
            FencedOutcome::Rejected(rejection) => bail!("completion rejected: {rejection:?}"),
        }
    }
    Ok(())
}

/// One task of a `peer-idempotent` cell.
struct PeerWorker {
    store: ValkeyStore,
    scenario: Scenario,
    prefix: String,
    n: u64,
    fixed: IdempotencyKey,
}

impl Worker for PeerWorker {
    async fn op(&mut self) -> Result<()> {
        match self.scenario {
            Scenario::Fresh => {
                let key = IdempotencyKey::new(format!("{}{}", self.prefix, self.n))?;
                self.n += 1;
                claim_new(&self.store, &key, true).await
            }
            Scenario::Replay | Scenario::Conflict => {
                let outcome = self
                    .store
                    .claim(&self.fixed, LEASE)
                    .fingerprint(OPERATION, BODY)
                    .try_insert()
                    .await?;
                let ClaimOutcome::Exists {
                    existing,
                    fingerprint,
                } = outcome
                else {
                    bail!("the scenario key was free");
                };
                match (self.scenario, existing.replay(fingerprint)) {
                    (Scenario::Replay, ReplayOutcome::Replayed(_))
                    | (Scenario::Conflict, ReplayOutcome::InFlight) => Ok(()),
                    (_, other) => bail!("unexpected answer: {other:?}"),
                }
            }
        }
    }
}

/// The figures the load generator reads (its `report::PeerFigures`).
#[derive(Debug, Serialize)]
struct Figures {
    ops: u64,
    errors: u64,
    p50_us: f64,
    p95_us: f64,
    p99_us: f64,
    p999_us: f64,
    ops_per_sec: f64,
    first_error: Option<String>,
    cpu_us_per_op: Option<f64>,
    context_switches_per_op: Option<f64>,
    /// The measured window (the load generator merges the rounds of a row).
    measured_seconds: Option<f64>,
    /// The latency histogram as `(value ns, count)` pairs (`rounds::recorded`).
    histogram: Option<Vec<(u64, u64)>>,
}

async fn store_cell(
    redis_url: &str,
    scenario: Scenario,
    concurrency: usize,
    cell: usize,
    plan: Plan,
) -> Result<Figures> {
    let store = connect(redis_url).await?;
    let fixed = IdempotencyKey::new(format!("c{cell}-fixed"))?;
    match scenario {
        Scenario::Fresh => {}
        Scenario::Replay => claim_new(&store, &fixed, true).await?,
        // The claim stays in progress for the lease (60 s), longer than the cell.
        Scenario::Conflict => claim_new(&store, &fixed, false).await?,
    }
    let workers: Vec<PeerWorker> = (0..concurrency)
        .map(|t| PeerWorker {
            store: store.clone(),
            scenario,
            prefix: format!("c{cell}-t{t}-"),
            n: 0,
            fixed: fixed.clone(),
        })
        .collect();
    // This process's CPU over the measured window: the peer's client-side cost.
    let start = Instant::now() + plan.warmup;
    let end = start + plan.measure;
    let sampler = std::thread::spawn(move || {
        std::thread::sleep(start.saturating_duration_since(Instant::now()));
        let first = Sample::read_self();
        std::thread::sleep(end.saturating_duration_since(Instant::now()));
        first.zip(Sample::read_self())
    });
    let measured = load::run(workers, plan, Arc::new(Counter::default())).await?;
    let samples = sampler
        .join()
        .map_err(|_| anyhow!("the /proc sampler panicked"))?;
    let per_op = samples.and_then(|(first, last)| first.per_op(&last, measured.ops));
    Ok(Figures {
        ops: measured.ops,
        errors: measured.errors,
        p50_us: measured.quantile_us(0.50),
        p95_us: measured.quantile_us(0.95),
        p99_us: measured.quantile_us(0.99),
        p999_us: measured.quantile_us(0.999),
        ops_per_sec: measured.ops_per_sec(),
        first_error: measured.first_error,
        cpu_us_per_op: per_op.map(|(cpu, _)| cpu),
        context_switches_per_op: per_op.map(|(_, switches)| switches),
        measured_seconds: Some(measured.elapsed.as_secs_f64()),
        histogram: Some(rounds::recorded(&measured.histogram)),
    })
}

/// The load generator's `report::DuplicateCheck`.
#[derive(Debug, Serialize)]
struct DuplicateCheck {
    backend: String,
    sent: u32,
    handler_runs: u32,
    others: String,
}

/// 16 claims of one new key at once: how many are granted, and what the others see.
async fn duplicates(redis_url: &str) -> Result<DuplicateCheck> {
    const SENT: u32 = 16;
    let store = connect(redis_url).await?;
    let key = IdempotencyKey::new("duplicates-peer-idempotent")?;
    let barrier = Arc::new(tokio::sync::Barrier::new(SENT as usize));
    let mut claims = Vec::new();
    for _ in 0..SENT {
        let store = store.clone();
        let key = key.clone();
        let barrier = Arc::clone(&barrier);
        claims.push(tokio::spawn(async move {
            barrier.wait().await;
            let outcome = store
                .claim(&key, LEASE)
                .fingerprint(OPERATION, BODY)
                .try_insert()
                .await?;
            Ok::<_, anyhow::Error>(match outcome {
                ClaimOutcome::Claimed(_) => "claimed",
                ClaimOutcome::Exists {
                    existing,
                    fingerprint,
                } => match existing.replay(fingerprint) {
                    ReplayOutcome::InFlight => "in progress",
                    ReplayOutcome::Replayed(_) => "replayed",
                    ReplayOutcome::FingerprintMismatch => "fingerprint mismatch",
                },
            })
        }));
    }
    let mut counts = std::collections::BTreeMap::<&str, u32>::new();
    for claim in claims {
        *counts.entry(claim.await??).or_insert(0) += 1;
    }
    let handler_runs = counts.remove("claimed").unwrap_or(0);
    let others: Vec<String> = counts
        .into_iter()
        .map(|(what, n)| format!("{n} × {what}"))
        .collect();
    Ok(DuplicateCheck {
        backend: "peer-idempotent".to_owned(),
        sent: SENT,
        handler_runs,
        others: if others.is_empty() {
            "none".to_owned()
        } else {
            others.join(", ")
        },
    })
}
