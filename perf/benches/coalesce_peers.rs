//! Request coalescing side by side: `tower_perf::coalesce` against
//! `async_singleflight` 0.6 and `tower-resilience-coalesce` 0.14 on one
//! workload: 1 000 concurrent identical requests, each in its own task, for an
//! upstream that answers a 1 KiB body.
//!
//! - criterion `coalesce_peers/fan_out/*`: time from the upstream answering to
//!   the last of the 1 000 callers holding its response (current-thread runtime);
//! - printed table: upstream calls per burst, process CPU time per burst while
//!   the upstream takes 50 ms (2 worker threads), and the fan-out time, with
//!   ratios to tower-perf.
//!
//! - printed: uncontended cost per request of each, over the bare service.
//!
//! `cargo bench -p tower-perf-bench --bench coalesce_peers -- --warm-up-time 1 --measurement-time 3`

use std::{
    convert::Infallible,
    sync::{
        atomic::{AtomicUsize, Ordering::SeqCst},
        Arc,
    },
    time::{Duration, Instant},
};

use async_singleflight::Group;
use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion};
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use tokio::{sync::watch, task::JoinHandle};
use tower::{Layer, ServiceExt};

const WAITERS: usize = 1_000;
const SLOW: Duration = Duration::from_millis(50);
static PAYLOAD: [u8; 1024] = [b'x'; 1024];

#[derive(Clone, Copy, Debug, PartialEq)]
enum Peer {
    TowerPerf,
    AsyncSingleflight,
    TowerResilience,
}

const PEERS: [Peer; 3] = [
    Peer::TowerPerf,
    Peer::AsyncSingleflight,
    Peer::TowerResilience,
];

impl Peer {
    fn name(self) -> &'static str {
        match self {
            Peer::TowerPerf => "tower-perf",
            Peer::AsyncSingleflight => "async_singleflight 0.6",
            Peer::TowerResilience => "tower-resilience-coalesce 0.14",
        }
    }
}

/// The upstream: counts its calls, waits for the gate, then `delay`.
#[derive(Clone)]
struct Upstream {
    calls: Arc<AtomicUsize>,
    gate: watch::Receiver<bool>,
    delay: Duration,
}

impl Upstream {
    async fn respond(mut self) -> Response<Full<Bytes>> {
        self.calls.fetch_add(1, SeqCst);
        self.gate.wait_for(|open| *open).await.unwrap();
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
        Response::new(Full::new(Bytes::from_static(&PAYLOAD)))
    }
}

fn request() -> Request<Full<Bytes>> {
    Request::get("http://api.example.com/items/42")
        .body(Full::default())
        .unwrap()
}

/// Starts `WAITERS` identical requests through `peer`; each task ends with
/// the length of the body it received.
fn spawn_burst(peer: Peer, upstream: Upstream) -> Vec<JoinHandle<usize>> {
    let backend = tower::service_fn(move |_req: Request<Full<Bytes>>| {
        let upstream = upstream.clone();
        async move { Ok::<_, Infallible>(upstream.respond().await) }
    });
    match peer {
        Peer::TowerPerf => {
            let svc = tower_perf::coalesce::CoalesceLayer::new().layer(backend);
            (0..WAITERS)
                .map(|_| {
                    let call = svc.clone().oneshot(request());
                    tokio::spawn(async move {
                        let body = call.await.unwrap().into_body();
                        body.collect().await.unwrap().to_bytes().len()
                    })
                })
                .collect()
        }
        Peer::TowerResilience => {
            let layer =
                tower_resilience_coalesce::CoalesceLayer::new(|req: &Request<Full<Bytes>>| {
                    req.uri().to_string()
                });
            let svc = layer.layer(backend);
            (0..WAITERS)
                .map(|_| {
                    let call = svc.clone().oneshot(request());
                    tokio::spawn(async move {
                        let body = call.await.unwrap().into_body();
                        body.collect().await.unwrap().to_bytes().len()
                    })
                })
                .collect()
        }
        Peer::AsyncSingleflight => {
            let group: Arc<Group<String, Response<Full<Bytes>>, Infallible>> =
                Arc::new(Group::new());
            (0..WAITERS)
                .map(|_| {
                    let (group, backend) = (group.clone(), backend.clone());
                    tokio::spawn(async move {
                        let req = request();
                        let key = req.uri().to_string();
                        let res = group.work(&key, backend.oneshot(req)).await.unwrap();
                        res.into_body().collect().await.unwrap().to_bytes().len()
                    })
                })
                .collect()
        }
    }
}

struct Burst {
    calls: usize,
    /// Upstream answering -> last response.
    fan_out: Duration,
    /// Process CPU time from the first request to the last response.
    cpu: Option<Duration>,
}

