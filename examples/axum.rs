//! The full stack in an axum app: latency, cache, coalesce, limit, handler.
//!
//! - `GET /products/{id}`: a hot read from a slow "database" (50 ms), marked
//!   `Cache-Control: max-age=10`. The first request fills the cache; for ten
//!   seconds every other one is a hit (see `Cache-Status`), answered without
//!   a limiter permit. Concurrent misses for one product reach the database
//!   once.
//! - `PUT /products/{id}`: a write. It goes to the handler (unsafe methods
//!   are never cached nor coalesced), and its 2xx removes the stored read of
//!   the same URI, so the next `GET` sees the new value.
//! - `GET /metrics`: the latency histograms in Prometheus text format. It is
//!   added after the stack, so scrapes are neither measured nor limited.
//!
//! ```sh
//! cargo run --example axum --features axum
//! curl -i localhost:3000/products/1          # miss, then hits
//! curl -i -X PUT localhost:3000/products/1 -d 'a new name'
//! curl localhost:3000/metrics
//! ```

use std::{
    collections::HashMap,
    sync::{Arc, RwLock},
    time::Duration,
};

use axum::{
    extract::{Path, State},
    http::{header, StatusCode},
    response::IntoResponse,
    routing::get,
    Router,
};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tower_perf::{
    latency::{LatencyLayer, Naming, OTEL_BUCKETS},
    stack::PerfStack,
};

/// The "database": product names by id, slow to read.
type Db = Arc<RwLock<HashMap<u64, String>>>;

async fn get_product(State(db): State<Db>, Path(id): Path<u64>) -> impl IntoResponse {
    tokio::time::sleep(Duration::from_millis(50)).await; // the slow query
    match db.read().unwrap().get(&id) {
        Some(name) => (
            StatusCode::OK,
            [(header::CACHE_CONTROL, "public, max-age=10")],
            name.clone(),
        ),
        None => (
            StatusCode::NOT_FOUND,
            [(header::CACHE_CONTROL, "max-age=2")],
            "no such product".to_owned(),
        ),
    }
}

async fn put_product(State(db): State<Db>, Path(id): Path<u64>, name: String) -> StatusCode {
    match db.write().unwrap().insert(id, name) {
        Some(_) => StatusCode::NO_CONTENT,
        None => StatusCode::CREATED,
    }
}

/// The app: the stack on the product routes, `/metrics` outside it.
fn app(db: Db, metrics: PrometheusHandle) -> Router {
    let stack = PerfStack::new().latency(LatencyLayer::new().naming(Naming::Prometheus));
    Router::new()
        .route("/products/{id}", get(get_product).put(put_product))
        .with_state(db)
        .layer(stack)
        .route("/metrics", get(move || async move { metrics.render() }))
}

#[tokio::main]
async fn main() {
    // Install the recorder before building the stack: layers resolve their
    // metric handles when they are built.
    let duration = Matcher::Full("http_server_request_duration_seconds".into());
    let metrics = PrometheusBuilder::new()
        .set_buckets_for_metric(duration, OTEL_BUCKETS)
        .expect("buckets are not empty")
        .install_recorder()
        .expect("no other global recorder is installed");
    let upkeep = metrics.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(5)).await;
            upkeep.run_upkeep();
        }
    });

    let db: Db = Arc::new(RwLock::new(
        (1..=100).map(|id| (id, format!("product {id}"))).collect(),
    ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:3000")
        .await
        .unwrap();
    println!(
        "listening on http://{}/products/1",
        listener.local_addr().unwrap()
    );
    axum::serve(listener, app(db, metrics)).await.unwrap();
}
