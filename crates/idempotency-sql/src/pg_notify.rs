//! Wake-ups for duplicates waiting on an in-progress record on Postgres
//! ([`IdempotencyStore::wait_for_change`](idempotency_core::IdempotencyStore::wait_for_change)),
//! by `LISTEN`/`NOTIFY`.
//!
//! The `complete` and `release` statements call `pg_notify(<channel>, <payload>)` in the same
//! statement when they change a row that has waiters (no extra round trip): the channel is
//! fixed per table ([`wake_channel`]), the payload is the hex SHA-256 of the store key (64
//! bytes, far below Postgres' 8000-byte payload limit whatever the key's length, and no tenant
//! or key text is broadcast). A notification is queued by the statement and delivered when its
//! transaction commits, never on a rollback ("NOTIFY interacts with SQL transactions",
//! <https://www.postgresql.org/docs/current/sql-notify.html>): a completion inside the
//! caller's transaction (`complete_in`) wakes waiters exactly when it becomes visible.
//!
//! Each store has **one** listener connection (a `sqlx::postgres::PgListener` on a private
//! one-connection pool built from the application pool's connect options, so it takes nothing
//! from the application's pool; `application_name` = [`WAKE_LISTENER_APPLICATION_NAME`]),
//! opened by the first wait and kept; it listens on the one channel and is multiplexed across every
//! waited key by payload. A background task owns it, pings it every [`PING_EVERY`] (a protocol
//! `Sync`, which runs no statement) to notice a dead peer, and reconnects with back-off.
//!
//! # Why no completion is missed
//! - Only rows with waiters notify: a waiter registers its payload and creates its `Notified`
//!   future, makes sure the listener is connected (its `LISTEN` done), then runs one statement
//!   that sets the row's `waiters` flag if the row is still in progress under the token it saw
//!   (else: changed, re-read). `complete` and `release` call `pg_notify` only for a flagged
//!   row, so completions nobody waits for never notify (a notifying commit takes a
//!   cluster-wide lock in Postgres, `PreCommit_Notify`, which serialises such commits). The
//!   row lock orders the flag and the completion: a change committed before the flag is seen
//!   by the flag statement, a completion after it sees the flag and notifies the listening
//!   connection at its commit.
//! - While the connection is down, notifications are lost. When it comes back (`LISTEN` done
//!   again), the task wakes **every** waiter, which re-reads once: a completion committed while
//!   the listener was reconnecting is caught by that re-read. A waiter that arrives while the
//!   listener is down and does not see it back within the operation timeout answers with an
//!   error, and the engine polls for that wait instead.
//! - A lease that lapses is not notified: the statement that flags the row also answers the
//!   lease's time left, and the wait ends when it does, so a duplicate of a claim whose owner
//!   is gone takes the key over then, not when its own wait runs out. Whatever else happens,
//!   the engine re-reads once when the wait times out.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use idempotency_core::instant_after;
use idempotency_core::{StoreError, StoreKey, Waited};
use sha2::{Digest as _, Sha256};
use sqlx::postgres::{PgListener, PgPool, PgPoolOptions};
use sqlx::{Acquire as _, Connection as _};
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::postgres::op::{EQ, GT, MINUS, PLUS, TIMES};

/// How often the listener connection is pinged to notice a dead peer.
pub(crate) const PING_EVERY: Duration = Duration::from_secs(1);
/// First and largest pause between reconnection attempts.
const BACKOFF: (Duration, Duration) = (Duration::from_millis(20), Duration::from_secs(2));
/// The `application_name` of the listener connection (visible in `pg_stat_activity`).
pub const WAKE_LISTENER_APPLICATION_NAME: &str = "idempotency-sql wake-up listener";

/// The notification channel of a records table: `<table>_wake` (e.g.
/// `idempotency_records_wake`), or, when that would exceed Postgres' 63-byte identifier limit,
/// the table name's first 40 bytes, a hash of the whole name, and `_wake`. Table names are
/// validated identifiers (`[A-Za-z0-9_.]`), so the channel can be spliced into SQL as a literal.
pub(crate) fn wake_channel(table: &str) -> String {
    let plain = format!("{table}_wake");
    if plain.len() <= 63 {
        return plain;
    }
    let digest = Sha256::digest(table.as_bytes());
    let hash: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    // ASCII only (validated), so any byte index is a char boundary.
    let head = table.get(..40).unwrap_or(table);
    format!("{head}_{hash}_wake")
}

