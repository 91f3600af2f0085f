//! Once a label set has been seen, a request through `LatencyLayer`
//! allocates nothing, counted per thread by the allocator in `counting/`.
//!
//! The recorder is a real one whose own handles do not allocate (atomic
//! counts), so any allocation counted is the layer's.

use std::{
    convert::Infallible,
    future::Future,
    pin::pin,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    task::{Context, Poll, Waker},
};

use axum::body::HttpBody as Body;
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use metrics::{
    Counter, Gauge, Histogram, HistogramFn, Key, KeyName, Metadata, Recorder, SharedString, Unit,
};
use tower::{Layer, Service};
use tower_perf::latency::LatencyLayer;

mod counting;

use counting::{allocations, assert_counting};

/// Counts samples; its gauges are atomics. Registering allocates, using
/// the handles does not.
#[derive(Default)]
struct Samples {
    histogram: Arc<Count>,
    gauge: Arc<AtomicU64>,
}

#[derive(Default)]
struct Count(AtomicU64);

impl HistogramFn for Count {
    fn record(&self, _value: f64) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

impl Recorder for Samples {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}

    fn register_counter(&self, _: &Key, _: &Metadata<'_>) -> Counter {
        Counter::noop()
    }

    fn register_gauge(&self, _: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::from_arc(self.gauge.clone())
    }

    fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> Histogram {
        Histogram::from_arc(self.histogram.clone())
    }
}

#[test]
fn a_request_on_a_seen_label_set_does_not_allocate() {
    let recorder = Samples::default();
    let _guard = metrics::set_default_local_recorder(&recorder);
    let inner = tower::service_fn(|_: Request<()>| {
        std::future::ready(Ok::<_, Infallible>(Response::new(Full::new(
            Bytes::from_static(b"ok"),
        ))))
    });
    let layer = LatencyLayer::new().route_fn(|_: &Request<()>| Some("/users/{id}"));
    let mut svc = layer.layer(inner);
    let mut cx = Context::from_waker(Waker::noop());
    let mut round_trip = || {
        assert!(svc.poll_ready(&mut cx).is_ready());
        let fut = pin!(svc.call(Request::new(())));
        let Poll::Ready(Ok(res)) = fut.poll(&mut cx) else {
            panic!("ready at once")
        };
        let mut body = pin!(res.into_body());
        while let Poll::Ready(Some(_)) = body.as_mut().poll_frame(&mut cx) {}
    };
    // The first request admits the route and its series and resolves the handles.
    round_trip();
    assert_counting();

    let before = allocations();
    for _ in 0..10_000 {
        round_trip();
    }
    let allocations = allocations() - before;
    assert_eq!(allocations, 0, "a request on a seen label set allocated");
    assert_eq!(recorder.histogram.0.load(Ordering::Relaxed), 10_001);
    assert_eq!(recorder.gauge.load(Ordering::Relaxed), 0.0f64.to_bits());
}
