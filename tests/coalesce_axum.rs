//! The coalescing layer in a real axum server, driven over TCP by hyper's
//! client. No `HandleErrorLayer` anywhere: the layer keeps `Infallible`.

#![cfg(feature = "coalesce")]

use std::{
    convert::Infallible,
    future::Future,
    net::SocketAddr,
    pin::Pin,
    sync::{
        atomic::{AtomicUsize, Ordering::SeqCst},
        Arc,
    },
    task::{Context, Poll},
    time::Duration,
};

use axum::{
    body::Body,
    response::{sse, IntoResponse, Sse},
    routing::get,
    Router,
};
use bytes::Bytes;
use futures::StreamExt as _;
use http::{header, Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::{
    client::legacy::{connect::HttpConnector, Client},
    rt::TokioExecutor,
};
use tokio::sync::watch;
use tower::{Layer, Service};
use tower_perf::coalesce::CoalesceLayer;

/// Counts requests once the coalescing layer has taken them in, and those
/// whose response future was dropped unfinished. axum's `Route` calls the
/// layered service when its future is first polled, so a request counts as
/// arrived after the first poll of its future.
#[derive(Clone)]
struct Arrivals<S> {
    inner: S,
    probe: Probe,
}

#[derive(Clone)]
struct Probe {
    arrived: Arc<watch::Sender<usize>>,
    cancelled: Arc<watch::Sender<usize>>,
    calls: Arc<AtomicUsize>,
}

impl Probe {
    fn new() -> Self {
        Self {
            arrived: Arc::new(watch::channel(0).0),
            cancelled: Arc::new(watch::channel(0).0),
            calls: Arc::default(),
        }
    }

    async fn until(counter: &watch::Sender<usize>, n: usize) {
        let mut rx = counter.subscribe();
        tokio::time::timeout(Duration::from_secs(30), rx.wait_for(|seen| *seen >= n))
            .await
            .expect("timed out waiting for the requests")
            .unwrap();
    }

    fn layer<S>(&self) -> impl Layer<S, Service = Arrivals<S>> + Clone {
        let probe = self.clone();
        tower::layer::layer_fn(move |inner| Arrivals {
            inner,
            probe: probe.clone(),
        })
    }
}

struct Cancelled(Option<Arc<watch::Sender<usize>>>);

impl Drop for Cancelled {
    fn drop(&mut self) {
        if let Some(counter) = self.0.take() {
            counter.send_modify(|n| *n += 1);
        }
    }
}

impl<S> Service<Request<Body>> for Arrivals<S>
where
    S: Service<Request<Body>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let mut fut = Box::pin(self.inner.call(req));
        let arrived = self.probe.arrived.clone();
        let cancelled = Cancelled(Some(self.probe.cancelled.clone()));
        Box::pin(async move {
            let mut guard = cancelled;
            let mut first = true;
            let res = std::future::poll_fn(|cx| {
                let poll = fut.as_mut().poll(cx);
                if std::mem::take(&mut first) {
                    arrived.send_modify(|n| *n += 1);
                }
                poll
            })
            .await;
            guard.0 = None;
            res
        })
    }
}

async fn serve(app: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

fn client() -> Client<HttpConnector, Empty<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

async fn fetch(
    client: &Client<HttpConnector, Empty<Bytes>>,
    req: Request<Empty<Bytes>>,
) -> (StatusCode, Bytes) {
    let res = client.request(req).await.unwrap();
    let status = res.status();
    (status, res.into_body().collect().await.unwrap().to_bytes())
}

fn get_req(addr: SocketAddr, path: &str) -> Request<Empty<Bytes>> {
    Request::get(format!("http://{addr}{path}"))
        .body(Empty::new())
        .unwrap()
}

/// Sends `n` requests at once, each on its own connection.
async fn fetch_all(n: usize, make: impl Fn() -> Request<Empty<Bytes>>) -> Vec<(StatusCode, Bytes)> {
    let client = client();
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let (client, req) = (client.clone(), make());
            tokio::spawn(async move { fetch(&client, req).await })
        })
        .collect();
    let mut out = Vec::new();
    for task in tasks {
        out.push(task.await.unwrap());
    }
    out
}

