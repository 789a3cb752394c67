//! `latency.svg`, written by hand (no font files or plotting crate needed): one panel per
//! scenario; per backend one bar per concurrency for p50 with a whisker up to p99, on a
//! logarithmic axis, and the 10 ms budget as a dashed line.

use std::fmt::Write as _;

use super::data::{BUDGET_US, Report, Row};

const WIDTH: f64 = 1200.0;
const PANEL_HEIGHT: f64 = 300.0;
const LEFT: f64 = 80.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 70.0;
const PANEL_GAP: f64 = 110.0;
const COLORS: [&str; 4] = ["#4e79a7", "#f28e2b", "#59a14f", "#b07aa1"];

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn decade_label(exp: i32) -> String {
    match exp {
        -3 => "1 ns".into(),
        -2 => "10 ns".into(),
        -1 => "100 ns".into(),
        0 => "1 µs".into(),
        1 => "10 µs".into(),
        2 => "100 µs".into(),
        3 => "1 ms".into(),
        4 => "10 ms".into(),
        5 => "100 ms".into(),
        6 => "1 s".into(),
        e => format!("1e{e} µs"),
    }
}

pub(super) fn render(report: &Report) -> String {
    let mut backends: Vec<&str> = Vec::new();
    for r in &report.rows {
        if !backends.contains(&r.backend) {
            backends.push(r.backend);
        }
    }
    let scenarios: Vec<&str> = ["fresh", "replay", "conflict"]
        .into_iter()
        .filter(|s| report.rows.iter().any(|r| r.scenario == *s))
        .collect();
    let concurrencies = report.concurrencies();
    let positive = |v: f64| v.max(0.001);
    let low = report
        .rows
        .iter()
        .map(|r| positive(r.p50_us))
        .fold(f64::INFINITY, f64::min);
    let high = report
        .rows
        .iter()
        .map(|r| positive(r.p99_us))
        .fold(BUDGET_US, f64::max);
    let lo_exp = if low.is_finite() {
        low.log10().floor() as i32
    } else {
        -1
    };
    let hi_exp = (high.log10().ceil() as i32).max(lo_exp + 1);
    let height = TOP + scenarios.len() as f64 * (PANEL_HEIGHT + PANEL_GAP) + 20.0;

    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(out, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        out,
        r#"<text x="{LEFT}" y="24" font-size="16" font-weight="bold">Latency per operation: bar = p50, whisker = p99 (log scale; {} cores, {})</text>"#,
        report.machine.cores,
        escape(&report.machine.cpu_model)
    );
    // Legend.
    for (i, c) in concurrencies.iter().enumerate() {
        let x = LEFT + i as f64 * 110.0;
        let color = COLORS[i % COLORS.len()];
        let _ = writeln!(
            out,
            r#"<rect x="{x}" y="36" width="14" height="14" fill="{color}"/><text x="{}" y="48">{c} task{}</text>"#,
            x + 20.0,
            if *c == 1 { "" } else { "s" }
        );
    }
    let _ = writeln!(
        out,
        r##"<line x1="{0}" y1="43" x2="{1}" y2="43" stroke="#d62728" stroke-dasharray="6 4"/><text x="{2}" y="48">10 ms p95 budget</text>"##,
        LEFT + 360.0,
        LEFT + 400.0,
        LEFT + 406.0
    );

    let plot_width = WIDTH - LEFT - RIGHT;
    let group = plot_width / backends.len().max(1) as f64;
    let bar = (group * 0.8) / concurrencies.len().max(1) as f64;
    for (p, scenario) in scenarios.iter().enumerate() {
        let top = TOP + p as f64 * (PANEL_HEIGHT + PANEL_GAP);
        let bottom = top + PANEL_HEIGHT;
        let y = |us: f64| {
            let t = (positive(us).log10() - f64::from(lo_exp)) / f64::from(hi_exp - lo_exp);
            bottom - t.clamp(0.0, 1.0) * PANEL_HEIGHT
        };
        let _ = writeln!(
            out,
            r#"<text x="{LEFT}" y="{}" font-size="14" font-weight="bold">{scenario}</text>"#,
            top - 8.0
        );
        for exp in lo_exp..=hi_exp {
            let gy = y(10f64.powi(exp));
            let _ = writeln!(
                out,
                r##"<line x1="{LEFT}" y1="{gy:.1}" x2="{:.1}" y2="{gy:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
                WIDTH - RIGHT,
                LEFT - 6.0,
                gy + 4.0,
                decade_label(exp)
            );
        }
        let by = y(BUDGET_US);
        let _ = writeln!(
            out,
            r##"<line x1="{LEFT}" y1="{by:.1}" x2="{:.1}" y2="{by:.1}" stroke="#d62728" stroke-dasharray="6 4"/>"##,
            WIDTH - RIGHT
        );
        for (b, backend) in backends.iter().enumerate() {
            let gx = LEFT + b as f64 * group + group * 0.1;
            for (i, c) in concurrencies.iter().enumerate() {
                let Some(row) = report.find(backend, scenario, *c) else {
                    continue;
                };
                bar_with_whisker(
                    &mut out,
                    row,
                    gx + i as f64 * bar,
                    bar,
                    COLORS[i % COLORS.len()],
                    &y,
                    bottom,
                );
            }
            // Slanted: 14 names do not fit side by side.
            let (lx, ly) = (gx + group * 0.4, bottom + 14.0);
            let _ = writeln!(
                out,
                r#"<text x="{lx:.1}" y="{ly:.1}" text-anchor="end" font-size="11" transform="rotate(-25 {lx:.1} {ly:.1})">{}</text>"#,
                escape(backend)
            );
        }
        let _ = writeln!(
            out,
            r##"<line x1="{LEFT}" y1="{bottom}" x2="{:.1}" y2="{bottom}" stroke="#333"/>"##,
            WIDTH - RIGHT
        );
    }
    let _ = writeln!(out, "</svg>");
    out
}

fn bar_with_whisker(
    out: &mut String,
    row: &Row,
    x: f64,
    width: f64,
    color: &str,
    y: &dyn Fn(f64) -> f64,
    bottom: f64,
) {
    let top = y(row.p50_us);
    let whisker = y(row.p99_us);
    let mid = x + width / 2.0;
    let _ = writeln!(
        out,
        r#"<rect x="{x:.1}" y="{top:.1}" width="{:.1}" height="{:.1}" fill="{color}"><title>{} {} {} tasks: p50 {} µs, p99 {} µs, {} ops/s</title></rect>"#,
        (width - 2.0).max(1.0),
        (bottom - top).max(0.5),
        escape(row.backend),
        row.scenario,
        row.concurrency,
        row.p50_us,
        row.p99_us,
        row.ops_per_sec
    );
    let _ = writeln!(
        out,
        r##"<line x1="{mid:.1}" y1="{top:.1}" x2="{mid:.1}" y2="{whisker:.1}" stroke="#222"/><line x1="{:.1}" y1="{whisker:.1}" x2="{:.1}" y2="{whisker:.1}" stroke="#222"/>"##,
        mid - width / 4.0,
        mid + width / 4.0
    );
}
