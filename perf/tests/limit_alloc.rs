//! Admit + release allocate nothing: counted with a global allocator (here,
//! not in the main crate, which forbids `unsafe` even in its tests).
//!
//! Counted per thread: the test harness's own thread allocates while the
//! test runs, and a shared count made this test fail on a loaded machine.

use std::{
    alloc::{GlobalAlloc, Layout, System},
    cell::Cell,
    convert::Infallible,
    future::Future,
    pin::pin,
    task::{Context, Poll, Waker},
};

use axum::body::HttpBody as Body;
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use tower::{Layer, Service};
use tower_perf::limit::AdaptiveLimitLayer;

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
    let probe = allocations();
    drop(std::hint::black_box(Box::new(1u64)));
    assert_eq!(allocations(), probe + 1);

    let before = allocations();
    for _ in 0..10_000 {
        round_trip();
    }
    let allocations = allocations() - before;
    assert_eq!(allocations, 0, "admit + release allocated");
    assert_eq!(handle.counters().admitted, 10_100);
    assert_eq!(handle.in_flight(), 0);
}
