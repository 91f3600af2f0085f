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

use axum::Router;

/// One way of building the service under test.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Scenario {
    /// The app with no layer: the baseline every other row is compared with.
    Bare,
}

impl Scenario {
    /// Every scenario, in the order they run and appear in the table.
    pub(crate) const ALL: &'static [Scenario] = &[Scenario::Bare];

    pub(crate) fn name(self) -> &'static str {
        match self {
            Scenario::Bare => "bare",
        }
    }

    pub(crate) fn about(self) -> &'static str {
        match self {
            Scenario::Bare => "the app alone: every request reaches the database",
        }
    }

    pub(crate) fn from_name(name: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|s| s.name() == name)
    }
}

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

    #[allow(dead_code)] // used once a layer with a handle is wired in
    pub(crate) fn live(mut self, probe: impl Fn() -> String + Send + Sync + 'static) -> Self {
        self.live = Some(Box::new(probe));
        self
    }

    #[allow(dead_code)] // used once a layer with a handle is wired in
    pub(crate) fn notes(mut self, probe: impl Fn() -> String + Send + Sync + 'static) -> Self {
        self.notes = Some(Box::new(probe));
        self
    }
}

/// Wraps the app in the layers of `scenario`: the one place scenarios differ.
///
/// Layers go in `Router::layer` so they see the matched route. A new layer is built for
/// every scenario, so no state (cached entries, learned limits) leaks between rows. For
/// example, once the layers exist:
///
/// ```text
/// Scenario::Limit => {
///     let limit = AdaptiveLimitLayer::new();
///     let handle = limit.handle();
///     Built::new(app.layer(limit))
///         .live(move || format!("limit {} in flight {}", handle.limit(), handle.in_flight()))
/// }
/// Scenario::Latency => {
///     let latency = LatencyLayer::new().summary();
///     let summary = latency.summary_handle();
///     Built::new(app.layer(latency)).notes(move || {
///         let routes = summary.iter().flat_map(|s| s.routes());
///         routes
///             .map(|r| format!("{}: {} requests, P99 {}", r.route, r.count, fmt_duration(r.p99)))
///             .collect::<Vec<_>>()
///             .join("\n")
///     })
/// }
/// Scenario::FullStack => Built::new(
///     app.layer(CoalesceLayer::new())      // innermost: collapses identical misses
///         .layer(CacheLayer::new())
///         .layer(AdaptiveLimitLayer::new())
///         .layer(LatencyLayer::new()),     // outermost: sees every outcome
/// ),
/// ```
pub(crate) fn build(scenario: Scenario, app: Router) -> Built {
    match scenario {
        Scenario::Bare => Built::new(app),
    }
}
