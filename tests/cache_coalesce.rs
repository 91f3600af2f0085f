//! The cache with the coalescing layer beneath it, through a real axum server
//! over TCP: concurrent misses for one key make one upstream fetch, and the
//! responses shared by coalescing say `collapsed` in `Cache-Status`.
#![cfg(all(feature = "cache", feature = "coalesce"))]

use std::{
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use axum::{routing::get, Router};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::{client::legacy::Client, rt::TokioExecutor};
use tokio::sync::Notify;
use tower_perf::{cache::CacheLayer, coalesce::CoalesceLayer};

#[tokio::test]
async fn concurrent_misses_make_one_fetch_and_are_marked_collapsed() {
    const CLIENTS: usize = 50;
    let calls = Arc::new(AtomicUsize::new(0));
    let release = Arc::new(Notify::new());
    let arrived = Arc::new(AtomicUsize::new(0));
    let app = Router::new()
        .route(
            "/hot",
            get({
                let (calls, release) = (calls.clone(), release.clone());
                move || async move {
                    calls.fetch_add(1, Ordering::SeqCst);
                    // Hold the response until every client has sent its request.
                    release.notified().await;
                    ([("cache-control", "max-age=60")], "hot value")
                }
            }),
        )
        // Outermost first in the stack: cache, then coalesce beneath it.
        .layer(CoalesceLayer::new())
        .layer(CacheLayer::new())
        .layer(axum::middleware::from_fn({
            let arrived = arrived.clone();
            move |req, next: axum::middleware::Next| {
                arrived.fetch_add(1, Ordering::SeqCst);
                next.run(req)
            }
        }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let requests: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let client = client.clone();
            tokio::spawn(async move {
                let res = client
                    .get(format!("http://{addr}/hot").parse().unwrap())
                    .await
                    .unwrap();
                let status = res.headers()["cache-status"].to_str().unwrap().to_owned();
                let body = res.into_body().collect().await.unwrap().to_bytes();
                (status, body)
            })
        })
        .collect();

    // Wait until the upstream call is in and every request has reached the
    // server (and a moment more to pass the cache and join the flight), then
    // let the call answer.
    while calls.load(Ordering::SeqCst) == 0 || arrived.load(Ordering::SeqCst) < CLIENTS {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    release.notify_waiters();

    let mut collapsed = 0;
    for request in requests {
        let (status, body) = request.await.unwrap();
        assert_eq!(body, "hot value");
        collapsed += usize::from(status.contains("collapsed"));
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1, "one upstream fetch");
    assert!(collapsed > 0, "followers are marked collapsed");

    // The entry is stored: the next request is a hit.
    let res = client
        .get(format!("http://{addr}/hot").parse().unwrap())
        .await
        .unwrap();
    assert!(res.headers()["cache-status"]
        .to_str()
        .unwrap()
        .contains("hit"));
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}
