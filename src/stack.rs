//! The four layers in the recommended order, in one line.
//!
//! [`PerfStack`] is a [`Layer`] that wraps a service in, outermost first,
//!
//! ```text
//! latency -> cache -> coalesce -> limit -> handler
//! ```
//!
//! ```
//! use axum::{routing::get, Router};
//! use tower_perf::stack::PerfStack;
//!
//! let app: Router = Router::new()
//!     .route("/products/{id}", get(|| async { ([("cache-control", "max-age=60")], "a product") }))
//!     .layer(PerfStack::new());
//! # let _ = app;
//! ```
//!
//! Add it with `Router::layer` (or `route_layer`), not around the router, so
//! the matched route is known to the latency and limit layers. Like each of
//! its layers it keeps the inner error type: no `HandleErrorLayer` is needed.
//!
//! # Why this order
//!
//! - **Latency outermost** sees every outcome: cache hits, collapsed
//!   followers, requests the limiter shed (recorded with their 503, or
//!   `grpc-status` 14), and backend calls.
//! - **The cache above the limiter**: a hit is served even while the limiter
//!   is saturated. Hits never take a permit; they cost the backend nothing.
//!   When a stale entry's refresh is shed, an entry allowed
//!   `stale-if-error` answers instead of the limiter's 503.
//! - **Coalescing above the limiter**: a burst of identical misses takes one
//!   permit (its leader's), not one per request. With the limiter outside
//!   coalescing, followers held permits while they waited for their leader,
//!   and the full stack shed about 50 000 hot-key requests per loopback run
//!   of the benchmark.
//! - **The limiter innermost** measures only real backend work, which is what
//!   its round-trip samples should see: hits and followers would make the
//!   backend look faster than it is.
//!
//! The [`cache`](crate::cache), [`coalesce`](crate::coalesce),
//! [`limit`](crate::limit) and [`latency`](crate::latency) modules describe
//! each layer; every one of them is still usable alone, or stacked in another
//! order with `tower::ServiceBuilder`.
//!
//! # Configuring the layers
//!
//! Replace any layer's configuration with the builder method of its name, and
//! take the handles from the stack (or from the layers before passing them):
//!
//! ```
//! use std::time::Duration;
//!
//! use axum::{routing::get, Router};
//! use tower_perf::{
//!     cache::CacheLayer,
//!     coalesce::CoalesceLayer,
//!     latency::{LatencyLayer, Naming},
//!     limit::{AdaptiveLimitLayer, Gradient2},
//!     stack::PerfStack,
//! };
//!
//! let stack = PerfStack::new()
//!     .cache(CacheLayer::new().max_capacity(64 * 1024 * 1024))
//!     .coalesce(CoalesceLayer::new().wait_timeout(Duration::from_secs(2)))
//!     .limit(AdaptiveLimitLayer::with_algorithm(Gradient2::default()).max_limit(256))
//!     .latency(LatencyLayer::new().naming(Naming::Prometheus).summary());
//! let purge = stack.cache_handle();
//! let limit = stack.limit_handle();
//! let summary = stack.latency_summary().expect("summary() was enabled");
//!
//! let app: Router = Router::new()
//!     .route("/", get(|| async { "hello" }))
//!     .layer(stack);
//! assert_eq!(limit.in_flight(), 0);
//! assert_eq!(purge.entry_count(), 0);
//! assert!(summary.routes().is_empty());
//! # let _ = app;
//! ```
//!
//! Build the stack once and add that one value: each layer creates its
//! shared state (cache store, in-flight table, limit controller, series
//! registry) in its constructor, and every service the stack makes (every
//! route, connection and clone) shares it.
//!
//! # gRPC and plain hyper
//!
//! With tonic, `Server::builder().layer(PerfStack::new())`. Latency labels
//! calls by their method path, and the limiter answers shed calls with
//! `grpc-status` 14 (`UNAVAILABLE`). gRPC calls are `POST`s, so the cache and
//! the coalescer pass them through untouched, unless you declare idempotent
//! unary reads with [`PerfStack::grpc_reads`]: those are cached and coalesced
//! by request message (see [`crate::grpc`]).
//!
//! ```
//! use std::time::Duration;
//!
//! use tower_perf::{grpc::GrpcReads, stack::PerfStack};
//!
//! let reads = GrpcReads::new()
//!     .method("/catalog.v1.Catalog/GetProduct")
//!     .ttl(Duration::from_secs(30));
//! let stack = PerfStack::new().grpc_reads(reads);
//! // tonic::transport::Server::builder().layer(stack).add_service(...)
//! # let _ = stack;
//! ```
//!
//! With plain hyper 1, wrap the stacked service in
//! `hyper_util::service::TowerToHyperService`. The `axum`, `tonic` and
//! `hyper` examples in the repository show all three.

