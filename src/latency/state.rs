//! The registry shared by every clone of one layer: admitted routes, their
//! series and the metric handles resolved for them.
//!
//! # Handles and the recorder
//!
//! `metrics` resolves a handle through the recorder current at the call: a
//! thread-local one set by `with_local_recorder`, else the global one, else a
//! no-op. A handle resolved before an exporter is installed is a no-op
//! forever, so caching it naively would lose every later sample. Each cached
//! handle therefore remembers the address of the recorder it came from; each
//! request reads the current recorder's address (a thread-local read and an
//! atomic load, no registry lookup) and resolves again only when it differs.
//! The global recorder can be set once, so in production this re-resolves at
//! most once per series (no-op, then the exporter).

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, RwLock,
    },
    time::Duration,
};

use http::StatusCode;
use metrics::{Gauge, Histogram, Key, KeyName, Label, Metadata, Recorder, SharedString, Unit};
use tokio::time::Instant;

use super::{
    labels::{Failure, Names, SeriesKey, GRPC_UNIMPLEMENTED, METHODS},
    summary::{Buckets, RouteSummary},
    Naming,
};
use crate::route::UNMATCHED;

static METADATA: Metadata<'static> =
    Metadata::new(module_path!(), metrics::Level::INFO, Some(module_path!()));

/// The route label of the overflow series in the in-process summary.
const OVERFLOW: &str = "otel.metric.overflow";

/// The identity of the recorder `metrics` would use here and now.
fn recorder_id(recorder: &dyn Recorder) -> usize {
    recorder as *const dyn Recorder as *const () as usize
}

fn current_recorder() -> usize {
    metrics::with_recorder(recorder_id)
}

/// A handle and the recorder it was resolved from.
#[derive(Debug)]
struct Resolved<T> {
    recorder: usize,
    handle: T,
}

/// Configuration fixed when the layer is built.
#[derive(Clone, Debug)]
pub(crate) struct Config {
    pub(crate) naming: Naming,
    pub(crate) max_series: usize,
    pub(crate) stop_at_headers: bool,
    pub(crate) stop_at_headers_routes: Vec<Arc<str>>,
    pub(crate) summary: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            naming: Naming::OpenTelemetry,
            max_series: 2000,
            stop_at_headers: false,
            stop_at_headers_routes: Vec::new(),
            summary: false,
        }
    }
}

#[derive(Debug)]
pub(crate) struct Registry {
    pub(crate) config: Config,
    names: &'static Names,
    routes: RwLock<HashMap<Arc<str>, Arc<Route>>>,
    unmatched: Arc<Route>,
    overflow: Arc<Route>,
    /// Series created so far, against `config.max_series`.
    series: AtomicUsize,
    active: [RwLock<Option<Resolved<Gauge>>>; METHODS.len()],
    /// The recorder the metrics were last described to.
    described: AtomicUsize,
}

#[derive(Debug)]
pub(crate) struct Route {
    name: Arc<str>,
    overflow: bool,
    pub(crate) stop_at_headers: bool,
    series: RwLock<Vec<Series>>,
    summary: Option<Buckets>,
}

#[derive(Debug)]
struct Series {
    key: SeriesKey,
    histogram: Resolved<Histogram>,
}

/// The route of a request, as known when it enters.
#[derive(Debug)]
pub(crate) enum RouteRef {
    Known(Arc<Route>),
    /// Not admitted yet: admitted (under the cap) once an outcome is recorded.
    New(Arc<str>, bool),
    Unmatched,
}

impl RouteRef {
    pub(crate) fn stop_at_headers(&self, registry: &Registry) -> bool {
        match self {
            RouteRef::Known(route) => route.stop_at_headers,
            RouteRef::New(_, stop) => *stop,
            RouteRef::Unmatched => registry.unmatched.stop_at_headers,
        }
    }
}

impl Route {
    /// The series of `key`; the overflow route has one series for every key.
    fn find<'a>(&self, series: &'a [Series], key: SeriesKey) -> Option<&'a Series> {
        match self.overflow {
            true => series.first(),
            false => series.iter().find(|s| s.key == key),
        }
    }
}

