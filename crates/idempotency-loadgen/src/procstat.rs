//! CPU time and context switches of a process, from `/proc` (Linux): what an HTTP app costs
//! per request, whatever its latency.
//!
//! `/proc/<pid>/stat` fields 14 and 15 (`utime`, `stime`) count the whole thread group's CPU
//! time in clock ticks (`USER_HZ`, 100 per second on every Linux ABI: proc(5)); the context
//! switch counters of `/proc/<pid>/status` are per thread, so they are summed over
//! `/proc/<pid>/task/*/status`. Shared with the peers binary (`bench/peers`) by `#[path]`.

use std::path::Path;

/// Clock ticks per second in `/proc/<pid>/stat` (`USER_HZ`; proc(5): "sysconf(_SC_CLK_TCK)",
/// which is 100 on Linux whatever the kernel's `HZ`).
pub(crate) const TICKS_PER_SECOND: f64 = 100.0;

/// One reading of a process's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct Sample {
    /// User + system CPU time of every thread, in microseconds (10 ms resolution).
    pub(crate) cpu_us: f64,
    /// Voluntary + involuntary context switches of every live thread.
    pub(crate) context_switches: u64,
}

impl Sample {
    /// Read the counters of process `pid` (`None` when `/proc` cannot be read: not Linux, or
    /// the process is gone).
    pub(crate) fn read(pid: u32) -> Option<Self> {
        let base = Path::new("/proc").join(pid.to_string());
        let stat = std::fs::read_to_string(base.join("stat")).ok()?;
        let ticks = cpu_ticks(&stat)?;
        let mut context_switches = 0;
        for task in std::fs::read_dir(base.join("task")).ok()?.flatten() {
            // A thread that ended between the listing and the read counts for nothing.
            if let Ok(status) = std::fs::read_to_string(task.path().join("status")) {
                context_switches += context_switches_of(&status).unwrap_or(0);
            }
        }
        Some(Self {
            cpu_us: ticks as f64 * 1e6 / TICKS_PER_SECOND,
            context_switches,
        })
    }

    /// This process's counters (the peers binary's client-side figures).
    #[allow(dead_code, reason = "used by bench/peers, which includes this module")]
    pub(crate) fn read_self() -> Option<Self> {
        Self::read(std::process::id())
    }

    /// `(CPU µs, context switches)` between `self` and `later` (never negative: a thread that
    /// ended takes its switches with it).
    pub(crate) fn delta(&self, later: &Self) -> (f64, f64) {
        let cpu = (later.cpu_us - self.cpu_us).max(0.0);
        let switches = later.context_switches.saturating_sub(self.context_switches);
        (cpu, switches as f64)
    }

    /// `(CPU µs per operation, context switches per operation)` between `self` and `later`.
    #[allow(dead_code, reason = "used by bench/peers, which includes this module")]
    pub(crate) fn per_op(&self, later: &Self, ops: u64) -> Option<(f64, f64)> {
        if ops == 0 {
            return None;
        }
        let ops = ops as f64;
        let (cpu, switches) = self.delta(later);
        Some((cpu / ops, switches / ops))
    }
}

/// `utime + stime` in clock ticks from the text of `/proc/<pid>/stat`. The command name
/// (field 2) is in parentheses and may hold spaces or parentheses, so fields are counted from
/// the last `)`.
pub(crate) fn cpu_ticks(stat: &str) -> Option<u64> {
    let (_, rest) = stat.rsplit_once(')')?;
    // After the name: state (field 3) is the first; utime and stime are fields 14 and 15.
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// `voluntary_ctxt_switches + nonvoluntary_ctxt_switches` from the text of a `status` file.
pub(crate) fn context_switches_of(status: &str) -> Option<u64> {
    let field = |name: &str| -> Option<u64> {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|value| value.trim_start_matches(':').trim().parse().ok())
    };
    Some(field("voluntary_ctxt_switches")? + field("nonvoluntary_ctxt_switches")?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_from_the_last_parenthesis() {
        // A real line (kernel 6.x), with a name holding a space and a parenthesis.
        let stat = "4242 (tokio (rt) x) S 1 4242 4242 0 -1 4194560 1200 0 0 0 \
                    731 129 0 0 20 0 3 0 5555 12345678 1024 18446744073709551615";
        assert_eq!(cpu_ticks(stat), Some(731 + 129));
        assert_eq!(cpu_ticks("4242 (short"), None);
        assert_eq!(cpu_ticks("4242 (x) S 1 2"), None);
        assert_eq!(
            cpu_ticks("1 (x) S 1 1 1 0 -1 0 0 0 0 0 abc 1 0 0"),
            None,
            "not a number"
        );
    }

    #[test]
    fn context_switches_add_both_kinds() {
        let status = "Name:\tloadgen\nState:\tS (sleeping)\nThreads:\t3\n\
                      voluntary_ctxt_switches:\t150\nnonvoluntary_ctxt_switches:\t7\n";
        assert_eq!(context_switches_of(status), Some(157));
        assert_eq!(
            context_switches_of("Name:\tx\nvoluntary_ctxt_switches:\t1\n"),
            None
        );
    }

    #[test]
    fn per_operation_figures_from_two_samples() {
        let before = Sample {
            cpu_us: 10_000.0,
            context_switches: 100,
        };
        let after = Sample {
            cpu_us: 110_000.0,
            context_switches: 500,
        };
        assert_eq!(before.per_op(&after, 1000), Some((100.0, 0.4)));
        assert_eq!(before.delta(&after), (100_000.0, 400.0));
        assert_eq!(after.delta(&before), (0.0, 0.0));
        assert_eq!(before.per_op(&after, 0), None);
        // Counters never go back; a thread that ended cannot make the figure negative.
        assert_eq!(after.per_op(&before, 10), Some((0.0, 0.0)));
    }

    #[test]
    fn this_process_can_be_read_and_a_missing_one_cannot() {
        assert!(
            Sample::read_self().is_some(),
            "/proc/self is readable on Linux"
        );
        // Above the kernel's pid_max (at most 2^22).
        assert_eq!(Sample::read(u32::MAX), None);
    }
}
