//! One tokio timer kept armed ahead of the operation timers, for as long as a store lives.
//!
//! Every store operation runs under one `tokio::time::timeout` (the operation timeout, 1 s by
//! default). Arming a timer that falls due before every other timer of the runtime makes tokio
//! wake the runtime's I/O driver (`time::Handle::reregister` → `unpark`: an `eventfd` write)
//! so that it can shorten its sleep. Between two requests the timer wheel is usually empty (the
//! last operation's timer was cancelled when its reply came), so without an anchor *every*
//! operation's timer is the earliest and costs that wake-up. On a single-threaded runtime it
//! costs a `write` and an extra `epoll_wait`; on a multi-threaded one, when another worker is
//! the one asleep in the driver, it wakes that thread for nothing: two context switches per
//! operation (measured for issue 15: one `eventfd` write per replayed HTTP request through
//! `http-redis`, none through the `fred` client of the `axum-idempotent` peer, which arms no
//! timer; `gdb` stack: `TimerEntry::init` → `Handle::reregister` → `IoHandle::unpark`).
//!
//! The anchor is a task sleeping half an operation timeout at a time: its timer is always due
//! before the timer of any operation armed since, so arming one never wakes the driver. It costs
//! one wake-up per half timeout (2 per second by default) instead of one per operation; the
//! operations' own timers, and so their timeouts, are unchanged.

use std::time::Duration;

use tokio::task::AbortHandle;

/// The shortest anchor period: below it (operation timeouts under twice this) the anchor's own
/// wake-ups would cost more than they save, and no anchor runs.
const MIN_PERIOD: Duration = Duration::from_millis(5);

/// The anchor task; aborted when dropped (with the store's last clone).
#[derive(Debug)]
pub(crate) struct TimerAnchor {
    task: AbortHandle,
}

impl TimerAnchor {
    /// Start the anchor for operations bounded by `operation_timeout` on the current tokio
    /// runtime; `None` outside a runtime or for timeouts under twice [`MIN_PERIOD`].
    pub(crate) fn start(operation_timeout: Duration) -> Option<Self> {
        let period = operation_timeout / 2;
        if period < MIN_PERIOD {
            return None;
        }
        let runtime = tokio::runtime::Handle::try_current().ok()?;
        let task = runtime.spawn(async move {
            loop {
                tokio::time::sleep(period).await;
            }
        });
        Some(Self {
            task: task.abort_handle(),
        })
    }
}

impl Drop for TimerAnchor {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_anchor_outside_a_runtime_or_for_tiny_timeouts() {
        assert!(TimerAnchor::start(Duration::from_secs(1)).is_none());
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        runtime.block_on(async {
            assert!(TimerAnchor::start(Duration::from_millis(9)).is_none());
            assert!(TimerAnchor::start(Duration::from_millis(10)).is_some());
        });
    }

    #[tokio::test]
    async fn the_anchor_task_ends_when_dropped() {
        let metrics = tokio::runtime::Handle::current().metrics();
        let before = metrics.num_alive_tasks();
        let anchor = TimerAnchor::start(Duration::from_secs(1)).unwrap();
        assert_eq!(metrics.num_alive_tasks(), before + 1);
        drop(anchor);
        // The runtime reaps the aborted task on its next turns.
        for _ in 0..1000 {
            if metrics.num_alive_tasks() == before {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert_eq!(metrics.num_alive_tasks(), before);
    }
}
