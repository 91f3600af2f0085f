//! What a hit in the shared Redis tier costs, next to an in-process hit and
//! the bare handler (a static 1 KiB body).
//!
//! - `bare`: the axum handler with no cache;
//! - `l1-hit`: a cache with a Redis tier, answering from process memory;
//! - `l2-hit`: a cache whose in-process tier holds nothing (one byte of
//!   capacity), so every request is answered from Redis: a `GET` over
//!   loopback, decoding, and the response built from the entry.
//!
//! Needs `redis-server` on the `PATH`: the bench starts its own on a free
//! loopback port and stops it at the end. After criterion's report an
//! interleaved run prints the ratios.
//!
//! `cargo bench --features redis --bench cache_redis -- --warm-up-time 1 --measurement-time 3`

use std::{
    hint::black_box,
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use axum::{body::Body, routing::get, Router};
use bytes::Bytes;
use criterion::Criterion;
use http::Request;
use http_body_util::BodyExt;
use tower::ServiceExt;
use tower_perf::cache::{CacheHandle, CacheLayer, RedisTier};

/// Keys the L2 bench rotates over (all stored in Redis).
const KEYS: usize = 256;

struct Server(Child, String);

impl Server {
    fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let server = Self(
            Command::new("redis-server")
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--save", "", "--appendonly", "no"])
                .stdout(Stdio::null())
                .spawn()
                .expect("redis-server on the PATH"),
            format!("redis://127.0.0.1:{port}/"),
        );
        for _ in 0..500 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return server;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("redis-server did not start");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Its routes built once (`with_state`), as `axum::serve` builds them.
fn app(calls: &Arc<AtomicUsize>) -> Router {
    let body = Bytes::from(vec![b'x'; 1024]);
    let calls = calls.clone();
    Router::new()
        .route(
            "/{*path}",
            get(move || {
                calls.fetch_add(1, Ordering::Relaxed);
                let body = body.clone();
                async move { ([("cache-control", "max-age=3600")], body) }
            }),
        )
        .with_state(())
}

fn cached(url: &str, calls: &Arc<AtomicUsize>, l1_bytes: u64) -> (Router, CacheHandle) {
    let tier = RedisTier::open(url)
        .unwrap()
        .prefix("bench:")
        .timeout(Duration::from_millis(200));
    let layer = CacheLayer::new().redis(tier).max_capacity(l1_bytes);
    let handle = layer.handle();
    (app(calls).layer(layer), handle)
}

async fn once(svc: &Router, uri: &str) -> usize {
    let req = Request::get(uri).body(Body::empty()).unwrap();
    let res = svc.clone().oneshot(req).await.unwrap();
    res.into_body().collect().await.unwrap().to_bytes().len()
}

fn uri(i: usize) -> String {
    format!("http://bench.local/item/{}", i % KEYS)
}

struct Setup {
    server: Server,
    bare: Router,
    l1: Router,
    l2: Router,
    l2_calls: Arc<AtomicUsize>,
    l2_handle: CacheHandle,
}

async fn setup() -> Setup {
    let server = Server::start();
    let calls = Arc::new(AtomicUsize::new(0));
    let bare = app(&calls);
    let (l1, l1_handle) = cached(&server.1, &calls, 64 * 1024 * 1024);
    // Fills both tiers: L1 of this instance, and Redis for the other.
    for i in 0..KEYS {
        once(&l1, &uri(i)).await;
    }
    l1_handle.flush().await;
    let l2_calls = Arc::new(AtomicUsize::new(0));
    let (l2, l2_handle) = cached(&server.1, &l2_calls, 1);
    l2_handle.flush().await;
    Setup {
        server,
        bare,
        l1,
        l2,
        l2_calls,
        l2_handle,
    }
}

fn benches(c: &mut Criterion, rt: &tokio::runtime::Runtime, s: &Setup) {
    let mut group = c.benchmark_group("cache/redis/1KiB");
    let next = AtomicUsize::new(0);
    let uri_next = || uri(next.fetch_add(1, Ordering::Relaxed));
    group.bench_function("bare", |b| {
        b.to_async(rt)
            .iter(|| async { black_box(once(&s.bare, &uri_next()).await) })
    });
    group.bench_function("l1-hit", |b| {
        b.to_async(rt)
            .iter(|| async { black_box(once(&s.l1, &uri_next()).await) })
    });
    group.bench_function("l2-hit", |b| {
        b.to_async(rt)
            .iter(|| async { black_box(once(&s.l2, &uri_next()).await) })
    });
    group.finish();
}

async fn round<F, Fut>(per_round: usize, mut f: F) -> f64
where
    F: FnMut(usize) -> Fut,
    Fut: std::future::Future<Output = usize>,
{
    let start = Instant::now();
    for i in 0..per_round {
        black_box(f(i).await);
    }
    start.elapsed().as_nanos() as f64 / per_round as f64
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Interleaved rounds, so machine noise hits every contestant alike.
async fn ratios(s: &Setup) {
    const ROUNDS: usize = 15;
    const PER_ROUND: usize = 2_000;
    let (mut bare, mut l1, mut l2) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        bare.push(round(PER_ROUND, |i| async move { once(&s.bare, &uri(i)).await }).await);
        l1.push(round(PER_ROUND, |i| async move { once(&s.l1, &uri(i)).await }).await);
        l2.push(round(PER_ROUND, |i| async move { once(&s.l2, &uri(i)).await }).await);
    }
    // The Redis round trip alone, for scale: a GET of one stored entry.
    let client = redis::Client::open(s.server.1.as_str()).unwrap();
    let conn = client.get_multiplexed_async_connection().await.unwrap();
    let mut rtt = Vec::new();
    for _ in 0..ROUNDS {
        rtt.push(
            round(PER_ROUND, |i| {
                let mut conn = conn.clone();
                async move {
                    let name = format!("bench:e:{}", uri(i));
                    let v: Vec<u8> = redis::cmd("GET")
                        .arg(name)
                        .query_async(&mut conn)
                        .await
                        .unwrap();
                    v.len()
                }
            })
            .await,
        );
    }
    let rtt = median(rtt);
    let (bare, l1, l2) = (median(bare), median(l1), median(l2));
    println!("\ncache redis tier (interleaved, {ROUNDS} rounds of {PER_ROUND}, median ns/request, 1 KiB body)");
    println!("  bare {bare:>9.0} ns   l1-hit {l1:>9.0} ns   l2-hit {l2:>9.0} ns");
    println!("  redis GET round trip alone {rtt:>9.0} ns");
    println!(
        "  l2-hit / l1-hit {:.2}x   l2-hit / bare {:.2}x   l1-hit / bare {:.2}x",
        l2 / l1,
        l2 / bare,
        l1 / bare
    );
}

fn main() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let setup = rt.block_on(setup());
    let mut c = Criterion::default().configure_from_args();
    benches(&mut c, &rt, &setup);
    c.final_summary();
    rt.block_on(ratios(&setup));
    // Every L2 request was answered from Redis, none from the handler.
    let upstream = setup.l2_calls.load(Ordering::Relaxed);
    println!(
        "  l2 instance: {upstream} upstream calls, {} entries in process",
        setup.l2_handle.entry_count()
    );
}
