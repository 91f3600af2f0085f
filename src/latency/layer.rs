use std::{fmt, sync::Arc};

use tower_layer::Layer;

use super::{
    clock::Clock,
    state::{Config, Registry},
    Latency, LatencySummary, Naming,
};
use crate::route::{NoRoute, RouteFn};

/// Records per-route request latency through the `metrics` facade.
///
/// See the [module docs](super) for the metrics, labels and examples.
///
/// Build it once and clone it: clones (and the services they make) share one
/// registry of routes, series and cached handles. Configure it before taking
/// a [`summary_handle`](Self::summary_handle): each builder method starts a
/// fresh registry.
#[derive(Clone)]
pub struct LatencyLayer<R = NoRoute> {
    config: Config,
    registry: Arc<Registry>,
    route_fn: R,
}

impl LatencyLayer {
    /// A layer with OpenTelemetry names, at most 2000 series, the clock
    /// stopping at the end of the response body, and no in-process summary.
    pub fn new() -> Self {
        Self::with(Config::default(), NoRoute)
    }
}

impl Default for LatencyLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl<R> LatencyLayer<R> {
    fn with(config: Config, route_fn: R) -> Self {
        Self {
            registry: Arc::new(Registry::new(config.clone())),
            config,
            route_fn,
        }
    }

    fn configure(mut self, f: impl FnOnce(&mut Config)) -> Self {
        f(&mut self.config);
        Self::with(self.config, self.route_fn)
    }

    /// Metric and attribute spelling: [`Naming::OpenTelemetry`] (default) or
    /// [`Naming::Prometheus`].
    pub fn naming(self, naming: Naming) -> Self {
        self.configure(|c| c.naming = naming)
    }

    /// Names the route of requests that carry no axum `MatchedPath` and are
    /// not gRPC (plain hyper services, `Router::fallback_service`, ...).
    ///
    /// The function is consulted only for those requests; `None` means
    /// unmatched. See [`RouteFn`].
    pub fn route_fn<F>(self, route_fn: F) -> LatencyLayer<F> {
        LatencyLayer::with(self.config, route_fn)
    }

    /// The most distinct label sets the histogram gets (default 2000).
    ///
    /// Past it, new label sets are recorded into one overflow series labelled
    /// only `otel.metric.overflow="true"`, as OpenTelemetry SDKs do.
    pub fn max_series(self, max: usize) -> Self {
        self.configure(|c| c.max_series = max)
    }

    /// Stops the clock at the response headers instead of the end of the
    /// body, for every route.
    pub fn stop_clock_at_headers(self) -> Self {
        self.configure(|c| c.stop_at_headers = true)
    }

    /// Stops the clock at the response headers on `route` only (a route
    /// label such as `/events` or `/pkg.Svc/Watch`), for server-sent events,
    /// long polls and streams whose length is not the latency you want. May
    /// be called for several routes.
    pub fn stop_clock_at_headers_on(self, route: impl AsRef<str>) -> Self {
        self.configure(|c| c.stop_at_headers_routes.push(route.as_ref().into()))
    }

    /// Times requests with this `quanta` clock (`quanta` 0.12).
    ///
    /// The default, `quanta::Clock::new()`, reads the CPU's time-stamp
    /// counter (see the [module docs](super#cost-and-the-recorder)). Tests
    /// can pass the clock of `quanta::Clock::mock()` and advance its `Mock`
    /// by hand: durations are then exactly the advances.
    pub fn clock(self, clock: quanta::Clock) -> Self {
        self.configure(|c| c.clock = Clock::Quanta(clock))
    }

    /// Times requests with `tokio::time::Instant` instead of the CPU's
    /// time-stamp counter, so that durations follow tokio's clock: under
    /// paused time (`#[tokio::test(start_paused = true)]`,
    /// `tokio::time::advance`) they are the virtual durations, exactly.
    ///
    /// For tests; it costs two `clock_gettime` calls per request instead of
    /// two counter reads (see the [module docs](super#cost-and-the-recorder)).
    pub fn tokio_clock(self) -> Self {
        self.configure(|c| c.clock = Clock::Tokio)
    }

    /// Keeps an in-process per-route summary (count, P50/P95/P99) readable
    /// through [`summary_handle`](Self::summary_handle). Costs one atomic add
    /// per request and about 11 KiB per route.
    pub fn summary(self) -> Self {
        self.configure(|c| c.summary = true)
    }

    /// The in-process summary, if [`summary`](Self::summary) enabled it.
    pub fn summary_handle(&self) -> Option<LatencySummary> {
        self.config.summary.then(|| LatencySummary {
            registry: self.registry.clone(),
        })
    }
}

impl<R> fmt::Debug for LatencyLayer<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LatencyLayer")
            .field("config", &self.config)
            .field("route_fn", &std::any::type_name::<R>())
            .finish()
    }
}

impl<S, R: Clone> Layer<S> for LatencyLayer<R> {
    type Service = Latency<S, R>;

    fn layer(&self, inner: S) -> Self::Service {
        Latency {
            inner,
            registry: self.registry.clone(),
            route_fn: self.route_fn.clone(),
        }
    }
}

// Keep the trait in scope for the docs' intra-doc link.
#[allow(unused_imports)]
use RouteFn as _;
