//! Work the engine does off the request path, on one driver task per engine:
//!
//! - **lease renewal**: every live [`Guard`](super::Guard) holding a claim is registered here;
//!   the driver extends its lease about every third of the lease until the guard completes,
//!   releases, is dropped or gives its claim away (`take_claim`). A renewal that finds the lease
//!   lost marks the registration, so the guard's completion answers `LeaseLost`.
//! - **background releases**: claims whose fate is unknown (a `try_claim` that timed out or lost
//!   its connection: it may have been applied with nobody holding its token), releases that
//!   failed, and claims of dropped guards are released with bounded retries and backoff, so a key
//!   is free again as soon as the store answers. Releasing under a token that no longer holds
//!   the key changes nothing (the release is fenced), so this is safe whether or not the claim
//!   was ever applied.
//!
//! # Cost on the request path
//! Registering a claim is one uncontended mutex section (the store key is copied into a
//! recycled slot, so no allocation once the registry has grown to the peak number of running
//! operations) and deregistering another; no task is spawned and no timer is armed per request. The
//! driver is spawned on the first registration, sleeps until the earliest renewal is due, and
//! parks itself after a quiet period; it holds only a weak reference to the engine, so dropping
//! the engine stops it.
//!
//! # Bounds
//! Renewals and releases run as short tasks, at most [`MAX_IN_FLIGHT`] at a time; each claim has
//! at most one renewal in flight. The queue of pending releases holds at most
//! `Config::background_releases` entries (past that a release is dropped with a warning and
//! the claim lapses at the end of its lease), and an entry is given up once its lease has
//! passed: by then the claim has lapsed by itself.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use tokio::sync::{Notify, Semaphore};
use tokio::time::Instant;

use super::registry::Slots;
use super::stats::{Event, names};
use super::{Idempotency, Inner};
use crate::{Fenced, IdempotencyStore, LeaseToken, StoreError, StoreKey, StoreOperation};

/// Most renewals and releases in flight at once, per engine.
pub(crate) const MAX_IN_FLIGHT: usize = 32;
/// First retry delay of a background release; doubles per attempt.
const RELEASE_BACKOFF_START: Duration = Duration::from_millis(50);
/// Longest delay between two attempts of a background release.
const RELEASE_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Which store holds a claim: the engine's store, or the fallback store of
/// [`FailurePolicy::Fallback`](super::FailurePolicy::Fallback).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Which {
    Primary,
    Fallback,
}

/// A claim's place in the renewal registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Ticket {
    pub(super) index: usize,
    pub(super) id: u64,
}

/// The time between two renewals of a lease: a third of it (at least 1 ms).
pub(crate) fn renewal_interval(lease: Duration) -> Duration {
    (lease / 3).max(Duration::from_millis(1))
}

/// After a failed renewal, try again sooner than the regular interval (but not in a tight loop).
fn renewal_retry(lease: Duration) -> Duration {
    let interval = renewal_interval(lease);
    (interval / 4).max(Duration::from_millis(50)).min(interval)
}

fn release_backoff(attempts: u32) -> Duration {
    RELEASE_BACKOFF_START
        .saturating_mul(1u32 << attempts.min(16))
        .min(RELEASE_BACKOFF_MAX)
}

