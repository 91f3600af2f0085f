//! The shared Redis tier against a real `redis-server`, through axum servers
//! over TCP: one cache instance per server, as in a fleet.
//!
//! The tests use the server named by `TOWER_PERF_REDIS_URL`, which the test
//! command (`scripts/test.sh`) starts privately for them; each test works
//! under its own key prefix. The outage test starts and kills its own
//! server (`redis-server` on the `PATH`, or `TOWER_PERF_REDIS_SERVER`).
//! Without the variable every test says it is skipped and returns.
#![cfg(feature = "redis")]

use std::{
    collections::BTreeMap,
    io::Write,
    net::SocketAddr,
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex, OnceLock,
    },
    time::Duration,
};

use axum::{
    extract::Request,
    http::{HeaderMap, Method, StatusCode},
    response::IntoResponse,
    routing::any,
    Router,
};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::{
    client::legacy::{connect::HttpConnector, Client},
    rt::TokioExecutor,
};
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use tower_perf::cache::{CacheHandle, CacheLayer, RedisTier};

mod common;
use common::Reply;

const URL_VAR: &str = "TOWER_PERF_REDIS_URL";

/// The private server's URL, or `None` (and a note saying the test is skipped).
fn redis_url(test: &str) -> Option<String> {
    match std::env::var(URL_VAR) {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            // Straight to stderr: the test harness would capture `eprintln!`.
            let _ = writeln!(
                std::io::stderr(),
                "SKIPPED {test}: {URL_VAR} is unset (scripts/test.sh starts a private redis-server and sets it)"
            );
            None
        }
    }
}

/// A key prefix of this test alone.
fn prefix(test: &str) -> String {
    format!("tower-perf-test:{}:{test}:", std::process::id())
}

/// The process-wide metrics recorder, installed before any tier starts.
fn metrics() -> &'static Snapshotter {
    static SNAPSHOTTER: OnceLock<Snapshotter> = OnceLock::new();
    SNAPSHOTTER.get_or_init(|| {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        recorder.install().expect("no other recorder");
        snapshotter
    })
}

/// A counter's total so far, over its labels. (A snapshot drains the
/// recorder's counters: totals are kept here, for every test.)
fn counter(name: &str) -> u64 {
    static TOTALS: Mutex<BTreeMap<String, u64>> = Mutex::new(BTreeMap::new());
    let mut totals = TOTALS.lock().unwrap();
    for (key, .., value) in metrics().snapshot().into_vec() {
        if let DebugValue::Counter(n) = value {
            *totals.entry(key.key().name().to_owned()).or_default() += n;
        }
    }
    totals.get(name).copied().unwrap_or(0)
}

/// The origin: `max-age=60` (or `?cc=`), tags from `?tag=`, an `Age` from `?age=`, a
/// body of `?size=` bytes; counts its calls.
#[derive(Clone, Default)]
struct Origin(Arc<AtomicUsize>);

impl Origin {
    fn calls(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }

    fn router(&self) -> Router {
        let calls = self.0.clone();
        Router::new().fallback(any(move |req: Request| {
            let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
            async move {
                let query = req.uri().query().unwrap_or("");
                let param = |name: &str| {
                    query
                        .split('&')
                        .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
                        .map(str::to_owned)
                };
                let mut headers = HeaderMap::new();
                let cc = param("cc").unwrap_or_else(|| "max-age=60".into());
                headers.insert("cache-control", cc.parse().unwrap());
                if let Some(tag) = param("tag") {
                    headers.insert("surrogate-key", tag.parse().unwrap());
                }
                if let Some(age) = param("age") {
                    headers.insert("age", age.parse().unwrap());
                }
                let body = match param("size") {
                    Some(size) => "x".repeat(size.parse().unwrap()),
                    None => format!("{} #{n}", req.uri().path()),
                };
                (headers, body).into_response()
            }
        }))
    }
}

/// One instance: an axum server with its own cache in front of the origin.
struct Instance {
    addr: SocketAddr,
    client: Client<HttpConnector, Full<Bytes>>,
    cache: CacheHandle,
}

impl Instance {
    async fn start(origin: &Origin, tier: RedisTier) -> Self {
        metrics();
        let layer = CacheLayer::new().redis(tier);
        let cache = layer.handle();
        let app = origin.router().layer(layer);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        let client = Client::builder(TokioExecutor::new()).build_http();
        let instance = Self {
            addr,
            client,
            cache,
        };
        // Connected and subscribed before the test goes on.
        instance.cache.flush().await;
        instance
    }

