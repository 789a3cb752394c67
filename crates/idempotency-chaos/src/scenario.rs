//! One scenario end to end: start the processes, storm them while the fault is injected, send
//! every key once more, read the journals, stop everything.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use idempotency_testkit::fixtures::{PostgresServer, RedisServer};

use crate::ChaosError;
use crate::client::{self, Outcome, Request, Target};
use crate::plan::{Backend, Fault, Params, ScenarioSpec, Schedule};
use crate::procs::{Managed, free_port};
use crate::report::{Execution, Observations, ScenarioReport};

/// Where the binaries under test are.
#[derive(Debug, Clone)]
pub struct Binaries {
    /// `idempotency-demo`.
    pub demo: PathBuf,
    /// `kv-rest-gateway`.
    pub gateway: PathBuf,
}

impl Binaries {
    /// Both binaries in one directory (a cargo profile directory such as `target/release`).
    pub fn in_dir(dir: &Path) -> Self {
        Self {
            demo: dir.join("idempotency-demo"),
            gateway: dir.join("kv-rest-gateway"),
        }
    }
}

const GATEWAY_TOKEN: &str = "chaos-gateway-token";
const ADMIN_TOKEN: &str = "chaos-admin";

/// The processes of one scenario. Dropping it kills every one of them.
#[derive(Debug)]
struct Procs {
    redis: Option<RedisServer>,
    postgres: Option<PostgresServer>,
    gateway: Option<Managed>,
    demos: Vec<Managed>,
}

impl Procs {
    fn start(
        spec: ScenarioSpec,
        params: &Params,
        bins: &Binaries,
        dir: &Path,
    ) -> Result<Self, ChaosError> {
        let mut procs = Procs {
            redis: None,
            postgres: None,
            gateway: None,
            demos: Vec::new(),
        };
        let mut store_env: Vec<(String, String)> = Vec::new();
        if matches!(spec.backend, Backend::Redis | Backend::KvRest) {
            // AOF with fsync on every write: a restarted server has every acknowledged record.
            let redis =
                RedisServer::start_local_with(&["--appendonly", "yes", "--appendfsync", "always"])
                    .map_err(|e| ChaosError::Redis(e.to_string()))?;
            let url = redis.url().to_owned();
            procs.redis = Some(redis);
            if spec.backend == Backend::Redis {
                store_env.push(("REDIS_URL".into(), url));
            } else {
                let port = free_port()?;
                let mut gateway = Managed::new(
                    "kv-rest-gateway",
                    bins.gateway.clone(),
                    vec![
                        "--listen".into(),
                        format!("127.0.0.1:{port}"),
                        "--redis-url".into(),
                        url,
                        "--token".into(),
                        GATEWAY_TOKEN.into(),
                    ],
                    vec![("RUST_LOG".into(), "warn".into())],
                    dir.join("gateway.stderr"),
                    port,
                    "/~health",
                );
                gateway.start()?;
                store_env.push(("KV_REST_API_URL".into(), gateway.url()));
                store_env.push(("KV_REST_API_TOKEN".into(), GATEWAY_TOKEN.into()));
                procs.gateway = Some(gateway);
            }
        }
        if spec.backend == Backend::Sql {
            // `synchronous_commit=on`: a commit is acknowledged once its WAL reached the OS, so
            // a `kill -9` of every Postgres process loses no acknowledged commit (`fsync=off`
            // stays: the OS does not crash here). The fixture's default (`off`) would.
            let postgres = PostgresServer::start_local_with(&["synchronous_commit=on"])
                .map_err(|e| ChaosError::Postgres(e.to_string()))?;
            store_env.push(("DATABASE_URL".into(), postgres.url().to_owned()));
            store_env.push(("IDEMPOTENCY_STORE".into(), "sql".into()));
            procs.postgres = Some(postgres);
        }
        // One at a time: each creates the tables it needs if they do not exist.
        for index in 0..spec.backend.instances() {
            let port = free_port()?;
            let mut env = store_env.clone();
            env.extend([
                ("RUST_LOG".to_owned(), "warn".to_owned()),
                ("DEMO_ADMIN_TOKEN".to_owned(), ADMIN_TOKEN.to_owned()),
                (
                    "DEMO_WORK_MS".to_owned(),
                    params.work.as_millis().to_string(),
                ),
                (
                    "DEMO_AFTER_WRITE_MS".to_owned(),
                    params.after_write.as_millis().to_string(),
                ),
                (
                    "DEMO_EXECUTION_LOG".to_owned(),
                    journal(dir, index).display().to_string(),
                ),
                (
                    "IDEMPOTENCY_FAILURE_POLICY".to_owned(),
                    spec.policy.to_string(),
                ),
            ]);
            if let Some(lease) = &params.lease {
                env.push(("IDEMPOTENCY_LEASE".to_owned(), lease.clone()));
            }
            let mut demo = Managed::new(
                format!("idempotency-demo #{index}"),
                bins.demo.clone(),
                vec!["--listen".into(), format!("127.0.0.1:{port}")],
                env,
                dir.join(format!("demo-{index}.stderr")),
                port,
                "/api/products/ready",
            );
            demo.start()?;
            procs.demos.push(demo);
        }
        Ok(procs)
    }
}

