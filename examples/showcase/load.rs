//! The open-loop load generator.
//!
//! Requests are scheduled on a Poisson process at the phase's rate, independent of how fast
//! responses come back, and each one is sent on its own task over real TCP with hyper-util's
//! pooled client. Latency is measured from the *scheduled* send time, so a stalled server
//! or a late timer shows up in the numbers instead of being hidden (no coordinated
//! omission). Every scenario replays the same request sequence from the same seed.

use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header::HeaderName, HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::scenario::Probe;
use crate::workload::{phase_at, Call, Mix, Phase, Rng, Route};

/// What to send, how fast and for how long.
#[derive(Clone, Debug)]
pub(crate) struct Plan {
    pub(crate) duration: Duration,
    /// Base rate in requests per second; each phase multiplies it.
    pub(crate) rate: f64,
    pub(crate) phases: [Phase; 3],
    pub(crate) seed: u64,
    /// Per request, from its scheduled send time to the end of its body.
    pub(crate) timeout: Duration,
    /// Requests outstanding at once; arrivals past it are counted as dropped, not sent
    /// (keeps memory and sockets bounded when the server stalls).
    pub(crate) max_in_flight: u64,
}

/// How one request ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// A 2xx response with its whole body.
    Ok,
    /// 503: the service shed the request.
    Shed,
    /// Any other status.
    Status(StatusCode),
    /// No complete response within the timeout.
    Timeout,
    /// Connection or protocol failure.
    Failed,
}

/// What the response's `Cache-Status` header (RFC 9211) said, if anything.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum CacheSeen {
    Absent,
    Hit,
    Miss,
}

/// One finished request.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Sample {
    pub(crate) route: Route,
    pub(crate) phase: usize,
    pub(crate) micros: u32,
    pub(crate) outcome: Outcome,
    pub(crate) cache: CacheSeen,
}

/// Everything one run measured on the client side.
#[derive(Debug)]
pub(crate) struct Run {
    pub(crate) samples: Vec<Sample>,
    /// Requests not sent because `max_in_flight` were outstanding.
    pub(crate) dropped: u64,
    /// From the start to the last response, at least the planned duration.
    pub(crate) elapsed: Duration,
}

/// Live counters, read by the progress line.
#[derive(Debug, Default)]
struct Counters {
    sent: AtomicU64,
    done: AtomicU64,
    ok: AtomicU64,
    shed: AtomicU64,
    errors: AtomicU64,
}

impl Counters {
    fn in_flight(&self) -> u64 {
        let done = self.done.load(Ordering::Relaxed);
        self.sent.load(Ordering::Relaxed).saturating_sub(done)
    }
}

/// Runs `plan` against the service at `addr`. `label` prefixes progress output; `live`
/// adds the server side's figures (pool usage, a limiter's limit) to the progress line.
pub(crate) async fn run(addr: SocketAddr, plan: &Plan, label: &str, live: Probe) -> Run {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(5))
        .build(connector);

    let counters = Arc::new(Counters::default());
    let start = Instant::now();
    let progress = tokio::spawn(progress(
        Arc::clone(&counters),
        start,
        plan.clone(),
        label.to_owned(),
        live,
    ));

    let mix = Mix::new();
    let mut rng = Rng::new(plan.seed);
    let mut tasks = JoinSet::new();
    let mut samples = Vec::with_capacity((plan.rate * plan.duration.as_secs_f64() * 1.5) as usize);
    let (mut dropped, mut at, plan_timeout) = (0, start, plan.timeout);
    while at < start + plan.duration {
        let scheduled = at;
        let fraction = (scheduled - start).as_secs_f64() / plan.duration.as_secs_f64();
        let phase = phase_at(&plan.phases, fraction);
        // Draw before deciding whether to send, so every scenario sees the same sequence.
        let call = mix.draw(&mut rng);
        let rate = plan.rate * plan.phases[phase].factor;
        at += Duration::from_secs_f64(rng.exponential(1.0 / rate));
        tokio::time::sleep_until(scheduled).await;
        let request = if counters.in_flight() < plan.max_in_flight {
            request(addr, &call)
        } else {
            None
        };
        let Some(request) = request else {
            dropped += 1;
            continue;
        };
        counters.sent.fetch_add(1, Ordering::Relaxed);
        let (client, counters) = (client.clone(), Arc::clone(&counters));
        tasks.spawn(async move {
            let deadline = scheduled + plan_timeout;
            let result = tokio::time::timeout_at(deadline, exchange(&client, request)).await;
            let micros = u32::try_from(scheduled.elapsed().as_micros()).unwrap_or(u32::MAX);
            let (outcome, cache) = result.unwrap_or((Outcome::Timeout, CacheSeen::Absent));
            counters.done.fetch_add(1, Ordering::Relaxed);
            let counter = match outcome {
                Outcome::Ok => &counters.ok,
                Outcome::Shed => &counters.shed,
                _ => &counters.errors,
            };
            counter.fetch_add(1, Ordering::Relaxed);
            let route = call.route;
            Sample {
                route,
                phase,
                micros,
                outcome,
                cache,
            }
        });
        while let Some(done) = tasks.try_join_next() {
            samples.extend(done.ok());
        }
    }
    while let Some(done) = tasks.join_next().await {
        samples.extend(done.ok());
    }
    // The run lasts its duration even when the last arrival comes early.
    let elapsed = start.elapsed().max(plan.duration);
    progress.abort();
    let _ = progress.await;
    if std::io::stderr().is_terminal() {
        eprint!("\r\x1b[2K");
    }
    Run {
        samples,
        dropped,
        elapsed,
    }
}