#[derive(Debug)]
struct Release {
    key: StoreKey,
    token: LeaseToken,
    which: Which,
    attempts: u32,
    due: Instant,
    give_up: Instant,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Driver {
    Idle,
    Running {
        generation: u64,
        wake_at: Option<Instant>,
    },
}

#[derive(Debug)]
struct State {
    claims: Slots,
    next_id: u64,
    releases: VecDeque<Release>,
    driver: Driver,
    generations: u64,
}

/// The registry of live claims and pending releases (one per engine).
#[derive(Debug)]
pub(crate) struct Background {
    state: Mutex<State>,
    wake: Arc<Notify>,
    permits: Arc<Semaphore>,
    /// The renewal interval of the configured lease, computed once (a `Duration` division is
    /// not free on the claim path).
    interval: Duration,
}

impl Background {
    pub(crate) fn new(lease: Duration) -> Self {
        Self {
            interval: renewal_interval(lease),
            state: Mutex::new(State {
                claims: Slots::default(),
                next_id: 0,
                releases: VecDeque::new(),
                driver: Driver::Idle,
                generations: 0,
            }),
            wake: Arc::new(Notify::new()),
            permits: Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave the registry inconsistent in a way that
        // matters more than losing renewals; keep serving.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether a renewal found the lease of `ticket` lost.
    pub(crate) fn is_lost(&self, ticket: Ticket) -> bool {
        let state = self.lock();
        state.claims.get(ticket).is_some_and(|live| live.lost)
    }

    /// Stop renewing `ticket`. Returns whether a renewal had found the lease lost.
    pub(crate) fn deregister(&self, ticket: Ticket) -> bool {
        let mut state = self.lock();
        state.claims.remove(ticket).unwrap_or(false)
    }

    /// The guard starts storing its outcome (renewals continue, see [`Live::completing`]).
    /// Returns whether a renewal had already found the lease lost.
    pub(crate) fn mark_completing(&self, ticket: Ticket) -> bool {
        let mut state = self.lock();
        match state.claims.get_mut(ticket) {
            Some(live) => {
                live.completing = true;
                live.lost
            }
            None => false,
        }
    }

    /// An explicit `extend` succeeded: renew relative to the new lease.
    pub(crate) fn extended(&self, ticket: Ticket, lease: Duration) {
        let mut state = self.lock();
        if let Some(live) = state.claims.get_mut(ticket) {
            live.lease = lease;
            live.due = Instant::now() + renewal_interval(lease);
        }
    }

    /// An explicit `extend` found the lease lost.
    pub(crate) fn mark_lost(&self, ticket: Ticket) {
        let mut state = self.lock();
        if let Some(live) = state.claims.get_mut(ticket) {
            live.lost = true;
        }
    }
}

/// What the driver does next, decided under the lock.
enum Plan {
    Exit,
    Work {
        renew: Vec<(Ticket, StoreKey, LeaseToken, Which, Duration)>,
        release: Vec<Release>,
        wake_at: Instant,
    },
}

impl<S: IdempotencyStore + 'static> Idempotency<S> {
    /// Start renewing the lease of a new claim; `None` when renewal is switched off.
    pub(crate) fn register_claim(
        &self,
        key: &StoreKey,
        token: LeaseToken,
        which: Which,
    ) -> Option<Ticket> {
        if !self.inner.config.renew_leases {
            return None;
        }
        let lease = self.inner.config.lease;
        let background = &self.inner.background;
        let due = Instant::now() + background.interval;
        let mut state = background.lock();
        let id = state.next_id;
        state.next_id += 1;
        let index = state.claims.insert(id, key, token, which, lease, due);
        self.wake_driver_for(&mut state, due);
        Some(Ticket { index, id })
    }

    /// Release `token`'s claim on `key` in the background, with bounded retries (see the
    /// module docs). Used for claims whose outcome is unknown, failed releases and dropped
    /// guards.
    pub(crate) fn release_in_background(&self, key: StoreKey, token: LeaseToken, which: Which) {
        let now = Instant::now();
        let background = &self.inner.background;
        let mut state = background.lock();
        if state.releases.len() >= self.inner.config.background_releases {
            drop(state);
            metrics::counter!(names::BACKGROUND_RELEASES, "result" => "dropped").increment(1);
            tracing::warn!(key = %key, "background release queue full; the claim lapses when its lease ends");
            return;
        }
        state.releases.push_back(Release {
            key,
            token,
            which,
            attempts: 0,
            due: now,
            give_up: now + self.inner.config.lease,
        });
        self.wake_driver_for(&mut state, now);
    }

    /// Make sure a driver runs and wakes no later than `due`.
    fn wake_driver_for(&self, state: &mut State, due: Instant) {
        match state.driver {
            Driver::Running { wake_at, .. } => {
                // `None`: the driver has not planned yet and will see this entry when it does.
                if wake_at.is_some_and(|at| due < at) {
                    self.inner.background.wake.notify_one();
                }
            }
            Driver::Idle => {
                let Ok(runtime) = tokio::runtime::Handle::try_current() else {
                    // No runtime here: the work waits for the next registration made inside
                    // one (a claim always lapses by itself at the end of its lease).
                    tracing::debug!("no tokio runtime: lease renewal and background releases wait");
                    return;
                };
                state.generations += 1;
                let generation = state.generations;
                state.driver = Driver::Running {
                    generation,
                    wake_at: None,
                };
                runtime.spawn(drive(Arc::downgrade(&self.inner), generation));
            }
        }
    }

    fn plan(&self, generation: u64, idle_since: &mut Option<Instant>) -> Plan {
        let now = Instant::now();
        let config = &self.inner.config;
        let linger = renewal_interval(config.lease).max(Duration::from_secs(1));
        let mut state = self.inner.background.lock();
        if !matches!(state.driver, Driver::Running { generation: g, .. } if g == generation) {
            return Plan::Exit;
        }
        // Renewals due within a small slack are done now (a little early is harmless), so that
        // many claims make a few wake-ups per interval rather than one each.
        let slack = renewal_interval(config.lease) / 8;
        let mut renew = Vec::new();
        let mut next: Option<Instant> = None;
        for (index, live) in state.claims.iter_mut() {
            if live.renewing || live.lost {
                continue;
            }
            if live.due <= now + slack {
                live.renewing = true;
                renew.push((
                    Ticket { index, id: live.id },
                    StoreKey::from_raw(live.key.clone()),
                    live.token,
                    live.which,
                    live.lease,
                ));
            } else {
                next = Some(next.map_or(live.due, |n| n.min(live.due)));
            }
        }
        let mut release = Vec::new();
        let mut waiting = VecDeque::with_capacity(state.releases.len());
        while let Some(entry) = state.releases.pop_front() {
            if entry.due <= now {
                release.push(entry);
            } else {
                next = Some(next.map_or(entry.due, |n| n.min(entry.due)));
                waiting.push_back(entry);
            }
        }
        state.releases = waiting;
        let busy = !state.claims.is_empty() || !release.is_empty() || !state.releases.is_empty();
        if busy {
            *idle_since = None;
        } else {
            let since = *idle_since.get_or_insert(now);
            if now >= since + linger {
                state.driver = Driver::Idle;
                return Plan::Exit;
            }
        }
        let wake_at = next.unwrap_or(now + linger);
        state.driver = Driver::Running {
            generation,
            wake_at: Some(wake_at),
        };
        Plan::Work {
            renew,
            release,
            wake_at,
        }
    }

    async fn renew(
        self,
        ticket: Ticket,
        key: StoreKey,
        token: LeaseToken,
        which: Which,
        lease: Duration,
    ) {
        let result = self
            .timed(
                StoreOperation::Extend,
                self.store_of(which).extend(&key, &token, lease),
            )
            .await;
        let mut state = self.inner.background.lock();
        let Some(live) = state.claims.get_mut(ticket) else {
            // The guard finished while the renewal was in flight.
            return;
        };
        live.renewing = false;
        let now = Instant::now();
        match result {
            Ok(Fenced::Applied) => {
                let due = now + renewal_interval(live.lease);
                live.due = due;
                self.wake_driver_for(&mut state, due);
                drop(state);
                metrics::counter!(names::RENEWALS, "result" => "applied").increment(1);
                tracing::trace!(key = %key, "lease renewed");
            }
            Ok(Fenced::LeaseLost) if live.completing => {
                // Most likely our own completion landed first; the completion reports the rest.
                let due = now + renewal_interval(live.lease);
                live.due = due;
                self.wake_driver_for(&mut state, due);
            }
            Ok(Fenced::LeaseLost) => {
                live.lost = true;
                drop(state);
                self.inner.stats.record(Event::LeaseLost);
                metrics::counter!(names::RENEWALS, "result" => "lease_lost").increment(1);
                tracing::warn!(
                    key = %key,
                    "lease lost while the operation runs (expired or taken over); its outcome \
                     will not be stored and another attempt may run it"
                );
            }
            Err(error) => {
                let due = now + renewal_retry(live.lease);
                live.due = due;
                self.wake_driver_for(&mut state, due);
                drop(state);
                metrics::counter!(names::RENEWALS, "result" => "failed").increment(1);
                tracing::debug!(key = %key, %error, "lease renewal failed; retrying soon");
            }
        }
    }

    async fn release_queued(self, mut entry: Release) {
        let result = self
            .timed(
                StoreOperation::Release,
                self.store_of(entry.which).release(&entry.key, &entry.token),
            )
            .await;
        let outcome = match result {
            Ok(Fenced::Applied) => {
                self.inner.stats.record(Event::BackgroundRelease);
                tracing::debug!(key = %entry.key, "claim released in the background");
                "released"
            }
            // Never applied, already lapsed, or taken over: nothing of ours is left.
            Ok(Fenced::LeaseLost) => "absent",
            Err(error) => {
                let retry_at = Instant::now() + release_backoff(entry.attempts);
                if retry_at >= entry.give_up || matches!(error, StoreError::Corrupt(_)) {
                    tracing::debug!(key = %entry.key, %error, "background release abandoned; the claim lapses with its lease");
                    "abandoned"
                } else {
                    entry.attempts += 1;
                    entry.due = retry_at;
                    let mut state = self.inner.background.lock();
                    state.releases.push_back(entry);
                    self.wake_driver_for(&mut state, retry_at);
                    "retry"
                }
            }
        };
        metrics::counter!(names::BACKGROUND_RELEASES, "result" => outcome).increment(1);
    }
}

/// Resets the driver slot when a driver task ends in any way (including its runtime shutting
/// down), so that the next registration spawns a new one.
struct ResetOnDrop<S> {
    inner: Weak<Inner<S>>,
    generation: u64,
}

impl<S> Drop for ResetOnDrop<S> {
    fn drop(&mut self) {
        if let Some(inner) = self.inner.upgrade() {
            let mut state = inner.background.lock();
            if matches!(state.driver, Driver::Running { generation, .. } if generation == self.generation)
            {
                state.driver = Driver::Idle;
            }
        }
    }
}

async fn drive<S: IdempotencyStore + 'static>(inner: Weak<Inner<S>>, generation: u64) {
    let _reset = ResetOnDrop {
        inner: inner.clone(),
        generation,
    };
    let Some(wake) = inner.upgrade().map(|i| Arc::clone(&i.background.wake)) else {
        return;
    };
    let mut idle_since = None;
    loop {
        let Some(strong) = inner.upgrade() else {
            return;
        };
        let engine = Idempotency { inner: strong };
        let (renew, release, wake_at) = match engine.plan(generation, &mut idle_since) {
            Plan::Exit => return,
            Plan::Work {
                renew,
                release,
                wake_at,
            } => (renew, release, wake_at),
        };
        let permits = Arc::clone(&engine.inner.background.permits);
        for (ticket, key, token, which, lease) in renew {
            let engine = engine.clone();
            let permits = Arc::clone(&permits);
            tokio::spawn(async move {
                let _permit = permits.acquire_owned().await;
                engine.renew(ticket, key, token, which, lease).await;
            });
        }
        for entry in release {
            let engine = engine.clone();
            let permits = Arc::clone(&permits);
            tokio::spawn(async move {
                let _permit = permits.acquire_owned().await;
                engine.release_queued(entry).await;
            });
        }
        // Hold no strong reference while asleep: dropping the engine ends the driver.
        drop(engine);
        let _woken_or_due = tokio::time::timeout_at(wake_at, wake.notified()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals() {
        assert_eq!(
            renewal_interval(Duration::from_secs(60)),
            Duration::from_secs(20)
        );
        assert_eq!(
            renewal_interval(Duration::from_nanos(1)),
            Duration::from_millis(1)
        );
        assert_eq!(
            renewal_retry(Duration::from_secs(60)),
            Duration::from_secs(5)
        );
        assert_eq!(
            renewal_retry(Duration::from_millis(30)),
            Duration::from_millis(10)
        );
        assert_eq!(release_backoff(0), Duration::from_millis(50));
        assert_eq!(release_backoff(2), Duration::from_millis(200));
        assert_eq!(release_backoff(40), RELEASE_BACKOFF_MAX);
    }
}
