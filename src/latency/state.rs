//! The registry shared by every clone of one layer: admitted routes, their
//! series and the metric handles resolved for them (see `handles`).

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex, OnceLock, RwLock,
    },
    time::Duration,
};

use super::{
    clock::{Clock, Start},
    handles::{Handle, Handles, Recorders},
    labels::{grpc_code, Failure, Names, SeriesKey, GRPC_UNIMPLEMENTED, METHODS},
    summary::{Buckets, RouteSummary},
    Naming,
};
use crate::route::UNMATCHED;
use http::{HeaderMap, StatusCode};
use metrics::{Gauge, Histogram, Key, KeyName, Label, Metadata, Recorder, SharedString, Unit};

static METADATA: Metadata<'static> =
    Metadata::new(module_path!(), metrics::Level::INFO, Some(module_path!()));

/// Slots in the route lookup cache.
const HINTS: usize = 64;

/// The route label of the overflow series in the in-process summary.
const OVERFLOW: &str = "otel.metric.overflow";

/// Configuration fixed when the layer is built.
#[derive(Clone, Debug)]
pub(crate) struct Config {
    pub(crate) naming: Naming,
    pub(crate) max_series: usize,
    pub(crate) stop_at_headers: bool,
    pub(crate) stop_at_headers_routes: Vec<Arc<str>>,
    pub(crate) summary: bool,
    pub(crate) clock: Clock,
}

impl Config {
    fn stops_at_headers(&self, route: &str) -> bool {
        self.stop_at_headers || self.stop_at_headers_routes.iter().any(|r| &**r == route)
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            naming: Naming::OpenTelemetry,
            max_series: 2000,
            stop_at_headers: false,
            stop_at_headers_routes: Vec::new(),
            summary: false,
            clock: Clock::default(),
        }
    }
}

#[derive(Debug)]
pub(crate) struct Registry {
    pub(crate) config: Config,
    names: &'static Names,
    routes: RwLock<HashMap<Arc<str>, Arc<Route>>>,
    hints: [OnceLock<Arc<Route>>; HINTS],
    unmatched: Arc<Route>,
    overflow: Arc<Route>,
    /// Series created so far, against `config.max_series`.
    series: AtomicUsize,
    recorders: Recorders,
    active: [Handles<Gauge>; METHODS.len()],
    /// The recorder the metrics were last described to.
    described: AtomicUsize,
}

#[derive(Debug)]
pub(crate) struct Route {
    name: Arc<str>,
    overflow: bool,
    stop_at_headers: bool,
    /// The first series, read without locks; the rest behind `more`.
    series: [OnceLock<Series>; FIXED_SERIES],
    more: RwLock<Vec<Series>>,
    /// Serialises adding series.
    adding: Mutex<()>,
    summary: Option<Buckets>,
}

/// Series per route read without a lock: method x status x outcome rarely
/// exceeds this.
const FIXED_SERIES: usize = 8;

#[derive(Debug)]
struct Series {
    key: SeriesKey,
    histogram: Handles<Histogram>,
}

/// The route of a request, as known when it enters.
#[derive(Debug)]
pub(crate) enum RouteRef {
    /// The route in a lookup-cache slot. Slots are written once, so the
    /// index is enough: no reference count to touch per request.
    Hint(u8),
    Unmatched,
    /// A new route while the registry is full: it can never be admitted.
    /// Carries whether its name stops the clock at the headers.
    Overflow(bool),
    Known(Arc<Route>),
    /// Not admitted yet: admitted (under the cap) once an outcome is recorded.
    /// Boxed so that a route is two words: only a route's first requests
    /// (and unknown gRPC methods) come here, and they allocate the name anyway.
    New(Box<Arc<str>>),
}

impl Route {
    fn new(name: Arc<str>, overflow: bool, stop_at_headers: bool, summary: bool) -> Arc<Self> {
        Arc::new(Self {
            name,
            overflow,
            stop_at_headers,
            series: Default::default(),
            more: RwLock::default(),
            adding: Mutex::default(),
            summary: summary.then(Buckets::new),
        })
    }

    /// Runs `f` on the series of `key`, if it exists. The overflow route
    /// has one series for every key.
    #[inline]
    fn with_series<T>(&self, key: SeriesKey, f: impl FnOnce(&Series) -> T) -> Option<T> {
        for slot in &self.series {
            match slot.get() {
                Some(series) if self.overflow || series.key == key => return Some(f(series)),
                Some(_) => continue,
                None => return None,
            }
        }
        self.with_more_series(key, f)
    }

    #[cold]
    fn with_more_series<T>(&self, key: SeriesKey, f: impl FnOnce(&Series) -> T) -> Option<T> {
        let more = read(&self.more);
        more.iter().find(|s| s.key == key).map(f)
    }

