//! The full stack around a plain hyper 1 server, without a framework.
//!
//! The handler is a `tower::service_fn`; `PerfStack` wraps it, and
//! hyper-util's `TowerToHyperService` turns the result into a hyper service.
//! There is no router, so the latency layer gets a route function that maps
//! paths to a closed set of route labels (never the raw path).
//!
//! ```sh
//! cargo run --example hyper
//! curl -i localhost:3000/greeting/ada     # miss, then hits for 30 s
//! ```

use std::{convert::Infallible, time::Duration};

use bytes::Bytes;
use http::{header, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
    service::TowerToHyperService,
};
use tower::Layer;
use tower_perf::{latency::LatencyLayer, stack::PerfStack};

/// The application: one cacheable, slow route; 404 elsewhere.
async fn handle(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let response = match req.uri().path().strip_prefix("/greeting/") {
        Some(name) if !name.is_empty() => {
            tokio::time::sleep(Duration::from_millis(50)).await; // the slow part
            Response::builder()
                .header(header::CACHE_CONTROL, "max-age=30")
                .body(Full::from(format!("hello, {name}\n")))
        }
        _ => Response::builder()
            .status(StatusCode::NOT_FOUND)
            .body(Full::from("not found\n")),
    };
    Ok(response.expect("valid response"))
}

/// The route label of a request: a template from a closed set.
fn route(req: &Request<Incoming>) -> Option<&'static str> {
    req.uri()
        .path()
        .starts_with("/greeting/")
        .then_some("/greeting/{name}")
}

#[tokio::main]
async fn main() {
    // Build the stack once: every connection shares its cache, in-flight
    // table, limiter and series.
    let stack = PerfStack::new().latency(LatencyLayer::new().route_fn(route));
    let service = stack.layer(tower::service_fn(handle));

    let listener = tokio::net::TcpListener::bind("127.0.0.1:3000")
        .await
        .unwrap();
    println!(
        "listening on http://{}/greeting/ada",
        listener.local_addr().unwrap()
    );
    loop {
        let (stream, _) = listener.accept().await.unwrap();
        let service = TowerToHyperService::new(service.clone());
        tokio::spawn(async move {
            let connection = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
            if let Err(err) = connection {
                eprintln!("connection error: {err}");
            }
        });
    }
}
