//! Wake-ups for duplicates waiting on an in-progress record
//! ([`IdempotencyStore::wait_for_change`](idempotency_core::IdempotencyStore::wait_for_change)).
//!
//! The completion and release scripts publish on the key's channel
//! ([`idempotency_core::lua::wake_channel`]). Each store has **one** subscriber connection
//! (RESP2 pub/sub, `redis::aio::PubSub`), opened lazily by the first wait, multiplexed across
//! every waited key: a channel is subscribed while at least one waiter in this process waits on
//! it, and unsubscribed with the last. A background task owns the connection; it serialises
//! subscription changes (so a late `UNSUBSCRIBE` cannot undo a newer `SUBSCRIBE`), pings it
//! every [`PING_EVERY`] to notice a dead peer, and reconnects with back-off.
//!
//! # Why no completion is missed
//! - A waiter enables its `Notified` future, then has its channel subscribed (confirmed by the
//!   server), then reads the record once: a change before the subscription is seen by that
//!   read, a change after it is published to the subscription.
//! - While the connection is down, messages are lost. When it comes back, the task subscribes
//!   every waited channel again and then wakes **every** waiter, which re-reads once: a
//!   completion published while the subscriber was reconnecting is caught by that re-read.
//! - A lease that lapses is not published: the read after subscribing also takes the key's
//!   `PTTL` (pipelined, one round trip), and the wait ends when the lease it found ends, so a
//!   duplicate of a claim whose owner is gone takes the key over then, not when its own wait
//!   runs out. Whatever else happens, the engine re-reads once when the wait times out.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures::StreamExt as _;
use idempotency_core::{LeaseToken, Record, StoreError, StoreKey, Waited, lua};
use tokio::sync::{Notify, mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// How often the subscriber connection is pinged to notice a dead peer.
const PING_EVERY: Duration = Duration::from_secs(1);
/// First and largest pause between reconnection attempts.
const BACKOFF: (Duration, Duration) = (Duration::from_millis(20), Duration::from_secs(2));

/// The subscriber of one store (shared by its clones). Dropping the last clone of the store
/// stops the background task.
pub(crate) struct Notifier {
    shared: Arc<Shared>,
    requests: mpsc::UnboundedSender<Request>,
    /// The receiving end until the task starts, then the task's handle.
    task: Mutex<Task>,
}

enum Task {
    NotStarted(mpsc::UnboundedReceiver<Request>),
    Running(JoinHandle<()>),
}

struct Shared {
    client: redis::Client,
    /// Budget of a connection attempt and of each command on the subscriber connection.
    timeout: Duration,
    /// Per waited channel: its notification and how many waiters hold it.
    channels: Mutex<HashMap<String, (Arc<Notify>, usize)>>,
    connected: AtomicBool,
    connections: AtomicU64,
}

/// "Make the subscription of `channel` match whether anyone waits on it"; `reply` learns
/// whether it is subscribed afterwards.
struct Request {
    channel: String,
    reply: Option<oneshot::Sender<bool>>,
}

impl std::fmt::Debug for Notifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Notifier")
            .field("connected", &self.is_connected())
            .field("waited_channels", &self.waited_channels())
            .finish()
    }
}

impl Notifier {
    pub(crate) fn new(client: redis::Client, timeout: Duration) -> Self {
        let (requests, receiver) = mpsc::unbounded_channel();
        Self {
            shared: Arc::new(Shared {
                client,
                timeout,
                channels: Mutex::new(HashMap::new()),
                connected: AtomicBool::new(false),
                connections: AtomicU64::new(0),
            }),
            requests,
            task: Mutex::new(Task::NotStarted(receiver)),
        }
    }

    /// Whether the subscriber connection is up.
    pub(crate) fn is_connected(&self) -> bool {
        self.shared.connected.load(Ordering::SeqCst)
    }

    /// Subscriber connections opened so far (1 + reconnections).
    pub(crate) fn connections(&self) -> u64 {
        self.shared.connections.load(Ordering::SeqCst)
    }

    /// Channels currently waited on by this process.
    pub(crate) fn waited_channels(&self) -> usize {
        lock(&self.shared.channels).len()
    }

    /// Start the subscriber task on first use (needs a tokio runtime, which a wait has).
    fn ensure_started(&self) {
        let mut task = lock(&self.task);
        if let Task::NotStarted(_) = &*task {
            let (_, placeholder) = mpsc::unbounded_channel();
            if let Task::NotStarted(receiver) =
                std::mem::replace(&mut *task, Task::NotStarted(placeholder))
            {
                let handle = tokio::spawn(run(Arc::clone(&self.shared), receiver));
                *task = Task::Running(handle);
            }
        }
    }

