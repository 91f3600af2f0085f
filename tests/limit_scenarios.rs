//! The adaptive limiter's scenario suite: a deterministic simulator.
//!
//! A backend of `C = 16` workers (FIFO queue in front, so latency rises with
//! queueing; one scenario has 8, with the loopback benchmark's constant
//! 10 ms) serves requests whose service time is drawn from a seeded RNG;
//! an open-loop Poisson load generator drives it under tokio's paused clock.
//! Each scenario runs against the three algorithms and four baselines (no
//! limit, a fixed limit of C, 4C and C/4), prints one table, and asserts the
//! issue's targets for the default algorithm.
//!
//! Run with `cargo test --test limit_scenarios -- --nocapture --test-threads 2`
//! to see the tables. Timers under the paused clock tick in whole
//! milliseconds, so every latency here is rounded up to a millisecond.

#![cfg(feature = "limit")]

use std::{
    collections::VecDeque,
    convert::Infallible,
    future::Future,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use rand::{rngs::StdRng, RngExt, SeedableRng};
use tokio::{sync::oneshot, task::JoinSet, time::Instant};
use tower::{Layer, Service, ServiceExt};
use tower_perf::limit::{
    AdaptiveLimitLayer, Aimd, Algorithm, DefaultAlgorithm, Gradient2, LimitHandle, Sample, Vegas,
};

const C: usize = 16;
const S_MS: f64 = 10.0;
/// Requests per second the backend serves at its nominal capacity.
const CAPACITY: f64 = C as f64 * 1000.0 / S_MS;
const SEED: u64 = 0x5eed_1234;

// ---------------------------------------------------------------- backend

/// Service-time distribution, in milliseconds.
#[derive(Debug, Clone, Copy)]
enum Dist {
    Exp(f64),
    /// Always this long.
    Const(f64),
    /// Lognormal with this mean and log-space sigma.
    LogNormal(f64, f64),
}

impl Dist {
    fn sample(self, rng: &mut StdRng) -> f64 {
        match self {
            Dist::Exp(mean) => exp_sample(rng, mean),
            Dist::Const(ms) => ms,
            Dist::LogNormal(mean, sigma) => {
                let mu = mean.ln() - sigma * sigma / 2.0;
                (mu + sigma * normal(rng)).exp()
            }
        }
    }
}

impl Dist {
    fn mean(self) -> f64 {
        match self {
            Dist::Exp(mean) | Dist::Const(mean) | Dist::LogNormal(mean, _) => mean,
        }
    }
}

fn exp_sample(rng: &mut StdRng, mean: f64) -> f64 {
    -mean * (1.0 - rng.random::<f64>()).ln()
}

/// Box-Muller.
fn normal(rng: &mut StdRng) -> f64 {
    let u1: f64 = 1.0 - rng.random::<f64>();
    let u2: f64 = rng.random();
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

#[derive(Debug, Default)]
struct BackendState {
    workers: usize,
    busy: usize,
    in_flight: usize,
    /// Service times are multiplied by this (the service-time step).
    slowdown: f64,
    /// Answer 503 at once when this many requests are already in flight.
    fail_at: Option<usize>,
    waiting: VecDeque<oneshot::Sender<()>>,
}

impl BackendState {
    fn dispatch(&mut self) {
        while self.busy < self.workers {
            let Some(tx) = self.waiting.pop_front() else {
                return;
            };
            if tx.send(()).is_ok() {
                self.busy += 1;
            }
        }
    }
}

/// `C` workers behind a FIFO queue; the request's extension carries its
/// service time.
#[derive(Debug, Clone)]
struct Backend(Arc<Mutex<BackendState>>);

#[derive(Debug, Clone, Copy)]
struct ServiceTime(f64);

impl Backend {
    fn new(workers: usize) -> Self {
        Self(Arc::new(Mutex::new(BackendState {
            workers,
            slowdown: 1.0,
            ..Default::default()
        })))
    }

    fn set_workers(&self, workers: usize) {
        let mut state = self.0.lock().unwrap();
        state.workers = workers;
        state.dispatch();
    }
}

impl Service<Request<()>> for Backend {
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<()>) -> Self::Future {
        let shared = self.0.clone();
        let ms = req.extensions().get::<ServiceTime>().unwrap().0;
        Box::pin(async move {
            let wait = {
                let mut state = shared.lock().unwrap();
                if state.fail_at.is_some_and(|k| state.in_flight >= k) {
                    let mut res = Response::new(Full::default());
                    *res.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
                    return Ok(res);
                }
                state.in_flight += 1;
                if state.busy < state.workers && state.waiting.is_empty() {
                    state.busy += 1;
                    None
                } else {
                    let (tx, rx) = oneshot::channel();
                    state.waiting.push_back(tx);
                    Some(rx)
                }
            };
            if let Some(rx) = wait {
                rx.await.unwrap();
            }
            // The paused clock ticks in whole milliseconds and rounds a sleep
            // up; rounding to the nearest millisecond first keeps the mean.
            let slowdown = shared.lock().unwrap().slowdown;
            let ms = (ms * slowdown).round();
            tokio::time::sleep(Duration::from_secs_f64(ms / 1000.0)).await;
            let mut state = shared.lock().unwrap();
            state.busy -= 1;
            state.in_flight -= 1;
            state.dispatch();
            Ok(Response::new(Full::default()))
        })
    }
}

// ---------------------------------------------------------------- load

/// A change to the backend at a point in time.
#[derive(Debug, Clone, Copy)]
enum Change {
    Workers(usize),
    Slowdown(f64),
}

#[derive(Debug, Clone)]
struct Scenario {
    name: &'static str,
    /// Seconds simulated.
    duration: f64,
    /// Offered load (requests per second) at time t, per traffic class.
    rate: fn(f64) -> f64,
    /// A second traffic class (partition "batch"); the first is "live".
    batch_rate: Option<fn(f64) -> f64>,
    dist: Dist,
    /// Backend workers.
    workers: usize,
    changes: Vec<(f64, Change)>,
    fail_at: Option<usize>,
    initial_limit: usize,
    /// Partition shares (live, batch), when the scenario partitions.
    partitions: Option<(f64, f64)>,
    /// Metrics cover arrivals in this interval.
    measure: (f64, f64),
}

impl Scenario {
    fn new(name: &'static str, duration: f64, rate: fn(f64) -> f64) -> Self {
        Self {
            name,
            duration,
            rate,
            batch_rate: None,
            dist: Dist::Exp(S_MS),
            workers: C,
            changes: Vec::new(),
            fail_at: None,
            initial_limit: 20,
            partitions: None,
            measure: (2.0, duration),
        }
    }

    /// Requests per second the backend serves at its nominal service time.
    fn capacity(&self) -> f64 {
        self.workers as f64 * 1000.0 / self.dist.mean()
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Ok,
    Rejected,
    Failed,
}

#[derive(Debug, Clone, Copy)]
struct Record {
    /// Arrival, seconds since start.
    at: f64,
    latency_ms: f64,
    kind: Kind,
    batch: bool,
}

struct Run {
    records: Vec<Record>,
    /// (seconds since start, limit), every 10 ms.
    limits: Vec<(f64, usize)>,
}

/// Drives `svc` through the scenario.
fn simulate<S, B>(scenario: &Scenario, backend: Backend, svc: S, handle: Option<LimitHandle>) -> Run
where
    S: Service<Request<()>, Response = Response<B>, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
{
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    rt.block_on(async move {
        backend.0.lock().unwrap().fail_at = scenario.fail_at;
        let start = Instant::now();
        let at = move |t: f64| start + Duration::from_secs_f64(t);
        let records = Arc::new(Mutex::new(Vec::new()));
        let limits = Arc::new(Mutex::new(Vec::new()));
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));

        if let Some(handle) = handle {
            let (limits, done) = (limits.clone(), done.clone());
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_millis(10));
                while !done.load(std::sync::atomic::Ordering::Relaxed) {
                    let now = tick.tick().await;
                    let t = (now - start).as_secs_f64();
                    limits.lock().unwrap().push((t, handle.limit()));
                }
            });
        }
        for &(t, change) in &scenario.changes {
            let backend = backend.clone();
            tokio::spawn(async move {
                tokio::time::sleep_until(at(t)).await;
                match change {
                    Change::Workers(n) => backend.set_workers(n),
                    Change::Slowdown(f) => backend.0.lock().unwrap().slowdown = f,
                }
            });
        }

        let mut rng = StdRng::seed_from_u64(SEED);
        let mut tasks = JoinSet::new();
        let classes: Vec<(bool, fn(f64) -> f64)> = std::iter::once((false, scenario.rate))
            .chain(scenario.batch_rate.map(|r| (true, r)))
            .collect();
        // Next arrival per class; rates are piecewise smooth, so draw each
        // gap at the rate in force (floored to keep idle phases finite).
        let mut next: Vec<f64> = classes
            .iter()
            .map(|(_, rate)| exp_sample(&mut rng, 1.0 / rate(0.0).max(0.5)))
            .collect();
        loop {
            let (i, &t) = next
                .iter()
                .enumerate()
                .min_by(|a, b| a.1.total_cmp(b.1))
                .unwrap();
            if t >= scenario.duration {
                break;
            }
            let (batch, rate) = classes[i];
            next[i] = t + exp_sample(&mut rng, 1.0 / rate(t).max(0.5));
            if rate(t) < 0.5 {
                continue;
            }
            let ms = scenario.dist.sample(&mut rng);
            tokio::time::sleep_until(at(t)).await;
            let mut req = Request::new(());
            req.extensions_mut().insert(ServiceTime(ms));
            if batch {
                req.headers_mut()
                    .insert("x-class", "batch".parse().unwrap());
            } else {
                req.headers_mut().insert("x-class", "live".parse().unwrap());
            }
            let svc = svc.clone();
            let records = records.clone();
            tasks.spawn(async move {
                let sent = Instant::now();
                let res = svc.oneshot(req).await.unwrap();
                let kind = match res.status() {
                    StatusCode::OK => Kind::Ok,
                    _ if res.headers().contains_key("retry-after") => Kind::Rejected,
                    _ => Kind::Failed,
                };
                let _ = res.into_body().collect().await;
                records.lock().unwrap().push(Record {
                    at: (sent - start).as_secs_f64(),
                    latency_ms: (Instant::now() - sent).as_secs_f64() * 1000.0,
                    kind,
                    batch,
                });
            });
        }
        while tasks.join_next().await.is_some() {}
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(20)).await;
        let records = std::mem::take(&mut *records.lock().unwrap());
        let limits = std::mem::take(&mut *limits.lock().unwrap());
        Run { records, limits }
    })
}

