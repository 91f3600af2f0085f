//! Medians over rounds, ratios against bare, and the Markdown report.

use std::collections::BTreeMap;
use std::fmt::Write;

use crate::contenders::{Contender, BARE, PEER_STACK, TP_CACHE, TP_FULL_STACK};
use crate::jobs::Job;
use crate::load::Sample;

/// One contender's run in one round.
#[derive(Clone, Debug)]
pub struct Run {
    pub round: usize,
    pub sample: Sample,
    /// Handler invocations during the run (warm-up included).
    pub calls: u64,
}

/// Everything measured.
#[derive(Debug, Default)]
pub struct Results {
    pub runs: BTreeMap<(Job, String), Vec<Run>>,
    /// Bare at low load: the reference of the overload job.
    pub no_load: Vec<Run>,
}

/// What the report says about how it was made.
#[derive(Debug)]
pub struct Context {
    pub command: String,
    pub machine: String,
    pub method: Vec<String>,
    pub client_threads: usize,
    /// The database's capacity, req/s: what the overload job can admit.
    pub capacity: f64,
}

/// Nearest-rank percentile of sorted values.
pub fn percentile(sorted: &[u32], q: f64) -> Option<u32> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// Median of the values (mean of the middle two for an even count).
pub fn median(mut values: Vec<f64>) -> Option<f64> {
    values.retain(|v| v.is_finite());
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    Some(if values.len() % 2 == 1 {
        values[mid]
    } else {
        (values[mid - 1] + values[mid]) / 2.0
    })
}

/// Per-round figures of one run.
#[derive(Clone, Copy, Debug)]
struct Figures {
    rps: f64,
    p50: f64,
    p99: f64,
    cpu_us_per_req: f64,
    client_busy: f64,
    calls_per_req: f64,
    shed_rps: f64,
    shed: f64,
    failed: f64,
    offered_rps: f64,
}

impl Figures {
    fn of(run: &Run, client_threads: usize) -> Figures {
        let t = &run.sample.tally;
        let secs = run.sample.window.as_secs_f64();
        let mut lat = t.latencies_us.clone();
        lat.sort_unstable();
        let pct = |q| percentile(&lat, q).map_or(f64::NAN, f64::from);
        let per_ok = |d: Option<std::time::Duration>| {
            d.map_or(f64::NAN, |d| d.as_secs_f64() * 1e6 / t.ok as f64)
        };
        let answered = t.ok + t.shed + t.other + t.errors;
        Figures {
            rps: t.ok as f64 / secs,
            p50: pct(0.50),
            p99: pct(0.99),
            cpu_us_per_req: per_ok(run.sample.server_cpu),
            client_busy: run
                .sample
                .client_cpu
                .map_or(f64::NAN, |d| d.as_secs_f64() / secs / client_threads as f64),
            calls_per_req: run.calls as f64 / t.sent.max(1) as f64,
            shed_rps: t.shed as f64 / secs,
            shed: t.shed as f64,
            failed: (t.other + t.errors + t.unsent) as f64,
            offered_rps: (answered + t.unsent) as f64 / secs,
        }
    }
}

/// Medians of a contender's figures over the rounds, and of its per-round
/// ratios against the run of `reference` in the same round.
#[derive(Clone, Copy, Debug)]
struct Row {
    rps: f64,
    p50: f64,
    p99: f64,
    cpu_us_per_req: f64,
    client_busy: f64,
    calls_per_req: f64,
    shed_rps: f64,
    shed: f64,
    failed: f64,
    offered_rps: f64,
    /// Throughput ratio to the reference.
    rps_ratio: f64,
    /// Server CPU per request ratio to the reference (cost: higher is worse).
    cpu_ratio: f64,
    /// Overload: admitted p99 over the no-load p99 of the same round.
    p99_ratio: f64,
}

