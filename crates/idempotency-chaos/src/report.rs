//! The figures of a scenario, and `report.json` / `report.md` for a run.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::ChaosError;
use crate::client::Outcome;
use crate::plan::{Backend, Params, Policy, ScenarioSpec};

/// One line of a demo's execution journal (`DEMO_EXECUTION_LOG`).
#[derive(Debug, Clone, Deserialize)]
pub struct Execution {
    /// The process that ran the handler.
    pub pid: u32,
    /// The `Idempotency-Key` as sent.
    pub key: Option<String>,
    /// Unix milliseconds of the write.
    pub at: u64,
}

/// What a scenario observed, before counting.
#[derive(Debug)]
pub struct Observations {
    /// The scenario's keys.
    pub keys: Vec<String>,
    /// Two clients per key: key `i` is at `2 i` and `2 i + 1`.
    pub outcomes: Vec<Outcome>,
    /// One late retry per key.
    pub verify: Vec<Outcome>,
    /// Every journal line.
    pub executions: Vec<Execution>,
    /// Per key (same order as `keys`): committed executions read from the database, for the
    /// backends whose side effects are rows in the store's database (`None` otherwise).
    pub committed: Option<Vec<u64>>,
    /// Demo pids killed by the fault, with the kill time (Unix ms).
    pub killed: Vec<(u32, u64)>,
    /// The outage the fault caused.
    pub outage: Duration,
    /// The injector's log.
    pub events: Vec<String>,
    /// Injection failures and processes that exited on their own.
    pub errors: Vec<String>,
    /// Wall time of the scenario.
    pub wall: Duration,
}