use std::fmt;

use tower_layer::Layer;

use crate::{
    cache::{CacheHandle, CacheLayer, CacheService, GrpcCache},
    coalesce::{Coalesce, CoalesceLayer, GrpcCoalesce},
    grpc::GrpcReads,
    latency::{Latency, LatencyLayer, LatencySummary, NoRoute},
    limit::{
        AdaptiveLimit, AdaptiveLimitLayer, Algorithm, DefaultAlgorithm, DefaultClassifier,
        LimitHandle,
    },
};

/// The service [`PerfStack`] makes around `S`: latency, cache, coalesce,
/// limit, outermost first.
pub type PerfService<S, A = DefaultAlgorithm, C = DefaultClassifier, R = NoRoute> =
    Latency<CacheService<Coalesce<AdaptiveLimit<S, A, C>>>, R>;

/// The service a [`PerfStack`] with [`grpc_reads`](PerfStack::grpc_reads)
/// makes around `S`: as [`PerfService`], with the cache and the coalescer
/// that also handle declared gRPC reads.
pub type GrpcPerfService<S, A = DefaultAlgorithm, C = DefaultClassifier, R = NoRoute> =
    Latency<GrpcCache<GrpcCoalesce<AdaptiveLimit<S, A, C>>>, R>;

/// Applies the four layers in the recommended order; see the
/// [module docs](self) for the order, why, and examples.
///
/// `A` and `C` are the limiter's algorithm and classifier, `R` the latency
/// layer's route function: they change with [`limit`](Self::limit) and
/// [`latency`](Self::latency). `G` is `()`, or [`GrpcReads`] once
/// [`grpc_reads`](Self::grpc_reads) declared gRPC reads.
#[derive(Clone)]
pub struct PerfStack<A = DefaultAlgorithm, C = DefaultClassifier, R = NoRoute, G = ()> {
    latency: LatencyLayer<R>,
    cache: CacheLayer,
    coalesce: CoalesceLayer,
    limit: AdaptiveLimitLayer<A, C>,
    grpc: G,
}

impl PerfStack {
    /// Every layer with its defaults: [`LatencyLayer::new`],
    /// [`CacheLayer::new`], [`CoalesceLayer::new`], [`AdaptiveLimitLayer::new`].
    pub fn new() -> Self {
        Self {
            latency: LatencyLayer::new(),
            cache: CacheLayer::new(),
            coalesce: CoalesceLayer::new(),
            limit: AdaptiveLimitLayer::new(),
            grpc: (),
        }
    }
}

impl Default for PerfStack {
    fn default() -> Self {
        Self::new()
    }
}

impl<A, C, R> PerfStack<A, C, R> {
    /// Also caches and coalesces the unary gRPC reads `reads` declares
    /// (see [`crate::grpc`]). The cache and coalescing layers given before
    /// or after keep their settings.
    pub fn grpc_reads(self, reads: GrpcReads) -> PerfStack<A, C, R, GrpcReads> {
        PerfStack {
            latency: self.latency,
            cache: self.cache,
            coalesce: self.coalesce,
            limit: self.limit,
            grpc: reads,
        }
    }
}

impl<A, C, R, G> PerfStack<A, C, R, G> {
    /// Replaces the response cache.
    pub fn cache(self, cache: CacheLayer) -> Self {
        Self { cache, ..self }
    }

