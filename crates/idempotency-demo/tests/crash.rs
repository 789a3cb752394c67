//! The crash proof (issue 10, item 6): a real demo process is killed with SIGKILL at seeded
//! random moments of a storm of duplicate, retrying clients — before the shop write commits,
//! after it, around the completion — and restarted; every client retries to a final answer.
//! Then, **from the database**: each key's order exists exactly once, every 2xx answer for a key
//! is byte-identical, and no client is left without a final answer.
//!
//! On the SQL store (Postgres, SQLite) the completion commits in the order's transaction, so
//! this holds. The same storm on the Redis store is run and **reported** (not asserted): a kill
//! after the order committed and before the completion reached Redis runs the order again.
//!
//! Sizes (env): `CRASH_KEYS` (default 500), `CRASH_CLIENTS` (4 per key), `CRASH_KILLS` (6),
//! `CRASH_SEED` (1), `CRASH_CONCURRENCY` (keys in flight, 48).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::io::{BufRead as _, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use idempotency::sql::sqlx;
use idempotency_testkit::fixtures::{PostgresServer, RedisServer};
use rand::{Rng as _, SeedableRng as _};
use tokio::sync::{Semaphore, watch};

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

const CLEARED: [&str; 12] = [
    "UPSTASH_REDIS_REST_URL",
    "UPSTASH_REDIS_REST_TOKEN",
    "KV_REST_API_URL",
    "KV_REST_API_TOKEN",
    "REDIS_URL",
    "KV_URL",
    "REDIS_CLUSTER_URLS",
    "IDEMPOTENCY_STORE",
    "DATABASE_URL",
    "DISABLE_IDEMPOTENCY_CHECKS",
    "IDEMPOTENCY_FAILURE_POLICY",
    "IDEMPOTENCY_WAIT_IN_PROGRESS",
];

/// The demo process, restarted on the same port after each kill (on a new one when another
/// socket took the port meanwhile).
struct Demo {
    env: Vec<(&'static str, String)>,
    /// Shared with the storm's clients, which read it for each attempt.
    port: Arc<AtomicU16>,
    child: Option<Child>,
}

/// Attempts to start the demo on a fresh port.
const START_ATTEMPTS: u32 = 5;

impl Demo {
    fn start(env: Vec<(&'static str, String)>) -> Self {
        let mut demo = Self {
            env,
            port: Arc::new(AtomicU16::new(0)),
            child: None,
        };
        demo.spawn_on_a_free_port();
        demo
    }

    /// The child must bind the port itself, so the port is free between its reservation and
    /// the child's bind (which comes after the store's connection: tens of milliseconds or
    /// more): another server (another test's, another process's) can take it then, or a
    /// process that another thread of this binary is spawning holds a copy of the reserving
    /// socket. The demo then exits with "Address already in use"; it is started again on
    /// another port.
    fn spawn_on_a_free_port(&mut self) {
        let child = idempotency_testkit::start_on_free_port(START_ATTEMPTS, |port| {
            self.port.store(port, Ordering::Relaxed);
            self.try_spawn()
        })
        .unwrap_or_else(|seen| {
            panic!("the demo did not start: its port was taken {START_ATTEMPTS} times:\n{seen}")
        });
        self.child = Some(child);
    }

    /// Start the child on `self.port`; `Err` (with its output) when it could not bind the
    /// port, a panic when it did not start for any other reason.
    fn try_spawn(&self) -> Result<Child, String> {
        let mut command = Command::new(env!("CARGO_BIN_EXE_idempotency-demo"));
        for var in CLEARED {
            command.env_remove(var);
        }
        command
            .env("PORT", self.port.load(Ordering::Relaxed).to_string())
            .env("RUST_LOG", "warn,idempotency_demo=info")
            .env("NO_COLOR", "1")
            .envs(self.env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = command.spawn().unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut seen = String::new();
            let mut sent = false;
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if !sent {
                    seen.push_str(&line);
                    seen.push('\n');
                    if line.contains("idempotency-demo listening") {
                        let _ = tx.send(Ok(()));
                        sent = true;
                    }
                }
            }
            if !sent {
                let _ = tx.send(Err(seen));
            }
        });
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(Ok(())) => Ok(child),
            Ok(Err(seen)) if seen.contains("cannot listen") && seen.contains("in use") => {
                let _ = child.wait();
                Err(seen)
            }
            Ok(Err(seen)) => panic!("the demo did not start:\n{seen}"),
            Err(_) => panic!("the demo did not start within 30 s"),
        }
    }

    /// SIGKILL, then start again on the same port; on a new one if another socket took it
    /// meanwhile (nothing of this process holds it, so the port will not be free soon).
    fn kill_and_restart(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap(); // SIGKILL on unix
            child.wait().unwrap();
        }
        match self.try_spawn() {
            Ok(child) => self.child = Some(child),
            Err(seen) => {
                eprintln!(
                    "the demo's port {} was taken while it restarted; moving:\n{seen}",
                    self.port.load(Ordering::Relaxed)
                );
                self.spawn_on_a_free_port();
            }
        }
    }

    fn url(&self) -> String {
        url(&self.port)
    }
}