/// The figures of one scenario.
#[derive(Debug, Clone, Serialize)]
pub struct ScenarioReport {
    /// The store.
    pub backend: Backend,
    /// The fault.
    pub fault: crate::plan::Fault,
    /// The failure policy passed to the demo.
    pub policy: Policy,
    /// Demo instances.
    pub instances: usize,
    /// Logical requests (keys).
    pub keys: usize,
    /// Client requests: two per key.
    pub requests: usize,
    /// HTTP attempts of those requests.
    pub attempts: u64,
    /// Handler executions for the scenario's keys, from the journals (late retries included; on
    /// `sql`, executions rolled back or killed before their commit too).
    pub executions: u64,
    /// Journal executions beyond the first per key, outside the crash window.
    pub duplicates: u64,
    /// Journal executions beyond the first per key whose key had an execution in the crash
    /// window.
    pub duplicates_crash_window: u64,
    /// `sql` only: executions whose write committed, from the database (each committed run of
    /// the upsert adds 1 to the product's `version`). What the side effects really are.
    pub committed_executions: Option<u64>,
    /// `sql` only: committed executions beyond the first per key, outside the crash window
    /// (the duplicates that count on `sql`; the journal's are runs that may have rolled back).
    pub committed_duplicates: Option<u64>,
    /// `sql` only: the same for keys with a journal execution in the crash window.
    pub committed_duplicates_crash_window: Option<u64>,
    /// `sql` only: keys with no committed execution at all (blocked by a killed handler's
    /// lease, or never answered).
    pub keys_without_commit: Option<u64>,
    /// `sql` only: keys that got a 2xx answer although nothing committed for them (a lost
    /// acknowledged write).
    pub acknowledged_without_commit: Option<u64>,
    /// Keys whose 2xx answers (both clients and the late retry) are not all identical, outside
    /// the crash window.
    pub divergent: u64,
    /// The same, for keys with an execution in the crash window.
    pub divergent_crash_window: u64,
    /// Requests without a final answer within outage + 5 s (never answered included).
    pub unanswered: u64,
    /// Requests that never got a final answer before the client gave up.
    pub never_answered: u64,
    /// The outage, milliseconds.
    pub outage_ms: u64,
    /// Median time to a final answer, milliseconds.
    pub p50_ms: Option<f64>,
    /// 99th percentile time to a final answer, milliseconds.
    pub p99_ms: Option<f64>,
    /// Final answers by status.
    pub final_statuses: BTreeMap<u16, u64>,
    /// Every answer (retries included) by status.
    pub answer_statuses: BTreeMap<u16, u64>,
    /// Attempts that ended in a connection error.
    pub connection_errors: u64,
    /// 5xx answers without an `application/problem+json` body.
    pub bare_5xx: u64,
    /// Attempts with no answer within the attempt timeout on an instance that was not killed.
    pub hangs: u64,
    /// Late retries answered as replays.
    pub late_replays: u64,
    /// Late retries that ran the handler again.
    pub late_reruns: u64,
    /// Up to five keys with more than one execution (for the journals in the scenario dir).
    pub duplicate_examples: Vec<String>,
    /// What the injector did.
    pub events: Vec<String>,
    /// Guarantees that failed (fail-closed rows only).
    pub violations: Vec<String>,
    /// Wall time, milliseconds.
    pub wall_ms: u64,
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Nearest-rank percentile of sorted samples.
fn percentile(sorted: &[Duration], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    let index = rank.clamp(1, sorted.len()) - 1;
    Some(sorted[index].as_secs_f64() * 1000.0)
}

impl ScenarioReport {
    /// Count `seen`.
    pub fn new(spec: ScenarioSpec, params: &Params, seen: Observations) -> Self {
        let index: HashMap<&str, usize> = seen
            .keys
            .iter()
            .enumerate()
            .map(|(i, k)| (k.as_str(), i))
            .collect();
        let mut per_key: Vec<Vec<&Execution>> = vec![Vec::new(); seen.keys.len()];
        for execution in &seen.executions {
            if let Some(&i) = execution.key.as_deref().and_then(|k| index.get(k)) {
                per_key[i].push(execution);
            }
        }
        // An execution is in the crash window when its process was killed before it could
        // complete the record: within DEMO_AFTER_WRITE_MS (+1 s of slack) of the write on a
        // shared store; at any time on the per-process memory store, whose records die with it.
        let window = millis(params.after_write) + 1000;
        let in_crash_window = |e: &Execution| {
            seen.killed.iter().any(|&(pid, killed_at)| {
                pid == e.pid
                    && killed_at >= e.at
                    && (spec.backend == Backend::Memory || killed_at - e.at <= window)
            })
        };
        let mut report = Self {
            backend: spec.backend,
            fault: spec.fault,
            policy: spec.policy,
            instances: spec.backend.instances(),
            keys: seen.keys.len(),
            requests: seen.outcomes.len(),
            attempts: seen.outcomes.iter().map(|o| u64::from(o.attempts)).sum(),
            executions: 0,
            duplicates: 0,
            duplicates_crash_window: 0,
            committed_executions: None,
            committed_duplicates: None,
            committed_duplicates_crash_window: None,
            keys_without_commit: None,
            acknowledged_without_commit: None,
            divergent: 0,
            divergent_crash_window: 0,
            unanswered: 0,
            never_answered: 0,
            outage_ms: millis(seen.outage),
            p50_ms: None,
            p99_ms: None,
            final_statuses: BTreeMap::new(),
            answer_statuses: BTreeMap::new(),
            connection_errors: 0,
            bare_5xx: 0,
            hangs: 0,
            late_replays: 0,
            late_reruns: 0,
            duplicate_examples: Vec::new(),
            events: seen.events.clone(),
            violations: Vec::new(),
            wall_ms: millis(seen.wall),
        };
        for (i, executions) in per_key.iter().enumerate() {
            let count = executions.len() as u64;
            report.executions += count;
            let crash = executions.iter().any(|e| in_crash_window(e));
            let extra = count.saturating_sub(1);
            if crash {
                report.duplicates_crash_window += extra;
            } else {
                report.duplicates += extra;
            }
            let committed = seen.committed.as_ref().and_then(|c| c.get(i).copied());
            let committed_extra = committed.map_or(0, |c| c.saturating_sub(1));
            if let Some(committed) = committed {
                let add = |field: &mut Option<u64>, n: u64| *field = Some(field.unwrap_or(0) + n);
                add(&mut report.committed_executions, committed);
                add(&mut report.committed_duplicates, 0);
                add(&mut report.committed_duplicates_crash_window, 0);
                add(&mut report.keys_without_commit, u64::from(committed == 0));
                add(&mut report.acknowledged_without_commit, 0);
                if crash {
                    add(
                        &mut report.committed_duplicates_crash_window,
                        committed_extra,
                    );
                } else {
                    add(&mut report.committed_duplicates, committed_extra);
                }
                let acknowledged = [
                    seen.outcomes.get(2 * i),
                    seen.outcomes.get(2 * i + 1),
                    seen.verify.get(i),
                ]
                .into_iter()
                .flatten()
                .any(|o| o.status.is_some_and(|s| (200..300).contains(&s)));
                if acknowledged && committed == 0 {
                    add(&mut report.acknowledged_without_commit, 1);
                }
            }
            if (extra > 0 || committed_extra > 0) && report.duplicate_examples.len() < 5 {
                report.duplicate_examples.push(seen.keys[i].clone());
            }
            let answers: BTreeSet<(u16, &Bytes)> = [
                seen.outcomes.get(2 * i),
                seen.outcomes.get(2 * i + 1),
                seen.verify.get(i),
            ]
            .into_iter()
            .flatten()
            .filter_map(|o| {
                o.status
                    .filter(|s| (200..300).contains(s))
                    .map(|s| (s, &o.body))
            })
            .collect();
            if answers.len() > 1 {
                if crash {
                    report.divergent_crash_window += 1;
                } else {
                    report.divergent += 1;
                }
            }
        }
        let threshold = seen.outage + Duration::from_secs(5);
        let mut times = Vec::new();
        for outcome in seen.outcomes.iter().chain(&seen.verify) {
            for status in &outcome.statuses {
                *report.answer_statuses.entry(*status).or_default() += 1;
            }
            report.connection_errors += u64::from(outcome.connection_errors);
            report.bare_5xx += u64::from(outcome.bare_5xx);
            report.hangs += u64::from(outcome.hangs);
        }
        for outcome in &seen.outcomes {
            match (outcome.status, outcome.time_to_final) {
                (Some(status), Some(time)) => {
                    *report.final_statuses.entry(status).or_default() += 1;
                    times.push(time);
                    if time > threshold {
                        report.unanswered += 1;
                    }
                }
                _ => {
                    report.unanswered += 1;
                    report.never_answered += 1;
                }
            }
        }
        times.sort();
        report.p50_ms = percentile(&times, 50.0);
        report.p99_ms = percentile(&times, 99.0);
        for outcome in &seen.verify {
            if outcome.status.is_some_and(|s| (200..300).contains(&s)) {
                if outcome.replayed {
                    report.late_replays += 1;
                } else {
                    report.late_reruns += 1;
                }
            }
        }
        if spec.policy == Policy::Closed {
            report.violations = report.check(&seen.errors);
        } else {
            report.violations = seen.errors.clone();
        }
        report
    }

