//! Per-request cost of `LatencyLayer` over the bare service, with no recorder
//! (the `metrics` no-op) and with the Prometheus recorder, in process.
//!
//! `cargo bench --bench latency -- --warm-up-time 1 --measurement-time 3`
//!
//! Prints, from interleaved rounds, each variant's ns/request and its
//! overhead over bare; the parts of that overhead measured alone (a
//! pass-through layer whose future and body carry 64 bytes, over bare; the
//! Prometheus recorder's gauge and histogram calls); and what two clock
//! reads cost here: `quanta` (the time-stamp counter, the layer's default
//! clock), and `tokio::time::Instant` (`LatencyLayer::tokio_clock`) and
//! `std::time::Instant`, each a `clock_gettime` call.
//!
//! Each request is polled in place, as a server polls it (pinned, once),
//! with a no-op waker; every variant runs the same harness.
//! The side-by-side with `axum-prometheus` on an axum router is
//! `cargo bench -p tower-perf-bench --bench latency_peers`.

use std::{
    collections::BTreeMap,
    convert::Infallible,
    time::{Duration, Instant},
};

use bytes::Bytes;
use criterion::Criterion;
use http::{Request, Response};
use http_body_util::Full;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
use std::hint::black_box;
use tower::{Service, ServiceBuilder};
use tower_perf::latency::{LatencyLayer, Naming, OTEL_BUCKETS};

/// One request through `svc`: call, then drain the body (the clock stops at
/// its end). The inner service answers at once, so one poll completes each.
fn request<S, B>(svc: &mut S)
where
    S: Service<Request<()>, Response = Response<B>>,
    S::Error: std::fmt::Debug,
    B: http_body::Body,
    B::Error: std::fmt::Debug,
{
    let req = Request::get("/users/42").body(()).unwrap();
    let mut cx = std::task::Context::from_waker(futures::task::noop_waker_ref());
    let fut = std::pin::pin!(svc.call(req));
    let std::task::Poll::Ready(res) = std::future::Future::poll(fut, &mut cx) else {
        panic!("ready at once")
    };
    let mut body = std::pin::pin!(res.unwrap().into_body());
    while let std::task::Poll::Ready(Some(frame)) = body.as_mut().poll_frame(&mut cx) {
        black_box(frame.unwrap());
    }
}

fn handler(_req: Request<()>) -> std::future::Ready<Result<Response<Full<Bytes>>, Infallible>> {
    std::future::ready(Ok(Response::new(Full::new(Bytes::from_static(b"user")))))
}

/// A closure, as users write route functions (a `fn` pointer would cost
/// an indirect call).
fn layer() -> LatencyLayer<impl Fn(&Request<()>) -> Option<&'static str> + Clone> {
    LatencyLayer::new()
        .naming(Naming::Prometheus)
        .route_fn(|_req: &Request<()>| Some("/users/{id}"))
}

type Variant = (&'static str, Box<dyn FnMut()>);

/// Reference variants: not requests, the clock reads the layer makes.
const CLOCK: &str = "clock: ";
/// Reference variants: parts of the layer's cost, measured alone.
const PART: &str = "part: ";

/// The shape of the layer without its work: a service whose response future
/// and body carry 64 bytes of state (as big as the layer's per-request
/// record), to price the wrapping itself.
#[derive(Clone)]
struct Wrap<S>(S);

type State = [u64; 8];

pin_project_lite::pin_project! {
    struct WrapFuture<F> {
        #[pin]
        inner: F,
        state: Option<State>,
    }
}

pin_project_lite::pin_project! {
    struct WrapBody<B> {
        #[pin]
        inner: B,
        state: Option<State>,
    }
}

impl<S, B> Service<Request<()>> for Wrap<S>
where
    S: Service<Request<()>, Response = Response<B>>,
{
    type Response = Response<WrapBody<B>>;
    type Error = S::Error;
    type Future = WrapFuture<S::Future>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), S::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, req: Request<()>) -> Self::Future {
        WrapFuture {
            inner: self.0.call(req),
            state: Some(black_box([1; 8])),
        }
    }
}

