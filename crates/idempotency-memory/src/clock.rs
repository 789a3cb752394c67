//! Time source for expiry, injectable so tests move time without sleeping.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// A monotonic clock in milliseconds from an arbitrary origin.
pub trait Clock: Send + Sync + std::fmt::Debug + 'static {
    /// Milliseconds since this clock's origin; never decreases.
    fn now_ms(&self) -> u64;

    /// [`Clock::now_ms`] at `now`, a clock read the caller made just before (the engine's, on
    /// tokio's clock, passed to `IdempotencyStore::try_claim_now` and `complete_now`): a clock
    /// that runs on that clock answers without reading it again ([`TokioClock`]). The default
    /// ignores `now` and answers [`Clock::now_ms`] (a clock of its own: [`SystemClock`], which
    /// keeps real time when a test pauses tokio's clock, and [`ManualClock`]).
    fn at_ms(&self, now: Instant) -> u64 {
        let _ = now;
        self.now_ms()
    }
}

/// The system's monotonic clock ([`Instant::now`]), the default: real time, whatever tokio's
/// clock does (a test's paused clock included). It ignores the caller's instant of
/// `try_claim_now` / `complete_now` (that instant is tokio's, which a paused runtime moves on
/// its own) and reads the clock itself; [`TokioClock`] takes the caller's instant instead.
#[derive(Debug, Clone, Copy)]
pub struct SystemClock {
    origin: Instant,
}

impl SystemClock {
    /// A clock whose origin is now.
    pub fn new() -> Self {
        Self {
            origin: Instant::now(),
        }
    }
}

impl Default for SystemClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        millis_since(self.origin, Instant::now())
    }
}

/// Tokio's clock ([`tokio::time::Instant::now`]), opt-in
/// (`MemoryStore::builder().clock(TokioClock::new())`): the same as [`SystemClock`] outside a
/// runtime whose clock is paused, and **one clock read less** per claim, completion and replay
/// made through the engine: the store takes the engine's own clock read (the `now` of
/// `try_claim_now` / `complete_now`) as the time of the call (~23 ns a read on the machine of
/// the benchmark; in-process replays ~10 % faster, `README` › Performance).
///
/// Inside a tokio runtime whose clock is paused (tokio's `test-util`:
/// `#[tokio::test(start_paused = true)]`, `tokio::time::pause`) it is that clock, so the
/// store's leases and retention run on the same clock as the engine's timers and a test can
/// let a lease lapse without sleeping: `tokio::time::advance` past a lease lapses it, as in a
/// process frozen that long, renewed or not (the renewals due within the jump run after it,
/// too late; `tokio::time::sleep` lets them run on time).
///
/// Why it is not the default: each runtime has a clock of its own, so keep a store on this
/// clock in one runtime. A store shared by several (a `static` used by tests that run in
/// parallel, each `#[tokio::test]` in its runtime, one of them paused; or a paused runtime and
/// code outside any runtime) sees clocks that need not agree, and more than its own key
/// follows the one that is ahead: a claim made on it takes over leases still live on the other
/// clocks, and the sweep it runs removes every record that clock sees as expired, other keys'
/// live leases and retained outcomes included (their duplicates then run again). And in a
/// process where tokio's `test-util` paused a clock, reading it from a thread-local's
/// destructor at thread exit panics (tokio's own thread-local is gone), which aborts. Outside
/// tests (no `test-util`) it is the system's monotonic clock.
///
/// A test that lets a lease lapse without sleeping (tokio's `test-util` feature):
///
/// ```
/// use std::time::Duration;
/// use idempotency_core::{Begin, Fingerprint, Idempotency, IdempotencyKey, Scope};
/// use idempotency_memory::{MemoryStore, TokioClock};
///
/// # tokio::runtime::Builder::new_current_thread().enable_all().start_paused(true).build().unwrap().block_on(async {
/// let store = MemoryStore::builder().clock(TokioClock::new()).build();
/// let engine = Idempotency::builder(store)
///     .lease(Duration::from_secs(5))
///     .renew_leases(false) // a holder that stopped renewing (hung, or its process froze)
///     .ignore_env()
///     .build()?;
/// let (scope, key) = (Scope::global(), IdempotencyKey::new("order-1")?);
/// let Begin::Run(_stuck) = engine.begin(&scope, &key, Fingerprint::of("a")).await? else {
///     unreachable!("a new key runs");
/// };
/// tokio::time::advance(Duration::from_secs(6)).await; // past the lease, on the paused clock
/// let retry = engine.begin(&scope, &key, Fingerprint::of("a")).await?;
/// assert!(matches!(retry, Begin::Run(_)), "the lapsed claim is taken over");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// # }).unwrap();
/// ```
#[derive(Debug, Clone, Copy)]
pub struct TokioClock {
    origin: Instant,
}

impl TokioClock {
    /// A clock whose origin is now (on tokio's clock).
    pub fn new() -> Self {
        Self {
            origin: tokio::time::Instant::now().into_std(),
        }
    }
}

impl Default for TokioClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for TokioClock {
    fn now_ms(&self) -> u64 {
        millis_since(self.origin, tokio::time::Instant::now().into_std())
    }

    /// No clock read: `now` is one (see [`Clock::at_ms`]).
    fn at_ms(&self, now: Instant) -> u64 {
        millis_since(self.origin, now)
    }
}

/// Whole milliseconds from `origin` to `now` (0 when `now` is earlier), saturating.
fn millis_since(origin: Instant, now: Instant) -> u64 {
    u64::try_from(now.saturating_duration_since(origin).as_millis()).unwrap_or(u64::MAX)
}

/// A clock that moves only when told to, shared by clones. For tests.
///
/// ```
/// use idempotency_memory::{Clock, ManualClock};
/// let clock = ManualClock::new();
/// clock.advance(std::time::Duration::from_secs(2));
/// assert_eq!(clock.now_ms(), 2000);
/// ```
#[derive(Debug, Clone, Default)]
pub struct ManualClock {
    now: Arc<AtomicU64>,
}

impl ManualClock {
    /// A clock at 0.
    pub fn new() -> Self {
        Self::default()
    }

    /// Move time forward.
    pub fn advance(&self, by: Duration) {
        self.now.fetch_add(by.as_millis() as u64, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> u64 {
        self.now.load(Ordering::SeqCst)
    }
}