fn journal(dir: &Path, instance: usize) -> PathBuf {
    dir.join(format!("executions-{instance}.jsonl"))
}

/// What the injector did, relative to the start of the traffic window.
#[derive(Debug, Default)]
struct Injected {
    events: Vec<String>,
    /// From the fault to the end of the outage (a thaw, or a restarted process answering).
    outage: Duration,
    errors: Vec<String>,
}

/// Inject `fault` at `start + at` (blocking: run on a blocking thread).
fn inject(
    procs: &mut Procs,
    fault: Fault,
    start: Instant,
    at: Duration,
    params: &Params,
    kills: &[AtomicU64],
    dir: &Path,
) -> Injected {
    let mut injected = Injected::default();
    if fault == Fault::None {
        return injected;
    }
    std::thread::sleep((start + at).saturating_duration_since(Instant::now()));
    let note = |what: String, injected: &mut Injected| {
        injected
            .events
            .push(format!("{:.2} s: {what}", start.elapsed().as_secs_f64()));
    };
    let began = Instant::now();
    let mut result: Result<(), String> = Ok(());
    match fault {
        Fault::None => {}
        Fault::StorePause if procs.postgres.is_some() => {
            if let Some(postgres) = &mut procs.postgres {
                result = postgres.pause().map_err(|e| e.to_string());
                note(
                    "postgres SIGSTOP (postmaster and backends)".into(),
                    &mut injected,
                );
                std::thread::sleep(params.outage);
                if let Err(e) = postgres.resume() {
                    result = Err(e.to_string());
                }
                note("postgres SIGCONT".into(), &mut injected);
            }
        }
        Fault::StoreKill if procs.postgres.is_some() => {
            if let Some(postgres) = &mut procs.postgres {
                result = postgres.kill().map_err(|e| e.to_string());
                note(
                    "postgres kill -9 (postmaster and children)".into(),
                    &mut injected,
                );
                std::thread::sleep(params.outage);
                if let Err(e) = postgres.restart() {
                    result = Err(e.to_string());
                }
                note(
                    "postgres restarted on its data directory (WAL replayed)".into(),
                    &mut injected,
                );
            }
        }
        Fault::StorePause => {
            if let Some(redis) = &mut procs.redis {
                result = redis.pause().map_err(|e| e.to_string());
                note("redis SIGSTOP".into(), &mut injected);
                std::thread::sleep(params.outage);
                if let Err(e) = redis.resume() {
                    result = Err(e.to_string());
                }
                note("redis SIGCONT".into(), &mut injected);
            }
        }
        Fault::StoreKill => {
            if let Some(redis) = &mut procs.redis {
                result = redis.stop().map_err(|e| e.to_string());
                note("redis kill -9".into(), &mut injected);
                std::thread::sleep(params.outage);
                if let Err(e) = redis.restart() {
                    result = Err(e.to_string());
                }
                note("redis restarted from its AOF".into(), &mut injected);
            }
        }
        Fault::GatewayKill => {
            if let Some(gateway) = &mut procs.gateway {
                gateway.kill();
                note("gateway kill -9".into(), &mut injected);
                std::thread::sleep(params.outage);
                result = gateway.start().map_err(|e| e.to_string());
                note("gateway restarted".into(), &mut injected);
            }
        }
        Fault::DemoKill => {
            // Land the kill just after a handler of instance 0 wrote (its journal grew): that
            // request is now between its side effect and its completion.
            let path = journal(dir, 0);
            let size = |p: &Path| std::fs::metadata(p).map_or(0, |m| m.len());
            let before = size(&path);
            let deadline = Instant::now() + Duration::from_secs(2);
            while size(&path) == before && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(2));
            }
            let landed = size(&path) != before;
            if let Some(demo) = procs.demos.first_mut() {
                demo.kill();
                kills[0].fetch_add(1, Ordering::SeqCst);
                note(
                    if landed {
                        "demo #0 kill -9 right after a handler wrote".into()
                    } else {
                        "demo #0 kill -9 (no write seen within 2 s)".into()
                    },
                    &mut injected,
                );
                std::thread::sleep(params.outage);
                result = demo.start().map_err(|e| e.to_string());
                note("demo #0 restarted".into(), &mut injected);
            }
        }
    }
    injected.outage = began.elapsed();
    if let Err(error) = result {
        injected
            .errors
            .push(format!("fault injection failed: {error}"));
    }
    injected
}