fn url(port: &AtomicU16) -> String {
    format!("http://127.0.0.1:{}", port.load(Ordering::Relaxed))
}

impl Drop for Demo {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// What a storm produced, per key: each client's final 2xx answer (status, body bytes).
struct Storm {
    answers: HashMap<String, Vec<(u16, bytes::Bytes)>>,
    kills: u64,
    attempts: u64,
    elapsed: Duration,
}

async fn storm(demo: &mut Demo, run: &str) -> Storm {
    let keys = env_or("CRASH_KEYS", 500);
    let clients = env_or("CRASH_CLIENTS", 4);
    let kills = env_or("CRASH_KILLS", 6);
    let seed = env_or("CRASH_SEED", 1);
    let concurrency = env_or("CRASH_CONCURRENCY", 48) as usize;
    // The demo's port, read for each attempt: it moves if another socket took it during a
    // restart.
    let port = Arc::clone(&demo.port);
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();

    // The product every order refers to.
    let created = http
        .put(format!("{}/api/products/tea", demo.url()))
        .bearer_auth("shopper")
        .header("idempotency-key", format!("{run}-product"))
        .json(&serde_json::json!({"name": "Tea", "price": 450}))
        .send()
        .await
        .unwrap();
    assert!(created.status().is_success(), "{}", created.status());

    let started = Instant::now();
    let attempts = Arc::new(AtomicU64::new(0));
    let (done_tx, done_rx) = watch::channel(false);
    let gate = Arc::new(Semaphore::new(concurrency));
    let mut tasks = Vec::new();
    for k in 0..keys {
        let key = format!("{run}-{k:05}");
        let permit_gate = Arc::clone(&gate);
        let http = http.clone();
        let port = Arc::clone(&port);
        let attempts = Arc::clone(&attempts);
        tasks.push(tokio::spawn(async move {
            let _permit = permit_gate.acquire_owned().await.unwrap();
            let mut duplicates = Vec::new();
            for c in 0..clients {
                let (http, port, key, attempts) = (
                    http.clone(),
                    Arc::clone(&port),
                    key.clone(),
                    Arc::clone(&attempts),
                );
                duplicates.push(tokio::spawn(async move {
                    let mut rng = rand::rngs::StdRng::seed_from_u64(c * 7919 + key.len() as u64);
                    let deadline = Instant::now() + Duration::from_secs(120);
                    loop {
                        attempts.fetch_add(1, Ordering::Relaxed);
                        let sent = http
                            .post(format!("{}/api/orders", url(&port)))
                            .bearer_auth("shopper")
                            .header("idempotency-key", &key)
                            .json(&serde_json::json!({"productId": "tea", "quantity": 1}))
                            .send()
                            .await;
                        if let Ok(response) = sent {
                            let status = response.status().as_u16();
                            if let Ok(body) = response.bytes().await
                                && (200..300).contains(&status)
                            {
                                return (status, body);
                            }
                        }
                        assert!(
                            Instant::now() < deadline,
                            "key {key}: no final answer within 120 s"
                        );
                        let pause = rng.random_range(5..40);
                        tokio::time::sleep(Duration::from_millis(pause)).await;
                    }
                }));
            }
            let mut answers = Vec::new();
            for duplicate in duplicates {
                answers.push(duplicate.await.unwrap());
            }
            (key, answers)
        }));
    }
    let collector = tokio::spawn(async move {
        let mut answers = HashMap::new();
        for task in tasks {
            let (key, got) = task.await.unwrap();
            answers.insert(key, got);
        }
        let _ = done_tx.send(true);
        answers
    });

    // The killer: SIGKILL at seeded random moments while the storm runs.
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut killed = 0;
    while killed < kills && !*done_rx.borrow() {
        let wait = Duration::from_millis(rng.random_range(150..600));
        tokio::time::sleep(wait).await;
        if *done_rx.borrow() {
            break;
        }
        tokio::task::block_in_place(|| demo.kill_and_restart());
        killed += 1;
    }
    let answers = collector.await.unwrap();
    Storm {
        answers,
        kills: killed,
        attempts: attempts.load(Ordering::Relaxed),
        elapsed: started.elapsed(),
    }
}

/// Orders per key, read from the shop's database.
async fn orders_per_key(database_url: &str, run: &str) -> HashMap<String, i64> {
    let sql = "SELECT idempotency_key, COUNT(*) FROM demo_orders WHERE idempotency_key LIKE $1 \
               GROUP BY idempotency_key";
    let pattern = format!("{run}-%");
    let rows: Vec<(String, i64)> = if database_url.starts_with("sqlite:") {
        let pool = sqlx::SqlitePool::connect(database_url).await.unwrap();
        sqlx::query_as(sql)
            .bind(pattern)
            .fetch_all(&pool)
            .await
            .unwrap()
    } else {
        let pool = sqlx::PgPool::connect(database_url).await.unwrap();
        sqlx::query_as(sql)
            .bind(pattern)
            .fetch_all(&pool)
            .await
            .unwrap()
    };
    rows.into_iter().collect()
}

struct Figures {
    keys: usize,
    duplicated_keys: usize,
    extra_orders: i64,
    missing: usize,
    differing_answers: usize,
}

/// Order executions journaled by the demo (`DEMO_EXECUTION_LOG`, written inside the
/// transaction before it commits): more than the committed orders means kills landed between
/// the write and the commit.
fn executions(journal: &std::path::Path, run: &str) -> usize {
    let text = std::fs::read_to_string(journal).unwrap_or_default();
    let key = format!("\"key\":\"{run}-");
    text.lines()
        .filter(|line| line.contains("POST /api/orders") && line.contains(&key))
        .count()
}

async fn check(database_url: &str, run: &str, storm: &Storm, journal: &std::path::Path) -> Figures {
    let orders = orders_per_key(database_url, run).await;
    let committed: i64 = orders.values().sum();
    let executed = executions(journal, run);
    assert!(
        executed as i64 >= committed,
        "the journal misses executions ({executed} < {committed})"
    );
    eprintln!(
        "crash storm {run}: {executed} order executions journaled, {committed} committed \
         ({} rolled back or lost with a killed process)",
        executed as i64 - committed
    );
    let mut figures = Figures {
        keys: storm.answers.len(),
        duplicated_keys: 0,
        extra_orders: 0,
        missing: 0,
        differing_answers: 0,
    };
    for (key, answers) in &storm.answers {
        match orders.get(key).copied().unwrap_or(0) {
            0 => figures.missing += 1,
            1 => {}
            n => {
                figures.duplicated_keys += 1;
                figures.extra_orders += n - 1;
            }
        }
        if answers.iter().any(|a| a != &answers[0]) {
            figures.differing_answers += 1;
        }
    }
    eprintln!(
        "crash storm {run}: {} keys x {} clients, {} kills, {} attempts, {:.1} s: {} keys with \
         duplicate orders ({} extra), {} keys without an order, {} keys with differing 2xx \
         answers",
        figures.keys,
        storm.answers.values().next().map_or(0, Vec::len),
        storm.kills,
        storm.attempts,
        storm.elapsed.as_secs_f64(),
        figures.duplicated_keys,
        figures.extra_orders,
        figures.missing,
        figures.differing_answers,
    );
    figures
}

fn common_env(database_url: &str, journal: &std::path::Path) -> Vec<(&'static str, String)> {
    vec![
        ("DEMO_EXECUTION_LOG", journal.display().to_string()),
        ("DATABASE_URL", database_url.to_owned()),
        ("IDEMPOTENCY_LEASE", "1s".to_owned()),
        ("DEMO_WORK_MS", "5".to_owned()),
        ("DEMO_AFTER_WRITE_MS", "30".to_owned()),
    ]
}

fn assert_exactly_once(figures: &Figures, storm: &Storm) {
    assert!(storm.kills > 0, "no kill landed during the storm");
    assert_eq!(figures.missing, 0, "a key has no order");
    assert_eq!(figures.duplicated_keys, 0, "a key's order ran twice");
    assert_eq!(figures.differing_answers, 0, "2xx answers differ for a key");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_storm_on_postgres_runs_each_order_exactly_once() {
    let server = PostgresServer::start().unwrap_or_else(|e| {
        panic!("the crash proof needs Postgres ({e}); install postgresql or set IDEMPOTENCY_TEST_POSTGRES_URL")
    });
    let url = server.url().to_owned();
    let dir = tempfile::tempdir().unwrap();
    let journal = dir.path().join("executions.jsonl");
    let mut env = common_env(&url, &journal);
    env.push(("IDEMPOTENCY_STORE", "sql".to_owned()));
    let mut demo = Demo::start(env);
    let run = format!("pg{}", rand::random::<u32>());
    let storm = storm(&mut demo, &run).await;
    let figures = check(&url, &run, &storm, &journal).await;
    assert_exactly_once(&figures, &storm);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_storm_on_sqlite_runs_each_order_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("shop.db").display());
    let journal = dir.path().join("executions.jsonl");
    let mut env = common_env(&url, &journal);
    env.push(("IDEMPOTENCY_STORE", "sql".to_owned()));
    let mut demo = Demo::start(env);
    let run = format!("lite{}", rand::random::<u32>());
    let storm = storm(&mut demo, &run).await;
    let figures = check(&url, &run, &storm, &journal).await;
    assert_exactly_once(&figures, &storm);
}

/// The comparison: the same storm with the records in Redis and the orders in SQLite. Reported,
/// not asserted (the duplicates are the point); only the clients' final answers are checked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_storm_on_redis_reports_the_crash_window() {
    let redis = RedisServer::start().unwrap_or_else(|e| {
        panic!("the comparison needs redis-server ({e}); install redis-server")
    });
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("shop.db").display());
    let journal = dir.path().join("executions.jsonl");
    let mut env = common_env(&url, &journal);
    env.push(("IDEMPOTENCY_STORE", "redis".to_owned()));
    env.push(("REDIS_URL", redis.url().to_owned()));
    let mut demo = Demo::start(env);
    let run = format!("redis{}", rand::random::<u32>());
    let storm = storm(&mut demo, &run).await;
    let figures = check(&url, &run, &storm, &journal).await;
    assert!(storm.kills > 0, "no kill landed during the storm");
    assert_eq!(figures.missing, 0, "a key has no order");
    eprintln!(
        "REDIS CRASH WINDOW: {} of {} keys ran their order more than once ({} extra orders) \
         over {} kills",
        figures.duplicated_keys, figures.keys, figures.extra_orders, storm.kills
    );
}
