//! Backends, faults, failure policies, the scenario matrix and the seeded schedule.

use std::fmt;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};
use serde::Serialize;

/// Which store the demo instances use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Backend {
    /// The per-process memory store: one instance (it deduplicates nothing across instances).
    Memory,
    /// A local `redis-server` (AOF, `appendfsync always`) through `REDIS_URL`.
    Redis,
    /// The KV REST gateway in front of such a Redis, through `KV_REST_API_URL` / `_TOKEN`.
    KvRest,
    /// A local Postgres (`synchronous_commit=on`) holding both the shop's data
    /// (`DATABASE_URL`) and the idempotency records (`IDEMPOTENCY_STORE=sql`): each handler
    /// commits its write and its recorded answer in one transaction.
    Sql,
}

impl Backend {
    /// Every backend, in report order.
    pub const ALL: [Backend; 4] = [
        Backend::Memory,
        Backend::Redis,
        Backend::KvRest,
        Backend::Sql,
    ];

    /// How many demo instances share the store.
    pub fn instances(self) -> usize {
        match self {
            Backend::Memory => 1,
            Backend::Redis | Backend::KvRest | Backend::Sql => 2,
        }
    }

    /// The faults that apply (a memory store has no server to pause or kill).
    pub fn faults(self) -> &'static [Fault] {
        match self {
            Backend::Memory => &[Fault::None, Fault::DemoKill],
            Backend::Redis | Backend::Sql => &[
                Fault::None,
                Fault::StorePause,
                Fault::StoreKill,
                Fault::DemoKill,
            ],
            Backend::KvRest => &[
                Fault::None,
                Fault::StorePause,
                Fault::StoreKill,
                Fault::GatewayKill,
                Fault::DemoKill,
            ],
        }
    }

    /// Whether the side effects are rows in the store's own database (counted from committed
    /// rows, not only from the journals).
    pub fn commits_side_effects(self) -> bool {
        self == Backend::Sql
    }

    /// Parse `memory`, `redis`, `kv-rest` or `sql`.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "memory" => Some(Backend::Memory),
            "redis" => Some(Backend::Redis),
            "kv-rest" => Some(Backend::KvRest),
            "sql" => Some(Backend::Sql),
            _ => None,
        }
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Backend::Memory => "memory",
            Backend::Redis => "redis",
            Backend::KvRest => "kv-rest",
            Backend::Sql => "sql",
        })
    }
}

/// What the harness does to the processes during the traffic window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Fault {
    /// Nothing: the baseline.
    None,
    /// `SIGSTOP` the store's server, `SIGCONT` it after the outage: Redis, or every Postgres
    /// process (the postmaster and its backends).
    StorePause,
    /// `kill -9` the store's server, restart it after the outage: Redis from its AOF, Postgres
    /// (the postmaster and its children) on the same data directory, from its WAL.
    StoreKill,
    /// `kill -9` the KV REST gateway, restart it after the outage.
    GatewayKill,
    /// `kill -9` demo instance 0 just after one of its handlers wrote, restart it after the
    /// outage.
    DemoKill,
}

impl Fault {
    /// Parse the kebab-case name.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "none" => Some(Fault::None),
            "store-pause" => Some(Fault::StorePause),
            "store-kill" => Some(Fault::StoreKill),
            "gateway-kill" => Some(Fault::GatewayKill),
            "demo-kill" => Some(Fault::DemoKill),
            _ => None,
        }
    }

    /// Whether the fault kills a demo instance (the crash window applies).
    pub fn kills_demo(self) -> bool {
        self == Fault::DemoKill
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Fault::None => "none",
            Fault::StorePause => "store-pause",
            Fault::StoreKill => "store-kill",
            Fault::GatewayKill => "gateway-kill",
            Fault::DemoKill => "demo-kill",
        })
    }
}

/// The demo's failure policy when the store errors or times out, passed as
/// `IDEMPOTENCY_FAILURE_POLICY` (issue 13 items 5 and 9).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Policy {
    /// Refuse with 503 + `Retry-After` (the default).
    Closed,
    /// Run without protection.
    Open,
    /// Protect requests with a per-process memory store during the outage (issue 13 item 9):
    /// a double click on one instance still runs once; nothing protects across instances.
    Fallback,
}

