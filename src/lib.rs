//! Tower layers that keep HTTP and gRPC backends fast and standing under load.
//!
//! | layer | module | what it does |
//! |---|---|---|
//! | response cache | [`cache`] | RFC 9111 shared cache in process, bounded in bytes |
//! | request coalescing | [`coalesce`] | one upstream call per in-flight key |
//! | adaptive concurrency limit | [`limit`] | finds the backend's capacity, sheds the rest at once |
//! | latency histograms | [`latency`] | per-route P50/P95/P99 through the `metrics` facade |
//! | all four, in order | [`stack`] | `PerfStack`: the recommended order in one layer |
//!
//! Every layer keeps the inner service's error type (a cache hit or an
//! overload rejection is a response, not an error), so each drops into
//! `axum::Router::layer` without `HandleErrorLayer`.
//!
//! # Quickstart
//!
//! axum: add the stack (or any one layer) with `Router::layer`, after
//! routing, so the matched route is known.
//!
//! ```
//! # #[cfg(all(feature = "cache", feature = "coalesce", feature = "limit", feature = "latency"))]
//! # {
//! use axum::{routing::get, Router};
//! use tower_perf::stack::PerfStack;
//!
//! let stack = PerfStack::new(); // build once: every route shares its state
//! let purge = stack.cache_handle();
//! let app: Router = Router::new()
//!     .route("/products/{id}", get(|| async {
//!         ([("cache-control", "public, max-age=60")], "a product")
//!     }))
//!     .layer(stack);
//! purge.purge_path_prefix("/products/");
//! # let _ = app;
//! # }
//! ```
//!
//! tonic: `Server::builder().layer(PerfStack::new())`: latency labels calls
//! by method path, the limiter sheds with `grpc-status` 14, and the cache and
//! coalescer pass gRPC calls (`POST`s) through, except the unary reads you
//! declare with [`grpc::GrpcReads`] (`PerfStack::new().grpc_reads(...)`),
//! which are cached and coalesced by request message. Plain hyper 1: wrap the
//! stacked service in `hyper_util::service::TowerToHyperService`. The
//! repository's `axum`, `tonic` and `hyper` examples run all three.
//!
//! # Recommended order
//!
//! Outermost first: `latency -> cache -> coalesce -> limit -> handler`, in
//! one line with [`stack::PerfStack`]. Latency sees every outcome, shed
//! requests included; cache hits are served without a limiter permit;
//! a burst of identical misses is collapsed before it takes one; the limiter
//! measures only the work that reaches the backend. The [`stack`] module
//! says why in full.
//!
//! # Feature flags
//!
//! | feature | default | enables |
//! |---|---|---|
//! | `cache` | yes | the response cache |
//! | `coalesce` | yes | request coalescing |
//! | `limit` | yes | the adaptive concurrency limit |
//! | `latency` | yes | latency histograms |
//! | `axum` | no | route labels from axum's `MatchedPath` |
//! | `redis` | no | a shared second cache tier on Redis ([`cache::RedisTier`]) |
//! | `full` | no | all of the above |
#![cfg_attr(docsrs, feature(doc_cfg))]

#[cfg(any(feature = "cache", feature = "coalesce"))]
#[allow(dead_code)] // each layer uses part of it; a single-layer build leaves the rest unused
pub(crate) mod body;
#[cfg(feature = "cache")]
#[cfg_attr(docsrs, doc(cfg(feature = "cache")))]
pub mod cache;
#[cfg(feature = "coalesce")]
#[cfg_attr(docsrs, doc(cfg(feature = "coalesce")))]
pub mod coalesce;
#[cfg(any(feature = "cache", feature = "coalesce"))]
#[cfg_attr(docsrs, doc(cfg(any(feature = "cache", feature = "coalesce"))))]
pub mod grpc;
#[cfg(any(feature = "cache", feature = "coalesce", feature = "limit"))]
pub mod key;
#[cfg(feature = "latency")]
#[cfg_attr(docsrs, doc(cfg(feature = "latency")))]
pub mod latency;
#[cfg(feature = "limit")]
#[cfg_attr(docsrs, doc(cfg(feature = "limit")))]
pub mod limit;
#[cfg(feature = "limit")]
pub(crate) mod reject;
#[cfg(any(
    feature = "latency",
    feature = "limit",
    feature = "cache",
    feature = "coalesce"
))]
#[allow(dead_code)] // each layer uses part of it; a single-layer build leaves the rest unused
pub(crate) mod route;
#[cfg(all(
    feature = "cache",
    feature = "coalesce",
    feature = "limit",
    feature = "latency"
))]
#[cfg_attr(
    docsrs,
    doc(cfg(all(
        feature = "cache",
        feature = "coalesce",
        feature = "limit",
        feature = "latency"
    )))
)]
pub mod stack;
