//! The limiter in real servers over TCP: an axum router (503 +
//! `Retry-After`) and a tonic server (`grpc-status: 14`).

#![cfg(feature = "limit")]

use std::{sync::Arc, time::Duration};

use axum::{routing::get, Router};
use http::StatusCode;
use http_body_util::{BodyExt, Empty};
use hyper_util::{client::legacy::Client, rt::TokioExecutor};
use tokio::{net::TcpListener, sync::Semaphore};
use tower_perf::limit::AdaptiveLimitLayer;

#[tokio::test]
async fn axum_answers_503_with_retry_after() {
    let layer = AdaptiveLimitLayer::new()
        .max_limit(1)
        .retry_after(Duration::from_secs(3));
    let handle = layer.handle();
    // The handler holds its request until the test lets it go.
    let gate = Arc::new(Semaphore::new(0));
    let held = gate.clone();
    let app = Router::new()
        .route(
            "/slow",
            get(move || {
                let held = held.clone();
                async move {
                    let _permit = held.acquire().await.unwrap();
                    "slow"
                }
            }),
        )
        .route("/", get(|| async { "fast" }))
        .layer(layer);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<bytes::Bytes>>();
    let get = |path: &str| {
        let client = client.clone();
        let uri: http::Uri = format!("http://{addr}{path}").parse().unwrap();
        async move { client.get(uri).await.unwrap() }
    };
    let slow = tokio::spawn(get("/slow"));
    while handle.in_flight() == 0 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let res = get("/").await;
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(res.headers()["retry-after"], "3");

    gate.add_permits(1);
    let res = slow.await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.into_body().collect().await.unwrap().to_bytes(), "slow");
    let res = get("/").await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(handle.in_flight(), 0);
    assert_eq!(handle.counters().rejected, 1);
}

#[tokio::test]
async fn tonic_answers_grpc_unavailable() {
    use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};

    let layer = AdaptiveLimitLayer::new().max_limit(1);
    let handle = layer.handle();
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter
        .set_service_status("", tonic_health::ServingStatus::Serving)
        .await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .layer(layer)
            .add_service(health)
            .serve_with_incoming(tokio_stream_from(listener))
            .await
            .unwrap()
    });

    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = HealthClient::new(channel);
    let check = HealthCheckRequest {
        service: String::new(),
    };
    assert!(client.check(check.clone()).await.is_ok());
    // A watch stream holds its permit while the response body is open.
    let mut watch = client.watch(check.clone()).await.unwrap().into_inner();
    assert!(watch.message().await.unwrap().is_some());
    assert_eq!(handle.in_flight(), 1);

    let status = client.check(check.clone()).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable);
    assert_eq!(status.message(), "concurrency limit reached, retry later");

    drop(watch);
    while handle.in_flight() > 0 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert!(client.check(check).await.is_ok());
    assert_eq!(handle.counters().rejected, 1);
}

/// The listener as the stream of connections tonic's `serve_with_incoming`
/// takes.
fn tokio_stream_from(
    listener: TcpListener,
) -> impl futures::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    futures::stream::unfold(listener, |listener| async move {
        let conn = listener.accept().await.map(|(stream, _)| stream);
        Some((conn, listener))
    })
}

/// Route partitions see axum's route template, not the raw path.
#[cfg(feature = "axum")]
#[tokio::test]
async fn axum_route_partitions_use_the_matched_path() {
    let layer = AdaptiveLimitLayer::new()
        .max_limit(2)
        .partition_by_route()
        .partition("/live/{id}", 0.5)
        .partition("/batch/{id}", 0.0);
    let handle = layer.handle();
    let gate = Arc::new(Semaphore::new(0));
    let held = gate.clone();
    let slow = move || {
        let held = held.clone();
        async move {
            let _permit = held.acquire().await.unwrap();
            "done"
        }
    };
    let app = Router::new()
        .route("/live/{id}", get(slow.clone()))
        .route("/batch/{id}", get(slow))
        .layer(layer);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<bytes::Bytes>>();
    let get = |path: &str| {
        let client = client.clone();
        let uri: http::Uri = format!("http://{addr}{path}").parse().unwrap();
        async move { client.get(uri).await.unwrap() }
    };

    // Batch fills the limit of 2...
    let batch: Vec<_> = (0..2)
        .map(|i| tokio::spawn(get(&format!("/batch/{i}"))))
        .collect();
    while handle.in_flight() < 2 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert_eq!(
        get("/batch/9").await.status(),
        StatusCode::SERVICE_UNAVAILABLE
    );
    // ...yet /live/7 is admitted: the "/live/{id}" partition is under its
    // guaranteed ceil(0.5 × 2) = 1.
    let live = tokio::spawn(get("/live/7"));
    while handle.in_flight() < 3 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert_eq!(
        get("/live/8").await.status(),
        StatusCode::SERVICE_UNAVAILABLE
    );

    gate.add_permits(3);
    assert_eq!(live.await.unwrap().status(), StatusCode::OK);
    for b in batch {
        assert_eq!(b.await.unwrap().status(), StatusCode::OK);
    }
    assert_eq!(handle.counters().rejected, 2);
}
