//! What the Postgres and SQLite stores share, written once and generic over the sqlx database:
//! the store's state (pool, table, time budget, statements), the engine-facing primitives that
//! differ only by their SQL text (`complete`, `release`, `extend`, `get`, `delete`,
//! `time_to_live`, `purge`), the parameters of a claim and of a completion, the decoding of a
//! row, the fenced completion in the caller's transaction, and the builders' migration and shape
//! checks.
//!
//! What truly differs stays in `postgres.rs` / `sqlite.rs`: the SQL dialect, the error codes,
//! SQLite's read-first claim (write lock, `SQLITE_BUSY`) and busy snapshot, Postgres's
//! notifications, stale snapshots and aborted transactions. The few small differences the shared
//! code needs are the [`Dialect`] trait's.

use std::time::Duration;

use idempotency_core::{
    Completed, CompletionParts, Fenced, IdempotencyError, InProgress, LeaseToken, Record,
    StoreError, StoreKey, StoreOperation,
};
use std::future::Future;
use std::pin::Pin;

use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex, PoisonError};

use sqlx::pool::PoolConnection;
use sqlx::query::Query;
use sqlx::{
    ColumnIndex, Connection as _, Database, Decode, Encode, Executor, IntoArguments, Pool,
    Row as _, Type,
};
use tokio::sync::Notify;

use crate::error::{map_sqlx, timed};
use crate::migrate::{self, MIGRATIONS, Migration};
use crate::row::{RawRow, encoding_code, millis_column};
use crate::table::Table;
use crate::{SqlStatements, SqlStoreError};

/// What the shared code needs to know of a database beyond its statements' text.
pub(crate) trait Dialect: Database {
    /// Postgres: the migrations' Postgres SQL and column types (else SQLite's).
    const POSTGRES: bool;
    /// The prefix of a numbered parameter (`$1` on Postgres, `?1` on SQLite).
    const PARAMETER: &'static str;
    /// The `(name, type)` of each column of the table named by its one parameter
    /// ([`Self::columns_of`]); no row when the table does not exist.
    const COLUMNS_OF: &'static str;
    /// Whether the completion statement answers whether it applied (Postgres: a `SELECT` over a
    /// data-modifying CTE), rather than changing one row when it applies (SQLite: an `UPDATE`).
    const COMPLETE_RETURNS_APPLIED: bool;

    /// The parameter of [`Self::COLUMNS_OF`]: the table's quoted (Postgres) or bare name.
    fn columns_of(table: &Table) -> &str;

    /// A lease or retention as the statements bind it (Postgres: µs, SQLite: ms).
    fn units(duration: Duration) -> i64;

    /// The value `time_to_live` returns, back as a duration.
    fn from_units(units: u64) -> Duration;

    /// Rows a write changed.
    fn rows_affected(done: &Self::QueryResult) -> u64;

    /// The `encoding` column (Postgres `SMALLINT`, SQLite `INTEGER`).
    fn encoding(row: &Self::Row) -> Result<Option<i64>, sqlx::Error>;

    /// A row that is not a record for a reason its record columns do not show (SQLite: an
    /// `expires_at` that is not a number) is [`StoreError::Corrupt`].
    fn check_row(row: &Self::Row) -> Result<(), StoreError> {
        let _ = row;
        Ok(())
    }
}

/// The state every store keeps, and the operations that are the same on both databases.
#[derive(Debug)]
pub(crate) struct SharedStore<DB: Database> {
    pub(crate) pool: Pool<DB>,
    pub(crate) table: Table,
    pub(crate) timeout: Duration,
    pub(crate) sql: SqlStatements,
    /// How many connections abandoned claims' releases gave up (detached from the pool) whose
    /// statement has not ended yet ([`SharedStore::release_orphan`]): at most the pool's
    /// `max_connections`, so the server sees at most twice the pool's connections.
    pub(crate) detached: Arc<AtomicU32>,
}

/// A place among [`SharedStore::detached`], given back when dropped.
struct DetachedSlot(Arc<AtomicU32>);

impl DetachedSlot {
    /// A place if fewer than `cap` connections are detached.
    fn reserve(count: &Arc<AtomicU32>, cap: u32) -> Option<Self> {
        count
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < cap).then_some(n + 1)
            })
            .ok()
            .map(|_| Self(Arc::clone(count)))
    }
}

