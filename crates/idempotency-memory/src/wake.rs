//! Wake-ups for duplicates waiting on an in-progress record
//! ([`IdempotencyStore::wait_for_change`](idempotency_core::IdempotencyStore::wait_for_change)).
//!
//! A `tokio::sync::Notify` exists per key only while someone waits on it. When nobody waits
//! anywhere, a completion pays one atomic load (made under its shard lock, see
//! [`Wakers::anyone_waiting_under_lock`]) and the rarer writers (release, delete, takeover) one
//! `SeqCst` fence and one atomic load: the map of waited keys is locked only when a waiter is
//! registered. A sweep reads the count as a completion does, under the shard lock of each
//! lapsed in-progress record it removes, and notifies those keys once it is done.
//!
//! Why no wake-up is lost: a waiter counts itself in `waiting`, registers its `Notify` and
//! enables its `Notified` future *before* it checks the record (under the shard lock). A writer
//! changes the record (under the shard lock) *before* it reads `waiting`. Either the waiter's
//! check sees the change, or the writer sees the waiter and notifies it.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering, fence};

use idempotency_core::StoreKey;
use parking_lot::Mutex;
use tokio::sync::Notify;

/// The waited keys of one store.
#[derive(Debug, Default)]
pub(crate) struct Wakers {
    /// Registered waiters across all keys (the writers' fast path).
    waiting: AtomicUsize,
    /// Per waited key: its notification and how many waiters hold it.
    keys: Mutex<HashMap<StoreKey, (Arc<Notify>, usize)>>,
}

impl Wakers {
    /// Register a waiter for `key`; it stays registered until the returned value is dropped.
    pub(crate) fn register<'a>(&'a self, key: &StoreKey) -> Registration<'a> {
        self.waiting.fetch_add(1, Ordering::SeqCst);
        let notify = {
            let mut keys = self.keys.lock();
            let slot = keys
                .entry(key.clone())
                .or_insert_with(|| (Arc::new(Notify::new()), 0));
            slot.1 += 1;
            Arc::clone(&slot.0)
        };
        Registration {
            wakers: self,
            key: key.clone(),
            notify,
        }
    }

    /// The record under `key` changed: wake its waiters, if any. Call after the change is
    /// visible in the map.
    pub(crate) fn wake(&self, key: &StoreKey) {
        fence(Ordering::SeqCst);
        if self.waiting.load(Ordering::SeqCst) == 0 {
            return;
        }
        self.notify(key);
    }

    /// [`Wakers::wake`] in two halves, without the fence: whether anyone waits, read by a
    /// writer **while it still holds the shard lock under which it changed the record**; then,
    /// when that said yes, [`Wakers::notify`] once the lock is released.
    ///
    /// Why no wake-up is lost: a waiter counts itself in `waiting` before it takes the shard
    /// lock to check the record. If its check held the lock before this writer's change, its
    /// unlock happened before the writer's lock, so its count happened before this read, which
    /// sees it. Otherwise its check comes after the change and sees it. The shard lock orders
    /// the two sides, so the writer needs no `SeqCst` fence (a full barrier per completion).
    pub(crate) fn anyone_waiting_under_lock(&self) -> bool {
        self.waiting.load(Ordering::SeqCst) != 0
    }

    /// Notify the waiters of `key`, if any (the slow half of [`Wakers::wake`]).
    pub(crate) fn notify(&self, key: &StoreKey) {
        if let Some((notify, _)) = self.keys.lock().get(key) {
            notify.notify_waiters();
        }
    }

    /// Keys currently waited on (for tests: nothing leaks).
    pub(crate) fn waited_keys(&self) -> usize {
        self.keys.lock().len()
    }
}

/// One waiter's hold on a key's notification; unregisters on drop (cancel-safe).
pub(crate) struct Registration<'a> {
    wakers: &'a Wakers,
    key: StoreKey,
    pub(crate) notify: Arc<Notify>,
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        {
            let mut keys = self.wakers.keys.lock();
            if let Some(slot) = keys.get_mut(&self.key) {
                slot.1 -= 1;
                if slot.1 == 0 {
                    keys.remove(&self.key);
                }
            }
        }
        self.wakers.waiting.fetch_sub(1, Ordering::SeqCst);
    }
}
