//! An RFC 9111 shared response cache, in process and bounded in bytes.
//!
//! [`CacheLayer`] answers repeated requests from memory, the way a reverse
//! proxy cache (Varnish, nginx, a CDN) would, but inside your service: GET
//! responses that HTTP lets a shared cache store are kept in a sharded,
//! scan-resistant S3-FIFO store ([quick_cache](https://docs.rs/quick_cache))
//! weighed in bytes, and served as `Bytes` clones until they go stale. HEAD is answered from the stored GET.
//!
//! ```
//! use axum::{routing::get, Router};
//! use tower_perf::cache::CacheLayer;
//!
//! let cache = CacheLayer::new().max_capacity(256 * 1024 * 1024);
//! let purge = cache.handle();
//! let app: Router = Router::new()
//!     .route("/", get(|| async { ([("cache-control", "max-age=60")], "hello") }))
//!     .layer(cache);
//! # let _ = (app, purge);
//! ```
//!
//! # What is stored
//!
//! What RFC 9111 §3 lets a *shared* cache store, and nothing else:
//!
//! - GET responses with a final status the cache understands (not 206, not 304);
//! - without `no-store` (unless `must-understand`) and without `private`;
//! - to requests without `Authorization`, unless the response says `public`,
//!   `s-maxage` or `must-revalidate`; to requests without `no-store`;
//! - without `Set-Cookie` (see [`CacheLayer::store_set_cookie`]);
//! - not `Vary: *`;
//! - not `must-understand` with a status code RFC 9110 does not define;
//! - with some freshness, a validator to revalidate with, or a stale-* window.
//!   Freshness is `Surrogate-Control: max-age` (addressed to reverse-proxy
//!   caches; removed before the response leaves), else `s-maxage`, else
//!   `max-age`, else `Expires` − `Date`; without those, and
//!   only for heuristically cacheable statuses (200, 203, 204, 300, 301, 308,
//!   404, 405, 410, 414, 501) or `public`, the [`default_ttl`] if the
//!   operator set one, else 10% of the time since `Last-Modified` (at most a
//!   day, RFC 9111 §4.2.2).
//!
//! Bodies are copied into the cache *while* they stream to the client, up to
//! [`max_body_size`]. A larger body (or a `Content-Length` over it) is never
//! buffered: it streams on, and the entry is dropped. Server-sent events and
//! other endless bodies pass through unbroken. Hop-by-hop headers, those
//! named by `Connection`, `Surrogate-Control` and the tag header are not
//! stored.
//!
//! Invalid freshness information counts as stale (RFC 9111 §4.2.1): an
//! invalid `max-age` or `s-maxage`, an `Expires` that is not a date, an `Age`
//! that is not one non-negative integer on one line. The first occurrence of
//! a repeated directive wins.
//!
//! # What is served
//!
//! Every response passing through carries an RFC 9211 `Cache-Status`, e.g.
//! `tower-perf; hit; ttl=42` or `tower-perf; fwd=uri-miss; fwd-status=200; stored`
//! (`fwd` is one of `uri-miss`, `vary-miss`, `stale`, `request`, `bypass`,
//! `method`). Every response from the cache carries `Age`.
//!
//! - A fresh entry whose `Vary` selecting headers match is served (values
//!   compared after combining lines and trimming list members; `Accept-Encoding`,
//!   `Accept-Language` and `Accept-Charset` case-insensitively); a
//!   request's `If-None-Match` (weak comparison) or `If-Modified-Since` is
//!   answered with 304 from it.
//! - A stale entry is revalidated upstream with its `ETag` / `Last-Modified`;
//!   a 304 refreshes the stored headers (RFC 9111 §4.3.4; fields describing
//!   the stored body, such as `ETag` and `Content-Encoding`, are kept) and the
//!   stored body is served.
//! - `stale-while-revalidate` (RFC 5861) serves the stale entry at once and
//!   sends the request upstream once, in the background, to refresh it.
//!   `stale-if-error` serves it when the origin fails or answers 5xx. Both
//!   are bounded by [`max_stale_while_revalidate`] / [`max_stale_if_error`].
//!   `no-cache`, `must-revalidate`, `proxy-revalidate` and `s-maxage` forbid
//!   serving stale.
//! - Request `Cache-Control` is honoured (§5.2.1): `no-cache` and
//!   `max-age=0` revalidate; `max-age`, `min-fresh` and `max-stale` bound
//!   the age accepted; `no-store` stores nothing; `only-if-cached` gets 504
//!   when nothing usable is stored.
//! - An unsafe method (POST, PUT, DELETE, PATCH, unknown ones) goes upstream
//!   and, on a 2xx or 3xx, removes the stored entry of its URI and of a
//!   same-origin `Location` / `Content-Location` (§4.4).
//!
//! # Keys and purging
//!
//! Entries are keyed by [`KeyOptions`](crate::key::KeyOptions): scheme,
//! authority, path and query by default (see [`CacheLayer::key_options`] for
//! query normalisation and custom keys). [`CacheLayer::handle`] gives a
//! cloneable [`CacheHandle`] that purges by key, by path prefix, by tag (the
//! `Surrogate-Key` response header by default, removed before the response
//! leaves) or everything:
//!
//! ```
//! use tower_perf::cache::CacheLayer;
//!
//! let layer = CacheLayer::new();
//! let handle = layer.handle();
//! handle.purge_key("http://example.com/users/1");
//! handle.purge_path_prefix("/users/");
//! handle.purge_tag("user-1");
//! handle.purge_all();
//! assert_eq!(handle.entry_count(), 0);
//! ```
//!
//! # Shared tier on Redis
//!
//! With the `redis` feature, [`CacheLayer::redis`] puts a second tier
//! behind the in-process one, so that a fleet of instances shares its
//! entries and its purges:
//!
//! ```no_run
//! # #[cfg(feature = "redis")]
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! use tower_perf::cache::{CacheLayer, RedisTier};
//!
//! let tier = RedisTier::open("redis://cache.internal:6379/")?
//!     .prefix("shop:")
//!     .timeout(Duration::from_millis(20));
//! let cache = CacheLayer::new().redis(tier);
//! # let _ = cache;
//! # Ok(())
//! # }
//! # #[cfg(not(feature = "redis"))]
//! # fn main() {}
//! ```
//!
//! - **Reads**: in process first; after a miss there, Redis; then upstream.
//!   An entry found in Redis is served and kept in process with what is left
//!   of its freshness (its age went on while it sat in Redis). Only a miss
//!   in process asks Redis: an entry held in process, fresh or stale, is
//!   handled as without Redis.
//! - **Writes**: a stored response goes to both tiers; in Redis it expires
//!   after its remaining freshness plus the `stale-while-revalidate` /
//!   `stale-if-error` window it may still be served in (none when
//!   `no-cache`, `must-revalidate`, `proxy-revalidate` or `s-maxage` forbid
//!   serving stale), at most [`RedisTier::max_ttl`]. Bodies over
//!   [`RedisTier::max_body_size`] stay in process. Writes and purges are
//!   sent in order by one background task, off the request path
//!   ([`CacheHandle::flush`] waits for them); with `Vary`, the variants this
//!   instance knows are written together under the key.
//! - **Purges** (by key, prefix, path prefix, tag, all) and the invalidation
//!   by unsafe methods remove the entries from Redis (tags are kept in Redis
//!   sets) and are published on the channel `{prefix}purge`: every instance
//!   drops them from its own memory. While a purge is on its way to Redis,
//!   this instance does not read from Redis, so it never serves what it just
//!   purged. An instance that lost its subscription clears its in-process
//!   tier when it is back, since it may have missed purges.
//! - **Entries** are a versioned, compact binary encoding (status, headers,
//!   body, stored-at time, freshness, cache directives, validators, the
//!   `Vary` selection and tags), not JSON. Another version or a damaged
//!   value is a miss, never an error or a panic.
//! - **Failures never fail a request**: every Redis call has a timeout
//!   ([`RedisTier::timeout`], 50 ms by default); an error or a timeout is a
//!   miss (or a dropped write); after repeated failures a circuit stops
//!   calling Redis for a while ([`RedisTier::circuit`]). A purge made while
//!   Redis is unreachable reaches this instance only.
//! - **Metrics** (through the `metrics` facade): counters `cache.l2.hits`,
//!   `cache.l2.misses`, `cache.l2.errors` (label `op`: `get`, `put`,
//!   `purge`, `subscribe`) and `cache.l2.skipped` (calls not made while the
//!   circuit is open).
//!
//! The client is the [`redis`](https://docs.rs/redis) crate with its Tokio
//! [`ConnectionManager`](::redis::aio::ConnectionManager), rather than
//! `fred`: it is the most used Rust Redis client, maintained under the Redis
//! organisation; its multiplexed, self-reconnecting connection is what a
//! cache that must never wait on a dead server needs, its pub/sub carries
//! the purges, and the few commands used here (`GET`, `SET PX`, `DEL`,
//! `SADD`, `SMEMBERS`, `SCAN`, `PUBLISH`, `SUBSCRIBE`) need nothing more
//! (it builds with `default-features = false`). It needs Rust 1.88. Answering
//! from Redis after a miss needs the inner service later, so the cache's
//! service requires the inner service to be `Clone + Send + 'static` and the
//! request body `Send + 'static` (as axum, tonic and hyper's are), with or
//! without the feature. Connections are made on first use, inside the
//! Tokio runtime.
//!
//! # gRPC reads
//!
//! gRPC calls are `POST`s and pass through. [`CacheLayer::grpc_reads`]
//! declares idempotent unary methods whose successful answers (`grpc-status:
//! 0`) are stored by method and request message, with a freshness the
//! operator sets, and replayed with their trailers; it returns a
//! [`GrpcCacheLayer`] whose inner service receives a
//! [`GrpcBody`](crate::grpc::GrpcBody). See [`crate::grpc`] for what is
//! read, keyed and stored, and why the body type.
//!
//! # How it differs
//!
//! Concurrent misses for one key are not collapsed here: put the coalescing
//! layer beneath the cache for that (`latency -> cache -> coalesce -> limit`);
//! a response it shared between waiters is marked `collapsed` in
//! `Cache-Status`. Range requests are not answered from the cache (206
//! responses are not stored).
//! Unlike a user-agent cache, this is a *shared* cache: `private` responses
//! and, by default, responses that set cookies are never stored. A hit or a
//! stale answer is a response, never an error, so the layer drops into
//! `axum::Router::layer` as is.
//!
//! [`default_ttl`]: CacheLayer::default_ttl
//! [`max_body_size`]: CacheLayer::max_body_size
//! [`max_stale_while_revalidate`]: CacheLayer::max_stale_while_revalidate
//! [`max_stale_if_error`]: CacheLayer::max_stale_if_error

mod body;
#[cfg(feature = "redis")]
mod codec;
mod future;
mod grpc;
mod layer;
mod policy;
#[cfg(feature = "redis")]
mod redis;
mod service;
mod store;

#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use self::redis::RedisTier;

pub use self::{
    body::CacheBody,
    future::ResponseFuture,
    grpc::{GrpcCache, GrpcCacheLayer, GrpcResponseFuture},
    layer::{CacheHandle, CacheLayer},
    service::CacheService,
};
