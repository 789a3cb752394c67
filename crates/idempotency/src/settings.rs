//! Engine settings from the environment, so operators can tune a deployed service without a code
//! change (and test retention with a short value in development, as the production checklist
//! asks).
//!
//! | variable | meaning | value |
//! |---|---|---|
//! | `IDEMPOTENCY_RETENTION` | how long completed outcomes are replayed | a duration: `24h`, `30m` |
//! | `IDEMPOTENCY_LEASE` | how long a claim holds a key if its owner dies | a duration: `60s` |
//! | `IDEMPOTENCY_STORE_TIMEOUT` | time budget of one store operation | a duration: `1500ms` |
//! | `IDEMPOTENCY_FAILURE_POLICY` | what happens when the store fails | `fail-closed` (or `closed`), `fail-open` (or `open`), `fallback` (or `fallback-memory`: a per-process memory store protects requests during an outage; feature `memory`) |
//! | `IDEMPOTENCY_WAIT_IN_PROGRESS` | how long a duplicate waits for the first attempt before 409 | a duration; `0` answers at once |
//!
//! Durations are read by [`humantime`]: a number followed by a unit (`ms`, `s`, `m`, `h`, `d`),
//! several parts allowed (`1h 30m`). Unset or empty variables keep the engine's defaults. A value
//! that cannot be read is an error naming the variable, so a typo stops start-up instead of
//! silently running with a default.

use std::fmt;
use std::time::Duration;

use idempotency_core::{FailurePolicy, IdempotencyBuilder};
use thiserror::Error;

/// `IDEMPOTENCY_RETENTION`: how long completed outcomes are replayed.
pub const RETENTION_ENV: &str = "IDEMPOTENCY_RETENTION";
/// `IDEMPOTENCY_LEASE`: how long a claim holds its key if its owner dies.
pub const LEASE_ENV: &str = "IDEMPOTENCY_LEASE";
/// `IDEMPOTENCY_STORE_TIMEOUT`: time budget of one store operation.
pub const STORE_TIMEOUT_ENV: &str = "IDEMPOTENCY_STORE_TIMEOUT";
/// `IDEMPOTENCY_FAILURE_POLICY`: `fail-closed`, `fail-open` or `fallback`.
pub const FAILURE_POLICY_ENV: &str = "IDEMPOTENCY_FAILURE_POLICY";
/// `IDEMPOTENCY_WAIT_IN_PROGRESS`: how long a duplicate waits for the first attempt (`0`: not at
/// all).
pub const WAIT_IN_PROGRESS_ENV: &str = "IDEMPOTENCY_WAIT_IN_PROGRESS";

/// How often a waiting duplicate looks at the store again.
const WAIT_POLL_INTERVAL: Duration = Duration::from_millis(20);

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
            retention: read(RETENTION_ENV).map(positive_duration).transpose()?,
            lease: read(LEASE_ENV).map(positive_duration).transpose()?,
            store_timeout: read(STORE_TIMEOUT_ENV).map(positive_duration).transpose()?,
            failure_policy: read(FAILURE_POLICY_ENV).map(policy).transpose()?,
            wait_in_progress: read(WAIT_IN_PROGRESS_ENV).map(duration).transpose()?,
        })
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
    humantime::parse_duration(&value).map_err(|e| SettingsError {
        variable,
        value: value.clone(),
        reason: format!("{e}; expected a duration such as `24h`, `30s` or `250ms`"),
    })
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

    #[idempotency_core::async_trait]
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
