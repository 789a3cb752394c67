//! `report.md`: the table, the ratios against same-run baselines, and the targets.

use std::fmt::Write as _;

use super::data::{BASELINE_PAIRS, BUDGET_US, PEER_PAIRS, Report, Row, human_rate, human_us};
use crate::rounds::spread;

/// Slowdown of `ours` against `base`: (p50 ratio, throughput ratio), both "× slower" (1.00 =
/// as fast; above 1 = ours is slower).
fn ratios(ours: &Row, base: &Row) -> (f64, f64) {
    let p50 = ours.p50_us / base.p50_us.max(0.001);
    let throughput = base.ops_per_sec / ours.ops_per_sec.max(1.0);
    (p50, throughput)
}

pub(super) fn render(report: &Report) -> String {
    let mut out = String::new();
    let m = &report.machine;
    let load = |l: Option<f64>| l.map_or_else(|| "?".to_owned(), |l| format!("{l:.2}"));
    let _ = writeln!(out, "# Benchmark report ({} run)\n", report.mode);
    for note in &report.notes {
        let _ = writeln!(out, "> **NOTE: {note}**\n");
    }
    let _ = writeln!(
        out,
        "- machine: {} cores, {} ({}); load average {} at start, {} at end\n\
         - date: {}; commit `{}`\n\
         - servers: Redis {} (single), Redis {} (3-master cluster), Postgres {}, {}, {}\n\
         - redis-server binary (every Redis row, ours, raw and peers): `{}`\n\
         - peers: {}\n\
         - each cell: {} × ({:.1} s warm-up, then {:.1} s measured; {:.1} s measured for the \
         in-process rows), {}; closed loop, one operation after another per task; latencies \
         from the merged histogram of the rounds, throughput = total operations / total \
         measured time, CPU per operation = total CPU / total operations; the first group \
         also ran once before, unreported (a warm-up pass: heaps, pools and caches as in a \
         service that has run a while); whole run {:.0} s\n",
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
        report.servers.redis_binary,
        if report.servers.peers.is_empty() {
            "none".to_owned()
        } else {
            report.servers.peers.join("; ")
        },
        rounds_text(report.rounds),
        report.warmup_seconds,
        report.measure_seconds,
        report.in_process_measure_seconds,
        if report.rounds > 1 {
            report.order
        } else {
            "one slice per row"
        },
        report.duration_seconds,
    );
    let _ = writeln!(
        out,
        "Absolute figures vary with the machine and its load; read the ratios against the \
         baselines measured in the same run.\n"
    );
    summary(&mut out, report);
    targets(&mut out, report);
    peers(&mut out, report);
    ratio_tables(&mut out, report);
    cpu_table(&mut out, report);
    results(&mut out, report);
    out
}

const ALL_SCENARIOS: [&str; 3] = ["fresh", "replay", "conflict"];

/// `3 rounds`, `1 round`.
fn rounds_text(rounds: usize) -> String {
    format!("{rounds} round{}", if rounds == 1 { "" } else { "s" })
}

/// The spread of a pair's per-round ratios, `0.98–1.07`; `–` with fewer than two rounds.
fn spread_text(values: Option<&Vec<f64>>) -> String {
    match values.filter(|v| v.len() > 1).and_then(|v| spread(v)) {
        Some((lo, hi)) => format!("{lo:.2}–{hi:.2}"),
        None => "–".to_owned(),
    }
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
        "| backend | scenario | tasks | ops | p50 | p95 | p99 | p99.9 | ops/s | cpu µs/op | ctx sw/op | p95 < 10 ms |\n\
         |---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"
    );
    for r in &report.rows {
        let errors = if r.errors > 0 {
            format!(" ({} errors)", r.errors)
        } else {
            String::new()
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {}{} | {} | {} | {} | {} | {} | {} | {} | {} |",
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
            optional(r.cpu_us_per_op, 1),
            optional(r.context_switches_per_op, 2),
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
         fast, above 1 = ours is slower), from the rows' figures over all rounds; `rounds` \
         columns give the smallest and largest of the same ratio computed in each round alone \
         (the rows of a cell run one after another in every round): how much the machine's noise \
         moves it. `raw-redis` sends the same commands as `RedisStore` \
         with the plain `redis` crate (fresh: `SET NX PX GET` + `EVALSHA`; replay and conflict: \
         one `SET NX PX GET`); `raw-postgres` sends `PostgresStore`'s own statements with \
         plain `sqlx` (fresh: the claim upsert + the fenced completion; replay and conflict: the \
         claim upsert); `bare-axum` is the same handler without the layer; `http-floor` is \
         the least layer that keeps a record per request (key header, body, SHA-256 \
         fingerprint, an in-progress entry in a sharded map, the answer stored; no lease, \
         expiry, limits or metrics: `crates/idempotency-loadgen/src/floor.rs`).\n"
    );
    for (ours, base, limit) in BASELINE_PAIRS {
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
             | scenario | tasks | p50 {ours} | p50 {base} | p50 × | p50 × rounds | ops/s {ours} | ops/s {base} | throughput × | throughput × rounds |\n\
             |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
        );
        for (scenario, c, o, b) in found {
            let (p50, tput) = ratios(o, b);
            let per_round = report.round_ratio(ours, base, scenario, c);
            let mark = |x: f64| {
                if x <= limit {
                    format!("{x:.2}")
                } else {
                    format!("**{x:.2}**")
                }
            };
            let _ = writeln!(
                out,
                "| {scenario} | {c} | {} | {} | {} | {} | {} | {} | {} | {} |",
                human_us(o.p50_us),
                human_us(b.p50_us),
                mark(p50),
                spread_text(per_round.map(|r| &r.p50)),
                human_rate(o.ops_per_sec),
                human_rate(b.ops_per_sec),
                mark(tput),
                spread_text(per_round.map(|r| &r.throughput)),
            );
        }
        let _ = writeln!(out);
    }
}