    /// Adds the series of `key` unless `admit` refuses; true if it exists now.
    fn add_series(&self, key: SeriesKey, admit: impl FnOnce() -> bool) -> bool {
        let _adding = self.adding.lock().unwrap_or_else(|e| e.into_inner());
        if self.with_series(key, |_| ()).is_some() {
            return true;
        }
        if !admit() {
            return false;
        }
        let series = Series {
            key,
            histogram: Handles::default(),
        };
        match self.series.iter().find(|slot| slot.get().is_none()) {
            // Only this thread sets slots (under `adding`), so the slot is free.
            Some(slot) => drop(slot.set(series)),
            None => write(&self.more).push(series),
        }
        true
    }
}

impl Registry {
    pub(crate) fn new(config: Config) -> Self {
        let names = config.naming.names();
        let route = |name: &str, overflow| {
            Route::new(
                name.into(),
                overflow,
                config.stop_at_headers,
                config.summary,
            )
        };
        Self {
            names,
            routes: RwLock::default(),
            hints: std::array::from_fn(|_| OnceLock::new()),
            unmatched: route(UNMATCHED, false),
            overflow: route(OVERFLOW, true),
            series: AtomicUsize::new(0),
            recorders: Recorders::default(),
            active: Default::default(),
            described: AtomicUsize::new(0),
            config,
        }
    }

    /// The route named `name`, without admitting it.
    ///
    /// A small direct-mapped cache, indexed by the label's address, spares
    /// the map lookup for labels that live at a stable address: axum's
    /// `MatchedPath` (shared per route) and `&'static str`s from a route fn.
    /// The address only picks the slot; the name is always compared.
    #[inline]
    pub(crate) fn lookup(&self, name: &str) -> RouteRef {
        let i = (name.as_ptr() as usize >> 3) % HINTS;
        if self.hints[i].get().is_some_and(|r| &*r.name == name) {
            // In line: the caller gets the route in a register.
            return RouteRef::Hint(i as u8);
        }
        self.lookup_map(name, i)
    }

    #[inline(never)]
    fn lookup_map(&self, name: &str, i: usize) -> RouteRef {
        let slot = &self.hints[i];
        let routes = read(&self.routes);
        if let Some(route) = routes.get(name) {
            let _ = slot.set(route.clone());
            return RouteRef::Known(route.clone());
        }
        // Both counts only grow: a full registry stays full, so the name
        // need not be copied to learn that it goes to the overflow series.
        if self.is_full(routes.len()) {
            return RouteRef::Overflow(self.config.stops_at_headers(name));
        }
        RouteRef::New(Box::new(name.into()))
    }

    #[inline]
    fn is_full(&self, routes: usize) -> bool {
        routes >= self.config.max_series
            || self.series.load(Ordering::Relaxed) >= self.config.max_series
    }

    #[inline]
    fn hint(&self, i: u8) -> &Route {
        self.hints[usize::from(i)]
            .get()
            .expect("a hint slot is set before its index is handed out")
    }

    /// Whether the clock of a request on `route` stops at the headers.
    fn stops_at_headers(&self, route: &RouteRef) -> bool {
        match route {
            RouteRef::Hint(i) => self.hint(*i).stop_at_headers,
            RouteRef::Unmatched => self.unmatched.stop_at_headers,
            RouteRef::Known(route) => route.stop_at_headers,
            RouteRef::Overflow(stop_at_headers) => *stop_at_headers,
            RouteRef::New(name) => self.config.stops_at_headers(name),
        }
    }

    /// Admits `name` if the cap allows, else the overflow route.
    fn admit(&self, name: &Arc<str>) -> Arc<Route> {
        let mut routes = write(&self.routes);
        if let Some(route) = routes.get(name) {
            return route.clone();
        }
        if self.is_full(routes.len()) {
            return self.overflow.clone();
        }
        let stop_at_headers = self.config.stops_at_headers(name);
        let route = Route::new(name.clone(), false, stop_at_headers, self.config.summary);
        routes.insert(name.clone(), route.clone());
        route
    }

    /// Describes both metrics to `recorder` once.
    fn describe(&self, recorder: &dyn Recorder) {
        let id = recorder as *const dyn Recorder as *const () as usize;
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

    /// The active-requests gauge for `method`, for `recorder` in `slot`.
    #[inline]
    fn active(&self, method: u8, slot: u8, recorder: &dyn Recorder) -> Handle<'_, Gauge> {
        self.active[usize::from(method)].get(slot, recorder, |recorder| {
            self.describe(recorder);
            let method = SharedString::const_str(METHODS[usize::from(method)]);
            let labels = vec![Label::new(self.names.method, method)];
            recorder.register_gauge(&Key::from_parts(self.names.active, labels), &METADATA)
        })
    }