/// The HTTP request for `call`; `None` only if it could not be built, which the
/// generator's own targets never cause.
fn request(addr: SocketAddr, call: &Call) -> Option<Request<Full<Bytes>>> {
    let body = match call.route {
        Route::Order => Bytes::from_static(b"{\"item\":1,\"quantity\":2}"),
        _ => Bytes::new(),
    };
    Request::builder()
        .method(call.route.method())
        .uri(format!("http://{addr}{}", call.target))
        .body(Full::new(body))
        .ok()
}

/// Sends one request and reads the whole response body.
async fn exchange(
    client: &Client<HttpConnector, Full<Bytes>>,
    request: Request<Full<Bytes>>,
) -> (Outcome, CacheSeen) {
    let Ok(response) = client.request(request).await else {
        return (Outcome::Failed, CacheSeen::Absent);
    };
    let status = response.status();
    let cache = cache_seen(response.headers());
    if response.into_body().collect().await.is_err() {
        return (Outcome::Failed, cache);
    }
    let outcome = match status {
        s if s.is_success() => Outcome::Ok,
        StatusCode::SERVICE_UNAVAILABLE => Outcome::Shed,
        s => Outcome::Status(s),
    };
    (outcome, cache)
}

/// Reads RFC 9211 `Cache-Status`: the last member is the cache closest to the client, and
/// it is a hit when it carries the `hit` parameter.
pub(crate) fn cache_seen(headers: &HeaderMap) -> CacheSeen {
    static CACHE_STATUS: HeaderName = HeaderName::from_static("cache-status");
    let Some(last) = headers
        .get_all(&CACHE_STATUS)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .rfind(|member| !member.trim().is_empty())
    else {
        return CacheSeen::Absent;
    };
    let hit = last
        .split(';')
        .skip(1)
        .any(|p| p.trim().eq_ignore_ascii_case("hit"));
    if hit {
        CacheSeen::Hit
    } else {
        CacheSeen::Miss
    }
}

/// Keeps a live line on a terminal, or prints one plain line per finished phase otherwise.
async fn progress(counters: Arc<Counters>, start: Instant, plan: Plan, label: String, live: Probe) {
    let tty = std::io::stderr().is_terminal();
    let mut tick = tokio::time::interval(Duration::from_millis(if tty { 200 } else { 100 }));
    let mut phase = 0;
    loop {
        tick.tick().await;
        let t = start.elapsed();
        let fraction = t.as_secs_f64() / plan.duration.as_secs_f64();
        let now = if fraction >= 1.0 {
            plan.phases.len()
        } else {
            phase_at(&plan.phases, fraction)
        };
        let figures = format!(
            "sent {}  ok {}  shed {}  errors {}  in flight {}  | {}",
            counters.sent.load(Ordering::Relaxed),
            counters.ok.load(Ordering::Relaxed),
            counters.shed.load(Ordering::Relaxed),
            counters.errors.load(Ordering::Relaxed),
            counters.in_flight(),
            live(),
        );
        let name = plan.phases.get(now).map_or("draining", |p| p.name);
        if tty {
            let line = format!(
                "{label} {name:<8} {:>5.1}s/{:.0}s  {figures}",
                t.as_secs_f64(),
                plan.duration.as_secs_f64()
            );
            eprint!("\r\x1b[2K{}", truncate(&line, terminal_width()));
            let _ = std::io::stderr().flush();
        } else if now != phase {
            eprintln!(
                "{label} {} done at {:.1}s: {figures}",
                plan.phases[phase].name,
                t.as_secs_f64()
            );
        }
        phase = now;
    }
}

fn terminal_width() -> usize {
    std::env::var("COLUMNS")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(120)
}

fn truncate(line: &str, width: usize) -> &str {
    line.char_indices()
        .nth(width.saturating_sub(1))
        .map_or(line, |(i, _)| &line[..i])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append("cache-status", v.parse().unwrap());
        }
        h
    }

    #[test]
    fn cache_status_reads_the_closest_cache() {
        assert_eq!(cache_seen(&headers(&[])), CacheSeen::Absent);
        assert_eq!(
            cache_seen(&headers(&["tower-perf; hit; ttl=12"])),
            CacheSeen::Hit
        );
        assert_eq!(
            cache_seen(&headers(&["tower-perf; fwd=miss; stored"])),
            CacheSeen::Miss
        );
        // The origin-side cache hit, but the one nearest the client forwarded.
        assert_eq!(
            cache_seen(&headers(&["origin; hit, edge; fwd=stale"])),
            CacheSeen::Miss
        );
        assert_eq!(
            cache_seen(&headers(&["origin; fwd=miss", "edge; HIT"])),
            CacheSeen::Hit
        );
        // A cache name is not a parameter.
        assert_eq!(cache_seen(&headers(&["hit; fwd=miss"])), CacheSeen::Miss);
    }
}
