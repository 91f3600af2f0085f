//! Declared gRPC reads (`tower_perf::grpc`) through real servers over TCP:
//! a tonic server with generated code and `Server::builder().layer(..)`,
//! tonic routes inside an axum `Router::layer`, and plain hyper with
//! `Incoming` bodies. The client is tonic's generated client.
//!
//! Handlers count their calls; the coalescing tests hold them on a gate the
//! test opens once every caller joined (seen through the coalescer's
//! counters on a debugging recorder set for the test's thread, on a
//! current-thread runtime that runs server and client). Time is paused; no
//! test asserts a duration.
#![cfg(all(
    feature = "cache",
    feature = "coalesce",
    feature = "limit",
    feature = "latency"
))]

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Empty};
use hyper_util::{
    client::legacy::Client,
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
    service::TowerToHyperService,
};
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use tokio::{net::TcpListener, sync::Semaphore};
use tonic::{
    transport::{server::TcpIncoming, Channel, Server},
    Code, Request as GrpcRequest, Response as GrpcResponse, Status,
};
use tower::Layer;
use tower_perf::{cache::CacheLayer, coalesce::CoalesceLayer, grpc::GrpcReads, stack::PerfStack};

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
const COALESCE: &str = "tower_perf_coalesce_requests_total";

/// The catalog's handlers: `GetProduct` counts its calls, answers
/// `NOT_FOUND` for ids containing `missing`, and waits for the gate for
/// ids starting with `slow`.
#[derive(Clone)]
struct Store {
    gets: Arc<AtomicUsize>,
    puts: Arc<AtomicUsize>,
    gate: Arc<Semaphore>,
}

impl Store {
    fn new() -> Self {
        Self {
            gets: Arc::default(),
            puts: Arc::default(),
            gate: Arc::new(Semaphore::new(0)),
        }
    }

    fn gets(&self) -> usize {
        self.gets.load(Ordering::SeqCst)
    }

    fn open(&self) {
        self.gate.close();
    }
}

#[tonic::async_trait]
impl Catalog for Store {
    async fn get_product(
        &self,
        request: GrpcRequest<GetProductRequest>,
    ) -> Result<GrpcResponse<Product>, Status> {
        self.gets.fetch_add(1, Ordering::SeqCst);
        let id = request.into_inner().id;
        if id.starts_with("slow") {
            // The gate has no permits: acquiring returns once it is closed.
            let _ = self.gate.acquire().await;
        }
        if id.contains("missing") {
            return Err(Status::not_found(format!("no product {id}")));
        }
        Ok(GrpcResponse::new(Product {
            name: format!("product {id}"),
            id,
            price_cents: 100,
        }))
    }

    async fn put_product(
        &self,
        request: GrpcRequest<Product>,
    ) -> Result<GrpcResponse<PutProductResponse>, Status> {
        self.puts.fetch_add(1, Ordering::SeqCst);
        let _ = request.into_inner();
        Ok(GrpcResponse::new(PutProductResponse { created: true }))
    }
}

fn reads() -> GrpcReads {
    GrpcReads::new().method(GET).ttl(Duration::from_secs(60))
}

async fn connect(addr: SocketAddr) -> CatalogClient<Channel> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    CatalogClient::new(channel)
}

/// A tonic server with `layer` in `Server::builder().layer(..)`: its address.
async fn serve_tonic<L, B>(layer: L, store: &Store) -> SocketAddr
where
    L: Layer<tonic::service::Routes> + Clone + Send + 'static,
    L::Service:
        tower::Service<Request<tonic::body::Body>, Response = Response<B>> + Clone + Send + 'static,
    <L::Service as tower::Service<Request<tonic::body::Body>>>::Future: Send,
    <L::Service as tower::Service<Request<tonic::body::Body>>>::Error:
        Into<tonic::codegen::StdError> + Send,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<tonic::codegen::StdError> + Send,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        Server::builder()
            .layer(layer)
            .add_service(CatalogServer::new(store.clone()))
            .serve_with_incoming(TcpIncoming::from(listener)),
    );
    addr
}

