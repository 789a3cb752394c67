//! The registry of live claims: slots with a free list. A freed slot keeps its key buffer
//! and the next claim copies its key into it, so registering a claim does not allocate once the
//! registry has grown to the peak number of running operations (its memory is bounded by that
//! peak).

use std::time::Duration;

use tokio::time::Instant;

use crate::{LeaseToken, StoreKey};

/// Which store holds a claim: the engine's store, or the fallback store of
/// [`FailurePolicy::Fallback`](crate::FailurePolicy::Fallback).
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

#[derive(Debug)]
pub(super) struct Live {
    /// [`VACANT`] when the slot is free.
    pub(super) id: u64,
    /// The store key's text; the buffer is kept when the slot is freed and reused by the next
    /// claim (the registry's memory is bounded by the peak number of live claims).
    pub(super) key: String,
    pub(super) token: LeaseToken,
    pub(super) which: Which,
    pub(super) lease: Duration,
    pub(super) due: Instant,
    pub(super) renewing: bool,
    pub(super) lost: bool,
    /// The guard is storing its outcome: a renewal that finds the lease gone may just be seeing
    /// that completion, so it is not reported as lost (the completion itself tells the truth).
    pub(super) completing: bool,
}

/// The id of a free slot.
pub(super) const VACANT: u64 = u64::MAX;

/// Slots of live claims with a free list; freed slots keep their key buffer.
#[derive(Debug, Default)]
pub(super) struct Slots {
    slots: Vec<Live>,
    free: Vec<usize>,
    live: usize,
}

impl Slots {
    pub(super) fn get(&self, ticket: Ticket) -> Option<&Live> {
        self.slots.get(ticket.index).filter(|l| l.id == ticket.id)
    }

    pub(super) fn get_mut(&mut self, ticket: Ticket) -> Option<&mut Live> {
        self.slots
            .get_mut(ticket.index)
            .filter(|l| l.id == ticket.id)
    }

    /// Free the slot; returns whether its lease had been found lost.
    pub(super) fn remove(&mut self, ticket: Ticket) -> Option<bool> {
        let live = self.get_mut(ticket)?;
        live.id = VACANT;
        let lost = live.lost;
        self.free.push(ticket.index);
        self.live -= 1;
        Some(lost)
    }

    pub(super) fn insert(
        &mut self,
        id: u64,
        key: &StoreKey,
        token: LeaseToken,
        which: Which,
        lease: Duration,
        due: Instant,
    ) -> usize {
        self.live += 1;
        if let Some(index) = self.free.pop()
            && let Some(slot) = self.slots.get_mut(index)
        {
            slot.id = id;
            slot.key.clear();
            slot.key.push_str(key.as_str());
            slot.token = token;
            slot.which = which;
            slot.lease = lease;
            slot.due = due;
            slot.renewing = false;
            slot.lost = false;
            slot.completing = false;
            return index;
        }
        self.slots.push(Live {
            id,
            key: key.as_str().to_owned(),
            token,
            which,
            lease,
            due,
            renewing: false,
            lost: false,
            completing: false,
        });
        self.slots.len() - 1
    }

    pub(super) fn is_empty(&self) -> bool {
        self.live == 0
    }

    pub(super) fn iter_mut(&mut self) -> impl Iterator<Item = (usize, &mut Live)> {
        self.slots
            .iter_mut()
            .enumerate()
            .filter(|(_, l)| l.id != VACANT)
    }
}
