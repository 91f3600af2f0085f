//! The scenarios: one app, wrapped in different layers.
//!
//! To add a scenario:
//! 1. add a variant to [`Scenario`] and to [`Scenario::ALL`] (the order of the table),
//! 2. give it a `name` (used on the command line and in the table) and an `about` line,
//! 3. add its arm to [`build`], the one place where layers are applied to the router.
//!    A layer's handle can feed the live progress line ([`Built::live`]) and add lines
//!    under the table ([`Built::notes`]).
//!
//! The compiler points at every `match` that needs the new variant.

use axum::{extract::Request, Router};
use tower_perf::{
    cache::{CacheHandle, CacheLayer},
    coalesce::CoalesceLayer,
    latency::{LatencyLayer, LatencySummary},
    limit::{AdaptiveLimitLayer, LimitHandle},
    stack::PerfStack,
};

use crate::{stats::fmt_duration, workload::Route};

/// One way of building the service under test.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Scenario {
    /// The app with no layer: the baseline every other row is compared with.
    Bare,
    /// Per-route latency histograms: what measuring costs.
    Latency,
    /// The response cache.
    Cache,
    /// Request coalescing.
    Coalesce,
    /// The adaptive concurrency limit.
    Limit,
    /// All four, in the recommended order.
    FullStack,
    /// Two instances behind a round-robin balancer, each with its own cache.
    #[cfg(feature = "redis")]
    Fleet,
    /// The same two instances sharing a Redis cache tier.
    #[cfg(feature = "redis")]
    FleetRedis,
}

impl Scenario {
    /// Every scenario, in the order they run and appear in the table.
    pub(crate) const ALL: &'static [Scenario] = &[
        Scenario::Bare,
        Scenario::Latency,
        Scenario::Cache,
        Scenario::Coalesce,
        Scenario::Limit,
        Scenario::FullStack,
        #[cfg(feature = "redis")]
        Scenario::Fleet,
        #[cfg(feature = "redis")]
        Scenario::FleetRedis,
    ];

    pub(crate) fn name(self) -> &'static str {
        match self {
            Scenario::Bare => "bare",
            Scenario::Latency => "latency",
            Scenario::Cache => "cache",
            Scenario::Coalesce => "coalesce",
            Scenario::Limit => "limit",
            Scenario::FullStack => "full-stack",
            #[cfg(feature = "redis")]
            Scenario::Fleet => "fleet-x2",
            #[cfg(feature = "redis")]
            Scenario::FleetRedis => "fleet-x2+redis",
        }
    }

    pub(crate) fn about(self) -> &'static str {
        match self {
            Scenario::Bare => "the app alone: every request reaches the database",
            Scenario::Latency => "LatencyLayer: per-route P50/P95/P99, measured in process",
            Scenario::Cache => "CacheLayer: fresh responses served from memory (RFC 9111)",
            Scenario::Coalesce => "CoalesceLayer: identical in-flight reads share one database call",
            Scenario::Limit => "AdaptiveLimitLayer: admits what the database serves without queueing, sheds the rest with 503",
            Scenario::FullStack => "latency -> cache -> coalesce -> limit, the recommended order",
            #[cfg(feature = "redis")]
            Scenario::Fleet => "two instances, requests alternating, each with its own CacheLayer: each warms alone",
            #[cfg(feature = "redis")]
            Scenario::FleetRedis => "the same two instances sharing a Redis tier: what one stores, the other serves",
        }
    }

    pub(crate) fn from_name(name: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|s| s.name() == name)
    }

    /// Whether the scenario needs the private Redis server.
    pub(crate) fn needs_redis(self) -> bool {
        #[cfg(feature = "redis")]
        if self == Scenario::FleetRedis {
            return true;
        }
        false
    }
}

/// The Redis server of the fleet scenario, set once by `main` when a
/// scenario needs it.
pub(crate) static REDIS_URL: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// Reads something from a layer's handle, called from the load generator's task.
pub(crate) type Probe = Box<dyn Fn() -> String + Send + Sync>;

/// The router of one scenario, with optional views into its layers.
pub(crate) struct Built {
    pub(crate) router: Router,
    /// Shown in the live progress line, e.g. the limiter's current limit.
    pub(crate) live: Option<Probe>,
    /// Called once after the run; each returned line is printed under the table.
    pub(crate) notes: Option<Probe>,
}

impl Built {
    pub(crate) fn new(router: Router) -> Self {
        Self {
            router,
            live: None,
            notes: None,
        }
    }

    pub(crate) fn live(mut self, probe: impl Fn() -> String + Send + Sync + 'static) -> Self {
        self.live = Some(Box::new(probe));
        self
    }

    pub(crate) fn notes(mut self, probe: impl Fn() -> String + Send + Sync + 'static) -> Self {
        self.notes = Some(Box::new(probe));
        self
    }
}