/// The notification payload for `key`: the hex SHA-256 of its text, as the statements compute
/// it with `pg_catalog.encode(pg_catalog.sha256(pg_catalog.convert_to($1, 'UTF8')), 'hex')`.
pub(crate) fn wake_payload(key: &StoreKey) -> String {
    Sha256::digest(key.as_str().as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The SQL expression that notifies waiters of the key bound as `$1`.
pub(crate) fn notify_sql(channel: &str) -> String {
    format!(
        "pg_catalog.pg_notify('{channel}', pg_catalog.encode(pg_catalog.sha256(\
         pg_catalog.convert_to($1, 'UTF8')), 'hex'))"
    )
}

/// A waiting duplicate's one statement before it waits: set `waiters` on the live row still in
/// progress under the token it saw, and answer, if that row is (still) held and flagged (so
/// that its completion or release will notify), the microseconds left of its lease (`int8`;
/// the wait ends then at the latest: nothing notifies when a lease lapses). No row: it changed
/// (or, rarely, another waiter flagged it concurrently: a spurious wake-up, re-read).
///
/// Race-free by the row lock: a completion that already updated the row in a transaction not
/// yet committed holds it, so this UPDATE waits for that transaction; at its commit the row is
/// completed (no match: no row, re-read), at its rollback the flag is set (the release that
/// follows notifies). A flag committed before a completion's UPDATE is seen by that UPDATE
/// (it runs on the latest row version), which then notifies. `AND NOT waiters` and the second,
/// read-only part skip the write when the snapshot already shows the flag (duplicate storms).
/// The lease's end is taken as 100 years away at most: an `expires_at` of `'infinity'` (a
/// row written by hand) cannot be subtracted from, and would fail the statement (the engine
/// would then poll a key it can wait on). (`OPERATOR(..)` has one precedence whatever the
/// operator: the parentheses are needed.)
/// Operators are `pg_catalog`'s, whatever `search_path` holds (`crate::postgres::op`).
pub(crate) fn flag_waiter_sql(t: &str) -> String {
    const CAP: &str = "'100 years'::pg_catalog.interval";
    let held = format!(
        "store_key {EQ} $1 AND token {EQ} $2 AND state {EQ} 'in_progress' \
         AND expires_at {GT} pg_catalog.clock_timestamp()"
    );
    format!(
        "WITH flagged AS (UPDATE {t} SET waiters = true WHERE {held} AND NOT waiters \
           RETURNING expires_at) \
         SELECT (EXTRACT(EPOCH FROM CASE \
           WHEN expires_at {GT} (pg_catalog.clock_timestamp() {PLUS} {CAP}) THEN {CAP} \
           ELSE expires_at {MINUS} pg_catalog.clock_timestamp() END) \
           {TIMES} 1000000)::pg_catalog.int8 \
         FROM (SELECT expires_at FROM flagged \
           UNION ALL SELECT expires_at FROM {t} WHERE {held} AND waiters) AS held LIMIT 1"
    )
}

/// The listener of one store (shared by its clones). Dropping the last clone of the store
/// stops the background task and closes the connection.
pub(crate) struct Notifier {
    shared: Arc<Shared>,
    /// `None` until the first wait starts the task.
    task: Mutex<Option<JoinHandle<()>>>,
    connected: watch::Receiver<bool>,
}

struct Shared {
    /// A private pool of one connection (reconnections go through it).
    pool: PgPool,
    channel: String,
    /// Budget of a connection attempt and of each ping.
    timeout: Duration,
    state: Mutex<State>,
    connected: watch::Sender<bool>,
    connections: AtomicU64,
}

#[derive(Default)]
struct State {
    /// The listener's `LISTEN` is in effect and no loss has been noticed since.
    connected: bool,
    /// Per waited payload: its notification and how many waiters hold it.
    waiters: HashMap<String, (Arc<Notify>, usize)>,
}

impl std::fmt::Debug for Notifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Notifier")
            .field("channel", &self.shared.channel)
            .field("connected", &self.is_connected())
            .field("waited_keys", &self.waited_keys())
            .finish()
    }
}

impl Notifier {
    pub(crate) fn new(app_pool: &PgPool, channel: String, timeout: Duration) -> Self {
        let options = (*app_pool.connect_options())
            .clone()
            .application_name(WAKE_LISTENER_APPLICATION_NAME);
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .min_connections(0)
            .max_lifetime(None)
            .idle_timeout(None)
            .acquire_timeout(timeout)
            .connect_lazy_with(options);
        let (sender, receiver) = watch::channel(false);
        Self {
            shared: Arc::new(Shared {
                pool,
                channel,
                timeout,
                state: Mutex::new(State::default()),
                connected: sender,
                connections: AtomicU64::new(0),
            }),
            task: Mutex::new(None),
            connected: receiver,
        }
    }