    /// The guarantees that must hold today (fail-closed): see the crate docs.
    fn check(&self, errors: &[String]) -> Vec<String> {
        let mut violations: Vec<String> = errors.to_vec();
        if self.divergent > 0 {
            violations.push(format!(
                "{} key(s) got different 2xx answers outside the crash window",
                self.divergent
            ));
        }
        // Where the side effects are committed rows, those are what counts: a journal line
        // whose transaction rolled back (claim lost, commit failed, process killed) left nothing.
        match self.committed_duplicates {
            Some(committed) if committed > 0 => violations.push(format!(
                "{committed} duplicate committed execution(s) outside the crash window"
            )),
            Some(_) => {}
            None if self.duplicates > 0 => violations.push(format!(
                "{} duplicate execution(s) outside the crash window",
                self.duplicates
            )),
            None => {}
        }
        if let Some(lost) = self.acknowledged_without_commit.filter(|n| *n > 0) {
            violations.push(format!(
                "{lost} key(s) answered 2xx although nothing committed for them"
            ));
        }
        if self.bare_5xx > 0 {
            violations.push(format!(
                "{} 5xx answer(s) without an application/problem+json body",
                self.bare_5xx
            ));
        }
        if self.hangs > 0 {
            violations.push(format!(
                "{} attempt(s) got no answer at all within the attempt timeout",
                self.hangs
            ));
        }
        let refused: u64 = self
            .final_statuses
            .iter()
            .filter(|(s, _)| !(200..300).contains(*s))
            .map(|(_, n)| n)
            .sum();
        if refused > 0 {
            violations.push(format!(
                "{refused} request(s) ended in a 4xx although every retry was identical: {:?}",
                self.final_statuses
            ));
        }
        violations
    }

