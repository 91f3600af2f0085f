//! Per-route latency histograms, OpenTelemetry-named and cardinality-safe.
//!
//! [`LatencyLayer`] times every request from the moment it enters until the
//! response body ends, and records it through the [`metrics`] facade. The
//! library only emits: the application installs a recorder (for example
//! `metrics-exporter-prometheus`) and chooses the buckets.
//!
//! # Metrics
//!
//! | name ([`Naming::OpenTelemetry`]) | kind | unit | labels |
//! |---|---|---|---|
//! | `http.server.request.duration` | histogram | seconds | `http.request.method`, `http.route`, `http.response.status_code`, `error.type`, `rpc.grpc.status_code` |
//! | `http.server.active_requests` | gauge | requests | `http.request.method` |
//!
//! With [`Naming::Prometheus`] they are `http_server_request_duration_seconds`
//! and `http_server_active_requests`, with `_` in the label names. Each metric
//! is described once to each recorder, with its unit. Recommended buckets are
//! the OpenTelemetry ones, [`OTEL_BUCKETS`] (5 ms to 10 s).
//!
//! Labels, all from closed sets:
//! - `http.request.method`: the nine standard methods as is, anything else
//!   `_OTHER`.
//! - `http.route`: for gRPC the method path `/package.Service/Method`; else
//!   axum's `MatchedPath` (`/users/{id}`, with the `axum` feature, when the
//!   layer is added with `Router::layer` or `route_layer`); else your
//!   [`RouteFn`]; else `unmatched`. Never the raw path. A gRPC response with
//!   status `UNIMPLEMENTED` (12) is `unmatched` too: its path named no method.
//! - `http.response.status_code`: when a response was produced.
//! - `error.type`, on failures only: the status (`"503"`) for 5xx; the gRPC
//!   code name (`INTERNAL`, `UNAVAILABLE`, `DEADLINE_EXCEEDED`, `UNKNOWN`,
//!   `DATA_LOSS`, `UNIMPLEMENTED`) for gRPC server failures; `cancelled` when
//!   the response future or body was dropped before it ended (the client went
//!   away); `body_error` when the body failed; `_OTHER` when the inner
//!   service returned an error or a gRPC response ended without a status.
//! - `rpc.grpc.status_code`: for gRPC, the numeric `grpc-status`, read from
//!   the headers (trailers-only responses) or the trailers at end of stream.
//!
//! # Cardinality
//!
//! At most [`max_series`](LatencyLayer::max_series) label sets (default 2000,
//! the OpenTelemetry SDK default); past it, samples go to one overflow series
//! labelled `otel.metric.overflow="true"`. Routes come from templates, so a
//! scan of 100 000 random paths adds at most one series (`unmatched`, 404).
//!
//! # When the clock stops
//!
//! At the end of the response body by default, so a slow stream is a slow
//! request. For server-sent events and long polls, stop it at the headers for
//! those routes with [`stop_clock_at_headers_on`](LatencyLayer::stop_clock_at_headers_on)
//! (or everywhere with [`stop_clock_at_headers`](LatencyLayer::stop_clock_at_headers)).
//! The request stays in `http.server.active_requests` until its body ends or
//! is dropped either way; a dropped future or body always leaves the gauge.
//!
//! # Cost and the recorder
//!
//! Once a label set has been seen, a request does no allocation and no
//! registry lookup: the layer caches the metric handles per label set, read
//! without locks. Routes whose label lives at a stable address (axum's
//! `MatchedPath`, `&'static str` from a [`RouteFn`]) are found without a lock
//! too; gRPC method paths take a shared read lock on the route map.
//!
//! A request is counted by the recorder `metrics` would use when it enters
//! (its thread-local recorder, else the global one, else the no-op), so a
//! recorder installed after the layer was built, or after the first
//! requests, gets every request that enters after it (a label set's first
//! sample goes to the recorder current when the request ends, the same one
//! unless recorders are swapped mid-request). The layer numbers the
//! recorders it meets by address: the first two (in practice the no-op, then
//! your exporter) are served without locks, each later one (tests that swap
//! local recorders) through a lock. Because the identity is the recorder's
//! address, build a new layer per recorder in tests.
//!
//! Requests are timed with a `quanta::Clock`, which reads the CPU's
//! time-stamp counter and scales only the difference to nanoseconds, with a
//! calibration `quanta` runs once per process, when the first layer is
//! built (about 0.6 ms on the machine below; `quanta` caps it at 200 ms).
//! Where the CPU has no invariant counter, `quanta` falls back to the OS
//! monotonic clock. For tests, [`tokio_clock`](LatencyLayer::tokio_clock)
//! times with `tokio::time::Instant`, so that paused time
//! (`#[tokio::test(start_paused = true)]`) gives exact virtual durations,
//! and [`clock`](LatencyLayer::clock) takes any `quanta` clock, such as the
//! mock of `quanta::Clock::mock()`, advanced by hand.
//!
//! Measured per request (`cargo bench --bench latency -- --warm-up-time 1
//! --measurement-time 3`, in process, best of 15 interleaved rounds, on a
//! shared and loaded 2-core VM): about 60–100 ns over a bare `tower`
//! service with the no-op recorder and about 100–125 ns (1.6–1.9×; median
//! of five runs 118 ns) with the Prometheus recorder, against a target of
//! 100 ns. Between runs the bare figure moves most, the layer's least.
//! What it is made of:
//! - the two clock reads, 19 ns (two `std::time::Instant` or
//!   `tokio::time::Instant` reads, `clock_gettime` calls, cost 49–51 ns
//!   there);
//! - the Prometheus recorder's own work, about 33 ns measured alone (the
//!   gauge's increment and decrement, each a compare-and-swap loop plus a
//!   generation count, and the histogram's sample);
//! - wrapping the response future and body with the per-request record
//!   (64 bytes): about 5 ns;
//! - the layer's own work, the remaining 65–70 ns (about 620 instructions
//!   under `callgrind`): the route (the label's hint slot and a string
//!   compare), the registry's reference count, the recorder's slot (a
//!   thread-local and two loads), the gauge handle, the series and its
//!   histogram handle at the end of the body, and moving the record from
//!   the future into the body.
//!
//! Inside an axum `Router` (`perf/benches/latency_peers.rs`) axum adds its
//! own per-layer cost (it clones the layered service per request and boxes
//! the layer's response future and body); there the layer costs about
//! 285–330 ns with the Prometheus recorder, about a fifth of
//! `axum-prometheus` (about 1.3–1.5 µs) on the same router and recorder
//! (`cargo bench -p tower-perf-bench --bench latency_peers -- --warm-up-time
//! 1 --measurement-time 3`, best of interleaved rounds and criterion
//! medians).
//!
//! # Example
//!
//! ```
//! use std::convert::Infallible;
//! use http::{Request, Response};
//! use http_body_util::Full;
//! use bytes::Bytes;
//! use metrics_util::debugging::DebuggingRecorder;
//! use tower::{ServiceBuilder, ServiceExt};
//! use tower_perf::latency::LatencyLayer;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let recorder = DebuggingRecorder::new();
//! let snapshotter = recorder.snapshotter();
//! // Local to this thread, for the example; an application installs a global
//! // recorder (an exporter) instead.
//! let _guard = metrics::set_default_local_recorder(&recorder);
//!
//! let layer = LatencyLayer::new()
//!     // A plain tower service has no router: name its routes.
//!     .route_fn(|req: &Request<String>| {
//!         req.uri().path().starts_with("/users/").then_some("/users/{id}")
//!     })
//!     .summary();
//! let summary = layer.summary_handle().unwrap();
//! let svc = ServiceBuilder::new().layer(layer).service_fn(|_req: Request<String>| async {
//!     Ok::<_, Infallible>(Response::new(Full::new(Bytes::from("hi"))))
//! });
//!
//! let res = svc.oneshot(Request::get("/users/42").body(String::new()).unwrap()).await.unwrap();
//! http_body_util::BodyExt::collect(res.into_body()).await.unwrap(); // the clock stops here
//!
//! let series: Vec<String> = snapshotter
//!     .snapshot()
//!     .into_vec()
//!     .into_iter()
//!     .map(|(key, ..)| format!("{:?}", key.key()))
//!     .collect();
//! assert!(series.iter().any(|k| k.contains("http.server.request.duration")
//!     && k.contains("/users/{id}") && k.contains("200")));
//! assert_eq!(summary.route("/users/{id}").unwrap().count, 1);
//! # }
//! ```
//!
//! In axum, add it with `Router::layer` so the matched route is known
//! (requires the `axum` feature for `MatchedPath` labels):
//!
//! ```
//! use axum::{routing::get, Router};
//! use tower_perf::latency::{LatencyLayer, Naming};
//!
//! let app: Router = Router::new()
//!     .route("/users/{id}", get(|| async { "user" }))
//!     .layer(LatencyLayer::new().naming(Naming::Prometheus));
//! ```
//!
//! With tonic, `Server::builder().layer(LatencyLayer::new())`: routes are
//! the gRPC method paths. `examples/prometheus.rs` serves the histograms on
//! `/metrics`, and `dashboards/tower-perf.json` is a Grafana dashboard for
//! them.
//!
//! # Compared with `axum-prometheus`
//!
//! `axum-prometheus` installs its own global exporter, is axum-only, labels
//! by `MatchedPath` or else the raw path, and stops the clock at the
//! response headers. This layer only emits through `metrics` (you choose the
//! exporter and buckets), serves tonic and hyper as well, stops the clock at
//! the end of the body, caps series, counts cancelled requests, and costs
//! about a fifth as much per request.

mod body;
mod clock;
mod future;
mod handles;
mod labels;
mod layer;
mod service;
mod state;
mod summary;

pub use self::{
    body::LatencyBody,
    future::ResponseFuture,
    labels::{Naming, OTEL_BUCKETS},
    layer::LatencyLayer,
    service::Latency,
    summary::{LatencySummary, RouteSummary},
};
pub use crate::route::{NoRoute, RouteFn};