    pub(crate) fn channel(&self) -> &str {
        &self.shared.channel
    }

    /// Whether the listener connection is up (its `LISTEN` in effect).
    pub(crate) fn is_connected(&self) -> bool {
        lock(&self.shared.state).connected
    }

    /// Listener connections opened so far (1 + reconnections).
    pub(crate) fn connections(&self) -> u64 {
        self.shared.connections.load(Ordering::SeqCst)
    }

    /// Keys currently waited on by this process.
    pub(crate) fn waited_keys(&self) -> usize {
        lock(&self.shared.state).waiters.len()
    }

    /// Start the listener task on first use (needs a tokio runtime, which a wait has).
    fn ensure_started(&self) {
        let mut task = lock(&self.task);
        if task.is_none() {
            *task = Some(tokio::spawn(run(Arc::clone(&self.shared))));
        }
    }

    /// See [`IdempotencyStore::wait_for_change`](idempotency_core::IdempotencyStore::wait_for_change).
    /// `flag` marks the record as waited on and answers whether it is still in progress under
    /// the token the caller saw (see [`flag_waiter_sql`]); it runs once, after
    /// `LISTEN` is in effect.
    pub(crate) async fn wait<F>(
        &self,
        key: &StoreKey,
        timeout: Duration,
        flag: F,
    ) -> Result<Waited, StoreError>
    where
        F: Future<Output = Result<Option<Duration>, StoreError>>,
    {
        let deadline = instant_after(Instant::now(), timeout);
        let registration = Registration::new(&self.shared, wake_payload(key));
        // Created now: a wake-up from here on is kept until the await below.
        let notified = registration.notify.notified();
        let mut notified = std::pin::pin!(notified);
        notified.as_mut().enable();
        self.ensure_started();
        // The listener must be listening before the check below; on a fresh store this waits
        // for its first connection.
        let mut connected = self.connected.clone();
        let connect_by = deadline.min(instant_after(Instant::now(), self.shared.timeout));
        if tokio::time::timeout_at(connect_by, connected.wait_for(|up| *up))
            .await
            .is_err()
            && Instant::now() >= deadline
        {
            return Ok(Waited::TimedOut);
        }
        // Decided under the lock the task takes to flag a loss: if the listener is up here,
        // any loss from now on is followed by a wake-up of every waiter (this one included).
        if !self.is_connected() {
            return Err(StoreError::Unavailable {
                source: "the wake-up listener connection is down".into(),
            });
        }
        // The one statement after listening: a change committed before `LISTEN` took effect
        // is seen here; once the row is flagged, its completion or release notifies. Without
        // the flag (the statement failed) nothing would: the engine polls this wait instead.
        let Some(lease_left) = flag.await? else {
            return Ok(Waited::Changed);
        };
        // Nothing notifies when the lease lapses: the wait ends when it does, if that comes
        // first (1 ms more, for the clocks' granularity), so a duplicate of a claim whose owner
        // is gone takes the key over then, not when its own wait runs out.
        // Compared as durations: a lease of any length never overflows an instant.
        let lapse_in = lease_left.saturating_add(Duration::from_millis(1));
        if lapse_in < deadline.saturating_duration_since(Instant::now()) {
            let _woken_or_lapsed = tokio::time::timeout(lapse_in, notified).await;
            return Ok(Waited::Changed);
        }
        Ok(match tokio::time::timeout_at(deadline, notified).await {
            Ok(()) => Waited::Changed,
            Err(_) => Waited::TimedOut,
        })
    }
}

impl Drop for Notifier {
    fn drop(&mut self) {
        if let Some(handle) = lock(&self.task).take() {
            handle.abort();
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // The state stays consistent whatever panicked while holding it (single inserts/removes).
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// One waiter's hold on a payload; unregisters on drop (cancel-safe).
struct Registration<'a> {
    shared: &'a Shared,
    payload: String,
    notify: Arc<Notify>,
}

impl<'a> Registration<'a> {
    fn new(shared: &'a Shared, payload: String) -> Self {
        let notify = {
            let mut state = lock(&shared.state);
            let slot = state
                .waiters
                .entry(payload.clone())
                .or_insert_with(|| (Arc::new(Notify::new()), 0));
            slot.1 += 1;
            Arc::clone(&slot.0)
        };
        Self {
            shared,
            payload,
            notify,
        }
    }
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        let mut state = lock(&self.shared.state);
        if let Some(slot) = state.waiters.get_mut(&self.payload) {
            slot.1 -= 1;
            if slot.1 == 0 {
                state.waiters.remove(&self.payload);
            }
        }
    }
}

impl Shared {
    fn wake(&self, payload: &str) {
        if let Some((notify, _)) = lock(&self.state).waiters.get(payload) {
            notify.notify_waiters();
        }
    }

