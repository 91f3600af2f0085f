//! Behaviour of `tower_perf::latency` through real axum, tonic and hyper
//! servers, observed with `metrics-util`'s debugging recorder.
//!
//! The recorder is set per thread (`set_default_local_recorder`), never
//! globally, and every test runs on a current-thread runtime: the servers,
//! their connection tasks and the client all run on the test's thread, so
//! every sample the layer emits reaches this test's recorder and no other.
//! Each test builds its own layer, so no handle cached for another test's
//! recorder can be reused.
#![cfg(feature = "latency")]

use std::{
    collections::BTreeMap,
    convert::Infallible,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body::{Body, Frame};
use http_body_util::{BodyExt, Empty, Full};
use metrics::Unit;
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use tower::{ServiceBuilder, ServiceExt};
use tower_perf::latency::{LatencyLayer, Naming};

type Labels = BTreeMap<String, String>;

const DURATION: &str = "http.server.request.duration";
const ACTIVE: &str = "http.server.active_requests";

/// Everything the recorder saw, accumulated across snapshots (a debugging
/// snapshot drains histograms and resets gauges).
struct Metrics {
    snapshotter: Snapshotter,
    histograms: BTreeMap<(String, Labels), Vec<f64>>,
    gauges: BTreeMap<(String, Labels), f64>,
    meta: BTreeMap<String, (Option<Unit>, Option<String>)>,
}

impl Metrics {
    fn new(recorder: &DebuggingRecorder) -> Self {
        Self {
            snapshotter: recorder.snapshotter(),
            histograms: BTreeMap::new(),
            gauges: BTreeMap::new(),
            meta: BTreeMap::new(),
        }
    }

    fn refresh(&mut self) -> &mut Self {
        for (key, unit, desc, value) in self.snapshotter.snapshot().into_vec() {
            let name = key.key().name().to_string();
            let labels = key
                .key()
                .labels()
                .map(|l| (l.key().to_string(), l.value().to_string()))
                .collect();
            self.meta
                .insert(name.clone(), (unit, desc.map(|d| d.to_string())));
            match value {
                DebugValue::Histogram(xs) => self
                    .histograms
                    .entry((name, labels))
                    .or_default()
                    .extend(xs.into_iter().map(|x| x.0)),
                DebugValue::Gauge(g) => *self.gauges.entry((name, labels)).or_default() += g.0,
                DebugValue::Counter(_) => panic!("the layer emits no counter: {name}"),
            }
        }
        self
    }

    /// Histogram series of `name`, with their samples.
    fn series(&mut self, name: &str) -> Vec<(Labels, Vec<f64>)> {
        self.refresh();
        self.histograms
            .iter()
            .filter(|((n, _), _)| n == name)
            .map(|((_, l), v)| (l.clone(), v.clone()))
            .collect()
    }

    /// The samples of the duration series with exactly these labels.
    fn samples(&mut self, labels: &[(&str, &str)]) -> Vec<f64> {
        let want = labels_of(labels);
        let series = self.series(DURATION);
        series
            .iter()
            .find(|(l, _)| *l == want)
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| panic!("no series {want:?} in {series:#?}"))
    }

    /// The current value of every active-requests gauge, summed.
    fn active(&mut self) -> f64 {
        self.refresh();
        self.gauges
            .iter()
            .filter(|((n, _), _)| n == ACTIVE || n == "http_server_active_requests")
            .map(|(_, v)| v)
            .sum()
    }
}

fn labels_of(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn ok(body: &'static str) -> Response<Full<Bytes>> {
    Response::new(Full::new(Bytes::from(body)))
}

/// A body that yields `chunks` chunks, sleeping `pause` before each, or that
/// stays pending after its first chunk when `pause` is `None`.
struct Slow {
    chunks: usize,
    pause: Option<Duration>,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
    sent: usize,
}

fn slow(chunks: usize, pause: Option<Duration>) -> Slow {
    Slow {
        chunks,
        pause,
        sleep: None,
        sent: 0,
    }
}

impl Body for Slow {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.sent == self.chunks {
            return Poll::Ready(None);
        }
        let Some(pause) = self.pause else {
            if self.sent > 0 {
                return Poll::Pending;
            }
            self.sent += 1;
            return Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(b"x")))));
        };
        let sleep = self
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(pause)));
        std::task::ready!(sleep.as_mut().poll(cx));
        self.sleep = None;
        self.sent += 1;
        Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(b"x")))))
    }
}

