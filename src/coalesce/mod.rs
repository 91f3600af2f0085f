//! Request coalescing: identical in-flight requests share one upstream call
//! (singleflight, or collapsed forwarding in Varnish and nginx terms).
//!
//! When a hot key misses the cache during a spike, a thousand identical
//! requests reach the handler at once. Behind [`CoalesceLayer`] the first one
//! (the *leader*) calls the inner service; the others (the *followers*) wait
//! for it and receive a copy of its response: the database is hit once.
//!
//! ```
//! use std::sync::{atomic::{AtomicUsize, Ordering}, Arc};
//! use std::time::Duration;
//!
//! use axum::{routing::get, Router};
//! use tower::ServiceExt;
//! use tower_perf::coalesce::{CoalesceLayer, Collapsed};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let calls = Arc::new(AtomicUsize::new(0));
//! let counter = calls.clone();
//! let app = Router::new()
//!     .route("/report", get(move || async move {
//!         counter.fetch_add(1, Ordering::SeqCst);
//!         tokio::time::sleep(Duration::from_millis(50)).await; // a slow query
//!         "the report"
//!     }))
//!     .layer(CoalesceLayer::new());
//!
//! let requests = (0..100).map(|_| {
//!     let req = http::Request::get("/report").body(axum::body::Body::empty()).unwrap();
//!     tokio::spawn(app.clone().oneshot(req))
//! });
//! let mut collapsed = 0;
//! for request in requests.collect::<Vec<_>>() {
//!     let res = request.await.unwrap().unwrap();
//!     collapsed += res.extensions().get::<Collapsed>().is_some() as usize;
//! }
//! assert_eq!(calls.load(Ordering::SeqCst), 1);
//! assert_eq!(collapsed, 99);
//! # }
//! ```
//!
//! # What is coalesced
//!
//! `GET` and `HEAD` requests without a body (separately: the method is part
//! of the key), keyed like the cache ([`KeyOptions`](crate::key::KeyOptions):
//! scheme, authority, path, query, the request headers you list, or your own
//! key function). Everything else goes straight to the inner service:
//!
//! - requests with `Authorization` or `Cookie` (their responses are usually
//!   personal; see [`CoalesceLayer::bypass_credentials`]);
//! - conditional and range requests (`If-None-Match`, `Range`, ...), whose
//!   responses differ from the plain request's;
//! - requests a custom key function declines.
//!
//! A write (any method but `GET`, `HEAD`, `OPTIONS`, `TRACE`) makes the layer
//! forget the in-flight reads of its target, when it starts and when it ends,
//! so a read issued after a write never receives a response computed before it.
//!
//! gRPC calls are `POST`s and pass through, except the idempotent unary
//! methods declared with [`CoalesceLayer::grpc_reads`], which are coalesced
//! by method and request message ([`GrpcCoalesceLayer`]; see [`crate::grpc`]).
//!
//! # What followers receive
//!
//! A copy of the leader's response: status, headers, extensions, body and
//! trailers. The body is buffered once and handed out as `Bytes` clones (no
//! copy). Follower responses carry the [`Collapsed`] extension (the cache
//! layer reports it in `Cache-Status`).
//!
//! A response is shared only if its body has a known length within
//! [`max_body_size`](CoalesceLayer::max_body_size) and it is neither an event
//! stream nor personal (`Set-Cookie`, `Cache-Control: private`). Otherwise the
//! leader keeps streaming its own response (nothing read is lost), every
//! follower is released at once to call the inner service itself, and the key
//! is remembered as "do not queue" for [`hit_for_miss`](CoalesceLayer::hit_for_miss),
//! so callers of an uncacheable URL are never serialised behind one another.
//!
//! # Cancellation, errors and panics
//!
//! The upstream call belongs to the flight, not to the leader's request. The
//! leader drives it inline (no task, no thread hop) while it waits; if the
//! leader's future is dropped (its client went away) while followers wait,
//! the call moves to a spawned task and completes for them. The work is
//! dropped only when the last waiter is gone.
//!
//! Errors of the inner service are not shared as errors: the layer never
//! requires `S::Error: Clone`, and it keeps `Error = S::Error` so that it
//! drops into `axum::Router::layer` (`Infallible` stays `Infallible`). The
//! leader's caller receives the error itself; followers receive
//! `502 Bad Gateway`, the status a proxy gives when the call it forwarded to
//! failed. A panic in the inner service reaches every waiter according to
//! [`PanicOutcome`] (a `500` response by default), and the key is cleared so
//! the next request starts afresh.
//!
//! # Timeouts
//!
//! A follower waits at most [`wait_timeout`](CoalesceLayer::wait_timeout),
//! then calls the inner service itself. A leader accepts followers for
//! [`max_leader_age`](CoalesceLayer::max_leader_age); a request for a key
//! whose call is older becomes a new leader. The age counts from the call's
//! first `Pending` (or its first follower, should one come before it): a
//! call that completes at once never reads the clock.
//!
//! # Readiness
//!
//! `poll_ready` forwards to the inner service. Only leaders and bypassed
//! requests call it, on the instance that was polled ready. A follower keeps
//! a clone, which it polls ready before it calls it, if it is released or
//! times out: waiting holds no reservation of the inner service.
//!
//! # Where it goes
//!
//! Under the cache, over the limiter: `latency -> cache -> coalesce -> limit
//! -> handler`, the crate's recommended order (`tower_perf::stack::PerfStack`).
//! The cache answers hits; coalescing collapses the misses, so a spike on a
//! cold key reaches the handler once, and takes one limiter permit rather
//! than one per waiting request (with the limiter outside, waiting followers
//! held permits and the loopback benchmark's full stack shed most of a hot
//! key's burst).
//!
//! # Cost
//!
//! A request that finds its key idle (the uncontended case) costs one
//! allocation, the boxed upstream call, which can move to a task should its
//! leader go away. Its key is built in a stack buffer and hashed once
//! (foldhash with a per-layer random seed: URLs cannot be chosen in advance
//! to collide); the map of in-flight keys is locked once, to join: a leader
//! nobody joined retires its flight by one compare-and-swap of the flight's
//! slot word, and the entry stays for the key's next request (keys up to 80
//! bytes inline, longer ones copied once). A lone leader's response streams
//! through untouched. `benches/coalesce.rs` measures it against the bare
//! service: about 1 540 instructions over a bare `service_fn` per request
//! (`valgrind --tool=callgrind`, see the bench's docs).
//!
//! # Metrics
//!
//! Counter `tower_perf_coalesce_requests_total` with label `role`: `leader`,
//! `follower` or `bypass`. The handles are resolved when the layer is built,
//! so install the recorder before building the layer.
//!
//! # Runtime
//!
//! The layer needs a Tokio runtime with the time driver (`enable_time`, which
//! `#[tokio::main]` turns on): followers wait with a timer, and a flight whose
//! leader went away continues on a spawned task.
//!
//! # Compared with generic singleflights
//!
//! | | this layer | `async_singleflight` 0.6 | `tower-resilience-coalesce` 0.14 |
//! |---|---|---|---|
//! | response / error must be `Clone` | no / no | yes / no (followers get `Err(None)`) | yes / yes |
//! | leader cancelled | the call goes on for the followers | a follower runs the work again | followers fail (`LeaderCancelled`) |
//! | followers wait by | notification | notification | re-polling themselves (busy loop) |
//! | HTTP aware (bodies, streaming, personal responses, hit-for-miss) | yes | no | no |
//! | wait timeout, leader age | yes | no | no |
//!
//! `perf/benches/coalesce_peers.rs` measures the three side by side.