    /// Counts a request of `method` in the active-requests gauge of the
    /// current recorder: that recorder's slot, and its gauge if the slot is
    /// the spare one.
    #[inline(never)]
    fn enter(&self, method: u8) -> (u8, Option<Box<Gauge>>) {
        metrics::with_recorder(|recorder| {
            let slot = self.recorders.slot(recorder);
            match self.active(method, slot, recorder) {
                Handle::Fixed(gauge) => {
                    gauge.increment(1.0);
                    (slot, None)
                }
                Handle::Spare(gauge) => {
                    gauge.increment(1.0);
                    (slot, Some(Box::new(gauge)))
                }
            }
        })
    }

    /// Records one finished request, through the recorder of `slot`.
    #[inline]
    fn record(&self, route: &RouteRef, key: SeriesKey, elapsed: Duration, slot: u8) {
        let admitted;
        let route: &Route = match route {
            _ if key.grpc == Some(GRPC_UNIMPLEMENTED) => &self.unmatched,
            RouteRef::Hint(i) => self.hint(*i),
            RouteRef::Unmatched => &self.unmatched,
            RouteRef::Overflow(_) => &self.overflow,
            RouteRef::Known(route) => route,
            RouteRef::New(name) => {
                admitted = self.admit(name);
                &admitted
            }
        };
        if let Some(summary) = &route.summary {
            summary.record(elapsed);
        }
        self.record_series(route, key, elapsed.as_secs_f64(), slot);
    }

    #[inline]
    fn record_series(&self, route: &Route, key: SeriesKey, seconds: f64, slot: u8) {
        let found = route.with_series(key, |series| match series.histogram.resolved(slot) {
            Some(histogram) => histogram.record(seconds),
            None => self.resolve(route, series, seconds),
        });
        if found.is_none() {
            self.add_series(route, key, seconds, slot);
        }
    }

    /// The first sample of a series for a recorder, or one for a spare
    /// recorder: resolves its histogram through the recorder current now.
    #[cold]
    fn resolve(&self, route: &Route, series: &Series, seconds: f64) {
        metrics::with_recorder(|recorder| {
            let slot = self.recorders.slot(recorder);
            let histogram = series.histogram.get(slot, recorder, |recorder| {
                self.describe(recorder);
                let labels = if route.overflow {
                    vec![Label::new(self.names.overflow, "true")]
                } else {
                    series
                        .key
                        .labels(self.names, SharedString::from(route.name.clone()))
                };
                let key = Key::from_parts(self.names.duration, labels);
                recorder.register_histogram(&key, &METADATA)
            });
            histogram.record(seconds);
        });
    }

