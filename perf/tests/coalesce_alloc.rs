//! Allocations of an uncontended coalesced request: the leader's boxed
//! upstream call and nothing else (its key is hashed and kept without an
//! allocation while it fits inline). Counted per thread by the allocator
//! in `counting/`.

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
use tower_perf::coalesce::CoalesceLayer;

mod counting;

use counting::{allocations, assert_counting};

const REQUESTS: usize = 10_000;

/// Allocations per request of `REQUESTS` sequential round trips through
/// `svc`, each request built before counting starts, after a warm-up (the
/// map's table, lazily initialised statics).
fn allocations_per_request<S, B>(mut svc: S, uri: impl Fn(usize) -> String) -> f64
where
    S: Service<Request<Full<Bytes>>, Response = Response<B>, Error = Infallible>,
    B: Body<Data = Bytes>,
{
    let requests: Vec<_> = (0..REQUESTS + 100)
        .map(|i| Request::get(uri(i)).body(Full::default()).unwrap())
        .collect();
    let mut cx = Context::from_waker(Waker::noop());
    let mut before = allocations();
    for (i, req) in requests.into_iter().enumerate() {
        if i == 100 {
            before = allocations();
        }
        assert!(svc.poll_ready(&mut cx).is_ready());
        let fut = pin!(svc.call(req));
        let Poll::Ready(Ok(res)) = fut.poll(&mut cx) else {
            panic!("ready at once")
        };
        let mut body = pin!(res.into_body());
        let mut read = 0;
        while let Poll::Ready(Some(frame)) = body.as_mut().poll_frame(&mut cx) {
            read += frame
                .ok()
                .and_then(|f| f.into_data().ok())
                .map_or(0, |d| d.len());
        }
        assert_eq!(read, 2);
    }
    (allocations() - before) as f64 / REQUESTS as f64
}

fn handler() -> impl Service<
    Request<Full<Bytes>>,
    Response = Response<Full<Bytes>>,
    Error = Infallible,
    Future: Send,
> + Clone
       + Send
       + 'static {
    tower::service_fn(|_: Request<Full<Bytes>>| {
        std::future::ready(Ok::<_, Infallible>(Response::new(Full::new(
            Bytes::from_static(b"ok"),
        ))))
    })
}

#[test]
fn an_uncontended_request_allocates_only_its_boxed_call() {
    assert_counting();

    let hot = |_| "http://api.example.com/items/42?lang=en".to_owned();
    let bare = allocations_per_request(handler(), hot);
    let coalesced = allocations_per_request(CoalesceLayer::new().layer(handler()), hot);
    println!("allocations per request, one key: bare {bare}, coalesce {coalesced}");
    assert_eq!(bare, 0.0);
    assert_eq!(coalesced, 1.0, "the boxed upstream call only");

    // Distinct keys: each is copied into the map, inline while it is short
    // (the map's table is reused once swept).
    let distinct = |i| format!("http://api.example.com/items/{i}?lang=en");
    let coalesced = allocations_per_request(CoalesceLayer::new().layer(handler()), distinct);
    println!("allocations per request, distinct keys: coalesce {coalesced}");
    assert!((1.0..1.01).contains(&coalesced), "{coalesced}");

    // A long key is copied to the heap.
    let long = |i| format!("http://api.example.com/items/{i}?q={}", "x".repeat(100));
    let coalesced = allocations_per_request(CoalesceLayer::new().layer(handler()), long);
    println!("allocations per request, distinct long keys: coalesce {coalesced}");
    assert!((2.0..2.01).contains(&coalesced), "{coalesced}");
}
