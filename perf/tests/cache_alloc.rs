//! Allocations of the cache's two common paths, counted per thread by the
//! allocator in `counting/`:
//!
//! - a hit: the one clone of the shared header map (its table and its
//!   entries) and nothing else: the key is built on the stack and the
//!   lookup borrows it;
//! - a response passed through (no freshness information): the owned key
//!   and the forwarded request's bookkeeping, kept until the response.

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
use tower_perf::cache::CacheLayer;

mod counting;

use counting::{allocations, assert_counting};

const REQUESTS: usize = 10_000;
const WARM_UP: usize = 100;

/// Allocations per request of `REQUESTS` sequential round trips through
/// `svc`, each request built before counting starts, after a warm-up.
fn allocations_per_request<S, B>(mut svc: S, uri: &str, body_len: usize) -> f64
where
    S: Service<Request<Full<Bytes>>, Response = Response<B>, Error = Infallible>,
    B: Body<Data = Bytes>,
{
    let requests: Vec<_> = (0..REQUESTS + WARM_UP)
        .map(|_| Request::get(uri).body(Full::default()).unwrap())
        .collect();
    let mut cx = Context::from_waker(Waker::noop());
    let mut before = allocations();
    for (i, req) in requests.into_iter().enumerate() {
        if i == WARM_UP {
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
        assert_eq!(read, body_len);
    }
    (allocations() - before) as f64 / REQUESTS as f64
}

/// A handler answering `body` with `headers`, from static data.
fn handler(
    headers: &'static [(&'static str, &'static str)],
    body: &'static [u8],
) -> impl Service<
    Request<Full<Bytes>>,
    Response = Response<Full<Bytes>>,
    Error = Infallible,
    Future: Send,
> + Clone
       + Send
       + 'static {
    tower::service_fn(move |_: Request<Full<Bytes>>| {
        let mut res = Response::new(Full::new(Bytes::from_static(body)));
        for (name, value) in headers {
            res.headers_mut().insert(*name, value.parse().unwrap());
        }
        std::future::ready(Ok::<_, Infallible>(res))
    })
}

#[test]
fn a_hit_allocates_only_its_header_map() {
    assert_counting();
    const BODY: &[u8] = &[b'x'; 1024];
    let headers = &[
        ("cache-control", "max-age=3600"),
        ("content-type", "text/plain"),
    ];
    let uri = "http://api.example.com/static/1k?lang=en";
    let svc = CacheLayer::new().layer(handler(headers, BODY));
    let per_hit = allocations_per_request(svc, uri, BODY.len());
    // The map's index table and its entries.
    assert!(per_hit <= 2.0, "{per_hit} allocations per hit");
    println!("cache hit: {per_hit} allocations per request");
}

#[test]
fn a_response_passed_through_allocates_its_key_and_bookkeeping() {
    assert_counting();
    // A response with a header already has a map to add `Cache-Status` to.
    let headers = &[("content-type", "text/plain")];
    let bare = allocations_per_request(handler(headers, b"ok"), "http://a.example/x", 2);
    let svc = CacheLayer::new().layer(handler(headers, b"ok"));
    let passed = allocations_per_request(svc, "http://a.example/x", 2);
    // The owned key and the boxed bookkeeping of the forwarded request.
    assert!(passed - bare <= 2.0, "{passed} against bare {bare}");
    println!("passed through: {passed} allocations per request (bare {bare})");
}