/// `12.3` or `–`.
fn optional(value: Option<f64>, decimals: usize) -> String {
    value.map_or_else(|| "–".to_owned(), |v| format!("{v:.decimals$}"))
}

/// Ours against a peer in one cell: (p50, p99, throughput), all ours / peer. Ahead means
/// p50 and p99 below 1.0 and throughput above 1.0.
pub(super) fn against_peer(ours: &Row, peer: &Row) -> (f64, f64, f64) {
    (
        ours.p50_us / peer.p50_us.max(0.001),
        ours.p99_us / peer.p99_us.max(0.001),
        ours.ops_per_sec / peer.ops_per_sec.max(1.0),
    )
}

fn ahead((p50, p99, throughput): (f64, f64, f64)) -> bool {
    p50 < 1.0 && p99 < 1.0 && throughput > 1.0
}

/// What each peer guarantees, from reading its code (idempotent 2.0.0, axum-idempotent 0.6.0,
/// ruts 0.13.0), and what 16 concurrent duplicates did to each layer in this run.
const GUARANTEES: &str = "\
- **`idempotent` 2.0 (`peer-idempotent`)**, its `ValkeyStore`: a claim is one Lua script \
  (`claim.lua`) that writes an in-progress entry with a lease (`processing_ttl`) and issues a \
  fencing token from a per-prefix counter (`INCR` of `<prefix>::idempotent_ft_seq`, with the \
  server's run id); completion is a second script that checks the token and the fingerprint \
  before storing the response. It fingerprints the request (its default strategy hashes the \
  operation and the body) and tells a replay, an in-flight duplicate and a fingerprint mismatch \
  apart. Entries are postcard-encoded. Two round trips per fresh operation, one per replay or \
  conflict, as ours. It does not support Redis Cluster (two keys in different slots per claim) \
  and asks for AOF and no eviction. So its guarantees are close to ours; the comparison is \
  like for like.
- **`axum-idempotent` 0.6 (`peer-axum-idempotent`)**, header mode: the response is cached in \
  the caller's *session* (ruts; a Redis hash per session, one field per key with `HEXPIRE`), \
  so it needs a session cookie on every request (the benchmark's clients send one) and caches \
  nothing without one; a replay is one `HGET`, a fresh request one `HGET` + one script \
  (`HSET` + `HEXPIRE`). There is **no in-progress state and no fingerprint**: a duplicate that \
  arrives while the first attempt runs goes to the handler again, and a key reused with another \
  body replays the first answer. Its `conflict` cells therefore measure duplicates that run the \
  handler (the first one) and then replays of that duplicate's answer: they are not the same \
  work as ours (a 409 while the key is in progress). The crate's README says it is \
  \"best-effort\" and that \"two identical requests that arrive concurrently can both reach the \
  handler\".";