    /// The first sample of a label set: admits it under the cap.
    #[cold]
    fn add_series(&self, route: &Route, key: SeriesKey, seconds: f64, slot: u8) {
        let max = self.config.max_series;
        let admit = || {
            route.overflow
                || self
                    .series
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                        (n < max).then_some(n + 1)
                    })
                    .is_ok()
        };
        if route.add_series(key, admit) {
            route.with_series(key, |series| self.resolve(route, series, seconds));
        } else {
            self.record_series(&self.overflow, key, seconds, slot);
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
///
/// The request is counted by the recorder current when it entered: its
/// handle slot is found once, then every handle is one atomic load away.
/// (The first sample of a series for a recorder is resolved through the
/// recorder current when the request ends, the same one unless a test
/// swaps recorders mid-request.)
#[derive(Debug)]
pub(crate) struct Recording {
    registry: Arc<Registry>,
    start: Start,
    route: RouteRef,
    /// The active-requests gauge of a spare recorder (boxed: the rare
    /// path); `None` when it is in write-once slot `slot`.
    spare: Option<Box<Gauge>>,
    key: SeriesKey,
    slot: u8,
    grpc: bool,
    head: bool,
    stop_at_headers: bool,
    finished: bool,
}

impl Recording {
    #[inline]
    pub(crate) fn start(
        registry: Arc<Registry>,
        route: RouteRef,
        method: u8,
        grpc: bool,
        head: bool,
        start: Start,
    ) -> Self {
        let (slot, spare) = registry.enter(method);
        Self {
            // Routes only matter when some are configured.
            stop_at_headers: registry.config.stop_at_headers
                || (!registry.config.stop_at_headers_routes.is_empty()
                    && registry.stops_at_headers(&route)),
            registry,
            start,
            route,
            spare,
            key: SeriesKey {
                method,
                status: None,
                grpc: None,
                failure: None,
            },
            slot,
            grpc,
            head,
            finished: false,
        }
    }

    /// Whether the response headers matter beyond their status: for gRPC
    /// (a trailers-only response's status) or to stop the clock there.
    #[inline]
    pub(crate) fn reads_headers(&self) -> bool {
        self.grpc || self.stop_at_headers
    }

    /// The response status, when no more of the headers matters.
    #[inline]
    pub(crate) fn status(&mut self, status: StatusCode) {
        self.key.status = Some(status);
    }

    /// The response headers arrived; `headers` reads a trailers-only gRPC
    /// response's status.
    pub(crate) fn headers(&mut self, status: StatusCode, headers: &HeaderMap) {
        self.key.status = Some(status);
        let grpc_status = if self.grpc {
            self.key.grpc = headers.get("grpc-status").map(grpc_code);
            self.key.grpc
        } else {
            None
        };
        if self.stop_at_headers && !self.finished {
            self.start = self.registry.config.clock.stop(self.start);
            // Only a gRPC status still to come in trailers holds the record back.
            if !self.grpc || grpc_status.is_some() {
                self.finish();
            }
        }
    }

    /// Trailers arrived: a gRPC response's status.
    #[inline(never)]
    pub(crate) fn trailers(&mut self, trailers: &HeaderMap) {
        if let Some(status) = trailers.get("grpc-status").filter(|_| self.grpc) {
            self.key.grpc = Some(grpc_code(status));
        }
    }

    pub(crate) fn fail(&mut self, failure: Failure) {
        if !self.finished {
            self.key.failure = Some(failure);
            self.finish();
        }
    }

    /// Records the request and leaves the gauge.
    #[inline(never)]
    pub(crate) fn end(mut self) {
        self.finish();
    }

    /// Records the request, once.
    #[inline]
    pub(crate) fn finish(&mut self) {
        if !self.finished {
            self.record();
        }
    }

    fn record(&mut self) {
        self.finished = true;
        if self.grpc && self.key.grpc.is_none() && self.key.failure.is_none() {
            // A gRPC response that ended without a status.
            if self.key.status == Some(StatusCode::OK) {
                self.key.failure = Some(Failure::Service);
            }
        }
        let elapsed = self.registry.config.clock.elapsed(self.start);
        self.registry
            .record(&self.route, self.key, elapsed, self.slot);
    }
}

impl Recording {
    /// Dropped unfinished: the client went away, unless this is a HEAD
    /// response's body, which hyper drops unpolled (that is its end).
    #[cold]
    fn end_early(&mut self) {
        if !(self.head && self.key.status.is_some()) {
            self.key.failure = Some(Failure::Cancelled);
        }
        self.record();
    }
}

impl Drop for Recording {
    fn drop(&mut self) {
        if !self.finished {
            self.end_early();
        }
        // The gauge incremented when the request entered, whatever the recorder is now.
        match &self.spare {
            Some(gauge) => gauge.decrement(1.0),
            None => self.registry.active[usize::from(self.key.method)]
                .resolved(self.slot)
                .expect("a fixed gauge is resolved before the request starts")
                .decrement(1.0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};

    /// Histogram samples and the gauge's change since the last call (a
    /// snapshot drains both) in `recorder`.
    fn seen(recorder: &DebuggingRecorder) -> (usize, f64) {
        let mut samples = 0;
        let mut gauge = 0.0;
        for (_, _, _, value) in recorder.snapshotter().snapshot().into_vec() {
            match value {
                DebugValue::Histogram(v) => samples += v.len(),
                DebugValue::Gauge(g) => gauge += g.into_inner(),
                DebugValue::Counter(_) => {}
            }
        }
        (samples, gauge)
    }

    #[test]
    fn each_recorder_gets_its_requests_past_the_two_fixed_slots() {
        let registry = Arc::new(Registry::new(Config::default()));
        let request = || {
            let route = registry.lookup("/r");
            let mut recording = Recording::start(
                registry.clone(),
                route,
                0,
                false,
                false,
                Clock::default().now(),
            );
            recording.status(StatusCode::OK);
            recording.finish();
        };
        let recorders: Vec<_> = (0..4).map(|_| DebuggingRecorder::new()).collect();
        for _ in 0..3 {
            for recorder in &recorders {
                metrics::with_local_recorder(recorder, request);
            }
            for recorder in &recorders {
                assert_eq!(seen(recorder), (1, 0.0));
            }
        }
        // A request that entered under one recorder is counted by that one,
        // whichever is current when it ends.
        let (a, b) = (&recorders[0], &recorders[3]);
        let mut open = metrics::with_local_recorder(a, || {
            Recording::start(
                registry.clone(),
                registry.lookup("/r"),
                0,
                false,
                false,
                Clock::default().now(),
            )
        });
        assert_eq!(seen(a), (0, 1.0));
        metrics::with_local_recorder(b, || {
            open.status(StatusCode::OK);
            open.finish();
            drop(open);
        });
        assert_eq!((seen(a), seen(b)), ((1, -1.0), (0, 0.0)));
    }
}
