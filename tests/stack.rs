//! The full stack (`PerfStack`: latency -> cache -> coalesce -> limit) in
//! real servers over TCP: axum, plain hyper behind `TowerToHyperService`, and
//! a tonic server with generated code. Each test checks what the layers do
//! together: hits served while the limiter is full, bursts of misses taking
//! one permit and reaching the backend once, shed requests recorded by the
//! latency layer, gRPC calls through all four layers.
//!
//! Handlers block on a gate the test opens (no sleeps, no wall-clock
//! assertions), and time is paused: the tests wait for a state (a permit
//! taken, followers waiting) by polling it between 1 ms virtual sleeps. As in
//! `tests/latency.rs`, metrics go to a `metrics-util` debugging recorder set
//! for the test's thread only, on a current-thread runtime that runs the
//! servers, their connections and the client, and each test builds its own
//! stack after installing the recorder (layers resolve their metric handles
//! when built).
#![cfg(all(
    feature = "cache",
    feature = "coalesce",
    feature = "limit",
    feature = "latency"
))]

use std::{
    collections::BTreeMap,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::{client::legacy::Client, rt::TokioExecutor};
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use tokio::{net::TcpListener, sync::Semaphore};
use tower_perf::{limit::AdaptiveLimitLayer, stack::PerfStack};

type Labels = BTreeMap<String, String>;

const DURATION: &str = "http.server.request.duration";
const ACTIVE: &str = "http.server.active_requests";
const COALESCE: &str = "tower_perf_coalesce_requests_total";

/// Everything the recorder saw, accumulated across snapshots (a debugging
/// snapshot drains histograms and resets counters and gauges).
struct Metrics {
    snapshotter: Snapshotter,
    histograms: BTreeMap<(String, Labels), usize>,
    counters: BTreeMap<(String, Labels), u64>,
    gauges: BTreeMap<(String, Labels), f64>,
}

impl Metrics {
    fn new(recorder: &DebuggingRecorder) -> Self {
        Self {
            snapshotter: recorder.snapshotter(),
            histograms: BTreeMap::new(),
            counters: BTreeMap::new(),
            gauges: BTreeMap::new(),
        }
    }

    fn refresh(&mut self) {
        for (key, _, _, value) in self.snapshotter.snapshot().into_vec() {
            let name = key.key().name().to_string();
            let labels = key
                .key()
                .labels()
                .map(|l| (l.key().to_string(), l.value().to_string()))
                .collect();
            let series = (name, labels);
            match value {
                DebugValue::Histogram(xs) => {
                    *self.histograms.entry(series).or_default() += xs.len();
                }
                DebugValue::Counter(n) => *self.counters.entry(series).or_default() += n,
                DebugValue::Gauge(g) => *self.gauges.entry(series).or_default() += g.0,
            }
        }
    }

    /// Request-duration samples of the series with exactly these labels.
    fn durations(&mut self, labels: &[(&str, &str)]) -> usize {
        self.refresh();
        let key = (DURATION.to_owned(), labels_of(labels));
        self.histograms.get(&key).copied().unwrap_or(0)
    }

    /// Request-duration samples over every series.
    fn all_durations(&mut self) -> usize {
        self.refresh();
        self.histograms
            .iter()
            .filter(|((name, _), _)| name == DURATION)
            .map(|(_, n)| n)
            .sum()
    }

    /// Coalescing decisions with this role.
    fn coalesce(&mut self, role: &str) -> u64 {
        self.refresh();
        let key = (COALESCE.to_owned(), labels_of(&[("role", role)]));
        self.counters.get(&key).copied().unwrap_or(0)
    }

    /// Requests in `http.server.active_requests`, over every method.
    fn active(&mut self) -> f64 {
        self.refresh();
        self.gauges
            .iter()
            .filter(|((name, _), _)| name == ACTIVE)
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

/// The labels of an HTTP request-duration sample.
fn http_labels<'a>(
    method: &'a str,
    route: &'a str,
    status: &'a str,
) -> Vec<(&'static str, &'a str)> {
    let mut labels = vec![
        ("http.request.method", method),
        ("http.route", route),
        ("http.response.status_code", status),
    ];
    if status.starts_with('5') {
        labels.push(("error.type", status));
    }
    labels
}

/// Waits (in virtual time) until `condition` holds.
async fn until(what: &str, mut condition: impl FnMut() -> bool) {
    for _ in 0..100_000 {
        if condition() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    panic!("never happened: {what}");
}

/// A backend whose handlers count their calls and wait for the gate.
#[derive(Clone)]
struct Backend {
    calls: Arc<AtomicUsize>,
    gate: Arc<Semaphore>,
}

impl Default for Backend {
    fn default() -> Self {
        Self {
            calls: Arc::default(),
            gate: Arc::new(Semaphore::new(0)),
        }
    }
}

impl Backend {
    /// One backend call: counted, then held until [`open`](Self::open).
    async fn work(&self) {
        self.calls.fetch_add(1, Ordering::SeqCst);
        // The gate has no permits: acquiring returns once it is closed.
        let _ = self.gate.acquire().await;
    }

    fn open(&self) {
        self.gate.close();
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

/// A limiter that admits exactly `n` requests at once.
fn fixed_limit(n: usize) -> AdaptiveLimitLayer {
    AdaptiveLimitLayer::new()
        .initial_limit(n)
        .min_limit(n)
        .max_limit(n)
}

type HttpClient = Client<hyper_util::client::legacy::connect::HttpConnector, Empty<Bytes>>;

fn http_client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

/// A request from a fresh connection... or a pooled one: the client keeps
/// connections alive, as real clients do. Returns the status, the
/// `Cache-Status` and the body.
async fn request(client: &HttpClient, method: &str, uri: String) -> (StatusCode, String, Bytes) {
    let req = Request::builder()
        .method(method)
        .uri(uri)
        .body(Empty::new())
        .unwrap();
    let res = client.request(req).await.unwrap();
    let status = res.status();
    let cache_status = res
        .headers()
        .get("cache-status")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    (status, cache_status, body)
}

#[cfg(feature = "axum")]
mod axum_stack {
    use super::*;
    use std::net::SocketAddr;

    use axum::{extract::Path, routing::get, Router};
    use tower_perf::coalesce::CoalesceLayer;

    /// `/hot` is cacheable and instant, `/feed` too but fresh for a second
    /// only (then usable stale on errors); `/slow/{id}` and `/report` wait
    /// for the backend's gate, and `/report` is cacheable.
    fn app(backend: &Backend, stack: PerfStack) -> Router {
        let hot = backend.clone();
        let feed = backend.clone();
        let slow = backend.clone();
        let report = backend.clone();
        Router::new()
            .route(
                "/hot",
                get(move || {
                    hot.calls.fetch_add(1, Ordering::SeqCst);
                    async { ([("cache-control", "max-age=60")], "hot") }
                }),
            )
            .route(
                "/feed",
                get(move || {
                    let n = feed.calls.fetch_add(1, Ordering::SeqCst);
                    let cc = [("cache-control", "max-age=1, stale-if-error=60")];
                    async move { (cc, format!("feed {n}")) }
                }),
            )
            .route(
                "/slow/{id}",
                get(move |Path(id): Path<u32>| async move {
                    slow.work().await;
                    format!("slow {id}")
                }),
            )
            .route(
                "/report",
                get(move || async move {
                    report.work().await;
                    ([("cache-control", "max-age=60")], "the report")
                }),
            )
            .layer(stack)
    }

    async fn serve(app: Router) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        addr
    }

    #[tokio::test(start_paused = true)]
    async fn a_cache_hit_is_served_while_the_limiter_is_saturated() {
        let recorder = DebuggingRecorder::new();
        let _guard = metrics::set_default_local_recorder(&recorder);
        let mut metrics = Metrics::new(&recorder);
        let stack = PerfStack::new().limit(fixed_limit(2));
        let limit = stack.limit_handle();
        let backend = Backend::default();
        let addr = serve(app(&backend, stack)).await;
        let client = http_client();

        let (status, cache, _) = request(&client, "GET", format!("http://{addr}/hot")).await;
        assert_eq!(status, 200);
        assert!(cache.contains("stored"), "{cache}");

        // Two distinct uncached requests take both permits and hold them.
        let slow: Vec<_> = (1..=2)
            .map(|id| {
                let client = client.clone();
                tokio::spawn(async move {
                    request(&client, "GET", format!("http://{addr}/slow/{id}")).await
                })
            })
            .collect();
        until("both permits taken", || limit.in_flight() == 2).await;
        let (status, _, _) = request(&client, "GET", format!("http://{addr}/slow/3")).await;
        assert_eq!(status, 503, "the limiter is saturated");

        let admitted = limit.counters().admitted;
        let (status, cache, body) = request(&client, "GET", format!("http://{addr}/hot")).await;
        assert_eq!((status, &body[..]), (StatusCode::OK, &b"hot"[..]));
        assert!(cache.contains("hit"), "{cache}");
        assert_eq!(limit.counters().admitted, admitted, "a hit takes no permit");
        assert_eq!(backend.calls(), 1 + 2, "the hit never reached the handler");

        backend.open();
        for res in slow {
            assert_eq!(res.await.unwrap().0, 200);
        }
        assert_eq!(limit.in_flight(), 0);
        assert_eq!(metrics.durations(&http_labels("GET", "/hot", "200")), 2);
        assert_eq!(
            metrics.durations(&http_labels("GET", "/slow/{id}", "200")),
            2
        );
        assert_eq!(
            metrics.durations(&http_labels("GET", "/slow/{id}", "503")),
            1
        );
    }

    #[tokio::test(start_paused = true)]
    async fn coalesced_misses_reach_the_backend_once_and_are_each_recorded() {
        const N: usize = 20;
        let recorder = DebuggingRecorder::new();
        let _guard = metrics::set_default_local_recorder(&recorder);
        let mut metrics = Metrics::new(&recorder);
        // A limit of one: the whole burst must go through one permit.
        let stack = PerfStack::new()
            .coalesce(CoalesceLayer::new().wait_timeout(Duration::from_secs(3600)))
            .limit(fixed_limit(1));
        let limit = stack.limit_handle();
        let backend = Backend::default();
        let addr = serve(app(&backend, stack)).await;
        let client = http_client();

        let burst: Vec<_> = (0..N)
            .map(|_| {
                let client = client.clone();
                tokio::spawn(async move {
                    request(&client, "GET", format!("http://{addr}/report")).await
                })
            })
            .collect();
        until("every follower waits for the leader", || {
            metrics.coalesce("follower") == (N - 1) as u64
        })
        .await;
        assert_eq!(metrics.coalesce("leader"), 1);
        assert_eq!(limit.in_flight(), 1, "followers hold no permit");
        backend.open();
        for res in burst {
            let (status, _, body) = res.await.unwrap();
            assert_eq!((status, &body[..]), (StatusCode::OK, &b"the report"[..]));
        }

        assert_eq!(backend.calls(), 1);
        let counters = limit.counters();
        assert_eq!((counters.admitted, counters.rejected), (1, 0));
        let ok = http_labels("GET", "/report", "200");
        assert_eq!(metrics.durations(&ok), N, "each request is recorded");
        assert_eq!(metrics.all_durations(), N);
        // Afterwards the stored response answers without the backend.
        let (_, cache, _) = request(&client, "GET", format!("http://{addr}/report")).await;
        assert!(cache.contains("hit"), "{cache}");
        assert_eq!(backend.calls(), 1);
        assert_eq!(metrics.active(), 0.0);
    }

    #[tokio::test(start_paused = true)]
    async fn shed_requests_are_recorded_with_their_503() {
        const SHED: usize = 5;
        let recorder = DebuggingRecorder::new();
        let _guard = metrics::set_default_local_recorder(&recorder);
        let mut metrics = Metrics::new(&recorder);
        let stack = PerfStack::new().limit(fixed_limit(1));
        let limit = stack.limit_handle();
        let backend = Backend::default();
        let addr = serve(app(&backend, stack)).await;
        let client = http_client();

        let held = {
            let client = client.clone();
            tokio::spawn(
                async move { request(&client, "GET", format!("http://{addr}/slow/0")).await },
            )
        };
        until("the permit is taken", || limit.in_flight() == 1).await;
        // Distinct URLs: identical ones would wait for the held call instead.
        for id in 1..=SHED {
            let (status, cache, _) =
                request(&client, "GET", format!("http://{addr}/slow/{id}")).await;
            assert_eq!(status, 503);
            assert!(
                !cache.contains("stored"),
                "a shed response is not stored: {cache}"
            );
        }
        backend.open();
        assert_eq!(held.await.unwrap().0, 200);

        assert_eq!(backend.calls(), 1);
        assert_eq!(limit.counters().rejected, SHED as u64);
        let shed = http_labels("GET", "/slow/{id}", "503");
        assert_eq!(metrics.durations(&shed), SHED);
        assert_eq!(
            metrics.durations(&http_labels("GET", "/slow/{id}", "200")),
            1
        );
        // Once the permit is back, the same URLs are served.
        let (status, _, _) = request(&client, "GET", format!("http://{addr}/slow/1")).await;
        assert_eq!(status, 200);
    }

    #[tokio::test(start_paused = true)]
    async fn a_stale_if_error_entry_answers_instead_of_the_limiters_503() {
        let stack = PerfStack::new().limit(fixed_limit(1));
        let limit = stack.limit_handle();
        let backend = Backend::default();
        let addr = serve(app(&backend, stack)).await;
        let client = http_client();
        let feed = format!("http://{addr}/feed");

        assert_eq!(request(&client, "GET", feed.clone()).await.2, "feed 0");
        tokio::time::advance(Duration::from_secs(2)).await; // now stale
        let held = {
            let client = client.clone();
            tokio::spawn(
                async move { request(&client, "GET", format!("http://{addr}/slow/0")).await },
            )
        };
        until("the permit is taken", || limit.in_flight() == 1).await;
        let (status, _, body) = request(&client, "GET", feed.clone()).await;
        assert_eq!((status, &body[..]), (StatusCode::OK, &b"feed 0"[..]));
        assert_eq!(limit.counters().rejected, 1, "the refresh was shed");

        backend.open();
        assert_eq!(held.await.unwrap().0, 200);
        // With a permit free, the stale entry is refreshed (call 1 was
        // `/slow/0`; the shed refresh never reached the handler).
        assert_eq!(request(&client, "GET", feed).await.2, "feed 2");
    }

    #[tokio::test(start_paused = true)]
    async fn a_write_passes_every_layer_and_the_next_read_sees_it() {
        use std::sync::Mutex;

        use axum::http::HeaderMap;

        let recorder = DebuggingRecorder::new();
        let _guard = metrics::set_default_local_recorder(&recorder);
        let mut metrics = Metrics::new(&recorder);
        let stack = PerfStack::new();
        let limit = stack.limit_handle();
        let doc = Arc::new(Mutex::new(String::from("v1")));
        let (read, write) = (doc.clone(), doc.clone());
        let app = Router::new().route(
            "/doc",
            get(move || async move {
                let text = read.lock().unwrap().clone();
                ([("cache-control", "max-age=60")], text)
            })
            .put(move |headers: HeaderMap| async move {
                *write.lock().unwrap() = headers["x-text"].to_str().unwrap().to_owned();
                StatusCode::NO_CONTENT
            }),
        );
        let addr = serve(app.layer(stack)).await;
        let client = http_client();
        let uri = format!("http://{addr}/doc");

        assert_eq!(request(&client, "GET", uri.clone()).await.2, "v1");
        let (_, cache, body) = request(&client, "GET", uri.clone()).await;
        assert!(cache.contains("hit") && body == "v1", "{cache}");

        let put = Request::put(&uri)
            .header("x-text", "v2")
            .body(Empty::new())
            .unwrap();
        let res = client.request(put).await.unwrap();
        assert_eq!(res.status(), 204);
        let cache = res.headers()["cache-status"].to_str().unwrap();
        assert!(cache.contains("fwd=method"), "{cache}");

        let (_, cache, body) = request(&client, "GET", uri).await;
        assert_eq!(body, "v2", "the write removed the stored read");
        assert!(cache.contains("uri-miss"), "{cache}");
        // Backend work took permits: the first read, the write, the re-read.
        assert_eq!(limit.counters().admitted, 3);
        assert_eq!(metrics.coalesce("bypass"), 1, "the write is not coalesced");
        assert_eq!(metrics.durations(&http_labels("PUT", "/doc", "204")), 1);
        assert_eq!(metrics.durations(&http_labels("GET", "/doc", "200")), 3);
    }

    /// The coalescing layer marks follower responses `Collapsed`, and the
    /// cache reports it in `Cache-Status`.
    #[tokio::test(start_paused = true)]
    async fn followers_are_reported_collapsed_in_cache_status() {
        const N: usize = 4;
        let stack =
            PerfStack::new().coalesce(CoalesceLayer::new().wait_timeout(Duration::from_secs(3600)));
        let backend = Backend::default();
        let addr = serve(app(&backend, stack)).await;
        let client = http_client();
        let burst: Vec<_> = (0..N)
            .map(|_| {
                let client = client.clone();
                tokio::spawn(async move {
                    request(&client, "GET", format!("http://{addr}/report")).await
                })
            })
            .collect();
        until("the leader called the backend", || backend.calls() == 1).await;
        for _ in 0..100 {
            tokio::task::yield_now().await; // let the followers arrive
        }
        backend.open();
        let mut collapsed = 0;
        for res in burst {
            collapsed += res.await.unwrap().1.contains("collapsed") as usize;
        }
        assert_eq!(backend.calls(), 1);
        assert_eq!(collapsed, N - 1);
    }
}

mod hyper_stack {
    use super::*;
    use std::convert::Infallible;

    use http_body_util::Full;
    use hyper::body::Incoming;
    use hyper_util::{rt::TokioIo, server::conn::auto, service::TowerToHyperService};
    use tower::Layer;
    use tower_perf::latency::LatencyLayer;

    #[tokio::test(start_paused = true)]
    async fn the_stack_behind_tower_to_hyper_service_serves_a_hit() {
        let recorder = DebuggingRecorder::new();
        let _guard = metrics::set_default_local_recorder(&recorder);
        let mut metrics = Metrics::new(&recorder);
        let route = |req: &Request<Incoming>| {
            req.uri()
                .path()
                .starts_with("/greeting/")
                .then_some("/greeting/{name}")
        };
        let stack = PerfStack::new().latency(LatencyLayer::new().route_fn(route));
        let limit = stack.limit_handle();
        let calls = Arc::new(AtomicUsize::new(0));
        let counter = calls.clone();
        let service = stack.layer(tower::service_fn(move |req: Request<Incoming>| {
            counter.fetch_add(1, Ordering::SeqCst);
            let name = req.uri().path().trim_start_matches("/greeting/").to_owned();
            async move {
                let res = Response::builder()
                    .header("cache-control", "max-age=30")
                    .body(Full::from(format!("hello, {name}")))
                    .unwrap();
                Ok::<_, Infallible>(res)
            }
        }));

        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                let service = TowerToHyperService::new(service.clone());
                tokio::spawn(async move {
                    auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await
                });
            }
        });

        let client = http_client();
        let uri = format!("http://{addr}/greeting/ada");
        let (status, cache, body) = request(&client, "GET", uri.clone()).await;
        assert_eq!((status, &body[..]), (StatusCode::OK, &b"hello, ada"[..]));
        assert!(cache.contains("stored"), "{cache}");
        let (status, cache, body) = request(&client, "GET", uri).await;
        assert_eq!((status, &body[..]), (StatusCode::OK, &b"hello, ada"[..]));
        assert!(cache.contains("hit"), "{cache}");

        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert_eq!(limit.counters().admitted, 1);
        assert_eq!(
            metrics.coalesce("leader"),
            1,
            "the miss went through coalescing"
        );
        let ok = http_labels("GET", "/greeting/{name}", "200");
        assert_eq!(metrics.durations(&ok), 2);
        assert_eq!(metrics.all_durations(), 2);
        assert_eq!(metrics.active(), 0.0);
    }
}

mod tonic_stack {
    use super::*;
    use tonic::{transport::Server, Code, Request as GrpcRequest, Response as GrpcResponse};
    use tower_perf::limit::LimitHandle;

    #[allow(unreachable_pub, dead_code)] // generated
    mod catalog {
        include!("../examples/proto/catalog.rs");
    }
    use catalog::{
        catalog_client::CatalogClient,
        catalog_server::{Catalog, CatalogServer},
        GetProductRequest, Product, PutProductResponse,
    };

    const GET: &str = "/catalog.v1.Catalog/GetProduct";

    /// Product `slow` waits for the backend's gate; the others are instant.
    struct Store(Backend);

    #[tonic::async_trait]
    impl Catalog for Store {
        async fn get_product(
            &self,
            request: GrpcRequest<GetProductRequest>,
        ) -> Result<GrpcResponse<Product>, tonic::Status> {
            let id = request.into_inner().id;
            if id == "slow" {
                self.0.work().await;
            } else {
                self.0.calls.fetch_add(1, Ordering::SeqCst);
            }
            Ok(GrpcResponse::new(Product {
                name: format!("product {id}"),
                id,
                price_cents: 100,
            }))
        }

        async fn put_product(
            &self,
            _: GrpcRequest<Product>,
        ) -> Result<GrpcResponse<PutProductResponse>, tonic::Status> {
            Ok(GrpcResponse::new(PutProductResponse { created: true }))
        }
    }

    async fn serve(
        stack: PerfStack,
        backend: &Backend,
    ) -> CatalogClient<tonic::transport::Channel> {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let incoming = tonic::transport::server::TcpIncoming::from(listener);
        tokio::spawn(
            Server::builder()
                .layer(stack)
                .add_service(CatalogServer::new(Store(backend.clone())))
                .serve_with_incoming(incoming),
        );
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        CatalogClient::new(channel)
    }

    fn grpc_labels(code: &str) -> Vec<(&'static str, &str)> {
        let mut labels = vec![
            ("http.request.method", "POST"),
            ("http.route", GET),
            ("http.response.status_code", "200"),
            ("rpc.grpc.status_code", code),
        ];
        if code == "14" {
            labels.push(("error.type", "UNAVAILABLE"));
        }
        labels
    }

    async fn get(
        client: &mut CatalogClient<tonic::transport::Channel>,
        id: &str,
    ) -> Result<GrpcResponse<Product>, tonic::Status> {
        client
            .get_product(GetProductRequest { id: id.into() })
            .await
    }

    #[tokio::test(start_paused = true)]
    async fn grpc_calls_pass_all_four_layers() {
        let recorder = DebuggingRecorder::new();
        let _guard = metrics::set_default_local_recorder(&recorder);
        let mut metrics = Metrics::new(&recorder);
        let stack = PerfStack::new().limit(fixed_limit(1));
        let limit: LimitHandle = stack.limit_handle();
        let backend = Backend::default();
        let mut client = serve(stack, &backend).await;

        // An OK call: through the cache (forwarded: gRPC calls are POSTs),
        // coalescing (bypassed), the limiter (admitted), recorded by method.
        let res = get(&mut client, "p1").await.unwrap();
        let cache = res
            .metadata()
            .get("cache-status")
            .unwrap()
            .to_str()
            .unwrap();
        assert!(cache.contains("fwd=method"), "{cache}");
        assert_eq!(res.into_inner().name, "product p1");
        // Twice: nothing is cached or coalesced, both reach the service.
        get(&mut client, "p1").await.unwrap();
        assert_eq!(backend.calls(), 2);
        assert_eq!(metrics.coalesce("bypass"), 2);
        assert_eq!(metrics.coalesce("leader") + metrics.coalesce("follower"), 0);
        assert_eq!(limit.counters().admitted, 2);
        assert_eq!(metrics.durations(&grpc_labels("0")), 2);

        // A call holds the only permit; the next one is shed with UNAVAILABLE.
        let held = {
            let mut client = client.clone();
            tokio::spawn(async move { get(&mut client, "slow").await.map(|r| r.into_inner()) })
        };
        until("the permit is taken", || limit.in_flight() == 1).await;
        let shed = get(&mut client, "p1").await.unwrap_err();
        assert_eq!(shed.code(), Code::Unavailable);
        assert_eq!(limit.counters().rejected, 1);
        backend.open();
        assert_eq!(held.await.unwrap().unwrap().name, "product slow");

        assert_eq!(metrics.durations(&grpc_labels("14")), 1);
        assert_eq!(metrics.durations(&grpc_labels("0")), 3);
        assert_eq!(
            backend.calls(),
            3,
            "the shed call never reached the service"
        );
        drop(client);
    }
}