use std::future::Future;

#[tokio::test(start_paused = true)]
async fn clock_stops_at_end_of_body_or_at_headers() {
    let recorder = DebuggingRecorder::new();
    let _guard = metrics::set_default_local_recorder(&recorder);
    let mut metrics = Metrics::new(&recorder);

    // tokio's clock: durations are the virtual ones.
    let layer = LatencyLayer::new()
        .tokio_clock()
        .route_fn(|req: &Request<()>| Some(req.uri().path().to_owned()))
        .stop_clock_at_headers_on("/sse");
    let svc = ServiceBuilder::new()
        .layer(layer)
        .service_fn(|_req: Request<()>| async {
            tokio::time::sleep(Duration::from_millis(100)).await;
            Ok::<_, Infallible>(Response::new(slow(3, Some(Duration::from_secs(1)))))
        });

    for path in ["/download", "/sse"] {
        let res = svc
            .clone()
            .oneshot(Request::get(path).body(()).unwrap())
            .await
            .unwrap();
        assert_eq!(metrics.active(), 1.0, "in flight until the body ends");
        res.into_body().collect().await.unwrap();
        assert_eq!(metrics.active(), 0.0);
    }

    let base = [
        ("http.request.method", "GET"),
        ("http.response.status_code", "200"),
    ];
    let at = |route| [base[0], ("http.route", route), base[1]];
    // Paused time: durations are exact virtual seconds.
    assert_eq!(metrics.samples(&at("/download")), vec![3.1]);
    assert_eq!(metrics.samples(&at("/sse")), vec![0.1]);
}

/// A `quanta` clock (the default kind: the CPU's time-stamp counter), here
/// quanta's mock advanced by hand: the clock runs from the call to the end of
/// the body, or to the headers, or to a cancellation.
#[test]
fn the_default_clock_times_to_the_end_of_body_or_headers_or_cancellation() {
    use futures::FutureExt;
    use tower::{Layer, Service};

    let recorder = DebuggingRecorder::new();
    let _guard = metrics::set_default_local_recorder(&recorder);
    let mut metrics = Metrics::new(&recorder);
    let (clock, mock) = quanta::Clock::mock();
    let layer = LatencyLayer::new()
        .clock(clock)
        .route_fn(|req: &Request<()>| Some(req.uri().path().to_owned()))
        .stop_clock_at_headers_on("/sse");
    let mut svc = layer.layer(tower::service_fn(|_req: Request<()>| {
        std::future::ready(Ok::<_, Infallible>(ok("body")))
    }));
    let ms = Duration::from_millis;

    for path in ["/download", "/sse", "/gone"] {
        let future = svc.call(Request::get(path).body(()).unwrap());
        mock.increment(ms(100)); // to the headers
        if path == "/gone" {
            drop(future);
            continue;
        }
        let res = future.now_or_never().unwrap().unwrap();
        mock.increment(ms(1000)); // to the end of the body
        res.into_body().collect().now_or_never().unwrap().unwrap();
    }

    let at = |route, status| {
        let mut labels = vec![("http.request.method", "GET"), ("http.route", route)];
        labels.push(status);
        labels
    };
    let ok = ("http.response.status_code", "200");
    assert_eq!(metrics.samples(&at("/download", ok)), vec![1.1]);
    assert_eq!(metrics.samples(&at("/sse", ok)), vec![0.1]);
    let cancelled = ("error.type", "cancelled");
    assert_eq!(metrics.samples(&at("/gone", cancelled)), vec![0.1]);
    assert_eq!(metrics.active(), 0.0);
}