    /// Mark the listener up (after `LISTEN`); wake every waiter when notifications may have
    /// been missed since the last connection.
    fn up(&self, missed: bool) {
        {
            let mut state = lock(&self.state);
            state.connected = true;
            if missed {
                for (notify, _) in state.waiters.values() {
                    notify.notify_waiters();
                }
            }
        }
        self.connected.send_replace(true);
    }

    fn down(&self) {
        lock(&self.state).connected = false;
        self.connected.send_replace(false);
    }

    async fn connect(&self) -> Result<PgListener, sqlx::Error> {
        let mut listener = PgListener::connect_with(&self.pool).await?;
        // A private pool: nobody closes it but us.
        listener.ignore_pool_close_event(true);
        // A lost connection ends the serving loop below, which reconnects itself (and then
        // wakes every waiter), so the listener must not reconnect behind its back.
        listener.eager_reconnect(false);
        listener.listen(&self.channel).await?;
        Ok(listener)
    }
}

/// The listener task: connect and `LISTEN`, wake everyone after a loss, then serve
/// notifications until the connection fails; repeat. Ends when the notifier is dropped.
async fn run(shared: Arc<Shared>) {
    let mut backoff = BACKOFF.0;
    // Whether a waiter may have missed a notification: a connection was lost.
    let mut missed = false;
    loop {
        let mut listener = match tokio::time::timeout(shared.timeout, shared.connect()).await {
            Ok(Ok(listener)) => listener,
            failed => {
                let error = match failed {
                    Ok(Err(error)) => error.to_string(),
                    _ => format!("timed out after {:?}", shared.timeout),
                };
                tracing::debug!(%error, "wake-up listener cannot connect; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(BACKOFF.1);
                continue;
            }
        };
        backoff = BACKOFF.0;
        shared.connections.fetch_add(1, Ordering::SeqCst);
        // Anything notified while nobody listened is lost: every waiter looks again. (Not on a
        // first connection: no waiter has read before it, so no spurious re-reads.)
        shared.up(std::mem::take(&mut missed));
        tracing::debug!(channel = %shared.channel, "wake-up listener connected");
        let lost = loop {
            // `try_recv` is cancel-safe (sqlx reads a message only once it is whole).
            match tokio::time::timeout(PING_EVERY, listener.try_recv()).await {
                Ok(Ok(Some(notification))) => shared.wake(notification.payload()),
                Ok(Ok(None)) => break "connection lost".to_owned(),
                Ok(Err(error)) => break error.to_string(),
                Err(_) => {
                    let ping = tokio::time::timeout(shared.timeout, async {
                        let connection = (&mut listener).acquire().await?;
                        connection.ping().await
                    })
                    .await;
                    match ping {
                        Ok(Ok(())) => {}
                        Ok(Err(error)) => break format!("ping failed: {error}"),
                        Err(_) => break format!("ping timed out after {:?}", shared.timeout),
                    }
                }
            }
        };
        shared.down();
        missed = true;
        tracing::warn!(
            reason = %lost,
            "wake-up listener lost its connection; reconnecting (waiters re-read on reconnect)"
        );
        // The connection goes back to the private pool, whose next acquire tests it (and
        // replaces it when it is dead).
        drop(listener);
    }
}
#[cfg(test)]
mod tests {
    use super::*;

    /// A notifier whose listener can never connect (nothing listens on port 1), on a short
    /// operation timeout.
    fn unreachable_notifier(timeout: Duration) -> Notifier {
        let pool = PgPoolOptions::new()
            .connect_lazy("postgres://nobody@127.0.0.1:1/none")
            .expect("a valid URL");
        Notifier::new(&pool, "t_wake".to_owned(), timeout)
    }

    #[tokio::test(start_paused = true)]
    async fn a_wait_without_a_listener_is_an_error_so_the_engine_polls() {
        let notifier = unreachable_notifier(Duration::from_secs(1));
        let key = StoreKey::from_raw("k");
        let started = Instant::now();
        let checked = std::sync::atomic::AtomicBool::new(false);
        let waited = notifier
            .wait(&key, Duration::from_secs(30), async {
                checked.store(true, Ordering::SeqCst);
                Ok(Some(Duration::from_secs(3600)))
            })
            .await;
        assert!(
            matches!(waited, Err(StoreError::Unavailable { .. })),
            "{waited:?}"
        );
        // It gave the listener the operation timeout to come up, no more.
        assert_eq!(started.elapsed(), Duration::from_secs(1));
        assert!(
            !checked.load(Ordering::SeqCst),
            "no statement without a listener"
        );
        assert_eq!(notifier.waited_keys(), 0, "unregistered");
        assert!(!notifier.is_connected());
    }

    #[tokio::test(start_paused = true)]
    async fn a_wait_shorter_than_the_connection_budget_times_out() {
        let notifier = unreachable_notifier(Duration::from_secs(5));
        let started = Instant::now();
        let waited = notifier
            .wait(
                &StoreKey::from_raw("k"),
                Duration::from_millis(300),
                async { Ok(Some(Duration::from_secs(3600))) },
            )
            .await;
        assert_eq!(waited.ok(), Some(Waited::TimedOut));
        assert_eq!(started.elapsed(), Duration::from_millis(300));
    }

    #[tokio::test(start_paused = true)]
    async fn notifications_wake_the_waiters_of_their_payload_only() {
        let notifier = unreachable_notifier(Duration::from_secs(1));
        let shared = &notifier.shared;
        let (a, b) = (StoreKey::from_raw("a"), StoreKey::from_raw("b"));
        let reg_a = Registration::new(shared, wake_payload(&a));
        let reg_a2 = Registration::new(shared, wake_payload(&a));
        let reg_b = Registration::new(shared, wake_payload(&b));
        assert_eq!(
            notifier.waited_keys(),
            2,
            "two waiters of `a` share one entry"
        );
        let (mut na, mut na2, mut nb) = (
            Box::pin(reg_a.notify.notified()),
            Box::pin(reg_a2.notify.notified()),
            Box::pin(reg_b.notify.notified()),
        );
        na.as_mut().enable();
        na2.as_mut().enable();
        nb.as_mut().enable();
        shared.wake(&wake_payload(&a));
        let short = Duration::from_millis(10);
        assert!(tokio::time::timeout(short, na).await.is_ok());
        assert!(tokio::time::timeout(short, na2).await.is_ok());
        assert!(tokio::time::timeout(short, &mut nb).await.is_err());
        // A reconnection after a loss wakes everyone.
        shared.up(true);
        assert!(tokio::time::timeout(short, nb).await.is_ok());
        assert!(notifier.is_connected());
        drop((reg_a, reg_a2));
        assert_eq!(notifier.waited_keys(), 1);
        drop(reg_b);
        assert_eq!(notifier.waited_keys(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_first_connection_wakes_nobody() {
        let notifier = unreachable_notifier(Duration::from_secs(1));
        let reg = Registration::new(&notifier.shared, "p".to_owned());
        let mut notified = Box::pin(reg.notify.notified());
        notified.as_mut().enable();
        notifier.shared.up(false);
        assert!(
            tokio::time::timeout(Duration::from_millis(10), notified)
                .await
                .is_err()
        );
    }

    #[test]
    fn channels_fit_postgres_identifiers() {
        assert_eq!(
            wake_channel("idempotency_records"),
            "idempotency_records_wake"
        );
        assert_eq!(wake_channel("app.records"), "app.records_wake");
        let long = format!("{}.{}", "s".repeat(48), "t".repeat(48));
        let channel = wake_channel(&long);
        assert!(channel.len() <= 63, "{channel}");
        assert_ne!(
            channel,
            wake_channel(&format!("{}.{}", "s".repeat(48), "u".repeat(48)))
        );
    }

    #[test]
    fn payloads_are_short_and_fixed_size() {
        let short = wake_payload(&StoreKey::from_raw("idem::k"));
        let long = wake_payload(&StoreKey::from_raw("x".repeat(100_000)));
        assert_eq!(short.len(), 64);
        assert_eq!(long.len(), 64);
        assert_ne!(short, long);
        // The SHA-256 of "abc", as Postgres' `encode(sha256('abc'), 'hex')` gives it.
        assert_eq!(
            wake_payload(&StoreKey::from_raw("abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
