//! The contender table: who is measured, on which jobs, configured how.
//!
//! A contender is a name, the jobs it runs, a one-line description of its
//! configuration (printed with the results) and a function that wraps the
//! app's `Router` into what is served. Adding one is one line in
//! [`tower_perf()`] or [`peers()`].

use std::convert::Infallible;
use std::sync::OnceLock;

use axum::extract::Request;
use axum::response::Response;
use axum::Router;
use axum_prometheus::PrometheusMetricLayer;
use http_cache::MokaManager;
use http_cache_tower_server::ServerCacheLayer;
use tower::{Service, ServiceBuilder};
use tower_http_cache::backend::memory::InMemoryBackend;
use tower_resilience_adaptive::{AdaptiveLimiterLayer, Vegas};
use tower_resilience_coalesce::{CoalesceError, CoalesceLayer};

use crate::app::{app, App, Buffered, Db, STATIC_TTL};
use crate::jobs::Job::{self, Hit100k, Hit1k, HotKey, Miss1k, Overload, Trivial};

/// The routes alone: the reference every ratio is taken against.
pub const BARE: &str = "bare";
/// Names the targets look up.
pub const TP_CACHE: &str = "tower-perf cache";
pub const TP_FULL_STACK: &str = "tower-perf full stack";
pub const PEER_STACK: &str = "peer stack";

pub struct Contender {
    pub name: String,
    pub jobs: &'static [Job],
    pub config: String,
    pub wrap: Box<dyn Fn(Router) -> App>,
}

fn c(
    name: impl Into<String>,
    jobs: &'static [Job],
    config: impl Into<String>,
    wrap: impl Fn(Router) -> App + 'static,
) -> Contender {
    Contender {
        name: name.into(),
        jobs,
        config: config.into(),
        wrap: Box::new(wrap),
    }
}

/// Every contender, bare first. `db` sizes the static limiter.
pub fn all(db: Db) -> Vec<Contender> {
    let mut all = vec![c(BARE, Job::ALL, "the routes alone", app)];
    all.extend(tower_perf());
    all.extend(peers(db));
    all
}

/// The tower-perf contenders, one line each, all in `Router::layer` (the
/// recommended placement: the route is known) with their defaults.
///
/// Their layers live on other branches. Once one is merged, uncomment its
/// line; nothing else changes (the targets already look these names up).
fn tower_perf() -> Vec<Contender> {
    use tower_perf::{
        cache::CacheLayer, coalesce::CoalesceLayer, latency::LatencyLayer,
        limit::AdaptiveLimitLayer, stack::PerfStack,
    };
    vec![
        c(
            "tower-perf latency",
            &[Trivial],
            "LatencyLayer::new() in Router::layer; records into the global Prometheus recorder",
            |r| app(r.layer(LatencyLayer::new())),
        ),
        c(
            "tower-perf limit",
            &[Trivial, Overload],
            "AdaptiveLimitLayer::new() defaults (Vegas) in Router::layer",
            |r| app(r.layer(AdaptiveLimitLayer::new())),
        ),
        c(
            TP_CACHE,
            &[Hit1k, Hit100k, Miss1k, Trivial],
            "CacheLayer::new() defaults in Router::layer (freshness from max-age=60)",
            |r| app(r.layer(CacheLayer::new())),
        ),
        c(
            "tower-perf cache (around the Router)",
            &[Hit1k, Hit100k, Miss1k, Trivial],
            "CacheLayer::new() defaults around the whole Router, where the peer caches sit: \
             a hit skips routing",
            |r| app(ServiceBuilder::new().layer(CacheLayer::new()).service(r)),
        ),
        c(
            "tower-perf coalesce",
            &[Trivial, HotKey],
            "CoalesceLayer::new() defaults in Router::layer",
            |r| app(r.layer(CoalesceLayer::new())),
        ),
        c(
            TP_FULL_STACK,
            &[Trivial, HotKey, Overload],
            "PerfStack::new() (latency -> cache -> coalesce -> limit, defaults) in one \
             Router::layer",
            |r| app(r.layer(PerfStack::new())),
        ),
        c(
            "tower-perf layers one by one",
            &[Trivial],
            "the same four layers, each ::new(), in four Router::layer calls: axum boxes \
             each layer's service, future and body",
            |r| {
                app(r
                    .layer(AdaptiveLimitLayer::new())
                    .layer(CoalesceLayer::new())
                    .layer(CacheLayer::new())
                    .layer(LatencyLayer::new()))
            },
        ),
    ]
}

