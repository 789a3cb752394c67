//! The memory store used from a thread-local destructor at thread exit (its own code takes
//! care of that case for completions, see `shared_content_type`), in a process where some
//! runtime paused tokio's clock (tokio's `test-util`: any `#[tokio::test(start_paused = true)]`).
//! Reading tokio's clock there asks for the current runtime and panics once tokio's own
//! thread-local is gone, and a panic in a thread-local destructor aborts the process: the
//! default clock (`SystemClock`) must not read tokio's clock (a version that did aborted this
//! test; `TokioClock` documents the case).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use idempotency_memory::MemoryStore;

struct SweepOnDrop(MemoryStore);

impl Drop for SweepOnDrop {
    fn drop(&mut self) {
        self.0.sweep_expired();
    }
}

thread_local! {
    static HELD: std::cell::RefCell<Option<SweepOnDrop>> = const { std::cell::RefCell::new(None) };
}

#[test]
fn the_store_can_be_used_from_a_thread_local_destructor_after_a_clock_was_paused() {
    // Some runtime of the process paused its clock.
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap()
        .block_on(async { tokio::time::sleep(Duration::from_millis(1)).await });
    let store = MemoryStore::new();
    std::thread::spawn(move || {
        HELD.with(|held| *held.borrow_mut() = Some(SweepOnDrop(store)));
        // Tokio's context thread-local is set up after ours: it is destroyed first.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {});
    })
    .join()
    .unwrap();
}