impl Policy {
    /// Every policy, in table order.
    pub const ALL: [Policy; 3] = [Policy::Closed, Policy::Open, Policy::Fallback];

    /// Parse `closed`, `open` or `fallback`.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "closed" => Some(Policy::Closed),
            "open" => Some(Policy::Open),
            "fallback" => Some(Policy::Fallback),
            _ => None,
        }
    }
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Policy::Closed => "closed",
            Policy::Open => "open",
            Policy::Fallback => "fallback",
        })
    }
}

/// A duration as milliseconds in `report.json`.
fn as_millis<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The sizes and times of a run. [`Params::quick`] fits `cargo xtask test` (< 60 s with
/// [`quick_matrix`]); [`Params::full`] is `cargo xtask chaos`. Durations are milliseconds in
/// `report.json` (`traffic_ms`...).
#[derive(Debug, Clone, Serialize)]
pub struct Params {
    /// Logical requests (keys) per scenario.
    pub keys: usize,
    /// Window over which the keys are launched.
    #[serde(rename = "traffic_ms", serialize_with = "as_millis")]
    pub traffic: Duration,
    /// `DEMO_WORK_MS`.
    #[serde(rename = "work_ms", serialize_with = "as_millis")]
    pub work: Duration,
    /// `DEMO_AFTER_WRITE_MS`.
    #[serde(rename = "after_write_ms", serialize_with = "as_millis")]
    pub after_write: Duration,
    /// How long a pause lasts, or how long a killed process stays down before its restart.
    #[serde(rename = "outage_ms", serialize_with = "as_millis")]
    pub outage: Duration,
    /// One attempt without any answer for this long counts as a hang.
    #[serde(rename = "attempt_timeout_ms", serialize_with = "as_millis")]
    pub attempt_timeout: Duration,
    /// A client gives up this long after `outage + 5 s`.
    #[serde(rename = "grace_ms", serialize_with = "as_millis")]
    pub grace: Duration,
    /// Scenarios run at the same time (more is faster and noisier on a small machine).
    pub parallel: usize,
    /// `IDEMPOTENCY_LEASE` for every demo instance (`None`: the demo's default, 60 s).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lease: Option<String>,
}

impl Params {
    /// `cargo xtask test`: small and bounded.
    pub fn quick() -> Self {
        Self {
            keys: 40,
            traffic: Duration::from_secs(3),
            work: Duration::from_millis(100),
            after_write: Duration::from_millis(200),
            outage: Duration::from_millis(1500),
            attempt_timeout: Duration::from_secs(10),
            grace: Duration::from_secs(1),
            parallel: 2,
            lease: None,
        }
    }

    /// `cargo xtask chaos`.
    pub fn full() -> Self {
        Self {
            keys: 200,
            traffic: Duration::from_secs(8),
            work: Duration::from_millis(150),
            after_write: Duration::from_millis(300),
            outage: Duration::from_secs(3),
            attempt_timeout: Duration::from_secs(10),
            grace: Duration::from_secs(10),
            parallel: 1,
            lease: None,
        }
    }
}

/// One (backend, fault, policy).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ScenarioSpec {
    /// The store.
    pub backend: Backend,
    /// What is done to it.
    pub fault: Fault,
    /// The demo's failure policy.
    pub policy: Policy,
}

impl fmt::Display for ScenarioSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} {}", self.backend, self.fault, self.policy)
    }
}

/// Every applicable (backend, fault) for the given backends, faults (all when `None`) and
/// policies. The memory backend runs with the first policy only: its store never fails.
pub fn matrix(
    backends: &[Backend],
    faults: Option<&[Fault]>,
    policies: &[Policy],
) -> Vec<ScenarioSpec> {
    let mut out = Vec::new();
    for &backend in backends {
        for &fault in backend.faults() {
            if faults.is_some_and(|wanted| !wanted.contains(&fault)) {
                continue;
            }
            let policies = if backend == Backend::Memory {
                &policies[..policies.len().min(1)]
            } else {
                policies
            };
            for &policy in policies {
                out.push(ScenarioSpec {
                    backend,
                    fault,
                    policy,
                });
            }
        }
    }
    out
}