    /// See [`IdempotencyStore::wait_for_change`](idempotency_core::IdempotencyStore::wait_for_change).
    /// `read` reads the record under `key`; it is awaited once, after the subscription, so a
    /// change made before the subscription is not missed.
    pub(crate) async fn wait(
        &self,
        key: &StoreKey,
        seen: &LeaseToken,
        timeout: Duration,
        read: impl Future<Output = Result<(Option<Record>, Option<Duration>), StoreError>>,
    ) -> Result<Waited, StoreError> {
        let deadline = idempotency_core::instant_after(Instant::now(), timeout);
        let channel = lua::wake_channel(key);
        let registration = Registration::new(self, channel.clone());
        let notified = registration.notify.notified();
        let mut notified = std::pin::pin!(notified);
        // Enabled first: a wake-up from here on is kept until the await below.
        notified.as_mut().enable();
        self.ensure_started();
        let (reply, subscribed) = oneshot::channel();
        if self
            .requests
            .send(Request {
                channel,
                reply: Some(reply),
            })
            .is_err()
        {
            return Ok(Waited::Unsupported);
        }
        match tokio::time::timeout_at(deadline, subscribed).await {
            Err(_) => return Ok(Waited::TimedOut),
            Ok(Ok(true)) => {}
            // Not subscribed now (the connection is down): the task subscribes every waited
            // channel when it is back, then wakes every waiter.
            Ok(_) => tracing::debug!(key = %key, "waiting without a live subscription"),
        }
        // The one check after subscribing: a change before the subscription is seen here.
        match read.await {
            Ok((record, _)) if !held_by(record.as_ref(), seen) => return Ok(Waited::Changed),
            // Nothing is published when the lease lapses: the wait ends when it does, if that
            // comes first (1 ms more: Redis expires a key once its time is *past*).
            Ok((_, Some(lease_left))) => {
                // Compared as durations: a lease of any length (`PTTL` up to `i64::MAX` ms)
                // never overflows an instant.
                let lapse_in = lease_left.saturating_add(Duration::from_millis(1));
                if lapse_in < deadline.saturating_duration_since(Instant::now()) {
                    let _woken_or_lapsed = tokio::time::timeout(lapse_in, notified).await;
                    return Ok(Waited::Changed);
                }
            }
            Ok((_, None)) => {}
            // The wait goes on; the engine re-reads when it ends.
            Err(error) => tracing::debug!(%error, "check after subscribing failed"),
        }
        Ok(match tokio::time::timeout_at(deadline, notified).await {
            Ok(()) => Waited::Changed,
            Err(_) => Waited::TimedOut,
        })
    }
}

impl Drop for Notifier {
    fn drop(&mut self) {
        if let Task::Running(handle) = &*lock(&self.task) {
            handle.abort();
        }
    }
}

fn held_by(record: Option<&Record>, seen: &LeaseToken) -> bool {
    matches!(record, Some(Record::InProgress(r)) if r.token == *seen)
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // The maps stay consistent whatever panicked while holding them (single inserts/removes).
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// One waiter's hold on a channel; unregisters on drop (cancel-safe) and has the channel
/// unsubscribed with its last waiter.
struct Registration<'a> {
    notifier: &'a Notifier,
    channel: String,
    notify: Arc<Notify>,
}

impl<'a> Registration<'a> {
    fn new(notifier: &'a Notifier, channel: String) -> Self {
        let notify = {
            let mut channels = lock(&notifier.shared.channels);
            let slot = channels
                .entry(channel.clone())
                .or_insert_with(|| (Arc::new(Notify::new()), 0));
            slot.1 += 1;
            Arc::clone(&slot.0)
        };
        Self {
            notifier,
            channel,
            notify,
        }
    }
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        let last = {
            let mut channels = lock(&self.notifier.shared.channels);
            match channels.get_mut(&self.channel) {
                Some(slot) if slot.1 > 1 => {
                    slot.1 -= 1;
                    false
                }
                Some(_) => {
                    channels.remove(&self.channel);
                    true
                }
                None => false,
            }
        };
        if last {
            let _ = self.notifier.requests.send(Request {
                channel: std::mem::take(&mut self.channel),
                reply: None,
            });
        }
    }
}

