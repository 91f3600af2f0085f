//! Per-request cost of `LatencyLayer` over the bare service, with no recorder
//! (the `metrics` no-op) and with the Prometheus recorder, in process.
//!
//! `cargo bench --bench latency -- --warm-up-time 1 --measurement-time 3`
//!
//! Prints, from interleaved rounds, each variant's ns/request and its
//! overhead over bare, and for reference what two clock reads cost here:
//! `quanta` (the time-stamp counter, the layer's default clock), and
//! `tokio::time::Instant` (`LatencyLayer::tokio_clock`) and
//! `std::time::Instant`, each a `clock_gettime` call.
//! The side-by-side with `axum-prometheus` on an axum router is
//! `cargo bench -p tower-perf-bench --bench latency_peers`.

use std::{
    collections::BTreeMap,
    convert::Infallible,
    time::{Duration, Instant},
};

use bytes::Bytes;
use criterion::Criterion;
use futures::FutureExt;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
use std::hint::black_box;
use tower::{Service, ServiceBuilder};
use tower_perf::latency::{LatencyLayer, Naming, OTEL_BUCKETS};

/// Median ns/request per variant, from criterion's own samples.
/// One request through `svc`: call, then drain the body (the clock stops at
/// its end). The inner service answers at once, so one poll completes each.
fn request<S, B>(svc: &mut S)
where
    S: Service<Request<()>, Response = Response<B>>,
    S::Error: std::fmt::Debug,
    B: http_body::Body + Unpin,
    B::Error: std::fmt::Debug,
{
    let req = Request::get("/users/42").body(()).unwrap();
    let res = svc.call(req).now_or_never().unwrap().unwrap();
    let mut body = res.into_body();
    while let Some(frame) = body.frame().now_or_never().unwrap() {
        black_box(frame.unwrap());
    }
}

fn handler(_req: Request<()>) -> std::future::Ready<Result<Response<Full<Bytes>>, Infallible>> {
    std::future::ready(Ok(Response::new(Full::new(Bytes::from_static(b"user")))))
}

fn layer() -> LatencyLayer<fn(&Request<()>) -> Option<&'static str>> {
    LatencyLayer::new()
        .naming(Naming::Prometheus)
        .route_fn(|_req: &Request<()>| Some("/users/{id}"))
}

type Variant = (&'static str, Box<dyn FnMut()>);

/// Reference variants: not requests, the clock reads the layer makes.
const CLOCK: &str = "clock: ";

fn variant<S, B>(name: &'static str, mut svc: S) -> Variant
where
    S: Service<Request<()>, Response = Response<B>> + 'static,
    S::Error: std::fmt::Debug,
    B: http_body::Body + Unpin,
    B::Error: std::fmt::Debug,
{
    (name, Box::new(move || request(&mut svc)))
}

fn main() {
    let mut c = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .configure_from_args();

    let prometheus = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full("http_server_request_duration_seconds".into()),
            OTEL_BUCKETS,
        )
        .unwrap()
        .build_recorder();
    let handle = prometheus.handle();
    let bare = || tower::service_fn(handler);
    let with = |layer| ServiceBuilder::new().layer(layer).service(bare());
    let mut variants = [
        variant("bare", bare()),
        variant("latency, no recorder", with(layer())),
        variant("latency, prometheus", with(layer())),
        variant("latency, prometheus + summary", with(layer().summary())),
        (
            "clock: tokio Instant::now + elapsed",
            Box::new(|| {
                black_box(black_box(tokio::time::Instant::now()).elapsed());
            }),
        ),
        (
            "clock: quanta Instant::now + elapsed",
            Box::new(|| {
                let start = black_box(quanta::Instant::now());
                black_box(quanta::Instant::now().saturating_duration_since(start));
            }),
        ),
        (
            "clock: std Instant::now + elapsed",
            Box::new(|| {
                black_box(black_box(Instant::now()).elapsed());
            }),
        ),
    ];
    // One thread: a local recorder is the recorder of everything run here.
    let run = |name: &str, f: &mut dyn FnMut()| {
        if name.contains("prometheus") {
            metrics::with_local_recorder(&prometheus, f)
        } else {
            f()
        }
    };
    // Profiling aid: `LATENCY_BENCH_ONLY=<variant> valgrind --tool=callgrind
    // --toggle-collect='latency::variant::{{closure}}' <bench binary>` runs one
    // variant 100 000 times and counts only the requests (the setup varies
    // from run to run); the instruction counts of two variants differ by the
    // per-request cost times 100 000, whatever the machine load.
    if let Ok(only) = std::env::var("LATENCY_BENCH_ONLY") {
        let (name, f) = variants
            .iter_mut()
            .find(|(n, _)| *n == only)
            .expect("a variant name");
        run(name, &mut || (0..100_000).for_each(|_| f()));
        return;
    }
    for (name, f) in &mut variants {
        run(name, &mut || {
            c.bench_function(name, |b| b.iter(&mut *f));
        });
    }
    c.final_summary();

    // Interleaved rounds, best of each: robust to other load on the machine.
    let mut best = BTreeMap::<&str, f64>::new();
    for _ in 0..ROUNDS {
        for (name, f) in &mut variants {
            let mut ns = 0.0;
            run(name, &mut || {
                let start = Instant::now();
                for _ in 0..BATCH {
                    f();
                }
                ns = start.elapsed().as_nanos() as f64 / BATCH as f64;
            });
            let b = best.entry(name).or_insert(f64::MAX);
            *b = b.min(ns);
        }
    }
    assert!(handle.render().contains("http_route=\"/users/{id}\""));
    let bare = best["bare"];
    println!("\nper request, best of {ROUNDS} interleaved rounds of {BATCH}:");
    for (name, ns) in best.iter().filter(|(n, _)| !n.starts_with(CLOCK)) {
        println!(
            "  {name:32} {ns:8.1} ns   {:+7.1} ns over bare   ratio {:.2}x",
            ns - bare,
            ns / bare
        );
    }
    for (name, ns) in best.iter().filter(|(n, _)| n.starts_with(CLOCK)) {
        println!("  {name:40} {ns:8.1} ns");
    }
}

const ROUNDS: usize = 15;
const BATCH: usize = 20_000;