impl Drop for DetachedSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Claims abandoned with their statement in flight whose release ([`ClaimConnection`]) has
/// not ended yet, by key and token, in this process (every store of the process: a caller may
/// retry through another store instance on the same database). A claim of the same key with
/// the same record (a caller retrying a claim that timed out) waits until that release has
/// ended: otherwise it could find the abandoned claim (its own token: "claimed") just before
/// the release removes it, and be told it holds a key the release then frees. Claims with any
/// other token never wait (tokens are random: another database's claim with the same key and
/// token does not happen), and while no claim is abandoned a claim reads one atomic counter.
static ORPHANS: LazyLock<Orphans> = LazyLock::new(Orphans::default);

/// See [`ORPHANS`].
#[derive(Debug, Default)]
struct Orphans {
    /// How many releases are pending (the entries of `pending`).
    count: AtomicUsize,
    pending: Mutex<Vec<(StoreKey, LeaseToken)>>,
    /// Notified each time a release ends.
    ended: Notify,
}

impl Orphans {
    fn entries(&self) -> std::sync::MutexGuard<'_, Vec<(StoreKey, LeaseToken)>> {
        // A panic while the lock was held cannot leave the list half-changed (one push or one
        // swap_remove): keep using it.
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn add(&self, key: StoreKey, token: LeaseToken) {
        self.entries().push((key, token));
        self.count.fetch_add(1, Ordering::AcqRel);
    }

    fn remove(&self, key: &StoreKey, token: &LeaseToken) {
        let mut entries = self.entries();
        if let Some(at) = entries.iter().position(|(k, t)| k == key && t == token) {
            entries.swap_remove(at);
            self.count.fetch_sub(1, Ordering::AcqRel);
        }
        drop(entries);
        self.ended.notify_waiters();
    }

    fn is_pending(&self, key: &StoreKey, token: &LeaseToken) -> bool {
        self.entries().iter().any(|(k, t)| k == key && t == token)
    }

    /// Wait until no release is pending for `key` under `token` (the caller's time budget
    /// bounds the wait).
    async fn settled(&self, key: &StoreKey, token: &LeaseToken) {
        if self.count.load(Ordering::Acquire) == 0 {
            return;
        }
        loop {
            let ended = self.ended.notified();
            let mut ended = std::pin::pin!(ended);
            // Registered before the check: a release that ends in between is not missed.
            ended.as_mut().enable();
            if !self.is_pending(key, token) {
                return;
            }
            ended.await;
        }
    }
}

/// Removes an abandoned claim from [`Orphans`] when its release ends, however it ends (done,
/// given up, or its task dropped by a runtime that shuts down).
struct PendingRelease {
    key: StoreKey,
    token: LeaseToken,
}

impl Drop for PendingRelease {
    fn drop(&mut self) {
        ORPHANS.remove(&self.key, &self.token);
    }
}

/// What the fenced completion in the caller's transaction did ([`SharedStore::write_in`]).
pub(crate) enum Written {
    /// The record is completed under the attempt's token (or was already).
    Applied,
    /// The fenced statement matched nothing.
    NotApplied,
    /// The statement failed.
    Failed(sqlx::Error),
}

/// The pool connection a claim runs on, owned by `try_claim`'s future.
///
/// A claim statement that was handed to the connection is not cancelled when that future is
/// dropped (its time budget ran out, or its caller went away): sqlx's SQLite worker thread runs
/// the statement once the write lock is free, and a Postgres server runs it once the row lock
/// it waits for is free, whether or not anyone awaits the reply. The claim would then land
/// under a token nobody holds. So while the statement may be in flight, dropping this guard
/// moves the same connection into a task that waits for the statement to end on it (commands
/// on one connection run in order: the SQLite worker's queue, the Postgres wire protocol, which
/// sqlx drains before it sends anything else) and then releases the claim, fenced by its token,
/// with a budget of its own (until the claim's lease would lapse); it waits for the statement
/// at most the lease plus the store's operation timeout, then gives the connection up
/// ([`SharedStore::release_orphan`]). Dropped before the statement
/// was handed over (while waiting for a connection, or during SQLite's read), nothing was
/// written and the connection goes back to the pool as usual. The path that is not dropped
/// spawns nothing.
pub(crate) struct ClaimConnection<'a, DB: Database> {
    conn: Option<PoolConnection<DB>>,
    store: &'a SharedStore<DB>,
    /// The claim whose statement may be in flight on `conn`.
    in_flight: Option<InFlight<'a>>,
    /// The release after a dropped claim (set where sqlx's bounds are known).
    release: ReleaseOrphan<DB>,
}

