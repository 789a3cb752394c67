//! Engine settings from the environment, so operators can tune a deployed service without a code
//! change (and test retention with a short value in development, as the production checklist
//! asks).
//!
//! | variable | meaning | value |
//! |---|---|---|
//! | `IDEMPOTENCY_RETENTION` | how long completed outcomes are replayed | a duration: `24h`, `30m`; at least `1s` |
//! | `IDEMPOTENCY_LEASE` | how long a claim holds a key if its owner dies | a duration: `60s`; at least `1s` |
//! | `IDEMPOTENCY_STORE_TIMEOUT` | time budget of one store operation: the engine's `store_timeout` and, when [`engine_from_env`](crate::engine_from_env) builds the store, the store's own `operation_timeout` | a duration: `1500ms` (the default); at least `1ms` |
//! | `IDEMPOTENCY_FAILURE_POLICY` | what happens when the store fails | `fail-closed` (or `closed`), `fail-open` (or `open`), `fallback` (or `fallback-memory`: a per-process memory store protects requests during an outage; feature `memory`) |
//! | `IDEMPOTENCY_WAIT_IN_PROGRESS` | how long a duplicate waits for the first attempt before 409 | a duration; `0` answers at once; otherwise at least `1ms` |
//!
//! Durations are read by [`humantime`]: a number followed by a unit (`ms`, `s`, `m`, `h`, `d`),
//! several parts allowed (`1h 30m`). Unset or empty variables keep the engine's defaults. A value
//! that cannot be read is an error naming the variable, so a typo stops start-up instead of
//! silently running with a default. Every duration is at most `10000y` (longer ones do not fit
//! the monotonic clock the engine adds them to, and are refused the same way).
//!
//! ## Floors
//!
//! A value below its floor is refused the same way ([`SettingsError`] naming the variable, the
//! value, the floor and why): an operator's `1ns` or `1us` is a unit typo for `1s`, and each one
//! makes the service useless rather than merely unusual.
//!
//! - `IDEMPOTENCY_STORE_TIMEOUT` ≥ 1 ms: a shorter budget leaves no room for one store round trip
//!   plus task scheduling, so store operations time out and the failure policy answers every
//!   protected request (503 under fail-closed). There is no ceiling of the store's: under
//!   [`engine_from_env`](crate::engine_from_env) the store's own `operation_timeout` follows
//!   this variable (unset: the engine's 1.5 s), so a longer value is not cut at a store's 1 s
//!   default.
//! - `IDEMPOTENCY_LEASE` ≥ 1 s: a live claim renews its lease every third of the lease, each
//!   renewal a store round trip; a shorter lease lapses while the first attempt still runs, and
//!   an identical retry then runs the operation again.
//! - `IDEMPOTENCY_RETENTION` ≥ 1 s, the lease's floor: the engine refuses a retention shorter than
//!   the lease anyway (as a combination, when it builds); the floor names the variable at once.
//! - `IDEMPOTENCY_WAIT_IN_PROGRESS`: `0` (off) or ≥ 1 ms: a shorter wait ends before one store
//!   round trip could see the first attempt finish.
//!
//! The floors are the environment's only: the programmatic
//! [`IdempotencyBuilder`] accepts any non-zero duration (tests on a paused clock use
//! millisecond leases) and, as for the environment, refuses a retention shorter than the lease
//! and **warns** (does not refuse) when the lease is not longer than the store timeout, so
//! `IDEMPOTENCY_LEASE=1s` with the default 1.5 s store timeout starts, with that warning.

use std::fmt;
use std::time::Duration;

use idempotency_core::{FailurePolicy, IdempotencyBuilder};
use thiserror::Error;

/// `IDEMPOTENCY_RETENTION`: how long completed outcomes are replayed.
pub const RETENTION_ENV: &str = "IDEMPOTENCY_RETENTION";
/// `IDEMPOTENCY_LEASE`: how long a claim holds its key if its owner dies.
pub const LEASE_ENV: &str = "IDEMPOTENCY_LEASE";
/// `IDEMPOTENCY_STORE_TIMEOUT`: time budget of one store operation (the engine's, and the
/// store's own when [`engine_from_env`](crate::engine_from_env) builds it).
pub const STORE_TIMEOUT_ENV: &str = "IDEMPOTENCY_STORE_TIMEOUT";
/// `IDEMPOTENCY_FAILURE_POLICY`: `fail-closed`, `fail-open` or `fallback`.
pub const FAILURE_POLICY_ENV: &str = "IDEMPOTENCY_FAILURE_POLICY";
/// `IDEMPOTENCY_WAIT_IN_PROGRESS`: how long a duplicate waits for the first attempt (`0`: not at
/// all).
pub const WAIT_IN_PROGRESS_ENV: &str = "IDEMPOTENCY_WAIT_IN_PROGRESS";