#[tokio::test(start_paused = true)]
async fn cancelled_futures_and_dropped_bodies_are_recorded_and_leave_the_gauge() {
    let recorder = DebuggingRecorder::new();
    let _guard = metrics::set_default_local_recorder(&recorder);
    let mut metrics = Metrics::new(&recorder);

    let layer = LatencyLayer::new()
        .tokio_clock()
        .route_fn(|req: &Request<()>| Some(req.uri().path().to_owned()));
    let svc = ServiceBuilder::new()
        .layer(layer)
        .service_fn(|req: Request<()>| async move {
            if req.uri().path() == "/hang" {
                std::future::pending::<()>().await;
            }
            Ok::<_, Infallible>(Response::new(slow(2, None)))
        });

    // The response future is dropped after 5 s (a client that went away).
    let hang = svc.clone().oneshot(Request::get("/hang").body(()).unwrap());
    assert!(tokio::time::timeout(Duration::from_secs(5), hang)
        .await
        .is_err());

    // The body is dropped after its first chunk.
    let res = svc
        .clone()
        .oneshot(Request::get("/partial").body(()).unwrap())
        .await
        .unwrap();
    let mut body = res.into_body();
    body.frame().await.unwrap().unwrap();
    assert_eq!(metrics.active(), 1.0);
    tokio::time::sleep(Duration::from_secs(2)).await;
    drop(body);

    assert_eq!(metrics.active(), 0.0, "the gauge never leaks");
    let hang = metrics.samples(&[
        ("http.request.method", "GET"),
        ("http.route", "/hang"),
        ("error.type", "cancelled"),
    ]);
    assert_eq!(hang, vec![5.0]);
    let partial = metrics.samples(&[
        ("http.request.method", "GET"),
        ("http.route", "/partial"),
        ("http.response.status_code", "200"),
        ("error.type", "cancelled"),
    ]);
    assert_eq!(partial, vec![2.0]);
}

#[tokio::test(start_paused = true)]
async fn service_errors_and_timeouts() {
    let recorder = DebuggingRecorder::new();
    let _guard = metrics::set_default_local_recorder(&recorder);
    let mut metrics = Metrics::new(&recorder);

    let svc = ServiceBuilder::new()
        .layer(LatencyLayer::new().tokio_clock())
        .timeout(Duration::from_secs(1))
        .service_fn(|req: Request<()>| async move {
            if req.uri().path() == "/fail" {
                return Err::<Response<Empty<Bytes>>, _>(std::io::Error::other("db down"));
            }
            tokio::time::sleep(Duration::from_secs(10)).await;
            Ok(Response::new(Empty::new()))
        });
    let timeout = svc.clone().oneshot(Request::get("/slow").body(()).unwrap());
    assert!(timeout.await.is_err());
    let fail = svc.clone().oneshot(Request::get("/fail").body(()).unwrap());
    assert!(fail.await.is_err());

    let unmatched = |error| {
        [
            ("http.request.method", "GET"),
            ("http.route", "unmatched"),
            ("error.type", error),
        ]
    };
    assert_eq!(metrics.samples(&unmatched("timeout")), vec![1.0]);
    assert_eq!(metrics.samples(&unmatched("_OTHER")), vec![0.0]);
    assert_eq!(metrics.active(), 0.0);
}

#[tokio::test]
async fn unknown_methods_are_other_and_metrics_are_described_once_with_units() {
    let recorder = DebuggingRecorder::new();
    let _guard = metrics::set_default_local_recorder(&recorder);
    let mut metrics = Metrics::new(&recorder);

    let svc = ServiceBuilder::new()
        .layer(LatencyLayer::new())
        .service_fn(|_req: Request<()>| async { Ok::<_, Infallible>(ok("hi")) });
    for method in ["BREW", "PROPFIND", "GET"] {
        let req = Request::builder().method(method).body(()).unwrap();
        let res = svc.clone().oneshot(req).await.unwrap();
        res.into_body().collect().await.unwrap();
    }
    let other = [
        ("http.request.method", "_OTHER"),
        ("http.route", "unmatched"),
        ("http.response.status_code", "200"),
    ];
    assert_eq!(metrics.samples(&other).len(), 2);
    metrics.refresh();
    assert_eq!(metrics.meta[DURATION].0, Some(Unit::Seconds));
    assert!(metrics.meta[DURATION].1.is_some());
    assert_eq!(metrics.meta[ACTIVE].0, Some(Unit::Count));
    let gauges: Vec<_> = metrics
        .gauges
        .keys()
        .map(|(_, l)| l["http.request.method"].clone())
        .collect();
    assert_eq!(gauges, ["GET", "_OTHER"]);
}