fn peers(out: &mut String, report: &Report) {
    let _ = writeln!(out, "## Against the peers\n");
    if report.servers.peers.is_empty() {
        let _ = writeln!(
            out,
            "**The peers were not measured in this run** (see the note at the top).\n"
        );
    }
    let _ = writeln!(
        out,
        "Each ratio is ours / peer in the same cell of the same run: below 1.00 for p50 and \
         p99 and above 1.00 for throughput means we are ahead. Both peers run on the same Redis \
         server as ours; the HTTP peer wraps the same handler and is driven by the same hyper \
         clients (one keep-alive connection per task), in its own process as our apps. The \
         `rounds` column is the smallest and largest throughput ratio (ours / peer) of a single \
         round.\n"
    );
    for (ours, peer) in PEER_PAIRS {
        let found = pairs(report, ours, peer);
        if found.is_empty() {
            continue;
        }
        let _ = writeln!(
            out,
            "### {ours} / {peer}\n\n\
             | scenario | tasks | p50 {ours} | p50 {peer} | p50 × | p99 × | ops/s {ours} | ops/s {peer} | throughput × | throughput × rounds | ahead |\n\
             |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"
        );
        for (scenario, c, o, p) in found {
            let ratios = against_peer(o, p);
            let (p50, p99, throughput) = ratios;
            let per_round = report.round_ratio(ours, peer, scenario, c);
            let _ = writeln!(
                out,
                "| {scenario} | {c} | {} | {} | {p50:.2} | {p99:.2} | {} | {} | {throughput:.2} | {} | {} |",
                human_us(o.p50_us),
                human_us(p.p50_us),
                human_rate(o.ops_per_sec),
                human_rate(p.ops_per_sec),
                spread_text(per_round.map(|r| &r.throughput)),
                if ahead(ratios) { "yes" } else { "**no**" },
            );
        }
        let _ = writeln!(out);
    }
    let _ = writeln!(out, "### What each peer guarantees\n\n{GUARANTEES}\n");
    if !report.duplicates.is_empty() {
        let _ = writeln!(
            out,
            "16 requests with one new key sent at once, each asking the handler to hold until \
             all 16 are accounted for (answered, or inside the handler as the app reports); for \
             `peer-idempotent`, 16 concurrent claims of one key:\n\n\
             | layer | sent | ran the handler (claims won) | the others got |\n|---|---:|---:|---|"
        );
        for d in &report.duplicates {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} |",
                d.backend, d.sent, d.handler_runs, d.others
            );
        }
        let _ = writeln!(out);
    }
}

/// CPU and context switches per operation of the HTTP apps (each in its own process) and the
/// client side of the store rows.
fn cpu_table(out: &mut String, report: &Report) {
    let http = [
        "bare-axum",
        "http-floor",
        "http-memory",
        "http-redis",
        "peer-axum-idempotent",
    ];
    let rows: Vec<&Row> = report
        .rows
        .iter()
        .filter(|r| http.contains(&r.backend) && r.cpu_us_per_op.is_some())
        .collect();
    if rows.is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        "## CPU per request\n\n\
         Each HTTP app runs in its own process; `cpu µs/req` is its user + system CPU time \
         (`/proc/<pid>/stat`, 10 ms ticks) over the measured window divided by the requests \
         measured, `ctx sw/req` its context switches (voluntary + involuntary, every thread, \
         `/proc/<pid>/task/*/status`). For the store rows (`raw-redis`, `redis`, \
         `peer-idempotent`...) the same figures are the client process's (the load generator's, \
         or the peers binary's), in the last table.\n\n\
         | scenario | tasks | {} |\n|---|---:|{}",
        http.join(" | "),
        "---:|".repeat(http.len())
    );
    for scenario in ["fresh", "replay", "conflict"] {
        for c in report.concurrencies() {
            if !http.iter().any(|b| report.find(b, scenario, c).is_some()) {
                continue;
            }
            let _ = write!(out, "| {scenario} | {c} |");
            for backend in http {
                let cell = report.find(backend, scenario, c).map_or_else(
                    || "–".to_owned(),
                    |r| {
                        format!(
                            "{} µs, {} sw",
                            optional(r.cpu_us_per_op, 1),
                            optional(r.context_switches_per_op, 2)
                        )
                    },
                );
                let _ = write!(out, " {cell} |");
            }
            out.push('\n');
        }
    }
    let _ = writeln!(out);
}

/// One line of the targets table.
pub(super) struct Target {
    pub(super) goal: String,
    pub(super) measured: String,
    /// `None`: not measured by this run.
    pub(super) pass: Option<bool>,
}

fn fmt_worst(label: &str, values: &[f64], largest: bool) -> String {
    let worst = if largest {
        values.iter().copied().fold(f64::MIN, f64::max)
    } else {
        values.iter().copied().fold(f64::MAX, f64::min)
    };
    format!("{label} {worst:.2}×")
}

/// `; single rounds: throughput × 0.95–1.12` over the given cells of a baseline pair (empty
/// with fewer than two rounds): the noise next to a target's ratio.
fn round_span(report: &Report, ours: &str, base: &str, scenarios: &[&str]) -> String {
    let values: Vec<f64> = report
        .round_ratios
        .iter()
        .filter(|r| r.ours == ours && r.against == base && scenarios.contains(&r.scenario))
        .filter(|r| r.throughput.len() > 1)
        .flat_map(|r| r.throughput.iter().copied())
        .collect();
    spread(&values).map_or_else(String::new, |(lo, hi)| {
        format!("; single rounds: throughput × {lo:.2}–{hi:.2}")
    })
}

