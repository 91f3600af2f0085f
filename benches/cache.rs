//! The response cache against the same axum handler with no cache.
//!
//! - `hit`: a stored response served by the cache vs the handler itself
//!   (a static `Bytes` body: the cheapest thing a handler can do), at 1 KiB
//!   and 100 KiB, with the cache in `Router::layer` (after routing, like the
//!   handler) and around the whole `Router` (a hit skips routing);
//! - `miss`: a distinct URL per request, so every response is teed into the
//!   cache and stored, vs the bare handler;
//! - `pass`: an uncacheable (`private`) response through the layer.
//!
//! After criterion's report, an interleaved A/B run prints throughput
//! ratios (bare time / cached time: above 1.0 the cache is faster).
//!
//! `cargo bench --bench cache -- --warm-up-time 1 --measurement-time 3`

use std::{
    hint::black_box,
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, Instant},
};

use axum::{body::Body, routing::get, Router};
use bytes::Bytes;
use criterion::{BenchmarkId, Criterion};
use http::Request;
use http_body_util::BodyExt;
use tower::{Layer, Service, ServiceExt};
use tower_perf::cache::{CacheLayer, CacheService};

const SIZES: [(&str, usize); 2] = [("1KiB", 1024), ("100KiB", 100 * 1024)];

/// Its routes built once (`with_state`), as `axum::serve` builds them: a
/// router called as it is would build its handler's route on every request.
fn app(size: usize, cache_control: &'static str) -> Router {
    let body = Bytes::from(vec![b'x'; size]);
    Router::new()
        .route(
            "/{*path}",
            get(move || {
                let body = body.clone();
                async move { ([("cache-control", cache_control)], body) }
            }),
        )
        .with_state(())
}

fn cached(size: usize, cache_control: &'static str) -> Router {
    app(size, cache_control).layer(CacheLayer::new().max_capacity(64 * 1024 * 1024))
}

/// The cache in front of the whole `Router`: a hit is answered before routing.
fn cached_outside(size: usize, cache_control: &'static str) -> CacheService<Router> {
    CacheLayer::new()
        .max_capacity(64 * 1024 * 1024)
        .layer(app(size, cache_control))
}

static NEXT: AtomicU64 = AtomicU64::new(0);

/// One request through `svc`, body read to the end.
async fn once<S, B>(svc: &S, uri: &str) -> usize
where
    S: Service<Request<Body>, Response = http::Response<B>> + Clone,
    S::Error: std::fmt::Debug,
    B: http_body::Body,
    B::Error: std::fmt::Debug,
{
    let req = Request::get(uri).body(Body::empty()).unwrap();
    let res = svc.clone().oneshot(req).await.unwrap();
    res.into_body().collect().await.unwrap().to_bytes().len()
}