/// How often a waiting duplicate looks at the store again.
const WAIT_POLL_INTERVAL: Duration = Duration::from_millis(20);

/// Smallest `IDEMPOTENCY_STORE_TIMEOUT` (see the module's floors).
const MIN_STORE_TIMEOUT: Duration = Duration::from_millis(1);
/// Smallest `IDEMPOTENCY_LEASE`.
const MIN_LEASE: Duration = Duration::from_secs(1);
/// Smallest `IDEMPOTENCY_RETENTION`: the lease's floor (a retention may not be shorter than the
/// lease).
const MIN_RETENTION: Duration = MIN_LEASE;
/// Smallest non-zero `IDEMPOTENCY_WAIT_IN_PROGRESS`.
const MIN_WAIT_IN_PROGRESS: Duration = Duration::from_millis(1);
/// Longest duration any variable takes: 10 000 years (humantime's years, 365.25 days). Longer
/// values that humantime still reads (up to `u64::MAX` seconds) overflow `Instant + duration`
/// in the engine, a panic on the request path; this one leaves a margin of 29 million times.
const MAX_DURATION: Duration = Duration::from_secs(10_000 * 31_557_600);

const STORE_TIMEOUT_WHY: &str = "a shorter budget leaves no room for one store round trip plus \
     task scheduling, so store operations time out and the failure policy answers every \
     protected request (503 under fail-closed)";
const LEASE_WHY: &str = "a live claim renews its lease every third of the lease, each renewal a \
     store round trip; a shorter lease lapses while the first attempt still runs, and an \
     identical retry then runs the operation again";
const RETENTION_WHY: &str = "completed outcomes must be kept at least as long as the lease, whose \
     floor this is; a shorter retention replays nothing";
const WAIT_WHY: &str = "a shorter wait ends before one store round trip could see the first \
     attempt finish; use `0` to answer 409 at once";

/// A setting variable holds a value that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{variable}={value:?} is not usable: {reason}")]
pub struct SettingsError {
    /// The variable.
    pub variable: &'static str,
    /// What it holds (these variables never carry secrets).
    pub value: String,
    /// What is wrong and what is expected.
    pub reason: String,
}

/// Engine settings read from the environment; `None` keeps the engine's default.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct EnvSettings {
    /// `IDEMPOTENCY_RETENTION`.
    pub retention: Option<Duration>,
    /// `IDEMPOTENCY_LEASE`.
    pub lease: Option<Duration>,
    /// `IDEMPOTENCY_STORE_TIMEOUT`.
    pub store_timeout: Option<Duration>,
    /// `IDEMPOTENCY_FAILURE_POLICY`.
    pub failure_policy: Option<FailurePolicy>,
    /// `IDEMPOTENCY_WAIT_IN_PROGRESS` (`Some(ZERO)`: answer 409 at once).
    pub wait_in_progress: Option<Duration>,
}