    /// Replaces the request coalescing layer.
    pub fn coalesce(self, coalesce: CoalesceLayer) -> Self {
        Self { coalesce, ..self }
    }

    /// Replaces the adaptive concurrency limit (its algorithm and classifier
    /// may differ from the defaults).
    pub fn limit<A2, C2>(self, limit: AdaptiveLimitLayer<A2, C2>) -> PerfStack<A2, C2, R, G> {
        PerfStack {
            latency: self.latency,
            cache: self.cache,
            coalesce: self.coalesce,
            limit,
            grpc: self.grpc,
        }
    }

    /// Replaces the latency layer (its route function may differ from the
    /// default).
    pub fn latency<R2>(self, latency: LatencyLayer<R2>) -> PerfStack<A, C, R2, G> {
        PerfStack {
            latency,
            cache: self.cache,
            coalesce: self.coalesce,
            limit: self.limit,
            grpc: self.grpc,
        }
    }

    /// A handle that purges the cache and reads its size.
    pub fn cache_handle(&self) -> CacheHandle {
        self.cache.handle()
    }

    /// The latency layer's in-process summary, if its
    /// [`summary`](LatencyLayer::summary) was enabled.
    pub fn latency_summary(&self) -> Option<LatencySummary> {
        self.latency.summary_handle()
    }
}

impl<A: Algorithm, C, R, G> PerfStack<A, C, R, G> {
    /// A handle on the limiter: current limit, in-flight count, counters.
    pub fn limit_handle(&self) -> LimitHandle {
        self.limit.handle()
    }
}

impl<A: fmt::Debug, C: fmt::Debug, R, G: fmt::Debug> fmt::Debug for PerfStack<A, C, R, G> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PerfStack")
            .field("latency", &self.latency)
            .field("cache", &self.cache)
            .field("coalesce", &self.coalesce)
            .field("limit", &self.limit)
            .field("grpc", &self.grpc)
            .finish()
    }
}

impl<S, A, C: Clone, R: Clone> Layer<S> for PerfStack<A, C, R> {
    type Service = PerfService<S, A, C, R>;

    fn layer(&self, inner: S) -> Self::Service {
        let limited = self.limit.layer(inner);
        self.latency
            .layer(self.cache.layer(self.coalesce.layer(limited)))
    }
}

impl<S, A, C: Clone, R: Clone> Layer<S> for PerfStack<A, C, R, GrpcReads> {
    type Service = GrpcPerfService<S, A, C, R>;

    fn layer(&self, inner: S) -> Self::Service {
        let limited = self.limit.layer(inner);
        // Layers and reads are an `Arc` each: every service shares the
        // state created with the stack.
        let coalesce = self.coalesce.clone().grpc_reads(self.grpc.clone());
        let cache = self.cache.clone().grpc_reads(self.grpc.clone());
        self.latency.layer(cache.layer(coalesce.layer(limited)))
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use bytes::Bytes;
    use http::{Request, Response};
    use http_body_util::{BodyExt, Full};
    use tower::ServiceExt;

    use super::*;

    #[tokio::test]
    async fn the_layers_wrap_in_the_documented_order() {
        let stack = PerfStack::new();
        let svc = stack.layer(tower::service_fn(|_req: Request<Full<Bytes>>| async {
            Ok::<_, Infallible>(
                Response::builder()
                    .header("cache-control", "max-age=60")
                    .body(Full::from("hi"))
                    .unwrap(),
            )
        }));
        // The type names the order; the behaviour confirms it: a stored
        // response is answered above the limiter, without a permit.
        let _: &Latency<CacheService<Coalesce<AdaptiveLimit<_>>>> = &svc;
        let get = || Request::get("http://x/a").body(Full::default()).unwrap();
        let res = svc.clone().oneshot(get()).await.unwrap();
        res.into_body().collect().await.unwrap();
        let admitted = stack.limit_handle().counters().admitted;
        let hit = svc.oneshot(get()).await.unwrap();
        let status = hit.headers()["cache-status"].to_str().unwrap().to_owned();
        assert!(status.contains("hit"), "{status}");
        assert_eq!(stack.limit_handle().counters().admitted, admitted);
    }
}