/// Wraps the app in the layers of `scenario`: the one place scenarios differ.
///
/// Layers go in `Router::layer` so they see the matched route; the last one
/// added is the outermost. A new layer is built for every scenario, so no
/// state (cached entries, learned limits) leaks between rows.
pub(crate) fn build(scenario: Scenario, app: Router) -> Built {
    match scenario {
        Scenario::Bare => Built::new(app),
        Scenario::Latency => {
            let latency = latency_layer();
            let summary = latency.summary_handle();
            Built::new(app.layer(latency)).notes(move || route_notes(summary.as_ref()))
        }
        Scenario::Cache => {
            let cache = CacheLayer::new();
            let handle = cache.handle();
            Built::new(app.layer(cache)).notes(move || cache_notes(&handle))
        }
        Scenario::Coalesce => Built::new(app.layer(CoalesceLayer::new())),
        Scenario::Limit => {
            let limit = AdaptiveLimitLayer::new();
            let handle = limit.handle();
            let live = handle.clone();
            Built::new(app.layer(limit))
                .live(move || limit_live(&live))
                .notes(move || limit_notes(&handle))
        }
        Scenario::FullStack => {
            // latency -> cache -> coalesce -> limit, outermost first.
            let stack = PerfStack::new().latency(latency_layer());
            let summary = stack.latency_summary();
            let cache = stack.cache_handle();
            let limit = stack.limit_handle();
            let live = limit.clone();
            Built::new(app.layer(stack))
                .live(move || limit_live(&live))
                .notes(move || {
                    [
                        cache_notes(&cache),
                        limit_notes(&limit),
                        route_notes(summary.as_ref()),
                    ]
                    .join("\n")
                })
        }
        #[cfg(feature = "redis")]
        Scenario::Fleet => fleet::build(app, None),
        #[cfg(feature = "redis")]
        Scenario::FleetRedis => fleet::build(app, REDIS_URL.get().map(String::as_str)),
    }
}

#[cfg(feature = "redis")]
mod fleet {
    use std::sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    };

    use axum::{extract::Request, Router};
    use tower::{service_fn, ServiceExt};
    use tower_perf::cache::{CacheLayer, RedisTier};

    use super::Built;

    /// Two copies of the app, each behind its own cache (sharing `redis` when
    /// given), with requests alternating between them as a balancer would.
    pub(super) fn build(app: Router, redis: Option<&str>) -> Built {
        // A fresh prefix per run, so every run starts with an empty Redis.
        let prefix = format!(
            "showcase-{}-{:?}:",
            std::process::id(),
            std::time::Instant::now()
        );
        let layer = || {
            let cache = CacheLayer::new();
            match redis.and_then(|url| RedisTier::open(url).ok()) {
                Some(tier) => cache.redis(tier.prefix(prefix.clone())),
                None => cache,
            }
        };
        let (a, b) = (layer(), layer());
        let handles = [a.handle(), b.handle()];
        let instances = [app.clone().layer(a), app.layer(b)];
        let next = Arc::new(AtomicUsize::new(0));
        let balancer = service_fn(move |req: Request| {
            let i = next.fetch_add(1, Ordering::Relaxed) % 2;
            instances[i].clone().oneshot(req)
        });
        Built::new(Router::new().fallback_service(balancer)).notes(move || {
            handles
                .iter()
                .zip(["A", "B"])
                .map(|(h, name)| {
                    format!(
                        "instance {name}: {} entries in memory at the end",
                        h.entry_count()
                    )
                })
                .collect::<Vec<_>>()
                .join("\n")
        })
    }
}

/// A latency layer that names the showcase's routes. (With the crate's `axum`
/// feature, axum's `MatchedPath` does this without a route function.)
fn latency_layer() -> LatencyLayer<impl Fn(&Request) -> Option<&'static str> + Clone> {
    LatencyLayer::new().summary().route_fn(|req: &Request| {
        let path = req.uri().path();
        Route::ALL
            .into_iter()
            .map(Route::template)
            .find(|template| match template.strip_suffix("{id}") {
                Some(prefix) => path.starts_with(prefix),
                None => path == *template,
            })
    })
}

fn route_notes(summary: Option<&LatencySummary>) -> String {
    summary
        .into_iter()
        .flat_map(LatencySummary::routes)
        .map(|r| {
            format!(
                "latency {}: {} requests, P50 {} P95 {} P99 {} (as the layer measured it)",
                r.route,
                r.count,
                fmt_duration(r.p50),
                fmt_duration(r.p95),
                fmt_duration(r.p99)
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn cache_notes(handle: &CacheHandle) -> String {
    format!(
        "cache: {} entries, {} KiB stored at the end",
        handle.entry_count(),
        handle.weighted_size() / 1024
    )
}

fn limit_live(handle: &LimitHandle) -> String {
    format!("limit {} in flight {}", handle.limit(), handle.in_flight())
}

fn limit_notes(handle: &LimitHandle) -> String {
    let c = handle.counters();
    format!(
        "limiter: limit {} at the end; {} admitted, {} shed, {} drops",
        handle.limit(),
        c.admitted,
        c.rejected,
        c.drops
    )
}
