//! Allocations of an uncontended coalesced request: the leader's boxed
//! upstream call and nothing else (its key is hashed and kept without an
//! allocation while it fits inline). Counted per thread by the allocator
//! in `counting/`.

use tower::Layer;
use tower_perf::coalesce::CoalesceLayer;

mod counting;
mod round_trips;

use counting::assert_counting;
use round_trips::{allocations_per_request, handler};

#[test]
fn an_uncontended_request_allocates_only_its_boxed_call() {
    assert_counting();

    let hot = |_| "http://api.example.com/items/42?lang=en".to_owned();
    let bare = allocations_per_request(handler(&[], b"ok"), hot, 2);
    let coalesced =
        allocations_per_request(CoalesceLayer::new().layer(handler(&[], b"ok")), hot, 2);
    println!("allocations per request, one key: bare {bare}, coalesce {coalesced}");
    assert_eq!(bare, 0.0);
    assert_eq!(coalesced, 1.0, "the boxed upstream call only");

    // Distinct keys: each is copied into the map, inline while it is short
    // (the map's table is reused once swept).
    let distinct = |i| format!("http://api.example.com/items/{i}?lang=en");
    let coalesced =
        allocations_per_request(CoalesceLayer::new().layer(handler(&[], b"ok")), distinct, 2);
    println!("allocations per request, distinct keys: coalesce {coalesced}");
    assert!((1.0..1.01).contains(&coalesced), "{coalesced}");

    // A long key is copied to the heap.
    let long = |i| format!("http://api.example.com/items/{i}?q={}", "x".repeat(100));
    let coalesced =
        allocations_per_request(CoalesceLayer::new().layer(handler(&[], b"ok")), long, 2);
    println!("allocations per request, distinct long keys: coalesce {coalesced}");
    assert!((2.0..2.01).contains(&coalesced), "{coalesced}");
}