/// An app whose handler counts its calls, waits until `wait_for` requests
/// have reached the layer, then answers with `body`.
fn app(probe: &Probe, layer: CoalesceLayer, wait_for: usize, body: Bytes) -> Router {
    let p = probe.clone();
    Router::new()
        .route(
            "/hot",
            get(move || {
                let (p, body) = (p.clone(), body.clone());
                async move {
                    p.calls.fetch_add(1, SeqCst);
                    Probe::until(&p.arrived, wait_for).await;
                    body
                }
            }),
        )
        .layer(layer)
        .layer(probe.layer())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_requests_over_tcp_make_one_call() {
    let probe = Probe::new();
    let addr = serve(app(&probe, CoalesceLayer::new(), 1_000, Bytes::from("hot"))).await;
    let results = fetch_all(1_000, || get_req(addr, "/hot")).await;
    assert!(results
        .iter()
        .all(|r| *r == (StatusCode::OK, Bytes::from("hot"))));
    assert_eq!(
        probe.calls.load(SeqCst),
        1,
        "arrived {}",
        *probe.arrived.borrow()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_disconnects_does_not_fail_the_others() {
    let probe = Probe::new();
    let (release, released) = watch::channel(false);
    let p = probe.clone();
    let app = Router::new()
        .route(
            "/hot",
            get(move || {
                let (p, mut released) = (p.clone(), released.clone());
                async move {
                    p.calls.fetch_add(1, SeqCst);
                    released.wait_for(|r| *r).await.unwrap();
                    "survived"
                }
            }),
        )
        .layer(CoalesceLayer::new())
        .layer(probe.layer());
    let addr = serve(app).await;

    let client = client();
    let leader = {
        let client = client.clone();
        tokio::spawn(async move { fetch(&client, get_req(addr, "/hot")).await })
    };
    Probe::until(&probe.arrived, 1).await;
    let followers = tokio::spawn(fetch_all(20, move || get_req(addr, "/hot")));
    Probe::until(&probe.arrived, 21).await;

    // The leader's client goes away; the server drops its response future.
    leader.abort();
    Probe::until(&probe.cancelled, 1).await;
    release.send(true).unwrap();

    for (status, body) in followers.await.unwrap() {
        assert_eq!((status, body), (StatusCode::OK, Bytes::from("survived")));
    }
    assert_eq!(probe.calls.load(SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_handler_answers_500_to_every_waiter() {
    let probe = Probe::new();
    let p = probe.clone();
    let app = Router::new()
        .route(
            "/hot",
            get(move || {
                let p = p.clone();
                async move {
                    if p.calls.fetch_add(1, SeqCst) == 0 {
                        Probe::until(&p.arrived, 20).await;
                        panic!("handler panicked");
                    }
                    "recovered"
                }
            }),
        )
        .layer(CoalesceLayer::new())
        .layer(probe.layer());
    let addr = serve(app).await;
    for (status, _) in fetch_all(20, || get_req(addr, "/hot")).await {
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    }
    let again = fetch(&client(), get_req(addr, "/hot")).await;
    assert_eq!(again, (StatusCode::OK, Bytes::from("recovered")));
    assert_eq!(probe.calls.load(SeqCst), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_over_the_cap_reaches_everyone_whole() {
    let probe = Probe::new();
    let big = Bytes::from(vec![b'x'; 2 * 1024 * 1024]);
    let addr = serve(app(&probe, CoalesceLayer::new(), 10, big.clone())).await;
    for (status, body) in fetch_all(10, || get_req(addr, "/hot")).await {
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, big);
    }
    // The leader and the released followers each called.
    assert_eq!(probe.calls.load(SeqCst), 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_stream_is_never_shared_or_cut() {
    let probe = Probe::new();
    let p = probe.clone();
    let app = Router::new()
        .route(
            "/events",
            get(move || {
                let p = p.clone();
                async move {
                    p.calls.fetch_add(1, SeqCst);
                    Probe::until(&p.arrived, 10).await;
                    let events = futures::stream::iter(0..3).then(|i| async move {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                        Ok::<_, Infallible>(sse::Event::default().data(i.to_string()))
                    });
                    Sse::new(events).into_response()
                }
            }),
        )
        .layer(CoalesceLayer::new())
        .layer(probe.layer());
    let addr = serve(app).await;
    for (status, body) in fetch_all(10, || get_req(addr, "/events")).await {
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, "data: 0\n\ndata: 1\n\ndata: 2\n\n");
    }
    assert_eq!(probe.calls.load(SeqCst), 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_with_authorization_are_not_coalesced() {
    let probe = Probe::new();
    let addr = serve(app(&probe, CoalesceLayer::new(), 10, Bytes::from("mine"))).await;
    let with_auth = || {
        let mut req = get_req(addr, "/hot");
        req.headers_mut()
            .insert(header::AUTHORIZATION, "Bearer t".parse().unwrap());
        req
    };
    for result in fetch_all(10, with_auth).await {
        assert_eq!(result, (StatusCode::OK, Bytes::from("mine")));
    }
    assert_eq!(probe.calls.load(SeqCst), 10);
}

#[tokio::test(start_paused = true)]
async fn ten_thousand_requests_through_the_router_make_one_call() {
    use tower::ServiceExt;
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let app = Router::new()
        .route(
            "/hot",
            get(move || {
                counter.fetch_add(1, SeqCst);
                async {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    "hot"
                }
            }),
        )
        .layer(CoalesceLayer::new());
    let tasks: Vec<_> = (0..10_000)
        .map(|_| {
            let req = Request::get("/hot")
                .header(header::HOST, "example.com")
                .body(Body::empty())
                .unwrap();
            tokio::spawn(app.clone().oneshot(req))
        })
        .collect();
    let mut collapsed = 0;
    for task in tasks {
        let res = task.await.unwrap().unwrap();
        collapsed += usize::from(
            res.extensions()
                .get::<tower_perf::coalesce::Collapsed>()
                .is_some(),
        );
        let body = res.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, "hot");
    }
    assert_eq!(calls.load(SeqCst), 1);
    assert_eq!(collapsed, 9_999);
}