fn row(runs: &[Run], reference: &[Run], client_threads: usize) -> Row {
    let figs: Vec<(usize, Figures)> = runs
        .iter()
        .map(|r| (r.round, Figures::of(r, client_threads)))
        .collect();
    let refs: BTreeMap<usize, Figures> = reference
        .iter()
        .map(|r| (r.round, Figures::of(r, client_threads)))
        .collect();
    let med = |f: fn(&Figures) -> f64| median(figs.iter().map(|(_, x)| f(x)).collect());
    let ratio = |f: fn(&Figures) -> f64| {
        median(
            figs.iter()
                .filter_map(|(round, x)| Some(f(x) / f(refs.get(round)?)))
                .collect(),
        )
    };
    let nan = f64::NAN;
    Row {
        rps: med(|f| f.rps).unwrap_or(nan),
        p50: med(|f| f.p50).unwrap_or(nan),
        p99: med(|f| f.p99).unwrap_or(nan),
        cpu_us_per_req: med(|f| f.cpu_us_per_req).unwrap_or(nan),
        client_busy: med(|f| f.client_busy).unwrap_or(nan),
        calls_per_req: med(|f| f.calls_per_req).unwrap_or(nan),
        shed_rps: med(|f| f.shed_rps).unwrap_or(nan),
        shed: med(|f| f.shed).unwrap_or(nan),
        failed: med(|f| f.failed).unwrap_or(nan),
        offered_rps: med(|f| f.offered_rps).unwrap_or(nan),
        rps_ratio: ratio(|f| f.rps).unwrap_or(nan),
        cpu_ratio: ratio(|f| f.cpu_us_per_req).unwrap_or(nan),
        p99_ratio: ratio(|f| f.p99).unwrap_or(nan),
    }
}