// ---------------------------------------------------------------- variants

/// Never changes the limit: the fixed baselines.
#[derive(Debug, Clone)]
struct Fixed;

impl Algorithm for Fixed {
    fn update(&mut self, limit: usize, _: &Sample) -> usize {
        limit
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Variant {
    NoLimit,
    Fixed(usize),
    Aimd,
    Vegas,
    Gradient2,
}

/// The algorithms and the baselines for a backend of `c` workers.
fn variants(c: usize) -> [Variant; 7] {
    [
        Variant::NoLimit,
        Variant::Fixed(c),
        Variant::Fixed(4 * c),
        Variant::Fixed(c / 4),
        Variant::Aimd,
        Variant::Vegas,
        Variant::Gradient2,
    ]
}

impl Variant {
    fn name(self) -> String {
        match self {
            Variant::NoLimit => "no limit".into(),
            Variant::Fixed(n) => format!("fixed {n}"),
            Variant::Aimd => "Aimd".into(),
            Variant::Vegas => "Vegas".into(),
            Variant::Gradient2 => "Gradient2".into(),
        }
    }

    fn is_default(self) -> bool {
        let default = std::any::type_name::<DefaultAlgorithm>();
        default.ends_with(&format!("::{}", self.name()))
    }

    fn run(self, scenario: &Scenario) -> Run {
        let backend = Backend::new(scenario.workers);
        match self {
            Variant::NoLimit => simulate(scenario, backend.clone(), backend, None),
            Variant::Fixed(n) => limited(scenario, backend, Fixed, n),
            Variant::Aimd => limited(scenario, backend, Aimd::default(), scenario.initial_limit),
            Variant::Vegas => limited(scenario, backend, Vegas::default(), scenario.initial_limit),
            Variant::Gradient2 => limited(
                scenario,
                backend,
                Gradient2::default(),
                scenario.initial_limit,
            ),
        }
    }
}

fn limited<A: Algorithm>(scenario: &Scenario, backend: Backend, algo: A, initial: usize) -> Run {
    let mut layer = AdaptiveLimitLayer::with_algorithm(algo).initial_limit(initial);
    if let Some((live, batch)) = scenario.partitions {
        layer = layer
            .partition_by_header(http::HeaderName::from_static("x-class"))
            .partition("live", live)
            .partition("batch", batch);
    }
    let handle = layer.handle();
    simulate(
        scenario,
        backend.clone(),
        layer.layer(backend),
        Some(handle),
    )
}

// ---------------------------------------------------------------- figures

#[derive(Debug, Clone, Copy, Default)]
struct Figures {
    /// Successful responses per second.
    goodput: f64,
    p50: f64,
    p99: f64,
    rejected: f64,
    failed: f64,
    mean_limit: f64,
    /// Coefficient of variation of the limit (std / mean).
    limit_cv: f64,
}

fn percentile(mut xs: Vec<f64>, p: f64) -> f64 {
    if xs.is_empty() {
        return f64::NAN;
    }
    xs.sort_by(f64::total_cmp);
    xs[((xs.len() as f64 * p).ceil() as usize).clamp(1, xs.len()) - 1]
}

impl Run {
    /// Latency and shares over requests that arrived in `[from, to)`;
    /// goodput over successful responses that completed in it.
    fn figures(&self, from: f64, to: f64, filter: impl Fn(&Record) -> bool) -> Figures {
        let completed = self
            .records
            .iter()
            .filter(|r| {
                let end = r.at + r.latency_ms / 1000.0;
                r.kind == Kind::Ok && end >= from && end < to && filter(r)
            })
            .count();
        let window: Vec<&Record> = self
            .records
            .iter()
            .filter(|r| r.at >= from && r.at < to && filter(r))
            .collect();
        let ok: Vec<f64> = window
            .iter()
            .filter(|r| r.kind == Kind::Ok)
            .map(|r| r.latency_ms)
            .collect();
        let share = |kind| {
            window.iter().filter(|r| r.kind == kind).count() as f64 / window.len().max(1) as f64
        };
        let limits: Vec<f64> = self
            .limits
            .iter()
            .filter(|(t, _)| *t >= from && *t < to)
            .map(|&(_, l)| l as f64)
            .collect();
        let (mean_limit, limit_cv) = if limits.is_empty() {
            (f64::NAN, f64::NAN)
        } else {
            let mean = limits.iter().sum::<f64>() / limits.len() as f64;
            let var = limits.iter().map(|l| (l - mean).powi(2)).sum::<f64>() / limits.len() as f64;
            (mean, var.sqrt() / mean)
        };
        Figures {
            goodput: completed as f64 / (to - from),
            p50: percentile(ok.clone(), 0.5),
            p99: percentile(ok, 0.99),
            rejected: share(Kind::Rejected),
            failed: share(Kind::Failed),
            mean_limit,
            limit_cv,
        }
    }

    fn measured(&self, scenario: &Scenario) -> Figures {
        self.figures(scenario.measure.0, scenario.measure.1, |_| true)
    }

    /// p99 of successful requests per `width`-second bucket from `from` to `to`.
    fn p99_series(&self, from: f64, to: f64, width: f64) -> Vec<f64> {
        let mut t = from;
        let mut out = Vec::new();
        while t + width <= to + 1e-9 {
            out.push(self.figures(t, t + width, |_| true).p99);
            t += width;
        }
        out
    }

    /// Seconds after `from` until the p99 stays within `bound` up to `to`,
    /// in two-second buckets (a one-second bucket of a throttled phase holds
    /// too few requests for a steady p99).
    fn settle_time(&self, from: f64, to: f64, bound: f64) -> f64 {
        const WIDTH: f64 = 2.0;
        let series = self.p99_series(from, to, WIDTH);
        let last_bad = series.iter().rposition(|&p| p.is_nan() || p > bound);
        last_bad.map_or(0.0, |i| (i + 1) as f64 * WIDTH)
    }

    /// Seconds until the limit enters `[lo, hi]` for good (NaN if it never does).
    fn converged_at(&self, lo: f64, hi: f64) -> f64 {
        let last_out = self
            .limits
            .iter()
            .rposition(|&(_, l)| (l as f64) < lo || l as f64 > hi);
        match last_out {
            None => 0.0,
            Some(i) if i + 1 < self.limits.len() => self.limits[i + 1].0,
            Some(_) => f64::NAN,
        }
    }
}

/// The p50 and p99 latency at no load (25 req/s) for a service-time
/// distribution, on `C` workers.
fn no_load(dist: Dist) -> (f64, f64) {
    let mut scenario = Scenario::new("no load", 400.0, |_| 25.0);
    scenario.dist = dist;
    no_load_of(&scenario)
}

fn no_load_of(scenario: &Scenario) -> (f64, f64) {
    let backend = Backend::new(scenario.workers);
    let run = simulate(scenario, backend.clone(), backend, None);
    let f = run.figures(0.0, scenario.duration, |_| true);
    (f.p50, f.p99)
}

fn header(out: &mut String, scenario: &Scenario, no_load_p99: f64) {
    out.push_str(&format!("\n### {}\n\n", scenario.name));
    out.push_str(&format!(
        "No-load p99: {no_load_p99:.1} ms. Capacity: {:.0} req/s.\n\n",
        scenario.capacity()
    ));
}

fn table_head(out: &mut String, extra: &[&str]) {
    let mut head = "| variant | goodput (req/s) | goodput / capacity | p50 ms | p99 ms | rejected | backend 503 | mean limit | limit CV |".to_string();
    let mut rule = "|---|---|---|---|---|---|---|---|---|".to_string();
    for e in extra {
        head.push_str(&format!(" {e} |"));
        rule.push_str("---|");
    }
    out.push_str(&format!("{head}\n{rule}\n"));
}

fn table_row(out: &mut String, variant: Variant, f: &Figures, capacity: f64, extra: &[String]) {
    let mark = if variant.is_default() {
        " (default)"
    } else {
        ""
    };
    let mut row = format!(
        "| {}{mark} | {:.0} | {:.1} % | {:.1} | {:.1} | {:.1} % | {:.1} % | {} | {} |",
        variant.name(),
        f.goodput,
        100.0 * f.goodput / capacity,
        f.p50,
        f.p99,
        100.0 * f.rejected,
        100.0 * f.failed,
        if f.mean_limit.is_nan() {
            "-".into()
        } else {
            format!("{:.1}", f.mean_limit)
        },
        if f.limit_cv.is_nan() {
            "-".into()
        } else {
            format!("{:.2}", f.limit_cv)
        },
    );
    for e in extra {
        row.push_str(&format!(" {e} |"));
    }
    out.push_str(&format!("{row}\n"));
}

/// Runs every variant; returns the default algorithm's run.
fn run_all(
    scenario: &Scenario,
    no_load_p99: f64,
    extra_names: &[&str],
    extra: impl Fn(&Run) -> Vec<String>,
) -> Run {
    let mut out = String::new();
    let mut default = None;
    let runs: Vec<(Variant, Run)> = variants(scenario.workers)
        .iter()
        .map(|&v| (v, v.run(scenario)))
        .collect();
    header(&mut out, scenario, no_load_p99);
    table_head(&mut out, extra_names);
    for (variant, run) in runs {
        let figures = run.measured(scenario);
        table_row(
            &mut out,
            variant,
            &figures,
            scenario.capacity(),
            &extra(&run),
        );
        if variant.is_default() {
            default = Some(run);
        }
    }
    // One print, so parallel tests do not interleave their tables.
    print!("{out}");
    default.expect("the default algorithm is one of the variants")
}

fn exp_no_load() -> (f64, f64) {
    static NO_LOAD: std::sync::OnceLock<(f64, f64)> = std::sync::OnceLock::new();
    *NO_LOAD.get_or_init(|| no_load(Dist::Exp(S_MS)))
}

// ---------------------------------------------------------------- scenarios

#[test]
fn half_load() {
    let (_, p99_0) = exp_no_load();
    let s = Scenario::new("Half load (800 req/s, 20 s)", 20.0, |_| CAPACITY / 2.0);
    let drift = |run: &Run| {
        let q2 = run.figures(5.0, 10.0, |_| true).mean_limit;
        let q4 = run.figures(15.0, 20.0, |_| true).mean_limit;
        (q2, q4)
    };
    let run = run_all(&s, p99_0, &["limit 5-10 s → 15-20 s"], |run| {
        let (q2, q4) = drift(run);
        vec![if q2.is_nan() {
            "-".into()
        } else {
            format!("{q2:.1} → {q4:.1}")
        }]
    });
    let f = run.measured(&s);
    assert!(f.rejected <= 0.005, "rejected {:.2} %", 100.0 * f.rejected);
    assert!(
        f.p99 <= 1.05 * p99_0,
        "p99 {:.1} ms vs no-load {p99_0:.1} ms",
        f.p99
    );
    let (q2, q4) = drift(&run);
    assert!(q4 <= q2 * 1.1 + 1.0, "limit drifted up: {q2:.1} -> {q4:.1}");
}

#[test]
fn overload_2x() {
    let (_, p99_0) = exp_no_load();
    let mut s = Scenario::new("2× overload (3200 req/s, 12 s)", 12.0, |_| 2.0 * CAPACITY);
    s.measure = (4.0, 12.0);
    let run = run_all(&s, p99_0, &[], |_| vec![]);
    let f = run.measured(&s);
    assert!(f.goodput >= 0.95 * CAPACITY, "goodput {:.0}", f.goodput);
    assert!(
        f.p99 <= 1.25 * p99_0,
        "p99 {:.1} ms vs no-load {p99_0:.1} ms",
        f.p99
    );
    assert!(
        (0.4..=0.6).contains(&f.rejected),
        "rejected {:.1} %",
        100.0 * f.rejected
    );
}

/// The loopback benchmark's overload job (`perf/src/bin/loopback`): a
/// database of 8 permits, constant 10 ms queries behind a FIFO queue, open
/// loop at 2× its capacity. With a constant service time every queued request
/// delays every other by `S / C`, so each request of queue the limiter keeps
/// costs 12.5 % of p99.
#[test]
fn overload_2x_constant_service() {
    const WORKERS: usize = 8;
    const CAP: f64 = WORKERS as f64 * 1000.0 / S_MS;
    let mut quiet = Scenario::new("no load", 400.0, |_| CAP / 4.0);
    quiet.workers = WORKERS;
    quiet.dist = Dist::Const(S_MS);
    let (_, p99_0) = no_load_of(&quiet);
    let mut s = Scenario::new(
        "2× overload, constant service time: 8 workers × 10 ms (the loopback benchmark's database), 1600 req/s, 12 s; no-load at 200 req/s",
        12.0,
        |_| 2.0 * CAP,
    );
    s.workers = WORKERS;
    s.dist = Dist::Const(S_MS);
    s.measure = (4.0, 12.0);
    let run = run_all(&s, p99_0, &["p99 ÷ no-load"], |run| {
        vec![format!("{:.2}×", run.measured(&s).p99 / p99_0)]
    });
    let f = run.measured(&s);
    assert!(f.goodput >= 0.9 * CAP, "goodput {:.0}", f.goodput);
    assert!(
        f.p99 <= 1.25 * p99_0,
        "p99 {:.1} ms vs no-load {p99_0:.1} ms",
        f.p99
    );
}

/// Seconds to settle after each step, and goodput from 5 s after recovery.
fn step_extras(run: &Run, bounds: (f64, f64)) -> (f64, f64, f64) {
    let down = run.settle_time(12.0, 24.0, bounds.0);
    let up = run.settle_time(24.0, 36.0, bounds.1);
    let goodput = run.figures(29.0, 36.0, |_| true).goodput;
    (down, up, goodput)
}

fn step_scenario(name: &'static str, change: fn(bool) -> Change, bounds: (f64, f64)) {
    let (_, p99_0) = exp_no_load();
    let mut s = Scenario::new(name, 36.0, |_| 1.25 * CAPACITY);
    s.changes = vec![(12.0, change(true)), (24.0, change(false))];
    let extras = [
        "p99 settled after step (s)",
        "after recovery (s)",
        "goodput 29-36 s",
    ];
    let run = run_all(&s, p99_0, &extras, |run| {
        let (down, up, goodput) = step_extras(run, bounds);
        vec![
            format!("{down:.0}"),
            format!("{up:.0}"),
            format!("{:.1} %", 100.0 * goodput / CAPACITY),
        ]
    });
    let (down, up, goodput) = step_extras(&run, bounds);
    assert!(down <= 10.0, "p99 took {down} s to settle after the step");
    assert!(up <= 10.0, "p99 took {up} s to settle after recovery");
    assert!(
        goodput >= 0.9 * CAPACITY,
        "goodput {goodput:.0} after recovery"
    );
}

#[test]
fn capacity_step() {
    let (_, p99_0) = exp_no_load();
    step_scenario(
        "Capacity step 16 → 8 → 16 workers at 12 s and 24 s (2000 req/s, p99 bound 1.3× no-load)",
        |down| Change::Workers(if down { C / 2 } else { C }),
        (1.3 * p99_0, 1.3 * p99_0),
    );
}

#[test]
fn service_time_step() {
    let (_, p99_0) = exp_no_load();
    let (_, p99_slow) = no_load(Dist::Exp(2.0 * S_MS));
    step_scenario(
        "Service-time step 10 → 20 → 10 ms at 12 s and 24 s (2000 req/s, p99 bound 1.3× the phase's no-load)",
        |down| Change::Slowdown(if down { 2.0 } else { 1.0 }),
        (1.3 * p99_slow, 1.3 * p99_0),
    );
}

#[test]
fn ramp_to_3x() {
    let (_, p99_0) = exp_no_load();
    let mut s = Scenario::new(
        "Ramp 0 → 3× capacity over 8 s, then 3× to 14 s (goodput from 4 s)",
        14.0,
        |t| 3.0 * CAPACITY * (t / 8.0).min(1.0),
    );
    s.measure = (4.0, 14.0);
    let run = run_all(&s, p99_0, &[], |_| vec![]);
    let f = run.measured(&s);
    assert!(f.goodput >= 0.9 * CAPACITY, "goodput {:.0}", f.goodput);
}

#[test]
fn lognormal_service_time() {
    let dist = Dist::LogNormal(S_MS, 1.2);
    let (_, p99_0) = no_load(dist);
    let mut s = Scenario::new(
        "High-variance service time: lognormal, mean 10 ms, σ = 1.2 (CV 1.8), 2× overload",
        12.0,
        |_| 2.0 * CAPACITY,
    );
    s.dist = dist;
    s.measure = (4.0, 12.0);
    let run = run_all(&s, p99_0, &[], |_| vec![]);
    let f = run.measured(&s);
    assert!(f.goodput >= 0.9 * CAPACITY, "goodput {:.0}", f.goodput);
}

#[test]
fn backend_rejects_above_k() {
    const K: usize = 8;
    let (_, p99_0) = exp_no_load();
    let mut s = Scenario::new(
        "Backend answers 503 above K = 8 in flight (3200 req/s)",
        12.0,
        |_| 2.0 * CAPACITY,
    );
    s.fail_at = Some(K);
    s.measure = (4.0, 12.0);
    let run = run_all(&s, p99_0, &[], |_| vec![]);
    let f = run.measured(&s);
    let k = K as f64;
    assert!(
        (0.7 * k..=1.5 * k).contains(&f.mean_limit),
        "mean limit {:.1}",
        f.mean_limit
    );
}

#[test]
fn burst_after_idle() {
    let (_, p99_0) = exp_no_load();
    let mut s = Scenario::new(
        "5× burst after idle: half load 0-5 s, idle 5-15 s, 8000 req/s 15-18 s (measured 15-18 s)",
        18.0,
        |t| match t {
            t if t < 5.0 => CAPACITY / 2.0,
            t if t < 15.0 => 0.0,
            _ => 5.0 * CAPACITY,
        },
    );
    s.measure = (15.0, 18.0);
    let run = run_all(&s, p99_0, &[], |_| vec![]);
    let f = run.measured(&s);
    assert!(
        f.p99 <= 2.0 * p99_0,
        "p99 {:.1} ms vs no-load {p99_0:.1} ms",
        f.p99
    );
}

#[test]
fn partitions_protect_live_traffic() {
    let (_, p99_0) = exp_no_load();
    let mut s = Scenario::new(
        "Partitions live 0.9 / batch 0.1: live 1120 req/s, batch 3200 req/s (x-class header)",
        12.0,
        |_| 0.7 * CAPACITY,
    );
    s.batch_rate = Some(|_| 2.0 * CAPACITY);
    s.partitions = Some((0.9, 0.1));
    s.measure = (4.0, 12.0);
    let live = |run: &Run| run.figures(4.0, 12.0, |r| !r.batch);
    let batch = |run: &Run| run.figures(4.0, 12.0, |r| r.batch);
    let extras = [
        "live goodput",
        "live rejected",
        "live p99 ms",
        "batch goodput",
    ];
    let run = run_all(&s, p99_0, &extras, |run| {
        let (l, b) = (live(run), batch(run));
        vec![
            format!("{:.0}", l.goodput),
            format!("{:.1} %", 100.0 * l.rejected),
            format!("{:.1}", l.p99),
            format!("{:.0}", b.goodput),
        ]
    });
    let offered = 0.7 * CAPACITY;
    let share = offered.min(0.9 * CAPACITY);
    let l = live(&run);
    assert!(
        l.goodput >= 0.9 * share,
        "live goodput {:.0} of {share:.0}",
        l.goodput
    );
}

fn convergence(initial: usize) -> f64 {
    let (_, p99_0) = exp_no_load();
    let mut s = Scenario::new("", 12.0, |_| 2.0 * CAPACITY);
    s.name = if initial == 1 {
        "Convergence from a limit of 1 (3200 req/s; converged = limit stays in [12, 32])"
    } else {
        "Convergence from a limit of 200 (3200 req/s; converged = limit stays in [12, 32])"
    };
    s.initial_limit = initial;
    s.measure = (0.0, 12.0);
    let band = (0.75 * C as f64, 2.0 * C as f64);
    let run = run_all(&s, p99_0, &["converged at (s)"], |run| {
        let at = run.converged_at(band.0, band.1);
        vec![if at.is_nan() {
            "never".into()
        } else {
            format!("{at:.2}")
        }]
    });
    run.converged_at(band.0, band.1)
}

#[test]
fn convergence_from_1() {
    let at = convergence(1);
    assert!(at <= 5.0, "converged at {at} s");
}

#[test]
fn convergence_from_200() {
    let at = convergence(200);
    assert!(at <= 10.0, "converged at {at} s");
}