impl Shared {
    fn wake(&self, channel: &str) {
        if let Some((notify, _)) = lock(&self.channels).get(channel) {
            notify.notify_waiters();
        }
    }

    fn wake_all(&self) {
        for (notify, _) in lock(&self.channels).values() {
            notify.notify_waiters();
        }
    }

    fn wanted(&self, channel: &str) -> bool {
        lock(&self.channels).contains_key(channel)
    }
}

/// The subscriber task: connect, resubscribe, wake everyone, then serve messages and requests
/// until the connection fails; repeat. Ends when the notifier is dropped.
async fn run(shared: Arc<Shared>, mut requests: mpsc::UnboundedReceiver<Request>) {
    let mut backoff = BACKOFF.0;
    // Whether a waiter may have missed a message: it was told "not subscribed", or a
    // connection with subscriptions was lost. Then every waiter is woken on connect.
    let mut missed = false;
    loop {
        let connected =
            tokio::time::timeout(shared.timeout, shared.client.get_async_pubsub()).await;
        let pubsub = match connected {
            Ok(Ok(pubsub)) => pubsub,
            failed => {
                let error = match failed {
                    Ok(Err(error)) => error.to_string(),
                    _ => format!("timed out after {:?}", shared.timeout),
                };
                tracing::debug!(%error, "wake-up subscriber cannot connect; retrying");
                // Waiters asking now are told "not subscribed"; they will be woken on connect.
                loop {
                    match requests.try_recv() {
                        Ok(request) => {
                            if let Some(reply) = request.reply {
                                missed = true;
                                let _ = reply.send(false);
                            }
                        }
                        Err(mpsc::error::TryRecvError::Empty) => break,
                        Err(mpsc::error::TryRecvError::Disconnected) => return,
                    }
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(BACKOFF.1);
                continue;
            }
        };
        backoff = BACKOFF.0;
        let (mut sink, mut stream) = pubsub.split();
        let wanted: Vec<String> = lock(&shared.channels).keys().cloned().collect();
        let mut subscribed: HashSet<String> = HashSet::new();
        if !wanted.is_empty() {
            match tokio::time::timeout(shared.timeout, sink.subscribe(&wanted)).await {
                Ok(Ok(())) => subscribed.extend(wanted),
                _ => continue,
            }
        }
        shared.connections.fetch_add(1, Ordering::SeqCst);
        shared.connected.store(true, Ordering::SeqCst);
        tracing::debug!(channels = subscribed.len(), "wake-up subscriber connected");
        // Anything published while no subscription was live is lost: every waiter looks again.
        // (Not on a first connection that nobody was told about: no spurious re-reads.)
        if std::mem::take(&mut missed) {
            shared.wake_all();
        }
        let mut ping = tokio::time::interval_at(Instant::now() + PING_EVERY, PING_EVERY);
        let lost = loop {
            tokio::select! {
                message = stream.next() => match message {
                    Some(message) => shared.wake(message.get_channel_name()),
                    None => break "stream ended",
                },
                request = requests.recv() => {
                    let Some(request) = request else {
                        return;
                    };
                    let channel = request.channel;
                    let want = shared.wanted(&channel);
                    let changed = if want && !subscribed.contains(&channel) {
                        tokio::time::timeout(shared.timeout, sink.subscribe(&channel))
                            .await
                            .map(|r| r.map(|()| subscribed.insert(channel.clone())))
                    } else if !want && subscribed.contains(&channel) {
                        tokio::time::timeout(shared.timeout, sink.unsubscribe(&channel))
                            .await
                            .map(|r| r.map(|()| subscribed.remove(&channel)))
                    } else {
                        Ok(Ok(true))
                    };
                    let ok = matches!(changed, Ok(Ok(_)));
                    if let Some(reply) = request.reply {
                        let _ = reply.send(ok && want);
                    }
                    if !ok {
                        break "subscription change failed";
                    }
                }
                _ = ping.tick() => {
                    let pong = tokio::time::timeout(shared.timeout, sink.ping::<redis::Value>()).await;
                    if !matches!(pong, Ok(Ok(_))) {
                        break "ping failed";
                    }
                }
            }
        };
        shared.connected.store(false, Ordering::SeqCst);
        missed = true;
        tracing::warn!(
            reason = lost,
            "wake-up subscriber lost its connection; reconnecting (waiters re-read on reconnect)"
        );
    }
}
