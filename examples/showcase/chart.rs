//! A hand-written SVG bar chart of P50/P95/P99 per scenario on a log scale.

use std::fmt::Write as _;
use std::time::Duration;

use crate::report::Row;
use crate::stats::{fmt_duration, Percentiles};

const WIDTH: f64 = 960.0;
const HEIGHT: f64 = 480.0;
const LEFT: f64 = 80.0;
const RIGHT: f64 = 24.0;
const TOP: f64 = 84.0;
const BOTTOM: f64 = 84.0;
const SERIES: [(&str, &str, fn(&Percentiles) -> Duration); 3] = [
    ("P50", "#4c78a8", |p| p.p50),
    ("P95", "#f58518", |p| p.p95),
    ("P99", "#e45756", |p| p.p99),
];

/// Renders the chart; `subtitle` says what was run.
pub(crate) fn svg(rows: &[Row], subtitle: &str) -> String {
    let values = rows.iter().filter_map(|r| r.latency.as_ref());
    let micros = |d: Duration| (d.as_secs_f64() * 1e6).max(1.0);
    let lo = values
        .clone()
        .map(|p| micros(p.p50))
        .fold(f64::INFINITY, f64::min);
    let hi = values.map(|p| micros(p.p99)).fold(1.0, f64::max);
    // Whole decades of microseconds, so gridlines land on 1ms, 10ms, 100ms, 1s...
    let (lo, hi) = if lo.is_finite() {
        (
            lo.log10().floor(),
            hi.log10().ceil().max(lo.log10().floor() + 1.0),
        )
    } else {
        (3.0, 4.0)
    };
    let plot_h = HEIGHT - TOP - BOTTOM;
    let y = |us: f64| TOP + plot_h * (1.0 - (us.log10() - lo) / (hi - lo));

    let mut s = String::new();
    let _ = write!(
        s,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="Helvetica, Arial, sans-serif">
<rect width="100%" height="100%" fill="#ffffff"/>
<text x="{LEFT}" y="30" font-size="18" font-weight="bold" fill="#222">Latency per scenario (successful responses, log scale)</text>
<text x="{LEFT}" y="52" font-size="12" fill="#555">{}</text>
"##,
        escape(subtitle)
    );
    // Gridlines at 1, 2 and 5 of every decade; only the decades are dark.
    for decade in lo as i32..=hi as i32 {
        for (mult, major) in [(1.0, true), (2.0, false), (5.0, false)] {
            let us = mult * 10f64.powi(decade);
            if us.log10() > hi + 1e-9 {
                continue;
            }
            let yy = y(us);
            let (stroke, fill) = if major {
                ("#cccccc", "#444")
            } else {
                ("#eeeeee", "#999")
            };
            let _ = writeln!(
                s,
                r#"<line x1="{LEFT}" x2="{:.1}" y1="{yy:.1}" y2="{yy:.1}" stroke="{stroke}"/>"#,
                WIDTH - RIGHT
            );
            let _ = writeln!(
                s,
                r#"<text x="{:.1}" y="{:.1}" font-size="11" text-anchor="end" fill="{fill}">{}</text>"#,
                LEFT - 8.0,
                yy + 4.0,
                axis_label(us)
            );
        }
    }
    for (i, (name, color, _)) in SERIES.iter().enumerate() {
        let x = WIDTH - RIGHT - 210.0 + i as f64 * 70.0;
        let _ = writeln!(
            s,
            r##"<rect x="{x:.1}" y="62" width="12" height="12" fill="{color}"/><text x="{:.1}" y="72" font-size="12" fill="#222">{name}</text>"##,
            x + 17.0
        );
    }

    let group_w = (WIDTH - LEFT - RIGHT) / rows.len().max(1) as f64;
    let bar_w = (group_w * 0.7 / 3.0).min(48.0);
    for (g, row) in rows.iter().enumerate() {
        let center = LEFT + group_w * (g as f64 + 0.5);
        let _ = writeln!(
            s,
            r##"<text x="{center:.1}" y="{:.1}" font-size="13" text-anchor="middle" fill="#222">{}</text>"##,
            HEIGHT - BOTTOM + 22.0,
            escape(row.scenario.name())
        );
        let mut under = vec![
            format!("{:.0} req/s", row.throughput),
            format!("{} backend calls", row.backend_calls),
        ];
        if row.shed > 0 {
            under.push(format!(
                "shed {:.1}%",
                row.shed as f64 * 100.0 / row.sent.max(1) as f64
            ));
        }
        for (i, line) in under.iter().enumerate() {
            let _ = writeln!(
                s,
                r##"<text x="{center:.1}" y="{:.1}" font-size="10" text-anchor="middle" fill="#666">{line}</text>"##,
                HEIGHT - BOTTOM + 38.0 + 13.0 * i as f64
            );
        }
        let Some(p) = &row.latency else {
            let _ = writeln!(
                s,
                r##"<text x="{center:.1}" y="{:.1}" font-size="11" text-anchor="middle" fill="#b03030">no successful responses</text>"##,
                TOP + plot_h / 2.0
            );
            continue;
        };
        for (i, (_, color, read)) in SERIES.iter().enumerate() {
            let value = read(p);
            let x = center + (i as f64 - 1.5) * bar_w;
            let top = y(micros(value)).min(TOP + plot_h - 1.0);
            let _ = writeln!(
                s,
                r#"<rect x="{x:.1}" y="{top:.1}" width="{:.1}" height="{:.1}" fill="{color}"><title>{} {}: {}</title></rect>"#,
                bar_w - 2.0,
                TOP + plot_h - top,
                escape(row.scenario.name()),
                SERIES[i].0,
                fmt_duration(value)
            );
            let _ = writeln!(
                s,
                r##"<text x="{:.1}" y="{:.1}" font-size="9" text-anchor="middle" fill="#333">{}</text>"##,
                x + bar_w / 2.0 - 1.0,
                top - 4.0,
                fmt_duration(value)
            );
        }
    }
    let _ = writeln!(
        s,
        r##"<line x1="{LEFT}" x2="{:.1}" y1="{:.1}" y2="{:.1}" stroke="#888"/>"##,
        WIDTH - RIGHT,
        TOP + plot_h,
        TOP + plot_h
    );
    s.push_str("</svg>\n");
    s
}

/// Gridline labels: round values read best without decimals (`2ms`, `500ms`, `1s`).
fn axis_label(us: f64) -> String {
    let us = us.round() as u64;
    match us {
        0..=999 => format!("{us}µs"),
        1_000..=999_999 => format!("{}ms", us / 1_000),
        _ => format!("{}s", us / 1_000_000),
    }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}