#[tokio::test]
async fn a_head_response_dropped_unpolled_is_complete() {
    // hyper never polls a HEAD response's body: dropping it is its end.
    let recorder = DebuggingRecorder::new();
    let _guard = metrics::set_default_local_recorder(&recorder);
    let mut metrics = Metrics::new(&recorder);
    let svc = ServiceBuilder::new()
        .layer(LatencyLayer::new())
        .service_fn(|_req: Request<()>| async { Ok::<_, Infallible>(ok("hi")) });
    for method in ["HEAD", "GET"] {
        let req = Request::builder().method(method).body(()).unwrap();
        drop(svc.clone().oneshot(req).await.unwrap());
    }
    let head = [
        ("http.request.method", "HEAD"),
        ("http.route", "unmatched"),
        ("http.response.status_code", "200"),
    ];
    assert_eq!(metrics.samples(&head).len(), 1);
    let get = [
        ("http.request.method", "GET"),
        ("http.route", "unmatched"),
        ("http.response.status_code", "200"),
        ("error.type", "cancelled"),
    ];
    assert_eq!(metrics.samples(&get).len(), 1);
    assert_eq!(metrics.active(), 0.0);
}

#[tokio::test]
async fn poll_ready_forwards_to_the_inner_service() {
    let (mock, mut handle) = tower_test::mock::pair::<Request<()>, Response<Full<Bytes>>>();
    let mut svc = tower_test::mock::Spawn::new(tower::Layer::layer(&LatencyLayer::new(), mock));
    handle.allow(0);
    tokio_test::assert_pending!(svc.poll_ready());
    handle.allow(1);
    tokio_test::assert_ready_ok!(svc.poll_ready());
    let res = svc.call(Request::get("/").body(()).unwrap());
    let (_req, send) = handle.next_request().await.unwrap();
    send.send_response(ok("hi"));
    assert_eq!(res.await.unwrap().status(), StatusCode::OK);
}

#[tokio::test]
async fn a_recorder_installed_after_the_layer_was_used_gets_the_samples() {
    let svc = ServiceBuilder::new()
        .layer(LatencyLayer::new().naming(Naming::Prometheus))
        .service_fn(|_req: Request<()>| async { Ok::<_, Infallible>(ok("hi")) });
    let call = || async {
        let res = svc
            .clone()
            .oneshot(Request::get("/").body(()).unwrap())
            .await
            .unwrap();
        res.into_body().collect().await.unwrap();
    };
    // No recorder yet: the handles resolve to no-ops.
    call().await;
    call().await;

    let recorder = DebuggingRecorder::new();
    let _guard = metrics::set_default_local_recorder(&recorder);
    let mut metrics = Metrics::new(&recorder);
    call().await;
    call().await;
    let labels = [
        ("http_request_method", "GET"),
        ("http_route", "unmatched"),
        ("http_response_status_code", "200"),
    ];
    let series = metrics.series("http_server_request_duration_seconds");
    assert_eq!(series.len(), 1, "{series:?}");
    assert_eq!(series[0].0, labels_of(&labels));
    assert_eq!(
        series[0].1.len(),
        2,
        "only the samples after the recorder arrived"
    );
    assert_eq!(metrics.active(), 0.0);
}

#[test]
fn one_layer_serves_recorders_on_two_threads() {
    // The same layer (one handle cache) used under two thread-local
    // recorders at once: each sees exactly its own requests.
    let svc = ServiceBuilder::new()
        .layer(LatencyLayer::new())
        .service_fn(|_req: Request<()>| async { Ok::<_, Infallible>(ok("hi")) });
    let run = |n: usize| {
        let svc = svc.clone();
        std::thread::spawn(move || {
            let recorder = DebuggingRecorder::new();
            let _guard = metrics::set_default_local_recorder(&recorder);
            let mut metrics = Metrics::new(&recorder);
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                for _ in 0..n {
                    let res = svc
                        .clone()
                        .oneshot(Request::get("/").body(()).unwrap())
                        .await;
                    res.unwrap().into_body().collect().await.unwrap();
                    tokio::task::yield_now().await;
                }
            });
            let series = metrics.series(DURATION);
            (
                series.len(),
                series.iter().map(|(_, v)| v.len()).sum::<usize>(),
                metrics.active(),
            )
        })
    };
    let (a, b) = (run(300), run(500));
    assert_eq!(a.join().unwrap(), (1, 300, 0.0));
    assert_eq!(b.join().unwrap(), (1, 500, 0.0));
}