    /// `backend fault policy`.
    pub fn label(&self) -> String {
        format!("{} {} {}", self.backend, self.fault, self.policy)
    }
}

/// A whole run.
#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    /// `quick` or `full`.
    pub variant: String,
    /// The seed of the schedule.
    pub seed: u64,
    /// The sizes and times.
    pub params: Params,
    /// Logical CPUs and the 1-minute load average at the start (Linux).
    pub machine: String,
    /// Every scenario, in run order.
    pub scenarios: Vec<ScenarioReport>,
    /// Scenarios that could not run, with the reason.
    pub failed_to_run: Vec<String>,
}

impl RunReport {
    /// Every violation, prefixed with its scenario.
    pub fn violations(&self) -> Vec<String> {
        let mut all: Vec<String> = self
            .scenarios
            .iter()
            .flat_map(|s| {
                s.violations
                    .iter()
                    .map(move |v| format!("{}: {v}", s.label()))
            })
            .collect();
        all.extend(self.failed_to_run.iter().cloned());
        all
    }

    /// Write `report.json` and `report.md` into `dir`.
    ///
    /// # Errors
    /// I/O errors.
    pub fn write(&self, dir: &Path) -> Result<(), ChaosError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| ChaosError::io(format!("creating {}", dir.display()), e))?;
        let json = serde_json::to_string_pretty(self)
            .map_err(|e| ChaosError::io("encoding report.json", e.into()))?;
        std::fs::write(dir.join("report.json"), json)
            .map_err(|e| ChaosError::io("writing report.json", e))?;
        std::fs::write(dir.join("report.md"), self.markdown())
            .map_err(|e| ChaosError::io("writing report.md", e))?;
        Ok(())
    }

    /// The table (one row per scenario; the crash window on its own row below the scenario's).
    pub fn markdown(&self) -> String {
        let mut md = String::new();
        let p = &self.params;
        let _ = writeln!(
            md,
            "# Chaos run ({}, seed {})\n\n{}; {} keys per scenario over {:.1} s, each sent by two \
             retrying clients at once; DEMO_WORK_MS={}, DEMO_AFTER_WRITE_MS={}; outage {:.1} s; \
             \"unanswered\" = no final answer within outage + 5 s. The demo's own defaults \
             otherwise ({}store timeout, 409 at once for a duplicate in progress). On `sql` \
             rows, executions and duplicates are **committed** writes read from the database \
             (each committed run of the upsert adds 1 to the product's `version`), followed by \
             the journal's handler runs in parentheses (runs rolled back or killed before their \
             commit included); on the other rows they are the journal's.\n",
            self.variant,
            self.seed,
            self.machine,
            p.keys,
            p.traffic.as_secs_f64(),
            p.work.as_millis(),
            p.after_write.as_millis(),
            p.outage.as_secs_f64(),
            p.lease.as_ref().map_or_else(
                || "lease, ".to_owned(),
                |l| format!("but IDEMPOTENCY_LEASE={l}; ")
            ),
        );
        md.push_str(
            "| backend | fault | policy | requests | executions | duplicates | divergent 2xx | \
             unanswered (never) | p50 / p99 to final answer | late retry: replay / re-run |\n\
             |---|---|---|---|---|---|---|---|---|---|\n",
        );
        let ms = |v: Option<f64>| v.map_or("–".to_owned(), |v| format!("{v:.0} ms"));
        let counted = |committed: Option<u64>, journal: u64| match committed {
            Some(committed) => format!("{committed} ({journal} runs)"),
            None => journal.to_string(),
        };
        for s in &self.scenarios {
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} | {} | {} | {} ({}) | {} / {} | {} / {} |",
                s.backend,
                s.fault,
                s.policy,
                s.requests,
                counted(s.committed_executions, s.executions),
                counted(s.committed_duplicates, s.duplicates),
                s.divergent,
                s.unanswered,
                s.never_answered,
                ms(s.p50_ms),
                ms(s.p99_ms),
                s.late_replays,
                s.late_reruns,
            );
            if s.fault.kills_demo() {
                let _ = writeln!(
                    md,
                    "| ↳ crash window{} | | | | | {} | {} | | | |",
                    match s.backend {
                        Backend::Memory => " (memory store dies with the process)",
                        Backend::Sql =>
                            " (killed inside the transaction: write and completion roll back together)",
                        _ => " (between the write and the completion)",
                    },
                    counted(
                        s.committed_duplicates_crash_window,
                        s.duplicates_crash_window
                    ),
                    s.divergent_crash_window,
                );
            }
        }
        let violations = self.violations();
        if violations.is_empty() {
            md.push_str("\nGuarantees checked on fail-closed rows (0 divergent 2xx and 0 duplicate executions outside the crash window — committed ones on `sql` —, no 2xx without a committed write on `sql`, no 5xx without a problem or error-envelope body, no hung attempt, no 4xx final answer): all held.\n");
        } else {
            md.push_str("\nGuarantees that failed:\n");
            for v in violations {
                let _ = writeln!(md, "- {v}");
            }
        }
        md
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::Fault;

    fn answered(status: u16, body: &'static str, ms: u64) -> Outcome {
        Outcome {
            status: Some(status),
            body: Bytes::from_static(body.as_bytes()),
            time_to_final: Some(Duration::from_millis(ms)),
            attempts: 1,
            statuses: vec![status],
            ..Outcome::default()
        }
    }

    fn execution(pid: u32, key: &str, at: u64) -> Execution {
        Execution {
            pid,
            key: Some(key.to_owned()),
            at,
        }
    }

    #[test]
    fn duplicates_and_divergence_are_split_by_the_crash_window() {
        let spec = ScenarioSpec {
            backend: Backend::Redis,
            fault: Fault::DemoKill,
            policy: Policy::Closed,
        };
        let params = Params::quick();
        let seen = Observations {
            keys: vec!["a".into(), "b".into(), "c".into()],
            outcomes: vec![
                answered(201, "x", 10),
                answered(201, "x", 20),
                // b: a duplicate in the crash window (pid 1 killed 100 ms after its write)
                answered(201, "y1", 30),
                answered(201, "y2", 40),
                // c: a duplicate outside it, and a client that never got an answer
                answered(201, "z1", 50),
                Outcome::default(),
            ],
            verify: vec![
                Outcome {
                    replayed: true,
                    ..answered(201, "x", 1)
                },
                answered(201, "y2", 1),
                answered(201, "z2", 1),
            ],
            committed: None,
            executions: vec![
                execution(2, "a", 1_000),
                execution(1, "b", 5_000),
                execution(2, "b", 7_000),
                execution(2, "c", 8_000),
                execution(2, "c", 9_000),
            ],
            killed: vec![(1, 5_100)],
            outage: Duration::from_secs(1),
            events: Vec::new(),
            errors: Vec::new(),
            wall: Duration::from_secs(3),
        };
        let report = ScenarioReport::new(spec, &params, seen);
        assert_eq!(report.executions, 5);
        assert_eq!(report.duplicates_crash_window, 1);
        assert_eq!(report.duplicates, 1);
        assert_eq!(report.divergent_crash_window, 1);
        assert_eq!(report.divergent, 1);
        assert_eq!(report.unanswered, 1);
        assert_eq!(report.never_answered, 1);
        assert_eq!(report.late_replays, 1);
        assert_eq!(report.late_reruns, 2);
        assert_eq!(report.p50_ms, Some(30.0));
        // Key c ran twice and answered twice differently outside the crash window; key b's
        // duplicate is in the crash window and is not a violation.
        assert_eq!(report.violations.len(), 2, "{:?}", report.violations);
        assert!(report.violations[0].contains("different 2xx"));
        assert!(report.violations[1].contains("1 duplicate execution(s) outside"));
    }

    #[test]
    fn on_sql_duplicates_are_counted_from_committed_rows() {
        let spec = ScenarioSpec {
            backend: Backend::Sql,
            fault: Fault::StoreKill,
            policy: Policy::Closed,
        };
        let seen = Observations {
            keys: vec!["a".into(), "b".into(), "c".into()],
            outcomes: vec![
                answered(201, "x", 10),
                answered(201, "x", 20),
                answered(201, "y", 30),
                answered(201, "y", 40),
                answered(201, "z", 50),
                answered(201, "z", 60),
            ],
            verify: vec![
                answered(201, "x", 1),
                answered(201, "y", 1),
                answered(201, "z", 1),
            ],
            // a ran twice, one run rolled back (1 committed); b ran twice and both committed;
            // c was answered although nothing committed.
            executions: vec![
                execution(1, "a", 1_000),
                execution(2, "a", 2_000),
                execution(1, "b", 3_000),
                execution(2, "b", 4_000),
                execution(1, "c", 5_000),
            ],
            committed: Some(vec![1, 2, 0]),
            killed: Vec::new(),
            outage: Duration::from_secs(1),
            events: Vec::new(),
            errors: Vec::new(),
            wall: Duration::from_secs(3),
        };
        let report = ScenarioReport::new(spec, &Params::quick(), seen);
        assert_eq!(report.executions, 5);
        assert_eq!(report.duplicates, 2, "journal: a and b ran twice");
        assert_eq!(report.committed_executions, Some(3));
        assert_eq!(
            report.committed_duplicates,
            Some(1),
            "only b committed twice"
        );
        assert_eq!(report.committed_duplicates_crash_window, Some(0));
        assert_eq!(report.keys_without_commit, Some(1));
        assert_eq!(report.acknowledged_without_commit, Some(1));
        assert_eq!(report.violations.len(), 2, "{:?}", report.violations);
        assert!(report.violations[0].contains("1 duplicate committed execution(s)"));
        assert!(report.violations[1].contains("answered 2xx although nothing committed"));
        let run = RunReport {
            variant: "quick".into(),
            seed: 1,
            params: Params::quick(),
            machine: String::new(),
            scenarios: vec![report],
            failed_to_run: Vec::new(),
        };
        assert!(
            run.markdown()
                .contains("| sql | store-kill | closed | 6 | 3 (5 runs) | 1 (2 runs) |")
        );
    }

    #[test]
    fn nearest_rank_percentiles() {
        let samples: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile(&samples, 50.0), Some(50.0));
        assert_eq!(percentile(&samples, 99.0), Some(99.0));
        assert_eq!(percentile(&[], 50.0), None);
    }
}
