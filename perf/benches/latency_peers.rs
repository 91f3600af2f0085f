//! `tower_perf::latency` side by side with `axum-prometheus` 0.10 on the same
//! axum router, both recording into the same Prometheus recorder (global,
//! with explicit buckets), and both with the `metrics` no-op recorder.
//!
//! `cargo bench -p tower-perf-bench --bench latency_peers -- --warm-up-time 1 --measurement-time 3`
//!
//! Requests are driven in process through `Router::call` (no sockets), so
//! the figures are the middleware's own cost. Prints ns/request, the overhead
//! over the bare router, and the ratio between the two layers.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use axum::{body::Body, routing::get, Router};
use criterion::Criterion;
use http::Request;
use http_body_util::BodyExt;
use metrics::NoopRecorder;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
use std::hint::black_box;
use tower::Service;
use tower_perf::latency::{LatencyLayer, Naming, OTEL_BUCKETS};

/// The same router for every variant. `with_state(())` turns handlers into
/// routes once, as `axum::serve` does; without it axum re-applies layers to
/// every request.
fn router(layer: impl FnOnce(Router) -> Router) -> Router {
    let router = Router::new()
        .route("/users/{id}", get(|| async { "user" }))
        .route("/health", get(|| async { "ok" }));
    layer(router).with_state(())
}

/// One request: call the router, drain the body. Every future here is ready
/// at its first poll.
fn request(router: &mut Router) {
    let req = Request::get("/users/42").body(Body::empty()).unwrap();
    let res = futures_ready(router.call(req)).unwrap();
    let mut body = res.into_body();
    while let Some(frame) = futures_ready(body.frame()) {
        black_box(frame.unwrap());
    }
}

fn futures_ready<F: std::future::Future>(f: F) -> F::Output {
    let mut f = std::pin::pin!(f);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match f.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(out) => out,
        std::task::Poll::Pending => panic!("the bench router completes synchronously"),
    }
}

fn run(c: &mut Criterion, name: &str, router: &mut Router) {
    c.bench_function(name, |b| {
        b.iter(|| request(router));
    });
}

/// The variants, by name: (recorder, layer).
fn variants() -> Vec<(String, Router)> {
    let mut out = Vec::new();
    for recorder in ["noop", "prometheus"] {
        out.push((format!("{recorder}/bare"), router(|r| r)));
        let ours = LatencyLayer::new().naming(Naming::Prometheus);
        out.push((format!("{recorder}/tower-perf"), router(|r| r.layer(ours))));
        let peer = axum_prometheus::BaseMetricLayer::new();
        out.push((
            format!("{recorder}/axum-prometheus"),
            router(|r| r.layer(peer)),
        ));
    }
    out
}

/// Runs `f` with the variant's recorder: the global Prometheus one, or the
/// no-op set locally on this (the only) thread.
fn with_recorder<T>(name: &str, f: impl FnOnce() -> T) -> T {
    if name.starts_with("noop/") {
        metrics::with_local_recorder(&NoopRecorder, f)
    } else {
        f()
    }
}

fn main() {
    let mut c = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .configure_from_args();

    // One global Prometheus recorder for both layers, with histogram buckets
    // for both layers' duration metrics.
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full("http_server_request_duration_seconds".into()),
            OTEL_BUCKETS,
        )
        .unwrap()
        .set_buckets_for_metric(
            Matcher::Full(axum_prometheus::AXUM_HTTP_REQUESTS_DURATION_SECONDS.into()),
            OTEL_BUCKETS,
        )
        .unwrap()
        .install_recorder()
        .unwrap();

    let mut variants = variants();
    // Profiling aid: `LATENCY_BENCH_ONLY=prometheus/tower-perf valgrind --tool=callgrind <bench binary>`
    // runs one variant 100 000 times; instruction counts of two variants
    // differ by the per-request cost times 100 000, whatever the machine load.
    if let Ok(only) = std::env::var("LATENCY_BENCH_ONLY") {
        let (name, router) = variants
            .iter_mut()
            .find(|(n, _)| *n == only)
            .expect("a variant name");
        with_recorder(name, || (0..100_000).for_each(|_| request(router)));
        return;
    }
    for (name, router) in &mut variants {
        with_recorder(name, || run(&mut c, name, router));
    }
    c.final_summary();

    let text = handle.render();
    assert!(
        text.contains("http_server_request_duration_seconds_bucket"),
        "{text}"
    );
    assert!(
        text.contains(axum_prometheus::AXUM_HTTP_REQUESTS_DURATION_SECONDS),
        "{text}"
    );

    // Interleaved rounds, best of each: robust to other load on the machine.
    let mut best = BTreeMap::<String, f64>::new();
    for _ in 0..ROUNDS {
        for (name, router) in &mut variants {
            let ns = with_recorder(name, || {
                let start = Instant::now();
                for _ in 0..BATCH {
                    request(router);
                }
                start.elapsed().as_nanos() as f64 / BATCH as f64
            });
            let b = best.entry(name.clone()).or_insert(f64::MAX);
            *b = b.min(ns);
        }
    }
    report(&best);
}

const ROUNDS: usize = 15;
const BATCH: usize = 20_000;

fn report(best: &BTreeMap<String, f64>) {
    println!("\nper request, best of {ROUNDS} interleaved rounds of {BATCH}, same router:");
    for recorder in ["noop", "prometheus"] {
        let get = |layer: &str| best[&format!("{recorder}/{layer}")];
        let (bare, ours, peer) = (get("bare"), get("tower-perf"), get("axum-prometheus"));
        println!("  {recorder} recorder:");
        println!("    bare             {bare:8.1} ns");
        println!(
            "    tower-perf       {ours:8.1} ns  ({:+.1} ns over bare, {:.2}x)",
            ours - bare,
            ours / bare
        );
        println!(
            "    axum-prometheus  {peer:8.1} ns  ({:+.1} ns over bare, {:.2}x)",
            peer - bare,
            peer / bare
        );
        println!(
            "    overhead ratio axum-prometheus / tower-perf: {:.1}x",
            (peer - bare) / (ours - bare).max(1.0)
        );
    }
}