/// The peers, each configured like the tower-perf layer it is compared with
/// (same TTL, same limits), applied the way their documentation shows where
/// that compiles against axum 0.8, else around the whole `Router`.
fn peers(db: Db) -> Vec<Contender> {
    let ttl = STATIC_TTL.as_secs();
    let permits = db.permits;
    vec![
        c(
            "axum-prometheus",
            &[Trivial],
            "PrometheusMetricLayer::pair() defaults in Router::layer (MatchedPath labels)",
            |r| app(r.layer(prometheus())),
        ),
        c(
            "tower-http-cache",
            &[Hit1k, Hit100k, Miss1k, Trivial],
            format!(
                "CacheLayer::builder(InMemoryBackend::new(10_000)).ttl({ttl}s), other policy \
                 defaults; a fixed TTL (it does not read max-age), so it also caches /trivial; \
                 around the Router with the body collected first (it requires a Sync body)"
            ),
            |r| {
                app(ServiceBuilder::new()
                    .layer(tower_http_cache_layer())
                    .then(|res: Result<Response, Infallible>| async move {
                        Ok::<_, Infallible>(Buffered::collect(res?).await.into_full())
                    })
                    .service(r))
            },
        ),
        c(
            "http-cache-tower-server",
            &[Hit1k, Hit100k, Miss1k, Trivial],
            "ServerCacheLayer::new(MokaManager(moka future::Cache, 10_000 entries)), \
             ServerCacheOptions defaults (freshness from max-age=60); around the Router",
            |r| app(ServiceBuilder::new().layer(server_cache_layer()).service(r)),
        ),
        c(
            "tower-resilience-coalesce",
            &[Trivial, HotKey],
            "CoalesceLayer::new(key = method + URI); around the Router with the body collected \
             first (it needs Clone responses, and its service is not Sync)",
            |r| app(coalesced(r)),
        ),
        c(
            "ConcurrencyLimit(1024)+LoadShed",
            &[Trivial],
            "tower ConcurrencyLimit(1024) under LoadShed around the Router (a limit no \
             trivial load reaches: the cost of the machinery)",
            |r| {
                app(ServiceBuilder::new()
                    .load_shed()
                    .concurrency_limit(1024)
                    .service(r))
            },
        ),
        c(
            format!("ConcurrencyLimit({permits})+LoadShed"),
            &[Overload],
            format!(
                "tower ConcurrencyLimit({permits}) under LoadShed around the Router: a static \
                 limit set to the database's known capacity (the oracle setting)"
            ),
            move |r| {
                app(ServiceBuilder::new()
                    .load_shed()
                    .concurrency_limit(permits)
                    .service(r))
            },
        ),
        c(
            "tower-resilience-adaptive+LoadShed",
            &[Trivial, Overload],
            "AdaptiveLimiterLayer(Vegas defaults: initial 10, min 1, max 100, alpha 3, beta 6) \
             under tower LoadShed around the Router (alone it queues instead of shedding)",
            |r| {
                app(ServiceBuilder::new()
                    .load_shed()
                    .layer(adaptive_layer())
                    .service(r))
            },
        ),
        c(
            PEER_STACK,
            &[Trivial, HotKey, Overload],
            "tower-resilience-adaptive+LoadShed -> http-cache-tower-server -> \
             tower-resilience-coalesce around the Router, axum-prometheus in Router::layer, \
             each configured as above",
            |r| {
                app(ServiceBuilder::new()
                    .load_shed()
                    .layer(adaptive_layer())
                    .layer(server_cache_layer())
                    .map_response(Buffered::into_full)
                    .service(coalesced(r.layer(prometheus()))))
            },
        ),
    ]
}

/// The one axum-prometheus layer: its `pair()` installs the process's global
/// metrics recorder, which tower-perf's latency layer then records into too.
pub fn prometheus() -> PrometheusMetricLayer<'static> {
    static LAYER: OnceLock<PrometheusMetricLayer<'static>> = OnceLock::new();
    LAYER
        .get_or_init(|| PrometheusMetricLayer::pair().0)
        .clone()
}

fn tower_http_cache_layer() -> tower_http_cache::CacheLayer<InMemoryBackend> {
    tower_http_cache::CacheLayer::builder(InMemoryBackend::new(10_000))
        .ttl(STATIC_TTL)
        .build()
}

fn server_cache_layer() -> ServerCacheLayer<MokaManager> {
    ServerCacheLayer::new(MokaManager::new(moka::future::Cache::new(10_000)))
}

fn adaptive_layer() -> AdaptiveLimiterLayer<Vegas> {
    let vegas = Vegas::builder()
        .build()
        .expect("default Vegas settings are valid");
    AdaptiveLimiterLayer::new(vegas)
}

/// tower-resilience-coalesce over the routes, their answers buffered.
fn coalesced(
    r: Router,
) -> impl Service<
    Request,
    Response = Buffered,
    Error = CoalesceError<Infallible>,
    Future = impl Send + 'static,
> + Clone
       + Send
       + 'static {
    let key = |req: &Request| (req.method().clone(), req.uri().clone());
    ServiceBuilder::new()
        .layer(CoalesceLayer::new(key))
        .then(|res: Result<Response, Infallible>| async move {
            Ok::<_, Infallible>(Buffered::collect(res?).await)
        })
        .service(r)
}