/// The quick run inside `cargo xtask test`: one scenario per kind of fault, fail-closed, and
/// the SQL store's crash window (`sql demo-kill`).
pub fn quick_matrix() -> Vec<ScenarioSpec> {
    let spec = |backend, fault| ScenarioSpec {
        backend,
        fault,
        policy: Policy::Closed,
    };
    vec![
        spec(Backend::Redis, Fault::StorePause),
        spec(Backend::Redis, Fault::StoreKill),
        spec(Backend::Redis, Fault::DemoKill),
        spec(Backend::KvRest, Fault::GatewayKill),
        spec(Backend::Memory, Fault::DemoKill),
        spec(Backend::Sql, Fault::DemoKill),
    ]
}

/// The seeded schedule of one scenario: when each key is launched, when the second client of a
/// key follows the first, when the fault starts.
#[derive(Debug, Clone)]
pub struct Schedule {
    /// Offset of each key's first client from the start of the traffic window.
    pub launches: Vec<Duration>,
    /// Delay of each key's second client after its first.
    pub second_client_delays: Vec<Duration>,
    /// Offset of the fault from the start of the traffic window.
    pub fault_at: Duration,
    /// Seed of the clients' backoff jitter.
    pub jitter_seed: u64,
}

impl Schedule {
    /// The schedule for `index`-th scenario of a run seeded with `seed`: the same seed gives the
    /// same schedule.
    pub fn new(seed: u64, index: usize, params: &Params) -> Self {
        let mut rng =
            StdRng::seed_from_u64(seed ^ (index as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let step = params.traffic.as_secs_f64() / params.keys.max(1) as f64;
        let launches = (0..params.keys)
            .map(|i| Duration::from_secs_f64(step * (i as f64 + rng.random_range(0.0..1.0))))
            .collect();
        let second_client_delays = (0..params.keys)
            .map(|_| Duration::from_millis(rng.random_range(0..30)))
            .collect();
        let fault_at = params.traffic.mul_f64(rng.random_range(0.3..0.5));
        Self {
            launches,
            second_client_delays,
            fault_at,
            jitter_seed: rng.random(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_gives_the_same_schedule() {
        let params = Params::quick();
        let a = Schedule::new(7, 2, &params);
        let b = Schedule::new(7, 2, &params);
        assert_eq!(a.launches, b.launches);
        assert_eq!(a.fault_at, b.fault_at);
        let c = Schedule::new(8, 2, &params);
        assert_ne!(a.launches, c.launches);
        assert!(a.launches.iter().all(|at| *at <= params.traffic));
        assert!(a.fault_at >= params.traffic.mul_f64(0.3) && a.fault_at <= params.traffic / 2);
    }

    #[test]
    fn the_matrix_skips_faults_that_do_not_apply() {
        let all = matrix(&Backend::ALL, None, &Policy::ALL);
        assert!(
            !all.iter()
                .any(|s| s.backend == Backend::Memory && s.fault == Fault::StoreKill)
        );
        assert!(
            !all.iter()
                .any(|s| s.backend == Backend::Redis && s.fault == Fault::GatewayKill)
        );
        assert!(
            !all.iter()
                .any(|s| s.backend == Backend::Memory && s.policy != Policy::Closed)
        );
        assert_eq!(all.len(), 2 + 4 * 3 + 5 * 3 + 4 * 3);
        assert_eq!(Backend::parse("sql"), Some(Backend::Sql));
        assert_eq!(Backend::Sql.instances(), 2);
        assert!(
            !all.iter()
                .any(|s| s.backend == Backend::Sql && s.fault == Fault::GatewayKill)
        );
        assert_eq!(Policy::parse("fallback"), Some(Policy::Fallback));
        assert_eq!(Policy::Fallback.to_string(), "fallback");
        let only = matrix(
            &[Backend::Redis],
            Some(&[Fault::DemoKill]),
            &[Policy::Closed],
        );
        assert_eq!(only.len(), 1);
    }
}