/// A unary gRPC answer made by hand: `body` as its data, then
/// `grpc-status: 0` in the trailers.
fn grpc_ok(
    body: Bytes,
) -> Response<impl http_body::Body<Data = Bytes, Error = std::convert::Infallible>> {
    let mut trailers = http::HeaderMap::new();
    trailers.insert("grpc-status", "0".parse().unwrap());
    let body = http_body_util::StreamBody::new(futures::stream::iter([
        Ok(http_body::Frame::data(body)),
        Ok(http_body::Frame::trailers(trailers)),
    ]));
    Response::builder()
        .header("content-type", "application/grpc")
        .body(body)
        .unwrap()
}

/// Serves `svc` with hyper (HTTP/1 and HTTP/2), its requests' bodies being
/// hyper's `Incoming`.
async fn serve_hyper<S, B>(svc: S) -> SocketAddr
where
    S: tower::Service<Request<hyper::body::Incoming>, Response = Response<B>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let svc = TowerToHyperService::new(svc.clone());
            tokio::spawn(async move {
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

async fn get(
    client: &mut CatalogClient<Channel>,
    id: &str,
) -> Result<GrpcResponse<Product>, Status> {
    client
        .get_product(GetProductRequest { id: id.into() })
        .await
}

fn cache_status<T>(res: &GrpcResponse<T>) -> String {
    res.metadata()
        .get("cache-status")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default()
}

/// Counters of the coalescing layer, accumulated across snapshots.
struct Roles {
    snapshotter: Snapshotter,
    counts: BTreeMap<String, u64>,
}

impl Roles {
    fn new(recorder: &DebuggingRecorder) -> Self {
        Self {
            snapshotter: recorder.snapshotter(),
            counts: BTreeMap::new(),
        }
    }

    fn get(&mut self, role: &str) -> u64 {
        for (key, _, _, value) in self.snapshotter.snapshot().into_vec() {
            if key.key().name() != COALESCE {
                continue;
            }
            if let DebugValue::Counter(n) = value {
                for label in key.key().labels() {
                    *self.counts.entry(label.value().to_owned()).or_default() += n;
                }
            }
        }
        self.counts.get(role).copied().unwrap_or(0)
    }
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

#[tokio::test(start_paused = true)]
async fn a_declared_read_is_cached_per_message() {
    let store = Store::new();
    let cache = CacheLayer::new().grpc_reads(reads());
    let handle = cache.handle();
    let mut client = connect(serve_tonic(cache, &store).await).await;

    let first = get(&mut client, "p1").await.unwrap();
    assert!(
        cache_status(&first).contains("fwd=uri-miss; fwd-status=200; stored"),
        "{}",
        cache_status(&first)
    );
    assert_eq!(first.into_inner().name, "product p1");
    assert_eq!(handle.entry_count(), 1);

    // The same message: answered from the cache, trailers and all.
    let second = get(&mut client, "p1").await.unwrap();
    assert!(
        cache_status(&second).contains("hit"),
        "{}",
        cache_status(&second)
    );
    assert!(second.metadata().get("age").is_some());
    assert_eq!(second.into_inner().name, "product p1");
    assert_eq!(store.gets(), 1, "the hit never reached the handler");

    // Another message never shares the entry.
    let other = get(&mut client, "p2").await.unwrap();
    assert_eq!(other.into_inner().name, "product p2");
    assert_eq!(store.gets(), 2);
    assert_eq!(
        get(&mut client, "p2").await.unwrap().into_inner().name,
        "product p2"
    );
    assert_eq!(store.gets(), 2);

    // Past the TTL the entry is fetched again.
    tokio::time::advance(Duration::from_secs(61)).await;
    let stale = get(&mut client, "p1").await.unwrap();
    assert!(
        cache_status(&stale).contains("fwd=stale"),
        "{}",
        cache_status(&stale)
    );
    assert_eq!(store.gets(), 3);

    // Purged by method path.
    handle.purge_path_prefix(GET);
    get(&mut client, "p1").await.unwrap();
    assert_eq!(store.gets(), 4);
}

#[tokio::test(start_paused = true)]
async fn errors_undeclared_methods_and_large_messages_pass_through() {
    let store = Store::new();
    let cache = CacheLayer::new().grpc_reads(reads().max_message_size(16));
    let handle = cache.handle();
    let mut client = connect(serve_tonic(cache, &store).await).await;

    // An error status (a trailers-only response) is never stored.
    for _ in 0..2 {
        let err = get(&mut client, "missing").await.unwrap_err();
        assert_eq!(err.code(), Code::NotFound);
    }
    assert_eq!(store.gets(), 2);

    // A message over the cap reaches the handler whole, every time.
    let long = "p".repeat(64);
    for _ in 0..2 {
        let res = get(&mut client, &long).await.unwrap();
        assert!(
            cache_status(&res).contains("fwd=bypass"),
            "{}",
            cache_status(&res)
        );
        assert_eq!(res.into_inner().id, long);
    }
    assert_eq!(store.gets(), 4);

    // An undeclared method: a POST like any other.
    let product = Product {
        id: "p1".into(),
        name: "teapot".into(),
        price_cents: 1,
    };
    for _ in 0..2 {
        let res = client.put_product(product.clone()).await.unwrap();
        assert!(
            cache_status(&res).contains("fwd=method"),
            "{}",
            cache_status(&res)
        );
    }
    assert_eq!(store.puts.load(Ordering::SeqCst), 2);
    assert_eq!(handle.entry_count(), 0);

    // Without a TTL anywhere a read is not stored.
    let store = Store::new();
    let cache = CacheLayer::new().grpc_reads(GrpcReads::new().method(GET));
    let mut client = connect(serve_tonic(cache, &store).await).await;
    get(&mut client, "p1").await.unwrap();
    get(&mut client, "p1").await.unwrap();
    assert_eq!(store.gets(), 2);
}

#[tokio::test(start_paused = true)]
async fn the_caches_default_ttl_applies_when_reads_set_none() {
    let store = Store::new();
    let cache = CacheLayer::new()
        .default_ttl(Duration::from_secs(5))
        .grpc_reads(GrpcReads::new().method(GET));
    let mut client = connect(serve_tonic(cache, &store).await).await;
    get(&mut client, "p1").await.unwrap();
    let hit = get(&mut client, "p1").await.unwrap();
    assert!(
        cache_status(&hit).contains("hit; ttl="),
        "{}",
        cache_status(&hit)
    );
    assert_eq!(store.gets(), 1);
}

#[tokio::test(start_paused = true)]
async fn identical_reads_in_flight_share_one_call() {
    let recorder = DebuggingRecorder::new();
    let _guard = metrics::set_default_local_recorder(&recorder);
    let mut roles = Roles::new(&recorder);
    let store = Store::new();
    let coalesce = CoalesceLayer::new().grpc_reads(reads());
    let client = connect(serve_tonic(coalesce, &store).await).await;

    const N: usize = 20;
    let calls: Vec<_> = (0..N)
        .map(|_| {
            let mut client = client.clone();
            tokio::spawn(async move { get(&mut client, "slow-1").await })
        })
        .collect();
    // A different message in flight at the same time is its own call.
    let other = {
        let mut client = client.clone();
        tokio::spawn(async move { get(&mut client, "slow-2").await })
    };
    until("every caller joined", || {
        roles.get("leader") == 2 && roles.get("follower") == N as u64 - 1
    })
    .await;
    assert_eq!(store.gets(), 2);
    store.open();
    for call in calls {
        let res = call.await.unwrap().unwrap();
        assert_eq!(res.into_inner().name, "product slow-1");
    }
    assert_eq!(
        other.await.unwrap().unwrap().into_inner().name,
        "product slow-2"
    );
    assert_eq!(store.gets(), 2, "one handler call per message");
}

#[tokio::test(start_paused = true)]
async fn an_error_releases_the_followers_and_leaves_no_marker() {
    let recorder = DebuggingRecorder::new();
    let _guard = metrics::set_default_local_recorder(&recorder);
    let mut roles = Roles::new(&recorder);
    let store = Store::new();
    let coalesce = CoalesceLayer::new().grpc_reads(reads());
    let client = connect(serve_tonic(coalesce, &store).await).await;

    let burst = |id: &'static str| -> Vec<_> {
        (0..5)
            .map(|_| {
                let mut client = client.clone();
                tokio::spawn(async move { get(&mut client, id).await })
            })
            .collect()
    };
    // The leader fails once every follower joined: they are released, and
    // each gets its own call's answer.
    let calls = burst("slow-missing");
    until("every caller joined", || roles.get("follower") == 4).await;
    store.open();
    for call in calls {
        assert_eq!(call.await.unwrap().unwrap_err().code(), Code::NotFound);
    }
    assert_eq!(store.gets(), 5, "the leader's call, then one per follower");
    // No hit-for-miss marker after an error: the next call leads again.
    let leaders = roles.get("leader");
    get(&mut client.clone(), "slow-missing").await.unwrap_err();
    assert_eq!(roles.get("leader"), leaders + 1);
    assert_eq!(roles.get("bypass"), 0);
}

#[tokio::test(start_paused = true)]
async fn the_full_stack_caches_and_coalesces_declared_reads() {
    let recorder = DebuggingRecorder::new();
    let _guard = metrics::set_default_local_recorder(&recorder);
    let mut roles = Roles::new(&recorder);
    let store = Store::new();
    let stack = PerfStack::new().grpc_reads(reads());
    let limit = stack.limit_handle();
    let client = connect(serve_tonic(stack, &store).await).await;

    let calls: Vec<_> = (0..10)
        .map(|_| {
            let mut client = client.clone();
            tokio::spawn(async move { get(&mut client, "slow-1").await })
        })
        .collect();
    until("every caller joined", || roles.get("follower") == 9).await;
    store.open();
    for call in calls {
        let res = call.await.unwrap().unwrap();
        assert_eq!(res.into_inner().name, "product slow-1");
    }
    assert_eq!(store.gets(), 1);
    assert_eq!(limit.counters().admitted, 1, "one permit for the burst");
    // Then stored: a hit, above the limiter.
    let hit = get(&mut client.clone(), "slow-1").await.unwrap();
    assert!(cache_status(&hit).contains("hit"), "{}", cache_status(&hit));
    assert_eq!(store.gets(), 1);
    assert_eq!(limit.counters().admitted, 1);
}

#[tokio::test(start_paused = true)]
async fn grpc_reads_work_in_an_axum_router_layer_next_to_http_routes() {
    let store = Store::new();
    let cache = CacheLayer::new().grpc_reads(reads());
    let app = tonic::service::Routes::new(CatalogServer::new(store.clone()))
        .into_axum_router()
        .route(
            "/hello",
            axum::routing::get(|| async { ([("cache-control", "max-age=60")], "hello") }),
        )
        .layer(cache);
    let addr = serve_hyper(app).await;

    let mut grpc = connect(addr).await;
    get(&mut grpc, "p1").await.unwrap();
    let hit = get(&mut grpc, "p1").await.unwrap();
    assert!(cache_status(&hit).contains("hit"), "{}", cache_status(&hit));
    assert_eq!(store.gets(), 1);

    // Plain HTTP through the same layer: the usual RFC 9111 cache.
    let http: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let uri: http::Uri = format!("http://{addr}/hello").parse().unwrap();
    let miss = http.get(uri.clone()).await.unwrap();
    assert!(miss.headers()["cache-status"]
        .to_str()
        .unwrap()
        .contains("stored"));
    miss.into_body().collect().await.unwrap();
    let hit = http.get(uri).await.unwrap();
    assert!(hit.headers()["cache-status"]
        .to_str()
        .unwrap()
        .contains("hit"));
    assert_eq!(hit.into_body().collect().await.unwrap().to_bytes(), "hello");
}

#[tokio::test(start_paused = true)]
async fn grpc_reads_work_under_hyper_with_incoming_bodies() {
    let store = Store::new();
    let routes = tonic::service::Routes::new(CatalogServer::new(store.clone()));
    let svc = CoalesceLayer::new()
        .grpc_reads(reads())
        .layer(CacheLayer::new().grpc_reads(reads()).layer(routes));
    let addr = serve_hyper(svc).await;
    let mut client = connect(addr).await;
    get(&mut client, "p1").await.unwrap();
    let hit = get(&mut client, "p1").await.unwrap();
    assert!(cache_status(&hit).contains("hit"), "{}", cache_status(&hit));
    // Over the cap and undeclared calls still reach the handler intact.
    let long = "q".repeat(100_000);
    assert_eq!(get(&mut client, &long).await.unwrap().into_inner().id, long);
    assert_eq!(store.gets(), 2);
}

/// Streaming calls, told apart by their bodies: a request of two messages
/// (client streaming) or a response of two (server streaming) is neither
/// stored nor shared, even for a declared method.
#[tokio::test(start_paused = true)]
async fn streaming_bodies_are_never_stored() {
    use http_body_util::Full;
    use tower::ServiceExt;

    fn frames(messages: &[&[u8]]) -> Bytes {
        let mut out = Vec::new();
        for m in messages {
            out.push(0);
            out.extend_from_slice(&(m.len() as u32).to_be_bytes());
            out.extend_from_slice(m);
        }
        out.into()
    }
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let inner = tower::service_fn(move |req: Request<_>| {
        counter.fetch_add(1, Ordering::SeqCst);
        async move {
            // Echo the request, but answer `s` with two messages (server
            // streaming); then grpc-status 0.
            let mut body: Bytes = BodyExt::collect(req.into_body()).await?.to_bytes();
            if body == frames(&[b"s"]) {
                body = frames(&[b"s", b"s"]);
            }
            Ok::<_, std::convert::Infallible>(grpc_ok(body))
        }
    });
    let svc = CacheLayer::new().grpc_reads(reads()).layer(inner);
    let call = |body: Bytes| {
        let req = Request::post(format!("http://x{GET}"))
            .header("content-type", "application/grpc")
            .body(Full::new(body))
            .unwrap();
        svc.clone().oneshot(req)
    };
    // Two messages in (client streaming): the inner service gets both; the
    // call is not keyed.
    let two = frames(&[b"a", b"b"]);
    for _ in 0..2 {
        let res = call(two.clone()).await.unwrap();
        let status = res.headers()["cache-status"].to_str().unwrap().to_owned();
        assert!(status.contains("fwd=bypass"), "{status}");
        let out = res.into_body().collect().await.unwrap();
        assert_eq!(out.trailers().unwrap()["grpc-status"], "0");
        assert_eq!(out.to_bytes(), two);
    }
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    // One message in, two out (server streaming): streamed on, not stored.
    for _ in 0..2 {
        let res = call(frames(&[b"s"])).await.unwrap();
        let out = res.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(out, frames(&[b"s", b"s"]));
    }
    assert_eq!(calls.load(Ordering::SeqCst), 4);
    // One message each way: stored, replayed with its trailers.
    let one = frames(&[b"a"]);
    for _ in 0..2 {
        let res = call(one.clone()).await.unwrap();
        let out = res.into_body().collect().await.unwrap();
        assert_eq!(out.trailers().unwrap()["grpc-status"], "0");
        assert_eq!(out.to_bytes(), one);
    }
    assert_eq!(calls.load(Ordering::SeqCst), 5);
}

async fn get_as(
    client: &mut CatalogClient<Channel>,
    id: &str,
    token: &str,
) -> GrpcResponse<Product> {
    let mut req = GrpcRequest::new(GetProductRequest { id: id.into() });
    req.metadata_mut()
        .insert("authorization", token.parse().unwrap());
    client.get_product(req).await.unwrap()
}

#[tokio::test(start_paused = true)]
async fn calls_with_credentials_are_cached_only_when_keyed_by_them() {
    let store = Store::new();
    let mut client =
        connect(serve_tonic(CacheLayer::new().grpc_reads(reads()), &store).await).await;
    for _ in 0..2 {
        let res = get_as(&mut client, "p1", "Bearer a").await;
        assert!(
            cache_status(&res).contains("fwd=bypass"),
            "{}",
            cache_status(&res)
        );
    }
    assert_eq!(store.gets(), 2);

    let store = Store::new();
    let keyed = tower_perf::key::KeyOptions::new().header(http::header::AUTHORIZATION);
    let cache = CacheLayer::new().key_options(keyed).grpc_reads(reads());
    let mut client = connect(serve_tonic(cache, &store).await).await;
    get_as(&mut client, "p1", "Bearer a").await;
    let hit = get_as(&mut client, "p1", "Bearer a").await;
    assert!(cache_status(&hit).contains("hit"), "{}", cache_status(&hit));
    let other = get_as(&mut client, "p1", "Bearer b").await;
    assert!(
        !cache_status(&other).contains("hit"),
        "{}",
        cache_status(&other)
    );
    assert_eq!(store.gets(), 2);
}

/// An inner service that panics when an instance is called without being
/// polled ready first (a clone starts unready).
struct Probe {
    ready: bool,
    calls: Arc<AtomicUsize>,
}

impl Clone for Probe {
    fn clone(&self) -> Self {
        Self {
            ready: false,
            calls: self.calls.clone(),
        }
    }
}

impl<B> tower::Service<Request<B>> for Probe
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: std::fmt::Debug,
{
    type Response = Response<http_body_util::Full<Bytes>>;
    type Error = std::convert::Infallible;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.ready = true;
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        assert!(
            std::mem::replace(&mut self.ready, false),
            "called without poll_ready"
        );
        self.calls.fetch_add(1, Ordering::SeqCst);
        Box::pin(async move {
            // A trailers-only OK answer, a moment later (so that identical
            // calls meet in flight); the request body is read whole.
            req.into_body().collect().await.unwrap();
            tokio::time::sleep(Duration::from_millis(1)).await;
            Ok(Response::builder()
                .header("content-type", "application/grpc")
                .header("grpc-status", "0")
                .body(http_body_util::Full::default())
                .unwrap())
        })
    }
}

#[tokio::test(start_paused = true)]
async fn only_instances_polled_ready_are_called() {
    use http_body_util::Full;
    use tower::{Service, ServiceExt};

    let request = || {
        Request::post(format!("http://x{GET}"))
            .header("content-type", "application/grpc")
            .body(Full::new(Bytes::from_static(b"\0\0\0\0\x01a")))
            .unwrap()
    };
    let calls = Arc::new(AtomicUsize::new(0));
    let probe = Probe {
        ready: false,
        calls: calls.clone(),
    };
    let svc = CacheLayer::new()
        .grpc_reads(reads())
        .layer(CoalesceLayer::new().grpc_reads(reads()).layer(probe));
    // Concurrent identical reads on clones, then a hit: each instance
    // called was polled ready.
    let tasks: Vec<_> = (0..5)
        .map(|_| {
            let mut svc = svc.clone();
            tokio::spawn(async move {
                ServiceExt::<Request<Full<Bytes>>>::ready(&mut svc)
                    .await
                    .unwrap()
                    .call(request())
                    .await
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    let mut svc = svc.clone();
    let ready = ServiceExt::<Request<Full<Bytes>>>::ready(&mut svc).await;
    let hit = ready.unwrap().call(request()).await.unwrap();
    assert!(hit.headers()["cache-status"]
        .to_str()
        .unwrap()
        .contains("hit"));
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

/// A read's leader that goes away still answers the followers that wait for
/// it (its call moves to a task), and a panic in its call reaches them (as
/// `500`s) and clears the key.
#[tokio::test(start_paused = true)]
async fn a_read_leader_that_goes_away_or_panics_still_answers_its_followers() {
    use http_body_util::Full;
    use tower::ServiceExt;

    fn frame(message: &[u8]) -> Bytes {
        let mut out = vec![0];
        out.extend_from_slice(&(message.len() as u32).to_be_bytes());
        out.extend_from_slice(message);
        out.into()
    }
    let recorder = DebuggingRecorder::new();
    let _guard = metrics::set_default_local_recorder(&recorder);
    let mut roles = Roles::new(&recorder);
    let gate = Arc::new(Semaphore::new(0));
    let calls = Arc::new(AtomicUsize::new(0));
    let inner = {
        let (gate, calls) = (gate.clone(), calls.clone());
        tower::service_fn(move |req: Request<_>| {
            calls.fetch_add(1, Ordering::SeqCst);
            let gate = gate.clone();
            async move {
                let body = BodyExt::collect(req.into_body()).await.ok().unwrap();
                let body = body.to_bytes();
                gate.acquire().await.unwrap().forget();
                assert_ne!(body, frame(b"panic"), "the handler panics");
                Ok::<_, std::convert::Infallible>(grpc_ok(body))
            }
        })
    };
    let svc = CoalesceLayer::new().grpc_reads(reads()).layer(inner);
    let call = |message: &[u8]| {
        let req = Request::post(format!("http://x{GET}"))
            .header("content-type", "application/grpc")
            .body(Full::new(frame(message)))
            .unwrap();
        tokio::spawn(svc.clone().oneshot(req))
    };

    // The leader goes away once three followers wait.
    let leader = call(b"a");
    until("the leader joined", || roles.get("leader") == 1).await;
    let followers: Vec<_> = (0..3).map(|_| call(b"a")).collect();
    until("every follower joined", || roles.get("follower") == 3).await;
    leader.abort();
    assert!(leader.await.unwrap_err().is_cancelled());
    gate.add_permits(1);
    for follower in followers {
        let res = follower.await.unwrap().unwrap();
        assert_eq!(res.status(), 200);
        let out = res.into_body().collect().await.unwrap();
        assert_eq!(out.trailers().unwrap()["grpc-status"], "0");
        assert_eq!(out.to_bytes(), frame(b"a"));
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1);

    // A panic in the leader's call: every waiter gets a 500.
    let leader = call(b"panic");
    until("the leader joined", || roles.get("leader") == 2).await;
    let followers: Vec<_> = (0..3).map(|_| call(b"panic")).collect();
    until("every follower joined", || roles.get("follower") == 6).await;
    gate.add_permits(1);
    for waiter in std::iter::once(leader).chain(followers) {
        assert_eq!(waiter.await.unwrap().unwrap().status(), 500);
    }
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    // The key was cleared: the next call leads.
    gate.add_permits(1);
    let res = call(b"panic").await.unwrap().unwrap();
    assert_eq!(res.status(), 500);
    assert_eq!(roles.get("leader"), 3);
    assert_eq!(roles.get("bypass"), 0);
}

/// Two instances, as in a fleet, share declared reads through the Redis
/// tier: the second answers from Redis with the first one's message and
/// trailers, and a purge on one reaches the other. Real time: Redis is a
/// real server (`TOWER_PERF_REDIS_URL`, set by the test command).
#[cfg(feature = "redis")]
#[tokio::test]
async fn declared_reads_are_shared_through_the_redis_tier() {
    use std::io::Write;
    use tower_perf::cache::RedisTier;

    let Some(url) = std::env::var("TOWER_PERF_REDIS_URL")
        .ok()
        .filter(|u| !u.is_empty())
    else {
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED declared_reads_are_shared_through_the_redis_tier: TOWER_PERF_REDIS_URL is unset \
             (scripts/test.sh starts a private redis-server and sets it)"
        );
        return;
    };
    let prefix = format!("tower-perf-test:{}:grpc-reads:", std::process::id());
    let tier = || {
        RedisTier::open(url.as_str())
            .unwrap()
            .prefix(prefix.clone())
            .timeout(Duration::from_millis(500))
    };
    let store = Store::new();
    let a = CacheLayer::new().redis(tier()).grpc_reads(reads());
    let b = CacheLayer::new().redis(tier()).grpc_reads(reads());
    let (a_cache, b_cache) = (a.handle(), b.handle());
    // Clients of a fleet name one service, whichever instance answers.
    let fleet_client = |addr: SocketAddr| async move {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .origin("http://catalog.example".parse().unwrap())
            .connect()
            .await
            .unwrap();
        CatalogClient::new(channel)
    };
    let mut a_client = fleet_client(serve_tonic(a, &store).await).await;
    let mut b_client = fleet_client(serve_tonic(b, &store).await).await;
    // Both connected and subscribed to invalidations.
    a_cache.flush().await;
    b_cache.flush().await;

    let first = get(&mut a_client, "p1").await.unwrap();
    assert!(
        cache_status(&first).contains("stored"),
        "{}",
        cache_status(&first)
    );
    a_cache.flush().await;
    let second = get(&mut b_client, "p1").await.unwrap();
    assert_eq!(store.gets(), 1, "the second instance answered from Redis");
    assert_eq!(second.get_ref(), first.get_ref());
    assert!(
        cache_status(&second).contains("hit"),
        "{}",
        cache_status(&second)
    );
    // Another message is another key, in Redis too.
    get(&mut b_client, "p2").await.unwrap();
    assert_eq!(store.gets(), 2);

    // A purge on one instance empties the other's memory and Redis.
    a_cache.purge_all();
    a_cache.flush().await;
    for _ in 0..500 {
        if b_cache.entry_count() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        b_cache.entry_count(),
        0,
        "the purge reached the other instance"
    );
    get(&mut b_client, "p1").await.unwrap();
    assert_eq!(store.gets(), 3, "purged from Redis too: fetched anew");
}
