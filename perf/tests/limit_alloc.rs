//! Admit + release allocate nothing: counted with a global allocator (here,
//! not in the main crate, which forbids `unsafe` even in its tests).

use std::{
    alloc::{GlobalAlloc, Layout, System},
    convert::Infallible,
    future::Future,
    pin::pin,
    sync::atomic::{AtomicUsize, Ordering::Relaxed},
    task::{Context, Poll, Waker},
};

use axum::body::HttpBody as Body;
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use tower::{Layer, Service};
use tower_perf::limit::AdaptiveLimitLayer;

struct Counting;

static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards every call to the system allocator unchanged.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Relaxed);
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

#[test]
fn admit_and_release_do_not_allocate() {
    let inner = tower::service_fn(|_: Request<()>| {
        std::future::ready(Ok::<_, Infallible>(Response::new(Full::new(
            Bytes::from_static(b"ok"),
        ))))
    });
    let layer = AdaptiveLimitLayer::new();
    let handle = layer.handle();
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
    // Warm up: the first window, lazily initialised statics.
    for _ in 0..100 {
        round_trip();
    }
    // The counter sees allocations.
    let probe = ALLOCATIONS.load(Relaxed);
    drop(std::hint::black_box(Box::new(1u64)));
    assert_eq!(ALLOCATIONS.load(Relaxed), probe + 1);

    let before = ALLOCATIONS.load(Relaxed);
    for _ in 0..10_000 {
        round_trip();
    }
    let allocations = ALLOCATIONS.load(Relaxed) - before;
    assert_eq!(allocations, 0, "admit + release allocated");
    assert_eq!(handle.counters().admitted, 10_100);
    assert_eq!(handle.in_flight(), 0);
}