/// What keeping a record per request costs over `bare-axum` in this run, and ours over that
/// least layer, per scenario (worst of p50 and throughput ratios over the concurrencies), for
/// the HTTP-on-memory goal: `; the least layer that keeps a record per request — fresh: ...`,
/// empty when the run has no `http-floor` row.
fn floor_text(report: &Report) -> String {
    let worst = |ours: &str, base: &str, scenario: &str| {
        pairs(report, ours, base)
            .iter()
            .filter(|(s, _, _, _)| *s == scenario)
            .map(|(_, _, o, b)| {
                let (p, t) = ratios(o, b);
                p.max(t)
            })
            .fold(None, |acc: Option<f64>, x| {
                Some(acc.map_or(x, |a| a.max(x)))
            })
    };
    let parts: Vec<String> = ALL_SCENARIOS
        .iter()
        .filter_map(|scenario| {
            let floor = worst("http-floor", "bare-axum", scenario)?;
            let ours = worst("http-memory", "http-floor", scenario)?;
            Some(format!(
                "{scenario}: `http-floor` / `bare-axum` worst {floor:.2}×, `http-memory` / \
                 `http-floor` worst {ours:.2}×"
            ))
        })
        .collect();
    if parts.is_empty() {
        String::new()
    } else {
        format!(
            "; the least layer that keeps a record per request — {}",
            parts.join("; ")
        )
    }
}

