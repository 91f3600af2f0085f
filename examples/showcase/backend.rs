//! The service under test: an axum app whose handlers query a simulated database.
//!
//! The database has a fixed pool of connections (a semaphore). A query holds a connection
//! for its service time, and that time grows with the number of queries running at once
//! (lock and buffer contention), so latency rises with load before the pool even runs out;
//! past that, requests queue for a connection, and a request that waits longer than the
//! pool's acquire timeout fails with 500 like a real connection pool would.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use tokio::sync::Semaphore;

use crate::workload::{Rng, Route};

/// Extra service time per other query running at once (5% each).
const CONTENTION: f64 = 0.05;
/// Spread of query service times around their median.
const JITTER_SIGMA: f64 = 0.25;
/// How long a request waits for a free connection before the pool gives up.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(2);

/// The simulated database and the backend's counters.
#[derive(Debug)]
pub(crate) struct Backend {
    pool: Semaphore,
    running: AtomicUsize,
    waiting: AtomicUsize,
    connections: usize,
    rng: Mutex<Rng>,
    calls: [AtomicU64; 3],
    pool_timeouts: AtomicU64,
}

impl Backend {
    pub(crate) fn new(connections: usize, seed: u64) -> Arc<Self> {
        Arc::new(Self {
            pool: Semaphore::new(connections),
            running: AtomicUsize::new(0),
            waiting: AtomicUsize::new(0),
            connections,
            rng: Mutex::new(Rng::new(seed ^ 0xdb)),
            calls: Default::default(),
            pool_timeouts: AtomicU64::new(0),
        })
    }

    /// Handler invocations per route, i.e. requests that reached the backend.
    pub(crate) fn calls(&self, route: Route) -> u64 {
        self.calls[route.index()].load(Ordering::Relaxed)
    }

    pub(crate) fn total_calls(&self) -> u64 {
        Route::ALL.iter().map(|&r| self.calls(r)).sum()
    }

    /// Requests that gave up waiting for a database connection.
    pub(crate) fn pool_timeouts(&self) -> u64 {
        self.pool_timeouts.load(Ordering::Relaxed)
    }

    /// The pool right now, for the progress line.
    pub(crate) fn pool_status(&self) -> String {
        format!(
            "db {}/{} busy, {} waiting",
            self.running.load(Ordering::Relaxed),
            self.connections,
            self.waiting.load(Ordering::Relaxed)
        )
    }

    /// Runs one query of `route`'s cost; `Err` when no connection freed up in time.
    async fn query(&self, route: Route) -> Result<(), Response> {
        self.calls[route.index()].fetch_add(1, Ordering::Relaxed);
        let waiting = Gauge::enter(&self.waiting);
        let permit = tokio::time::timeout(ACQUIRE_TIMEOUT, self.pool.acquire()).await;
        drop(waiting);
        let Ok(Ok(_connection)) = permit else {
            self.pool_timeouts.fetch_add(1, Ordering::Relaxed);
            let msg = "database connection pool timed out\n";
            return Err((StatusCode::INTERNAL_SERVER_ERROR, msg).into_response());
        };
        // The guards keep the gauges right when the client goes away mid-query.
        let running = Gauge::enter(&self.running);
        let jitter = self
            .rng
            .lock()
            .map_or(1.0, |mut r| r.lognormal(JITTER_SIGMA));
        let contention = 1.0 + CONTENTION * running.others as f64;
        tokio::time::sleep(route.query_cost().mul_f64(jitter * contention)).await;
        Ok(())
    }
}

/// Counts itself in a gauge while alive; `others` is how many were there before.
struct Gauge<'a> {
    counter: &'a AtomicUsize,
    others: usize,
}

impl<'a> Gauge<'a> {
    fn enter(counter: &'a AtomicUsize) -> Self {
        let others = counter.fetch_add(1, Ordering::Relaxed);
        Self { counter, others }
    }
}

impl Drop for Gauge<'_> {
    fn drop(&mut self) {
        self.counter.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The bare app: three routes over the simulated database.
pub(crate) fn app(backend: Arc<Backend>) -> Router {
    Router::new()
        .route(Route::Item.template(), get(item))
        .route(Route::Search.template(), get(search))
        .route(Route::Order.template(), post(order))
        .with_state(backend)
}

async fn item(State(db): State<Arc<Backend>>, Path(id): Path<u32>) -> Response {
    if let Err(e) = db.query(Route::Item).await {
        return e;
    }
    // About 1 KiB, like a product record.
    let body = format!(
        "{{\"id\":{id},\"name\":\"item {id}\",\"description\":\"{}\"}}\n",
        "lorem ipsum ".repeat(80)
    );
    json(Route::Item, body)
}

async fn search(State(db): State<Arc<Backend>>, RawQuery(query): RawQuery) -> Response {
    // The terms the load generator sends are plain words; anything else is a bad request.
    let term = query
        .as_deref()
        .and_then(|q| q.strip_prefix("q="))
        .unwrap_or("");
    if term.is_empty() || !term.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return (StatusCode::BAD_REQUEST, "expected ?q=<word>\n").into_response();
    }
    if let Err(e) = db.query(Route::Search).await {
        return e;
    }
    let hits: Vec<String> = (0..20).map(|i| format!("\"{term}-{i}\"")).collect();
    json(
        Route::Search,
        format!("{{\"q\":\"{term}\",\"hits\":[{}]}}\n", hits.join(",")),
    )
}

async fn order(State(db): State<Arc<Backend>>) -> Response {
    if let Err(e) = db.query(Route::Order).await {
        return e;
    }
    let mut res = json(Route::Order, "{\"status\":\"accepted\"}\n".to_owned());
    *res.status_mut() = StatusCode::CREATED;
    res
}

fn json(route: Route, body: String) -> Response {
    let headers = [
        (
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        ),
        (
            header::CACHE_CONTROL,
            HeaderValue::from_static(route.cache_control()),
        ),
    ];
    (headers, body).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_full_pool_queues_then_fails_like_a_real_one() {
        let db = Backend::new(1, 1);
        let busy = tokio::spawn({
            let db = Arc::clone(&db);
            async move {
                let _connection = db.pool.acquire().await;
                tokio::time::sleep(Duration::from_secs(60)).await;
            }
        });
        tokio::task::yield_now().await;
        let err = db.query(Route::Item).await.unwrap_err();
        assert_eq!(err.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!((db.total_calls(), db.pool_timeouts()), (1, 1));
        busy.abort();
        let _ = busy.await;
        // With the connection back, queries run and nothing is left counted as running.
        db.query(Route::Search).await.unwrap();
        assert_eq!((db.calls(Route::Search), db.pool_timeouts()), (1, 1));
        assert_eq!(db.pool_status(), "db 0/1 busy, 0 waiting");
    }

    #[tokio::test(start_paused = true)]
    async fn queries_slow_down_with_contention() {
        let db = Backend::new(64, 1);
        let start = tokio::time::Instant::now();
        db.query(Route::Item).await.unwrap();
        let alone = start.elapsed();
        let start = tokio::time::Instant::now();
        let queries = (0..40).map(|_| db.query(Route::Item));
        futures::future::join_all(queries).await;
        let crowded = start.elapsed();
        // 39 others at 5% each: the slowest of 40 takes about 3x a lone query.
        assert!(crowded > alone * 2, "alone {alone:?}, crowded {crowded:?}");
    }
}