#[tokio::test]
async fn series_cap_sends_new_label_sets_to_one_overflow_series() {
    let recorder = DebuggingRecorder::new();
    let _guard = metrics::set_default_local_recorder(&recorder);
    let mut metrics = Metrics::new(&recorder);

    // A careless route fn that returns the raw path: the cap bounds it.
    let layer = LatencyLayer::new()
        .max_series(10)
        .summary()
        .route_fn(|req: &Request<()>| Some(req.uri().path().to_owned()));
    let summary = layer.summary_handle().unwrap();
    let svc = ServiceBuilder::new()
        .layer(layer)
        .service_fn(|_req: Request<()>| async { Ok::<_, Infallible>(ok("hi")) });
    for i in 0..1000 {
        let req = Request::get(format!("/item/{i}")).body(()).unwrap();
        svc.clone()
            .oneshot(req)
            .await
            .unwrap()
            .into_body()
            .collect()
            .await
            .unwrap();
    }
    let series = metrics.series(DURATION);
    assert_eq!(series.len(), 11, "10 series and the overflow");
    let overflow = metrics.samples(&[("otel.metric.overflow", "true")]);
    assert_eq!(overflow.len(), 990);
    let routes = summary.routes();
    assert_eq!(routes.len(), 11);
    assert_eq!(summary.route("otel.metric.overflow").unwrap().count, 990);
    assert_eq!(summary.route("/item/0").unwrap().count, 1);
}

#[tokio::test]
async fn many_label_sets_on_one_route_each_get_their_series() {
    let recorder = DebuggingRecorder::new();
    let _guard = metrics::set_default_local_recorder(&recorder);
    let mut metrics = Metrics::new(&recorder);

    let svc = ServiceBuilder::new()
        .layer(LatencyLayer::new().route_fn(|_: &Request<()>| Some("/s")))
        .service_fn(|req: Request<()>| async move {
            let status: u16 = req.uri().path()[1..].parse().unwrap();
            let mut res = ok("x");
            *res.status_mut() = StatusCode::from_u16(status).unwrap();
            Ok::<_, Infallible>(res)
        });
    // 20 statuses, twice each, interleaved: more series than a route keeps
    // in its lock-free slots.
    for _ in 0..2 {
        for status in (200..210).chain(500..510) {
            let req = Request::get(format!("/{status}")).body(()).unwrap();
            let res = svc.clone().oneshot(req).await.unwrap();
            res.into_body().collect().await.unwrap();
        }
    }
    let series = metrics.series(DURATION);
    assert_eq!(series.len(), 20);
    for (labels, samples) in &series {
        assert_eq!(samples.len(), 2, "{labels:?}");
        let status: u16 = labels["http.response.status_code"].parse().unwrap();
        assert_eq!(
            labels.get("error.type").is_some(),
            status >= 500,
            "{labels:?}"
        );
    }
}

#[cfg(feature = "axum")]
mod axum_routes {
    use super::*;
    use axum::{body::Body as AxumBody, routing::get, Router};
    use hyper_util::{client::legacy::Client, rt::TokioExecutor};
    use tower::Service;

    fn app(layer: LatencyLayer) -> Router {
        let api = Router::new().route("/items/{id}", get(|| async { "item" }));
        Router::new()
            .route("/users/{id}", get(|| async { "user" }))
            .route("/boom", get(|| async { StatusCode::SERVICE_UNAVAILABLE }))
            .nest("/api", api)
            .fallback(|| async { (StatusCode::NOT_FOUND, "nope") })
            .layer(layer)
    }