/// The goals of issue 15, with what this run measured.
pub(super) fn target_lines(report: &Report) -> Vec<Target> {
    let mut lines = Vec::new();
    let cells_wanted = 9;
    // Redis store against the raw crate.
    let redis = pairs(report, "redis", "raw-redis");
    if !redis.is_empty() {
        let p50: Vec<f64> = redis.iter().map(|(_, _, o, b)| ratios(o, b).0).collect();
        let tput: Vec<f64> = redis.iter().map(|(_, _, o, b)| ratios(o, b).1).collect();
        let ok = redis.iter().filter(|(_, _, o, b)| {
            let (p, t) = ratios(o, b);
            p <= 1.05 && t <= 1.05
        });
        let ok = ok.count();
        lines.push(Target {
            goal: "Redis store within 1.05× of `raw-redis`, p50 and throughput, fresh / replay / \
                   conflict at 1, 16, 64 tasks"
                .to_owned(),
            measured: format!(
                "{ok} of {} cells ({cells_wanted} wanted); worst {}, {}{}",
                redis.len(),
                fmt_worst("p50", &p50, true),
                fmt_worst("throughput", &tput, true),
                round_span(report, "redis", "raw-redis", &ALL_SCENARIOS),
            ),
            pass: Some(ok == redis.len() && redis.len() >= cells_wanted),
        });
    }
    lines.push(Target {
        goal: "Client-side instructions per operation (callgrind) within 1.3× of the raw crate's"
            .to_owned(),
        measured: "not measured by this run (the callgrind harness reports it)".to_owned(),
        pass: None,
    });
    // HTTP on memory against bare axum.
    let http = pairs(report, "http-memory", "bare-axum");
    if !http.is_empty() {
        let worst: Vec<f64> = http
            .iter()
            .map(|(_, _, o, b)| {
                let (p, t) = ratios(o, b);
                p.max(t)
            })
            .collect();
        let worst = worst.iter().copied().fold(0.0_f64, f64::max);
        lines.push(Target {
            goal: "HTTP layer on memory within 1.15× of `bare-axum` at every concurrency (p50 and \
                   throughput)"
                .to_owned(),
            measured: format!(
                "worst {worst:.2}× over {} cells{}{}",
                http.len(),
                round_span(report, "http-memory", "bare-axum", &ALL_SCENARIOS),
                floor_text(report),
            ),
            pass: Some(worst <= 1.15),
        });
    }
    // CPU per replayed request.
    let mut cpu_detail = Vec::new();
    let mut cpu_ok = true;
    for c in report.concurrencies() {
        let get = |b: &str| report.find(b, "replay", c).and_then(|r| r.cpu_us_per_op);
        if let (Some(ours), Some(bare), Some(raw)) =
            (get("http-redis"), get("bare-axum"), get("raw-redis"))
        {
            let limit = bare + raw + 15.0;
            cpu_ok &= ours <= limit;
            cpu_detail.push(format!(
                "{c} tasks: {ours:.1} µs vs {bare:.1} + {raw:.1} + 15 = {limit:.1} µs"
            ));
        }
    }
    if !cpu_detail.is_empty() {
        lines.push(Target {
            goal: "HTTP layer on Redis: process CPU per replayed request within 15 µs of \
                   `bare-axum` plus the raw Redis command (`raw-redis` client CPU)"
                .to_owned(),
            measured: cpu_detail.join("; "),
            pass: Some(cpu_ok),
        });
    }
    // Memory engine.
    let memory: Vec<&Row> = report
        .rows
        .iter()
        .filter(|r| r.backend == "memory" && r.scenario == "fresh")
        .collect();
    if let Some(best) = memory
        .iter()
        .max_by(|a, b| a.ops_per_sec.total_cmp(&b.ops_per_sec))
    {
        lines.push(Target {
            goal: "Memory engine ≥ 1 M fresh operations per second on one core, in the load \
                   generator"
                .to_owned(),
            measured: format!(
                "{}/s (engine-level `memory`, {} task{}, one current-thread runtime)",
                human_rate(best.ops_per_sec),
                best.concurrency,
                if best.concurrency == 1 { "" } else { "s" }
            ),
            pass: Some(best.ops_per_sec >= 1e6),
        });
    }
    // Postgres (an earlier goal, kept in view).
    let pg: Vec<_> = pairs(report, "postgres", "raw-postgres")
        .into_iter()
        .filter(|(s, ..)| *s == "fresh")
        .collect();
    if !pg.is_empty() {
        let worst = pg
            .iter()
            .map(|(_, _, o, b)| {
                let (p, t) = ratios(o, b);
                p.max(t)
            })
            .fold(0.0_f64, f64::max);
        lines.push(Target {
            goal: "Postgres `fresh` within 1.10× of `raw-postgres` (earlier goal)".to_owned(),
            measured: format!(
                "worst {worst:.2}× over {} cells{}",
                pg.len(),
                round_span(report, "postgres", "raw-postgres", &["fresh"])
            ),
            pass: Some(worst <= 1.10),
        });
    }
    // KV REST.
    let kv: Vec<&Row> = report
        .rows
        .iter()
        .filter(|r| r.backend == "kv-rest")
        .collect();
    if !kv.is_empty() {
        let worst = kv
            .iter()
            .max_by(|a, b| a.p95_us.total_cmp(&b.p95_us))
            .map(|r| {
                format!(
                    "worst p95 {} ({} {})",
                    human_us(r.p95_us),
                    r.scenario,
                    r.concurrency
                )
            })
            .unwrap_or_default();
        lines.push(Target {
            goal: "KV REST p95 under 10 ms at every concurrency".to_owned(),
            measured: worst,
            pass: Some(kv.iter().all(|r| r.p95_us < BUDGET_US)),
        });
        let at16: Vec<&&Row> = kv.iter().filter(|r| r.concurrency == 16).collect();
        if !at16.is_empty() {
            lines.push(Target {
                goal: "KV REST p99 under 5 ms at 16 tasks".to_owned(),
                measured: at16
                    .iter()
                    .map(|r| format!("{} {}", r.scenario, human_us(r.p99_us)))
                    .collect::<Vec<_>>()
                    .join(", "),
                pass: Some(at16.iter().all(|r| r.p99_us < 5000.0)),
            });
        }
    }
    // Peers.
    let mut total = 0;
    let mut won = 0;
    let mut lost = Vec::new();
    for (ours, peer) in PEER_PAIRS {
        for (scenario, c, o, p) in pairs(report, ours, peer) {
            total += 1;
            if ahead(against_peer(o, p)) {
                won += 1;
            } else {
                lost.push(format!("{peer} {scenario} {c}"));
            }
        }
    }
    lines.push(Target {
        goal: "Ahead of every peer in every cell (p50 and p99 < 1.0×, throughput > 1.0×)"
            .to_owned(),
        measured: if total == 0 {
            "peers not measured in this run".to_owned()
        } else if lost.is_empty() {
            format!("{won} of {total} cells")
        } else {
            format!("{won} of {total} cells; behind in: {}", lost.join(", "))
        },
        pass: (total > 0).then_some(lost.is_empty()),
    });
    // Every row.
    let over: Vec<String> = report
        .rows
        .iter()
        .filter(|r| r.p95_us >= BUDGET_US)
        .map(|r| format!("{} {} {}", r.backend, r.scenario, r.concurrency))
        .collect();
    lines.push(Target {
        goal: "p95 under the 10 ms budget in every row".to_owned(),
        measured: if over.is_empty() {
            format!("{} rows of {}", report.rows.len(), report.rows.len())
        } else {
            format!(
                "{} rows of {}; over: {}",
                report.rows.len() - over.len(),
                report.rows.len(),
                over.join(", ")
            )
        },
        pass: Some(over.is_empty()),
    });
    let errors: u64 = report.rows.iter().map(|r| r.errors).sum();
    lines.push(Target {
        goal: "Every operation got the expected answer".to_owned(),
        measured: format!("{errors} unexpected answers"),
        pass: Some(errors == 0),
    });
    lines
}