impl Registry {
    pub(crate) fn new(config: Config) -> Self {
        let names = config.naming.names();
        let route = |name: &str, overflow| {
            Arc::new(Route {
                name: name.into(),
                overflow,
                stop_at_headers: config.stop_at_headers,
                series: RwLock::default(),
                summary: config.summary.then(Buckets::new),
            })
        };
        Self {
            names,
            routes: RwLock::default(),
            unmatched: route(UNMATCHED, false),
            overflow: route(OVERFLOW, true),
            series: AtomicUsize::new(0),
            active: Default::default(),
            described: AtomicUsize::new(0),
            config,
        }
    }

    fn stops_at_headers(&self, route: &str) -> bool {
        self.config.stop_at_headers
            || self
                .config
                .stop_at_headers_routes
                .iter()
                .any(|r| &**r == route)
    }

    /// The route named `name`, without admitting it.
    pub(crate) fn lookup(&self, name: &str) -> RouteRef {
        if let Some(route) = read(&self.routes).get(name) {
            return RouteRef::Known(route.clone());
        }
        RouteRef::New(name.into(), self.stops_at_headers(name))
    }

    /// Admits `name` if the cap allows, else the overflow route.
    fn admit(&self, name: Arc<str>) -> Arc<Route> {
        let mut routes = write(&self.routes);
        if let Some(route) = routes.get(&name) {
            return route.clone();
        }
        if routes.len() >= self.config.max_series
            || self.series.load(Ordering::Relaxed) >= self.config.max_series
        {
            return self.overflow.clone();
        }
        let route = Arc::new(Route {
            stop_at_headers: self.stops_at_headers(&name),
            name: name.clone(),
            overflow: false,
            series: RwLock::default(),
            summary: self.config.summary.then(Buckets::new),
        });
        routes.insert(name, route.clone());
        route
    }

    /// Describes both metrics to `recorder` once.
    fn describe(&self, recorder: &dyn Recorder, id: usize) {
        if self.described.swap(id, Ordering::Relaxed) == id {
            return;
        }
        recorder.describe_histogram(
            KeyName::from_const_str(self.names.duration),
            Some(Unit::Seconds),
            SharedString::const_str(
                "Duration of HTTP server requests, until the response body ends.",
            ),
        );
        recorder.describe_gauge(
            KeyName::from_const_str(self.names.active),
            Some(Unit::Count),
            SharedString::const_str("Number of HTTP server requests in flight."),
        );
    }

    /// The active-requests gauge for `method`, resolved for the current recorder.
    pub(crate) fn active(&self, method: u8) -> Gauge {
        let slot = &self.active[usize::from(method)];
        let id = current_recorder();
        if let Some(r) = &*read(slot) {
            if r.recorder == id {
                return r.handle.clone();
            }
        }
        metrics::with_recorder(|recorder| {
            let id = recorder_id(recorder);
            self.describe(recorder, id);
            let key = Key::from_parts(
                self.names.active,
                vec![Label::new(
                    self.names.method,
                    SharedString::const_str(METHODS[usize::from(method)]),
                )],
            );
            let handle = recorder.register_gauge(&key, &METADATA);
            *write(slot) = Some(Resolved {
                recorder: id,
                handle: handle.clone(),
            });
            handle
        })
    }

    /// Records one finished request.
    fn record(&self, route: RouteRef, key: SeriesKey, elapsed: Duration) {
        let route = match route {
            _ if key.grpc == Some(GRPC_UNIMPLEMENTED) => self.unmatched.clone(),
            RouteRef::Known(route) => route,
            RouteRef::New(name, _) => self.admit(name),
            RouteRef::Unmatched => self.unmatched.clone(),
        };
        if let Some(summary) = &route.summary {
            summary.record(elapsed);
        }
        let seconds = elapsed.as_secs_f64();
        let id = current_recorder();
        if let Some(series) = route.find(&read(&route.series), key) {
            if series.histogram.recorder == id {
                series.histogram.handle.record(seconds);
                return;
            }
        }
        self.record_slow(&route, key, seconds);
    }

