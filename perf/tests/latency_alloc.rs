//! Once a label set has been seen, a request through `LatencyLayer`
//! allocates nothing: counted with a global allocator (here, not in the main
//! crate, which forbids `unsafe` even in its tests), per thread.
//!
//! The recorder is a real one whose own handles do not allocate (atomic
//! counts), so any allocation counted is the layer's.

use std::{
    alloc::{GlobalAlloc, Layout, System},
    cell::Cell,
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

struct Counting;

thread_local! {
    // Const-initialised and without a destructor: reading it never allocates.
    static ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
}

fn allocations() -> usize {
    ALLOCATIONS.with(Cell::get)
}

// SAFETY: forwards every call to the system allocator unchanged.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // `try_with`: the slot is gone while a thread is being torn down.
        let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
        // SAFETY: the caller's contract is passed on as is.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract is passed on as is.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

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
    // The counter sees allocations.
    let probe = allocations();
    drop(std::hint::black_box(Box::new(1u64)));
    assert_eq!(allocations(), probe + 1);

    let before = allocations();
    for _ in 0..10_000 {
        round_trip();
    }
    let allocations = allocations() - before;
    assert_eq!(allocations, 0, "a request on a seen label set allocated");
    assert_eq!(recorder.histogram.0.load(Ordering::Relaxed), 10_001);
    assert_eq!(recorder.gauge.load(Ordering::Relaxed), 0.0f64.to_bits());
}