fn targets(out: &mut String, report: &Report) {
    let _ = writeln!(
        out,
        "## Targets (issue 15)\n\n| goal | measured | |\n|---|---|---|"
    );
    for line in target_lines(report) {
        let verdict = match line.pass {
            Some(true) => "pass",
            Some(false) => "**miss**",
            None => "–",
        };
        let _ = writeln!(out, "| {} | {} | {verdict} |", line.goal, line.measured);
    }
    let _ = writeln!(out);
}

#[cfg(test)]
mod tests {
    use super::super::data::{DuplicateCheck, ServerVersions};
    use super::*;
    use crate::machine::Machine;
    use crate::rounds::RoundFigures;

    fn row(backend: &'static str, scenario: &'static str, c: usize, p50: f64, rate: f64) -> Row {
        Row {
            backend,
            scenario,
            concurrency: c,
            ops: 1000,
            p50_us: p50,
            p95_us: p50 * 1.5,
            p99_us: p50 * 2.0,
            p999_us: p50 * 3.0,
            ops_per_sec: rate,
            errors: 0,
            first_error: None,
            cpu_us_per_op: None,
            context_switches_per_op: None,
            measured_seconds: 1000.0 / rate,
            rounds: Vec::new(),
        }
    }

    /// `row` with one round per rate, each at `p50`.
    fn row_in_rounds(
        backend: &'static str,
        scenario: &'static str,
        c: usize,
        p50: f64,
        rates: &[f64],
    ) -> Row {
        let total: f64 = rates.iter().map(|r| 1000.0 / r).sum();
        let mut r = row(
            backend,
            scenario,
            c,
            p50,
            rates.len() as f64 * 1000.0 / total,
        );
        r.rounds = rates
            .iter()
            .enumerate()
            .map(|(i, rate)| RoundFigures {
                round: i + 1,
                position: 1,
                ops: 1000,
                measured_seconds: 1000.0 / rate,
                ops_per_sec: *rate,
                p50_us: p50,
                p99_us: p50 * 2.0,
                cpu_us_per_op: None,
            })
            .collect();
        r
    }

    fn report(rows: Vec<Row>, peers: bool) -> Report {
        Report {
            machine: Machine {
                cores: 2,
                cpu_model: "test".into(),
                os: "linux x86_64".into(),
                load_average_start: Some(0.5),
                load_average_end: None,
            },
            date: "2026-11-30T12:00:00Z".into(),
            git_commit: "abc".into(),
            servers: ServerVersions {
                redis: "8.2.3".into(),
                redis_cluster: "8.2.3".into(),
                postgres: "15".into(),
                kv_rest_gateway: "gw".into(),
                http_server: "axum".into(),
                redis_binary: "/x/redis-server".into(),
                peers: if peers {
                    vec!["idempotent 2.0.0".into()]
                } else {
                    Vec::new()
                },
            },
            mode: "quick",
            warmup_seconds: 0.2,
            measure_seconds: 0.8,
            in_process_measure_seconds: 0.5,
            rounds: 3,
            order: crate::rounds::ORDER,
            duration_seconds: 60.0,
            notes: Vec::new(),
            duplicates: Vec::new(),
            round_ratios: super::super::data::round_ratios(&rows),
            rows,
        }
    }

