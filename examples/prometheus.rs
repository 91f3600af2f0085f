//! Per-route latency histograms in Prometheus.
//!
//! An axum app behind `LatencyLayer` (Prometheus naming), with
//! `metrics-exporter-prometheus` installed as the global recorder with the
//! OpenTelemetry buckets, and its text format served by the app on `/metrics`.
//! `dashboards/tower-perf.json` is a Grafana dashboard for these metrics.
//!
//! ```sh
//! cargo run --example prometheus --features axum
//! curl localhost:3000/users/7 && curl localhost:3000/metrics
//! ```

use std::time::Duration;

use axum::{http::StatusCode, routing::get, Router};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tower_perf::latency::{LatencyLayer, Naming, OTEL_BUCKETS};

/// Installs the Prometheus recorder globally, with explicit buckets for the
/// request-duration histogram (without them it would render a summary).
pub(crate) fn install_recorder() -> PrometheusHandle {
    let duration = Matcher::Full("http_server_request_duration_seconds".into());
    PrometheusBuilder::new()
        .set_buckets_for_metric(duration, OTEL_BUCKETS)
        .expect("buckets are not empty")
        .install_recorder()
        .expect("no other global recorder is installed")
}

/// The app: measured routes, then `/metrics` (added after the layer, so
/// scrapes are not measured).
pub(crate) fn app(metrics: PrometheusHandle) -> Router {
    let layer = LatencyLayer::new()
        .naming(Naming::Prometheus)
        // A stream's length is not its latency: time it to the headers.
        .stop_clock_at_headers_on("/events");
    Router::new()
        .route("/users/{id}", get(|| async { "a user" }))
        .route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_millis(120)).await;
                "slow"
            }),
        )
        .route("/fail", get(|| async { StatusCode::INTERNAL_SERVER_ERROR }))
        .route("/events", get(|| async { "data: tick\n\n" }))
        .layer(layer)
        .route("/metrics", get(move || async move { metrics.render() }))
}

#[tokio::main]
async fn main() {
    let handle = install_recorder();
    // Without an HTTP listener of its own, the exporter needs its upkeep run.
    let upkeep = handle.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(5)).await;
            upkeep.run_upkeep();
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:3000")
        .await
        .unwrap();
    println!(
        "listening on http://{}/metrics",
        listener.local_addr().unwrap()
    );
    axum::serve(listener, app(handle)).await.unwrap();
}
