//! Backends, the servers they share, and running one cell (backend × scenario × concurrency).

use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use idempotency_core::{Idempotency, IdempotencyKey, IdempotencyStore};
use idempotency_kv_rest::{KvRestConfig, KvRestStore};
use idempotency_redis::{RedisClusterStore, RedisStore};
use redis::aio::ConnectionManager;

use crate::engine::{EngineWorker, MemoryStoreWorker, prepare, prepare_store};
use crate::http::{App, HttpServer, HttpWorker};
use crate::load::{self, Counter, Measured, Plan};
use crate::raw::{RawWorker, Templates};
use crate::scenario::{Scenario, unbounded_memory};
use crate::servers::{self, Background, GATEWAY_TOKEN, RedisServers};
use crate::sql::{self, RawPgWorker, SqlServers};
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
    /// The layer on the memory store.
    HttpMemory,
    /// The layer on Redis.
    HttpRedis,
}

impl Backend {
    /// In run order: each baseline next to what it is compared with, so drift on a shared
    /// machine hits both alike.
    pub(crate) const ALL: [Backend; 12] = [
        Backend::MemoryStore,
        Backend::Memory,
        Backend::RawRedis,
        Backend::Redis,
        Backend::RedisCluster,
        Backend::KvRest,
        Backend::RawPostgres,
        Backend::Postgres,
        Backend::Sqlite,
        Backend::BareAxum,
        Backend::HttpMemory,
        Backend::HttpRedis,
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
            Backend::HttpMemory => "http-memory",
            Backend::HttpRedis => "http-redis",
        }
    }

    /// Runs on one current-thread runtime, with no I/O.
    pub(crate) fn in_process(self) -> bool {
        matches!(self, Backend::MemoryStore | Backend::Memory)
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
    http_memory: HttpServer,
    http_redis: HttpServer,
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

impl Env {
    /// Start every server (synchronous: the fixtures and server threads have their own
    /// runtimes).
    pub(crate) fn start() -> Result<Self> {
        let servers = RedisServers::start()?;
        let sql_servers = SqlServers::start()?;
        let gateway = servers::start_gateway(servers.single.url())?;
        let bare = HttpServer::start(App::Bare)?;
        let http_memory = HttpServer::start(App::Memory)?;
        let http_redis = HttpServer::start(App::Redis(servers.single.url().to_owned()))?;
        Ok(Self {
            servers,
            sql_servers,
            postgres: None,
            sqlite: None,
            gateway,
            bare,
            http_memory,
            http_redis,
            redis: None,
            cluster: None,
            kv: None,
            raw: None,
            templates: Templates::new(),
        })
    }

    /// Connect the clients (on the runtime that will drive them).
    pub(crate) async fn connect(&mut self) -> Result<Versions> {
        let url = self.servers.single.url().to_owned();
        let redis = RedisStore::connect(&url).await?;
        let cluster = RedisStore::builder()
            .connect_cluster(self.servers.cluster.urls())
            .await?;
        let kv_url = format!("http://{}", self.gateway.addr);
        let kv = KvRestStore::new(
            KvRestConfig::new(kv_url, GATEWAY_TOKEN)?.operation_timeout(Duration::from_secs(2)),
        )?;
        let raw = ConnectionManager::new(redis::Client::open(url)?).await?;
        let (postgres, sqlite, postgres_version) = self.sql_servers.connect().await?;
        let versions = Versions {
            redis: redis.server_version().unwrap_or("unknown").to_owned(),
            cluster: cluster.server_version().unwrap_or("unknown").to_owned(),
            postgres: postgres_version,
        };
        self.postgres = Some(postgres);
        self.sqlite = Some(sqlite);
        self.redis = Some(redis);
        self.cluster = Some(cluster);
        self.kv = Some(kv);
        self.raw = Some(raw);
        Ok(versions)
    }

    /// Stop every server and drop every client.
    pub(crate) fn stop(self) -> Result<()> {
        drop((self.redis, self.cluster, self.kv, self.raw));
        drop((self.postgres, self.sqlite));
        let results = [
            self.bare.stop(),
            self.http_memory.stop(),
            self.http_redis.stop(),
            self.gateway.stop(),
        ];
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

    /// Empty the Redis servers so every cell starts from the same state.
    async fn flush(&self) -> Result<()> {
        let mut raw = Self::client(&self.raw)?;
        redis::cmd("FLUSHALL").query_async::<()>(&mut raw).await?;
        let cluster = Self::client(&self.cluster)?;
        let mut conn = cluster.connection().clone();
        redis::cmd("FLUSHALL").query_async::<()>(&mut conn).await?;
        Ok(())
    }
}

/// One cell: which, how many tasks, for how long.
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

/// Run `cell` on the current runtime.
pub(crate) async fn run(
    env: &Env,
    cell: Cell,
    plan: Plan,
    counter: Arc<Counter>,
) -> Result<Measured> {
    let c = cell.concurrency;
    match cell.backend {
        Backend::MemoryStore => {
            let store = unbounded_memory();
            let fixed = format!("idempotency:bench:{}", cell.fixed());
            prepare_store(&store, cell.scenario, &fixed).await?;
            let workers = (0..c)
                .map(|t| {
                    let prefix = format!("idempotency:bench:{}", cell.prefix(t));
                    MemoryStoreWorker::new(store.clone(), cell.scenario, prefix, &fixed)
                })
                .collect();
            load::run(workers, plan, counter).await
        }
        Backend::Memory => engine_cell(unbounded_memory(), cell, plan, counter).await,
        Backend::Redis => {
            env.flush().await?;
            engine_cell(Env::client(&env.redis)?, cell, plan, counter).await
        }
        Backend::RedisCluster => {
            env.flush().await?;
            engine_cell(Env::client(&env.cluster)?, cell, plan, counter).await
        }
        Backend::KvRest => {
            env.flush().await?;
            engine_cell(Env::client(&env.kv)?, cell, plan, counter).await
        }
        Backend::RawRedis => {
            env.flush().await?;
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
            load::run(workers, plan, counter).await
        }
        Backend::RawPostgres => {
            let (postgres, sqlite) = env.sql()?;
            sql::flush(&postgres, &sqlite).await?;
            let fixed = format!("idempotency:bench:{}", cell.fixed());
            sql::prepare_raw(&postgres, cell.scenario, &fixed).await?;
            let workers = (0..c)
                .map(|t| {
                    let prefix = format!("idempotency:bench:{}", cell.prefix(t));
                    RawPgWorker::new(&postgres, cell.scenario, prefix, fixed.clone())
                })
                .collect();
            load::run(workers, plan, counter).await
        }
        Backend::Postgres => {
            let (postgres, sqlite) = env.sql()?;
            sql::flush(&postgres, &sqlite).await?;
            engine_cell(postgres, cell, plan, counter).await
        }
        Backend::Sqlite => {
            let (postgres, sqlite) = env.sql()?;
            sql::flush(&postgres, &sqlite).await?;
            engine_cell(sqlite, cell, plan, counter).await
        }
        Backend::BareAxum => http_cell(&env.bare, false, cell, plan, counter).await,
        Backend::HttpMemory => http_cell(&env.http_memory, true, cell, plan, counter).await,
        Backend::HttpRedis => {
            env.flush().await?;
            http_cell(&env.http_redis, true, cell, plan, counter).await
        }
    }
}

async fn engine_cell<S: IdempotencyStore + 'static>(
    store: S,
    cell: Cell,
    plan: Plan,
    counter: Arc<Counter>,
) -> Result<Measured> {
    let engine = Idempotency::builder(store).ignore_env().build()?;
    let fixed = IdempotencyKey::new(cell.fixed())?;
    let held = prepare(&engine, cell.scenario, &fixed).await?;
    let workers: Vec<_> = (0..cell.concurrency)
        .map(|t| EngineWorker::new(engine.clone(), cell.scenario, cell.prefix(t), fixed.clone()))
        .collect();
    let measured = load::run(workers, plan, counter).await;
    if let Some(guard) = held {
        guard.release().await?;
    }
    measured
}

async fn http_cell(
    server: &HttpServer,
    layered: bool,
    cell: Cell,
    plan: Plan,
    counter: Arc<Counter>,
) -> Result<Measured> {
    let fixed = cell.fixed();
    let held = if layered {
        crate::http::prepare(server, cell.scenario, &fixed).await?
    } else {
        None
    };
    let mut workers = Vec::with_capacity(cell.concurrency);
    for t in 0..cell.concurrency {
        workers.push(
            HttpWorker::new(
                server.addr(),
                cell.scenario,
                layered,
                cell.prefix(t),
                fixed.clone(),
            )
            .await?,
        );
    }
    let measured = load::run(workers, plan, counter).await;
    if let Some(held) = held {
        held.finish(server).await?;
    }
    measured
}
