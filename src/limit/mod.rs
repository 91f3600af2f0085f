//! Adaptive concurrency limit: finds how many requests the backend serves at
//! once without queueing, and sheds the rest at once.
//!
//! Over the limit, [`call`](tower_service::Service::call) answers at once
//! (it never waits in `poll_ready`): an HTTP request gets `503 Service
//! Unavailable` with `Retry-After`, a gRPC request (`content-type:
//! application/grpc*`) gets HTTP 200 with `grpc-status: 14` (`UNAVAILABLE`)
//! and a `grpc-message`. Admitted requests keep the latency the backend has
//! without a queue; the excess is shed in microseconds instead of waiting
//! until everything times out.
//!
//! # How it differs from `tower::limit::ConcurrencyLimit`
//!
//! tower's limit is fixed and waits in `poll_ready`. Servers (hyper-util,
//! axum, tonic) clone the service for each request and drive it to
//! readiness, so that wait is an unbounded, invisible queue: latency grows
//! until clients time out. This layer finds the limit as it goes, admits or
//! rejects in `call`, shares one controller across every clone, route and
//! connection, and forwards `poll_ready` to the inner service untouched.
//!
//! # How the limit is found
//!
//! Each request holds a permit until its response body ends or is dropped.
//! When the permit ends, the request becomes a sample: its RTT (from `call`
//! to the end of the body), the in-flight count when it started, and its
//! [`Outcome`] from the [classifier](Classify) (default: 5xx, 429 and gRPC
//! `UNAVAILABLE`/`RESOURCE_EXHAUSTED`/`DEADLINE_EXCEEDED` and service errors
//! are drops; 4xx are not; cancelled requests are not samples). Samples are
//! grouped into [windows](Window) (at least 100 ms and 20 requests by
//! default); after each window the [`Algorithm`] sets the next limit. While
//! the requests in flight stay under half the limit the limit never grows:
//! demand, not the backend, is the bound then, and the limit does not drift
//! upward at light load.
//!
//! | algorithm | signal | source |
//! |---|---|---|
//! | [`Vegas`] (default) | queue estimated from RTT over no-load RTT; drops | Netflix `VegasLimit` |
//! | [`Gradient2`] | short RTT against a long-term average RTT | Netflix `Gradient2Limit` |
//! | [`Aimd`] | drops and an RTT ceiling | Netflix `AIMDLimit` |
//!
//! [`Vegas`] is the default because it is the one that meets every target of
//! the scenario suite (`tests/limit_scenarios.rs`; results in
//! `docs/limit-scenarios.md`): it holds the queue no larger than its RTT
//! measurements can tell from noise (a few requests when service times vary,
//! none when they are steady), so under 2× overload it keeps 95–100 % of
//! capacity with admitted p99 within 20 % of the no-load p99, while
//! [`Gradient2`] lets the RTT grow by its tolerance (p99 +40 %) and [`Aimd`]
//! only backs off on errors (p99 2.4×). It also reacts to drops, so it
//! settles near a backend's real concurrency when the backend answers 503
//! past it. Three changes to Netflix's Vegas (see [`Vegas`]) size its queue
//! band by the noise and let it converge from a limit far above capacity
//! under overload.
//!
//! # Example
//!
//! In axum, add the layer with `Router::layer` (no `HandleErrorLayer`
//! needed: rejections are responses). Build the layer once: the controller
//! is created in its constructor and shared by everything it wraps.
//!
//! ```
//! use std::time::Duration;
//!
//! use axum::{routing::get, Router};
//! use tower_perf::limit::AdaptiveLimitLayer;
//!
//! let limit = AdaptiveLimitLayer::new()
//!     .initial_limit(32)
//!     .max_limit(512)
//!     .retry_after(Duration::from_secs(2));
//! let handle = limit.handle();
//! let app: Router = Router::new()
//!     .route("/", get(|| async { "hello" }))
//!     .layer(limit);
//! assert_eq!((handle.limit(), handle.in_flight()), (32, 0));
//! ```
//!
//! With tonic, `Server::builder().layer(AdaptiveLimitLayer::new())`; shed
//! calls fail with `Status::unavailable`, which gRPC clients retry.
//!
//! ## Algorithms, classification, queue
//!
//! ```
//! use std::time::Duration;
//!
//! use http::{HeaderMap, StatusCode};
//! use tower_perf::limit::{AdaptiveLimitLayer, Gradient2, Outcome, Queue, Vegas, Window};
//!
//! let limit = AdaptiveLimitLayer::with_algorithm(Vegas::default().smoothing(0.5))
//!     .window(Window::new().min_time(Duration::from_millis(250)).percentile(0.9))
//!     // Only 503s from the backend count as overload.
//!     .classifier(|status: StatusCode, _: &HeaderMap| {
//!         if status == StatusCode::SERVICE_UNAVAILABLE { Outcome::Drop } else { Outcome::Success }
//!     })
//!     // Wait up to 50 ms for a slot, newest first, at most 100 waiting.
//!     .queue(Queue::lifo(100, Duration::from_millis(50)));
//! # let _ = limit;
//! # let _ = AdaptiveLimitLayer::with_algorithm(Gradient2::default());
//! ```
//!
//! ## Partitions
//!
//! Requests can be grouped (by header, route or function) into partitions
//! with guaranteed shares of the limit. A partition under its share
//! (`ceil(share × limit)` in flight) is admitted even when the limiter is
//! full; the others borrow whatever is idle. So batch traffic can use the
//! whole backend when live traffic is quiet, yet cannot starve it.
//!
//! ```
//! use http::HeaderName;
//! use tower_perf::limit::AdaptiveLimitLayer;
//!
//! let limit = AdaptiveLimitLayer::new()
//!     .partition_by_header(HeaderName::from_static("x-traffic-class"))
//!     .partition("live", 0.9)
//!     .partition("batch", 0.1);
//! # let _ = limit;
//! let by_path = AdaptiveLimitLayer::new()
//!     .partition_by(|head: &tower_perf::key::RequestHead<'_>| {
//!         Some(if head.uri.path().starts_with("/reports") { "batch" } else { "live" })
//!     })
//!     .partition("live", 0.8)
//!     .partition("batch", 0.2);
//! # let _ = by_path;
//! ```
//!
//! # Metrics
//!
//! Emitted through the `metrics` facade (the application installs the
//! recorder, before building the layer: handles are resolved once, in the
//! constructor). The same figures are on the [`LimitHandle`].
//!
//! | name | kind | labels | meaning |
//! |---|---|---|---|
//! | `concurrency_limit.limit` | gauge | | the current limit |
//! | `concurrency_limit.in_flight` | gauge | | requests holding a permit |
//! | `concurrency_limit.requests` | counter | `outcome` = `admitted`, `rejected`, `queued`, `queue_timeout` | admission decisions (`rejected` includes queue timeouts) |
//! | `concurrency_limit.drops` | counter | | requests classified as drops |
//!
//! # Where it goes
//!
//! Innermost, around the handler: `latency -> cache -> coalesce -> limit ->
//! handler` (outermost first; `tower_perf::stack::PerfStack` applies it). The
//! latency layer still sees shed requests; cache hits never wait for or take
//! a permit; a burst of identical misses takes one permit, not one per
//! waiting request; and the limiter's RTT samples measure backend work only.

mod algorithm;
mod body;
mod classify;
mod controller;
mod future;
mod handle;
mod layer;
mod partition;
mod service;
mod window;

pub use algorithm::{Aimd, Algorithm, Gradient2, Sample, Vegas};
pub use body::ResponseBody;
pub use classify::{Classify, DefaultClassifier, Outcome};
pub use controller::Queue;
pub use future::ResponseFuture;
pub use handle::{Counters, LimitHandle};
pub use layer::AdaptiveLimitLayer;
pub use service::AdaptiveLimit;
pub use window::Window;

/// The algorithm [`AdaptiveLimitLayer::new`] uses.
pub type DefaultAlgorithm = Vegas;
