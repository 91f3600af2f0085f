//! Instructions per request, for callgrind: runs one scenario's requests
//! through an axum `Router` in process, so that
//! `valgrind --tool=callgrind --toggle-collect=instructions::measure` counts
//! only the requests. Instruction counts do not move with the load on the
//! machine, so they compare builds and layers where wall-clock time cannot.
//!
//! `scripts/instructions.sh` runs every scenario twice (N and 2N requests)
//! and prints the cost of one request (the difference over N) and its
//! difference from the bare handler's.
//!
//! `instructions SCENARIO N`, scenarios:
//! - `bare`, `hit`, `miss`, `pass`: `GET /static` answering 1 KiB with
//!   `max-age=3600`, bare or under `CacheLayer::new()`; `miss` asks for a
//!   new URL each time (each response is stored), `pass` answers with
//!   `private` (each response passes through).
//! - `trivial-bare`, `trivial-cache`, `trivial-coalesce`, `trivial-limit`,
//!   `trivial-latency`, `trivial-stack`: `GET /trivial` answering `ok`, bare,
//!   under one layer's defaults, or under `PerfStack::new()`; the latency
//!   layer records into a Prometheus recorder.
//!
//! Every request carries a `Host` header, as one from a client does, and
//! the router's routes are built once, as `axum::serve` builds them.

use std::process::ExitCode;

use axum::{body::Body, routing::get, Router};
use bytes::Bytes;
use http::Request;
use http_body_util::BodyExt;
use tower::ServiceExt;
use tower_perf::{
    cache::CacheLayer, coalesce::CoalesceLayer, latency::LatencyLayer, limit::AdaptiveLimitLayer,
    stack::PerfStack,
};

const USAGE: &str = "usage: instructions SCENARIO N
scenarios: bare hit miss pass trivial-bare trivial-cache trivial-coalesce trivial-limit trivial-latency trivial-stack";

/// A route answering 1 KiB with `cache_control`.
fn static_app(cache_control: &'static str) -> Router {
    let body = Bytes::from(vec![b'x'; 1024]);
    Router::new().route(
        "/{*path}",
        get(move || {
            let body = body.clone();
            async move { ([("cache-control", cache_control)], body) }
        }),
    )
}

fn trivial_app() -> Router {
    Router::new().route("/trivial", get(|| async { "ok" }))
}

/// The scenario's router, and whether each request asks for a new URL.
fn scenario(name: &str) -> Option<(Router, bool)> {
    let fresh = "max-age=3600";
    let app = match name {
        "bare" => static_app(fresh),
        "hit" => static_app(fresh).layer(CacheLayer::new()),
        "miss" => return Some((static_app(fresh).layer(CacheLayer::new()), true)),
        "pass" => static_app("private, max-age=3600").layer(CacheLayer::new()),
        "trivial-bare" => trivial_app(),
        "trivial-cache" => trivial_app().layer(CacheLayer::new()),
        "trivial-coalesce" => trivial_app().layer(CoalesceLayer::new()),
        "trivial-limit" => trivial_app().layer(AdaptiveLimitLayer::new()),
        "trivial-latency" => trivial_app().layer(LatencyLayer::new()),
        "trivial-stack" => trivial_app().layer(PerfStack::new()),
        _ => return None,
    };
    Some((app, false))
}

async fn request(app: &Router, uri: &str) -> usize {
    let req = Request::get(uri)
        .header("host", "bench.local")
        .body(Body::empty())
        .expect("a valid request");
    let res = app.clone().oneshot(req).await.expect("infallible");
    let body = res.into_body().collect().await.expect("a complete body");
    body.to_bytes().len()
}

/// The requests callgrind counts: `n` of them, URLs numbered from `first`.
#[inline(never)]
fn measure(
    rt: &tokio::runtime::Runtime,
    app: &Router,
    path: &str,
    new_urls: bool,
    n: usize,
    first: usize,
) -> usize {
    rt.block_on(async {
        let mut bytes = 0;
        for i in first..first + n {
            bytes += if new_urls {
                request(app, &format!("{path}/{i}")).await
            } else {
                request(app, path).await
            };
        }
        bytes
    })
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(name), Some(Ok(n))) = (args.first(), args.get(1).map(|n| n.parse::<usize>())) else {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    };
    let Some((app, new_urls)) = scenario(name) else {
        eprintln!("instructions: unknown scenario {name:?}\n{USAGE}");
        return ExitCode::from(2);
    };
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    metrics::set_global_recorder(recorder).expect("the first recorder");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    // As `axum::serve` does: routes built once, not per request.
    let app: Router = app.with_state(());
    let path = if name.starts_with("trivial") {
        "/trivial"
    } else {
        "/static"
    };
    // Warm-up outside the count (first-use statics, clock calibration).
    measure(&rt, &app, path, new_urls, 50, 1_000_000);
    let bytes = measure(&rt, &app, path, new_urls, n, 0);
    println!("{name}: {n} requests, {bytes} body bytes");
    ExitCode::SUCCESS
}