mod body;
mod flight;
mod future;
mod grpc;
mod layer;
mod service;

pub use self::{
    body::CoalesceBody,
    future::ResponseFuture,
    grpc::{GrpcCoalesce, GrpcCoalesceLayer, GrpcResponseFuture},
    layer::CoalesceLayer,
    service::Coalesce,
};

/// Marks a response a follower received from its leader's call (a response
/// extension). The cache layer reports it as `collapsed` in `Cache-Status`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Collapsed;

/// What the waiters of a call whose inner service panicked receive.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum PanicOutcome {
    /// A `500 Internal Server Error` response with an empty body, like
    /// tower-http's `CatchPanic`: a panic never kills the connections of the
    /// requests that waited for it.
    #[default]
    InternalServerError,
    /// Every waiter panics in turn (the leader with the original payload),
    /// as each would have without the layer; use it when an outer layer such
    /// as `CatchPanic` turns panics into responses.
    Resume,
}

#[cfg(test)]
mod tests {
    use std::{convert::Infallible, time::Duration};

    use bytes::Bytes;
    use http::{Request, Response};
    use http_body_util::Full;
    use tower::{Layer, ServiceExt};

    use super::CoalesceLayer;

    #[tokio::test(start_paused = true)]
    async fn a_flood_of_distinct_uncacheable_urls_stays_bounded() {
        let layer = CoalesceLayer::new()
            .max_body_size(0)
            .hit_for_miss(Duration::from_secs(5));
        let svc = layer.layer(tower::service_fn(|_req: Request<Full<Bytes>>| async {
            Ok::<_, Infallible>(Response::new(Full::from("too large")))
        }));
        for i in 0..100_000 {
            let req = Request::get(format!("http://example.com/{i}"))
                .body(Full::default())
                .unwrap();
            svc.clone().oneshot(req).await.unwrap();
        }
        assert!(layer.shared.len() <= super::flight::MAX_TRACKED);
        assert!(layer.shared.len() > 1000);
        // Once the markers expire, the next sweep drops them.
        tokio::time::sleep(Duration::from_secs(6)).await;
        let req = Request::get("http://example.com/x")
            .body(Full::default())
            .unwrap();
        svc.clone().oneshot(req).await.unwrap();
        assert_eq!(layer.shared.len(), 1);
    }
}
