//! The load generator: HTTP/1.1 keep-alive connections over loopback, a
//! closed loop for throughput and an open loop (Poisson arrivals) for
//! overload. Every loop is bounded by a deadline and a request budget.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::BoxError;
use bytes::Bytes;
use http::{header, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio::time::{sleep_until, timeout, Instant};

use crate::cpu;

type Conn = SendRequest<Empty<Bytes>>;

/// What the requests ask for.
#[derive(Clone, Debug)]
pub enum Paths {
    /// The same URI every time.
    Fixed(Uri),
    /// `prefix` followed by a fresh number each time: keys never repeat in
    /// the process, across runs and rounds (a cache keeps what it stored).
    Numbered(&'static str),
}

impl Paths {
    fn next_uri(&self) -> Uri {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        match self {
            Paths::Fixed(uri) => uri.clone(),
            Paths::Numbered(prefix) => {
                let n = NEXT.fetch_add(1, Ordering::Relaxed);
                format!("{prefix}{n}").parse().expect("valid path")
            }
        }
    }
}

/// A closed loop: each connection sends its next request when the previous
/// answer is in. Measures throughput.
#[derive(Clone, Debug)]
pub struct Closed {
    pub connections: usize,
    pub warmup: Duration,
    pub duration: Duration,
    /// Requests sent at most (warm-up included).
    pub max_requests: u64,
    pub timeout: Duration,
}

/// An open loop: requests arrive at `rate` per second (Poisson), whatever
/// the server does. Latency counts from the intended arrival, so queueing
/// in the client is not hidden (no coordinated omission).
#[derive(Clone, Debug)]
pub struct Open {
    pub rate: f64,
    pub warmup: Duration,
    pub duration: Duration,
    pub max_requests: u64,
    /// Connections open at most; an arrival finding none free is "unsent".
    pub max_connections: usize,
    pub timeout: Duration,
    /// After the last arrival, how long outstanding requests may finish.
    pub drain: Duration,
    pub seed: u64,
}

/// Outcomes within the measured window.
#[derive(Clone, Debug, Default)]
pub struct Tally {
    /// 2xx responses.
    pub ok: u64,
    /// 503 responses (load shed).
    pub shed: u64,
    /// Other statuses.
    pub other: u64,
    /// Transport errors, timeouts, requests unfinished after the drain.
    pub errors: u64,
    /// Open loop: arrivals that found every connection busy.
    pub unsent: u64,
    /// Requests sent in the whole run, warm-up included.
    pub sent: u64,
    /// Response body bytes of 2xx responses.
    pub bytes: u64,
    /// Latency of each 2xx response, microseconds.
    pub latencies_us: Vec<u32>,
}

impl Tally {
    fn record(&mut self, outcome: Result<(StatusCode, u64), ()>, latency: Duration) {
        match outcome {
            Ok((status, bytes)) if status.is_success() => {
                self.ok += 1;
                self.bytes += bytes;
                self.latencies_us
                    .push(latency.as_micros().try_into().unwrap_or(u32::MAX));
            }
            Ok((StatusCode::SERVICE_UNAVAILABLE, _)) => self.shed += 1,
            Ok(_) => self.other += 1,
            Err(()) => self.errors += 1,
        }
    }

    fn merge(&mut self, other: Tally) {
        self.ok += other.ok;
        self.shed += other.shed;
        self.other += other.other;
        self.errors += other.errors;
        self.unsent += other.unsent;
        self.sent += other.sent;
        self.bytes += other.bytes;
        self.latencies_us.extend(other.latencies_us);
    }
}

/// One measured run.
#[derive(Clone, Debug)]
pub struct Sample {
    pub tally: Tally,
    /// Length of the measured window.
    pub window: Duration,
    /// Server threads' CPU time within the window.
    pub server_cpu: Option<Duration>,
    /// Load generator threads' CPU time within the window.
    pub client_cpu: Option<Duration>,
}

/// Opens a keep-alive HTTP/1.1 connection.
pub async fn connect(addr: SocketAddr) -> Result<Conn, BoxError> {
    let stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (sender, conn) = http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

/// Sends one GET and reads the whole body.
async fn send(conn: &mut Conn, uri: Uri) -> Result<(StatusCode, u64), BoxError> {
    conn.ready().await?;
    let req = Request::get(uri)
        .header(header::HOST, "127.0.0.1")
        .body(Empty::new())?;
    let res = conn.send_request(req).await?;
    let status = res.status();
    let mut body = res.into_body();
    let mut bytes = 0;
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame?.into_data() {
            bytes += data.len() as u64;
        }
    }
    Ok((status, bytes))
}

async fn send_bounded(conn: &mut Conn, uri: Uri, limit: Duration) -> Result<(StatusCode, u64), ()> {
    match timeout(limit, send(conn, uri)).await {
        Ok(Ok(answer)) => Ok(answer),
        _ => Err(()),
    }
}

/// CPU times of (server, client) now.
fn cpu_now() -> (Option<Duration>, Option<Duration>) {
    (cpu::time(cpu::SERVER), cpu::time(cpu::CLIENT))
}

fn cpu_delta(
    a: (Option<Duration>, Option<Duration>),
    b: (Option<Duration>, Option<Duration>),
) -> (Option<Duration>, Option<Duration>) {
    let d = |x: Option<Duration>, y: Option<Duration>| Some(y?.saturating_sub(x?));
    (d(a.0, b.0), d(a.1, b.1))
}

/// Runs a closed loop against `addr`.
pub async fn closed(addr: SocketAddr, paths: &Paths, cfg: &Closed) -> Result<Sample, BoxError> {
    let mut conns = Vec::with_capacity(cfg.connections);
    for _ in 0..cfg.connections {
        conns.push(connect(addr).await?);
    }
    let from = Instant::now() + cfg.warmup;
    let until = from + cfg.duration;
    let budget = Arc::new(AtomicU64::new(cfg.max_requests));
    let mut workers = JoinSet::new();
    for mut conn in conns {
        let (budget, paths, cfg) = (budget.clone(), paths.clone(), cfg.clone());
        workers.spawn(async move {
            let mut tally = Tally::default();
            while Instant::now() < until && take(&budget) {
                let uri = paths.next_uri();
                tally.sent += 1;
                let start = Instant::now();
                let outcome = send_bounded(&mut conn, uri, cfg.timeout).await;
                let end = Instant::now();
                if start >= from && end <= until {
                    tally.record(outcome, end - start);
                }
                if outcome.is_err() {
                    // A broken connection: open another or stop this worker.
                    match connect(addr).await {
                        Ok(fresh) => conn = fresh,
                        Err(_) => break,
                    }
                }
            }
            tally
        });
    }
    sleep_until(from).await;
    let cpu_from = cpu_now();
    sleep_until(until).await;
    let cpu_until = cpu_now();
    let mut tally = Tally::default();
    while let Some(worker) = workers.join_next().await {
        tally.merge(worker?);
    }
    let (server_cpu, client_cpu) = cpu_delta(cpu_from, cpu_until);
    Ok(Sample {
        tally,
        window: cfg.duration,
        server_cpu,
        client_cpu,
    })
}

fn take(budget: &AtomicU64) -> bool {
    budget
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
        .is_ok()
}

/// Runs an open loop against `addr`.
pub async fn open(addr: SocketAddr, paths: &Paths, cfg: &Open) -> Result<Sample, BoxError> {
    let idle: Arc<Mutex<Vec<Conn>>> = Arc::default();
    let opened = Arc::new(AtomicUsize::new(0));
    // A few connections ready up front; more are opened as arrivals need them.
    for _ in 0..cfg.max_connections.min(16) {
        let conn = connect(addr).await?;
        idle.lock().unwrap().push(conn);
        opened.fetch_add(1, Ordering::Relaxed);
    }
    let tally: Arc<Mutex<Tally>> = Arc::default();
    let mut rng = SplitMix64(cfg.seed);
    let start = Instant::now();
    let from = start + cfg.warmup;
    let until = from + cfg.duration;
    let mut in_flight = JoinSet::new();
    let mut cpu_from = None;
    let mut sent = 0;
    let mut next = start;
    for _ in 0..cfg.max_requests {
        next += rng.exp_gap(cfg.rate);
        if next >= until {
            break;
        }
        sleep_until(next).await;
        let measured = next >= from;
        if measured && cpu_from.is_none() {
            cpu_from = Some(cpu_now());
        }
        // Reap finished requests so the set stays small.
        while in_flight.try_join_next().is_some() {}
        let conn = idle.lock().unwrap().pop();
        if conn.is_none() && opened.load(Ordering::Relaxed) >= cfg.max_connections {
            if measured {
                tally.lock().unwrap().unsent += 1;
            }
            continue;
        }
        if conn.is_none() {
            opened.fetch_add(1, Ordering::Relaxed);
        }
        sent += 1;
        let (idle, opened, tally) = (idle.clone(), opened.clone(), tally.clone());
        let (uri, intended, limit) = (paths.next_uri(), next, cfg.timeout);
        in_flight.spawn(async move {
            let conn = match conn {
                Some(conn) => Ok(conn),
                None => connect(addr).await,
            };
            let (outcome, conn) = match conn {
                Ok(mut conn) => (send_bounded(&mut conn, uri, limit).await, Some(conn)),
                Err(_) => (Err(()), None),
            };
            let latency = intended.elapsed();
            if measured {
                tally.lock().unwrap().record(outcome, latency);
            }
            match conn {
                Some(conn) if outcome.is_ok() => idle.lock().unwrap().push(conn),
                _ => {
                    opened.fetch_sub(1, Ordering::Relaxed);
                }
            }
        });
    }
    sleep_until(until).await;
    let cpu_until = cpu_now();
    let drained = timeout(cfg.drain, async {
        while in_flight.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        // Still unanswered after the drain: counted as failures.
        let unfinished = in_flight.len() as u64;
        in_flight.abort_all();
        tally.lock().unwrap().errors += unfinished;
    }
    let mut tally = std::mem::take(&mut *tally.lock().unwrap());
    tally.sent = sent;
    let (server_cpu, client_cpu) = cpu_delta(cpu_from.unwrap_or(cpu_until), cpu_until);
    Ok(Sample {
        tally,
        window: cfg.duration,
        server_cpu,
        client_cpu,
    })
}

/// A small deterministic PRNG (SplitMix64): every contender gets the same
/// arrival schedule.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Exponentially distributed gap between arrivals at `rate` per second.
    fn exp_gap(&mut self, rate: f64) -> Duration {
        // Uniform in (0, 1]: never ln(0).
        let u = ((self.next_u64() >> 11) + 1) as f64 / (1u64 << 53) as f64;
        Duration::from_secs_f64(-u.ln() / rate)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn poisson_gaps_average_to_the_rate() {
        let mut rng = SplitMix64(7);
        let n = 100_000;
        let total: Duration = (0..n).map(|_| rng.exp_gap(1000.0)).sum();
        let mean = total.as_secs_f64() / n as f64;
        assert!((mean - 0.001).abs() < 0.00002, "mean gap {mean}");
    }

    #[test]
    fn schedules_repeat_for_a_seed() {
        let gaps = |seed| {
            let mut rng = SplitMix64(seed);
            (0..5).map(|_| rng.exp_gap(10.0)).collect::<Vec<_>>()
        };
        assert_eq!(gaps(1), gaps(1));
        assert_ne!(gaps(1), gaps(2));
    }

    #[test]
    fn budget_stops_at_zero() {
        let budget = AtomicU64::new(2);
        assert!(take(&budget));
        assert!(take(&budget));
        assert!(!take(&budget));
        assert!(!take(&budget));
    }

    #[test]
    fn tally_sorts_outcomes() {
        let mut t = Tally::default();
        t.record(Ok((StatusCode::OK, 10)), Duration::from_micros(5));
        t.record(Ok((StatusCode::SERVICE_UNAVAILABLE, 0)), Duration::ZERO);
        t.record(Ok((StatusCode::NOT_FOUND, 0)), Duration::ZERO);
        t.record(Err(()), Duration::ZERO);
        assert_eq!((t.ok, t.shed, t.other, t.errors, t.bytes), (1, 1, 1, 1, 10));
        assert_eq!(t.latencies_us, vec![5]);
    }
}
