//! Allocations of the cache's two common paths, counted per thread by the
//! allocator in `counting/`:
//!
//! - a hit: the one clone of the shared header map (its table and its
//!   entries) and nothing else: the key is built on the stack and the
//!   lookup borrows it;
//! - a response passed through (no freshness information): the owned key
//!   and the forwarded request's bookkeeping, kept until the response.

use tower::Layer;
use tower_perf::cache::CacheLayer;

mod counting;
mod round_trips;

use counting::assert_counting;
use round_trips::{allocations_per_request, handler};

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
    let per_hit = allocations_per_request(svc, |_| uri.to_owned(), BODY.len());
    // The map's index table and its entries.
    assert!(per_hit <= 2.0, "{per_hit} allocations per hit");
    println!("cache hit: {per_hit} allocations per request");
}

#[test]
fn a_response_passed_through_allocates_its_key_and_bookkeeping() {
    assert_counting();
    // A response with a header already has a map to add `Cache-Status` to.
    let headers = &[("content-type", "text/plain")];
    let uri = |_| "http://a.example/x".to_owned();
    let bare = allocations_per_request(handler(headers, b"ok"), uri, 2);
    let svc = CacheLayer::new().layer(handler(headers, b"ok"));
    let passed = allocations_per_request(svc, uri, 2);
    // The owned key and the boxed bookkeeping of the forwarded request.
    assert!(passed - bare <= 2.0, "{passed} against bare {bare}");
    println!("passed through: {passed} allocations per request (bare {bare})");
}