    #[tokio::test]
    async fn matched_nested_fallback_and_failing_routes_over_tcp() {
        let recorder = DebuggingRecorder::new();
        let _guard = metrics::set_default_local_recorder(&recorder);
        let mut metrics = Metrics::new(&recorder);

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app(LatencyLayer::new())).await });

        let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
        let send = |method: &str, path: &str| {
            let req = Request::builder()
                .method(method)
                .uri(format!("http://{addr}{path}"))
                .body(Empty::new())
                .unwrap();
            let res = client.request(req);
            async move {
                let res = res.await.unwrap();
                let status = res.status();
                res.into_body().collect().await.unwrap();
                status
            }
        };
        assert_eq!(send("GET", "/users/1").await, 200);
        assert_eq!(send("GET", "/users/2").await, 200);
        assert_eq!(send("GET", "/api/items/9").await, 200);
        assert_eq!(send("GET", "/no/such/page").await, 404);
        assert_eq!(send("GET", "/boom").await, 503);
        assert_eq!(send("DELETE", "/users/1").await, 405);
        assert_eq!(send("BREW", "/users/1").await, 405);

        let get = |route, status| {
            [
                ("http.request.method", "GET"),
                ("http.route", route),
                ("http.response.status_code", status),
            ]
        };
        assert_eq!(metrics.samples(&get("/users/{id}", "200")).len(), 2);
        assert_eq!(metrics.samples(&get("/api/items/{id}", "200")).len(), 1);
        assert_eq!(metrics.samples(&get("unmatched", "404")).len(), 1);
        let boom = metrics.samples(&[
            ("http.request.method", "GET"),
            ("http.route", "/boom"),
            ("http.response.status_code", "503"),
            ("error.type", "503"),
        ]);
        assert_eq!(boom.len(), 1);
        // axum answers 405 inside the matched route.
        let delete = [
            ("http.request.method", "DELETE"),
            ("http.route", "/users/{id}"),
            ("http.response.status_code", "405"),
        ];
        assert_eq!(metrics.samples(&delete).len(), 1);
        let brew = [
            ("http.request.method", "_OTHER"),
            ("http.route", "/users/{id}"),
            ("http.response.status_code", "405"),
        ];
        assert_eq!(metrics.samples(&brew).len(), 1);
        assert_eq!(metrics.series(DURATION).len(), 6);
        assert_eq!(metrics.active(), 0.0);
    }

    #[tokio::test]
    async fn random_404_paths_add_at_most_one_series() {
        let recorder = DebuggingRecorder::new();
        let _guard = metrics::set_default_local_recorder(&recorder);
        let mut metrics = Metrics::new(&recorder);

        let mut app = app(LatencyLayer::new()).into_service::<AxumBody>();
        let get = |path: &str| Request::get(path).body(AxumBody::empty()).unwrap();
        let res = app
            .ready()
            .await
            .unwrap()
            .call(get("/users/1"))
            .await
            .unwrap();
        res.into_body().collect().await.unwrap();
        let before = metrics.series(DURATION).len();

        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        for _ in 0..100_000 {
            // xorshift: a fresh random path each time.
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let path = format!("/{seed:x}/{}", seed.rotate_left(17) % 1000);
            let res = app.ready().await.unwrap().call(get(&path)).await.unwrap();
            assert_eq!(res.status(), 404);
            res.into_body().collect().await.unwrap();
        }
        let series = metrics.series(DURATION);
        assert_eq!(series.len(), before + 1, "{series:?}");
        let unmatched = [
            ("http.request.method", "GET"),
            ("http.route", "unmatched"),
            ("http.response.status_code", "404"),
        ];
        assert_eq!(metrics.samples(&unmatched).len(), 100_000);
    }
}