    async fn send(&self, method: Method, path_and_query: &str) -> Reply {
        // One origin for every instance, so that they share keys.
        let req = hyper::Request::builder()
            .method(method)
            .uri(format!("http://{}{path_and_query}", self.addr))
            .header("host", "example.com")
            .body(Full::new(Bytes::new()))
            .unwrap();
        // A guard against hangs, far above any timeout involved.
        let res = tokio::time::timeout(Duration::from_secs(10), self.client.request(req))
            .await
            .expect("no hang")
            .unwrap();
        Reply::read(res).await
    }

    async fn get(&self, path_and_query: &str) -> Reply {
        self.send(Method::GET, path_and_query).await
    }
}

fn tier(url: &str, test: &str) -> RedisTier {
    RedisTier::open(url)
        .unwrap()
        .prefix(prefix(test))
        .timeout(Duration::from_millis(500))
}

/// Waits (at most 5 s) until `instance` holds `n` entries in process.
async fn until_entries(instance: &Instance, n: u64) {
    for _ in 0..500 {
        if instance.cache.entry_count() == n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!(
        "expected {n} entries in process, found {}",
        instance.cache.entry_count()
    );
}

#[tokio::test]
async fn a_second_instance_starts_warm_from_redis() {
    let Some(url) = redis_url("a_second_instance_starts_warm_from_redis") else {
        return;
    };
    let origin = Origin::default();
    let a = Instance::start(&origin, tier(&url, "warm")).await;
    let first = a.get("/x?age=20").await;
    assert!(first.cache_status().contains("fwd=uri-miss"), "{first:?}");
    a.cache.flush().await;

    let hits = counter("cache.l2.hits");
    let b = Instance::start(&origin, tier(&url, "warm")).await;
    assert_eq!(b.cache.entry_count(), 0);
    let shared = b.get("/x?age=20").await;
    assert_eq!(shared.status, StatusCode::OK);
    assert!(shared.hit(), "{shared:?}");
    assert_eq!(shared.body, first.body);
    assert_eq!(origin.calls(), 1, "B never asked the origin");
    assert!(counter("cache.l2.hits") > hits);
    // The age went on in Redis; what is left of the freshness goes to L1.
    let age: u64 = shared.headers["age"].to_str().unwrap().parse().unwrap();
    assert!((20..30).contains(&age), "age {age}");
    assert!(shared.cache_status().contains(&format!("ttl={}", 60 - age)));
    assert_eq!(b.cache.entry_count(), 1, "the L2 hit filled B's L1");
    let again = b.get("/x?age=20").await;
    assert!(again.hit());
    assert_eq!(origin.calls(), 1);

    // A miss everywhere is counted and goes upstream.
    let misses = counter("cache.l2.misses");
    assert!(!b.get("/new").await.hit());
    assert_eq!(origin.calls(), 2);
    assert!(counter("cache.l2.misses") > misses);
}

#[tokio::test]
async fn purges_and_unsafe_methods_reach_every_instance_and_redis() {
    let Some(url) = redis_url("purges_and_unsafe_methods_reach_every_instance_and_redis") else {
        return;
    };
    let origin = Origin::default();
    let a = Instance::start(&origin, tier(&url, "purge")).await;
    let b = Instance::start(&origin, tier(&url, "purge")).await;
    let paths = ["/k", "/t?tag=red", "/p/1", "/p/2", "/post"];
    // Both instances hold everything in process (A from upstream, B from Redis).
    for path in paths {
        a.get(path).await;
    }
    a.cache.flush().await;
    for path in paths {
        assert!(b.get(path).await.hit(), "{path}");
    }
    assert_eq!(origin.calls(), paths.len());
    until_entries(&a, 5).await;
    until_entries(&b, 5).await;

    // Each purge on one instance empties the other's L1 (pub/sub) and Redis.
    let calls = origin.calls();
    a.cache.purge_key("http://example.com/k");
    a.cache.flush().await;
    until_entries(&b, 4).await;
    let fresh = b.get("/k").await;
    assert!(!fresh.hit(), "Redis lost it too: {fresh:?}");
    assert_eq!(origin.calls(), calls + 1);

    b.cache.purge_tag("red");
    b.cache.flush().await;
    until_entries(&a, 3).await;
    assert!(!a.get("/t?tag=red").await.hit());
    assert_eq!(origin.calls(), calls + 2);

    a.cache.purge_path_prefix("/p/");
    a.cache.flush().await;
    until_entries(&b, 2).await; // "/k" again, "/post"
    assert!(!b.get("/p/1").await.hit());
    assert!(!b.get("/p/2").await.hit());
    assert_eq!(origin.calls(), calls + 4);

    // POST on B invalidates A's copy (RFC 9111 §4.4) through the channel.
    a.cache.flush().await;
    assert!(a.get("/post").await.hit());
    let post = b.send(Method::POST, "/post").await;
    assert_eq!(post.status, StatusCode::OK);
    b.cache.flush().await;
    let mut invalidated = false;
    for _ in 0..500 {
        if !a.get("/post").await.hit() {
            invalidated = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(invalidated, "the POST on B reached A");
    let calls = origin.calls();
    assert!(a.get("/post").await.hit(), "stored again after the miss");
    assert_eq!(origin.calls(), calls);

    b.cache.purge_all();
    b.cache.flush().await;
    until_entries(&a, 0).await;
    assert!(!a.get("/k").await.hit());
}

#[tokio::test]
async fn large_bodies_stay_in_process() {
    let Some(url) = redis_url("large_bodies_stay_in_process") else {
        return;
    };
    let origin = Origin::default();
    let small = || tier(&url, "large").max_body_size(100);
    let a = Instance::start(&origin, small()).await;
    let b = Instance::start(&origin, small()).await;
    a.get("/big?size=101").await;
    a.get("/small?size=100").await;
    a.cache.flush().await;
    assert!(a.get("/big?size=101").await.hit(), "kept in process");
    assert!(
        !b.get("/big?size=101").await.hit(),
        "never written to Redis"
    );
    assert!(b.get("/small?size=100").await.hit());
}

#[tokio::test]
async fn corrupt_and_old_version_entries_are_misses() {
    let Some(url) = redis_url("corrupt_and_old_version_entries_are_misses") else {
        return;
    };
    let origin = Origin::default();
    let a = Instance::start(&origin, tier(&url, "corrupt")).await;
    a.get("/c").await;
    a.cache.flush().await;

    let client = redis::Client::open(url.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let name = format!("{}e:http://example.com/c", prefix("corrupt"));
    let stored: Vec<u8> = redis::cmd("GET")
        .arg(&name)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(&stored[..4], b"tpc\x01", "versioned binary entry");

    // Expiry: remaining freshness, plus the stale window unless forbidden.
    for (query, ttl) in [
        ("cc=max-age=60&age=20", 40),
        ("cc=max-age=60,stale-while-revalidate=30", 90),
        (
            "cc=max-age=60,stale-if-error=100,stale-while-revalidate=5",
            160,
        ),
        ("cc=max-age=60,must-revalidate,stale-if-error=100", 60),
    ] {
        a.get(&format!("/ttl?{query}")).await;
        a.cache.flush().await;
        let name = format!("{}e:http://example.com/ttl?{query}", prefix("corrupt"));
        let pttl: i64 = redis::cmd("PTTL")
            .arg(&name)
            .query_async(&mut conn)
            .await
            .unwrap();
        let ttl = ttl * 1000;
        assert!(pttl > ttl - 2000 && pttl <= ttl, "{query}: PTTL {pttl}");
    }

    let mut older = stored.clone();
    older[3] = 0;
    let mut cut = stored.clone();
    cut.truncate(stored.len() / 2);
    let garbage = b"{\"status\":200}".to_vec();
    for (what, bytes) in [
        ("old version", older),
        ("truncated", cut),
        ("foreign", garbage),
    ] {
        let _: () = redis::cmd("SET")
            .arg(&name)
            .arg(bytes)
            .query_async(&mut conn)
            .await
            .unwrap();
        let b = Instance::start(&origin, tier(&url, "corrupt")).await;
        let calls = origin.calls();
        let reply = b.get("/c").await;
        assert_eq!(reply.status, StatusCode::OK, "{what}");
        assert!(!reply.hit(), "{what} is a miss");
        assert_eq!(origin.calls(), calls + 1, "{what}: served by the origin");
        // B's own write of the fresh response lands before the next damage.
        b.cache.flush().await;
    }
}

/// A `redis-server` of this test's own on a free loopback port, killed on drop.
struct OwnServer {
    child: Child,
    url: String,
    port: u16,
}

impl OwnServer {
    /// On `port`, or a free one.
    fn start(port: Option<u16>) -> Self {
        let port = port.unwrap_or_else(|| {
            std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port()
        });
        let binary =
            std::env::var("TOWER_PERF_REDIS_SERVER").unwrap_or_else(|_| "redis-server".into());
        let child = Command::new(binary)
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server runs");
        let server = Self {
            child,
            url: format!("redis://127.0.0.1:{port}/"),
            port,
        };
        for _ in 0..500 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return server;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("redis-server did not start on port {port}");
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for OwnServer {
    fn drop(&mut self) {
        self.kill();
    }
}

#[tokio::test]
async fn redis_killed_mid_test_leaves_upstream_and_l1_serving() {
    if redis_url("redis_killed_mid_test_leaves_upstream_and_l1_serving").is_none() {
        return;
    }
    let mut server = OwnServer::start(None);
    let origin = Origin::default();
    let url = server.url.clone();
    let outage = || {
        RedisTier::open(url.as_str())
            .unwrap()
            .prefix(prefix("outage"))
            .timeout(Duration::from_millis(100))
            .circuit(3, Duration::from_secs(60))
    };
    let a = Instance::start(&origin, outage()).await;
    let b = Instance::start(&origin, outage()).await;
    a.get("/kept").await;
    a.cache.flush().await;
    assert!(b.get("/kept").await.hit(), "shared while Redis is up");

    server.kill();
    let errors = counter("cache.l2.errors");
    let skipped = counter("cache.l2.skipped");
    // L1 still answers; new keys go upstream; nothing fails.
    for i in 0..10 {
        assert!(a.get("/kept").await.hit());
        let reply = b.get(&format!("/new/{i}")).await;
        assert_eq!(reply.status, StatusCode::OK);
        assert!(!reply.hit());
    }
    assert_eq!(origin.calls(), 11);
    // A cold instance is served by the origin.
    let c = Instance::start(&origin, outage()).await;
    let cold = c.get("/kept").await;
    assert_eq!(cold.status, StatusCode::OK);
    assert!(!cold.hit());
    assert!(counter("cache.l2.errors") > errors, "failures are counted");
    assert!(
        counter("cache.l2.skipped") > skipped,
        "the circuit opened and Redis was no longer called"
    );
    // Purges still work in process.
    a.cache.purge_key("http://example.com/kept");
    assert!(!a.get("/kept").await.hit());
}

#[tokio::test]
async fn after_an_outage_the_circuit_closes_and_l1_is_cleared() {
    if redis_url("after_an_outage_the_circuit_closes_and_l1_is_cleared").is_none() {
        return;
    }
    let mut server = OwnServer::start(None);
    let port = server.port;
    let origin = Origin::default();
    let url = server.url.clone();
    let tier = || {
        RedisTier::open(url.as_str())
            .unwrap()
            .prefix(prefix("recover"))
            .timeout(Duration::from_millis(100))
            .circuit(2, Duration::from_millis(300))
    };
    let a = Instance::start(&origin, tier()).await;
    let b = Instance::start(&origin, tier()).await;
    a.get("/before").await;
    assert!(a.get("/before").await.hit());

    server.kill();
    for i in 0..5 {
        assert_eq!(b.get(&format!("/down/{i}")).await.status, StatusCode::OK);
    }
    // Back, empty (purges made meanwhile could not be heard): A drops what
    // it held once its subscription is back.
    let _server = OwnServer::start(Some(port));
    until_entries(&a, 0).await;
    // The circuit lets a call through again after its open period.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let mut shared = false;
    for i in 0..50 {
        let path = format!("/after/{i}");
        a.get(&path).await;
        a.cache.flush().await;
        if b.get(&path).await.hit() {
            shared = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(shared, "entries are shared again");
}

/// An inner service that panics when called without being polled ready,
/// as a clone made in `call` would be.
#[derive(Default)]
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

impl tower::Service<http::Request<String>> for Probe {
    type Response = http::Response<Full<Bytes>>;
    type Error = std::convert::Infallible;
    type Future = std::future::Ready<Result<Self::Response, Self::Error>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.ready = true;
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: http::Request<String>) -> Self::Future {
        assert!(std::mem::take(&mut self.ready), "called without poll_ready");
        self.calls.fetch_add(1, Ordering::SeqCst);
        let res = http::Response::builder()
            .header("cache-control", "max-age=60")
            .body(Full::new(Bytes::from_static(b"probe")))
            .unwrap();
        std::future::ready(Ok(res))
    }
}

#[tokio::test]
async fn a_miss_in_process_calls_the_service_that_was_polled_ready() {
    use tower::{Layer, Service, ServiceExt};
    let Some(url) = redis_url("a_miss_in_process_calls_the_service_that_was_polled_ready") else {
        return;
    };
    let layer = CacheLayer::new().redis(tier(&url, "probe"));
    let probe = Probe::default();
    let calls = probe.calls.clone();
    let mut svc = layer.layer(probe);
    let get = |path: &str| {
        http::Request::get(format!("http://example.com{path}"))
            .body(String::new())
            .unwrap()
    };
    for path in ["/a", "/b", "/a"] {
        let res = svc.ready().await.unwrap().call(get(path)).await.unwrap();
        assert_eq!(res.into_body().collect().await.unwrap().to_bytes(), "probe");
    }
    // Two misses went through Redis to the probe; the third was a hit.
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    // Clones, each polled ready before its call, as axum does per request.
    let mut clone = svc.clone();
    let res = clone.ready().await.unwrap().call(get("/c")).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(calls.load(Ordering::SeqCst), 3);
}