/// Run one scenario. `dir` receives the journals and the processes' stderr.
///
/// # Errors
/// When a process cannot be started (the figures would mean nothing).
pub async fn run(
    spec: ScenarioSpec,
    params: &Params,
    schedule: &Schedule,
    bins: &Binaries,
    dir: &Path,
) -> Result<ScenarioReport, ChaosError> {
    let wall = Instant::now();
    fresh_dir(dir)?;
    let procs = {
        let (params, bins, dir) = (params.clone(), bins.clone(), dir.to_owned());
        tokio::task::spawn_blocking(move || Procs::start(spec, &params, &bins, &dir))
            .await
            .map_err(|e| ChaosError::Process(format!("start-up task failed: {e}")))??
    };
    let http = reqwest::Client::builder()
        .pool_idle_timeout(Duration::from_secs(5))
        .build()
        .map_err(|e| ChaosError::Process(format!("HTTP client: {e}")))?;
    let target = Arc::new(Target {
        urls: procs.demos.iter().map(Managed::url).collect(),
        kills: procs.demos.iter().map(|_| AtomicU64::new(0)).collect(),
        http,
        attempt_timeout: params.attempt_timeout,
    });

    let start = Instant::now();
    let injector = {
        let (params, dir, target) = (params.clone(), dir.to_owned(), Arc::clone(&target));
        let (fault, at) = (spec.fault, schedule.fault_at);
        let mut procs = procs;
        tokio::task::spawn_blocking(move || {
            let injected = inject(&mut procs, fault, start, at, &params, &target.kills, &dir);
            (procs, injected)
        })
    };

    // Requests left hanging longer than the outage (+ restart) + 5 s count as unanswered; the
    // clients wait a little longer (the grace) so a late answer is still timed.
    let give_up = params.outage + Duration::from_secs(7) + params.grace;
    let tag = format!(
        "{}-{}-{}-{:x}",
        spec.backend,
        spec.fault,
        spec.policy,
        schedule.jitter_seed & 0xffff_ffff
    );
    let instances = spec.backend.instances();
    let requests: Vec<Request> = (0..params.keys)
        .map(|i| Request {
            key: format!("{tag}-{i}"),
            product: format!("c{i}"),
            body: format!("{{\"name\":\"chaos {i}\",\"price\":{}}}", 100 + i),
        })
        .collect();
    let mut tasks = Vec::with_capacity(params.keys * 2);
    for (i, request) in requests.iter().enumerate() {
        for client in 0..2 {
            let delay = schedule.launches[i]
                + if client == 1 {
                    schedule.second_client_delays[i]
                } else {
                    Duration::ZERO
                };
            let (target, request) = (Arc::clone(&target), request.clone());
            let seed = schedule.jitter_seed ^ ((i as u64) << 1 | client as u64);
            tasks.push(tokio::spawn(async move {
                tokio::time::sleep_until((start + delay).into()).await;
                client::run(target, request, i + client, give_up, seed).await
            }));
        }
    }
    let mut outcomes: Vec<Outcome> = Vec::with_capacity(tasks.len());
    for task in tasks {
        outcomes.push(task.await.unwrap_or_default());
    }
    let (mut procs, injected) = injector
        .await
        .map_err(|e| ChaosError::Process(format!("fault injector failed: {e}")))?;

    // What a late retry gets: every key once more, after the fault healed.
    let mut verify_tasks = Vec::with_capacity(requests.len());
    for (i, request) in requests.iter().enumerate() {
        let (target, request) = (Arc::clone(&target), request.clone());
        verify_tasks.push(tokio::spawn(async move {
            client::run(
                target,
                request,
                i % instances.max(1),
                Duration::from_secs(3),
                i as u64,
            )
            .await
        }));
    }
    let mut verify = Vec::with_capacity(verify_tasks.len());
    for task in verify_tasks {
        verify.push(task.await.unwrap_or_default());
    }

    let mut errors = injected.errors;
    let mut killed = Vec::new();
    for demo in &mut procs.demos {
        if let Some(crash) = demo.exited() {
            errors.push(crash);
        }
        killed.extend_from_slice(demo.killed());
    }
    if let Some(gateway) = &mut procs.gateway
        && let Some(crash) = gateway.exited()
    {
        errors.push(crash);
    }
    // The side effects that committed, read after the storm (sql only).
    let committed = match &procs.postgres {
        Some(postgres) => match committed_versions(postgres.url()).await {
            Ok(versions) => Some(
                requests
                    .iter()
                    .map(|r| versions.get(&r.product).copied().unwrap_or(0))
                    .collect(),
            ),
            Err(error) => {
                errors.push(format!("reading the committed rows failed: {error}"));
                None
            }
        },
        None => None,
    };
    tokio::task::spawn_blocking(move || drop(procs))
        .await
        .map_err(|e| ChaosError::Process(format!("stopping the processes failed: {e}")))?;

    let mut executions = Vec::new();
    for instance in 0..instances {
        executions.extend(read_journal(&journal(dir, instance))?);
    }
    Ok(ScenarioReport::new(
        spec,
        params,
        Observations {
            keys: requests.iter().map(|r| r.key.clone()).collect(),
            outcomes,
            verify,
            executions,
            committed,
            killed,
            outage: injected.outage,
            events: injected.events,
            errors,
            wall: wall.elapsed(),
        },
    ))
}