/// What [`ClaimConnection`]'s `Drop` spawns.
type ReleaseOrphan<DB> = fn(Orphan<DB>) -> Pin<Box<dyn Future<Output = ()> + Send>>;

struct InFlight<'a> {
    key: &'a StoreKey,
    token: LeaseToken,
    lease: Duration,
}

/// A claim whose caller stopped waiting while its statement may have been in flight.
pub(crate) struct Orphan<DB: Database> {
    conn: PoolConnection<DB>,
    pool: Pool<DB>,
    release_sql: String,
    key: StoreKey,
    token: LeaseToken,
    lease: Duration,
    /// The store's operation timeout: with the lease, how long the release waits for the
    /// abandoned statement before it gives the connection up.
    timeout: Duration,
    /// The store's count of detached connections ([`SharedStore::detached`]).
    detached: Arc<AtomicU32>,
    /// Its entry in [`Orphans`], removed when the release ends.
    pending: PendingRelease,
}

impl<DB: Database> ClaimConnection<'_, DB> {
    /// The connection (for the statements that write nothing, such as SQLite's first read).
    pub(crate) fn conn(&mut self) -> &mut DB::Connection {
        self.conn
            .as_deref_mut()
            .unwrap_or_else(|| unreachable!("the connection is only taken on drop"))
    }
}

impl<DB: Database> Drop for ClaimConnection<'_, DB> {
    fn drop(&mut self) {
        let (Some(conn), Some(claim)) = (self.conn.take(), self.in_flight.take()) else {
            return;
        };
        // Without a runtime (dropped while it shuts down) nothing can run the release; the
        // claim then lapses with its lease. Never panic in a destructor.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::warn!(key = %claim.key, "claim abandoned without a runtime to release it; it lapses with its lease");
            return;
        };
        // Registered before the task exists: a retry with this record that starts from now on
        // waits for the release ([`Orphans`]).
        ORPHANS.add(claim.key.clone(), claim.token);
        let orphan = Orphan {
            conn,
            pool: self.store.pool.clone(),
            release_sql: self.store.sql.release.clone(),
            key: claim.key.clone(),
            token: claim.token,
            lease: claim.lease,
            timeout: self.store.timeout,
            detached: Arc::clone(&self.store.detached),
            pending: PendingRelease {
                key: claim.key.clone(),
                token: claim.token,
            },
        };
        drop(runtime.spawn((self.release)(orphan)));
    }
}

