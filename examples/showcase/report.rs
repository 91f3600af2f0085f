//! Turns runs into rows, and rows into the terminal table and the Markdown report.

use std::fmt::Write as _;
use std::time::Duration;

use crate::backend::Backend;
use crate::load::{CacheSeen, Outcome, Plan, Run};
use crate::scenario::Scenario;
use crate::stats::{fmt_duration, Percentiles};
use crate::workload::{Route, ITEMS, ITEM_SKEW, TERMS, TERM_SKEW};

/// The measured result of one scenario.
#[derive(Debug)]
pub(crate) struct Row {
    pub(crate) scenario: Scenario,
    pub(crate) sent: u64,
    pub(crate) ok: u64,
    pub(crate) shed: u64,
    /// Timeouts, other error statuses, connection failures and requests not sent.
    pub(crate) errors: u64,
    pub(crate) timeouts: u64,
    pub(crate) dropped: u64,
    /// Successful responses per second of the whole run.
    pub(crate) throughput: f64,
    pub(crate) elapsed: Duration,
    /// Over successful responses only.
    pub(crate) latency: Option<Percentiles>,
    pub(crate) by_phase: Vec<Option<Percentiles>>,
    pub(crate) by_route: Vec<(Route, Option<Percentiles>, u64)>,
    pub(crate) backend_calls: u64,
    pub(crate) pool_timeouts: u64,
    /// Share of responses with a `Cache-Status` that were hits, if any had one.
    pub(crate) hit_ratio: Option<f64>,
    pub(crate) notes: Vec<String>,
}

impl Row {
    pub(crate) fn new(
        scenario: Scenario,
        run: &Run,
        plan: &Plan,
        backend: &Backend,
        notes: Vec<String>,
    ) -> Self {
        let count = |f: &dyn Fn(Outcome) -> bool| {
            run.samples.iter().filter(|s| f(s.outcome)).count() as u64
        };
        let ok = count(&|o| o == Outcome::Ok);
        let shed = count(&|o| o == Outcome::Shed);
        let timeouts = count(&|o| o == Outcome::Timeout);
        let sent = run.samples.len() as u64;
        let latency_where = |keep: &dyn Fn(&crate::load::Sample) -> bool| {
            let mut micros: Vec<u32> = run
                .samples
                .iter()
                .filter(|s| s.outcome == Outcome::Ok && keep(s))
                .map(|s| s.micros)
                .collect();
            Percentiles::of(&mut micros)
        };
        let seen = run
            .samples
            .iter()
            .filter(|s| s.cache != CacheSeen::Absent)
            .count();
        let hits = run
            .samples
            .iter()
            .filter(|s| s.cache == CacheSeen::Hit)
            .count();
        Self {
            scenario,
            sent,
            ok,
            shed,
            errors: sent - ok - shed + run.dropped,
            timeouts,
            dropped: run.dropped,
            throughput: ok as f64 / run.elapsed.as_secs_f64().max(1e-9),
            elapsed: run.elapsed,
            latency: latency_where(&|_| true),
            by_phase: (0..plan.phases.len())
                .map(|p| latency_where(&|s| s.phase == p))
                .collect(),
            by_route: Route::ALL
                .iter()
                .map(|&r| (r, latency_where(&|s| s.route == r), backend.calls(r)))
                .collect(),
            backend_calls: backend.total_calls(),
            pool_timeouts: backend.pool_timeouts(),
            hit_ratio: (seen > 0).then(|| hits as f64 / seen as f64),
            notes,
        }
    }

    /// One line for the log when the scenario finishes.
    pub(crate) fn one_line(&self) -> String {
        let p = |f: fn(&Percentiles) -> Duration| {
            self.latency
                .as_ref()
                .map_or("-".into(), |l| fmt_duration(f(l)))
        };
        format!(
            "{} done in {:.1}s: {} sent, {} ok, {} shed, {} errors, P50 {} P99 {}, {} backend calls",
            self.scenario.name(),
            self.elapsed.as_secs_f64(),
            self.sent,
            self.ok,
            self.shed,
            self.errors,
            p(|l| l.p50),
            p(|l| l.p99),
            self.backend_calls,
        )
    }
}

/// A table rendered both for the terminal and as Markdown.
struct Table {
    header: Vec<&'static str>,
    /// `true` for right-aligned (numeric) columns.
    right: Vec<bool>,
    rows: Vec<Vec<String>>,
}