/// Per product id, its `version` in `demo_products`: every committed execution of the
/// upsert adds 1 (a handler rolled back or killed before its commit adds nothing).
async fn committed_versions(url: &str) -> Result<HashMap<String, u64>, sqlx::Error> {
    use sqlx::Connection as _;
    let mut connection = sqlx::PgConnection::connect(url).await?;
    let rows: Vec<(String, i64)> = sqlx::query_as("SELECT id, version FROM demo_products")
        .fetch_all(&mut connection)
        .await?;
    let _ = connection.close().await;
    Ok(rows
        .into_iter()
        .map(|(id, version)| (id, u64::try_from(version).unwrap_or(0)))
        .collect())
}

fn read_journal(path: &Path) -> Result<Vec<Execution>, ChaosError> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(ChaosError::io(format!("reading {}", path.display()), e)),
    };
    // A line cut by a kill (none expected: one write per line) is skipped, not fatal.
    Ok(text
        .lines()
        .filter_map(|line| serde_json::from_str::<Execution>(line).ok())
        .collect())
}

/// Empty `dir` (a previous run's journals, logs and Redis AOF) and create it again.
///
/// A scenario's directory has a fixed name, so a second run into the same `--out` would
/// otherwise append to the first run's execution journals (every key counted twice) and
/// restart Redis from the first run's AOF.
///
/// # Errors
/// When the directory cannot be removed or created.
pub fn fresh_dir(dir: &Path) -> Result<(), ChaosError> {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(ChaosError::io(format!("removing {}", dir.display()), e)),
    }
    std::fs::create_dir_all(dir)
        .map_err(|e| ChaosError::io(format!("creating {}", dir.display()), e))
}

#[cfg(test)]
mod fresh_dir_tests {
    use super::fresh_dir;

    #[test]
    fn a_second_run_starts_from_an_empty_directory() {
        let root = tempfile::tempdir().expect("temp dir");
        let dir = root.path().join("scenarios").join("00-redis-none-closed");
        fresh_dir(&dir).expect("first");
        std::fs::write(dir.join("executions-0.log"), "k1\n").expect("journal");
        std::fs::create_dir_all(dir.join("redis")).expect("redis dir");
        std::fs::write(dir.join("redis").join("appendonly.aof"), "*1\r\n").expect("aof");
        fresh_dir(&dir).expect("second");
        assert_eq!(std::fs::read_dir(&dir).expect("read").count(), 0);
    }
}
