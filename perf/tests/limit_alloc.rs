//! Admit + release allocate nothing, counted per thread by the allocator in
//! `counting/`.

use std::{
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

mod counting;

use counting::{allocations, assert_counting};

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
    assert_counting();

    let before = allocations();
    for _ in 0..10_000 {
        round_trip();
    }
    let allocations = allocations() - before;
    assert_eq!(allocations, 0, "admit + release allocated");
    assert_eq!(handle.counters().admitted, 10_100);
    assert_eq!(handle.in_flight(), 0);
}