fn rps(v: f64) -> String {
    if !v.is_finite() {
        return "n/a".into();
    }
    let n = v.round() as u64;
    let s = n.to_string();
    let mut out = String::new();
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

fn latency(us: f64) -> String {
    match us {
        us if !us.is_finite() => "n/a".into(),
        us if us < 1000.0 => format!("{us:.0} µs"),
        us => format!("{:.2} ms", us / 1000.0),
    }
}

fn times(v: f64) -> String {
    if v.is_finite() {
        format!("{v:.2}×")
    } else {
        "n/a".into()
    }
}

fn fixed(v: f64, digits: usize) -> String {
    if v.is_finite() {
        format!("{v:.digits$}")
    } else {
        "n/a".into()
    }
}

/// The whole report.
pub fn markdown(
    ctx: &Context,
    contenders: &[Contender],
    jobs: &[Job],
    results: &Results,
) -> String {
    let mut md = String::new();
    let w = &mut md;
    let _ = writeln!(
        w,
        "# Loopback benchmark: tower-perf, the bare app and the peers\n"
    );
    let _ = writeln!(w, "- machine: {}", ctx.machine);
    let _ = writeln!(w, "- command: `{}`", ctx.command);
    for line in &ctx.method {
        let _ = writeln!(w, "- {line}");
    }
    let mut rows: BTreeMap<(Job, String), Row> = BTreeMap::new();
    for &job in jobs {
        let Some(bare) = results.runs.get(&(job, BARE.to_string())) else {
            continue;
        };
        let _ = writeln!(w, "\n## {}\n", job.title());
        if job == Job::Overload {
            overload_table(w, ctx, contenders, job, results, &mut rows);
            continue;
        }
        let _ = writeln!(
            w,
            "| contender | 2xx req/s | × bare | p50 | p99 | server CPU µs/2xx | CPU × bare | backend calls/req | 503s | failed |"
        );
        let _ = writeln!(w, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
        let mut busiest: f64 = 0.0;
        for c in contenders.iter().filter(|c| c.jobs.contains(&job)) {
            let Some(runs) = results.runs.get(&(job, c.name.clone())) else {
                continue;
            };
            let r = row(runs, bare, ctx.client_threads);
            busiest = busiest.max(r.client_busy);
            let _ = writeln!(
                w,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                c.name,
                rps(r.rps),
                times(r.rps_ratio),
                latency(r.p50),
                latency(r.p99),
                fixed(r.cpu_us_per_req, 1),
                times(r.cpu_ratio),
                fixed(r.calls_per_req, 3),
                fixed(r.shed, 0),
                fixed(r.failed, 0),
            );
            rows.insert((job, c.name.clone()), r);
        }
        if busiest.is_finite() && busiest > 0.0 {
            let _ = writeln!(
                w,
                "\nLoad generator busy: at most {:.0}% of its {} thread(s){}",
                busiest * 100.0,
                ctx.client_threads,
                if busiest > 0.9 {
                    " — client-bound: throughput ratios understate the differences; \
                     read the server CPU column"
                } else {
                    "."
                }
            );
        }
    }
    targets(w, &rows, ctx.capacity);
    let _ = writeln!(w, "\n## Contenders and their configuration\n");
    for c in contenders {
        let jobs: Vec<&str> = c.jobs.iter().map(|j| j.key()).collect();
        let _ = writeln!(w, "- **{}** ({}): {}", c.name, jobs.join(", "), c.config);
    }
    md
}

fn overload_table(
    w: &mut String,
    ctx: &Context,
    contenders: &[Contender],
    job: Job,
    results: &Results,
    rows: &mut BTreeMap<(Job, String), Row>,
) {
    let no_load = row(&results.no_load, &results.no_load, ctx.client_threads);
    let _ = writeln!(
        w,
        "| contender | offered req/s | admitted (2xx) req/s | shed (503) req/s | failed or unsent | admitted p50 | admitted p99 | p99 ÷ no-load p99 |"
    );
    let _ = writeln!(w, "|---|---:|---:|---:|---:|---:|---:|---:|");
    let _ = writeln!(
        w,
        "| bare, no load | {} | {} | {} | {} | {} | {} | 1.00× |",
        rps(no_load.offered_rps),
        rps(no_load.rps),
        rps(no_load.shed_rps),
        fixed(no_load.failed, 0),
        latency(no_load.p50),
        latency(no_load.p99),
    );
    for c in contenders.iter().filter(|c| c.jobs.contains(&job)) {
        let Some(runs) = results.runs.get(&(job, c.name.clone())) else {
            continue;
        };
        // p99 against the no-load p99 of the same round.
        let r = row(runs, &results.no_load, ctx.client_threads);
        let _ = writeln!(
            w,
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            c.name,
            rps(r.offered_rps),
            rps(r.rps),
            rps(r.shed_rps),
            fixed(r.failed, 0),
            latency(r.p50),
            latency(r.p99),
            times(r.p99_ratio),
        );
        rows.insert((job, c.name.clone()), r);
    }
}

/// The targets, with tower-perf's figure and the peers' that do the same job
/// beside it. Throughput targets also give the CPU-derived ratio (bare's
/// server CPU per response over the contender's), which a busy shared
/// machine disturbs far less than throughput.
fn targets(w: &mut String, rows: &BTreeMap<(Job, String), Row>, capacity: f64) {
    let _ = writeln!(w, "\n## Targets\n");
    let _ = writeln!(
        w,
        "Throughput ratios read \"measured (CPU-derived)\"; the CPU-derived figure is \
         bare's server CPU per response over the contender's.\n"
    );
    let _ = writeln!(w, "| target | tower-perf | peers doing the same job |");
    let _ = writeln!(w, "|---|---|---|");
    let figure = |job: Job, r: &Row| -> (f64, String) {
        if job == Job::Overload {
            // The p99 only counts beside how much work got through.
            let text = format!(
                "{} at {} req/s admitted ({:.0}% of capacity)",
                times(r.p99_ratio),
                rps(r.rps),
                r.rps / capacity * 100.0
            );
            (r.p99_ratio, text)
        } else {
            let cpu = 1.0 / r.cpu_ratio;
            (
                r.rps_ratio,
                format!("{} ({})", times(r.rps_ratio), times(cpu)),
            )
        }
    };
    let peers = |job: Job, is_peer: &dyn Fn(&str) -> bool| -> String {
        let list: Vec<String> = rows
            .iter()
            .filter(|((j, name), _)| *j == job && is_peer(name))
            .map(|((_, name), r)| format!("{name} {}", figure(job, r).1))
            .collect();
        if list.is_empty() {
            "not measured".into()
        } else {
            list.join("; ")
        }
    };
    let verdict = |job: Job, name: &str, pass: &dyn Fn(f64) -> bool| -> String {
        match rows.get(&(job, name.to_string())) {
            Some(r) if figure(job, r).0.is_finite() => {
                let (value, text) = figure(job, r);
                format!("{} {text}", if pass(value) { "✅" } else { "❌" })
            }
            _ => format!("not measured (`{name}` not in the contender table)"),
        }
    };
    let is_cache = |name: &str| name.contains("cache") && !name.starts_with("tower-perf");
    for (job, label) in [(Job::Hit1k, "1 KiB"), (Job::Hit100k, "100 KiB")] {
        let _ = writeln!(
            w,
            "| cache hit ≥ 0.95× bare throughput, {label} | {} | {} |",
            verdict(job, TP_CACHE, &|r| r >= 0.95),
            peers(job, &is_cache),
        );
    }
    let _ = writeln!(
        w,
        "| cache miss that stores: ≤ 5% overhead (≥ 0.95× bare throughput), 1 KiB | {} | {} |",
        verdict(Job::Miss1k, TP_CACHE, &|r| r >= 0.95),
        peers(Job::Miss1k, &is_cache),
    );
    let _ = writeln!(
        w,
        "| full stack on a trivial handler: ≤ 10% throughput loss (≥ 0.90× bare) | {} | {} |",
        verdict(Job::Trivial, TP_FULL_STACK, &|r| r >= 0.90),
        peers(Job::Trivial, &|name: &str| name == PEER_STACK),
    );
    let _ = writeln!(
        w,
        "| 2× overload: admitted p99 ≤ 1.25× no-load p99 | {} | {} |",
        verdict(Job::Overload, TP_FULL_STACK, &|r| r <= 1.25),
        peers(Job::Overload, &|name: &str| {
            name != BARE && !name.starts_with("tower-perf")
        }),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<u32> = (1..=100).collect();
        assert_eq!(percentile(&v, 0.5), Some(50));
        assert_eq!(percentile(&v, 0.99), Some(99));
        assert_eq!(percentile(&v, 1.0), Some(100));
        assert_eq!(percentile(&v, 0.0), Some(1));
        assert_eq!(percentile(&[], 0.5), None);
    }

    #[test]
    fn medians_skip_missing_values() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(vec![f64::NAN, 5.0]), Some(5.0));
        assert_eq!(median(vec![]), None);
    }

    fn run(round: usize, ok: u64, cpu_ms: u64) -> Run {
        let tally = crate::load::Tally {
            ok,
            sent: ok,
            latencies_us: vec![100; ok as usize],
            ..Default::default()
        };
        Run {
            round,
            calls: ok,
            sample: Sample {
                tally,
                window: std::time::Duration::from_secs(1),
                server_cpu: Some(std::time::Duration::from_millis(cpu_ms)),
                client_cpu: None,
            },
        }
    }

    fn contender(name: &str, jobs: &'static [Job]) -> Contender {
        Contender {
            name: name.into(),
            jobs,
            config: "test".into(),
            wrap: Box::new(crate::app::app::<axum::Router>),
        }
    }

    #[test]
    fn targets_judge_medians_of_per_round_ratios() {
        let ctx = Context {
            command: "loopback".into(),
            machine: "test".into(),
            method: vec![],
            client_threads: 1,
            capacity: 800.0,
        };
        let contenders = [
            contender(BARE, Job::ALL),
            contender(TP_CACHE, &[Job::Hit1k, Job::Hit100k]),
        ];
        let mut results = Results::default();
        let mut add = |job, name: &str, runs: Vec<Run>| {
            results.runs.insert((job, name.to_string()), runs);
        };
        add(
            Job::Hit1k,
            BARE,
            vec![run(0, 1000, 10), run(1, 2000, 20), run(2, 1000, 10)],
        );
        // Per round 0.97, 0.96, 0.50: the median ratio passes.
        add(
            Job::Hit1k,
            TP_CACHE,
            vec![run(0, 970, 10), run(1, 1920, 20), run(2, 500, 10)],
        );
        add(Job::Hit100k, BARE, vec![run(0, 1000, 10)]);
        add(Job::Hit100k, TP_CACHE, vec![run(0, 900, 18)]);
        let md = markdown(&ctx, &contenders, &[Job::Hit1k, Job::Hit100k], &results);
        // CPU per response rises 1.03×, 1.04×, 2×: the median 1.04× reads 0.96×.
        assert!(md.contains("1 KiB | ✅ 0.96× (0.96×)"), "{md}");
        assert!(md.contains("100 KiB | ❌ 0.90× (0.50×)"), "{md}");
        assert!(md.contains("not measured (`tower-perf full stack`"), "{md}");
        assert!(md.contains("| tower-perf cache | 970 | 0.96× |"), "{md}");
    }

    #[test]
    fn formats() {
        assert_eq!(rps(1234567.4), "1,234,567");
        assert_eq!(rps(999.0), "999");
        assert_eq!(latency(250.0), "250 µs");
        assert_eq!(latency(12_345.0), "12.35 ms");
        assert_eq!(times(0.956), "0.96×");
        assert_eq!(times(f64::NAN), "n/a");
    }
}