    /// First sample of a label set, or the recorder changed: resolve the handle.
    fn record_slow(&self, route: &Route, key: SeriesKey, seconds: f64) {
        let mut series = write(&route.series);
        let existing = match route.overflow {
            true => (!series.is_empty()).then_some(0),
            false => series.iter().position(|s| s.key == key),
        };
        if existing.is_none() && !route.overflow {
            let admitted = self
                .series
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                    (n < self.config.max_series).then_some(n + 1)
                })
                .is_ok();
            if !admitted {
                drop(series);
                return self.record_slow(&self.overflow, key, seconds);
            }
        }
        let labels = if route.overflow {
            vec![Label::new(self.names.overflow, "true")]
        } else {
            key.labels(self.names, SharedString::from(route.name.clone()))
        };
        let histogram = metrics::with_recorder(|recorder| {
            let id = recorder_id(recorder);
            self.describe(recorder, id);
            let key = Key::from_parts(self.names.duration, labels);
            Resolved {
                recorder: id,
                handle: recorder.register_histogram(&key, &METADATA),
            }
        });
        histogram.handle.record(seconds);
        match existing {
            Some(i) => series[i].histogram = histogram,
            None => series.push(Series { key, histogram }),
        }
    }

    /// Snapshots of every route's in-process summary.
    pub(crate) fn summaries(&self) -> Vec<RouteSummary> {
        let routes = read(&self.routes);
        let all = [&self.unmatched, &self.overflow]
            .into_iter()
            .chain(routes.values());
        all.filter_map(|r| Some(r.summary.as_ref()?.snapshot(r.name.to_string())))
            .collect()
    }
}

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    // A panic while holding the lock cannot leave the maps inconsistent.
    lock.read().unwrap_or_else(|e| e.into_inner())
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(|e| e.into_inner())
}

/// The measurement of one request: created when it enters, moved from the
/// response future into the body, finished once. Dropping it unfinished
/// records the request as cancelled; dropping it always ends the request in
/// the active-requests gauge, so the gauge cannot leak.
#[derive(Debug)]
pub(crate) struct Recording {
    registry: Arc<Registry>,
    route: Option<RouteRef>,
    start: Instant,
    active: Gauge,
    key: SeriesKey,
    grpc: bool,
    head: bool,
    /// When the clock stopped at the response headers.
    stopped: Option<Duration>,
}

impl Recording {
    pub(crate) fn start(
        registry: Arc<Registry>,
        route: RouteRef,
        method: u8,
        grpc: bool,
        head: bool,
        start: Instant,
    ) -> Self {
        let active = registry.active(method);
        active.increment(1.0);
        Self {
            registry,
            route: Some(route),
            start,
            active,
            key: SeriesKey {
                method,
                status: None,
                grpc: None,
                failure: None,
            },
            grpc,
            head,
            stopped: None,
        }
    }

    pub(crate) fn is_grpc(&self) -> bool {
        self.grpc
    }

    /// The response headers arrived.
    pub(crate) fn headers(&mut self, status: StatusCode, grpc_status: Option<u8>) {
        self.key.status = Some(status);
        if self.grpc {
            self.key.grpc = grpc_status;
        }
        if let Some(route) = &self.route {
            if route.stop_at_headers(&self.registry) {
                self.stopped = Some(self.start.elapsed());
                // Only a gRPC status still to come in trailers holds the record back.
                if !self.grpc || grpc_status.is_some() {
                    self.finish();
                }
            }
        }
    }

    /// Trailers arrived.
    pub(crate) fn grpc_status(&mut self, code: u8) {
        if self.grpc {
            self.key.grpc = Some(code);
        }
    }

    pub(crate) fn fail(&mut self, failure: Failure) {
        if self.route.is_some() {
            self.key.failure = Some(failure);
            self.finish();
        }
    }

    /// Records the request, once.
    pub(crate) fn finish(&mut self) {
        if let Some(route) = self.route.take() {
            if self.grpc && self.key.grpc.is_none() && self.key.failure.is_none() {
                // A gRPC response that ended without a status.
                if self.key.status == Some(StatusCode::OK) {
                    self.key.failure = Some(Failure::Service);
                }
            }
            let elapsed = self.stopped.unwrap_or_else(|| self.start.elapsed());
            self.registry.record(route, self.key, elapsed);
        }
    }
}

impl Drop for Recording {
    fn drop(&mut self) {
        // hyper drops a HEAD response's body unpolled: that is its end.
        let ended = self.head && self.key.status.is_some();
        if self.route.is_some() && !ended {
            self.key.failure = Some(Failure::Cancelled);
        }
        self.finish();
        self.active.decrement(1.0);
    }
}
