//! `report.md`: the table, the ratios against same-run baselines, and the targets.

use std::fmt::Write as _;

use super::data::{BUDGET_US, Report, Row, human_rate, human_us};

/// Slowdown of `ours` against `base`: (p50 ratio, throughput ratio), both "× slower" (1.00 =
/// as fast; above 1 = ours is slower).
fn ratios(ours: &Row, base: &Row) -> (f64, f64) {
    let p50 = ours.p50_us / base.p50_us.max(0.001);
    let throughput = base.ops_per_sec / ours.ops_per_sec.max(1.0);
    (p50, throughput)
}

fn verdict(ok: bool) -> &'static str {
    if ok { "met" } else { "**missed**" }
}

pub(super) fn render(report: &Report) -> String {
    let mut out = String::new();
    let m = &report.machine;
    let load = |l: Option<f64>| l.map_or_else(|| "?".to_owned(), |l| format!("{l:.2}"));
    let _ = writeln!(out, "# Benchmark report ({} run)\n", report.mode);
    let _ = writeln!(
        out,
        "- machine: {} cores, {} ({}); load average {} at start, {} at end\n\
         - date: {}; commit `{}`\n\
         - servers: Redis {} (single), Redis {} (3-master cluster), Postgres {}, {}, {}\n\
         - each cell: {:.1} s warm-up, then {:.1} s measured ({:.1} s for in-process rows); \
         closed loop, one operation after another per task; whole run {:.0} s\n",
        m.cores,
        m.cpu_model,
        m.os,
        load(m.load_average_start),
        load(m.load_average_end),
        report.date,
        report.git_commit,
        report.servers.redis,
        report.servers.redis_cluster,
        report.servers.postgres,
        report.servers.kv_rest_gateway,
        report.servers.http_server,
        report.warmup_seconds,
        report.measure_seconds,
        report.in_process_measure_seconds,
        report.duration_seconds,
    );
    let _ = writeln!(
        out,
        "Absolute figures vary with the machine and its load; read the ratios against the \
         baselines measured in the same run.\n"
    );
    summary(&mut out, report);
    ratio_tables(&mut out, report);
    results(&mut out, report);
    targets(&mut out, report);
    out
}

/// One line per backend and scenario: p50 / p99 / ops/s at each concurrency.
fn summary(out: &mut String, report: &Report) {
    let concurrencies = report.concurrencies();
    let _ = writeln!(out, "## Summary (p50 / p99 / ops/s)\n");
    let mut header = "| backend | scenario |".to_owned();
    let mut rule = "|---|---|".to_owned();
    for c in &concurrencies {
        let _ = write!(header, " {c} task{} |", if *c == 1 { "" } else { "s" });
        rule.push_str("---|");
    }
    let _ = writeln!(out, "{header}\n{rule}");
    let mut seen: Vec<(&str, &str)> = Vec::new();
    for r in &report.rows {
        if !seen.contains(&(r.backend, r.scenario)) {
            seen.push((r.backend, r.scenario));
        }
    }
    seen.sort_by_key(|(_, s)| ["fresh", "replay", "conflict"].iter().position(|x| x == s));
    for (backend, scenario) in seen {
        let _ = write!(out, "| {backend} | {scenario} |");
        for c in &concurrencies {
            match report.find(backend, scenario, *c) {
                Some(r) => {
                    let _ = write!(
                        out,
                        " {} / {} / {} |",
                        human_us(r.p50_us),
                        human_us(r.p99_us),
                        human_rate(r.ops_per_sec)
                    );
                }
                None => out.push_str(" – |"),
            }
        }
        out.push('\n');
    }
    let _ = writeln!(out);
}

