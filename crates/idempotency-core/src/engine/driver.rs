//! The driver task of the engine's background work (see `background.rs` for what it does and
//! its bounds): registering claims for renewal, queueing releases, renewing and releasing.

use std::collections::VecDeque;
use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::time::Instant;

use super::background::{
    Driver, Release, State, later, release_backoff, renewal_interval, renewal_retry,
};
use super::handle::{Idempotency, Inner};
use super::registry::{Ticket, Which};
use super::stats::{Event, names};
use crate::{Fenced, IdempotencyStore, LeaseToken, StoreError, StoreKey, StoreOperation};

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
    /// Start renewing the lease of a new claim, made by a store call that ended at `now` (the
    /// caller's clock read, reused: no read of its own); `None` when renewal is switched off.
    pub(crate) fn register_claim(
        &self,
        key: &StoreKey,
        token: LeaseToken,
        which: Which,
        now: Instant,
    ) -> Option<Ticket> {
        self.register_claim_due(key, token, which, now + self.inner.background.interval)
    }

    /// [`Idempotency::register_claim`] with its first renewal due at `due`.
    pub(crate) fn register_claim_due(
        &self,
        key: &StoreKey,
        token: LeaseToken,
        which: Which,
        due: Instant,
    ) -> Option<Ticket> {
        if !self.inner.config.renew_leases {
            return None;
        }
        let lease = self.inner.config.lease;
        let background = &self.inner.background;
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
            give_up: later(now, self.inner.config.lease),
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
                which,
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
                entry.which,
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