impl Table {
    fn text(&self) -> String {
        let widths: Vec<usize> = (0..self.header.len())
            .map(|c| {
                let cells = self.rows.iter().map(|r| r[c].chars().count());
                cells
                    .chain([self.header[c].chars().count()])
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let line = |cells: Vec<&str>| {
            let mut out = String::new();
            for (c, cell) in cells.into_iter().enumerate() {
                let pad = widths[c] - cell.chars().count();
                let sep = if c == 0 { "" } else { "  " };
                if self.right[c] {
                    let _ = write!(out, "{sep}{}{cell}", " ".repeat(pad));
                } else {
                    let _ = write!(out, "{sep}{cell}{}", " ".repeat(pad));
                }
            }
            out.trim_end().to_owned() + "\n"
        };
        let mut out = line(self.header.clone());
        out += &line(
            widths
                .iter()
                .map(|&w| "─".repeat(w))
                .collect::<Vec<_>>()
                .iter()
                .map(String::as_str)
                .collect(),
        );
        for row in &self.rows {
            out += &line(row.iter().map(String::as_str).collect());
        }
        out
    }

    fn markdown(&self) -> String {
        let mut out = format!("| {} |\n|", self.header.join(" | "));
        for &right in &self.right {
            out += if right { "---:|" } else { "---|" };
        }
        out.push('\n');
        for row in &self.rows {
            let _ = writeln!(out, "| {} |", row.join(" | "));
        }
        out
    }
}

fn summary_table(rows: &[Row]) -> Table {
    let base = rows.iter().find(|r| r.scenario == Scenario::Bare);
    let pct = |l: &Option<Percentiles>, f: fn(&Percentiles) -> Duration| {
        l.as_ref().map_or("-".to_owned(), |l| fmt_duration(f(l)))
    };
    Table {
        header: vec![
            "scenario",
            "throughput",
            "P50",
            "P95",
            "P99",
            "backend calls",
            "shed",
            "errors",
            "cache hits",
            "what it bought (vs bare)",
        ],
        right: vec![false, true, true, true, true, true, true, true, true, false],
        rows: rows
            .iter()
            .map(|r| {
                vec![
                    r.scenario.name().to_owned(),
                    format!("{:.0} req/s", r.throughput),
                    pct(&r.latency, |l| l.p50),
                    pct(&r.latency, |l| l.p95),
                    pct(&r.latency, |l| l.p99),
                    r.backend_calls.to_string(),
                    share(r.shed, r.sent + r.dropped),
                    share(r.errors, r.sent + r.dropped),
                    r.hit_ratio
                        .map_or("-".to_owned(), |h| format!("{:.0}%", h * 100.0)),
                    bought(r, base),
                ]
            })
            .collect(),
    }
}

/// A count with its share of the total when it is not zero.
fn share(n: u64, total: u64) -> String {
    if n == 0 {
        "0".to_owned()
    } else {
        format!("{n} ({:.1}%)", n as f64 * 100.0 / total.max(1) as f64)
    }
}

/// Latency ratios past this count as a change; below it they are noise on a loopback run.
const LATENCY_NOISE: f64 = 1.2;
/// Relative changes in counts and throughput past this count as a change.
const COUNT_NOISE: f64 = 0.05;

/// What a scenario changed compared with the bare app, in measured terms.
fn bought(row: &Row, base: Option<&Row>) -> String {
    match base {
        None => "- (bare not run)".to_owned(),
        Some(_) if row.scenario == Scenario::Bare => "baseline".to_owned(),
        Some(base) => changes(row, base),
    }
}

fn changes(row: &Row, base: &Row) -> String {
    let mut parts = Vec::new();
    if let (Some(b), Some(r)) = (&base.latency, &row.latency) {
        for (name, b, r) in [("P50", b.p50, r.p50), ("P99", b.p99, r.p99)] {
            let ratio = b.as_secs_f64() / r.as_secs_f64().max(1e-9);
            if ratio >= LATENCY_NOISE {
                parts.push(format!("{name} {ratio:.1}× lower"));
            } else if ratio <= 1.0 / LATENCY_NOISE {
                parts.push(format!("{name} {:.1}× higher", 1.0 / ratio));
            }
        }
    }
    let mut relative = |what: &str, b: f64, r: f64| {
        let change = r / b.max(1e-9) - 1.0;
        if change.abs() >= COUNT_NOISE {
            parts.push(format!("{:+.0}% {what}", change * 100.0).replace('-', "−"));
        }
    };
    relative(
        "backend calls",
        base.backend_calls as f64,
        row.backend_calls as f64,
    );
    relative("throughput", base.throughput, row.throughput);
    if row.errors != base.errors {
        parts.push(format!("errors {} → {}", base.errors, row.errors));
    }
    if row.shed > 0 {
        parts.push(format!(
            "sheds {:.1}%",
            row.shed as f64 * 100.0 / row.sent.max(1) as f64
        ));
    }
    if parts.is_empty() {
        "≈ bare (no change past noise)".to_owned()
    } else {
        parts.join(", ")
    }
}

/// The table printed at the end of the run, with any layer notes under it.
pub(crate) fn terminal(rows: &[Row]) -> String {
    let mut out = summary_table(rows).text();
    out += "\nthroughput: successful responses per second. P50/P95/P99: successful responses, \
            timed from\nthe scheduled send. shed: 503 responses. cache hits: responses whose \
            Cache-Status says hit.\n";
    for row in rows.iter().filter(|r| !r.notes.is_empty()) {
        let _ = writeln!(out, "\n{}:", row.scenario.name());
        for note in &row.notes {
            let _ = writeln!(out, "  {note}");
        }
    }
    out
}

/// Facts about the run for the report's header.
#[derive(Debug)]
pub(crate) struct Context {
    pub(crate) command: String,
    pub(crate) machine: String,
    pub(crate) date: String,
    pub(crate) db_connections: usize,
    pub(crate) chart: String,
}

/// The whole Markdown report.
pub(crate) fn markdown(rows: &[Row], plan: &Plan, ctx: &Context) -> String {
    let mut out = String::from("# tower-perf showcase\n\n");
    let _ = writeln!(
        out,
        "Run {} on {}.\n\n`{}`\n",
        ctx.date, ctx.machine, ctx.command
    );
    out += &summary_table(rows).markdown();
    let _ = writeln!(
        out,
        "\nThroughput counts successful responses per second of the whole run (sending and \
         draining). Latency percentiles are over successful responses, measured from each \
         request's scheduled send time. Shed = 503 responses; errors = other failures, \
         timeouts (> {}) and requests the client could not send.\n",
        fmt_duration(plan.timeout)
    );
    let _ = writeln!(out, "![Latency percentiles per scenario]({})\n", ctx.chart);

    out += "## Workload\n\n";
    let _ = writeln!(
        out,
        "Open loop, Poisson arrivals, {:.0} s per scenario at a base rate of {:.0} req/s; \
         every scenario replays the same request sequence (seed {}). One process: the axum \
         service on 127.0.0.1 and the hyper-util client share one tokio runtime.\n",
        plan.duration.as_secs_f64(),
        plan.rate,
        plan.seed
    );
    let mut from = 0.0;
    for phase in &plan.phases {
        let _ = writeln!(
            out,
            "- **{}** ({:.0}–{:.0}% of the run): {:.0} req/s",
            phase.name,
            from * 100.0,
            phase.until * 100.0,
            plan.rate * phase.factor
        );
        from = phase.until;
    }
    let _ = writeln!(
        out,
        "\nThe backend is a database with {} connections; a query holds one for its service \
         time (log-normal around the median below), which grows 5% for every other query \
         running; a request waits up to 2 s for a connection, then fails with 500.\n",
        ctx.db_connections
    );
    out += "| route | share | median query | Cache-Control | keys |\n|---|---:|---:|---|---|\n";
    for route in Route::ALL {
        let keys = match route {
            Route::Item => format!("{ITEMS} ids, Zipf s={ITEM_SKEW}"),
            Route::Search => format!("{TERMS} terms, Zipf s={TERM_SKEW}"),
            Route::Order => "a write".to_owned(),
        };
        let _ = writeln!(
            out,
            "| `{} {}` | {}% | {} | `{}` | {keys} |",
            route.method(),
            route.template(),
            route.share(),
            fmt_duration(route.query_cost()),
            route.cache_control()
        );
    }

    out += "\n## P99 by phase\n\n";
    let phase_table = Table {
        header: std::iter::once("scenario")
            .chain(plan.phases.iter().map(|p| p.name))
            .collect(),
        right: std::iter::once(false)
            .chain(plan.phases.iter().map(|_| true))
            .collect(),
        rows: rows
            .iter()
            .map(|r| {
                std::iter::once(r.scenario.name().to_owned())
                    .chain(
                        r.by_phase
                            .iter()
                            .map(|l| l.as_ref().map_or("-".into(), |l| fmt_duration(l.p99))),
                    )
                    .collect()
            })
            .collect(),
    };
    out += &phase_table.markdown();

    out += "\n## By route\n\nP50 / P99 of successful responses, and calls that reached the backend.\n\n";
    let route_table = Table {
        header: std::iter::once("scenario")
            .chain(Route::ALL.iter().map(|r| r.template()))
            .collect(),
        right: std::iter::once(false)
            .chain(Route::ALL.iter().map(|_| true))
            .collect(),
        rows: rows
            .iter()
            .map(|r| {
                std::iter::once(r.scenario.name().to_owned())
                    .chain(r.by_route.iter().map(|(_, l, calls)| match l {
                        Some(l) => format!(
                            "{} / {} ({calls} calls)",
                            fmt_duration(l.p50),
                            fmt_duration(l.p99)
                        ),
                        None => format!("- ({calls} calls)"),
                    }))
                    .collect()
            })
            .collect(),
    };
    out += &route_table.markdown();

    out += "\n## Scenarios\n\n";
    for row in rows {
        let _ = writeln!(
            out,
            "- **{}**: {}",
            row.scenario.name(),
            row.scenario.about()
        );
        let mut extra = Vec::new();
        if row.timeouts > 0 {
            extra.push(format!("{} timed out", row.timeouts));
        }
        if row.dropped > 0 {
            extra.push(format!(
                "{} not sent (client at its in-flight cap)",
                row.dropped
            ));
        }
        if row.pool_timeouts > 0 {
            extra.push(format!(
                "{} failed waiting for a database connection",
                row.pool_timeouts
            ));
        }
        if !extra.is_empty() {
            let _ = writeln!(out, "  - {}", extra.join("; "));
        }
        for note in &row.notes {
            let _ = writeln!(out, "  - {note}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_and_render_markdown() {
        let t = Table {
            header: vec!["name", "n"],
            right: vec![false, true],
            rows: vec![
                vec!["a".into(), "1".into()],
                vec!["long".into(), "100".into()],
            ],
        };
        assert_eq!(t.text(), "name    n\n────  ───\na       1\nlong  100\n");
        assert_eq!(
            t.markdown(),
            "| name | n |\n|---|---:|\n| a | 1 |\n| long | 100 |\n"
        );
    }

    fn row(p50_ms: u64, p99_ms: u64, calls: u64, throughput: f64, shed: u64) -> Row {
        let ms = Duration::from_millis;
        let latency = Percentiles {
            count: 1000,
            p50: ms(p50_ms),
            p95: ms(p99_ms),
            p99: ms(p99_ms),
            max: ms(p99_ms),
        };
        Row {
            scenario: Scenario::Bare,
            sent: 1000,
            ok: 1000 - shed,
            shed,
            errors: 0,
            timeouts: 0,
            dropped: 0,
            throughput,
            elapsed: Duration::from_secs(4),
            latency: Some(latency),
            by_phase: Vec::new(),
            by_route: Vec::new(),
            backend_calls: calls,
            pool_timeouts: 0,
            hit_ratio: None,
            notes: Vec::new(),
        }
    }

    #[test]
    fn what_it_bought_reports_changes_past_noise_both_ways() {
        let base = row(100, 900, 1000, 250.0, 0);
        let same = row(105, 880, 1010, 251.0, 0);
        assert_eq!(changes(&same, &base), "≈ bare (no change past noise)");
        let better = row(10, 30, 200, 240.0, 0);
        assert_eq!(
            changes(&better, &base),
            "P50 10.0× lower, P99 30.0× lower, −80% backend calls"
        );
        let worse = row(150, 1800, 1000, 200.0, 50);
        assert_eq!(
            changes(&worse, &base),
            "P50 1.5× higher, P99 2.0× higher, −20% throughput, sheds 5.0%"
        );
        assert_eq!(bought(&base, Some(&base)), "baseline");
        assert_eq!(bought(&base, None), "- (bare not run)");
    }

    #[test]
    fn shares_are_shown_only_when_non_zero() {
        assert_eq!(share(0, 10), "0");
        assert_eq!(share(1, 8), "1 (12.5%)");
    }
}