fn results(out: &mut String, report: &Report) {
    let _ = writeln!(out, "## All figures\n");
    let _ = writeln!(
        out,
        "| backend | scenario | tasks | ops | p50 | p95 | p99 | p99.9 | ops/s | p95 < 10 ms |\n\
         |---|---|---:|---:|---:|---:|---:|---:|---:|---|"
    );
    for r in &report.rows {
        let errors = if r.errors > 0 {
            format!(" ({} errors)", r.errors)
        } else {
            String::new()
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {}{} | {} | {} | {} | {} | {} | {} |",
            r.backend,
            r.scenario,
            r.concurrency,
            r.ops,
            errors,
            human_us(r.p50_us),
            human_us(r.p95_us),
            human_us(r.p99_us),
            human_us(r.p999_us),
            human_rate(r.ops_per_sec),
            if r.p95_us < BUDGET_US {
                "yes"
            } else {
                "**no**"
            },
        );
    }
    let _ = writeln!(out);
}

/// `(ours, baseline, scenario of the baseline)` pairs for one comparison.
fn pairs<'a>(
    report: &'a Report,
    ours: &str,
    base: &str,
) -> Vec<(&'static str, usize, &'a Row, &'a Row)> {
    let mut found = Vec::new();
    for scenario in ["fresh", "replay", "conflict"] {
        for c in report.concurrencies() {
            if let (Some(o), Some(b)) = (
                report.find(ours, scenario, c),
                report.find(base, scenario, c),
            ) {
                found.push((scenario, c, o, b));
            }
        }
    }
    found
}

fn ratio_tables(out: &mut String, report: &Report) {
    let _ = writeln!(
        out,
        "## Ratios against same-run baselines\n\n\
         `p50 ×` is ours / baseline; `throughput ×` is baseline ops/s / ours (both: 1.00 = as \
         fast, above 1 = ours is slower). `raw-redis` sends the same commands as `RedisStore` \
         with the plain `redis` crate (fresh: `SET NX PX GET` + `EVALSHA`; replay and conflict: \
         one `SET NX PX GET`); `raw-postgres` sends `PostgresStore`'s own statements with \
         plain `sqlx` (fresh: the claim upsert + the fenced completion; replay and conflict: the \
         claim upsert); `bare-axum` is the same handler without the layer.\n"
    );
    for (ours, base, limit) in [
        ("redis", "raw-redis", 1.10),
        ("redis-cluster", "raw-redis", f64::INFINITY),
        ("kv-rest", "raw-redis", f64::INFINITY),
        ("postgres", "raw-postgres", 1.10),
        ("sqlite", "raw-postgres", f64::INFINITY),
        ("http-memory", "bare-axum", 1.30),
        ("http-redis", "bare-axum", f64::INFINITY),
    ] {
        let found = pairs(report, ours, base);
        if found.is_empty() {
            continue;
        }
        let target = if limit.is_finite() {
            format!("target ≤ {limit:.2}×")
        } else {
            "for information".to_owned()
        };
        let _ = writeln!(
            out,
            "### {ours} / {base} ({target})\n\n\
             | scenario | tasks | p50 {ours} | p50 {base} | p50 × | ops/s {ours} | ops/s {base} | throughput × |\n\
             |---|---:|---:|---:|---:|---:|---:|---:|"
        );
        for (scenario, c, o, b) in found {
            let (p50, tput) = ratios(o, b);
            let mark = |x: f64| {
                if x <= limit {
                    format!("{x:.2}")
                } else {
                    format!("**{x:.2}**")
                }
            };
            let _ = writeln!(
                out,
                "| {scenario} | {c} | {} | {} | {} | {} | {} | {} |",
                human_us(o.p50_us),
                human_us(b.p50_us),
                mark(p50),
                human_rate(o.ops_per_sec),
                human_rate(b.ops_per_sec),
                mark(tput),
            );
        }
        let _ = writeln!(out);
    }
}