impl EnvSettings {
    /// Read the settings from the process environment.
    ///
    /// # Errors
    /// [`SettingsError`] naming the first variable whose value cannot be used.
    pub fn from_env() -> Result<Self, SettingsError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Read the settings through `lookup` (no process environment; for tests and other config
    /// systems).
    ///
    /// ```
    /// use std::time::Duration;
    /// use idempotency::{EnvSettings, FailurePolicy};
    /// let settings = EnvSettings::from_lookup(|name| match name {
    ///     "IDEMPOTENCY_LEASE" => Some("30s".to_owned()),
    ///     "IDEMPOTENCY_FAILURE_POLICY" => Some("fail-open".to_owned()),
    ///     _ => None,
    /// })?;
    /// assert_eq!(settings.lease, Some(Duration::from_secs(30)));
    /// assert_eq!(settings.failure_policy, Some(FailurePolicy::FailOpen));
    /// assert_eq!(settings.retention, None); // the engine's default (24 h) stays
    ///
    /// let typo = EnvSettings::from_lookup(|name| (name == "IDEMPOTENCY_RETENTION").then(|| "24 hours please".to_owned()));
    /// assert_eq!(typo.unwrap_err().variable, "IDEMPOTENCY_RETENTION");
    /// # Ok::<(), idempotency::SettingsError>(())
    /// ```
    ///
    /// # Errors
    /// [`SettingsError`] naming the first variable whose value cannot be used.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, SettingsError> {
        let read = |variable: &'static str| {
            lookup(variable)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
                .map(|v| (variable, v))
        };
        Ok(Self {
            retention: read(RETENTION_ENV)
                .map(|r| at_least(r, MIN_RETENTION, RETENTION_WHY))
                .transpose()?,
            lease: read(LEASE_ENV)
                .map(|r| at_least(r, MIN_LEASE, LEASE_WHY))
                .transpose()?,
            store_timeout: read(STORE_TIMEOUT_ENV)
                .map(|r| at_least(r, MIN_STORE_TIMEOUT, STORE_TIMEOUT_WHY))
                .transpose()?,
            failure_policy: read(FAILURE_POLICY_ENV).map(policy).transpose()?,
            wait_in_progress: read(WAIT_IN_PROGRESS_ENV).map(wait).transpose()?,
        })
    }

    /// The engine's store timeout these settings give: `IDEMPOTENCY_STORE_TIMEOUT`, or the
    /// engine's default ([`Config::store_timeout`](idempotency_core::Config::store_timeout),
    /// 1.5 s) when it is unset. It is also the stores' own time budget of one operation when
    /// [`engine_from_env`](crate::engine_from_env) builds them (pass it to
    /// [`store_from_env_with_timeout`](crate::store_from_env_with_timeout) to do the same).
    ///
    /// ```
    /// use std::time::Duration;
    /// use idempotency::EnvSettings;
    /// let set = EnvSettings::from_lookup(|name| {
    ///     (name == "IDEMPOTENCY_STORE_TIMEOUT").then(|| "5s".to_owned())
    /// })?;
    /// assert_eq!(set.store_timeout_or_default(), Duration::from_secs(5));
    /// let unset = EnvSettings::from_lookup(|_| None)?;
    /// assert_eq!(unset.store_timeout_or_default(), Duration::from_millis(1500));
    /// # Ok::<(), idempotency::SettingsError>(())
    /// ```
    pub fn store_timeout_or_default(&self) -> Duration {
        self.store_timeout
            .unwrap_or_else(|| idempotency_core::Config::default().store_timeout())
    }

    /// Whether no variable was set.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// Apply the settings that were set to `builder` (the others keep what the builder has).
    /// The builder's `build()` still checks the combination (e.g. a retention shorter than the
    /// lease is refused).
    #[must_use]
    pub fn apply<S>(&self, mut builder: IdempotencyBuilder<S>) -> IdempotencyBuilder<S> {
        if let Some(retention) = self.retention {
            builder = builder.retention(retention);
        }
        if let Some(lease) = self.lease {
            builder = builder.lease(lease);
        }
        if let Some(timeout) = self.store_timeout {
            builder = builder.store_timeout(timeout);
        }
        if let Some(policy) = self.failure_policy {
            builder = builder.failure_policy(policy);
            #[cfg(feature = "memory")]
            if policy == FailurePolicy::Fallback {
                builder = builder.fallback_store(idempotency_memory::MemoryStore::new());
            }
        }
        if let Some(wait) = self.wait_in_progress.filter(|w| !w.is_zero()) {
            builder = builder.wait_for_in_progress(wait, WAIT_POLL_INTERVAL.min(wait));
        }
        builder
    }
}

/// `IDEMPOTENCY_LEASE=30s IDEMPOTENCY_FAILURE_POLICY=fail-open`, or `defaults` (for start-up logs).
impl fmt::Display for EnvSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return f.write_str("defaults");
        }
        let mut parts: Vec<String> = Vec::new();
        let durations = [
            (RETENTION_ENV, self.retention),
            (LEASE_ENV, self.lease),
            (STORE_TIMEOUT_ENV, self.store_timeout),
            (WAIT_IN_PROGRESS_ENV, self.wait_in_progress),
        ];
        for (variable, value) in durations {
            if let Some(value) = value {
                parts.push(format!("{variable}={}", humantime::format_duration(value)));
            }
        }
        if let Some(policy) = self.failure_policy {
            parts.push(format!("{FAILURE_POLICY_ENV}={}", policy_name(policy)));
        }
        f.write_str(&parts.join(" "))
    }
}

