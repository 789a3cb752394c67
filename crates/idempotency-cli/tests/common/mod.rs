//! Running the `idempotency` binary against real servers, and seeding records as the engine
//! writes them.
#![allow(dead_code, unreachable_pub, missing_docs)]

use std::process::{Command, Output, Stdio};
use std::time::Duration;

use idempotency::{
    Completed, Fingerprint, IdempotencyKey, IdempotencyStore, InProgress, LeaseToken, Scope,
    StoreKey, StoredOutcome, unix_millis_now,
};

pub const PREFIX: &str = "idempotency:";

/// The result of one run: exit code, stdout, stderr.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn all(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }
}

/// Run the binary with exactly `env` (nothing inherited, so no stray store variable of the
/// developer's shell decides which store is used), stdin closed (not a terminal).
pub fn run(env: &[(&str, &str)], args: &[&str]) -> Run {
    let Output {
        status,
        stdout,
        stderr,
    } = Command::new(env!("CARGO_BIN_EXE_idempotency"))
        .env_clear()
        .envs(env.iter().copied())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run the idempotency binary");
    Run {
        code: status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
    }
}

pub fn store_key(scope: &str, key: &str) -> StoreKey {
    StoreKey::derive(
        PREFIX,
        &Scope::new(scope),
        &IdempotencyKey::new(key).unwrap(),
    )
}

/// Write a record as the engine does: claim, then (if `outcome`) complete.
pub async fn seed(
    store: &impl IdempotencyStore,
    scope: &str,
    key: &str,
    outcome: Option<StoredOutcome>,
) -> LeaseToken {
    let key = store_key(scope, key);
    let claim = InProgress {
        token: LeaseToken::generate(),
        fingerprint: Fingerprint::of(format!("request {key}")),
        created_at_ms: unix_millis_now(),
    };
    let lease = Duration::from_secs(600);
    store.try_claim(&key, &claim, lease).await.unwrap();
    if let Some(outcome) = outcome {
        let completed = Completed {
            token: claim.token,
            fingerprint: claim.fingerprint,
            created_at_ms: claim.created_at_ms,
            completed_at_ms: unix_millis_now(),
            outcome,
        };
        store
            .complete(&key, &claim.token, &completed, Duration::from_secs(3600))
            .await
            .unwrap();
    }
    claim.token
}

/// Seed `n` records of `scope` (keys `k0..`), alternately in progress and completed.
pub async fn seed_many(store: &impl IdempotencyStore, scope: &str, n: usize) {
    use futures::StreamExt as _;
    futures::stream::iter(0..n)
        .for_each_concurrent(32, |i| async move {
            let outcome = (i % 2 == 1).then(|| StoredOutcome::new("ok", None));
            seed(store, scope, &format!("k{i}"), outcome).await;
        })
        .await;
}

/// The first line of stdout as JSON.
pub fn json(run: &Run) -> serde_json::Value {
    serde_json::from_str(run.stdout.trim()).unwrap_or_else(|e| {
        panic!(
            "stdout is not JSON ({e}): {}\nstderr: {}",
            run.stdout, run.stderr
        )
    })
}