/// One burst. With `delay` zero the upstream answers as soon as every
/// caller has had the time to register; otherwise it takes `delay`.
async fn burst(peer: Peer, delay: Duration) -> Burst {
    let calls = Arc::new(AtomicUsize::new(0));
    let (open, gate) = watch::channel(false);
    let upstream = Upstream {
        calls: calls.clone(),
        gate,
        delay,
    };
    let cpu_start = cpu_time();
    let tasks = spawn_burst(peer, upstream);
    if delay.is_zero() {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let start = Instant::now();
    open.send(true).unwrap();
    for task in tasks {
        assert_eq!(task.await.unwrap(), PAYLOAD.len());
    }
    let fan_out = start.elapsed().saturating_sub(delay);
    let cpu = cpu_time().zip(cpu_start).map(|(end, start)| end - start);
    Burst {
        calls: calls.load(SeqCst),
        fan_out,
        cpu,
    }
}

/// CPU time used so far by every thread of the process (Linux).
fn cpu_time() -> Option<Duration> {
    let mut total = 0u64;
    for task in std::fs::read_dir("/proc/self/task").ok()? {
        let stat = std::fs::read_to_string(task.ok()?.path().join("schedstat")).ok()?;
        total += stat.split_whitespace().next()?.parse::<u64>().ok()?;
    }
    Some(Duration::from_nanos(total))
}

fn fan_out(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut group = c.benchmark_group("coalesce_peers/fan_out");
    group.sample_size(10);
    for peer in PEERS {
        group.bench_function(peer.name(), |b| {
            b.iter_custom(|iters| {
                (0..iters)
                    .map(|_| rt.block_on(burst(peer, Duration::ZERO)).fan_out)
                    .sum()
            })
        });
    }
    group.finish();
}

/// The side-by-side table: medians of a few bursts of each peer, interleaved
/// so that load changes on the machine hit every peer alike.
fn table(_: &mut Criterion) {
    const ROUNDS: usize = 7;
    let current = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let workers = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    #[derive(Default)]
    struct Samples {
        calls: Vec<usize>,
        cpu: Vec<Duration>,
        fan_out: Vec<Duration>,
    }
    let mut rows: Vec<(Peer, Samples)> = PEERS.iter().map(|p| (*p, Samples::default())).collect();
    for _ in 0..ROUNDS {
        for (peer, samples) in &mut rows {
            let slow = workers.block_on(burst(*peer, SLOW));
            samples.calls.push(slow.calls);
            samples.cpu.extend(slow.cpu);
            let fast = current.block_on(burst(*peer, Duration::ZERO));
            samples.fan_out.push(fast.fan_out);
        }
    }
    let median = |v: &mut Vec<Duration>| {
        v.sort();
        v.get(v.len() / 2).copied()
    };
    let mut summary = Vec::new();
    for (peer, mut samples) in rows {
        let max_calls = samples.calls.iter().copied().max().unwrap_or(0);
        let cpu = median(&mut samples.cpu);
        summary.push((peer, max_calls, cpu, median(&mut samples.fan_out)));
    }
    let (_, _, ours_cpu, ours_fan_out) = summary[0];
    let ratio = |x: Option<Duration>, base: Option<Duration>| match (x, base) {
        (Some(x), Some(b)) if !b.is_zero() => format!("{:.1}x", x.as_secs_f64() / b.as_secs_f64()),
        _ => "n/a".to_owned(),
    };
    println!();
    println!(
        "coalesce side by side: {WAITERS} concurrent identical requests; CPU while the \
         upstream takes {} ms (2 workers); fan-out after it answers (1 thread); medians of {ROUNDS}",
        SLOW.as_millis()
    );
    println!(
        "{:<32} {:>14} {:>14} {:>9} {:>14} {:>9}",
        "", "upstream calls", "CPU per burst", "vs ours", "fan-out", "vs ours"
    );
    for (peer, calls, cpu, fan_out) in summary {
        let show = |d: Option<Duration>| {
            d.map_or("n/a".to_owned(), |d| {
                format!("{:.3} ms", d.as_secs_f64() * 1e3)
            })
        };
        println!(
            "{:<32} {:>14} {:>14} {:>9} {:>14} {:>9}",
            peer.name(),
            calls,
            show(cpu),
            ratio(cpu, ours_cpu),
            show(fan_out),
            ratio(fan_out, ours_fan_out),
        );
    }
}

/// Uncontended cost (every request leads): sequential requests through the
/// bare service and each peer, in interleaved batches; the fastest batch of
/// each counts (the least disturbed on a shared machine).
fn uncontended(_: &mut Criterion) {
    const BATCH: usize = 5_000;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let backend = tower::service_fn(|_req: Request<Full<Bytes>>| async {
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(&PAYLOAD))))
    });
    let ours = tower_perf::coalesce::CoalesceLayer::new().layer(backend);
    let resilience = tower_resilience_coalesce::CoalesceLayer::new(|req: &Request<Full<Bytes>>| {
        req.uri().to_string()
    })
    .layer(backend);
    let group: Group<String, Response<Full<Bytes>>, Infallible> = Group::new();
    let names = [
        "bare",
        "tower-perf",
        "async_singleflight 0.6",
        "tower-resilience-coalesce 0.14",
    ];
    let mut fastest = [f64::INFINITY; 4];
    for _ in 0..40 {
        for (i, best) in fastest.iter_mut().enumerate() {
            let start = Instant::now();
            rt.block_on(async {
                for _ in 0..BATCH {
                    let len = match i {
                        0 => body_len(backend.oneshot(request()).await.unwrap()).await,
                        1 => body_len(ours.clone().oneshot(request()).await.unwrap()).await,
                        2 => {
                            let req = request();
                            let key = req.uri().to_string();
                            let res = group.work(&key, backend.oneshot(req)).await.unwrap();
                            body_len(res).await
                        }
                        _ => body_len(resilience.clone().oneshot(request()).await.unwrap()).await,
                    };
                    assert_eq!(len, PAYLOAD.len());
                }
            });
            *best = best.min(start.elapsed().as_nanos() as f64 / BATCH as f64);
        }
    }
    println!();
    println!("coalesce uncontended: sequential requests, each one leads (fastest of 40 interleaved batches)");
    for (name, ns) in names.iter().zip(fastest) {
        println!(
            "{name:<32} {ns:>8.0} ns/request  +{:>5.0} ns over bare ({:.2}x)",
            ns - fastest[0],
            ns / fastest[0]
        );
    }
}

async fn body_len<B>(res: Response<B>) -> usize
where
    B: http_body::Body<Data = Bytes>,
    B::Error: std::fmt::Debug,
{
    res.into_body().collect().await.unwrap().to_bytes().len()
}

criterion_group!(benches, uncontended, table, fan_out);
criterion_main!(benches);