fn targets(out: &mut String, report: &Report) {
    let _ = writeln!(out, "## Targets\n");
    for (scenario, label) in [
        (
            "fresh",
            "Redis `fresh` within 1.10× of `raw-redis` (p50 and throughput)",
        ),
        (
            "replay",
            "Redis `replay` within 1.10× of one raw command (p50 and throughput)",
        ),
    ] {
        let found: Vec<_> = pairs(report, "redis", "raw-redis")
            .into_iter()
            .filter(|(s, ..)| *s == scenario)
            .collect();
        if found.is_empty() {
            continue;
        }
        let detail: Vec<String> = found
            .iter()
            .map(|(_, c, o, b)| {
                let (p50, tput) = ratios(o, b);
                format!("{c} tasks: {p50:.2}× / {tput:.2}×")
            })
            .collect();
        let ok = found.iter().all(|(_, _, o, b)| {
            let (p50, tput) = ratios(o, b);
            p50 <= 1.10 && tput <= 1.10
        });
        let _ = writeln!(out, "- {label}: {} ({})", verdict(ok), detail.join("; "));
    }
    let pg: Vec<_> = pairs(report, "postgres", "raw-postgres")
        .into_iter()
        .filter(|(s, ..)| *s == "fresh")
        .collect();
    if !pg.is_empty() {
        let detail: Vec<String> = pg
            .iter()
            .map(|(_, c, o, b)| {
                let (p50, tput) = ratios(o, b);
                format!("{c} tasks: {p50:.2}× / {tput:.2}×")
            })
            .collect();
        let ok = pg.iter().all(|(_, _, o, b)| {
            let (p50, tput) = ratios(o, b);
            p50 <= 1.10 && tput <= 1.10
        });
        let _ = writeln!(
            out,
            "- Postgres `fresh` within 1.10× of `raw-postgres` (p50 and throughput): {} ({}); \
             replay is one statement (the claim) and a transactional completion adds one \
             statement to the application's transaction, by construction",
            verdict(ok),
            detail.join("; ")
        );
    }
    let kv: Vec<&Row> = report
        .rows
        .iter()
        .filter(|r| r.backend == "kv-rest" && r.concurrency == 16)
        .collect();
    if !kv.is_empty() {
        let ok = kv.iter().all(|r| r.p99_us < 5000.0);
        let detail: Vec<String> = kv
            .iter()
            .map(|r| format!("{} {}", r.scenario, human_us(r.p99_us)))
            .collect();
        let _ = writeln!(
            out,
            "- `kv-rest` p99 under 5 ms at 16 tasks: {} ({})",
            verdict(ok),
            detail.join(", ")
        );
    }
    if let Some(store) = report.find("memory-store", "fresh", 1) {
        let engine = report
            .find("memory", "fresh", 1)
            .map_or_else(String::new, |e| {
                format!(
                    "; engine-level `memory` fresh: {}/s",
                    human_rate(e.ops_per_sec)
                )
            });
        let _ = writeln!(
            out,
            "- memory `fresh` ≥ 1 M ops/s on one core (store level, 1 task): {} ({}/s{engine})",
            verdict(store.ops_per_sec >= 1e6),
            human_rate(store.ops_per_sec),
        );
    }
    let http = pairs(report, "http-memory", "bare-axum");
    if !http.is_empty() {
        let worst = http
            .iter()
            .map(|(_, _, o, b)| {
                let (p50, tput) = ratios(o, b);
                p50.max(tput)
            })
            .fold(0.0_f64, f64::max);
        let _ = writeln!(
            out,
            "- HTTP layer on memory within 1.3× of `bare-axum`: {} (worst ratio {worst:.2}×)",
            verdict(worst <= 1.30)
        );
    }
    let over: Vec<String> = report
        .rows
        .iter()
        .filter(|r| r.p95_us >= BUDGET_US)
        .map(|r| format!("{} {} {}", r.backend, r.scenario, r.concurrency))
        .collect();
    let _ = writeln!(
        out,
        "- p95 under the 10 ms budget: {} rows of {}{}",
        report.rows.len() - over.len(),
        report.rows.len(),
        if over.is_empty() {
            String::new()
        } else {
            format!(" (over: {})", over.join(", "))
        }
    );
    let errors: u64 = report.rows.iter().map(|r| r.errors).sum();
    if errors > 0 {
        let _ = writeln!(
            out,
            "- **{errors} operations got an unexpected answer** (see the table)"
        );
    }
}