fn duration((variable, value): (&'static str, String)) -> Result<Duration, SettingsError> {
    if value == "0" {
        return Ok(Duration::ZERO);
    }
    match humantime::parse_duration(&value) {
        Ok(d) if d > MAX_DURATION => Err(SettingsError {
            variable,
            value,
            reason: format!(
                "longer than the ceiling of {}: the engine adds durations to the monotonic \
                 clock, which cannot hold much more",
                humantime::format_duration(MAX_DURATION)
            ),
        }),
        Ok(d) => Ok(d),
        Err(e) => Err(SettingsError {
            variable,
            value: value.clone(),
            reason: format!("{e}; expected a duration such as `24h`, `30s` or `250ms`"),
        }),
    }
}

fn positive_duration(read: (&'static str, String)) -> Result<Duration, SettingsError> {
    let (variable, value) = (read.0, read.1.clone());
    match duration(read)? {
        d if d.is_zero() => Err(SettingsError {
            variable,
            value,
            reason: "must be longer than zero".to_owned(),
        }),
        d => Ok(d),
    }
}

/// A duration that must be at least `floor` (and so not zero), `why` saying what a shorter one
/// breaks.
fn at_least(
    read: (&'static str, String),
    floor: Duration,
    why: &str,
) -> Result<Duration, SettingsError> {
    let (variable, value) = (read.0, read.1.clone());
    match positive_duration(read)? {
        d if d < floor => Err(below_floor(variable, value, floor, why)),
        d => Ok(d),
    }
}

/// `IDEMPOTENCY_WAIT_IN_PROGRESS`: zero (off) or at least its floor.
fn wait(read: (&'static str, String)) -> Result<Duration, SettingsError> {
    let (variable, value) = (read.0, read.1.clone());
    match duration(read)? {
        d if !d.is_zero() && d < MIN_WAIT_IN_PROGRESS => {
            Err(below_floor(variable, value, MIN_WAIT_IN_PROGRESS, WAIT_WHY))
        }
        d => Ok(d),
    }
}

fn below_floor(variable: &'static str, value: String, floor: Duration, why: &str) -> SettingsError {
    SettingsError {
        variable,
        value,
        reason: format!(
            "below the floor of {} (a unit typo, such as `1ns` for `1s`?): {why}",
            humantime::format_duration(floor)
        ),
    }
}

fn policy((variable, value): (&'static str, String)) -> Result<FailurePolicy, SettingsError> {
    match value.to_ascii_lowercase().as_str() {
        "fail-closed" | "closed" => Ok(FailurePolicy::FailClosed),
        "fail-open" | "open" => Ok(FailurePolicy::FailOpen),
        "fallback" | "fallback-memory" if cfg!(feature = "memory") => Ok(FailurePolicy::Fallback),
        "fallback" | "fallback-memory" => Err(SettingsError {
            variable,
            value,
            reason: "the fallback policy needs the `memory` feature of `idempotency`".to_owned(),
        }),
        _ => Err(SettingsError {
            variable,
            value,
            reason: "expected `fail-closed`, `fail-open` or `fallback`".to_owned(),
        }),
    }
}

fn policy_name(policy: FailurePolicy) -> &'static str {
    match policy {
        FailurePolicy::FailClosed => "fail-closed",
        FailurePolicy::FailOpen => "fail-open",
        FailurePolicy::Fallback => "fallback",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn read(vars: &[(&str, &str)]) -> Result<EnvSettings, SettingsError> {
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        EnvSettings::from_lookup(move |name| {
            vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
        })
    }

    #[test]
    fn nothing_set_keeps_every_default() {
        let settings = read(&[]).unwrap();
        assert!(settings.is_empty());
        assert_eq!(settings.to_string(), "defaults");
        let blank = read(&[(LEASE_ENV, "  "), (RETENTION_ENV, "")]).unwrap();
        assert!(blank.is_empty());
    }

    #[test]
    fn human_durations_in_every_unit() {
        let settings = read(&[
            (RETENTION_ENV, "24h"),
            (LEASE_ENV, " 30s "),
            (STORE_TIMEOUT_ENV, "250ms"),
            (WAIT_IN_PROGRESS_ENV, "1m 30s"),
        ])
        .unwrap();
        assert_eq!(settings.retention, Some(Duration::from_secs(86_400)));
        assert_eq!(settings.lease, Some(Duration::from_secs(30)));
        assert_eq!(settings.store_timeout, Some(Duration::from_millis(250)));
        assert_eq!(settings.wait_in_progress, Some(Duration::from_secs(90)));
        assert_eq!(
            settings.to_string(),
            "IDEMPOTENCY_RETENTION=1day IDEMPOTENCY_LEASE=30s IDEMPOTENCY_STORE_TIMEOUT=250ms \
             IDEMPOTENCY_WAIT_IN_PROGRESS=1m 30s"
        );
    }

    #[test]
    fn every_bad_value_names_its_variable() {
        for variable in [
            RETENTION_ENV,
            LEASE_ENV,
            STORE_TIMEOUT_ENV,
            WAIT_IN_PROGRESS_ENV,
        ] {
            for bad in ["soon", "10", "-5s", "5 parsecs", "1e3ms"] {
                let error = read(&[(variable, bad)]).unwrap_err();
                assert_eq!(error.variable, variable, "{bad}");
                assert_eq!(error.value, bad);
                assert!(error.to_string().contains(variable), "{error}");
            }
        }
        let error = read(&[(FAILURE_POLICY_ENV, "sometimes")]).unwrap_err();
        assert_eq!(error.variable, FAILURE_POLICY_ENV);
        assert!(error.reason.contains("fail-closed"));
    }

    #[test]
    fn zero_is_refused_except_for_the_wait() {
        for variable in [RETENTION_ENV, LEASE_ENV, STORE_TIMEOUT_ENV] {
            for zero in ["0", "0s", "0ms"] {
                let error = read(&[(variable, zero)]).unwrap_err();
                assert_eq!(error.variable, variable);
                assert!(error.reason.contains("longer than zero"));
            }
        }
        let settings = read(&[(WAIT_IN_PROGRESS_ENV, "0")]).unwrap();
        assert_eq!(settings.wait_in_progress, Some(Duration::ZERO));
    }

    #[test]
    fn values_below_their_floor_are_refused_with_the_floor_and_why() {
        let cases: [(&str, &[&str], &str, &str); 4] = [
            (
                STORE_TIMEOUT_ENV,
                &["1ns", "1us", "999us"],
                "1ms",
                "time out",
            ),
            (
                LEASE_ENV,
                &["1ns", "1ms", "999ms"],
                "1s",
                "runs the operation again",
            ),
            (RETENTION_ENV, &["1ns", "500ms"], "1s", "lease"),
            (
                WAIT_IN_PROGRESS_ENV,
                &["1ns", "999us"],
                "1ms",
                "store round trip",
            ),
        ];
        for (variable, values, floor, why) in cases {
            for value in values {
                let error = read(&[(variable, value)]).unwrap_err();
                assert_eq!(error.variable, variable, "{value}");
                assert_eq!(error.value, *value);
                let text = error.to_string();
                assert!(text.contains(variable), "{text}");
                assert!(text.contains(&format!("{value:?}")), "{text}");
                assert!(text.contains(&format!("floor of {floor}")), "{text}");
                assert!(text.contains(why), "{text}");
            }
        }
    }

    #[test]
    fn values_at_their_floor_are_accepted() {
        let settings = read(&[
            (STORE_TIMEOUT_ENV, "1ms"),
            (LEASE_ENV, "1s"),
            (RETENTION_ENV, "1s"),
            (WAIT_IN_PROGRESS_ENV, "1ms"),
        ])
        .unwrap();
        assert_eq!(settings.store_timeout, Some(Duration::from_millis(1)));
        assert_eq!(settings.lease, Some(Duration::from_secs(1)));
        assert_eq!(settings.retention, Some(Duration::from_secs(1)));
        assert_eq!(settings.wait_in_progress, Some(Duration::from_millis(1)));
        // The engine takes them (the lease is longer than the store timeout here).
        let builder = idempotency_core::Idempotency::builder(NoStore).ignore_env();
        assert!(settings.apply(builder).build().is_ok());
    }

    #[test]
    fn policies_by_name() {
        for (value, policy) in [
            ("fail-closed", FailurePolicy::FailClosed),
            ("closed", FailurePolicy::FailClosed),
            ("FAIL-OPEN", FailurePolicy::FailOpen),
            ("open", FailurePolicy::FailOpen),
            ("fallback", FailurePolicy::Fallback),
            ("Fallback-Memory", FailurePolicy::Fallback),
        ] {
            assert_eq!(
                read(&[(FAILURE_POLICY_ENV, value)]).unwrap().failure_policy,
                Some(policy)
            );
        }
    }

    #[test]
    fn applied_settings_reach_the_engine_config() {
        let settings = read(&[
            (RETENTION_ENV, "2h"),
            (LEASE_ENV, "5s"),
            (STORE_TIMEOUT_ENV, "300ms"),
            (FAILURE_POLICY_ENV, "open"),
            (WAIT_IN_PROGRESS_ENV, "2s"),
        ])
        .unwrap();
        let builder = idempotency_core::Idempotency::builder(NoStore).ignore_env();
        let engine = settings.apply(builder).build().unwrap();
        let config = engine.config();
        assert_eq!(config.retention(), Duration::from_secs(7200));
        assert_eq!(config.lease(), Duration::from_secs(5));
        assert_eq!(config.store_timeout(), Duration::from_millis(300));
        assert_eq!(config.failure_policy(), FailurePolicy::FailOpen);
        let wait = config.in_progress_wait().unwrap();
        assert_eq!(wait.max_wait, Duration::from_secs(2));
        assert_eq!(wait.poll_interval, WAIT_POLL_INTERVAL);
        // Zero wait leaves waiting off.
        let off = read(&[(WAIT_IN_PROGRESS_ENV, "0")]).unwrap();
        let engine = off
            .apply(idempotency_core::Idempotency::builder(NoStore).ignore_env())
            .build()
            .unwrap();
        assert_eq!(engine.config().in_progress_wait(), None);
    }

    #[test]
    fn the_fallback_policy_comes_with_a_memory_fallback_store() {
        let settings = read(&[(FAILURE_POLICY_ENV, "fallback")]).unwrap();
        let builder = idempotency_core::Idempotency::builder(NoStore).ignore_env();
        let engine = settings.apply(builder).build().unwrap();
        assert_eq!(engine.config().failure_policy(), FailurePolicy::Fallback);
        assert_eq!(settings.to_string(), "IDEMPOTENCY_FAILURE_POLICY=fallback");
    }

    #[test]
    fn an_inconsistent_combination_is_refused_by_build() {
        let settings = read(&[(RETENTION_ENV, "10s"), (LEASE_ENV, "1m")]).unwrap();
        let builder = idempotency_core::Idempotency::builder(NoStore).ignore_env();
        assert!(settings.apply(builder).build().is_err());
    }

    /// A store the settings tests never call.
    #[derive(Debug)]
    struct NoStore;

    impl idempotency_core::IdempotencyStore for NoStore {
        async fn try_claim(
            &self,
            _: &idempotency_core::StoreKey,
            _: &idempotency_core::InProgress,
            _: Duration,
        ) -> Result<idempotency_core::Claim, idempotency_core::StoreError> {
            unreachable!("not called")
        }
        async fn complete(
            &self,
            _: &idempotency_core::StoreKey,
            _: &idempotency_core::LeaseToken,
            _: &idempotency_core::Completed,
            _: Duration,
        ) -> Result<idempotency_core::Fenced, idempotency_core::StoreError> {
            unreachable!("not called")
        }
        async fn release(
            &self,
            _: &idempotency_core::StoreKey,
            _: &idempotency_core::LeaseToken,
        ) -> Result<idempotency_core::Fenced, idempotency_core::StoreError> {
            unreachable!("not called")
        }
        async fn extend(
            &self,
            _: &idempotency_core::StoreKey,
            _: &idempotency_core::LeaseToken,
            _: Duration,
        ) -> Result<idempotency_core::Fenced, idempotency_core::StoreError> {
            unreachable!("not called")
        }
        async fn get(
            &self,
            _: &idempotency_core::StoreKey,
        ) -> Result<Option<idempotency_core::Record>, idempotency_core::StoreError> {
            unreachable!("not called")
        }
        async fn delete(
            &self,
            _: &idempotency_core::StoreKey,
        ) -> Result<bool, idempotency_core::StoreError> {
            unreachable!("not called")
        }
    }
}