/// A fresh URL per call: every request is a miss.
fn distinct_uri() -> String {
    format!(
        "http://bench.local/item/{}",
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

const HIT_URI: &str = "http://bench.local/static";

fn benches(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    for (label, size) in SIZES {
        let mut group = c.benchmark_group(format!("cache/hit/{label}"));
        let bare = app(size, "max-age=3600");
        let cache = cached(size, "max-age=3600");
        let outside = cached_outside(size, "max-age=3600");
        rt.block_on(once(&cache, HIT_URI));
        rt.block_on(once(&outside, HIT_URI));
        group.bench_function(BenchmarkId::from_parameter("bare"), |b| {
            b.to_async(&rt)
                .iter(|| async { black_box(once(&bare, HIT_URI).await) })
        });
        group.bench_function(BenchmarkId::from_parameter("cache-hit"), |b| {
            b.to_async(&rt)
                .iter(|| async { black_box(once(&cache, HIT_URI).await) })
        });
        group.bench_function(
            BenchmarkId::from_parameter("cache-hit-outside-router"),
            |b| {
                b.to_async(&rt)
                    .iter(|| async { black_box(once(&outside, HIT_URI).await) })
            },
        );
        group.finish();
    }

    let mut group = c.benchmark_group("cache/miss/1KiB");
    let bare = app(1024, "max-age=3600");
    let cache = cached(1024, "max-age=3600");
    let pass = cached(1024, "private, max-age=3600");
    group.bench_function("bare", |b| {
        b.to_async(&rt)
            .iter(|| async { black_box(once(&bare, &distinct_uri()).await) })
    });
    group.bench_function("cache-miss-stored", |b| {
        b.to_async(&rt)
            .iter(|| async { black_box(once(&cache, &distinct_uri()).await) })
    });
    group.bench_function("cache-pass", |b| {
        b.to_async(&rt)
            .iter(|| async { black_box(once(&pass, &distinct_uri()).await) })
    });
    group.finish();
}

/// Median ns per request of `f` over `rounds` rounds of `per_round` calls,
/// interleaved with the other contestants by the caller.
async fn round<F, Fut>(per_round: u32, mut f: F) -> f64
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = usize>,
{
    let start = Instant::now();
    for _ in 0..per_round {
        black_box(f().await);
    }
    start.elapsed().as_nanos() as f64 / f64::from(per_round)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Interleaved A/B rounds, so machine noise hits both sides alike.
fn ratios() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    const ROUNDS: usize = 15;
    println!(
        "\ncache ratios (interleaved, {ROUNDS} rounds, median ns/request; ratio = bare / cached)"
    );
    rt.block_on(async {
        for (label, size) in SIZES {
            let bare = app(size, "max-age=3600");
            let cache = cached(size, "max-age=3600");
            let outside = cached_outside(size, "max-age=3600");
            once(&cache, HIT_URI).await;
            once(&outside, HIT_URI).await;
            let per_round = if size > 10_000 { 2_000 } else { 20_000 };
            let (mut a, mut b, mut o) = (Vec::new(), Vec::new(), Vec::new());
            for _ in 0..ROUNDS {
                a.push(round(per_round, || once(&bare, HIT_URI)).await);
                b.push(round(per_round, || once(&cache, HIT_URI)).await);
                o.push(round(per_round, || once(&outside, HIT_URI)).await);
            }
            let (a, b, o) = (median(a), median(b), median(o));
            println!(
                "  hit  {label:>6}: bare {a:>8.0} ns  cache-hit {b:>8.0} ns  ratio {:.3}x  \
                 (around the Router {o:>8.0} ns  ratio {:.3}x)",
                a / b,
                a / o
            );
        }
        let bare = app(1024, "max-age=3600");
        let cache = cached(1024, "max-age=3600");
        let pass = cached(1024, "private, max-age=3600");
        let (mut a, mut b, mut p) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..ROUNDS {
            a.push(round(5_000, || async { once(&bare, &distinct_uri()).await }).await);
            b.push(round(5_000, || async { once(&cache, &distinct_uri()).await }).await);
            p.push(round(5_000, || async { once(&pass, &distinct_uri()).await }).await);
        }
        let (a, b, p) = (median(a), median(b), median(p));
        println!(
            "  miss   1KiB: bare {a:>8.0} ns  miss+store {b:>8.0} ns  ratio {:.3}x  (overhead {:+.1}%)",
            a / b,
            (b / a - 1.0) * 100.0
        );
        println!(
            "  pass   1KiB: bare {a:>8.0} ns  uncacheable {p:>7.0} ns  ratio {:.3}x  (overhead {:+.1}%)",
            a / p,
            (p / a - 1.0) * 100.0
        );
    });
}

fn main() {
    let mut c = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .configure_from_args();
    benches(&mut c);
    c.final_summary();
    // Only under `cargo bench` (which passes `--bench`); not in test mode,
    // listing or profiling.
    let args: Vec<String> = std::env::args().collect();
    let skip = ["--test", "--list", "--profile-time"];
    if args.iter().any(|a| a == "--bench") && !args.iter().any(|a| skip.contains(&a.as_str())) {
        ratios();
    }
}