mod grpc {
    use super::*;
    use hyper_util::{client::legacy::Client, rt::TokioExecutor};
    use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};

    /// A tonic server with the (generated) health service behind the layer.
    async fn serve() -> std::net::SocketAddr {
        serve_with(LatencyLayer::new()).await
    }

    async fn serve_with(layer: LatencyLayer) -> std::net::SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (_reporter, health) = tonic_health::server::health_reporter();
        let incoming = tonic::transport::server::TcpIncoming::from(listener);
        tokio::spawn(
            tonic::transport::Server::builder()
                .layer(layer)
                .add_service(health)
                .serve_with_incoming(incoming),
        );
        addr
    }

    async fn client(addr: std::net::SocketAddr) -> HealthClient<tonic::transport::Channel> {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        HealthClient::new(channel)
    }

    /// A raw gRPC call to `path`: its HTTP status and `grpc-status` header.
    async fn raw_call(addr: std::net::SocketAddr, path: &str) -> (StatusCode, Option<String>) {
        let client = Client::builder(TokioExecutor::new())
            .http2_only(true)
            .build_http::<Full<Bytes>>();
        let req = Request::post(format!("http://{addr}{path}"))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(Full::new(Bytes::from_static(&[0, 0, 0, 0, 0])))
            .unwrap();
        let res = client.request(req).await.unwrap();
        let grpc = res
            .headers()
            .get("grpc-status")
            .map(|v| v.to_str().unwrap().to_owned());
        let status = res.status();
        res.into_body().collect().await.unwrap();
        (status, grpc)
    }

    #[tokio::test]
    async fn routes_and_statuses_through_a_tonic_server() {
        let recorder = DebuggingRecorder::new();
        let _guard = metrics::set_default_local_recorder(&recorder);
        let mut metrics = Metrics::new(&recorder);
        let addr = serve().await;

        let mut client = client(addr).await;
        // The overall server health is SERVING: status OK in the trailers.
        let check = |service: &str| HealthCheckRequest {
            service: service.into(),
        };
        client.check(check("")).await.unwrap();
        // An unknown service name: NOT_FOUND, in a trailers-only response.
        let err = client.check(check("no.such.Service")).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::NotFound);
        // Unknown methods and services: UNIMPLEMENTED, headers only.
        let unknown_method = raw_call(addr, "/grpc.health.v1.Health/Nope").await;
        assert_eq!(unknown_method, (StatusCode::OK, Some("12".into())));
        let unknown_service = raw_call(addr, "/x.Y/Z").await;
        assert_eq!(unknown_service, (StatusCode::OK, Some("12".into())));

        let check_route = |code| {
            [
                ("http.request.method", "POST"),
                ("http.route", "/grpc.health.v1.Health/Check"),
                ("http.response.status_code", "200"),
                ("rpc.grpc.status_code", code),
            ]
        };
        assert_eq!(metrics.samples(&check_route("0")).len(), 1);
        assert_eq!(metrics.samples(&check_route("5")).len(), 1);
        let unimplemented = metrics.samples(&[
            ("http.request.method", "POST"),
            ("http.route", "unmatched"),
            ("http.response.status_code", "200"),
            ("rpc.grpc.status_code", "12"),
            ("error.type", "UNIMPLEMENTED"),
        ]);
        assert_eq!(unimplemented.len(), 2);
        assert_eq!(metrics.series(DURATION).len(), 3);
        drop(client);
        assert_eq!(metrics.active(), 0.0);
    }

    #[tokio::test]
    async fn random_unknown_methods_add_no_series_and_no_routes() {
        let recorder = DebuggingRecorder::new();
        let _guard = metrics::set_default_local_recorder(&recorder);
        let mut metrics = Metrics::new(&recorder);
        let layer = LatencyLayer::new().summary();
        let summary = layer.summary_handle().unwrap();
        let addr = serve_with(layer).await;

        for i in 0..300u32 {
            let path = format!("/scan{}.Svc{i}/M{}", i * 7919 % 1000, i * 31);
            assert_eq!(raw_call(addr, &path).await.1.as_deref(), Some("12"));
        }
        let series = metrics.series(DURATION);
        assert_eq!(series.len(), 1, "{series:?}");
        assert_eq!(series[0].0["http.route"], "unmatched");
        assert_eq!(series[0].1.len(), 300);
        let routes: Vec<_> = summary.routes().into_iter().map(|r| r.route).collect();
        assert_eq!(routes, ["unmatched"], "no route was admitted");
    }

    #[tokio::test]
    async fn clock_stopped_at_headers_still_waits_for_the_trailers_status() {
        let recorder = DebuggingRecorder::new();
        let _guard = metrics::set_default_local_recorder(&recorder);
        let mut metrics = Metrics::new(&recorder);
        let check = "/grpc.health.v1.Health/Check";
        let addr = serve_with(LatencyLayer::new().stop_clock_at_headers_on(check)).await;

        let mut client = client(addr).await;
        let req = HealthCheckRequest {
            service: String::new(),
        };
        client.check(req).await.unwrap();
        let ok = metrics.samples(&[
            ("http.request.method", "POST"),
            ("http.route", check),
            ("http.response.status_code", "200"),
            ("rpc.grpc.status_code", "0"),
        ]);
        assert_eq!(ok.len(), 1);
        drop(client);
        assert_eq!(metrics.active(), 0.0);
    }

    #[tokio::test]
    async fn a_cancelled_stream_is_recorded_and_leaves_the_gauge() {
        let recorder = DebuggingRecorder::new();
        let _guard = metrics::set_default_local_recorder(&recorder);
        let mut metrics = Metrics::new(&recorder);
        let addr = serve().await;

        let mut client = client(addr).await;
        let req = HealthCheckRequest {
            service: String::new(),
        };
        let mut stream = client.watch(req).await.unwrap().into_inner();
        stream.message().await.unwrap().unwrap();
        assert_eq!(metrics.active(), 1.0, "the watch stream is in flight");
        drop(stream);
        drop(client);
        // The server notices the reset stream and drops the body.
        for _ in 0..2000 {
            if metrics.active() == 0.0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(metrics.active(), 0.0);
        let watch = metrics.samples(&[
            ("http.request.method", "POST"),
            ("http.route", "/grpc.health.v1.Health/Watch"),
            ("http.response.status_code", "200"),
            ("error.type", "cancelled"),
        ]);
        assert_eq!(watch.len(), 1);
    }
}