    fn target<'a>(lines: &'a [Target], start: &str) -> &'a Target {
        lines
            .iter()
            .find(|t| t.goal.starts_with(start))
            .unwrap_or_else(|| panic!("no target line starting with {start}"))
    }

    #[test]
    fn ratios_against_a_peer_say_who_is_ahead() {
        let ours = row("redis", "fresh", 1, 100.0, 10_000.0);
        let peer = row("peer-idempotent", "fresh", 1, 125.0, 8_000.0);
        let (p50, p99, throughput) = against_peer(&ours, &peer);
        assert!((p50 - 0.8).abs() < 1e-9 && (p99 - 0.8).abs() < 1e-9);
        assert!((throughput - 1.25).abs() < 1e-9);
        assert!(ahead((p50, p99, throughput)));
        assert!(!ahead(against_peer(&peer, &ours)));
        // As fast is not ahead.
        assert!(!ahead(against_peer(&ours, &ours)));
    }

    #[test]
    fn the_peer_table_has_one_line_per_shared_cell() {
        let rows = vec![
            row("redis", "fresh", 1, 100.0, 10_000.0),
            row("peer-idempotent", "fresh", 1, 125.0, 8_000.0),
            row("http-redis", "replay", 16, 300.0, 40_000.0),
            row("peer-axum-idempotent", "replay", 16, 250.0, 50_000.0),
            // No peer row for this one: no line.
            row("redis", "replay", 64, 100.0, 10_000.0),
        ];
        let mut out = String::new();
        peers(&mut out, &report(rows, true));
        assert!(out.contains("### redis / peer-idempotent"), "{out}");
        assert!(
            out.contains(
                "| fresh | 1 | 100 µs | 125 µs | 0.80 | 0.80 | 10.0 k | 8.0 k | 1.25 | – | yes |"
            ),
            "{out}"
        );
        assert!(
            out.contains(
                "| replay | 16 | 300 µs | 250 µs | 1.20 | 1.20 | 40.0 k | 50.0 k | 0.80 | – | **no** |"
            ),
            "{out}"
        );
        assert!(!out.contains("| replay | 64 |"), "{out}");
        assert!(out.contains("What each peer guarantees"));
        assert!(!out.contains("were not measured"));
        let mut without = String::new();
        peers(&mut without, &report(Vec::new(), false));
        assert!(without.contains("**The peers were not measured in this run**"));
    }

    #[test]
    fn the_memory_goal_reports_the_least_layer_beside_bare_axum() {
        let rows = vec![
            row("bare-axum", "fresh", 16, 100.0, 10_000.0),
            row("http-floor", "fresh", 16, 130.0, 8_000.0),
            row("http-memory", "fresh", 16, 140.0, 7_500.0),
            row("bare-axum", "replay", 16, 100.0, 10_000.0),
            row("http-memory", "replay", 16, 105.0, 9_600.0),
        ];
        let lines = target_lines(&report(rows, false));
        let http = target(&lines, "HTTP layer on memory");
        assert_eq!(http.pass, Some(false), "{}", http.measured);
        // fresh: floor 1.30 (p50) vs 1.25 (throughput); ours / floor 1.08 (p50) vs 1.07.
        assert!(
            http.measured.ends_with(
                "; the least layer that keeps a record per request — fresh: `http-floor` / \
                 `bare-axum` worst 1.30×, `http-memory` / `http-floor` worst 1.08×"
            ),
            "{}",
            http.measured
        );
        let without = target_lines(&report(
            vec![
                row("bare-axum", "fresh", 16, 100.0, 10_000.0),
                row("http-memory", "fresh", 16, 140.0, 7_500.0),
            ],
            false,
        ));
        let http = target(&without, "HTTP layer on memory");
        assert_eq!(http.measured, "worst 1.40× over 1 cells");
        let mut out = String::new();
        ratio_tables(
            &mut out,
            &report(
                vec![
                    row("bare-axum", "fresh", 16, 100.0, 10_000.0),
                    row("http-floor", "fresh", 16, 130.0, 8_000.0),
                    row("http-memory", "fresh", 16, 140.0, 7_500.0),
                ],
                false,
            ),
        );
        assert!(
            out.contains("### http-floor / bare-axum (for information)"),
            "{out}"
        );
        assert!(
            out.contains("### http-memory / http-floor (for information)"),
            "{out}"
        );
    }

    #[test]
    fn targets_report_each_goal_with_pass_or_miss() {
        let mut rows = Vec::new();
        for scenario in ["fresh", "replay", "conflict"] {
            for c in [1, 16, 64] {
                rows.push(row("raw-redis", scenario, c, 100.0, 10_000.0));
                // 1.04× everywhere but conflict at 64 tasks (1.20×).
                let slow = if scenario == "conflict" && c == 64 {
                    120.0
                } else {
                    104.0
                };
                rows.push(row("redis", scenario, c, slow, 10_000.0 * 100.0 / slow));
            }
        }
        let mut bare = row("bare-axum", "replay", 1, 100.0, 10_000.0);
        bare.cpu_us_per_op = Some(46.0);
        let mut raw = row("raw-redis", "replay", 1, 100.0, 10_000.0);
        raw.cpu_us_per_op = Some(20.0);
        let mut ours = row("http-redis", "replay", 1, 200.0, 5_000.0);
        ours.cpu_us_per_op = Some(90.0);
        rows.retain(|r| {
            !(r.backend == "raw-redis" && r.scenario == "replay" && r.concurrency == 1)
        });
        rows.extend([bare, raw, ours]);
        rows.push(row("http-memory", "fresh", 1, 110.0, 9_100.0));
        rows.push(row("bare-axum", "fresh", 1, 100.0, 10_000.0));
        rows.push(row("memory", "fresh", 1, 0.8, 1_200_000.0));
        let mut kv = row("kv-rest", "fresh", 16, 2_000.0, 5_000.0);
        kv.p99_us = 6_000.0;
        rows.push(kv);
        let lines = target_lines(&report(rows, true));

        let redis = target(&lines, "Redis store within 1.05×");
        assert_eq!(redis.pass, Some(false));
        assert!(
            redis.measured.starts_with("8 of 9 cells"),
            "{}",
            redis.measured
        );
        assert!(redis.measured.contains("p50 1.20×"), "{}", redis.measured);
        let http = target(&lines, "HTTP layer on memory");
        assert_eq!(http.pass, Some(true), "{}", http.measured);
        let cpu = target(&lines, "HTTP layer on Redis: process CPU");
        assert_eq!(cpu.pass, Some(false));
        assert_eq!(
            cpu.measured,
            "1 tasks: 90.0 µs vs 46.0 + 20.0 + 15 = 81.0 µs"
        );
        let memory = target(&lines, "Memory engine");
        assert_eq!(memory.pass, Some(true));
        let p95 = target(&lines, "KV REST p95");
        assert_eq!(p95.pass, Some(true));
        let p99 = target(&lines, "KV REST p99");
        assert_eq!(
            (p99.pass, p99.measured.as_str()),
            (Some(false), "fresh 6.00 ms")
        );
        let peers = target(&lines, "Ahead of every peer");
        assert_eq!(peers.pass, None, "no peer rows: not measured, not passed");
        assert_eq!(target(&lines, "Client-side instructions").pass, None);

        let mut out = String::new();
        targets(&mut out, &report(Vec::new(), false));
        assert!(out.starts_with("## Targets (issue 15)\n\n| goal | measured | |\n"));
        assert!(
            out.contains("| peers not measured in this run | – |"),
            "{out}"
        );
    }

    #[test]
    fn each_ratio_shows_its_spread_over_single_rounds() {
        // raw-redis steady at 10 k; ours 10 k, 9 k, 11 k in rounds 1-3 (a noisy middle round).
        let rows = vec![
            row_in_rounds("raw-redis", "replay", 16, 100.0, &[10_000.0; 3]),
            row_in_rounds("redis", "replay", 16, 103.0, &[10_000.0, 9_000.0, 11_000.0]),
            row_in_rounds(
                "peer-idempotent",
                "replay",
                16,
                120.0,
                &[8_000.0, 9_000.0, 10_000.0],
            ),
        ];
        let r = report(rows, true);
        // Per round: baseline ÷ ours for the baseline, ours ÷ peer for the peer.
        let base = r.round_ratio("redis", "raw-redis", "replay", 16).unwrap();
        assert_eq!(base.kind, "baseline");
        assert_eq!(base.throughput, [1.0, 1.111, 0.909]);
        assert_eq!(base.p50, [1.03; 3]);
        let peer = r
            .round_ratio("redis", "peer-idempotent", "replay", 16)
            .unwrap();
        assert_eq!(
            (peer.kind, peer.throughput.as_slice()),
            ("peer", &[1.25, 1.0, 1.1][..])
        );
        assert!(r.round_ratio("redis", "raw-redis", "fresh", 16).is_none());

        let text = render(&r);
        assert!(
            text.contains("- each cell: 3 rounds × (0.2 s warm-up, then 0.8 s measured"),
            "{text}"
        );
        assert!(text.contains(crate::rounds::ORDER));
        // The ratio table: p50 1.03 in every round, throughput 0.91–1.11.
        let line = text
            .lines()
            .find(|l| l.starts_with("| replay | 16 | 103 µs | 100 µs |"))
            .unwrap_or_else(|| panic!("{text}"));
        assert!(line.contains("| 1.03 | 1.03–1.03 |"), "{line}");
        assert!(line.ends_with("| 0.91–1.11 |"), "{line}");
        let peer_line = text
            .lines()
            .find(|l| l.starts_with("| replay | 16 | 103 µs | 120 µs |"))
            .unwrap_or_else(|| panic!("{text}"));
        assert!(peer_line.contains("| 1.00–1.25 |"), "{peer_line}");
        let redis = target(&target_lines(&r), "Redis store within 1.05×")
            .measured
            .clone();
        assert!(
            redis.ends_with("; single rounds: throughput × 0.91–1.11"),
            "{redis}"
        );
    }

    #[test]
    fn notes_and_duplicates_are_shown() {
        let mut r = report(Vec::new(), true);
        r.notes.push("the peer rows are omitted".into());
        r.duplicates.push(DuplicateCheck {
            backend: "peer-axum-idempotent".into(),
            sent: 16,
            handler_runs: 16,
            others: "none".into(),
        });
        let text = render(&r);
        assert!(text.contains("> **NOTE: the peer rows are omitted**"));
        assert!(text.contains("| peer-axum-idempotent | 16 | 16 | none |"));
    }
}