// The bounds say what sqlx needs to send these parameters and read these columns on `DB`; both
// databases meet them, and they are written once, here.
impl<DB: Dialect> SharedStore<DB>
where
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'q> &'q str: Encode<'q, DB> + Type<DB>,
    for<'q> Option<&'q str>: Encode<'q, DB> + Type<DB>,
    for<'q> &'q [u8]: Encode<'q, DB> + Type<DB>,
    for<'q> i64: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> i16: Encode<'q, DB> + Type<DB>,
    for<'r> bool: Decode<'r, DB> + Type<DB>,
    for<'r> String: Decode<'r, DB> + Type<DB>,
    for<'r> Vec<u8>: Decode<'r, DB> + Type<DB>,
    for<'a> &'a str: ColumnIndex<DB::Row>,
    usize: ColumnIndex<DB::Row>,
{
    /// The claim statement with its parameters (key, token, fingerprint, created-at, lease).
    pub(crate) fn claim<'q>(
        &'q self,
        key: &'q StoreKey,
        record: &'q InProgress,
        lease: Duration,
    ) -> Query<'q, DB, DB::Arguments<'q>> {
        sqlx::query(&self.sql.claim)
            .bind(key.as_str())
            .bind(record.token.as_bytes().as_slice())
            .bind(record.fingerprint.as_bytes().as_slice())
            .bind(millis_column(record.created_at_ms))
            .bind(DB::units(lease))
    }

    /// A pool connection for a claim ([`ClaimConnection`]).
    ///
    /// A claim of `key` with `token` whose earlier attempt was abandoned waits here until that
    /// attempt's release has ended ([`Orphans`]), before it reads or writes anything.
    pub(crate) async fn claim_connection(
        &self,
        key: &StoreKey,
        token: &LeaseToken,
    ) -> Result<ClaimConnection<'_, DB>, sqlx::Error>
    where
        DB::Connection: Send,
    {
        ORPHANS.settled(key, token).await;
        Ok(ClaimConnection {
            conn: Some(self.pool.acquire().await?),
            store: self,
            in_flight: None,
            release: |orphan| Box::pin(Self::release_orphan(orphan)),
        })
    }

    /// Run the claim statement on `guard`'s connection. While it runs, dropping the guard
    /// releases the claim once it has landed. An error the database answered (the statement
    /// wrote nothing) does not; any other (the connection broke: the statement may have been
    /// applied) leaves the guard to release it when dropped.
    pub(crate) async fn claim_on<'a>(
        &'a self,
        guard: &mut ClaimConnection<'a, DB>,
        key: &'a StoreKey,
        record: &'a InProgress,
        lease: Duration,
    ) -> Result<DB::Row, sqlx::Error> {
        guard.in_flight = Some(InFlight {
            key,
            token: record.token,
            lease,
        });
        let row = self.claim(key, record, lease).fetch_one(guard.conn()).await;
        if !matches!(&row, Err(error) if !matches!(error, sqlx::Error::Database(_))) {
            guard.in_flight = None;
        }
        row
    }

    /// The release of a claim whose caller stopped waiting while its statement was in flight
    /// ([`ClaimConnection`]): wait for the statement to end on its connection, then release
    /// it, fenced by its token, retrying busy and transient failures until its lease would
    /// have lapsed (measured from then: the statement started before), on the connection, or
    /// on the pool once the connection failed.
    ///
    /// The wait for the statement is bounded by the claim's lease plus the store's operation
    /// timeout ([`Orphan::timeout`]): past that (the lock it waits for is still held) the
    /// release gives up and detaches the connection from the pool, so the pool opens a
    /// replacement instead of losing that capacity for as long as the lock is held. The
    /// detached connection is kept, counted, until its statement ends, then closed: at most
    /// as many are detached at once as the pool has connections (the server's backend of each
    /// stays until then whatever the client does), and past that bound the connection stays
    /// with the pool until a place frees (as before the give-up). A statement that still lands
    /// is a claim under a token nobody holds, released by nobody, which lapses with its lease
    /// (see the crate docs, "Transactional completion").
    async fn release_orphan(orphan: Orphan<DB>)
    where
        DB::Connection: Send,
    {
        let Orphan {
            conn,
            pool,
            release_sql,
            key,
            token,
            lease,
            timeout,
            detached,
            pending,
        } = orphan;
        let patience = lease.saturating_add(timeout);
        let mut conn = Some(conn);
        let mut pending = Some(pending);
        while let Some(c) = conn.as_mut() {
            match tokio::time::timeout(patience, c.ping()).await {
                Ok(Ok(())) => break,
                Ok(Err(error)) => {
                    tracing::debug!(%key, %error, "abandoned claim: its connection failed; releasing on the pool");
                    conn = None;
                    break;
                }
                Err(_) => {}
            }
            // The detached connection's server backend stays until its statement ends (a
            // server does not notice a closed socket while it waits for a lock): at most as
            // many detached connections as the pool has, or repeated give-ups behind a lock
            // held for long would open connections until the server refuses everyone's.
            // Past that, this one stays with the pool (as before the bound) and is given up
            // when a place frees.
            let cap = pool.options().get_max_connections();
            let Some(slot) = DetachedSlot::reserve(&detached, cap) else {
                tracing::debug!(%key, cap, "abandoned claim: its statement has not ended, and as many connections as the pool has are given up already; keeping its connection");
                continue;
            };
            tracing::warn!(
                %key, waited = ?patience,
                "abandoned claim: its statement did not end within the lease plus the \
                 operation timeout; giving its connection up (detached from the pool); \
                 if the statement still lands, the claim lapses with its lease"
            );
            // A retry with this record no longer waits for this release.
            drop(pending.take());
            if let Some(c) = conn.take() {
                // Detached, the pool may open a replacement at once; the connection is kept
                // (and counted) until the statement in flight on it has ended, then closed.
                let mut raw = c.detach();
                let _ended = raw.ping().await;
            }
            drop(slot);
            return;
        }
        // Overflow-free: a lease may be `Duration::MAX` ("no limit"; `now + lease` panics).
        let deadline = idempotency_core::instant_after(tokio::time::Instant::now(), lease);
        let mut pause = Duration::from_millis(5);
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                tracing::warn!(%key, "abandoned claim: not released before its lease would lapse; it lapses with its lease");
                return;
            }
            let query = sqlx::query(&release_sql)
                .bind(key.as_str())
                .bind(token.as_bytes().as_slice());
            let attempt = async {
                match conn.as_deref_mut() {
                    Some(c) => query.execute(c).await,
                    None => query.execute(&pool).await,
                }
            };
            match tokio::time::timeout(left, attempt).await {
                Ok(Ok(_)) => {
                    tracing::debug!(%key, "abandoned claim released");
                    return;
                }
                Ok(Err(error)) => {
                    tracing::debug!(%key, %error, "abandoned claim: release failed; retrying");
                    if !matches!(error, sqlx::Error::Database(_)) {
                        conn = None;
                    }
                }
                Err(_) => {
                    tracing::warn!(%key, "abandoned claim: not released before its lease would lapse; it lapses with its lease");
                    return;
                }
            }
            tokio::time::sleep(pause.min(left)).await;
            pause = (pause * 2).min(Duration::from_millis(250));
        }
    }

    /// Run the completion statement `sql` (the plain `complete`, or a store's variant for the
    /// caller's transaction) on `executor`: whether it applied.
    ///
    /// `extra`: an eighth parameter the statement takes (Postgres's completion in the caller's
    /// transaction: its lock wait bound).
    async fn complete_on<'e, E: Executor<'e, Database = DB>>(
        sql: &str,
        executor: E,
        key: &StoreKey,
        token: &LeaseToken,
        record: &Completed,
        retention: Duration,
        extra: Option<&str>,
    ) -> Result<bool, sqlx::Error> {
        let mut query = sqlx::query(sql)
            .bind(key.as_str())
            .bind(token.as_bytes().as_slice())
            .bind(millis_column(record.completed_at_ms))
            .bind(record.outcome.content_type.as_deref())
            .bind(encoding_code(record.outcome.encoding))
            .bind(&record.outcome.body[..])
            .bind(DB::units(retention));
        if let Some(extra) = extra {
            query = query.bind(extra);
        }
        if DB::COMPLETE_RETURNS_APPLIED {
            query.fetch_one(executor).await?.try_get(0)
        } else {
            Ok(DB::rows_affected(&query.execute(executor).await?) == 1)
        }
    }

    /// The fenced `complete` on the pool.
    pub(crate) async fn complete(
        &self,
        key: &StoreKey,
        token: &LeaseToken,
        record: &Completed,
        retention: Duration,
    ) -> Result<Fenced, StoreError> {
        let applied = timed(
            StoreOperation::Complete,
            self.timeout,
            Self::complete_on(
                &self.sql.complete,
                &self.pool,
                key,
                token,
                record,
                retention,
                None,
            ),
        )
        .await?;
        self.fenced(applied, key).await
    }

    /// The fenced completion `sql` of `parts` in the caller's transaction `conn`, within
    /// `timeout` (what is left of the engine's store timeout; the only error:
    /// [`StoreError::Timeout`], naming the whole budget); `extra` as for `complete_on`.
    pub(crate) async fn write_in(
        sql: &str,
        conn: &mut DB::Connection,
        parts: &CompletionParts<'_>,
        timeout: Duration,
        extra: Option<&str>,
    ) -> Result<Written, IdempotencyError> {
        let applied = Self::complete_on(
            sql,
            conn,
            parts.key,
            parts.token,
            parts.completed,
            parts.retention,
            extra,
        );
        match tokio::time::timeout(timeout, applied).await {
            Ok(Ok(true)) => Ok(Written::Applied),
            Ok(Ok(false)) => Ok(Written::NotApplied),
            Ok(Err(error)) => Ok(Written::Failed(error)),
            Err(_) => Err(StoreError::Timeout {
                operation: StoreOperation::Complete,
                after: parts.timeout,
            }
            .into()),
        }
    }

    /// The fenced `release` on the pool.
    pub(crate) async fn release(
        &self,
        key: &StoreKey,
        token: &LeaseToken,
    ) -> Result<Fenced, StoreError> {
        let live: Option<bool> = timed(
            StoreOperation::Release,
            self.timeout,
            sqlx::query_scalar(&self.sql.release)
                .bind(key.as_str())
                .bind(token.as_bytes().as_slice())
                .fetch_optional(&self.pool),
        )
        .await?;
        self.fenced(live == Some(true), key).await
    }

    /// The fenced `extend` on the pool.
    pub(crate) async fn extend(
        &self,
        key: &StoreKey,
        token: &LeaseToken,
        lease: Duration,
    ) -> Result<Fenced, StoreError> {
        let done = timed(
            StoreOperation::Extend,
            self.timeout,
            sqlx::query(&self.sql.extend)
                .bind(key.as_str())
                .bind(token.as_bytes().as_slice())
                .bind(DB::units(lease))
                .execute(&self.pool),
        )
        .await?;
        self.fenced(DB::rows_affected(&done) == 1, key).await
    }

    /// The answer of a fenced write: `Applied`, or (after a re-read) `LeaseLost`, where a row
    /// that is not a record is `Corrupt`, not "lease lost" (store contract).
    async fn fenced(&self, applied: bool, key: &StoreKey) -> Result<Fenced, StoreError> {
        if applied {
            return Ok(Fenced::Applied);
        }
        Fenced::lease_lost_unless_corrupt(self.get(key).await)
    }

    /// The live record under `key`, if any.
    pub(crate) async fn get(&self, key: &StoreKey) -> Result<Option<Record>, StoreError> {
        let row = timed(
            StoreOperation::Get,
            self.timeout,
            sqlx::query(&self.sql.get)
                .bind(key.as_str())
                .fetch_optional(&self.pool),
        )
        .await?;
        row.as_ref().map(Self::decode).transpose()
    }

    /// Delete the key's row; whether a live record was there.
    pub(crate) async fn delete(&self, key: &StoreKey) -> Result<bool, StoreError> {
        let live: Option<bool> = timed(
            StoreOperation::Delete,
            self.timeout,
            sqlx::query_scalar(&self.sql.delete)
                .bind(key.as_str())
                .fetch_optional(&self.pool),
        )
        .await?;
        Ok(live == Some(true))
    }

    /// The time the live row under `key` has left, if any.
    pub(crate) async fn time_to_live(
        &self,
        key: &StoreKey,
    ) -> Result<Option<Duration>, StoreError> {
        let left: Option<i64> = timed(
            StoreOperation::TimeToLive,
            self.timeout,
            sqlx::query_scalar(&self.sql.time_to_live)
                .bind(key.as_str())
                .fetch_optional(&self.pool),
        )
        .await?;
        Ok(left
            .and_then(|units| u64::try_from(units).ok())
            .map(DB::from_units))
    }

    /// Delete up to `batch` expired rows; how many went.
    pub(crate) async fn purge(&self, batch: u32) -> Result<u64, StoreError> {
        let done = timed(
            StoreOperation::Purge,
            self.timeout,
            sqlx::query(&self.sql.purge)
                .bind(i64::from(batch))
                .execute(&self.pool),
        )
        .await?;
        Ok(DB::rows_affected(&done))
    }

    /// Decode a row read by `get` or the claim: [`StoreError::Corrupt`] when it is not a record.
    pub(crate) fn decode(row: &DB::Row) -> Result<Record, StoreError> {
        let map = |e| map_sqlx(StoreOperation::Get, Duration::ZERO, e);
        DB::check_row(row)?;
        let raw = RawRow {
            state: row.try_get("state").map_err(map)?,
            token: row.try_get("token").map_err(map)?,
            fingerprint: row.try_get("fingerprint").map_err(map)?,
            created_at_ms: row.try_get("created_at_ms").map_err(map)?,
            completed_at_ms: row.try_get("completed_at_ms").map_err(map)?,
            content_type: row.try_get("content_type").map_err(map)?,
            encoding: DB::encoding(row).map_err(map)?,
            body: row.try_get("body").map_err(map)?,
        };
        Ok(raw.decode()?)
    }

    /// The columns of `table` and their types (none when it does not exist).
    pub(crate) async fn columns<'e, E: 'e + Executor<'e, Database = DB>>(
        executor: E,
        table: &Table,
    ) -> Result<Vec<(String, String)>, sqlx::Error> {
        sqlx::query_as(DB::COLUMNS_OF)
            .bind(DB::columns_of(table))
            .fetch_all(executor)
            .await
    }

    /// The builders' check: the table exists, with the columns this version needs.
    ///
    /// # Errors
    /// [`SqlStoreError::MissingTable`] or [`SqlStoreError::WrongShape`], naming the migration.
    pub(crate) fn check_shape(
        table: &Table,
        exists: bool,
        columns: &[(String, String)],
    ) -> Result<(), SqlStoreError> {
        if !exists {
            return Err(SqlStoreError::MissingTable {
                table: table.name.clone(),
                migration: migrate::FIRST,
            });
        }
        match migrate::shape_mismatch(columns, DB::POSTGRES) {
            Some(detail) => Err(SqlStoreError::WrongShape {
                table: table.name.clone(),
                detail,
                migration: migrate::CURRENT,
            }),
            None => Ok(()),
        }
    }

    /// `migrate()` inside its transaction `conn` (the store has taken its lock): create the
    /// bookkeeping table, check an existing table, then apply and record every migration not
    /// recorded yet.
    ///
    /// # Errors
    /// [`SqlStoreError::NotMigratable`] (checked before any migration runs or is recorded), or
    /// [`SqlStoreError::Database`].
    pub(crate) async fn migrate_in(
        conn: &mut DB::Connection,
        table: &Table,
    ) -> Result<(), SqlStoreError> {
        // `Executor::execute` (a boxed future) rather than `RawSql::execute` (an async fn generic
        // over the executor), which would make `migrate()`'s future not `Send` for `tokio::spawn`.
        (&mut *conn)
            .execute(sqlx::raw_sql(&migrate::bookkeeping(table, DB::POSTGRES)))
            .await?;
        let applied: Vec<i64> =
            sqlx::query_scalar(&format!("SELECT version FROM {}", table.migrations_quoted))
                .fetch_all(&mut *conn)
                .await?;
        // Check the table before running any migration SQL (and so before recording one): a
        // shape the migrations cannot repair is refused with what to do by hand, instead of a
        // raw database error halfway or a migration recorded that did not help.
        let columns = Self::columns(&mut *conn, table).await?;
        if let Some(detail) = migrate::unmigratable(&columns, DB::POSTGRES, &applied) {
            return Err(SqlStoreError::NotMigratable {
                table: table.name.clone(),
                detail,
                migration: migrate::CURRENT,
            });
        }
        let p = DB::PARAMETER;
        let record = format!(
            "INSERT INTO {} (version, name) VALUES ({p}1, {p}2)",
            table.migrations_quoted
        );
        for migration in MIGRATIONS.iter().filter(|m| !applied.contains(&m.version)) {
            // Postgres's migrations are idempotent (`ADD COLUMN IF NOT EXISTS`); SQLite's
            // `ADD COLUMN` is not, so there a column already added is only recorded.
            if DB::POSTGRES || !migrate::already_applied(&columns, migration.version) {
                (&mut *conn)
                    .execute(sqlx::raw_sql(&migrate::for_table(
                        Self::migration_sql(migration),
                        table,
                    )))
                    .await?;
            }
            sqlx::query(&record)
                .bind(migration.version)
                .bind(migration.name)
                .execute(&mut *conn)
                .await?;
            tracing::info!(table = %table.name, migration = migration.name, "idempotency migration applied");
        }
        Ok(())
    }

    fn migration_sql(migration: &Migration) -> &'static str {
        if DB::POSTGRES {
            migration.postgres
        } else {
            migration.sqlite
        }
    }
}