impl<F, B, E> std::future::Future for WrapFuture<F>
where
    F: std::future::Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<WrapBody<B>>, E>;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        let this = self.project();
        let res = std::task::ready!(this.inner.poll(cx));
        let state = this.state.take();
        std::task::Poll::Ready(res.map(|res| res.map(|inner| WrapBody { inner, state })))
    }
}

impl<B: http_body::Body> http_body::Body for WrapBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<B::Data>, B::Error>>> {
        let this = self.project();
        let frame = std::task::ready!(this.inner.poll_frame(cx));
        if frame.is_none() {
            black_box(this.state.take());
        }
        std::task::Poll::Ready(frame)
    }
}

fn variant<S, B>(name: &'static str, mut svc: S) -> Variant
where
    S: Service<Request<()>, Response = Response<B>> + 'static,
    S::Error: std::fmt::Debug,
    B: http_body::Body,
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
    let clock = quanta::Clock::new();
    // The recorder's share of a request: handles resolved once, as the layer does.
    let (gauge, histogram) = metrics::with_local_recorder(&prometheus, || {
        let method = [("http_request_method", "GET")];
        let labels = [
            ("http_route", "/users/{id}"),
            ("http_response_status_code", "200"),
        ];
        (
            metrics::gauge!("http_server_active_requests", &method),
            metrics::histogram!("http_server_request_duration_seconds", &labels),
        )
    });
    let bare = || tower::service_fn(handler);
    let with = |layer| ServiceBuilder::new().layer(layer).service(bare());
    let mut variants = [
        variant("bare", bare()),
        variant("latency, no recorder", with(layer())),
        variant("latency, prometheus", with(layer())),
        variant("latency, prometheus + summary", with(layer().summary())),
        variant("part: pass-through layer, 64-byte state", Wrap(bare())),
        (
            "part: prometheus gauge +1 -1, histogram sample",
            Box::new(move || {
                gauge.increment(1.0);
                histogram.record(black_box(0.000_1));
                gauge.decrement(1.0);
            }),
        ),
        (
            "clock: tokio Instant::now + elapsed",
            Box::new(|| {
                black_box(black_box(tokio::time::Instant::now()).elapsed());
            }),
        ),
        (
            "clock: quanta Clock::raw + delta",
            Box::new(move || {
                let start = black_box(clock.raw());
                black_box(clock.delta(start, clock.raw()));
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
    // variant 100 000 times (or `LATENCY_BENCH_N`, e.g. for `perf record`)
    // and counts only the requests (the setup varies
    // from run to run); the instruction counts of two variants differ by the
    // per-request cost times 100 000, whatever the machine load.
    if let Ok(only) = std::env::var("LATENCY_BENCH_ONLY") {
        let (name, f) = variants
            .iter_mut()
            .find(|(n, _)| *n == only)
            .expect("a variant name");
        let n = std::env::var("LATENCY_BENCH_N").map_or(100_000, |n| n.parse().unwrap());
        run(name, &mut || (0..n).for_each(|_| f()));
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
    let reference = |n: &str| n.starts_with(CLOCK) || n.starts_with(PART);
    for (name, ns) in best.iter().filter(|(n, _)| !reference(n)) {
        println!(
            "  {name:32} {ns:8.1} ns   {:+7.1} ns over bare   ratio {:.2}x",
            ns - bare,
            ns / bare
        );
    }
    for (name, ns) in best.iter().filter(|(n, _)| n.starts_with(PART)) {
        let over = if name.contains("layer") {
            ns - bare
        } else {
            *ns
        };
        println!("  {name:48} {over:8.1} ns");
    }
    for (name, ns) in best.iter().filter(|(n, _)| n.starts_with(CLOCK)) {
        println!("  {name:48} {ns:8.1} ns");
    }
}

const ROUNDS: usize = 15;
const BATCH: usize = 20_000;
