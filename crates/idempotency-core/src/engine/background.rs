//! The state of the work the engine does off the request path (the task that does it is in
//! `driver.rs`), on one driver task per engine:
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
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{Notify, Semaphore};
use tokio::time::Instant;

use super::registry::{Slots, Ticket, Which};
use crate::{LeaseToken, StoreKey};

/// Most renewals and releases in flight at once, per engine.
pub(crate) const MAX_IN_FLIGHT: usize = 32;
/// First retry delay of a background release; doubles per attempt.
const RELEASE_BACKOFF_START: Duration = Duration::from_millis(50);
/// Longest delay between two attempts of a background release.
const RELEASE_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// `now + after` without overflow ([`crate::instant_after`]).
pub(crate) use crate::shared::instant_after as later;

/// The time between two renewals of a lease: a third of it (at least 1 ms).
pub(crate) fn renewal_interval(lease: Duration) -> Duration {
    (lease / 3).max(Duration::from_millis(1))
}

/// After a failed renewal, try again sooner than the regular interval (but not in a tight loop).
pub(super) fn renewal_retry(lease: Duration) -> Duration {
    let interval = renewal_interval(lease);
    (interval / 4).max(Duration::from_millis(50)).min(interval)
}

pub(super) fn release_backoff(attempts: u32) -> Duration {
    RELEASE_BACKOFF_START
        .saturating_mul(1u32 << attempts.min(16))
        .min(RELEASE_BACKOFF_MAX)
}

#[derive(Debug)]
pub(super) struct Release {
    pub(super) key: StoreKey,
    pub(super) token: LeaseToken,
    pub(super) which: Which,
    pub(super) attempts: u32,
    pub(super) due: Instant,
    pub(super) give_up: Instant,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Driver {
    Idle,
    Running {
        generation: u64,
        wake_at: Option<Instant>,
    },
}

#[derive(Debug)]
pub(super) struct State {
    pub(super) claims: Slots,
    pub(super) next_id: u64,
    pub(super) releases: VecDeque<Release>,
    pub(super) driver: Driver,
    pub(super) generations: u64,
}

/// The registry of live claims and pending releases (one per engine).
#[derive(Debug)]
pub(crate) struct Background {
    state: Mutex<State>,
    pub(super) wake: Arc<Notify>,
    pub(super) permits: Arc<Semaphore>,
    /// The renewal interval of the configured lease, computed once (a `Duration` division is
    /// not free on the claim path).
    pub(super) interval: Duration,
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

    pub(super) fn lock(&self) -> MutexGuard<'_, State> {
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

    /// The guard starts storing its outcome (renewals continue, see `Live::completing`).
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
