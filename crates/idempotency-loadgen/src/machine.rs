//! What the run was measured on: cores, CPU model, load, date, commit.

use std::process::Command;
use std::time::SystemTime;

use serde::Serialize;

/// The machine and the code.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Machine {
    pub(crate) cores: usize,
    pub(crate) cpu_model: String,
    pub(crate) os: String,
    /// `/proc/loadavg`'s 1-minute figure before the first cell: a noisy machine shows here.
    pub(crate) load_average_start: Option<f64>,
    pub(crate) load_average_end: Option<f64>,
}

impl Machine {
    pub(crate) fn probe() -> Self {
        Self {
            cores: std::thread::available_parallelism().map_or(1, usize::from),
            cpu_model: cpu_model().unwrap_or_else(|| "unknown".to_owned()),
            os: format!("{} {}", std::env::consts::OS, std::env::consts::ARCH),
            load_average_start: load_average(),
            load_average_end: None,
        }
    }
}

fn cpu_model() -> Option<String> {
    let text = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    text.lines()
        .find(|line| line.starts_with("model name"))
        .and_then(|line| line.split_once(':'))
        .map(|(_, model)| model.trim().to_owned())
}

/// The 1-minute load average, if `/proc/loadavg` is readable.
pub(crate) fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// `git rev-parse HEAD`, with `-dirty` when the work tree has changes.
pub(crate) fn git_commit() -> String {
    let run = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
    };
    match run(&["rev-parse", "HEAD"]) {
        Some(commit) => match run(&["status", "--porcelain", "--untracked-files=no"]) {
            Some(status) if !status.is_empty() => format!("{commit}-dirty"),
            _ => commit,
        },
        None => "unknown".to_owned(),
    }
}

/// Now, as `YYYY-MM-DDTHH:MM:SSZ` (RFC 3339 in UTC, whole seconds; `humantime` does the
/// calendar).
pub(crate) fn utc_now() -> String {
    rfc3339_seconds(SystemTime::now())
}

fn rfc3339_seconds(at: SystemTime) -> String {
    humantime::format_rfc3339_seconds(at).to_string()
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::rfc3339_seconds;

    #[test]
    fn dates_in_utc_to_the_second() {
        let at = |secs: u64| rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(secs));
        assert_eq!(at(0), "1970-01-01T00:00:00Z");
        assert_eq!(at(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(at(1_772_236_799), "2026-02-27T23:59:59Z");
        // Fractions are cut, not rounded.
        let later = UNIX_EPOCH + Duration::from_millis(1_704_067_200_999);
        assert_eq!(rfc3339_seconds(later), "2024-01-01T00:00:00Z");
    }
}
